//! Messages of the transmission phase: request headers (compact and
//! extended), simple replies and structured/extended reply chunks.

use super::consts::*;
use super::view::{ExtendedRequestPacket, RequestPacket};
use super::{Reader, WireError, Writer};

/// A request header, compact (28 bytes) or extended (32 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHeader {
    /// Command flags (`CMD_FLAG_*`).
    pub flags: u16,
    /// The command (`CMD_*`).
    pub command: u16,
    /// Opaque cookie echoed in the reply.
    pub cookie: u64,
    /// Offset in the export.
    pub offset: u64,
    /// Length (32 bits in compact headers).
    pub length: u64,
}

impl RequestHeader {
    /// Length of a compact header.
    pub const COMPACT_LEN: usize = 28;
    /// Length of an extended header.
    pub const EXTENDED_LEN: usize = 32;

    /// Parse a compact header.
    pub fn parse_compact(buf: &[u8]) -> Result<Self, WireError> {
        let p = RequestPacket::new_checked(buf)?;
        Ok(RequestHeader {
            flags: p.flags(),
            command: p.command(),
            cookie: p.cookie(),
            offset: p.offset(),
            length: u64::from(p.length()),
        })
    }

    /// Parse an extended header.
    pub fn parse_extended(buf: &[u8]) -> Result<Self, WireError> {
        let p = ExtendedRequestPacket::new_checked(buf)?;
        Ok(RequestHeader {
            flags: p.flags(),
            command: p.command(),
            cookie: p.cookie(),
            offset: p.offset(),
            length: p.length(),
        })
    }

    /// Write a compact header (the length is truncated to 32 bits).
    pub fn emit_compact(&self, buf: &mut [u8]) -> usize {
        let mut w = Writer::new(buf);
        w.u32(REQUEST_MAGIC)
            .u16(self.flags)
            .u16(self.command)
            .u64(self.cookie)
            .u64(self.offset)
            .u32(self.length as u32);
        w.len()
    }

    /// Write an extended header.
    pub fn emit_extended(&self, buf: &mut [u8]) -> usize {
        let mut w = Writer::new(buf);
        w.u32(EXTENDED_REQUEST_MAGIC)
            .u16(self.flags)
            .u16(self.command)
            .u64(self.cookie)
            .u64(self.offset)
            .u64(self.length);
        w.len()
    }
}

/// A simple reply: `u32 magic | u32 error | u64 cookie`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimpleReply {
    /// NBD error number, 0 for success.
    pub error: u32,
    /// The request's cookie.
    pub cookie: u64,
}

impl SimpleReply {
    /// Length on the wire.
    pub const LEN: usize = 16;

    /// Parse from the start of `buf`.
    pub fn parse(buf: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(buf);
        if r.u32()? != SIMPLE_REPLY_MAGIC {
            return Err(WireError::BadMagic);
        }
        Ok(SimpleReply {
            error: r.u32()?,
            cookie: r.u64()?,
        })
    }

    /// Write into `buf`.
    pub fn emit(&self, buf: &mut [u8]) -> usize {
        let mut w = Writer::new(buf);
        w.u32(SIMPLE_REPLY_MAGIC).u32(self.error).u64(self.cookie);
        w.len()
    }
}

/// The header of one reply chunk, structured (20 bytes) or extended (32
/// bytes; `offset` is the request's offset).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkHeader {
    /// Chunk flags (`REPLY_FLAG_DONE`).
    pub flags: u16,
    /// Chunk type (`REPLY_TYPE_*`).
    pub chunk_type: u16,
    /// The request's cookie.
    pub cookie: u64,
    /// The request's offset (extended chunks only).
    pub offset: u64,
    /// Payload length.
    pub length: u64,
}

impl ChunkHeader {
    /// Length of a structured chunk header.
    pub const STRUCTURED_LEN: usize = 20;
    /// Length of an extended chunk header.
    pub const EXTENDED_LEN: usize = 32;

    /// Parse a structured chunk header.
    pub fn parse_structured(buf: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(buf);
        if r.u32()? != STRUCTURED_REPLY_MAGIC {
            return Err(WireError::BadMagic);
        }
        Ok(ChunkHeader {
            flags: r.u16()?,
            chunk_type: r.u16()?,
            cookie: r.u64()?,
            offset: 0,
            length: u64::from(r.u32()?),
        })
    }

    /// Parse an extended chunk header.
    pub fn parse_extended(buf: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(buf);
        if r.u32()? != EXTENDED_REPLY_MAGIC {
            return Err(WireError::BadMagic);
        }
        Ok(ChunkHeader {
            flags: r.u16()?,
            chunk_type: r.u16()?,
            cookie: r.u64()?,
            offset: r.u64()?,
            length: r.u64()?,
        })
    }

    /// Write as a structured (`extended == false`) or extended chunk header.
    pub fn emit(&self, extended: bool, buf: &mut [u8]) -> usize {
        let mut w = Writer::new(buf);
        if extended {
            w.u32(EXTENDED_REPLY_MAGIC)
                .u16(self.flags)
                .u16(self.chunk_type)
                .u64(self.cookie)
                .u64(self.offset)
                .u64(self.length);
        } else {
            w.u32(STRUCTURED_REPLY_MAGIC)
                .u16(self.flags)
                .u16(self.chunk_type)
                .u64(self.cookie)
                .u32(self.length as u32);
        }
        w.len()
    }
}

/// The payload of an `ERROR` chunk: `u32 error | u16 msglen | message`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorChunk<'a> {
    /// NBD error number (non-zero).
    pub error: u32,
    /// Human-readable message.
    pub message: &'a [u8],
}

impl<'a> ErrorChunk<'a> {
    /// Payload length.
    pub fn buffer_len(&self) -> usize {
        6 + self.message.len()
    }

    /// Parse a payload.
    pub fn parse(payload: &'a [u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(payload);
        let error = r.u32()?;
        let len = r.u16()? as usize;
        let message = r.take(len)?;
        if error == 0 {
            return Err(WireError::Malformed);
        }
        Ok(ErrorChunk { error, message })
    }

    /// Write the payload.
    pub fn emit(&self, buf: &mut [u8]) -> usize {
        let mut w = Writer::new(buf);
        w.u32(self.error)
            .u16(self.message.len() as u16)
            .bytes(self.message);
        w.len()
    }
}

#[cfg(test)]
mod test {
    use super::*;

    // NBD_CMD_READ of 4096 bytes at 0, cookie 1, as qemu-io sends it.
    const READ_REQ: [u8; 28] = [
        0x25, 0x60, 0x95, 0x13, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0x10, 0,
    ];

    #[test]
    fn test_parse_compact_request() {
        let h = RequestHeader::parse_compact(&READ_REQ).unwrap();
        assert_eq!(
            h,
            RequestHeader {
                flags: 0,
                command: CMD_READ,
                cookie: 1,
                offset: 0,
                length: 4096
            }
        );
        let mut b = [0u8; 28];
        h.emit_compact(&mut b);
        assert_eq!(b, READ_REQ);
    }

    #[test]
    fn test_extended_request_roundtrip() {
        let h = RequestHeader {
            flags: CMD_FLAG_PAYLOAD_LEN,
            command: CMD_WRITE,
            cookie: 0xdead_beef,
            offset: 1 << 40,
            length: 1 << 33,
        };
        let mut b = [0u8; 32];
        assert_eq!(h.emit_extended(&mut b), 32);
        assert_eq!(&b[..4], &[0x21, 0xe4, 0x1c, 0x71]);
        assert_eq!(RequestHeader::parse_extended(&b), Ok(h));
        assert_eq!(RequestHeader::parse_compact(&b), Err(WireError::BadMagic));
    }

    #[test]
    fn test_simple_reply() {
        let r = SimpleReply {
            error: NBD_EINVAL,
            cookie: 7,
        };
        let mut b = [0u8; 16];
        r.emit(&mut b);
        assert_eq!(
            b,
            [0x67, 0x44, 0x66, 0x98, 0, 0, 0, 22, 0, 0, 0, 0, 0, 0, 0, 7]
        );
        assert_eq!(SimpleReply::parse(&b), Ok(r));
    }

    #[test]
    fn test_chunk_headers() {
        let h = ChunkHeader {
            flags: REPLY_FLAG_DONE,
            chunk_type: REPLY_TYPE_OFFSET_DATA,
            cookie: 2,
            offset: 0,
            length: 8 + 512,
        };
        let mut b = [0u8; 32];
        assert_eq!(h.emit(false, &mut b), 20);
        assert_eq!(
            &b[..20],
            &[0x66, 0x8e, 0x33, 0xef, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 2, 8]
        );
        assert_eq!(ChunkHeader::parse_structured(&b), Ok(h));
        let e = ChunkHeader { offset: 4096, ..h };
        assert_eq!(e.emit(true, &mut b), 32);
        assert_eq!(ChunkHeader::parse_extended(&b), Ok(e));
    }

    #[test]
    fn test_error_chunk() {
        let e = ErrorChunk {
            error: NBD_EIO,
            message: b"bad",
        };
        let mut b = [0u8; 9];
        assert_eq!(e.emit(&mut b), 9);
        assert_eq!(b, [0, 0, 0, 5, 0, 3, b'b', b'a', b'd']);
        assert_eq!(ErrorChunk::parse(&b), Ok(e));
    }
}
