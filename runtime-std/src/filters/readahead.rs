//! `readahead`: when the client reads, prefetch (`cache`) the data that
//! follows, in the background. No parameters.
//!
//! As nbdkit's filter: every read asks for the window of data after it
//! (never past the end of the export) to be cached, by a background thread
//! of the connection, in the order the reads came. The window, shared by
//! every connection, starts at 32K; it doubles (up to 4M) when a read
//! starts past the end of the last prefetch, stays when the reads still
//! move forward, and falls back to 32K otherwise.
//!
//! The filter does nothing (with a warning at each connection) unless the
//! thread model is parallel and the layer below caches natively: an
//! emulated cache would only read the data twice. When the thread model is
//! parallel but the layer below cannot cache natively, the warning
//! suggests adding the cache filter after this one.
//!
//! The background thread issues its `cache` calls on the connection's own
//! context of the layers below (nbdkit's `next`, kept with
//! [`FilterHandle::keep_next`]), as nbdkit does, so the layers below are
//! opened once per connection. It is started in `prepare` and stopped (and
//! waited for) in `finalize`, or when the handle is dropped, which happens
//! before the layers below are closed; it does what is queued before it
//! stops. Its queue holds at most [`MAX_QUEUED`]
//! ranges: reads that come while it is full ask for nothing.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use nbdkit_core::backend::{
    Context, Filter, FilterHandle, Flags, NextOpener, OpenArgs, Result, Support, ThreadModel,
};

/// Smallest and largest prefetch window.
const MIN_WINDOW: u64 = 32 * 1024;
const MAX_WINDOW: u64 = 4 * 1024 * 1024;

/// Most prefetches waiting for the background thread of a connection.
const MAX_QUEUED: usize = 4096;

/// The readahead filter.
#[derive(Debug, Default)]
pub struct Readahead {
    parallel: AtomicBool,
    window: Arc<Mutex<Window>>,
}

/// The reading pattern, shared by every connection (as nbdkit's).
#[derive(Debug)]
struct Window {
    window: u64,
    /// Offset of the last read.
    last_offset: u64,
    /// End of the last prefetch asked for.
    last_readahead: u64,
}

impl Default for Window {
    fn default() -> Self {
        Window {
            window: MIN_WINDOW,
            last_offset: 0,
            last_readahead: 0,
        }
    }
}

impl Window {
    /// A read of `count` bytes at `offset` of an export of `size` bytes:
    /// the range to prefetch after it, if any; then adapt the window.
    fn read(&mut self, offset: u64, count: u64, size: u64) -> Option<(u64, u64)> {
        let from = offset.saturating_add(count);
        let ask = (from < size).then(|| (from, self.window.min(size - from)));
        if self.last_readahead < offset {
            self.window = (self.window * 2).min(MAX_WINDOW);
        } else if self.last_offset >= offset {
            self.window = MIN_WINDOW;
        }
        self.last_offset = offset;
        self.last_readahead = from + ask.map_or(0, |(_, n)| n);
        ask
    }
}

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
    fn get_ready(&self, thread_model: ThreadModel) -> Result<()> {
        self.parallel
            .store(thread_model == ThreadModel::Parallel, Ordering::Relaxed);
        Ok(())
    }
    fn open(
        &self,
        next: &mut dyn NextOpener,
        args: &OpenArgs<'_>,
    ) -> Result<Box<dyn FilterHandle>> {
        next.open(args.readonly, args.export_name)?;
        Ok(Box::new(ReadaheadHandle {
            below: Mutex::new(None),
            parallel: self.parallel.load(Ordering::Relaxed),
            window: Arc::clone(&self.window),
            shared: Arc::new(Shared::default()),
            thread: Mutex::new(None),
        }))
    }
}

/// What a connection shares with its prefetching thread.
#[derive(Default)]
struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
}

#[derive(Default)]
struct Queue {
    /// Ranges to prefetch, (offset, count), oldest first.
    pending: VecDeque<(u64, u64)>,
    stop: bool,
}

fn guard<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct ReadaheadHandle {
    /// The connection's layers below, until the thread starts.
    below: Mutex<Option<Arc<Context>>>,
    parallel: bool,
    window: Arc<Mutex<Window>>,
    shared: Arc<Shared>,
    /// The prefetching thread; `None` when the filter is inactive.
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// The prefetching thread: take the oldest range, prefetch it, repeat;
/// when told to stop, finish what is queued first (as nbdkit, whose quit
/// command queues behind the prefetches).
fn prefetch_loop(ctx: Arc<Context>, shared: Arc<Shared>) {
    loop {
        let (offset, count) = {
            let mut q = guard(&shared.queue);
            loop {
                if let Some(r) = q.pending.pop_front() {
                    break r;
                }
                if q.stop {
                    return;
                }
                q = shared.wake.wait(q).unwrap_or_else(|p| p.into_inner());
            }
        };
        // A failed prefetch is not the client's problem.
        if let Err(e) = ctx.cache(count, offset, Flags::NONE) {
            crate::log::debug(None, format_args!("readahead: cache: {e}"));
        }
    }
}

impl ReadaheadHandle {
    /// Stop the prefetching thread once it has done what is queued, and
    /// wait for it.
    fn stop(&self) {
        let Some(t) = guard(&self.thread).take() else {
            return;
        };
        guard(&self.shared.queue).stop = true;
        self.shared.wake.notify_one();
        let _ = t.join();
    }
}

impl FilterHandle for ReadaheadHandle {
    fn keep_next(&self, next: &Arc<Context>) {
        *guard(&self.below) = Some(Arc::clone(next));
    }

    fn prepare(&self, next: &Context, _readonly: bool) -> Result<()> {
        let below = guard(&self.below).take();
        let native = next.can_cache()? == Support::Native;
        if !(native && self.parallel) {
            crate::log::error(
                None,
                "readahead: warning: underlying plugin does not support NBD_CMD_CACHE or \
                 PARALLEL thread model, so the filter won't do anything",
            );
            if self.parallel {
                crate::log::error(
                    None,
                    "readahead: try adding --filter=cache after this filter",
                );
            }
            return Ok(());
        }
        let Some(below) = below else {
            return Ok(());
        };
        let shared = Arc::clone(&self.shared);
        match std::thread::Builder::new()
            .name("readahead".into())
            .spawn(move || prefetch_loop(below, shared))
        {
            Ok(t) => *guard(&self.thread) = Some(t),
            Err(e) => crate::log::error(
                None,
                &format!("readahead: warning: cannot start the prefetching thread: {e}"),
            ),
        }
        Ok(())
    }

    fn finalize(&self, _next: &Context) -> Result<()> {
        self.stop();
        Ok(())
    }

    fn pread(&self, next: &Context, buf: &mut [u8], offset: u64, flags: Flags) -> Result<()> {
        if guard(&self.thread).is_some() {
            let ask = guard(&self.window).read(offset, buf.len() as u64, next.get_size());
            if let Some(range) = ask {
                let mut q = guard(&self.shared.queue);
                if q.pending.len() < MAX_QUEUED {
                    q.pending.push_back(range);
                    drop(q);
                    self.shared.wake.notify_one();
                }
            }
        }
        next.pread(buf, offset, flags)
    }
}

impl Drop for ReadaheadHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn window_doubles_past_the_last_prefetch_and_resets_going_back() {
        let mut w = Window::default();
        assert_eq!(w.read(0, 4096, 1 << 30), Some((4096, MIN_WINDOW)));
        // The next read starts inside the prefetched range: same window.
        assert_eq!(w.read(4096, 4096, 1 << 30), Some((8192, MIN_WINDOW)));
        // Past the last prefetch: the window doubles (for the next one).
        assert_eq!(
            w.read(1 << 20, 4096, 1 << 30),
            Some(((1 << 20) + 4096, MIN_WINDOW))
        );
        assert_eq!(w.window, 2 * MIN_WINDOW);
        // Going back resets it.
        w.read(0, 4096, 1 << 30);
        assert_eq!(w.window, MIN_WINDOW);
        // Never past the end of the export, nothing at the end.
        assert_eq!(w.read(4096, 4096, 10000), Some((8192, 10000 - 8192)));
        assert_eq!(w.read(8192, 1808, 10000), None);
        for _ in 0..20 {
            w.last_readahead = 0;
            w.read(1, 1, 1 << 30);
        }
        assert_eq!(w.window, MAX_WINDOW);
    }
}
