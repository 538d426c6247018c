//! The one writer of a connection's replies. Replies finish out of order
//! on several threads; each is written whole (header, then payload) under
//! one lock, so two replies never interleave on the wire.

use super::{lock, Mutex};

/// Where reply bytes go (a socket's write half, a buffer in tests).
pub trait ReplySink {
    /// Write all of `bytes`; false when the connection is gone.
    fn write_all(&mut self, bytes: &[u8]) -> bool;
}

impl ReplySink for alloc::vec::Vec<u8> {
    fn write_all(&mut self, bytes: &[u8]) -> bool {
        self.extend_from_slice(bytes);
        true
    }
}

/// A sink shared by the threads that answer one connection's requests.
#[derive(Debug)]
pub struct ReplyWriter<W> {
    sink: Mutex<W>,
}

impl<W: ReplySink> ReplyWriter<W> {
    /// A writer over `sink`.
    pub fn new(sink: W) -> Self {
        ReplyWriter {
            sink: Mutex::new(sink),
        }
    }

    /// Write one reply made of `parts` (e.g. a chunk header and its data)
    /// without letting another reply in between. False if the sink failed.
    pub fn send(&self, parts: &[&[u8]]) -> bool {
        let mut sink = lock(&self.sink);
        parts.iter().all(|p| sink.write_all(p))
    }

    /// Write one reply with `f`, which has the sink to itself (no other
    /// reply gets in while it runs). False if it failed.
    pub fn send_with(&self, f: impl FnOnce(&mut W) -> bool) -> bool {
        let mut sink = lock(&self.sink);
        f(&mut sink)
    }

    /// The sink back, once every sender is done.
    pub fn into_inner(self) -> W {
        match self.sink.into_inner() {
            Ok(w) => w,
            Err(p) => p.into_inner(),
        }
    }
}
