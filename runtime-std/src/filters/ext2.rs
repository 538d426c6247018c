//! The ext2 filter: serve one file from inside the ext2/3/4 filesystem
//! image that the layer below serves.
//!
//! Parameters:
//! - `ext2file=PATH` (required): the absolute path of the file inside the
//!   filesystem, or `exportname` to take the path from the export name the
//!   client asks for (a relative name is taken from the root; no export is
//!   listed and there is no default export, so "" is refused).
//!
//! The filesystem is read with the `ext4-view` crate, which cannot write.
//! Writing is supported in place only, unlike nbdkit's filter (which
//! writes through libext2fs): on a writable connection the filter maps the
//! file's blocks itself (superblock, group descriptors, the inodes on the
//! path, the extent tree or the ext2/ext3 indirect block map), and writes
//! and zeroes (as written zeroes) that fall in blocks the file already has
//! are done in place in the image. Writing to holes,
//! unwritten extents or past the end of the file fails with EIO ("writing
//! to unallocated blocks is not supported"): nothing is ever allocated.
//! The filesystem metadata is never changed, so the file's mtime/ctime are
//! not updated (nbdkit's filter updates them). As in nbdkit, trim is not
//! offered and cache is emulated by reading. Files the mapper cannot
//! handle (inline data, encrypted, fs-verity, `meta_bg` filesystems, a
//! journal needing recovery, ...) are served read-only with a debug
//! message. On a writable connection reads go through the same block map,
//! so they see the writes (`ext4-view` caches blocks).
//!
//! `ext4-view` is single-threaded (`Rc`) and pulls its bytes from a reader
//! it owns, while a filter may only touch the layer below during a call.
//! So each connection runs the filesystem on a worker thread of its own,
//! and the calling thread services the worker's reads of the layer below
//! while it waits for the answer (requests in, "read this from below"
//! events out, until the answer comes). No second context is opened and
//! nothing touches the layer below outside a call.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Mutex;

use nbdkit_core::backend::{
    Context, Error, Exports, Filter, FilterHandle, Flags, NextExports, NextOpener, OpenArgs,
    Result, Support, ThreadModel,
};
use nbdkit_core::errno::Errno;

/// The largest read of the layer below the worker may ask for.
const MAX_BELOW_READ: usize = 32 << 20;

/// The ext2 filter.
#[derive(Debug, Default)]
pub struct Ext2 {
    file: Option<String>,
}

impl Ext2 {
    /// `ext2file=exportname`: the client's export name says which file.
    fn by_export_name(&self) -> bool {
        self.file.as_deref() == Some("exportname")
    }
}

impl Filter for Ext2 {
    fn name(&self) -> &'static str {
        "ext2"
    }

    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit ext2 filter")
    }

    fn config_help(&self) -> &'static str {
        "ext2file=<FILENAME>  (required) Absolute name of file to serve inside the\n\
         \x20                    disk image, or 'exportname' for client choice."
    }

    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        if key != "ext2file" {
            return Ok(false);
        }
        if value != "exportname" && !value.starts_with('/') {
            return Err(Error::config(
                "the file parameter must refer to an absolute path",
            ));
        }
        self.file = Some(value.to_string());
        Ok(true)
    }

    fn config_complete(&mut self) -> Result<()> {
        if self.file.is_none() {
            return Err(Error::config(
                "you must supply ext2file=<FILE> parameter after the plugin name on the command line",
            ));
        }
        Ok(())
    }

    fn thread_model(&self) -> ThreadModel {
        ThreadModel::SerializeConnections
    }

    fn list_exports(
        &self,
        next: &dyn NextExports,
        readonly: bool,
        is_tls: bool,
        exports: &mut Exports,
    ) -> Result<()> {
        // When the client names the file, list nothing: the names below
        // are not file names, and "" is not a file.
        if self.by_export_name() {
            return Ok(());
        }
        next.list_exports(readonly, is_tls, exports)
    }

    fn default_export(
        &self,
        next: &dyn NextExports,
        readonly: bool,
        is_tls: bool,
    ) -> Result<Option<String>> {
        // There is no sensible default file, so "" is refused.
        if self.by_export_name() {
            return Ok(None);
        }
        next.default_export(readonly, is_tls)
    }

    fn open(
        &self,
        next: &mut dyn NextOpener,
        args: &OpenArgs<'_>,
    ) -> Result<Box<dyn FilterHandle>> {
        let file = self.file.as_deref().unwrap_or("/");
        let (path, below) = if file == "exportname" {
            // The export name is the file's path, taken from the root when
            // it is relative; the layer below gets its default export.
            let name = args.export_name;
            let path = if name.starts_with('/') {
                name.to_string()
            } else {
                format!("/{name}")
            };
            (path, "")
        } else {
            (file.to_string(), args.export_name)
        };
        next.open(args.readonly, below)?;
        Ok(Box::new(Ext2Handle {
            path,
            worker: Mutex::new(None),
            size: std::sync::OnceLock::new(),
            layout: std::sync::OnceLock::new(),
        }))
    }
}

/// What the calling thread asks the worker, or answers it.
enum Cmd {
    Load(String),
    Read { offset: u64, len: usize },
    Below(std::result::Result<Vec<u8>, Error>),
}

/// What the worker says.
enum Event {
    /// Read this from the layer below and answer with `Cmd::Below`.
    NeedBelow {
        offset: u64,
        len: usize,
    },
    Loaded(Result<(u64, Vec<u8>)>),
    Data(Result<Vec<u8>>),
}

struct Worker {
    tx: Sender<Cmd>,
    rx: Receiver<Event>,
}

struct Ext2Handle {
    path: String,
    worker: Mutex<Option<Worker>>,
    size: std::sync::OnceLock<u64>,
    /// The file's block map, on a writable connection only.
    layout: std::sync::OnceLock<Layout>,
}

fn worker_gone() -> Error {
    Error::msg(Errno::EIO, "ext2: the filesystem worker stopped")
}

impl Ext2Handle {
    /// Send `cmd` and serve the worker's reads of `next` until it answers.
    fn call(&self, next: &Context, cmd: Cmd) -> Result<Event> {
        let guard = self.worker.lock().unwrap_or_else(|p| p.into_inner());
        let w = guard.as_ref().ok_or_else(worker_gone)?;
        w.tx.send(cmd).map_err(|_| worker_gone())?;
        loop {
            match w.rx.recv().map_err(|_| worker_gone())? {
                Event::NeedBelow { offset, len } => {
                    let r = read_below(next, offset, len);
                    w.tx.send(Cmd::Below(r)).map_err(|_| worker_gone())?;
                }
                ev => return Ok(ev),
            }
        }
    }
}

fn read_below(next: &Context, offset: u64, len: usize) -> Result<Vec<u8>> {
    let size = next.size()?;
    if len > MAX_BELOW_READ || offset.checked_add(len as u64).map_or(true, |e| e > size) {
        return Err(Error::msg(
            Errno::EIO,
            format!("ext2: read of {len} bytes at {offset} is outside the filesystem image"),
        ));
    }
    let mut v = vec![0u8; len];
    next.pread(&mut v, offset, Flags::NONE)?;
    Ok(v)
}

/// The worker's view of the layer below: every read is a round trip to
/// the calling thread.
struct Below {
    tx: Sender<Event>,
    rx: Rc<Receiver<Cmd>>,
}

impl ext4_view::Ext4Read for Below {
    fn read(
        &mut self,
        start_byte: u64,
        dst: &mut [u8],
    ) -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        self.tx.send(Event::NeedBelow {
            offset: start_byte,
            len: dst.len(),
        })?;
        match self.rx.recv()? {
            Cmd::Below(Ok(v)) if v.len() == dst.len() => {
                dst.copy_from_slice(&v);
                Ok(())
            }
            Cmd::Below(Ok(_)) => Err("short read from the layer below".into()),
            Cmd::Below(Err(e)) => Err(e.to_string().into()),
            _ => Err("unexpected request while reading".into()),
        }
    }
}

fn ext_error(e: ext4_view::Ext4Error) -> Error {
    use ext4_view::Ext4Error as E;
    let errno = match e {
        E::NotFound => Errno::ENOENT,
        E::IsADirectory | E::NotADirectory | E::IsASpecialFile => Errno::EINVAL,
        _ => Errno::EIO,
    };
    Error::msg(errno, e.to_string())
}

/// The worker thread: owns the filesystem and the open file.
fn worker(tx: Sender<Event>, rx: Receiver<Cmd>) {
    let rx = Rc::new(rx);
    let below = || Below {
        tx: tx.clone(),
        rx: Rc::clone(&rx),
    };
    let file: RefCell<Option<ext4_view::File>> = RefCell::new(None);
    while let Ok(cmd) = rx.recv() {
        let ev = match cmd {
            Cmd::Load(path) => Event::Loaded(load(Box::new(below()), &path).map(|(f, canon)| {
                let len = f.metadata().len();
                *file.borrow_mut() = Some(f);
                (len, canon)
            })),
            Cmd::Read { offset, len } => Event::Data(match file.borrow_mut().as_mut() {
                Some(f) => read_file(f, offset, len),
                None => Err(worker_gone()),
            }),
            Cmd::Below(_) => continue,
        };
        if tx.send(ev).is_err() {
            return;
        }
    }
}

/// Open the file, and its canonical path (symbolic links resolved) for
/// the block map of the write path.
fn load(reader: Box<dyn ext4_view::Ext4Read>, path: &str) -> Result<(ext4_view::File, Vec<u8>)> {
    let fs = ext4_view::Ext4::load(reader)
        .map_err(|e| Error::msg(Errno::EINVAL, format!("open: {e}")))?;
    let meta = fs
        .metadata(path)
        .map_err(|e| Error::msg(Errno::ENOENT, format!("{path}: {}", ext_error(e))))?;
    if meta.file_type() != ext4_view::FileType::Regular {
        return Err(Error::msg(
            Errno::EINVAL,
            format!("{path}: must be a regular file in the disk image"),
        ));
    }
    let f = fs
        .open(path)
        .map_err(|e| Error::msg(Errno::EIO, format!("{path}: {}", ext_error(e))))?;
    let canon = fs
        .canonicalize(path)
        .map(|p| AsRef::<[u8]>::as_ref(&p).to_vec())
        .unwrap_or_default();
    Ok((f, canon))
}

fn read_file(f: &mut ext4_view::File, offset: u64, len: usize) -> Result<Vec<u8>> {
    f.seek_to(offset).map_err(ext_error)?;
    let mut v = vec![0u8; len];
    let mut got = 0;
    while got < len {
        let n = f.read_bytes(&mut v[got..]).map_err(ext_error)?;
        if n == 0 {
            return Err(Error::msg(
                Errno::EIO,
                "ext2: read past the end of the file",
            ));
        }
        got += n;
    }
    Ok(v)
}

impl Ext2Handle {
    fn writable(&self) -> Result<&Layout> {
        self.layout
            .get()
            .ok_or_else(|| Error::msg(Errno::EROFS, "ext2: this connection cannot write the file"))
    }
}

/// The most zeroes written by one write of the layer below.
const ZERO_CHUNK: u64 = 1 << 20;

impl FilterHandle for Ext2Handle {
    fn prepare(&self, next: &Context, readonly: bool) -> Result<()> {
        let (tx_cmd, rx_cmd) = channel();
        let (tx_ev, rx_ev) = channel();
        std::thread::Builder::new()
            .name("ext2".into())
            .spawn(move || worker(tx_ev, rx_cmd))
            .map_err(|e| Error::msg(Errno::EIO, format!("ext2: thread: {e}")))?;
        *self.worker.lock().unwrap_or_else(|p| p.into_inner()) = Some(Worker {
            tx: tx_cmd,
            rx: rx_ev,
        });
        match self.call(next, Cmd::Load(self.path.clone()))? {
            Event::Loaded(r) => {
                let (size, canon) = r?;
                let _ = self.size.set(size);
                if !readonly && next.can_write()? {
                    match Layout::build(&NextImage(next), &canon, size) {
                        Ok(l) => {
                            let _ = self.layout.set(l);
                        }
                        Err(e) => crate::log::debug(
                            None,
                            format_args!(
                                "ext2: cannot write {}: {e}: serving it read-only",
                                self.path
                            ),
                        ),
                    }
                }
                Ok(())
            }
            _ => Err(worker_gone()),
        }
    }

    fn get_size(&self, _next: &Context) -> Result<u64> {
        self.size.get().copied().ok_or_else(worker_gone)
    }

    fn can_write(&self, next: &Context) -> Result<bool> {
        Ok(self.layout.get().is_some() && next.can_write()?)
    }

    fn can_trim(&self, _next: &Context) -> Result<bool> {
        Ok(false)
    }

    fn can_zero(&self, next: &Context) -> Result<Support> {
        Ok(if self.can_write(next)? {
            Support::Native
        } else {
            Support::None
        })
    }

    fn can_fast_zero(&self, _next: &Context) -> Result<bool> {
        Ok(false)
    }

    fn can_extents(&self, _next: &Context) -> Result<bool> {
        Ok(false)
    }

    fn can_multi_conn(&self, _next: &Context) -> Result<bool> {
        Ok(false)
    }

    fn can_cache(&self, _next: &Context) -> Result<Support> {
        Ok(Support::Emulate)
    }

    fn block_size(&self, _next: &Context) -> Result<Option<nbdkit_core::backend::BlockSize>> {
        Ok(None)
    }

    fn pread(&self, next: &Context, buf: &mut [u8], offset: u64, _flags: Flags) -> Result<()> {
        // On a writable connection the file is read through the block map
        // too: `ext4-view` caches blocks and would not see the writes.
        if let Some(l) = self.layout.get() {
            let mut at = 0usize;
            for (piece, n) in l.pieces(offset, buf.len() as u64)? {
                let dst = &mut buf[at..at + n as usize];
                match piece {
                    Some(p) => next.pread(dst, p, Flags::NONE)?,
                    None => dst.fill(0),
                }
                at += n as usize;
            }
            return Ok(());
        }
        match self.call(
            next,
            Cmd::Read {
                offset,
                len: buf.len(),
            },
        )? {
            Event::Data(r) => {
                let v = r?;
                buf.copy_from_slice(&v);
                Ok(())
            }
            _ => Err(worker_gone()),
        }
    }

    fn pwrite(&self, next: &Context, buf: &[u8], offset: u64, flags: Flags) -> Result<()> {
        let l = self.writable()?;
        // Checked whole before anything is written.
        let ranges = l.allocated(offset, buf.len() as u64)?;
        let mut at = 0usize;
        for (p, n) in ranges {
            next.pwrite(&buf[at..at + n as usize], p, Flags(flags.0 & Flags::FUA.0))?;
            at += n as usize;
        }
        Ok(())
    }

    fn zero(&self, next: &Context, count: u64, offset: u64, flags: Flags) -> Result<()> {
        if flags.contains(Flags::FAST_ZERO) {
            return Err(Error::msg(Errno::ENOTSUP, "ext2: zeroing is not fast"));
        }
        let l = self.writable()?;
        let ranges = l.allocated(offset, count)?;
        let zeros = vec![0u8; ZERO_CHUNK.min(count) as usize];
        for (mut p, mut n) in ranges {
            while n > 0 {
                let k = n.min(ZERO_CHUNK);
                next.pwrite(&zeros[..k as usize], p, Flags(flags.0 & Flags::FUA.0))?;
                p += k;
                n -= k;
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------
// The write path: the file's block map, parsed from the image.
//
// `ext4-view` cannot write and does not expose where a file's blocks
// are, so for a writable connection the filter parses the superblock,
// the group descriptors, the inodes on the file's path, and the file's
// extent tree (ext4) or direct/indirect block map (ext2/ext3) itself.
// Only allocated, initialized blocks are listed: holes and unwritten
// extents are not. Every read of the image is checked against its size,
// the tree depth and the number of metadata blocks read are bounded.
// ---------------------------------------------------------------------

/// The most metadata blocks (index and indirect blocks, directory
/// blocks) read to build the maps of one connection.
const MAX_META_BLOCKS: usize = 1 << 20;
/// The most runs of blocks a file's map may have.
const MAX_RUNS: usize = 1 << 22;
/// The largest directory searched on the file's path.
const MAX_DIR_SIZE: u64 = 64 << 20;

const INCOMPAT_RECOVER: u32 = 0x4;
const INCOMPAT_META_BG: u32 = 0x10;
const INCOMPAT_64BIT: u32 = 0x80;
const FL_ENCRYPT: u32 = 0x800;
const FL_EXTENTS: u32 = 0x8_0000;
const FL_VERITY: u32 = 0x10_0000;
const FL_INLINE_DATA: u32 = 0x1000_0000;

type LResult<T> = std::result::Result<T, String>;

/// The image, as the map builder reads it.
trait Image {
    fn size(&self) -> u64;
    fn read(&self, offset: u64, len: usize) -> LResult<Vec<u8>>;
}

/// The layer below as an [`Image`].
struct NextImage<'a>(&'a Context);

impl Image for NextImage<'_> {
    fn size(&self) -> u64 {
        self.0.caps().size
    }
    fn read(&self, offset: u64, len: usize) -> LResult<Vec<u8>> {
        read_below(self.0, offset, len).map_err(|e| e.to_string())
    }
}

fn le16(b: &[u8], o: usize) -> u64 {
    u64::from(u16::from_le_bytes([b[o], b[o + 1]]))
}

fn le32(b: &[u8], o: usize) -> u64 {
    u64::from(u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]))
}

/// A run of file blocks stored contiguously in the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Run {
    logical: u64,
    physical: u64,
    len: u64,
}

/// The parts of the superblock the map builder needs.
struct Fs<'a> {
    img: &'a dyn Image,
    bs: u64,
    blocks: u64,
    inodes: u64,
    ipg: u64,
    inode_size: u64,
    desc_size: u64,
    gdt: u64,
    is64: bool,
    meta_read: std::cell::Cell<usize>,
}

impl<'a> Fs<'a> {
    fn new(img: &'a dyn Image) -> LResult<Self> {
        let sb = img.read(1024, 1024)?;
        if le16(&sb, 0x38) != 0xEF53 {
            return Err("not an ext2/3/4 superblock".into());
        }
        let log = le32(&sb, 0x18);
        if log > 6 {
            return Err(format!("bad block size (log {log})"));
        }
        let bs = 1024u64 << log;
        let incompat = le32(&sb, 0x60) as u32;
        if incompat & INCOMPAT_RECOVER != 0 {
            return Err("the journal needs recovery".into());
        }
        if incompat & INCOMPAT_META_BG != 0 {
            return Err("the meta_bg feature is not supported for writing".into());
        }
        let is64 = incompat & INCOMPAT_64BIT != 0;
        let mut blocks = le32(&sb, 0x4);
        if is64 {
            blocks |= le32(&sb, 0x150) << 32;
        }
        let inode_size = if le32(&sb, 0x4C) == 0 {
            128
        } else {
            le16(&sb, 0x58)
        };
        if inode_size < 128 || inode_size > bs || !inode_size.is_power_of_two() {
            return Err(format!("bad inode size {inode_size}"));
        }
        let desc_size = if is64 { le16(&sb, 0xFE) } else { 32 };
        if desc_size < 32 || desc_size > bs || !desc_size.is_power_of_two() {
            return Err(format!("bad group descriptor size {desc_size}"));
        }
        let ipg = le32(&sb, 0x28);
        if ipg == 0 {
            return Err("no inodes per group".into());
        }
        Ok(Fs {
            img,
            bs,
            blocks,
            inodes: le32(&sb, 0x0),
            ipg,
            inode_size,
            desc_size,
            gdt: le32(&sb, 0x14) + 1,
            is64,
            meta_read: std::cell::Cell::new(0),
        })
    }

    /// Whether blocks `b..b+len` are inside the filesystem and the image.
    fn check_blocks(&self, b: u64, len: u64) -> LResult<()> {
        let end = b.checked_add(len).ok_or("block number overflow")?;
        if b == 0 || end > self.blocks || end.saturating_mul(self.bs) > self.img.size() {
            return Err(format!(
                "blocks {b}..{end} are outside the filesystem or the image"
            ));
        }
        Ok(())
    }

    /// One metadata block.
    fn meta_block(&self, b: u64) -> LResult<Vec<u8>> {
        self.check_blocks(b, 1)?;
        let n = self.meta_read.get() + 1;
        if n > MAX_META_BLOCKS {
            return Err("too much metadata to map the file".into());
        }
        self.meta_read.set(n);
        self.img.read(b * self.bs, self.bs as usize)
    }

    /// The raw inode `ino`.
    fn inode(&self, ino: u64) -> LResult<Vec<u8>> {
        if ino == 0 || ino > self.inodes {
            return Err(format!("bad inode number {ino}"));
        }
        let (group, index) = ((ino - 1) / self.ipg, (ino - 1) % self.ipg);
        let d = self.img.read(
            self.gdt * self.bs + group * self.desc_size,
            self.desc_size as usize,
        )?;
        let mut table = le32(&d, 0x8);
        if self.is64 && self.desc_size >= 64 {
            table |= le32(&d, 0x28) << 32;
        }
        let table_blocks = (self.ipg * self.inode_size).div_ceil(self.bs);
        self.check_blocks(table, table_blocks)?;
        self.img.read(
            table * self.bs + index * self.inode_size,
            self.inode_size as usize,
        )
    }

    /// The allocated, initialized blocks of the inode `raw` of `size`
    /// bytes, in order of file block.
    fn map(&self, raw: &[u8], size: u64) -> LResult<Vec<Run>> {
        let flags = le32(raw, 0x20) as u32;
        if flags & FL_INLINE_DATA != 0 {
            return Err("the file's data is inline in its inode".into());
        }
        if flags & FL_ENCRYPT != 0 {
            return Err("the file is encrypted".into());
        }
        if flags & FL_VERITY != 0 {
            return Err("the file has fs-verity".into());
        }
        let mut m = Mapper {
            fs: self,
            nblocks: size.div_ceil(self.bs),
            runs: Vec::new(),
        };
        let iblock = &raw[0x28..0x28 + 60];
        if flags & FL_EXTENTS != 0 {
            m.extents(iblock, None)?;
        } else {
            m.block_map(iblock)?;
        }
        Ok(m.runs)
    }

    /// Look `name` up in the directory `dir`.
    fn lookup(&self, dir: u64, name: &[u8]) -> LResult<u64> {
        let raw = self.inode(dir)?;
        if le16(&raw, 0) & 0xF000 != 0x4000 {
            return Err("a component of the path is not a directory".into());
        }
        let size = le32(&raw, 4);
        if size > MAX_DIR_SIZE {
            return Err("a directory on the path is too large".into());
        }
        let bs = self.bs as usize;
        for r in self.map(&raw, size)? {
            for i in 0..r.len {
                let data = self.meta_block(r.physical + i)?;
                let mut pos = 0usize;
                while pos + 8 <= bs {
                    let mut rec_len = le16(&data, pos + 4) as usize;
                    if bs == 65536 && (rec_len == 0 || rec_len == 65535) {
                        rec_len = 65536;
                    }
                    if rec_len < 8 || pos + rec_len > bs {
                        break;
                    }
                    let ino = le32(&data, pos);
                    let name_len = usize::from(data[pos + 6]);
                    if ino != 0
                        && 8 + name_len <= rec_len
                        && &data[pos + 8..pos + 8 + name_len] == name
                    {
                        return Ok(ino);
                    }
                    pos += rec_len;
                }
            }
        }
        Err(format!(
            "{} not found by the block mapper",
            String::from_utf8_lossy(name)
        ))
    }
}

/// Builds one inode's list of runs.
struct Mapper<'f, 'a> {
    fs: &'f Fs<'a>,
    nblocks: u64,
    runs: Vec<Run>,
}

impl Mapper<'_, '_> {
    /// Add `len` blocks from file block `logical` at image block
    /// `physical`; blocks past the end of the file are dropped.
    fn push(&mut self, logical: u64, physical: u64, len: u64) -> LResult<()> {
        if len == 0 || logical >= self.nblocks {
            return Ok(());
        }
        self.fs.check_blocks(physical, len)?;
        let len = len.min(self.nblocks - logical);
        if let Some(last) = self.runs.last_mut() {
            if logical < last.logical + last.len {
                return Err("the file's block map overlaps or is out of order".into());
            }
            if last.logical + last.len == logical && last.physical + last.len == physical {
                last.len += len;
                return Ok(());
            }
        }
        if self.runs.len() >= MAX_RUNS {
            return Err("the file is too fragmented".into());
        }
        self.runs.push(Run {
            logical,
            physical,
            len,
        });
        Ok(())
    }

    /// An extent tree node (the inode's `i_block` or an index block).
    fn extents(&mut self, node: &[u8], depth: Option<u64>) -> LResult<()> {
        if node.len() < 12 || le16(node, 0) != 0xF30A {
            return Err("bad extent header".into());
        }
        let (entries, max, d) = (le16(node, 2), le16(node, 4), le16(node, 6));
        if d > 5 || depth.is_some_and(|want| want != d) {
            return Err(format!("bad extent tree depth {d}"));
        }
        if entries > max || 12 + 12 * entries as usize > node.len() {
            return Err("bad extent node entry count".into());
        }
        for i in 0..entries as usize {
            let e = &node[12 + 12 * i..24 + 12 * i];
            if d == 0 {
                let (logical, len) = (le32(e, 0), le16(e, 4));
                let physical = le32(e, 8) | le16(e, 6) << 32;
                // Longer than 32768 blocks: an unwritten extent, which
                // reads as zeros and is not writable in place.
                if len <= 32768 {
                    self.push(logical, physical, len)?;
                }
            } else {
                let child = le32(e, 4) | le16(e, 8) << 32;
                if le32(e, 0) >= self.nblocks {
                    continue;
                }
                let block = self.fs.meta_block(child)?;
                self.extents(&block, Some(d - 1))?;
            }
        }
        Ok(())
    }

    /// An ext2/ext3 block map: 12 direct blocks, then single, double and
    /// triple indirect blocks.
    fn block_map(&mut self, iblock: &[u8]) -> LResult<()> {
        for i in 0..12u64 {
            let b = le32(iblock, 4 * i as usize);
            if b != 0 {
                self.push(i, b, 1)?;
            }
        }
        let per = self.fs.bs / 4;
        let mut base = 12u64;
        for level in 1..=3u32 {
            let span = per.pow(level);
            let b = le32(iblock, 4 * (11 + level as usize));
            if b != 0 {
                self.indirect(b, level, base)?;
            }
            base = base.saturating_add(span);
        }
        Ok(())
    }

    fn indirect(&mut self, b: u64, level: u32, base: u64) -> LResult<()> {
        if base >= self.nblocks {
            return Ok(());
        }
        let data = self.fs.meta_block(b)?;
        let per = self.fs.bs / 4;
        let child_span = per.pow(level - 1);
        for j in 0..per {
            let logical = base + j * child_span;
            if logical >= self.nblocks {
                break;
            }
            let c = le32(&data, 4 * j as usize);
            if c == 0 {
                continue;
            }
            if level == 1 {
                self.push(logical, c, 1)?;
            } else {
                self.indirect(c, level - 1, logical)?;
            }
        }
        Ok(())
    }
}

/// Where a file's bytes are in the image.
#[derive(Debug)]
struct Layout {
    bs: u64,
    size: u64,
    runs: Vec<Run>,
}

impl Layout {
    /// Map the file at the canonical `path` (no symbolic links), which
    /// `ext4-view` found to be `size` bytes long.
    fn build(img: &dyn Image, path: &[u8], size: u64) -> LResult<Layout> {
        let fs = Fs::new(img)?;
        let mut ino = 2;
        for name in path.split(|&c| c == b'/').filter(|c| !c.is_empty()) {
            ino = fs.lookup(ino, name)?;
        }
        let raw = fs.inode(ino)?;
        if le16(&raw, 0) & 0xF000 != 0x8000 {
            return Err("not a regular file".into());
        }
        let isize = le32(&raw, 4) | le32(&raw, 0x6C) << 32;
        if isize != size {
            return Err(format!(
                "inode {ino} is {isize} bytes, the filesystem reader says {size}"
            ));
        }
        Ok(Layout {
            bs: fs.bs,
            size,
            runs: fs.map(&raw, size)?,
        })
    }

    /// The pieces of `offset..offset+len` of the file: (where in the
    /// image or `None` if not allocated, length).
    fn pieces(&self, offset: u64, len: u64) -> Result<Vec<(Option<u64>, u64)>> {
        let end = offset
            .checked_add(len)
            .filter(|&e| e <= self.size)
            .ok_or_else(|| Error::msg(Errno::EIO, "ext2: access beyond the end of the file"))?;
        let mut out: Vec<(Option<u64>, u64)> = Vec::new();
        let mut pos = offset;
        while pos < end {
            let blk = pos / self.bs;
            let i = self.runs.partition_point(|r| r.logical <= blk);
            let (piece, stop) = match i.checked_sub(1).map(|i| self.runs[i]) {
                Some(r) if blk < r.logical + r.len => (
                    Some(r.physical * self.bs + (pos - r.logical * self.bs)),
                    (r.logical + r.len) * self.bs,
                ),
                _ => (None, self.runs.get(i).map_or(end, |r| r.logical * self.bs)),
            };
            let n = stop.min(end) - pos;
            out.push((piece, n));
            pos += n;
        }
        Ok(out)
    }

    /// The image ranges of `offset..offset+len`, all allocated, or the
    /// error for writing to unallocated blocks.
    fn allocated(&self, offset: u64, len: u64) -> Result<Vec<(u64, u64)>> {
        self.pieces(offset, len)?
            .into_iter()
            .map(|(p, n)| {
                p.map(|p| (p, n)).ok_or_else(|| {
                    Error::msg(
                        Errno::EIO,
                        "ext2: writing to unallocated blocks is not supported",
                    )
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn path_must_be_absolute() {
        let mut f = Ext2::default();
        assert_eq!(
            f.config("ext2file", "foo").unwrap_err().to_string(),
            "the file parameter must refer to an absolute path"
        );
        assert!(f.config("ext2file", "exportname").unwrap());
        assert!(f.config("ext2file", "/disks/disk.raw").unwrap());
        assert!(!f.config("file", "x").unwrap());
    }

    #[test]
    fn ext2file_is_required() {
        let mut f = Ext2::default();
        assert_eq!(
            f.config_complete().unwrap_err().to_string(),
            "you must supply ext2file=<FILE> parameter after the plugin name on the command line"
        );
    }
    #[test]
    fn pieces_of_a_block_map() {
        let l = Layout {
            bs: 1024,
            size: 5000,
            runs: vec![
                Run {
                    logical: 0,
                    physical: 100,
                    len: 2,
                },
                Run {
                    logical: 3,
                    physical: 50,
                    len: 2,
                },
            ],
        };
        assert_eq!(
            l.pieces(1000, 4000).unwrap(),
            vec![
                (Some(100 * 1024 + 1000), 1048),
                (None, 1024),
                (Some(50 * 1024), 1928),
            ]
        );
        assert_eq!(l.allocated(3072, 100).unwrap(), vec![(50 * 1024, 100)]);
        assert_eq!(
            l.allocated(2000, 100).unwrap_err().to_string(),
            "ext2: writing to unallocated blocks is not supported"
        );
        assert!(l.pieces(4999, 2).is_err());
    }
}
