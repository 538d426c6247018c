//! `nbdkit_realpath` for the plugins' path parameters (`dir=`, `script=`,
//! `libdir=`, ...), with nbdkit's messages.

use std::path::PathBuf;

use nbdkit_core::backend::{Error, Result};

use crate::os::errno::io_error;

/// The absolute, resolved form of `value`: "cannot resolve a null or
/// empty path" when it is empty, "realpath: VALUE: strerror" when it
/// cannot be resolved.
pub(crate) fn realpath(value: &str) -> Result<PathBuf> {
    if value.is_empty() {
        return Err(Error::config("cannot resolve a null or empty path"));
    }
    std::fs::canonicalize(value).map_err(|e| io_error(&format!("realpath: {value}"), &e))
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn messages_are_nbdkits() {
        let msg = |v: &str| realpath(v).unwrap_err().message.unwrap();
        assert_eq!(msg(""), "cannot resolve a null or empty path");
        assert_eq!(
            msg("/nonexistent-nbdkit-test"),
            "realpath: /nonexistent-nbdkit-test: No such file or directory"
        );
        assert_eq!(realpath("/").unwrap(), PathBuf::from("/"));
    }
}
