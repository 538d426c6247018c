//! Block devices: sector size, rotational flag, and zeroing in the device.
//!
//! - Linux: `BLKSSZGET`, `/sys/dev/block/MAJ:MIN/queue/rotational` (or the
//!   parent disk's, for a partition), `BLKZEROOUT`.
//! - FreeBSD has no block devices: disks are character devices, which the
//!   file plugin refuses ("file is not regular or block device"), as
//!   nbdkit's does. These functions are never reached there and answer
//!   "unknown" / "unsupported".

use std::os::fd::BorrowedFd;

use nix::errno::Errno;

/// What `--dump-plugin` of the file plugin lists (as `file_NAME=yes`)
/// from this module: the ioctls nbdkit lists on Linux.
#[cfg(target_os = "linux")]
pub(crate) const DUMP_NAMES: &[&str] = &["blksszget", "blkzeroout"];
/// FreeBSD has neither ioctl.
#[cfg(target_os = "freebsd")]
pub(crate) const DUMP_NAMES: &[&str] = &[];

/// The logical sector size of a block device, when it says.
#[cfg(target_os = "linux")]
pub(crate) fn sector_size(fd: BorrowedFd<'_>) -> Option<u64> {
    use std::os::fd::AsRawFd;
    // `BLKSSZGET` is `_IO(0x12, 104)` but writes an int: a "bad" request.
    nix::ioctl_read_bad!(blksszget, libc::BLKSSZGET, libc::c_int);
    let mut size: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one int through the pointer, which points
    // to a live c_int; on any descriptor else it fails with ENOTTY.
    let r = unsafe { blksszget(fd.as_raw_fd(), &mut size) };
    (r.is_ok() && size > 0).then_some(size as u64)
}

/// FreeBSD has no block devices.
#[cfg(target_os = "freebsd")]
pub(crate) fn sector_size(_fd: BorrowedFd<'_>) -> Option<u64> {
    None
}

/// Whether the block device `rdev` says it is rotational (false when the
/// answer is not at hand).
#[cfg(target_os = "linux")]
pub(crate) fn rotational(rdev: libc::dev_t) -> bool {
    use std::io::Read;
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    let base = format!("/sys/dev/block/{major}:{minor}");
    // A whole disk has its own queue; a partition's is its parent's.
    for path in [
        format!("{base}/queue/rotational"),
        format!("{base}/../queue/rotational"),
    ] {
        let mut buf = [0u8; 16];
        if let Ok(f) = std::fs::File::open(&path) {
            if let Ok(n) = f.take(buf.len() as u64).read(&mut buf) {
                return buf[..n].trim_ascii() == b"1";
            }
        }
    }
    false
}

/// FreeBSD has no block devices.
#[cfg(target_os = "freebsd")]
pub(crate) fn rotational(_rdev: libc::dev_t) -> bool {
    false
}

/// Have the block device zero `len` bytes at `offset` (sector aligned).
/// It may write the zeroes itself, so it is not a fast zero.
#[cfg(target_os = "linux")]
pub(crate) fn zero_out(fd: BorrowedFd<'_>, offset: u64, len: u64) -> Result<(), Errno> {
    use std::os::fd::AsRawFd;
    // `BLKZEROOUT` is `_IO(0x12, 127)` (not in the libc crate) but reads
    // two u64 (start, length): a "bad" request.
    nix::ioctl_write_ptr_bad!(blkzeroout, nix::request_code_none!(0x12, 127), [u64; 2]);
    let range: [u64; 2] = [offset, len];
    // SAFETY: BLKZEROOUT reads two u64 through the pointer, which points
    // to a live array of two u64.
    unsafe { blkzeroout(fd.as_raw_fd(), &range) }.map(drop)
}

/// FreeBSD has no block devices (and no zeroing ioctl for disks).
#[cfg(target_os = "freebsd")]
pub(crate) fn zero_out(_fd: BorrowedFd<'_>, _offset: u64, _len: u64) -> Result<(), Errno> {
    Err(Errno::EOPNOTSUPP)
}
