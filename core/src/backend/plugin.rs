use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;

use super::{
    BlockSize, Callbacks, Error, Exports, Extents, Flags, OpenArgs, Result, Support, ThreadModel,
};
use crate::errno::Errno;

/// A plugin: nbdkit's plugin API v2. Global callbacks live here; `open`
/// returns the per-connection [`Handle`].
///
/// Defaults follow nbdkit: a plugin that does not override a callback gets
/// what nbdkit gives a C plugin that leaves the slot empty.
pub trait Plugin: Send + Sync + 'static {
    /// The plugin's name (`memory`, `file`, ...).
    fn name(&self) -> &'static str;

    /// Its long name, if it has one.
    fn longname(&self) -> Option<&'static str> {
        None
    }

    /// Its version (nbdkit's plugins report the server's version).
    fn version(&self) -> &'static str {
        crate::NBDKIT_VERSION
    }

    /// Short description.
    fn description(&self) -> Option<&'static str> {
        None
    }

    /// The text of `nbdkit PLUGIN --help` after the plugin line: one line
    /// per parameter.
    fn config_help(&self) -> &'static str {
        ""
    }

    /// The key assumed for a bare `VALUE` on the command line.
    fn magic_config_key(&self) -> Option<&'static str> {
        None
    }

    /// The callbacks of nbdkit's plugin struct this plugin has: the
    /// `has_*` lines of `--dump-plugin`, and which of its handle's `can_*`
    /// and `is_rotational` methods the server calls (for the others it
    /// gives nbdkit's default, derived from this set: see [`Callbacks`]).
    fn callbacks(&self) -> Callbacks;

    /// Extra `key=value` lines for `--dump-plugin`.
    fn dump_plugin(&self) -> Vec<(String, String)> {
        Vec::new()
    }

    /// The debug flags the plugin documents (`-D NAME.FLAG=N`, read with
    /// [`crate::debug::value`]); others addressed to it get nbdkit's
    /// warning.
    fn debug_flags(&self) -> &'static [&'static str] {
        &[]
    }

    /// The most parallel model the plugin's code allows (`THREAD_MODEL`).
    fn max_thread_model(&self) -> ThreadModel {
        ThreadModel::Parallel
    }

    /// The model after configuration (`.thread_model`): may only lower
    /// [`max_thread_model`](Plugin::max_thread_model).
    fn thread_model(&self) -> ThreadModel {
        self.max_thread_model()
    }

    /// Whether calls may block on I/O or sleep. Plugins that only touch
    /// memory return `false`, and the runtime may then run their calls on
    /// its reactor threads instead of handing them to blocking threads.
    fn blocks(&self) -> bool {
        true
    }

    /// One `key=value` parameter. The default refuses every key, as nbdkit
    /// does for a plugin without `.config`.
    fn config(&mut self, _key: &str, _value: &str) -> Result<()> {
        Err(Error::config(alloc::format!(
            "{}: this plugin does not need command line configuration",
            self.name()
        )))
    }

    /// All parameters were given: check that the configuration is complete.
    fn config_complete(&mut self) -> Result<()> {
        Ok(())
    }

    /// Called before the server starts serving (before forking).
    fn get_ready(&self) -> Result<()> {
        Ok(())
    }

    /// Called after the server forked into the background.
    fn after_fork(&self) -> Result<()> {
        Ok(())
    }

    /// Called once before the plugin is unloaded.
    fn cleanup(&self) {}

    /// A client connected, before the handshake.
    fn preconnect(&self, _readonly: bool, _peer: &super::Peer) -> Result<()> {
        Ok(())
    }

    /// The exports this plugin serves (`NBD_OPT_LIST`). The default lists
    /// the default export.
    fn list_exports(&self, _readonly: bool, _is_tls: bool, exports: &mut Exports) -> Result<()> {
        exports.use_default = true;
        Ok(())
    }

    /// The canonical name of the default export `""`; `None` refuses it.
    fn default_export(&self, _readonly: bool, _is_tls: bool) -> Result<Option<String>> {
        Ok(Some(String::new()))
    }

    /// Open a connection's view of the export.
    fn open(&self, args: &OpenArgs<'_>) -> Result<Box<dyn Handle>>;
}

/// A plugin's per-connection handle. Calls may come from several threads at
/// once when the thread model is `Parallel`; the handle is dropped when the
/// connection closes (nbdkit's `.close`).
///
/// The server asks `can_write`, `can_flush`, `can_trim`, `can_zero`,
/// `can_fast_zero`, `can_extents`, `can_fua`, `can_multi_conn` and
/// `can_cache` only of a plugin whose [`Plugin::callbacks`] hold the
/// matching `CAN_*` flag; for the others it gives nbdkit's default for an
/// empty slot, derived from the set (`PWRITE` makes the export writable,
/// `ZERO` zeroing native, ...). Override one of those methods only with
/// its flag in the set.
pub trait Handle: Send + Sync {
    /// Called after open, before any other call.
    fn prepare(&self) -> Result<()> {
        Ok(())
    }

    /// Called before close.
    fn finalize(&self) -> Result<()> {
        Ok(())
    }

    /// Size of the export in bytes.
    fn get_size(&self) -> Result<u64>;

    /// A description of the export (`NBD_INFO_DESCRIPTION`).
    fn export_description(&self) -> Result<Option<String>> {
        Ok(None)
    }

    /// Block size constraints, if any.
    fn block_size(&self) -> Result<Option<BlockSize>> {
        Ok(None)
    }

    /// Whether writes are possible. Default: no.
    fn can_write(&self) -> Result<bool> {
        Ok(false)
    }

    /// Whether `flush` works. Default: no.
    fn can_flush(&self) -> Result<bool> {
        Ok(false)
    }

    /// Whether the medium is rotational.
    fn is_rotational(&self) -> Result<bool> {
        Ok(false)
    }

    /// Whether `trim` works. Default: no.
    fn can_trim(&self) -> Result<bool> {
        Ok(false)
    }

    /// How zeroing works. Default: emulated by writing zeroes.
    fn can_zero(&self) -> Result<Support> {
        Ok(Support::Emulate)
    }

    /// Whether FAST_ZERO is honoured. Default (nbdkit's): only when zeroing
    /// is emulated, because then it can fail fast.
    fn can_fast_zero(&self) -> Result<bool> {
        Ok(self.can_zero()? == Support::Emulate)
    }

    /// Whether `extents` reports real allocation. Default: no (everything
    /// is data).
    fn can_extents(&self) -> Result<bool> {
        Ok(false)
    }

    /// How FUA works. Default: emulated by flush when flush works.
    fn can_fua(&self) -> Result<Support> {
        Ok(if self.can_flush()? {
            Support::Emulate
        } else {
            Support::None
        })
    }

    /// Whether connections are coherent with each other.
    fn can_multi_conn(&self) -> Result<bool> {
        Ok(false)
    }

    /// How caching works. Default: not at all.
    fn can_cache(&self) -> Result<Support> {
        Ok(Support::None)
    }

    /// Read `buf.len()` bytes at `offset`.
    fn pread(&self, buf: &mut [u8], offset: u64, flags: Flags) -> Result<()>;

    /// Whether this handle lends the bytes of reads ([`Handle::pread_lent`])
    /// instead of copying them. Default: no. Asked before every read, so
    /// the answer must be cheap and must not change while the handle is
    /// open.
    fn can_lend(&self) -> bool {
        false
    }

    /// Lend the `count` bytes at `offset` (only called when
    /// [`Handle::can_lend`] says yes): the same bytes `pread` would have
    /// copied, as shared pages that later writes do not change.
    fn pread_lent(&self, count: usize, offset: u64, flags: Flags) -> Result<super::Lent> {
        let _ = (count, offset, flags);
        Err(Error::new(Errno::EINVAL))
    }

    /// Whether [`Handle::pread_now`] or [`Handle::pwrite_now`] may answer
    /// at all. Default: no. Asked before every request that might be
    /// answered at once, so the answer must be cheap; it may turn from yes
    /// to no while the handle is open (never back), and a yes is only a
    /// maybe: each call may still decline.
    fn can_now(&self) -> bool {
        false
    }

    /// Read `buf.len()` bytes at `offset` only if that cannot block (the
    /// bytes are in memory, say in the page cache): `None`, having read
    /// nothing that counts, when it would block or the handle cannot tell.
    /// The caller then reads with `pread` on a thread that may block.
    /// Blocking runtimes call this on the thread that reads the client's
    /// requests, so that a read served from memory is answered with no
    /// hand-off to another thread. Default: `None`.
    fn pread_now(&self, buf: &mut [u8], offset: u64, flags: Flags) -> Option<Result<()>> {
        let _ = (buf, offset, flags);
        None
    }

    /// Write `buf` at `offset` only if that cannot block (the file lives
    /// in memory, say), as [`Handle::pread_now`] reads: `None`, having
    /// written nothing, otherwise. Default: `None`.
    fn pwrite_now(&self, buf: &[u8], offset: u64, flags: Flags) -> Option<Result<()>> {
        let _ = (buf, offset, flags);
        None
    }

    /// A file descriptor whose bytes at every offset are the bytes
    /// [`Handle::pread`] returns there, with no side effect of a read to
    /// keep (a plain file's), so that the runtime can send a READ's data
    /// from it with `sendfile(2)` instead of reading it into memory.
    /// Default: none. Asked before every read: cheap, and the same answer
    /// for as long as the handle is open (the descriptor stays open that
    /// long).
    fn read_fd(&self) -> Option<i32> {
        None
    }

    /// A file descriptor where bytes written at an offset with `pwrite(2)`
    /// are what [`Handle::pwrite`] would write there, with nothing else of
    /// a write to do (a plain file's, without FUA), so that the runtime can
    /// move a large WRITE's payload from the socket into it with
    /// `splice(2)` instead of reading it into memory first. Default: none.
    /// Asked before every large write: cheap, and the same answer for as
    /// long as the handle is open (the descriptor stays open that long).
    fn write_fd(&self) -> Option<i32> {
        None
    }

    /// Write `buf` at `offset`.
    fn pwrite(&self, _buf: &[u8], _offset: u64, _flags: Flags) -> Result<()> {
        Err(Error::new(Errno::EROFS))
    }

    /// Whether this handle may take writes received in place
    /// ([`Handle::receive_write`]). Default: no. Asked before every write,
    /// so the answer must be cheap and must not change while the handle is
    /// open.
    fn can_receive(&self) -> bool {
        false
    }

    /// The buffers to read the payload of a write of `count` bytes at
    /// `offset` into (only called when [`Handle::can_receive`] says yes);
    /// `None`: not for this write, the runtime reads the payload itself
    /// and calls [`Handle::pwrite`]. Called by the runtime's connection
    /// task before the payload is read, outside the thread model's locks:
    /// it must only prepare buffers, never block nor change the disk. The
    /// write happens in [`super::Receive::commit`], called like `pwrite`.
    fn receive_write(
        &self,
        count: usize,
        offset: u64,
    ) -> Option<alloc::boxed::Box<dyn super::Receive>> {
        let _ = (count, offset);
        None
    }

    /// Make every write durable.
    fn flush(&self, _flags: Flags) -> Result<()> {
        Err(Error::new(Errno::EINVAL))
    }

    /// Discard a range.
    fn trim(&self, _count: u64, _offset: u64, _flags: Flags) -> Result<()> {
        Err(Error::new(Errno::EINVAL))
    }

    /// Zero a range natively; `ENOTSUP` makes the server fall back to
    /// writing zeroes (unless FAST_ZERO was asked for).
    fn zero(&self, _count: u64, _offset: u64, _flags: Flags) -> Result<()> {
        Err(Error::new(Errno::ENOTSUP))
    }

    /// Report allocation for `count` bytes at `offset`.
    fn extents(&self, count: u64, offset: u64, _flags: Flags, extents: &mut Extents) -> Result<()> {
        extents.add(offset, count, 0)
    }

    /// Prefetch a range.
    fn cache(&self, _count: u64, _offset: u64, _flags: Flags) -> Result<()> {
        Ok(())
    }
}
