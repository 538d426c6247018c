//! A failed script's errno and message, and the errors the plugin gives
//! about scripts that misbehave.

use super::*;
use std::path::Path;

use nbdkit_core::backend::Error;
use nbdkit_core::errno::Errno;

pub(super) use crate::os::errno::strerror;

/// The errno names a script may print first on stderr: those the NBD
/// protocol has errors for, and those nbdkit's server maps specially.
pub(super) const ERRNO_NAMES: &[(&str, Errno)] = &[
    ("EPERM", Errno::EPERM),
    ("EIO", Errno::EIO),
    ("ENOMEM", Errno::ENOMEM),
    ("EINVAL", Errno::EINVAL),
    ("ENOSPC", Errno::ENOSPC),
    ("EOVERFLOW", Errno::EOVERFLOW),
    ("ESHUTDOWN", Errno::ESHUTDOWN),
    ("ENOTSUP", Errno::ENOTSUP),
    ("EOPNOTSUPP", Errno::ENOTSUP),
    ("EROFS", Errno::EROFS),
    ("EDQUOT", Errno::EDQUOT),
    ("EFBIG", Errno::EFBIG),
];

/// Split a failed script's stderr into the errno it names (EIO when it
/// names none) and the message: what follows the name and any whitespace,
/// up to the end of the first line. `None` when stderr is empty.
pub(crate) fn parse_error(stderr: &[u8]) -> Option<(Errno, String)> {
    if stderr.is_empty() {
        return None;
    }
    let mut errno = Errno::EIO;
    let mut rest = stderr;
    for (name, e) in ERRNO_NAMES {
        let n = name.len();
        if stderr.len() >= n
            && stderr[..n].eq_ignore_ascii_case(name.as_bytes())
            && stderr.get(n).map_or(true, |c| is_c_space(*c))
        {
            errno = *e;
            rest = &stderr[n..];
            while let [c, tail @ ..] = rest {
                if !is_c_space(*c) {
                    break;
                }
                rest = tail;
            }
            break;
        }
    }
    let line = rest.split(|c| *c == b'\n').next().unwrap_or_default();
    Some((errno, String::from_utf8_lossy(line).into_owned()))
}

/// isspace(3) in the C locale.
pub(super) fn is_c_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

/// The error for a script that failed.
pub(crate) fn script_error(argv0: &Path, reply: &Reply) -> Error {
    match parse_error(&reply.err) {
        Some((errno, msg)) => Error::msg(errno, format!("{}: {msg}", argv0.display())),
        None => Error::msg(
            Errno::EIO,
            format!(
                "{}: script exited with error, but did not print an error message on stderr",
                argv0.display()
            ),
        ),
    }
}

/// An EIO error about a script's behaviour.
pub(super) fn protocol_error(argv0: &Path, what: impl std::fmt::Display) -> Error {
    Error::msg(Errno::EIO, format!("{}: {what}", argv0.display()))
}

/// The error for exit status 3 from a method that does not return a
/// boolean.
pub(super) fn unexpected_false(argv0: &Path, method: &str) -> Error {
    protocol_error(
        argv0,
        format_args!("{method} method returned unexpected code (3/false)"),
    )
}
