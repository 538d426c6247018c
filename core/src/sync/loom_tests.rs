//! loom models of every place where threads meet:
//!
//! ```text
//! RUSTFLAGS="--cfg loom" cargo test --release -p nbdkit-core loom
//! ```
//!
//! Each model is small (two or three threads, one or two operations each)
//! so that loom can explore every interleaving.

use alloc::vec;
use alloc::vec::Vec;

use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::sync::Arc;
use loom::thread;

use super::gate::{ConnectionGate, Gate};
use super::inflight::InFlight;
use super::reply_writer::ReplyWriter;
use crate::backend::ThreadModel;
use crate::plugins::memory::{SparseArray, PAGE_SIZE};

// --- The memory plugin's sparse array -------------------------------------

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

#[test]
fn loom_sparse_array_reader_sees_old_or_new_never_torn() {
    loom::model(|| {
        let a = Arc::new(SparseArray::new());
        a.write(&[1; 8], PAGE_SIZE - 4);
        let t = {
            let a = a.clone();
            // Spans two pages: both page locks are taken in turn.
            thread::spawn(move || a.write(&[2; 8], PAGE_SIZE - 4))
        };
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
                let _pass = gate.request(conn);
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

#[test]
fn loom_serialize_all_requests_never_overlaps_calls() {
    assert_eq!(most_at_once(ThreadModel::SerializeAllRequests, false), 1);
    assert_eq!(most_at_once(ThreadModel::SerializeConnections, false), 1);
}

#[test]
fn loom_serialize_requests_serializes_one_connection_only() {
    assert_eq!(most_at_once(ThreadModel::SerializeRequests, true), 1);
    assert_eq!(most_at_once(ThreadModel::SerializeRequests, false), 2);
}

#[test]
fn loom_parallel_lets_calls_overlap() {
    assert_eq!(most_at_once(ThreadModel::Parallel, true), 2);
}

#[test]
fn loom_serialize_connections_admits_one_connection_at_a_time() {
    loom::model(|| {
        let gate = Arc::new(Gate::new(ThreadModel::SerializeConnections));
        let inside = Arc::new(AtomicUsize::new(0));
        let serve = |gate: &Gate, inside: &AtomicUsize| {
            let _pass = gate.connection();
            assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0);
            inside.fetch_sub(1, Ordering::SeqCst);
        };
        let t = {
            let (gate, inside) = (gate.clone(), inside.clone());
            thread::spawn(move || serve(&gate, &inside))
        };
        serve(&gate, &inside);
        t.join().unwrap();
    });
}

// --- In-flight accounting and drain ---------------------------------------

/// A connection reads requests (here: takes tickets) and hands each to a
/// worker that writes its reply; then the client sends DISC (or the server
/// shuts down) and the connection drains. Every request that was started
/// has its reply written before the drain returns, and none starts after.
#[test]
fn loom_drain_on_disc_waits_for_every_reply() {
    loom::model(|| {
        let flight = Arc::new(InFlight::new(2));
        let replies = Arc::new(AtomicUsize::new(0));
        let workers: Vec<_> = (0..2)
            .map(|_| {
                let (flight, replies) = (flight.clone(), replies.clone());
                thread::spawn(move || {
                    // The reader takes a ticket; the worker answers.
                    if let Some(ticket) = flight.begin() {
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
        flight.drain();
        let done = replies.load(Ordering::SeqCst);
        assert_eq!(flight.in_flight(), 0);
        let started: usize = workers.into_iter().map(|w| w.join().unwrap()).sum();
        // Nothing was answered after the drain returned.
        assert_eq!(done, started);
        assert!(flight.begin().is_none());
    });
}

#[test]
fn loom_shutdown_closes_while_a_request_waits_for_a_slot() {
    loom::model(|| {
        let flight = Arc::new(InFlight::new(1));
        let first = flight.begin().expect("a free slot");
        let waiter = {
            let flight = flight.clone();
            // Blocks on the limit until the first request ends, or the
            // connection closes.
            thread::spawn(move || flight.begin().map(drop).is_some())
        };
        let closer = {
            let flight = flight.clone();
            thread::spawn(move || flight.close())
        };
        drop(first);
        closer.join().unwrap();
        let _ = waiter.join().unwrap();
        flight.drain();
        assert_eq!(flight.in_flight(), 0);
    });
}

#[test]
fn loom_in_flight_never_exceeds_the_limit() {
    loom::model(|| {
        let flight = Arc::new(InFlight::new(1));
        let inside = Arc::new(AtomicUsize::new(0));
        let run = |flight: &InFlight, inside: &AtomicUsize| {
            let t = flight.begin().expect("open");
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

// --- Reply writer ordering ------------------------------------------------

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
