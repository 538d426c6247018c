//! nbdkit's `curl` plugin: a disk image served over HTTP, HTTPS, FTP,
//! `file:` and the other protocols of libcurl, read with range requests
//! (and written with HTTP PUT), through the system libcurl.
//!
//! This is a shared object that nbdkit loads through its C plugin ABI, so
//! the `nbdkit` executable itself never links libcurl. Every parameter of
//! `nbdkit-curl-plugin(1)` is a libcurl option, set on each handle of a
//! pool of `connections=` easy handles shared by all NBD connections;
//! requests run in parallel, one handle each.
//!
//! Every network wait is bounded: by `timeout=` when given, else a
//! connection must be made within a minute and a transfer that moves
//! less than a byte a second for a minute fails. A failure is one
//! `nbdkit: error:` line and EIO on the request.

use core::ffi::{c_char, c_int, c_void};
use core::panic::AssertUnwindSafe;
use core::sync::atomic::{AtomicI32, Ordering};
use std::ffi::CStr;
use std::sync::{Mutex, OnceLock};

use nbdkit_plugin_abi as abi;

use abi::H;

mod config;
mod pool;
mod scripts;

use config::Config;

/// `-D curl.verbose=1`: libcurl's own trace as debug messages.
#[no_mangle]
pub static curl_debug_verbose: AtomicI32 = AtomicI32::new(0);
/// `-D curl.times=1`: the time spent in each phase, summed, at exit.
#[no_mangle]
pub static curl_debug_times: AtomicI32 = AtomicI32::new(0);
/// `-D curl.scripts=1`: the headers and cookies the scripts made.
#[no_mangle]
pub static curl_debug_scripts: AtomicI32 = AtomicI32::new(0);

pub(crate) use curl_debug_scripts as DEBUG_SCRIPTS;
pub(crate) use curl_debug_times as DEBUG_TIMES;
pub(crate) use curl_debug_verbose as DEBUG_VERBOSE;

/// The parameters while they are being given.
static PENDING: Mutex<Option<Config>> = Mutex::new(None);
/// The parameters once complete.
static CONFIG: OnceLock<Config> = OnceLock::new();

static POOL: pool::Pool = pool::Pool::new();

/// Run a callback; a panic never crosses into the server.
fn guard<R>(fail: R, f: impl FnOnce() -> R) -> R {
    match std::panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(_) => {
            abi::error("curl: internal error");
            abi::set_error(libc::EIO);
            fail
        }
    }
}

fn cstr<'a>(p: *const c_char) -> &'a str {
    if p.is_null() {
        return "";
    }
    // SAFETY: the server passes NUL-terminated strings that outlive the call.
    unsafe { CStr::from_ptr(p) }.to_str().unwrap_or("")
}

fn config() -> &'static Config {
    CONFIG.get_or_init(Config::default)
}

unsafe extern "C" fn curl_load() {
    guard((), || {
        curl::init();
    })
}

unsafe extern "C" fn curl_unload() {
    guard((), || {
        let n = POOL.close_all();
        abi::debug(&format!(
            "free_all_handles: number of curl handles allocated: {n}"
        ));
        if DEBUG_TIMES.load(Ordering::Relaxed) != 0 {
            abi::debug("times (-D curl.times=1):");
            for (name, t) in pool::TIME_NAMES.iter().zip(pool::TIMES.iter()) {
                let s = t.load(Ordering::Relaxed) as f64 / 1e9;
                abi::debug(&format!("{name:<30}: {s:>11.6} s"));
            }
        }
    })
}

unsafe extern "C" fn curl_config(key: *const c_char, value: *const c_char) -> c_int {
    guard(-1, || {
        let (k, v) = (cstr(key), cstr(value));
        let mut p = PENDING.lock().unwrap_or_else(|e| e.into_inner());
        match p.get_or_insert_with(Config::default).set(k, v) {
            Ok(()) => 0,
            Err(config::Bad(msg)) => {
                if let Some(m) = msg {
                    abi::error(&m);
                }
                -1
            }
        }
    })
}

unsafe extern "C" fn curl_config_complete() -> c_int {
    guard(-1, || {
        let cfg = PENDING
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .unwrap_or_default();
        if let Err(m) = cfg.complete() {
            abi::error(&m);
            return -1;
        }
        let _ = CONFIG.set(cfg);
        0
    })
}

/// The per-connection handle: only whether it is read-only (the libcurl
/// handles are the pool's).
struct Handle {
    readonly: bool,
}

unsafe extern "C" fn curl_open(readonly: c_int) -> H {
    guard(core::ptr::null_mut(), || {
        Box::into_raw(Box::new(Handle {
            readonly: readonly != 0,
        }))
        .cast()
    })
}

unsafe extern "C" fn curl_close(h: H) {
    if !h.is_null() {
        // SAFETY: made by curl_open, closed once.
        drop(unsafe { Box::from_raw(h.cast::<Handle>()) });
    }
}

/// Run `f` with a handle of the pool; its error is reported with EIO.
fn with_conn(f: impl FnOnce(&mut pool::Conn) -> Result<i64, String>) -> i64 {
    guard(-1, || {
        let cfg = config();
        let mut c = match POOL.get(cfg) {
            Ok(c) => c,
            Err(m) => {
                abi::error(&m);
                abi::set_error(libc::EIO);
                return -1;
            }
        };
        let r = f(&mut c);
        POOL.put(c);
        match r {
            Ok(v) => v,
            Err(m) => {
                abi::error(&m);
                abi::set_error(libc::EIO);
                -1
            }
        }
    })
}

unsafe extern "C" fn curl_get_size(_h: H) -> i64 {
    with_conn(|c| Ok(c.size as i64))
}

unsafe extern "C" fn curl_can_write(h: H) -> c_int {
    // SAFETY: made by curl_open.
    let h = unsafe { &*(h as *const Handle) };
    // Writes are HTTP PUTs of a range; libcurl writes file: and FTP
    // URLs only from the start or at the end, so those are read-only.
    c_int::from(!h.readonly && config().is_http())
}

unsafe extern "C" fn curl_can_multi_conn(h: H) -> c_int {
    // SAFETY: made by curl_open.
    let h = unsafe { &*(h as *const Handle) };
    // HTTP has no flush: only read-only connections are consistent.
    c_int::from(h.readonly)
}

/// A read or write of `count` bytes (nothing to do for none).
fn data_request(count: u32, f: impl FnOnce(&mut pool::Conn) -> Result<(), String>) -> c_int {
    if count == 0 {
        return 0;
    }
    with_conn(|c| f(c).map(|()| 0)) as c_int
}

unsafe extern "C" fn curl_pread(
    _h: H,
    buf: *mut c_void,
    count: u32,
    offset: u64,
    _f: u32,
) -> c_int {
    data_request(count, |c| {
        // SAFETY: the server's buffer of `count` bytes for this call.
        let buf = unsafe { core::slice::from_raw_parts_mut(buf.cast::<u8>(), count as usize) };
        c.pread(config(), buf, offset)
    })
}

unsafe extern "C" fn curl_pwrite(
    _h: H,
    buf: *const c_void,
    count: u32,
    offset: u64,
    _f: u32,
) -> c_int {
    data_request(count, |c| {
        // SAFETY: the server's `count` bytes for this call.
        let buf = unsafe { core::slice::from_raw_parts(buf.cast::<u8>(), count as usize) };
        c.pwrite(config(), buf, offset)
    })
}

unsafe extern "C" fn curl_dump_plugin() {
    let v = curl::Version::get();
    println!("curl_version={}", v.version());
    if let Some(s) = v.ssl_version() {
        println!("curl_ssl_version={s}");
    }
    let protocols: Vec<&str> = v.protocols().collect();
    println!("curl_protocols={}", protocols.join(","));
}

const VERSION: &CStr = c"1.36.2";

static PLUGIN: abi::Registration = abi::Registration(abi::Plugin {
    struct_size: core::mem::size_of::<abi::Plugin>() as u64,
    api_version: 2,
    thread_model: abi::THREAD_MODEL_PARALLEL,
    name: c"curl".as_ptr(),
    longname: core::ptr::null(),
    version: VERSION.as_ptr(),
    description: core::ptr::null(),
    load: Some(curl_load),
    unload: Some(curl_unload),
    config: Some(curl_config),
    config_complete: Some(curl_config_complete),
    config_help: config::HELP.as_ptr(),
    open: Some(curl_open),
    close: Some(curl_close),
    get_size: Some(curl_get_size),
    can_write: Some(curl_can_write),
    can_flush: None,
    is_rotational: None,
    can_trim: None,
    v1_slots: [None; 5],
    errno_is_preserved: 0,
    dump_plugin: Some(curl_dump_plugin),
    can_zero: None,
    can_fua: None,
    pread: Some(curl_pread),
    pwrite: Some(curl_pwrite),
    flush: None,
    trim: None,
    zero: None,
    magic_config_key: c"url".as_ptr(),
    can_multi_conn: Some(curl_can_multi_conn),
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
});

/// The registration function the server calls when it loads this object.
#[no_mangle]
pub extern "C" fn plugin_init() -> *const c_void {
    (&PLUGIN.0 as *const abi::Plugin).cast()
}
