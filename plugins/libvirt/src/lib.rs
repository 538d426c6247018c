//! nbdkit's libvirt plugin (nbdkit-libvirt-plugin(1)): read-only access to
//! a libvirt domain's disk through `virDomainBlockPeek`, also over remote
//! libvirt connections.
//!
//! Parameters: `connect=URI` (optional), `domain=DOMAIN` and `disk=DISK`
//! (required; the disk's target name, `vda`, or its source path).
//!
//! A shared object loaded by `nbdkit` through its C plugin ABI, declared
//! as nbdkit's is (API version 1, `serialize_requests`), so that
//! `--dump-plugin` prints nbdkit's lines. libvirt itself is loaded with
//! `dlopen("libvirt.so.0")` when the configuration is complete: neither
//! the build nor `nbdkit --dump-plugin` needs libvirt, and a machine
//! without it gets one error line naming Debian's `libvirt0`.

use core::ffi::{c_char, c_int, c_uint, c_void};
use std::ffi::{CStr, CString};
use std::sync::{Mutex, OnceLock};

use nbdkit_plugin_abi as abi;

/// The library nbdkit's plugin links.
const LIBVIRT: &str = "libvirt.so.0";

/// virDomainBlockPeek's old limit (libvirt 0.9.13): reads go in pieces
/// of at most this.
const PEEK_MAX: u32 = 1024 * 1024;

type VirConnect = *mut c_void;
type VirDomain = *mut c_void;

/// `virDomainBlockInfo`.
#[repr(C)]
#[derive(Default)]
struct BlockInfo {
    capacity: u64,
    allocation: u64,
    physical: u64,
}

/// The libvirt functions this plugin calls.
struct Lib {
    connect_open: unsafe extern "C" fn(*const c_char) -> VirConnect,
    connect_close: unsafe extern "C" fn(VirConnect) -> c_int,
    lookup_by_name: unsafe extern "C" fn(VirConnect, *const c_char) -> VirDomain,
    domain_free: unsafe extern "C" fn(VirDomain) -> c_int,
    get_block_info: unsafe extern "C" fn(VirDomain, *const c_char, *mut BlockInfo, c_uint) -> c_int,
    block_peek:
        unsafe extern "C" fn(VirDomain, *const c_char, u64, usize, *mut c_void, c_uint) -> c_int,
    last_error_message: unsafe extern "C" fn() -> *const c_char,
    _lib: libloading::Library,
}

static LIB: OnceLock<Lib> = OnceLock::new();

/// A no-op libvirt error handler: the message goes into this plugin's
/// own `nbdkit: error:` line instead of libvirt's default stderr print.
unsafe extern "C" fn quiet(_data: *mut c_void, _err: *mut c_void) {}

fn load() -> Result<Lib, String> {
    // SAFETY: loading libvirt runs its initialisers, as linking it would.
    let lib = unsafe { libloading::Library::new(LIBVIRT) }
        .map_err(|e| format!("libvirt: cannot load {LIBVIRT}: {e} (install Debian's libvirt0)"))?;
    macro_rules! sym {
        ($name:literal) => {
            // SAFETY: the symbol has the C type libvirt's header declares,
            // which is the field's type.
            *unsafe { lib.get($name) }.map_err(|e| format!("libvirt: {LIBVIRT}: {e}"))?
        };
    }
    let init: unsafe extern "C" fn() -> c_int = sym!(b"virInitialize\0");
    let set_error_func: unsafe extern "C" fn(
        *mut c_void,
        Option<unsafe extern "C" fn(*mut c_void, *mut c_void)>,
    ) = sym!(b"virSetErrorFunc\0");
    // SAFETY: plain calls into the loaded library.
    unsafe {
        if init() != 0 {
            return Err("libvirt: virInitialize failed".into());
        }
        set_error_func(core::ptr::null_mut(), Some(quiet));
    }
    Ok(Lib {
        connect_open: sym!(b"virConnectOpen\0"),
        connect_close: sym!(b"virConnectClose\0"),
        lookup_by_name: sym!(b"virDomainLookupByName\0"),
        domain_free: sym!(b"virDomainFree\0"),
        get_block_info: sym!(b"virDomainGetBlockInfo\0"),
        block_peek: sym!(b"virDomainBlockPeek\0"),
        last_error_message: sym!(b"virGetLastErrorMessage\0"),
        _lib: lib,
    })
}

impl Lib {
    /// libvirt's message for the last failure on this thread.
    fn last_error(&self) -> String {
        // SAFETY: returns a thread-local string (never NULL: "no error"
        // when there is none) valid until the next libvirt call here.
        let p = unsafe { (self.last_error_message)() };
        if p.is_null() {
            return "unknown libvirt error".into();
        }
        // SAFETY: NUL-terminated, as above.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }
}

#[derive(Default)]
struct Config {
    connect: Option<CString>,
    domain: Option<CString>,
    disk: Option<CString>,
}

static CONFIG: Mutex<Config> = Mutex::new(Config {
    connect: None,
    domain: None,
    disk: None,
});

fn config() -> std::sync::MutexGuard<'static, Config> {
    CONFIG.lock().unwrap_or_else(|e| e.into_inner())
}

unsafe extern "C" fn virt_config(key: *const c_char, value: *const c_char) -> c_int {
    // SAFETY: the server passes two NUL-terminated strings.
    let (key, value) = unsafe { (abi::str_arg(key), abi::str_arg(value)) };
    let mut c = config();
    let slot = match key.as_str() {
        "connect" => &mut c.connect,
        "domain" => &mut c.domain,
        "disk" => &mut c.disk,
        _ => {
            abi::error(&format!("unknown parameter '{key}'"));
            return -1;
        }
    };
    *slot = Some(abi::cstring(&value));
    0
}

unsafe extern "C" fn virt_config_complete() -> c_int {
    {
        let c = config();
        if c.domain.is_none() {
            abi::error("the 'domain' parameter is required");
            return -1;
        }
        if c.disk.is_none() {
            abi::error("the 'disk' parameter is required");
            return -1;
        }
    }
    abi::load_once(&LIB, load)
}

/// One connection: its own libvirt connection and domain.
struct Handle {
    conn: VirConnect,
    dom: VirDomain,
    disk: CString,
    size: u64,
}

unsafe extern "C" fn virt_open(_readonly: c_int) -> abi::H {
    let Some(lib) = LIB.get() else {
        abi::error("libvirt: the library is not loaded");
        return core::ptr::null_mut();
    };
    let (uri, domain, disk) = {
        let c = config();
        (
            c.connect.clone(),
            c.domain.clone().unwrap_or_default(),
            c.disk.clone().unwrap_or_default(),
        )
    };
    let uri_ptr = uri.as_ref().map_or(core::ptr::null(), |u| u.as_ptr());
    // SAFETY: calls into libvirt with valid NUL-terminated strings (a
    // NULL URI asks for the default connection); each object is freed
    // on the paths that leave it behind.
    unsafe {
        let conn = (lib.connect_open)(uri_ptr);
        if conn.is_null() {
            let what = uri.as_ref().map_or("the default URI".into(), |u| {
                u.to_string_lossy().into_owned()
            });
            abi::error(&format!(
                "virConnectOpen failed ({what}): {}",
                lib.last_error()
            ));
            return core::ptr::null_mut();
        }
        let dom = (lib.lookup_by_name)(conn, domain.as_ptr());
        if dom.is_null() {
            abi::error(&format!(
                "virDomainLookupByName: cannot open domain '{}': {}",
                domain.to_string_lossy(),
                lib.last_error()
            ));
            (lib.connect_close)(conn);
            return core::ptr::null_mut();
        }
        let mut info = BlockInfo::default();
        if (lib.get_block_info)(dom, disk.as_ptr(), &mut info, 0) == -1 {
            abi::error(&format!(
                "virDomainGetBlockInfo: cannot read information about disk '{}' from domain '{}': {}",
                disk.to_string_lossy(),
                domain.to_string_lossy(),
                lib.last_error()
            ));
            (lib.domain_free)(dom);
            (lib.connect_close)(conn);
            return core::ptr::null_mut();
        }
        Box::into_raw(Box::new(Handle {
            conn,
            dom,
            disk,
            size: info.physical,
        }))
        .cast()
    }
}

unsafe extern "C" fn virt_close(h: abi::H) {
    if h.is_null() {
        return;
    }
    // SAFETY: `h` came from Box::into_raw in virt_open and is closed once.
    let h = unsafe { Box::from_raw(h.cast::<Handle>()) };
    if let Some(lib) = LIB.get() {
        // SAFETY: the objects virt_open made, freed once.
        unsafe {
            (lib.domain_free)(h.dom);
            (lib.connect_close)(h.conn);
        }
    }
}

unsafe extern "C" fn virt_get_size(h: abi::H) -> i64 {
    // SAFETY: a handle from virt_open.
    let h = unsafe { &*h.cast::<Handle>() };
    i64::try_from(h.size).unwrap_or(i64::MAX)
}

/// API version 1 `pread(h, buf, count, offset)`.
unsafe extern "C" fn virt_pread(h: abi::H, buf: *mut c_void, count: u32, offset: u64) -> c_int {
    let Some(lib) = LIB.get() else {
        abi::set_error(libc::EIO);
        return -1;
    };
    // SAFETY: a handle from virt_open.
    let h = unsafe { &*h.cast::<Handle>() };
    let mut done = 0u32;
    while done < count {
        let n = (count - done).min(PEEK_MAX);
        // SAFETY: `buf` holds `count` bytes; this piece lies inside it.
        let r = unsafe {
            (lib.block_peek)(
                h.dom,
                h.disk.as_ptr(),
                offset + u64::from(done),
                n as usize,
                buf.cast::<u8>().add(done as usize).cast(),
                0,
            )
        };
        if r == -1 {
            abi::error(&format!(
                "virDomainBlockPeek: cannot read block from disk '{}': {}",
                h.disk.to_string_lossy(),
                lib.last_error()
            ));
            abi::set_error(libc::EIO);
            return -1;
        }
        done += n;
    }
    0
}

/// `virt_pread` in the ABI's untyped slot for the version 1 callbacks
/// (`_pread_v1` is the first of them).
type PreadV1 = unsafe extern "C" fn(abi::H, *mut c_void, u32, u64) -> c_int;
const PREAD_V1: unsafe extern "C" fn() = {
    let f: PreadV1 = virt_pread;
    // SAFETY: a function pointer stored as another function pointer type;
    // the server calls it back through the `_pread_v1` type it has.
    unsafe { core::mem::transmute::<PreadV1, unsafe extern "C" fn()>(f) }
};

const CONFIG_HELP: &CStr = c"connect=<URI>   (optional) libvirt connection URI\n\
domain=<DOMAIN> (required) libvirt domain name\n\
disk=<DISK>     (required) guest disk name";

static PLUGIN: abi::Registration = abi::Registration(abi::Plugin {
    api_version: 1,
    thread_model: abi::THREAD_MODEL_SERIALIZE_REQUESTS,
    name: c"libvirt".as_ptr(),
    longname: c"nbdkit libvirt plugin".as_ptr(),
    config: Some(virt_config),
    config_complete: Some(virt_config_complete),
    config_help: CONFIG_HELP.as_ptr(),
    open: Some(virt_open),
    close: Some(virt_close),
    get_size: Some(virt_get_size),
    v1_slots: [Some(PREAD_V1), None, None, None, None],
    ..abi::Plugin::EMPTY
});

/// The registration function the server calls when it loads this object.
#[no_mangle]
pub extern "C" fn plugin_init() -> *const c_void {
    PLUGIN.as_ptr()
}
