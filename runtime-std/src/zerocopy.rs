//! READ replies whose data does not pass through a buffer of ours (Linux).
//!
//! - A plugin with a descriptor to read from ([`Handle::read_fd`], the
//!   `file` plugin without `cache=none`), served on the blocking path on a
//!   plain socket: the reply header is written, then the data goes from
//!   the file to the socket with `sendfile(2)` ([`send_file`]). The page
//!   cache's pages are refcounted by the kernel: nothing to hold.
//!
//! - The memory plugin's pages on a Unix socket (the async path): see
//!   [`splice`].
//!
//! `NBDKIT_ZERO_COPY=0` (in the server's environment) turns both off.
//!
//! [`Handle::read_fd`]: nbdkit_core::backend::Handle::read_fd

#[cfg_attr(not(target_os = "linux"), allow(unused_imports))]
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
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
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
#[cfg(target_os = "linux")]
fn retry(sock: RawFd, mut f: impl FnMut() -> libc::ssize_t) -> io::Result<usize> {
    loop {
        match crate::eintr::syscall(&mut f) {
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                let mut p = libc::pollfd {
                    fd: sock,
                    events: libc::POLLOUT,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                unsafe { libc::poll(&mut p, 1, -1) };
            }
            r => return r,
        }
    }
}

/// Elsewhere [`enabled`] is false, and nothing is sent this way.
#[cfg(not(target_os = "linux"))]
pub(crate) fn send_file(
    _sock: RawFd,
    _head: &[u8],
    _fd: RawFd,
    _offset: u64,
    _count: usize,
) -> FileSent {
    FileSent::Unsupported
}

/// Write all of `head` to the blocking socket `sock` (with MSG_MORE: the
/// data follows), then the `count` bytes at `offset` of `fd`, with
/// `sendfile(2)`. When `sendfile` cannot send them, the rest is read with
/// `pread` and written; when even that fails, the reply is cut short and
/// [`FileSent::Broken`] says that the connection must end.
#[cfg(target_os = "linux")]
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

#[cfg(all(test, target_os = "linux"))]
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

/// The memory plugin's pages spliced into a Unix socket: `vmsplice(2)` into
/// a pipe of the connection, `splice(2)` from the pipe into the socket.
/// The socket then holds the pages themselves, not copies, until the
/// client reads them: the lent pages ([`Lent`]) are kept in a queue until
/// `SIOCOUTQ` (what the socket holds that the peer has not read, in
/// bytes of memory: at least the bytes themselves) says they were read.
/// Until then a write to those pages goes to a copy (copy-on-write), so
/// the client reads them as they were at the read.
#[cfg(target_os = "linux")]
pub(crate) mod splice {
    use std::collections::VecDeque;
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
    use std::time::{Duration, Instant};

    use nbdkit_core::backend::{Lent, Segment};
    use tokio::io::Interest;
    use tokio::net::UnixStream;

    /// The pipe's size: a 1 MiB read of 32 KiB pages not aligned to the
    /// machine's pages takes 288 of its slots.
    const PIPE_SIZE: libc::c_int = 1 << 20;
    /// Most slices given to one vmsplice.
    const IOV_MAX: usize = 64;
    /// How long a connection that ended waits for its peer to read what
    /// the socket still holds of lent pages; past it, they are leaked.
    const DRAIN_WAIT: Duration = Duration::from_secs(30);

    /// Memory given to the kernel is detached before it is freed: the
    /// pages the kernel holds keep their bytes, the reused memory gets
    /// fresh ones.
    fn detach(p: *mut u8, len: usize) {
        // SAFETY: a page-aligned allocation of `len` bytes about to be
        // freed: nothing reads it any more, and the next use of the
        // memory gets zero-filled pages.
        unsafe { libc::madvise(p.cast(), len, libc::MADV_DONTNEED) };
    }

    /// `vmsplice(2)` of `parts` (not empty) into the pipe `w`.
    fn vmsplice(w: RawFd, parts: &[&[u8]]) -> io::Result<usize> {
        let mut iov = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; IOV_MAX];
        let k = parts.len().min(IOV_MAX);
        for (v, p) in iov.iter_mut().zip(&parts[..k]) {
            v.iov_base = p.as_ptr() as *mut libc::c_void;
            v.iov_len = p.len();
        }
        // SAFETY: every iovec points into memory that stays as it is while
        // the kernel may read it (see the module).
        let n = unsafe { libc::vmsplice(w, iov.as_ptr(), k, libc::SPLICE_F_NONBLOCK) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    /// A connection's splicing state.
    pub(crate) struct Splicer {
        sock: RawFd,
        pipe_r: OwnedFd,
        pipe_w: OwnedFd,
        /// Bytes written into the socket so far (every write counts).
        pub(crate) sent: u64,
        /// Lent bytes, each with the count of bytes sent once they were.
        queue: VecDeque<(u64, Lent)>,
        /// Bytes in the pipe.
        in_pipe: usize,
    }

    /// What the socket holds that its peer has not read (memory, at least
    /// the bytes).
    fn outq(sock: RawFd) -> Option<u64> {
        let mut n: libc::c_int = 0;
        // SAFETY: SIOCOUTQ writes one int.
        let r = unsafe { libc::ioctl(sock, libc::TIOCOUTQ, &mut n) };
        (r == 0 && n >= 0).then_some(n as u64)
    }

    impl Splicer {
        /// For the Unix socket `sock` (`None`: no pipe to be had).
        pub(crate) fn new(sock: RawFd) -> Option<Box<Splicer>> {
            nbdkit_core::backend::set_free_hook(detach);
            let mut fds = [0; 2];
            // SAFETY: two ints for the two ends.
            if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
                return None;
            }
            // SAFETY: just opened, owned here.
            let (pipe_r, pipe_w) =
                unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
            // Best effort: a smaller pipe only means more system calls.
            // SAFETY: plain fcntl.
            unsafe { libc::fcntl(fds[1], libc::F_SETPIPE_SZ, PIPE_SIZE) };
            Some(Box::new(Splicer {
                sock,
                pipe_r,
                pipe_w,
                sent: 0,
                queue: VecDeque::new(),
                in_pipe: 0,
            }))
        }

        /// How many replies' lent bytes are held.
        #[cfg(test)]
        pub(crate) fn held(&self) -> usize {
            self.queue.len()
        }

        /// Let go of the lent bytes the peer has read.
        pub(crate) fn release(&mut self) {
            if self.queue.is_empty() {
                return;
            }
            let Some(q) = outq(self.sock) else { return };
            let read = self.sent.saturating_sub(q);
            while self.queue.front().is_some_and(|(end, _)| *end <= read) {
                self.queue.pop_front();
            }
        }

        /// Move what the pipe holds into the socket.
        async fn drain(&mut self, sock: &UnixStream) -> io::Result<()> {
            while self.in_pipe > 0 {
                let (r, w, n) = (self.pipe_r.as_raw_fd(), self.sock, self.in_pipe);
                let got = sock.try_io(Interest::WRITABLE, || {
                    // SAFETY: valid descriptors, no offsets.
                    let k = unsafe {
                        libc::splice(
                            r,
                            std::ptr::null_mut(),
                            w,
                            std::ptr::null_mut(),
                            n,
                            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
                        )
                    };
                    if k < 0 {
                        Err(io::Error::last_os_error())
                    } else {
                        Ok(k as usize)
                    }
                });
                match got {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(k) => {
                        self.in_pipe -= k;
                        self.sent += k as u64;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => sock.writable().await?,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        }

        /// Copy `bytes` into the pipe.
        async fn copy(&mut self, sock: &UnixStream, mut bytes: &[u8]) -> io::Result<()> {
            while !bytes.is_empty() {
                // SAFETY: `bytes` is valid for its length.
                let n = unsafe {
                    libc::write(self.pipe_w.as_raw_fd(), bytes.as_ptr().cast(), bytes.len())
                };
                if n > 0 {
                    bytes = &bytes[n as usize..];
                    self.in_pipe += n as usize;
                    continue;
                }
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::WouldBlock => self.drain(sock).await?,
                    io::ErrorKind::Interrupted => {}
                    _ => return Err(e),
                }
            }
            Ok(())
        }

        /// Hand `parts` to the pipe by reference.
        async fn give(&mut self, sock: &UnixStream, parts: &mut [&[u8]]) -> io::Result<()> {
            let mut at = 0;
            while at < parts.len() {
                let n = vmsplice(self.pipe_w.as_raw_fd(), &parts[at..]);
                let mut n = match n {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        self.drain(sock).await?;
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                };
                self.in_pipe += n;
                while at < parts.len() && n >= parts[at].len() {
                    n -= parts[at].len();
                    at += 1;
                }
                if n > 0 {
                    parts[at] = &parts[at][n..];
                }
                if self.in_pipe >= PIPE_SIZE as usize / 2 {
                    self.drain(sock).await?;
                }
            }
            Ok(())
        }

        /// Send `held`, `head`, then `data` (its pages by reference, the
        /// rest copied); `data` is kept until the peer has read it, even
        /// when this fails (the socket may hold part of it).
        pub(crate) async fn send(
            &mut self,
            sock: &UnixStream,
            held: &[u8],
            head: &[u8],
            data: &Lent,
        ) -> io::Result<()> {
            self.release();
            let r = self.send_parts(sock, held, head, data).await;
            self.queue
                .push_back((self.sent + self.in_pipe as u64, data.clone()));
            if r.is_err() {
                // What the pipe holds is never sent: the connection ends.
                self.in_pipe = 0;
            }
            r
        }

        async fn send_parts(
            &mut self,
            sock: &UnixStream,
            held: &[u8],
            head: &[u8],
            data: &Lent,
        ) -> io::Result<()> {
            self.copy(sock, held).await?;
            self.copy(sock, head).await?;
            let mut iov: [&[u8]; IOV_MAX] = [&[]; IOV_MAX];
            let mut n = 0;
            for s in data.segments() {
                match s {
                    Segment::Bytes { bytes, start, len } if bytes.give_to_kernel() => {
                        iov[n] = &bytes.bytes()[*start..*start + *len];
                        n += 1;
                        if n == IOV_MAX {
                            self.give(sock, &mut iov[..n]).await?;
                            n = 0;
                        }
                    }
                    Segment::Bytes { bytes, start, len } => {
                        self.give(sock, &mut iov[..n]).await?;
                        n = 0;
                        self.copy(sock, &bytes.bytes()[*start..*start + *len])
                            .await?;
                    }
                    Segment::Zeroes(mut z) => {
                        self.give(sock, &mut iov[..n]).await?;
                        n = 0;
                        while z > 0 {
                            let k = z.min(nbdkit_core::backend::ZERO_PAGE_LEN);
                            self.copy(sock, &nbdkit_core::backend::ZERO_PAGE[..k])
                                .await?;
                            z -= k;
                        }
                    }
                }
            }
            self.give(sock, &mut iov[..n]).await?;
            self.drain(sock).await
        }
    }

    impl Drop for Splicer {
        fn drop(&mut self) {
            self.release();
            if self.queue.is_empty() {
                return;
            }
            // The peer has not read everything yet: wait for it (or for
            // it to close, which frees what it did not read) on a thread
            // of its own, on a descriptor of our own.
            // SAFETY: plain dup of an open descriptor.
            let fd = unsafe { libc::fcntl(self.sock, libc::F_DUPFD_CLOEXEC, 0) };
            let queue = std::mem::take(&mut self.queue);
            if fd < 0 {
                std::mem::forget(queue);
                return;
            }
            // SAFETY: just duplicated, owned here.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            let sent = self.sent;
            let spawned = std::thread::Builder::new()
                .name("splice-drain".into())
                .spawn(move || {
                    let mut queue = queue;
                    let until = Instant::now() + DRAIN_WAIT;
                    while Instant::now() < until {
                        let Some(q) = outq(fd.as_raw_fd()) else { break };
                        let read = sent.saturating_sub(q);
                        while queue.front().is_some_and(|(end, _)| *end <= read) {
                            queue.pop_front();
                        }
                        if queue.is_empty() {
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    // The kernel may still send these pages: never free them.
                    std::mem::forget(queue);
                });
            if let Err(e) = spawned {
                drop(e);
            }
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod splice_test {
    use super::splice::Splicer;
    use nbdkit_core::backend::Segment;
    use nbdkit_core::plugins::memory::SparseArray;
    use std::io::Read;
    use std::os::fd::AsRawFd;

    fn counts(a: &SparseArray, len: usize) -> Vec<usize> {
        a.lend(len, 0)
            .segments()
            .iter()
            .map(|s| match s {
                // Less the one this lend holds.
                Segment::Bytes { bytes, .. } => std::sync::Arc::strong_count(bytes) - 1,
                Segment::Zeroes(_) => 0,
            })
            .collect()
    }

    #[test]
    fn spliced_pages_are_held_until_read_and_writes_meanwhile_go_to_copies() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let a = SparseArray::new();
            let old: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
            a.write(&old, 0);
            let (s, peer) = tokio::net::UnixStream::pair().unwrap();
            let peer = peer.into_std().unwrap();
            peer.set_nonblocking(false).unwrap();
            let mut z = Splicer::new(s.as_raw_fd()).unwrap();
            let lent = a.lend(150_001, 7);
            z.send(&s, b"held", b"head", &lent).await.unwrap();
            drop(lent);
            // The array's reference and the queue's.
            assert!(counts(&a, 150_000).iter().all(|&c| c == 2));
            // A write now goes to copies: the socket still has the old bytes.
            a.write(&vec![0xee; 200_000], 0);
            assert!(counts(&a, 150_000).iter().all(|&c| c == 1));
            let mut got = vec![0; 8 + 150_001];
            (&peer).read_exact(&mut got).unwrap();
            assert_eq!(&got[..8], b"heldhead");
            assert!(got[8..] == old[7..7 + 150_001], "old bytes");
            // Read: the next send lets go of them (none of the new pages
            // are held either way).
            assert_eq!(z.held(), 1);
            let lent = a.lend(10, 0);
            z.send(&s, b"", b"", &lent).await.unwrap();
            assert_eq!(z.held(), 1, "the first reply was read: let go");
            drop(lent);
            assert_eq!(counts(&a, 10), [2], "held until read");
            let mut got = vec![0; 10];
            (&peer).read_exact(&mut got).unwrap();
            assert_eq!(got, [0xee; 10]);
            z.release();
            assert_eq!(z.held(), 0);
            assert_eq!(counts(&a, 10), [1]);
        });
    }
}
