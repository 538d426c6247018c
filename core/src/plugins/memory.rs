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
    Callbacks, Error, Extents, Flags, Handle, Lent, OpenArgs, Plugin, Result, SharedBytes, Support,
};
use crate::errno::Errno;
use crate::plugins::slab::{PageBuf, Slab};
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
    /// Where the pages' bytes live.
    slab: Arc<Slab>,
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

/// A page: its bytes are shared with the reads that lent them
/// ([`SparseArray::lend`]) until they are sent; a write to a page that is
/// still lent writes to a copy (copy-on-write, [`Arc::make_mut`]), so what
/// was lent never changes. The bytes live in a slot of the array's
/// [`Slab`].
type Page = RwLock<Arc<PageBuf>>;

/// The bytes of a page, to write to: a copy first if they are lent.
fn page_mut(p: &mut Arc<PageBuf>) -> &mut [u8; PAGE_SIZE as usize] {
    Arc::make_mut(p).bytes_mut()
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
        self.write_untraced(buf, offset);
    }

    fn write_untraced(&self, buf: &[u8], offset: u64) {
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
            // as allocated zeroes). A whole page is not zeroed first.
            let mut p = self.slab.page_for(in_page, n);
            p[in_page..in_page + n].copy_from_slice(src);
            pages.insert(page, RwLock::new(Arc::new(p)));
        }
    }

    /// Buffers to receive a write of `count` bytes at `offset` into
    /// ([`Received`]): a fresh page for each whole page the write covers,
    /// a side buffer for the parts of pages at either end. `None` when the
    /// write covers no whole page (then a copy costs no more).
    pub fn receive(self: &Arc<Self>, count: usize, offset: u64) -> Option<Received> {
        let first_full = offset.div_ceil(PAGE_SIZE);
        let end = offset.checked_add(count as u64)?;
        let end_full = end / PAGE_SIZE;
        if first_full >= end_full {
            return None;
        }
        let mut segs = Vec::with_capacity((end_full - first_full) as usize + 2);
        let head = (first_full * PAGE_SIZE - offset) as usize;
        if head > 0 {
            segs.push(Seg::Side(vec![0u8; head]));
        }
        for page in first_full..end_full {
            segs.push(Seg::Page(page, self.slab.page_uninit()));
        }
        let tail = (end - end_full * PAGE_SIZE) as usize;
        if tail > 0 {
            segs.push(Seg::Side(vec![0u8; tail]));
        }
        Some(Received {
            array: self.clone(),
            offset,
            len: count,
            segs,
        })
    }

    /// Put whole pages in place (the old ones, if any, are dropped: freed,
    /// or kept by the reads they were lent to).
    fn install(&self, mut new: Vec<(u64, Option<PageBuf>)>) {
        let mut old = Vec::with_capacity(new.len());
        let mut missing = false;
        {
            let pages = read(&self.pages);
            for (page, buf) in &mut new {
                match pages.get(page) {
                    Some(p) => {
                        let b = Arc::new(buf.take().expect("a page"));
                        old.push(core::mem::replace(&mut *write(p), b));
                    }
                    None => missing = true,
                }
            }
        }
        if missing {
            let mut pages = write(&self.pages);
            for (page, buf) in new {
                let Some(buf) = buf else { continue };
                let b = Arc::new(buf);
                match pages.get(&page) {
                    Some(p) => old.push(core::mem::replace(&mut *write(p), b)),
                    None => {
                        pages.insert(page, RwLock::new(b));
                    }
                }
            }
        }
        // The old pages' slots go back after the locks.
        drop(old);
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

/// Where a received write's payload goes, in order.
enum Seg {
    /// Part of a page: copied in when the write is made.
    Side(Vec<u8>),
    /// A whole page (its index): put in place when the write is made.
    Page(u64, PageBuf),
}

impl Seg {
    fn bytes_mut(&mut self) -> &mut [u8] {
        match self {
            Seg::Side(v) => v,
            Seg::Page(_, p) => p.bytes_mut(),
        }
    }
}

/// A write to the sparse array received in place ([`SparseArray::receive`]):
/// whole pages are read straight into new pages, which replace the old
/// ones when the write is made, so that readers see each page old or new
/// (never a page half received), a page lent to a read is never written
/// to, and a payload that never arrives whole changes nothing.
pub struct Received {
    array: Arc<SparseArray>,
    offset: u64,
    len: usize,
    segs: Vec<Seg>,
}

impl Received {
    /// Make the write.
    pub fn commit(self) {
        let Received {
            array,
            offset,
            len,
            segs,
            ..
        } = self;
        array.trace(offset, len as u64, true);
        let mut at = offset;
        let mut pages = Vec::with_capacity(segs.len());
        let mut sides = Vec::new();
        for seg in segs {
            match seg {
                Seg::Side(v) => {
                    let n = v.len() as u64;
                    sides.push((v, at));
                    at += n;
                }
                Seg::Page(page, buf) => {
                    pages.push((page, Some(buf)));
                    at += PAGE_SIZE;
                }
            }
        }
        for (v, at) in sides {
            array.write_untraced(&v, at);
        }
        array.install(pages);
    }
}

impl crate::backend::Receive for Received {
    fn len(&self) -> usize {
        self.len
    }
    fn bufs<'a>(&'a mut self, at: usize, out: &mut Vec<&'a mut [u8]>) {
        let mut start = 0;
        for seg in &mut self.segs {
            let b = seg.bytes_mut();
            let n = b.len();
            if at < start + n {
                out.push(&mut b[at.max(start) - start..]);
            }
            start += n;
        }
    }
    fn commit(self: Box<Self>, _flags: Flags) -> Result<()> {
        Received::commit(*self);
        Ok(())
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
    Sparse(Arc<SparseArray>),
    /// One flat allocation (`allocator=malloc`).
    Flat(FlatArray),
    /// A plugin's own structure.
    Other(Box<dyn Backing>),
}

impl Store {
    /// An empty sparse store.
    pub fn sparse() -> Self {
        Store::Sparse(Arc::new(SparseArray::new()))
    }

    /// An empty sparse store that prints nbdkit's directory messages
    /// (`-D memory.dir=1`, `-D data.dir=1`).
    pub fn sparse_with_dir_debug() -> Self {
        Store::Sparse(Arc::new(SparseArray::with_dir_debug()))
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
    fn can_receive(&self) -> bool {
        matches!(&*self.store, Store::Sparse(_))
    }
    fn receive_write(&self, count: usize, offset: u64) -> Option<Box<dyn crate::backend::Receive>> {
        match &*self.store {
            Store::Sparse(s) => Some(Box::new(s.receive(count, offset)?)),
            _ => None,
        }
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

    /// Receive a write in place ([`SparseArray::receive`]): fill its
    /// buffers with `data` in pieces of at most `step` bytes, as a socket
    /// would, and commit it. False if the array did not take it in place.
    fn receive(a: &Arc<SparseArray>, data: &[u8], offset: u64, step: usize) -> bool {
        use crate::backend::Receive;
        let Some(mut r) = a.receive(data.len(), offset) else {
            return false;
        };
        assert_eq!(r.len(), data.len());
        let mut at = 0;
        while at < data.len() {
            let mut bufs = Vec::new();
            r.bufs(at, &mut bufs);
            assert_eq!(bufs.iter().map(|b| b.len()).sum::<usize>(), data.len() - at);
            let b = bufs.into_iter().next().unwrap();
            let n = b.len().min(step);
            b[..n].copy_from_slice(&data[at..at + n]);
            at += n;
        }
        r.commit();
        true
    }

    #[test]
    fn received_writes_land_like_copied_ones() {
        let p = PAGE_SIZE as usize;
        let cases: [(u64, usize); 7] = [
            (0, p),
            (0, 3 * p),
            (1, 2 * p),
            (PAGE_SIZE - 1, p + 2),
            (7 * PAGE_SIZE + 100, 4 * p + 300),
            (2 * PAGE_SIZE, 2 * p - 1),
            (5, 2 * p),
        ];
        for (i, &(offset, len)) in cases.iter().enumerate() {
            for step in [1000, 4096, p, usize::MAX] {
                let a = Arc::new(SparseArray::new());
                let b = SparseArray::new();
                // Old bytes around and under the write.
                let old: Vec<u8> = (0..12 * p).map(|i| (i % 241) as u8 + 1).collect();
                a.write(&old, 0);
                b.write(&old, 0);
                let data: Vec<u8> = (0..len).map(|j| (j % 239) as u8 ^ i as u8).collect();
                assert!(receive(&a, &data, offset, step), "{offset} {len}");
                b.write(&data, offset);
                let (mut x, mut y) = (vec![0u8; 13 * p], vec![0u8; 13 * p]);
                a.read(&mut x, 0);
                b.read(&mut y, 0);
                assert!(x == y, "{offset} {len} {step}");
                assert_eq!(a.allocated_pages(), b.allocated_pages());
            }
        }
        // A write without a whole page in it is not taken in place.
        let a = Arc::new(SparseArray::new());
        assert!(a.receive(PAGE_SIZE as usize - 1, 0).is_none());
        assert!(a.receive(PAGE_SIZE as usize, 1).is_none());
        assert!(a.receive(100, 5).is_none());
    }

    #[test]
    fn received_writes_to_holes_trimmed_and_zeroed_pages() {
        let p = PAGE_SIZE as usize;
        let a = Arc::new(SparseArray::new());
        a.write(&vec![9u8; 4 * p], 0);
        a.zero(2 * PAGE_SIZE, 0);
        a.zero(100, 3 * PAGE_SIZE);
        assert_eq!(a.allocated_pages(), 2);
        // Into freed pages, a partly zeroed one and a hole past the end.
        let data: Vec<u8> = (0..5 * p).map(|j| (j % 13) as u8).collect();
        assert!(receive(&a, &data, 50, 8192));
        let mut out = vec![0xffu8; 6 * p];
        a.read(&mut out, 0);
        assert_eq!(out[..50], [0; 50]);
        assert!(out[50..50 + 5 * p] == data[..]);
        assert!(out[50 + 5 * p..].iter().all(|&b| b == 0));
        assert_eq!(a.allocated_pages(), 6);
        assert_eq!(
            map(&a, 0, 7 * PAGE_SIZE),
            [(0, 6 * PAGE_SIZE, 0), (6 * PAGE_SIZE, PAGE_SIZE, 3)]
        );
        // Zeroed again: the pages are freed, their slots reused.
        a.zero(8 * PAGE_SIZE, 0);
        assert_eq!(a.allocated_pages(), 0);
        assert_eq!(a.slab.stats().1, 0);
    }

    #[test]
    fn a_received_write_never_committed_changes_nothing() {
        use crate::backend::Receive;
        let p = PAGE_SIZE as usize;
        let a = Arc::new(SparseArray::new());
        a.write(&vec![3u8; 3 * p], 0);
        let mut r = a.receive(3 * p, 10).unwrap();
        let mut bufs = Vec::new();
        r.bufs(0, &mut bufs);
        for b in bufs.into_iter().take(2) {
            b.fill(4);
        }
        // The client went away: the write is dropped half filled.
        drop(r);
        let mut out = vec![0u8; 4 * p];
        a.read(&mut out, 0);
        assert!(out[..3 * p].iter().all(|&b| b == 3));
        assert!(out[3 * p..].iter().all(|&b| b == 0));
        assert_eq!(a.allocated_pages(), 3);
        assert_eq!(a.slab.stats().1, 3);
    }

    #[test]
    fn received_writes_leave_lent_pages_alone() {
        let p = PAGE_SIZE as usize;
        let a = Arc::new(SparseArray::new());
        a.write(&vec![1u8; 2 * p], 0);
        let lent = a.lend(2 * p, 0);
        // A write received while the pages are lent (and one that ends
        // before the lent bytes are sent): the lent bytes stay.
        assert!(receive(&a, &vec![2u8; 2 * p], 0, p));
        assert!(receive(&a, &vec![3u8; p + 10], PAGE_SIZE - 10, 5000));
        assert!(bytes(&lent).iter().all(|&b| b == 1));
        let mut out = vec![0u8; 2 * p];
        a.read(&mut out, 0);
        assert!(out[..p - 10].iter().all(|&b| b == 2));
        assert!(out[p - 10..].iter().all(|&b| b == 3));
        // The lent pages' slots are freed once the lent read is done.
        let before = a.slab.stats().1;
        drop(lent);
        assert_eq!(a.slab.stats().1, before - 2);
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
