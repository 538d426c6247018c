//! The locks that give nbdkit's thread models their meaning.
//!
//! - `serialize_connections`: one connection at a time
//!   ([`Gate::connection`] holds a lock for a connection's lifetime);
//! - `serialize_all_requests`: one request at a time across connections;
//! - `serialize_requests`: one request at a time per connection;
//! - `parallel`: no lock.
//!
//! Requests under the first two models also take the global request lock,
//! so a plugin call never overlaps another under them.

use super::{lock, Mutex, MutexGuard};
use crate::backend::ThreadModel;

/// The server-wide locks of a thread model.
#[derive(Debug)]
pub struct Gate {
    model: ThreadModel,
    connections: Mutex<()>,
    all_requests: Mutex<()>,
}

/// The per-connection lock of `serialize_requests`.
#[derive(Debug, Default)]
pub struct ConnectionGate {
    requests: Mutex<()>,
}

impl ConnectionGate {
    /// A gate for a new connection.
    pub fn new() -> Self {
        Self::default()
    }
}

/// Held for as long as a connection (or a request) may proceed.
#[derive(Debug)]
pub struct Pass<'a> {
    _guard: Option<MutexGuard<'a, ()>>,
}

impl Gate {
    /// The locks for `model` (the effective model of the stack).
    pub fn new(model: ThreadModel) -> Self {
        Gate {
            model,
            connections: Mutex::new(()),
            all_requests: Mutex::new(()),
        }
    }

    /// The thread model.
    pub fn model(&self) -> ThreadModel {
        self.model
    }

    /// Enter a connection: blocks while another connection is served
    /// under `serialize_connections`.
    pub fn connection(&self) -> Pass<'_> {
        Pass {
            _guard: (self.model == ThreadModel::SerializeConnections)
                .then(|| lock(&self.connections)),
        }
    }

    /// Enter a plugin call for a request on `conn`.
    pub fn request<'a>(&'a self, conn: &'a ConnectionGate) -> Pass<'a> {
        let guard = match self.model {
            ThreadModel::SerializeConnections | ThreadModel::SerializeAllRequests => {
                Some(lock(&self.all_requests))
            }
            ThreadModel::SerializeRequests => Some(lock(&conn.requests)),
            ThreadModel::Parallel => None,
        };
        Pass { _guard: guard }
    }
}
