//! Errors as plugins see them (POSIX errno values, Linux numbering) and
//! their mapping to the error numbers of the NBD protocol.

use crate::wire::consts as c;

/// A POSIX error number as a plugin reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Errno(pub i32);

impl Errno {
    /// Operation not permitted.
    pub const EPERM: Errno = Errno(1);
    /// No such file or directory.
    pub const ENOENT: Errno = Errno(2);
    /// Input/output error.
    pub const EIO: Errno = Errno(5);
    /// Bad file descriptor.
    pub const EBADF: Errno = Errno(9);
    /// Out of memory.
    pub const ENOMEM: Errno = Errno(12);
    /// Permission denied.
    pub const EACCES: Errno = Errno(13);
    /// Device or resource busy.
    pub const EBUSY: Errno = Errno(16);
    /// Invalid argument.
    pub const EINVAL: Errno = Errno(22);
    /// File too large.
    pub const EFBIG: Errno = Errno(27);
    /// No space left on device.
    pub const ENOSPC: Errno = Errno(28);
    /// Read-only file system.
    pub const EROFS: Errno = Errno(30);
    /// Broken pipe.
    pub const EPIPE: Errno = Errno(32);
    /// Range error.
    pub const ERANGE: Errno = Errno(34);
    /// Value too large for defined data type.
    pub const EOVERFLOW: Errno = Errno(75);
    /// Operation not supported (also `EOPNOTSUPP` on Linux).
    pub const ENOTSUP: Errno = Errno(95);
    /// Cannot send after transport endpoint shutdown.
    pub const ESHUTDOWN: Errno = Errno(108);
    /// Disk quota exceeded.
    pub const EDQUOT: Errno = Errno(122);

    /// The NBD error number that nbdkit sends for this errno, given whether
    /// the request carried FAST_ZERO (the only case where ENOTSUP may be
    /// sent) or DF (the only case for EOVERFLOW).
    pub fn to_nbd(self, fast_zero: bool, df: bool) -> u32 {
        match self {
            Errno(0) => 0,
            Errno::EROFS | Errno::EPERM => c::NBD_EPERM,
            Errno::EIO => c::NBD_EIO,
            Errno::ENOMEM => c::NBD_ENOMEM,
            Errno::EDQUOT | Errno::EFBIG | Errno::ENOSPC => c::NBD_ENOSPC,
            Errno::ESHUTDOWN => c::NBD_ESHUTDOWN,
            Errno::ENOTSUP if fast_zero => c::NBD_ENOTSUP,
            Errno::EOVERFLOW if df => c::NBD_EOVERFLOW,
            _ => c::NBD_EINVAL,
        }
    }

    /// The conventional text for this errno, as `strerror` gives it.
    pub fn description(self) -> &'static str {
        match self {
            Errno::EPERM => "Operation not permitted",
            Errno::ENOENT => "No such file or directory",
            Errno::EIO => "Input/output error",
            Errno::EBADF => "Bad file descriptor",
            Errno::ENOMEM => "Cannot allocate memory",
            Errno::EACCES => "Permission denied",
            Errno::EBUSY => "Device or resource busy",
            Errno::EINVAL => "Invalid argument",
            Errno::EFBIG => "File too large",
            Errno::ENOSPC => "No space left on device",
            Errno::EROFS => "Read-only file system",
            Errno::EPIPE => "Broken pipe",
            Errno::ERANGE => "Numerical result out of range",
            Errno::EOVERFLOW => "Value too large for defined data type",
            Errno::ENOTSUP => "Operation not supported",
            Errno::ESHUTDOWN => "Cannot send after transport endpoint shutdown",
            Errno::EDQUOT => "Disk quota exceeded",
            _ => "Unknown error",
        }
    }
}

impl core::fmt::Display for Errno {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.description())
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn maps_like_nbdkit() {
        assert_eq!(Errno::EROFS.to_nbd(false, false), c::NBD_EPERM);
        assert_eq!(Errno::EDQUOT.to_nbd(false, false), c::NBD_ENOSPC);
        assert_eq!(Errno::ENOTSUP.to_nbd(false, false), c::NBD_EINVAL);
        assert_eq!(Errno::ENOTSUP.to_nbd(true, false), c::NBD_ENOTSUP);
        assert_eq!(Errno::EOVERFLOW.to_nbd(false, false), c::NBD_EINVAL);
        assert_eq!(Errno::EOVERFLOW.to_nbd(false, true), c::NBD_EOVERFLOW);
        assert_eq!(Errno(9999).to_nbd(false, false), c::NBD_EINVAL);
    }
}
