//! WRITE payloads that do not pass through a buffer of ours (Linux).
//!
//! A plugin with a descriptor to write to ([`Handle::write_fd`], the `file`
//! plugin without `cache=none`), served on the blocking path on a plain
//! socket: a large write's payload goes from the socket into a pipe and
//! from the pipe into the file with `splice(2)`. The socket's buffers are
//! handed to the pipe by reference, so the data is copied once (into the
//! page cache) where reading it into memory and writing it out copies it
//! twice.
//!
//! `NBDKIT_ZERO_COPY=0` (in the server's environment) turns it off, as it
//! does the zero-copy replies ([`crate::zerocopy`]).
//!
//! [`Handle::write_fd`]: nbdkit_core::backend::Handle::write_fd

use std::io;
use std::os::fd::RawFd;

#[cfg(target_os = "linux")]
use crate::eintr::syscall;

/// The shortest WRITE received this way: a short payload usually arrived
/// with its header already, and costs less as one copy out of the buffer.
pub(crate) const MIN_LEN: usize = 64 * 1024;

/// How a [`receive`] went.
#[derive(Debug)]
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub(crate) enum Received {
    /// The whole payload is in the file.
    Done,
    /// The file took only part of it (the error says why); the rest was
    /// read from the socket and dropped, so the connection goes on.
    Failed(io::Error),
    /// Nothing was read: the socket cannot be spliced from. The caller
    /// reads the payload as usual.
    Unsupported,
    /// The socket ended or failed: the connection is over.
    Gone,
}

/// A pipe to move payloads through, one per connection.
#[cfg(target_os = "linux")]
pub(crate) struct Pipe {
    r: std::os::fd::OwnedFd,
    w: std::os::fd::OwnedFd,
    /// Its capacity: the most moved per round.
    size: usize,
}

#[cfg(not(target_os = "linux"))]
pub(crate) struct Pipe;

/// Ask for this much pipe (the kernel's default limit for anyone).
#[cfg(target_os = "linux")]
const PIPE_SIZE: libc::c_int = 1 << 20;

#[cfg(target_os = "linux")]
impl Pipe {
    /// A new pipe (`None` when the process has no descriptors left).
    pub(crate) fn new() -> Option<Pipe> {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        let mut fds = [0; 2];
        // SAFETY: two ints for the two ends.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return None;
        }
        // SAFETY: just opened, owned here.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // Best effort: a smaller pipe only means more system calls.
        // SAFETY: plain fcntl calls on an open pipe.
        let size = unsafe {
            libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE);
            libc::fcntl(w.as_raw_fd(), libc::F_GETPIPE_SZ)
        };
        Some(Pipe {
            r,
            w,
            size: usize::try_from(size).unwrap_or(0).max(4096),
        })
    }
}

#[cfg(not(target_os = "linux"))]
impl Pipe {
    pub(crate) fn new() -> Option<Pipe> {
        None
    }
}

/// Elsewhere no [`Pipe`] is made, and nothing is received this way.
#[cfg(not(target_os = "linux"))]
pub(crate) fn receive(_: RawFd, _: &Pipe, _: RawFd, _: u64, _: usize) -> Received {
    Received::Unsupported
}

/// `pwrite(2)` all of `buf` to `offset` of `fd` (the plugin's, open for as
/// long as its handle is).
pub(crate) fn write_at(fd: RawFd, buf: &[u8], offset: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    if buf.is_empty() {
        return Ok(());
    }
    // SAFETY: the caller's `fd` stays open past this call; ManuallyDrop
    // never closes it.
    let file = std::mem::ManuallyDrop::new(unsafe {
        <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd)
    });
    file.write_all_at(buf, offset)
}

/// Move the next `len` bytes of the blocking socket `sock` to `offset` of
/// `fd`, through `pipe` (empty before and after).
#[cfg(target_os = "linux")]
pub(crate) fn receive(sock: RawFd, pipe: &Pipe, fd: RawFd, offset: u64, len: usize) -> Received {
    use std::os::fd::AsRawFd;
    let (pr, pw) = (pipe.r.as_raw_fd(), pipe.w.as_raw_fd());
    let mut done = 0;
    let mut failed = None;
    while done < len {
        let want = (len - done).min(pipe.size);
        // SAFETY: open descriptors, no offsets.
        let got = syscall(|| unsafe {
            libc::splice(
                sock,
                std::ptr::null_mut(),
                pw,
                std::ptr::null_mut(),
                want,
                libc::SPLICE_F_MOVE,
            )
        });
        let n = match got {
            Ok(0) => return Received::Gone,
            Ok(n) => n,
            Err(e)
                if done == 0 && matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS)) =>
            {
                return Received::Unsupported;
            }
            Err(_) => return Received::Gone,
        };
        if failed.is_none() {
            if let Err(e) = pipe_to_file(pr, fd, offset + done as u64, n) {
                failed = Some(e);
            }
        }
        if failed.is_some() && !drain(pr, n) {
            return Received::Gone;
        }
        done += n;
    }
    match failed {
        None => Received::Done,
        Some(e) => Received::Failed(e),
    }
}

/// Move `n` bytes from the pipe `pr` to `offset` of `fd`. A file that
/// cannot be spliced to is written with `pwrite` from a buffer instead.
/// On an error, what is left in the pipe is left there.
#[cfg(target_os = "linux")]
fn pipe_to_file(pr: RawFd, fd: RawFd, offset: u64, n: usize) -> io::Result<()> {
    let Ok(mut off) = libc::loff_t::try_from(offset) else {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    };
    let mut left = n;
    while left > 0 {
        // SAFETY: open descriptors; `off` is a valid loff_t the kernel
        // advances.
        let moved = syscall(|| unsafe {
            libc::splice(
                pr,
                std::ptr::null_mut(),
                fd,
                &mut off,
                left,
                libc::SPLICE_F_MOVE,
            )
        });
        match moved {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
            Ok(k) => left -= k,
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS)) => {
                return copy_to_file(pr, fd, off as u64, left);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Read `n` bytes from the pipe `pr` and `pwrite` them to `offset` of
/// `fd`. On an error, what is left in the pipe is left there.
#[cfg(target_os = "linux")]
fn copy_to_file(pr: RawFd, fd: RawFd, offset: u64, n: usize) -> io::Result<()> {
    let mut buf = vec![0u8; n.min(1 << 20)];
    let mut done = 0;
    while done < n {
        let want = (n - done).min(buf.len());
        // SAFETY: `buf` is valid for `want` bytes.
        let got = syscall(|| unsafe { libc::read(pr, buf.as_mut_ptr().cast(), want) })?;
        if got == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        write_at(fd, &buf[..got], offset + done as u64)?;
        done += got;
    }
    Ok(())
}

/// Read and drop what the pipe `pr` holds of `n` bytes just moved in:
/// whether it could.
#[cfg(target_os = "linux")]
fn drain(pr: RawFd, n: usize) -> bool {
    let mut buf = [0u8; 16 * 1024];
    let mut left = n;
    // SAFETY: FIONREAD writes one int.
    let mut held: libc::c_int = 0;
    if unsafe { libc::ioctl(pr, libc::FIONREAD, &mut held) } == 0 {
        left = usize::try_from(held).unwrap_or(0).min(n);
    }
    while left > 0 {
        let want = left.min(buf.len());
        // SAFETY: `buf` is valid for `want` bytes.
        match syscall(|| unsafe { libc::read(pr, buf.as_mut_ptr().cast(), want) }) {
            Ok(0) | Err(_) => return false,
            Ok(k) => left -= k,
        }
    }
    true
}

#[cfg(all(test, target_os = "linux"))]
mod test {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    fn tmpdir() -> crate::os::tmpfile::TempDir {
        crate::os::tmpfile::TempDir::new_in(&std::env::temp_dir(), "nbdkit-splice-write-test")
            .unwrap()
    }

    /// A socket whose peer sends `data`, then `b"next"`, on a thread of its
    /// own (joined by the caller).
    fn sending(data: Vec<u8>) -> (UnixStream, std::thread::JoinHandle<UnixStream>) {
        let (mut a, b) = UnixStream::pair().unwrap();
        let peer = std::thread::spawn(move || {
            a.write_all(&data).unwrap();
            a.write_all(b"next").unwrap();
            a
        });
        (b, peer)
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 4093) as u8).collect()
    }

    #[test]
    fn moves_a_payload_into_a_file_at_its_offset() {
        let dir = tmpdir();
        let path = dir.path().join("disk");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        file.set_len(8 << 20).unwrap();
        // More than the pipe holds, and bytes of the next request after it.
        let data = pattern(3 << 20);
        let (b, peer) = sending(data.clone());
        let pipe = Pipe::new().unwrap();
        let r = receive(b.as_raw_fd(), &pipe, file.as_raw_fd(), 4096 + 1, data.len());
        assert!(matches!(r, Received::Done), "{r:?}");
        let _a = peer.join().unwrap();
        let on_disk = std::fs::read(&path).unwrap();
        assert!(on_disk[..4097].iter().all(|&c| c == 0));
        assert!(on_disk[4097..4097 + data.len()] == data[..]);
        // The socket is left right after the payload.
        let mut rest = [0u8; 4];
        std::io::Read::read_exact(&mut &b, &mut rest).unwrap();
        assert_eq!(&rest, b"next");
    }

    #[test]
    fn a_file_that_fails_gets_the_error_and_the_payload_is_consumed() {
        let dir = tmpdir();
        let path = dir.path().join("ro");
        std::fs::write(&path, b"x").unwrap();
        // Open for reading only: every write fails with EBADF.
        let file = std::fs::File::open(&path).unwrap();
        let data = pattern(300 * 1024);
        let (b, peer) = sending(data.clone());
        let pipe = Pipe::new().unwrap();
        let r = receive(b.as_raw_fd(), &pipe, file.as_raw_fd(), 0, data.len());
        let Received::Failed(e) = r else {
            panic!("{r:?}")
        };
        assert_eq!(e.raw_os_error(), Some(libc::EBADF));
        let _a = peer.join().unwrap();
        let mut rest = [0u8; 4];
        std::io::Read::read_exact(&mut &b, &mut rest).unwrap();
        assert_eq!(&rest, b"next");
    }

    #[test]
    fn the_end_of_the_socket_is_gone() {
        let (mut a, b) = UnixStream::pair().unwrap();
        let dir = tmpdir();
        let file = std::fs::File::create(dir.path().join("disk")).unwrap();
        a.write_all(&[1u8; 1000]).unwrap();
        drop(a);
        let pipe = Pipe::new().unwrap();
        let r = receive(b.as_raw_fd(), &pipe, file.as_raw_fd(), 0, 100 * 1024);
        assert!(matches!(r, Received::Gone), "{r:?}");
    }
}
