//! `file`: serve a local file or block device, or every file of a directory.
//!
//! Parameters (exactly one of the first four must be given):
//!
//! - `[file=]FILENAME`: serve this regular file or block device. The path
//!   is resolved with `realpath` when the parameter is read, so the server
//!   may change directory afterwards. The export name is ignored.
//! - `dir=DIRNAME`: serve every regular file and block device directly in
//!   the directory (following symbolic links), chosen by export name.
//!   `NBD_OPT_LIST` lists them; the default export `""` is refused, and so
//!   are names containing `/`.
//! - `fd=N`: serve the file or block device already open on descriptor
//!   `N` (nbdkit 1.34). The descriptor is duplicated when the configuration
//!   is complete and never closed by the plugin; if it was opened read-only
//!   the export is read-only.
//! - `dirfd=N`: like `dir=` for a directory already open on descriptor `N`.
//! - `cache=default|none`: with `none`, read ranges are dropped from the
//!   page cache after reading, and written ranges are written back and
//!   dropped (`sync_file_range` + `POSIX_FADV_DONTNEED`) once a few newer
//!   writes have been issued.
//! - `fadvise=normal|random|sequential`: the `posix_fadvise` hint applied
//!   to the whole file when it is opened.
//!
//! Data paths: `pread(2)`/`pwrite(2)` loops; flush and FUA are `fdatasync`;
//! trim punches holes; zero tries, in order, punching a hole (when the
//! client allows holes), `FALLOC_FL_ZERO_RANGE`, punching a hole then
//! re-allocating, and `BLKZEROOUT` on block devices, remembering which
//! methods the file system does not support; when none works the server
//! falls back to writing zeroes. Block status uses `SEEK_DATA`/`SEEK_HOLE`
//! under a lock, because `lseek` moves the descriptor's offset.

use core::sync::atomic::{AtomicBool, Ordering};
use std::collections::VecDeque;
use std::ffi::OsStr;
use std::fs::File as StdFile;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use nbdkit_core::backend::{
    Error, Exports, Extents, Flags, Handle, OpenArgs, Plugin, Result, Support,
};
use nbdkit_core::errno::Errno;
use nbdkit_core::plugins::unknown_param;
use nbdkit_core::wire::consts::{STATE_HOLE, STATE_ZERO};
use nix::errno::Errno as NixErrno;
use nix::fcntl::PosixFadviseAdvice as Advice;
use nix::fcntl::{fcntl, openat, posix_fadvise, FcntlArg, OFlag};
use nix::sys::stat::{fstat, fstatat, Mode, SFlag};
use nix::unistd::{lseek, Whence};

use crate::os::errno::{io_error, nix_error};
use crate::os::{blockdev, fspace, writeback};

/// How many recent writes `cache=none` leaves in the page cache before it
/// waits for the oldest to reach the disk and drops it.
const EVICT_WINDOW: usize = 8;

/// The sector size assumed when a block device does not say.
const DEFAULT_SECTOR_SIZE: u64 = 4096;

/// `cache=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum CacheMode {
    #[default]
    Default,
    None,
}

/// `fadvise=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Fadvise {
    #[default]
    Normal,
    Random,
    Sequential,
}

impl Fadvise {
    fn advice(self) -> Advice {
        match self {
            Fadvise::Normal => Advice::POSIX_FADV_NORMAL,
            Fadvise::Random => Advice::POSIX_FADV_RANDOM,
            Fadvise::Sequential => Advice::POSIX_FADV_SEQUENTIAL,
        }
    }
}

/// What the plugin serves, once the configuration is complete.
#[derive(Debug)]
enum Source {
    /// `file=`: a path, opened by each connection.
    Path(PathBuf),
    /// `dir=`/`dirfd=`: an open directory; files are opened relative to it.
    Dir(StdFile),
    /// `fd=`: our duplicate of the descriptor. Every connection duplicates
    /// it again, so all of them share one file offset and one lseek lock.
    Fd {
        file: StdFile,
        readonly: bool,
        lseek_lock: Arc<Mutex<()>>,
    },
}

/// The file plugin.
#[derive(Debug, Default)]
pub struct File {
    file: Option<PathBuf>,
    dir: Option<PathBuf>,
    fd: Option<RawFd>,
    dirfd: Option<RawFd>,
    cache: CacheMode,
    fadvise: Fadvise,
    source: Option<Arc<Source>>,
}

/// Take ownership of a descriptor a system call just returned.
fn own_fd(fd: RawFd) -> StdFile {
    // SAFETY: `fd` was just returned by open/openat/fcntl(F_DUPFD_CLOEXEC),
    // so it is a valid descriptor that nothing else owns or will close.
    unsafe { StdFile::from_raw_fd(fd) }
}

/// Duplicate a descriptor (close-on-exec, above the standard ones).
fn dup_fd(fd: RawFd) -> nix::Result<StdFile> {
    fcntl(fd, FcntlArg::F_DUPFD_CLOEXEC(3)).map(own_fd)
}

/// nbdkit_realpath, with its error messages.
fn realpath(value: &str) -> Result<PathBuf> {
    if value.is_empty() {
        return Err(Error::config("cannot resolve a null or empty path"));
    }
    std::fs::canonicalize(value).map_err(|e| io_error(&format!("realpath: {value}"), &e))
}

/// Parse a file descriptor number for `fd=`/`dirfd=`.
fn fd_param(key: &str, value: &str) -> Result<RawFd> {
    let n: RawFd = value
        .trim()
        .parse()
        .map_err(|_| Error::config(format!("{key}: could not parse number: \"{value}\"")))?;
    if n < 0 {
        return Err(Error::config(format!(
            "{key}: file descriptor must not be negative: {value}"
        )));
    }
    Ok(n)
}

fn file_type(mode: libc::mode_t) -> SFlag {
    SFlag::from_bits_truncate(mode & SFlag::S_IFMT.bits())
}

impl File {
    fn config_file_mode(path: &Path) -> Result<Source> {
        let name = path.display();
        let st = std::fs::metadata(path).map_err(|e| io_error(&format!("stat: {name}"), &e))?;
        let ft = st.file_type();
        use std::os::unix::fs::FileTypeExt;
        if ft.is_dir() {
            return Err(Error::config(format!(
                "use dir= to serve files within {name}"
            )));
        }
        if !ft.is_file() && !ft.is_block_device() {
            return Err(Error::config(format!(
                "file is not regular or block device: {name}"
            )));
        }
        Ok(Source::Path(path.to_path_buf()))
    }

    fn config_dir_mode(path: &Path) -> Result<Source> {
        let name = path.display();
        let st = std::fs::metadata(path).map_err(|e| io_error(&format!("stat: {name}"), &e))?;
        if !st.is_dir() {
            return Err(Error::config(format!("expecting a directory: {name}")));
        }
        let fd = openat(
            None,
            path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| nix_error(&format!("open: {name}"), e))?;
        Ok(Source::Dir(own_fd(fd)))
    }

    fn config_fd_mode(fd: RawFd) -> Result<Source> {
        let what = format!("fd={fd}");
        let file = dup_fd(fd).map_err(|e| nix_error(&what, e))?;
        let st = fstat(file.as_raw_fd()).map_err(|e| nix_error(&what, e))?;
        let ft = file_type(st.st_mode);
        if ft == SFlag::S_IFDIR {
            return Err(Error::config(format!(
                "{what}: this is a directory, use dirfd= to serve files within it"
            )));
        }
        if ft != SFlag::S_IFREG && ft != SFlag::S_IFBLK {
            return Err(Error::config(format!(
                "{what}: file is not regular or block device"
            )));
        }
        let fl = fcntl(file.as_raw_fd(), FcntlArg::F_GETFL).map_err(|e| nix_error(&what, e))?;
        let fl = OFlag::from_bits_truncate(fl);
        let readonly = match fl & OFlag::O_ACCMODE {
            m if m == OFlag::O_RDONLY => true,
            m if m == OFlag::O_RDWR => false,
            _ => {
                return Err(Error::config(format!(
                    "{what}: file descriptor is not open for reading"
                )))
            }
        };
        if !readonly && fl.contains(OFlag::O_APPEND) {
            return Err(Error::config(format!(
                "{what}: file descriptor is open with O_APPEND, which breaks positioned writes"
            )));
        }
        Ok(Source::Fd {
            file,
            readonly,
            lseek_lock: Arc::new(Mutex::new(())),
        })
    }

    fn config_dirfd_mode(fd: RawFd) -> Result<Source> {
        let what = format!("dirfd={fd}");
        let file = dup_fd(fd).map_err(|e| nix_error(&what, e))?;
        let st = fstat(file.as_raw_fd()).map_err(|e| nix_error(&what, e))?;
        if file_type(st.st_mode) != SFlag::S_IFDIR {
            return Err(Error::config(format!("{what}: expecting a directory")));
        }
        Ok(Source::Dir(file))
    }

    fn source(&self) -> Result<&Source> {
        self.source
            .as_deref()
            .ok_or_else(|| Error::msg(Errno::EIO, "file: the plugin is not configured"))
    }

    /// Open the export for one connection: the descriptor, the name used in
    /// messages, whether it is writable, and the lseek lock to use.
    fn open_export(&self, args: &OpenArgs<'_>) -> Result<(StdFile, String, bool, Arc<Mutex<()>>)> {
        let readonly = args.readonly;
        match self.source()? {
            Source::Path(path) => {
                let name = path.display().to_string();
                let (file, writable) = open_fallback(None, path, &name, readonly)?;
                Ok((file, name, writable, Arc::new(Mutex::new(()))))
            }
            Source::Dir(dir) => {
                let name = args.export_name;
                if name.contains('/') {
                    return Err(Error::msg(Errno::EINVAL, "exportname cannot contain /"));
                }
                let (file, writable) =
                    open_fallback(Some(dir.as_raw_fd()), Path::new(name), name, readonly)?;
                Ok((file, name.to_string(), writable, Arc::new(Mutex::new(()))))
            }
            Source::Fd {
                file,
                readonly: fd_readonly,
                lseek_lock,
            } => {
                let name = format!("fd={}", self.fd.unwrap_or(-1));
                let dup = dup_fd(file.as_raw_fd()).map_err(|e| nix_error(&name, e))?;
                Ok((dup, name, !readonly && !fd_readonly, lseek_lock.clone()))
            }
        }
    }
}

/// Open `path` (relative to `dir` if given) read-write, or read-only when
/// asked or when read-write fails. Returns the file and whether it
/// is writable. `O_NONBLOCK` keeps a FIFO from blocking the open; it is
/// cleared again once the file is known to be regular or a block device.
fn open_fallback(
    dir: Option<RawFd>,
    path: &Path,
    name: &str,
    readonly: bool,
) -> Result<(StdFile, bool)> {
    let base = OFlag::O_CLOEXEC | OFlag::O_NOCTTY | OFlag::O_NONBLOCK;
    let open = |mode: OFlag| openat(dir, path, base | mode, Mode::empty());
    let (fd, writable) = if readonly {
        (open(OFlag::O_RDONLY), false)
    } else {
        // As nbdkit does, any failure (EROFS, EACCES, EPERM, but also
        // EISDIR for a directory, reported below as not a regular file)
        // is retried read-only.
        match open(OFlag::O_RDWR) {
            Err(_) => (open(OFlag::O_RDONLY), false),
            r => (r, true),
        }
    };
    let file = own_fd(fd.map_err(|e| nix_error(&format!("open: {name}"), e))?);
    let st = fstat(file.as_raw_fd()).map_err(|e| nix_error(&format!("fstat: {name}"), e))?;
    let ft = file_type(st.st_mode);
    if ft != SFlag::S_IFREG && ft != SFlag::S_IFBLK {
        return Err(Error::msg(
            Errno::EINVAL,
            format!("file is not regular or block device: {name}"),
        ));
    }
    let fl = fcntl(file.as_raw_fd(), FcntlArg::F_GETFL).map_err(|e| nix_error("fcntl", e))?;
    let fl = OFlag::from_bits_truncate(fl) & !OFlag::O_NONBLOCK;
    fcntl(file.as_raw_fd(), FcntlArg::F_SETFL(fl)).map_err(|e| nix_error("fcntl", e))?;
    Ok((file, writable))
}

/// The logical sector size of a block device.
fn block_device_sector_size(file: &StdFile) -> u64 {
    match blockdev::sector_size(file.as_fd()) {
        Some(size) if size.is_power_of_two() => size,
        _ => DEFAULT_SECTOR_SIZE,
    }
}

impl Plugin for File {
    fn debug_flags(&self) -> &'static [&'static str] {
        &["zero"]
    }
    fn name(&self) -> &'static str {
        "file"
    }
    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit file plugin")
    }
    fn config_help(&self) -> &'static str {
        // As nbdkit 1.32 prints it (with the parameter's name spelled as
        // it is accepted), and the descriptor parameters of nbdkit 1.34.
        "[file=]<FILENAME>     The filename to serve.\n\
         dir=<DIRNAME>         A directory containing files to serve.\n\
         fd=<FD>               An inherited file descriptor of a file to serve.\n\
         dirfd=<FD>            An inherited file descriptor of a directory.\n\
         cache=<MODE>          Set use of caching (default, none).\n\
         fadvise=<LEVEL>       Set fadvise hint (normal, random, sequential)."
    }
    fn magic_config_key(&self) -> Option<&'static str> {
        Some("file")
    }
    fn callbacks(&self) -> &'static [&'static str] {
        &[
            "longname",
            "unload",
            "dump_plugin",
            "config",
            "config_complete",
            "config_help",
            "list_exports",
            "open",
            "close",
            "get_size",
            "can_write",
            "can_trim",
            "can_extents",
            "can_fua",
            "can_multi_conn",
            "can_cache",
            "pread",
            "pwrite",
            "flush",
            "trim",
            "zero",
            "extents",
            "cache",
        ]
    }
    fn dump_plugin(&self) -> Vec<(String, String)> {
        blockdev::DUMP_NAMES
            .iter()
            .chain(fspace::DUMP_NAMES)
            .map(|k| (format!("file_{k}"), "yes".to_string()))
            .collect()
    }
    fn config(&mut self, key: &str, value: &str) -> Result<()> {
        match key {
            "file" => self.file = Some(realpath(value)?),
            // nbdkit takes `directory=` as the long form of `dir=`.
            "dir" | "directory" => self.dir = Some(realpath(value)?),
            "fd" => self.fd = Some(fd_param(key, value)?),
            "dirfd" => self.dirfd = Some(fd_param(key, value)?),
            "cache" => {
                self.cache = match value {
                    "default" => CacheMode::Default,
                    "none" => CacheMode::None,
                    _ => return Err(Error::config(format!("unknown cache mode: {value}"))),
                }
            }
            "fadvise" => {
                self.fadvise = match value {
                    "normal" => Fadvise::Normal,
                    "random" => Fadvise::Random,
                    "sequential" => Fadvise::Sequential,
                    _ => return Err(Error::config(format!("unknown fadvise mode: {value}"))),
                }
            }
            // Moved to the delay filter long ago; nbdkit still says so.
            "rdelay" | "wdelay" => {
                return Err(Error::config("add --filter=delay on the command line"))
            }
            _ => return Err(unknown_param(key)),
        }
        Ok(())
    }
    fn config_complete(&mut self) -> Result<()> {
        let given: Vec<&str> = [
            ("file", self.file.is_some()),
            ("dir", self.dir.is_some()),
            ("fd", self.fd.is_some()),
            ("dirfd", self.dirfd.is_some()),
        ]
        .iter()
        .filter(|(_, set)| *set)
        .map(|(k, _)| *k)
        .collect();
        match given.as_slice() {
            [] => {
                return Err(Error::config(
                    "you must supply either [file=]<FILENAME> or dir=<DIRNAME> parameter after \
                     the plugin name on the command line",
                ))
            }
            [_] => {}
            [a, b, ..] => {
                return Err(Error::config(format!(
                    "{a}= and {b}= cannot be used at the same time"
                )))
            }
        }
        let source = if let Some(path) = &self.file {
            Self::config_file_mode(path)?
        } else if let Some(path) = &self.dir {
            Self::config_dir_mode(path)?
        } else if let Some(fd) = self.fd {
            Self::config_fd_mode(fd)?
        } else if let Some(fd) = self.dirfd {
            Self::config_dirfd_mode(fd)?
        } else {
            return Err(Error::config("file: no source configured"));
        };
        self.source = Some(Arc::new(source));
        Ok(())
    }
    fn list_exports(&self, _readonly: bool, _is_tls: bool, exports: &mut Exports) -> Result<()> {
        let Source::Dir(dir) = self.source()? else {
            exports.use_default = true;
            return Ok(());
        };
        let dirfd = dir.as_raw_fd();
        // A new open of "." gives a directory stream of our own, so
        // concurrent listings do not share a position.
        let mut stream = nix::dir::Dir::openat(
            Some(dirfd),
            ".",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| nix_error("opendir", e))?;
        for entry in stream.iter() {
            let entry = entry.map_err(|e| nix_error("readdir", e))?;
            let raw = entry.file_name().to_bytes();
            if raw == b"." || raw == b".." {
                continue;
            }
            // Export names are UTF-8 strings.
            let Ok(name) = core::str::from_utf8(raw) else {
                continue;
            };
            use nix::dir::Type;
            let serve = match entry.file_type() {
                Some(Type::File | Type::BlockDevice) => true,
                Some(Type::Symlink) | None => fstatat(
                    Some(dirfd),
                    OsStr::from_bytes(raw),
                    nix::fcntl::AtFlags::empty(),
                )
                .map(|st| {
                    let ft = file_type(st.st_mode);
                    ft == SFlag::S_IFREG || ft == SFlag::S_IFBLK
                })
                .unwrap_or(false),
                Some(_) => false,
            };
            if serve {
                exports.add(name, None)?;
            }
        }
        Ok(())
    }
    fn default_export(&self, _readonly: bool, _is_tls: bool) -> Result<Option<String>> {
        match self.source()? {
            // The client must pick a file by name.
            Source::Dir(_) => Ok(None),
            _ => Ok(Some(String::new())),
        }
    }
    fn open(&self, args: &OpenArgs<'_>) -> Result<Box<dyn Handle>> {
        let (file, name, can_write, lseek_lock) = self.open_export(args)?;
        let fd = file.as_raw_fd();
        let st = fstat(fd).map_err(|e| nix_error(&format!("fstat: {name}"), e))?;
        let is_block = file_type(st.st_mode) == SFlag::S_IFBLK;
        let (sector_size, rotational) = if is_block {
            (
                block_device_sector_size(&file),
                blockdev::rotational(st.st_rdev),
            )
        } else {
            (DEFAULT_SECTOR_SIZE, false)
        };
        // Advisory: failure changes nothing but performance.
        let _ = posix_fadvise(fd, 0, 0, self.fadvise.advice());
        Ok(Box::new(FileHandle {
            file,
            is_block,
            can_write,
            sector_size,
            rotational,
            cache_none: self.cache == CacheMode::None,
            lseek_lock,
            can_punch_hole: AtomicBool::new(true),
            can_zero_range: AtomicBool::new(true),
            can_fallocate: AtomicBool::new(true),
            can_zeroout: AtomicBool::new(is_block),
            recent_writes: Mutex::new(VecDeque::new()),
            debug_zero: nbdkit_core::debug::enabled("file", "zero"),
        }))
    }
}

/// One connection's open file.
struct FileHandle {
    file: StdFile,
    is_block: bool,
    can_write: bool,
    sector_size: u64,
    rotational: bool,
    cache_none: bool,
    /// Held around every lseek, which moves the (possibly shared) offset.
    lseek_lock: Arc<Mutex<()>>,
    /// Zeroing methods not yet found unsupported.
    can_punch_hole: AtomicBool,
    can_zero_range: AtomicBool,
    can_fallocate: AtomicBool,
    can_zeroout: AtomicBool,
    /// cache=none: recent writes still to be written back and dropped.
    recent_writes: Mutex<VecDeque<(i64, i64)>>,
    /// `-D file.zero=1`: say which method zeroed.
    debug_zero: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Check that `offset..offset+count` fits in `off_t`.
fn off_range(offset: u64, count: u64) -> Result<(i64, i64)> {
    match offset.checked_add(count) {
        Some(end) if end <= i64::MAX as u64 => Ok((offset as i64, count as i64)),
        _ => Err(Error::msg(
            Errno::EINVAL,
            format!("offset {offset} + count {count} is out of range"),
        )),
    }
}

/// The result of trying one zeroing method.
enum Tried {
    Done,
    Unsupported,
}

impl FileHandle {
    fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    fn check_writable(&self) -> Result<()> {
        if self.can_write {
            Ok(())
        } else {
            Err(Error::new(Errno::EROFS))
        }
    }

    fn aligned(&self, offset: u64, count: u64) -> bool {
        let s = self.sector_size;
        offset % s == 0 && count % s == 0
    }

    /// Try a file space operation, clearing `flag` when the file system
    /// does not support it.
    fn try_fallocate(
        &self,
        flag: &AtomicBool,
        op: fn(BorrowedFd<'_>, i64, i64) -> nix::Result<()>,
        offset: i64,
        count: i64,
        what: &str,
    ) -> Result<Tried> {
        match op(self.file.as_fd(), offset, count) {
            Ok(()) => Ok(Tried::Done),
            Err(e) if fspace::is_unsupported(e) => {
                flag.store(false, Ordering::Relaxed);
                Ok(Tried::Unsupported)
            }
            Err(e) => Err(nix_error(what, e)),
        }
    }

    fn punch_hole(&self, offset: i64, count: i64, what: &str) -> Result<Tried> {
        self.try_fallocate(
            &self.can_punch_hole,
            fspace::punch_hole,
            offset,
            count,
            what,
        )
    }

    /// Zero natively if any method works (saying which with `-D
    /// file.zero=1`, in nbdkit's words).
    fn zero_range(&self, offset: i64, count: i64, flags: Flags) -> Result<Tried> {
        let r = self.zero_range_by(offset, count, flags)?;
        if self.debug_zero {
            let how = match r {
                (Tried::Done, Some(how)) => how,
                _ => "zero falling back to writing",
            };
            crate::log::debug(None, format_args!("{how}"));
        }
        Ok(r.0)
    }

    fn zero_range_by(
        &self,
        offset: i64,
        count: i64,
        flags: Flags,
    ) -> Result<(Tried, Option<&'static str>)> {
        // Fallocate on a block device needs whole sectors.
        let fallocate_ok = !self.is_block || self.aligned(offset as u64, count as u64);
        if fallocate_ok {
            if flags.contains(Flags::MAY_TRIM) && self.can_punch_hole.load(Ordering::Relaxed) {
                if let Tried::Done = self.punch_hole(offset, count, "zero: punch hole")? {
                    return Ok((
                        Tried::Done,
                        Some("h->can_punch_hole && may_trim: zero succeeded using fallocate"),
                    ));
                }
            }
            if self.can_zero_range.load(Ordering::Relaxed) {
                let r = self.try_fallocate(
                    &self.can_zero_range,
                    fspace::zero_range,
                    offset,
                    count,
                    "zero: zero range",
                )?;
                if let Tried::Done = r {
                    return Ok((
                        Tried::Done,
                        Some("h->can_zero-range: zero succeeded using fallocate"),
                    ));
                }
            }
            // A hole reads as zeroes; allocating it again honours NO_HOLE.
            if self.can_punch_hole.load(Ordering::Relaxed)
                && self.can_fallocate.load(Ordering::Relaxed)
            {
                if let Tried::Done = self.punch_hole(offset, count, "zero: punch hole")? {
                    let r = self.try_fallocate(
                        &self.can_fallocate,
                        fspace::allocate,
                        offset,
                        count,
                        "zero: fallocate",
                    )?;
                    if let Tried::Done = r {
                        return Ok((
                            Tried::Done,
                            Some(
                                "h->can_punch_hole && h->can_fallocate: \
                                 zero succeeded using fallocate",
                            ),
                        ));
                    }
                }
            }
        }
        // BLKZEROOUT may write zeroes itself, which is not fast.
        if self.is_block
            && !flags.contains(Flags::FAST_ZERO)
            && self.can_zeroout.load(Ordering::Relaxed)
            && self.aligned(offset as u64, count as u64)
        {
            match blockdev::zero_out(self.file.as_fd(), offset as u64, count as u64) {
                Ok(()) => {
                    return Ok((
                        Tried::Done,
                        Some("h->can_zeroout && IS_ALIGNED: zero succeeded using BLKZEROOUT"),
                    ))
                }
                Err(NixErrno::ENOTTY | NixErrno::EOPNOTSUPP) => {
                    self.can_zeroout.store(false, Ordering::Relaxed);
                }
                Err(e) => return Err(nix_error("zero: BLKZEROOUT", e)),
            }
        }
        Ok((Tried::Unsupported, None))
    }

    /// cache=none after a write: start writing this range back, and wait
    /// for and drop the oldest one once the window is full.
    fn evict_write(&self, offset: i64, count: i64) {
        let fd = self.fd();
        writeback::start(self.file.as_fd(), offset, count);
        let oldest = {
            let mut w = lock(&self.recent_writes);
            w.push_back((offset, count));
            if w.len() > EVICT_WINDOW {
                w.pop_front()
            } else {
                None
            }
        };
        if let Some((o, c)) = oldest {
            writeback::wait(self.file.as_fd(), o, c);
            let _ = posix_fadvise(fd, o, c, Advice::POSIX_FADV_DONTNEED);
        }
    }

    fn sync(&self) -> Result<()> {
        self.file.sync_data().map_err(|e| io_error("fdatasync", &e))
    }
}

impl Drop for FileHandle {
    fn drop(&mut self) {
        if self.cache_none {
            let fd = self.fd();
            let pending: Vec<_> = lock(&self.recent_writes).drain(..).collect();
            for (o, c) in pending {
                writeback::wait(self.file.as_fd(), o, c);
                let _ = posix_fadvise(fd, o, c, Advice::POSIX_FADV_DONTNEED);
            }
        }
    }
}

impl Handle for FileHandle {
    fn get_size(&self) -> Result<u64> {
        if self.is_block {
            let _g = lock(&self.lseek_lock);
            let end = lseek(self.fd(), 0, Whence::SeekEnd).map_err(|e| nix_error("lseek", e))?;
            Ok(end.max(0) as u64)
        } else {
            let st = fstat(self.fd()).map_err(|e| nix_error("fstat", e))?;
            Ok(st.st_size.max(0) as u64)
        }
    }
    fn can_write(&self) -> Result<bool> {
        Ok(self.can_write)
    }
    fn can_flush(&self) -> Result<bool> {
        Ok(true)
    }
    fn is_rotational(&self) -> Result<bool> {
        Ok(self.rotational)
    }
    fn can_trim(&self) -> Result<bool> {
        Ok(true)
    }
    fn can_zero(&self) -> Result<Support> {
        Ok(Support::Native)
    }
    fn can_extents(&self) -> Result<bool> {
        let _g = lock(&self.lseek_lock);
        Ok(lseek(self.fd(), 0, Whence::SeekHole).is_ok())
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
        let (off, count) = off_range(offset, buf.len() as u64)?;
        let mut done = 0;
        while done < buf.len() {
            match self.file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => return Err(Error::msg(Errno::EIO, "pread: unexpected end of file")),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_error("pread", &e)),
            }
        }
        if self.cache_none {
            let _ = posix_fadvise(self.fd(), off, count, Advice::POSIX_FADV_DONTNEED);
        }
        Ok(())
    }

    fn pwrite(&self, buf: &[u8], offset: u64, flags: Flags) -> Result<()> {
        self.check_writable()?;
        let (off, count) = off_range(offset, buf.len() as u64)?;
        let mut done = 0;
        while done < buf.len() {
            match self.file.write_at(&buf[done..], offset + done as u64) {
                Ok(0) => return Err(Error::msg(Errno::EIO, "pwrite: wrote no data")),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_error("pwrite", &e)),
            }
        }
        if flags.contains(Flags::FUA) {
            self.sync()?;
        }
        if self.cache_none && count > 0 {
            self.evict_write(off, count);
        }
        Ok(())
    }

    fn flush(&self, _flags: Flags) -> Result<()> {
        self.sync()
    }

    fn trim(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        self.check_writable()?;
        let (off, len) = off_range(offset, count)?;
        // Trim is advisory: if holes cannot be punched, do nothing.
        if len > 0
            && self.can_punch_hole.load(Ordering::Relaxed)
            && (!self.is_block || self.aligned(offset, count))
        {
            self.punch_hole(off, len, "trim: punch hole")?;
        }
        if flags.contains(Flags::FUA) {
            self.sync()?;
        }
        Ok(())
    }

    fn zero(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        self.check_writable()?;
        let (off, len) = off_range(offset, count)?;
        if len > 0 {
            if let Tried::Unsupported = self.zero_range(off, len, flags)? {
                // The server writes zeroes instead (or fails a FAST_ZERO).
                return Err(Error::new(Errno::ENOTSUP));
            }
        }
        if flags.contains(Flags::FUA) {
            self.sync()?;
        }
        Ok(())
    }

    fn extents(&self, count: u64, offset: u64, flags: Flags, extents: &mut Extents) -> Result<()> {
        let (_, _) = off_range(offset, count)?;
        let end = offset + count;
        let req_one = flags.contains(Flags::REQ_ONE);
        let fd = self.fd();
        let _g = lock(&self.lseek_lock);
        let mut pos = offset;
        // Every pass adds an extent that ends past `pos`, so this ends.
        while pos < end && !extents.is_full() {
            let data = match lseek(fd, pos as i64, Whence::SeekData) {
                Ok(d) => (d.max(0) as u64).max(pos),
                // In the final hole (or past the end of the file).
                Err(NixErrno::ENXIO) => end,
                // No SEEK_DATA here (can_extents said so): all data.
                Err(NixErrno::EINVAL | NixErrno::EOPNOTSUPP) => {
                    extents.add(pos, end - pos, 0)?;
                    break;
                }
                Err(e) => return Err(nix_error(&format!("lseek: SEEK_DATA: {pos}"), e)),
            };
            if data > pos {
                let stop = data.min(end);
                extents.add(pos, stop - pos, STATE_HOLE | STATE_ZERO)?;
                pos = stop;
            } else {
                let hole = match lseek(fd, pos as i64, Whence::SeekHole) {
                    Ok(h) => h.max(0) as u64,
                    // The file shrank under us: the rest is a hole.
                    Err(NixErrno::ENXIO) => {
                        extents.add(pos, end - pos, STATE_HOLE | STATE_ZERO)?;
                        break;
                    }
                    Err(e) => return Err(nix_error(&format!("lseek: SEEK_HOLE: {pos}"), e)),
                };
                // A hole at `pos` right after SEEK_DATA found data there
                // means the file changed: report data, which is always safe.
                let stop = if hole > pos { hole.min(end) } else { end };
                extents.add(pos, stop - pos, 0)?;
                pos = stop;
            }
            if req_one {
                break;
            }
        }
        Ok(())
    }

    fn cache(&self, count: u64, offset: u64, _flags: Flags) -> Result<()> {
        let (off, len) = off_range(offset, count)?;
        posix_fadvise(self.fd(), off, len, Advice::POSIX_FADV_WILLNEED)
            .map_err(|e| nix_error("posix_fadvise", e))
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use core::sync::atomic::AtomicUsize;

    /// A temporary path, removed (file or directory tree) when dropped.
    struct Temp(PathBuf);

    impl Temp {
        fn new(tag: &str) -> Temp {
            static N: AtomicUsize = AtomicUsize::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            Temp(std::env::temp_dir().join(format!(
                "nbdkit-rs-file-test-{}-{n}-{tag}",
                std::process::id()
            )))
        }
        fn file(tag: &str, size: u64) -> Temp {
            let t = Temp::new(tag);
            let f = StdFile::create(&t.0).unwrap();
            f.set_len(size).unwrap();
            t
        }
        fn s(&self) -> &str {
            self.0.to_str().unwrap()
        }
    }

    impl Drop for Temp {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn configure(params: &[(&str, &str)]) -> Result<File> {
        let mut p = File::default();
        for (k, v) in params {
            p.config(k, v)?;
        }
        p.config_complete()?;
        Ok(p)
    }

    fn open(p: &File, name: &str, readonly: bool) -> Result<Box<dyn Handle>> {
        p.open(&OpenArgs {
            readonly,
            export_name: name,
            is_tls: false,
            peer: &nbdkit_core::backend::Peer::Unknown,
        })
    }

    fn msg(r: Result<File>) -> String {
        r.err().and_then(|e| e.message).unwrap_or_default()
    }

    fn read(h: &dyn Handle, offset: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0xaau8; len];
        h.pread(&mut buf, offset, Flags::NONE).unwrap();
        buf
    }

    #[test]
    fn config_errors() {
        let f = Temp::file("cfg", 4096);
        let d = Temp::new("cfgdir");
        std::fs::create_dir(&d.0).unwrap();
        assert_eq!(
            msg(configure(&[])),
            "you must supply either [file=]<FILENAME> or dir=<DIRNAME> parameter after the \
             plugin name on the command line"
        );
        assert_eq!(
            msg(configure(&[("file", f.s()), ("dir", d.s())])),
            "file= and dir= cannot be used at the same time"
        );
        assert_eq!(
            msg(configure(&[("file", f.s()), ("cache", "foo")])),
            "unknown cache mode: foo"
        );
        assert_eq!(
            msg(configure(&[("file", f.s()), ("fadvise", "foo")])),
            "unknown fadvise mode: foo"
        );
        assert_eq!(msg(configure(&[("x", "1")])), "unknown parameter 'x'");
        assert_eq!(
            msg(configure(&[("file", f.s()), ("rdelay", "1")])),
            "add --filter=delay on the command line"
        );
        assert_eq!(
            msg(configure(&[("file", "/nonexistent-nbdkit-rs")])),
            "realpath: /nonexistent-nbdkit-rs: No such file or directory"
        );
        assert_eq!(
            msg(configure(&[("file", "")])),
            "cannot resolve a null or empty path"
        );
        assert_eq!(
            msg(configure(&[("file", d.s())])),
            format!("use dir= to serve files within {}", d.s())
        );
        assert_eq!(
            msg(configure(&[("dir", f.s())])),
            format!("expecting a directory: {}", f.s())
        );
        assert!(msg(configure(&[("file", "/dev/null")]))
            .starts_with("file is not regular or block device"));
        assert!(msg(configure(&[("fd", "x")])).contains("fd"));
        assert!(msg(configure(&[("fd", "-1")])).contains("fd"));
        // A later value replaces an earlier one.
        configure(&[
            ("file", d.s()),
            ("file", f.s()),
            ("cache", "none"),
            ("cache", "default"),
        ])
        .unwrap();
    }

    #[test]
    fn round_trip_and_flush() {
        let f = Temp::file("rw", 1 << 20);
        for cache in ["default", "none"] {
            for fadvise in ["normal", "random", "sequential"] {
                let p =
                    configure(&[("file", f.s()), ("cache", cache), ("fadvise", fadvise)]).unwrap();
                let h = open(&p, "ignored", false).unwrap();
                assert_eq!(h.get_size().unwrap(), 1 << 20);
                assert!(h.can_write().unwrap());
                assert_eq!(h.can_fua().unwrap(), Support::Native);
                assert_eq!(h.can_zero().unwrap(), Support::Native);
                assert!(!h.can_fast_zero().unwrap());
                assert!(h.can_multi_conn().unwrap());
                let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8 + 1).collect();
                for i in 0..10u64 {
                    h.pwrite(&data, 12345 + i * 70_000, Flags::NONE).unwrap();
                }
                h.pwrite(&data, 12345, Flags::FUA).unwrap();
                assert_eq!(read(&*h, 12345, data.len()), data);
                h.flush(Flags::NONE).unwrap();
                h.cache(1 << 20, 0, Flags::NONE).unwrap();
                // Out of range offsets are refused, not a panic.
                assert!(h.pread(&mut [0u8; 4], u64::MAX - 1, Flags::NONE).is_err());
                assert!(h.pwrite(&[0u8; 4], u64::MAX - 1, Flags::NONE).is_err());
            }
        }
        // The data reached the file.
        let bytes = std::fs::read(&f.0).unwrap();
        assert_eq!(bytes[12345], 1);
    }

    #[test]
    fn read_past_eof_is_eio() {
        let f = Temp::file("shrink", 8192);
        let p = configure(&[("file", f.s())]).unwrap();
        let h = open(&p, "", false).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&f.0)
            .unwrap()
            .set_len(100)
            .unwrap();
        let mut buf = [0u8; 4096];
        let e = h.pread(&mut buf, 4096, Flags::NONE).unwrap_err();
        assert_eq!(e.errno, Errno::EIO);
        let e = h.pread(&mut buf, 0, Flags::NONE).unwrap_err();
        assert_eq!(e.errno, Errno::EIO);
    }

    #[test]
    fn trim_and_zero_read_as_zeroes() {
        let f = Temp::file("zero", 1 << 20);
        let p = configure(&[("file", f.s())]).unwrap();
        let h = open(&p, "", false).unwrap();
        assert!(h.can_trim().unwrap());
        let ones = vec![1u8; 1 << 20];
        let cases = [
            (Flags::NONE, true),
            (Flags::MAY_TRIM, true),
            (Flags::FUA, true),
            (Flags::FAST_ZERO, true),
            (Flags::MAY_TRIM | Flags::FAST_ZERO, true),
            (Flags::NONE, false),
            (Flags::FUA, false),
        ];
        for (flags, zero) in cases {
            h.pwrite(&ones, 0, Flags::NONE).unwrap();
            let r = if zero {
                h.zero(65536 + 100, 4096 + 7, flags)
            } else {
                h.trim(65536 + 100, 4096 + 7, flags)
            };
            match r {
                Ok(()) => {
                    let b = read(&*h, 0, 1 << 20);
                    assert!(b[..4096 + 7].iter().all(|&x| x == 1));
                    assert!(b[4096 + 7..4096 + 7 + 65536 + 100].iter().all(|&x| x == 0));
                    assert!(b[4096 + 7 + 65536 + 100..].iter().all(|&x| x == 1));
                }
                // Only zero may refuse, and only with ENOTSUP.
                Err(e) => assert!(zero && e.errno == Errno::ENOTSUP, "{e:?}"),
            }
        }
        assert_eq!(h.get_size().unwrap(), 1 << 20);
        h.zero(0, 0, Flags::NONE).unwrap();
        h.trim(0, 0, Flags::NONE).unwrap();
        assert!(h.zero(10, u64::MAX - 5, Flags::NONE).is_err());
    }

    fn extent_list(h: &dyn Handle, count: u64, offset: u64, flags: Flags) -> Vec<(u64, u64, u32)> {
        let mut e = Extents::new(offset, offset + count);
        h.extents(count, offset, flags, &mut e).unwrap();
        e.as_slice()
            .iter()
            .map(|x| (x.offset, x.length, x.flags))
            .collect()
    }

    #[test]
    fn extents_report_holes() {
        const M: u64 = 1 << 20;
        let f = Temp::file("sparse", 8 * M);
        let p = configure(&[("file", f.s())]).unwrap();
        let h = open(&p, "", false).unwrap();
        h.pwrite(&vec![1u8; M as usize], 2 * M, Flags::NONE)
            .unwrap();
        if !h.can_extents().unwrap() {
            return; // The file system cannot report holes.
        }
        let e = extent_list(&*h, 8 * M, 0, Flags::NONE);
        // Contiguous, covering the request, and ending with data followed
        // by a hole (whatever the file system's allocation granularity).
        assert_eq!(e.first().unwrap().0, 0);
        assert_eq!(e.iter().map(|x| x.1).sum::<u64>(), 8 * M);
        let data: Vec<_> = e.iter().filter(|x| x.2 == 0).collect();
        assert!(!data.is_empty());
        assert!(data.iter().all(|x| x.0 <= 2 * M && x.0 + x.1 >= 3 * M));
        if e.len() == 3 {
            assert_eq!(e[0], (0, 2 * M, STATE_HOLE | STATE_ZERO));
            assert_eq!(e[1], (2 * M, M, 0));
            assert_eq!(e[2], (3 * M, 5 * M, STATE_HOLE | STATE_ZERO));
        }
        assert_eq!(e.last().unwrap().2, STATE_HOLE | STATE_ZERO);
        // REQ_ONE gives one extent.
        assert_eq!(extent_list(&*h, 8 * M, 0, Flags::REQ_ONE).len(), 1);
        // A subrange starts at its offset.
        let e = extent_list(&*h, 100, 2 * M + 10, Flags::NONE);
        assert_eq!(e, [(2 * M + 10, 100, 0)]);
        // Trim makes a hole again.
        h.trim(M, 2 * M, Flags::NONE).unwrap();
        let e = extent_list(&*h, 8 * M, 0, Flags::NONE);
        assert!(e.iter().all(|x| x.2 == STATE_HOLE | STATE_ZERO), "{e:?}");
    }

    #[test]
    fn dir_exports() {
        let d = Temp::new("dir");
        std::fs::create_dir(&d.0).unwrap();
        std::fs::write(d.0.join("a"), b"hello").unwrap();
        std::fs::write(d.0.join("b"), vec![7u8; 4096]).unwrap();
        std::fs::create_dir(d.0.join("sub")).unwrap();
        std::os::unix::fs::symlink("a", d.0.join("link")).unwrap();
        std::os::unix::fs::symlink("/nonexistent-nbdkit-rs", d.0.join("dangling")).unwrap();
        std::os::unix::fs::symlink("/dev/null", d.0.join("null")).unwrap();
        nix::unistd::mkfifo(&d.0.join("fifo"), Mode::S_IRUSR | Mode::S_IWUSR).unwrap();
        let p = configure(&[("dir", d.s())]).unwrap();

        let mut ex = Exports::default();
        p.list_exports(false, false, &mut ex).unwrap();
        assert!(!ex.use_default);
        let mut names: Vec<_> = ex.list.iter().map(|e| e.name.as_str()).collect();
        names.sort();
        assert_eq!(names, ["a", "b", "link"]);
        assert_eq!(p.default_export(false, false).unwrap(), None);

        let h = open(&p, "a", false).unwrap();
        assert_eq!(h.get_size().unwrap(), 5);
        assert_eq!(read(&*h, 0, 5), b"hello");
        assert_eq!(open(&p, "link", true).unwrap().get_size().unwrap(), 5);
        assert_eq!(open(&p, "b", false).unwrap().get_size().unwrap(), 4096);
        for bad in [
            "", "sub", "dangling", "null", "fifo", "a/b", "../x", ".", "..", "missing",
        ] {
            // Opening a FIFO read-only must not block.
            assert!(open(&p, bad, false).is_err(), "{bad}");
            assert!(open(&p, bad, true).is_err(), "{bad}");
        }
        assert_eq!(
            open(&p, "fifo", true).err().unwrap().message.unwrap(),
            "file is not regular or block device: fifo"
        );
        assert_eq!(
            open(&p, "sub", false).err().unwrap().message.unwrap(),
            "file is not regular or block device: sub"
        );
        assert_eq!(
            open(&p, "missing", true).err().unwrap().message.unwrap(),
            "open: missing: No such file or directory"
        );
        assert_eq!(
            open(&p, "x/y", false).err().unwrap().message.unwrap(),
            "exportname cannot contain /"
        );

        // file= mode lists the default export.
        let p = configure(&[("file", d.0.join("a").to_str().unwrap())]).unwrap();
        let mut ex = Exports::default();
        p.list_exports(false, false, &mut ex).unwrap();
        assert!(ex.use_default && ex.list.is_empty());
        assert_eq!(p.default_export(false, false).unwrap(), Some(String::new()));
    }

    #[test]
    fn readonly_refuses_writes() {
        let f = Temp::file("ro", 65536);
        let p = configure(&[("file", f.s())]).unwrap();
        let h = open(&p, "", true).unwrap();
        assert!(!h.can_write().unwrap());
        assert_eq!(
            h.pwrite(&[1], 0, Flags::NONE).unwrap_err().errno,
            Errno::EROFS
        );
        assert_eq!(h.zero(512, 0, Flags::NONE).unwrap_err().errno, Errno::EROFS);
        assert_eq!(h.trim(512, 0, Flags::NONE).unwrap_err().errno, Errno::EROFS);
        assert_eq!(read(&*h, 0, 16), [0u8; 16]);
    }

    #[test]
    fn fd_modes() {
        let f = Temp::file("fd", 65536);
        let d = Temp::new("dirfd");
        std::fs::create_dir(&d.0).unwrap();
        std::fs::write(d.0.join("x"), b"xyz").unwrap();

        let rw = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&f.0)
            .unwrap();
        let p = configure(&[("fd", &rw.as_raw_fd().to_string())]).unwrap();
        let h1 = open(&p, "", false).unwrap();
        let h2 = open(&p, "", false).unwrap();
        assert!(h1.can_write().unwrap());
        h1.pwrite(b"abc", 100, Flags::NONE).unwrap();
        assert_eq!(read(&*h2, 100, 3), b"abc");
        drop((h1, h2));

        let ro = StdFile::open(&f.0).unwrap();
        let p = configure(&[("fd", &ro.as_raw_fd().to_string())]).unwrap();
        let h = open(&p, "", false).unwrap();
        assert!(!h.can_write().unwrap());
        assert_eq!(read(&*h, 100, 3), b"abc");

        let dir = StdFile::open(&d.0).unwrap();
        let dirfd = dir.as_raw_fd().to_string();
        assert!(msg(configure(&[("fd", &dirfd)])).contains("dirfd="));
        assert!(msg(configure(&[("dirfd", &ro.as_raw_fd().to_string())]))
            .contains("expecting a directory"));
        let p = configure(&[("dirfd", &dirfd)]).unwrap();
        drop(dir); // The plugin keeps its own duplicate.
        let mut ex = Exports::default();
        p.list_exports(false, false, &mut ex).unwrap();
        assert_eq!(ex.list.len(), 1);
        assert_eq!(ex.list[0].name, "x");
        assert_eq!(read(&*open(&p, "x", false).unwrap(), 0, 3), b"xyz");
        assert!(msg(configure(&[("fd", "1000000")])).contains("Bad file descriptor"));
    }

    /// Block devices: set `NBDKIT_RS_TEST_BLOCKDEV` to a scratch device
    /// (its contents are destroyed), e.g. a loop device.
    #[test]
    fn block_device() {
        let Ok(dev) = std::env::var("NBDKIT_RS_TEST_BLOCKDEV") else {
            return;
        };
        let p = configure(&[("file", &dev)]).unwrap();
        let h = open(&p, "", false).unwrap();
        let size = h.get_size().unwrap();
        assert!(size >= 1 << 20);
        h.pwrite(&vec![1u8; 1 << 20], 0, Flags::NONE).unwrap();
        for flags in [Flags::NONE, Flags::MAY_TRIM, Flags::FAST_ZERO] {
            h.pwrite(&vec![1u8; 65536], 0, Flags::NONE).unwrap();
            h.zero(8192, 4096, flags).unwrap();
            let b = read(&*h, 0, 65536);
            assert!(b[..4096].iter().all(|&x| x == 1));
            assert!(b[4096..12288].iter().all(|&x| x == 0));
            assert!(b[12288..].iter().all(|&x| x == 1));
        }
        // Unaligned zeroing falls back to the server.
        assert_eq!(
            h.zero(100, 1, Flags::NONE).unwrap_err().errno,
            Errno::ENOTSUP
        );
        h.trim(65536, 0, Flags::NONE).unwrap();
        h.trim(100, 1, Flags::NONE).unwrap();
        h.flush(Flags::NONE).unwrap();
        let _ = h.is_rotational().unwrap();
        let e = extent_list(&*h, size, 0, Flags::NONE);
        assert_eq!(e.first().map(|x| x.0), Some(0));
        assert_eq!(e.iter().map(|x| x.1).sum::<u64>(), size);
    }
}
