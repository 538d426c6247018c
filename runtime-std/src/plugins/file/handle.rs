//! A connection's open file: the data path (pread/pwrite loops, flush,
//! trim, the zeroing methods in nbdkit's order, block status).

use super::*;
use core::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::collections::VecDeque;
use std::fs::File as StdFile;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex, MutexGuard};

use nbdkit_core::backend::{Error, Extents, Flags, Handle, Result, Support};
use nbdkit_core::errno::Errno;
use nbdkit_core::wire::consts::{STATE_HOLE, STATE_ZERO};
use nix::errno::Errno as NixErrno;
use nix::fcntl::posix_fadvise;
use nix::fcntl::PosixFadviseAdvice as Advice;
use nix::sys::stat::fstat;
use nix::unistd::{lseek, Whence};

use crate::os::errno::{io_error, nix_error};
use crate::os::{blockdev, fspace, writeback};

/// One connection's open file.
pub(super) struct FileHandle {
    pub(super) file: StdFile,
    pub(super) is_block: bool,
    pub(super) can_write: bool,
    pub(super) sector_size: u64,
    pub(super) rotational: bool,
    pub(super) cache_none: bool,
    /// Held around every lseek, which moves the (possibly shared) offset.
    pub(super) lseek_lock: Arc<Mutex<()>>,
    /// Zeroing methods not yet found unsupported.
    pub(super) can_punch_hole: AtomicBool,
    pub(super) can_zero_range: AtomicBool,
    pub(super) can_fallocate: AtomicBool,
    pub(super) can_zeroout: AtomicBool,
    /// cache=none: recent writes still to be written back and dropped.
    pub(super) recent_writes: Mutex<VecDeque<(i64, i64)>>,
    /// `-D file.zero=1`: say which method zeroed.
    pub(super) debug_zero: bool,
    /// How a read can be tried without blocking ([`Handle::pread_now`]).
    pub(super) now: AtomicU8,
}

/// [`FileHandle::now`]: reads cannot be tried without blocking (cache=none,
/// or the file system refused `RWF_NOWAIT`).
pub(super) const NOW_NEVER: u8 = 0;
/// `preadv2(RWF_NOWAIT)`: served when the bytes are in the page cache.
pub(super) const NOW_NOWAIT: u8 = 1;
/// The file lives in memory (tmpfs, ramfs): reads and writes (without FUA)
/// never wait for a disk.
pub(super) const NOW_MEMORY: u8 = 2;

/// The [`FileHandle::now`] mode of `file` opened with `cache_none`.
pub(super) fn now_mode(file: &StdFile, cache_none: bool) -> u8 {
    let _ = file;
    if cache_none || !cfg!(target_os = "linux") {
        return NOW_NEVER;
    }
    #[cfg(target_os = "linux")]
    {
        const TMPFS_MAGIC: i64 = 0x0102_1994;
        const RAMFS_MAGIC: i64 = 0x8584_58f6;
        // SAFETY: fstatfs fills the zeroed struct it is given.
        let mut st: libc::statfs = unsafe { core::mem::zeroed() };
        if unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) } == 0 {
            let t = st.f_type as i64;
            if t == TMPFS_MAGIC || t == RAMFS_MAGIC {
                return NOW_MEMORY;
            }
        }
    }
    NOW_NOWAIT
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Check that `offset..offset+count` fits in `off_t`.
pub(super) fn off_range(offset: u64, count: u64) -> Result<(i64, i64)> {
    match offset.checked_add(count) {
        Some(end) if end <= i64::MAX as u64 => Ok((offset as i64, count as i64)),
        _ => Err(Error::msg(
            Errno::EINVAL,
            format!("offset {offset} + count {count} is out of range"),
        )),
    }
}

/// The result of trying one zeroing method.
pub(super) enum Tried {
    Done,
    Unsupported,
}

impl FileHandle {
    pub(super) fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    pub(super) fn check_writable(&self) -> Result<()> {
        if self.can_write {
            Ok(())
        } else {
            Err(Error::new(Errno::EROFS))
        }
    }

    pub(super) fn aligned(&self, offset: u64, count: u64) -> bool {
        let s = self.sector_size;
        offset % s == 0 && count % s == 0
    }

    /// Try a file space operation, clearing `flag` when the file system
    /// does not support it.
    pub(super) fn try_fallocate(
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

    pub(super) fn punch_hole(&self, offset: i64, count: i64, what: &str) -> Result<Tried> {
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
    pub(super) fn zero_range(&self, offset: i64, count: i64, flags: Flags) -> Result<Tried> {
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

    pub(super) fn zero_range_by(
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
    pub(super) fn evict_write(&self, offset: i64, count: i64) {
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

    pub(super) fn sync(&self) -> Result<()> {
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

impl FileHandle {
    /// One `preadv2(RWF_NOWAIT)` of all of `buf`: `None` unless it read
    /// every byte (a short read is read again in full by `pread`).
    #[cfg(target_os = "linux")]
    fn pread_nowait(&self, buf: &mut [u8], offset: u64) -> Option<Result<()>> {
        let off = i64::try_from(offset).ok()?;
        let iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: one iovec over `buf`, which outlives the call.
        let n = unsafe { libc::preadv2(self.fd(), &iov, 1, off, libc::RWF_NOWAIT) };
        if n >= 0 {
            return (n as usize == buf.len()).then_some(Ok(()));
        }
        match io::Error::last_os_error().raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::EINTR) => {}
            // This file system cannot say (EOPNOTSUPP), or another error,
            // which `pread` reports: stop trying.
            _ => self.now.store(NOW_NEVER, Ordering::Relaxed),
        }
        None
    }

    #[cfg(not(target_os = "linux"))]
    fn pread_nowait(&self, _buf: &mut [u8], _offset: u64) -> Option<Result<()>> {
        None
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

    fn can_now(&self) -> bool {
        self.now.load(Ordering::Relaxed) != NOW_NEVER
    }

    fn pread_now(&self, buf: &mut [u8], offset: u64, flags: Flags) -> Option<Result<()>> {
        match self.now.load(Ordering::Relaxed) {
            NOW_MEMORY => Some(self.pread(buf, offset, flags)),
            NOW_NOWAIT => self.pread_nowait(buf, offset),
            _ => None,
        }
    }

    fn read_fd(&self) -> Option<i32> {
        // cache=none drops what a read brought into the page cache: that
        // takes pread's own loop.
        (!self.cache_none).then(|| self.fd())
    }

    fn write_fd(&self) -> Option<i32> {
        // cache=none drops what a write left in the page cache: that takes
        // pwrite's own loop.
        (self.can_write && !self.cache_none).then(|| self.fd())
    }

    fn pwrite_now(&self, buf: &[u8], offset: u64, flags: Flags) -> Option<Result<()>> {
        (self.now.load(Ordering::Relaxed) == NOW_MEMORY && !flags.contains(Flags::FUA))
            .then(|| self.pwrite(buf, offset, flags))
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
