//! The bytes a negotiation state machine (server or client) has queued for
//! the runtime to send: a fixed buffer, compacted when it fills.

/// Queued output of at most `N` bytes.
#[derive(Clone, Copy)]
pub(crate) struct Outbox<const N: usize> {
    buf: [u8; N],
    start: usize,
    end: usize,
}

impl<const N: usize> Outbox<N> {
    /// An empty queue.
    pub(crate) const fn new() -> Self {
        Outbox {
            buf: [0; N],
            start: 0,
            end: 0,
        }
    }

    /// The bytes not sent yet.
    pub(crate) fn pending(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Mark `n` pending bytes as sent.
    pub(crate) fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Copy pending bytes into `out`, consuming them; returns how many.
    pub(crate) fn take_into(&mut self, out: &mut [u8]) -> usize {
        let n = self.pending().len().min(out.len());
        out[..n].copy_from_slice(&self.buf[self.start..self.start + n]);
        self.consume(n);
        n
    }

    /// Free room.
    pub(crate) fn space(&self) -> usize {
        N - (self.end - self.start)
    }

    /// Queue `b`; false (and nothing queued) if it does not fit.
    pub(crate) fn push(&mut self, b: &[u8]) -> bool {
        if self.start > 0 && self.end + b.len() > N {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end + b.len() > N {
            return false;
        }
        self.buf[self.end..self.end + b.len()].copy_from_slice(b);
        self.end += b.len();
        true
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
        let mut out = [0u8; 4];
        assert_eq!(o.take_into(&mut out), 4);
        assert_eq!(&out, b"efgh");
        assert_eq!(o.space(), 6);
    }
}
