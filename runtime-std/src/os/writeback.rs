//! Writing a range of a file back to the disk without waiting for the rest
//! of the file (`cache=none` of the file plugin), before dropping it from
//! the page cache with `POSIX_FADV_DONTNEED` (which is portable).
//!
//! - Linux: `sync_file_range(2)`.
//! - FreeBSD has no such call: nothing is done, and `cache=none` is only
//!   the `POSIX_FADV_DONTNEED` advice, which there moves the range's pages
//!   to the front of the inactive queue (dirty ones are written back by the
//!   syncer as usual, then reclaimed first).

use std::os::fd::BorrowedFd;

/// Start writing the range back; do not wait.
#[cfg(target_os = "linux")]
pub(crate) fn start(fd: BorrowedFd<'_>, offset: i64, len: i64) {
    use std::os::fd::AsRawFd;
    let fd = fd.as_raw_fd();
    // SAFETY: sync_file_range takes no pointers. Advisory: the result is
    // not needed.
    unsafe { libc::sync_file_range(fd, offset, len, libc::SYNC_FILE_RANGE_WRITE) };
}

/// Start writing the range back; do not wait.
#[cfg(target_os = "freebsd")]
pub(crate) fn start(_fd: BorrowedFd<'_>, _offset: i64, _len: i64) {}

/// Write the range back and wait until it is on the disk.
#[cfg(target_os = "linux")]
pub(crate) fn wait(fd: BorrowedFd<'_>, offset: i64, len: i64) {
    use std::os::fd::AsRawFd;
    let fd = fd.as_raw_fd();
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
        | libc::SYNC_FILE_RANGE_WRITE
        | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    // SAFETY: sync_file_range takes no pointers. Advisory: the result is
    // not needed.
    unsafe { libc::sync_file_range(fd, offset, len, flags) };
}

/// Write the range back and wait until it is on the disk.
#[cfg(target_os = "freebsd")]
pub(crate) fn wait(_fd: BorrowedFd<'_>, _offset: i64, _len: i64) {}
