//! A compiled nbdkit plugin (`struct nbdkit_plugin`, API 1 or 2) as a
//! [`Plugin`] of the core's stack.

use std::ffi::{c_int, c_void};
use std::path::Path;
use std::sync::{Arc, Mutex};

use nbdkit_core::backend::{
    BlockSize, Callbacks, Error, Exports, Extents, Flags, Handle, OpenArgs, Peer, Plugin, Result,
    Support, ThreadModel,
};
use nbdkit_core::errno::Errno;

use super::{call, copy_str, ffi, leak, ConnInfo, LoadError, Scope};

/// What is known about a loaded plugin; shared by its handles.
pub(crate) struct Shared {
    p: ffi::Plugin,
    name: &'static str,
    path: String,
    api_version: c_int,
    struct_size: u64,
    callbacks: Callbacks,
}

// SAFETY: `ffi::Plugin` holds function pointers and pointers to static
// strings of a library that is never unloaded; they are only read.
unsafe impl Send for Shared {}
// SAFETY: as above; nothing in it is mutated after loading.
unsafe impl Sync for Shared {}

/// The loaded plugin of this process, for `--dump-plugin`.
static LOADED: Mutex<Option<Arc<Shared>>> = Mutex::new(None);

/// A plugin loaded from a shared object.
pub(crate) struct CPlugin {
    s: Arc<Shared>,
    /// Whether dropping this value unloads the plugin (false for the
    /// temporary view `--dump-plugin` makes).
    owner: bool,
}

fn thread_model_of(n: c_int) -> Option<ThreadModel> {
    Some(match n {
        0 => ThreadModel::SerializeConnections,
        1 => ThreadModel::SerializeAllRequests,
        2 => ThreadModel::SerializeRequests,
        3 => ThreadModel::Parallel,
        _ => return None,
    })
}

/// nbdkit's rule for names: `[A-Za-z0-9][A-Za-z0-9-]*`.
pub(crate) fn valid_name(n: &str) -> bool {
    let mut c = n.chars();
    matches!(c.next(), Some(f) if f.is_ascii_alphanumeric())
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '-')
}

/// Where a plugin object comes from, which decides how its problems are
/// reported and which API versions are accepted.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// Named on the command line (or found in the plugin directory):
    /// messages name the file; API 1 and 2.
    Named,
    /// Compiled by the `cc` plugin into a temporary file: messages as the
    /// cc plugin words them (the file is of no interest); API 2 only.
    Compiled,
}

fn bad(path: &Path, origin: Origin, what: &str) -> LoadError {
    LoadError {
        message: match origin {
            Origin::Named => format!("{}: {what}", path.display()),
            Origin::Compiled => what.to_string(),
        },
        usage_hint: false,
    }
}

impl CPlugin {
    pub(crate) fn load(
        lib: &'static libloading::os::unix::Library,
        path: &Path,
        origin: Origin,
    ) -> core::result::Result<CPlugin, LoadError> {
        let bad = |what: &str| bad(path, origin, what);
        let compiled = origin == Origin::Compiled;
        type Init = unsafe extern "C" fn() -> *const ffi::Plugin;
        // SAFETY: `plugin_init` is, by the ABI, `struct nbdkit_plugin
        // *plugin_init (void)`.
        let init: Init = match unsafe { lib.get::<Init>(b"plugin_init\0") } {
            Ok(f) => *f,
            Err(e) if compiled => return Err(bad(&format!("no plugin_init symbol found: {e}"))),
            Err(e) => return Err(bad(&e.to_string())),
        };
        // SAFETY: calling the registration function with no arguments, as
        // the ABI defines it.
        let raw = unsafe { init() };
        if raw.is_null() {
            return Err(bad(if compiled {
                "plugin registration failed"
            } else {
                "plugin registration function failed"
            }));
        }
        // SAFETY: a non-NULL result points to a struct nbdkit_plugin whose
        // first two fields are `_struct_size` and `_api_version`; they are
        // read before anything else.
        let (struct_size, api_version, thread_model) = unsafe {
            (
                (*raw)._struct_size,
                (*raw)._api_version,
                (*raw)._thread_model,
            )
        };
        if compiled && api_version != 2 {
            return Err(bad(
                "plugin uses the wrong NBDKIT_API_VERSION, it must be 2",
            ));
        }
        if !(0..=2).contains(&api_version) {
            return Err(bad(&format!(
                "plugin is incompatible with this version of nbdkit (_api_version = {api_version})"
            )));
        }
        // Copy what the plugin has, zero the fields it was built without.
        // SAFETY: ffi::Plugin is plain data for which all-zero bytes are
        // valid (NULL pointers and `None` callbacks).
        let mut p: ffi::Plugin = unsafe { core::mem::zeroed() };
        let n = (struct_size as usize).min(core::mem::size_of::<ffi::Plugin>());
        // SAFETY: the plugin's struct is `_struct_size` bytes long, and we
        // copy no more than that and no more than our own struct.
        unsafe { core::ptr::copy_nonoverlapping(raw as *const u8, &mut p as *mut _ as *mut u8, n) };
        if p.open.is_none() {
            return Err(bad("plugin must have a .open callback"));
        }
        if p.get_size.is_none() {
            return Err(bad("plugin must have a .get_size callback"));
        }
        let has_pread = if api_version == 2 {
            p.pread.is_some()
        } else {
            p.pread_v1.is_some()
        };
        if !has_pread {
            return Err(bad("plugin must have a .pread callback"));
        }
        // SAFETY: `name` is NULL or a static string of the plugin.
        let name = match unsafe { copy_str(p.name) } {
            Some(n) => n,
            // The cc plugin never looks at its subplugin's name.
            None if compiled => "cc".to_string(),
            None => return Err(bad("plugin must have a .name field")),
        };
        if !valid_name(&name) {
            return Err(bad(
                &format!(
                    "plugin.name ('{name}') field must contain only ASCII alphanumeric or dash characters"
                ),
            ));
        }
        if thread_model_of(thread_model).is_none() {
            return Err(bad(&format!(
                "plugin has an invalid thread model ({thread_model})"
            )));
        }
        let name = leak(name);
        let callbacks = callbacks_of(&p, api_version);
        let s = Arc::new(Shared {
            p,
            name,
            path: path.display().to_string(),
            api_version,
            struct_size,
            callbacks,
        });
        if let Some(load) = s.p.load {
            // SAFETY: `.load` takes no arguments and runs once, first.
            unsafe { load() };
        }
        *LOADED.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::clone(&s));
        Ok(CPlugin { s, owner: true })
    }
}

fn callbacks_of(p: &ffi::Plugin, api: c_int) -> Callbacks {
    let v2 = api == 2;
    let slots = [
        (Callbacks::LONGNAME, !p.longname.is_null()),
        (Callbacks::VERSION, !p.version.is_null()),
        (Callbacks::DESCRIPTION, !p.description.is_null()),
        (Callbacks::LOAD, p.load.is_some()),
        (Callbacks::UNLOAD, p.unload.is_some()),
        (Callbacks::DUMP_PLUGIN, p.dump_plugin.is_some()),
        (Callbacks::CONFIG, p.config.is_some()),
        (Callbacks::CONFIG_COMPLETE, p.config_complete.is_some()),
        (Callbacks::CONFIG_HELP, !p.config_help.is_null()),
        (Callbacks::THREAD_MODEL, p.thread_model.is_some()),
        (Callbacks::GET_READY, p.get_ready.is_some()),
        (Callbacks::AFTER_FORK, p.after_fork.is_some()),
        (Callbacks::CLEANUP, p.cleanup.is_some()),
        (Callbacks::PRECONNECT, p.preconnect.is_some()),
        (Callbacks::LIST_EXPORTS, p.list_exports.is_some()),
        (Callbacks::DEFAULT_EXPORT, p.default_export.is_some()),
        (Callbacks::OPEN, p.open.is_some()),
        (Callbacks::CLOSE, p.close.is_some()),
        (
            Callbacks::EXPORT_DESCRIPTION,
            p.export_description.is_some(),
        ),
        (Callbacks::GET_SIZE, p.get_size.is_some()),
        (Callbacks::BLOCK_SIZE, p.block_size.is_some()),
        (Callbacks::CAN_WRITE, p.can_write.is_some()),
        (Callbacks::CAN_FLUSH, p.can_flush.is_some()),
        (Callbacks::IS_ROTATIONAL, p.is_rotational.is_some()),
        (Callbacks::CAN_TRIM, p.can_trim.is_some()),
        (Callbacks::CAN_ZERO, p.can_zero.is_some()),
        (Callbacks::CAN_FAST_ZERO, p.can_fast_zero.is_some()),
        (Callbacks::CAN_EXTENTS, p.can_extents.is_some()),
        (Callbacks::CAN_FUA, p.can_fua.is_some()),
        (Callbacks::CAN_MULTI_CONN, p.can_multi_conn.is_some()),
        (Callbacks::CAN_CACHE, p.can_cache.is_some()),
        (Callbacks::PREAD, v2 && p.pread.is_some()),
        (Callbacks::PWRITE, v2 && p.pwrite.is_some()),
        (Callbacks::FLUSH, v2 && p.flush.is_some()),
        (Callbacks::TRIM, v2 && p.trim.is_some()),
        (Callbacks::ZERO, v2 && p.zero.is_some()),
        (Callbacks::EXTENTS, p.extents.is_some()),
        (Callbacks::CACHE, p.cache.is_some()),
        (Callbacks::PREAD_V1, !v2 && p.pread_v1.is_some()),
        (Callbacks::PWRITE_V1, !v2 && p.pwrite_v1.is_some()),
        (Callbacks::FLUSH_V1, !v2 && p.flush_v1.is_some()),
        (Callbacks::TRIM_V1, !v2 && p.trim_v1.is_some()),
        (Callbacks::ZERO_V1, p.zero_v1.is_some()),
    ];
    slots
        .iter()
        .filter(|(_, has)| *has)
        .fold(Callbacks::empty(), |set, (c, _)| set | *c)
}

/// Print `--dump-plugin` for the loaded C plugin, as nbdkit does; `false`
/// when the plugin is not a loaded one.
pub fn dump_plugin(plugin: &dyn Plugin) -> bool {
    let Some(s) = LOADED.lock().unwrap_or_else(|e| e.into_inner()).clone() else {
        return false;
    };
    if s.name != plugin.name() {
        return false;
    }
    let p = &s.p;
    let abs =
        std::fs::canonicalize(&s.path).map_or_else(|_| s.path.clone(), |p| p.display().to_string());
    println!("path={abs}");
    println!("name={}", s.name);
    // SAFETY: `version` is NULL or a static string of the plugin.
    if let Some(v) = unsafe { copy_str(p.version) } {
        println!("version={v}");
    }
    println!("api_version={}", s.api_version);
    println!("struct_size={}", s.struct_size);
    let cp = CPlugin {
        s: Arc::clone(&s),
        owner: false,
    };
    println!("max_thread_model={}", cp.max_thread_model().name());
    println!("thread_model={}", cp.thread_model().name());
    println!("errno_is_preserved={}", p.errno_is_preserved);
    if let Some(k) = cp.magic_config_key() {
        println!("magic_config_key={k}");
    }
    for n in s.callbacks.difference(Callbacks::VERSION).names() {
        println!("has_{n}=1");
    }
    if s.api_version < 2 {
        let v1 = [
            ("pread", p.pread_v1.is_some()),
            ("pwrite", p.pwrite_v1.is_some()),
            ("flush", p.flush_v1.is_some()),
            ("trim", p.trim_v1.is_some()),
            ("zero", p.zero_v1.is_some()),
        ];
        for (n, has) in v1 {
            if has {
                println!("has__{n}_v1=1");
            }
        }
    }
    if let Some(d) = p.dump_plugin {
        use std::io::Write;
        let _ = std::io::stdout().flush();
        let _ = call(
            s.name,
            Scope::Global,
            false,
            || {
                // SAFETY: `.dump_plugin` takes no arguments.
                unsafe { d() }
            },
            |_| false,
        );
        // SAFETY: fflush(NULL) flushes every C stdio stream, so that what
        // the plugin printed comes out before anything after it.
        unsafe { libc::fflush(core::ptr::null_mut()) };
    }
    true
}

fn b(r: c_int) -> bool {
    r != 0
}

impl CPlugin {
    fn global<T>(&self, f: impl FnOnce() -> T, failed: impl FnOnce(&T) -> bool) -> Result<T> {
        call(
            self.s.name,
            Scope::Global,
            self.s.p.errno_is_preserved != 0,
            f,
            failed,
        )
    }

    fn global_int(&self, f: impl FnOnce() -> c_int, what: &str) -> Result<()> {
        self.global(f, |r| *r == -1).map(|_| ()).map_err(|mut e| {
            if e.message.is_none() {
                e.message = Some(format!("{}: {what} failed", self.s.name));
            }
            e
        })
    }
}

impl Drop for CPlugin {
    fn drop(&mut self) {
        if !self.owner {
            return;
        }
        if let Some(u) = self.s.p.unload {
            // SAFETY: `.unload` takes no arguments and runs once, last.
            unsafe { u() };
        }
        LOADED.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

impl Plugin for CPlugin {
    fn name(&self) -> &'static str {
        self.s.name
    }

    fn longname(&self) -> Option<&'static str> {
        // SAFETY: NULL or a static string of the plugin.
        unsafe { copy_str(self.s.p.longname) }.map(leak)
    }

    fn version(&self) -> &'static str {
        // SAFETY: NULL or a static string of the plugin.
        unsafe { copy_str(self.s.p.version) }
            .map(leak)
            .unwrap_or("")
    }

    fn description(&self) -> Option<&'static str> {
        // SAFETY: NULL or a static string of the plugin.
        unsafe { copy_str(self.s.p.description) }.map(leak)
    }

    fn config_help(&self) -> &'static str {
        // SAFETY: NULL or a static string of the plugin.
        unsafe { copy_str(self.s.p.config_help) }
            .map(|h| leak(h.trim_end_matches('\n').to_string()))
            .unwrap_or("")
    }

    fn magic_config_key(&self) -> Option<&'static str> {
        // SAFETY: NULL or a static string of the plugin.
        unsafe { copy_str(self.s.p.magic_config_key) }.map(leak)
    }

    fn callbacks(&self) -> Callbacks {
        self.s.callbacks
    }

    fn max_thread_model(&self) -> ThreadModel {
        thread_model_of(self.s.p._thread_model).unwrap_or(ThreadModel::SerializeConnections)
    }

    fn thread_model(&self) -> ThreadModel {
        let max = self.max_thread_model();
        let Some(tm) = self.s.p.thread_model else {
            return max;
        };
        // SAFETY: `.thread_model` takes no arguments.
        match self.global(|| unsafe { tm() }, |r| *r == -1) {
            Ok(r) => thread_model_of(r).map_or(max, |t| t.min(max)),
            Err(e) => {
                crate::log::error(None, &e.to_string());
                ThreadModel::SerializeConnections
            }
        }
    }

    fn config(&mut self, key: &str, value: &str) -> Result<()> {
        let Some(cfg) = self.s.p.config else {
            return Err(Error::config(format!(
                "{}: this plugin does not need command line configuration\n\
                 Try using: nbdkit --help {}",
                self.s.path, self.s.path
            )));
        };
        let (k, v) = (super::config_arg(key), super::config_arg(value));
        // SAFETY: two NUL-terminated strings that live as long as the
        // process.
        self.global_int(|| unsafe { cfg(k, v) }, "config")
    }

    fn config_complete(&mut self) -> Result<()> {
        match self.s.p.config_complete {
            // SAFETY: no arguments.
            Some(f) => self.global_int(|| unsafe { f() }, "config_complete"),
            None => Ok(()),
        }
    }

    fn get_ready(&self) -> Result<()> {
        match self.s.p.get_ready {
            // SAFETY: no arguments.
            Some(f) => self.global_int(|| unsafe { f() }, "get_ready"),
            None => Ok(()),
        }
    }

    fn after_fork(&self) -> Result<()> {
        match self.s.p.after_fork {
            // SAFETY: no arguments.
            Some(f) => self.global_int(|| unsafe { f() }, "after_fork"),
            None => Ok(()),
        }
    }

    fn cleanup(&self) {
        if let Some(f) = self.s.p.cleanup {
            // SAFETY: no arguments.
            let _ = self.global(|| unsafe { f() }, |_| false);
        }
    }

    fn preconnect(&self, readonly: bool, peer: &Peer) -> Result<()> {
        let Some(f) = self.s.p.preconnect else {
            return Ok(());
        };
        let conn = ConnInfo::new(None, false, peer.clone());
        call(
            self.s.name,
            Scope::Conn(&conn),
            self.s.p.errno_is_preserved != 0,
            // SAFETY: one int argument.
            || unsafe { f(c_int::from(readonly)) },
            |r| *r == -1,
        )
        .map(|_| ())
    }

    fn list_exports(&self, readonly: bool, is_tls: bool, exports: &mut Exports) -> Result<()> {
        let Some(f) = self.s.p.list_exports else {
            exports.use_default = true;
            return Ok(());
        };
        let conn = ConnInfo::new(None, is_tls, Peer::Unknown);
        let e: *mut Exports = exports;
        call(
            self.s.name,
            Scope::Conn(&conn),
            self.s.p.errno_is_preserved != 0,
            // SAFETY: `e` is a live, exclusive export list for the call;
            // the plugin only passes it to nbdkit_add_export & co.
            || unsafe { f(c_int::from(readonly), c_int::from(is_tls), e) },
            |r| *r == -1,
        )
        .map(|_| ())
    }

    fn default_export(&self, readonly: bool, is_tls: bool) -> Result<Option<String>> {
        let Some(f) = self.s.p.default_export else {
            return Ok(Some(String::new()));
        };
        let conn = ConnInfo::new(None, is_tls, Peer::Unknown);
        call(
            self.s.name,
            Scope::Conn(&conn),
            self.s.p.errno_is_preserved != 0,
            || {
                // SAFETY: two int arguments; the result is NULL or a string
                // valid at least until the connection's interned strings
                // are freed, copied here before that.
                let r = unsafe { f(c_int::from(readonly), c_int::from(is_tls)) };
                // SAFETY: as above.
                unsafe { copy_str(r) }
            },
            |_| false,
        )
    }

    fn open(&self, args: &OpenArgs<'_>) -> Result<Box<dyn Handle>> {
        let Some(open) = self.s.p.open else {
            return Err(Error::new(Errno::EIO));
        };
        let conn = ConnInfo::new(Some(args.export_name), args.is_tls, args.peer.clone());
        let readonly = c_int::from(args.readonly);
        let h = call(
            self.s.name,
            Scope::Conn(&conn),
            self.s.p.errno_is_preserved != 0,
            // SAFETY: one int argument; the result is the plugin's handle.
            || unsafe { open(readonly) },
            |h| h.is_null(),
        )?;
        Ok(Box::new(CHandle {
            s: Arc::clone(&self.s),
            h: HandlePtr(h),
            conn,
        }))
    }
}

/// A plugin's per-connection handle pointer.
struct HandlePtr(*mut c_void);

// SAFETY: the pointer is only handed back to the plugin's own callbacks,
// and the runtime runs those concurrently only as far as the plugin's
// declared thread model allows, as nbdkit does.
unsafe impl Send for HandlePtr {}
// SAFETY: as above.
unsafe impl Sync for HandlePtr {}

struct CHandle {
    s: Arc<Shared>,
    h: HandlePtr,
    conn: Arc<ConnInfo>,
}

impl Drop for CHandle {
    fn drop(&mut self) {
        if let Some(close) = self.s.p.close {
            let h = self.h.0;
            // SAFETY: the handle came from `.open` and is closed once.
            let _ = self.call(|| unsafe { close(h) }, |_| false);
        }
    }
}

/// A count for a C data callback, which takes a 32-bit count.
pub(super) fn count32(n: u64) -> Result<u32> {
    u32::try_from(n).map_err(|_| Error::msg(Errno::EINVAL, "request too large for a C plugin"))
}

impl CHandle {
    fn call<T>(&self, f: impl FnOnce() -> T, failed: impl FnOnce(&T) -> bool) -> Result<T> {
        call(
            self.s.name,
            Scope::Conn(&self.conn),
            self.s.p.errno_is_preserved != 0,
            f,
            failed,
        )
    }

    fn int(&self, f: impl FnOnce() -> c_int) -> Result<c_int> {
        self.call(f, |r| *r == -1)
    }

    fn ask(
        &self,
        cb: Option<unsafe extern "C" fn(*mut c_void) -> c_int>,
        default: impl FnOnce() -> Result<c_int>,
    ) -> Result<c_int> {
        let h = self.h.0;
        match cb {
            // SAFETY: the plugin's own handle.
            Some(f) => self.int(|| unsafe { f(h) }),
            None => default(),
        }
    }

    fn v2(&self) -> bool {
        self.s.api_version == 2
    }
}

impl Handle for CHandle {
    fn get_size(&self) -> Result<u64> {
        let Some(f) = self.s.p.get_size else {
            return Err(Error::new(Errno::EIO));
        };
        let h = self.h.0;
        // SAFETY: the plugin's own handle.
        let r = self.call(|| unsafe { f(h) }, |r| *r < 0)?;
        Ok(r as u64)
    }

    fn export_description(&self) -> Result<Option<String>> {
        let Some(f) = self.s.p.export_description else {
            return Ok(None);
        };
        let h = self.h.0;
        self.call(
            || {
                // SAFETY: the plugin's own handle; the result is NULL or a
                // string valid for the connection, copied at once.
                unsafe { copy_str(f(h)) }
            },
            |_| false,
        )
    }

    fn block_size(&self) -> Result<Option<BlockSize>> {
        let Some(f) = self.s.p.block_size else {
            return Ok(None);
        };
        let h = self.h.0;
        let (mut min, mut pref, mut max) = (0u32, 0u32, 0u32);
        // SAFETY: three pointers to live u32s for the call.
        self.int(|| unsafe { f(h, &mut min, &mut pref, &mut max) })?;
        Ok(Some(BlockSize {
            minimum: min,
            preferred: pref,
            maximum: max,
        }))
    }

    fn can_write(&self) -> Result<bool> {
        let has = if self.v2() {
            self.s.p.pwrite.is_some()
        } else {
            self.s.p.pwrite_v1.is_some()
        };
        self.ask(self.s.p.can_write, || Ok(c_int::from(has))).map(b)
    }

    fn can_flush(&self) -> Result<bool> {
        let has = if self.v2() {
            self.s.p.flush.is_some()
        } else {
            self.s.p.flush_v1.is_some()
        };
        self.ask(self.s.p.can_flush, || Ok(c_int::from(has))).map(b)
    }

    fn is_rotational(&self) -> Result<bool> {
        self.ask(self.s.p.is_rotational, || Ok(0)).map(b)
    }

    fn can_trim(&self) -> Result<bool> {
        let has = if self.v2() {
            self.s.p.trim.is_some()
        } else {
            self.s.p.trim_v1.is_some()
        };
        self.ask(self.s.p.can_trim, || Ok(c_int::from(has))).map(b)
    }

    fn can_zero(&self) -> Result<Support> {
        // The plugin's .can_zero only says whether to call .zero; without
        // it the server writes zeroes.
        let has = self.s.p.zero.is_some() || self.s.p.zero_v1.is_some();
        let r = self.ask(self.s.p.can_zero, || Ok(c_int::from(has)))?;
        Ok(if r != 0 {
            Support::Native
        } else {
            Support::Emulate
        })
    }

    fn can_fast_zero(&self) -> Result<bool> {
        if let Some(f) = self.s.p.can_fast_zero {
            let h = self.h.0;
            // SAFETY: the plugin's own handle.
            return self.int(|| unsafe { f(h) }).map(b);
        }
        // Without a flags-taking .zero, or when zeroing is emulated, a
        // fast zero can always fail fast.
        if !(self.v2() && self.s.p.zero.is_some()) {
            return Ok(true);
        }
        Ok(self.can_zero()? == Support::Emulate)
    }

    fn can_extents(&self) -> Result<bool> {
        let has = self.s.p.extents.is_some();
        self.ask(self.s.p.can_extents, || Ok(c_int::from(has)))
            .map(b)
    }

    fn can_fua(&self) -> Result<Support> {
        if let Some(f) = self.s.p.can_fua {
            let h = self.h.0;
            // SAFETY: the plugin's own handle.
            let r = self.int(|| unsafe { f(h) })?;
            return Ok(match r {
                0 => Support::None,
                1 => Support::Emulate,
                // An API 1 plugin cannot take the FUA flag.
                _ if !self.v2() => Support::Emulate,
                _ => Support::Native,
            });
        }
        Ok(if self.can_flush()? {
            Support::Emulate
        } else {
            Support::None
        })
    }

    fn can_multi_conn(&self) -> Result<bool> {
        self.ask(self.s.p.can_multi_conn, || Ok(0)).map(b)
    }

    fn can_cache(&self) -> Result<Support> {
        let has = self.s.p.cache.is_some();
        let r = self.ask(self.s.p.can_cache, || Ok(if has { 2 } else { 0 }))?;
        Ok(match r {
            0 => Support::None,
            1 => Support::Emulate,
            _ => Support::Native,
        })
    }

    fn pread(&self, buf: &mut [u8], offset: u64, flags: Flags) -> Result<()> {
        let n = count32(buf.len() as u64)?;
        let h = self.h.0;
        let p = buf.as_mut_ptr() as *mut c_void;
        // SAFETY (both arms): `p` points to `n` writable bytes for the
        // call, and the handle is the plugin's own.
        if self.v2() {
            let Some(f) = self.s.p.pread else {
                return Err(Error::new(Errno::EIO));
            };
            self.int(|| unsafe { f(h, p, n, offset, flags.0) })?;
        } else {
            let Some(f) = self.s.p.pread_v1 else {
                return Err(Error::new(Errno::EIO));
            };
            self.int(|| unsafe { f(h, p, n, offset) })?;
        }
        Ok(())
    }

    fn pwrite(&self, buf: &[u8], offset: u64, flags: Flags) -> Result<()> {
        let n = count32(buf.len() as u64)?;
        let h = self.h.0;
        let p = buf.as_ptr() as *const c_void;
        // SAFETY (both arms): `p` points to `n` readable bytes for the
        // call, and the handle is the plugin's own.
        if self.v2() {
            let Some(f) = self.s.p.pwrite else {
                return Err(Error::new(Errno::EROFS));
            };
            self.int(|| unsafe { f(h, p, n, offset, flags.0) })?;
        } else {
            let Some(f) = self.s.p.pwrite_v1 else {
                return Err(Error::new(Errno::EROFS));
            };
            self.int(|| unsafe { f(h, p, n, offset) })?;
        }
        Ok(())
    }

    fn flush(&self, flags: Flags) -> Result<()> {
        let h = self.h.0;
        // SAFETY (both arms): the plugin's own handle.
        if self.v2() {
            let Some(f) = self.s.p.flush else {
                return Err(Error::new(Errno::EINVAL));
            };
            self.int(|| unsafe { f(h, flags.0) })?;
        } else {
            let Some(f) = self.s.p.flush_v1 else {
                return Err(Error::new(Errno::EINVAL));
            };
            self.int(|| unsafe { f(h) })?;
        }
        Ok(())
    }

    fn trim(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        let n = count32(count)?;
        let h = self.h.0;
        // SAFETY (both arms): the plugin's own handle.
        if self.v2() {
            let Some(f) = self.s.p.trim else {
                return Err(Error::new(Errno::EINVAL));
            };
            self.int(|| unsafe { f(h, n, offset, flags.0) })?;
        } else {
            let Some(f) = self.s.p.trim_v1 else {
                return Err(Error::new(Errno::EINVAL));
            };
            self.int(|| unsafe { f(h, n, offset) })?;
        }
        Ok(())
    }

    fn zero(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        let n = count32(count)?;
        let h = self.h.0;
        // SAFETY (both arms): the plugin's own handle.
        if self.v2() {
            let Some(f) = self.s.p.zero else {
                return Err(Error::new(Errno::ENOTSUP));
            };
            self.int(|| unsafe { f(h, n, offset, flags.0) })?;
        } else {
            let Some(f) = self.s.p.zero_v1 else {
                return Err(Error::new(Errno::ENOTSUP));
            };
            // An API 1 .zero cannot promise to be fast.
            if flags.contains(Flags::FAST_ZERO) {
                return Err(Error::new(Errno::ENOTSUP));
            }
            let may_trim = c_int::from(flags.contains(Flags::MAY_TRIM));
            self.int(|| unsafe { f(h, n, offset, may_trim) })?;
        }
        Ok(())
    }

    fn extents(&self, count: u64, offset: u64, flags: Flags, extents: &mut Extents) -> Result<()> {
        let Some(f) = self.s.p.extents else {
            return extents.add(offset, count, 0);
        };
        let n = count32(count)?;
        let h = self.h.0;
        let e: *mut Extents = extents;
        // SAFETY: `e` is a live, exclusive extents list for the call, only
        // passed to nbdkit_add_extent & co.; the handle is the plugin's.
        self.int(|| unsafe { f(h, n, offset, flags.0, e) })?;
        Ok(())
    }

    fn cache(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        let Some(f) = self.s.p.cache else {
            return Ok(());
        };
        let n = count32(count)?;
        let h = self.h.0;
        // SAFETY: the plugin's own handle.
        self.int(|| unsafe { f(h, n, offset, flags.0) })?;
        Ok(())
    }
}
