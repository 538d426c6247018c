//! `readahead`: when the client reads sequentially, prefetch (`cache`) the
//! data that follows in the background. No parameters.
//!
//! The window of data to prefetch doubles on each sequential read (up to
//! [`MAX_WINDOW`]) and shrinks back to [`MIN_WINDOW`] when the client
//! jumps elsewhere.
//!
//! Approach: like nbdkit, each connection has a background thread that
//! issues the prefetches, so they run in parallel with the client's reads.
//! The thread must use the layers below after the read that asked for the
//! prefetch has returned, but a filter only borrows `next` for the length of
//! one call; so in `prepare` the handle opens its own context of the layers
//! below with the reopener ([`NextOpener::reopener`]) and gives it to the
//! thread. Prefetches through that context land in whatever cache the
//! layers below keep (cache or cow filter, page cache of the file plugin),
//! where the client's reads through `next` find them. The client's data
//! always comes from `next` and this filter keeps none, so what the client
//! sees is exactly what it would see without the filter.
//!
//! Memory is bounded: a read only records the range to prefetch in a
//! single pending slot (a newer range replaces an older one the thread has
//! not started), and the thread prefetches at most [`MAX_WINDOW`] bytes per
//! call (an emulated cache reads into a bounded buffer below).
//!
//! As in nbdkit, the filter does nothing (with a warning) unless the thread
//! model is parallel and the layers below can cache (natively or by
//! reading). Closing the connection stops the thread, waits for it, and
//! closes its context.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use nbdkit_core::backend::{
    Context, Filter, FilterHandle, Flags, NextOpener, OpenArgs, Reopener, Result, Support,
    ThreadModel,
};

/// Smallest and largest prefetch window.
const MIN_WINDOW: u64 = 64 * 1024;
const MAX_WINDOW: u64 = 4 * 1024 * 1024;

/// The readahead filter.
#[derive(Debug, Default)]
pub struct Readahead {
    parallel: AtomicBool,
}

fn warn_inactive() {
    crate::log::error(
        None,
        "readahead: warning: underlying plugin does not support NBD_CMD_CACHE or PARALLEL \
         thread model, so the filter won't do anything",
    );
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
        let parallel = self.parallel.load(Ordering::Relaxed);
        Ok(Box::new(ReadaheadHandle {
            reopener: if parallel { next.reopener() } else { None },
            readonly: args.readonly,
            export_name: args.export_name.into(),
            shared: Arc::new(Shared::default()),
            state: Mutex::new(Window {
                last_end: u64::MAX,
                window: MIN_WINDOW,
                prefetched_to: 0,
            }),
            thread: Mutex::new(None),
        }))
    }
}

/// The client's reading pattern.
struct Window {
    /// Where the last read ended.
    last_end: u64,
    window: u64,
    /// How far prefetches were already asked for.
    prefetched_to: u64,
}

/// What a connection shares with its prefetching thread.
#[derive(Default)]
struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
}

#[derive(Default)]
struct Queue {
    /// The next range to prefetch: (offset, count).
    pending: Option<(u64, u64)>,
    stop: bool,
}

fn guard<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct ReadaheadHandle {
    reopener: Option<Box<dyn Reopener>>,
    readonly: bool,
    export_name: String,
    shared: Arc<Shared>,
    state: Mutex<Window>,
    /// The prefetching thread; `None` when the filter is inactive.
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// The prefetching thread: wait for a range, prefetch it, repeat until
/// told to stop.
fn prefetch_loop(ctx: Context, shared: Arc<Shared>) {
    loop {
        let (offset, count) = {
            let mut q = guard(&shared.queue);
            loop {
                if q.stop {
                    drop(q);
                    let _ = ctx.finalize();
                    return;
                }
                if let Some(r) = q.pending.take() {
                    break r;
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

impl FilterHandle for ReadaheadHandle {
    fn prepare(&self, next: &Context, _readonly: bool) -> Result<()> {
        let Some(r) = &self.reopener else {
            warn_inactive();
            return Ok(());
        };
        if next.can_cache()? == Support::None {
            warn_inactive();
            return Ok(());
        }
        let ctx = match r.open(self.readonly, &self.export_name) {
            Ok(c) => c,
            Err(e) => {
                crate::log::error(
                    None,
                    &format!(
                        "readahead: warning: cannot open the layer below for prefetching: {e}"
                    ),
                );
                return Ok(());
            }
        };
        let shared = Arc::clone(&self.shared);
        match std::thread::Builder::new()
            .name("readahead".into())
            .spawn(move || prefetch_loop(ctx, shared))
        {
            Ok(t) => *guard(&self.thread) = Some(t),
            Err(e) => crate::log::error(
                None,
                &format!("readahead: warning: cannot start the prefetching thread: {e}"),
            ),
        }
        Ok(())
    }

    fn pread(&self, next: &Context, buf: &mut [u8], offset: u64, flags: Flags) -> Result<()> {
        if guard(&self.thread).is_some() {
            self.ask_prefetch(offset, buf.len() as u64, next.get_size());
        }
        next.pread(buf, offset, flags)
    }
}

impl ReadaheadHandle {
    /// Record the read of `len` bytes at `offset` and hand the range that
    /// should follow it to the thread.
    fn ask_prefetch(&self, offset: u64, len: u64, size: u64) {
        let end = offset.saturating_add(len);
        let range = {
            let mut st = guard(&self.state);
            if offset == st.last_end {
                st.window = (st.window * 2).min(MAX_WINDOW);
            } else {
                st.window = MIN_WINDOW;
                st.prefetched_to = 0;
            }
            st.last_end = end;
            let from = end.max(st.prefetched_to);
            let to = end.saturating_add(st.window).min(size);
            if from >= to {
                return;
            }
            st.prefetched_to = to;
            (from, to - from)
        };
        let mut q = guard(&self.shared.queue);
        // Extend a pending contiguous range rather than lose it, staying
        // within one window.
        q.pending = match q.pending {
            Some((o, c)) if o + c == range.0 && c + range.1 <= MAX_WINDOW => Some((o, c + range.1)),
            _ => Some(range),
        };
        drop(q);
        self.shared.wake.notify_one();
    }
}

impl Drop for ReadaheadHandle {
    fn drop(&mut self) {
        guard(&self.shared.queue).stop = true;
        self.shared.wake.notify_one();
        let t = self
            .thread
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(t) = t {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod test {
    use super::*;

    fn handle() -> ReadaheadHandle {
        ReadaheadHandle {
            reopener: None,
            readonly: true,
            export_name: String::new(),
            shared: Arc::new(Shared::default()),
            state: Mutex::new(Window {
                last_end: u64::MAX,
                window: MIN_WINDOW,
                prefetched_to: 0,
            }),
            thread: Mutex::new(None),
        }
    }

    #[test]
    fn window_grows_on_sequential_reads_and_resets_on_jumps() {
        let h = handle();
        h.ask_prefetch(0, 4096, 1 << 30);
        assert_eq!(guard(&h.shared.queue).pending, Some((4096, MIN_WINDOW)));
        guard(&h.shared.queue).pending = None;
        // Sequential: the window doubles, and only new data is asked for.
        h.ask_prefetch(4096, 4096, 1 << 30);
        let end = 8192 + 2 * MIN_WINDOW;
        assert_eq!(
            guard(&h.shared.queue).pending,
            Some((4096 + MIN_WINDOW, end - 4096 - MIN_WINDOW))
        );
        guard(&h.shared.queue).pending = None;
        // A jump resets the window.
        h.ask_prefetch(1 << 20, 4096, 1 << 30);
        assert_eq!(
            guard(&h.shared.queue).pending,
            Some(((1 << 20) + 4096, MIN_WINDOW))
        );
        // Never past the end of the disk, never more than a window pending.
        for i in 0..200u64 {
            h.ask_prefetch((1 << 20) + 4096 * (i + 1), 4096, 2 << 20);
            let (o, c) = guard(&h.shared.queue).pending.unwrap();
            assert!(o + c <= 2 << 20 && c <= MAX_WINDOW);
        }
    }
}
