//! The rate filter: limit the bandwidth of reads and writes with token
//! buckets, for the server as a whole and per connection.
//!
//! Parameters:
//! - `rate=BITSPERSEC`: total bandwidth across all connections;
//! - `connection-rate=BITSPERSEC`: bandwidth of each connection;
//! - `rate-file=FILE`, `connection-rate-file=FILE`: a file whose content
//!   (a size such as `10M`) replaces the rate while the server runs;
//! - `burstiness=SECS` (default 2.0): bucket capacity in seconds of rate.
//!
//! Reads and writes have separate buckets; zero, trim and the rest are
//! free, as on the wire they carry no payload. A wait is slept in slices
//! of at most [`SLICE`] so that a request never sleeps past shutdown.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nbdkit_core::backend::{
    Context, Error, Filter, FilterHandle, Flags, NextOpener, OpenArgs, Result,
};
use nbdkit_core::errno::Errno;

use super::util::{absolute_path, parse_size};

/// The longest single sleep: waits are cut into slices this long.
const SLICE: Duration = Duration::from_millis(100);
/// How often a rate file is read again at most.
const FILE_CHECK: Duration = Duration::from_millis(100);

/// Set when the filter is unloaded: pending waits stop with ESHUTDOWN.
static STOPPING: AtomicBool = AtomicBool::new(false);

/// A token bucket counting bits.
#[derive(Debug)]
struct Bucket {
    /// Bits per second; 0 means unlimited.
    rate: u64,
    burstiness: f64,
    tokens: f64,
    last: Instant,
    /// For `-D rate.bucket=1`: nbdkit's name of the bucket, if the flag
    /// is on.
    debug: Option<&'static str>,
}

impl Bucket {
    fn new(rate: u64, burstiness: f64) -> Bucket {
        let mut b = Bucket {
            rate: 0,
            burstiness,
            tokens: 0.0,
            last: Instant::now(),
            debug: None,
        };
        b.set_rate(rate);
        // Start full, as nbdkit does: a new client may burst at once.
        b.tokens = b.capacity();
        b
    }

    fn capacity(&self) -> f64 {
        self.rate as f64 * self.burstiness
    }

    /// Change the rate, keeping the tokens within the new capacity.
    fn set_rate(&mut self, rate: u64) {
        self.rate = rate;
        self.tokens = self.tokens.min(self.capacity());
    }

    /// Take up to `bits` tokens: returns the bits still owed and how long
    /// until enough tokens for them have accumulated.
    fn take(&mut self, bits: u64, now: Instant) -> (u64, Duration) {
        if self.rate == 0 {
            return (0, Duration::ZERO);
        }
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        let before = self.tokens;
        self.tokens = (self.tokens + elapsed * self.rate as f64).min(self.capacity());
        self.say(format_args!(
            "adding {} tokens, new level {}",
            (self.tokens - before).max(0.0) as u64,
            self.tokens as u64
        ));
        let want = bits as f64;
        if self.tokens >= want {
            self.say(format_args!("deducting {bits} tokens"));
            self.tokens -= want;
            return (0, Duration::ZERO);
        }
        let owed = want - self.tokens;
        self.say(format_args!(
            "deducting {} tokens, bucket empty, need another {} tokens",
            self.tokens as u64,
            owed.ceil() as u64
        ));
        self.tokens = 0.0;
        let wait = Duration::from_secs_f64(owed / self.rate as f64);
        (owed.ceil() as u64, wait)
    }

    /// Name this bucket in `-D rate.bucket=1` messages, if that flag is on.
    fn named(mut self, name: &'static str) -> Bucket {
        if nbdkit_core::debug::enabled("rate", "bucket") {
            self.debug = Some(name);
        }
        self
    }

    fn say(&self, args: std::fmt::Arguments<'_>) {
        if let Some(name) = self.debug {
            crate::log::debug(None, format_args!("bucket {name}: {args}"));
        }
    }
}

/// Wait until `bucket` has let `bits` through, sleeping in short slices.
fn wait_for(bucket: &Mutex<Bucket>, mut bits: u64) -> Result<()> {
    loop {
        let (owed, wait, debug) = {
            let mut b = bucket.lock().unwrap_or_else(|p| p.into_inner());
            let (owed, wait) = b.take(bits, Instant::now());
            (owed, wait, b.debug.is_some())
        };
        if owed == 0 {
            return Ok(());
        }
        if STOPPING.load(Ordering::Relaxed) || crate::server::stopping() {
            return Err(Error::msg(
                Errno::ESHUTDOWN,
                "rate: server is shutting down",
            ));
        }
        if debug {
            crate::log::debug(
                None,
                format_args!(
                    "bucket {:p}: sleeping for {:.1} seconds",
                    bucket,
                    wait.min(SLICE).as_secs_f64()
                ),
            );
        }
        std::thread::sleep(wait.min(SLICE));
        bits = owed;
    }
}

/// A rate file, read again at most every [`FILE_CHECK`].
#[derive(Debug)]
struct RateFile {
    path: PathBuf,
    last_check: Option<Instant>,
    rate: Option<u64>,
}

impl RateFile {
    /// The rate the file says now (`None`: no file yet, keep the old one).
    fn current(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self
            .last_check
            .is_some_and(|t| now.saturating_duration_since(t) < FILE_CHECK)
        {
            return self.rate;
        }
        self.last_check = Some(now);
        // A missing or unreadable file keeps the last rate read.
        if let Ok(s) = std::fs::read_to_string(&self.path) {
            match parse_size(s.trim()) {
                Ok(r) => self.rate = Some(r),
                Err(e) => crate::log::error(None, &format!("rate: {}: {}", self.path.display(), e)),
            }
        }
        self.rate
    }
}

#[derive(Debug)]
struct Shared {
    read: Mutex<Bucket>,
    write: Mutex<Bucket>,
    rate_file: Option<Mutex<RateFile>>,
    connection_rate: u64,
    connection_file: Option<Mutex<RateFile>>,
    burstiness: f64,
}

impl Shared {
    /// Follow the global rate file.
    fn adjust_global(&self) {
        if let Some(f) = &self.rate_file {
            let r = f.lock().unwrap_or_else(|p| p.into_inner()).current();
            if let Some(r) = r {
                for b in [&self.read, &self.write] {
                    let mut b = b.lock().unwrap_or_else(|p| p.into_inner());
                    if b.rate != r {
                        b.set_rate(r);
                    }
                }
            }
        }
    }

    /// The per-connection rate now.
    fn connection_rate(&self) -> u64 {
        self.connection_file
            .as_ref()
            .and_then(|f| f.lock().unwrap_or_else(|p| p.into_inner()).current())
            .unwrap_or(self.connection_rate)
    }
}

/// The rate filter.
#[derive(Debug)]
pub struct Rate {
    rate: u64,
    connection_rate: u64,
    rate_file: Option<PathBuf>,
    connection_rate_file: Option<PathBuf>,
    burstiness: f64,
    shared: Option<Arc<Shared>>,
}

impl Default for Rate {
    fn default() -> Self {
        Rate {
            rate: 0,
            connection_rate: 0,
            rate_file: None,
            connection_rate_file: None,
            burstiness: 2.0,
            shared: None,
        }
    }
}

fn parse_rate(value: &str) -> Result<u64> {
    let r = parse_size(value)?;
    if r == 0 {
        return Err(Error::config("rate cannot be set to 0"));
    }
    Ok(r)
}

impl Filter for Rate {
    fn debug_flags(&self) -> &'static [&'static str] {
        &["bucket"]
    }
    fn name(&self) -> &'static str {
        "rate"
    }

    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit rate filter")
    }

    fn config_help(&self) -> &'static str {
        "rate=BITSPERSEC                Limit total bandwidth.\n\
         connection-rate=BITSPERSEC     Limit per-connection bandwidth.\n\
         rate-file=FILENAME             Dynamically adjust total bandwidth.\n\
         connection-rate-file=FILENAME  Dynamically adjust per-connection bandwidth.\n\
         burstiness=SECS                Set bucket capacity (default 2.0)."
    }

    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            "rate" => self.rate = parse_rate(value)?,
            "connection-rate" => self.connection_rate = parse_rate(value)?,
            "rate-file" => self.rate_file = Some(absolute_path(value)?),
            "connection-rate-file" => self.connection_rate_file = Some(absolute_path(value)?),
            "burstiness" => {
                self.burstiness = value.trim().parse::<f64>().map_err(|_| {
                    Error::config("burstiness must be a floating point number (seconds)")
                })?
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn config_complete(&mut self) -> Result<()> {
        let file = |p: &Option<PathBuf>| {
            p.as_ref().map(|p| {
                Mutex::new(RateFile {
                    path: p.clone(),
                    last_check: None,
                    rate: None,
                })
            })
        };
        self.shared = Some(Arc::new(Shared {
            read: Mutex::new(Bucket::new(self.rate, self.burstiness).named("read (global limit)")),
            write: Mutex::new(
                Bucket::new(self.rate, self.burstiness).named("write (global limit)"),
            ),
            rate_file: file(&self.rate_file),
            connection_rate: self.connection_rate,
            connection_file: file(&self.connection_rate_file),
            burstiness: self.burstiness,
        }));
        Ok(())
    }

    fn blocks(&self) -> bool {
        true
    }

    fn cleanup(&self) {
        STOPPING.store(true, Ordering::Relaxed);
    }

    fn open(
        &self,
        next: &mut dyn NextOpener,
        args: &OpenArgs<'_>,
    ) -> Result<Box<dyn FilterHandle>> {
        next.open(args.readonly, args.export_name)?;
        let shared = match &self.shared {
            Some(s) => Arc::clone(s),
            None => return Err(Error::msg(Errno::EINVAL, "rate: not configured")),
        };
        let r = shared.connection_rate();
        let b = shared.burstiness;
        Ok(Box::new(RateHandle {
            read: Mutex::new(Bucket::new(r, b).named("read (connection limit)")),
            write: Mutex::new(Bucket::new(r, b).named("write (connection limit)")),
            shared,
        }))
    }
}

struct RateHandle {
    read: Mutex<Bucket>,
    write: Mutex<Bucket>,
    shared: Arc<Shared>,
}

impl RateHandle {
    /// Charge `bytes` to the connection's and the server's buckets.
    fn charge(&self, write: bool, bytes: usize) -> Result<()> {
        let bits = (bytes as u64).saturating_mul(8);
        self.shared.adjust_global();
        let mine = if write { &self.write } else { &self.read };
        let r = self.shared.connection_rate();
        {
            let mut b = mine.lock().unwrap_or_else(|p| p.into_inner());
            if b.rate != r {
                b.set_rate(r);
            }
        }
        // The server's limit first, then the connection's, as nbdkit.
        let global = if write {
            &self.shared.write
        } else {
            &self.shared.read
        };
        wait_for(global, bits)?;
        wait_for(mine, bits)
    }
}

impl FilterHandle for RateHandle {
    fn pread(&self, next: &Context, buf: &mut [u8], offset: u64, flags: Flags) -> Result<()> {
        self.charge(false, buf.len())?;
        next.pread(buf, offset, flags)
    }

    fn pwrite(&self, next: &Context, buf: &[u8], offset: u64, flags: Flags) -> Result<()> {
        self.charge(true, buf.len())?;
        next.pwrite(buf, offset, flags)
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn bucket_lets_a_burst_through_then_asks_to_wait() {
        let t0 = Instant::now();
        let mut b = Bucket::new(1000, 2.0);
        // Starts full: 2000 bits pass, then 1000 more take one second.
        assert_eq!(b.take(2000, t0).0, 0);
        let (owed, wait) = b.take(1000, t0);
        assert_eq!(owed, 1000);
        assert!((wait.as_secs_f64() - 1.0).abs() < 0.01);
        // After 10 s idle, at most 2 s worth (2000 bits) has accumulated.
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(b.take(2000, t1).0, 0);
        assert_eq!(b.take(500, t1).0, 500);
    }

    #[test]
    fn unlimited_bucket_never_waits() {
        let mut b = Bucket::new(0, 2.0);
        assert_eq!(b.take(u64::MAX, Instant::now()), (0, Duration::ZERO));
    }

    #[test]
    fn config_messages() {
        let mut r = Rate::default();
        assert_eq!(
            r.config("rate", "0").unwrap_err().to_string(),
            "rate cannot be set to 0"
        );
        assert_eq!(
            r.config("burstiness", "x").unwrap_err().to_string(),
            "burstiness must be a floating point number (seconds)"
        );
        assert!(r.config("connection-rate", "50K").unwrap());
        assert_eq!(r.connection_rate, 50 * 1024);
        assert!(!r.config("size", "1").unwrap());
    }
}
