//! `split`: several files concatenated into one disk.
//!
//! Parameters: `[file=]FILENAME`, one or more times; the files are joined
//! in the order given. Each path is resolved with `realpath` when the
//! parameter is read. Every connection opens the files (read-write unless
//! the export is read-only). The files must not change size while served.
//!
//! Reads and writes are split at file boundaries; there is no flush, trim
//! or native zeroing (as in nbdkit). Block status reports each file's
//! holes with `SEEK_DATA`/`SEEK_HOLE`; `cache` is `posix_fadvise
//! (WILLNEED)`. The thread model is `serialize_requests`: requests of one
//! connection use the same descriptors' file offsets for `lseek`.

use crate::os::errno::{io_error, nix_error};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;

use nbdkit_core::backend::{
    Callbacks, Error, Extents, Flags, Handle, OpenArgs, Plugin, Result, Support, ThreadModel,
};
use nbdkit_core::errno::Errno;
use nbdkit_core::plugins::unknown_param;
use nbdkit_core::wire::consts::{STATE_HOLE, STATE_ZERO};
use nix::errno::Errno as NixErrno;
use nix::fcntl::{posix_fadvise, PosixFadviseAdvice};
use nix::unistd::{lseek, Whence};

/// The split plugin.
#[derive(Debug, Default)]
pub struct Split {
    files: Vec<PathBuf>,
}

impl Plugin for Split {
    fn name(&self) -> &'static str {
        "split"
    }
    fn config_help(&self) -> &'static str {
        "file=<FILENAME>  (required) File(s) to serve."
    }
    fn magic_config_key(&self) -> Option<&'static str> {
        Some("file")
    }
    fn callbacks(&self) -> Callbacks {
        // nbdkit's split is an API 1 plugin: its pread/pwrite are the
        // `_v1` slots, which have no has_ line here.
        Callbacks::UNLOAD
            | Callbacks::CONFIG
            | Callbacks::CONFIG_HELP
            | Callbacks::OPEN
            | Callbacks::CLOSE
            | Callbacks::GET_SIZE
            | Callbacks::CAN_CACHE
            | Callbacks::EXTENTS
            | Callbacks::CACHE
            | Callbacks::PREAD_V1
            | Callbacks::PWRITE_V1
    }
    fn max_thread_model(&self) -> ThreadModel {
        ThreadModel::SerializeRequests
    }

    fn config(&mut self, key: &str, value: &str) -> Result<()> {
        match key {
            "file" => {
                if value.is_empty() {
                    return Err(Error::config("cannot resolve a null or empty path"));
                }
                let p = std::fs::canonicalize(value)
                    .map_err(|e| io_error(&format!("realpath: {value}"), &e))?;
                self.files.push(p);
                Ok(())
            }
            _ => Err(unknown_param(key)),
        }
    }

    fn open(&self, args: &OpenArgs<'_>) -> Result<Box<dyn Handle>> {
        let mut files = Vec::with_capacity(self.files.len());
        let mut offset = 0u64;
        for path in &self.files {
            let name = path.display().to_string();
            let file = OpenOptions::new()
                .read(true)
                .write(!args.readonly)
                .custom_flags(libc::O_NOCTTY)
                .open(path)
                .map_err(|e| io_error(&format!("open: {name}"), &e))?;
            let meta = file
                .metadata()
                .map_err(|e| io_error(&format!("stat: {name}"), &e))?;
            if !meta.is_file() {
                return Err(Error::msg(
                    Errno::EINVAL,
                    format!("{name}: not a regular file"),
                ));
            }
            let size = meta.len();
            // Whether the file system can report holes.
            let holes = !matches!(
                lseek(file.as_raw_fd(), 0, Whence::SeekData),
                Err(NixErrno::EINVAL | NixErrno::EOPNOTSUPP)
            );
            files.push(Piece {
                file,
                offset,
                size,
                holes,
            });
            offset = offset.checked_add(size).ok_or_else(|| {
                Error::msg(Errno::EOVERFLOW, "split: total size of the files overflows")
            })?;
        }
        Ok(Box::new(SplitHandle {
            files,
            size: offset,
        }))
    }
}

/// One file and where it sits in the disk.
#[derive(Debug)]
struct Piece {
    file: File,
    offset: u64,
    size: u64,
    holes: bool,
}

/// A connection's open files.
#[derive(Debug)]
struct SplitHandle {
    files: Vec<Piece>,
    size: u64,
}

impl SplitHandle {
    /// Call `f(piece, offset_in_file, range_in_request)` for each file
    /// that the range `offset..offset+count` touches, in order.
    fn for_each(
        &self,
        offset: u64,
        count: u64,
        mut f: impl FnMut(&Piece, u64, core::ops::Range<usize>) -> Result<bool>,
    ) -> Result<()> {
        let end = offset
            .checked_add(count)
            .filter(|e| *e <= self.size)
            .ok_or_else(|| Error::msg(Errno::EIO, "split: request beyond the end of the disk"))?;
        // Files are sorted by offset: find the first one that ends past
        // `offset` (empty files are skipped by the condition).
        let first = self.files.partition_point(|p| p.offset + p.size <= offset);
        let mut pos = offset;
        for p in &self.files[first..] {
            if pos >= end {
                break;
            }
            if p.size == 0 {
                continue;
            }
            let in_file = pos - p.offset;
            let n = (p.size - in_file).min(end - pos);
            let start = (pos - offset) as usize;
            if !f(p, in_file, start..start + n as usize)? {
                break;
            }
            pos += n;
        }
        Ok(())
    }
}

impl Handle for SplitHandle {
    fn get_size(&self) -> Result<u64> {
        Ok(self.size)
    }

    fn can_cache(&self) -> Result<Support> {
        Ok(Support::Native)
    }

    fn pread(&self, buf: &mut [u8], offset: u64, _flags: Flags) -> Result<()> {
        self.for_each(offset, buf.len() as u64, |p, off, range| {
            let part = &mut buf[range];
            let mut done = 0;
            while done < part.len() {
                match p.file.read_at(&mut part[done..], off + done as u64) {
                    Ok(0) => return Err(Error::msg(Errno::EIO, "pread: unexpected end of file")),
                    Ok(n) => done += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(io_error("pread", &e)),
                }
            }
            Ok(true)
        })
    }

    fn pwrite(&self, buf: &[u8], offset: u64, _flags: Flags) -> Result<()> {
        self.for_each(offset, buf.len() as u64, |p, off, range| {
            let part = &buf[range];
            let mut done = 0;
            while done < part.len() {
                match p.file.write_at(&part[done..], off + done as u64) {
                    Ok(0) => return Err(Error::msg(Errno::EIO, "pwrite: wrote nothing")),
                    Ok(n) => done += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(io_error("pwrite", &e)),
                }
            }
            Ok(true)
        })
    }

    fn extents(&self, count: u64, offset: u64, flags: Flags, extents: &mut Extents) -> Result<()> {
        let req_one = flags.contains(Flags::REQ_ONE);
        self.for_each(offset, count, |p, off, range| {
            let base = p.offset;
            let end = off + range.len() as u64;
            if !p.holes {
                extents.add(base + off, end - off, 0)?;
                return Ok(!req_one && !extents.is_full());
            }
            let fd = p.file.as_raw_fd();
            let mut pos = off;
            while pos < end && !extents.is_full() {
                let data = match lseek(fd, pos as i64, Whence::SeekData) {
                    Ok(d) => (d.max(0) as u64).max(pos),
                    Err(NixErrno::ENXIO) => end,
                    Err(e) => return Err(nix_error("lseek: SEEK_DATA", e)),
                };
                if data > pos {
                    let stop = data.min(end);
                    extents.add(base + pos, stop - pos, STATE_HOLE | STATE_ZERO)?;
                    pos = stop;
                } else {
                    let hole = match lseek(fd, pos as i64, Whence::SeekHole) {
                        Ok(h) => h.max(0) as u64,
                        Err(NixErrno::ENXIO) => end,
                        Err(e) => return Err(nix_error("lseek: SEEK_HOLE", e)),
                    };
                    let stop = if hole > pos { hole.min(end) } else { end };
                    extents.add(base + pos, stop - pos, 0)?;
                    pos = stop;
                }
                if req_one {
                    return Ok(false);
                }
            }
            Ok(!extents.is_full())
        })
    }

    fn cache(&self, count: u64, offset: u64, _flags: Flags) -> Result<()> {
        self.for_each(offset, count, |p, off, range| {
            posix_fadvise(
                p.file.as_raw_fd(),
                off as i64,
                range.len() as i64,
                PosixFadviseAdvice::POSIX_FADV_WILLNEED,
            )
            .map_err(|e| nix_error("posix_fadvise", e))?;
            Ok(true)
        })
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use crate::plugins::testing::{dir, open};

    #[test]
    fn reads_and_writes_across_files() {
        let d = dir("nbdkit-split-test");
        let mut p = Split::default();
        for (name, content) in [
            ("a", &b"0123"[..]),
            ("e", b""),
            ("b", b"4567"),
            ("c", b"89"),
        ] {
            let f = d.path().join(name);
            std::fs::write(&f, content).unwrap();
            p.config("file", f.to_str().unwrap()).unwrap();
        }
        let h = open(&p, false);
        assert_eq!(h.get_size().unwrap(), 10);
        let mut buf = [0u8; 10];
        h.pread(&mut buf, 0, Flags::NONE).unwrap();
        assert_eq!(&buf, b"0123456789");
        let mut buf = [0u8; 4];
        h.pread(&mut buf, 3, Flags::NONE).unwrap();
        assert_eq!(&buf, b"3456");
        h.pwrite(b"xyzw", 2, Flags::NONE).unwrap();
        assert_eq!(std::fs::read(d.path().join("a")).unwrap(), b"01xy");
        assert_eq!(std::fs::read(d.path().join("b")).unwrap(), b"zw67");
        assert!(h.pread(&mut buf, 8, Flags::NONE).is_err());
        let mut e = Extents::new(0, 10);
        h.extents(10, 0, Flags::NONE, &mut e).unwrap();
        assert_eq!(e.next_offset(), 10);
    }

    #[test]
    fn missing_file_is_a_config_error() {
        let mut p = Split::default();
        let e = p.config("file", "/nonexistent/x").unwrap_err();
        assert_eq!(
            e.message.unwrap(),
            "realpath: /nonexistent/x: No such file or directory"
        );
        assert!(p.config("other", "1").is_err());
    }
}
