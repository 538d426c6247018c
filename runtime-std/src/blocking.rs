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

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::Shutdown;
use std::sync::atomic::{AtomicBool, Ordering};
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
use crate::request::{execute, header, refuse, BufPool, Header, Reply};

/// A plain socket in blocking mode.
pub(crate) enum SyncStream {
    /// A Unix domain socket.
    Unix(std::os::unix::net::UnixStream),
    /// A TCP socket.
    Tcp(std::net::TcpStream),
    /// A socket that could not be switched to blocking mode (and is
    /// closed): reads see the end, writes fail.
    Closed,
}

impl SyncStream {
    /// Another handle on the same socket.
    pub(crate) fn try_clone(&self) -> io::Result<SyncStream> {
        Ok(match self {
            SyncStream::Unix(s) => SyncStream::Unix(s.try_clone()?),
            SyncStream::Tcp(s) => SyncStream::Tcp(s.try_clone()?),
            SyncStream::Closed => SyncStream::Closed,
        })
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

impl Read for SyncStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            SyncStream::Unix(s) => s.read(buf),
            SyncStream::Tcp(s) => s.read(buf),
            SyncStream::Closed => Ok(0),
        }
    }
}

impl Write for SyncStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            SyncStream::Unix(s) => s.write(buf),
            SyncStream::Tcp(s) => s.write(buf),
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
    rd: BufReader<io::Chain<io::Cursor<Vec<u8>>, SyncStream>>,
    /// Decodes and validates what `rd` gives (the workers bound how many
    /// requests run at once, so it does not count them).
    engine: Engine,
}

/// One connection's workers.
struct Workers<'a> {
    session: &'a Session,
    /// The read lock and the worker count.
    workers: Pool<Input>,
    output: ReplyWriter<SyncStream>,
    /// The serialize_requests lock of this connection.
    gate: ConnectionGate,
    pool: BufPool,
    /// The client sent NBD_CMD_DISC.
    goodbye: AtomicBool,
}

/// The largest write payload buffer a worker keeps for the next request.
const MAX_SPARE_PAYLOAD: usize = 4 << 20;

/// A request read.
enum Request {
    /// A valid request and its payload (empty unless it is a write).
    Run(Valid, Vec<u8>),
    /// A request that fails validation: its error reply.
    Refuse(Vec<u8>),
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
) -> Option<(bool, SyncStream)> {
    let output = match stream.try_clone() {
        Ok(o) => o,
        Err(e) => {
            log::error(Some(&session.name), &format!("dup: {e}"));
            return None;
        }
    };
    let shared = &session.shared;
    let max = if shared.thread_model == ThreadModel::Parallel {
        shared.threads.max(1)
    } else {
        1
    };
    let w = Workers {
        session,
        workers: Pool::new(
            Input {
                rd: BufReader::with_capacity(128 * 1024, io::Cursor::new(leftover).chain(stream)),
                engine: Engine::new(session.negotiated, Limits::UNCOUNTED),
            },
            max,
        ),
        output: ReplyWriter::new(output),
        gate: ConnectionGate::new(),
        pool: BufPool::default(),
        goodbye: AtomicBool::new(false),
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
    Some((goodbye, w.output.into_inner()))
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
            execute(&s.ctx, &self.pool, name, s.framer, v, payload)
        })
    }

    /// Read the next request (header and payload).
    fn read_request(
        &self,
        rd: &mut impl BufRead,
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
            payload = core::mem::take(spare);
            payload.clear();
            // The engine bounds a write's length before this allocates.
            payload.reserve_exact(len as usize);
            match rd.take(len).read_to_end(&mut payload) {
                Ok(n) if n as u64 == len => {}
                _ => return Next::End,
            }
            engine.take_payload(len);
        }
        Next::Run(Request::Run(v, payload))
    }
}

impl Work for Workers<'_> {
    type Input = Input;
    type Request = Request;
    type Local = Local;

    fn read(&self, input: &mut Input, local: &mut Local) -> Next<Request> {
        self.read_request(&mut input.rd, &mut input.engine, &mut local.spare)
    }

    fn answer(&self, req: Request, local: &mut Local) -> bool {
        match req {
            Request::Refuse(reply) => self.output.send(&[&reply]),
            Request::Run(v, payload) => {
                let out = self.run(&v, &payload, &local.name);
                if payload.capacity() <= MAX_SPARE_PAYLOAD {
                    local.spare = payload;
                }
                let sent = match out.whole() {
                    Some(b) => self.output.send(&[b]),
                    None => self.output.send(&out.parts().collect::<Vec<_>>()),
                };
                self.pool.put(out.into_buf());
                sent
            }
        }
    }
}
