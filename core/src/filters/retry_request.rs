//! `retry-request`: retry a single failing request (and, by default, a
//! failing open) after a delay, without reopening anything.
//!
//! Parameters: `retry-request-retries=N` (default 2, at most 1000),
//! `retry-request-delay=N` seconds (default 2), `retry-request-open=BOOL`
//! (default true). Every failure is retried, after the same delay each
//! time, whatever the request and its flags. The runtime supplies the
//! clock ([`RetryRequest::new`]) and a debug log
//! ([`RetryRequest::with_debug`]).

use alloc::boxed::Box;
use core::time::Duration;

use super::params::{bool_param, parse_unsigned};
use super::retry::{delay_param, Debug, Sleep};
use crate::backend::{
    Context, Error, Extents, Filter, FilterHandle, Flags, NextOpener, OpenArgs, Result,
};
use crate::errno::Errno;

/// The retry-request filter.
#[derive(Debug)]
pub struct RetryRequest {
    retries: u32,
    delay: u32,
    retry_open: bool,
    sleep: Sleep,
    debug: Debug,
}

fn no_debug(_: core::fmt::Arguments<'_>) {}

impl RetryRequest {
    /// A retry-request filter that waits with `sleep`.
    pub fn new(sleep: Sleep) -> Self {
        RetryRequest {
            retries: 2,
            delay: 2,
            retry_open: true,
            sleep,
            debug: no_debug,
        }
    }

    /// The same, writing nbdkit's debug messages with `debug`.
    pub fn with_debug(self, debug: Debug) -> Self {
        RetryRequest { debug, ..self }
    }

    fn run<T>(&self, mut op: impl FnMut() -> Result<T>) -> Result<T> {
        let mut last = Error::new(Errno::EIO);
        for attempt in 0..=self.retries {
            if attempt > 0 {
                (self.debug)(format_args!(
                    "retry {attempt}: waiting {} seconds before retrying",
                    self.delay
                ));
                (self.sleep)(Duration::from_secs(u64::from(self.delay)));
            }
            match op() {
                Ok(v) => return Ok(v),
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}

impl Filter for RetryRequest {
    fn name(&self) -> &'static str {
        "retry-request"
    }
    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit retry request filter")
    }
    fn config_help(&self) -> &'static str {
        "retry-request-retries=<N> Number of retries (default: 2).\n\
         retry-request-delay=<N>   Seconds to wait before retry (default: 2).\n\
         retry-request-open=false  Do not retry opening the plugin (default: true)."
    }
    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            "retry-request-retries" => {
                self.retries = parse_unsigned(key, value, u64::from(u32::MAX))? as u32;
                if self.retries > 1000 {
                    return Err(Error::config("retry-request-retries: value too large"));
                }
            }
            "retry-request-delay" => self.delay = delay_param(key, value)?,
            "retry-request-open" => self.retry_open = bool_param(value)?,
            _ => return Ok(false),
        }
        Ok(true)
    }
    fn open(
        &self,
        next: &mut dyn NextOpener,
        args: &OpenArgs<'_>,
    ) -> Result<Box<dyn FilterHandle>> {
        if self.retry_open {
            self.run(|| next.open(args.readonly, args.export_name))?;
        } else {
            next.open(args.readonly, args.export_name)?;
        }
        Ok(Box::new(RetryRequestHandle {
            retries: self.retries,
            delay: self.delay,
            sleep: self.sleep,
            debug: self.debug,
        }))
    }
}

struct RetryRequestHandle {
    retries: u32,
    delay: u32,
    sleep: Sleep,
    debug: Debug,
}

impl RetryRequestHandle {
    fn run<T>(&self, mut op: impl FnMut() -> Result<T>) -> Result<T> {
        RetryRequest {
            retries: self.retries,
            delay: self.delay,
            retry_open: false,
            sleep: self.sleep,
            debug: self.debug,
        }
        .run(&mut op)
    }
}

impl FilterHandle for RetryRequestHandle {
    fn pread(&self, next: &Context, buf: &mut [u8], offset: u64, flags: Flags) -> Result<()> {
        self.run(|| next.pread(buf, offset, flags))
    }
    fn pwrite(&self, next: &Context, buf: &[u8], offset: u64, flags: Flags) -> Result<()> {
        self.run(|| next.pwrite(buf, offset, flags))
    }
    fn flush(&self, next: &Context, flags: Flags) -> Result<()> {
        self.run(|| next.flush(flags))
    }
    fn trim(&self, next: &Context, count: u64, offset: u64, flags: Flags) -> Result<()> {
        self.run(|| next.trim(count, offset, flags))
    }
    fn zero(&self, next: &Context, count: u64, offset: u64, flags: Flags) -> Result<()> {
        self.run(|| next.zero(count, offset, flags))
    }
    fn extents(
        &self,
        next: &Context,
        count: u64,
        offset: u64,
        flags: Flags,
        extents: &mut Extents,
    ) -> Result<()> {
        self.run(|| {
            // Each try starts from an empty list, up to the size below.
            let mut fresh = Extents::new(offset, next.get_size());
            next.extents(count, offset, flags, &mut fresh)?;
            for e in fresh.as_slice() {
                extents.add(e.offset, e.length, e.flags)?;
            }
            Ok(())
        })
    }
    fn cache(&self, next: &Context, count: u64, offset: u64, flags: Flags) -> Result<()> {
        self.run(|| next.cache(count, offset, flags))
    }
}
