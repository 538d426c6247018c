//! The C structures of nbdkit's plugin and filter ABI (x86-64 layout, as
//! `nbdkit-plugin.h` and `nbdkit-filter.h` declare them).

use std::ffi::{c_char, c_int, c_void};

/// An opaque extents list (`struct nbdkit_extents`): a core `Extents`.
pub(crate) type CExtents = nbdkit_core::backend::Extents;
/// An opaque export list (`struct nbdkit_exports`): a core `Exports`.
pub(crate) type CExports = nbdkit_core::backend::Exports;

type H = *mut c_void;

/// `struct nbdkit_plugin` (384 bytes since nbdkit 1.30). Under API 1 the
/// `*_v1` slots hold the flagless data callbacks and the v2 slots are
/// unused.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct Plugin {
    pub _struct_size: u64,
    pub _api_version: c_int,
    pub _thread_model: c_int,
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
    pub pread_v1: Option<unsafe extern "C" fn(H, *mut c_void, u32, u64) -> c_int>,
    pub pwrite_v1: Option<unsafe extern "C" fn(H, *const c_void, u32, u64) -> c_int>,
    pub flush_v1: Option<unsafe extern "C" fn(H) -> c_int>,
    pub trim_v1: Option<unsafe extern "C" fn(H, u32, u64) -> c_int>,
    pub zero_v1: Option<unsafe extern "C" fn(H, u32, u64, c_int) -> c_int>,
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
    pub extents: Option<unsafe extern "C" fn(H, u32, u64, u32, *mut CExtents) -> c_int>,
    pub can_cache: Option<unsafe extern "C" fn(H) -> c_int>,
    pub cache: Option<unsafe extern "C" fn(H, u32, u64, u32) -> c_int>,
    pub thread_model: Option<unsafe extern "C" fn() -> c_int>,
    pub can_fast_zero: Option<unsafe extern "C" fn(H) -> c_int>,
    pub preconnect: Option<unsafe extern "C" fn(c_int) -> c_int>,
    pub get_ready: Option<unsafe extern "C" fn() -> c_int>,
    pub after_fork: Option<unsafe extern "C" fn() -> c_int>,
    pub list_exports: Option<unsafe extern "C" fn(c_int, c_int, *mut CExports) -> c_int>,
    pub default_export: Option<unsafe extern "C" fn(c_int, c_int) -> *const c_char>,
    pub export_description: Option<unsafe extern "C" fn(H) -> *const c_char>,
    pub cleanup: Option<unsafe extern "C" fn()>,
    pub block_size: Option<unsafe extern "C" fn(H, *mut u32, *mut u32, *mut u32) -> c_int>,
}

const _: () = assert!(core::mem::size_of::<Plugin>() == 384);

/// The layer below a filter as C sees it (`nbdkit_next`): a table of
/// functions, always the first field of a larger server-side object.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct NextOps {
    pub prepare: unsafe extern "C" fn(*mut NextOps) -> c_int,
    pub finalize: unsafe extern "C" fn(*mut NextOps) -> c_int,
    pub get_size: unsafe extern "C" fn(*mut NextOps) -> i64,
    pub export_description: unsafe extern "C" fn(*mut NextOps) -> *const c_char,
    pub block_size: unsafe extern "C" fn(*mut NextOps, *mut u32, *mut u32, *mut u32) -> c_int,
    pub can_write: unsafe extern "C" fn(*mut NextOps) -> c_int,
    pub can_flush: unsafe extern "C" fn(*mut NextOps) -> c_int,
    pub is_rotational: unsafe extern "C" fn(*mut NextOps) -> c_int,
    pub can_trim: unsafe extern "C" fn(*mut NextOps) -> c_int,
    pub can_zero: unsafe extern "C" fn(*mut NextOps) -> c_int,
    pub can_fast_zero: unsafe extern "C" fn(*mut NextOps) -> c_int,
    pub can_extents: unsafe extern "C" fn(*mut NextOps) -> c_int,
    pub can_fua: unsafe extern "C" fn(*mut NextOps) -> c_int,
    pub can_multi_conn: unsafe extern "C" fn(*mut NextOps) -> c_int,
    pub can_cache: unsafe extern "C" fn(*mut NextOps) -> c_int,
    pub pread: unsafe extern "C" fn(*mut NextOps, *mut c_void, u32, u64, u32, *mut c_int) -> c_int,
    pub pwrite:
        unsafe extern "C" fn(*mut NextOps, *const c_void, u32, u64, u32, *mut c_int) -> c_int,
    pub flush: unsafe extern "C" fn(*mut NextOps, u32, *mut c_int) -> c_int,
    pub trim: unsafe extern "C" fn(*mut NextOps, u32, u64, u32, *mut c_int) -> c_int,
    pub zero: unsafe extern "C" fn(*mut NextOps, u32, u64, u32, *mut c_int) -> c_int,
    pub extents:
        unsafe extern "C" fn(*mut NextOps, u32, u64, u32, *mut CExtents, *mut c_int) -> c_int,
    pub cache: unsafe extern "C" fn(*mut NextOps, u32, u64, u32, *mut c_int) -> c_int,
}

const _: () = assert!(core::mem::size_of::<NextOps>() == 176);

/// Opaque handles a filter passes back to the server.
pub(crate) type Backend = c_void;
/// `nbdkit_context`: the open context of a filter layer, during `.open`.
pub(crate) type CContext = c_void;

/// `nbdkit_next_config` and friends: the server's continuations for a
/// filter's global callbacks.
pub(crate) type NextConfig =
    unsafe extern "C" fn(*mut Backend, *const c_char, *const c_char) -> c_int;
pub(crate) type NextConfigComplete = unsafe extern "C" fn(*mut Backend) -> c_int;
pub(crate) type NextPreconnect = unsafe extern "C" fn(*mut Backend, c_int) -> c_int;
pub(crate) type NextListExports = unsafe extern "C" fn(*mut Backend, c_int, *mut CExports) -> c_int;
pub(crate) type NextDefaultExport = unsafe extern "C" fn(*mut Backend, c_int) -> *const c_char;
pub(crate) type NextOpen = unsafe extern "C" fn(*mut CContext, c_int, *const c_char) -> c_int;

type N = *mut NextOps;

/// `struct nbdkit_filter` (API version 6; its layout is tied to the
/// server's version string, which filters must match).
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct Filter {
    pub _api_version: c_int,
    pub _version: *const c_char,
    pub name: *const c_char,
    pub longname: *const c_char,
    pub description: *const c_char,
    pub load: Option<unsafe extern "C" fn()>,
    pub unload: Option<unsafe extern "C" fn()>,
    pub config: Option<
        unsafe extern "C" fn(NextConfig, *mut Backend, *const c_char, *const c_char) -> c_int,
    >,
    pub config_complete: Option<unsafe extern "C" fn(NextConfigComplete, *mut Backend) -> c_int>,
    pub config_help: *const c_char,
    pub thread_model: Option<unsafe extern "C" fn() -> c_int>,
    pub get_ready: Option<unsafe extern "C" fn(c_int) -> c_int>,
    pub after_fork: Option<unsafe extern "C" fn(*mut Backend) -> c_int>,
    pub cleanup: Option<unsafe extern "C" fn(*mut Backend)>,
    pub preconnect: Option<unsafe extern "C" fn(NextPreconnect, *mut Backend, c_int) -> c_int>,
    pub list_exports: Option<
        unsafe extern "C" fn(NextListExports, *mut Backend, c_int, c_int, *mut CExports) -> c_int,
    >,
    pub default_export: Option<
        unsafe extern "C" fn(NextDefaultExport, *mut Backend, c_int, c_int) -> *const c_char,
    >,
    pub open:
        Option<unsafe extern "C" fn(NextOpen, *mut CContext, c_int, *const c_char, c_int) -> H>,
    pub close: Option<unsafe extern "C" fn(H)>,
    pub prepare: Option<unsafe extern "C" fn(N, H, c_int) -> c_int>,
    pub finalize: Option<unsafe extern "C" fn(N, H) -> c_int>,
    pub get_size: Option<unsafe extern "C" fn(N, H) -> i64>,
    pub export_description: Option<unsafe extern "C" fn(N, H) -> *const c_char>,
    pub block_size: Option<unsafe extern "C" fn(N, H, *mut u32, *mut u32, *mut u32) -> c_int>,
    pub can_write: Option<unsafe extern "C" fn(N, H) -> c_int>,
    pub can_flush: Option<unsafe extern "C" fn(N, H) -> c_int>,
    pub is_rotational: Option<unsafe extern "C" fn(N, H) -> c_int>,
    pub can_trim: Option<unsafe extern "C" fn(N, H) -> c_int>,
    pub can_zero: Option<unsafe extern "C" fn(N, H) -> c_int>,
    pub can_fast_zero: Option<unsafe extern "C" fn(N, H) -> c_int>,
    pub can_extents: Option<unsafe extern "C" fn(N, H) -> c_int>,
    pub can_fua: Option<unsafe extern "C" fn(N, H) -> c_int>,
    pub can_multi_conn: Option<unsafe extern "C" fn(N, H) -> c_int>,
    pub can_cache: Option<unsafe extern "C" fn(N, H) -> c_int>,
    pub pread: Option<unsafe extern "C" fn(N, H, *mut c_void, u32, u64, u32, *mut c_int) -> c_int>,
    pub pwrite:
        Option<unsafe extern "C" fn(N, H, *const c_void, u32, u64, u32, *mut c_int) -> c_int>,
    pub flush: Option<unsafe extern "C" fn(N, H, u32, *mut c_int) -> c_int>,
    pub trim: Option<unsafe extern "C" fn(N, H, u32, u64, u32, *mut c_int) -> c_int>,
    pub zero: Option<unsafe extern "C" fn(N, H, u32, u64, u32, *mut c_int) -> c_int>,
    pub extents:
        Option<unsafe extern "C" fn(N, H, u32, u64, u32, *mut CExtents, *mut c_int) -> c_int>,
    pub cache: Option<unsafe extern "C" fn(N, H, u32, u64, u32, *mut c_int) -> c_int>,
}

const _: () = assert!(core::mem::size_of::<Filter>() == 328);

/// `struct nbdkit_extent`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct Extent {
    pub offset: u64,
    pub length: u64,
    pub typ: u32,
}

/// `struct nbdkit_export`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct Export {
    pub name: *mut c_char,
    pub description: *mut c_char,
}
