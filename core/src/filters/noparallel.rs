//! `noparallel`: lower the thread model.
//!
//! Parameter: `serialize=requests|all-requests|connections` (default
//! `requests`).

use alloc::format;

use crate::backend::{Error, Filter, Result, ThreadModel};

/// The noparallel filter.
#[derive(Debug)]
pub struct NoParallel {
    model: ThreadModel,
}

impl Default for NoParallel {
    fn default() -> Self {
        NoParallel {
            model: ThreadModel::SerializeRequests,
        }
    }
}

impl Filter for NoParallel {
    fn name(&self) -> &'static str {
        "noparallel"
    }
    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit noparallel filter")
    }
    fn config_help(&self) -> &'static str {
        "serialize=<MODE>      'requests' (default), 'all-requests', or 'connections'."
    }
    fn blocks(&self) -> bool {
        false
    }
    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        if key != "serialize" {
            return Ok(false);
        }
        self.model = match value {
            "requests" => ThreadModel::SerializeRequests,
            "all-requests" | "all_requests" => ThreadModel::SerializeAllRequests,
            "connections" => ThreadModel::SerializeConnections,
            _ => {
                return Err(Error::config(format!(
                    "unknown noparallel serialize mode '{value}'"
                )))
            }
        };
        Ok(true)
    }
    fn thread_model(&self) -> ThreadModel {
        self.model
    }
}
