//! Per-connection in-flight accounting: how many requests were read and
//! not yet answered, a limit on them (`-t`), and the drain that NBD_CMD_DISC
//! and server shutdown wait for, so every request already read gets its
//! reply before the connection closes.

use super::{lock, Condvar, Mutex};

#[derive(Debug, Default)]
struct State {
    in_flight: usize,
    closing: bool,
}

/// The requests of one connection that are still being served.
#[derive(Debug)]
pub struct InFlight {
    limit: usize,
    state: Mutex<State>,
    changed: Condvar,
}

/// One request in flight; dropping it (after its reply is written) ends it.
#[derive(Debug)]
#[must_use = "the request ends when the ticket is dropped"]
pub struct Ticket<'a> {
    owner: &'a InFlight,
}

impl InFlight {
    /// At most `limit` requests at once (at least 1).
    pub fn new(limit: usize) -> Self {
        InFlight {
            limit: limit.max(1),
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        }
    }

    /// Start a request: waits while `limit` are in flight; `None` once the
    /// connection is closing (no new request is started after DISC or
    /// shutdown).
    pub fn begin(&self) -> Option<Ticket<'_>> {
        let mut s = lock(&self.state);
        loop {
            if s.closing {
                return None;
            }
            if s.in_flight < self.limit {
                s.in_flight += 1;
                return Some(Ticket { owner: self });
            }
            s = match self.changed.wait(s) {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
        }
    }

    /// Refuse new requests from now on (NBD_CMD_DISC, server shutdown).
    pub fn close(&self) {
        lock(&self.state).closing = true;
        self.changed.notify_all();
    }

    /// Close, then wait until every request in flight has ended.
    pub fn drain(&self) {
        let mut s = lock(&self.state);
        s.closing = true;
        self.changed.notify_all();
        while s.in_flight > 0 {
            s = match self.changed.wait(s) {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
        }
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        lock(&self.state).in_flight
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let mut s = lock(&self.owner.state);
        s.in_flight -= 1;
        drop(s);
        self.owner.changed.notify_all();
    }
}
