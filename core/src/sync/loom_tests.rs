//! loom models of every place where threads meet:
//!
//! ```text
//! RUSTFLAGS="--cfg loom" cargo test --release -p nbdkit-core loom
//! ```
//!
//! Each model is small (two or three threads, one or two operations each)
//! so that loom can explore every interleaving; each says the property it
//! checks. Every type modelled here is the one runtime-std runs:
//! `connection.rs` (in-flight accounting and drain, the reply lock, the
//! thread-model gate) and `blocking.rs` (the worker pool, the reply
//! writer, the gate). test-all.sh runs them with `LOOM_MAX_PREEMPTIONS=3`.

use alloc::vec;
use alloc::vec::Vec;

use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::sync::Arc;
use loom::thread;

use loom::future::block_on;

use super::async_mutex::AsyncMutex;
use super::gate::{ConnectionGate, Gate};
use super::inflight::InFlight;
use super::pool::{Next, Pool, Work};
use super::reply_writer::ReplyWriter;
use super::Mutex;
use crate::backend::ThreadModel;
use crate::plugins::memory::{SparseArray, PAGE_SIZE};

// --- The memory plugin's sparse array -------------------------------------

/// The memory plugin: two writes to one page each land whole (never a mix).
#[test]
fn loom_sparse_array_writes_to_the_same_page_are_each_whole() {
    loom::model(|| {
        let a = Arc::new(SparseArray::new());
        let t = {
            let a = a.clone();
            thread::spawn(move || a.write(&[1; 8], 0))
        };
        a.write(&[2; 8], 0);
        t.join().unwrap();
        let mut b = [0u8; 8];
        a.read(&mut b, 0);
        // One write wins whole: never a mix of the two.
        assert!(b == [1; 8] || b == [2; 8], "{b:?}");
        assert_eq!(a.allocated_pages(), 1);
    });
}

/// The memory plugin: writes to two pages both land, each page allocated once.
#[test]
fn loom_sparse_array_writes_to_different_pages_both_land() {
    loom::model(|| {
        let a = Arc::new(SparseArray::new());
        let t = {
            let a = a.clone();
            thread::spawn(move || a.write(&[7; 4], PAGE_SIZE))
        };
        a.write(&[9; 4], 0);
        t.join().unwrap();
        let mut b = [0u8; 4];
        a.read(&mut b, 0);
        assert_eq!(b, [9; 4]);
        a.read(&mut b, PAGE_SIZE);
        assert_eq!(b, [7; 4]);
        assert_eq!(a.allocated_pages(), 2);
    });
}

/// An array holding ones in the 8 bytes across its first two pages, and
/// a thread writing twos over them (both page locks taken in turn).
fn array_with_racing_write() -> (Arc<SparseArray>, thread::JoinHandle<()>) {
    let a = Arc::new(SparseArray::new());
    a.write(&[1; 8], PAGE_SIZE - 4);
    let t = {
        let a = a.clone();
        thread::spawn(move || a.write(&[2; 8], PAGE_SIZE - 4))
    };
    (a, t)
}

/// The memory plugin: a read racing a write sees each page's part old or new.
#[test]
fn loom_sparse_array_reader_sees_old_or_new_never_torn() {
    loom::model(|| {
        let (a, t) = array_with_racing_write();
        let mut b = [0u8; 8];
        a.read(&mut b, PAGE_SIZE - 4);
        t.join().unwrap();
        // A write across pages is not atomic as a whole (nbdkit's is not
        // either), but each page's part is.
        for half in [&b[..4], &b[4..]] {
            assert!(half == [1; 4] || half == [2; 4], "{b:?}");
        }
    });
}

/// The memory plugin: a lent read racing a write to the same pages lends
/// each page's part old or new, and keeps it so after the write landed
/// (the write went to a copy of a lent page).
#[test]
fn loom_sparse_array_lent_pages_do_not_change_under_a_write() {
    loom::model(|| {
        let (a, t) = array_with_racing_write();
        let lent = a.lend(8, PAGE_SIZE - 4);
        let mut b = [0u8; 8];
        lent.copy_to(&mut b);
        for half in [&b[..4], &b[4..]] {
            assert!(half == [1; 4] || half == [2; 4], "{b:?}");
        }
        t.join().unwrap();
        let mut after = [0u8; 8];
        lent.copy_to(&mut after);
        assert_eq!(after, b);
        a.read(&mut after, PAGE_SIZE - 4);
        assert_eq!(after, [2; 8]);
    });
}

/// The memory plugin: a write received in place (a whole page, read into a
/// new page that replaces the old one) racing a lent read and a copied
/// read of that page: each sees the page old or new, whole; the lent bytes
/// stay as lent; the write lands.
#[test]
fn loom_sparse_array_received_write_racing_reads() {
    loom::model(|| {
        // Not loom's Arc: `receive` takes the plugin's own.
        let a = alloc::sync::Arc::new(SparseArray::new());
        a.write(&[1; 8], PAGE_SIZE - 4);
        let t = {
            let a = a.clone();
            thread::spawn(move || {
                use crate::backend::Receive;
                let mut r = a.receive(PAGE_SIZE as usize, PAGE_SIZE).unwrap();
                let mut bufs = Vec::new();
                r.bufs(0, &mut bufs);
                for b in bufs {
                    b.fill(2);
                }
                r.commit();
            })
        };
        let lent = a.lend(8, PAGE_SIZE - 4);
        let mut copied = [0u8; 4];
        a.read(&mut copied, PAGE_SIZE + 100);
        assert!(
            copied == [1; 4] || copied == [0; 4] || copied == [2; 4],
            "{copied:?}"
        );
        let mut b = [0u8; 8];
        lent.copy_to(&mut b);
        assert_eq!(b[..4], [1; 4]);
        assert!(b[4..] == [1; 4] || b[4..] == [2; 4], "{b:?}");
        t.join().unwrap();
        let mut after = [0u8; 8];
        lent.copy_to(&mut after);
        assert_eq!(after, b);
        a.read(&mut after, PAGE_SIZE - 4);
        assert_eq!(after, [1, 1, 1, 1, 2, 2, 2, 2]);
    });
}

/// The memory plugin: a zero racing a write to a new page leaves it consistent.
#[test]
fn loom_sparse_array_zero_racing_write_to_a_new_page() {
    loom::model(|| {
        let a = Arc::new(SparseArray::new());
        let t = {
            let a = a.clone();
            thread::spawn(move || a.write(&[5; 4], 16))
        };
        a.zero(PAGE_SIZE, 0);
        t.join().unwrap();
        let mut b = [0u8; 4];
        a.read(&mut b, 16);
        // Either order is fine; the array stays consistent with it.
        assert!(b == [5; 4] || b == [0; 4]);
        assert_eq!(a.allocated_pages(), usize::from(b == [5; 4]));
    });
}

// --- The thread-model locks -----------------------------------------------

/// Two requests, from two connections or one, run a "plugin call" that
/// counts how many are inside it at once.
fn most_at_once(model: ThreadModel, same_connection: bool) -> usize {
    // Outside the model: a plain atomic that gathers every execution.
    let max = std::sync::Arc::new(core::sync::atomic::AtomicUsize::new(0));
    let m = max.clone();
    loom::model(move || {
        let gate = Arc::new(Gate::new(model));
        let conns = Arc::new([ConnectionGate::new(), ConnectionGate::new()]);
        let inside = Arc::new(AtomicUsize::new(0));
        let call = {
            let m = m.clone();
            move |gate: &Gate, conn: &ConnectionGate, inside: &AtomicUsize| {
                let _pass = gate.request(Some(conn));
                let n = inside.fetch_add(1, Ordering::SeqCst) + 1;
                m.fetch_max(n, core::sync::atomic::Ordering::SeqCst);
                inside.fetch_sub(1, Ordering::SeqCst);
            }
        };
        let t = {
            let (gate, conns, inside, call) =
                (gate.clone(), conns.clone(), inside.clone(), call.clone());
            thread::spawn(move || call(&gate, &conns[0], &inside))
        };
        call(&gate, &conns[usize::from(!same_connection)], &inside);
        t.join().unwrap();
    });
    max.load(core::sync::atomic::Ordering::SeqCst)
}

/// serialize_all_requests (and serialize_connections): never two plugin
/// calls at once, even from two connections.
#[test]
fn loom_serialize_all_requests_never_overlaps_calls() {
    assert_eq!(most_at_once(ThreadModel::SerializeAllRequests, false), 1);
    assert_eq!(most_at_once(ThreadModel::SerializeConnections, false), 1);
}

/// serialize_requests: never two requests of one connection in the plugin at
/// once; two connections' requests may overlap.
#[test]
fn loom_serialize_requests_serializes_one_connection_only() {
    assert_eq!(most_at_once(ThreadModel::SerializeRequests, true), 1);
    assert_eq!(most_at_once(ThreadModel::SerializeRequests, false), 2);
}

/// parallel: no lock, requests of one connection may overlap.
#[test]
fn loom_parallel_lets_calls_overlap() {
    assert_eq!(most_at_once(ThreadModel::Parallel, true), 2);
}

/// serialize_connections: never two connections served at once (the second
/// waits on the async connection lock, and is woken when the first ends).
#[test]
fn loom_serialize_connections_admits_one_connection_at_a_time() {
    loom::model(|| {
        let gate = Arc::new(Gate::new(ThreadModel::SerializeConnections));
        let inside = Arc::new(AtomicUsize::new(0));
        let serve = |gate: &Gate, inside: &AtomicUsize| {
            block_on(async {
                let _pass = gate.connection().await;
                assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0);
                inside.fetch_sub(1, Ordering::SeqCst);
            })
        };
        let t = {
            let (gate, inside) = (gate.clone(), inside.clone());
            thread::spawn(move || serve(&gate, &inside))
        };
        serve(&gate, &inside);
        t.join().unwrap();
    });
}

/// Calls outside a connection's requests (preconnect, close) take the
/// server-wide lock under serialize_all_requests: never beside a request.
#[test]
fn loom_serialize_all_requests_orders_calls_outside_requests_too() {
    loom::model(|| {
        let gate = Arc::new(Gate::new(ThreadModel::SerializeAllRequests));
        let conn = Arc::new(ConnectionGate::new());
        let inside = Arc::new(AtomicUsize::new(0));
        let t = {
            let (gate, conn, inside) = (gate.clone(), conn.clone(), inside.clone());
            thread::spawn(move || {
                let _p = gate.request(Some(&conn));
                assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0);
                inside.fetch_sub(1, Ordering::SeqCst);
            })
        };
        {
            let _p = gate.request(None);
            assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0);
            inside.fetch_sub(1, Ordering::SeqCst);
        }
        t.join().unwrap();
    });
}

// --- In-flight accounting and drain ---------------------------------------

/// Drain returns only after every in-flight request replied: requests are
/// started (tickets taken) and answered on worker threads; then the client
/// sends DISC (or the server shuts down) and the connection drains. Every
/// request that was started has its reply written before the drain returns,
/// and none starts after it.
#[test]
fn loom_drain_on_disc_waits_for_every_reply() {
    loom::model(|| {
        let flight = InFlight::new(2);
        let replies = Arc::new(AtomicUsize::new(0));
        let workers: Vec<_> = (0..2)
            .map(|_| {
                let (flight, replies) = (flight.clone(), replies.clone());
                thread::spawn(move || {
                    // The reader takes a ticket; the worker answers.
                    if let Some(ticket) = block_on(flight.begin()) {
                        replies.fetch_add(1, Ordering::SeqCst);
                        drop(ticket);
                        1
                    } else {
                        0
                    }
                })
            })
            .collect();
        // NBD_CMD_DISC: stop reading, wait for the replies.
        block_on(flight.drain());
        let done = replies.load(Ordering::SeqCst);
        assert_eq!(flight.in_flight(), 0);
        let started: usize = workers.into_iter().map(|w| w.join().unwrap()).sum();
        // Nothing was answered after the drain returned.
        assert_eq!(done, started);
        assert!(block_on(flight.begin()).is_none());
    });
}

/// The connection task, at the limit, waits for a slot; the slot's request
/// ends on another thread: the task is woken (no lost wake-up, which loom
/// would report as a deadlock) and never finds more than `limit` in flight.
/// Then it drains while the second request is still answered elsewhere.
#[test]
fn loom_a_request_waiting_for_a_slot_is_woken_and_drain_waits_for_it() {
    loom::model(|| {
        let flight = InFlight::new(1);
        let first = block_on(flight.begin()).expect("a free slot");
        let inside = Arc::new(AtomicUsize::new(1));
        let t = {
            let inside = inside.clone();
            thread::spawn(move || {
                inside.fetch_sub(1, Ordering::SeqCst);
                drop(first);
            })
        };
        let second = block_on(flight.begin()).expect("open");
        assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0);
        let answered = Arc::new(AtomicUsize::new(0));
        let u = {
            let answered = answered.clone();
            thread::spawn(move || {
                answered.store(1, Ordering::SeqCst);
                drop(second);
            })
        };
        block_on(flight.drain());
        assert_eq!(answered.load(Ordering::SeqCst), 1);
        t.join().unwrap();
        u.join().unwrap();
    });
}

/// The in-flight limit (`-t`): never more requests in flight than it.
#[test]
fn loom_in_flight_never_exceeds_the_limit() {
    loom::model(|| {
        let flight = InFlight::new(1);
        let inside = Arc::new(AtomicUsize::new(0));
        let run = |flight: &InFlight, inside: &AtomicUsize| {
            let t = block_on(flight.begin()).expect("open");
            assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0);
            inside.fetch_sub(1, Ordering::SeqCst);
            drop(t);
        };
        let t = {
            let (flight, inside) = (flight.clone(), inside.clone());
            thread::spawn(move || run(&flight, &inside))
        };
        run(&flight, &inside);
        t.join().unwrap();
    });
}

// --- The async reply lock (tokio path) ------------------------------------

/// A reply is never interleaved with another: two tasks on two threads
/// write a reply in two parts each, with the lock held across the parts
/// (as across `.await`s); the output is one reply after the other.
#[test]
fn loom_async_replies_are_written_whole_never_interleaved() {
    loom::model(|| {
        let w = Arc::new(AsyncMutex::new(Vec::<u8>::new()));
        let send = |w: &AsyncMutex<Vec<u8>>, parts: [&[u8]; 2]| {
            block_on(async {
                let mut out = w.lock().await;
                out.extend_from_slice(parts[0]);
                loom::thread::yield_now();
                out.extend_from_slice(parts[1]);
            })
        };
        let t = {
            let w = w.clone();
            thread::spawn(move || send(&w, [b"AA", b"aa"]))
        };
        send(&w, [b"BB", b"bb"]);
        t.join().unwrap();
        let out = Arc::try_unwrap(w).expect("senders are done").into_inner();
        assert!(out == b"AAaaBBbb" || out == b"BBbbAAaa", "{out:?}");
    });
}

/// Three tasks contend for the reply lock: each gets it (no waiter is lost
/// when the lock passes along the queue, which loom would report as a
/// deadlock) and never two hold it at once.
#[test]
fn loom_async_lock_wakes_every_waiter() {
    loom::model(|| {
        let m = Arc::new(AsyncMutex::new(0usize));
        let ts: Vec<_> = (0..2)
            .map(|_| {
                let m = m.clone();
                thread::spawn(move || block_on(async { *m.lock().await += 1 }))
            })
            .collect();
        block_on(async { *m.lock().await += 1 });
        for t in ts {
            t.join().unwrap();
        }
        assert_eq!(Arc::try_unwrap(m).expect("done").into_inner(), 3);
    });
}

/// A waiter that gives up (its task is dropped, e.g. at server shutdown)
/// after it was woken passes the wake-up on: the other waiter still gets
/// the lock.
#[test]
fn loom_async_lock_a_dropped_waiter_passes_the_wake_up_on() {
    use core::future::Future;
    use core::pin::pin;
    use core::task::{Context, Poll, Waker};
    loom::model(|| {
        let m = Arc::new(AsyncMutex::new(()));
        let held = block_on(m.lock());
        // A waiter that queues, then is dropped without taking the lock.
        let quitter = {
            let m = m.clone();
            thread::spawn(move || {
                let mut l = pin!(m.lock());
                let mut cx = Context::from_waker(Waker::noop());
                if let Poll::Ready(g) = l.as_mut().poll(&mut cx) {
                    drop(g);
                }
            })
        };
        let waiter = {
            let m = m.clone();
            thread::spawn(move || drop(block_on(m.lock())))
        };
        drop(held);
        quitter.join().unwrap();
        waiter.join().unwrap();
    });
}

// --- The blocking worker pool ---------------------------------------------

/// A connection's requests: `n` of them, then the end of input.
struct Requests {
    left: usize,
}

/// Counts what the pool does with the requests.
struct Counting {
    /// Requests in `answer` now, and the most at once.
    inside: AtomicUsize,
    most: AtomicUsize,
    answered: AtomicUsize,
}

impl Work for Counting {
    type Input = Requests;
    type Request = usize;
    type Local = ();
    fn read(&self, input: &mut Requests, _: &mut ()) -> Next<usize> {
        if input.left == 0 {
            return Next::End;
        }
        input.left -= 1;
        Next::Run(input.left)
    }
    fn answer(&self, _req: usize, _: &mut ()) -> bool {
        let n = self.inside.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(n, Ordering::SeqCst);
        self.inside.fetch_sub(1, Ordering::SeqCst);
        self.answered.fetch_add(1, Ordering::SeqCst);
        true
    }
}

/// Serve `requests` with at most `max` workers, as blocking.rs does: the
/// calling thread is worker 0, `spawn` starts the others, the caller joins
/// them all. Returns (workers started, most requests at once in answer).
fn pool_run(requests: usize, max: usize) -> (usize, usize) {
    let pool = Arc::new(Pool::new(Requests { left: requests }, max));
    let work = Arc::new(Counting {
        inside: AtomicUsize::new(0),
        most: AtomicUsize::new(0),
        answered: AtomicUsize::new(0),
    });
    let handles = Arc::new(Mutex::new(Vec::new()));
    fn worker(
        pool: Arc<Pool<Requests>>,
        work: Arc<Counting>,
        handles: Arc<Mutex<Vec<thread::JoinHandle<()>>>>,
    ) {
        let (p, w, h) = (pool.clone(), work.clone(), handles.clone());
        let mut spawn = move |_index: usize| {
            let (p, w, h2) = (p.clone(), w.clone(), h.clone());
            let t = thread::spawn(move || worker(p, w, h2));
            h.lock().unwrap().push(t);
        };
        pool.serve(&*work, &mut (), &mut spawn);
    }
    worker(pool.clone(), work.clone(), handles.clone());
    // Join every worker (the scope's end in blocking.rs).
    loop {
        let next = handles.lock().unwrap().pop();
        match next {
            Some(t) => t.join().unwrap(),
            None => break,
        }
    }
    // Never loses a request: each one read was answered once.
    assert_eq!(work.answered.load(Ordering::SeqCst), requests);
    let started = pool.started();
    assert!(started <= max, "{started} workers started, at most {max}");
    (started, work.most.load(Ordering::SeqCst))
}

/// The worker pool never exceeds -t threads and never loses a request,
/// even when two workers decide to start another at the same moment.
#[test]
fn loom_worker_pool_never_exceeds_its_threads_nor_loses_a_request() {
    loom::model(|| {
        pool_run(3, 3);
    });
}

/// serialize_requests (and the stricter models): the pool has one worker,
/// so never two requests of one connection in the plugin at once.
#[test]
fn loom_worker_pool_of_one_runs_one_request_at_a_time() {
    loom::model(|| {
        let (started, most) = pool_run(2, 1);
        assert_eq!((started, most), (1, 1));
    });
}

/// parallel: requests of one connection may overlap in the plugin.
#[test]
fn loom_worker_pool_lets_requests_overlap_under_parallel() {
    let seen = std::sync::Arc::new(core::sync::atomic::AtomicUsize::new(0));
    let s = seen.clone();
    loom::model(move || {
        let (_, most) = pool_run(2, 2);
        s.fetch_max(most, core::sync::atomic::Ordering::SeqCst);
    });
    assert_eq!(seen.load(core::sync::atomic::Ordering::SeqCst), 2);
}

// --- Reply writer ordering (blocking path) ----------------------------------

/// A reply is never interleaved with another (the blocking workers' writer).
#[test]
fn loom_replies_are_written_whole_never_interleaved() {
    loom::model(|| {
        let w = Arc::new(ReplyWriter::new(Vec::new()));
        let t = {
            let w = w.clone();
            thread::spawn(move || assert!(w.send(&[b"AA", b"aaaa"])))
        };
        assert!(w.send(&[b"BB", b"bbbb"]));
        t.join().unwrap();
        let w = Arc::try_unwrap(w).expect("senders are done");
        let out = w.into_inner();
        let ab = [&b"AAaaaa"[..], b"BBbbbb"].concat();
        let ba = [&b"BBbbbb"[..], b"AAaaaa"].concat();
        assert!(out == ab || out == ba, "{:?}", core::str::from_utf8(&out));
    });
}

/// The replies one thread writes reach the wire in the order it wrote them.
#[test]
fn loom_reply_writer_keeps_order_of_one_thread() {
    loom::model(|| {
        let w = Arc::new(ReplyWriter::new(vec![]));
        let t = {
            let w = w.clone();
            thread::spawn(move || {
                w.send(&[b"1"]);
                w.send(&[b"2"]);
            })
        };
        w.send(&[b"x"]);
        t.join().unwrap();
        let out = Arc::try_unwrap(w).expect("done").into_inner();
        let one = out.iter().position(|&b| b == b'1').unwrap();
        let two = out.iter().position(|&b| b == b'2').unwrap();
        assert!(one < two);
    });
}
