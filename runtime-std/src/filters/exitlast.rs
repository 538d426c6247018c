//! The exitlast filter: the server exits when the last client disconnects.
//!
//! Connections are counted by their open exports. A client that closes one
//! export and opens another on the same connection (NBD_OPT_INFO then
//! NBD_OPT_GO) briefly has none open, so the server stops only when no
//! export has been open for a short grace period.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nbdkit_core::backend::{Filter, FilterHandle, NextOpener, OpenArgs, Result};

/// The exitlast filter.
#[derive(Debug, Default)]
pub struct ExitLast {
    state: Arc<Count>,
}

/// Open exports, and how many opens there ever were.
#[derive(Debug, Default)]
struct Count {
    open: AtomicU64,
    opens: AtomicU64,
}

/// How long no export must be open before the server stops.
const GRACE: Duration = Duration::from_millis(200);

struct Conn(Arc<Count>);

impl Drop for Conn {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::SeqCst) == 1 {
            let state = self.0.clone();
            let opens = state.opens.load(Ordering::SeqCst);
            std::thread::spawn(move || {
                std::thread::sleep(GRACE);
                if state.open.load(Ordering::SeqCst) == 0
                    && state.opens.load(Ordering::SeqCst) == opens
                {
                    crate::server::request_shutdown();
                }
            });
        }
    }
}

impl FilterHandle for Conn {}

impl Filter for ExitLast {
    fn name(&self) -> &'static str {
        "exitlast"
    }

    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit exitlast filter")
    }

    fn open(
        &self,
        next: &mut dyn NextOpener,
        args: &OpenArgs<'_>,
    ) -> Result<Box<dyn FilterHandle>> {
        next.open(args.readonly, args.export_name)?;
        self.state.opens.fetch_add(1, Ordering::SeqCst);
        self.state.open.fetch_add(1, Ordering::SeqCst);
        Ok(Box::new(Conn(self.state.clone())))
    }
}
