//! Messages of the handshake phase.

use super::consts::*;
use super::view::OptionPacket;
use super::{Reader, WireError, Writer};

/// The newstyle greeting: `NBDMAGIC | IHAVEOPT | u16 flags`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewstyleGreeting {
    /// Handshake flags (`FLAG_FIXED_NEWSTYLE`, `FLAG_NO_ZEROES`).
    pub flags: u16,
}

impl NewstyleGreeting {
    /// Length on the wire.
    pub const LEN: usize = 18;

    /// Parse from the start of `buf`.
    pub fn parse(buf: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(buf);
        if r.u64()? != NBDMAGIC || r.u64()? != IHAVEOPT {
            return Err(WireError::BadMagic);
        }
        Ok(NewstyleGreeting { flags: r.u16()? })
    }

    /// Write into `buf`, returning the length written.
    pub fn emit(&self, buf: &mut [u8]) -> usize {
        let mut w = Writer::new(buf);
        w.u64(NBDMAGIC).u64(IHAVEOPT).u16(self.flags);
        w.len()
    }
}

/// The oldstyle greeting: `NBDMAGIC | cliserv_magic | u64 size | u16 gflags
/// | u16 eflags | 124 zero bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OldstyleGreeting {
    /// Export size in bytes.
    pub size: u64,
    /// Transmission flags.
    pub eflags: u16,
}

impl OldstyleGreeting {
    /// Length on the wire.
    pub const LEN: usize = 152;

    /// Parse from the start of `buf`.
    pub fn parse(buf: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(buf);
        if r.u64()? != NBDMAGIC || r.u64()? != OLDSTYLE_MAGIC {
            return Err(WireError::BadMagic);
        }
        let size = r.u64()?;
        let gflags = r.u16()?;
        let eflags = r.u16()?;
        if gflags != 0 || r.take(124)?.iter().any(|&b| b != 0) {
            return Err(WireError::Malformed);
        }
        Ok(OldstyleGreeting { size, eflags })
    }

    /// Write into `buf`, returning the length written.
    pub fn emit(&self, buf: &mut [u8]) -> usize {
        let mut w = Writer::new(buf);
        w.u64(NBDMAGIC)
            .u64(OLDSTYLE_MAGIC)
            .u64(self.size)
            .u16(0)
            .u16(self.eflags)
            .zeroes(124);
        w.len()
    }
}

/// An option request header: `IHAVEOPT | u32 option | u32 length`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    /// The option (`OPT_*`).
    pub option: u32,
    /// Length of the payload that follows.
    pub length: u32,
}

impl OptionHeader {
    /// Length on the wire.
    pub const LEN: usize = 16;

    /// Parse from the start of `buf`.
    pub fn parse(buf: &[u8]) -> Result<Self, WireError> {
        let p = OptionPacket::new_checked(buf)?;
        Ok(OptionHeader {
            option: p.option(),
            length: p.length(),
        })
    }

    /// Write into `buf`, returning the length written.
    pub fn emit(&self, buf: &mut [u8]) -> usize {
        let mut w = Writer::new(buf);
        w.u64(IHAVEOPT).u32(self.option).u32(self.length);
        w.len()
    }
}

/// An option reply header: `REP_MAGIC | u32 option | u32 type | u32 length`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionReplyHeader {
    /// The option being answered.
    pub option: u32,
    /// Reply type (`REP_*`).
    pub reply_type: u32,
    /// Length of the payload that follows.
    pub length: u32,
}

impl OptionReplyHeader {
    /// Length on the wire.
    pub const LEN: usize = 20;

    /// Parse from the start of `buf`.
    pub fn parse(buf: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(buf);
        if r.u64()? != REP_MAGIC {
            return Err(WireError::BadMagic);
        }
        Ok(OptionReplyHeader {
            option: r.u32()?,
            reply_type: r.u32()?,
            length: r.u32()?,
        })
    }

    /// Write into `buf`, returning the length written.
    pub fn emit(&self, buf: &mut [u8]) -> usize {
        let mut w = Writer::new(buf);
        w.u64(REP_MAGIC)
            .u32(self.option)
            .u32(self.reply_type)
            .u32(self.length);
        w.len()
    }
}

/// The reply to a successful `NBD_OPT_EXPORT_NAME`:
/// `u64 size | u16 eflags [| 124 zero bytes]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportNameReply {
    /// Export size.
    pub size: u64,
    /// Transmission flags.
    pub eflags: u16,
    /// Whether the 124 zero bytes are left out (NO_ZEROES negotiated).
    pub no_zeroes: bool,
}

impl ExportNameReply {
    /// Length on the wire.
    pub fn buffer_len(&self) -> usize {
        if self.no_zeroes {
            10
        } else {
            134
        }
    }

    /// Write into `buf`, returning the length written.
    pub fn emit(&self, buf: &mut [u8]) -> usize {
        let mut w = Writer::new(buf);
        w.u64(self.size).u16(self.eflags);
        if !self.no_zeroes {
            w.zeroes(124);
        }
        w.len()
    }
}

/// The payload of `NBD_OPT_INFO` and `NBD_OPT_GO`:
/// `u32 namelen | name | u16 n | n x u16 info`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InfoRequest<'a> {
    /// The export name (not checked for UTF-8 here).
    pub name: &'a [u8],
    /// The raw list of requested info types, 2 bytes each.
    pub infos: &'a [u8],
}

impl<'a> InfoRequest<'a> {
    /// Parse a whole option payload; any inconsistency of the lengths is
    /// `Malformed` (the server answers `ERR_INVALID`).
    pub fn parse(payload: &'a [u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(payload);
        let namelen = r.u32().map_err(|_| WireError::Malformed)? as usize;
        let name = r.take(namelen).map_err(|_| WireError::Malformed)?;
        let n = r.u16().map_err(|_| WireError::Malformed)? as usize;
        if r.remaining() != n * 2 {
            return Err(WireError::Malformed);
        }
        Ok(InfoRequest {
            name,
            infos: r.rest(),
        })
    }

    /// The requested info types.
    pub fn info_types(&self) -> impl Iterator<Item = u16> + 'a {
        self.infos
            .chunks_exact(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
    }
}

/// The payload of `NBD_OPT_LIST_META_CONTEXT` and `NBD_OPT_SET_META_CONTEXT`:
/// `u32 namelen | export | u32 n | n x (u32 len | query)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetaContextRequest<'a> {
    /// The export the contexts are for.
    pub export: &'a [u8],
    /// Number of queries.
    pub count: u32,
    /// The raw queries.
    pub queries: &'a [u8],
}

impl<'a> MetaContextRequest<'a> {
    /// Parse and check a whole option payload: every length must stay inside it.
    pub fn parse(payload: &'a [u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(payload);
        let namelen = r.u32().map_err(|_| WireError::Malformed)? as usize;
        let export = r.take(namelen).map_err(|_| WireError::Malformed)?;
        let count = r.u32().map_err(|_| WireError::Malformed)?;
        let queries = r.rest();
        let req = MetaContextRequest {
            export,
            count,
            queries,
        };
        // Validate every query length now, so iteration cannot fail.
        let mut q = Reader::new(queries);
        for _ in 0..count {
            let len = q.u32().map_err(|_| WireError::Malformed)? as usize;
            q.take(len).map_err(|_| WireError::Malformed)?;
        }
        if q.remaining() != 0 {
            return Err(WireError::Malformed);
        }
        Ok(req)
    }

    /// The queries, each a context name or pattern.
    pub fn iter(&self) -> impl Iterator<Item = &'a [u8]> + 'a {
        let mut r = Reader::new(self.queries);
        let count = self.count;
        (0..count).map_while(move |_| {
            let len = r.u32().ok()? as usize;
            r.take(len).ok()
        })
    }
}

#[cfg(test)]
mod test {
    use super::*;

    const GREETING: [u8; 18] = [
        0x4e, 0x42, 0x44, 0x4d, 0x41, 0x47, 0x49, 0x43, 0x49, 0x48, 0x41, 0x56, 0x45, 0x4f, 0x50,
        0x54, 0x00, 0x03,
    ];

    #[test]
    fn test_emit_greeting() {
        let mut b = [0u8; 18];
        assert_eq!(NewstyleGreeting { flags: 3 }.emit(&mut b), 18);
        assert_eq!(b, GREETING);
    }

    #[test]
    fn test_parse_greeting() {
        assert_eq!(
            NewstyleGreeting::parse(&GREETING),
            Ok(NewstyleGreeting { flags: 3 })
        );
        assert_eq!(
            NewstyleGreeting::parse(&GREETING[..17]),
            Err(WireError::Truncated)
        );
    }

    #[test]
    fn test_oldstyle_roundtrip() {
        let g = OldstyleGreeting {
            size: 1 << 20,
            eflags: 0x0d,
        };
        let mut b = [0xffu8; 152];
        assert_eq!(g.emit(&mut b), 152);
        assert_eq!(&b[8..16], &[0, 0, 0x42, 0x02, 0x81, 0x86, 0x12, 0x53]);
        assert_eq!(&b[16..24], &[0, 0, 0, 0, 0, 0x10, 0, 0]);
        assert_eq!(&b[24..28], &[0, 0, 0, 0x0d]);
        assert_eq!(OldstyleGreeting::parse(&b), Ok(g));
    }

    #[test]
    fn test_option_header() {
        // NBD_OPT_GO with 8 bytes of payload, as nbdinfo sends it.
        let bytes = [
            0x49, 0x48, 0x41, 0x56, 0x45, 0x4f, 0x50, 0x54, 0, 0, 0, 7, 0, 0, 0, 8,
        ];
        let h = OptionHeader::parse(&bytes).unwrap();
        assert_eq!(
            h,
            OptionHeader {
                option: OPT_GO,
                length: 8
            }
        );
        let mut b = [0u8; 16];
        h.emit(&mut b);
        assert_eq!(b, bytes);
        let mut bad = bytes;
        bad[0] = 0;
        assert_eq!(OptionHeader::parse(&bad), Err(WireError::BadMagic));
    }

    #[test]
    fn test_option_reply_header() {
        let h = OptionReplyHeader {
            option: OPT_LIST,
            reply_type: REP_ERR_UNSUP,
            length: 0,
        };
        let mut b = [0u8; 20];
        h.emit(&mut b);
        assert_eq!(
            b,
            [0, 3, 0xe8, 0x89, 0x04, 0x55, 0x65, 0xa9, 0, 0, 0, 3, 0x80, 0, 0, 1, 0, 0, 0, 0]
        );
        assert_eq!(OptionReplyHeader::parse(&b), Ok(h));
    }

    #[test]
    fn test_export_name_reply() {
        let r = ExportNameReply {
            size: 512,
            eflags: 1,
            no_zeroes: true,
        };
        let mut b = [0u8; 134];
        assert_eq!(r.emit(&mut b), 10);
        assert_eq!(&b[..10], &[0, 0, 0, 0, 0, 0, 2, 0, 0, 1]);
        let r = ExportNameReply {
            no_zeroes: false,
            ..r
        };
        assert_eq!(r.emit(&mut b), 134);
    }

    #[test]
    fn test_info_request() {
        let p = [0, 0, 0, 2, b'h', b'i', 0, 2, 0, 3, 0, 1];
        let r = InfoRequest::parse(&p).unwrap();
        assert_eq!(r.name, b"hi");
        assert!(r.info_types().eq([INFO_BLOCK_SIZE, INFO_NAME]));
        assert_eq!(InfoRequest::parse(&p[..11]), Err(WireError::Malformed));
        assert_eq!(
            InfoRequest::parse(&[0, 0, 0, 9, 0, 0]),
            Err(WireError::Malformed)
        );
    }

    #[test]
    fn test_meta_context_request() {
        let mut p = [0u8; 4 + 4 + 4 + 11];
        p[4..8].copy_from_slice(&1u32.to_be_bytes());
        p[8..12].copy_from_slice(&11u32.to_be_bytes());
        p[12..23].copy_from_slice(b"base:alloca");
        let r = MetaContextRequest::parse(&p).unwrap();
        assert!(r.iter().eq([&b"base:alloca"[..]]));
        assert_eq!(
            MetaContextRequest::parse(&p[..22]),
            Err(WireError::Malformed)
        );
    }
}
