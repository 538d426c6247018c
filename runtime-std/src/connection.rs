//! One client connection: drives the sans-IO handshake, then reads
//! requests, runs them against the open [`Context`] (concurrently, up to
//! `-t` at once, when the thread model allows) and writes each reply as soon
//! as it is ready, out of order.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use nbdkit_core::backend::{Context, DefaultExports, OpenArgs, Peer, Stack, ThreadModel};
use nbdkit_core::handshake::{self, Disconnect, Event, ExportInfo, Next, OptionError};
use nbdkit_core::sync::async_mutex::AsyncMutex;
use nbdkit_core::sync::gate::{ConnectionGate, Gate};
use nbdkit_core::sync::inflight::InFlight;
use nbdkit_core::transmission::{self, Engine, Framer, Limits, Want};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use crate::log;
use crate::readbuf::PooledBufReader;
use crate::request::{execute, header, refuse, BufPool, Header, Reply};

/// What every connection shares.
pub(crate) struct Shared {
    pub(crate) stack: Stack,
    pub(crate) handshake: handshake::Config,
    pub(crate) readonly: bool,
    pub(crate) threads: usize,
    pub(crate) thread_model: ThreadModel,
    pub(crate) blocks: bool,
    /// The thread model's locks (loom-checked in nbdkit-core): a whole
    /// connection under serialize_connections, every plugin call under
    /// serialize_all_requests, a connection's requests under
    /// serialize_requests.
    pub(crate) gate: Gate,
    pub(crate) shutdown: watch::Receiver<bool>,
    /// TLS credentials, when `--tls` is on or require.
    pub(crate) tls: Option<crate::tls::Tls>,
}

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

/// How many times to look for a write payload before sleeping on the socket.
const PAYLOAD_SPINS: u32 = 8;

/// How a client's requests arrive: one at a time (queue depth 1), or in
/// runs that the request loop reads without waiting in between.
struct Cadence {
    /// Requests read since the input last ran dry.
    run: u32,
    /// One bit for each of the last runs (newest lowest): set if it was one
    /// request alone, or none.
    lone: u8,
}

impl Default for Cadence {
    /// A new connection counts as one at a time.
    fn default() -> Self {
        Cadence {
            run: 0,
            lone: u8::MAX,
        }
    }
}

impl Cadence {
    /// A request was read.
    fn request(&mut self) {
        self.run = self.run.saturating_add(1);
    }

    /// The input ran dry: the loop is about to wait for the next request.
    fn ran_dry(&mut self) {
        self.lone = self.lone << 1 | u8::from(self.run <= 1);
        self.run = 0;
    }

    /// Whether the last four runs were each one request alone.
    fn one_at_a_time(&self) -> bool {
        self.lone & 0xf == 0xf
    }
}

/// With `-v`, the names of a connection's request slots: nbdkit serves a
/// parallel connection's requests on `-t` worker threads named `PLUGIN.N`,
/// and its messages carry the name of the worker that made them.
struct Workers {
    names: Vec<Arc<str>>,
    free: std::sync::Mutex<Vec<usize>>,
}

/// A worker slot in use; given back when dropped.
struct Worker<'a> {
    workers: &'a Workers,
    index: usize,
    name: Arc<str>,
}

impl Workers {
    fn new(plugin: &str, threads: usize) -> Self {
        Workers {
            names: (0..threads)
                .map(|i| format!("{plugin}.{i}").into())
                .collect(),
            free: std::sync::Mutex::new((0..threads).rev().collect()),
        }
    }

    fn take(&self) -> Worker<'_> {
        let index = self
            .free
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
            .unwrap_or(0);
        Worker {
            workers: self,
            index,
            name: self.names[index].clone(),
        }
    }
}

impl Drop for Worker<'_> {
    fn drop(&mut self) {
        let mut free = self.workers.free.lock().unwrap_or_else(|p| p.into_inner());
        if !free.contains(&self.index) {
            free.push(self.index);
        }
    }
}

impl Shared {
    /// Run `f` under the thread model's request lock: the global one under
    /// serialize_all_requests (or stricter), `conn`'s under
    /// serialize_requests (`None`: a call outside any request).
    pub(crate) fn gated<T>(&self, conn: Option<&ConnectionGate>, f: impl FnOnce() -> T) -> T {
        let _pass = self.gate.request(conn);
        f()
    }

    /// Run a plugin call: on a blocking thread when the stack may block,
    /// inline otherwise; under the thread model's locks.
    async fn call<T, F>(self: &Arc<Self>, f: F) -> T
    where
        T: Send + 'static,
        F: FnOnce(&Shared) -> T + Send + 'static,
    {
        self.call_on(None, f).await
    }

    /// [`Shared::call`], or right here when `inline` (on a thread where the
    /// stack's calls may block).
    async fn call_in<T, F>(self: &Arc<Self>, inline: bool, f: F) -> T
    where
        T: Send + 'static,
        F: FnOnce(&Shared) -> T + Send + 'static,
    {
        if inline {
            self.gated(None, || f(self))
        } else {
            self.call(f).await
        }
    }

    /// [`Shared::call`] for a request of the connection whose gate is `conn`.
    async fn call_on<T, F>(self: &Arc<Self>, conn: Option<&Arc<ConnectionGate>>, f: F) -> T
    where
        T: Send + 'static,
        F: FnOnce(&Shared) -> T + Send + 'static,
    {
        if self.blocks {
            let s = self.clone();
            let conn = conn.cloned();
            let run = move || s.gated(conn.as_deref(), || f(&s));
            match tokio::task::spawn_blocking(run).await {
                Ok(v) => v,
                Err(e) => std::panic::resume_unwind(e.into_panic()),
            }
        } else {
            self.gated(conn.map(|c| &**c), || f(self))
        }
    }
}

/// A client connection's byte stream, split for the transmission phase into
/// a reading and a writing half that work independently.
pub(crate) trait Transport: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// The reading half.
    type Reader: AsyncRead + Unpin + Send + 'static;
    /// The writing half.
    type Writer: AsyncWrite + Unpin + Send + 'static;
    /// Split into halves.
    fn split(self) -> (Self::Reader, Self::Writer);

    /// The same socket in blocking mode, for [`crate::blocking`]; `Err`
    /// (giving the stream back) where that is not possible.
    fn into_blocking(self) -> Result<crate::blocking::SyncStream, Self>
    where
        Self: Sized,
    {
        Err(self)
    }

    /// The socket, for [`crate::poll`] to look at (`None`: not a socket).
    fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }

    /// The socket detached from this runtime, to be served on a connection
    /// thread ([`crate::cores`]): `Ok(None)` when it could not leave the
    /// runtime (the connection ends), `Err` (giving the stream back) where
    /// that is not possible at all.
    fn into_portable(self) -> Result<Option<crate::cores::Portable>, Self>
    where
        Self: Sized,
    {
        Err(self)
    }

    /// The Unix socket under a writing half, to splice replies into
    /// ([`crate::zerocopy::splice`]).
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    fn unix_writer(w: &Self::Writer) -> Option<&tokio::net::UnixStream> {
        let _ = w;
        None
    }
}

impl Transport for tokio::net::TcpStream {
    type Reader = tokio::net::tcp::OwnedReadHalf;
    type Writer = tokio::net::tcp::OwnedWriteHalf;
    fn split(self) -> (Self::Reader, Self::Writer) {
        self.into_split()
    }
    fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        Some(std::os::fd::AsRawFd::as_raw_fd(self))
    }
    fn into_blocking(self) -> Result<crate::blocking::SyncStream, Self> {
        // into_std() fails only if the socket cannot leave the reactor;
        // the stream is gone then, so the connection ends.
        let s = self.into_std().map_err(|_| ()).and_then(|s| {
            s.set_nonblocking(false).map_err(|_| ())?;
            Ok(s)
        });
        match s {
            Ok(s) => Ok(crate::blocking::SyncStream::Tcp(Arc::new(s))),
            Err(()) => Ok(crate::blocking::SyncStream::Closed),
        }
    }
    fn into_portable(self) -> Result<Option<crate::cores::Portable>, Self> {
        // Still non-blocking, as the runtime it joins wants it.
        Ok(self.into_std().ok().map(crate::cores::Portable::Tcp))
    }
}

impl Transport for tokio::net::UnixStream {
    type Reader = tokio::net::unix::OwnedReadHalf;
    type Writer = tokio::net::unix::OwnedWriteHalf;
    fn split(self) -> (Self::Reader, Self::Writer) {
        self.into_split()
    }
    fn unix_writer(w: &Self::Writer) -> Option<&tokio::net::UnixStream> {
        Some(w.as_ref())
    }
    fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        Some(std::os::fd::AsRawFd::as_raw_fd(self))
    }
    fn into_blocking(self) -> Result<crate::blocking::SyncStream, Self> {
        let s = self.into_std().map_err(|_| ()).and_then(|s| {
            s.set_nonblocking(false).map_err(|_| ())?;
            Ok(s)
        });
        match s {
            Ok(s) => Ok(crate::blocking::SyncStream::Unix(Arc::new(s))),
            Err(()) => Ok(crate::blocking::SyncStream::Closed),
        }
    }
    fn into_portable(self) -> Result<Option<crate::cores::Portable>, Self> {
        Ok(self.into_std().ok().map(crate::cores::Portable::Unix))
    }
}

/// A connection's stream: plain until STARTTLS, then TLS over the plain
/// stream.
pub(crate) enum Conn<S> {
    /// No TLS.
    Plain(S),
    /// After STARTTLS.
    Tls(crate::tls::TlsStream<S>),
    /// During the TLS handshake (never read or written).
    Upgrading,
}

/// The reading half of a [`Conn`].
pub(crate) enum ConnReader<S: Transport> {
    Plain(S::Reader),
    /// X.509: the records' reading half, over the socket's.
    Records(Box<crate::tls::RecordReadHalf<S::Reader>>),
    Tls(tokio::io::ReadHalf<crate::tls::TlsStream<S>>),
}

/// The writing half of a [`Conn`].
pub(crate) enum ConnWriter<S: Transport> {
    Plain(S::Writer),
    /// X.509: the records' writing half, over the socket's.
    Records(Box<crate::tls::RecordWriteHalf<S::Writer>>),
    Tls(tokio::io::WriteHalf<crate::tls::TlsStream<S>>),
}

fn upgrading() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "TLS handshake in progress")
}

impl<S> Conn<S> {
    fn is_tls(&self) -> bool {
        matches!(self, Conn::Tls(_))
    }
}

impl<S: Transport> Conn<S> {
    /// Split for the transmission phase: a plain stream, and an X.509
    /// one, split without locking; a PSK one shares its session between
    /// the halves.
    fn split(self) -> Option<(ConnReader<S>, ConnWriter<S>)> {
        match self {
            Conn::Plain(s) => {
                let (r, w) = s.split();
                Some((ConnReader::Plain(r), ConnWriter::Plain(w)))
            }
            Conn::Tls(t) => match t.split_records(S::split) {
                Ok((r, w)) => Some((
                    ConnReader::Records(Box::new(r)),
                    ConnWriter::Records(Box::new(w)),
                )),
                Err(t) => {
                    let (r, w) = tokio::io::split(t);
                    Some((ConnReader::Tls(r), ConnWriter::Tls(w)))
                }
            },
            Conn::Upgrading => None,
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Conn<S> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            Conn::Tls(t) => std::pin::Pin::new(t).poll_read(cx, buf),
            Conn::Upgrading => std::task::Poll::Ready(Err(upgrading())),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Conn<S> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            Conn::Tls(t) => std::pin::Pin::new(t).poll_write(cx, buf),
            Conn::Upgrading => std::task::Poll::Ready(Err(upgrading())),
        }
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            Conn::Tls(t) => std::pin::Pin::new(t).poll_flush(cx),
            Conn::Upgrading => std::task::Poll::Ready(Err(upgrading())),
        }
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            Conn::Tls(t) => std::pin::Pin::new(t).poll_shutdown(cx),
            Conn::Upgrading => std::task::Poll::Ready(Err(upgrading())),
        }
    }
}

impl<S: Transport> AsyncRead for ConnReader<S> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            ConnReader::Plain(r) => std::pin::Pin::new(r).poll_read(cx, buf),
            ConnReader::Records(r) => std::pin::Pin::new(r).poll_read(cx, buf),
            ConnReader::Tls(r) => std::pin::Pin::new(r).poll_read(cx, buf),
        }
    }
}

impl<S: Transport> AsyncWrite for ConnWriter<S> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        match self.get_mut() {
            ConnWriter::Plain(w) => std::pin::Pin::new(w).poll_write(cx, buf),
            ConnWriter::Records(w) => std::pin::Pin::new(w).poll_write(cx, buf),
            ConnWriter::Tls(w) => std::pin::Pin::new(w).poll_write(cx, buf),
        }
    }
    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> std::task::Poll<io::Result<usize>> {
        match self.get_mut() {
            ConnWriter::Plain(w) => std::pin::Pin::new(w).poll_write_vectored(cx, bufs),
            ConnWriter::Records(w) => std::pin::Pin::new(w).poll_write_vectored(cx, bufs),
            ConnWriter::Tls(w) => std::pin::Pin::new(w).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            ConnWriter::Plain(w) => w.is_write_vectored(),
            ConnWriter::Records(w) => w.is_write_vectored(),
            ConnWriter::Tls(w) => w.is_write_vectored(),
        }
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            ConnWriter::Plain(w) => std::pin::Pin::new(w).poll_flush(cx),
            ConnWriter::Records(w) => std::pin::Pin::new(w).poll_flush(cx),
            ConnWriter::Tls(w) => std::pin::Pin::new(w).poll_flush(cx),
        }
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            ConnWriter::Plain(w) => std::pin::Pin::new(w).poll_shutdown(cx),
            ConnWriter::Records(w) => std::pin::Pin::new(w).poll_shutdown(cx),
            ConnWriter::Tls(w) => std::pin::Pin::new(w).poll_shutdown(cx),
        }
    }
}

/// Where a connection's replies are written.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub(crate) trait ReplyOut: AsyncWrite + Unpin {
    /// The plain Unix socket this writes to, if it is one (replies may
    /// then be spliced into it).
    fn unix(&self) -> Option<&tokio::net::UnixStream> {
        None
    }
}

impl<S: Transport> ReplyOut for ConnWriter<S> {
    fn unix(&self) -> Option<&tokio::net::UnixStream> {
        match self {
            ConnWriter::Plain(w) => S::unix_writer(w),
            ConnWriter::Records(_) | ConnWriter::Tls(_) => None,
        }
    }
}

/// A connection's reply writer: the writing half, and the state of the
/// replies spliced into it (which counts every byte written from the
/// first spliced reply on).
pub(crate) struct Out<W> {
    /// Dropped before the socket (it may look at it as it goes). Made for
    /// the first reply to splice: its pipe is two descriptors, which an
    /// idle connection, or one that never reads much, does without (with
    /// a pipe per connection, 10,000 idle connections took 30,000
    /// descriptors).
    #[cfg(target_os = "linux")]
    zc: Option<Box<crate::zerocopy::splice::Splicer>>,
    /// Whether replies may still be spliced (zero-copy is on, the socket
    /// is a plain Unix socket, and a pipe could be had).
    #[cfg(target_os = "linux")]
    zc_ok: bool,
    w: W,
}

impl<W: ReplyOut> Out<W> {
    fn new(w: W) -> Self {
        Out {
            #[cfg(target_os = "linux")]
            zc: None,
            #[cfg(target_os = "linux")]
            zc_ok: crate::zerocopy::enabled() && w.unix().is_some(),
            w,
        }
    }

    /// The splicer and the socket to splice into, the splicer made now if
    /// this is the first reply to splice.
    #[cfg(target_os = "linux")]
    fn splicing(
        &mut self,
    ) -> Option<(
        &mut crate::zerocopy::splice::Splicer,
        &tokio::net::UnixStream,
    )> {
        let Out { zc, zc_ok, w } = self;
        let sock = w.unix()?;
        if zc.is_none() && *zc_ok {
            *zc = crate::zerocopy::splice::Splicer::new(std::os::fd::AsRawFd::as_raw_fd(sock));
            *zc_ok = zc.is_some();
        }
        Some((zc.as_deref_mut()?, sock))
    }

    fn count(&mut self, r: &std::task::Poll<io::Result<usize>>) {
        #[cfg(target_os = "linux")]
        if let (Some(z), std::task::Poll::Ready(Ok(n))) = (self.zc.as_mut(), r) {
            z.sent += *n as u64;
        }
        #[cfg(not(target_os = "linux"))]
        let _ = r;
    }
}

impl<W: ReplyOut> AsyncWrite for Out<W> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = std::pin::Pin::new(&mut this.w).poll_write(cx, buf);
        this.count(&r);
        r
    }
    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> std::task::Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = std::pin::Pin::new(&mut this.w).poll_write_vectored(cx, bufs);
        this.count(&r);
        r
    }
    fn is_write_vectored(&self) -> bool {
        self.w.is_write_vectored()
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().w).poll_flush(cx)
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().w).poll_shutdown(cx)
    }
}

/// Separate input and output streams (`-s` on stdin/stdout).
pub(crate) struct Pipes<R, W> {
    pub(crate) rd: R,
    pub(crate) wr: W,
}

impl<R: AsyncRead + Unpin, W: Unpin> AsyncRead for Pipes<R, W> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.rd).poll_read(cx, buf)
    }
}

impl<R: Unpin, W: AsyncWrite + Unpin> AsyncWrite for Pipes<R, W> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.wr).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.wr).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.wr).poll_shutdown(cx)
    }
}

impl<R, W> Transport for Pipes<R, W>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    type Reader = R;
    type Writer = W;
    fn split(self) -> (R, W) {
        (self.rd, self.wr)
    }
}

/// The transmission flags for an open export (core's [`transmission::eflags`]
/// over the stack's capabilities; nbdkit never advertises multi-conn with
/// serialize_connections).
pub(crate) fn eflags(ctx: &Context, thread_model: ThreadModel) -> u16 {
    let mut f = ctx.caps().features();
    // nbdkit never advertises multi-conn with serialize_connections.
    f.multi_conn &= thread_model > ThreadModel::SerializeConnections;
    transmission::eflags(&f)
}

/// The connections being served: how many, so that the server can wait
/// for them at its end, and the sockets of those served on blocking
/// threads, so that a stop can end their reads.
#[derive(Default)]
pub(crate) struct Live {
    inner: std::sync::Mutex<LiveInner>,
    idle: tokio::sync::Notify,
}

#[derive(Default)]
struct LiveInner {
    count: usize,
    stopping: bool,
    next: u64,
    sockets: std::collections::HashMap<u64, crate::blocking::WeakSync>,
}

/// One connection in [`Live`], until dropped.
pub(crate) struct LiveGuard {
    live: Arc<Live>,
    socket: Option<u64>,
    /// The connection's place on the main runtime ([`crate::cores`]), when
    /// it is served there.
    main: Option<crate::cores::MainSlot>,
}

impl Live {
    fn lock(&self) -> std::sync::MutexGuard<'_, LiveInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Count a new connection (with its socket when it is served on a
    /// blocking thread); `None` once the server is stopping.
    pub(crate) fn enter(
        self: &Arc<Self>,
        socket: Option<&crate::blocking::SyncStream>,
    ) -> Option<LiveGuard> {
        let mut g = self.lock();
        if g.stopping {
            return None;
        }
        g.count += 1;
        let socket = socket.map(|s| {
            let id = g.next;
            g.next += 1;
            g.sockets.insert(id, s.downgrade());
            id
        });
        Some(LiveGuard {
            live: self.clone(),
            socket,
            main: None,
        })
    }

    /// Take no more connections, and shut the reading side of the sockets
    /// served on blocking threads so that their reads end; the requests
    /// already read are still answered.
    pub(crate) fn stop(&self) {
        let mut g = self.lock();
        g.stopping = true;
        for s in g.sockets.values() {
            s.shutdown(std::net::Shutdown::Read);
        }
    }

    /// Whether [`Live::stop`] was called.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    pub(crate) fn stopping(&self) -> bool {
        self.lock().stopping
    }

    /// Wait until every connection has ended.
    pub(crate) async fn idle(&self) {
        loop {
            let woken = self.idle.notified();
            if self.lock().count == 0 {
                return;
            }
            woken.await;
        }
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        let mut g = self.live.lock();
        g.count -= 1;
        if let Some(id) = self.socket {
            g.sockets.remove(&id);
        }
        if g.count == 0 && g.stopping {
            self.live.idle.notify_one();
        }
    }
}

/// Serve a new connection: on a task of its own, or wholly on a blocking
/// thread ([`serve_sync`]) when the stack's calls block and the socket
/// stays plain, which then costs no other hand-off between threads.
pub(crate) fn spawn<S: Transport>(shared: &Arc<Shared>, live: &Arc<Live>, peer: Peer, stream: S) {
    let mut main = None;
    let stream = if shared.blocks
        && shared.tls.is_none()
        && shared.thread_model != ThreadModel::SerializeConnections
    {
        match stream.into_blocking() {
            Ok(sync) => {
                let (shared, live) = (shared.clone(), live.clone());
                tokio::task::spawn_blocking(move || serve_accepted(&shared, &live, peer, sync));
                return;
            }
            Err(s) => s,
        }
    } else if !shared.blocks {
        // A stack that never blocks: on this runtime or on a connection
        // thread, wherever the fewest connections are served.
        match crate::cores::choose() {
            crate::cores::Place::Main(slot) => {
                main = Some(slot);
                stream
            }
            crate::cores::Place::Thread(i) => match stream.into_portable() {
                Ok(Some(p)) => {
                    crate::cores::spawn(shared, live, peer, p, i);
                    return;
                }
                Ok(None) => return,
                Err(s) => s,
            },
        }
    } else {
        stream
    };
    let Some(mut guard) = live.enter(None) else {
        return;
    };
    guard.main = main;
    tokio::spawn(serve(shared.clone(), peer, stream, Some(guard)));
}

/// Serve a connection of a stack whose calls block, on a plain socket in
/// blocking mode, on this thread, which must be one where such calls may
/// run ([`serve_sync`]); counted in `live`.
pub(crate) fn serve_accepted(
    shared: &Arc<Shared>,
    live: &Arc<Live>,
    peer: Peer,
    sync: crate::blocking::SyncStream,
) {
    let Some(_guard) = live.enter(Some(&sync)) else {
        return;
    };
    log::debug(None, format_args!("accepted connection"));
    let (name, cname) = conn_name(shared);
    serve_sync(shared, &name, cname, &Arc::new(peer), sync);
}

/// A new connection's name (`PLUGIN[N]`), also as the log context.
fn conn_name(shared: &Shared) -> (String, Arc<str>) {
    let id = NEXT_CONN.fetch_add(1, Ordering::Relaxed);
    let name = format!("{}[{}]", shared.stack.plugin().name(), id);
    let cname: Arc<str> = name.as_str().into();
    (name, cname)
}

/// Serve one connection to its end. Errors are logged, never propagated:
/// one connection's failure never touches another.
pub(crate) async fn serve<S: Transport>(
    shared: Arc<Shared>,
    peer: Peer,
    stream: S,
    _live: Option<LiveGuard>,
) {
    log::debug(None, format_args!("accepted connection"));
    let (name, cname) = conn_name(&shared);
    let _whole = shared.gate.connection().await;
    let peer = Arc::new(peer);
    // A stack whose calls block, on a plain socket that stays plain: the
    // whole connection on one blocking thread.
    let stream = if shared.blocks && shared.tls.is_none() {
        match stream.into_blocking() {
            Ok(sync) => return serve_blocking(&shared, name, cname, peer, sync).await,
            Err(s) => s,
        }
    } else {
        stream
    };
    let readonly = shared.readonly;
    let (p, cn) = (peer.clone(), cname.clone());
    let preconnect = move |s: &Shared| log::with_context(&cn, || s.stack.preconnect(readonly, &p));
    // Most stacks have nothing in preconnect that blocks (only -v lines):
    // then no hand-off to a blocking thread, unless the thread model's
    // global lock would have to be waited for.
    let pre = if shared.stack.preconnect_blocks()
        || shared.thread_model < ThreadModel::SerializeRequests
    {
        shared.call(preconnect).await
    } else {
        shared.gated(None, || preconnect(&shared))
    };
    if let Err(e) = pre {
        log::error(Some(&name), &e.to_string());
        return;
    }
    // The socket stays the same under TLS: polling looks at it directly.
    let fd = stream.raw_fd();
    let mut stream = Conn::Plain(stream);
    // Boxed: the handshake's state (~15 KiB) is freed when it ends instead
    // of sizing this task for the life of the connection.
    let opened = match Box::pin(handshake(&shared, &name, &peer, &mut stream, false)).await {
        Ok(Some(x)) => x,
        Ok(None) => return,
        Err(e) => {
            log::debug(Some(&name), format_args!("handshake ended: {e}"));
            return;
        }
    };
    let (ctx, negotiated, leftover) = opened;
    let ctx = Arc::new(ctx);
    if stream.is_tls() {
        log::debug(Some(&name), format_args!("using TLS on this connection"));
    }
    // A stack whose calls block, on a plain socket: nbdkit's model, worker
    // threads that read, run and answer requests themselves; the same
    // blocking thread then finalizes and closes the handles, so the whole
    // transmission phase costs one hand-off.
    let stream = match stream {
        Conn::Plain(s) if shared.blocks => match s.into_blocking() {
            Ok(sync) => {
                blocking_transmission(&shared, cname, ctx, negotiated, sync, leftover).await;
                log::debug(Some(&name), format_args!("connection cleanup"));
                return;
            }
            Err(s) => Conn::Plain(s),
        },
        other => other,
    };
    // Reads straight from the socket only without TLS.
    let fd = SocketFd {
        poll: fd,
        plain: if stream.is_tls() { None } else { fd },
    };
    let Some((rd, wr)) = stream.split() else {
        return;
    };
    let reader = PooledBufReader::new(io::Cursor::new(leftover).chain(rd));
    // Whether the client ended with NBD_CMD_DISC.
    let (graceful, wr, reader) =
        transmission(&shared, &name, ctx.clone(), negotiated, reader, wr, fd).await;
    let _ = shared.call(move |_| finish(&cname, ctx, graceful)).await;
    // The socket is closed once the handles are.
    let _ = wr.lock().await.shutdown().await;
    drop(reader);
    log::debug(Some(&name), format_args!("connection cleanup"));
}

/// Serve a connection wholly on a blocking thread ([`serve_sync`]); when
/// the server stops, shut the socket's reading side so that the thread's
/// reads end.
async fn serve_blocking(
    shared: &Arc<Shared>,
    name: String,
    cname: Arc<str>,
    peer: Arc<Peer>,
    sync: crate::blocking::SyncStream,
) {
    let waker = sync.downgrade();
    let s = shared.clone();
    until_stopped(shared, waker, move || {
        serve_sync(&s, &name, cname, &peer, sync)
    })
    .await;
}

/// Run `job` on a blocking thread and wait for it; when the server stops
/// first, shut the reading side of `waker`'s socket so that the job's
/// reads end.
async fn until_stopped(
    shared: &Arc<Shared>,
    waker: crate::blocking::WeakSync,
    job: impl FnOnce() + Send + 'static,
) {
    let mut job = tokio::task::spawn_blocking(job);
    let mut shutdown = shared.shutdown.clone();
    tokio::select! {
        r = &mut job => r,
        _ = crate::server::stopped(&mut shutdown) => {
            waker.shutdown(std::net::Shutdown::Read);
            job.await
        }
    }
    .ok();
}

/// A whole connection of a stack whose calls block, on a plain socket in
/// blocking mode, on this (blocking) thread: preconnect, the handshake
/// (the async path's code, whose reads and writes here block in place),
/// the transmission phase, the end of the handles, then the socket. As
/// nbdkit's thread per connection: no hand-off between threads, and a
/// blocking system call per read and write, with no readiness polling.
fn serve_sync(
    shared: &Arc<Shared>,
    name: &str,
    cname: Arc<str>,
    peer: &Arc<Peer>,
    sync: crate::blocking::SyncStream,
) {
    let pre = shared.gated(None, || {
        log::with_context(&cname, || shared.stack.preconnect(shared.readonly, peer))
    });
    if let Err(e) = pre {
        log::error(Some(name), &e.to_string());
        return;
    }
    let mut io = Conn::Plain(crate::blocking::BlockingIo(sync));
    // Pinned in place: the future is large, and each move copies it.
    let opened = {
        let hs = core::pin::pin!(handshake(shared, name, peer, &mut io, true));
        crate::blocking::block_on(hs)
    };
    let (ctx, negotiated, leftover) = match opened {
        Ok(Some(x)) => x,
        Ok(None) => return,
        Err(e) => {
            log::debug(Some(name), format_args!("handshake ended: {e}"));
            return;
        }
    };
    let ctx = Arc::new(ctx);
    // No TLS without credentials, so the stream is still plain.
    let Conn::Plain(crate::blocking::BlockingIo(sync)) = io else {
        return;
    };
    transmit_and_finish(shared, &cname, ctx, negotiated, sync, leftover);
    log::debug(Some(name), format_args!("connection cleanup"));
}

/// A blocking stack's transmission on this thread, then [`finish`] of its
/// handles, then the socket shut down.
fn transmit_and_finish(
    shared: &Arc<Shared>,
    cname: &Arc<str>,
    ctx: Arc<Context>,
    negotiated: handshake::Negotiated,
    sync: crate::blocking::SyncStream,
    leftover: Vec<u8>,
) {
    let session = crate::blocking::Session {
        shared: shared.clone(),
        ctx: ctx.clone(),
        name: cname.clone(),
        negotiated,
        framer: Framer::of(&negotiated),
    };
    let (graceful, out) = crate::blocking::transmission(&session, sync, leftover);
    drop(session);
    let graceful = graceful && !crate::server::stopping();
    shared.gated(None, || finish(cname, ctx, graceful));
    out.shutdown(std::net::Shutdown::Both);
}

/// The end of a connection's handles: finalize every layer, then close them
/// (dropping the last reference closes every layer, outermost first). As in
/// nbdkit, the client that said goodbye (NBD_CMD_DISC) sees its connection
/// close only after that. Runs where the stack's calls may run.
fn finish(cname: &Arc<str>, ctx: Arc<Context>, graceful: bool) {
    log::with_context(cname, || {
        if let Err(e) = ctx.finalize() {
            log::error(None, &e.to_string());
        }
        CLIENT_GONE.with(|g| g.set(!graceful));
        drop(ctx);
        CLIENT_GONE.with(|g| g.set(false));
    })
}

thread_local! {
    /// Set while a connection's handles are closed on this thread when the
    /// client went away without NBD_CMD_DISC (or the server is stopping).
    static CLIENT_GONE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// In a plugin's or filter's close: whether the client is already gone
/// (it hung up, or the server is stopping), so that there is nobody left
/// to delay (nbdkit's sleeps end when the client hangs up).
pub(crate) fn client_gone() -> bool {
    CLIENT_GONE.with(|g| g.get())
}

/// Run [`crate::blocking::transmission`] on a blocking thread, then
/// [`finish`] the handles there and close the socket; when the server
/// stops, shut the socket's reading side so that the workers end.
async fn blocking_transmission(
    shared: &Arc<Shared>,
    cname: Arc<str>,
    ctx: Arc<Context>,
    negotiated: handshake::Negotiated,
    sync: crate::blocking::SyncStream,
    leftover: Vec<u8>,
) {
    let waker = sync.downgrade();
    let s = shared.clone();
    until_stopped(shared, waker, move || {
        transmit_and_finish(&s, &cname, ctx, negotiated, sync, leftover);
    })
    .await;
}

type Opened = (Context, handshake::Negotiated, Vec<u8>);

/// Most bytes one read of the handshake takes.
const HANDSHAKE_READ_MAX: usize = 16 * 1024;

/// The handshake on `io`; the stack's calls run on a blocking thread when
/// it may block, unless `inline` (this is one already).
async fn handshake<S: AsyncRead + AsyncWrite + Unpin + Send>(
    shared: &Arc<Shared>,
    name: &str,
    peer: &Arc<Peer>,
    io: &mut Conn<S>,
    inline: bool,
) -> io::Result<Option<Opened>> {
    let cname: Arc<str> = name.into();
    // The handshake's -v lines carry the connection's name.
    let mut hs = log::with_context(&cname, || handshake::Server::new(shared.handshake));
    let mut input: Vec<u8> = Vec::new();
    let mut ctx: Option<Context> = None;
    // What each layer answered to default_export: nbdkit asks each at
    // most once per connection (LIST, INFO and GO ask the plugin only
    // once), and forgets the answers at STARTTLS.
    let mut defaults = Arc::new(DefaultExports::default());
    loop {
        let out = hs.pending_output();
        if !out.is_empty() {
            io.write_all(out).await?;
            let n = out.len();
            hs.consume_output(n);
            io.flush().await?;
        }
        if hs.is_done() {
            break;
        }
        let progress = match log::with_context(&cname, || hs.handle_input(&input)) {
            Ok(p) => p,
            Err(d) => {
                let out = hs.pending_output();
                if !out.is_empty() {
                    // ABORT's ACK: the connection closes whether it goes out
                    // or not.
                    let sent = async {
                        io.write_all(out).await?;
                        io.flush().await
                    };
                    if let Err(e) = sent.await {
                        log::debug(Some(name), format_args!("sending the last reply: {e}"));
                    }
                }
                if d != Disconnect::Abort {
                    log::debug(Some(name), format_args!("closing connection: {d:?}"));
                }
                return Ok(None);
            }
        };
        let consumed = progress.consumed;
        match progress.event {
            None if consumed == 0 => {
                // Need more input: read at least one byte, at most what the
                // current option needs (bounded by the handshake config).
                // Read straight into `input` (nothing to zero first).
                let need = hs.needed_for(&input).max(input.len() + 1);
                let want = (need - input.len()).min(HANDSHAKE_READ_MAX);
                input.reserve(want);
                let mut stop = shared.shutdown.clone();
                let mut part = (&mut *io).take(want as u64);
                let n = tokio::select! {
                    r = part.read_buf(&mut input) => r?,
                    _ = crate::server::stopped(&mut stop) => 0,
                };
                if n == 0 {
                    return Ok(None);
                }
                continue;
            }
            None => {}
            Some(Event::ListExports(mut answer)) => {
                let readonly = shared.readonly;
                let is_tls = io.is_tls();
                let d = defaults.clone();
                let cn = cname.clone();
                let conn_name = name.to_string();
                let list = shared
                    .call_in(inline, move |s| {
                        let _ctx = log::ContextGuard::set(&cn);
                        let list = s.stack.list_exports_in(readonly, is_tls, &d);
                        // A default export that cannot be resolved is left
                        // out of the list, and nbdkit says why.
                        for e in d.take_errors() {
                            log::error(Some(&conn_name), &e.to_string());
                        }
                        list
                    })
                    .await;
                let next = match list {
                    Ok(exports) => {
                        for e in &exports.list {
                            let entry = (&e.name, e.description.as_deref());
                            while answer.add(&mut hs, entry.0, entry.1).is_err() {
                                // Full: send what is queued, then retry
                                // (an entry always fits in the empty buffer).
                                let out = hs.pending_output();
                                if out.is_empty() {
                                    break;
                                }
                                io.write_all(out).await?;
                                let n = out.len();
                                hs.consume_output(n);
                            }
                        }
                        log::with_context(&cname, || answer.done(&mut hs))
                    }
                    Err(e) => {
                        log::error(Some(name), &e.to_string());
                        log::with_context(&cname, || answer.refuse(&mut hs, OptionError::Invalid))
                    }
                };
                if let Next::Close(_) = next {
                    return Ok(None);
                }
            }
            Some(Event::OpenExport {
                name: export,
                info_only,
                reply,
            }) => {
                let export = export.to_string();
                let readonly = shared.readonly;
                let is_tls = io.is_tls();
                let wants_description = reply.wants_description();
                let peer = peer.clone();
                let cn = cname.clone();
                let conn_name = name.to_string();
                let d = defaults.clone();
                type Opened = (Context, String, Option<String>);
                let opened = shared
                    .call_in(
                        inline,
                        move |s| -> Result<Opened, nbdkit_core::backend::Error> {
                            let _ctx = log::ContextGuard::set(&cn);
                            let log_errors = || {
                                // nbdkit says why a default export could not be
                                // resolved, then that "" is refused.
                                for e in d.take_errors() {
                                    log::error(Some(&conn_name), &e.to_string());
                                }
                            };
                            let canonical = if export.is_empty() {
                                let not_permitted = || {
                                    nbdkit_core::backend::Error::msg(
                                        nbdkit_core::errno::Errno::ENOENT,
                                        "default export (\"\") not permitted",
                                    )
                                };
                                match s.stack.default_export_in(readonly, is_tls, &d) {
                                    Ok(Some(n)) => n,
                                    Ok(None) => return Err(not_permitted()),
                                    Err(e) => {
                                        log::error(Some(&conn_name), &e.to_string());
                                        return Err(not_permitted());
                                    }
                                }
                            } else {
                                export
                            };
                            let ctx = s.stack.open_in(
                                &OpenArgs {
                                    readonly,
                                    export_name: &canonical,
                                    is_tls,
                                    peer: &peer,
                                },
                                &d,
                            );
                            log_errors();
                            let ctx = ctx?;
                            // Asked only when the client wants it, after the
                            // capabilities, as nbdkit does; a failure is logged
                            // and leaves the export undescribed.
                            let description = if wants_description {
                                ctx.export_description().unwrap_or_else(|e| {
                                    log::error(Some(&conn_name), &e.to_string());
                                    None
                                })
                            } else {
                                None
                            };
                            Ok((ctx, canonical, description))
                        },
                    )
                    .await;
                match opened {
                    Ok((c, canonical, description)) => {
                        let caps = c.caps();
                        let info = ExportInfo {
                            name: &canonical,
                            size: caps.size,
                            eflags: eflags(&c, shared.thread_model),
                            description: description.as_deref(),
                            block_size: caps
                                .block_size
                                .map(|b| (b.minimum, b.preferred, b.maximum)),
                        };
                        let next = log::with_context(&cname, || reply.ready(&mut hs, &info));
                        if info_only {
                            let cn = cname.clone();
                            shared
                                .call_in(inline, move |_| {
                                    log::with_context(&cn, || {
                                        if let Err(e) = c.finalize() {
                                            log::error(None, &e.to_string());
                                        }
                                        drop(c)
                                    })
                                })
                                .await;
                        } else {
                            ctx = Some(c);
                        }
                        if let Next::Close(_) = next {
                            return Ok(None);
                        }
                    }
                    Err(e) => {
                        log::error(Some(name), &e.to_string());
                        let next = log::with_context(&cname, || {
                            reply.refuse(&mut hs, OptionError::Unknown)
                        });
                        if let Next::Close(_) = next {
                            return Ok(None);
                        }
                    }
                }
            }
            Some(Event::StartTls(answer)) => {
                // The ACK goes out in plaintext, then the TLS handshake
                // runs on the same stream. A client must wait for the ACK
                // before starting TLS: bytes already read past STARTTLS
                // would be plaintext injected into the session.
                let out = hs.pending_output();
                if !out.is_empty() {
                    io.write_all(out).await?;
                    let n = out.len();
                    hs.consume_output(n);
                }
                io.flush().await?;
                let (Some(tls), Conn::Plain(plain), true) = (
                    shared.tls.clone(),
                    core::mem::replace(io, Conn::Upgrading),
                    input.len() == consumed,
                ) else {
                    log::error(Some(name), "unexpected data before the TLS handshake");
                    return Ok(None);
                };
                let mut stop = shared.shutdown.clone();
                let secure = tokio::select! {
                    r = tls.accept(name, plain) => r,
                    _ = crate::server::stopped(&mut stop) => return Ok(None),
                };
                match secure {
                    Ok(t) => *io = Conn::Tls(t),
                    Err(e) => {
                        log::error(Some(name), &format!("TLS handshake: {e}"));
                        return Ok(None);
                    }
                }
                if let Next::Close(_) = answer.established(&mut hs) {
                    return Ok(None);
                }
                // nbdkit forgets the default export's name with the rest
                // of the plaintext state.
                defaults = Arc::new(DefaultExports::default());
            }
        }
        input.drain(..consumed);
    }
    let negotiated = hs.negotiated();
    match ctx {
        Some(c) => Ok(Some((c, negotiated, input))),
        None => Ok(None),
    }
}

async fn send<W: ReplyOut>(wr: &AsyncMutex<Out<W>>, reply: &Reply) -> bool {
    let mut w = wr.lock().await;
    write_reply(&mut *w, &[], reply).await.is_ok() && w.flush().await.is_ok()
}

/// Most reply bytes the request loop holds back (see [`Held`]).
const HELD_MAX: usize = 64 * 1024;
/// Longest reply copied into the held replies; a longer one goes out with
/// them in one vectored write.
const HELD_COPY_MAX: usize = 16 * 1024;

/// Replies of requests run in the request loop itself, held while the next
/// request is already buffered, so that the replies of pipelined requests
/// go out together in one system call (and wake the client once). They are
/// written before the loop waits for input or for anything else, and
/// never while a request of a stack that may block runs.
struct Held {
    buf: Vec<u8>,
    /// Whether replies may be held at all (the stack never blocks).
    on: bool,
}

impl Held {
    /// Queue `reply` when `more` requests are buffered, or write it now
    /// with what is held.
    async fn reply<W: ReplyOut>(
        &mut self,
        wr: &AsyncMutex<Out<W>>,
        reply: &Reply,
        more: bool,
    ) -> bool {
        let len = reply.len();
        if more && self.on && len <= HELD_COPY_MAX && self.buf.len() + len <= HELD_MAX {
            match reply.whole() {
                Some(b) => self.buf.extend_from_slice(b),
                None => reply.parts().for_each(|p| self.buf.extend_from_slice(p)),
            }
            return true;
        }
        self.write(wr, reply).await
    }

    /// Write what is held, then `more`.
    async fn write<W: ReplyOut>(&mut self, wr: &AsyncMutex<Out<W>>, more: &Reply) -> bool {
        let mut w = wr.lock().await;
        let ok = write_reply(&mut *w, &self.buf, more).await.is_ok() && w.flush().await.is_ok();
        self.buf.clear();
        ok
    }

    /// Write what is held, if anything.
    async fn flush<W: ReplyOut>(&mut self, wr: &AsyncMutex<Out<W>>) -> bool {
        const NOTHING: Reply = Reply::Small {
            buf: [0; Framer::REPLY_LEN],
            len: 0,
        };
        self.buf.is_empty() || self.write(wr, &NOTHING).await
    }
}

/// Write all of `held`, then all of `reply`: in one piece, then each
/// other piece of a lent reply, in vectored writes that resume after
/// short writes.
async fn write_reply<W: ReplyOut>(w: &mut Out<W>, held: &[u8], reply: &Reply) -> io::Result<()> {
    // A long read of lent pages, on a Unix socket: spliced.
    #[cfg(target_os = "linux")]
    if let Reply::Lent { head, len, data } = reply {
        if data.len() >= crate::zerocopy::MIN_LEN {
            if let Some((zc, sock)) = w.splicing() {
                return Box::pin(zc.send(sock, held, &head[..*len], data)).await;
            }
        }
    }
    match reply.whole() {
        Some(b) => write_all_2(w, held, b).await,
        // Boxed: its slice arrays (2 KiB) would otherwise be part of every
        // connection's task, idle or not (1000 idle connections: +2.3 MiB).
        None => {
            Box::pin(write_all_parts(
                w,
                std::iter::once(held).chain(reply.parts()),
            ))
            .await
        }
    }
}

/// Most slices given to one vectored write (Linux's IOV_MAX is 1024; a
/// 256 KiB read of the memory plugin is 8 pages).
const IOV_BATCH: usize = 64;

/// Write every slice of `parts` in order, in vectored writes of up to
/// [`IOV_BATCH`] slices, resuming after short writes.
async fn write_all_parts<'a, W: AsyncWrite + Unpin>(
    w: &mut W,
    parts: impl Iterator<Item = &'a [u8]>,
) -> io::Result<()> {
    let mut parts = parts.filter(|p| !p.is_empty());
    // bufs[..n] are the bytes still to write, in order.
    let mut bufs: [&[u8]; IOV_BATCH] = [&[]; IOV_BATCH];
    let mut n = 0;
    loop {
        while n < IOV_BATCH {
            match parts.next() {
                Some(p) => {
                    bufs[n] = p;
                    n += 1;
                }
                None => break,
            }
        }
        if n == 0 {
            return Ok(());
        }
        let iov: [io::IoSlice<'_>; IOV_BATCH] = std::array::from_fn(|i| io::IoSlice::new(bufs[i]));
        let mut wrote = w.write_vectored(&iov[..n]).await?;
        if wrote == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        // Drop what went out; the first slice left may be cut.
        let mut done = 0;
        while done < n && wrote >= bufs[done].len() {
            wrote -= bufs[done].len();
            done += 1;
        }
        if done < n {
            bufs[done] = &bufs[done][wrote..];
        }
        bufs.copy_within(done..n, 0);
        n -= done;
    }
}

/// Write all of `a` then all of `b`, in vectored writes while both have
/// bytes left.
async fn write_all_2<W: AsyncWrite + Unpin>(
    w: &mut W,
    mut a: &[u8],
    mut b: &[u8],
) -> io::Result<()> {
    while !a.is_empty() && !b.is_empty() {
        let n = w
            .write_vectored(&[io::IoSlice::new(a), io::IoSlice::new(b)])
            .await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        if n < a.len() {
            a = &a[n..];
        } else {
            b = &b[n - a.len()..];
            a = &[];
        }
    }
    w.write_all(a).await?;
    w.write_all(b).await
}

/// Read a write's payload into the buffers a plugin gave for it; false if
/// the stream ended or failed first (the write is then dropped, unmade).
///
/// Bytes already buffered are copied from the buffer; the rest is read
/// from the stream straight into the plugin's buffers, with one vectored
/// read over all of them when the stream is a plain socket (`fd`).
async fn receive_payload<R: AsyncRead + Unpin>(
    reader: &mut PooledBufReader<Leftover<R>>,
    fd: Option<std::os::fd::RawFd>,
    r: &mut dyn nbdkit_core::backend::Receive,
) -> bool {
    let len = r.len();
    let mut at = 0;
    // Whether the socket may hold more than the last read took.
    let mut more = true;
    while at < len {
        let mut bufs = Vec::with_capacity(16);
        r.bufs(at, &mut bufs);
        if let (Some(fd), true, 0, false) = (fd, more, reader.buffered(), reader.holds_leftover()) {
            let total: usize = bufs.iter().map(|b| b.len()).sum();
            match readv(fd, &mut bufs) {
                Ok(0) => return false,
                Ok(n) => {
                    at += n;
                    // Short: the socket was drained, wait for more.
                    more = n == total;
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return false,
            }
        }
        let Some(buf) = bufs.into_iter().next() else {
            return false;
        };
        let want = buf.len();
        // No yielding to look again before sleeping, unlike a payload read
        // into a buffer: a yield wakes another runtime worker (an eventfd
        // write and its wake-up) each time, and a large payload's next
        // part comes only when the client has room to send it. Without
        // them: server CPU -14% on seq-write overwrites, same throughput.
        let got = reader.read_direct(buf).await;
        match got {
            Ok(0) | Err(_) => return false,
            Ok(n) => {
                at += n;
                // A read that filled its buffer may have left more behind.
                more = n == want;
            }
        }
    }
    true
}

/// One vectored read from the (non-blocking) socket `fd` into `bufs`.
fn readv(fd: std::os::fd::RawFd, bufs: &mut [&mut [u8]]) -> io::Result<usize> {
    use std::io::Read;
    use std::os::fd::FromRawFd;
    let mut iov: Vec<io::IoSliceMut<'_>> =
        bufs.iter_mut().map(|b| io::IoSliceMut::new(b)).collect();
    // SAFETY: the connection owns the socket for as long as this runs; the
    // File is never dropped (ManuallyDrop), so the descriptor stays open.
    let f = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(fd) });
    (&*f).read_vectored(&mut iov)
}

/// A connection's socket, when it is one.
#[derive(Debug, Clone, Copy)]
struct SocketFd {
    /// To look at for input ([`crate::poll`]), also under TLS.
    poll: Option<std::os::fd::RawFd>,
    /// To read write payloads from directly: only without TLS.
    plain: Option<std::os::fd::RawFd>,
}

/// A connection's input after the handshake: the bytes read past it, then
/// the stream.
type Leftover<R> = tokio::io::Chain<io::Cursor<Vec<u8>>, R>;

async fn transmission<R, W>(
    shared: &Arc<Shared>,
    name: &str,
    ctx: Arc<Context>,
    negotiated: handshake::Negotiated,
    mut reader: PooledBufReader<Leftover<R>>,
    wr: W,
    fd: SocketFd,
) -> (bool, Arc<AsyncMutex<Out<W>>>, PooledBufReader<Leftover<R>>)
where
    R: AsyncRead + Unpin,
    W: ReplyOut + Send + 'static,
{
    // The engine decodes and validates; the in-flight count below bounds
    // how many requests run at once, so the engine does not count them.
    let mut engine = Engine::new(negotiated, Limits::UNCOUNTED);
    let framer = engine.framer();
    // Replies are written whole under the reply lock; the in-flight count
    // limits requests to -t and lets the end of the connection wait for
    // every reply (both loom-checked in nbdkit-core).
    let wr = Arc::new(AsyncMutex::new(Out::new(wr)));
    let concurrent = shared.thread_model == ThreadModel::Parallel && shared.threads > 1;
    let flight = InFlight::new(shared.threads.max(1));
    let gate = Arc::new(ConnectionGate::new());
    let pool = Arc::new(BufPool::default());
    let mut held = Held {
        buf: Vec::new(),
        on: !shared.blocks,
    };
    let mut shutdown = shared.shutdown.clone();
    let name: Arc<str> = name.into();
    if concurrent {
        log::debug(
            Some(&name),
            format_args!(
                "handshake complete, processing requests with {} threads",
                shared.threads
            ),
        );
    } else {
        log::debug(
            Some(&name),
            format_args!("handshake complete, processing requests serially"),
        );
    }
    let workers = (concurrent && log::verbose())
        .then(|| Arc::new(Workers::new(shared.stack.plugin().name(), shared.threads)));
    let mut hdr = [0u8; 32];
    // Whether the client ended with NBD_CMD_DISC.
    let mut graceful = false;
    let mut poller = crate::poll::Poller::new(fd.poll);
    // Writes received in place are prepared on this task, outside the
    // thread model's locks: only for a parallel plugin that never blocks.
    let receive_in_place = !shared.blocks && shared.thread_model == ThreadModel::Parallel;
    let mut last_received = false;
    let mut cadence = Cadence::default();
    while let Want::Header(hdr_len) = engine.wants() {
        let mut wait = None;
        if reader.buffered() < hdr_len {
            cadence.ran_dry();
            // Held replies go out before the loop may wait for input.
            if !held.flush(&wr).await {
                break;
            }
            // At queue depth 1 (nothing in flight, nothing buffered), the
            // next request is looked for before the task sleeps.
            if flight.in_flight() == 0 && !reader.holds_leftover() {
                wait = poller.spin();
            }
        }
        // After a write received in place, only the next header is read
        // into the buffer: a large write's payload that follows it goes
        // straight to its pages, not through the buffer.
        if last_received {
            reader.limit_next_fill(hdr_len);
        }
        let got = tokio::select! {
            r = reader.read_exact(&mut hdr[..hdr_len]) => r.is_ok(),
            _ = crate::server::stopped(&mut shutdown) => break,
        };
        if let Some(w) = wait {
            poller.waited(w);
        }
        if !got {
            log::debug(
                Some(&name),
                format_args!("client closed input socket, closing connection"),
            );
            break;
        }
        cadence.request();
        let checked = match header(&mut engine, &name, &hdr[..hdr_len]) {
            Header::Run(v) => Ok(v),
            Header::Refuse(r) => Err(r),
            Header::End { graceful: g } => {
                graceful = g;
                break;
            }
            // A refused request's payload, read and discarded first.
            Header::Discard(len) => {
                if !held.flush(&wr).await {
                    break;
                }
                let mut skip = (&mut reader).take(len);
                match tokio::io::copy(&mut skip, &mut tokio::io::sink()).await {
                    Ok(n) if n == len => {}
                    _ => break,
                }
                match engine.take_payload(len) {
                    Some(r) => Err(r),
                    None => break,
                }
            }
        };
        let v = match checked {
            Ok(v) => v,
            Err(r) => {
                let more = reader.buffered() >= hdr_len;
                if !held
                    .reply(&wr, &refuse(&name, framer, &r).into(), more)
                    .await
                {
                    break;
                }
                continue;
            }
        };
        let mut payload = Vec::new();
        let mut received = None;
        if let Want::Payload(len) = engine.wants() {
            let want = len as usize;
            if reader.buffered() < want && !held.flush(&wr).await {
                break;
            }
            // A plugin that receives writes in place (the memory plugin, no
            // filter): the payload is read straight into its pages.
            if receive_in_place {
                received = ctx.receive_write(want, v.offset);
            }
            if let Some(r) = &mut received {
                if !receive_payload(&mut reader, fd.plain, &mut **r).await {
                    break;
                }
                engine.take_payload(len);
            }
        }
        last_received = received.is_some();
        if let (Want::Payload(len), None) = (engine.wants(), &received) {
            let want = len as usize;
            // A kept buffer, read into its spare capacity: no allocation
            // once the connection runs, no zero-filling.
            payload = pool.get_empty(want);
            let mut ok = true;
            let mut spins = 0;
            while payload.len() < want {
                let left = (want - payload.len()) as u64;
                // At queue depth 1 the payload usually follows its header
                // within microseconds (clients send them in two writes):
                // look for it a few times (each yield lets the reactor poll
                // the socket without sleeping) before waiting for a
                // wake-up. Not while requests come in runs: each of those
                // yields wakes the other runtime worker, and at queue depth
                // 32 they cost rand-write 8-10% of its IOPS (the CPUs sat
                // 14-24% idle).
                let got = if cadence.one_at_a_time() && spins < PAYLOAD_SPINS {
                    spins += 1;
                    let mut part = (&mut reader).take(left);
                    tokio::select! {
                        biased;
                        r = part.read_buf(&mut payload) => Some(r),
                        _ = tokio::task::yield_now() => None,
                    }
                } else {
                    Some((&mut reader).take(left).read_buf(&mut payload).await)
                };
                let Some(got) = got else { continue };
                match got {
                    Ok(0) | Err(_) => {
                        ok = false;
                        break;
                    }
                    Ok(_) => {}
                }
            }
            if !ok {
                break;
            }
            engine.take_payload(len);
        }
        // A request that arrives when nothing else is in flight on a stack
        // that never blocks runs right here: no task hand-off, lowest latency.
        // So does a write received in place, whatever is in flight: making
        // it only puts pages in place, cheaper than waking another worker.
        if concurrent && (shared.blocks || flight.in_flight() > 0) && received.is_none() {
            if !held.flush(&wr).await {
                break;
            }
            let Some(ticket) = flight.begin().await else {
                break;
            };
            let (shared, ctx, wr, name, pool, workers, gate) = (
                shared.clone(),
                ctx.clone(),
                wr.clone(),
                name.clone(),
                pool.clone(),
                workers.clone(),
                gate.clone(),
            );
            tokio::spawn(async move {
                let p = pool.clone();
                let (reply, payload) = shared
                    .call_on(Some(&gate), move |_| {
                        let w = workers.as_ref().map(|w| w.take());
                        let n = w.as_ref().map_or(&name, |w| &w.name);
                        let reply = execute(&ctx, &p, n, framer, &v, &payload, received, false);
                        (reply, payload)
                    })
                    .await;
                pool.put(payload);
                send(&wr, &reply).await;
                pool.put(reply.into_buf());
                drop(ticket);
            });
        } else {
            let (c, n, p, workers) = (ctx.clone(), name.clone(), pool.clone(), workers.clone());
            let (reply, payload) = shared
                .call_on(Some(&gate), move |_| {
                    let w = workers.as_ref().map(|w| w.take());
                    let n = w.as_ref().map_or(&n, |w| &w.name);
                    let reply = execute(&c, &p, n, framer, &v, &payload, received, false);
                    (reply, payload)
                })
                .await;
            pool.put(payload);
            let more = reader.buffered() >= hdr_len;
            let sent = held.reply(&wr, &reply, more).await;
            pool.put(reply.into_buf());
            if !sent {
                break;
            }
        }
    }
    // Every request already read is answered before the connection closes
    // (which the caller does once the handles are closed).
    held.flush(&wr).await;
    flight.drain().await;
    (graceful && !crate::server::stopping(), wr, reader)
}

#[cfg(test)]
mod test {
    use super::*;
    use std::pin::Pin;

    #[test]
    fn cadence_is_one_at_a_time_after_four_lone_requests() {
        let mut c = Cadence::default();
        assert!(c.one_at_a_time());
        // A run of three requests read without waiting.
        c.request();
        c.request();
        c.request();
        c.ran_dry();
        assert!(!c.one_at_a_time());
        for n in 0..4 {
            assert!(!c.one_at_a_time(), "{n} lone requests");
            c.request();
            c.ran_dry();
        }
        assert!(c.one_at_a_time());
        // A wait with no request read since the last one counts as lone.
        c.ran_dry();
        assert!(c.one_at_a_time());
        c.request();
        c.request();
        c.ran_dry();
        assert!(!c.one_at_a_time());
    }

    /// A writer that takes at most `step` bytes per call, vectored or not.
    struct Trickle {
        out: Vec<u8>,
        step: usize,
        vectored: bool,
    }

    impl ReplyOut for Trickle {}

    impl AsyncWrite for Trickle {
        fn poll_write(
            self: Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<io::Result<usize>> {
            let this = self.get_mut();
            let n = buf.len().min(this.step);
            this.out.extend_from_slice(&buf[..n]);
            std::task::Poll::Ready(Ok(n))
        }
        fn poll_write_vectored(
            self: Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
            bufs: &[io::IoSlice<'_>],
        ) -> std::task::Poll<io::Result<usize>> {
            let this = self.get_mut();
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(this.step - n);
                this.out.extend_from_slice(&b[..take]);
                n += take;
            }
            std::task::Poll::Ready(Ok(n))
        }
        fn is_write_vectored(&self) -> bool {
            self.vectored
        }
        fn poll_flush(
            self: Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn poll_shutdown(
            self: Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn held_replies_go_out_whole_and_in_order_through_short_writes() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            for step in [1, 7, 16, 100, 1 << 20] {
                let wr = AsyncMutex::new(Out::new(Trickle {
                    out: Vec::new(),
                    step,
                    vectored: true,
                }));
                let mut held = Held {
                    buf: Vec::new(),
                    on: true,
                };
                let mut want = Vec::new();
                // Short replies are held while more requests are buffered,
                // a long one goes out with them; the last is not held.
                let replies: Vec<Vec<u8>> = vec![
                    vec![1; 16],
                    vec![2; 20],
                    vec![3; HELD_COPY_MAX + 1],
                    vec![4; 16],
                    vec![5; 32],
                ];
                for (i, r) in replies.iter().enumerate() {
                    let more = i + 1 < replies.len();
                    assert!(held.reply(&wr, &r.clone().into(), more).await);
                    want.extend_from_slice(r);
                    if i == 1 || i == 3 {
                        assert!(!held.buf.is_empty(), "step {step}: reply {i} held");
                    }
                }
                assert!(held.buf.is_empty());
                assert!(held.flush(&wr).await);
                assert!(wr.lock().await.w.out == want, "step {step}: bytes differ");
            }
        });
    }

    #[test]
    fn replies_are_not_held_for_a_stack_that_may_block() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let wr = AsyncMutex::new(Out::new(Trickle {
                out: Vec::new(),
                step: 3,
                vectored: false,
            }));
            let mut held = Held {
                buf: Vec::new(),
                on: false,
            };
            assert!(held.reply(&wr, &vec![9; 16].into(), true).await);
            assert!(held.buf.is_empty());
            assert_eq!(wr.lock().await.w.out, [9; 16]);
        });
    }

    /// A lent reply of `n` pages (page `i` all `i + 1`), its holes zeroes.
    fn lent_reply(pages: usize, hole: usize) -> (Reply, Vec<u8>) {
        use nbdkit_core::backend::{Lent, SharedBytes};
        let mut data = Lent::with_capacity(pages + 1);
        let mut want = vec![0xaa; 16];
        for i in 0..pages {
            let page: SharedBytes = Arc::new([i as u8 + 1; 1000]);
            data.push_bytes(page, 10, 990);
            want.extend_from_slice(&[i as u8 + 1; 990]);
            data.push_zeroes(hole);
            want.resize(want.len() + hole, 0);
        }
        let mut head = [0u8; Framer::REPLY_LEN];
        head[..16].fill(0xaa);
        (
            Reply::Lent {
                head,
                len: 16,
                data,
            },
            want,
        )
    }

    #[test]
    fn lent_replies_go_out_whole_through_short_writes() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            // More slices than one vectored write takes, zero runs longer
            // than the zero page.
            for (pages, hole) in [(1, 0), (3, 70_000), (IOV_BATCH * 2 + 5, 7)] {
                for (step, vectored) in [(1 << 30, true), (4097, true), (999, false)] {
                    let wr = AsyncMutex::new(Out::new(Trickle {
                        out: Vec::new(),
                        step,
                        vectored,
                    }));
                    let mut held = Held {
                        buf: Vec::new(),
                        on: true,
                    };
                    let mut want = Vec::new();
                    // A short reply held, then the lent one, then a small
                    // lent one held and flushed.
                    let small: Reply = vec![5; 16].into();
                    assert!(held.reply(&wr, &small, true).await);
                    want.extend_from_slice(&[5; 16]);
                    let (r, w) = lent_reply(pages, hole);
                    assert!(held.reply(&wr, &r, true).await);
                    want.extend_from_slice(&w);
                    let (r, w) = lent_reply(1, 0);
                    assert!(held.reply(&wr, &r, true).await);
                    assert!(!held.buf.is_empty());
                    want.extend_from_slice(&w);
                    assert!(held.flush(&wr).await);
                    // And one sent by a spawned request.
                    let (r, w) = lent_reply(pages, hole);
                    assert!(send(&wr, &r).await);
                    want.extend_from_slice(&w);
                    assert!(
                        wr.lock().await.w.out == want,
                        "{pages} pages, step {step}: bytes differ"
                    );
                }
            }
        });
    }
}
