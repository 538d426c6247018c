//! The core's filters that need a little of the operating system (a clock
//! to sleep on, the file system to test for a trigger file, a random
//! seed), given it here.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nbdkit_core::backend::Filter;
use nbdkit_core::filters::{
    error::ErrorFilter, evil::Evil, retry::Retry, retry_request::RetryRequest,
};

fn exists(path: &str) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}

fn sleep(d: Duration) {
    std::thread::sleep(d);
}

/// A seed that differs between runs (nbdkit seeds from the time).
fn seed() -> u64 {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    t.as_secs() ^ u64::from(t.subsec_nanos()) << 32 ^ u64::from(std::process::id())
}

/// `error`, with `error-file` support.
pub(crate) fn error() -> Box<dyn Filter> {
    Box::new(ErrorFilter::new(Some(exists), seed()))
}

/// `retry`, sleeping on the system clock.
pub(crate) fn retry() -> Box<dyn Filter> {
    Box::new(Retry::new(sleep))
}

/// `retry-request`, sleeping on the system clock.
pub(crate) fn retry_request() -> Box<dyn Filter> {
    Box::new(RetryRequest::new(sleep))
}

/// `evil`, seeded from the time unless `evil-seed` is given.
pub(crate) fn evil() -> Box<dyn Filter> {
    Box::new(Evil::new(seed()))
}
