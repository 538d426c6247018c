//! `readahead`: when the client reads sequentially, prefetch (`cache`)
//! the data that follows, with a window that doubles on each sequential
//! read and shrinks back on a jump. No parameters.
//!
//! nbdkit issues the prefetch from a background thread; this pure version
//! issues it right after the read it follows, and only when the layer
//! below implements cache natively (emulated cache would read the data
//! twice).

use alloc::boxed::Box;

use crate::backend::{Context, Filter, FilterHandle, Flags, NextOpener, OpenArgs, Result, Support};
use crate::sync::{lock, Mutex};

/// Smallest and largest prefetch window.
const MIN_WINDOW: u64 = 64 * 1024;
const MAX_WINDOW: u64 = 4 * 1024 * 1024;

/// The readahead filter.
#[derive(Debug, Default)]
pub struct Readahead;

impl Filter for Readahead {
    fn name(&self) -> &'static str {
        "readahead"
    }
    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit readahead filter")
    }
    fn blocks(&self) -> bool {
        false
    }
    fn open(
        &self,
        next: &mut dyn NextOpener,
        args: &OpenArgs<'_>,
    ) -> Result<Box<dyn FilterHandle>> {
        next.open(args.readonly, args.export_name)?;
        Ok(Box::new(ReadaheadHandle {
            state: Mutex::new(State {
                last_end: u64::MAX,
                window: MIN_WINDOW,
                prefetched_to: 0,
            }),
        }))
    }
}

struct State {
    /// Where the last read ended.
    last_end: u64,
    window: u64,
    /// How far data has been prefetched already.
    prefetched_to: u64,
}

struct ReadaheadHandle {
    state: Mutex<State>,
}

impl FilterHandle for ReadaheadHandle {
    fn pread(&self, next: &Context, buf: &mut [u8], offset: u64, flags: Flags) -> Result<()> {
        next.pread(buf, offset, flags)?;
        if next.caps().can_cache != Support::Native {
            return Ok(());
        }
        let end = offset + buf.len() as u64;
        let (from, to) = {
            let mut st = lock(&self.state);
            if offset == st.last_end {
                st.window = (st.window * 2).min(MAX_WINDOW);
            } else {
                st.window = MIN_WINDOW;
                st.prefetched_to = 0;
            }
            st.last_end = end;
            let from = end.max(st.prefetched_to);
            let to = (end + st.window).min(next.get_size());
            if from >= to {
                return Ok(());
            }
            st.prefetched_to = to;
            (from, to)
        };
        // A failed prefetch is not the client's problem.
        let _ = next.cache(to - from, from, Flags::NONE);
        Ok(())
    }
}
