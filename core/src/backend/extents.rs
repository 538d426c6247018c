use alloc::vec::Vec;

use super::{Error, Result};
use crate::errno::Errno;

/// One extent: a run of bytes with the same `base:allocation` status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Where it starts.
    pub offset: u64,
    /// How long it is (never 0).
    pub length: u64,
    /// `STATE_HOLE` | `STATE_ZERO` bits.
    pub flags: u32,
}

/// The extents a layer reports for a block status request, with nbdkit's
/// rules (`nbdkit_add_extent`): contiguous and ascending, clipped at the
/// start, ignored past the end, equal neighbours merged, at most
/// [`Extents::MAX`] entries.
#[derive(Debug, Clone)]
pub struct Extents {
    start: u64,
    end: u64,
    next: u64,
    list: Vec<Extent>,
    /// Most entries kept ([`Extents::MAX`] unless [`Extents::with_limit`]).
    max: usize,
}

impl Extents {
    /// nbdkit's limit on the number of extents in one list.
    pub const MAX: usize = 1 << 20;

    /// An empty list for the range `start..end`.
    pub fn new(start: u64, end: u64) -> Self {
        Self::with_limit(start, end, Self::MAX)
    }

    /// An empty list for `start..end` that keeps at most `max` entries
    /// (at least 1; at most [`Extents::MAX`]) and ignores the rest, for a
    /// server that sends few extents and keeps its heap small.
    pub fn with_limit(start: u64, end: u64, max: usize) -> Self {
        Extents {
            start,
            end,
            next: start,
            list: Vec::new(),
            max: max.clamp(1, Self::MAX),
        }
    }

    /// The start of the range.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// The end of the range (exclusive).
    pub fn end(&self) -> u64 {
        self.end
    }

    /// The extents added so far.
    pub fn as_slice(&self) -> &[Extent] {
        &self.list
    }

    /// Number of extents.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// True when no extent was added.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Where the next extent must start.
    pub fn next_offset(&self) -> u64 {
        self.next
    }

    /// True once the list covers the whole range (or is full): a layer may
    /// stop adding.
    pub fn is_full(&self) -> bool {
        self.next >= self.end || self.list.len() >= self.max
    }

    /// Add an extent (`nbdkit_add_extent`).
    pub fn add(&mut self, offset: u64, length: u64, flags: u32) -> Result<()> {
        if length == 0 {
            return Ok(());
        }
        let Some(end) = offset.checked_add(length) else {
            return Err(Error::msg(
                Errno::ERANGE,
                "nbdkit_add_extent: extent overflows",
            ));
        };
        if self.list.is_empty() {
            if offset > self.start {
                return Err(Error::msg(
                    Errno::ERANGE,
                    alloc::format!(
                        "nbdkit_add_extent: first extent must not be > start ({})",
                        self.start
                    ),
                ));
            }
            if end <= self.start {
                return Ok(());
            }
        } else if self.next >= self.end || self.list.len() >= self.max {
            // Full: whatever comes next is ignored.
            return Ok(());
        } else if offset != self.next {
            return Err(Error::msg(
                Errno::ERANGE,
                "nbdkit_add_extent: extents must be added in ascending order and must be contiguous",
            ));
        }
        if self.next >= self.end || self.list.len() >= self.max {
            return Ok(());
        }
        let offset = offset.max(self.start);
        let end = end.min(self.end);
        let length = end - offset;
        self.next = end;
        if let Some(last) = self.list.last_mut() {
            if last.flags == flags {
                last.length += length;
                return Ok(());
            }
        }
        self.list.push(Extent {
            offset,
            length,
            flags,
        });
        Ok(())
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn clips_merges_and_ignores() {
        let mut e = Extents::new(100, 300);
        e.add(0, 50, 3).unwrap(); // before start: ignored
        e.add(50, 100, 3).unwrap(); // clipped to 100..150
        e.add(150, 50, 3).unwrap(); // merged
        e.add(200, 200, 0).unwrap(); // overruns the end: clipped
        e.add(400, 10, 3).unwrap(); // past the end: ignored
        assert_eq!(
            e.as_slice(),
            &[
                Extent {
                    offset: 100,
                    length: 100,
                    flags: 3
                },
                Extent {
                    offset: 200,
                    length: 100,
                    flags: 0
                }
            ]
        );
        assert!(e.is_full());
    }

    #[test]
    fn refuses_gaps() {
        let mut e = Extents::new(0, 100);
        assert!(e.add(10, 10, 0).is_err());
        e.add(0, 10, 0).unwrap();
        assert!(e.add(20, 10, 0).is_err());
    }

    #[test]
    fn a_limit_keeps_the_first_entries() {
        let mut e = Extents::with_limit(0, 100, 2);
        e.add(0, 10, 0).unwrap();
        e.add(10, 10, 3).unwrap();
        assert!(e.is_full());
        e.add(20, 10, 0).unwrap(); // over the limit: ignored
        assert_eq!(e.len(), 2);
        assert_eq!(e.next_offset(), 20);
    }
}
