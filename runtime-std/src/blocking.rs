//! The transmission phase for stacks whose calls block (`file`, `sh`, ...)
//! on a plain socket: nbdkit's own model, without any hand-off.
//!
//! Each connection gets worker threads (one at first, more as requests
//! pile up, at most `-t` when the thread model is `parallel`). A worker
//! takes the read lock, reads one request (header and payload), lets go of
//! the lock, runs the request against the stack on its own thread and
//! writes the reply under the write lock. A request at queue depth 1 is
//! therefore read, run and answered by one thread with blocking system
//! calls; the async path would hand it from the reactor to a task and from
//! the task to a blocking thread, then back.
//!
//! The socket is a blocking `std` socket here; the connection's async task
//! waits for the workers and, when the server stops, shuts the socket's
//! reading side down so that a worker blocked in `read` wakes up.
//!
//! The pool (read lock, worker count, end of input) is nbdkit-core's
//! loom-checked [`Pool`], the reply writer its [`ReplyWriter`] and the
//! thread model's locks its `Gate`: this module gives them the socket, the
//! requests and the threads.

use std::io::{self, BufRead, Read, Write};
use std::net::Shutdown;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::Scope;

use nbdkit_core::backend::{Context, ThreadModel};
use nbdkit_core::handshake::Negotiated;
use nbdkit_core::sync::gate::ConnectionGate;
use nbdkit_core::sync::pool::{Next, Pool, Work};
use nbdkit_core::sync::reply_writer::{ReplySink, ReplyWriter};
use nbdkit_core::transmission::{Engine, Framer, Limits, Valid, Want};

use crate::connection::Shared;
use crate::log;
use crate::request::{execute, execute_now, header, refuse, BufPool, Header, Reply};

/// A plain socket in blocking mode. Clones share the socket (no `dup`):
/// it closes when the last one is dropped, and [`SyncStream::shutdown`]
/// reaches every clone.
#[derive(Clone)]
pub(crate) enum SyncStream {
    /// A Unix domain socket.
    Unix(Arc<std::os::unix::net::UnixStream>),
    /// A TCP socket.
    Tcp(Arc<std::net::TcpStream>),
    /// A socket that could not be switched to blocking mode (and is
    /// closed): reads see the end, writes fail.
    Closed,
}

impl SyncStream {
    /// The socket's descriptor (none once closed).
    fn raw_fd(&self) -> Option<i32> {
        use std::os::fd::AsRawFd;
        match self {
            SyncStream::Unix(s) => Some(s.as_raw_fd()),
            SyncStream::Tcp(s) => Some(s.as_raw_fd()),
            SyncStream::Closed => None,
        }
    }

    /// `shutdown(2)`.
    pub(crate) fn shutdown(&self, how: Shutdown) {
        let _ = match self {
            SyncStream::Unix(s) => s.shutdown(how),
            SyncStream::Tcp(s) => s.shutdown(how),
            SyncStream::Closed => Ok(()),
        };
    }
}

/// A [`SyncStream`] that does not keep the socket open, to wake its
/// readers when the server stops.
pub(crate) enum WeakSync {
    Unix(std::sync::Weak<std::os::unix::net::UnixStream>),
    Tcp(std::sync::Weak<std::net::TcpStream>),
    Closed,
}

impl SyncStream {
    /// A handle that lets the socket close when every [`SyncStream`] is
    /// gone.
    pub(crate) fn downgrade(&self) -> WeakSync {
        match self {
            SyncStream::Unix(s) => WeakSync::Unix(Arc::downgrade(s)),
            SyncStream::Tcp(s) => WeakSync::Tcp(Arc::downgrade(s)),
            SyncStream::Closed => WeakSync::Closed,
        }
    }
}

impl WeakSync {
    /// `shutdown(2)`, if the socket is still open.
    pub(crate) fn shutdown(&self, how: Shutdown) {
        let _ = match self {
            WeakSync::Unix(s) => s.upgrade().map(|s| s.shutdown(how)),
            WeakSync::Tcp(s) => s.upgrade().map(|s| s.shutdown(how)),
            WeakSync::Closed => None,
        };
    }
}

impl Read for SyncStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            SyncStream::Unix(s) => (&**s).read(buf),
            SyncStream::Tcp(s) => (&**s).read(buf),
            SyncStream::Closed => Ok(0),
        }
    }
}

impl Write for SyncStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            SyncStream::Unix(s) => (&**s).write(buf),
            SyncStream::Tcp(s) => (&**s).write(buf),
            SyncStream::Closed => Err(io::ErrorKind::NotConnected.into()),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ReplySink for SyncStream {
    fn write_all(&mut self, bytes: &[u8]) -> bool {
        if Write::write_all(self, bytes).is_ok() {
            return true;
        }
        // Wake the worker that may be blocked reading (it holds the read
        // lock): its read then ends the connection.
        self.shutdown(Shutdown::Both);
        false
    }
}

/// What the negotiation decided, for every request of the connection.
pub(crate) struct Session {
    pub(crate) shared: Arc<Shared>,
    pub(crate) ctx: Arc<Context>,
    pub(crate) name: Arc<str>,
    pub(crate) negotiated: Negotiated,
    /// How replies are framed (the workers frame them, not the engine).
    pub(crate) framer: Framer,
}

/// The reading side, owned by one worker at a time.
struct Input {
    rd: InputBuf<Source>,
    /// Decodes and validates what `rd` gives (the workers bound how many
    /// requests run at once, so it does not count them).
    engine: Engine,
}

/// The socket's reading side, behind [`InputBuf`]: first the bytes read
/// past the handshake, then the socket. It holds the replies of requests
/// answered on the reading thread and not yet sent ([`Workers::answer_now`]),
/// and sends them before any read from the socket that could wait: a
/// client never waits for a reply that sits in this buffer. Before such a
/// read, while no request runs on a worker (queue depth 1, its reply
/// sent), it looks for the next request without sleeping
/// ([`crate::poll`]).
struct Source {
    leftover: io::Cursor<Vec<u8>>,
    stream: SyncStream,
    /// Replies not yet sent.
    pending: Vec<u8>,
    output: Arc<ReplyWriter<SyncStream>>,
    /// Looks for the next request before a read that would sleep, while
    /// no request runs on a worker (see [`crate::poll`]).
    poller: crate::poll::Poller,
    /// Requests handed to a worker and not yet answered.
    running: Arc<AtomicUsize>,
    /// Replies in `pending`.
    npending: usize,
    /// The pipe large writes' payloads go through ([`crate::splice_write`]),
    /// made for the first.
    pipe: Option<crate::splice_write::Pipe>,
}

/// Pending replies are sent once they reach this many bytes.
const PENDING_MAX: usize = 64 * 1024;

/// Pending replies are sent once there are this many: the client can send
/// its next requests while the rest of the batch it sent is made. Held
/// until the input ran dry, the replies of a whole batch of small writes
/// (16 bytes each) went out at once, and the client and server took turns
/// instead of working side by side (file on tmpfs, nbd-bench rand-write-4k
/// against no such bound: IOPS 1.17, server CPU/op 0.88; 4 and 8 measured
/// the same as 16).
const PENDING_REPLIES: usize = 16;

impl Source {
    /// Whether bytes read past the handshake are still to be consumed.
    fn has_leftover(&self) -> bool {
        self.leftover.position() < self.leftover.get_ref().len() as u64
    }

    /// Send the pending replies (under the reply lock): false if the
    /// socket failed.
    fn flush(&mut self) -> bool {
        if self.pending.is_empty() {
            return true;
        }
        let ok = self.output.send(&[&self.pending]);
        self.pending.clear();
        self.npending = 0;
        ok
    }

    /// Queue one reply, sending the pending ones first if it would make
    /// them too many.
    fn queue(&mut self, reply: &[u8]) -> bool {
        if self.pending.len() + reply.len() > PENDING_MAX && !self.flush() {
            return false;
        }
        if reply.len() >= PENDING_MAX {
            return self.output.send(&[reply]);
        }
        self.pending.extend_from_slice(reply);
        self.npending += 1;
        if self.npending >= PENDING_REPLIES {
            return self.flush();
        }
        true
    }
}

impl Read for Source {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.has_leftover() {
            return self.leftover.read(buf);
        }
        if !self.flush() {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        let wait = if self.running.load(Ordering::Acquire) == 0 {
            self.poller.spin()
        } else {
            None
        };
        let r = self.stream.read(buf);
        if let Some(w) = wait {
            self.poller.waited(w);
        }
        r
    }
}

/// The smallest and largest [`InputBuf`] buffer.
const INPUT_MIN: usize = 4 * 1024;
const INPUT_MAX: usize = 128 * 1024;

/// A connection's buffered input. The buffer starts at [`INPUT_MIN`] and
/// doubles, up to [`INPUT_MAX`], each time one read fills it: an idle or
/// short connection touches one page, a busy one soon reads many pipelined
/// requests per system call. (std's `BufReader` zero-fills its whole
/// buffer before its first read: 128 KiB written per connection, and
/// resident for as long as it stays idle.) Reads of at least the buffer's
/// size go straight to the socket when nothing is buffered.
struct InputBuf<R> {
    inner: R,
    buf: Vec<u8>,
    pos: usize,
    end: usize,
    /// The most the next read from `inner` may take (0: the buffer's
    /// size).
    limit: usize,
}

impl<R> InputBuf<R> {
    /// Bytes read from the socket and not yet consumed.
    fn buffered(&self) -> usize {
        self.end - self.pos
    }
}

impl<R: Read> InputBuf<R> {
    fn new(inner: R) -> Self {
        InputBuf {
            inner,
            buf: Vec::new(),
            pos: 0,
            end: 0,
            limit: 0,
        }
    }
}

impl<R: Read> BufRead for InputBuf<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.pos == self.end {
            // The last read filled the buffer (or there is none yet).
            if self.end == self.buf.len() && self.buf.len() < INPUT_MAX {
                let n = (self.buf.len() * 2).clamp(INPUT_MIN, INPUT_MAX);
                self.buf.resize(n, 0);
            }
            let n = match core::mem::take(&mut self.limit) {
                0 => self.buf.len(),
                limit => limit.min(self.buf.len()),
            };
            self.end = self.inner.read(&mut self.buf[..n])?;
            self.pos = 0;
        }
        Ok(&self.buf[self.pos..self.end])
    }

    fn consume(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.end);
    }
}

impl<R: Read> Read for InputBuf<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.end && out.len() >= self.buf.len().max(INPUT_MIN) {
            return self.inner.read(out);
        }
        let got = self.fill_buf()?;
        let n = got.len().min(out.len());
        out[..n].copy_from_slice(&got[..n]);
        self.consume(n);
        Ok(n)
    }
}

/// One connection's workers.
struct Workers<'a> {
    session: &'a Session,
    /// The read lock and the worker count.
    workers: Pool<Input>,
    output: Arc<ReplyWriter<SyncStream>>,
    /// Requests handed to a worker and not yet answered.
    running: Arc<AtomicUsize>,
    /// The serialize_requests lock of this connection.
    gate: ConnectionGate,
    pool: BufPool,
    /// The client sent NBD_CMD_DISC.
    goodbye: AtomicBool,
    /// Answer reads the plugin can serve without blocking on the reading
    /// thread (parallel connections: see [`Workers::answer_now`]).
    inline: bool,
    /// READ replies may be sent from the plugin's descriptor
    /// ([`crate::zerocopy::send_file`]).
    sendfile: AtomicBool,
    /// Large WRITE payloads may be moved from the socket into the plugin's
    /// descriptor ([`crate::splice_write`]).
    splice_in: AtomicBool,
}

/// The largest write payload buffer a worker keeps for the next request.
const MAX_SPARE_PAYLOAD: usize = 4 << 20;

/// A request read.
enum Request {
    /// A valid request and its payload (empty unless it is a write).
    Run(Valid, Vec<u8>),
    /// A request that fails validation: its error reply.
    Refuse(Vec<u8>),
    /// A write done while it was read ([`Workers::write_spliced`]): its
    /// reply.
    Written(Reply),
}

/// A worker's own state.
struct Local {
    name: Arc<str>,
    /// The write payload buffer, reused from request to request (as nbdkit
    /// keeps one per thread): a fresh allocation per large write costs an
    /// mmap and its page faults each time.
    spare: Vec<u8>,
}

/// Serve the transmission phase of one connection on `stream`, with the
/// bytes already read past the handshake in `leftover`. Returns when the
/// connection is over and every request read has been answered: whether
/// the client sent NBD_CMD_DISC, and the socket, which the caller closes
/// once the connection's handles are closed (as nbdkit does).
pub(crate) fn transmission(
    session: &Session,
    stream: SyncStream,
    leftover: Vec<u8>,
) -> (bool, SyncStream) {
    let output = Arc::new(ReplyWriter::new(stream.clone()));
    let output_fd = stream.clone();
    let shared = &session.shared;
    let max = if shared.thread_model == ThreadModel::Parallel {
        shared.threads.max(1)
    } else {
        1
    };
    let running = Arc::new(AtomicUsize::new(0));
    // Only where the plugin's calls run unlocked (the data is read or
    // written outside the thread model's locks).
    let zero_copy = crate::zerocopy::enabled()
        && shared.thread_model == ThreadModel::Parallel
        && output_fd.raw_fd().is_some();
    let poll_fd = stream.raw_fd();
    let w = Workers {
        session,
        workers: Pool::new(
            Input {
                rd: InputBuf::new(Source {
                    leftover: io::Cursor::new(leftover),
                    stream,
                    pending: Vec::new(),
                    output: output.clone(),
                    poller: crate::poll::Poller::new(poll_fd),
                    running: running.clone(),
                    npending: 0,
                    pipe: None,
                }),
                engine: Engine::new(session.negotiated, Limits::UNCOUNTED),
            },
            max,
        ),
        output,
        running,
        gate: ConnectionGate::new(),
        pool: BufPool::default(),
        goodbye: AtomicBool::new(false),
        inline: max > 1,
        sendfile: AtomicBool::new(zero_copy),
        splice_in: AtomicBool::new(zero_copy),
    };
    if max > 1 {
        log::debug(
            Some(&session.name),
            format_args!("handshake complete, processing requests with {max} threads"),
        );
    } else {
        log::debug(
            Some(&session.name),
            format_args!("handshake complete, processing requests serially"),
        );
    }
    std::thread::scope(|s| w.work(s, 0));
    let goodbye = w.goodbye.load(Ordering::Acquire);
    // Every other handle on the socket goes with `w`.
    drop(w);
    (goodbye, output_fd)
}

impl<'a> Workers<'a> {
    /// Worker `index`: serve requests until the connection ends.
    fn work<'s>(&'s self, scope: &'s Scope<'s, '_>, index: usize) {
        let max = self.workers.max();
        // As nbdkit names its threads: PLUGIN.N for the workers of a
        // parallel connection, PLUGIN[N] (the connection's) otherwise.
        let name: Arc<str> = if max > 1 {
            let n: Arc<str> =
                format!("{}.{index}", self.session.shared.stack.plugin().name()).into();
            log::debug(None, format_args!("starting worker thread {n}"));
            n
        } else {
            self.session.name.clone()
        };
        let mut local = Local {
            name,
            spare: Vec::new(),
        };
        self.workers.serve(self, &mut local, &mut |index| {
            scope.spawn(move || self.work(scope, index));
        });
        if max > 1 {
            let name = &local.name;
            log::debug(Some(name), format_args!("exiting worker thread {name}"));
        }
    }

    /// Run one request (a panic in the stack becomes an EIO reply: see
    /// [`execute`]).
    fn run(&self, v: &Valid, payload: &[u8], name: &Arc<str>) -> Reply {
        let s = self.session;
        s.shared.gated(Some(&self.gate), || {
            let fds = self.sendfile.load(Ordering::Relaxed);
            execute(&s.ctx, &self.pool, name, s.framer, v, payload, None, fds)
        })
    }

    /// Answer `v` here, on the thread that holds the read lock, if it is a
    /// read or write the plugin can serve without blocking (a read from the
    /// page cache, a write to a file in memory): `None` when it cannot, and
    /// a worker runs it as usual; else whether the reply was queued (or
    /// sent). Its reply joins `src`'s pending replies, which go out
    /// together in one write (nbd-bench, file on tmpfs, paired: rand-read
    /// 4k server CPU/op 0.86, IOPS 1.14; rand-write CPU 0.92, IOPS 1.04).
    /// The reading thread then goes on to the next request with no
    /// hand-off to another worker (two futex calls and a context switch
    /// per request otherwise), while a request that may block still runs
    /// on its own worker, so a slow one never holds up those behind it.
    /// At queue depth 1 as well: the reading thread then looks for the
    /// next request, yielding its CPU to the client between two looks
    /// ([`crate::poll`]); against handing it to a worker (which sent the
    /// reply and slept while the reader spun without yielding; with the
    /// hand-off, yielding alone cost rand-read 10-18%), file on tmpfs, nbd-bench
    /// `--quick --rounds 4`, unpinned: IOPS qd1-read 1.18, qd1-write 1.24,
    /// rand-read 1.09, rand-write 1.02.
    fn answer_now(
        &self,
        src: &mut Source,
        v: &Valid,
        payload: &[u8],
        name: &Arc<str>,
    ) -> Option<bool> {
        if !self.inline {
            return None;
        }
        let s = self.session;
        let out = s.shared.gated(Some(&self.gate), || {
            let fds = self.sendfile.load(Ordering::Relaxed);
            execute_now(&s.ctx, &self.pool, name, s.framer, v, payload, fds)
        })?;
        Some(self.queue_reply(src, out))
    }

    /// Queue `out` with `src`'s pending replies (or send it, with them,
    /// when it is not one piece): false if the socket failed.
    fn queue_reply(&self, src: &mut Source, out: Reply) -> bool {
        if let Some(b) = out.whole() {
            let queued = src.queue(b);
            self.pool.put(out.into_buf());
            return queued;
        }
        src.flush() && self.send_reply(out)
    }

    /// Write a large WRITE's payload straight from the socket into the
    /// plugin's descriptor, on the reading thread, when the plugin has one
    /// ([`Context::pwrite_fd`]): `None` when it does not (or the write is
    /// short), and the caller reads the payload as usual; else the next
    /// step, [`Request::Written`] with the write's reply or the end of the
    /// connection. The part of the payload already buffered is written
    /// from the buffer, the rest is spliced ([`crate::splice_write`]).
    fn write_spliced(
        &self,
        rd: &mut InputBuf<Source>,
        engine: &mut Engine,
        v: &Valid,
        len: u64,
    ) -> Option<Next<Request>> {
        use crate::splice_write::{receive, write_at, Pipe, Received, MIN_LEN};
        let s = self.session;
        if len < MIN_LEN as u64
            || !self.splice_in.load(Ordering::Relaxed)
            || rd.inner.has_leftover()
        {
            return None;
        }
        let sock = rd.inner.stream.raw_fd()?;
        if rd.inner.pipe.is_none() {
            rd.inner.pipe = Some(Pipe::new()?);
        }
        // The engine bounds a write's length.
        let len = len as usize;
        let fd = s.ctx.pwrite_fd(len, v.offset, v.call_flags())?;
        // The splice may wait for the socket.
        if !rd.inner.flush() {
            return Some(Next::End);
        }
        // Out of `rd` while the closure holds it (put back below).
        let pipe = rd.inner.pipe.take()?;
        let written = s.shared.gated(Some(&self.gate), || {
            let head = rd.buffered().min(len);
            let mut result = write_at(fd, &rd.buf[rd.pos..rd.pos + head], v.offset);
            rd.consume(head);
            let rest = len - head;
            if rest == 0 {
                return Some(result);
            }
            if result.is_err() {
                // The rest is read and dropped, as a refused request's.
                return match io::copy(&mut (&mut *rd).take(rest as u64), &mut io::sink()) {
                    Ok(n) if n == rest as u64 => Some(result),
                    _ => None,
                };
            }
            let offset = v.offset + head as u64;
            match receive(sock, &pipe, fd, offset, rest) {
                Received::Done => {}
                Received::Failed(e) => result = Err(e),
                Received::Gone => return None,
                Received::Unsupported => {
                    // Read as usual, and never spliced again here.
                    self.splice_in.store(false, Ordering::Relaxed);
                    let mut buf = Vec::new();
                    match (&mut *rd).take(rest as u64).read_to_end(&mut buf) {
                        Ok(n) if n == rest => {}
                        _ => return None,
                    }
                    result = write_at(fd, &buf, offset);
                }
            }
            Some(result)
        });
        rd.inner.pipe = Some(pipe);
        let Some(written) = written else {
            return Some(Next::End);
        };
        engine.take_payload(len as u64);
        // A large write is often followed by another: only the next header
        // is read into the buffer, so that its payload is spliced whole.
        if let Want::Header(n) = engine.wants() {
            rd.limit = n;
        }
        let written = written.map_err(|e| crate::os::errno::io_error("pwrite", &e));
        Some(Next::Answer(Request::Written(
            crate::request::result_reply(&s.name, s.framer, v, written),
        )))
    }

    /// Send `out` and keep its buffer for the next reply.
    fn send_reply(&self, out: Reply) -> bool {
        let sent = match (&out, out.whole()) {
            (_, Some(b)) => self.output.send(&[b]),
            (
                Reply::File {
                    head,
                    len,
                    fd,
                    offset,
                    count,
                },
                None,
            ) => self
                .output
                .send_with(|sink| self.send_file(sink, &head[..*len], *fd, *offset, *count)),
            (_, None) => self.output.send(&out.parts().collect::<Vec<_>>()),
        };
        self.pool.put(out.into_buf());
        sent
    }

    /// Read the next request (header and payload).
    fn read_request(
        &self,
        rd: &mut InputBuf<Source>,
        engine: &mut Engine,
        spare: &mut Vec<u8>,
    ) -> Next<Request> {
        let s = self.session;
        let Want::Header(hdr_len) = engine.wants() else {
            return Next::End;
        };
        let mut hdr = [0u8; 32];
        if rd.read_exact(&mut hdr[..hdr_len]).is_err() {
            log::debug(
                Some(&s.name),
                format_args!("client closed input socket, closing connection"),
            );
            return Next::End;
        }
        let checked = match header(engine, &s.name, &hdr[..hdr_len]) {
            Header::Run(v) => Ok(v),
            Header::Refuse(r) => Err(r),
            Header::End { graceful } => {
                if graceful {
                    self.goodbye.store(true, Ordering::Release);
                }
                return Next::End;
            }
            // A refused request's payload, read and discarded first.
            Header::Discard(len) => {
                match io::copy(&mut rd.take(len), &mut io::sink()) {
                    Ok(n) if n == len => {}
                    _ => return Next::End,
                }
                match engine.take_payload(len) {
                    Some(r) => Err(r),
                    None => return Next::End,
                }
            }
        };
        let v = match checked {
            Ok(v) => v,
            Err(r) => return Next::Answer(Request::Refuse(refuse(&s.name, s.framer, &r))),
        };
        let mut payload = Vec::new();
        if let Want::Payload(len) = engine.wants() {
            if let Some(next) = self.write_spliced(rd, engine, &v, len) {
                return next;
            }
            payload = core::mem::take(spare);
            // The engine bounds a write's length before this allocates.
            // The last payload's bytes are read over, not zeroed first:
            // only growth past them is (std's `read_to_end` zero-fills
            // all the spare capacity it reads into, each time).
            payload.resize(len as usize, 0);
            if rd.read_exact(&mut payload).is_err() {
                return Next::End;
            }
            engine.take_payload(len);
        }
        Next::Run(Request::Run(v, payload))
    }
}

impl Workers<'_> {
    /// Send a [`Reply::File`] (under the reply lock).
    fn send_file(
        &self,
        sink: &mut SyncStream,
        head: &[u8],
        fd: i32,
        offset: u64,
        count: usize,
    ) -> bool {
        use crate::zerocopy::{send_file, FileSent};
        let Some(sock) = sink.raw_fd() else {
            return false;
        };
        match send_file(sock, head, fd, offset, count) {
            FileSent::Done => true,
            FileSent::Unsupported => {
                self.sendfile.store(false, Ordering::Relaxed);
                true
            }
            FileSent::Gone | FileSent::Broken => {
                log::debug(
                    Some(&self.session.name),
                    format_args!(
                        "read reply cut short (offset={offset} count={count}), closing connection"
                    ),
                );
                // As a failed write: wake the reader so that the
                // connection ends.
                sink.shutdown(Shutdown::Both);
                false
            }
        }
    }
}

impl Work for Workers<'_> {
    type Input = Input;
    type Request = Request;
    type Local = Local;

    fn read(&self, input: &mut Input, local: &mut Local) -> Next<Request> {
        let next = loop {
            let next = self.read_request(&mut input.rd, &mut input.engine, &mut local.spare);
            let (v, payload) = match next {
                Next::Run(Request::Run(v, payload)) => (v, payload),
                Next::Answer(Request::Written(reply)) => {
                    if !self.queue_reply(&mut input.rd.inner, reply) {
                        break Next::End;
                    }
                    continue;
                }
                other => break other,
            };
            match self.answer_now(&mut input.rd.inner, &v, &payload, &local.name) {
                None => {
                    self.running.fetch_add(1, Ordering::AcqRel);
                    break Next::Run(Request::Run(v, payload));
                }
                Some(true) => {}
                Some(false) => break Next::End,
            }
            if payload.capacity() <= MAX_SPARE_PAYLOAD {
                local.spare = payload;
            }
        };
        // The replies made here go before this thread runs a request or
        // lets the read lock go (the next reader may wait in recv).
        if !input.rd.inner.flush() {
            return Next::End;
        }
        next
    }

    fn answer(&self, req: Request, local: &mut Local) -> bool {
        match req {
            Request::Refuse(reply) => self.output.send(&[&reply]),
            Request::Written(reply) => self.send_reply(reply),
            Request::Run(v, payload) => {
                let out = self.run(&v, &payload, &local.name);
                if payload.capacity() <= MAX_SPARE_PAYLOAD {
                    local.spare = payload;
                }
                let sent = self.send_reply(out);
                self.running.fetch_sub(1, Ordering::AcqRel);
                sent
            }
        }
    }
}

/// Run `f` to its end on this thread, sleeping while it is pending: for
/// async code (the handshake) on a blocking thread, over a [`BlockingIo`]
/// whose reads and writes complete in place. Whatever else it awaits (a
/// lock, the stop signal) wakes this thread.
pub(crate) fn block_on<F: core::future::Future>(mut f: core::pin::Pin<&mut F>) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

/// A blocking socket behind the async I/O traits: every read and write
/// blocks this thread until done and is never pending. Only for code run
/// by [`block_on`] on a thread of its own.
pub(crate) struct BlockingIo(pub(crate) SyncStream);

impl tokio::io::AsyncRead for BlockingIo {
    fn poll_read(
        self: core::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        let this = self.get_mut();
        let n = crate::eintr::retry(|| this.0.read(buf.initialize_unfilled()));
        std::task::Poll::Ready(n.map(|n| buf.advance(n)))
    }
}

impl tokio::io::AsyncWrite for BlockingIo {
    fn poll_write(
        self: core::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        let this = self.get_mut();
        std::task::Poll::Ready(crate::eintr::retry(|| this.0.write(buf)))
    }
    fn poll_flush(
        self: core::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(
        self: core::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        self.0.shutdown(Shutdown::Write);
        std::task::Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod test {
    use super::*;

    /// A reader that hands out at most `step` bytes per call and counts
    /// its calls.
    struct Steps {
        data: Vec<u8>,
        at: usize,
        step: usize,
        calls: usize,
    }

    impl Read for Steps {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.calls += 1;
            let n = buf.len().min(self.step).min(self.data.len() - self.at);
            buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    #[test]
    fn input_buf_gives_every_byte_in_order_whatever_the_read_sizes() {
        let want = data(600_000);
        for step in [1, 13, 4096, 5000, 1 << 20] {
            for chunk in [1, 28, 4096, 4124, 70_000] {
                let mut r = InputBuf::new(Steps {
                    data: want.clone(),
                    at: 0,
                    step,
                    calls: 0,
                });
                let mut got = Vec::new();
                let mut buf = vec![0; chunk];
                loop {
                    let n = r.read(&mut buf).unwrap();
                    if n == 0 {
                        break;
                    }
                    got.extend_from_slice(&buf[..n]);
                }
                assert!(got == want, "step {step} chunk {chunk}");
                assert!(r.buf.len() <= INPUT_MAX);
            }
        }
    }

    #[test]
    fn input_buf_starts_small_and_grows_only_when_reads_fill_it() {
        // A client that sends a little at a time: one page.
        let mut r = InputBuf::new(Steps {
            data: data(100_000),
            at: 0,
            step: 28,
            calls: 0,
        });
        let mut hdr = [0; 28];
        for _ in 0..1000 {
            r.read_exact(&mut hdr).unwrap();
        }
        assert_eq!(r.buf.len(), INPUT_MIN);
        // A client that pipelines: the buffer doubles up to the maximum,
        // and then many small requests come from one read.
        let mut r = InputBuf::new(Steps {
            data: data(4 << 20),
            at: 0,
            step: usize::MAX,
            calls: 0,
        });
        for _ in 0..100_000 {
            r.read_exact(&mut hdr).unwrap();
        }
        assert_eq!(r.buf.len(), INPUT_MAX);
        assert!(r.inner.calls < 100_000 * 28 / INPUT_MAX + 10);
    }

    #[test]
    fn input_buf_reads_large_requests_straight_through() {
        let want = data(1 << 20);
        let mut r = InputBuf::new(Steps {
            data: want.clone(),
            at: 0,
            step: usize::MAX,
            calls: 0,
        });
        let mut big = vec![0; 1 << 20];
        r.read_exact(&mut big).unwrap();
        assert!(big == want);
        assert_eq!(r.inner.calls, 1);
        assert!(r.buf.is_empty(), "nothing was buffered");
    }

    #[test]
    fn source_sends_pending_replies_before_it_waits_for_input() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        // A failure here must not hang the test.
        a.set_read_timeout(Some(std::time::Duration::from_secs(20)))
            .unwrap();
        b.set_read_timeout(Some(std::time::Duration::from_secs(20)))
            .unwrap();
        let a = SyncStream::Unix(Arc::new(a));
        let mut src = Source {
            leftover: io::Cursor::new(b"left".to_vec()),
            stream: a.clone(),
            pending: Vec::new(),
            output: Arc::new(ReplyWriter::new(a)),
            poller: crate::poll::Poller::new(None),
            running: Arc::new(AtomicUsize::new(0)),
            npending: 0,
            pipe: None,
        };
        let mut buf = [0u8; 16];
        assert!(src.queue(b"one"));
        assert!(src.queue(b"two"));
        // The leftover bytes need no wait: the replies stay pending.
        assert_eq!(src.read(&mut buf).unwrap(), 4);
        assert_eq!(src.pending, b"onetwo");
        // The peer answers only once it has the replies; a read from the
        // socket sends them first (else this would wait forever).
        let peer = std::thread::spawn(move || {
            let mut b = b;
            let mut got = [0u8; 6];
            b.read_exact(&mut got).unwrap();
            b.write_all(b"next").unwrap();
            (got, b)
        });
        assert_eq!(src.read(&mut buf).unwrap(), 4);
        assert_eq!(&buf[..4], b"next");
        assert!(src.pending.is_empty());
        let (got, mut b) = peer.join().unwrap();
        assert_eq!(&got, b"onetwo");
        // Large replies are not held.
        let big = vec![7u8; PENDING_MAX];
        assert!(src.queue(b"x"));
        let peer = std::thread::spawn(move || {
            let mut got = vec![0u8; PENDING_MAX + 1];
            b.read_exact(&mut got).unwrap();
            (got, b)
        });
        assert!(src.queue(&big));
        assert!(src.pending.is_empty());
        let (got, mut b) = peer.join().unwrap();
        assert_eq!(got[0], b'x');
        assert!(got[1..] == big[..]);
        // Nor are more than PENDING_REPLIES small ones: the client can go
        // on with the first while the rest of its batch is made.
        for _ in 0..PENDING_REPLIES - 1 {
            assert!(src.queue(b"r"));
        }
        assert_eq!(src.pending.len(), PENDING_REPLIES - 1);
        assert!(src.queue(b"r"));
        assert!(src.pending.is_empty());
        let mut got = vec![0u8; PENDING_REPLIES];
        b.read_exact(&mut got).unwrap();
        assert!(got.iter().all(|&c| c == b'r'));
    }

    #[test]
    fn block_on_runs_a_future_that_waits_for_another_thread() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let t = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            tx.send(7).unwrap();
        });
        let f = core::pin::pin!(async { rx.await.unwrap() + 1 });
        assert_eq!(block_on(f), 8);
        t.join().unwrap();
    }

    #[test]
    fn blocking_io_reads_and_writes_in_place() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut a = BlockingIo(SyncStream::Unix(Arc::new(a)));
        let mut b = BlockingIo(SyncStream::Unix(Arc::new(b)));
        let f = core::pin::pin!(async {
            a.write_all(b"hello").await.unwrap();
            let mut got = Vec::new();
            (&mut b).take(5).read_to_end(&mut got).await.unwrap();
            got
        });
        assert_eq!(block_on(f), b"hello");
    }
}
