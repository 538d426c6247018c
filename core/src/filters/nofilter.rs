//! `nofilter`: a filter that does nothing (for testing). No parameters.

use crate::backend::Filter;

/// The nofilter filter.
#[derive(Debug, Default)]
pub struct NoFilter;

impl Filter for NoFilter {
    fn name(&self) -> &'static str {
        "nofilter"
    }
    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit nofilter filter")
    }
    fn blocks(&self) -> bool {
        false
    }
}
