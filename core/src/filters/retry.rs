//! `retry`: when a request fails, wait, reopen the layers below and try
//! again.
//!
//! Parameters: `retries=N` (default 5), `retry-delay=N` seconds (default
//! 2), `retry-exponential=BOOL` (default yes: the delay doubles after each
//! retry), `retry-readonly=BOOL` (default no: reopen read-only after the
//! first failure, and refuse writes from then on).
//!
//! As nbdkit's filter: each failed try of a request waits (the delay
//! restarts from `retry-delay` for every request), then closes the layers
//! below and opens them again; a reopen that fails counts as a failed try
//! (`ESHUTDOWN`), and later requests start by reopening. Before each try
//! the request is checked against the reopened layers: past their (maybe
//! new) size, or asking for what they no longer offer (write, trim, zero,
//! FUA, flush, extents, cache), it fails and is retried like any failure.
//! A fast zero the layers below cannot do fails at once, and with
//! `retry-readonly` a write after a reopen fails at once with `EROFS`.
//!
//! Waiting needs a clock: the runtime gives the filter a sleep function
//! ([`Retry::new`]) and a debug log ([`Retry::with_debug`]). The layers
//! below are opened through [`NextOpener::reopener`] from the start, so
//! that the handle owns them and can close them before reopening, as
//! nbdkit does (the framework's slot for them stays empty).

use alloc::boxed::Box;
use alloc::string::String;
use core::fmt::Arguments;
use core::time::Duration;

use super::params::{bool_param, parse_unsigned};
use crate::backend::{
    BlockSize, Context, Error, Extents, Filter, FilterHandle, Flags, NextOpener, OpenArgs,
    Reopener, Result, Support, ThreadModel,
};
use crate::errno::Errno;
use crate::sync::{lock, Mutex};

/// Sleeps for a while (the runtime's clock).
pub type Sleep = fn(Duration);

/// Writes a debug message (shown with `-v`).
pub type Debug = fn(Arguments<'_>);

fn no_debug(_: Arguments<'_>) {}

/// The retry filter.
#[derive(Debug)]
pub struct Retry {
    retries: u32,
    delay: u32,
    exponential: bool,
    readonly: bool,
    sleep: Sleep,
    debug: Debug,
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
            debug: no_debug,
        }
    }

    /// The same, writing nbdkit's debug messages with `debug`.
    pub fn with_debug(self, debug: Debug) -> Self {
        Retry { debug, ..self }
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
        let Some(reopener) = next.reopener() else {
            return Err(Error::msg(
                Errno::ENOTSUP,
                "retry: the layers below cannot be reopened on this stack",
            ));
        };
        let ctx = reopener.open(args.readonly, args.export_name)?;
        Ok(Box::new(RetryHandle {
            retries: self.retries,
            delay: self.delay,
            exponential: self.exponential,
            force_readonly: self.readonly,
            sleep: self.sleep,
            debug: self.debug,
            readonly: args.readonly,
            export_name: args.export_name.into(),
            reopener,
            state: Mutex::new(State {
                below: Some(ctx),
                reopens: 0,
            }),
        }))
    }
}

struct State {
    /// The layers below; `None` after a reopen failed (every request then
    /// starts by reopening).
    below: Option<Context>,
    reopens: u32,
}

struct RetryHandle {
    retries: u32,
    delay: u32,
    exponential: bool,
    force_readonly: bool,
    sleep: Sleep,
    debug: Debug,
    readonly: bool,
    export_name: String,
    reopener: Box<dyn Reopener>,
    state: Mutex<State>,
}

/// What a request is, for the checks before each try.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Read,
    Write,
    Trim,
    Zero,
    Flush,
    Extents,
    Cache,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Read => "pread",
            Kind::Write => "pwrite",
            Kind::Trim => "trim",
            Kind::Zero => "zero",
            Kind::Flush => "flush",
            Kind::Extents => "extents",
            Kind::Cache => "cache",
        }
    }
    fn writes(self) -> bool {
        matches!(self, Kind::Write | Kind::Trim | Kind::Zero)
    }
}

impl RetryHandle {
    /// Run `op` on the layers below, retrying as nbdkit does. `range` is
    /// the request's (count, offset), checked against the size below.
    fn run<T>(
        &self,
        kind: Kind,
        range: Option<(u64, u64)>,
        flags: Flags,
        mut op: impl FnMut(&Context) -> Result<T>,
    ) -> Result<T> {
        let mut st = lock(&self.state);
        let mut retry = 0u32;
        let mut delay = u64::from(self.delay);
        loop {
            if kind.writes() && st.reopens > 0 && self.force_readonly {
                return Err(Error::new(Errno::EROFS));
            }
            // `None`: the layers below are not open (a reopen failed in an
            // earlier request), so nothing was tried (nbdkit logs errno 0).
            let mut err = match &st.below {
                None => None,
                Some(c) => {
                    if kind == Kind::Zero
                        && flags.contains(Flags::FAST_ZERO)
                        && !c.caps().can_fast_zero
                    {
                        return Err(Error::new(Errno::ENOTSUP));
                    }
                    match Self::check(c, kind, range, flags) {
                        Err(e) => Some(e),
                        Ok(()) => match op(c) {
                            Ok(v) => return Ok(v),
                            Err(e) => Some(e),
                        },
                    }
                }
            };
            // Wait and reopen; a failed reopen counts as a failed try,
            // with ESHUTDOWN.
            loop {
                if retry >= self.retries {
                    (self.debug)(format_args!(
                        "could not recover after {} retries",
                        self.retries
                    ));
                    return Err(err.unwrap_or_else(|| Error::new(Errno::ESHUTDOWN)));
                }
                (self.debug)(format_args!(
                    "{} failed: original errno = {}",
                    kind.name(),
                    err.as_ref().map_or(0, |e| e.errno.0)
                ));
                (self.debug)(format_args!(
                    "retry {}: waiting {} seconds before retrying",
                    retry + 1,
                    delay
                ));
                (self.sleep)(Duration::from_secs(delay));
                retry += 1;
                if self.exponential {
                    delay = delay.saturating_mul(2);
                }
                st.reopens += 1;
                if self.reopen(&mut st) {
                    break;
                }
                err = Some(Error::new(Errno::ESHUTDOWN));
            }
        }
    }

    /// What nbdkit checks before each try: the range against the size
    /// below, and that the layers below still offer the request.
    fn check(c: &Context, kind: Kind, range: Option<(u64, u64)>, flags: Flags) -> Result<()> {
        let caps = c.caps();
        if let Some((count, offset)) = range {
            if offset.saturating_add(count) > caps.size {
                return Err(Error::new(if kind.writes() {
                    Errno::ENOSPC
                } else {
                    Errno::EIO
                }));
            }
        }
        let fua = flags.contains(Flags::FUA) && caps.can_fua == Support::None;
        let refused = match kind {
            Kind::Write => (!caps.can_write).then_some(Errno::EROFS),
            Kind::Trim => (!caps.can_trim).then_some(Errno::EROFS),
            Kind::Zero => (caps.can_zero == Support::None).then_some(Errno::EROFS),
            Kind::Flush => (!caps.can_flush).then_some(Errno::EIO),
            Kind::Extents => (!caps.can_extents).then_some(Errno::EIO),
            Kind::Cache => (caps.can_cache == Support::None).then_some(Errno::EIO),
            Kind::Read => None,
        };
        match refused {
            Some(e) => Err(Error::new(e)),
            None if kind.writes() && fua => Err(Error::new(Errno::EIO)),
            None => Ok(()),
        }
    }

    /// Close the layers below and open them again: true if that worked.
    fn reopen(&self, st: &mut State) -> bool {
        if let Some(old) = st.below.take() {
            let _ = old.finalize();
        }
        let readonly = self.readonly || self.force_readonly;
        match self.reopener.open(readonly, &self.export_name) {
            Ok(ctx) => {
                st.below = Some(ctx);
                true
            }
            Err(_) => false,
        }
    }

    /// A capability of the layers below as first opened (nbdkit caches
    /// the answers of the connection's layers when it opens them).
    fn caps<T>(&self, f: impl FnOnce(&Context) -> T) -> Result<T> {
        match &lock(&self.state).below {
            Some(c) => Ok(f(c)),
            None => Err(Error::new(Errno::ESHUTDOWN)),
        }
    }
}

impl Drop for RetryHandle {
    fn drop(&mut self) {
        let st = lock(&self.state);
        (self.debug)(format_args!("reopens needed: {}", st.reopens));
    }
}

// The framework's `next` is the empty slot (see the module comment): every
// call goes to the layers this handle owns.
impl FilterHandle for RetryHandle {
    fn finalize(&self, _next: &Context) -> Result<()> {
        match &lock(&self.state).below {
            Some(c) => c.finalize(),
            None => Ok(()),
        }
    }
    fn get_size(&self, _next: &Context) -> Result<u64> {
        self.caps(|c| c.caps().size)
    }
    fn export_description(&self, _next: &Context) -> Result<Option<String>> {
        self.caps(|c| c.export_description())?
    }
    fn block_size(&self, _next: &Context) -> Result<Option<BlockSize>> {
        self.caps(|c| c.caps().block_size)
    }
    fn can_write(&self, _next: &Context) -> Result<bool> {
        self.caps(|c| c.caps().can_write)
    }
    fn can_flush(&self, _next: &Context) -> Result<bool> {
        self.caps(|c| c.caps().can_flush)
    }
    fn is_rotational(&self, _next: &Context) -> Result<bool> {
        self.caps(|c| c.caps().is_rotational)
    }
    fn can_trim(&self, _next: &Context) -> Result<bool> {
        self.caps(|c| c.caps().can_trim)
    }
    fn can_zero(&self, _next: &Context) -> Result<Support> {
        self.caps(|c| match c.caps().can_zero {
            Support::None => Support::None,
            _ => Support::Native,
        })
    }
    fn can_fast_zero(&self, _next: &Context) -> Result<bool> {
        self.caps(|c| c.caps().can_fast_zero)
    }
    fn can_extents(&self, _next: &Context) -> Result<bool> {
        self.caps(|c| c.caps().can_extents)
    }
    fn can_fua(&self, _next: &Context) -> Result<Support> {
        self.caps(|c| match c.caps().can_fua {
            Support::None => Support::None,
            _ => Support::Native,
        })
    }
    fn can_multi_conn(&self, _next: &Context) -> Result<bool> {
        self.caps(|c| c.caps().can_multi_conn)
    }
    fn can_cache(&self, _next: &Context) -> Result<Support> {
        self.caps(|c| match c.caps().can_cache {
            Support::None => Support::None,
            _ => Support::Native,
        })
    }
    fn pread(&self, _next: &Context, buf: &mut [u8], offset: u64, flags: Flags) -> Result<()> {
        let count = buf.len() as u64;
        self.run(Kind::Read, Some((count, offset)), flags, |c| {
            c.pread(buf, offset, flags)
        })
    }
    fn pwrite(&self, _next: &Context, buf: &[u8], offset: u64, flags: Flags) -> Result<()> {
        let count = buf.len() as u64;
        self.run(Kind::Write, Some((count, offset)), flags, |c| {
            c.pwrite(buf, offset, flags)
        })
    }
    fn flush(&self, _next: &Context, flags: Flags) -> Result<()> {
        self.run(Kind::Flush, None, flags, |c| c.flush(flags))
    }
    fn trim(&self, _next: &Context, count: u64, offset: u64, flags: Flags) -> Result<()> {
        self.run(Kind::Trim, Some((count, offset)), flags, |c| {
            c.trim(count, offset, flags)
        })
    }
    fn zero(&self, _next: &Context, count: u64, offset: u64, flags: Flags) -> Result<()> {
        self.run(Kind::Zero, Some((count, offset)), flags, |c| {
            c.zero(count, offset, flags)
        })
    }
    fn extents(
        &self,
        _next: &Context,
        count: u64,
        offset: u64,
        flags: Flags,
        extents: &mut Extents,
    ) -> Result<()> {
        self.run(Kind::Extents, Some((count, offset)), flags, |c| {
            // Each try starts from an empty list, up to the size below.
            let mut fresh = Extents::new(offset, c.get_size());
            c.extents(count, offset, flags, &mut fresh)?;
            for e in fresh.as_slice() {
                extents.add(e.offset, e.length, e.flags)?;
            }
            Ok(())
        })
    }
    fn cache(&self, _next: &Context, count: u64, offset: u64, flags: Flags) -> Result<()> {
        // nbdkit does not check the range of a cache request.
        self.run(Kind::Cache, None, flags, |c| c.cache(count, offset, flags))
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use crate::backend::{Callbacks, Handle, Peer, Plugin, Stack};
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
        fn callbacks(&self) -> Callbacks {
            Callbacks::empty()
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
