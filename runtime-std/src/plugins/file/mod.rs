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

use core::sync::atomic::{AtomicBool, AtomicU8};
use std::collections::VecDeque;
use std::ffi::OsStr;
use std::fs::File as StdFile;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use nbdkit_core::backend::{Callbacks, Error, Exports, Handle, OpenArgs, Plugin, Result};
use nbdkit_core::errno::Errno;
use nbdkit_core::plugins::unknown_param;
use nix::fcntl::PosixFadviseAdvice as Advice;
use nix::fcntl::{fcntl, openat, posix_fadvise, FcntlArg, OFlag};
use nix::sys::stat::{fstat, fstatat, Mode, SFlag};

use crate::os::errno::{io_error, nix_error};
use crate::os::{blockdev, fspace};

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
    fn callbacks(&self) -> Callbacks {
        Callbacks::LONGNAME
            | Callbacks::UNLOAD
            | Callbacks::DUMP_PLUGIN
            | Callbacks::CONFIG
            | Callbacks::CONFIG_COMPLETE
            | Callbacks::CONFIG_HELP
            | Callbacks::LIST_EXPORTS
            | Callbacks::OPEN
            | Callbacks::CLOSE
            | Callbacks::GET_SIZE
            | Callbacks::CAN_WRITE
            | Callbacks::CAN_TRIM
            | Callbacks::CAN_EXTENTS
            | Callbacks::CAN_FUA
            | Callbacks::CAN_MULTI_CONN
            | Callbacks::CAN_CACHE
            | Callbacks::PREAD
            | Callbacks::PWRITE
            | Callbacks::FLUSH
            | Callbacks::TRIM
            | Callbacks::ZERO
            | Callbacks::EXTENTS
            | Callbacks::CACHE
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
        let now = handle::now_mode(&file, self.cache == CacheMode::None);
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
            now: AtomicU8::new(now),
        }))
    }
}

mod handle;
#[cfg(test)]
mod tests;

use handle::*;
