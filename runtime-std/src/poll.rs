//! Adaptive busy-polling for the next request of a connection at queue
//! depth 1.
//!
//! A client that sends one request at a time sends the next one a few tens
//! of microseconds after it got the previous reply. A server that goes to
//! sleep in the meantime (epoll_wait, or a blocking read) pays the kernel's
//! wake-up on every request: on a virtual machine an idle vCPU halts and is
//! woken by an interrupt, which costs as much as the request itself. So
//! before it sleeps, a connection that has nothing in flight and nothing
//! buffered looks at its socket without sleeping (`recv(MSG_PEEK |
//! MSG_DONTWAIT)`) for a short budget; once the bytes are there the normal
//! read finds them (the socket's readiness is reported at once).
//!
//! The budget adapts per connection, as QEMU's AioContext polling does: a
//! wait that ended within the maximum but after the budget grows it (from
//! [`GROW_START_NS`], doubling); a wait longer than the maximum halves it,
//! down to zero, so that a connection whose client pauses between requests
//! soon stops spinning. An idle connection never spins: polling only starts
//! after a request was answered, and never lasts longer than the budget.
//!
//! Once the budget is zero, each wait includes the server's own wake-up,
//! which on a virtual machine may alone exceed the maximum: no wait then
//! looks short enough for the budget to grow again, though the client
//! answers within microseconds. So every [`PROBE_EVERY`]th wait without
//! spinning spins for the maximum once: if the input comes meanwhile, the
//! budget stays there; if not, it goes back to zero. In one fio run at queue
//! depth 1 (4 KiB writes, `memory`, on a connection thread) 3-12% of the
//! waits found the budget at zero without the probe, 2-4% with it; IOPS:
//! 21.0-29.1k before, 28.2-30.6k with it (5 runs each); nbd-bench `--quick`
//! against the binary before: `memory` qd1-read 1.24 (noisy), qd1-write
//! 1.11, `file` qd1-read 1.14, qd1-write 1.08, server CPU per request the
//! same. A client that pauses longer costs one spin of the maximum every
//! [`PROBE_EVERY`] requests.
//!
//! Between two looks the spinner yields its CPU (`sched_yield`). The
//! send of a reply wakes the client with a synchronous wake-up, which asks
//! the scheduler to run the client on the sender's CPU, since the sender
//! is expected to sleep. A spinner that kept the CPU would hold the client
//! in its run queue, or make the kernel wake the other vCPU for it; a
//! spinner that yields lets the client run there at once, and finds its
//! next request at the following look, with no wake-up across CPUs
//! (nbd-bench `--quick` against spinning without yielding, unpinned:
//! `memory` qd1-read 1.59, qd1-write 1.80, queue depth 32 unchanged). For
//! the same reason a spinner on a busy CPU costs the other tasks little:
//! each look gives way to them, and a long gap between two looks is no
//! sign of preemption.
//! On the blocking path the worker that reads the next request spins only
//! while no request runs on another worker, so that it never takes the
//! CPU from one.
//!
//! At most one connection fewer than there are CPUs spins at any moment
//! (one on two CPUs; the others sleep as before), so that spinning never
//! holds every runtime worker nor every CPU: other connections' requests
//! are always picked up at once.
//!
//! `NBDKIT_POLL_MAX_NS` (in the environment of the server) sets the maximum
//! budget in nanoseconds; `0` turns polling off.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

/// The default maximum budget: covers a client's turn-around between a
/// reply and its next request on the same machine.
const DEFAULT_MAX_NS: u32 = 50_000;
/// The budget a connection starts with once a short wait shows that polling
/// may pay.
const GROW_START_NS: u32 = 4_000;
/// A connection that stopped spinning spins once more, for the maximum
/// budget, after this many waits (see [`Poller::spin`]).
const PROBE_EVERY: u8 = 64;
/// The largest maximum accepted from the environment (1 ms): more would
/// let one connection hold a runtime worker too long.
const LIMIT_NS: u32 = 1_000_000;

/// The maximum budget (`NBDKIT_POLL_MAX_NS`, else [`DEFAULT_MAX_NS`]).
fn max_ns() -> u32 {
    static MAX: OnceLock<u32> = OnceLock::new();
    *MAX.get_or_init(|| {
        std::env::var("NBDKIT_POLL_MAX_NS")
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map_or(DEFAULT_MAX_NS, |v| v.min(u64::from(LIMIT_NS)) as u32)
    })
}

/// How many connections may spin at once: one fewer than the CPUs (at
/// least one).
fn max_spinners() -> usize {
    static MAX: OnceLock<usize> = OnceLock::new();
    *MAX.get_or_init(|| {
        std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .saturating_sub(1)
            .max(1)
    })
}

/// Connections spinning now.
static SPINNERS: AtomicUsize = AtomicUsize::new(0);

/// A turn at spinning (see [`max_spinners`]), given back when dropped.
struct Turn;

impl Turn {
    fn take() -> Option<Turn> {
        let mut n = SPINNERS.load(Ordering::Relaxed);
        loop {
            if n >= max_spinners() {
                return None;
            }
            match SPINNERS.compare_exchange_weak(n, n + 1, Ordering::Acquire, Ordering::Relaxed) {
                Ok(_) => return Some(Turn),
                Err(now) => n = now,
            }
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        SPINNERS.fetch_sub(1, Ordering::Release);
    }
}

/// What a look at the socket saw.
enum Peek {
    /// Bytes (or the end of the stream, or an error: the read says which).
    Ready,
    /// Nothing yet.
    Empty,
}

/// Whether `fd` has something to read, without waiting.
fn peek(fd: RawFd) -> Peek {
    let mut byte = 0u8;
    loop {
        // SAFETY: `fd` is the connection's socket, open for as long as the
        // caller holds the stream it came from; the buffer is one valid
        // byte; MSG_PEEK leaves the byte in the socket.
        let n = unsafe {
            libc::recv(
                fd,
                (&mut byte as *mut u8).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        if n >= 0 {
            return Peek::Ready;
        }
        match std::io::Error::last_os_error().kind() {
            std::io::ErrorKind::WouldBlock => return Peek::Empty,
            std::io::ErrorKind::Interrupted => continue,
            _ => return Peek::Ready,
        }
    }
}

/// One connection's polling state.
#[derive(Debug)]
pub(crate) struct Poller {
    fd: Option<RawFd>,
    budget_ns: u32,
    max_ns: u32,
    /// Waits without spinning since the last probe.
    unspun: u8,
}

/// A wait in progress (from [`Poller::spin`] to [`Poller::waited`]).
#[must_use]
pub(crate) struct Wait {
    start: Instant,
    /// The input came while spinning.
    polled: bool,
    /// A look after the spinning had stopped (see [`Poller::spin`]).
    probe: bool,
}

impl Poller {
    /// A poller for the socket `fd` (`None`: no socket to look at, never
    /// spins).
    pub(crate) fn new(fd: Option<RawFd>) -> Poller {
        Poller::with_max(fd, max_ns())
    }

    fn with_max(fd: Option<RawFd>, max_ns: u32) -> Poller {
        Poller {
            fd: fd.filter(|_| max_ns > 0),
            budget_ns: 0,
            max_ns,
            unspun: 0,
        }
    }

    /// Look for input on the socket without sleeping, for at most the
    /// current budget (the caller has nothing in flight: queue depth one).
    /// The caller then reads as usual (at once, if the input came), and
    /// gives the returned wait to [`Poller::waited`] when the read is done.
    pub(crate) fn spin(&mut self) -> Option<Wait> {
        let fd = self.fd?;
        let mut probe = false;
        if self.budget_ns == 0 {
            // Without spinning, each wait includes the server's own
            // wake-up, which may alone exceed the maximum: then no wait
            // ever looks short enough to start spinning again, though the
            // client answers within microseconds. Now and then, look for
            // the full maximum: if the input comes meanwhile, spinning
            // resumes; if not, it stays off.
            self.unspun += 1;
            if self.unspun >= PROBE_EVERY {
                self.unspun = 0;
                self.budget_ns = self.max_ns;
                probe = true;
            }
        }
        let start = Instant::now();
        let mut polled = false;
        // Without a turn (other connections spin), the wait is measured as
        // usual and the read sleeps.
        let turn = if self.budget_ns > 0 {
            Turn::take()
        } else {
            None
        };
        if turn.is_some() {
            let budget = std::time::Duration::from_nanos(u64::from(self.budget_ns));
            loop {
                if let Peek::Ready = peek(fd) {
                    polled = true;
                    break;
                }
                std::thread::yield_now();
                if start.elapsed() >= budget {
                    break;
                }
            }
        }
        Some(Wait {
            start,
            polled,
            probe,
        })
    }

    /// The wait `w` ended (the read returned): adapt the budget to how long
    /// it took.
    pub(crate) fn waited(&mut self, w: Wait) {
        if w.probe && !w.polled {
            self.budget_ns = 0;
            return;
        }
        let ns = u32::try_from(w.start.elapsed().as_nanos()).unwrap_or(u32::MAX);
        self.adapt(ns, w.polled);
    }

    fn adapt(&mut self, ns: u32, polled: bool) {
        if polled || ns <= self.budget_ns {
            // Within the budget: just right.
        } else if ns > self.max_ns {
            // A pause longer than any budget: spin less.
            self.budget_ns /= 2;
            if self.budget_ns < GROW_START_NS / 2 {
                self.budget_ns = 0;
            }
        } else {
            // The input came soon after the budget ran out: spin longer.
            self.budget_ns = self
                .budget_ns
                .saturating_mul(2)
                .max(GROW_START_NS)
                .min(self.max_ns);
        }
    }

    #[cfg(test)]
    fn budget(&self) -> u32 {
        self.budget_ns
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;

    #[test]
    fn grows_on_short_waits_and_shrinks_to_nothing_on_long_ones() {
        let mut p = Poller::with_max(Some(0), 50_000);
        assert_eq!(p.budget(), 0);
        p.adapt(10_000, false);
        assert_eq!(p.budget(), GROW_START_NS);
        p.adapt(10_000, false);
        assert_eq!(p.budget(), 8_000);
        p.adapt(10_000, false);
        assert_eq!(p.budget(), 16_000);
        // Caught while polling, or within the budget: unchanged.
        p.adapt(12_000, true);
        p.adapt(12_000, false);
        assert_eq!(p.budget(), 16_000);
        for _ in 0..4 {
            p.adapt(40_000, false);
        }
        assert_eq!(p.budget(), 50_000, "capped at the maximum");
        for _ in 0..6 {
            p.adapt(1_000_000, false);
        }
        assert_eq!(p.budget(), 0, "a client that pauses stops the spinning");
        p.adapt(1_000_000, false);
        assert_eq!(p.budget(), 0);
    }

    #[test]
    fn looks_again_now_and_then_after_it_stopped() {
        let (mut a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut p = Poller::with_max(Some(b.as_raw_fd()), 1_000_000);
        a.write_all(b"x").unwrap();
        // The budget is zero: no look at the socket, though it has input.
        for _ in 1..PROBE_EVERY {
            let w = p.spin().unwrap();
            assert!(!w.polled);
            p.adapt(2_000_000, w.polled);
            assert_eq!(p.budget(), 0);
        }
        // Then one look for the full maximum, which sees the input, and
        // the budget stays.
        let w = p.spin().unwrap();
        assert!(w.polled);
        p.waited(w);
        assert_eq!(p.budget(), 1_000_000);
        // A look that sees nothing turns the spinning off at once.
        let mut got = [0u8; 1];
        assert_eq!(std::io::Read::read(&mut &b, &mut got).unwrap(), 1);
        p.budget_ns = 0;
        p.max_ns = 1_000;
        for _ in 1..PROBE_EVERY {
            let w = p.spin().unwrap();
            p.adapt(2_000_000, w.polled);
        }
        let w = p.spin().unwrap();
        assert!(w.probe && !w.polled);
        p.waited(w);
        assert_eq!(p.budget(), 0);
    }

    #[test]
    fn off_without_a_socket_or_a_maximum() {
        assert!(Poller::with_max(None, 50_000).spin().is_none());
        assert!(Poller::with_max(Some(0), 0).spin().is_none());
    }

    #[test]
    fn sees_input_and_the_end_and_leaves_the_bytes() {
        let (mut a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut p = Poller::with_max(Some(b.as_raw_fd()), 1_000_000);
        p.budget_ns = 1_000;
        // Nothing to read: the budget runs out.
        let w = p.spin().unwrap();
        assert!(!w.polled);
        p.budget_ns = 1_000_000;
        a.write_all(b"x").unwrap();
        let w = p.spin().unwrap();
        assert!(w.polled);
        p.waited(w);
        let mut got = [0u8; 2];
        assert_eq!(std::io::Read::read(&mut &b, &mut got).unwrap(), 1);
        assert_eq!(got[0], b'x');
        drop(a);
        let w = p.spin().unwrap();
        assert!(w.polled, "the end of the stream ends the spinning");
    }
}
