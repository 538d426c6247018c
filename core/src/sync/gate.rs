//! The locks that give nbdkit's thread models their meaning.
//!
//! - `serialize_connections`: one connection at a time
//!   ([`Gate::connection`] holds an async lock for a connection's lifetime);
//! - `serialize_all_requests`: one request at a time across connections;
//! - `serialize_requests`: one request at a time per connection;
//! - `parallel`: no lock.
//!
//! Requests under the first two models also take the global request lock,
//! so a plugin call never overlaps another under them.

use super::async_mutex::{AsyncMutex, AsyncMutexGuard};
use super::{lock, Mutex, MutexGuard};
use crate::backend::ThreadModel;

/// The server-wide locks of a thread model.
#[derive(Debug)]
pub struct Gate {
    model: ThreadModel,
    connections: AsyncMutex<()>,
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

/// Held for as long as a request may proceed.
#[derive(Debug)]
pub struct Pass<'a> {
    _guard: Option<MutexGuard<'a, ()>>,
}

/// Held for as long as a connection may proceed.
#[derive(Debug)]
pub struct ConnectionPass<'a> {
    _guard: Option<AsyncMutexGuard<'a, ()>>,
}

impl Gate {
    /// The locks for `model` (the effective model of the stack).
    pub fn new(model: ThreadModel) -> Self {
        Gate {
            model,
            connections: AsyncMutex::new(()),
            all_requests: Mutex::new(()),
        }
    }

    /// The thread model.
    pub fn model(&self) -> ThreadModel {
        self.model
    }

    /// Enter a connection: waits while another connection is served
    /// under `serialize_connections`.
    pub async fn connection(&self) -> ConnectionPass<'_> {
        let guard = if self.model == ThreadModel::SerializeConnections {
            Some(self.connections.lock().await)
        } else {
            None
        };
        ConnectionPass { _guard: guard }
    }

    /// Enter a plugin call for a request on `conn` (`None`: a call outside
    /// any connection's requests, e.g. preconnect or close, which only the
    /// server-wide lock orders).
    pub fn request<'a>(&'a self, conn: Option<&'a ConnectionGate>) -> Pass<'a> {
        let guard = match self.model {
            ThreadModel::SerializeConnections | ThreadModel::SerializeAllRequests => {
                Some(lock(&self.all_requests))
            }
            ThreadModel::SerializeRequests => conn.map(|c| lock(&c.requests)),
            ThreadModel::Parallel => None,
        };
        Pass { _guard: guard }
    }
}
