//! Connections of stacks that never block, beyond the first: each served
//! wholly on one of a few connection threads, each running a current-thread
//! tokio runtime with an event loop of its own (one fewer thread than the
//! CPUs: the main runtime's event loop is the other).
//!
//! On tokio's multi-thread runtime a connection's events are seen only when
//! a worker parks on the one event loop, and any worker may run the
//! connection. With several clients writing at once (nbdcopy's default: two
//! connections on 2 CPUs, 256 KiB writes), each client and the worker
//! serving it took turns on one CPU while the other CPU waited: the CPUs
//! were 18-23% idle and an overwrite of 1 GiB into `memory` took 0.47-0.54 s
//! against 0.40-0.46 s for C nbdkit (0.93 s against 0.80-0.85 s with TLS).
//! With the second connection on a thread of its own, whose event loop the
//! kernel wakes when that connection has input (as it wakes C nbdkit's
//! thread): 0.35-0.45 s against 0.41-0.46 s for C nbdkit in the same runs,
//! CPUs 9-17% idle (TLS: 0.83-0.96 s against 0.92-0.99 s).
//!
//! The first connection stays on the main runtime ([`take_main`]): a lone
//! client at queue depth 1 writing 4 KiB got 1.37 times the IOPS there, at
//! 0.61 times the server CPU per request, than on a connection thread. A
//! connection that comes while one is served there goes to the connection
//! thread serving the fewest. The threads start with the server (their
//! descriptors are there from the start; a lone client's idle server holds
//! 0.3 MiB more). The listeners and the stacks that may block (served on
//! threads of their own, see [`crate::blocking`]) stay on the main runtime.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use nbdkit_core::backend::Peer;
use tokio::sync::mpsc;

use crate::connection::{serve, Live, Shared};

/// A connection's socket, detached from the runtime that accepted it.
pub(crate) enum Portable {
    Tcp(std::net::TcpStream),
    Unix(std::os::unix::net::UnixStream),
    /// The socket could not leave its runtime: the connection ends.
    Closed,
}

type Job = Box<dyn FnOnce() + Send>;

struct Core {
    jobs: mpsc::UnboundedSender<Job>,
    /// Connections being served there.
    load: AtomicUsize,
}

/// The connection threads; `None` if they could not be started (then
/// connections stay on the main runtime).
fn cores() -> Option<&'static [Core]> {
    static CORES: OnceLock<Option<Vec<Core>>> = OnceLock::new();
    CORES
        .get_or_init(|| {
            // With the main runtime's event loop, one per CPU.
            let n = std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .saturating_sub(1)
                .max(1);
            let mut cores = Vec::with_capacity(n);
            for i in 0..n {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .ok()?;
                let (jobs, mut rx) = mpsc::unbounded_channel::<Job>();
                std::thread::Builder::new()
                    .name(format!("nbdkit-conn-{i}"))
                    .spawn(move || {
                        rt.block_on(async move {
                            while let Some(job) = rx.recv().await {
                                job();
                            }
                        })
                    })
                    .ok()?;
                cores.push(Core {
                    jobs,
                    load: AtomicUsize::new(0),
                });
            }
            Some(cores)
        })
        .as_deref()
}

/// Whether connections can be served on connection threads.
pub(crate) fn available() -> bool {
    cores().is_some()
}

/// Start the connection threads now (best effort: without them,
/// connections stay on the main runtime).
pub(crate) fn start() {
    cores();
}

/// Whether a connection of a stack that never blocks is served on the main
/// runtime (see [`take_main`]).
static MAIN_TAKEN: AtomicBool = AtomicBool::new(false);

/// The main runtime's place for one connection, held while it is served.
pub(crate) struct MainSlot(());

impl Drop for MainSlot {
    fn drop(&mut self) {
        MAIN_TAKEN.store(false, Ordering::Release);
    }
}

/// The main runtime's place, if no connection holds it (see the module).
pub(crate) fn take_main() -> Option<MainSlot> {
    MAIN_TAKEN
        .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
        .ok()
        .map(|_| MainSlot(()))
}

/// Serve a connection of a stack that never blocks on the connection thread
/// with the fewest connections. Counted in `live` from now.
pub(crate) fn spawn(shared: &Arc<Shared>, live: &Arc<Live>, peer: Peer, stream: Portable) {
    let Some(cores) = cores() else {
        return;
    };
    let Some(guard) = live.enter(None) else {
        return;
    };
    let Some(core) = cores.iter().min_by_key(|c| c.load.load(Ordering::Relaxed)) else {
        return;
    };
    let load = &core.load;
    load.fetch_add(1, Ordering::Relaxed);
    let shared = shared.clone();
    let job: Job = Box::new(move || {
        // On the connection thread, in its runtime: the socket joins its
        // event loop.
        let served = async move {
            match stream {
                Portable::Tcp(s) => {
                    if let Ok(s) = tokio::net::TcpStream::from_std(s) {
                        serve(shared, peer, s, Some(guard)).await;
                    }
                }
                Portable::Unix(s) => {
                    if let Ok(s) = tokio::net::UnixStream::from_std(s) {
                        serve(shared, peer, s, Some(guard)).await;
                    }
                }
                Portable::Closed => drop(guard),
            }
            load.fetch_sub(1, Ordering::Relaxed);
        };
        tokio::spawn(served);
    });
    if core.jobs.send(job).is_err() {
        // The thread is gone (it never ends while the process runs): the
        // job, with the connection and its guard, was dropped.
        load.fetch_sub(1, Ordering::Relaxed);
    }
}
