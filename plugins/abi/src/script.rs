//! The one C-ABI layer of the language plugins (python, perl, tcl, lua,
//! ruby): a plugin implements [`ScriptPlugin`] with safe Rust functions
//! and [`plugin`] turns that into the `struct nbdkit_plugin` the server
//! loads, with one set of `extern "C"` trampolines shared by them all.
//!
//! The trampolines convert the server's arguments (C strings, the
//! buffer, the flags, the handle), box and unbox the connection handle,
//! report a failure (`nbdkit_error` with its message, `nbdkit_set_error`
//! with its errno) and catch a panic at the boundary: a panic is an EIO
//! error with one `NAME: CALLBACK: internal error` line, and never
//! unwinds into the server.

use core::ffi::{c_char, c_int, c_void, CStr};
use core::panic::AssertUnwindSafe;

use crate::{Exports, Extents, Plugin, H};

/// How a callback failed: the message to give `nbdkit_error` (none when
/// the plugin reported it already, or there is nothing to say) and the
/// errno to give `nbdkit_set_error` (0: leave the one the script set, or
/// the server's default EIO).
#[derive(Debug, Default)]
pub struct ScriptError {
    pub errno: c_int,
    pub message: Option<String>,
}

impl ScriptError {
    /// A failure with this message and errno.
    pub fn new(errno: c_int, message: impl Into<String>) -> ScriptError {
        ScriptError {
            errno,
            message: Some(message.into()),
        }
    }

    /// A failure with this message (the errno as the script left it).
    pub fn msg(message: impl Into<String>) -> ScriptError {
        ScriptError::new(0, message)
    }

    /// A failure with only an errno (nothing more to report).
    pub fn errno(errno: c_int) -> ScriptError {
        ScriptError {
            errno,
            message: None,
        }
    }

    /// A failure already reported: nothing more to say or set.
    pub fn reported() -> ScriptError {
        ScriptError::default()
    }

    /// Tell the server (what the trampolines do with an error; for the
    /// callbacks that return nothing).
    pub fn report(self) {
        if let Some(m) = self.message {
            crate::error(&m);
        }
        if self.errno != 0 {
            crate::set_error(self.errno);
        }
    }
}

pub type Result<T> = core::result::Result<T, ScriptError>;

/// A request's flags (`NBDKIT_FLAG_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flags(pub u32);

impl Flags {
    pub fn bits(self) -> u32 {
        self.0
    }
    pub fn may_trim(self) -> bool {
        self.0 & crate::FLAG_MAY_TRIM != 0
    }
    pub fn fua(self) -> bool {
        self.0 & crate::FLAG_FUA != 0
    }
    pub fn req_one(self) -> bool {
        self.0 & crate::FLAG_REQ_ONE != 0
    }
    pub fn fast_zero(self) -> bool {
        self.0 & crate::FLAG_FAST_ZERO != 0
    }
}

/// The server's list of extents for one `extents` call.
pub struct ExtentList(*mut Extents);

impl ExtentList {
    /// `nbdkit_add_extent`; a failure is already reported by the server.
    pub fn add(&mut self, offset: u64, length: u64, typ: u32) -> Result<()> {
        // SAFETY: the server's list, live for the call.
        match unsafe { crate::nbdkit_add_extent(self.0, offset, length, typ) } {
            -1 => Err(ScriptError::reported()),
            _ => Ok(()),
        }
    }
}

/// The server's list of exports for one `list_exports` call.
pub struct ExportList(*mut Exports);

impl ExportList {
    /// `nbdkit_add_export` (the strings are cut at a NUL).
    pub fn add(&mut self, name: &str, description: Option<&str>) -> Result<()> {
        let n = crate::cstring(name);
        let d = description.map(crate::cstring);
        let dp = d.as_ref().map_or(core::ptr::null(), |d| d.as_ptr());
        // SAFETY: the server's list, live for the call, and two strings
        // (or NULL) that it copies.
        match unsafe { crate::nbdkit_add_export(self.0, n.as_ptr(), dp) } {
            -1 => Err(ScriptError::reported()),
            _ => Ok(()),
        }
    }

    /// `nbdkit_use_default_export`.
    pub fn use_default(&mut self) -> Result<()> {
        // SAFETY: the server's list, live for the call.
        match unsafe { crate::nbdkit_use_default_export(self.0) } {
            -1 => Err(ScriptError::reported()),
            _ => Ok(()),
        }
    }
}

/// Which of the optional slots a plugin fills (a slot left empty takes
/// the server's default).
#[derive(Clone, Copy, Debug)]
pub struct Slots {
    pub unload: bool,
    pub can_zero: bool,
    pub can_fua: bool,
    pub block_size: bool,
    /// `thread_model` (the callback; else [`ScriptPlugin::THREAD_MODEL`]).
    pub thread_model: bool,
}

impl Slots {
    /// Every slot but the `thread_model` callback.
    pub const STANDARD: Slots = Slots {
        unload: true,
        can_zero: true,
        can_fua: true,
        block_size: true,
        thread_model: false,
    };
}

/// A language plugin: the callbacks of nbdkit-plugin(3) as safe Rust.
///
/// The functions take no `self`: a language plugin's interpreter is one
/// per server, kept in its statics. A plugin gives the few primitives
/// every script callback needs ([`loaded`](Self::loaded),
/// [`global`](Self::global), [`boolean`](Self::boolean)); the callbacks
/// that only call the script's function of the same name, and the
/// `can_*` capabilities with their defaults, come from them.
pub trait ScriptPlugin: 'static {
    /// What `open` makes of the script's handle (boxed by the layer).
    type Handle: 'static;

    /// The plugin's name (`python`, ...).
    const NAME: &'static CStr;
    const CONFIG_HELP: &'static CStr;
    const MAGIC_CONFIG_KEY: Option<&'static CStr> = Some(c"script");
    const THREAD_MODEL: c_int = crate::THREAD_MODEL_SERIALIZE_ALL_REQUESTS;
    const SLOTS: Slots = Slots::STANDARD;
    /// The script's flush callback, whose presence makes `can_flush`
    /// true without one (tcl's is `plugin_flush`).
    const FLUSH: &'static str = "flush";
    /// Whether zeroing is on without a `can_zero` callback (lua, ruby:
    /// the script's `zero`, or the server's writes of zeroes); else it
    /// follows whether the script has `zero` (nbdkit's python, perl).
    const ZERO_WITHOUT_CAN_ZERO: bool = false;

    // The primitives.

    /// Whether the script is loaded (`cleanup` runs only then).
    fn loaded() -> bool;
    /// Call the script's global function `name` with `args` (booleans:
    /// `readonly`, ...) when the script defines it.
    fn global(name: &'static str, args: &[bool]) -> Result<()>;
    /// The script's boolean callback `name` (`can_write`, ...) on the
    /// handle: its result; without it, whether the script defines
    /// `plain` (e.g. `pwrite` for `can_write`), else `default`.
    fn boolean(
        h: &Self::Handle,
        name: &'static str,
        plain: Option<&'static str>,
        default: bool,
    ) -> Result<bool>;

    // The callbacks.

    fn load() {}
    fn unload() {}
    fn dump_plugin() -> Result<()> {
        Ok(())
    }
    fn config(key: &str, value: &str) -> Result<()>;
    fn config_complete() -> Result<()> {
        Self::global("config_complete", &[])
    }
    fn thread_model() -> Result<c_int> {
        Ok(Self::THREAD_MODEL)
    }
    fn get_ready() -> Result<()> {
        Self::global("get_ready", &[])
    }
    fn after_fork() -> Result<()> {
        Self::global("after_fork", &[])
    }
    fn cleanup() -> Result<()> {
        if Self::loaded() {
            Self::global("cleanup", &[])
        } else {
            Ok(())
        }
    }
    fn preconnect(readonly: bool) -> Result<()> {
        Self::global("preconnect", &[readonly])
    }
    fn list_exports(readonly: bool, is_tls: bool, exports: &mut ExportList) -> Result<()>;
    /// The default export's name; `None` is "".
    fn default_export(readonly: bool, is_tls: bool) -> Result<Option<String>>;

    fn open(readonly: bool) -> Result<Self::Handle>;
    fn close(h: Self::Handle) -> Result<()>;
    /// `None`: no description.
    fn export_description(h: &Self::Handle) -> Result<Option<String>>;
    fn get_size(h: &Self::Handle) -> Result<i64>;
    /// (minimum, preferred, maximum).
    fn block_size(_h: &Self::Handle) -> Result<(u32, u32, u32)> {
        Ok((0, 0, 0))
    }
    fn can_write(h: &Self::Handle) -> Result<bool> {
        Self::boolean(h, "can_write", Some("pwrite"), false)
    }
    fn can_flush(h: &Self::Handle) -> Result<bool> {
        Self::boolean(h, "can_flush", Some(Self::FLUSH), false)
    }
    fn is_rotational(h: &Self::Handle) -> Result<bool> {
        Self::boolean(h, "is_rotational", None, false)
    }
    fn can_trim(h: &Self::Handle) -> Result<bool> {
        Self::boolean(h, "can_trim", Some("trim"), false)
    }
    fn can_zero(h: &Self::Handle) -> Result<bool> {
        if Self::ZERO_WITHOUT_CAN_ZERO {
            Self::boolean(h, "can_zero", None, true)
        } else {
            Self::boolean(h, "can_zero", Some("zero"), false)
        }
    }
    fn can_multi_conn(h: &Self::Handle) -> Result<bool> {
        Self::boolean(h, "can_multi_conn", None, false)
    }
    fn can_extents(h: &Self::Handle) -> Result<bool> {
        Self::boolean(h, "can_extents", Some("extents"), false)
    }
    fn can_fast_zero(h: &Self::Handle) -> Result<bool>;
    /// `FUA_NONE`, `FUA_EMULATE` or `FUA_NATIVE`.
    fn can_fua(_h: &Self::Handle) -> Result<c_int> {
        Ok(crate::FUA_NONE)
    }
    /// `CACHE_NONE`, `CACHE_EMULATE` or `CACHE_NATIVE`.
    fn can_cache(h: &Self::Handle) -> Result<c_int>;

    fn pread(h: &Self::Handle, buf: &mut [u8], offset: u64, flags: Flags) -> Result<()>;
    fn pwrite(h: &Self::Handle, buf: &[u8], offset: u64, flags: Flags) -> Result<()>;
    fn flush(h: &Self::Handle, flags: Flags) -> Result<()>;
    fn trim(h: &Self::Handle, count: u32, offset: u64, flags: Flags) -> Result<()>;
    fn zero(h: &Self::Handle, count: u32, offset: u64, flags: Flags) -> Result<()>;
    fn cache(h: &Self::Handle, count: u32, offset: u64, flags: Flags) -> Result<()>;
    fn extents(
        h: &Self::Handle,
        count: u32,
        offset: u64,
        flags: Flags,
        extents: &mut ExtentList,
    ) -> Result<()>;
}

std::thread_local! {
    /// The errno the running script callback gave its `set_error` on
    /// this thread (0: none).
    static SCRIPT_ERRNO: core::cell::Cell<c_int> = const { core::cell::Cell::new(0) };
}

/// A script's `set_error(errno)` (`nbdkit.set_error`, ...):
/// `nbdkit_set_error`, and remembered for the callback's own rules (see
/// [`script_errno`]).
pub fn script_set_error(errno: c_int) {
    crate::set_error(errno);
    record_script_errno(errno);
}

/// Remember a script's errno on this thread without telling the server
/// (an interpreter on a thread of its own tells it from the caller's).
pub fn record_script_errno(errno: c_int) {
    SCRIPT_ERRNO.with(|e| e.set(errno));
}

/// The errno the script set on this thread since [`clear_script_errno`]
/// (0: none).
pub fn script_errno() -> c_int {
    SCRIPT_ERRNO.with(core::cell::Cell::get)
}

/// Forget the errno of an earlier callback (before running one).
pub fn clear_script_errno() {
    record_script_errno(0);
}

/// nbdkit's rule for a script's `zero`: when the script set the errno
/// EOPNOTSUPP or ENOTSUP (whether it then failed or returned), or has no
/// `zero` at all (`missing`), the server writes zeroes instead. Whether
/// that is so; if it is, the server has been told (the errno and a
/// debug message) and the callback fails without a message.
pub fn zero_falls_back(errno: c_int, missing: bool) -> bool {
    let asked = errno == libc::EOPNOTSUPP || errno == libc::ENOTSUP;
    if asked || missing {
        crate::debug("zero falling back to pwrite");
        crate::set_error(if asked { errno } else { libc::EOPNOTSUPP });
    }
    asked || missing
}

// ---------------------------------------------------------------------------
// The trampolines

/// Run `f`, reporting its failure; a panic is an EIO error.
fn guard<P: ScriptPlugin, R>(callback: &str, fail: R, f: impl FnOnce() -> Result<R>) -> R {
    match std::panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            e.report();
            fail
        }
        Err(_) => {
            crate::error(&format!(
                "{}: {callback}: internal error",
                P::NAME.to_string_lossy()
            ));
            crate::set_error(libc::EIO);
            fail
        }
    }
}

/// A callback's success as the server's 0 / -1.
fn status<P: ScriptPlugin>(callback: &str, f: impl FnOnce() -> Result<()>) -> c_int {
    guard::<P, c_int>(callback, -1, || f().map(|()| 0))
}

/// A boolean callback as the server's 1 / 0 / -1.
fn truth<P: ScriptPlugin>(callback: &str, f: impl FnOnce() -> Result<bool>) -> c_int {
    guard::<P, c_int>(callback, -1, || f().map(c_int::from))
}

/// The plugin's handle behind the server's pointer.
///
/// # Safety
/// `h` came from [`open`] for this `P` and is not yet closed.
unsafe fn handle<'a, P: ScriptPlugin>(h: H) -> &'a P::Handle {
    // SAFETY: the caller's contract: a live Box<P::Handle> from open.
    unsafe { &*(h as *const P::Handle) }
}

unsafe extern "C" fn load<P: ScriptPlugin>() {
    guard::<P, ()>("load", (), || {
        P::load();
        Ok(())
    })
}

unsafe extern "C" fn unload<P: ScriptPlugin>() {
    guard::<P, ()>("unload", (), || {
        P::unload();
        Ok(())
    })
}

unsafe extern "C" fn dump_plugin<P: ScriptPlugin>() {
    guard::<P, ()>("dump_plugin", (), P::dump_plugin)
}

unsafe extern "C" fn config<P: ScriptPlugin>(key: *const c_char, value: *const c_char) -> c_int {
    // SAFETY: the server passes two NUL-terminated strings.
    let (key, value) = unsafe { (crate::str_arg(key), crate::str_arg(value)) };
    status::<P>("config", || P::config(&key, &value))
}

unsafe extern "C" fn config_complete<P: ScriptPlugin>() -> c_int {
    status::<P>("config_complete", P::config_complete)
}

unsafe extern "C" fn thread_model<P: ScriptPlugin>() -> c_int {
    guard::<P, c_int>("thread_model", -1, P::thread_model)
}

unsafe extern "C" fn get_ready<P: ScriptPlugin>() -> c_int {
    status::<P>("get_ready", P::get_ready)
}

unsafe extern "C" fn after_fork<P: ScriptPlugin>() -> c_int {
    status::<P>("after_fork", P::after_fork)
}

unsafe extern "C" fn cleanup<P: ScriptPlugin>() {
    guard::<P, ()>("cleanup", (), P::cleanup)
}

unsafe extern "C" fn preconnect<P: ScriptPlugin>(readonly: c_int) -> c_int {
    status::<P>("preconnect", || P::preconnect(readonly != 0))
}

unsafe extern "C" fn list_exports<P: ScriptPlugin>(
    readonly: c_int,
    is_tls: c_int,
    exports: *mut Exports,
) -> c_int {
    status::<P>("list_exports", || {
        P::list_exports(readonly != 0, is_tls != 0, &mut ExportList(exports))
    })
}

unsafe extern "C" fn default_export<P: ScriptPlugin>(
    readonly: c_int,
    is_tls: c_int,
) -> *const c_char {
    guard::<P, *const c_char>("default_export", core::ptr::null(), || {
        Ok(match P::default_export(readonly != 0, is_tls != 0)? {
            None => c"".as_ptr(),
            Some(s) => crate::intern_str(&s),
        })
    })
}

unsafe extern "C" fn open<P: ScriptPlugin>(readonly: c_int) -> H {
    guard::<P, H>("open", core::ptr::null_mut(), || {
        let h = P::open(readonly != 0)?;
        Ok(Box::into_raw(Box::new(h)).cast())
    })
}

unsafe extern "C" fn close<P: ScriptPlugin>(h: H) {
    if h.is_null() {
        return;
    }
    // SAFETY: the server closes each handle from `open` once.
    let h = unsafe { Box::from_raw(h.cast::<P::Handle>()) };
    guard::<P, ()>("close", (), move || P::close(*h))
}

unsafe extern "C" fn export_description<P: ScriptPlugin>(h: H) -> *const c_char {
    // SAFETY: a live handle from `open`.
    let h = unsafe { handle::<P>(h) };
    guard::<P, *const c_char>("export_description", core::ptr::null(), || {
        Ok(match P::export_description(h)? {
            None => core::ptr::null(),
            Some(s) => crate::intern_str(&s),
        })
    })
}

unsafe extern "C" fn get_size<P: ScriptPlugin>(h: H) -> i64 {
    // SAFETY: a live handle from `open`.
    let h = unsafe { handle::<P>(h) };
    guard::<P, i64>("get_size", -1, || P::get_size(h))
}

unsafe extern "C" fn block_size<P: ScriptPlugin>(
    h: H,
    min: *mut u32,
    pref: *mut u32,
    max: *mut u32,
) -> c_int {
    // SAFETY: a live handle from `open`.
    let h = unsafe { handle::<P>(h) };
    status::<P>("block_size", || {
        let (a, b, c) = P::block_size(h)?;
        // SAFETY: three u32s of the server's for the call.
        unsafe {
            *min = a;
            *pref = b;
            *max = c;
        }
        Ok(())
    })
}

/// The trampolines of the handle's boolean `can_*` callbacks.
macro_rules! booleans {
    ($($name:ident),*) => {$(
        unsafe extern "C" fn $name<P: ScriptPlugin>(h: H) -> c_int {
            // SAFETY: a live handle from `open`.
            let h = unsafe { handle::<P>(h) };
            truth::<P>(stringify!($name), || P::$name(h))
        }
    )*};
}

booleans!(
    can_write,
    can_flush,
    is_rotational,
    can_trim,
    can_zero,
    can_multi_conn,
    can_extents,
    can_fast_zero
);

unsafe extern "C" fn can_fua<P: ScriptPlugin>(h: H) -> c_int {
    // SAFETY: a live handle from `open`.
    let h = unsafe { handle::<P>(h) };
    guard::<P, c_int>("can_fua", -1, || P::can_fua(h))
}

unsafe extern "C" fn can_cache<P: ScriptPlugin>(h: H) -> c_int {
    // SAFETY: a live handle from `open`.
    let h = unsafe { handle::<P>(h) };
    guard::<P, c_int>("can_cache", -1, || P::can_cache(h))
}

unsafe extern "C" fn pread<P: ScriptPlugin>(
    h: H,
    buf: *mut c_void,
    count: u32,
    offset: u64,
    flags: u32,
) -> c_int {
    // SAFETY: a live handle from `open`.
    let h = unsafe { handle::<P>(h) };
    // SAFETY: the server lends `count` writable bytes at `buf` for the call.
    let buf = unsafe { core::slice::from_raw_parts_mut(buf.cast::<u8>(), count as usize) };
    status::<P>("pread", || P::pread(h, buf, offset, Flags(flags)))
}

unsafe extern "C" fn pwrite<P: ScriptPlugin>(
    h: H,
    buf: *const c_void,
    count: u32,
    offset: u64,
    flags: u32,
) -> c_int {
    // SAFETY: a live handle from `open`.
    let h = unsafe { handle::<P>(h) };
    // SAFETY: the server lends `count` bytes at `buf` for the call.
    let buf = unsafe { core::slice::from_raw_parts(buf.cast::<u8>(), count as usize) };
    status::<P>("pwrite", || P::pwrite(h, buf, offset, Flags(flags)))
}

unsafe extern "C" fn flush<P: ScriptPlugin>(h: H, flags: u32) -> c_int {
    // SAFETY: a live handle from `open`.
    let h = unsafe { handle::<P>(h) };
    status::<P>("flush", || P::flush(h, Flags(flags)))
}

/// The trampolines of the handle's `(count, offset, flags)` callbacks.
macro_rules! ranges {
    ($($name:ident),*) => {$(
        unsafe extern "C" fn $name<P: ScriptPlugin>(
            h: H,
            count: u32,
            offset: u64,
            flags: u32,
        ) -> c_int {
            // SAFETY: a live handle from `open`.
            let h = unsafe { handle::<P>(h) };
            status::<P>(stringify!($name), || P::$name(h, count, offset, Flags(flags)))
        }
    )*};
}

ranges!(trim, zero, cache);

unsafe extern "C" fn extents<P: ScriptPlugin>(
    h: H,
    count: u32,
    offset: u64,
    flags: u32,
    list: *mut Extents,
) -> c_int {
    // SAFETY: a live handle from `open`.
    let h = unsafe { handle::<P>(h) };
    status::<P>("extents", || {
        P::extents(h, count, offset, Flags(flags), &mut ExtentList(list))
    })
}

// ---------------------------------------------------------------------------
// Registration

/// The `struct nbdkit_plugin` of `P`, for a `static` [`crate::Registration`]
/// (see [`register_script_plugin!`](crate::register_script_plugin)).
pub const fn plugin<P: ScriptPlugin>() -> Plugin {
    let s = P::SLOTS;
    Plugin {
        thread_model: P::THREAD_MODEL,
        name: P::NAME.as_ptr(),
        load: Some(load::<P>),
        unload: if s.unload { Some(unload::<P>) } else { None },
        config: Some(config::<P>),
        config_complete: Some(config_complete::<P>),
        config_help: P::CONFIG_HELP.as_ptr(),
        open: Some(open::<P>),
        close: Some(close::<P>),
        get_size: Some(get_size::<P>),
        can_write: Some(can_write::<P>),
        can_flush: Some(can_flush::<P>),
        is_rotational: Some(is_rotational::<P>),
        can_trim: Some(can_trim::<P>),
        dump_plugin: Some(dump_plugin::<P>),
        can_zero: if s.can_zero {
            Some(can_zero::<P>)
        } else {
            None
        },
        can_fua: if s.can_fua { Some(can_fua::<P>) } else { None },
        pread: Some(pread::<P>),
        pwrite: Some(pwrite::<P>),
        flush: Some(flush::<P>),
        trim: Some(trim::<P>),
        zero: Some(zero::<P>),
        magic_config_key: match P::MAGIC_CONFIG_KEY {
            Some(k) => k.as_ptr(),
            None => core::ptr::null(),
        },
        can_multi_conn: Some(can_multi_conn::<P>),
        can_extents: Some(can_extents::<P>),
        extents: Some(extents::<P>),
        can_cache: Some(can_cache::<P>),
        cache: Some(cache::<P>),
        thread_model_cb: if s.thread_model {
            Some(thread_model::<P>)
        } else {
            None
        },
        can_fast_zero: Some(can_fast_zero::<P>),
        preconnect: Some(preconnect::<P>),
        get_ready: Some(get_ready::<P>),
        after_fork: Some(after_fork::<P>),
        list_exports: Some(list_exports::<P>),
        default_export: Some(default_export::<P>),
        export_description: Some(export_description::<P>),
        cleanup: Some(cleanup::<P>),
        block_size: if s.block_size {
            Some(block_size::<P>)
        } else {
            None
        },
        ..Plugin::EMPTY
    }
}

/// The `config_help` of a language plugin: `script=` and the others,
/// for `$what` ("Python plugin").
#[macro_export]
macro_rules! script_config_help {
    ($what:literal) => {
        match ::core::ffi::CStr::from_bytes_with_nul(
            concat!(
                "script=<FILENAME>     (required) The ",
                $what,
                " to run.\n[other arguments may be used by the plugin that you load]\0"
            )
            .as_bytes(),
        ) {
            Ok(c) => c,
            Err(_) => panic!("a NUL in the config help"),
        }
    };
}

/// Register the [`ScriptPlugin`] `$p` as this object's plugin: its
/// `static` registration and the `plugin_init` the server calls.
#[macro_export]
macro_rules! register_script_plugin {
    ($p:ty) => {
        static PLUGIN: $crate::Registration = $crate::Registration($crate::script::plugin::<$p>());

        /// The registration function the server calls when it loads this object.
        #[no_mangle]
        pub extern "C" fn plugin_init() -> *const ::core::ffi::c_void {
            PLUGIN.as_ptr()
        }
    };
}

#[cfg(test)]
mod tests {
    //! The trampolines against a plugin that fails and panics, with the
    //! server's reporting functions stood in for by this test binary.
    use super::*;
    use std::sync::Mutex;

    static ERRORS: Mutex<Vec<String>> = Mutex::new(Vec::new());
    static ERRNOS: Mutex<Vec<c_int>> = Mutex::new(Vec::new());
    static CLOSED: Mutex<Vec<u32>> = Mutex::new(Vec::new());

    // The layer only ever calls these as `nbdkit_error("%s", msg)`:
    // the message is the second argument (passed as a fixed one would be).
    #[no_mangle]
    extern "C" fn nbdkit_error(_fs: *const c_char, msg: *const c_char) {
        // SAFETY: the layer passes a NUL-terminated message.
        let m = unsafe { CStr::from_ptr(msg) }
            .to_string_lossy()
            .into_owned();
        ERRORS.lock().unwrap().push(m);
    }

    #[no_mangle]
    extern "C" fn nbdkit_debug(_fs: *const c_char, _msg: *const c_char) {}

    #[no_mangle]
    extern "C" fn nbdkit_set_error(err: c_int) {
        ERRNOS.lock().unwrap().push(err);
    }

    #[no_mangle]
    extern "C" fn nbdkit_strdup_intern(s: *const c_char) -> *const c_char {
        s
    }

    #[no_mangle]
    extern "C" fn nbdkit_add_extent(_: *mut Extents, _: u64, _: u64, _: u32) -> c_int {
        -1
    }

    #[no_mangle]
    extern "C" fn nbdkit_add_export(_: *mut Exports, _: *const c_char, _: *const c_char) -> c_int {
        -1
    }

    #[no_mangle]
    extern "C" fn nbdkit_use_default_export(_: *mut Exports) -> c_int {
        -1
    }

    struct Test;

    impl ScriptPlugin for Test {
        type Handle = u32;
        const NAME: &'static CStr = c"test";
        const CONFIG_HELP: &'static CStr = c"";
        fn loaded() -> bool {
            true
        }
        fn global(_name: &'static str, _args: &[bool]) -> Result<()> {
            Ok(())
        }
        fn boolean(
            _h: &u32,
            _name: &'static str,
            _plain: Option<&'static str>,
            default: bool,
        ) -> Result<bool> {
            Ok(default)
        }
        fn config(_key: &str, _value: &str) -> Result<()> {
            Err(ScriptError::msg("no parameters"))
        }
        fn list_exports(_: bool, _: bool, _: &mut ExportList) -> Result<()> {
            Ok(())
        }
        fn default_export(_: bool, _: bool) -> Result<Option<String>> {
            Ok(None)
        }
        fn open(_readonly: bool) -> Result<u32> {
            Ok(7)
        }
        fn close(h: u32) -> Result<()> {
            CLOSED.lock().unwrap().push(h);
            Ok(())
        }
        fn export_description(_: &u32) -> Result<Option<String>> {
            Ok(None)
        }
        fn get_size(h: &u32) -> Result<i64> {
            Ok(i64::from(*h) * 512)
        }
        fn can_fast_zero(_: &u32) -> Result<bool> {
            Ok(false)
        }
        fn can_cache(_: &u32) -> Result<c_int> {
            Ok(crate::CACHE_NONE)
        }
        fn pread(h: &u32, buf: &mut [u8], offset: u64, _: Flags) -> Result<()> {
            if offset == 4096 {
                panic!("a bug in the plugin");
            }
            buf.fill(*h as u8);
            Ok(())
        }
        fn pwrite(_: &u32, _: &[u8], _: u64, _: Flags) -> Result<()> {
            Err(ScriptError::new(libc::ENOSPC, "test: pwrite: full"))
        }
        fn flush(_: &u32, _: Flags) -> Result<()> {
            Ok(())
        }
        fn trim(_: &u32, _: u32, _: u64, _: Flags) -> Result<()> {
            Ok(())
        }
        fn zero(_: &u32, _: u32, _: u64, _: Flags) -> Result<()> {
            Ok(())
        }
        fn cache(_: &u32, _: u32, _: u64, _: Flags) -> Result<()> {
            Ok(())
        }
        fn extents(_: &u32, _: u32, _: u64, _: Flags, _: &mut ExtentList) -> Result<()> {
            Ok(())
        }
    }

    static PLUGIN: crate::Registration = crate::Registration(plugin::<Test>());

    #[test]
    fn trampolines_box_the_handle_report_errors_and_catch_panics() {
        let p = &PLUGIN.0;
        // SAFETY: the calls the server makes, in its order, with a live
        // handle and buffers of the stated sizes.
        unsafe {
            assert_eq!(p.config.unwrap()(c"k".as_ptr(), c"v".as_ptr()), -1);
            let h = p.open.unwrap()(0);
            assert!(!h.is_null());
            assert_eq!(p.get_size.unwrap()(h), 7 * 512);
            assert_eq!(p.can_write.unwrap()(h), 0);
            let mut buf = [0u8; 512];
            assert_eq!(p.pread.unwrap()(h, buf.as_mut_ptr().cast(), 512, 0, 0), 0);
            assert_eq!(buf, [7u8; 512]);
            // A panic is an EIO error, and does not unwind into the caller.
            assert_eq!(
                p.pread.unwrap()(h, buf.as_mut_ptr().cast(), 512, 4096, 0),
                -1
            );
            assert_eq!(p.pwrite.unwrap()(h, buf.as_ptr().cast(), 512, 0, 0), -1);
            p.close.unwrap()(h);
        }
        assert_eq!(*CLOSED.lock().unwrap(), [7]);
        assert_eq!(
            *ERRORS.lock().unwrap(),
            [
                "no parameters",
                "test: pread: internal error",
                "test: pwrite: full"
            ]
        );
        assert_eq!(*ERRNOS.lock().unwrap(), [libc::EIO, libc::ENOSPC]);
        // The slots a plugin leaves to the server stay empty.
        assert!(p.thread_model_cb.is_none());
        assert!(p.unload.is_some());
        assert!(p.can_zero.is_some());
    }
}
