//! The data plugin's disk image: a sparse byte image that keeps what the
//! expression describes lazily (runs of one byte, shared byte buffers
//! cycled, and views of other images cycled), so that an expression that
//! expands to terabytes takes the memory of its description, not of its
//! expansion.
//!
//! The image also keeps nbdkit's sparse-array semantics, which clients can
//! see through block status. nbdkit evaluates an expression into a sparse
//! array of 32 KiB pages where
//! - a write (bytes, strings, files, script output) allocates the pages it
//!   touches, even to write zeroes;
//! - a fill of a non-zero byte allocates its pages; a fill of zeroes
//!   zeroes;
//! - zeroing frees the pages it covers whole, and frees a page it covers
//!   in part when the page is then all zeroes;
//! - a copy from another array (groups, repeats, slices, names) allocates
//!   the pages it touches and frees each one that is then all zeroes;
//!
//! and block status reports a page that is not allocated as a hole, and an
//! allocated page as zeroes when it is zero from the offset asked for to
//! the end of the page, else as data. Here a page is allocated when it
//! holds a non-zero byte, or when it is in `written` (touched by a write
//! since it was last freed); the rules above become range operations on
//! `written`. Client writes, trims and zeroes follow the same rules.

use std::collections::BTreeMap;
use std::sync::Arc;

use nbdkit_core::backend::{Extents, Result};
use nbdkit_core::wire::consts::{STATE_HOLE, STATE_ZERO};

/// The page size of nbdkit's sparse array.
pub(super) const PAGE: u64 = 32 * 1024;

/// A cycled pattern shorter than this is expanded into a byte buffer at
/// least this long (reads then copy long runs).
const PATTERN_MIN: u64 = 64 * 1024;

/// A client write is appended to the chunk that ends where it starts
/// while that chunk stays below this size.
const APPEND_MAX: usize = 1 << 20;

/// A blit copies the pieces of the source when there are at most this
/// many, else it refers to the source image.
const COPY_PIECES: usize = 16;

/// A run of content. Chunks never hold only zeroes as a whole (a `Bytes`
/// buffer and the source period of an `Image` have a non-zero byte), though
/// a part of one may be zero.
#[derive(Clone)]
enum Chunk {
    /// Byte `x` is `bytes[(phase + x) % bytes.len()]`.
    Bytes {
        bytes: Arc<Vec<u8>>,
        phase: u64,
        len: u64,
    },
    /// One non-zero byte repeated.
    Fill(u8, u64),
    /// Byte `x` is byte `(phase + x) % period` of `src`.
    Image {
        src: Arc<Image>,
        period: u64,
        phase: u64,
        len: u64,
    },
}

impl Chunk {
    fn len(&self) -> u64 {
        match self {
            Chunk::Bytes { len, .. } | Chunk::Image { len, .. } => *len,
            Chunk::Fill(_, n) => *n,
        }
    }

    /// The part `from..to` (relative to the chunk).
    fn part(&self, from: u64, to: u64) -> Chunk {
        match self {
            Chunk::Bytes { bytes, phase, .. } => Chunk::Bytes {
                bytes: bytes.clone(),
                phase: (phase + from) % bytes.len() as u64,
                len: to - from,
            },
            Chunk::Fill(b, _) => Chunk::Fill(*b, to - from),
            Chunk::Image {
                src, period, phase, ..
            } => Chunk::Image {
                src: src.clone(),
                period: *period,
                phase: (phase + from) % period,
                len: to - from,
            },
        }
    }

    /// Copy `buf.len()` bytes from `from` (relative to the chunk).
    fn read(&self, buf: &mut [u8], from: u64) {
        match self {
            Chunk::Fill(b, _) => buf.fill(*b),
            Chunk::Bytes { bytes, phase, .. } => {
                let n = bytes.len();
                let mut at = ((phase + from) % n as u64) as usize;
                let mut done = 0;
                while done < buf.len() {
                    let k = (n - at).min(buf.len() - done);
                    buf[done..done + k].copy_from_slice(&bytes[at..at + k]);
                    done += k;
                    at = 0;
                }
            }
            Chunk::Image {
                src, period, phase, ..
            } => {
                let mut at = (phase + from) % period;
                let mut done = 0;
                while done < buf.len() {
                    let k = (period - at).min((buf.len() - done) as u64) as usize;
                    src.read(&mut buf[done..done + k], at);
                    done += k;
                    at = 0;
                }
            }
        }
    }

    /// Whether the part `from..to` (relative to the chunk) is all zeroes.
    fn is_zero(&self, from: u64, to: u64) -> bool {
        match self {
            Chunk::Fill(..) => from >= to,
            Chunk::Bytes { bytes, phase, .. } => {
                let n = bytes.len() as u64;
                if to - from >= n {
                    return false;
                }
                let a = (phase + from) % n;
                let b = a + (to - from);
                if b <= n {
                    is_zero(&bytes[a as usize..b as usize])
                } else {
                    is_zero(&bytes[a as usize..]) && is_zero(&bytes[..(b - n) as usize])
                }
            }
            Chunk::Image {
                src, period, phase, ..
            } => {
                if to - from >= *period {
                    return false;
                }
                let a = (phase + from) % period;
                let b = a + (to - from);
                if b <= *period {
                    src.is_zero(a, b)
                } else {
                    src.is_zero(a, *period) && src.is_zero(0, b - period)
                }
            }
        }
    }
}

fn is_zero(b: &[u8]) -> bool {
    b.iter().all(|&x| x == 0)
}

/// A set of page numbers, as disjoint, non-adjacent ranges `start -> end`.
#[derive(Debug, Clone, Default)]
struct PageSet {
    ranges: BTreeMap<u64, u64>,
}

impl PageSet {
    fn contains(&self, p: u64) -> bool {
        self.ranges
            .range(..=p)
            .next_back()
            .is_some_and(|(_, &e)| p < e)
    }

    /// The first page at or after `p` that is in the set.
    fn next_from(&self, p: u64) -> Option<u64> {
        if self.contains(p) {
            return Some(p);
        }
        self.ranges.range(p..).next().map(|(&s, _)| s)
    }

    /// The end of the range holding `p` (which is in the set).
    fn end_of(&self, p: u64) -> u64 {
        self.ranges.range(..=p).next_back().map_or(p, |(_, &e)| e)
    }

    fn insert(&mut self, mut a: u64, mut b: u64) {
        if a >= b {
            return;
        }
        // Merge with every range that overlaps or touches a..b.
        if let Some((&s, &e)) = self.ranges.range(..=a).next_back() {
            if e >= a {
                a = s;
                b = b.max(e);
            }
        }
        let inside: Vec<(u64, u64)> = self.ranges.range(a..=b).map(|(&s, &e)| (s, e)).collect();
        for (s, e) in inside {
            self.ranges.remove(&s);
            b = b.max(e);
        }
        self.ranges.insert(a, b);
    }

    fn remove(&mut self, a: u64, b: u64) {
        if a >= b {
            return;
        }
        if let Some((&s, &e)) = self.ranges.range(..a).next_back() {
            if e > a {
                self.ranges.insert(s, a);
                if e > b {
                    self.ranges.insert(b, e);
                    return;
                }
            }
        }
        let inside: Vec<(u64, u64)> = self.ranges.range(a..b).map(|(&s, &e)| (s, e)).collect();
        for (s, e) in inside {
            self.ranges.remove(&s);
            if e > b {
                self.ranges.insert(b, e);
            }
        }
    }
}

/// Pages touched by `from..to` (which must not be empty).
fn pages(from: u64, to: u64) -> (u64, u64) {
    (from / PAGE, (to - 1) / PAGE + 1)
}

/// A sparse image: content chunks by offset (gaps are zeroes) and the
/// pages written since they were last freed. Nothing at or past the limit
/// the operations are given is kept.
#[derive(Clone, Default)]
pub(super) struct Image {
    chunks: BTreeMap<u64, Chunk>,
    written: PageSet,
}

impl std::fmt::Debug for Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Image")
            .field("chunks", &self.chunks.len())
            .field("written", &self.written.ranges.len())
            .finish()
    }
}

impl Image {
    /// Number of content chunks.
    #[cfg(test)]
    pub(super) fn chunk_count(&self) -> usize {
        self.chunks.len()
    }

    /// The chunks overlapping `from..to`, as (start, chunk).
    fn overlapping(&self, from: u64, to: u64) -> impl Iterator<Item = (u64, &Chunk)> {
        let first = self
            .chunks
            .range(..=from)
            .next_back()
            .filter(|(&s, c)| s + c.len() > from)
            .map(|(&s, c)| (s, c));
        let rest = self
            .chunks
            .range(from..to)
            .filter(move |(&s, _)| s != from)
            .map(|(&s, c)| (s, c));
        first.into_iter().chain(rest)
    }

    /// Copy bytes out (zeroes where there is no content).
    pub(super) fn read(&self, buf: &mut [u8], offset: u64) {
        let end = offset + buf.len() as u64;
        let mut pos = offset;
        for (s, c) in self.overlapping(offset, end) {
            let cs = s.max(offset);
            let ce = (s + c.len()).min(end);
            buf[(pos - offset) as usize..(cs - offset) as usize].fill(0);
            c.read(
                &mut buf[(cs - offset) as usize..(ce - offset) as usize],
                cs - s,
            );
            pos = ce;
        }
        buf[(pos - offset) as usize..].fill(0);
    }

    /// Whether `from..to` is all zeroes.
    pub(super) fn is_zero(&self, from: u64, to: u64) -> bool {
        self.overlapping(from, to).all(|(s, c)| {
            let cs = s.max(from);
            let ce = (s + c.len()).min(to);
            c.is_zero(cs - s, ce - s)
        })
    }

    /// Remove the content of `from..to`.
    fn clear(&mut self, from: u64, to: u64) {
        if from >= to {
            return;
        }
        let hits: Vec<u64> = self.overlapping(from, to).map(|(s, _)| s).collect();
        for s in hits {
            let c = self.chunks.remove(&s).expect("chunk listed above");
            let ce = s + c.len();
            if s < from {
                self.chunks.insert(s, c.part(0, from - s));
            }
            if ce > to {
                self.chunks.insert(to, c.part(to - s, ce - s));
            }
        }
    }

    /// Put `chunk` at `at` (its range was cleared), cut at `limit`.
    fn put(&mut self, at: u64, chunk: Chunk, limit: u64) {
        if at >= limit || chunk.len() == 0 {
            return;
        }
        let chunk = if at + chunk.len() > limit {
            chunk.part(0, limit - at)
        } else {
            chunk
        };
        if let Chunk::Fill(b, n) = chunk {
            if let Some((&ps, Chunk::Fill(pb, pn))) = self.chunks.range_mut(..at).next_back() {
                if *pb == b && ps + *pn == at {
                    *pn += n;
                    return;
                }
            }
        }
        self.chunks.insert(at, chunk);
    }

    /// nbdkit's write: `bytes` at `at`, allocating the pages touched.
    pub(super) fn write(&mut self, at: u64, bytes: &[u8], limit: u64) {
        let len = (bytes.len() as u64).min(limit.saturating_sub(at));
        if len == 0 {
            return;
        }
        let (p0, p1) = pages(at, at + len);
        self.written.insert(p0, p1);
        let bytes = &bytes[..len as usize];
        if self.overwrite_in_place(at, bytes) {
            return;
        }
        self.clear(at, at + len);
        if is_zero(bytes) {
            return;
        }
        // Append to a chunk of earlier writes that ends here.
        if let Some((
            &ps,
            Chunk::Bytes {
                bytes: pb,
                phase,
                len: plen,
            },
        )) = self.chunks.range_mut(..at).next_back()
        {
            if ps + *plen == at && *phase + *plen == pb.len() as u64 && pb.len() < APPEND_MAX {
                if let Some(v) = Arc::get_mut(pb) {
                    v.extend_from_slice(bytes);
                    *plen += len;
                    return;
                }
            }
        }
        self.chunks.insert(
            at,
            Chunk::Bytes {
                bytes: Arc::new(bytes.to_vec()),
                phase: 0,
                len,
            },
        );
    }

    /// A write that lands inside one unshared, unwrapped byte chunk is
    /// made in place (when the chunk keeps a non-zero byte).
    fn overwrite_in_place(&mut self, at: u64, src: &[u8]) -> bool {
        let Some((&s, Chunk::Bytes { bytes, phase, len })) =
            self.chunks.range_mut(..=at).next_back()
        else {
            return false;
        };
        let end = at + src.len() as u64;
        if end > s + *len || *phase + *len > bytes.len() as u64 {
            return false;
        }
        let Some(v) = Arc::get_mut(bytes) else {
            return false;
        };
        let from = (*phase + at - s) as usize;
        v[from..from + src.len()].copy_from_slice(src);
        if is_zero(v) {
            // Keep the invariant: no buffer of zeroes only.
            self.chunks.remove(&s);
        }
        true
    }

    /// nbdkit's fill: `n` copies of `b` at `at`.
    pub(super) fn fill(&mut self, at: u64, b: u8, n: u64, limit: u64) {
        if b == 0 {
            return self.zero(at, n, limit);
        }
        let n = n.min(limit.saturating_sub(at));
        if n == 0 {
            return;
        }
        self.clear(at, at + n);
        self.put(at, Chunk::Fill(b, n), limit);
    }

    /// nbdkit's zero: free the pages covered whole, and pages covered in
    /// part that are then all zeroes.
    pub(super) fn zero(&mut self, at: u64, n: u64, limit: u64) {
        let n = n.min(limit.saturating_sub(at));
        if n == 0 {
            return;
        }
        let end = at + n;
        self.clear(at, end);
        let (p0, p1) = pages(at, end);
        // Whole pages.
        let w0 = at.div_ceil(PAGE);
        let w1 = end / PAGE;
        if w0 < w1 {
            self.written.remove(w0, w1);
        }
        // The pages at either end, covered in part.
        for p in [p0, p1 - 1] {
            if (p < w0 || p >= w1) && self.is_zero(p * PAGE, (p + 1) * PAGE) {
                self.written.remove(p, p + 1);
            }
        }
    }

    /// nbdkit's blit: `src[from..from+len]` copied to `to`; each page
    /// touched is then allocated if and only if it is not all zeroes.
    pub(super) fn blit(&mut self, src: &Arc<Image>, from: u64, len: u64, to: u64, limit: u64) {
        let len = len.min(limit.saturating_sub(to));
        if len == 0 {
            return;
        }
        self.clear(to, to + len);
        let (p0, p1) = pages(to, to + len);
        self.written.remove(p0, p1);
        let pieces: Vec<(u64, Chunk)> = src
            .overlapping(from, from + len)
            .take(COPY_PIECES + 1)
            .map(|(s, c)| (s, c.clone()))
            .collect();
        if pieces.len() <= COPY_PIECES {
            for (s, c) in pieces {
                let cs = s.max(from);
                let ce = (s + c.len()).min(from + len);
                self.put(to + (cs - from), c.part(cs - s, ce - s), limit);
            }
        } else if !src.is_zero(from, from + len) {
            self.put(
                to,
                Chunk::Image {
                    src: src.clone(),
                    period: u64::MAX,
                    phase: from,
                    len,
                },
                limit,
            );
        }
    }

    /// nbdkit's repeated blit: the first `period` bytes of `src`, `count`
    /// times from `to`, without expanding them.
    pub(super) fn repeat(
        &mut self,
        src: &Arc<Image>,
        period: u64,
        count: u64,
        to: u64,
        limit: u64,
    ) {
        if period == 0 || count == 0 {
            return;
        }
        if count == 1 {
            return self.blit(src, 0, period, to, limit);
        }
        let total = period.saturating_mul(count);
        let len = total.min(limit.saturating_sub(to));
        if len == 0 {
            return;
        }
        self.clear(to, to + len);
        let (p0, p1) = pages(to, to + len);
        self.written.remove(p0, p1);
        if src.is_zero(0, period) {
            return;
        }
        let first: Vec<(u64, &Chunk)> = src.overlapping(0, period).take(2).collect();
        let chunk = match first.as_slice() {
            [(0, Chunk::Fill(b, n))] if *n >= period => Chunk::Fill(*b, len),
            _ if period < PATTERN_MIN => {
                let mut one = vec![0u8; period as usize];
                src.read(&mut one, 0);
                let copies = PATTERN_MIN.div_ceil(period) as usize;
                Chunk::Bytes {
                    bytes: Arc::new(one.repeat(copies)),
                    phase: 0,
                    len,
                }
            }
            _ => Chunk::Image {
                src: src.clone(),
                period,
                phase: 0,
                len,
            },
        };
        self.put(to, chunk, limit);
    }

    /// Block status for `offset..offset+count`, as nbdkit's sparse array
    /// reports it.
    pub(super) fn extents(&self, count: u64, offset: u64, extents: &mut Extents) -> Result<()> {
        let end = offset.saturating_add(count);
        let mut pos = offset;
        while pos < end && !extents.is_full() {
            let p = pos / PAGE;
            let page_end = (p + 1) * PAGE;
            // A run of pages with no content and not written: one hole.
            if !self.written.contains(p) && self.overlapping(p * PAGE, page_end).next().is_none() {
                let next_chunk = self
                    .chunks
                    .range(page_end..)
                    .next()
                    .map_or(u64::MAX, |(&s, _)| s / PAGE * PAGE);
                let next_written = self
                    .written
                    .next_from(p)
                    .map_or(u64::MAX, |q| q.saturating_mul(PAGE));
                let stop = next_chunk.min(next_written).min(end).max(page_end.min(end));
                extents.add(pos, stop - pos, STATE_HOLE | STATE_ZERO)?;
                pos = stop;
                continue;
            }
            // A run of one non-zero byte covering this page from `pos`:
            // data up to the end of the last page it reaches.
            if let Some((s, Chunk::Fill(_, n))) = self.overlapping(pos, pos + 1).next() {
                let stop = (s + n).div_ceil(PAGE).saturating_mul(PAGE).min(end);
                if stop > page_end {
                    extents.add(pos, stop - pos, 0)?;
                    pos = stop;
                    continue;
                }
            }
            let stop = page_end.min(end);
            let flags = if !self.is_zero(pos, page_end) {
                0
            } else if self.written.contains(p) || !self.is_zero(p * PAGE, pos) {
                STATE_ZERO
            } else {
                STATE_HOLE | STATE_ZERO
            };
            extents.add(pos, stop - pos, flags)?;
            pos = stop;
            // Written pages in a run with no content: zeroes to its end.
            if flags == STATE_ZERO && self.written.contains(p) {
                let run_end = self.written.end_of(p).saturating_mul(PAGE);
                let next_chunk = self
                    .chunks
                    .range(pos..)
                    .next()
                    .map_or(u64::MAX, |(&s, _)| s / PAGE * PAGE);
                let stop = run_end.min(next_chunk).min(end);
                if stop > pos && self.overlapping(pos, stop).next().is_none() {
                    extents.add(pos, stop - pos, STATE_ZERO)?;
                    pos = stop;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod test {
    use super::*;

    const L: u64 = i64::MAX as u64;

    fn map(img: &Image, size: u64) -> Vec<(u64, u64, u32)> {
        let mut e = Extents::new(0, size);
        img.extents(size, 0, &mut e).unwrap();
        e.as_slice()
            .iter()
            .map(|x| (x.offset, x.length, x.flags))
            .collect()
    }

    fn bytes(img: &Image, at: u64, n: usize) -> Vec<u8> {
        let mut b = vec![0u8; n];
        img.read(&mut b, at);
        b
    }

    #[test]
    fn writes_allocate_zero_pages_and_zeroing_frees_them() {
        let mut img = Image::default();
        img.write(5, &[0], L);
        assert_eq!(map(&img, 4 * PAGE), [(0, PAGE, 2), (PAGE, 3 * PAGE, 3)]);
        img.write(PAGE + 1, &[1, 0, 2], L);
        assert_eq!(
            map(&img, 4 * PAGE),
            [(0, PAGE, 2), (PAGE, PAGE, 0), (2 * PAGE, 2 * PAGE, 3)]
        );
        assert_eq!(bytes(&img, PAGE, 4), [0, 1, 0, 2]);
        // Zeroing part of a page that is then all zeroes frees it.
        img.zero(PAGE + 1, 3, L);
        img.zero(0, 1, L);
        assert_eq!(map(&img, 4 * PAGE), [(0, 4 * PAGE, 3)]);
    }

    #[test]
    fn blits_free_zero_pages_and_repeats_stay_small() {
        let mut sub = Image::default();
        sub.write(0, b"hello", L);
        let sub = Arc::new(sub);
        let mut img = Image::default();
        img.write(3 * PAGE, &[0], L);
        // A terabyte of "hello": one chunk.
        img.repeat(&sub, 5, 1 << 38, PAGE, L);
        assert_eq!(img.chunk_count(), 1);
        assert_eq!(bytes(&img, PAGE + (1 << 37) - 3, 6), b"ohello");
        assert_eq!(
            map(&img, PAGE * 4)[..2],
            [(0, PAGE, 3), (PAGE, 3 * PAGE, 0)]
        );
        // A large period is kept as a view of the source.
        let mut big = Image::default();
        big.write(0, &[7], L);
        big.write(PATTERN_MIN * 2, &[9], L);
        let big = Arc::new(big);
        let mut img = Image::default();
        img.repeat(&big, PATTERN_MIN * 2 + 1, 1 << 30, 0, L);
        let p = PATTERN_MIN * 2 + 1;
        assert_eq!(bytes(&img, p * 1000 - 1, 3), [9, 7, 0]);
        assert_eq!(map(&img, PAGE * 2), [(0, PAGE, 0), (PAGE, PAGE, 3)]);
        // A blit of zeroes frees what it lands on.
        let mut img = Image::default();
        img.fill(0, 0xff, 3 * PAGE, L);
        img.blit(&Arc::new(Image::default()), 0, PAGE, PAGE, L);
        assert_eq!(
            map(&img, 3 * PAGE),
            [(0, PAGE, 0), (PAGE, PAGE, 3), (2 * PAGE, PAGE, 0)]
        );
    }

    #[test]
    fn client_writes_merge() {
        let mut img = Image::default();
        for i in 0..64u64 {
            img.write(i * 512, &[i as u8 + 1; 512], L);
        }
        assert_eq!(img.chunk_count(), 1);
        img.write(100, &[0xaa; 10], L);
        assert_eq!(img.chunk_count(), 1);
        assert_eq!(
            bytes(&img, 99, 12)[..],
            [1, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 1]
        );
    }

    #[test]
    fn page_sets() {
        let mut s = PageSet::default();
        s.insert(1, 3);
        s.insert(5, 7);
        s.insert(3, 5);
        assert_eq!(s.ranges.len(), 1);
        s.remove(2, 6);
        assert!(s.contains(1) && !s.contains(2) && !s.contains(5) && s.contains(6));
        assert_eq!(s.next_from(2), Some(6));
        assert_eq!(s.end_of(6), 7);
    }
}
