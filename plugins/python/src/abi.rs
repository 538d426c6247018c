//! The plugin's side of nbdkit's C plugin ABI (`include/nbdkit-plugin.h`,
//! API version 2): the `struct nbdkit_plugin` this object hands to the
//! server from `plugin_init`, and the `nbdkit_*` functions the server
//! exports for plugins.

use core::ffi::{c_char, c_double, c_int, c_void};

/// The server's per-connection handle for this plugin.
pub(crate) type H = *mut c_void;

/// An opaque list owned by the server (`struct nbdkit_extents`).
#[repr(C)]
pub(crate) struct Extents {
    _private: [u8; 0],
}

/// An opaque list owned by the server (`struct nbdkit_exports`).
#[repr(C)]
pub(crate) struct Exports {
    _private: [u8; 0],
}

pub(crate) const THREAD_MODEL_SERIALIZE_CONNECTIONS: c_int = 0;
pub(crate) const THREAD_MODEL_SERIALIZE_ALL_REQUESTS: c_int = 1;
pub(crate) const THREAD_MODEL_SERIALIZE_REQUESTS: c_int = 2;
pub(crate) const THREAD_MODEL_PARALLEL: c_int = 3;

pub(crate) const FLAG_MAY_TRIM: u32 = 1 << 0;
pub(crate) const FLAG_FUA: u32 = 1 << 1;
pub(crate) const FLAG_REQ_ONE: u32 = 1 << 2;
pub(crate) const FLAG_FAST_ZERO: u32 = 1 << 3;

pub(crate) const FUA_NONE: c_int = 0;
pub(crate) const FUA_EMULATE: c_int = 1;
pub(crate) const FUA_NATIVE: c_int = 2;

pub(crate) const CACHE_NONE: c_int = 0;
pub(crate) const CACHE_EMULATE: c_int = 1;
pub(crate) const CACHE_NATIVE: c_int = 2;

pub(crate) const EXTENT_HOLE: u32 = 1 << 0;
pub(crate) const EXTENT_ZERO: u32 = 1 << 1;

/// `struct nbdkit_plugin` as an API 2 plugin declares it (384 bytes on
/// x86-64). The API 1 slots stay empty.
#[repr(C)]
pub(crate) struct Plugin {
    pub(crate) struct_size: u64,
    pub(crate) api_version: c_int,
    pub(crate) thread_model: c_int,
    pub(crate) name: *const c_char,
    pub(crate) longname: *const c_char,
    pub(crate) version: *const c_char,
    pub(crate) description: *const c_char,
    pub(crate) load: Option<unsafe extern "C" fn()>,
    pub(crate) unload: Option<unsafe extern "C" fn()>,
    pub(crate) config: Option<unsafe extern "C" fn(*const c_char, *const c_char) -> c_int>,
    pub(crate) config_complete: Option<unsafe extern "C" fn() -> c_int>,
    pub(crate) config_help: *const c_char,
    pub(crate) open: Option<unsafe extern "C" fn(c_int) -> H>,
    pub(crate) close: Option<unsafe extern "C" fn(H)>,
    pub(crate) get_size: Option<unsafe extern "C" fn(H) -> i64>,
    pub(crate) can_write: Option<unsafe extern "C" fn(H) -> c_int>,
    pub(crate) can_flush: Option<unsafe extern "C" fn(H) -> c_int>,
    pub(crate) is_rotational: Option<unsafe extern "C" fn(H) -> c_int>,
    pub(crate) can_trim: Option<unsafe extern "C" fn(H) -> c_int>,
    pub(crate) v1_slots: [Option<unsafe extern "C" fn()>; 5],
    pub(crate) errno_is_preserved: c_int,
    pub(crate) dump_plugin: Option<unsafe extern "C" fn()>,
    pub(crate) can_zero: Option<unsafe extern "C" fn(H) -> c_int>,
    pub(crate) can_fua: Option<unsafe extern "C" fn(H) -> c_int>,
    pub(crate) pread: Option<unsafe extern "C" fn(H, *mut c_void, u32, u64, u32) -> c_int>,
    pub(crate) pwrite: Option<unsafe extern "C" fn(H, *const c_void, u32, u64, u32) -> c_int>,
    pub(crate) flush: Option<unsafe extern "C" fn(H, u32) -> c_int>,
    pub(crate) trim: Option<unsafe extern "C" fn(H, u32, u64, u32) -> c_int>,
    pub(crate) zero: Option<unsafe extern "C" fn(H, u32, u64, u32) -> c_int>,
    pub(crate) magic_config_key: *const c_char,
    pub(crate) can_multi_conn: Option<unsafe extern "C" fn(H) -> c_int>,
    pub(crate) can_extents: Option<unsafe extern "C" fn(H) -> c_int>,
    pub(crate) extents: Option<unsafe extern "C" fn(H, u32, u64, u32, *mut Extents) -> c_int>,
    pub(crate) can_cache: Option<unsafe extern "C" fn(H) -> c_int>,
    pub(crate) cache: Option<unsafe extern "C" fn(H, u32, u64, u32) -> c_int>,
    pub(crate) thread_model_cb: Option<unsafe extern "C" fn() -> c_int>,
    pub(crate) can_fast_zero: Option<unsafe extern "C" fn(H) -> c_int>,
    pub(crate) preconnect: Option<unsafe extern "C" fn(c_int) -> c_int>,
    pub(crate) get_ready: Option<unsafe extern "C" fn() -> c_int>,
    pub(crate) after_fork: Option<unsafe extern "C" fn() -> c_int>,
    pub(crate) list_exports: Option<unsafe extern "C" fn(c_int, c_int, *mut Exports) -> c_int>,
    pub(crate) default_export: Option<unsafe extern "C" fn(c_int, c_int) -> *const c_char>,
    pub(crate) export_description: Option<unsafe extern "C" fn(H) -> *const c_char>,
    pub(crate) cleanup: Option<unsafe extern "C" fn()>,
    pub(crate) block_size: Option<unsafe extern "C" fn(H, *mut u32, *mut u32, *mut u32) -> c_int>,
}

const _: () = assert!(core::mem::size_of::<Plugin>() == 384);

// The server (the `nbdkit` executable) exports these; they resolve when
// the server loads this object.
extern "C" {
    pub(crate) fn nbdkit_error(fs: *const c_char, ...);
    pub(crate) fn nbdkit_debug(fs: *const c_char, ...);
    pub(crate) fn nbdkit_set_error(err: c_int);
    pub(crate) fn nbdkit_export_name() -> *const c_char;
    pub(crate) fn nbdkit_is_tls() -> c_int;
    pub(crate) fn nbdkit_peer_name(addr: *mut libc::sockaddr, len: *mut libc::socklen_t) -> c_int;
    pub(crate) fn nbdkit_peer_pid() -> i64;
    pub(crate) fn nbdkit_peer_uid() -> i64;
    pub(crate) fn nbdkit_peer_gid() -> i64;
    pub(crate) fn nbdkit_peer_security_context() -> *mut c_char;
    pub(crate) fn nbdkit_shutdown();
    pub(crate) fn nbdkit_disconnect(force: c_int);
    pub(crate) fn nbdkit_parse_size(s: *const c_char) -> i64;
    pub(crate) fn nbdkit_parse_probability(
        what: *const c_char,
        s: *const c_char,
        r: *mut c_double,
    ) -> c_int;
    pub(crate) fn nbdkit_strdup_intern(s: *const c_char) -> *const c_char;
    pub(crate) fn nbdkit_add_extent(e: *mut Extents, offset: u64, length: u64, typ: u32) -> c_int;
    pub(crate) fn nbdkit_add_export(
        e: *mut Exports,
        name: *const c_char,
        description: *const c_char,
    ) -> c_int;
    pub(crate) fn nbdkit_use_default_export(e: *mut Exports) -> c_int;
}

/// A Rust string as a C string, cut at the first NUL.
pub(crate) fn cstring(s: &str) -> std::ffi::CString {
    let end = s.find('\0').unwrap_or(s.len());
    std::ffi::CString::new(&s[..end]).unwrap_or_default()
}

/// `nbdkit_error("%s", msg)`.
pub(crate) fn error(msg: &str) {
    let m = cstring(msg);
    // SAFETY: a "%s" format with one NUL-terminated string argument.
    unsafe { nbdkit_error(c"%s".as_ptr(), m.as_ptr()) };
}

/// `nbdkit_debug("%s", msg)`.
pub(crate) fn debug(msg: &str) {
    let m = cstring(msg);
    // SAFETY: as above.
    unsafe { nbdkit_debug(c"%s".as_ptr(), m.as_ptr()) };
}

/// `nbdkit_set_error(err)`.
pub(crate) fn set_error(err: c_int) {
    // SAFETY: takes a plain int.
    unsafe { nbdkit_set_error(err) };
}
