//! The bytes a negotiation state machine (server or client) has queued for
//! the runtime to send: a fixed buffer, compacted when it fills.

/// Queued output of at most `N` bytes: `buf[start..]` is not sent yet.
#[derive(Clone)]
pub(crate) struct Outbox<const N: usize> {
    buf: heapless::Vec<u8, N>,
    start: usize,
}

impl<const N: usize> Outbox<N> {
    /// An empty queue.
    pub(crate) const fn new() -> Self {
        Outbox {
            buf: heapless::Vec::new(),
            start: 0,
        }
    }

    /// The bytes not sent yet.
    pub(crate) fn pending(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// Mark `n` pending bytes as sent.
    pub(crate) fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.buf.len());
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
    }

    /// Free room.
    pub(crate) fn space(&self) -> usize {
        N - self.pending().len()
    }

    /// Queue `b`; false (and nothing queued) if it does not fit.
    pub(crate) fn push(&mut self, b: &[u8]) -> bool {
        if self.start > 0 && self.buf.len() + b.len() > N {
            // Move the pending bytes to the front.
            let len = self.buf.len();
            self.buf.copy_within(self.start..len, 0);
            self.buf.truncate(len - self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(b).is_ok()
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn compacts_and_refuses_overflow() {
        let mut o = Outbox::<8>::new();
        assert!(o.push(b"abcdef"));
        o.consume(4);
        assert!(o.push(b"ghij"));
        assert_eq!(o.pending(), b"efghij");
        assert!(!o.push(b"klm"));
        assert_eq!(&o.pending()[..4], b"efgh");
        o.consume(4);
        assert_eq!(o.space(), 6);
    }
}
