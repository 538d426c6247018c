//! The pages of the memory plugin's sparse array, carved out of 2 MiB
//! chunks.
//!
//! A page ([`PageBuf`]) is a 32 KiB slot of a chunk mapped from the system.
//! A page given back (its last reference dropped: trimmed, zeroed,
//! replaced by a write, or a lent copy sent) returns its slot to the slab,
//! where the next page allocated takes it; a chunk whose slots are all free
//! is given back to the system (`MADV_DONTNEED`, keeping the address
//! range), but for one kept as a spare. Slots are taken from chunks in the
//! order they free up, not by disk offset, so a sparse write pattern fills
//! chunks densely: the memory held is what the allocated pages need plus,
//! at most, the free slots of partly used chunks.
//!
//! Each slot remembers whether it may hold old bytes (`dirty`): memory
//! fresh from the system reads as zeroes, so a page allocated from it needs
//! no zeroing (a first write costs the page faults only). Such a chunk is
//! faulted in whole when its first page is taken (`MADV_POPULATE_WRITE`):
//! one call instead of 512 page faults.
//!
//! A page that was lent to the kernel by reference
//! ([`LentBytes::give_to_kernel`]) must be detached from the process
//! (`MADV_DONTNEED`, through the runtime's free hook) before its slot is
//! used again. Such slots are held back and detached together, a run of
//! neighbouring slots in one call, once [`DETACH_BATCH`] of them are
//! waiting: each call makes the kernel flush the other CPUs' TLBs (an
//! interrupt to each), and on a virtual machine one such call per 32 KiB
//! page made a whole-disk overwrite after a whole-disk zero-copy read cost
//! 2.6 times the CPU of an overwrite (1.16 s vs 0.44 s for 1 GiB). The
//! detached run is faulted in again in one call.
//!
//! Chunks are not advised for transparent huge pages (`MADV_HUGEPAGE`),
//! although that turns 512 page faults into one: measured on the
//! benchmark machine (a VM whose balloon reports free memory to the host),
//! a first write of 256 MiB into huge pages took 3-6x the CPU of 4 KiB
//! pages (75% of it zeroing the huge pages in `clear_page_erms`: free 2 MiB
//! blocks are handed back to the host, so each one faults there again),
//! where 4 KiB pages come from memory the guest already holds.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::ptr::NonNull;

use core::sync::atomic::{AtomicBool, Ordering};

use crate::backend::LentBytes;
use crate::sync::Mutex;

/// Bytes in a page (the sparse array's page size).
pub const PAGE: usize = 32 * 1024;
/// Bytes in a chunk.
const CHUNK: usize = 2 << 20;
/// Pages in a chunk: one bit each in a `u64`.
const PER_CHUNK: usize = CHUNK / PAGE;
const ALL: u64 = if PER_CHUNK == 64 {
    !0
} else {
    (1 << PER_CHUNK) - 1
};

/// The base address of a chunk.
#[derive(Debug, Clone, Copy)]
struct Base(NonNull<u8>);
// SAFETY: a chunk's memory is plain bytes, handed out slot by slot to one
// owner at a time (the slab's lock decides who).
unsafe impl Send for Base {}

#[derive(Debug)]
struct Chunk {
    base: Base,
    /// Slots in use, or given back and waiting to be detached (`pending`).
    used: u64,
    /// Slots that may hold old bytes (the others read as zeroes).
    dirty: u64,
    /// Slots of pages lent to the kernel, given back: to be detached
    /// before they are free (still counted in `used`).
    pending: u64,
}

/// Slots of pages lent to the kernel that are detached together (2 MiB).
pub const DETACH_BATCH: usize = PER_CHUNK;

#[derive(Debug, Default)]
struct Inner {
    chunks: Vec<Chunk>,
    /// Chunks with a free slot, each once; the last is used first.
    avail: Vec<u32>,
    /// One chunk whose slots are all free, kept resident: so that a page
    /// freed and allocated again and again (write, trim, write...) does
    /// not fault in and zero 2 MiB each time.
    spare: Option<u32>,
    /// Slots waiting to be detached (the `pending` bits of all chunks).
    pending: usize,
}

/// Where pages come from (one per sparse array).
#[derive(Debug)]
pub struct Slab {
    inner: Mutex<Inner>,
}

impl Default for Slab {
    fn default() -> Self {
        Slab {
            inner: Mutex::new(Inner::default()),
        }
    }
}

/// A page: one slot of a chunk, owned; its slot goes back to the slab when
/// it is dropped.
pub struct PageBuf {
    slab: Arc<Slab>,
    ptr: NonNull<u8>,
    chunk: u32,
    slot: u8,
    /// Lent to the kernel by reference ([`LentBytes::give_to_kernel`]):
    /// detached from the process before its slot is reused.
    given: AtomicBool,
}

// SAFETY: a PageBuf owns its slot exclusively; shared references only read
// it.
unsafe impl Send for PageBuf {}
// SAFETY: as above.
unsafe impl Sync for PageBuf {}

impl core::fmt::Debug for PageBuf {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "PageBuf({}.{})", self.chunk, self.slot)
    }
}

impl Slab {
    /// An empty slab.
    pub fn new() -> Arc<Self> {
        Arc::new(Slab::default())
    }

    /// A page whose bytes are unspecified (old bytes of a freed page, or
    /// zeroes): for a caller that writes all of it.
    pub fn page_uninit(self: &Arc<Self>) -> PageBuf {
        self.take().0
    }

    /// A page of zeroes.
    pub fn page_zeroed(self: &Arc<Self>) -> PageBuf {
        let (mut p, dirty) = self.take();
        if dirty {
            p.as_mut().fill(0);
        }
        p
    }

    /// A page whose bytes outside `start..start + len` are zeroes (the
    /// caller writes that range).
    pub fn page_for(self: &Arc<Self>, start: usize, len: usize) -> PageBuf {
        let (mut p, dirty) = self.take();
        if dirty {
            let b = p.as_mut();
            b[..start].fill(0);
            b[start + len..].fill(0);
        }
        p
    }

    /// A free slot (a new chunk when none is free), and whether it may
    /// hold old bytes.
    fn take(self: &Arc<Self>) -> (PageBuf, bool) {
        let mut g = crate::sync::lock(&self.inner);
        let inner = &mut *g;
        let ci = match inner.avail.last() {
            // An empty chunk given back to the system, while the spare is
            // still resident: the spare first (moved to the top).
            Some(&ci)
                if inner.chunks[ci as usize].used == 0
                    && inner.spare.is_some_and(|sp| sp != ci) =>
            {
                let sp = inner.spare.unwrap_or(ci);
                if let Some(i) = inner.avail.iter().rposition(|&c| c == sp) {
                    let last = inner.avail.len() - 1;
                    inner.avail.swap(i, last);
                }
                sp
            }
            Some(&ci) => ci,
            None => {
                let base = map_chunk();
                let ci = u32::try_from(inner.chunks.len()).expect("too many chunks");
                inner.chunks.push(Chunk {
                    base: Base(base),
                    used: 0,
                    dirty: 0,
                    pending: 0,
                });
                inner.avail.push(ci);
                ci
            }
        };
        if inner.spare == Some(ci) {
            inner.spare = None;
        }
        let c = &mut inner.chunks[ci as usize];
        // A chunk not resident (fresh, or given back to the system) is
        // faulted in whole by one call, not a page fault per 4 KiB page.
        if c.used == 0 && c.dirty == 0 {
            populate_chunk(c.base.0);
        }
        // Prefer a slot that needs no zeroing, in address order.
        let free = !c.used & ALL;
        let clean = free & !c.dirty;
        let slot = if clean != 0 { clean } else { free }.trailing_zeros();
        let bit = 1u64 << slot;
        c.used |= bit;
        let dirty = c.dirty & bit != 0;
        let base = c.base.0;
        if c.used == ALL {
            inner.avail.pop();
        }
        drop(g);
        // SAFETY: slot < PER_CHUNK, inside the chunk.
        let ptr = unsafe { NonNull::new_unchecked(base.as_ptr().add(slot as usize * PAGE)) };
        (
            PageBuf {
                slab: self.clone(),
                ptr,
                chunk: ci,
                slot: slot as u8,
                given: AtomicBool::new(false),
            },
            dirty,
        )
    }

    /// Give a slot back.
    fn give(&self, chunk: u32, slot: u8) {
        let mut g = crate::sync::lock(&self.inner);
        free_slots(&mut g, chunk, 1u64 << slot);
    }

    /// Give back the slot of a page lent to the kernel: held until it is
    /// detached with the others, by `detach` (the runtime's free hook).
    fn give_lent(&self, chunk: u32, slot: u8, detach: fn(*mut u8, usize)) {
        let mut g = crate::sync::lock(&self.inner);
        let inner = &mut *g;
        let c = &mut inner.chunks[chunk as usize];
        let bit = 1u64 << slot;
        debug_assert!(c.used & bit != 0 && c.pending & bit == 0);
        c.pending |= bit;
        inner.pending += 1;
        if inner.pending < DETACH_BATCH {
            return;
        }
        // Every waiting slot, taken out of the pending sets (they stay
        // used, so none is handed out) and detached without the lock.
        let mut runs: Vec<(u32, NonNull<u8>, u64)> = Vec::new();
        for (ci, c) in inner.chunks.iter_mut().enumerate() {
            if c.pending != 0 {
                runs.push((ci as u32, c.base.0, core::mem::take(&mut c.pending)));
            }
        }
        inner.pending = 0;
        drop(g);
        for &(_, base, mask) in &runs {
            let mut m = mask;
            while m != 0 {
                let start = m.trailing_zeros() as usize;
                let len = (m >> start).trailing_ones() as usize;
                // SAFETY: slots start..start + len of a mapped chunk, whose
                // pages were dropped: nothing reads or writes them.
                let p = unsafe { base.as_ptr().add(start * PAGE) };
                detach(p, len * PAGE);
                populate(p, len * PAGE);
                m &= !((((1u128 << len) - 1) as u64) << start);
            }
        }
        let mut g = crate::sync::lock(&self.inner);
        for (ci, _, mask) in runs {
            // Counted as holding old bytes all the same: the hook does not
            // say whether it detached them.
            free_slots(&mut g, ci, mask);
        }
    }

    /// Chunks mapped, and pages in use (for tests).
    pub fn stats(&self) -> (usize, usize) {
        let g = crate::sync::lock(&self.inner);
        let used = g.chunks.iter().map(|c| c.used.count_ones() as usize).sum();
        (g.chunks.len(), used)
    }
}

/// Make the slots `mask` of chunk `ci` free, as holding old bytes. A chunk
/// left with no slot in use becomes the spare, or is given back to the
/// system.
fn free_slots(inner: &mut Inner, ci: u32, mask: u64) {
    let c = &mut inner.chunks[ci as usize];
    debug_assert!(c.used & mask == mask);
    if c.used == ALL {
        inner.avail.push(ci);
    }
    c.used &= !mask;
    c.dirty |= mask;
    if c.used == 0 {
        if inner.spare.is_none() {
            inner.spare = Some(ci);
        } else if release_chunk(c.base.0) {
            c.dirty = 0;
        }
    }
}

impl Drop for Slab {
    fn drop(&mut self) {
        let g = crate::sync::lock(&self.inner);
        for c in &g.chunks {
            // SAFETY: every page holds the slab, so none is left.
            unsafe { unmap_chunk(c.base.0) };
        }
    }
}

impl PageBuf {
    /// The bytes.
    pub fn bytes(&self) -> &[u8; PAGE] {
        // SAFETY: the slot is PAGE bytes, owned by this page.
        unsafe { &*(self.ptr.as_ptr() as *const [u8; PAGE]) }
    }

    /// The bytes, to write.
    pub fn bytes_mut(&mut self) -> &mut [u8; PAGE] {
        // SAFETY: as above, and `&mut self` is the only access.
        unsafe { &mut *(self.ptr.as_ptr() as *mut [u8; PAGE]) }
    }
}

impl LentBytes for PageBuf {
    fn bytes(&self) -> &[u8] {
        PageBuf::bytes(self)
    }

    /// Yes once the runtime has a hook to detach the page from the process
    /// before its slot is reused: a client that splices the socket into a
    /// pipe of its own holds the physical page, and must never see what a
    /// later page in the same slot holds.
    fn give_to_kernel(&self) -> bool {
        if crate::backend::free_hook().is_none() {
            return false;
        }
        self.given.store(true, Ordering::Release);
        true
    }
}

impl AsMut<[u8]> for PageBuf {
    fn as_mut(&mut self) -> &mut [u8] {
        self.bytes_mut()
    }
}

impl core::ops::Deref for PageBuf {
    type Target = [u8; PAGE];
    fn deref(&self) -> &[u8; PAGE] {
        self.bytes()
    }
}

impl core::ops::DerefMut for PageBuf {
    fn deref_mut(&mut self) -> &mut [u8; PAGE] {
        self.bytes_mut()
    }
}

/// A copy in a new slot (copy-on-write of a lent page).
impl Clone for PageBuf {
    fn clone(&self) -> Self {
        let mut p = self.slab.page_uninit();
        p.bytes_mut().copy_from_slice(self.bytes());
        p
    }
}

impl Drop for PageBuf {
    fn drop(&mut self) {
        if self.given.load(Ordering::Acquire) {
            if let Some(detach) = crate::backend::free_hook() {
                self.slab.give_lent(self.chunk, self.slot, detach);
                return;
            }
        }
        self.slab.give(self.chunk, self.slot);
    }
}

#[cfg(all(feature = "std", unix, not(loom)))]
fn map_chunk() -> NonNull<u8> {
    // Twice the size, then the unaligned ends unmapped: a 2 MiB aligned
    // range (which a huge page could back; see the module's note).
    let len = 2 * CHUNK;
    // SAFETY: an anonymous private mapping, no file.
    let p = unsafe {
        libc::mmap(
            core::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        alloc::alloc::handle_alloc_error(core::alloc::Layout::new::<[u8; CHUNK]>());
    }
    let start = p as usize;
    let aligned = (start + CHUNK - 1) & !(CHUNK - 1);
    // SAFETY: both ranges lie inside the mapping just made.
    unsafe {
        if aligned > start {
            libc::munmap(p, aligned - start);
        }
        let end = start + len;
        let tail = aligned + CHUNK;
        if end > tail {
            libc::munmap(tail as *mut libc::c_void, end - tail);
        }
    }
    // SAFETY: inside a successful mapping, not null.
    unsafe { NonNull::new_unchecked(aligned as *mut u8) }
}

/// Fault a chunk's memory in, writable, before its first page is used
/// (best effort: before Linux 5.14 its pages fault in one by one as they
/// are written). A first write of 256 MiB then costs 0.71 the server CPU
/// per GiB, at 1.20 the throughput (nbd-bench seq-write, first write), for
/// at most one chunk (2 MiB) resident before its pages are used.
fn populate_chunk(base: NonNull<u8>) {
    populate(base.as_ptr(), CHUNK);
}

/// Fault `len` bytes of a chunk in, writable, in one call (best effort).
#[cfg(all(feature = "std", target_os = "linux", not(loom)))]
fn populate(p: *mut u8, len: usize) {
    // SAFETY: a range of a mapped, private, anonymous chunk whose bytes
    // nothing uses: populating it changes none of them.
    unsafe {
        libc::madvise(p as *mut libc::c_void, len, libc::MADV_POPULATE_WRITE);
    }
}

#[cfg(not(all(feature = "std", target_os = "linux", not(loom))))]
fn populate(_p: *mut u8, _len: usize) {}

/// Give a chunk's memory back to the system; true if it now reads as
/// zeroes.
#[cfg(all(feature = "std", unix, not(loom)))]
fn release_chunk(base: NonNull<u8>) -> bool {
    // SAFETY: the chunk is mapped and no slot of it is in use.
    unsafe {
        libc::madvise(
            base.as_ptr() as *mut libc::c_void,
            CHUNK,
            libc::MADV_DONTNEED,
        ) == 0
    }
}

#[cfg(all(feature = "std", unix, not(loom)))]
unsafe fn unmap_chunk(base: NonNull<u8>) {
    // SAFETY: the caller gives a chunk it mapped and no longer uses.
    unsafe { libc::munmap(base.as_ptr() as *mut libc::c_void, CHUNK) };
}

#[cfg(not(all(feature = "std", unix, not(loom))))]
const LAYOUT: core::alloc::Layout = match core::alloc::Layout::from_size_align(CHUNK, CHUNK) {
    Ok(l) => l,
    Err(_) => panic!("chunk layout"),
};

#[cfg(not(all(feature = "std", unix, not(loom))))]
fn map_chunk() -> NonNull<u8> {
    // SAFETY: LAYOUT has a non-zero size.
    let p = unsafe { alloc::alloc::alloc_zeroed(LAYOUT) };
    NonNull::new(p).unwrap_or_else(|| alloc::alloc::handle_alloc_error(LAYOUT))
}

#[cfg(not(all(feature = "std", unix, not(loom))))]
fn release_chunk(_base: NonNull<u8>) -> bool {
    false
}

#[cfg(not(all(feature = "std", unix, not(loom))))]
unsafe fn unmap_chunk(base: NonNull<u8>) {
    // SAFETY: the caller gives a chunk it allocated and no longer uses.
    unsafe { alloc::alloc::dealloc(base.as_ptr(), LAYOUT) };
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn slots_are_reused_and_fresh_ones_are_zero() {
        let s = Slab::new();
        let mut a = s.page_uninit();
        assert!(a.iter().all(|&b| b == 0));
        a.fill(7);
        let b = s.page_zeroed();
        assert!(b.iter().all(|&b| b == 0));
        assert_eq!(s.stats(), (1, 2));
        drop(a);
        assert_eq!(s.stats(), (1, 1));
        // The freed slot is reused, zeroed where asked.
        let c = s.page_for(100, 200);
        assert_eq!(s.stats(), (1, 2));
        assert!(c[..100].iter().all(|&b| b == 0));
        assert!(c[300..].iter().all(|&b| b == 0));
        let d = c.clone();
        assert_eq!(&d[..], &c[..]);
        drop((b, c, d));
        assert_eq!(s.stats(), (1, 0));
    }

    #[test]
    fn pages_lent_to_the_kernel_are_detached_together() {
        use core::sync::atomic::AtomicUsize;
        static CALLS: AtomicUsize = AtomicUsize::new(0);
        static BYTES: AtomicUsize = AtomicUsize::new(0);
        fn hook(_p: *mut u8, len: usize) {
            CALLS.fetch_add(1, Ordering::SeqCst);
            BYTES.fetch_add(len, Ordering::SeqCst);
        }
        // No other test lends pages, so the counts are this test's.
        crate::backend::set_free_hook(hook);
        let s = Slab::new();
        // A chunk's slots and one slot of a second chunk; all lent to the
        // kernel but slot 10 of the first chunk.
        let mut pages: Vec<PageBuf> = (0..=DETACH_BATCH).map(|_| s.page_uninit()).collect();
        assert_eq!(s.stats(), (2, DETACH_BATCH + 1));
        let plain = pages.remove(10);
        for p in &pages {
            assert!(p.give_to_kernel());
        }
        let last = pages.pop().expect("a page");
        drop(pages);
        // Held back, undetached: their slots are not handed out again.
        assert_eq!(CALLS.load(Ordering::SeqCst), 0);
        assert_eq!(s.stats(), (2, DETACH_BATCH + 1));
        let other = s.page_uninit();
        assert_eq!(other.chunk, last.chunk);
        // The batch is complete: one call per run of neighbouring slots
        // (slots 0-9 and 11-63 of the first chunk, slot 0 of the second),
        // and they are free.
        drop(last);
        assert_eq!(CALLS.load(Ordering::SeqCst), 3);
        assert_eq!(BYTES.load(Ordering::SeqCst), DETACH_BATCH * PAGE);
        assert_eq!(s.stats(), (2, 2));
        // A page not lent goes back at once, as before.
        drop((plain, other));
        assert_eq!(s.stats(), (2, 0));
        assert_eq!(CALLS.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn chunks_fill_densely_and_empty_ones_read_as_zeroes() {
        let s = Slab::new();
        let mut pages: Vec<PageBuf> = (0..PER_CHUNK + 1).map(|_| s.page_uninit()).collect();
        assert_eq!(s.stats(), (2, PER_CHUNK + 1));
        for p in &mut pages {
            p.fill(0xaa);
        }
        // Free every other page, then as many again: the holes are reused
        // before a new chunk is mapped.
        let mut kept = Vec::new();
        for (i, p) in pages.drain(..).enumerate() {
            if i % 2 == 0 {
                kept.push(p);
            }
        }
        let more: Vec<PageBuf> = (0..PER_CHUNK / 2).map(|_| s.page_zeroed()).collect();
        assert!(more.iter().all(|p| p.iter().all(|&b| b == 0)));
        assert_eq!(s.stats().0, 2);
        drop(kept);
        drop(more);
        assert_eq!(s.stats(), (2, 0));
        // All free: one chunk kept as a spare, the other given back, which
        // reads as zeroes again without zeroing.
        let g = crate::sync::lock(&s.inner);
        let spare = g.spare.expect("a spare chunk") as usize;
        assert!(g.chunks[spare].dirty != 0);
        if cfg!(all(feature = "std", unix)) {
            assert_eq!(g.chunks[1 - spare].dirty, 0);
        }
        drop(g);
        // Pages freed and allocated again reuse the spare's slots.
        for _ in 0..3 {
            let mut p = s.page_uninit();
            assert_eq!(p.chunk as usize, spare);
            p.fill(1);
        }
        assert_eq!(s.stats(), (2, 0));
    }
}
