//! An exclusive lock on a whole file that belongs to the open file
//! description (not to the process), so two opens in one process conflict,
//! and that goes away when the last descriptor of that open is closed.
//!
//! - Linux: open file description locks, `fcntl(F_OFD_SETLK[W])`.
//! - FreeBSD: `flock(2)`, whose locks have exactly these semantics
//!   (`F_OFD_*` is Linux only).

use std::fs::File;
use std::io;

/// Take an exclusive lock on the whole file, waiting for it or not. When
/// another open holds it and `wait` is false, fails with `EAGAIN` (Linux
/// may say `EACCES`).
pub(crate) fn lock_exclusive(file: &File, wait: bool) -> io::Result<()> {
    // Bounded: only EINTR (a signal while waiting) repeats the call.
    for _ in 0..1000 {
        match try_lock(file, wait) {
            Err(nix::errno::Errno::EINTR) => continue,
            r => return r.map_err(io::Error::from),
        }
    }
    Err(io::Error::from_raw_os_error(libc::EINTR))
}

#[cfg(target_os = "linux")]
fn try_lock(file: &File, wait: bool) -> nix::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg};
    use std::os::fd::AsRawFd;
    // The whole file: start 0, length 0 (to the end, however it grows).
    let fl = libc::flock {
        l_type: libc::F_WRLCK as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 0,
        l_len: 0,
        // Must be 0 for open file description locks.
        l_pid: 0,
    };
    let arg = if wait {
        FcntlArg::F_OFD_SETLKW(&fl)
    } else {
        FcntlArg::F_OFD_SETLK(&fl)
    };
    fcntl(file.as_raw_fd(), arg).map(drop)
}

#[cfg(target_os = "freebsd")]
fn try_lock(file: &File, wait: bool) -> nix::Result<()> {
    use std::os::fd::AsRawFd;
    let op = if wait {
        libc::LOCK_EX
    } else {
        libc::LOCK_EX | libc::LOCK_NB
    };
    // nix's safe wrapper (`Flock`) takes ownership of the file and unlocks
    // on drop; the lock here lives as long as the caller's file instead.
    // SAFETY: flock takes a descriptor the caller keeps open and an integer.
    let r = unsafe { libc::flock(file.as_raw_fd(), op) };
    nix::errno::Errno::result(r).map(drop)
}
