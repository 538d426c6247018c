//! Per-connection in-flight accounting: how many requests were read and
//! not yet answered, a limit on them (`-t`), and the drain that NBD_CMD_DISC,
//! the end of the client's input and server shutdown wait for, so every
//! request already read gets its reply before the connection closes.
//!
//! runtime-std's connection task is the one waiter: it waits for a free
//! slot before it starts a request, and for the drain at the end. A request
//! ends when its [`Ticket`] is dropped, after its reply is written, on any
//! thread. The waiting is a [`Waker`] under the state's mutex, so it works
//! with any executor and loom checks it (`loom::future::block_on`).

use core::future::poll_fn;
use core::task::{Context, Poll, Waker};

use super::{lock, Arc, Mutex};

#[derive(Debug, Default)]
struct State {
    in_flight: usize,
    closing: bool,
    /// The task waiting for a slot or for the drain.
    waiter: Option<Waker>,
}

#[derive(Debug)]
struct Shared {
    limit: usize,
    state: Mutex<State>,
}

/// The requests of one connection that are still being served (a handle:
/// clones share the count).
#[derive(Debug, Clone)]
pub struct InFlight(Arc<Shared>);

/// One request in flight; dropping it (after its reply is written) ends it.
#[derive(Debug)]
#[must_use = "the request ends when the ticket is dropped"]
pub struct Ticket {
    owner: Arc<Shared>,
}

impl InFlight {
    /// At most `limit` requests at once (at least 1).
    pub fn new(limit: usize) -> Self {
        InFlight(Arc::new(Shared {
            limit: limit.max(1),
            state: Mutex::new(State::default()),
        }))
    }

    /// Start a request now if a slot is free: `Ready(Some)`; `Ready(None)`
    /// once the connection drains (no request starts after that);
    /// `Pending` while `limit` are in flight (the task is woken when one
    /// ends).
    pub fn poll_begin(&self, cx: &mut Context<'_>) -> Poll<Option<Ticket>> {
        let mut s = lock(&self.0.state);
        if s.closing {
            return Poll::Ready(None);
        }
        if s.in_flight < self.0.limit {
            s.in_flight += 1;
            return Poll::Ready(Some(Ticket {
                owner: self.0.clone(),
            }));
        }
        register(&mut s.waiter, cx.waker());
        Poll::Pending
    }

    /// Wait for a slot and start a request (see [`InFlight::poll_begin`]).
    pub async fn begin(&self) -> Option<Ticket> {
        poll_fn(|cx| self.poll_begin(cx)).await
    }

    /// Close, then `Ready` once every request in flight has ended.
    pub fn poll_drain(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut s = lock(&self.0.state);
        s.closing = true;
        if s.in_flight == 0 {
            return Poll::Ready(());
        }
        register(&mut s.waiter, cx.waker());
        Poll::Pending
    }

    /// Close, then wait until every request in flight has ended.
    pub async fn drain(&self) {
        poll_fn(|cx| self.poll_drain(cx)).await
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        lock(&self.0.state).in_flight
    }
}

fn register(slot: &mut Option<Waker>, waker: &Waker) {
    match slot {
        Some(w) if w.will_wake(waker) => {}
        _ => *slot = Some(waker.clone()),
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let w = {
            let mut s = lock(&self.owner.state);
            s.in_flight -= 1;
            s.waiter.take()
        };
        if let Some(w) = w {
            w.wake();
        }
    }
}
