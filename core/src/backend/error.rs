use alloc::string::String;
use core::fmt;

use crate::errno::Errno;

/// An error from a plugin or filter: the errno that becomes the NBD error
/// on the wire, and an optional message for the log (nbdkit_error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    /// The POSIX error number.
    pub errno: Errno,
    /// What went wrong, for the server's log.
    pub message: Option<String>,
}

/// The result of every plugin and filter callback.
pub type Result<T> = core::result::Result<T, Error>;

impl Error {
    /// An error with only an errno.
    pub fn new(errno: Errno) -> Self {
        Error {
            errno,
            message: None,
        }
    }

    /// An error with an errno and a message.
    pub fn msg(errno: Errno, message: impl Into<String>) -> Self {
        Error {
            errno,
            message: Some(message.into()),
        }
    }

    /// A configuration or other error that is reported with `EINVAL`.
    pub fn config(message: impl Into<String>) -> Self {
        Error::msg(Errno::EINVAL, message)
    }
}

impl From<Errno> for Error {
    fn from(e: Errno) -> Self {
        Error::new(e)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.message {
            Some(m) => f.write_str(m),
            None => write!(f, "{}", self.errno),
        }
    }
}
