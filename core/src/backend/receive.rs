//! Writes received in place: a plugin hands out the buffers that a
//! write's payload is read into, and makes the write once they are full
//! ([`Receive`]), so that the payload is copied once, from the socket to
//! where it stays.

use super::{Flags, Result};

/// The destination of one write's payload, given by the plugin
/// ([`super::Handle::receive_write`]) before the payload is read.
///
/// Nothing is written until [`Receive::commit`]: the buffers belong to
/// this write alone (no reader sees them), so a payload that never arrives
/// whole (the client went away) is dropped and leaves the disk as it was.
pub trait Receive: Send {
    /// Length of the payload.
    fn len(&self) -> usize;

    /// Whether the payload is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Where the payload's bytes from `at` (below [`Receive::len`]) go,
    /// appended to `out` in order: the rest of the buffer that holds byte
    /// `at`, then the following buffers to the end of the payload. Bytes
    /// are filled in order; the runtime asks again from where it got to.
    fn bufs<'a>(&'a mut self, at: usize, out: &mut alloc::vec::Vec<&'a mut [u8]>);

    /// Make the write, every byte of the payload having been filled.
    fn commit(self: alloc::boxed::Box<Self>, flags: Flags) -> Result<()>;
}
