//! `retry`: when a request fails, wait, reopen the layers below and try
//! again.
//!
//! Parameters: `retries=N` (default 5), `retry-delay=N` seconds (default
//! 2), `retry-exponential=BOOL` (default yes: the delay doubles after each
//! retry), `retry-readonly=BOOL` (default no: reopen read-only after the
//! first failure).
//!
//! Waiting needs a clock: the runtime gives the filter a sleep function
//! ([`Retry::new`]). Reopening uses [`NextOpener::reopener`]: the handle
//! keeps the fresh context of the layers below and uses it in place of the
//! one the framework passes as `next`.

use alloc::boxed::Box;
use alloc::string::String;
use core::time::Duration;

use super::params::{bool_param, parse_unsigned};
use crate::backend::{
    Context, Error, Extents, Filter, FilterHandle, Flags, NextOpener, OpenArgs, Reopener, Result,
    ThreadModel,
};
use crate::errno::Errno;
use crate::sync::{lock, Mutex};

/// Sleeps for a while (the runtime's clock).
pub type Sleep = fn(Duration);

/// The retry filter.
#[derive(Debug)]
pub struct Retry {
    retries: u32,
    delay: u32,
    exponential: bool,
    readonly: bool,
    sleep: Sleep,
}

impl Retry {
    /// A retry filter that waits with `sleep`.
    pub fn new(sleep: Sleep) -> Self {
        Retry {
            retries: 5,
            delay: 2,
            exponential: true,
            readonly: false,
            sleep,
        }
    }
}

/// Parse a delay in seconds (`KEY cannot be 0`).
pub(crate) fn delay_param(key: &str, value: &str) -> Result<u32> {
    let d = parse_unsigned(key, value, u64::from(u32::MAX))? as u32;
    if d == 0 {
        return Err(Error::config(alloc::format!("{key} cannot be 0")));
    }
    Ok(d)
}

impl Filter for Retry {
    fn name(&self) -> &'static str {
        "retry"
    }
    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit retry filter")
    }
    fn config_help(&self) -> &'static str {
        "retries=<N>              Number of retries (default: 5).\n\
         retry-delay=<N>          Seconds to wait before retry (default: 2).\n\
         retry-exponential=yes|no Exponential back-off (default: yes).\n\
         retry-readonly=yes|no    Force read-only on failure (default: no)."
    }
    fn thread_model(&self) -> ThreadModel {
        // A reopen must not race with other requests of the connection.
        ThreadModel::SerializeRequests
    }
    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            "retries" => self.retries = parse_unsigned(key, value, u64::from(u32::MAX))? as u32,
            "retry-delay" => self.delay = delay_param(key, value)?,
            "retry-exponential" => self.exponential = bool_param(value)?,
            "retry-readonly" => self.readonly = bool_param(value)?,
            _ => return Ok(false),
        }
        Ok(true)
    }
    fn open(
        &self,
        next: &mut dyn NextOpener,
        args: &OpenArgs<'_>,
    ) -> Result<Box<dyn FilterHandle>> {
        next.open(args.readonly, args.export_name)?;
        Ok(Box::new(RetryHandle {
            retries: self.retries,
            delay: self.delay,
            exponential: self.exponential,
            readonly_on_failure: self.readonly,
            sleep: self.sleep,
            export_name: args.export_name.into(),
            reopener: next.reopener(),
            state: Mutex::new(State {
                reopened: None,
                valid: true,
                readonly: args.readonly,
                reopens: 0,
            }),
        }))
    }
}

struct State {
    /// The layers below as last reopened; `None`: the original `next`.
    reopened: Option<Context>,
    /// False after a reopen failed: every request tries to reopen first.
    valid: bool,
    readonly: bool,
    reopens: u32,
}

struct RetryHandle {
    retries: u32,
    delay: u32,
    exponential: bool,
    readonly_on_failure: bool,
    sleep: Sleep,
    export_name: String,
    reopener: Option<Box<dyn Reopener>>,
    state: Mutex<State>,
}

impl RetryHandle {
    fn run<T>(
        &self,
        next: &Context,
        is_write: bool,
        mut op: impl FnMut(&Context) -> Result<T>,
    ) -> Result<T> {
        let mut st = lock(&self.state);
        let mut delay = u64::from(self.delay);
        let mut last = Error::new(Errno::EIO);
        for attempt in 0..=self.retries {
            if attempt > 0 {
                (self.sleep)(Duration::from_secs(delay));
                if self.exponential {
                    delay = delay.saturating_mul(2);
                }
                self.reopen(&mut st);
            }
            if !st.valid {
                continue;
            }
            if is_write && st.readonly && st.reopens > 0 {
                return Err(Error::new(Errno::EROFS));
            }
            match op(st.reopened.as_ref().unwrap_or(next)) {
                Ok(v) => return Ok(v),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Close the layers below and open them again.
    fn reopen(&self, st: &mut State) {
        let Some(r) = &self.reopener else {
            // Nothing can be reopened: simply try again.
            return;
        };
        if self.readonly_on_failure {
            st.readonly = true;
        }
        st.reopened = None;
        st.reopens += 1;
        match r.open(st.readonly, &self.export_name) {
            Ok(ctx) => {
                st.reopened = Some(ctx);
                st.valid = true;
            }
            Err(_) => st.valid = false,
        }
    }
}

impl Drop for RetryHandle {
    fn drop(&mut self) {
        let st = lock(&self.state);
        if let Some(ctx) = &st.reopened {
            let _ = ctx.finalize();
        }
    }
}

impl FilterHandle for RetryHandle {
    fn pread(&self, next: &Context, buf: &mut [u8], offset: u64, flags: Flags) -> Result<()> {
        self.run(next, false, |c| c.pread(buf, offset, flags))
    }
    fn pwrite(&self, next: &Context, buf: &[u8], offset: u64, flags: Flags) -> Result<()> {
        self.run(next, true, |c| c.pwrite(buf, offset, flags))
    }
    fn flush(&self, next: &Context, flags: Flags) -> Result<()> {
        self.run(next, false, |c| c.flush(flags))
    }
    fn trim(&self, next: &Context, count: u64, offset: u64, flags: Flags) -> Result<()> {
        self.run(next, true, |c| c.trim(count, offset, flags))
    }
    fn zero(&self, next: &Context, count: u64, offset: u64, flags: Flags) -> Result<()> {
        self.run(next, true, |c| c.zero(count, offset, flags))
    }
    fn extents(
        &self,
        next: &Context,
        count: u64,
        offset: u64,
        flags: Flags,
        extents: &mut Extents,
    ) -> Result<()> {
        let start = extents.start();
        let end = extents.end();
        self.run(next, false, |c| {
            // Start each attempt from an empty list.
            let mut fresh = Extents::new(start, end);
            c.extents(count, offset, flags, &mut fresh)?;
            for e in fresh.as_slice() {
                extents.add(e.offset, e.length, e.flags)?;
            }
            Ok(())
        })
    }
    fn cache(&self, next: &Context, count: u64, offset: u64, flags: Flags) -> Result<()> {
        self.run(next, false, |c| c.cache(count, offset, flags))
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use crate::backend::{Handle, Peer, Plugin, Stack};
    use core::sync::atomic::{AtomicU32, Ordering};

    static OPENS: AtomicU32 = AtomicU32::new(0);

    /// A plugin whose first connection fails every read.
    struct FailFirst;
    struct FailFirstHandle {
        broken: bool,
    }

    impl Plugin for FailFirst {
        fn name(&self) -> &'static str {
            "failfirst"
        }
        fn callbacks(&self) -> &'static [&'static str] {
            &[]
        }
        fn open(&self, _args: &OpenArgs<'_>) -> Result<Box<dyn crate::backend::Handle>> {
            let n = OPENS.fetch_add(1, Ordering::SeqCst);
            Ok(Box::new(FailFirstHandle { broken: n == 0 }))
        }
    }

    impl Handle for FailFirstHandle {
        fn get_size(&self) -> Result<u64> {
            Ok(4096)
        }
        fn pread(&self, buf: &mut [u8], _offset: u64, _flags: Flags) -> Result<()> {
            if self.broken {
                return Err(Error::new(Errno::EIO));
            }
            buf.fill(7);
            Ok(())
        }
    }

    #[test]
    fn reopens_the_layer_below_after_a_failure() {
        let mut retry = Retry::new(|_| {});
        retry.config("retry-delay", "1").unwrap();
        let stack = Stack::new(Box::new(FailFirst), alloc::vec![Box::new(retry)]);
        let peer = Peer::Unknown;
        let ctx = stack
            .open(&OpenArgs {
                readonly: false,
                export_name: "",
                is_tls: false,
                peer: &peer,
            })
            .unwrap();
        let mut buf = [0u8; 512];
        ctx.pread(&mut buf, 0, Flags::NONE).unwrap();
        assert_eq!(buf, [7u8; 512]);
        assert_eq!(OPENS.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn parameters() {
        let mut r = Retry::new(|_| {});
        assert!(r.config("retry-delay", "0").is_err());
        assert!(r.config("retries", "-1").is_err());
        assert!(r.config("retry-exponential", "x").is_err());
        assert!(!r.config("size", "1").unwrap());
    }
}
