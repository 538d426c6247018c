//! `memory`: a sparse RAM disk.
//!
//! Parameters: `[size=]SIZE` (required, up to 2^63-1), `allocator=sparse`
//! (the default) or `allocator=malloc` (a flat, fully allocated buffer;
//! `mlock=true` is not supported and says so). `allocator=zstd` is not
//! implemented and is refused with a clear error.
//!
//! The sparse allocator keeps 32 KiB pages in an ordered map, with the
//! semantics of nbdkit's sparse array: a write allocates the pages it
//! touches (even to write zeroes); zeroing frees whole pages and pages that
//! become all zeroes. Pages that were never written, or were freed, take
//! no memory and are reported as holes by block status; allocated pages
//! that hold only zeroes are reported as zeroes.

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;

use crate::backend::{
    Callbacks, Error, Extents, Flags, Handle, Lent, LentBytes, OpenArgs, Plugin, Result,
    SharedBytes, Support,
};
use crate::errno::Errno;
use crate::sync::{read, write, RwLock};
use crate::wire::consts::{STATE_HOLE, STATE_ZERO};

/// Size of a page of the sparse array.
pub const PAGE_SIZE: u64 = 32 * 1024;

/// A sparse byte array of 32 KiB pages; absent pages read as zeroes.
///
/// The map is locked for reading by every access and for writing only to
/// add or remove pages; each page has its own lock, so writes to different
/// pages run in parallel.
#[derive(Debug, Default)]
pub struct SparseArray {
    pages: RwLock<BTreeMap<u64, Page>>,
    /// With `-D memory.dir=1` (or `data.dir`): nbdkit's directory, kept to
    /// print its messages.
    dir: Option<crate::sync::Mutex<DirTrace>>,
}

/// Pages addressed by one entry of nbdkit's L1 directory (128 MiB).
const L1_SPAN: u64 = PAGE_SIZE * 4096;

/// The L1 directory of nbdkit's sparse array: the 128 MiB regions that a
/// write has touched (entries are never removed). Our array keeps its
/// pages differently; this shadow lets `-D memory.dir=1` print the same
/// lookups as nbdkit (`lookup: search L1 dir: entry found: offset 0`).
#[derive(Debug, Default)]
struct DirTrace {
    l1: Vec<u64>,
}

impl DirTrace {
    /// nbdkit's `lookup` of `offset`, creating the L1 entry if `create`.
    fn lookup(&mut self, offset: u64, create: bool) {
        let base = offset & !(L1_SPAN - 1);
        if self.l1.contains(&base) {
            crate::debug::debug(format_args!(
                "lookup: search L1 dir: entry found: offset {base}"
            ));
            return;
        }
        crate::debug::debug(format_args!("lookup: search L1 dir: no entry found"));
        if !create {
            return;
        }
        match self.l1.iter().position(|&o| base < o) {
            Some(i) => {
                self.l1.insert(i, base);
                crate::debug::debug(format_args!(
                    "insert_l1_entry: inserted new L1 entry for {base} at l1_dir.ptr[{i}]"
                ));
            }
            None => {
                self.l1.push(base);
                crate::debug::debug(format_args!(
                    "insert_l1_entry: inserted new L1 entry for {base} at end of l1_dir"
                ));
            }
        }
        crate::debug::debug(format_args!(
            "lookup: search L1 dir: entry found: offset {base}"
        ));
    }

    /// A lookup for each page that `offset..offset+count` touches.
    fn lookups(&mut self, offset: u64, count: u64, create: bool) {
        for (page, in_page, _) in page_runs(offset, count) {
            self.lookup(page * PAGE_SIZE + in_page as u64, create);
        }
    }
}

/// The bytes of a page.
type Bytes = [u8; PAGE_SIZE as usize];

/// The alignment of a page's bytes: whole pages of the machine, so that
/// they can be given to the kernel and detached from the process whole.
const PAGE_ALIGN: usize = 4096;

/// A page's bytes, aligned to the machine's pages ([`PAGE_ALIGN`]), owned
/// like a `Box<Bytes>` but carved out of chunks that only ever hold pages;
/// those lent to the kernel ([`LentBytes::give_to_kernel`]) are detached
/// with the runtime's hook before they are reused.
pub struct PageBuf {
    ptr: core::ptr::NonNull<Bytes>,
    given: core::sync::atomic::AtomicBool,
}

// SAFETY: a PageBuf owns its bytes, as a Box does.
unsafe impl Send for PageBuf {}
// SAFETY: shared access only reads the bytes (and the flag, atomically).
unsafe impl Sync for PageBuf {}

/// Pages are carved out of chunks of this many, allocated (aligned to
/// the machine's pages) and never freed: a page-aligned allocation of its
/// own would cost a whole machine page of padding per page (+12% RSS).
#[cfg(not(loom))]
const CHUNK_PAGES: usize = 32;

/// Pages freed, for reuse as pages (only ever as pages: memory given to
/// the kernel is then detached, never reused for anything else).
#[cfg(not(loom))]
static FREE_PAGES: crate::sync::Mutex<Vec<usize>> = crate::sync::Mutex::new(Vec::new());

#[cfg(not(loom))]
fn chunk_layout() -> core::alloc::Layout {
    // A power of two, with a size that is a multiple of it: never fails.
    match core::alloc::Layout::from_size_align(PAGE_SIZE as usize * CHUNK_PAGES, PAGE_ALIGN) {
        Ok(l) => l,
        Err(_) => unreachable!(),
    }
}

/// An uninitialized page from the free pages, or from a new chunk.
#[cfg(not(loom))]
fn take_page() -> core::ptr::NonNull<Bytes> {
    let mut free = crate::sync::lock(&FREE_PAGES);
    if free.is_empty() {
        let layout = chunk_layout();
        // SAFETY: the layout's size is not zero.
        let p = unsafe { alloc::alloc::alloc(layout) };
        if p.is_null() {
            alloc::alloc::handle_alloc_error(layout)
        }
        free.reserve(CHUNK_PAGES);
        // Taken from the end: the chunk's first page first.
        for i in (0..CHUNK_PAGES).rev() {
            free.push(p as usize + i * PAGE_SIZE as usize);
        }
    }
    let p = free.pop().unwrap_or_default();
    // SAFETY: not null: pushed from a non-null chunk.
    unsafe { core::ptr::NonNull::new_unchecked(p as *mut Bytes) }
}

/// Give a page back to the free pages.
#[cfg(not(loom))]
fn put_page(p: core::ptr::NonNull<Bytes>) {
    crate::sync::lock(&FREE_PAGES).push(p.as_ptr() as usize);
}

#[cfg(loom)]
fn page_layout() -> core::alloc::Layout {
    match core::alloc::Layout::from_size_align(PAGE_SIZE as usize, PAGE_ALIGN) {
        Ok(l) => l,
        Err(_) => unreachable!(),
    }
}

#[cfg(loom)]
fn take_page() -> core::ptr::NonNull<Bytes> {
    let layout = page_layout();
    // SAFETY: the layout's size is not zero.
    let p = unsafe { alloc::alloc::alloc(layout) };
    core::ptr::NonNull::new(p.cast()).unwrap_or_else(|| alloc::alloc::handle_alloc_error(layout))
}

#[cfg(loom)]
fn put_page(p: core::ptr::NonNull<Bytes>) {
    // SAFETY: allocated by take_page with this layout.
    unsafe { alloc::alloc::dealloc(p.as_ptr().cast(), page_layout()) };
}

impl PageBuf {
    fn alloc(zeroed: bool) -> Self {
        let ptr = take_page();
        if zeroed {
            // SAFETY: a page of our own.
            unsafe { ptr.as_ptr().cast::<u8>().write_bytes(0, PAGE_SIZE as usize) };
        }
        PageBuf {
            ptr,
            given: core::sync::atomic::AtomicBool::new(false),
        }
    }

    fn zeroed() -> Self {
        Self::alloc(true)
    }
}

impl Clone for PageBuf {
    fn clone(&self) -> Self {
        let new = Self::alloc(false);
        // SAFETY: two distinct allocations of one Bytes each.
        unsafe { core::ptr::copy_nonoverlapping(self.ptr.as_ptr(), new.ptr.as_ptr(), 1) };
        new
    }
}

impl core::ops::Deref for PageBuf {
    type Target = Bytes;
    fn deref(&self) -> &Bytes {
        // SAFETY: owned, initialized, alive as long as self.
        unsafe { self.ptr.as_ref() }
    }
}

impl core::ops::DerefMut for PageBuf {
    fn deref_mut(&mut self) -> &mut Bytes {
        // SAFETY: owned, initialized, borrowed mutably through self.
        unsafe { self.ptr.as_mut() }
    }
}

impl Drop for PageBuf {
    fn drop(&mut self) {
        let p = self.ptr.as_ptr().cast::<u8>();
        if self.given.load(core::sync::atomic::Ordering::Acquire) {
            if let Some(detach) = crate::backend::free_hook() {
                detach(p, PAGE_SIZE as usize);
            }
        }
        put_page(self.ptr);
    }
}

impl core::fmt::Debug for PageBuf {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("PageBuf")
    }
}

impl LentBytes for PageBuf {
    fn bytes(&self) -> &[u8] {
        &**self
    }
    fn give_to_kernel(&self) -> bool {
        if crate::backend::free_hook().is_none() {
            return false;
        }
        self.given
            .store(true, core::sync::atomic::Ordering::Release);
        true
    }
}

/// A page: its bytes are shared with the reads that lent them
/// ([`SparseArray::lend`]) until they are sent; a write to a page that is
/// still lent writes to a copy (copy-on-write, [`Arc::make_mut`]), so what
/// was lent never changes.
type Page = RwLock<Arc<PageBuf>>;

fn new_page() -> Page {
    RwLock::new(Arc::new(PageBuf::zeroed()))
}

/// The bytes of a page, to write to: a copy first if they are lent.
fn page_mut(p: &mut Arc<PageBuf>) -> &mut Bytes {
    let page: &mut PageBuf = Arc::make_mut(p);
    page
}

/// Split `offset..offset+len` into (page index, offset in page, length).
fn page_runs(offset: u64, len: u64) -> impl Iterator<Item = (u64, usize, usize)> {
    let mut pos = offset;
    let end = offset + len;
    core::iter::from_fn(move || {
        if pos >= end {
            return None;
        }
        let page = pos / PAGE_SIZE;
        let in_page = (pos % PAGE_SIZE) as usize;
        let n = (PAGE_SIZE - in_page as u64).min(end - pos) as usize;
        pos += n as u64;
        Some((page, in_page, n))
    })
}

impl SparseArray {
    /// An empty array.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty array that prints nbdkit's directory messages (`-D
    /// memory.dir=1`).
    pub fn with_dir_debug() -> Self {
        SparseArray {
            dir: Some(crate::sync::Mutex::new(DirTrace::default())),
            ..Self::default()
        }
    }

    fn trace(&self, offset: u64, count: u64, create: bool) {
        if let Some(d) = &self.dir {
            crate::sync::lock(d).lookups(offset, count, create);
        }
    }

    /// Copy `buf.len()` bytes at `offset` out of the array.
    pub fn read(&self, buf: &mut [u8], offset: u64) {
        self.trace(offset, buf.len() as u64, false);
        let pages = read(&self.pages);
        let mut done = 0;
        for (page, in_page, n) in page_runs(offset, buf.len() as u64) {
            let dst = &mut buf[done..done + n];
            match pages.get(&page) {
                Some(p) => dst.copy_from_slice(&read(p)[in_page..in_page + n]),
                None => dst.fill(0),
            }
            done += n;
        }
    }

    /// Lend the `count` bytes at `offset`: the pages they are in (shared,
    /// not copied) and zero runs for the holes. Later writes to those pages
    /// do not change what was lent.
    pub fn lend(&self, count: usize, offset: u64) -> Lent {
        self.trace(offset, count as u64, false);
        let pages = read(&self.pages);
        let mut lent = Lent::with_capacity(count.div_ceil(PAGE_SIZE as usize) + 1);
        for (page, in_page, n) in page_runs(offset, count as u64) {
            match pages.get(&page) {
                Some(p) => {
                    let bytes: SharedBytes = read(p).clone();
                    lent.push_bytes(bytes, in_page, n);
                }
                None => lent.push_zeroes(n),
            }
        }
        lent
    }

    /// Copy `buf` into the array at `offset`, allocating pages as needed.
    pub fn write(&self, buf: &[u8], offset: u64) {
        self.trace(offset, buf.len() as u64, true);
        let mut done = 0;
        let mut missing = false;
        {
            // Fast path: pages that exist are written under the map's read
            // lock and their own write lock.
            let pages = read(&self.pages);
            for (page, in_page, n) in page_runs(offset, buf.len() as u64) {
                let src = &buf[done..done + n];
                done += n;
                match pages.get(&page) {
                    Some(p) => page_mut(&mut write(p))[in_page..in_page + n].copy_from_slice(src),
                    None => missing = true,
                }
            }
        }
        if !missing {
            return;
        }
        let mut pages = write(&self.pages);
        let mut done = 0;
        for (page, in_page, n) in page_runs(offset, buf.len() as u64) {
            let src = &buf[done..done + n];
            done += n;
            // Pages that appeared since the fast path get this write too.
            if let Some(p) = pages.get(&page) {
                page_mut(&mut write(p))[in_page..in_page + n].copy_from_slice(src);
                continue;
            }
            // A write allocates its pages even when it writes zeroes, as
            // nbdkit's sparse array does (block status then reports them
            // as allocated zeroes).
            let p = new_page();
            page_mut(&mut write(&p))[in_page..in_page + n].copy_from_slice(src);
            pages.insert(page, p);
        }
    }

    /// Zero a range, freeing every page that becomes all zeroes.
    pub fn zero(&self, count: u64, offset: u64) {
        let mut dir = self.dir.as_ref().map(crate::sync::lock);
        let mut pages = write(&self.pages);
        for (page, in_page, n) in page_runs(offset, count) {
            let at = page * PAGE_SIZE + in_page as u64;
            if let Some(d) = dir.as_deref_mut() {
                d.lookup(at, false);
            }
            let freed = if n as u64 == PAGE_SIZE {
                pages.remove(&page).is_some()
            } else if let Some(p) = pages.get(&page) {
                let empty = {
                    let mut g = write(p);
                    let d = page_mut(&mut g);
                    d[in_page..in_page + n].fill(0);
                    d.iter().all(|&b| b == 0)
                };
                if empty {
                    pages.remove(&page);
                }
                empty
            } else {
                false
            };
            if freed && dir.is_some() {
                crate::debug::debug(format_args!(
                    "sparse_array_zero: freeing zero page at offset {at}"
                ));
            }
        }
    }

    /// Report pages that were never written (or were freed) as holes, and
    /// allocated pages as data, or as zeroes when the page is zero from
    /// the offset asked for to its end (nbdkit's sparse array does the
    /// same).
    pub fn extents(&self, count: u64, offset: u64, extents: &mut Extents) -> Result<()> {
        self.trace(offset, count, false);
        let pages = read(&self.pages);
        let end = offset.saturating_add(count);
        let mut pos = offset;
        let first = offset / PAGE_SIZE;
        let last = (end - 1) / PAGE_SIZE;
        for (&page, p) in pages.range(first..=last) {
            let start = (page * PAGE_SIZE).max(pos);
            if start > pos {
                extents.add(pos, start - pos, STATE_HOLE | STATE_ZERO)?;
            }
            let stop = ((page + 1) * PAGE_SIZE).min(end);
            let tail = (start % PAGE_SIZE) as usize;
            let flags = if read(p)[tail..].iter().all(|&b| b == 0) {
                STATE_ZERO
            } else {
                0
            };
            extents.add(start, stop - start, flags)?;
            pos = stop;
            if extents.is_full() {
                return Ok(());
            }
        }
        if pos < end {
            extents.add(pos, end - pos, STATE_HOLE | STATE_ZERO)?;
        }
        Ok(())
    }

    /// Number of allocated pages.
    pub fn allocated_pages(&self) -> usize {
        read(&self.pages).len()
    }
}

/// A fully allocated byte array behind one lock (`allocator=malloc`).
#[derive(Debug)]
pub struct FlatArray {
    bytes: RwLock<Vec<u8>>,
}

/// A RAM disk a plugin keeps in its own structure (the data plugin's
/// lazily expanded image), served through [`MemoryHandle`] with the
/// semantics of the sparse array.
pub trait Backing: Send + Sync {
    /// Copy bytes out.
    fn read(&self, buf: &mut [u8], offset: u64);
    /// Copy bytes in.
    fn write(&self, buf: &[u8], offset: u64);
    /// Zero a range.
    fn zero(&self, count: u64, offset: u64);
    /// Block status.
    fn extents(&self, count: u64, offset: u64, extents: &mut Extents) -> Result<()>;
}

/// Where a RAM disk keeps its bytes (the memory and data plugins).
pub enum Store {
    /// The sparse array (`allocator=sparse`).
    Sparse(SparseArray),
    /// One flat allocation (`allocator=malloc`).
    Flat(FlatArray),
    /// A plugin's own structure.
    Other(Box<dyn Backing>),
}

impl Store {
    /// An empty sparse store.
    pub fn sparse() -> Self {
        Store::Sparse(SparseArray::new())
    }

    /// An empty sparse store that prints nbdkit's directory messages
    /// (`-D memory.dir=1`, `-D data.dir=1`).
    pub fn sparse_with_dir_debug() -> Self {
        Store::Sparse(SparseArray::with_dir_debug())
    }

    /// A zeroed flat store of `size` bytes, refused cleanly when it cannot
    /// be allocated.
    pub fn flat(size: u64) -> Result<Self> {
        let n = usize::try_from(size)
            .map_err(|_| Error::config("malloc: size is too large for this machine"))?;
        let mut v = Vec::new();
        v.try_reserve_exact(n).map_err(|_| {
            Error::msg(
                Errno::ENOMEM,
                format!("malloc: cannot allocate {size} bytes"),
            )
        })?;
        v.resize(n, 0);
        Ok(Store::Flat(FlatArray {
            bytes: RwLock::new(v),
        }))
    }

    /// Copy bytes out.
    pub fn read(&self, buf: &mut [u8], offset: u64) {
        match self {
            Store::Sparse(s) => s.read(buf, offset),
            Store::Flat(f) => {
                let b = read(&f.bytes);
                let o = offset as usize;
                buf.copy_from_slice(&b[o..o + buf.len()]);
            }
            Store::Other(o) => o.read(buf, offset),
        }
    }
    /// Copy bytes in.
    pub fn write(&self, buf: &[u8], offset: u64) {
        match self {
            Store::Sparse(s) => s.write(buf, offset),
            Store::Flat(f) => {
                let mut b = write(&f.bytes);
                let o = offset as usize;
                b[o..o + buf.len()].copy_from_slice(buf);
            }
            Store::Other(o) => o.write(buf, offset),
        }
    }
    /// Zero a range (freeing pages in the sparse store).
    pub fn zero(&self, count: u64, offset: u64) {
        match self {
            Store::Sparse(s) => s.zero(count, offset),
            Store::Flat(f) => {
                let mut b = write(&f.bytes);
                let o = offset as usize;
                b[o..o + count as usize].fill(0);
            }
            Store::Other(o) => o.zero(count, offset),
        }
    }
}

/// The memory plugin.
#[derive(Default)]
pub struct Memory {
    size: Option<u64>,
    allocator: Option<String>,
    store: Option<Arc<Store>>,
}

impl core::fmt::Debug for Memory {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Memory").field("size", &self.size).finish()
    }
}

/// The per-connection callbacks of nbdkit's RAM-backed plugins (memory,
/// data, null, ones): every data call but `cache`, and the `can_*` whose
/// answers are not nbdkit's defaults.
pub const DISK_CALLBACKS: Callbacks = Callbacks::OPEN
    .union(Callbacks::GET_SIZE)
    .union(Callbacks::CAN_FAST_ZERO)
    .union(Callbacks::CAN_FUA)
    .union(Callbacks::CAN_MULTI_CONN)
    .union(Callbacks::CAN_CACHE)
    .union(Callbacks::PREAD)
    .union(Callbacks::PWRITE)
    .union(Callbacks::FLUSH)
    .union(Callbacks::TRIM)
    .union(Callbacks::ZERO)
    .union(Callbacks::EXTENTS);

impl Plugin for Memory {
    fn debug_flags(&self) -> &'static [&'static str] {
        &["dir"]
    }
    fn name(&self) -> &'static str {
        "memory"
    }
    fn config_help(&self) -> &'static str {
        "size=<SIZE>  (required) Size of the backing disk\nallocator=sparse|...    Backend allocation strategy"
    }
    fn magic_config_key(&self) -> Option<&'static str> {
        Some("size")
    }
    fn callbacks(&self) -> Callbacks {
        Callbacks::DUMP_PLUGIN
            | Callbacks::CONFIG
            | Callbacks::CONFIG_COMPLETE
            | Callbacks::CONFIG_HELP
            | DISK_CALLBACKS
    }
    fn dump_plugin(&self) -> Vec<(String, String)> {
        vec![
            (super::s("mlock"), super::s("no")),
            (super::s("zstd"), super::s("no")),
        ]
    }
    fn blocks(&self) -> bool {
        false
    }
    fn config(&mut self, key: &str, value: &str) -> Result<()> {
        match key {
            "size" => self.size = Some(super::size_param(value)?),
            "allocator" => {
                let name = value.split(',').next().unwrap_or("");
                match name {
                    "sparse" | "malloc" => {}
                    "zstd" => return Err(Error::config(
                        "allocator=zstd is not supported by this nbdkit (no zstd support built in)",
                    )),
                    _ => return Err(Error::config(format!("unknown allocator \"{value}\""))),
                }
                if value.contains(',') {
                    return Err(Error::config(format!(
                        "allocator parameters are not supported yet: \"{value}\""
                    )));
                }
                self.allocator = Some(name.into());
            }
            _ => return Err(super::unknown_param(key)),
        }
        Ok(())
    }
    fn config_complete(&mut self) -> Result<()> {
        let Some(size) = self.size else {
            return Err(Error::config(
                "you must specify size=<SIZE> on the command line",
            ));
        };
        let malloc = self.allocator.as_deref() == Some("malloc");
        crate::debug::debug(format_args!(
            "allocator: {}",
            if malloc { "malloc" } else { "sparse" }
        ));
        let store = if malloc {
            Store::flat(size)?
        } else if crate::debug::enabled("memory", "dir") {
            Store::sparse_with_dir_debug()
        } else {
            Store::sparse()
        };
        self.store = Some(Arc::new(store));
        Ok(())
    }
    fn open(&self, _args: &OpenArgs<'_>) -> Result<Box<dyn Handle>> {
        let store = self
            .store
            .clone()
            .ok_or_else(|| Error::msg(Errno::EIO, "memory: not configured"))?;
        Ok(Box::new(MemoryHandle::new(store, self.size.unwrap_or(0))))
    }
}

/// A connection's view of a RAM disk: writable, trimmable, zeroable, with
/// holes reported from the sparse store. Shared by every plugin that
/// serves a [`Store`].
pub struct MemoryHandle {
    size: u64,
    store: Arc<Store>,
}

impl MemoryHandle {
    /// A handle serving `size` bytes of `store`.
    pub fn new(store: Arc<Store>, size: u64) -> Self {
        MemoryHandle { size, store }
    }
}

impl Handle for MemoryHandle {
    fn get_size(&self) -> Result<u64> {
        Ok(self.size)
    }
    fn can_fast_zero(&self) -> Result<bool> {
        Ok(true)
    }
    fn can_fua(&self) -> Result<Support> {
        Ok(Support::Native)
    }
    fn can_multi_conn(&self) -> Result<bool> {
        Ok(true)
    }
    fn can_cache(&self) -> Result<Support> {
        Ok(Support::Native)
    }
    fn pread(&self, buf: &mut [u8], offset: u64, _flags: Flags) -> Result<()> {
        self.store.read(buf, offset);
        Ok(())
    }
    fn can_lend(&self) -> bool {
        matches!(&*self.store, Store::Sparse(_))
    }
    fn pread_lent(&self, count: usize, offset: u64, _flags: Flags) -> Result<Lent> {
        match &*self.store {
            Store::Sparse(s) => Ok(s.lend(count, offset)),
            _ => Err(Error::new(Errno::EINVAL)),
        }
    }
    fn pwrite(&self, buf: &[u8], offset: u64, _flags: Flags) -> Result<()> {
        self.store.write(buf, offset);
        Ok(())
    }
    fn flush(&self, _flags: Flags) -> Result<()> {
        Ok(())
    }
    fn trim(&self, count: u64, offset: u64, _flags: Flags) -> Result<()> {
        self.store.zero(count, offset);
        Ok(())
    }
    fn zero(&self, count: u64, offset: u64, _flags: Flags) -> Result<()> {
        self.store.zero(count, offset);
        Ok(())
    }
    fn extents(&self, count: u64, offset: u64, _flags: Flags, extents: &mut Extents) -> Result<()> {
        match &*self.store {
            Store::Sparse(s) => s.extents(count, offset, extents),
            Store::Flat(_) => extents.add(offset, count, 0),
            Store::Other(o) => o.extents(count, offset, extents),
        }
    }
    fn cache(&self, _count: u64, _offset: u64, _flags: Flags) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn sparse_reads_back_and_frees() {
        let a = SparseArray::new();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8 + 1).collect();
        a.write(&data, 12345);
        let mut out = vec![0u8; 100_000];
        a.read(&mut out, 12345);
        assert_eq!(out, data);
        assert_eq!(a.allocated_pages(), 4);
        a.zero(200_000, 0);
        assert_eq!(a.allocated_pages(), 0);
        a.read(&mut out, 12345);
        assert!(out.iter().all(|&b| b == 0));
    }

    /// Block status of `count` bytes at `offset`, as tuples.
    fn map(a: &SparseArray, offset: u64, count: u64) -> Vec<(u64, u64, u32)> {
        let mut e = Extents::new(offset, offset + count);
        a.extents(count, offset, &mut e).unwrap();
        e.as_slice()
            .iter()
            .map(|x| (x.offset, x.length, x.flags))
            .collect()
    }

    #[test]
    fn sparse_extents() {
        let a = SparseArray::new();
        a.write(&[1], PAGE_SIZE * 2 + 5);
        assert_eq!(
            map(&a, 0, PAGE_SIZE * 8),
            [
                (0, PAGE_SIZE * 2, 3),
                (PAGE_SIZE * 2, PAGE_SIZE, 0),
                (PAGE_SIZE * 3, PAGE_SIZE * 5, 3)
            ]
        );
    }

    #[test]
    fn zero_writes_allocate_and_report_zeroes() {
        let a = SparseArray::new();
        a.write(&[0; 512], PAGE_SIZE + 100);
        a.write(&[1], 3 * PAGE_SIZE + 5);
        assert_eq!(
            map(&a, 0, PAGE_SIZE * 4),
            [
                (0, PAGE_SIZE, 3),
                (PAGE_SIZE, PAGE_SIZE, 2),
                (PAGE_SIZE * 2, PAGE_SIZE, 3),
                (PAGE_SIZE * 3, PAGE_SIZE, 0),
            ]
        );
        // Asked from past the page's only non-zero byte: zeroes.
        assert_eq!(
            map(&a, 3 * PAGE_SIZE + 6, PAGE_SIZE - 6),
            [(3 * PAGE_SIZE + 6, PAGE_SIZE - 6, 2)]
        );
        a.zero(512, PAGE_SIZE + 100);
        assert_eq!(a.allocated_pages(), 1);
    }

    /// The bytes of a lent read, copied out.
    fn bytes(l: &Lent) -> Vec<u8> {
        let mut out = vec![0xffu8; l.len()];
        l.copy_to(&mut out);
        out
    }

    #[test]
    fn lent_pages_keep_the_old_bytes_and_writes_land() {
        let a = SparseArray::new();
        a.write(&[1u8; 100], PAGE_SIZE - 50);
        // Across a page boundary, then a hole.
        let lent = a.lend(PAGE_SIZE as usize + 200, PAGE_SIZE - 100);
        let mut want = vec![0u8; PAGE_SIZE as usize + 200];
        want[50..150].fill(1);
        assert_eq!(bytes(&lent), want);
        // Shared, not copied: two page segments, then one zero run.
        assert_eq!(lent.segments().len(), 3);
        // A write (and a zero) racing the lent read go to copies of the
        // pages: the lent bytes do not change, the write lands.
        a.write(&[2u8; 100], PAGE_SIZE - 50);
        a.zero(10, PAGE_SIZE);
        a.write(&[3u8; 10], PAGE_SIZE * 2);
        assert_eq!(bytes(&lent), want);
        let mut now = vec![0u8; 200];
        a.read(&mut now, PAGE_SIZE - 100);
        assert_eq!(now[..50], [0; 50]);
        assert_eq!(now[50..100], [2; 50]);
        assert_eq!(now[100..110], [0; 10]);
        assert_eq!(now[110..150], [2; 40]);
        assert_eq!(now[150..], [0; 50]);
        // Freeing the page leaves the lent copy alone.
        a.zero(PAGE_SIZE * 4, 0);
        assert_eq!(a.allocated_pages(), 0);
        assert_eq!(bytes(&lent), want);
    }

    #[test]
    fn lending_matches_reading() {
        let a = SparseArray::new();
        let data: Vec<u8> = (0..70_000u32).map(|i| (i % 253) as u8).collect();
        a.write(&data, 5 * PAGE_SIZE + 7);
        for (offset, count) in [(0, 1), (5 * PAGE_SIZE, 300_000), (6 * PAGE_SIZE + 3, 5)] {
            let mut r = vec![0u8; count];
            a.read(&mut r, offset);
            assert_eq!(bytes(&a.lend(count, offset)), r, "{offset} {count}");
        }
        // Only the sparse store lends.
        let h = MemoryHandle::new(Arc::new(Store::sparse()), 1 << 20);
        assert!(h.can_lend());
        let h = MemoryHandle::new(Arc::new(Store::flat(4096).unwrap()), 4096);
        assert!(!h.can_lend());
    }

    #[test]
    fn huge_offsets_do_not_overflow() {
        let a = SparseArray::new();
        let top = i64::MAX as u64 - 512;
        a.write(&[7u8; 512], top);
        let mut b = [0u8; 512];
        a.read(&mut b, top);
        assert_eq!(b, [7u8; 512]);
    }
}
