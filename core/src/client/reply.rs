//! The transmission phase as a client: request headers go out through
//! [`RequestHeader`](crate::wire::transmission::RequestHeader); replies come
//! back as a header ([`ReplyHeader`]) the runtime matches to its request by
//! cookie, then as chunks that the request's [`Reply`] checks one by one
//! before saying what to read next ([`Next`]).
//!
//! A [`Reply`] follows the rules of the protocol for the negotiated style:
//! no simple replies with extended headers, no data-less success for a
//! READ, chunks only inside the request's range and never overlapping,
//! payload lengths bounded before anything is read, nothing after
//! `REPLY_FLAG_DONE`. A break of these rules is a [`ProtocolError`]: the
//! connection can no longer be trusted. A read that the server ends
//! without covering every byte, or a block status without descriptors,
//! fails only that request, with `EIO`.

use crate::transmission::{Command, ReplyStyle};
use crate::wire::consts::*;
use crate::wire::transmission::{ChunkHeader, SimpleReply};
use crate::wire::Reader;

/// Bytes every reply starts with (the simple reply is the shortest header).
pub const MIN_HEADER_LEN: usize = SimpleReply::LEN;
/// The longest reply header.
pub const MAX_HEADER_LEN: usize = ChunkHeader::EXTENDED_LEN;
/// The longest ERROR or ERROR_OFFSET payload (a 16-bit message length).
pub const MAX_ERROR_PAYLOAD: usize = 6 + 65535 + 8;
/// Most block status descriptors accepted in one chunk (nbdkit's limit on
/// an extent list).
pub const MAX_DESCRIPTORS: usize = 1 << 20;

/// The server broke the protocol: the connection must be closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProtocolError(pub &'static str);

impl core::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "protocol error from the server: {}", self.0)
    }
}

/// A decoded reply header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyHeader {
    /// A simple reply.
    Simple(SimpleReply),
    /// A structured or extended chunk header.
    Chunk(ChunkHeader),
}

impl ReplyHeader {
    /// The cookie of the request it answers.
    pub fn cookie(&self) -> u64 {
        match self {
            ReplyHeader::Simple(s) => s.cookie,
            ReplyHeader::Chunk(c) => c.cookie,
        }
    }
}

/// The length of the reply header whose first [`MIN_HEADER_LEN`] bytes
/// are in `start`, for the negotiated `style`.
pub fn header_len(start: &[u8], style: ReplyStyle) -> Result<usize, ProtocolError> {
    let Some(m) = start.get(..4) else {
        return Err(ProtocolError("short reply header"));
    };
    match u32::from_be_bytes([m[0], m[1], m[2], m[3]]) {
        SIMPLE_REPLY_MAGIC if !style.extended => Ok(SimpleReply::LEN),
        STRUCTURED_REPLY_MAGIC if style.structured && !style.extended => {
            Ok(ChunkHeader::STRUCTURED_LEN)
        }
        EXTENDED_REPLY_MAGIC if style.extended => Ok(ChunkHeader::EXTENDED_LEN),
        SIMPLE_REPLY_MAGIC | STRUCTURED_REPLY_MAGIC | EXTENDED_REPLY_MAGIC => {
            Err(ProtocolError("reply in a style that was not negotiated"))
        }
        _ => Err(ProtocolError("bad reply magic")),
    }
}

/// Decode a whole reply header (`buf` holds [`header_len`] bytes).
pub fn parse_header(buf: &[u8], style: ReplyStyle) -> Result<ReplyHeader, ProtocolError> {
    let len = header_len(buf, style)?;
    let buf = buf.get(..len).ok_or(ProtocolError("short reply header"))?;
    let bad = |_| ProtocolError("malformed reply header");
    Ok(match len {
        SimpleReply::LEN => ReplyHeader::Simple(SimpleReply::parse(buf).map_err(bad)?),
        ChunkHeader::STRUCTURED_LEN => {
            ReplyHeader::Chunk(ChunkHeader::parse_structured(buf).map_err(bad)?)
        }
        _ => ReplyHeader::Chunk(ChunkHeader::parse_extended(buf).map_err(bad)?),
    })
}

/// What the runtime does next for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Read the next reply header (it may be another request's).
    Header,
    /// Read exactly this many bytes and pass them to [`Reply::payload`].
    Payload(usize),
    /// Read `len` bytes of READ data into the request's buffer at `at`, then
    /// go on with `then`.
    Data {
        /// Where in the buffer.
        at: usize,
        /// How many bytes.
        len: usize,
        /// [`Next::Header`] or [`Next::Done`].
        last: bool,
    },
    /// The reply is complete: take [`Reply::result`].
    Done,
}

/// Where a chunk's small payload goes.
pub trait ReplySink {
    /// Zero `len` bytes of the READ buffer at `at` (an OFFSET_HOLE chunk).
    fn zero(&mut self, at: usize, len: usize);
    /// One block status descriptor of `base:allocation`, in order from the
    /// request's offset.
    fn extent(&mut self, offset: u64, length: u64, flags: u32);
    /// The server's error message for this request.
    fn message(&mut self, _error: u32, _message: &[u8]) {}
}

/// A request as the client sent it: what its reply must match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    /// The command.
    pub command: Command,
    /// Its offset.
    pub offset: u64,
    /// Its length (for READ, the buffer's length).
    pub count: u64,
}

/// Disjoint ranges of a READ buffer the server has filled, merged as they
/// touch. Servers send chunks in order, so one range usually grows; a
/// reply fragmented beyond [`Coverage::CAP`] pieces is refused.
#[derive(Debug, Clone, Copy)]
struct Coverage {
    n: usize,
    ranges: [(u64, u64); Coverage::CAP],
}

impl Coverage {
    const CAP: usize = 16;

    const fn new() -> Self {
        Coverage {
            n: 0,
            ranges: [(0, 0); Coverage::CAP],
        }
    }

    /// Add `start..end`; an overlap with what is there is an error.
    fn add(&mut self, start: u64, end: u64) -> Result<(), ProtocolError> {
        let mut i = 0;
        while i < self.n && self.ranges[i].1 < start {
            i += 1;
        }
        if i < self.n && self.ranges[i].0 < end {
            return Err(ProtocolError("overlapping read chunks"));
        }
        let joins_prev = i > 0 && self.ranges[i - 1].1 == start;
        let joins_next = i < self.n && self.ranges[i].0 == end;
        match (joins_prev, joins_next) {
            (true, true) => {
                self.ranges[i - 1].1 = self.ranges[i].1;
                self.ranges.copy_within(i + 1..self.n, i);
                self.n -= 1;
            }
            (true, false) => self.ranges[i - 1].1 = end,
            (false, true) => self.ranges[i].0 = start,
            (false, false) => {
                if self.n == Self::CAP {
                    return Err(ProtocolError("read reply too fragmented"));
                }
                self.ranges.copy_within(i..self.n, i + 1);
                self.ranges[i] = (start, end);
                self.n += 1;
            }
        }
        Ok(())
    }

    /// True if `0..len` is covered.
    fn covers(&self, len: u64) -> bool {
        len == 0 || (self.n == 1 && self.ranges[0] == (0, len))
    }
}

/// What the last chunk header announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    Nothing,
    /// OFFSET_DATA: the 8-byte offset, then `len` bytes of data.
    DataOffset {
        len: u64,
    },
    /// OFFSET_HOLE: offset and size.
    Hole,
    /// BLOCK_STATUS or BLOCK_STATUS_EXT.
    BlockStatus,
    /// ERROR or ERROR_OFFSET (or an unknown error type).
    Error {
        with_offset: bool,
    },
}

/// The state of one request's reply.
#[derive(Debug, Clone, Copy)]
pub struct Reply {
    sent: Sent,
    style: ReplyStyle,
    base_allocation: Option<u32>,
    pending: Pending,
    last: bool,
    chunks: u32,
    error: u32,
    covered: Coverage,
    extents: bool,
    done: bool,
}

impl Reply {
    /// Expect the reply to `sent` on a connection of `style`, where
    /// `base_allocation` is the negotiated context id.
    pub fn new(sent: Sent, style: ReplyStyle, base_allocation: Option<u32>) -> Self {
        Reply {
            sent,
            style,
            base_allocation,
            pending: Pending::Nothing,
            last: false,
            chunks: 0,
            error: 0,
            covered: Coverage::new(),
            extents: false,
            done: false,
        }
    }

    /// The request this reply answers.
    pub fn sent(&self) -> Sent {
        self.sent
    }

    /// True once the reply is complete.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The outcome: `Ok` or the NBD error number (never 0). Only
    /// meaningful once [`is_done`](Self::is_done).
    pub fn result(&self) -> Result<(), u32> {
        if self.error != 0 {
            return Err(self.error);
        }
        match self.sent.command {
            Command::Read if !self.covered.covers(self.sent.count) => Err(NBD_EIO),
            Command::BlockStatus if !self.extents => Err(NBD_EIO),
            _ => Ok(()),
        }
    }

    fn finish(&mut self) -> Next {
        self.done = true;
        Next::Done
    }

    fn after_chunk(&mut self) -> Next {
        if self.last {
            self.finish()
        } else {
            Next::Header
        }
    }

    /// A reply header for this request arrived.
    pub fn header(&mut self, h: &ReplyHeader) -> Result<Next, ProtocolError> {
        if self.done || self.pending != Pending::Nothing {
            return Err(ProtocolError("reply header out of turn"));
        }
        match h {
            ReplyHeader::Simple(s) => self.simple(s.error),
            ReplyHeader::Chunk(c) => self.chunk(c),
        }
    }

    fn simple(&mut self, error: u32) -> Result<Next, ProtocolError> {
        if self.style.extended || self.chunks > 0 {
            return Err(ProtocolError("unexpected simple reply"));
        }
        if error != 0 {
            self.error = error;
            return Ok(self.finish());
        }
        match self.sent.command {
            Command::Read if self.style.structured => Err(ProtocolError(
                "simple reply to a read with structured replies",
            )),
            Command::Read => {
                let len = self.sent.count as usize;
                self.covered.add(0, self.sent.count)?;
                self.done = true;
                Ok(Next::Data {
                    at: 0,
                    len,
                    last: true,
                })
            }
            Command::BlockStatus => Err(ProtocolError("simple reply to block status")),
            _ => Ok(self.finish()),
        }
    }

    fn chunk(&mut self, c: &ChunkHeader) -> Result<Next, ProtocolError> {
        if !self.style.structured {
            return Err(ProtocolError("chunk without structured replies"));
        }
        self.chunks = self.chunks.saturating_add(1);
        self.last = c.flags & REPLY_FLAG_DONE != 0;
        let len = c.length;
        let cmd = self.sent.command;
        let error_type = c.chunk_type & 0x8000 != 0;
        match c.chunk_type {
            REPLY_TYPE_NONE => {
                if len != 0 || !self.last {
                    return Err(ProtocolError("malformed NONE chunk"));
                }
                Ok(self.finish())
            }
            REPLY_TYPE_OFFSET_DATA => {
                if cmd != Command::Read {
                    return Err(ProtocolError("data chunk for a command that is not a read"));
                }
                if len <= 8 || len - 8 > self.sent.count {
                    return Err(ProtocolError("bad data chunk length"));
                }
                self.pending = Pending::DataOffset { len: len - 8 };
                Ok(Next::Payload(8))
            }
            REPLY_TYPE_OFFSET_HOLE => {
                if cmd != Command::Read {
                    return Err(ProtocolError("hole chunk for a command that is not a read"));
                }
                if len != 12 {
                    return Err(ProtocolError("bad hole chunk length"));
                }
                self.pending = Pending::Hole;
                Ok(Next::Payload(12))
            }
            REPLY_TYPE_BLOCK_STATUS | REPLY_TYPE_BLOCK_STATUS_EXT => {
                let extended = c.chunk_type == REPLY_TYPE_BLOCK_STATUS_EXT;
                if cmd != Command::BlockStatus || extended != self.style.extended {
                    return Err(ProtocolError("unexpected block status chunk"));
                }
                let (fixed, each) = if extended { (8, 16) } else { (4, 8) };
                let max = fixed + each * MAX_DESCRIPTORS as u64;
                if len < fixed + each || len > max || (len - fixed) % each != 0 {
                    return Err(ProtocolError("bad block status chunk length"));
                }
                self.pending = Pending::BlockStatus;
                Ok(Next::Payload(len as usize))
            }
            REPLY_TYPE_ERROR | REPLY_TYPE_ERROR_OFFSET => {
                let with_offset = c.chunk_type == REPLY_TYPE_ERROR_OFFSET;
                let min = if with_offset { 14 } else { 6 };
                if len < min || len > MAX_ERROR_PAYLOAD as u64 {
                    return Err(ProtocolError("bad error chunk length"));
                }
                self.pending = Pending::Error { with_offset };
                Ok(Next::Payload(len as usize))
            }
            _ if error_type => {
                // An error type this client does not know: its payload
                // still starts with the error number and message.
                if len < 6 || len > MAX_ERROR_PAYLOAD as u64 {
                    return Err(ProtocolError("bad error chunk length"));
                }
                self.pending = Pending::Error { with_offset: false };
                Ok(Next::Payload(len as usize))
            }
            _ => Err(ProtocolError("unknown chunk type")),
        }
    }

    /// The payload announced by [`Next::Payload`].
    pub fn payload(
        &mut self,
        payload: &[u8],
        sink: &mut dyn ReplySink,
    ) -> Result<Next, ProtocolError> {
        let pending = core::mem::replace(&mut self.pending, Pending::Nothing);
        let mut r = Reader::new(payload);
        let short = |_| ProtocolError("short chunk payload");
        match pending {
            Pending::Nothing => Err(ProtocolError("payload out of turn")),
            Pending::DataOffset { len } => {
                let offset = r.u64().map_err(short)?;
                let at = self.range(offset, len)?;
                self.covered.add(at, at + len)?;
                let last = self.last;
                if last {
                    self.done = true;
                }
                Ok(Next::Data {
                    at: at as usize,
                    len: len as usize,
                    last,
                })
            }
            Pending::Hole => {
                let offset = r.u64().map_err(short)?;
                let len = u64::from(r.u32().map_err(short)?);
                if len == 0 {
                    return Err(ProtocolError("empty hole chunk"));
                }
                let at = self.range(offset, len)?;
                self.covered.add(at, at + len)?;
                sink.zero(at as usize, len as usize);
                Ok(self.after_chunk())
            }
            Pending::BlockStatus => {
                let id = r.u32().map_err(short)?;
                if self.style.extended {
                    let n = r.u32().map_err(short)? as usize;
                    if n.checked_mul(16) != Some(r.remaining()) {
                        return Err(ProtocolError("block status descriptor count mismatch"));
                    }
                }
                if Some(id) != self.base_allocation {
                    return Err(ProtocolError("block status for a context not negotiated"));
                }
                if self.extents {
                    return Err(ProtocolError("second block status chunk for the context"));
                }
                self.extents = true;
                let mut offset = self.sent.offset;
                while r.remaining() > 0 {
                    let (len, flags) = if self.style.extended {
                        let len = r.u64().map_err(short)?;
                        let flags = r.u64().map_err(short)?;
                        (len, flags as u32)
                    } else {
                        (u64::from(r.u32().map_err(short)?), r.u32().map_err(short)?)
                    };
                    if len == 0 {
                        return Err(ProtocolError("zero-length block status descriptor"));
                    }
                    sink.extent(offset, len, flags & (STATE_HOLE | STATE_ZERO));
                    offset = offset.saturating_add(len);
                }
                Ok(self.after_chunk())
            }
            Pending::Error { with_offset } => {
                let error = r.u32().map_err(short)?;
                let mlen = r.u16().map_err(short)? as usize;
                let message = r.take(mlen).map_err(short)?;
                if with_offset {
                    let offset = r.u64().map_err(short)?;
                    if self.sent.command == Command::Read {
                        self.range(offset, 1)?;
                    }
                }
                if r.remaining() != 0 && with_offset {
                    return Err(ProtocolError("error chunk longer than its contents"));
                }
                if error == 0 {
                    return Err(ProtocolError("error chunk with error 0"));
                }
                sink.message(error, message);
                if self.error == 0 {
                    self.error = error;
                }
                Ok(self.after_chunk())
            }
        }
    }

    /// The position in the request of `len` bytes at `offset`, checked to
    /// lie inside it.
    fn range(&self, offset: u64, len: u64) -> Result<u64, ProtocolError> {
        let start = self.sent.offset;
        let end = start.saturating_add(self.sent.count);
        match offset.checked_add(len) {
            Some(e) if offset >= start && e <= end => Ok(offset - start),
            _ => Err(ProtocolError("chunk outside the request")),
        }
    }
}

/// Map an NBD error from the server to the errno of the request (the
/// errors the protocol names; anything else is `EINVAL`, as libnbd does).
pub fn errno_of(error: u32) -> crate::errno::Errno {
    use crate::errno::Errno;
    match error {
        NBD_EPERM => Errno::EPERM,
        NBD_EIO => Errno::EIO,
        NBD_ENOMEM => Errno::ENOMEM,
        NBD_EINVAL => Errno::EINVAL,
        NBD_ENOSPC => Errno::ENOSPC,
        NBD_EOVERFLOW => Errno::EOVERFLOW,
        NBD_ENOTSUP => Errno::ENOTSUP,
        NBD_ESHUTDOWN => Errno::ESHUTDOWN,
        _ => Errno::EINVAL,
    }
}
