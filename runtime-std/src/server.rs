//! Serving: listeners (TCP, Unix, stdin/stdout), the accept loop, signals,
//! the pidfile, `--run` captive mode and `--exit-with-parent`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd};
use std::path::PathBuf;
use std::sync::Arc;

use nbdkit_core::backend::{Peer, Stack};
use nbdkit_core::handshake;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;

use crate::connection::{self, Shared};
use crate::log;

/// Address family restriction (`-4`, `-6`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// IPv4 only.
    V4,
    /// IPv6 only.
    V6,
}

/// Where to listen.
#[derive(Debug, Clone)]
pub enum Listen {
    /// TCP on `addr` (all interfaces when `None`) and `port`.
    Tcp {
        /// `-i`.
        addr: Option<String>,
        /// `-p`.
        port: u16,
        /// `-4` / `-6`.
        family: Option<Family>,
    },
    /// A Unix socket; `private` is set for `-U -` (a generated socket in a
    /// private directory, removed at exit).
    Unix {
        /// The socket path.
        path: PathBuf,
        /// The private directory holding it, for `-U -`.
        private: Option<PathBuf>,
    },
    /// One connection on stdin/stdout (`-s`).
    Stdin,
    /// Sockets passed by systemd (socket activation).
    Activated,
    /// AF_VSOCK on a port (`--vsock -p PORT`).
    Vsock {
        /// The port.
        port: u32,
    },
}

/// Everything the server needs besides the stack.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Where to listen.
    pub listen: Listen,
    /// `-t`: requests in flight per connection.
    pub threads: usize,
    /// `-r`.
    pub readonly: bool,
    /// Negotiation settings (`-o`, `--mask-handshake`, `--no-sr`, `--tls`).
    pub handshake: handshake::Config,
    /// `-P`.
    pub pidfile: Option<PathBuf>,
    /// `--run`.
    pub run: Option<String>,
    /// `-e`: the export name for `--run`.
    pub exportname: String,
    /// `--exit-with-parent`.
    pub exit_with_parent: bool,
    /// Stay in the foreground (`-f`, implied by `--run`, `-s`,
    /// `--exit-with-parent` and socket activation).
    pub foreground: bool,
    /// `-u`.
    pub user: Option<String>,
    /// `-g`.
    pub group: Option<String>,
    /// `--swap`.
    pub swap: bool,
    /// `--selinux-label`.
    pub selinux_label: Option<String>,
    /// `--log` was given (so backgrounding does not switch to syslog).
    pub log_explicit: bool,
    /// TLS credentials (`--tls=on|require`; see [`crate::tls::configure`]).
    pub tls: Option<crate::tls::Tls>,
}

/// Make a private directory for `-U -`.
pub fn private_socket() -> std::io::Result<(PathBuf, PathBuf)> {
    let base = std::env::var_os("TMPDIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/tmp".into());
    let tmpl = base.join("nbdkitXXXXXX");
    let dir = nix::unistd::mkdtemp(&tmpl).map_err(std::io::Error::from)?;
    let sock = dir.join("socket");
    PRIVATE_DIRS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(dir.clone());
    Ok((sock, dir))
}

/// Private socket directories made so far, for [`exit_before_serving`].
static PRIVATE_DIRS: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

/// Exit at once with `code`, before any socket was bound (a filter's
/// `get_ready` deciding there is nothing to serve), removing the still
/// empty private socket directories.
pub fn exit_before_serving(code: i32) -> ! {
    for dir in PRIVATE_DIRS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
    {
        let _ = std::fs::remove_dir(dir);
    }
    std::process::exit(code)
}

fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn bind_tcp(
    addr: &Option<String>,
    port: u16,
    family: Option<Family>,
) -> std::io::Result<Vec<std::net::TcpListener>> {
    let addrs: Vec<SocketAddr> = match addr {
        None => {
            let mut v = Vec::new();
            if family != Some(Family::V4) {
                v.push(SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port));
            }
            if family != Some(Family::V6) {
                v.push(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port));
            }
            v
        }
        Some(a) => {
            let host = a.trim_start_matches('[').trim_end_matches(']');
            (host, port)
                .to_socket_addrs()?
                .filter(|s| match family {
                    Some(Family::V4) => s.is_ipv4(),
                    Some(Family::V6) => s.is_ipv6(),
                    None => true,
                })
                .collect()
        }
    };
    let mut out = Vec::new();
    let mut last_err = None;
    for sa in addrs {
        let domain = socket2::Domain::for_address(sa);
        let sock = match socket2::Socket::new(domain, socket2::Type::STREAM.cloexec(), None) {
            Ok(s) => s,
            Err(e) => {
                last_err = Some(e);
                continue;
            }
        };
        sock.set_reuse_address(true)?;
        if sa.is_ipv6() {
            let _ = sock.set_only_v6(true);
        }
        if let Err(e) = sock.bind(&sa.into()) {
            last_err = Some(e);
            continue;
        }
        sock.listen(1024)?;
        sock.set_nonblocking(true)?;
        out.push(std::net::TcpListener::from(sock));
    }
    if out.is_empty() {
        return Err(last_err.unwrap_or_else(|| std::io::Error::other("no address to listen on")));
    }
    Ok(out)
}

/// Serve until a signal, the end of `--run`'s command, or (with `-s`) the
/// end of the one connection. Returns the process exit status.
pub fn serve(stack: Stack, cfg: ServeConfig) -> i32 {
    if cfg.exit_with_parent {
        if let Err(e) = crate::os::pdeathsig::exit_with_parent() {
            log::error(None, &e);
            return 1;
        }
    }
    if cfg.swap {
        if let Err(e) = crate::process::lock_memory() {
            log::error(None, &e);
            return 1;
        }
    }
    let stop_signals = match catch_stop_signals() {
        Ok(fd) => fd,
        Err(e) => {
            log::error(None, &format!("cannot catch stop signals: {e}"));
            return 1;
        }
    };
    // Bind before forking, so that errors reach the user.
    let bound = match bind(&cfg) {
        Ok(b) => b,
        Err(e) => {
            log::error(None, &e);
            if let Listen::Unix {
                private: Some(dir), ..
            } = &cfg.listen
            {
                let _ = std::fs::remove_dir(dir);
            }
            return 1;
        }
    };
    if let Err(e) = crate::process::change_user(cfg.user.as_deref(), cfg.group.as_deref()) {
        log::error(None, &e);
        return 1;
    }
    if !cfg.foreground {
        if let Err(e) = crate::process::daemonize(cfg.log_explicit) {
            log::error(None, &e);
            return 1;
        }
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            log::error(None, &format!("cannot start the runtime: {e}"));
            return 1;
        }
    };
    let status = rt.block_on(serve_async(stack, cfg, bound, stop_signals));
    rt.shutdown_timeout(std::time::Duration::from_secs(5));
    status
}

/// Most threads of tokio's blocking pool (its default is 512). A stack
/// whose calls block keeps one blocking thread per connection for the
/// connection's whole life (as nbdkit keeps a thread per connection), so
/// the pool's bound is a bound on connections: with tokio's default the
/// 513th connection to `file` waited forever for its handshake. The real
/// limits are the process's open files and threads, as in nbdkit.
const MAX_BLOCKING_THREADS: usize = 1 << 20;

/// A stop signal (INT, QUIT, TERM) came (see [`catch_stop_signals`]).
static STOP_SIGNALLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The write end of the pipe [`stop_signalled`] writes a byte to, once set.
static STOP_PIPE: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

extern "C" fn stop_signalled(_: libc::c_int) {
    use std::sync::atomic::Ordering::SeqCst;
    STOP_SIGNALLED.store(true, SeqCst);
    let fd = STOP_PIPE.load(SeqCst);
    if fd >= 0 {
        // The interrupted code's errno is kept.
        let errno = nix::errno::Errno::last_raw();
        // SAFETY: write(2) is async-signal-safe; the byte is on this stack.
        // A full pipe (EAGAIN) already wakes the reader.
        let _ = unsafe { libc::write(fd, [1u8].as_ptr().cast(), 1) };
        nix::errno::Errno::set_raw(errno);
    }
}

/// Stop signals end the server cleanly (status 0), from before the
/// listeners are bound to the end, as with nbdkit: a script that starts
/// the server and stops it at once sees a clean exit, not death by the
/// signal. One plain handler, installed here once and never replaced,
/// notes the signal and writes a byte to a pipe whose read end (returned)
/// the running server waits on ([`wait_for_stop_signal`]). A signal that
/// came before the server waits is still in the pipe; one whose handler
/// is still running when the server starts to wait wakes it when it
/// writes. (Handlers replaced at start-up, as a runtime's own, could be
/// left running on another thread after the replacement, and their
/// signal lost.)
fn catch_stop_signals() -> std::io::Result<std::os::fd::OwnedFd> {
    let (rd, wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
        .map_err(std::io::Error::from)?;
    // The write end lives as long as the process (the handler uses it).
    STOP_PIPE.store(
        std::os::fd::IntoRawFd::into_raw_fd(wr),
        std::sync::atomic::Ordering::SeqCst,
    );
    for sig in [libc::SIGINT, libc::SIGQUIT, libc::SIGTERM] {
        // SAFETY: a plain handler that only stores to atomics and writes
        // to a pipe, which is async-signal-safe; the sigaction struct is
        // fully initialised.
        let r = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = stop_signalled as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::sigemptyset(&mut sa.sa_mask);
            sa.sa_flags = libc::SA_RESTART;
            libc::sigaction(sig, &sa, std::ptr::null_mut())
        };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(rd)
}

/// Resolves once a stop signal came (at any time since
/// [`catch_stop_signals`]); `rd` is the pipe it returned.
async fn wait_for_stop_signal(rd: std::os::fd::OwnedFd) {
    use std::sync::atomic::Ordering::SeqCst;
    // SAFETY: the AsyncFd owns the descriptor, which stays open (and the
    // same pipe) until it is dropped.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(rd, tokio::io::Interest::READABLE)
    };
    let Ok(rd) = registered else {
        // No way to wait: poll the flag (never expected).
        while !STOP_SIGNALLED.load(SeqCst) {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        return;
    };
    loop {
        // The handler sets the flag before it writes: a wake-up after the
        // write finds it set.
        if STOP_SIGNALLED.load(SeqCst) {
            return;
        }
        let Ok(mut ready) = rd.readable().await else {
            std::future::pending::<()>().await;
            return;
        };
        let mut buf = [0u8; 64];
        // SAFETY: reads into a local buffer from the pipe's read end.
        while unsafe { libc::read(rd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
        ready.clear_ready();
    }
}

/// The running server's stop signal, for [`request_shutdown`].
static STOP: std::sync::Mutex<Option<watch::Sender<bool>>> = std::sync::Mutex::new(None);

/// Whether the server has been told to stop (a signal, the end of `--run`,
/// or [`request_shutdown`]): filters that sleep stop waiting then.
pub fn stopping() -> bool {
    STOP.lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .is_some_and(|tx| *tx.borrow())
}

/// Ask the server to stop accepting connections and exit once the
/// connections in flight are done (nbdkit_shutdown; used by the exitlast
/// and exitwhen filters).
pub fn request_shutdown() {
    if let Some(tx) = STOP.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
        let _ = tx.send(true);
    }
}

/// Listening sockets bound before the runtime starts.
enum StdBound {
    Tcp(Vec<std::net::TcpListener>, u16),
    Unix(std::os::unix::net::UnixListener, PathBuf),
    Stdin,
    Activated(Vec<std::os::fd::OwnedFd>),
    Vsock(std::os::fd::OwnedFd),
}

fn bind(cfg: &ServeConfig) -> Result<StdBound, String> {
    crate::os::selinux::set_socket_label(cfg.selinux_label.as_deref())?;
    let r = match &cfg.listen {
        Listen::Tcp { addr, port, family } => {
            let ls = bind_tcp(addr, *port, *family)
                .map_err(|e| format!("bind: {}:{port}: {e}", addr.as_deref().unwrap_or("")))?;
            let port = ls
                .first()
                .and_then(|l| l.local_addr().ok())
                .map(|a| a.port())
                .unwrap_or(*port);
            StdBound::Tcp(ls, port)
        }
        Listen::Unix { path, .. } => {
            let l = std::os::unix::net::UnixListener::bind(path)
                .map_err(|e| format!("bind: {}: {e}", path.display()))?;
            l.set_nonblocking(true).map_err(|e| e.to_string())?;
            StdBound::Unix(l, path.clone())
        }
        Listen::Stdin => StdBound::Stdin,
        Listen::Activated => match crate::process::activation_fds()? {
            Some(fds) => {
                for f in &fds {
                    use std::os::fd::AsRawFd;
                    let _ = nix::fcntl::fcntl(
                        f.as_raw_fd(),
                        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
                    );
                }
                StdBound::Activated(fds)
            }
            None => return Err("socket activation: LISTEN_FDS is not set for this process".into()),
        },
        Listen::Vsock { port } => StdBound::Vsock(crate::os::vsock::listen(*port)?),
    };
    if cfg.selinux_label.is_some() {
        crate::os::selinux::set_socket_label(None)?;
    }
    Ok(r)
}

/// Send buffer asked for on each connection (the kernel caps it at
/// net.core.wmem_max).
pub(crate) const SEND_BUFFER: usize = 4 << 20;

/// A listener the accept loop serves.
enum AnyListener {
    Tcp(TcpListener),
    Unix(UnixListener),
    Vsock(tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>),
}

/// An accepted connection.
enum Accepted {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream, Peer),
}

impl AnyListener {
    /// A TCP or Unix listener out of the runtime, for the accept module
    /// when `direct`; `Err` gives back any other.
    #[cfg(target_os = "linux")]
    fn for_acceptors(
        self,
        direct: bool,
    ) -> Result<std::io::Result<crate::accept::Listener>, AnyListener> {
        use crate::accept::Listener;
        match self {
            AnyListener::Tcp(l) if direct => Ok(l.into_std().map(Listener::Tcp)),
            AnyListener::Unix(l) if direct => Ok(l.into_std().map(Listener::Unix)),
            other => Err(other),
        }
    }

    async fn accept(&self) -> std::io::Result<Accepted> {
        match self {
            AnyListener::Tcp(l) => {
                let (s, _) = l.accept().await?;
                let _ = s.set_nodelay(true);
                let _ = socket2::SockRef::from(&s).set_send_buffer_size(SEND_BUFFER);
                Ok(Accepted::Tcp(s))
            }
            AnyListener::Unix(l) => {
                let (s, _) = l.accept().await?;
                // Room for a whole large read reply in one send.
                let _ = socket2::SockRef::from(&s).set_send_buffer_size(SEND_BUFFER);
                let peer = crate::os::peercred::unix_peer(&s);
                Ok(Accepted::Unix(s, peer))
            }
            AnyListener::Vsock(fd) => loop {
                let mut guard = fd.readable().await?;
                match guard.try_io(|inner| crate::os::vsock::accept(inner.get_ref().as_fd())) {
                    Ok(Ok((fd, peer))) => {
                        // A vsock stream is read and written like any
                        // stream socket.
                        let std = std::os::unix::net::UnixStream::from(fd);
                        let s = tokio::net::UnixStream::from_std(std)?;
                        return Ok(Accepted::Unix(s, peer));
                    }
                    Ok(Err(e)) => return Err(e),
                    Err(_would_block) => continue,
                }
            },
        }
    }
}

async fn serve_async(
    stack: Stack,
    cfg: ServeConfig,
    bound: StdBound,
    stop_signals: std::os::fd::OwnedFd,
) -> i32 {
    let (stop_tx, stop_rx) = watch::channel(false);
    *STOP.lock().unwrap_or_else(|p| p.into_inner()) = Some(stop_tx.clone());
    let thread_model = stack.thread_model();
    let blocks = stack.blocks();
    let shared = Arc::new(Shared {
        stack,
        handshake: cfg.handshake,
        readonly: cfg.readonly,
        threads: cfg.threads.max(1),
        thread_model,
        blocks,
        gate: nbdkit_core::sync::gate::Gate::new(thread_model),
        shutdown: stop_rx.clone(),
        tls: cfg.tls.clone(),
    });

    let mut listeners = Vec::new();
    let mut unix_path = None;
    let mut tcp_port = None;
    let mut stdin = false;
    let convert = |r: std::io::Result<AnyListener>| {
        r.map_err(|e| {
            log::error(None, &format!("cannot listen: {e}"));
        })
    };
    match bound {
        StdBound::Tcp(ls, port) => {
            tcp_port = Some(port);
            for l in ls {
                let Ok(l) = convert(TcpListener::from_std(l).map(AnyListener::Tcp)) else {
                    return 1;
                };
                listeners.push(l);
            }
        }
        StdBound::Unix(l, path) => {
            unix_path = Some(path);
            let Ok(l) = convert(UnixListener::from_std(l).map(AnyListener::Unix)) else {
                return 1;
            };
            listeners.push(l);
        }
        StdBound::Stdin => stdin = true,
        StdBound::Activated(fds) => {
            for fd in fds {
                use nix::sys::socket::SockaddrLike;
                use std::os::fd::AsRawFd;
                let unix = matches!(
                    nix::sys::socket::getsockname::<nix::sys::socket::SockaddrStorage>(fd.as_raw_fd()),
                    Ok(a) if a.family() == Some(nix::sys::socket::AddressFamily::Unix)
                );
                let listening =
                    nix::sys::socket::getsockopt(&fd, nix::sys::socket::sockopt::AcceptConn)
                        .unwrap_or(false);
                if !listening {
                    log::error(
                        None,
                        &format!(
                            "socket activation: file descriptor {} is not a listening socket",
                            fd.as_raw_fd()
                        ),
                    );
                    return 1;
                }
                let l = if unix {
                    let l = std::os::unix::net::UnixListener::from(fd);
                    l.set_nonblocking(true)
                        .and_then(|_| UnixListener::from_std(l))
                        .map(AnyListener::Unix)
                } else {
                    let l = std::net::TcpListener::from(fd);
                    l.set_nonblocking(true)
                        .and_then(|_| TcpListener::from_std(l))
                        .map(AnyListener::Tcp)
                };
                let Ok(l) = convert(l) else { return 1 };
                listeners.push(l);
            }
        }
        StdBound::Vsock(fd) => {
            // The descriptor is owned by the AsyncFd, so it cannot be
            // closed while registered.
            #[allow(deprecated)]
            let l = tokio::io::unix::AsyncFd::new(fd).map(AnyListener::Vsock);
            let Ok(l) = convert(l) else {
                return 1;
            };
            listeners.push(l);
        }
    }

    if let Err(e) = shared.stack.after_fork() {
        log::error(None, &e.to_string());
        return 1;
    }
    if let Some(p) = &cfg.pidfile {
        let pid = std::process::id();
        let tmp = p.with_extension("tmp~nbdkit");
        let r = std::fs::write(&tmp, format!("{pid}\n")).and_then(|_| std::fs::rename(&tmp, p));
        if let Err(e) = r {
            let _ = std::fs::remove_file(&tmp);
            log::error(None, &format!("{}: {e}", p.display()));
            return 1;
        }
    }

    // Stop signals end the server cleanly, whenever they came.
    let sig_tx = stop_tx.clone();
    tokio::spawn(async move {
        wait_for_stop_signal(stop_signals).await;
        let _ = sig_tx.send(true);
    });

    let mut status = 0;
    let mut run_task = None;
    if let Some(cmd) = &cfg.run {
        let (uri, port, sock) = if let Some(port) = tcp_port {
            let exp = percent_encode(&cfg.exportname);
            (
                format!("nbd://localhost:{port}/{exp}")
                    .trim_end_matches('/')
                    .to_string(),
                port.to_string(),
                String::new(),
            )
        } else if let Some(path) = &unix_path {
            (
                format!(
                    "nbd+unix:///{}?socket={}",
                    percent_encode(&cfg.exportname),
                    percent_encode(&path.to_string_lossy())
                ),
                String::new(),
                path.to_string_lossy().into_owned(),
            )
        } else if let Listen::Vsock { port } = &cfg.listen {
            let exp = percent_encode(&cfg.exportname);
            (
                format!("nbd+vsock://1:{port}/{exp}")
                    .trim_end_matches('/')
                    .to_string(),
                port.to_string(),
                String::new(),
            )
        } else {
            (String::new(), String::new(), String::new())
        };
        // With --tls=require the URI says TLS: nbds://, nbds+unix://.
        let uri = match cfg.handshake.tls {
            handshake::TlsMode::Require if uri.starts_with("nbd") => format!("nbds{}", &uri[3..]),
            _ => uri,
        };
        let mut c = tokio::process::Command::new("/bin/sh");
        c.arg("-c")
            .arg(cmd)
            .env("uri", &uri)
            .env("nbd", &uri)
            .env("port", &port)
            .env("unixsocket", &sock)
            .env("exportname", &cfg.exportname);
        match cfg.handshake.tls {
            handshake::TlsMode::Off => c.env_remove("tls"),
            handshake::TlsMode::On => c.env("tls", "1"),
            handshake::TlsMode::Require => c.env("tls", "2"),
        };
        match c.spawn() {
            Ok(mut child) => {
                let tx = stop_tx.clone();
                run_task = Some(tokio::spawn(async move {
                    let st = child.wait().await;
                    let _ = tx.send(true);
                    use std::os::unix::process::ExitStatusExt;
                    match st {
                        Ok(s) => s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0)),
                        Err(_) => 1,
                    }
                }));
            }
            Err(e) => {
                log::error(None, &format!("--run: /bin/sh: {e}"));
                status = 1;
                let _ = stop_tx.send(true);
            }
        }
    }

    let live = Arc::new(connection::Live::default());
    #[cfg(target_os = "linux")]
    let mut acceptors = Vec::new();
    let mut stop = stop_rx.clone();
    if stdin {
        serve_stdin(shared.clone()).await;
    } else {
        // The connection threads of a stack that never blocks (see the
        // cores module) start with the server: the descriptors they hold
        // (an event loop each) are there before the first client.
        if !shared.blocks {
            crate::cores::start();
        }
        // A stack whose calls block, on plain sockets: the threads that
        // serve the connections accept them (see the accept module).
        #[cfg(target_os = "linux")]
        let direct = shared.blocks
            && shared.tls.is_none()
            && shared.thread_model != nbdkit_core::backend::ThreadModel::SerializeConnections;
        // Each listener's task starts the connections it accepts.
        for l in listeners {
            #[cfg(target_os = "linux")]
            let l = match l.for_acceptors(direct) {
                Ok(std) => {
                    match std.and_then(|l| crate::accept::Acceptors::start(l, &shared, &live)) {
                        Ok(a) => acceptors.push(a),
                        Err(e) => {
                            log::error(None, &format!("cannot accept connections: {e}"));
                            return 1;
                        }
                    }
                    continue;
                }
                Err(l) => l,
            };
            let (shared, live) = (shared.clone(), live.clone());
            let mut stop = stop_rx.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        r = l.accept() => match r {
                            Ok(Accepted::Tcp(s)) => {
                                let peer = s.peer_addr().map(Peer::Inet).unwrap_or_default();
                                connection::spawn(&shared, &live, peer, s);
                            }
                            Ok(Accepted::Unix(s, peer)) => connection::spawn(&shared, &live, peer, s),
                            Err(e) => {
                                log::error(None, &format!("accept: {e}"));
                                // Do not spin on a persistent error (EMFILE).
                                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                            }
                        },
                        _ = crate::server::stopped(&mut stop) => break,
                    }
                }
            });
        }
        crate::server::stopped(&mut stop).await;
    }
    let _ = stop_tx.send(true);
    // Connections finish their requests in flight, then close.
    live.stop();
    #[cfg(target_os = "linux")]
    for a in &acceptors {
        a.wake();
    }
    live.idle().await;
    // The accepting threads hold the stack: they end before it is unloaded.
    #[cfg(target_os = "linux")]
    for a in acceptors {
        let _ = tokio::task::spawn_blocking(move || a.join()).await;
    }
    if let Some(t) = run_task {
        if let Ok(code) = t.await {
            status = code;
        }
    }
    shared.stack.cleanup();
    if let Listen::Unix {
        private: Some(dir),
        path,
    } = &cfg.listen
    {
        let _ = std::fs::remove_file(path);
        let _ = std::fs::remove_dir(dir);
    }
    status
}

/// Resolves once the server is told to stop.
pub(crate) async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

fn is_socket(fd: i32) -> bool {
    nix::sys::stat::fstat(fd)
        .map(|st| st.st_mode & libc::S_IFMT == libc::S_IFSOCK)
        .unwrap_or(false)
}

async fn serve_stdin(shared: Arc<Shared>) {
    let (fd_in, fd_out) = (std::io::stdin().as_raw_fd(), std::io::stdout().as_raw_fd());
    if is_socket(fd_in) && is_socket(fd_out) {
        // Duplicate so that dropping the streams does not close fds 0/1
        // under the standard library.
        let (Ok(a), Ok(b)) = (
            std::io::stdin().as_fd().try_clone_to_owned(),
            std::io::stdout().as_fd().try_clone_to_owned(),
        ) else {
            log::error(None, "cannot duplicate stdin/stdout");
            return;
        };
        let (ra, rb) = (
            std::os::unix::net::UnixStream::from(a),
            std::os::unix::net::UnixStream::from(b),
        );
        let _ = ra.set_nonblocking(true);
        let _ = rb.set_nonblocking(true);
        match (
            tokio::net::UnixStream::from_std(ra),
            tokio::net::UnixStream::from_std(rb),
        ) {
            (Ok(r), Ok(w)) => {
                let peer = crate::os::peercred::unix_peer(&r);
                connection::serve(shared, peer, connection::Pipes { rd: r, wr: w }, None).await
            }
            _ => log::error(None, "cannot use stdin/stdout as a socket"),
        }
    } else {
        let pipes = connection::Pipes {
            rd: tokio::io::stdin(),
            wr: tokio::io::stdout(),
        };
        connection::serve(shared, Peer::Unknown, pipes, None).await;
    }
}
