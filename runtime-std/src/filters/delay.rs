//! The delay filter: sleep before each kind of request.
//!
//! Parameters (each `SECS` or `NNms`):
//! - `rdelay` / `delay-read`: reads;
//! - `delay-write`, `delay-zero`, `delay-trim`: writes, zeroes, trims;
//! - `wdelay`: writes, zeroes and trims;
//! - `delay-extents`, `delay-cache`, `delay-flush` (also `edelay`, `cdelay`,
//!   `fdelay`);
//! - `delay-fast-zero=BOOL` (default true): false fails fast zero requests
//!   at once with ENOTSUP;
//! - `delay-open`, `delay-close`: client connection and (graceful)
//!   disconnection: a client that sends NBD_CMD_DISC sees its connection
//!   close after the delay; one that hangs up is not waited for.
//!
//! As nbdkit's sleeps, every delay ends early when the server is told to
//! stop (a request or an open then fails with "aborting sleep because of
//! server shut down"), so a signal stops a server promptly.

use std::time::Duration;

use nbdkit_core::backend::{
    Context, Error, Extents, Filter, FilterHandle, Flags, NextOpener, OpenArgs, Result,
};
use nbdkit_core::errno::Errno;

use super::util::{parse_bool, parse_unsigned};

/// The delay filter.
#[derive(Debug, Clone, Default)]
pub struct Delay {
    read: Duration,
    write: Duration,
    zero: Duration,
    trim: Duration,
    extents: Duration,
    cache: Duration,
    flush: Duration,
    open: Duration,
    close: Duration,
    no_fast_zero: bool,
}

/// Parse `SECS` or `NNms` with nbdkit's messages.
fn parse_delay(key: &str, value: &str) -> Result<Duration> {
    if value.len() > 2 && value.ends_with("ms") {
        let ms = parse_unsigned(key, &value[..value.len() - 2])?;
        Ok(Duration::from_millis(u64::from(ms)))
    } else {
        let s = parse_unsigned(key, value)?;
        Ok(Duration::from_secs(u64::from(s)))
    }
}

impl Filter for Delay {
    fn name(&self) -> &'static str {
        "delay"
    }

    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit delay filter")
    }

    fn config_help(&self) -> &'static str {
        "rdelay=<NN>[ms]                Read delay in seconds/milliseconds.\n\
         delay-read=<NN>[ms]            Read delay in seconds/milliseconds.\n\
         delay-write=<NN>[ms]           Write delay in seconds/milliseconds.\n\
         delay-zero=<NN>[ms]            Zero delay in seconds/milliseconds.\n\
         delay-trim=<NN>[ms]            Trim delay in seconds/milliseconds.\n\
         delay-extents=<NN>[ms]         Extents delay in seconds/milliseconds.\n\
         delay-cache=<NN>[ms]           Cache delay in seconds/milliseconds.\n\
         wdelay=<NN>[ms]                Write, zero and trim delay in secs/msecs.\n\
         delay-fast-zero=<BOOL>         Delay fast zero requests (default true).\n\
         delay-open=<NN>[ms]            Open delay in seconds/milliseconds.\n\
         delay-close=<NN>[ms]           Close delay in seconds/milliseconds."
    }

    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            "rdelay" | "delay-read" | "delay-reads" => self.read = parse_delay(key, value)?,
            "delay-write" | "delay-writes" => self.write = parse_delay(key, value)?,
            "delay-zero" | "delay-zeroes" => self.zero = parse_delay(key, value)?,
            "delay-trim" | "delay-trims" | "delay-discard" | "delay-discards" => {
                self.trim = parse_delay(key, value)?
            }
            "delay-extent" | "delay-extents" | "edelay" => self.extents = parse_delay(key, value)?,
            "delay-cache" | "cdelay" => self.cache = parse_delay(key, value)?,
            "delay-flush" | "fdelay" => self.flush = parse_delay(key, value)?,
            "wdelay" => {
                let d = parse_delay(key, value)?;
                self.write = d;
                self.zero = d;
                self.trim = d;
            }
            "delay-fast-zero" => self.no_fast_zero = !parse_bool(value)?,
            "delay-open" => self.open = parse_delay(key, value)?,
            "delay-close" => self.close = parse_delay(key, value)?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn open(
        &self,
        next: &mut dyn NextOpener,
        args: &OpenArgs<'_>,
    ) -> Result<Box<dyn FilterHandle>> {
        sleep(self.open)?;
        next.open(args.readonly, args.export_name)?;
        Ok(Box::new(DelayHandle(self.clone())))
    }
}

/// How often a delay looks whether the server is stopping.
const SLICE: Duration = Duration::from_millis(50);

/// Sleep for `d` (nbdkit_nanosleep): in short slices, giving up with
/// ESHUTDOWN when the server is told to stop.
fn sleep(d: Duration) -> Result<()> {
    if d.is_zero() {
        return Ok(());
    }
    let end = std::time::Instant::now() + d;
    // Bounded by the delay: each slice is SLICE long, or the rest.
    loop {
        if crate::server::stopping() {
            return Err(Error::msg(
                Errno::ESHUTDOWN,
                "aborting sleep because of server shut down",
            ));
        }
        let left = end.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        std::thread::sleep(left.min(SLICE));
    }
}

struct DelayHandle(Delay);

impl Drop for DelayHandle {
    fn drop(&mut self) {
        // Only a client still connected (it sent NBD_CMD_DISC and waits for
        // the server to close) is delayed.
        if !self.0.close.is_zero() && !crate::connection::client_gone() {
            let _ = sleep(self.0.close);
        }
    }
}

impl FilterHandle for DelayHandle {
    fn can_fast_zero(&self, next: &Context) -> Result<bool> {
        // Failing fast zero at once is always possible.
        Ok((self.0.no_fast_zero && !self.0.zero.is_zero()) || next.can_fast_zero()?)
    }

    fn pread(&self, next: &Context, buf: &mut [u8], offset: u64, flags: Flags) -> Result<()> {
        sleep(self.0.read)?;
        next.pread(buf, offset, flags)
    }

    fn pwrite(&self, next: &Context, buf: &[u8], offset: u64, flags: Flags) -> Result<()> {
        sleep(self.0.write)?;
        next.pwrite(buf, offset, flags)
    }

    fn zero(&self, next: &Context, count: u64, offset: u64, flags: Flags) -> Result<()> {
        if flags.contains(Flags::FAST_ZERO) && self.0.no_fast_zero && !self.0.zero.is_zero() {
            return Err(Error::new(Errno::ENOTSUP));
        }
        sleep(self.0.zero)?;
        next.zero(count, offset, flags)
    }

    fn trim(&self, next: &Context, count: u64, offset: u64, flags: Flags) -> Result<()> {
        sleep(self.0.trim)?;
        next.trim(count, offset, flags)
    }

    fn extents(
        &self,
        next: &Context,
        count: u64,
        offset: u64,
        flags: Flags,
        extents: &mut Extents,
    ) -> Result<()> {
        sleep(self.0.extents)?;
        next.extents(count, offset, flags, extents)
    }

    fn cache(&self, next: &Context, count: u64, offset: u64, flags: Flags) -> Result<()> {
        sleep(self.0.cache)?;
        next.cache(count, offset, flags)
    }

    fn flush(&self, next: &Context, flags: Flags) -> Result<()> {
        sleep(self.0.flush)?;
        next.flush(flags)
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn delays_parse() {
        assert_eq!(parse_delay("r", "2").unwrap(), Duration::from_secs(2));
        assert_eq!(
            parse_delay("r", "600ms").unwrap(),
            Duration::from_millis(600)
        );
        assert!(parse_delay("r", "ms").is_err());
        assert_eq!(
            parse_delay("rdelay", "1.5").unwrap_err().to_string(),
            "rdelay: could not parse number: \"1.5\": trailing garbage"
        );
    }

    #[test]
    fn wdelay_sets_three() {
        let mut d = Delay::default();
        assert!(d.config("wdelay", "5ms").unwrap());
        assert_eq!(d.trim, Duration::from_millis(5));
        assert_eq!(d.zero, Duration::from_millis(5));
        assert!(!d.config("size", "1").unwrap());
    }
}
