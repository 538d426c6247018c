use alloc::boxed::Box;
use alloc::string::String;
use alloc::sync::Arc;

use super::{BlockSize, Context, Exports, Extents, Flags, OpenArgs, Result, Support, ThreadModel};

/// Opens the layer below a filter (nbdkit's `next_open`). A filter's `open`
/// calls it exactly once, possibly with a different export name or with
/// `readonly` forced on.
pub trait NextOpener {
    /// Open the next layer.
    fn open(&mut self, readonly: bool, export_name: &str) -> Result<()>;

    /// A way to open the layer below again later in the connection, for
    /// filters that close and reopen it after a failure (nbdkit's retry
    /// filter, `nbdkit_next_context_open`). `None` where it is not possible.
    fn reopener(&self) -> Option<Box<dyn Reopener>> {
        None
    }

    /// Use `next`, a context of the layer below opened through a
    /// [`Reopener`], as the next layer in place of the one `open` makes
    /// (nbdkit_context_set_next during a C filter's `.open`). Returns the
    /// context it replaces, if one was open.
    fn set_next(&mut self, next: Context) -> Result<Option<Context>> {
        drop(next);
        Err(crate::backend::Error::msg(
            crate::errno::Errno::ENOTSUP,
            "the next layer cannot be replaced here",
        ))
    }
}

/// Opens a fresh context of the layer below a filter, at any time during a
/// connection. The filter owns the context it gets and uses it in place of
/// the `next` it is given; dropping it closes it.
pub trait Reopener: Send + Sync {
    /// Open (and prepare) the layer below again.
    fn open(&self, readonly: bool, export_name: &str) -> Result<Context>;
}

/// The global calls of the layer below a filter, for `list_exports` and
/// `default_export`.
pub trait NextExports {
    /// The next layer's export list.
    fn list_exports(&self, readonly: bool, is_tls: bool, exports: &mut Exports) -> Result<()>;
    /// The next layer's default export name.
    fn default_export(&self, readonly: bool, is_tls: bool) -> Result<Option<String>>;
}

/// A filter: nbdkit's filter API. Every callback has a default that passes
/// the call to the layer below unchanged.
pub trait Filter: Send + Sync + 'static {
    /// The filter's name (`offset`, `cow`, ...).
    fn name(&self) -> &'static str;

    /// Its long name, if any.
    fn longname(&self) -> Option<&'static str> {
        None
    }

    /// Its version.
    fn version(&self) -> &'static str {
        crate::NBDKIT_VERSION
    }

    /// Text of `--help` for its parameters.
    fn config_help(&self) -> &'static str {
        ""
    }

    /// One parameter: `Ok(true)` if the filter took it, `Ok(false)` to pass
    /// it to the next layer.
    fn config(&mut self, _key: &str, _value: &str) -> Result<bool> {
        Ok(false)
    }

    /// All parameters were given.
    fn config_complete(&mut self) -> Result<()> {
        Ok(())
    }

    /// The debug flags the filter documents (`-D NAME.FLAG=N`, read with
    /// [`crate::debug::value`]); others addressed to it get nbdkit's
    /// warning.
    fn debug_flags(&self) -> &'static [&'static str] {
        &[]
    }

    /// The most parallel model this filter allows.
    fn thread_model(&self) -> ThreadModel {
        ThreadModel::Parallel
    }

    /// Whether the filter's own work may block or sleep (see
    /// [`Plugin::blocks`](super::Plugin::blocks)).
    fn blocks(&self) -> bool {
        true
    }

    /// Called before serving starts.
    fn get_ready(&self, _thread_model: ThreadModel) -> Result<()> {
        Ok(())
    }

    /// Called after forking.
    fn after_fork(&self) -> Result<()> {
        Ok(())
    }

    /// Called before unload.
    fn cleanup(&self) {}

    /// A client connected.
    fn preconnect(&self, _readonly: bool, _peer: &super::Peer) -> Result<()> {
        Ok(())
    }

    /// The export list.
    fn list_exports(
        &self,
        next: &dyn NextExports,
        readonly: bool,
        is_tls: bool,
        exports: &mut Exports,
    ) -> Result<()> {
        next.list_exports(readonly, is_tls, exports)
    }

    /// The default export's canonical name.
    fn default_export(
        &self,
        next: &dyn NextExports,
        readonly: bool,
        is_tls: bool,
    ) -> Result<Option<String>> {
        next.default_export(readonly, is_tls)
    }

    /// Open a connection: call `next.open` and return this filter's handle.
    fn open(
        &self,
        next: &mut dyn NextOpener,
        args: &OpenArgs<'_>,
    ) -> Result<Box<dyn FilterHandle>> {
        next.open(args.readonly, args.export_name)?;
        Ok(Box::new(PassThrough))
    }
}

/// A handle that changes nothing.
#[derive(Debug)]
pub struct PassThrough;

impl FilterHandle for PassThrough {}

/// A filter's per-connection handle. `next` is the layer below; its
/// capabilities are asked for (and cached) the first time they are needed,
/// as nbdkit does.
#[allow(unused_variables)]
pub trait FilterHandle: Send + Sync {
    /// Before `prepare`: the layer below, for a handle that calls it
    /// outside its own calls (from a thread of its own, or for another
    /// connection), as nbdkit's filters may keep `next`. A handle that
    /// keeps it must let go of it when it is finalized (and at the latest
    /// when it is dropped), so that the layer below is closed after it.
    fn keep_next(&self, next: &Arc<Context>) {}
    /// After the layer below was prepared.
    fn prepare(&self, next: &Context, readonly: bool) -> Result<()> {
        Ok(())
    }
    /// Before the layer below is finalized.
    fn finalize(&self, next: &Context) -> Result<()> {
        Ok(())
    }
    /// Size of the export.
    fn get_size(&self, next: &Context) -> Result<u64> {
        next.size()
    }
    /// Description.
    fn export_description(&self, next: &Context) -> Result<Option<String>> {
        next.export_description()
    }
    /// Block size constraints.
    fn block_size(&self, next: &Context) -> Result<Option<BlockSize>> {
        next.block_size()
    }
    /// Writable?
    fn can_write(&self, next: &Context) -> Result<bool> {
        next.can_write()
    }
    /// Flush?
    fn can_flush(&self, next: &Context) -> Result<bool> {
        next.can_flush()
    }
    /// Rotational?
    fn is_rotational(&self, next: &Context) -> Result<bool> {
        next.is_rotational()
    }
    /// Trim?
    fn can_trim(&self, next: &Context) -> Result<bool> {
        next.can_trim()
    }
    /// Zero?
    fn can_zero(&self, next: &Context) -> Result<Support> {
        Ok(if next.can_zero()? == Support::None {
            Support::None
        } else {
            Support::Native
        })
    }
    /// Fast zero?
    fn can_fast_zero(&self, next: &Context) -> Result<bool> {
        next.can_fast_zero()
    }
    /// Extents?
    fn can_extents(&self, next: &Context) -> Result<bool> {
        next.can_extents()
    }
    /// FUA?
    fn can_fua(&self, next: &Context) -> Result<Support> {
        Ok(if next.can_fua()? == Support::None {
            Support::None
        } else {
            Support::Native
        })
    }
    /// Multi-conn?
    fn can_multi_conn(&self, next: &Context) -> Result<bool> {
        next.can_multi_conn()
    }
    /// Cache?
    fn can_cache(&self, next: &Context) -> Result<Support> {
        Ok(if next.can_cache()? == Support::None {
            Support::None
        } else {
            Support::Native
        })
    }
    /// Read.
    fn pread(&self, next: &Context, buf: &mut [u8], offset: u64, flags: Flags) -> Result<()> {
        next.pread(buf, offset, flags)
    }
    /// Write.
    fn pwrite(&self, next: &Context, buf: &[u8], offset: u64, flags: Flags) -> Result<()> {
        next.pwrite(buf, offset, flags)
    }
    /// Flush.
    fn flush(&self, next: &Context, flags: Flags) -> Result<()> {
        next.flush(flags)
    }
    /// Trim.
    fn trim(&self, next: &Context, count: u64, offset: u64, flags: Flags) -> Result<()> {
        next.trim(count, offset, flags)
    }
    /// Zero.
    fn zero(&self, next: &Context, count: u64, offset: u64, flags: Flags) -> Result<()> {
        next.zero(count, offset, flags)
    }
    /// Extents.
    fn extents(
        &self,
        next: &Context,
        count: u64,
        offset: u64,
        flags: Flags,
        extents: &mut Extents,
    ) -> Result<()> {
        next.extents(count, offset, flags, extents)
    }
    /// Cache.
    fn cache(&self, next: &Context, count: u64, offset: u64, flags: Flags) -> Result<()> {
        next.cache(count, offset, flags)
    }
}
