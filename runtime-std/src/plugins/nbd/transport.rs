//! The byte streams to the remote server: Unix, TCP and vsock sockets,
//! an inherited socket, a server run by `command=` with systemd socket
//! activation, and TLS.
//!
//! Every stream ends up as one connected [`Socket`] that the blocking
//! driver reads and writes. TLS runs on a thread of its own (a small tokio
//! runtime with the TLS stack of [`crate::tls`]) that relays between the
//! encrypted socket and a plaintext socketpair: the driver stays the same
//! with and without TLS, and encryption costs a copy through the kernel.

use std::ffi::{CString, OsStr};
use std::io;
use std::net::ToSocketAddrs;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use socket2::{Domain, SockAddr, Socket, Type};

use super::Target;
use crate::log;
use crate::os::services::tcp_service_port;
use crate::tls::TlsClient;

/// An I/O error as one line, without Rust's "(os error N)".
pub(super) fn io_message(e: &io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// Time left until `deadline` (at least a millisecond, so that a timeout
/// of zero never means "forever").
pub(super) fn remaining(deadline: Instant) -> Duration {
    deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1))
}

/// A connected stream, and the server process behind it when `command=`
/// started one.
pub(super) struct Connected {
    pub(super) sock: Socket,
    pub(super) child: Option<Child>,
}

/// Connect to `target` before `deadline`.
pub(super) fn connect(target: &Target, deadline: Instant) -> Result<Connected, String> {
    let sock = match target {
        Target::Unix(path) => {
            let s = Socket::new(Domain::UNIX, Type::STREAM, None)
                .map_err(|e| format!("socket: {}", io_message(&e)))?;
            let addr = SockAddr::unix(path)
                .map_err(|e| format!("{}: {}", path.display(), io_message(&e)))?;
            s.connect(&addr)
                .map_err(|e| format!("connect: {}: {}", path.display(), io_message(&e)))?;
            s
        }
        Target::Tcp { host, port } => connect_tcp(host, port, deadline)?,
        #[cfg(not(target_os = "linux"))]
        Target::Vsock { .. } => return Err("vsock is not supported on this platform".into()),
        #[cfg(target_os = "linux")]
        Target::Vsock { cid, port } => {
            let s = Socket::new(Domain::VSOCK, Type::STREAM, None)
                .map_err(|e| format!("socket: AF_VSOCK: {}", io_message(&e)))?;
            s.connect_timeout(&SockAddr::vsock(*cid, *port), remaining(deadline))
                .map_err(|e| format!("connect: vsock {cid}:{port}: {}", io_message(&e)))?;
            s
        }
        Target::Fd(fd) => {
            // The descriptor is inherited and handed over once: shared=true
            // opens a single connection.
            let fd = nix::unistd::dup(*fd).map_err(|e| format!("socket-fd={fd}: {}", e.desc()))?;
            // SAFETY: `dup` returned a fresh descriptor that nothing else owns.
            let owned = unsafe { OwnedFd::from_raw_fd(fd) };
            let _ = nix::fcntl::fcntl(
                owned.as_raw_fd(),
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
            );
            Socket::from(owned)
        }
        Target::Command(argv) => return spawn(argv),
    };
    Ok(Connected { sock, child: None })
}

fn connect_tcp(host: &str, port: &str, deadline: Instant) -> Result<Socket, String> {
    let port_no = match port.parse::<u16>() {
        Ok(p) => p,
        Err(_) => tcp_service_port(port).ok_or_else(|| format!("port={port}: unknown service"))?,
    };
    let addrs: Vec<_> = (host, port_no)
        .to_socket_addrs()
        .map_err(|e| format!("getaddrinfo: {host}:{port}: {}", io_message(&e)))?
        .collect();
    let mut last = format!("getaddrinfo: {host}:{port}: no addresses");
    for a in addrs {
        let s = Socket::new(Domain::for_address(a), Type::STREAM, None)
            .map_err(|e| format!("socket: {}", io_message(&e)))?;
        match s.connect_timeout(&a.into(), remaining(deadline)) {
            Ok(()) => {
                let _ = s.set_tcp_nodelay(true);
                // A remote host that vanishes is noticed within minutes.
                let ka = socket2::TcpKeepalive::new()
                    .with_time(Duration::from_secs(60))
                    .with_interval(Duration::from_secs(10))
                    .with_retries(6);
                let _ = s.set_tcp_keepalive(&ka);
                return Ok(s);
            }
            Err(e) => last = format!("connect: {host}:{port}: {}", io_message(&e)),
        }
    }
    Err(last)
}

/// Whether `port` is a number or a service name that resolves.
pub(super) fn valid_port(port: &str) -> bool {
    port.parse::<u16>().is_ok() || tcp_service_port(port).is_some()
}

// ---------------------------------------------------------------------------
// command=: a server started with systemd socket activation
// ---------------------------------------------------------------------------

/// A server process started by `command=`: stopped (SIGTERM, then SIGKILL)
/// and reaped when dropped, as libnbd does when its handle is closed.
pub(super) struct Child {
    pid: nix::unistd::Pid,
    reaped: bool,
}

impl Child {
    /// How the process ended, if it has.
    pub(super) fn exited(&mut self) -> Option<String> {
        use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
        if self.reaped {
            return None;
        }
        match waitpid(self.pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => {
                self.reaped = true;
                Some(format!("the command exited with status {code}"))
            }
            Ok(WaitStatus::Signaled(_, sig, _)) => {
                self.reaped = true;
                Some(format!("the command was killed by signal {}", sig as i32))
            }
            _ => None,
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        use nix::sys::signal::{kill, Signal};
        use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
        if self.reaped {
            return;
        }
        let _ = kill(self.pid, Signal::SIGTERM);
        // At most 5 s for a clean exit, then SIGKILL.
        for i in 0..=500 {
            match waitpid(self.pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => {}
                _ => return,
            }
            if i == 500 {
                let _ = kill(self.pid, Signal::SIGKILL);
                let _ = waitpid(self.pid, None);
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// `PATH` lookup, done before forking.
fn find_program(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let is_exec = |p: &Path| {
        p.metadata()
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if name.contains('/') {
        let p = PathBuf::from(name);
        return is_exec(&p).then_some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| is_exec(p))
}

/// Run `argv` as a socket-activated server (`LISTEN_FDS=1`, the
/// listening socket on descriptor 3, `LISTEN_PID` its pid) and connect to
/// it, as `nbd_connect_systemd_socket_activation` does.
fn spawn(argv: &[String]) -> Result<Connected, String> {
    let what = argv.first().map(String::as_str).unwrap_or("");
    let program = find_program(what).ok_or_else(|| format!("command={what}: not found"))?;
    let dir = nix::unistd::mkdtemp(&std::env::temp_dir().join("nbdkit-nbd-XXXXXX"))
        .map_err(|e| format!("mkdtemp: {}", e.desc()))?;
    let path = dir.join("sock");
    let result = spawn_in(&program, argv, &path);
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_dir(&dir);
    result
}

fn spawn_in(program: &Path, argv: &[String], path: &Path) -> Result<Connected, String> {
    let listener = std::os::unix::net::UnixListener::bind(path)
        .map_err(|e| format!("bind: {}: {}", path.display(), io_message(&e)))?;
    let cstr = |s: &OsStr| CString::new(s.as_bytes()).map_err(|_| "command: NUL byte".to_string());
    let prog = cstr(program.as_os_str())?;
    let args: Vec<CString> = argv
        .iter()
        .map(|a| cstr(OsStr::new(a)))
        .collect::<Result<_, _>>()?;
    let mut env: Vec<CString> = std::env::vars_os()
        .filter(|(k, _)| !k.as_bytes().starts_with(b"LISTEN_"))
        .filter_map(|(k, v)| {
            let mut e = k.as_bytes().to_vec();
            e.push(b'=');
            e.extend_from_slice(v.as_bytes());
            CString::new(e).ok()
        })
        .collect();
    env.push(c"LISTEN_FDS=1".into());
    env.push(c"LISTEN_FDNAMES=nbd".into());
    // The child writes its pid over the blanks (after fork, where only
    // async-signal-safe work is allowed: no allocation).
    let mut listen_pid = b"LISTEN_PID=                    \0".to_vec();
    let arg_ptrs: Vec<*const libc::c_char> = args
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let mut env_ptrs: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
    env_ptrs.push(listen_pid.as_ptr().cast());
    env_ptrs.push(std::ptr::null());
    let lfd = listener.as_raw_fd();
    // SAFETY: the child only makes async-signal-safe calls (getpid, dup2,
    // fcntl, sigprocmask, signal, execve, _exit) and writes into memory
    // allocated before the fork.
    let pid = match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Child) => unsafe {
            let pid = libc::getpid();
            write_decimal(&mut listen_pid[11..31], pid as u64);
            if lfd == 3 {
                libc::fcntl(3, libc::F_SETFD, 0);
            } else if libc::dup2(lfd, 3) == -1 {
                libc::_exit(127);
            }
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            libc::execve(prog.as_ptr(), arg_ptrs.as_ptr(), env_ptrs.as_ptr());
            libc::_exit(127)
        },
        Ok(nix::unistd::ForkResult::Parent { child }) => child,
        Err(e) => return Err(format!("fork: {}", e.desc())),
    };
    let mut child = Child { pid, reaped: false };
    drop(listener);
    // The connection is queued on the listening socket even before the
    // server accepts it.
    let s = Socket::new(Domain::UNIX, Type::STREAM, None)
        .map_err(|e| format!("socket: {}", io_message(&e)))?;
    let addr = SockAddr::unix(path).map_err(|e| io_message(&e))?;
    if let Err(e) = s.connect(&addr) {
        let why = child.exited().unwrap_or_default();
        return Err(format!(
            "connect: {}: {} {why}",
            path.display(),
            io_message(&e)
        ));
    }
    log::debug(
        Some("nbd"),
        format_args!(
            "started {} (pid {pid}) with socket activation",
            program.display()
        ),
    );
    Ok(Connected {
        sock: s,
        child: Some(child),
    })
}

/// Write `v` in decimal, left-aligned, NUL-terminated, into `buf`
/// (async-signal-safe: no allocation).
fn write_decimal(buf: &mut [u8], mut v: u64) {
    let mut digits = [0u8; 20];
    let mut n = 0;
    loop {
        digits[n] = b'0' + (v % 10) as u8;
        n += 1;
        v /= 10;
        if v == 0 || n == digits.len() {
            break;
        }
    }
    let n = n.min(buf.len().saturating_sub(1));
    for i in 0..n {
        buf[i] = digits[n - 1 - i];
    }
    buf[n] = 0;
}

// ---------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------

/// How long the TLS relay waits for the other direction once one has
/// ended (so that a DISC still reaches the server).
const RELAY_LINGER: Duration = Duration::from_secs(5);

/// Run the TLS handshake on `sock` (the server just acknowledged
/// STARTTLS) before `deadline`, and return the plaintext end of the
/// session. A thread relays between the two until either side closes.
pub(super) fn start_tls(
    sock: Socket,
    tls: &TlsClient,
    hostname: Option<&str>,
    deadline: Instant,
) -> Result<Socket, String> {
    let (inner, outer) = Socket::pair(Domain::UNIX, Type::STREAM, None)
        .map_err(|e| format!("socketpair: {}", io_message(&e)))?;
    let (tx, rx) = std::sync::mpsc::channel::<Result<(), String>>();
    let tls = tls.clone();
    let hostname = hostname.map(str::to_string);
    let timeout = remaining(deadline);
    let spawned = std::thread::Builder::new()
        .name("nbd-tls".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(format!("TLS: {e}")));
                    return;
                }
            };
            rt.block_on(relay(sock, outer, tls, hostname, timeout, tx));
        });
    if let Err(e) = spawned {
        return Err(format!("TLS: cannot start a thread: {e}"));
    }
    match rx.recv_timeout(timeout + Duration::from_secs(1)) {
        Ok(Ok(())) => Ok(inner),
        Ok(Err(e)) => Err(e),
        Err(_) => Err("TLS handshake timed out".into()),
    }
}

fn to_tokio(sock: Socket) -> io::Result<tokio::net::UnixStream> {
    sock.set_nonblocking(true)?;
    // Any stream socket reads and writes the same way; tokio only needs
    // the descriptor.
    let std = std::os::unix::net::UnixStream::from(OwnedFd::from(sock));
    tokio::net::UnixStream::from_std(std)
}

async fn relay(
    sock: Socket,
    plain: Socket,
    tls: TlsClient,
    hostname: Option<String>,
    timeout: Duration,
    tx: std::sync::mpsc::Sender<Result<(), String>>,
) {
    use tokio::io::AsyncWriteExt;
    let (net, plain) = match (to_tokio(sock), to_tokio(plain)) {
        (Ok(n), Ok(p)) => (n, p),
        (Err(e), _) | (_, Err(e)) => {
            let _ = tx.send(Err(format!("TLS: {}", io_message(&e))));
            return;
        }
    };
    let secure = match tokio::time::timeout(timeout, tls.connect(hostname.as_deref(), net)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            let _ = tx.send(Err(format!("TLS handshake: {}", io_message(&e))));
            return;
        }
        Err(_) => {
            let _ = tx.send(Err("TLS handshake timed out".into()));
            return;
        }
    };
    let _ = tx.send(Ok(()));
    let (mut net_rd, mut net_wr) = tokio::io::split(secure);
    let (mut plain_rd, mut plain_wr) = plain.into_split();
    let up = async {
        let r = tokio::io::copy(&mut plain_rd, &mut net_wr).await;
        let _ = net_wr.shutdown().await;
        r
    };
    let down = async {
        let r = tokio::io::copy(&mut net_rd, &mut plain_wr).await;
        let _ = plain_wr.shutdown().await;
        r
    };
    tokio::pin!(up, down);
    // When one direction ends, the other gets a little while to finish.
    tokio::select! {
        _ = &mut up => { let _ = tokio::time::timeout(RELAY_LINGER, down).await; }
        _ = &mut down => { let _ = tokio::time::timeout(RELAY_LINGER, up).await; }
    }
}
