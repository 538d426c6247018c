//! Bytes of a read that a plugin lends instead of copying ([`Lent`]), so
//! that the runtime can write them to the socket straight from the
//! plugin's memory (a vectored write of the reply header and the pages).

use alloc::sync::Arc;
use alloc::vec::Vec;

/// A shared, immutable run of bytes a plugin keeps (a page of the memory
/// plugin). It is only ever read once lent: a plugin that writes to a page
/// while it is lent writes to a copy (copy-on-write).
pub type SharedBytes = Arc<dyn LentBytes>;

/// Bytes a plugin lends ([`SharedBytes`]): anything that is `[u8]`-like.
pub trait LentBytes: Send + Sync {
    /// The bytes.
    fn bytes(&self) -> &[u8];

    /// Whether the runtime may hand these bytes to the kernel by reference
    /// (`vmsplice(2)`) instead of copying them, and mark them so. The
    /// kernel may then go on reading the memory after the runtime let go
    /// of it (a client that splices the socket into a pipe of its own):
    /// bytes that say yes are wiped with [`set_free_hook`]'s hook before
    /// their memory is freed for reuse, so that only what they held can
    /// ever be read there. Default: no (the runtime copies them).
    fn give_to_kernel(&self) -> bool {
        false
    }
}

impl<T: AsRef<[u8]> + Send + Sync + ?Sized> LentBytes for T {
    fn bytes(&self) -> &[u8] {
        self.as_ref()
    }
}

/// What to do with memory given to the kernel before it is freed
/// ([`LentBytes::give_to_kernel`]): a `fn(ptr, len)` stored as a usize.
static FREE_HOOK: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);

/// Set the hook that detaches memory given to the kernel from the
/// process before it is freed (on Linux, `madvise(MADV_DONTNEED)`: the
/// pages the kernel still holds keep their bytes, the memory reused gets
/// fresh pages). Until it is set, no bytes may be given to the kernel.
/// `ptr..ptr + len` is page-aligned.
pub fn set_free_hook(hook: fn(*mut u8, usize)) {
    FREE_HOOK.store(hook as usize, core::sync::atomic::Ordering::Release);
}

/// The hook of [`set_free_hook`], if set.
pub fn free_hook() -> Option<fn(*mut u8, usize)> {
    match FREE_HOOK.load(core::sync::atomic::Ordering::Acquire) {
        0 => None,
        // SAFETY: only ever stored from a `fn(*mut u8, usize)`.
        f => Some(unsafe { core::mem::transmute::<usize, fn(*mut u8, usize)>(f) }),
    }
}

/// Size of the one static page of zeroes that zero segments point into.
pub const ZERO_PAGE_LEN: usize = 32 * 1024;

/// The page of zeroes that [`Segment::Zeroes`] is read from.
pub static ZERO_PAGE: [u8; ZERO_PAGE_LEN] = [0; ZERO_PAGE_LEN];

/// One run of the bytes of a lent read.
#[derive(Clone)]
pub enum Segment {
    /// `len` bytes of `bytes`, from `start`.
    Bytes {
        /// The page.
        bytes: SharedBytes,
        /// First byte of the run in the page.
        start: usize,
        /// Length of the run.
        len: usize,
    },
    /// `len` zero bytes (a hole).
    Zeroes(usize),
}

impl core::fmt::Debug for Segment {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Segment::Bytes { start, len, .. } => write!(f, "Bytes({start}+{len})"),
            Segment::Zeroes(n) => write!(f, "Zeroes({n})"),
        }
    }
}

/// The bytes of one read, lent by the plugin: the concatenation of its
/// segments. `Send + 'static`, so a runtime can hold it while the socket
/// drains.
#[derive(Debug, Clone, Default)]
pub struct Lent {
    segments: Vec<Segment>,
    len: usize,
}

impl Lent {
    /// Nothing yet, with room for `n` segments.
    pub fn with_capacity(n: usize) -> Self {
        Lent {
            segments: Vec::with_capacity(n),
            len: 0,
        }
    }

    /// Append `len` bytes of `bytes` from `start`.
    ///
    /// # Panics
    /// If `start..start + len` is not inside `bytes` (a plugin bug, caught
    /// by the runtime like any panic in a plugin call).
    pub fn push_bytes(&mut self, bytes: SharedBytes, start: usize, len: usize) {
        assert!(
            start
                .checked_add(len)
                .is_some_and(|end| end <= bytes.bytes().len()),
            "lent range out of its page"
        );
        if len == 0 {
            return;
        }
        self.segments.push(Segment::Bytes { bytes, start, len });
        self.len += len;
    }

    /// Append `len` zero bytes (merged with a zero run before it).
    pub fn push_zeroes(&mut self, len: usize) {
        if len == 0 {
            return;
        }
        if let Some(Segment::Zeroes(n)) = self.segments.last_mut() {
            *n += len;
        } else {
            self.segments.push(Segment::Zeroes(len));
        }
        self.len += len;
    }

    /// Total length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// No bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The segments, in order.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// The bytes as slices, in order (a zero run longer than
    /// [`ZERO_PAGE_LEN`] is several slices of [`ZERO_PAGE`]).
    pub fn slices(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.segments.iter().flat_map(|s| {
            let (one, zeroes) = match s {
                Segment::Bytes { bytes, start, len } => {
                    (Some(&bytes.bytes()[*start..*start + *len]), 0)
                }
                Segment::Zeroes(n) => (None, *n),
            };
            let mut left = zeroes;
            one.into_iter().chain(core::iter::from_fn(move || {
                if left == 0 {
                    return None;
                }
                let n = left.min(ZERO_PAGE_LEN);
                left -= n;
                Some(&ZERO_PAGE[..n])
            }))
        })
    }

    /// Copy the bytes into `buf` (whose length is [`Lent::len`]).
    pub fn copy_to(&self, buf: &mut [u8]) {
        let mut at = 0;
        for s in self.slices() {
            buf[at..at + s.len()].copy_from_slice(s);
            at += s.len();
        }
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use alloc::vec;

    #[test]
    fn slices_concatenate_and_split_long_zero_runs() {
        let page: SharedBytes = Arc::new([7u8; 100]);
        let mut l = Lent::with_capacity(4);
        l.push_zeroes(10);
        l.push_zeroes(ZERO_PAGE_LEN);
        l.push_bytes(page.clone(), 90, 10);
        l.push_bytes(page, 0, 0);
        l.push_zeroes(5);
        assert_eq!(l.len(), ZERO_PAGE_LEN + 25);
        assert_eq!(l.segments().len(), 3);
        let lens: Vec<usize> = l.slices().map(<[u8]>::len).collect();
        assert_eq!(lens, [ZERO_PAGE_LEN, 10, 10, 5]);
        let mut out = vec![1u8; l.len()];
        l.copy_to(&mut out);
        assert!(out[..ZERO_PAGE_LEN + 10].iter().all(|&b| b == 0));
        assert_eq!(out[ZERO_PAGE_LEN + 10..ZERO_PAGE_LEN + 20], [7; 10]);
        assert_eq!(out[ZERO_PAGE_LEN + 20..], [0; 5]);
    }
}
