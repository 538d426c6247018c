//! The byte layout of every NBD message: constants, fixed-size headers as
//! typed `Repr`s with `parse` and `emit`, and a bounds-checked [`Reader`].
//!
//! Nothing here has state or does I/O. Parsing never panics on any input;
//! emitting never allocates.

pub mod consts;
pub mod handshake;
pub mod transmission;
pub mod view;

/// Why a message did not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireError {
    /// Fewer bytes than the message needs.
    Truncated,
    /// A magic number that is not the expected one.
    BadMagic,
    /// A field with a value the protocol forbids.
    Malformed,
}

/// A cursor over a byte slice that reads big-endian integers and refuses to
/// read past its end (rustls' `codec::Reader` is the model).
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// The unread rest, consuming it.
    pub fn rest(&mut self) -> &'a [u8] {
        let r = &self.buf[self.pos..];
        self.pos = self.buf.len();
        r
    }

    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.remaining() < n {
            return Err(WireError::Truncated);
        }
        let r = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(r)
    }

    /// A big-endian u16.
    pub fn u16(&mut self) -> Result<u16, WireError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// A big-endian u32.
    pub fn u32(&mut self) -> Result<u32, WireError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A big-endian u64.
    pub fn u64(&mut self) -> Result<u64, WireError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
}

/// A cursor that writes big-endian integers into a caller's buffer.
/// Writing past the end is a programming error caught by `buffer_len`
/// checks in every `emit`; the writer itself never panics and reports
/// overflow through [`Writer::overflowed`].
#[derive(Debug)]
pub struct Writer<'a> {
    buf: &'a mut [u8],
    pos: usize,
    overflow: bool,
}

impl<'a> Writer<'a> {
    /// A writer at the start of `buf`.
    pub fn new(buf: &'a mut [u8]) -> Self {
        Writer {
            buf,
            pos: 0,
            overflow: false,
        }
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.pos
    }

    /// True when nothing was written.
    pub fn is_empty(&self) -> bool {
        self.pos == 0
    }

    /// True if a write did not fit.
    pub fn overflowed(&self) -> bool {
        self.overflow
    }

    /// Append bytes.
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        match self.buf.get_mut(self.pos..self.pos + b.len()) {
            Some(dst) => {
                dst.copy_from_slice(b);
                self.pos += b.len();
            }
            None => self.overflow = true,
        }
        self
    }

    /// Append a big-endian u16.
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.bytes(&v.to_be_bytes())
    }

    /// Append a big-endian u32.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.bytes(&v.to_be_bytes())
    }

    /// Append a big-endian u64.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.bytes(&v.to_be_bytes())
    }

    /// Append `n` zero bytes.
    pub fn zeroes(&mut self, n: usize) -> &mut Self {
        match self.buf.get_mut(self.pos..self.pos + n) {
            Some(dst) => {
                dst.fill(0);
                self.pos += n;
            }
            None => self.overflow = true,
        }
        self
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn reader_refuses_overrun() {
        let mut r = Reader::new(&[0, 1, 2]);
        assert_eq!(r.u16(), Ok(1));
        assert_eq!(r.u16(), Err(WireError::Truncated));
        assert_eq!(r.remaining(), 1);
    }

    #[test]
    fn writer_reports_overflow() {
        let mut b = [0u8; 3];
        let mut w = Writer::new(&mut b);
        w.u16(0x0102).u16(0x0304);
        assert!(w.overflowed());
        assert_eq!(w.len(), 2);
    }
}
