//! Calls repeated while a signal interrupts them (`EINTR`).

use std::io;

/// `f` again while it fails with `EINTR`.
pub(crate) fn retry<T>(mut f: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match f() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            r => return r,
        }
    }
}

/// A system call that returns a count or -1 with `errno`, made again
/// while it fails with `EINTR`.
#[cfg(target_os = "linux")]
pub(crate) fn syscall(mut f: impl FnMut() -> libc::ssize_t) -> io::Result<usize> {
    retry(|| match usize::try_from(f()) {
        Ok(n) => Ok(n),
        Err(_) => Err(io::Error::last_os_error()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_only_interrupted_calls() {
        let mut calls = 0;
        let r = retry(|| {
            calls += 1;
            match calls {
                1 | 2 => Err(io::Error::from(io::ErrorKind::Interrupted)),
                _ => Ok(calls),
            }
        });
        assert_eq!(r.unwrap(), 3);
        let mut calls = 0;
        let r: io::Result<()> = retry(|| {
            calls += 1;
            Err(io::Error::from(io::ErrorKind::BrokenPipe))
        });
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::BrokenPipe);
        assert_eq!(calls, 1);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_failed_call_reports_errno() {
        // SAFETY: reading from an invalid descriptor touches no memory.
        let e = syscall(|| unsafe { libc::read(-1, std::ptr::null_mut(), 0) }).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EBADF));
    }
}
