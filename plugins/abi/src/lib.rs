//! The plugin's side of nbdkit's C plugin ABI (`include/nbdkit-plugin.h`,
//! API version 2), shared by this workspace's plugins built as shared
//! objects (python, and the other language and network plugins): the
//! `struct nbdkit_plugin` an object hands to the server from
//! `plugin_init`, and the `nbdkit_*` functions the server exports.

use core::ffi::{c_char, c_double, c_int, c_void};

pub mod script;

/// The server's per-connection handle for this plugin.
pub type H = *mut c_void;

/// An opaque list owned by the server (`struct nbdkit_extents`).
#[repr(C)]
pub struct Extents {
    _private: [u8; 0],
}

/// An opaque list owned by the server (`struct nbdkit_exports`).
#[repr(C)]
pub struct Exports {
    _private: [u8; 0],
}

pub const THREAD_MODEL_SERIALIZE_CONNECTIONS: c_int = 0;
pub const THREAD_MODEL_SERIALIZE_ALL_REQUESTS: c_int = 1;
pub const THREAD_MODEL_SERIALIZE_REQUESTS: c_int = 2;
pub const THREAD_MODEL_PARALLEL: c_int = 3;

pub const FLAG_MAY_TRIM: u32 = 1 << 0;
pub const FLAG_FUA: u32 = 1 << 1;
pub const FLAG_REQ_ONE: u32 = 1 << 2;
pub const FLAG_FAST_ZERO: u32 = 1 << 3;

pub const FUA_NONE: c_int = 0;
pub const FUA_EMULATE: c_int = 1;
pub const FUA_NATIVE: c_int = 2;

pub const CACHE_NONE: c_int = 0;
pub const CACHE_EMULATE: c_int = 1;
pub const CACHE_NATIVE: c_int = 2;

pub const EXTENT_HOLE: u32 = 1 << 0;
pub const EXTENT_ZERO: u32 = 1 << 1;

/// `struct nbdkit_plugin` as an API 2 plugin declares it (384 bytes on
/// x86-64). The API 1 slots stay empty.
#[repr(C)]
pub struct Plugin {
    pub struct_size: u64,
    pub api_version: c_int,
    pub thread_model: c_int,
    pub name: *const c_char,
    pub longname: *const c_char,
    pub version: *const c_char,
    pub description: *const c_char,
    pub load: Option<unsafe extern "C" fn()>,
    pub unload: Option<unsafe extern "C" fn()>,
    pub config: Option<unsafe extern "C" fn(*const c_char, *const c_char) -> c_int>,
    pub config_complete: Option<unsafe extern "C" fn() -> c_int>,
    pub config_help: *const c_char,
    pub open: Option<unsafe extern "C" fn(c_int) -> H>,
    pub close: Option<unsafe extern "C" fn(H)>,
    pub get_size: Option<unsafe extern "C" fn(H) -> i64>,
    pub can_write: Option<unsafe extern "C" fn(H) -> c_int>,
    pub can_flush: Option<unsafe extern "C" fn(H) -> c_int>,
    pub is_rotational: Option<unsafe extern "C" fn(H) -> c_int>,
    pub can_trim: Option<unsafe extern "C" fn(H) -> c_int>,
    pub v1_slots: [Option<unsafe extern "C" fn()>; 5],
    pub errno_is_preserved: c_int,
    pub dump_plugin: Option<unsafe extern "C" fn()>,
    pub can_zero: Option<unsafe extern "C" fn(H) -> c_int>,
    pub can_fua: Option<unsafe extern "C" fn(H) -> c_int>,
    pub pread: Option<unsafe extern "C" fn(H, *mut c_void, u32, u64, u32) -> c_int>,
    pub pwrite: Option<unsafe extern "C" fn(H, *const c_void, u32, u64, u32) -> c_int>,
    pub flush: Option<unsafe extern "C" fn(H, u32) -> c_int>,
    pub trim: Option<unsafe extern "C" fn(H, u32, u64, u32) -> c_int>,
    pub zero: Option<unsafe extern "C" fn(H, u32, u64, u32) -> c_int>,
    pub magic_config_key: *const c_char,
    pub can_multi_conn: Option<unsafe extern "C" fn(H) -> c_int>,
    pub can_extents: Option<unsafe extern "C" fn(H) -> c_int>,
    pub extents: Option<unsafe extern "C" fn(H, u32, u64, u32, *mut Extents) -> c_int>,
    pub can_cache: Option<unsafe extern "C" fn(H) -> c_int>,
    pub cache: Option<unsafe extern "C" fn(H, u32, u64, u32) -> c_int>,
    pub thread_model_cb: Option<unsafe extern "C" fn() -> c_int>,
    pub can_fast_zero: Option<unsafe extern "C" fn(H) -> c_int>,
    pub preconnect: Option<unsafe extern "C" fn(c_int) -> c_int>,
    pub get_ready: Option<unsafe extern "C" fn() -> c_int>,
    pub after_fork: Option<unsafe extern "C" fn() -> c_int>,
    pub list_exports: Option<unsafe extern "C" fn(c_int, c_int, *mut Exports) -> c_int>,
    pub default_export: Option<unsafe extern "C" fn(c_int, c_int) -> *const c_char>,
    pub export_description: Option<unsafe extern "C" fn(H) -> *const c_char>,
    pub cleanup: Option<unsafe extern "C" fn()>,
    pub block_size: Option<unsafe extern "C" fn(H, *mut u32, *mut u32, *mut u32) -> c_int>,
}

const _: () = assert!(core::mem::size_of::<Plugin>() == 384);

// The server (the `nbdkit` executable) exports these; they resolve when
// the server loads this object.
extern "C" {
    pub fn nbdkit_error(fs: *const c_char, ...);
    pub fn nbdkit_debug(fs: *const c_char, ...);
    pub fn nbdkit_set_error(err: c_int);
    pub fn nbdkit_export_name() -> *const c_char;
    pub fn nbdkit_is_tls() -> c_int;
    pub fn nbdkit_peer_name(addr: *mut libc::sockaddr, len: *mut libc::socklen_t) -> c_int;
    pub fn nbdkit_peer_pid() -> i64;
    pub fn nbdkit_peer_uid() -> i64;
    pub fn nbdkit_peer_gid() -> i64;
    pub fn nbdkit_peer_security_context() -> *mut c_char;
    pub fn nbdkit_shutdown();
    pub fn nbdkit_disconnect(force: c_int);
    pub fn nbdkit_parse_size(s: *const c_char) -> i64;
    pub fn nbdkit_parse_probability(
        what: *const c_char,
        s: *const c_char,
        r: *mut c_double,
    ) -> c_int;
    pub fn nbdkit_strdup_intern(s: *const c_char) -> *const c_char;
    pub fn nbdkit_add_extent(e: *mut Extents, offset: u64, length: u64, typ: u32) -> c_int;
    pub fn nbdkit_add_export(
        e: *mut Exports,
        name: *const c_char,
        description: *const c_char,
    ) -> c_int;
    pub fn nbdkit_use_default_export(e: *mut Exports) -> c_int;
    pub fn nbdkit_read_password(value: *const c_char, password: *mut *mut c_char) -> c_int;
    pub fn nbdkit_parse_bool(s: *const c_char) -> c_int;
    pub fn nbdkit_parse_unsigned(what: *const c_char, s: *const c_char, r: *mut u32) -> c_int;
    pub fn nbdkit_parse_uint32_t(what: *const c_char, s: *const c_char, r: *mut u32) -> c_int;
}

/// A Rust string as a C string, cut at the first NUL.
pub fn cstring(s: &str) -> std::ffi::CString {
    let end = s.find('\0').unwrap_or(s.len());
    std::ffi::CString::new(&s[..end]).unwrap_or_default()
}

/// `nbdkit_error("%s", msg)`.
pub fn error(msg: &str) {
    let m = cstring(msg);
    // SAFETY: a "%s" format with one NUL-terminated string argument.
    unsafe { nbdkit_error(c"%s".as_ptr(), m.as_ptr()) };
}

/// `nbdkit_debug("%s", msg)`.
pub fn debug(msg: &str) {
    let m = cstring(msg);
    // SAFETY: as above.
    unsafe { nbdkit_debug(c"%s".as_ptr(), m.as_ptr()) };
}

/// `nbdkit_set_error(err)`.
pub fn set_error(err: c_int) {
    // SAFETY: takes a plain int.
    unsafe { nbdkit_set_error(err) };
}

/// A C string argument from the server as Rust text (empty for NULL).
///
/// # Safety
/// `p` is NULL or a NUL-terminated string valid for the call.
pub unsafe fn str_arg(p: *const c_char) -> String {
    if p.is_null() {
        String::new()
    } else {
        // SAFETY: the caller's contract.
        unsafe { std::ffi::CStr::from_ptr(p) }
            .to_string_lossy()
            .into_owned()
    }
}

/// The text of an errno value.
pub fn strerror(errno: c_int) -> String {
    // SAFETY: strerror returns a valid string for any errno value.
    unsafe { std::ffi::CStr::from_ptr(libc::strerror(errno)) }
        .to_string_lossy()
        .into_owned()
}

/// The version of nbdkit these plugins belong to (their `version`).
pub const NBDKIT_VERSION: &std::ffi::CStr = c"1.36.2";

impl Plugin {
    /// An API 2 plugin with every slot empty: the base that a plugin's
    /// registration completes with `..Plugin::EMPTY`.
    pub const EMPTY: Plugin = Plugin {
        struct_size: core::mem::size_of::<Plugin>() as u64,
        api_version: 2,
        thread_model: THREAD_MODEL_PARALLEL,
        name: core::ptr::null(),
        longname: core::ptr::null(),
        version: NBDKIT_VERSION.as_ptr(),
        description: core::ptr::null(),
        load: None,
        unload: None,
        config: None,
        config_complete: None,
        config_help: core::ptr::null(),
        open: None,
        close: None,
        get_size: None,
        can_write: None,
        can_flush: None,
        is_rotational: None,
        can_trim: None,
        v1_slots: [None; 5],
        errno_is_preserved: 0,
        dump_plugin: None,
        can_zero: None,
        can_fua: None,
        pread: None,
        pwrite: None,
        flush: None,
        trim: None,
        zero: None,
        magic_config_key: core::ptr::null(),
        can_multi_conn: None,
        can_extents: None,
        extents: None,
        can_cache: None,
        cache: None,
        thread_model_cb: None,
        can_fast_zero: None,
        preconnect: None,
        get_ready: None,
        after_fork: None,
        list_exports: None,
        default_export: None,
        export_description: None,
        cleanup: None,
        block_size: None,
    };
}

/// A plugin's registration in a `static`, for its `plugin_init` to hand
/// to the server.
pub struct Registration(pub Plugin);

// SAFETY: the struct holds function pointers and pointers to static
// strings; the server only reads it.
unsafe impl Sync for Registration {}

impl Registration {
    /// What `plugin_init` returns.
    pub fn as_ptr(&'static self) -> *const c_void {
        (&self.0 as *const Plugin).cast()
    }
}

/// Load a plugin's C library into `cell` once (at `config_complete`):
/// 0, or -1 after `nbdkit_error` with `load`'s message.
pub fn load_once<T>(
    cell: &std::sync::OnceLock<T>,
    load: impl FnOnce() -> Result<T, String>,
) -> c_int {
    if cell.get().is_some() {
        return 0;
    }
    match load() {
        Ok(l) => {
            let _ = cell.set(l);
            0
        }
        Err(e) => {
            error(&e);
            -1
        }
    }
}

/// Hand a string to the server, which keeps it for the connection
/// (`nbdkit_strdup_intern`).
pub fn intern_str(s: &str) -> *const c_char {
    let c = cstring(s);
    // SAFETY: a NUL-terminated string, copied by the server.
    unsafe { nbdkit_strdup_intern(c.as_ptr()) }
}
/// The constants language plugins give scripts by name (`FLAG_FUA`, ...),
/// with their values; `API_VERSION` is 1, the callbacks' shape of the
/// lua and ruby plugins (nbdkit's).
pub const SCRIPT_CONSTANTS: [(&str, i64); 17] = [
    (
        "THREAD_MODEL_SERIALIZE_CONNECTIONS",
        THREAD_MODEL_SERIALIZE_CONNECTIONS as i64,
    ),
    (
        "THREAD_MODEL_SERIALIZE_ALL_REQUESTS",
        THREAD_MODEL_SERIALIZE_ALL_REQUESTS as i64,
    ),
    (
        "THREAD_MODEL_SERIALIZE_REQUESTS",
        THREAD_MODEL_SERIALIZE_REQUESTS as i64,
    ),
    ("THREAD_MODEL_PARALLEL", THREAD_MODEL_PARALLEL as i64),
    ("FLAG_MAY_TRIM", FLAG_MAY_TRIM as i64),
    ("FLAG_FUA", FLAG_FUA as i64),
    ("FLAG_REQ_ONE", FLAG_REQ_ONE as i64),
    ("FLAG_FAST_ZERO", FLAG_FAST_ZERO as i64),
    ("FUA_NONE", FUA_NONE as i64),
    ("FUA_EMULATE", FUA_EMULATE as i64),
    ("FUA_NATIVE", FUA_NATIVE as i64),
    ("CACHE_NONE", CACHE_NONE as i64),
    ("CACHE_EMULATE", CACHE_EMULATE as i64),
    ("CACHE_NATIVE", CACHE_NATIVE as i64),
    ("EXTENT_HOLE", EXTENT_HOLE as i64),
    ("EXTENT_ZERO", EXTENT_ZERO as i64),
    ("API_VERSION", 1),
];
