//! The transmission phase without I/O: request headers are decoded and
//! validated against the export as nbdkit validates them, and replies are
//! framed (simple, structured or extended) into caller-provided buffers.

use crate::handshake::Negotiated;
use crate::wire::consts::*;
use crate::wire::transmission::{ChunkHeader, RequestHeader, SimpleReply};
use crate::wire::WireError;

#[cfg(feature = "alloc")]
mod calls;
mod engine;
mod flags;
mod framer;

pub use engine::{Close, Engine, Event, Limits, Progress, Refused, Want};
pub use flags::{eflags, CmdFlags, Features, NbdError};
pub use framer::Framer;

/// nbdkit's largest READ or WRITE (larger ones get ENOMEM).
pub const MAX_REQUEST_SIZE: u64 = 64 * 1024 * 1024;
/// The largest rejected WRITE payload that is read and discarded; a larger
/// one ends the connection.
pub const MAX_SKIPPED_PAYLOAD: u64 = 128 * 1024 * 1024;

/// A command the server knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// NBD_CMD_READ.
    Read,
    /// NBD_CMD_WRITE.
    Write,
    /// NBD_CMD_DISC.
    Disc,
    /// NBD_CMD_FLUSH.
    Flush,
    /// NBD_CMD_TRIM.
    Trim,
    /// NBD_CMD_CACHE.
    Cache,
    /// NBD_CMD_WRITE_ZEROES.
    WriteZeroes,
    /// NBD_CMD_BLOCK_STATUS.
    BlockStatus,
}

impl Command {
    /// The command for a wire value.
    pub fn from_wire(v: u16) -> Option<Self> {
        Some(match v {
            CMD_READ => Command::Read,
            CMD_WRITE => Command::Write,
            CMD_DISC => Command::Disc,
            CMD_FLUSH => Command::Flush,
            CMD_TRIM => Command::Trim,
            CMD_CACHE => Command::Cache,
            CMD_WRITE_ZEROES => Command::WriteZeroes,
            CMD_BLOCK_STATUS => Command::BlockStatus,
            _ => return None,
        })
    }

    /// nbdkit's name for it in debug messages.
    pub fn name(self) -> &'static str {
        match self {
            Command::Read => "NBD_CMD_READ",
            Command::Write => "NBD_CMD_WRITE",
            Command::Disc => "NBD_CMD_DISC",
            Command::Flush => "NBD_CMD_FLUSH",
            Command::Trim => "NBD_CMD_TRIM",
            Command::Cache => "NBD_CMD_CACHE",
            Command::WriteZeroes => "NBD_CMD_WRITE_ZEROES",
            Command::BlockStatus => "NBD_CMD_BLOCK_STATUS",
        }
    }
}

/// Framing was lost: the connection must be closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FramingError {
    /// A request magic that is not the negotiated one.
    BadMagic,
    /// A payload too large to skip.
    PayloadTooLarge,
}

/// A decoded request header and how many payload bytes follow it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// The raw header.
    pub header: RequestHeader,
    /// Bytes of payload that follow on the wire (must be read, or skipped).
    pub payload_len: u64,
}

/// The request header length for the negotiated style.
pub fn header_len(extended: bool) -> usize {
    if extended {
        RequestHeader::EXTENDED_LEN
    } else {
        RequestHeader::COMPACT_LEN
    }
}

/// Decode a request header (`buf` holds at least [`header_len`] bytes).
pub fn decode(buf: &[u8], extended: bool) -> Result<Request, FramingError> {
    let header = if extended {
        RequestHeader::parse_extended(buf)
    } else {
        RequestHeader::parse_compact(buf)
    };
    let header = match header {
        Ok(h) => h,
        Err(WireError::BadMagic) | Err(_) => return Err(FramingError::BadMagic),
    };
    let payload_len = if extended {
        if header.flags & CMD_FLAG_PAYLOAD_LEN != 0 || header.command == CMD_WRITE {
            header.length
        } else {
            0
        }
    } else if header.command == CMD_WRITE {
        header.length
    } else {
        0
    };
    if payload_len > MAX_SKIPPED_PAYLOAD {
        return Err(FramingError::PayloadTooLarge);
    }
    Ok(Request {
        header,
        payload_len,
    })
}

/// What the server knows about the export while validating.
#[derive(Debug, Clone, Copy)]
pub struct Export {
    /// What negotiation settled (size, flags, reply style, contexts).
    pub negotiated: Negotiated,
}

/// A request that passed validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Valid {
    /// The command.
    pub command: Command,
    /// Cookie to echo.
    pub cookie: u64,
    /// Offset.
    pub offset: u64,
    /// Length of the effect (for WRITE, the payload length).
    pub count: u64,
    /// Command flags as sent (validated: only those the command takes).
    pub flags: CmdFlags,
}

impl Valid {
    /// Whether FUA was asked for.
    pub fn fua(&self) -> bool {
        self.flags.contains(CmdFlags::FUA)
    }

    /// The command flags.
    pub fn cmd_flags(&self) -> CmdFlags {
        self.flags
    }
}

/// Validate a request as nbdkit does (`validate_request`): range first
/// (ENOSPC for writes, EINVAL otherwise), then flags, size limit (ENOMEM),
/// read-only (EPERM) and features not advertised (EINVAL). Returns the NBD
/// error for a refused request. DISC is never refused.
pub fn check(export: &Export, req: &Request) -> Result<Valid, NbdError> {
    let h = &req.header;
    let n = &export.negotiated;
    let Some(command) = Command::from_wire(h.command) else {
        return Err(NbdError::Inval);
    };
    let valid = Valid {
        command,
        cookie: h.cookie,
        offset: h.offset,
        count: h.length,
        flags: CmdFlags::from_bits_retain(h.flags),
    };
    if command == Command::Disc {
        return Ok(valid);
    }
    // With extended headers a payload on a command that takes none is an
    // error (the payload is still consumed by the caller).
    if req.payload_len > 0 && command != Command::Write {
        return Err(NbdError::Inval);
    }
    match command {
        Command::Flush => {
            if h.offset != 0 || h.length != 0 {
                return Err(NbdError::Inval);
            }
        }
        _ => {
            let in_range = h.length > 0
                && h.offset
                    .checked_add(h.length)
                    .is_some_and(|end| end <= n.size);
            if !in_range {
                return Err(match command {
                    Command::Write | Command::WriteZeroes => NbdError::NoSpc,
                    _ => NbdError::Inval,
                });
            }
        }
    }
    let mut allowed = CmdFlags::KNOWN.difference(CmdFlags::PAYLOAD_LEN);
    if n.extended_headers {
        allowed |= CmdFlags::PAYLOAD_LEN;
    }
    let f = valid.cmd_flags();
    let zeroing = command == Command::WriteZeroes;
    let bad_flags = !f.difference(allowed).is_empty()
        || (f.contains(CmdFlags::NO_HOLE) && !zeroing)
        || (f.contains(CmdFlags::FAST_ZERO) && !zeroing)
        || (f.contains(CmdFlags::DF) && (command != Command::Read || !n.structured_replies))
        || (f.contains(CmdFlags::REQ_ONE) && command != Command::BlockStatus)
        || (f.contains(CmdFlags::FUA) && n.eflags & FLAG_SEND_FUA == 0)
        || (f.contains(CmdFlags::FAST_ZERO) && n.eflags & FLAG_SEND_FAST_ZERO == 0)
        || (f.contains(CmdFlags::PAYLOAD_LEN)
            && command != Command::Write
            && command != Command::BlockStatus);
    if bad_flags {
        return Err(NbdError::Inval);
    }
    if matches!(command, Command::Read | Command::Write) && h.length > MAX_REQUEST_SIZE {
        return Err(NbdError::NoMem);
    }
    let writable = n.eflags & FLAG_READ_ONLY == 0;
    if !writable
        && matches!(
            command,
            Command::Write | Command::Trim | Command::WriteZeroes
        )
    {
        return Err(NbdError::Perm);
    }
    let needs = match command {
        Command::Flush => FLAG_SEND_FLUSH,
        Command::Trim => FLAG_SEND_TRIM,
        Command::WriteZeroes => FLAG_SEND_WRITE_ZEROES,
        Command::Cache => FLAG_SEND_CACHE,
        _ => 0,
    };
    if needs != 0 && n.eflags & needs == 0 {
        return Err(NbdError::Inval);
    }
    if command == Command::BlockStatus && (!n.structured_replies || n.base_allocation.is_none()) {
        return Err(NbdError::Inval);
    }
    Ok(valid)
}

/// How replies are framed on this connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyStyle {
    /// Structured replies negotiated.
    pub structured: bool,
    /// Extended headers negotiated.
    pub extended: bool,
}

impl ReplyStyle {
    /// The style negotiation settled.
    pub fn of(n: &Negotiated) -> Self {
        ReplyStyle {
            structured: n.structured_replies || n.extended_headers,
            extended: n.extended_headers,
        }
    }

    /// Longest header any reply of this style starts with (chunk header,
    /// plus the offset of OFFSET_DATA or the fixed part of an error).
    pub const MAX_HEADER: usize = ChunkHeader::EXTENDED_LEN + 8;

    fn chunk(
        &self,
        buf: &mut [u8],
        flags: u16,
        chunk_type: u16,
        cookie: u64,
        offset: u64,
        len: u64,
    ) -> usize {
        ChunkHeader {
            flags,
            chunk_type,
            cookie,
            offset,
            length: len,
        }
        .emit(self.extended, buf)
    }

    /// The header of a successful READ of `len` bytes; the data follows.
    /// Structured: one OFFSET_DATA chunk with DONE (nbdkit never splits
    /// reads and never sends holes).
    pub fn read_header(&self, buf: &mut [u8], cookie: u64, offset: u64, len: u64) -> usize {
        if !self.structured {
            return SimpleReply { error: 0, cookie }.emit(buf);
        }
        let n = self.chunk(
            buf,
            REPLY_FLAG_DONE,
            REPLY_TYPE_OFFSET_DATA,
            cookie,
            offset,
            len.saturating_add(8),
        );
        buf[n..n + 8].copy_from_slice(&offset.to_be_bytes());
        n + 8
    }

    /// A complete reply for a command that succeeded without data.
    pub fn ok(&self, buf: &mut [u8], cookie: u64, offset: u64) -> usize {
        if self.extended {
            self.chunk(buf, REPLY_FLAG_DONE, REPLY_TYPE_NONE, cookie, offset, 0)
        } else {
            SimpleReply { error: 0, cookie }.emit(buf)
        }
    }

    /// A complete error reply. Structured replies carry READ and
    /// BLOCK_STATUS errors as ERROR chunks (with `message`); other commands
    /// get simple replies unless extended headers forbid them.
    pub fn error(
        &self,
        buf: &mut [u8],
        command: Option<Command>,
        cookie: u64,
        offset: u64,
        error: NbdError,
        message: &[u8],
    ) -> usize {
        let error = error.to_wire();
        let chunked = self.extended
            || (self.structured
                && matches!(command, Some(Command::Read) | Some(Command::BlockStatus)));
        if !chunked {
            return SimpleReply { error, cookie }.emit(buf);
        }
        let msg = &message[..message
            .len()
            .min(buf.len().saturating_sub(Self::MAX_HEADER + 6))
            .min(MAX_STRING)];
        let n = self.chunk(
            buf,
            REPLY_FLAG_DONE,
            REPLY_TYPE_ERROR,
            cookie,
            offset,
            6 + msg.len() as u64,
        );
        buf[n..n + 4].copy_from_slice(&error.to_be_bytes());
        buf[n + 4..n + 6].copy_from_slice(&(msg.len() as u16).to_be_bytes());
        buf[n + 6..n + 6 + msg.len()].copy_from_slice(msg);
        n + 6 + msg.len()
    }

    /// Bytes needed by [`block_status`](Self::block_status) for `n` descriptors.
    pub fn block_status_len(&self, n: usize) -> usize {
        if self.extended {
            ChunkHeader::EXTENDED_LEN + 8 + 16 * n
        } else {
            ChunkHeader::STRUCTURED_LEN + 4 + 8 * n
        }
    }

    /// A complete BLOCK_STATUS reply for context `id`, from extents given as
    /// (offset, length, flags) starting at the request offset. Applies
    /// nbdkit's rules: REQ_ONE sends one descriptor clipped to the request;
    /// otherwise descriptors stop after the one reaching the request's end,
    /// and compact lengths are clipped to 32 bits. `buf` must hold
    /// [`block_status_len`](Self::block_status_len) of the extent count.
    #[allow(clippy::too_many_arguments)]
    pub fn block_status<I>(
        &self,
        buf: &mut [u8],
        cookie: u64,
        offset: u64,
        count: u64,
        req_one: bool,
        id: u32,
        extents: I,
    ) -> usize
    where
        I: IntoIterator<Item = (u64, u64, u32)>,
    {
        let hdr = if self.extended {
            ChunkHeader::EXTENDED_LEN
        } else {
            ChunkHeader::STRUCTURED_LEN
        };
        let fixed = if self.extended { 8 } else { 4 };
        let end = offset.saturating_add(count);
        let mut pos = hdr + fixed;
        let mut n: u32 = 0;
        for (ext_off, len, flags) in extents {
            if len == 0 {
                continue;
            }
            let full = len;
            let mut len = len;
            if req_one {
                len = len.min(count);
            }
            if !self.extended {
                len = len.min(u64::from(u32::MAX) & !511);
            }
            let clipped = len != full;
            let stride = if self.extended { 16 } else { 8 };
            if pos + stride > buf.len() {
                break;
            }
            if self.extended {
                buf[pos..pos + 8].copy_from_slice(&len.to_be_bytes());
                buf[pos + 8..pos + 16].copy_from_slice(&u64::from(flags).to_be_bytes());
            } else {
                buf[pos..pos + 4].copy_from_slice(&(len as u32).to_be_bytes());
                buf[pos + 4..pos + 8].copy_from_slice(&flags.to_be_bytes());
            }
            pos += stride;
            n += 1;
            if req_one || clipped || ext_off.saturating_add(len) >= end {
                break;
            }
        }
        let payload = (pos - hdr) as u64;
        let ty = if self.extended {
            REPLY_TYPE_BLOCK_STATUS_EXT
        } else {
            REPLY_TYPE_BLOCK_STATUS
        };
        self.chunk(buf, REPLY_FLAG_DONE, ty, cookie, offset, payload);
        buf[hdr..hdr + 4].copy_from_slice(&id.to_be_bytes());
        if self.extended {
            buf[hdr + 4..hdr + 8].copy_from_slice(&n.to_be_bytes());
        }
        pos
    }
}

#[cfg(test)]
mod test;
