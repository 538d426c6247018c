//! The scan filter: prefetch the whole disk in the background with cache
//! requests while a client is connected.
//!
//! Parameters:
//! - `scan-ahead=BOOL` (default true): skip forward past client reads that
//!   land beyond the prefetch point;
//! - `scan-clock=BOOL` (default true): a new connection resumes where the
//!   last one stopped, rather than at offset 0;
//! - `scan-forever=BOOL` (default false): start over at the end of disk;
//! - `scan-size=SIZE` (default 2M): prefetch size, a power of 2 in
//!   512..=32M.
//!
//! Approach: the background thread must use the layer below after the
//! request that started it has returned, but a filter only borrows `next`
//! for the length of one call. So on open the filter takes a reopener
//! (`NextOpener::reopener`) and, in `prepare`, opens its own context of
//! the layer below for the thread, which owns it. Prefetches through that
//! second context land in whatever cache the lower layers keep (cache or
//! cow filter, page cache of the file plugin). Closing the connection stops
//! the thread, waits for it, and closes that context.
//! Only the default export ("") is scanned, and only when the thread model
//! is parallel, as nbdkit does.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use nbdkit_core::backend::{
    Context, Filter, FilterHandle, Flags, NextOpener, OpenArgs, Reopener, Result, Support,
    ThreadModel,
};

use super::util::{parse_bool, parse_size};

/// The scan filter.
#[derive(Debug)]
pub struct Scan {
    ahead: bool,
    clock: bool,
    forever: bool,
    size: u64,
    parallel: AtomicBool,
    /// Where the last connection stopped (scan-clock).
    resume_at: Arc<AtomicU64>,
}

impl Default for Scan {
    fn default() -> Self {
        Scan {
            ahead: true,
            clock: true,
            forever: false,
            size: 2 << 20,
            parallel: AtomicBool::new(false),
            resume_at: Arc::new(AtomicU64::new(0)),
        }
    }
}

fn warning(msg: &str) {
    crate::log::error(None, &format!("scan: warning: {msg}"));
}

impl Filter for Scan {
    fn name(&self) -> &'static str {
        "scan"
    }

    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit scan filter")
    }

    fn config_help(&self) -> &'static str {
        "scan-ahead=false         Skip ahead when client reads faster.\n\
         scan-clock=false         Always start prefetching from beginning.\n\
         scan-forever=true        Scan in a loop while clients connected.\n\
         scan-size=NN             Set scan block size."
    }

    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            "scan-ahead" => self.ahead = parse_bool(value)?,
            "scan-clock" => self.clock = parse_bool(value)?,
            "scan-forever" => self.forever = parse_bool(value)?,
            "scan-size" => {
                let s = parse_size(value)?;
                if !(512..=32 << 20).contains(&s) || !s.is_power_of_two() {
                    return Err(nbdkit_core::backend::Error::config(
                        "scan-size parameter should be [512..32M] and a power of two",
                    ));
                }
                self.size = s;
            }
            _ => return Ok(false),
        }
        Ok(true)
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
        let enabled = if !self.parallel.load(Ordering::Relaxed) {
            warning("underlying plugin does not support the PARALLEL thread model, not scanning");
            false
        } else if !args.export_name.is_empty() {
            warning("scan filter only scans the default export, not scanning");
            false
        } else {
            true
        };
        Ok(Box::new(ScanHandle {
            reopener: if enabled { next.reopener() } else { None },
            readonly: args.readonly,
            ahead: self.ahead,
            clock: self.clock,
            forever: self.forever,
            size: self.size,
            resume_at: Arc::clone(&self.resume_at),
            shared: Arc::new(Shared::default()),
            thread: Mutex::new(None),
        }))
    }
}

/// State shared between a connection and its scanning thread.
#[derive(Debug, Default)]
struct Shared {
    stop: AtomicBool,
    /// The next offset to prefetch.
    pos: AtomicU64,
}

struct ScanHandle {
    reopener: Option<Box<dyn Reopener>>,
    readonly: bool,
    ahead: bool,
    clock: bool,
    forever: bool,
    size: u64,
    resume_at: Arc<AtomicU64>,
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// The scanning thread: prefetch `size` bytes at a time until the end (or
/// forever), or until told to stop.
fn scan_loop(ctx: Context, shared: Arc<Shared>, size: u64, forever: bool) {
    let disk = ctx.get_size();
    while !shared.stop.load(Ordering::Relaxed) {
        let pos = shared.pos.load(Ordering::Relaxed);
        if pos >= disk {
            if forever && disk > 0 {
                shared.pos.store(0, Ordering::Relaxed);
                continue;
            }
            crate::log::debug(None, format_args!("scan: finished scanning the plugin"));
            break;
        }
        let count = size.min(disk - pos);
        // Moving the position first lets scan-ahead overtake this block.
        let _ = shared
            .pos
            .compare_exchange(pos, pos + count, Ordering::Relaxed, Ordering::Relaxed);
        if let Err(e) = ctx.cache(count, pos, Flags::NONE) {
            crate::log::debug(None, format_args!("scan: cache: {e}"));
        }
    }
    let _ = ctx.finalize();
}

impl FilterHandle for ScanHandle {
    fn prepare(&self, next: &Context, _readonly: bool) -> Result<()> {
        let Some(r) = &self.reopener else {
            return Ok(());
        };
        if next.can_cache()? == Support::None {
            warning("underlying plugin does not support NBD_CMD_CACHE (prefetch), not scanning");
            return Ok(());
        }
        let start = if self.clock {
            self.resume_at.load(Ordering::Relaxed)
        } else {
            0
        };
        self.shared.pos.store(start, Ordering::Relaxed);
        // The scanning context is opened here, synchronously, so that an
        // error opening it is reported and not silently lost.
        let ctx = match r.open(self.readonly, "") {
            Ok(c) => c,
            Err(e) => {
                warning(&format!("cannot open the layer below for scanning: {e}"));
                return Ok(());
            }
        };
        let shared = Arc::clone(&self.shared);
        let (size, forever) = (self.size, self.forever);
        match std::thread::Builder::new()
            .name("scan".into())
            .spawn(move || scan_loop(ctx, shared, size, forever))
        {
            Ok(t) => *self.thread.lock().unwrap_or_else(|p| p.into_inner()) = Some(t),
            Err(e) => warning(&format!("cannot start the scanning thread: {e}")),
        }
        Ok(())
    }

    fn pread(&self, next: &Context, buf: &mut [u8], offset: u64, flags: Flags) -> Result<()> {
        if self.ahead {
            self.shared
                .pos
                .fetch_max(offset.saturating_add(buf.len() as u64), Ordering::Relaxed);
        }
        next.pread(buf, offset, flags)
    }
}

impl Drop for ScanHandle {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        let t = self
            .thread
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(t) = t {
            let _ = t.join();
            if self.clock {
                self.resume_at
                    .store(self.shared.pos.load(Ordering::Relaxed), Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn scan_size_must_be_a_power_of_two_in_range() {
        let mut s = Scan::default();
        for bad in ["3", "0", "64M"] {
            assert_eq!(
                s.config("scan-size", bad).unwrap_err().to_string(),
                "scan-size parameter should be [512..32M] and a power of two"
            );
        }
        assert!(s.config("scan-size", "1M").unwrap());
        assert_eq!(s.size, 1 << 20);
        assert!(s.config("scan-forever", "true").unwrap());
        assert!(!s.config("size", "1").unwrap());
    }
}
