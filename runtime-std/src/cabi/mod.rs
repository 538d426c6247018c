//! nbdkit's C ABI: compiled plugins (`struct nbdkit_plugin`, `plugin_init`)
//! and filters (`struct nbdkit_filter`, `filter_init`) loaded from shared
//! objects and wrapped as layers of the same [`Plugin`]/[`Filter`] stack
//! the built-in ones use, and the `nbdkit_*` functions that this
//! executable exports for them ([`api`], and `variadic.c` for the C
//! variadic ones).
//!
//! Nothing here runs for a built-in plugin: the thread-local state below is
//! only touched by calls into a loaded object.
//!
//! # Calls into C
//! Every call into a plugin or filter goes through [`call`], which sets up
//! the thread's error state (`nbdkit_error`'s message, `nbdkit_set_error`'s
//! errno) and the connection that `nbdkit_export_name`, `nbdkit_is_tls`,
//! `nbdkit_peer_*` and the `*_intern` functions refer to, and turns a
//! failure into an [`Error`] carrying that errno and message, so that it
//! reaches the NBD reply and the log like a built-in plugin's error.

pub(crate) mod api;
mod ffi;
mod filter;
mod plugin;

use std::cell::{Cell, RefCell};
use std::ffi::{c_int, CStr, CString};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use nbdkit_core::backend::{Error, Filter, Peer, Plugin, Result};

use crate::log;

pub use plugin::dump_plugin;

/// Debian's plugin directory, searched after the binary's own directory.
pub const SYSTEM_PLUGINDIR: &str = "/usr/lib/x86_64-linux-gnu/nbdkit/plugins";
/// Debian's filter directory.
pub const SYSTEM_FILTERDIR: &str = "/usr/lib/x86_64-linux-gnu/nbdkit/filters";

/// What a connection looks like to the C functions that ask about it.
pub(crate) struct ConnInfo {
    pub(crate) export_name: Option<CString>,
    pub(crate) is_tls: bool,
    pub(crate) peer: Peer,
    /// Strings from `nbdkit_strdup_intern` & co., freed with the connection.
    interned: Mutex<Vec<CString>>,
}

impl ConnInfo {
    pub(crate) fn new(export_name: Option<&str>, is_tls: bool, peer: Peer) -> Arc<ConnInfo> {
        Arc::new(ConnInfo {
            export_name: export_name.map(cstring_lossy),
            is_tls,
            peer,
            interned: Mutex::new(Vec::new()),
        })
    }
}

/// Strings interned outside any connection live until the process exits,
/// as nbdkit keeps them until the plugin is unloaded.
static GLOBAL_INTERNED: Mutex<Vec<CString>> = Mutex::new(Vec::new());

thread_local! {
    static CONN: RefCell<Option<Arc<ConnInfo>>> = const { RefCell::new(None) };
    static SET_ERRNO: Cell<c_int> = const { Cell::new(0) };
    static PENDING: RefCell<Option<String>> = const { RefCell::new(None) };
    static DEPTH: Cell<u32> = const { Cell::new(0) };
    static LAYER: Cell<Option<&'static str>> = const { Cell::new(None) };
}

/// Which connection a call belongs to.
pub(crate) enum Scope<'a> {
    /// A global callback (load, config, get_ready, ...): no connection
    /// unless one is already current on this thread.
    Global,
    /// A call on behalf of a connection.
    Conn(&'a Arc<ConnInfo>),
}

/// Keep a string alive for as long as the current connection (or for
/// ever outside one) and return a pointer to it.
pub(crate) fn intern(s: CString) -> *const std::ffi::c_char {
    let p = s.as_ptr();
    let conn = CONN.with(|c| c.borrow().clone());
    let list = match &conn {
        Some(c) => &c.interned,
        None => &GLOBAL_INTERNED,
    };
    list.lock().unwrap_or_else(|e| e.into_inner()).push(s);
    // The CString's heap buffer does not move when the CString itself is
    // moved into the list, so `p` stays valid until the list is dropped.
    p
}

/// The connection the current call belongs to.
pub(crate) fn current_conn() -> Option<Arc<ConnInfo>> {
    CONN.with(|c| c.borrow().clone())
}

/// The name of the layer being called, for debug messages.
pub(crate) fn current_layer() -> Option<&'static str> {
    LAYER.with(Cell::get)
}

/// The context nbdkit prints before `error:`: the layer's name during a
/// connection, nothing at configuration time.
fn log_context() -> Option<&'static str> {
    if CONN.with(|c| c.borrow().is_some()) {
        current_layer()
    } else {
        None
    }
}

/// `nbdkit_error` from C: inside a call, remembered as the call's error
/// message (an earlier one is logged at once); outside, logged at once.
pub(crate) fn report_error(msg: String) {
    if DEPTH.with(Cell::get) == 0 {
        log::error(None, &msg);
        return;
    }
    let old = PENDING.with(|p| p.borrow_mut().replace(msg));
    if let Some(old) = old {
        log::error(log_context(), &old);
    }
}

/// `nbdkit_set_error` from C.
pub(crate) fn set_errno(e: c_int) {
    SET_ERRNO.with(|s| s.set(e));
}

/// Hand an error from a layer below (through `next`) to the C code that
/// called it: its message becomes the pending message of the caller.
pub(crate) fn pass_up(e: &Error) -> c_int {
    if let Some(m) = &e.message {
        report_error(m.clone());
    }
    if e.errno.0 == 0 {
        libc::EIO
    } else {
        crate::os::errno::to_os(e.errno)
    }
}

/// Run `f`, a call into C code of `layer`, in `scope`. `failed` says
/// whether its result is a failure: then the errno is the one the code set
/// with `nbdkit_set_error`, else `errno` when the plugin declared
/// `errno_is_preserved`, else EIO; the message is the last `nbdkit_error`.
pub(crate) fn call<T>(
    layer: &'static str,
    scope: Scope<'_>,
    errno_is_preserved: bool,
    f: impl FnOnce() -> T,
    failed: impl FnOnce(&T) -> bool,
) -> Result<T> {
    let saved_errno = SET_ERRNO.with(|s| s.replace(0));
    let saved_msg = PENDING.with(|p| p.borrow_mut().take());
    let saved_layer = LAYER.with(|l| l.replace(Some(layer)));
    let saved_conn = match scope {
        Scope::Global => None,
        Scope::Conn(c) => Some(CONN.with(|cur| cur.borrow_mut().replace(Arc::clone(c)))),
    };
    DEPTH.with(|d| d.set(d.get() + 1));
    nix::errno::Errno::set_raw(0);
    let r = f();
    // Read before anything else can change it.
    let os_errno = nix::errno::Errno::last_raw();
    DEPTH.with(|d| d.set(d.get() - 1));
    let context = log_context();
    let set = SET_ERRNO.with(|s| s.replace(saved_errno));
    let msg = PENDING.with(|p| core::mem::replace(&mut *p.borrow_mut(), saved_msg));
    LAYER.with(|l| l.set(saved_layer));
    if let Some(prev) = saved_conn {
        CONN.with(|cur| *cur.borrow_mut() = prev);
    }
    if failed(&r) {
        let errno = if set != 0 {
            set
        } else if errno_is_preserved && os_errno != 0 {
            os_errno
        } else {
            libc::EIO
        };
        Err(Error {
            errno: crate::os::errno::from_os(errno),
            message: msg,
        })
    } else {
        if let Some(m) = msg {
            log::error(context, &m);
        }
        Ok(r)
    }
}

/// A command-line string for a plugin's or filter's `.config`: kept for
/// the life of the process, because C plugins keep the pointers they are
/// given (nbdkit passes its `argv`, which never goes away).
pub(crate) fn config_arg(s: &str) -> *const std::ffi::c_char {
    let c = cstring_lossy(s);
    let p = c.as_ptr();
    GLOBAL_INTERNED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(c);
    p
}

/// A Rust string as a C string, with any NUL cut off.
pub(crate) fn cstring_lossy(s: &str) -> CString {
    let end = s.find('\0').unwrap_or(s.len());
    CString::new(&s[..end]).unwrap_or_default()
}

/// A C string owned by a loaded object, copied. `None` for NULL.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string that stays valid
/// during the call.
pub(crate) unsafe fn copy_str(p: *const std::ffi::c_char) -> Option<String> {
    if p.is_null() {
        None
    } else {
        // SAFETY: the caller guarantees a valid NUL-terminated string.
        Some(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
    }
}

/// A string that lives as long as the process (plugin metadata that the
/// Plugin trait hands out as `&'static str`; a handful per loaded object).
pub(crate) fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

/// Whether a plugin or filter argument names a file rather than a built-in
/// name: it contains `/` or ends in `.so` (nbdkit's rule).
pub fn is_path(arg: &str) -> bool {
    arg.contains('/') || arg.ends_with(".so")
}

/// Where `nbdkit NAME` looks for `nbdkit-NAME-KIND.so` when NAME is not
/// built in: beside this executable first (also under the name cargo
/// gives this workspace's own plugin crates, `libnbdkit_NAME_KIND.so`),
/// then Debian's directory. The last candidate is returned when none
/// exists, for the error message.
pub fn find(name: &str, kind: &str) -> PathBuf {
    let file = format!("nbdkit-{name}-{kind}.so");
    let cargo_file = format!("lib{}.so", file.trim_end_matches(".so").replace('-', "_"));
    let system = if kind == "filter" {
        SYSTEM_FILTERDIR
    } else {
        SYSTEM_PLUGINDIR
    };
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        for f in [&file, &cargo_file] {
            let p = dir.join(f);
            if p.exists() {
                return p;
            }
        }
    }
    Path::new(system).join(file)
}

/// A failure to load: the text after `nbdkit: error: `, and whether
/// nbdkit follows it with its "Use 'nbdkit --help'" hint.
#[derive(Debug)]
pub struct LoadError {
    /// The message.
    pub message: String,
    /// nbdkit prints its usage hint after this one.
    pub usage_hint: bool,
}

/// A library kept loaded for the life of the process (never `dlclose`d:
/// a plugin may have started threads that still run its code).
fn open_library(
    arg: &str,
    path: &Path,
    kind: &str,
) -> core::result::Result<&'static libloading::os::unix::Library, LoadError> {
    use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_NOW};
    // SAFETY: loading a shared object runs its initialisers; that is what
    // the user asked for by naming it, as with nbdkit.
    match unsafe { Library::open(Some(path), RTLD_NOW | RTLD_GLOBAL) } {
        Ok(l) => Ok(Box::leak(Box::new(l))),
        Err(e) => Err(LoadError {
            message: format!("cannot open {kind} '{arg}': {}", dl_message(&e)),
            usage_hint: kind == "plugin",
        }),
    }
}

fn dl_message(e: &libloading::Error) -> String {
    let m = e.to_string();
    // An interpreter library that is not installed (libpython3.N.so.1.0,
    // libperl.so.5.N, libtcl8.N.so, liblua5.N.so.0, libruby-3.N.so.3.N of
    // the language plugins): name
    // the Debian package that has it.
    let missing = m
        .split(": ")
        .find(|p| p.starts_with("lib") && p.contains(".so"))
        .filter(|_| m.contains("cannot open shared object file"));
    match missing.and_then(debian_package) {
        Some(pkg) => format!("{m} (install Debian's {pkg})"),
        None => m,
    }
}

/// The Debian package of an interpreter library by its file name:
/// libpython3.11.so.1.0 is in libpython3.11, liblua5.4.so.0 in
/// liblua5.4-0, libruby-3.1.so.3.1 in libruby3.1.
fn debian_package(lib: &str) -> Option<String> {
    let (stem, version) = lib.split_once(".so")?;
    if stem.starts_with("libpython3.") || stem.starts_with("libtcl8.") {
        Some(stem.to_string())
    } else if stem == "libperl" {
        // libperl.so.5.36 is in libperl5.36.
        let v: Vec<&str> = version.trim_start_matches('.').split('.').collect();
        (v.len() >= 2).then(|| format!("libperl{}.{}", v[0], v[1]))
    } else if stem.starts_with("liblua5.") {
        Some(format!("{stem}-0"))
    } else {
        stem.strip_prefix("libruby-3.")
            .map(|v| format!("libruby3.{v}"))
    }
}

/// Debug flags (`-D NAME.FLAG=N`) of loaded objects: name -> library.
static LOADED: Mutex<Vec<(String, &'static libloading::os::unix::Library)>> =
    Mutex::new(Vec::new());

/// Where each loaded object came from (for `--help`): name -> path.
static PATHS: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

fn register(name: &str, path: &Path, lib: &'static libloading::os::unix::Library) {
    LOADED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((name.to_string(), lib));
    PATHS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((name.to_string(), path.display().to_string()));
}

/// The file a loaded plugin or filter called `name` came from.
pub fn path_of(name: &str) -> Option<String> {
    PATHS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, p)| p.clone())
}

/// Apply `-D NAME.FLAG=VALUE` to a loaded plugin or filter called NAME:
/// set its `int NAME_debug_FLAG` variable (dots and dashes in NAME and FLAG
/// become underscores). Returns whether such a variable was found. (A
/// plugin compiled later by `cc` gets its flags from the list of `-D`
/// flags, [`nbdkit_core::debug::flags`].)
pub fn apply_debug_flag(key: &str, value: &str) -> bool {
    set_debug_flag(key, value)
}

fn set_debug_flag(key: &str, value: &str) -> bool {
    let Some((name, flag)) = key.split_once('.') else {
        return false;
    };
    let Ok(v) = value.parse::<c_int>() else {
        return false;
    };
    let sym = format!("{name}_debug_{flag}").replace(['.', '-'], "_");
    let Ok(csym) = CString::new(sym) else {
        return false;
    };
    let loaded = LOADED.lock().unwrap_or_else(|e| e.into_inner());
    for (n, lib) in loaded.iter() {
        if n != name {
            continue;
        }
        // SAFETY: by nbdkit's convention a symbol NAME_debug_FLAG exported
        // by a plugin or filter is an `int`, which lives as long as the
        // library (never unloaded).
        if let Ok(p) = unsafe { lib.get::<*mut c_int>(csym.as_bytes_with_nul()) } {
            let p: *mut c_int = *p;
            if !p.is_null() {
                // SAFETY: as above; written before any plugin thread runs.
                unsafe { p.write(v) };
                return true;
            }
        }
    }
    false
}

/// Load a plugin from `path` (the user wrote `arg`).
pub fn load_plugin(arg: &str, path: &Path) -> core::result::Result<Box<dyn Plugin>, LoadError> {
    let lib = open_library(arg, path, "plugin")?;
    let p = plugin::CPlugin::load(lib, path, plugin::Origin::Named)?;
    register(p.name(), path, lib);
    Ok(Box::new(p))
}

/// Load a plugin that the `cc` plugin has just compiled into `path` (a
/// temporary file, removed once loaded): as nbdkit's cc plugin, it must
/// use API version 2, and errors do not name the file.
pub fn load_compiled_plugin(path: &Path) -> core::result::Result<Box<dyn Plugin>, LoadError> {
    use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_NOW};
    // SAFETY: loading the object runs its initialisers; the user asked for
    // that code to run by giving its source.
    let lib = match unsafe { Library::open(Some(path), RTLD_NOW | RTLD_GLOBAL) } {
        Ok(l) => &*Box::leak(Box::new(l)),
        Err(e) => {
            return Err(LoadError {
                message: format!("cannot open the compiled plugin: {}", dl_message(&e)),
                usage_hint: false,
            })
        }
    };
    let p = plugin::CPlugin::load(lib, path, plugin::Origin::Compiled)?;
    register(p.name(), path, lib);
    // The -D flags were applied before this plugin existed: those named
    // after it are set now (and count as used).
    let warnings = nbdkit_core::debug::load(p.name(), |f| {
        set_debug_flag(&format!("{}.{}", f.name, f.flag), &f.value.to_string())
    });
    for w in warnings {
        eprintln!("nbdkit: {w}");
    }
    Ok(Box::new(p))
}

/// Load a filter from `path` (the user wrote `arg`).
pub fn load_filter(arg: &str, path: &Path) -> core::result::Result<Box<dyn Filter>, LoadError> {
    let lib = open_library(arg, path, "filter")?;
    let f = filter::CFilter::load(lib, path)?;
    register(f.name(), path, lib);
    Ok(Box::new(f))
}

static STDIO_SAFE: OnceLock<bool> = OnceLock::new();

/// Tell `nbdkit_stdio_safe` whether stdin and stdout are free for plugins
/// (not with `-s`).
pub fn set_stdio_safe(safe: bool) {
    let _ = STDIO_SAFE.set(safe);
}

pub(crate) fn stdio_safe() -> bool {
    *STDIO_SAFE.get().unwrap_or(&true)
}

/// Make sure the exported `nbdkit_*` functions are linked into the
/// executable (they are only called from loaded objects).
pub fn keep_exports() -> usize {
    api::keep()
}
