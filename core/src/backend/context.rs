use alloc::boxed::Box;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;

use spin::Once;

use super::filter::NextExports;
use super::{
    BlockSize, Callbacks, Error, Exports, Extents, Filter, FilterHandle, Flags, Handle, NextOpener,
    OpenArgs, Plugin, Reopener, Result, Support, ThreadModel,
};
use crate::debug;
use crate::errno::Errno;
use crate::sync::{lock, Mutex};

/// The largest buffer the server allocates to emulate zero or cache (and
/// that the filters allocate to read what they compare).
#[cfg(feature = "std")]
pub const EMULATION_CHUNK: u64 = 1 << 20;
/// The largest buffer the server allocates to emulate zero or cache (and
/// that the filters allocate to read what they compare): small without
/// `std`, where the heap is a device's small static one.
#[cfg(not(feature = "std"))]
pub const EMULATION_CHUNK: u64 = 2048;

// The call lines below are printed with `std` only: a device has no `-v`,
// and without them its flash holds none of their formatting code (`cfg!`
// keeps the arguments type-checked and used).

/// A control-path line (`-v`, unless `-D nbdkit.backend.controlpath=0`).
macro_rules! control {
    ($($t:tt)*) => {
        if cfg!(feature = "std") && debug::controlpath() {
            debug::debug(format_args!($($t)*));
        }
    };
}

/// A line of the global calls (`-v`): load, config, config_complete,
/// get_ready, after_fork, preconnect, cleanup. nbdkit prints these
/// whatever `-D nbdkit.backend.controlpath` says.
macro_rules! verbose {
    ($($t:tt)*) => {
        if cfg!(feature = "std") {
            debug::debug(format_args!($($t)*))
        }
    };
}

/// A data-path line (`-v`, unless `-D nbdkit.backend.datapath=0`): one
/// relaxed load when off.
macro_rules! data {
    ($($t:tt)*) => {
        if cfg!(feature = "std") && debug::datapath() {
            debug::debug(format_args!($($t)*));
        }
    };
}

/// What a layer said about itself when the connection was opened, cached
/// for the connection's life (nbdkit caches the same per context).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caps {
    /// Export size.
    pub size: u64,
    /// Block size constraints, if any.
    pub block_size: Option<BlockSize>,
    /// Writes possible (false when the connection is read-only).
    pub can_write: bool,
    /// Flush possible.
    pub can_flush: bool,
    /// Rotational medium.
    pub is_rotational: bool,
    /// Trim possible.
    pub can_trim: bool,
    /// How zeroing works.
    pub can_zero: Support,
    /// FAST_ZERO honoured.
    pub can_fast_zero: bool,
    /// Extents are meaningful.
    pub can_extents: bool,
    /// How FUA works.
    pub can_fua: Support,
    /// Connections are coherent.
    pub can_multi_conn: bool,
    /// How caching works.
    pub can_cache: Support,
}

impl Caps {
    /// The features the transmission flags are made of (the runtime folds
    /// its thread model into `multi_conn` where it matters).
    pub fn features(&self) -> crate::transmission::Features {
        crate::transmission::Features {
            write: self.can_write,
            flush: self.can_flush,
            fua: self.can_fua != Support::None,
            rotational: self.is_rotational,
            trim: self.can_trim,
            zero: self.can_zero != Support::None,
            fast_zero: self.can_fast_zero,
            multi_conn: self.can_multi_conn,
            cache: self.can_cache != Support::None,
        }
    }
}

/// What [`Context::caps`] gives when a layer cannot answer (the error is
/// logged): nothing is possible.
static NO_CAPS: Caps = Caps {
    size: 0,
    block_size: None,
    can_write: false,
    can_flush: false,
    is_rotational: false,
    can_trim: false,
    can_zero: Support::None,
    can_fast_zero: false,
    can_extents: false,
    can_fua: Support::None,
    can_multi_conn: false,
    can_cache: Support::None,
};

/// A layer's answers, each asked for the first time it is needed and then
/// kept for the connection's life (nbdkit caches the same per context).
#[derive(Default)]
struct Lazy {
    size: Once<u64>,
    can_write: Once<bool>,
    can_flush: Once<bool>,
    is_rotational: Once<bool>,
    can_trim: Once<bool>,
    can_zero: Once<Support>,
    can_fast_zero: Once<bool>,
    can_extents: Once<bool>,
    can_fua: Once<Support>,
    can_multi_conn: Once<bool>,
    can_cache: Once<Support>,
    block_size: Once<Option<BlockSize>>,
    all: Once<Caps>,
}

enum Layer {
    /// A plugin's handle, with the plugin's callbacks.
    Plugin(Box<dyn Handle>, Callbacks),
    // Field order matters: the filter's handle is dropped (closed) before
    // the layer below, as nbdkit closes outer layers first. The layer
    // below is shared with the handle (see `FilterHandle::keep_next`),
    // which lets go of it when it is finalized or dropped.
    Filter {
        handle: Box<dyn FilterHandle>,
        next: Arc<Context>,
    },
}

/// One layer of a connection's open stack: a plugin handle or a filter
/// handle with the context below it. Asks the layer for its capabilities
/// when they are first needed and caches them, implements the server's
/// emulations (FUA by flush, zero by writing zeroes, cache by reading,
/// extents as all data), and logs every call with `-v` as nbdkit does
/// (`memory: pread count=512 offset=0`).
pub struct Context {
    layer: Layer,
    name: &'static str,
    readonly: bool,
    lazy: Lazy,
    /// `finalize` ran (nbdkit finalizes a context at most once).
    finalized: Mutex<bool>,
}

impl core::fmt::Debug for Context {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Context")
            .field("name", &self.name)
            .field("caps", &self.lazy.all.get())
            .finish()
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        // Outer layers close first: the handle and the layers below are
        // dropped after this.
        control!("{}: close", self.name);
    }
}

/// Ask the layer of `$ctx` (plugin handle, or filter handle with the next
/// context) for `$m`.
macro_rules! ask {
    ($ctx:expr, $m:ident) => {
        match &$ctx.layer {
            Layer::Plugin(h, _) => h.$m(),
            Layer::Filter { handle, next } => handle.$m(next),
        }
    };
}

/// Ask the layer of `$ctx` for `$m`, as [`ask!`], except that a plugin
/// without the callback `$cb` is not asked: it gets `$default`, the
/// answer nbdkit gives for a plugin that leaves the slot empty, computed
/// from its [`Callbacks`] (`cb`).
macro_rules! ask_or {
    ($ctx:expr, $m:ident, $cb:ident, |$set:ident| $default:expr) => {
        match &$ctx.layer {
            Layer::Plugin(h, set) if set.contains(Callbacks::$cb) => h.$m(),
            Layer::Plugin(_, $set) => $default,
            Layer::Filter { handle, next } => handle.$m(next),
        }
    };
}

fn check_block_size(bs: Option<BlockSize>) -> Result<Option<BlockSize>> {
    let Some(b) = bs else { return Ok(None) };
    if b.minimum == 0 && b.preferred == 0 && b.maximum == 0 {
        return Ok(None);
    }
    let ok = b.minimum.is_power_of_two()
        && b.minimum <= 65536
        && b.preferred.is_power_of_two()
        && (512..=32 * 1024 * 1024).contains(&b.preferred)
        && b.minimum <= b.preferred
        && b.preferred <= b.maximum
        && (b.maximum == u32::MAX || b.maximum % b.minimum == 0);
    if ok {
        Ok(Some(b))
    } else {
        Err(Error::msg(
            Errno::EINVAL,
            alloc::format!(
                "block_size: invalid block size constraints: minimum={} preferred={} maximum={}",
                b.minimum,
                b.preferred,
                b.maximum
            ),
        ))
    }
}

impl Context {
    fn new(layer: Layer, name: &'static str, readonly: bool) -> Context {
        Context {
            layer,
            name,
            readonly,
            lazy: Lazy::default(),
            finalized: Mutex::new(false),
        }
    }

    /// The name of this layer's plugin or filter.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// `prepare` on every layer, innermost first (as nbdkit does, once all
    /// of them are open).
    fn prepare(&self) -> Result<()> {
        match &self.layer {
            Layer::Plugin(h, _) => {
                control!("{}: prepare readonly={}", self.name, self.readonly as u8);
                h.prepare()
            }
            Layer::Filter { handle, next } => {
                handle.keep_next(next);
                next.prepare()?;
                control!("{}: prepare readonly={}", self.name, self.readonly as u8);
                handle.prepare(next, self.readonly)
            }
        }
    }

    /// The cached answer in `cell`, else ask (logging `what`) and keep a
    /// successful answer.
    fn cached<T: Copy>(
        &self,
        cell: &Once<T>,
        what: &str,
        // A function, not a closure: one copy of the once-cell's code per
        // answer type, not per capability (it matters in a device's flash).
        ask: fn(&Context) -> Result<T>,
    ) -> Result<T> {
        if let Some(v) = cell.get() {
            return Ok(*v);
        }
        cell.try_call_once(|| {
            control!("{}: {what}", self.name);
            ask(self)
        })
        .copied()
    }

    /// Size of the export at this layer.
    pub fn size(&self) -> Result<u64> {
        self.cached(&self.lazy.size, "get_size", |c| {
            let size = ask!(c, get_size)?;
            if size > i64::MAX as u64 {
                return Err(Error::msg(Errno::EINVAL, "get_size: size too large"));
            }
            Ok(size)
        })
    }

    /// Writes possible (false when this layer was opened read-only).
    pub fn can_write(&self) -> Result<bool> {
        if self.readonly {
            return Ok(false);
        }
        self.cached(&self.lazy.can_write, "can_write", |c| {
            ask_or!(c, can_write, CAN_WRITE, |cb| Ok(cb.writes()))
        })
    }

    /// How zeroing works (none unless writable).
    pub fn can_zero(&self) -> Result<Support> {
        self.cached(&self.lazy.can_zero, "can_zero", |c| {
            if c.can_write()? {
                ask_or!(c, can_zero, CAN_ZERO, |cb| Ok(if cb.zeroes() {
                    Support::Native
                } else {
                    Support::Emulate
                }))
            } else {
                Ok(Support::None)
            }
        })
    }

    /// FAST_ZERO honoured (never without zero).
    pub fn can_fast_zero(&self) -> Result<bool> {
        self.cached(&self.lazy.can_fast_zero, "can_fast_zero", |c| {
            if c.can_zero()? == Support::None {
                Ok(false)
            } else {
                // Without `.zero`, or when zeroing is emulated, a fast
                // zero can always fail fast.
                ask_or!(c, can_fast_zero, CAN_FAST_ZERO, |cb| Ok(!cb
                    .contains(Callbacks::ZERO)
                    || c.can_zero()? == Support::Emulate))
            }
        })
    }

    /// Trim possible (never unless writable).
    pub fn can_trim(&self) -> Result<bool> {
        self.cached(&self.lazy.can_trim, "can_trim", |c| {
            if c.can_write()? {
                ask_or!(c, can_trim, CAN_TRIM, |cb| Ok(cb.trims()))
            } else {
                Ok(false)
            }
        })
    }

    /// How FUA works (none unless writable).
    pub fn can_fua(&self) -> Result<Support> {
        self.cached(&self.lazy.can_fua, "can_fua", |c| {
            if c.can_write()? {
                // Without `.can_fua`, FUA is emulated by flush.
                ask_or!(c, can_fua, CAN_FUA, |_cb| Ok(if c.can_flush()? {
                    Support::Emulate
                } else {
                    Support::None
                }))
            } else {
                Ok(Support::None)
            }
        })
    }

    /// Flush possible.
    pub fn can_flush(&self) -> Result<bool> {
        self.cached(&self.lazy.can_flush, "can_flush", |c| {
            ask_or!(c, can_flush, CAN_FLUSH, |cb| Ok(cb.flushes()))
        })
    }

    /// Rotational medium.
    pub fn is_rotational(&self) -> Result<bool> {
        // Asked of every plugin: nbdkit's default (false) is the trait's,
        // and our file plugin reports it although nbdkit 1.32's, whose
        // `has_` lines it keeps, has no `.is_rotational`.
        self.cached(&self.lazy.is_rotational, "is_rotational", |c| {
            ask!(c, is_rotational)
        })
    }

    /// Connections are coherent.
    pub fn can_multi_conn(&self) -> Result<bool> {
        self.cached(&self.lazy.can_multi_conn, "can_multi_conn", |c| {
            ask_or!(c, can_multi_conn, CAN_MULTI_CONN, |_cb| Ok(false))
        })
    }

    /// How caching works.
    pub fn can_cache(&self) -> Result<Support> {
        self.cached(&self.lazy.can_cache, "can_cache", |c| {
            ask_or!(c, can_cache, CAN_CACHE, |cb| Ok(
                if cb.contains(Callbacks::CACHE) {
                    Support::Native
                } else {
                    Support::None
                }
            ))
        })
    }

    /// Extents are meaningful.
    pub fn can_extents(&self) -> Result<bool> {
        self.cached(&self.lazy.can_extents, "can_extents", |c| {
            ask_or!(c, can_extents, CAN_EXTENTS, |cb| Ok(
                cb.contains(Callbacks::EXTENTS)
            ))
        })
    }

    /// Block size constraints, if any.
    pub fn block_size(&self) -> Result<Option<BlockSize>> {
        self.cached(&self.lazy.block_size, "block_size", |c| {
            check_block_size(ask!(c, block_size)?)
        })
    }

    /// Every capability of this layer, asked in nbdkit's order (the order
    /// in which the server builds the export flags, which scripts that log
    /// their calls can see).
    pub fn force_caps(&self) -> Result<&Caps> {
        if let Some(c) = self.lazy.all.get() {
            return Ok(c);
        }
        self.lazy.all.try_call_once(|| {
            let size = self.size()?;
            let can_write = self.can_write()?;
            let can_zero = self.can_zero()?;
            let can_fast_zero = self.can_fast_zero()?;
            let can_trim = self.can_trim()?;
            let can_fua = self.can_fua()?;
            let can_flush = self.can_flush()?;
            let is_rotational = self.is_rotational()?;
            let can_multi_conn = self.can_multi_conn()?;
            let can_cache = self.can_cache()?;
            let can_extents = self.can_extents()?;
            let block_size = self.block_size()?;
            Ok(Caps {
                size,
                block_size,
                can_write,
                can_flush,
                is_rotational,
                can_trim,
                can_zero,
                can_fast_zero,
                can_extents,
                can_fua,
                can_multi_conn,
                can_cache,
            })
        })
    }

    /// The capabilities of this layer (asked for if not yet known; if the
    /// layer fails to answer, the error is logged and nothing is possible).
    pub fn caps(&self) -> &Caps {
        match self.force_caps() {
            Ok(c) => c,
            Err(e) => {
                debug::error(format_args!("{}: {e}", self.name));
                &NO_CAPS
            }
        }
    }

    /// Size of the export at this layer (0, with the error logged, if the
    /// layer fails to answer: use [`Context::size`] to see the error).
    pub fn get_size(&self) -> u64 {
        self.size().unwrap_or_else(|e| {
            debug::error(format_args!("{}: {e}", self.name));
            0
        })
    }

    /// The export's description at this layer. Not cached, and asked only
    /// when a client wants it (NBD_INFO_DESCRIPTION), as nbdkit does.
    pub fn export_description(&self) -> Result<Option<String>> {
        control!("{}: export_description", self.name);
        match &self.layer {
            Layer::Plugin(h, _) => h.export_description(),
            Layer::Filter { handle, next } => handle.export_description(next),
        }
    }

    /// Call `finalize` on this layer and every layer below (outer first),
    /// once: later calls do nothing.
    pub fn finalize(&self) -> Result<()> {
        if core::mem::replace(&mut *lock(&self.finalized), true) {
            return Ok(());
        }
        control!("{}: finalize", self.name);
        match &self.layer {
            Layer::Plugin(h, _) => h.finalize(),
            Layer::Filter { handle, next } => {
                handle.finalize(next)?;
                next.finalize()
            }
        }
    }

    fn raw_pwrite(&self, buf: &[u8], offset: u64, flags: Flags) -> Result<()> {
        match &self.layer {
            Layer::Plugin(h, _) => h.pwrite(buf, offset, flags),
            Layer::Filter { handle, next } => handle.pwrite(next, buf, offset, flags),
        }
    }

    fn raw_flush(&self, flags: Flags) -> Result<()> {
        match &self.layer {
            Layer::Plugin(h, _) => h.flush(flags),
            Layer::Filter { handle, next } => handle.flush(next, flags),
        }
    }

    /// Read `buf.len()` bytes at `offset`.
    pub fn pread(&self, buf: &mut [u8], offset: u64, flags: Flags) -> Result<()> {
        data!("{}: pread count={} offset={offset}", self.name, buf.len());
        match &self.layer {
            Layer::Plugin(h, _) => h.pread(buf, offset, flags),
            Layer::Filter { handle, next } => handle.pread(next, buf, offset, flags),
        }
    }

    /// Read `count` bytes at `offset` as bytes the plugin lends
    /// ([`Handle::pread_lent`]), when this layer is a plugin that lends;
    /// `None` (nothing called, nothing logged) otherwise: the caller then
    /// reads with [`Context::pread`]. Logs what `pread` logs.
    pub fn pread_lent(
        &self,
        count: usize,
        offset: u64,
        flags: Flags,
    ) -> Option<Result<super::Lent>> {
        match &self.layer {
            Layer::Plugin(h, _) if h.can_lend() => {
                data!("{}: pread count={count} offset={offset}", self.name);
                Some(h.pread_lent(count, offset, flags))
            }
            _ => None,
        }
    }

    /// Whether [`Context::pread_now`] or [`Context::pwrite_now`] may answer
    /// ([`Handle::can_now`], when this layer is the plugin): cheap enough
    /// to ask before each request, and a `false` saves setting up a call
    /// that would only decline.
    pub fn can_now(&self) -> bool {
        match &self.layer {
            Layer::Plugin(h, _) => h.can_now(),
            Layer::Filter { .. } => false,
        }
    }

    /// Read `buf.len()` bytes at `offset` if that cannot block
    /// ([`Handle::pread_now`]), when this layer is the plugin; `None`
    /// (nothing logged) when it would block or a filter is in the way: the
    /// caller then reads with [`Context::pread`]. Logs what `pread` logs.
    pub fn pread_now(&self, buf: &mut [u8], offset: u64, flags: Flags) -> Option<Result<()>> {
        match &self.layer {
            Layer::Plugin(h, _) => {
                let r = h.pread_now(buf, offset, flags)?;
                data!("{}: pread count={} offset={offset}", self.name, buf.len());
                Some(r)
            }
            Layer::Filter { .. } => None,
        }
    }

    /// Write `buf` at `offset` if that cannot block ([`Handle::pwrite_now`]),
    /// as [`Context::pread_now`] reads; never with FUA, nor when the
    /// connection cannot write (`pwrite` then says why). Logs what `pwrite`
    /// logs.
    pub fn pwrite_now(&self, buf: &[u8], offset: u64, flags: Flags) -> Option<Result<()>> {
        if flags.contains(Flags::FUA) || !matches!(self.can_write(), Ok(true)) {
            return None;
        }
        match &self.layer {
            Layer::Plugin(h, _) => {
                let r = h.pwrite_now(buf, offset, flags)?;
                data!(
                    "{}: pwrite count={} offset={offset} fua={}",
                    self.name,
                    buf.len(),
                    Self::fua(flags)
                );
                Some(r)
            }
            Layer::Filter { .. } => None,
        }
    }

    /// The descriptor to write `count` bytes at `offset` to
    /// ([`Handle::write_fd`]), when this layer is a writable plugin that
    /// has one and the write has no FUA; `None` (nothing logged)
    /// otherwise, and the caller writes with [`Context::pwrite`]. Logs what
    /// `pwrite` logs: the caller writes those bytes to the descriptor.
    pub fn pwrite_fd(&self, count: usize, offset: u64, flags: Flags) -> Option<i32> {
        if flags.contains(Flags::FUA) || !matches!(self.can_write(), Ok(true)) {
            return None;
        }
        match &self.layer {
            Layer::Plugin(h, _) => {
                let fd = h.write_fd()?;
                data!("{}: pwrite count={count} offset={offset} fua=0", self.name);
                Some(fd)
            }
            Layer::Filter { .. } => None,
        }
    }

    /// The buffers to receive a write's payload into, when this layer is
    /// a writable plugin that receives in place ([`Handle::receive_write`])
    /// and wants this write; `None` (nothing called, nothing logged)
    /// otherwise: the caller then reads the payload and calls
    /// [`Context::pwrite`].
    pub fn receive_write(
        &self,
        count: usize,
        offset: u64,
    ) -> Option<alloc::boxed::Box<dyn super::Receive>> {
        match &self.layer {
            Layer::Plugin(h, _) if h.can_receive() && self.can_write().unwrap_or(false) => {
                h.receive_write(count, offset)
            }
            _ => None,
        }
    }

    /// Make a write received in place ([`Context::receive_write`]), its
    /// payload read: what [`Context::pwrite`] does with a buffer (and logs
    /// the same).
    pub fn commit_write(
        &self,
        r: alloc::boxed::Box<dyn super::Receive>,
        offset: u64,
        flags: Flags,
    ) -> Result<()> {
        data!(
            "{}: pwrite count={} offset={offset} fua={}",
            self.name,
            r.len(),
            Self::fua(flags)
        );
        let (flags, flush) = self.split_fua(flags)?;
        r.commit(flags)?;
        if flush {
            self.raw_flush(Flags::NONE)?;
        }
        Ok(())
    }

    /// The descriptor to send `count` bytes at `offset` from
    /// ([`Handle::read_fd`]), when this layer is a plugin that has one;
    /// `None` (nothing logged) otherwise. Logs what `pread` logs: the
    /// caller reads those bytes from the descriptor (and must read them
    /// with `pread` if it cannot). It takes no flags: a read has none
    /// ([`Valid::call_flags`](crate::transmission::Valid::call_flags) of a
    /// READ is empty; DF shapes the reply, not the read).
    pub fn pread_fd(&self, count: usize, offset: u64) -> Option<i32> {
        match &self.layer {
            Layer::Plugin(h, _) => {
                let fd = h.read_fd()?;
                data!("{}: pread count={count} offset={offset}", self.name);
                Some(fd)
            }
            _ => None,
        }
    }

    /// Split FUA off a call when this layer does not implement it natively:
    /// returns the flags to pass down and whether to flush afterwards.
    fn split_fua(&self, flags: Flags) -> Result<(Flags, bool)> {
        Ok(
            if flags.contains(Flags::FUA) && self.can_fua()? != Support::Native {
                (flags.without(Flags::FUA), self.can_flush()?)
            } else {
                (flags, false)
            },
        )
    }

    fn fua(flags: Flags) -> u8 {
        flags.contains(Flags::FUA) as u8
    }

    /// Write `buf` at `offset`.
    pub fn pwrite(&self, buf: &[u8], offset: u64, flags: Flags) -> Result<()> {
        data!(
            "{}: pwrite count={} offset={offset} fua={}",
            self.name,
            buf.len(),
            Self::fua(flags)
        );
        if !self.can_write()? {
            return Err(Error::new(Errno::EROFS));
        }
        let (flags, flush) = self.split_fua(flags)?;
        self.raw_pwrite(buf, offset, flags)?;
        if flush {
            self.raw_flush(Flags::NONE)?;
        }
        Ok(())
    }

    /// Flush.
    pub fn flush(&self, flags: Flags) -> Result<()> {
        data!("{}: flush", self.name);
        self.raw_flush(flags)
    }

    /// Trim.
    pub fn trim(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        data!(
            "{}: trim count={count} offset={offset} fua={}",
            self.name,
            Self::fua(flags)
        );
        if !self.can_write()? {
            return Err(Error::new(Errno::EROFS));
        }
        let (flags, flush) = self.split_fua(flags)?;
        match &self.layer {
            Layer::Plugin(h, _) => h.trim(count, offset, flags)?,
            Layer::Filter { handle, next } => handle.trim(next, count, offset, flags)?,
        }
        if flush {
            self.raw_flush(Flags::NONE)?;
        }
        Ok(())
    }

    /// Zero, natively or by writing zeroes.
    pub fn zero(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        let fast = flags.contains(Flags::FAST_ZERO);
        data!(
            "{}: zero count={count} offset={offset} may_trim={} fua={} fast={}",
            self.name,
            flags.contains(Flags::MAY_TRIM) as u8,
            Self::fua(flags),
            fast as u8
        );
        if !self.can_write()? {
            return Err(Error::new(Errno::EROFS));
        }
        let (flags, flush) = self.split_fua(flags)?;
        let native = if self.can_zero()? == Support::Native {
            match &self.layer {
                Layer::Plugin(h, _) => h.zero(count, offset, flags),
                Layer::Filter { handle, next } => handle.zero(next, count, offset, flags),
            }
        } else {
            Err(Error::new(Errno::ENOTSUP))
        };
        match native {
            Err(e) if e.errno == Errno::ENOTSUP && !fast => {
                self.write_zeroes(count, offset, flags.without(Flags::MAY_TRIM))?
            }
            r => r?,
        }
        if flush {
            self.raw_flush(Flags::NONE)?;
        }
        Ok(())
    }

    fn write_zeroes(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        let buf = vec![0u8; count.min(EMULATION_CHUNK) as usize];
        let mut done = 0u64;
        while done < count {
            let n = (count - done).min(buf.len() as u64);
            self.raw_pwrite(
                &buf[..n as usize],
                offset + done,
                flags.without(Flags::FAST_ZERO),
            )?;
            done += n;
        }
        Ok(())
    }

    /// Extents of `count` bytes at `offset`; a layer without extents
    /// reports everything as data.
    pub fn extents(
        &self,
        count: u64,
        offset: u64,
        flags: Flags,
        extents: &mut Extents,
    ) -> Result<()> {
        data!(
            "{}: extents count={count} offset={offset} req_one={}",
            self.name,
            flags.contains(Flags::REQ_ONE) as u8
        );
        if !self.can_extents()? {
            return extents.add(offset, count, 0);
        }
        match &self.layer {
            Layer::Plugin(h, _) => h.extents(count, offset, flags, extents)?,
            Layer::Filter { handle, next } => {
                handle.extents(next, count, offset, flags, extents)?
            }
        }
        if extents.is_empty() {
            return Err(Error::msg(
                Errno::EINVAL,
                "extents: plugin must return at least one extent",
            ));
        }
        Ok(())
    }

    /// Cache, natively or by reading.
    pub fn cache(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        data!("{}: cache count={count} offset={offset}", self.name);
        match self.can_cache()? {
            Support::None => Ok(()),
            Support::Native => match &self.layer {
                Layer::Plugin(h, _) => h.cache(count, offset, flags),
                Layer::Filter { handle, next } => handle.cache(next, count, offset, flags),
            },
            Support::Emulate => {
                let mut buf = vec![0u8; count.min(EMULATION_CHUNK) as usize];
                let mut done = 0u64;
                while done < count {
                    let n = (count - done).min(buf.len() as u64) as usize;
                    self.pread(&mut buf[..n], offset + done, Flags::NONE)?;
                    done += n as u64;
                }
                Ok(())
            }
        }
    }
}

/// The loaded stack: filters (outermost first) over a plugin. Shared by
/// every connection.
pub struct Stack {
    // Behind an `Arc` so that a filter may keep a way to reopen the layers
    // below it for the life of a connection (see [`NextOpener::reopener`]).
    inner: Arc<Layers>,
}

struct Layers {
    filters: Vec<Box<dyn Filter>>,
    plugin: Box<dyn Plugin>,
}

fn stack_in_use() -> Error {
    Error::msg(
        Errno::EBUSY,
        "the plugin and filters cannot be configured while connections are open",
    )
}

impl core::fmt::Debug for Stack {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Stack")
            .field("plugin", &self.inner.plugin.name())
            .field(
                "filters",
                &self
                    .inner
                    .filters
                    .iter()
                    .map(|f| f.name())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

struct Opener<'a> {
    stack: &'a Arc<Layers>,
    index: usize,
    is_tls: bool,
    peer: &'a super::Peer,
    defaults: &'a Arc<DefaultExports>,
    slot: Option<Context>,
}

impl NextOpener for Opener<'_> {
    fn open(&mut self, readonly: bool, export_name: &str) -> Result<()> {
        if self.slot.is_some() {
            return Err(Error::msg(
                Errno::EINVAL,
                "filter opened the next layer twice",
            ));
        }
        self.slot = Some(open_layer(
            self.stack,
            self.index,
            &OpenArgs {
                readonly,
                export_name,
                is_tls: self.is_tls,
                peer: self.peer,
            },
            self.defaults,
        )?);
        Ok(())
    }

    fn set_next(&mut self, next: Context) -> Result<Option<Context>> {
        Ok(self.slot.replace(next))
    }

    fn reopener(&self) -> Option<Box<dyn Reopener>> {
        Some(Box::new(StackReopener {
            stack: Arc::clone(self.stack),
            index: self.index,
            is_tls: self.is_tls,
            peer: self.peer.clone(),
            defaults: Arc::clone(self.defaults),
        }))
    }
}

/// Opens the layers below a filter again, for the life of a connection.
struct StackReopener {
    stack: Arc<Layers>,
    index: usize,
    is_tls: bool,
    peer: super::Peer,
    defaults: Arc<DefaultExports>,
}

impl Reopener for StackReopener {
    fn open(&self, readonly: bool, export_name: &str) -> Result<Context> {
        control!(
            "{}: reopen readonly={} exportname=\"{export_name}\"",
            self.stack.name(self.index),
            readonly as u8
        );
        let ctx = open_layer(
            &self.stack,
            self.index,
            &OpenArgs {
                readonly,
                export_name,
                is_tls: self.is_tls,
                peer: &self.peer,
            },
            &self.defaults,
        )?;
        ctx.prepare()?;
        Ok(ctx)
    }
}

struct ExportsBelow<'a> {
    stack: &'a Layers,
    index: usize,
    defaults: &'a DefaultExports,
}

impl NextExports for ExportsBelow<'_> {
    fn list_exports(&self, readonly: bool, is_tls: bool, exports: &mut Exports) -> Result<()> {
        self.stack
            .list_exports_from(self.index, readonly, is_tls, exports, self.defaults)
    }
    fn default_export(&self, readonly: bool, is_tls: bool) -> Result<Option<String>> {
        self.stack
            .default_export_from(self.index, readonly, is_tls, self.defaults)
    }
}

/// The default export names that the layers of a stack gave during one
/// connection. As nbdkit does, each layer is asked at most once per
/// connection (until STARTTLS starts a fresh cache), and its answer both
/// resolves `nbdkit_use_default_export` in that layer's export list (left
/// out when there is none or asking failed) and replaces the name `""`
/// when that layer is opened (refused when there is none).
#[derive(Debug, Default)]
pub struct DefaultExports {
    // (layer index, name); a stack has few layers. As nbdkit, only names
    // are remembered: "no default export" and failures are asked again.
    answers: Mutex<Vec<(usize, String)>>,
    // Why a layer's default export could not be resolved, for the
    // runtime to log (nbdkit leaves it out of the list, or refuses "").
    errors: Mutex<Vec<Error>>,
}

impl DefaultExports {
    /// The failures to resolve a default export since the last call.
    pub fn take_errors(&self) -> Vec<Error> {
        core::mem::take(&mut *lock(&self.errors))
    }
}

impl Stack {
    /// A stack of `filters` (outermost first) over `plugin`, loaded in
    /// nbdkit's order: the plugin, then the filters from the innermost.
    pub fn new(plugin: Box<dyn Plugin>, filters: Vec<Box<dyn Filter>>) -> Self {
        verbose!("{}: load", plugin.name());
        for f in filters.iter().rev() {
            verbose!("{}: load", f.name());
        }
        Stack {
            inner: Arc::new(Layers { filters, plugin }),
        }
    }

    /// The plugin.
    pub fn plugin(&self) -> &dyn Plugin {
        &*self.inner.plugin
    }

    /// The plugin, for configuration (`None` once connections are open).
    pub fn plugin_mut(&mut self) -> Option<&mut dyn Plugin> {
        Arc::get_mut(&mut self.inner).map(|l| &mut *l.plugin as &mut dyn Plugin)
    }

    /// The filters, outermost first.
    pub fn filters(&self) -> &[Box<dyn Filter>] {
        &self.inner.filters
    }

    /// Give one `key=value` to the first filter that takes it, else to the
    /// plugin.
    pub fn config(&mut self, key: &str, value: &str) -> Result<()> {
        let layers = Arc::get_mut(&mut self.inner).ok_or_else(stack_in_use)?;
        for f in layers.filters.iter_mut() {
            verbose!("{}: config key={key}, value={value}", f.name());
            if f.config(key, value)? {
                return Ok(());
            }
        }
        verbose!("{}: config key={key}, value={value}", layers.plugin.name());
        layers.plugin.config(key, value)
    }

    /// `config_complete` for every layer, plugin first (as if each filter
    /// let the layers below complete before itself, which is what nbdkit's
    /// filters do: its log names the outermost first).
    pub fn config_complete(&mut self) -> Result<()> {
        let layers = Arc::get_mut(&mut self.inner).ok_or_else(stack_in_use)?;
        for f in layers.filters.iter() {
            verbose!("{}: config_complete", f.name());
        }
        verbose!("{}: config_complete", layers.plugin.name());
        layers.plugin.config_complete()?;
        for f in layers.filters.iter_mut().rev() {
            f.config_complete()?;
        }
        Ok(())
    }

    /// The effective thread model: the minimum over the stack.
    pub fn thread_model(&self) -> ThreadModel {
        self.inner
            .filters
            .iter()
            .map(|f| f.thread_model())
            .fold(self.inner.plugin.thread_model(), core::cmp::min)
    }

    /// Whether any layer may block.
    pub fn blocks(&self) -> bool {
        self.inner.plugin.blocks() || self.inner.filters.iter().any(|f| f.blocks())
    }

    /// `get_ready` for every layer, plugin first.
    pub fn get_ready(&self) -> Result<()> {
        let tm = self.thread_model();
        debug::debug(format_args!("using thread model: {}", tm.name()));
        verbose!("{}: get_ready", self.inner.plugin.name());
        self.inner.plugin.get_ready()?;
        for f in self.inner.filters.iter().rev() {
            verbose!("{}: get_ready thread_model={}", f.name(), tm as u8);
            f.get_ready(tm)?;
        }
        Ok(())
    }

    /// `after_fork` for every layer, plugin first.
    pub fn after_fork(&self) -> Result<()> {
        verbose!("{}: after_fork", self.inner.plugin.name());
        self.inner.plugin.after_fork()?;
        for f in self.inner.filters.iter().rev() {
            verbose!("{}: after_fork", f.name());
            f.after_fork()?;
        }
        Ok(())
    }

    /// `cleanup` for every layer, filters first.
    pub fn cleanup(&self) {
        for f in self.inner.filters.iter() {
            verbose!("{}: cleanup", f.name());
            f.cleanup();
        }
        verbose!("{}: cleanup", self.inner.plugin.name());
        self.inner.plugin.cleanup();
    }

    /// Whether [`preconnect`](Self::preconnect) may block: a filter that
    /// may block, or a plugin with its own `preconnect`. Otherwise the
    /// runtime can make the call (which then only logs) without a hand-off
    /// to a blocking thread.
    pub fn preconnect_blocks(&self) -> bool {
        self.inner.filters.iter().any(|f| f.blocks())
            || (self.inner.plugin.blocks()
                && self
                    .inner
                    .plugin
                    .callbacks()
                    .contains(Callbacks::PRECONNECT))
    }

    /// `preconnect` for every layer, outermost first.
    pub fn preconnect(&self, readonly: bool, peer: &super::Peer) -> Result<()> {
        for f in self.inner.filters.iter() {
            verbose!("{}: preconnect", f.name());
            f.preconnect(readonly, peer)?;
        }
        verbose!("{}: preconnect", self.inner.plugin.name());
        self.inner.plugin.preconnect(readonly, peer)
    }

    /// The export list as the client sees it, with the default export
    /// resolved to its canonical name (at every layer, as nbdkit does).
    pub fn list_exports(&self, readonly: bool, is_tls: bool) -> Result<Exports> {
        self.list_exports_in(readonly, is_tls, &DefaultExports::default())
    }

    /// [`list_exports`](Self::list_exports) with the connection's answers
    /// to `default_export`.
    pub fn list_exports_in(
        &self,
        readonly: bool,
        is_tls: bool,
        defaults: &DefaultExports,
    ) -> Result<Exports> {
        let mut exports = Exports::default();
        self.inner
            .list_exports_from(0, readonly, is_tls, &mut exports, defaults)?;
        Ok(exports)
    }

    /// The canonical name of the default export, `None` if there is none.
    pub fn default_export(&self, readonly: bool, is_tls: bool) -> Result<Option<String>> {
        self.default_export_in(readonly, is_tls, &DefaultExports::default())
    }

    /// [`default_export`](Self::default_export), asking each layer at most
    /// once per connection.
    pub fn default_export_in(
        &self,
        readonly: bool,
        is_tls: bool,
        defaults: &DefaultExports,
    ) -> Result<Option<String>> {
        self.inner
            .default_export_from(0, readonly, is_tls, defaults)
    }

    /// Open the whole stack for a connection, as nbdkit does: open runs
    /// outermost first (each filter opens the layer below), then prepare
    /// innermost first, then the server asks the outermost layer for its
    /// capabilities (each filter asking the layer below as it needs).
    pub fn open(&self, args: &OpenArgs<'_>) -> Result<Context> {
        self.open_in(args, &Arc::new(DefaultExports::default()))
    }

    /// [`open`](Self::open) with the connection's answers to
    /// `default_export`, which replace the name `""` at each layer.
    pub fn open_in(&self, args: &OpenArgs<'_>, defaults: &Arc<DefaultExports>) -> Result<Context> {
        let ctx = open_layer(&self.inner, 0, args, defaults)?;
        ctx.prepare()?;
        ctx.force_caps()?;
        Ok(ctx)
    }
}

impl Drop for Layers {
    fn drop(&mut self) {
        control!("{}: unload plugin", self.plugin.name());
        for f in self.filters.iter().rev() {
            control!("{}: unload filter", f.name());
        }
    }
}

impl Layers {
    /// The name of the layer at `index` (0 the outermost filter).
    fn name(&self, index: usize) -> &'static str {
        match self.filters.get(index) {
            Some(f) => f.name(),
            None => self.plugin.name(),
        }
    }

    fn list_exports_from(
        &self,
        index: usize,
        readonly: bool,
        is_tls: bool,
        exports: &mut Exports,
        defaults: &DefaultExports,
    ) -> Result<()> {
        let name = self.name(index);
        control!(
            "{name}: list_exports readonly={} tls={}",
            readonly as u8,
            is_tls as u8
        );
        let r = self.list_exports_at(index, readonly, is_tls, exports, defaults);
        match &r {
            Ok(()) => control!(
                "{name}: list_exports returned {} names",
                exports.list.len() + exports.use_default as usize
            ),
            Err(_) => control!("{name}: list_exports failed"),
        }
        r?;
        // nbdkit resolves `nbdkit_use_default_export` as each layer
        // returns, so the layer above sees the name (appended last); when
        // it cannot, the default export is left out.
        if exports.use_default {
            exports.use_default = false;
            match self.default_export_from(index, readonly, is_tls, defaults) {
                Ok(Some(name)) => exports.add(&name, None)?,
                Ok(None) => {}
                Err(e) => lock(&defaults.errors).push(e),
            }
        }
        Ok(())
    }

    fn list_exports_at(
        &self,
        index: usize,
        readonly: bool,
        is_tls: bool,
        exports: &mut Exports,
        defaults: &DefaultExports,
    ) -> Result<()> {
        match self.filters.get(index) {
            Some(f) => f.list_exports(
                &ExportsBelow {
                    stack: self,
                    index: index + 1,
                    defaults,
                },
                readonly,
                is_tls,
                exports,
            )?,
            None => self.plugin.list_exports(readonly, is_tls, exports)?,
        }
        Ok(())
    }

    fn default_export_from(
        &self,
        index: usize,
        readonly: bool,
        is_tls: bool,
        defaults: &DefaultExports,
    ) -> Result<Option<String>> {
        if let Some((_, known)) = lock(&defaults.answers).iter().find(|(i, _)| *i == index) {
            return Ok(Some(known.clone()));
        }
        control!(
            "{}: default_export readonly={} tls={}",
            self.name(index),
            readonly as u8,
            is_tls as u8
        );
        let name = match self.filters.get(index) {
            Some(f) => f.default_export(
                &ExportsBelow {
                    stack: self,
                    index: index + 1,
                    defaults,
                },
                readonly,
                is_tls,
            )?,
            None => self.plugin.default_export(readonly, is_tls)?,
        };
        // nbdkit ignores names longer than the protocol allows.
        let name = name.filter(|n| n.len() <= crate::wire::consts::MAX_STRING);
        if let Some(n) = &name {
            lock(&defaults.answers).push((index, n.clone()));
        }
        Ok(name)
    }
}

/// The layer below a filter that did not open it (nbdkit lets a filter
/// skip `next_open`, as tls-fallback does for plaintext clients): it
/// reports nothing and every data call fails.
struct Unopened;

impl Handle for Unopened {
    fn get_size(&self) -> Result<u64> {
        Err(unopened())
    }
    fn pread(&self, _buf: &mut [u8], _offset: u64, _flags: Flags) -> Result<()> {
        Err(unopened())
    }
}

fn unopened() -> Error {
    Error::msg(Errno::EIO, "the layer below this filter was not opened")
}

/// Open the layer at `index` and, through its filter, those below it (not
/// yet prepared).
fn open_layer(
    stack: &Arc<Layers>,
    index: usize,
    args: &OpenArgs<'_>,
    defaults: &Arc<DefaultExports>,
) -> Result<Context> {
    let name = stack.name(index);
    control!(
        "{name}: open readonly={} exportname=\"{}\" tls={}",
        args.readonly as u8,
        args.export_name,
        args.is_tls as u8
    );
    // As nbdkit's backend_open: every layer asked for "" gets the name
    // its own default_export gives (once per connection).
    let resolved;
    let args = if args.export_name.is_empty() {
        let not_permitted = || Error::msg(Errno::ENOENT, "default export (\"\") not permitted");
        resolved = match stack.default_export_from(index, args.readonly, args.is_tls, defaults) {
            Ok(Some(name)) => name,
            Ok(None) => return Err(not_permitted()),
            Err(e) => {
                // nbdkit says why, then that "" is refused.
                lock(&defaults.errors).push(e);
                return Err(not_permitted());
            }
        };
        &OpenArgs {
            export_name: &resolved,
            ..*args
        }
    } else {
        args
    };
    let layer = match stack.filters.get(index) {
        None => {
            let callbacks = stack.plugin.callbacks();
            stack.plugin.open(args).map(|h| Layer::Plugin(h, callbacks))
        }
        Some(f) => {
            let mut opener = Opener {
                stack,
                index: index + 1,
                is_tls: args.is_tls,
                peer: args.peer,
                defaults,
                slot: None,
            };
            f.open(&mut opener, args).map(|handle| {
                let next = opener.slot.unwrap_or_else(|| {
                    Context::new(
                        Layer::Plugin(Box::new(Unopened), Callbacks::empty()),
                        stack.name(index + 1),
                        args.readonly,
                    )
                });
                Layer::Filter {
                    handle,
                    next: Arc::new(next),
                }
            })
        }
    };
    if debug::controlpath() {
        match &layer {
            Ok(Layer::Plugin(h, _)) => debug::debug(format_args!(
                "{name}: open returned handle {:p}",
                &**h as *const dyn Handle as *const ()
            )),
            Ok(Layer::Filter { handle, .. }) => debug::debug(format_args!(
                "{name}: open returned handle {:p}",
                &**handle as *const dyn FilterHandle as *const ()
            )),
            Err(_) => debug::debug(format_args!("{name}: open returned handle (nil)")),
        }
    }
    Ok(Context::new(layer?, name, args.readonly))
}
