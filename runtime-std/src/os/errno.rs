//! Error numbers: the core's [`Errno`] uses Linux numbering everywhere
//! (it is what plugins and filters report, and what the server maps to
//! NBD errors); the operating system's own numbers, which compiled C
//! plugins and filters use too, are converted here, at the boundary,
//! whenever one becomes an [`Errno`] or back.
//!
//! - Linux: the same numbers; both conversions are the identity.
//! - FreeBSD: numbers 1 to 34 are the same except 11 (`EDEADLK`, Linux
//!   `EAGAIN`); the rest differ (`EOPNOTSUPP` is 45, not 95; `EDQUOT` 69,
//!   not 122; ...). They are converted by name. The few FreeBSD errors
//!   Linux has no name for (`EAUTH`, `EINTEGRITY`, `ECAPMODE`, ...) become
//!   `EINVAL`, which is also the NBD error nbdkit sends for them.

use nbdkit_core::errno::Errno;

/// The core's [`Errno`] for an error number from the operating system.
#[cfg(target_os = "linux")]
pub(crate) fn from_os(code: i32) -> Errno {
    Errno(code)
}

/// The operating system's error number for a core [`Errno`].
#[cfg(target_os = "linux")]
pub(crate) fn to_os(e: Errno) -> i32 {
    e.0
}

/// Both directions of the FreeBSD conversion from one table of
/// `NAME = Linux number` pairs (the FreeBSD number is `libc::NAME`).
#[cfg(target_os = "freebsd")]
macro_rules! by_name {
    ($($name:ident = $linux:literal,)*) => {
        /// The core's [`Errno`] for an error number from the operating system.
        pub(crate) fn from_os(code: i32) -> Errno {
            match code {
                $(libc::$name => Errno($linux),)*
                _ => Errno::EINVAL,
            }
        }

        /// The operating system's error number for a core [`Errno`].
        pub(crate) fn to_os(e: Errno) -> i32 {
            match e.0 {
                $($linux => libc::$name,)*
                _ => libc::EIO,
            }
        }
    };
}

// ENOATTR is FreeBSD's name for what Linux calls ENODATA (61).
#[cfg(target_os = "freebsd")]
#[rustfmt::skip]
by_name! {
    EPERM = 1, ENOENT = 2, ESRCH = 3, EINTR = 4, EIO = 5, ENXIO = 6, E2BIG = 7, ENOEXEC = 8,
    EBADF = 9, ECHILD = 10, EDEADLK = 35, ENOMEM = 12, EACCES = 13, EFAULT = 14, ENOTBLK = 15,
    EBUSY = 16, EEXIST = 17, EXDEV = 18, ENODEV = 19, ENOTDIR = 20, EISDIR = 21, EINVAL = 22,
    ENFILE = 23, EMFILE = 24, ENOTTY = 25, ETXTBSY = 26, EFBIG = 27, ENOSPC = 28, ESPIPE = 29,
    EROFS = 30, EMLINK = 31, EPIPE = 32, EDOM = 33, ERANGE = 34, EAGAIN = 11,
    EINPROGRESS = 115, EALREADY = 114, ENOTSOCK = 88, EDESTADDRREQ = 89, EMSGSIZE = 90,
    EPROTOTYPE = 91, ENOPROTOOPT = 92, EPROTONOSUPPORT = 93, ESOCKTNOSUPPORT = 94,
    EOPNOTSUPP = 95, EPFNOSUPPORT = 96, EAFNOSUPPORT = 97, EADDRINUSE = 98, EADDRNOTAVAIL = 99,
    ENETDOWN = 100, ENETUNREACH = 101, ENETRESET = 102, ECONNABORTED = 103, ECONNRESET = 104,
    ENOBUFS = 105, EISCONN = 106, ENOTCONN = 107, ESHUTDOWN = 108, ETOOMANYREFS = 109,
    ETIMEDOUT = 110, ECONNREFUSED = 111, ELOOP = 40, ENAMETOOLONG = 36, EHOSTDOWN = 112,
    EHOSTUNREACH = 113, ENOTEMPTY = 39, EUSERS = 87, EDQUOT = 122, ESTALE = 116, EREMOTE = 66,
    ENOLCK = 37, ENOSYS = 38, EIDRM = 43, ENOMSG = 42, EOVERFLOW = 75, ECANCELED = 125,
    EILSEQ = 84, ENOATTR = 61, EBADMSG = 74, EMULTIHOP = 72, ENOLINK = 67, EPROTO = 71,
    ENOTRECOVERABLE = 131, EOWNERDEAD = 130,
}

/// The C library's text for an error number, as `strerror`/`%m` give it.
pub(crate) fn strerror(code: i32) -> String {
    let text = std::io::Error::from_raw_os_error(code).to_string();
    match text.strip_suffix(&format!(" (os error {code})")) {
        Some(t) => t.to_string(),
        None => text,
    }
}

/// An error from the operating system as nbdkit reports one: its errno,
/// and `what: strerror`.
pub(crate) fn os_error(what: &str, code: i32) -> nbdkit_core::backend::Error {
    nbdkit_core::backend::Error::msg(from_os(code), format!("{what}: {}", strerror(code)))
}

/// [`os_error`] for a `nix` error.
pub(crate) fn nix_error(what: &str, e: nix::errno::Errno) -> nbdkit_core::backend::Error {
    os_error(what, e as i32)
}

/// [`os_error`] for a `std::io::Error` (EIO with its text when it carries
/// no error number).
pub(crate) fn io_error(what: &str, e: &std::io::Error) -> nbdkit_core::backend::Error {
    match e.raw_os_error() {
        Some(code) => os_error(what, code),
        None => nbdkit_core::backend::Error::msg(Errno::EIO, format!("{what}: {e}")),
    }
}

#[cfg(test)]
mod test {
    use super::*;

    /// The errors the core tells apart (for NBD error codes) arrive as the
    /// core's constants, whatever the operating system numbers them.
    #[test]
    fn core_constants_from_the_os() {
        for (os, core) in [
            (libc::EPERM, Errno::EPERM),
            (libc::EIO, Errno::EIO),
            (libc::ENOMEM, Errno::ENOMEM),
            (libc::EINVAL, Errno::EINVAL),
            (libc::EFBIG, Errno::EFBIG),
            (libc::ENOSPC, Errno::ENOSPC),
            (libc::EROFS, Errno::EROFS),
            (libc::EOVERFLOW, Errno::EOVERFLOW),
            (libc::EOPNOTSUPP, Errno::ENOTSUP),
            (libc::ENOTSUP, Errno::ENOTSUP),
            (libc::ESHUTDOWN, Errno::ESHUTDOWN),
            (libc::EDQUOT, Errno::EDQUOT),
        ] {
            assert_eq!(from_os(os), core, "os errno {os}");
            assert_eq!(to_os(core), os, "{core:?}");
        }
    }

    /// Every OS errno with a Linux name goes there and back unchanged.
    #[test]
    fn round_trip() {
        for code in 1..200 {
            let e = from_os(code);
            if e != Errno::EINVAL || code == libc::EINVAL {
                assert_eq!(to_os(e), code, "os errno {code}");
            }
        }
    }
}
