//! READ replies whose data does not pass through a buffer of ours (Linux).
//!
//! - A plugin with a descriptor to read from ([`Handle::read_fd`], the
//!   `file` plugin without `cache=none`), served on the blocking path on a
//!   plain socket: the reply header is written, then the data goes from
//!   the file to the socket with `sendfile(2)` ([`send_file`]). The page
//!   cache's pages are refcounted by the kernel: nothing to hold.
//!
//! `NBDKIT_ZERO_COPY=0` (in the server's environment) turns this off.
//!
//! [`Handle::read_fd`]: nbdkit_core::backend::Handle::read_fd

use std::io;
use std::os::fd::RawFd;
use std::sync::OnceLock;

/// The shortest READ sent without copying: a short one costs less as one
/// write (rand-read-4k of the file plugin: 0.77x the IOPS with sendfile,
/// its header and data going out as two messages).
pub(crate) const MIN_LEN: usize = 32 * 1024;

/// Whether zero-copy replies are allowed (`NBDKIT_ZERO_COPY` is not `0`).
pub(crate) fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        cfg!(target_os = "linux")
            && std::env::var("NBDKIT_ZERO_COPY").map_or(true, |v| v.trim() != "0")
    })
}

/// How a [`send_file`] went.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum FileSent {
    /// The whole reply is out.
    Done,
    /// The header could not be written: the connection is gone.
    Gone,
    /// `sendfile` cannot send from this descriptor (EINVAL, ENOSYS...)
    /// or to this socket: the reply went out by reading the data (no
    /// point trying `sendfile` again).
    Unsupported,
    /// The data could not be sent after the header was: the connection
    /// must end (a short reply cannot be taken back).
    Broken,
}

/// `f` again while it fails with EINTR; wait for the socket to take more
/// while it fails with EAGAIN (a blocking socket with a send timeout).
fn retry(sock: RawFd, mut f: impl FnMut() -> libc::ssize_t) -> io::Result<usize> {
    loop {
        let n = f();
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => {}
            Some(libc::EAGAIN) => {
                let mut p = libc::pollfd {
                    fd: sock,
                    events: libc::POLLOUT,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                unsafe { libc::poll(&mut p, 1, -1) };
            }
            _ => return Err(e),
        }
    }
}

/// Write all of `head` to the blocking socket `sock` (with MSG_MORE: the
/// data follows), then the `count` bytes at `offset` of `fd`, with
/// `sendfile(2)`. When `sendfile` cannot send them, the rest is read with
/// `pread` and written; when even that fails, the reply is cut short and
/// [`FileSent::Broken`] says that the connection must end.
pub(crate) fn send_file(
    sock: RawFd,
    head: &[u8],
    fd: RawFd,
    offset: u64,
    count: usize,
) -> FileSent {
    let mut h = head;
    while !h.is_empty() {
        // SAFETY: `h` is valid for its length.
        let r = retry(sock, || unsafe {
            libc::send(
                sock,
                h.as_ptr().cast(),
                h.len(),
                libc::MSG_MORE | libc::MSG_NOSIGNAL,
            )
        });
        match r {
            Ok(n) if n > 0 => h = &h[n..],
            _ => return FileSent::Gone,
        }
    }
    let Ok(mut off) = libc::off_t::try_from(offset) else {
        return FileSent::Broken;
    };
    let mut left = count;
    let mut unsupported = false;
    while left > 0 {
        // Linux sends at most 0x7ffff000 bytes per call.
        let want = left.min(0x7fff_f000);
        // SAFETY: `off` is a valid off_t; the descriptors are open (the
        // plugin's stays open while its handle is, past every reply).
        match retry(sock, || unsafe { libc::sendfile(sock, fd, &mut off, want) }) {
            Ok(0) => break,
            Ok(n) => left -= n,
            Err(e) => {
                unsupported = matches!(
                    e.raw_os_error(),
                    Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP)
                );
                if !unsupported {
                    // The socket failed (the peer left): nothing to save.
                    return FileSent::Broken;
                }
                break;
            }
        }
    }
    if left == 0 {
        return FileSent::Done;
    }
    // The rest by pread and send (a file that shrank, a descriptor that
    // sendfile does not take).
    let mut buf = vec![0u8; left.min(1 << 20)];
    while left > 0 {
        let want = left.min(buf.len());
        // SAFETY: `buf` is valid for `want` bytes.
        let got = retry(sock, || unsafe {
            libc::pread(fd, buf.as_mut_ptr().cast(), want, off)
        });
        let n = match got {
            Ok(n) if n > 0 => n,
            _ => return FileSent::Broken,
        };
        let mut part = &buf[..n];
        while !part.is_empty() {
            // SAFETY: `part` is valid for its length.
            let r = retry(sock, || unsafe {
                libc::send(sock, part.as_ptr().cast(), part.len(), libc::MSG_NOSIGNAL)
            });
            match r {
                Ok(w) if w > 0 => part = &part[w..],
                _ => return FileSent::Broken,
            }
        }
        off += n as libc::off_t;
        left -= n;
    }
    if unsupported {
        FileSent::Unsupported
    } else {
        FileSent::Done
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;

    fn file_of(data: &[u8]) -> std::fs::File {
        let mut f = tempfile_in_tmp();
        f.write_all(data).unwrap();
        f
    }

    fn tempfile_in_tmp() -> std::fs::File {
        let p = std::env::temp_dir().join(format!(
            "nbdkit-zc-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&p)
            .unwrap();
        std::fs::remove_file(&p).unwrap();
        f
    }

    #[test]
    fn send_file_sends_the_header_then_the_range() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        let f = file_of(&data);
        for (offset, count) in [(0, 0), (1, 4095), (4093, 70_001), (0, 300_000)] {
            let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
            let reader = std::thread::spawn(move || {
                let mut got = Vec::new();
                b.read_to_end(&mut got).unwrap();
                got
            });
            let r = send_file(a.as_raw_fd(), b"HEAD", f.as_raw_fd(), offset, count);
            assert_eq!(r, FileSent::Done);
            drop(a);
            let got = reader.join().unwrap();
            let o = offset as usize;
            assert_eq!(&got[..4], b"HEAD");
            assert!(got[4..] == data[o..o + count], "{offset}+{count}");
        }
    }

    #[test]
    fn send_file_past_the_end_breaks_the_reply() {
        let f = file_of(&[1; 1000]);
        let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            b.read_to_end(&mut got).unwrap();
            got
        });
        let r = send_file(a.as_raw_fd(), b"H", f.as_raw_fd(), 500, 1000);
        assert_eq!(r, FileSent::Broken);
        drop(a);
        // What could be sent was: the caller ends the connection.
        assert_eq!(reader.join().unwrap().len(), 1 + 500);
    }

    #[test]
    fn send_file_from_a_pipe_falls_back_to_reading() {
        // sendfile does not read from a pipe with an offset: pread fails
        // too (ESPIPE), so the reply is cut.
        let (r, mut w) = std::io::pipe().unwrap();
        w.write_all(&[5; 10]).unwrap();
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let got = send_file(a.as_raw_fd(), b"H", r.as_raw_fd(), 0, 10);
        assert_eq!(got, FileSent::Broken);
    }
}
