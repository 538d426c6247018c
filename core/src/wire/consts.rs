//! Every constant of the NBD protocol (`nbd-protocol.md` section 1).

/// "NBDMAGIC", the first 8 bytes of every greeting.
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// "IHAVEOPT", the newstyle magic and option request magic.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// The oldstyle `cliserv_magic`.
pub const OLDSTYLE_MAGIC: u64 = 0x0000_4202_8186_1253;
/// Magic of every option reply.
pub const REP_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Compact request magic.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Extended request magic.
pub const EXTENDED_REQUEST_MAGIC: u32 = 0x21e4_1c71;
/// Simple reply magic.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Structured reply chunk magic.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;
/// Extended reply chunk magic.
pub const EXTENDED_REPLY_MAGIC: u32 = 0x6e8a_278c;

/// Handshake flag: the server speaks fixed newstyle.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
/// Handshake flag: the server can omit the 124 zero bytes.
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
/// Client flag: the client speaks fixed newstyle.
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
/// Client flag: omit the 124 zero bytes after EXPORT_NAME.
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;

/// `NBD_OPT_EXPORT_NAME`.
pub const OPT_EXPORT_NAME: u32 = 1;
/// `NBD_OPT_ABORT`.
pub const OPT_ABORT: u32 = 2;
/// `NBD_OPT_LIST`.
pub const OPT_LIST: u32 = 3;
/// `NBD_OPT_PEEK_EXPORT` (withdrawn).
pub const OPT_PEEK_EXPORT: u32 = 4;
/// `NBD_OPT_STARTTLS`.
pub const OPT_STARTTLS: u32 = 5;
/// `NBD_OPT_INFO`.
pub const OPT_INFO: u32 = 6;
/// `NBD_OPT_GO`.
pub const OPT_GO: u32 = 7;
/// `NBD_OPT_STRUCTURED_REPLY`.
pub const OPT_STRUCTURED_REPLY: u32 = 8;
/// `NBD_OPT_LIST_META_CONTEXT`.
pub const OPT_LIST_META_CONTEXT: u32 = 9;
/// `NBD_OPT_SET_META_CONTEXT`.
pub const OPT_SET_META_CONTEXT: u32 = 10;
/// `NBD_OPT_EXTENDED_HEADERS`.
pub const OPT_EXTENDED_HEADERS: u32 = 11;

/// `NBD_REP_ACK`.
pub const REP_ACK: u32 = 1;
/// `NBD_REP_SERVER`.
pub const REP_SERVER: u32 = 2;
/// `NBD_REP_INFO`.
pub const REP_INFO: u32 = 3;
/// `NBD_REP_META_CONTEXT`.
pub const REP_META_CONTEXT: u32 = 4;
/// Option not known.
pub const REP_ERR_UNSUP: u32 = 0x8000_0001;
/// Forbidden by configuration.
pub const REP_ERR_POLICY: u32 = 0x8000_0002;
/// Malformed or not valid now.
pub const REP_ERR_INVALID: u32 = 0x8000_0003;
/// Unsupported on this platform.
pub const REP_ERR_PLATFORM: u32 = 0x8000_0004;
/// Start TLS first.
pub const REP_ERR_TLS_REQD: u32 = 0x8000_0005;
/// No such export.
pub const REP_ERR_UNKNOWN: u32 = 0x8000_0006;
/// Server shutting down.
pub const REP_ERR_SHUTDOWN: u32 = 0x8000_0007;
/// Client must request block sizes.
pub const REP_ERR_BLOCK_SIZE_REQD: u32 = 0x8000_0008;
/// Request or reply too large.
pub const REP_ERR_TOO_BIG: u32 = 0x8000_0009;
/// Extended headers required.
pub const REP_ERR_EXT_HEADER_REQD: u32 = 0x8000_000a;

/// `NBD_INFO_EXPORT`.
pub const INFO_EXPORT: u16 = 0;
/// `NBD_INFO_NAME`.
pub const INFO_NAME: u16 = 1;
/// `NBD_INFO_DESCRIPTION`.
pub const INFO_DESCRIPTION: u16 = 2;
/// `NBD_INFO_BLOCK_SIZE`.
pub const INFO_BLOCK_SIZE: u16 = 3;

/// Transmission flag: always set.
pub const FLAG_HAS_FLAGS: u16 = 1 << 0;
/// Transmission flag: the export is read-only.
pub const FLAG_READ_ONLY: u16 = 1 << 1;
/// Transmission flag: FLUSH supported.
pub const FLAG_SEND_FLUSH: u16 = 1 << 2;
/// Transmission flag: FUA supported.
pub const FLAG_SEND_FUA: u16 = 1 << 3;
/// Transmission flag: rotational medium.
pub const FLAG_ROTATIONAL: u16 = 1 << 4;
/// Transmission flag: TRIM supported.
pub const FLAG_SEND_TRIM: u16 = 1 << 5;
/// Transmission flag: WRITE_ZEROES supported.
pub const FLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
/// Transmission flag: DF honoured.
pub const FLAG_SEND_DF: u16 = 1 << 7;
/// Transmission flag: multiple connections are coherent.
pub const FLAG_CAN_MULTI_CONN: u16 = 1 << 8;
/// Transmission flag: RESIZE supported (experimental).
pub const FLAG_SEND_RESIZE: u16 = 1 << 9;
/// Transmission flag: CACHE supported.
pub const FLAG_SEND_CACHE: u16 = 1 << 10;
/// Transmission flag: FAST_ZERO honoured.
pub const FLAG_SEND_FAST_ZERO: u16 = 1 << 11;
/// Transmission flag: BLOCK_STATUS accepts a payload (extended headers).
pub const FLAG_BLOCK_STATUS_PAYLOAD: u16 = 1 << 12;

/// `NBD_CMD_READ`.
pub const CMD_READ: u16 = 0;
/// `NBD_CMD_WRITE`.
pub const CMD_WRITE: u16 = 1;
/// `NBD_CMD_DISC`.
pub const CMD_DISC: u16 = 2;
/// `NBD_CMD_FLUSH`.
pub const CMD_FLUSH: u16 = 3;
/// `NBD_CMD_TRIM`.
pub const CMD_TRIM: u16 = 4;
/// `NBD_CMD_CACHE`.
pub const CMD_CACHE: u16 = 5;
/// `NBD_CMD_WRITE_ZEROES`.
pub const CMD_WRITE_ZEROES: u16 = 6;
/// `NBD_CMD_BLOCK_STATUS`.
pub const CMD_BLOCK_STATUS: u16 = 7;
/// `NBD_CMD_RESIZE` (experimental).
pub const CMD_RESIZE: u16 = 8;

/// Command flag: force unit access.
pub const CMD_FLAG_FUA: u16 = 1 << 0;
/// Command flag: do not punch holes.
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;
/// Command flag: do not fragment the read.
pub const CMD_FLAG_DF: u16 = 1 << 2;
/// Command flag: one extent only.
pub const CMD_FLAG_REQ_ONE: u16 = 1 << 3;
/// Command flag: fail unless zeroing is fast.
pub const CMD_FLAG_FAST_ZERO: u16 = 1 << 4;
/// Command flag: the length is a payload length (extended headers).
pub const CMD_FLAG_PAYLOAD_LEN: u16 = 1 << 5;

/// Reply chunk flag: last chunk.
pub const REPLY_FLAG_DONE: u16 = 1 << 0;
/// Chunk type `NONE`.
pub const REPLY_TYPE_NONE: u16 = 0;
/// Chunk type `OFFSET_DATA`.
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
/// Chunk type `OFFSET_HOLE`.
pub const REPLY_TYPE_OFFSET_HOLE: u16 = 2;
/// Chunk type `BLOCK_STATUS`.
pub const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
/// Chunk type `BLOCK_STATUS_EXT`.
pub const REPLY_TYPE_BLOCK_STATUS_EXT: u16 = 6;
/// Chunk type `ERROR`.
pub const REPLY_TYPE_ERROR: u16 = 0x8001;
/// Chunk type `ERROR_OFFSET`.
pub const REPLY_TYPE_ERROR_OFFSET: u16 = 0x8002;

/// NBD error: operation not permitted.
pub const NBD_EPERM: u32 = 1;
/// NBD error: I/O error.
pub const NBD_EIO: u32 = 5;
/// NBD error: out of memory.
pub const NBD_ENOMEM: u32 = 12;
/// NBD error: invalid argument.
pub const NBD_EINVAL: u32 = 22;
/// NBD error: no space.
pub const NBD_ENOSPC: u32 = 28;
/// NBD error: value too large.
pub const NBD_EOVERFLOW: u32 = 75;
/// NBD error: not supported.
pub const NBD_ENOTSUP: u32 = 95;
/// NBD error: server shutting down.
pub const NBD_ESHUTDOWN: u32 = 108;

/// `base:allocation` status: unallocated.
pub const STATE_HOLE: u32 = 1 << 0;
/// `base:allocation` status: reads as zeroes.
pub const STATE_ZERO: u32 = 1 << 1;

/// Longest string the protocol allows.
pub const MAX_STRING: usize = 4096;
/// The IANA port.
pub const DEFAULT_PORT: u16 = 10809;
