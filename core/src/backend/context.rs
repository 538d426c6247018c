use alloc::boxed::Box;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;

use super::filter::NextExports;
use super::{
    BlockSize, Error, Exports, Extents, Filter, FilterHandle, Flags, Handle, NextOpener, OpenArgs,
    Plugin, Reopener, Result, Support, ThreadModel,
};
use crate::errno::Errno;
use crate::sync::{lock, Mutex};

/// The largest buffer the server allocates to emulate zero or cache.
const EMULATION_CHUNK: u64 = 1 << 20;

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

enum Layer {
    Plugin(Box<dyn Handle>),
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
/// handle with the context below it. Holds the layer's cached
/// capabilities and implements the server's emulations (FUA by flush, zero
/// by writing zeroes, cache by reading, extents as all data).
pub struct Context {
    layer: Layer,
    caps: Caps,
    /// `finalize` ran (nbdkit finalizes a context at most once).
    finalized: Mutex<bool>,
}

impl core::fmt::Debug for Context {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Context").field("caps", &self.caps).finish()
    }
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
    fn new(layer: Layer, readonly: bool) -> Result<Context> {
        let mut ctx = Context {
            layer,
            caps: Caps::default(),
            finalized: Mutex::new(false),
        };
        match &ctx.layer {
            Layer::Plugin(h) => h.prepare()?,
            Layer::Filter { handle, next } => {
                handle.keep_next(next);
                handle.prepare(next, readonly)?
            }
        }
        ctx.caps = ctx.query_caps(readonly)?;
        Ok(ctx)
    }

    fn query_caps(&self, readonly: bool) -> Result<Caps> {
        macro_rules! ask {
            ($m:ident) => {
                match &self.layer {
                    Layer::Plugin(h) => h.$m(),
                    Layer::Filter { handle, next } => handle.$m(next),
                }
            };
        }
        let size = ask!(get_size)?;
        if size > i64::MAX as u64 {
            return Err(Error::msg(Errno::EINVAL, "get_size: size too large"));
        }
        // The order of the questions is nbdkit's, which scripts that log
        // their calls can see.
        let can_write = !readonly && ask!(can_write)?;
        let can_zero = if can_write {
            ask!(can_zero)?
        } else {
            Support::None
        };
        let can_fast_zero = can_zero != Support::None && ask!(can_fast_zero)?;
        let can_trim = can_write && ask!(can_trim)?;
        let can_fua = if can_write {
            ask!(can_fua)?
        } else {
            Support::None
        };
        let can_flush = ask!(can_flush)?;
        let is_rotational = ask!(is_rotational)?;
        let can_multi_conn = ask!(can_multi_conn)?;
        let can_cache = ask!(can_cache)?;
        let can_extents = ask!(can_extents)?;
        let block_size = check_block_size(ask!(block_size)?)?;
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
    }

    /// The capabilities of this layer, as cached when it was opened.
    pub fn caps(&self) -> &Caps {
        &self.caps
    }

    /// Size of the export at this layer.
    pub fn get_size(&self) -> u64 {
        self.caps.size
    }

    /// The export's description at this layer. Not cached, and asked only
    /// when a client wants it (NBD_INFO_DESCRIPTION), as nbdkit does.
    pub fn export_description(&self) -> Result<Option<String>> {
        match &self.layer {
            Layer::Plugin(h) => h.export_description(),
            Layer::Filter { handle, next } => handle.export_description(next),
        }
    }

    /// Call `finalize` on this layer and every layer below (outer first),
    /// once: later calls do nothing.
    pub fn finalize(&self) -> Result<()> {
        if core::mem::replace(&mut *lock(&self.finalized), true) {
            return Ok(());
        }
        match &self.layer {
            Layer::Plugin(h) => h.finalize(),
            Layer::Filter { handle, next } => {
                handle.finalize(next)?;
                next.finalize()
            }
        }
    }

    fn raw_pwrite(&self, buf: &[u8], offset: u64, flags: Flags) -> Result<()> {
        match &self.layer {
            Layer::Plugin(h) => h.pwrite(buf, offset, flags),
            Layer::Filter { handle, next } => handle.pwrite(next, buf, offset, flags),
        }
    }

    /// Read `buf.len()` bytes at `offset`.
    pub fn pread(&self, buf: &mut [u8], offset: u64, flags: Flags) -> Result<()> {
        match &self.layer {
            Layer::Plugin(h) => h.pread(buf, offset, flags),
            Layer::Filter { handle, next } => handle.pread(next, buf, offset, flags),
        }
    }

    /// Split FUA off a call when this layer does not implement it natively:
    /// returns the flags to pass down and whether to flush afterwards.
    fn split_fua(&self, flags: Flags) -> (Flags, bool) {
        if flags.contains(Flags::FUA) && self.caps.can_fua != Support::Native {
            (flags.without(Flags::FUA), self.caps.can_flush)
        } else {
            (flags, false)
        }
    }

    /// Write `buf` at `offset`.
    pub fn pwrite(&self, buf: &[u8], offset: u64, flags: Flags) -> Result<()> {
        if !self.caps.can_write {
            return Err(Error::new(Errno::EROFS));
        }
        let (flags, flush) = self.split_fua(flags);
        self.raw_pwrite(buf, offset, flags)?;
        if flush {
            self.flush(Flags::NONE)?;
        }
        Ok(())
    }

    /// Flush.
    pub fn flush(&self, flags: Flags) -> Result<()> {
        match &self.layer {
            Layer::Plugin(h) => h.flush(flags),
            Layer::Filter { handle, next } => handle.flush(next, flags),
        }
    }

    /// Trim.
    pub fn trim(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        if !self.caps.can_write {
            return Err(Error::new(Errno::EROFS));
        }
        let (flags, flush) = self.split_fua(flags);
        match &self.layer {
            Layer::Plugin(h) => h.trim(count, offset, flags)?,
            Layer::Filter { handle, next } => handle.trim(next, count, offset, flags)?,
        }
        if flush {
            self.flush(Flags::NONE)?;
        }
        Ok(())
    }

    /// Zero, natively or by writing zeroes.
    pub fn zero(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        if !self.caps.can_write {
            return Err(Error::new(Errno::EROFS));
        }
        let fast = flags.contains(Flags::FAST_ZERO);
        let (flags, flush) = self.split_fua(flags);
        let native = if self.caps.can_zero == Support::Native {
            match &self.layer {
                Layer::Plugin(h) => h.zero(count, offset, flags),
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
            self.flush(Flags::NONE)?;
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
        if !self.caps.can_extents {
            return extents.add(offset, count, 0);
        }
        match &self.layer {
            Layer::Plugin(h) => h.extents(count, offset, flags, extents)?,
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
        match self.caps.can_cache {
            Support::None => Ok(()),
            Support::Native => match &self.layer {
                Layer::Plugin(h) => h.cache(count, offset, flags),
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
        open_layer(
            &self.stack,
            self.index,
            &OpenArgs {
                readonly,
                export_name,
                is_tls: self.is_tls,
                peer: &self.peer,
            },
            &self.defaults,
        )
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
    /// A stack of `filters` (outermost first) over `plugin`.
    pub fn new(plugin: Box<dyn Plugin>, filters: Vec<Box<dyn Filter>>) -> Self {
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
            if f.config(key, value)? {
                return Ok(());
            }
        }
        layers.plugin.config(key, value)
    }

    /// `config_complete` for every layer, plugin first.
    pub fn config_complete(&mut self) -> Result<()> {
        let layers = Arc::get_mut(&mut self.inner).ok_or_else(stack_in_use)?;
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
        self.inner.plugin.get_ready()?;
        let tm = self.thread_model();
        for f in self.inner.filters.iter().rev() {
            f.get_ready(tm)?;
        }
        Ok(())
    }

    /// `after_fork` for every layer, plugin first.
    pub fn after_fork(&self) -> Result<()> {
        self.inner.plugin.after_fork()?;
        for f in self.inner.filters.iter().rev() {
            f.after_fork()?;
        }
        Ok(())
    }

    /// `cleanup` for every layer, filters first.
    pub fn cleanup(&self) {
        for f in self.inner.filters.iter() {
            f.cleanup();
        }
        self.inner.plugin.cleanup();
    }

    /// `preconnect` for every layer, outermost first.
    pub fn preconnect(&self, readonly: bool, peer: &super::Peer) -> Result<()> {
        for f in self.inner.filters.iter() {
            f.preconnect(readonly, peer)?;
        }
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

    /// Open the whole stack for a connection: open runs outermost first
    /// (each filter opens the layer below), prepare and the capability
    /// queries innermost first.
    pub fn open(&self, args: &OpenArgs<'_>) -> Result<Context> {
        self.open_in(args, &Arc::new(DefaultExports::default()))
    }

    /// [`open`](Self::open) with the connection's answers to
    /// `default_export`, which replace the name `""` at each layer.
    pub fn open_in(&self, args: &OpenArgs<'_>, defaults: &Arc<DefaultExports>) -> Result<Context> {
        open_layer(&self.inner, 0, args, defaults)
    }
}

impl Layers {
    fn list_exports_from(
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

fn open_layer(
    stack: &Arc<Layers>,
    index: usize,
    args: &OpenArgs<'_>,
    defaults: &Arc<DefaultExports>,
) -> Result<Context> {
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
    match stack.filters.get(index) {
        None => {
            let h = stack.plugin.open(args)?;
            Context::new(Layer::Plugin(h), args.readonly)
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
            let handle = f.open(&mut opener, args)?;
            let next = match opener.slot {
                Some(next) => next,
                None => Context {
                    layer: Layer::Plugin(Box::new(Unopened)),
                    caps: Caps::default(),
                    finalized: Mutex::new(false),
                },
            };
            Context::new(
                Layer::Filter {
                    handle,
                    next: Arc::new(next),
                },
                args.readonly,
            )
        }
    }
}
