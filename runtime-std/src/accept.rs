//! Listeners whose connections are accepted by the threads that serve
//! them (Linux; stacks whose calls block, on plain sockets: see
//! [`crate::connection::serve_accepted`]).
//!
//! Idle threads block in `accept(2)` on the listener; the kernel wakes
//! exactly one of them per connection, and that thread serves the whole
//! connection, then accepts again. Nothing else wakes up for a new
//! connection: no reactor, no task, no hand-off to a blocking thread
//! (qemu-nbd's single thread, or nbdkit's accept thread that starts a
//! thread per connection, each cost at least one wake-up more). A thread
//! that takes a connection while no other is accepting starts one, so
//! that someone always is; a thread that finishes one while enough are
//! accepting ends.
//!
//! When the server stops, [`Acceptors::wake`] shuts the listener down,
//! which ends every blocked `accept` (with EINVAL on Linux).

use std::io;
use std::net::Shutdown;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use nbdkit_core::backend::Peer;

use crate::blocking::SyncStream;
use crate::connection::{serve_accepted, Live, Shared};
use crate::log;

/// Most threads left waiting in `accept` after a burst of connections.
const MAX_IDLE: usize = 4;

/// A listening socket in blocking mode.
pub(crate) enum Listener {
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener),
}

/// The threads accepting on one listener.
pub(crate) struct Acceptors {
    listener: Listener,
    /// Threads waiting in `accept` (or about to).
    idle: AtomicUsize,
    shared: Arc<Shared>,
    live: Arc<Live>,
    /// The runtime, entered on every thread (as on tokio's own blocking
    /// threads).
    runtime: tokio::runtime::Handle,
    /// The threads started (finished ones are pruned as new ones start),
    /// for [`Acceptors::join`].
    threads: std::sync::Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl Acceptors {
    /// Start accepting on `listener` (switched to blocking mode here).
    pub(crate) fn start(
        listener: Listener,
        shared: &Arc<Shared>,
        live: &Arc<Live>,
    ) -> io::Result<Arc<Acceptors>> {
        match &listener {
            Listener::Tcp(l) => l.set_nonblocking(false)?,
            Listener::Unix(l) => l.set_nonblocking(false)?,
        }
        let a = Arc::new(Acceptors {
            listener,
            idle: AtomicUsize::new(0),
            shared: shared.clone(),
            live: live.clone(),
            runtime: tokio::runtime::Handle::current(),
            threads: std::sync::Mutex::new(Vec::new()),
        });
        a.add_thread()?;
        Ok(a)
    }

    /// End every blocked `accept` (the server is stopping).
    pub(crate) fn wake(&self) {
        let _ = match &self.listener {
            Listener::Tcp(l) => socket2::SockRef::from(l).shutdown(Shutdown::Both),
            Listener::Unix(l) => socket2::SockRef::from(l).shutdown(Shutdown::Both),
        };
    }

    /// Once the server stopped, [`Acceptors::wake`] was called and every
    /// connection ended: wait for every thread to end. Each holds the
    /// stack, which must be dropped (plugins unloaded) before the process
    /// exits.
    pub(crate) fn join(&self) {
        loop {
            let t = self.threads.lock().unwrap_or_else(|p| p.into_inner()).pop();
            match t {
                Some(t) => {
                    let _ = t.join();
                }
                None => return,
            }
        }
    }

    /// Start one more accepting thread.
    fn add_thread(self: &Arc<Self>) -> io::Result<()> {
        self.idle.fetch_add(1, Ordering::AcqRel);
        let a = self.clone();
        let mut threads = self.threads.lock().unwrap_or_else(|p| p.into_inner());
        match std::thread::Builder::new().spawn(move || a.run()) {
            Ok(t) => {
                threads.retain(|t| !t.is_finished());
                threads.push(t);
                Ok(())
            }
            Err(e) => {
                self.idle.fetch_sub(1, Ordering::AcqRel);
                Err(e)
            }
        }
    }

    fn accept(&self) -> io::Result<(SyncStream, Peer)> {
        match &self.listener {
            Listener::Tcp(l) => {
                let (s, addr) = l.accept()?;
                let _ = s.set_nodelay(true);
                let _ = socket2::SockRef::from(&s).set_send_buffer_size(crate::server::SEND_BUFFER);
                Ok((SyncStream::Tcp(Arc::new(s)), Peer::Inet(addr)))
            }
            Listener::Unix(l) => {
                let (s, _) = l.accept()?;
                let _ = socket2::SockRef::from(&s).set_send_buffer_size(crate::server::SEND_BUFFER);
                let peer = crate::os::peercred::unix_peer_std(&s);
                Ok((SyncStream::Unix(Arc::new(s)), peer))
            }
        }
    }

    /// One thread: accept a connection, serve it, again.
    fn run(self: Arc<Self>) {
        let _rt = self.runtime.enter();
        loop {
            let accepted = self.accept();
            if self.live.stopping() {
                return;
            }
            let (sock, peer) = match accepted {
                Ok(c) => c,
                Err(e) => {
                    if !matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted
                            | io::ErrorKind::ConnectionAborted
                            | io::ErrorKind::WouldBlock
                    ) {
                        log::error(None, &format!("accept: {e}"));
                        // Do not spin on a persistent error (EMFILE).
                        std::thread::sleep(std::time::Duration::from_millis(10));
                    }
                    continue;
                }
            };
            // Someone must go on accepting while this thread serves. If no
            // thread can start, this one accepts again once it is done.
            if self.idle.fetch_sub(1, Ordering::AcqRel) == 1 {
                if let Err(e) = self.add_thread() {
                    log::error(None, &format!("cannot start a thread: {e}"));
                }
            }
            serve_accepted(&self.shared, &self.live, peer, sock);
            if self.idle.fetch_add(1, Ordering::AcqRel) >= MAX_IDLE {
                self.idle.fetch_sub(1, Ordering::AcqRel);
                return;
            }
        }
    }
}
