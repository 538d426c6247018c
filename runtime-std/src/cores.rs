//! Connections of stacks that never block: each served wholly either on
//! the main runtime or on one of a few connection threads, each running a
//! current-thread tokio runtime with an event loop of its own (one fewer
//! thread than the CPUs: the main runtime's event loop is the other).
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
//! The main runtime stays one of the places: a lone client at queue depth 1
//! writing 4 KiB got 1.37 times the IOPS there, at 0.61 times the server CPU
//! per request, than on a connection thread. A new connection goes where the
//! fewest connections are served, the main runtime on a tie ([`place`]): the
//! first there, the next on a thread, and so on. Counting connections, not
//! requests, also spreads two busy clients that come after many idle ones:
//! when the first connection alone held the main runtime, 10,000 idle
//! connections sent both of nbdcopy's connections to the one thread (2 CPUs),
//! and its write of 1 GiB took 0.48 s instead of 0.26 s; now 0.27-0.30 s
//! against 0.28-0.31 s alone (medians of 7 and 9, `scripts/idle-conns.py`).
//! A busy client that comes after one idle client still goes to a thread.
//! The threads start with the server (their descriptors are there from the
//! start; a lone client's idle server holds 0.3 MiB more). The listeners and
//! the stacks that may block (served on threads of their own, see
//! [`crate::blocking`]) stay on the main runtime.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use nbdkit_core::backend::Peer;
use tokio::sync::mpsc;

use crate::connection::{serve, Live, Shared};

/// A connection's socket, detached from the runtime that accepted it.
pub(crate) enum Portable {
    Tcp(std::net::TcpStream),
    Unix(std::os::unix::net::UnixStream),
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

/// Start the connection threads now (best effort: without them,
/// connections stay on the main runtime).
pub(crate) fn start() {
    cores();
}

/// Connections of stacks that never block served on the main runtime.
static MAIN_LOAD: AtomicUsize = AtomicUsize::new(0);

/// A connection's place on the main runtime, held while it is served.
pub(crate) struct MainSlot(());

impl Drop for MainSlot {
    fn drop(&mut self) {
        MAIN_LOAD.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Where a new connection goes: `None` for the main runtime, else the index
/// of a connection thread. The one serving the fewest connections, the main
/// runtime on a tie (see the module).
fn place(main: usize, threads: impl IntoIterator<Item = usize>) -> Option<usize> {
    let (i, fewest) = threads
        .into_iter()
        .enumerate()
        .min_by_key(|&(_, load)| load)?;
    (fewest < main).then_some(i)
}

/// Where a new connection of a stack that never blocks is served.
pub(crate) enum Place {
    /// On the main runtime (always when there are no connection threads),
    /// holding its place there while it is served.
    Main(MainSlot),
    /// On the connection thread with this index ([`spawn`]).
    Thread(usize),
}

/// Choose the place of a new connection (see [`place`]).
pub(crate) fn choose() -> Place {
    let main = MAIN_LOAD.load(Ordering::Relaxed);
    let threads = cores().unwrap_or_default();
    match place(main, threads.iter().map(|c| c.load.load(Ordering::Relaxed))) {
        Some(i) => Place::Thread(i),
        None => {
            MAIN_LOAD.fetch_add(1, Ordering::Relaxed);
            Place::Main(MainSlot(()))
        }
    }
}

/// Serve a connection of a stack that never blocks on the connection thread
/// `thread` (from [`choose`]). Counted in `live` from now.
pub(crate) fn spawn(
    shared: &Arc<Shared>,
    live: &Arc<Live>,
    peer: Peer,
    stream: Portable,
    thread: usize,
) {
    let Some(core) = cores().and_then(|cores| cores.get(thread)) else {
        return;
    };
    let Some(guard) = live.enter(None) else {
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

#[cfg(test)]
mod tests {
    use super::place;

    #[test]
    fn connections_alternate_between_the_main_runtime_and_the_threads() {
        // No connection threads: always the main runtime.
        assert_eq!(place(5, []), None);
        // A lone client, and the first of several, is served on the main
        // runtime.
        assert_eq!(place(0, [0]), None);
        // The next goes to a thread, then they alternate: among many idle
        // connections, two busy ones that come one after the other are
        // served on two event loops.
        assert_eq!(place(1, [0]), Some(0));
        assert_eq!(place(1, [1]), None);
        assert_eq!(place(5000, [5000]), None);
        assert_eq!(place(5001, [5000]), Some(0));
        // The thread serving the fewest.
        assert_eq!(place(3, [2, 1, 2]), Some(1));
        assert_eq!(place(1, [2, 1, 2]), None);
    }
}
