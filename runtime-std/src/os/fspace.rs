//! File space: punching holes (trim, and zeroing that may trim), zeroing a
//! range in place, and allocating a range again.
//!
//! - Linux: `fallocate(2)` with `FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE`,
//!   `FALLOC_FL_ZERO_RANGE`, and mode 0.
//! - FreeBSD (14 or later): `fspacectl(2)` with `SPACECTL_DEALLOC` punches
//!   holes (a file system without native deallocation has the kernel write
//!   zeroes instead, which is correct but not fast); there is no zero-range
//!   call; `posix_fallocate(2)` allocates (ZFS refuses it with `EINVAL`,
//!   reported here as unsupported).
//!
//! Every function takes a byte range that the caller has checked fits in
//! `off_t`, and fails with the operating system's errno;
//! [`is_unsupported`] says which errors mean "this file system cannot".

use std::os::fd::{AsRawFd, BorrowedFd};

use nix::errno::Errno;

/// What `--dump-plugin` of the file plugin lists (as `file_NAME=yes`)
/// from this module: the `fallocate` modes nbdkit lists on Linux.
#[cfg(target_os = "linux")]
pub(crate) const DUMP_NAMES: &[&str] = &["falloc_fl_punch_hole", "falloc_fl_zero_range"];
/// FreeBSD has none of the `fallocate` modes nbdkit lists.
#[cfg(target_os = "freebsd")]
pub(crate) const DUMP_NAMES: &[&str] = &[];

/// Whether `e` means the operation is not supported here (by the file
/// system, the device or the operating system), as opposed to a failure.
pub(crate) fn is_unsupported(e: Errno) -> bool {
    matches!(e, Errno::EOPNOTSUPP | Errno::ENODEV | Errno::ENOSYS)
}

/// Deallocate `len` bytes at `offset`, keeping the file size: the range
/// reads as zeroes afterwards.
#[cfg(target_os = "linux")]
pub(crate) fn punch_hole(fd: BorrowedFd<'_>, offset: i64, len: i64) -> Result<(), Errno> {
    use nix::fcntl::{fallocate, FallocateFlags as F};
    let mode = F::FALLOC_FL_PUNCH_HOLE | F::FALLOC_FL_KEEP_SIZE;
    fallocate(fd.as_raw_fd(), mode, offset, len)
}

/// Deallocate `len` bytes at `offset`, keeping the file size: the range
/// reads as zeroes afterwards.
#[cfg(target_os = "freebsd")]
pub(crate) fn punch_hole(fd: BorrowedFd<'_>, offset: i64, len: i64) -> Result<(), Errno> {
    nix::fcntl::fspacectl_all(fd.as_raw_fd(), offset, len)
}

/// Zero `len` bytes at `offset` in place, leaving them allocated.
#[cfg(target_os = "linux")]
pub(crate) fn zero_range(fd: BorrowedFd<'_>, offset: i64, len: i64) -> Result<(), Errno> {
    use nix::fcntl::{fallocate, FallocateFlags};
    fallocate(
        fd.as_raw_fd(),
        FallocateFlags::FALLOC_FL_ZERO_RANGE,
        offset,
        len,
    )
}

/// FreeBSD has no call that zeroes a range in place.
#[cfg(target_os = "freebsd")]
pub(crate) fn zero_range(_fd: BorrowedFd<'_>, _offset: i64, _len: i64) -> Result<(), Errno> {
    Err(Errno::EOPNOTSUPP)
}

/// Allocate `len` bytes at `offset` (holes in the range become allocated
/// zeroes), keeping data already there.
#[cfg(target_os = "linux")]
pub(crate) fn allocate(fd: BorrowedFd<'_>, offset: i64, len: i64) -> Result<(), Errno> {
    use nix::fcntl::{fallocate, FallocateFlags};
    // Not posix_fallocate: glibc's falls back to writing zeroes itself.
    fallocate(fd.as_raw_fd(), FallocateFlags::empty(), offset, len)
}

/// Allocate `len` bytes at `offset` (holes in the range become allocated
/// zeroes), keeping data already there.
#[cfg(target_os = "freebsd")]
pub(crate) fn allocate(fd: BorrowedFd<'_>, offset: i64, len: i64) -> Result<(), Errno> {
    match nix::fcntl::posix_fallocate(fd.as_raw_fd(), offset, len) {
        // The range is valid (the caller checked it), so EINVAL is the
        // file system saying it cannot (ZFS, copy-on-write).
        Err(Errno::EINVAL) => Err(Errno::EOPNOTSUPP),
        r => r,
    }
}
