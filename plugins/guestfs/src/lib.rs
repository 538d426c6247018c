//! nbdkit's guestfs plugin (nbdkit-guestfs-plugin(1)): serve a device,
//! partition, logical volume or file from inside a libguestfs appliance.
//!
//! Parameters: `disk=DISK` and `domain=DOMAIN` (one or more, added to the
//! appliance in order; `format=FORMAT` applies to the `disk=`s after it,
//! `format=` alone goes back to auto-detection), `connect=URI` (libvirt,
//! for `domain=`), `mount=inspect|DEV[:MOUNTPOINT]` (in order),
//! `export=DEVICE|FILE` (required: `/dev/...` is a device, anything else
//! a file in the mounted file systems), `trace=N` and `debug=N`
//! (libguestfs's trace and verbose flags, logged with nbdkit's debug
//! messages).
//!
//! A shared object loaded by `nbdkit` through its C plugin ABI, declared
//! as nbdkit's is (API version 1, `serialize_connections`), so that
//! `--dump-plugin` prints nbdkit's lines. libguestfs is loaded with
//! `dlopen("libguestfs.so.0")` when the configuration is complete: the
//! build needs no libguestfs, and a machine without it gets one error
//! line naming Debian's `libguestfs0`.

use core::ffi::{c_char, c_int, c_uint, c_void};
use std::ffi::{CStr, CString};
use std::sync::{Mutex, MutexGuard, OnceLock};

use nbdkit_plugin_abi as abi;

const LIBGUESTFS: &str = "libguestfs.so.0";

type G = *mut c_void;

/// `GUESTFS_CREATE_NO_ENVIRONMENT`.
const CREATE_NO_ENVIRONMENT: c_uint = 1;
/// `GUESTFS_EVENT_APPLIANCE | GUESTFS_EVENT_LIBRARY | GUESTFS_EVENT_TRACE`.
const LOG_EVENTS: u64 = 0x10 | 0x20 | 0x40;

/// `struct guestfs_add_drive_opts_argv`: the fields this plugin sets, then
/// room for the rest (libguestfs reads only the fields whose bit is set).
#[repr(C)]
struct AddDriveOpts {
    bitmask: u64,
    readonly: c_int,
    format: *const c_char,
    _rest: [usize; 16],
}
const ADD_DRIVE_OPTS_READONLY_BITMASK: u64 = 1 << 0;
const ADD_DRIVE_OPTS_FORMAT_BITMASK: u64 = 1 << 1;

/// `struct guestfs_add_domain_argv` up to `allowuuid`, then room.
#[repr(C)]
struct AddDomainOpts {
    bitmask: u64,
    libvirturi: *const c_char,
    readonly: c_int,
    iface: *const c_char,
    live: c_int,
    allowuuid: c_int,
    _rest: [usize; 16],
}
const ADD_DOMAIN_LIBVIRTURI_BITMASK: u64 = 1 << 0;
const ADD_DOMAIN_READONLY_BITMASK: u64 = 1 << 1;
const ADD_DOMAIN_ALLOWUUID_BITMASK: u64 = 1 << 4;

type EventCallback = unsafe extern "C" fn(
    G,
    *mut c_void,
    u64,
    c_int,
    c_int,
    *const c_char,
    usize,
    *const u64,
    usize,
);

/// The libguestfs functions this plugin calls.
struct Lib {
    create_flags: unsafe extern "C" fn(c_uint) -> G,
    close: unsafe extern "C" fn(G),
    set_error_handler: unsafe extern "C" fn(G, *mut c_void, *mut c_void),
    set_trace: unsafe extern "C" fn(G, c_int) -> c_int,
    set_verbose: unsafe extern "C" fn(G, c_int) -> c_int,
    parse_environment: unsafe extern "C" fn(G) -> c_int,
    set_event_callback: unsafe extern "C" fn(G, EventCallback, u64, c_int, *mut c_void) -> c_int,
    add_drive_opts_argv: unsafe extern "C" fn(G, *const c_char, *const AddDriveOpts) -> c_int,
    add_domain_argv: unsafe extern "C" fn(G, *const c_char, *const AddDomainOpts) -> c_int,
    launch: unsafe extern "C" fn(G) -> c_int,
    mount_options: unsafe extern "C" fn(G, *const c_char, *const c_char, *const c_char) -> c_int,
    inspect_os: unsafe extern "C" fn(G) -> *mut *mut c_char,
    inspect_get_mountpoints: unsafe extern "C" fn(G, *const c_char) -> *mut *mut c_char,
    blockdev_getsize64: unsafe extern "C" fn(G, *const c_char) -> i64,
    filesize: unsafe extern "C" fn(G, *const c_char) -> i64,
    pread_device: unsafe extern "C" fn(G, *const c_char, c_int, i64, *mut usize) -> *mut c_char,
    pread: unsafe extern "C" fn(G, *const c_char, c_int, i64, *mut usize) -> *mut c_char,
    pwrite_device: unsafe extern "C" fn(G, *const c_char, *const c_char, usize, i64) -> c_int,
    pwrite: unsafe extern "C" fn(G, *const c_char, *const c_char, usize, i64) -> c_int,
    sync: unsafe extern "C" fn(G) -> c_int,
    shutdown: unsafe extern "C" fn(G) -> c_int,
    last_error: unsafe extern "C" fn(G) -> *const c_char,
    last_errno: unsafe extern "C" fn(G) -> c_int,
    _lib: libloading::Library,
}

static LIB: OnceLock<Lib> = OnceLock::new();

fn load() -> Result<Lib, String> {
    // SAFETY: loading libguestfs runs its initialisers, as linking would.
    let lib = unsafe { libloading::Library::new(LIBGUESTFS) }.map_err(|e| {
        format!("guestfs: cannot load {LIBGUESTFS}: {e} (install Debian's libguestfs0)")
    })?;
    macro_rules! sym {
        ($name:literal) => {
            // SAFETY: the symbol has the C type guestfs.h declares, which
            // is the field's type.
            *unsafe { lib.get($name) }.map_err(|e| format!("guestfs: {LIBGUESTFS}: {e}"))?
        };
    }
    Ok(Lib {
        create_flags: sym!(b"guestfs_create_flags\0"),
        close: sym!(b"guestfs_close\0"),
        set_error_handler: sym!(b"guestfs_set_error_handler\0"),
        set_trace: sym!(b"guestfs_set_trace\0"),
        set_verbose: sym!(b"guestfs_set_verbose\0"),
        parse_environment: sym!(b"guestfs_parse_environment\0"),
        set_event_callback: sym!(b"guestfs_set_event_callback\0"),
        add_drive_opts_argv: sym!(b"guestfs_add_drive_opts_argv\0"),
        add_domain_argv: sym!(b"guestfs_add_domain_argv\0"),
        launch: sym!(b"guestfs_launch\0"),
        mount_options: sym!(b"guestfs_mount_options\0"),
        inspect_os: sym!(b"guestfs_inspect_os\0"),
        inspect_get_mountpoints: sym!(b"guestfs_inspect_get_mountpoints\0"),
        blockdev_getsize64: sym!(b"guestfs_blockdev_getsize64\0"),
        filesize: sym!(b"guestfs_filesize\0"),
        pread_device: sym!(b"guestfs_pread_device\0"),
        pread: sym!(b"guestfs_pread\0"),
        pwrite_device: sym!(b"guestfs_pwrite_device\0"),
        pwrite: sym!(b"guestfs_pwrite\0"),
        sync: sym!(b"guestfs_sync\0"),
        shutdown: sym!(b"guestfs_shutdown\0"),
        last_error: sym!(b"guestfs_last_error\0"),
        last_errno: sym!(b"guestfs_last_errno\0"),
        _lib: lib,
    })
}

enum Drive {
    Disk {
        path: CString,
        format: Option<CString>,
    },
    Domain(CString),
}

enum Mount {
    Inspect,
    Fs { dev: CString, mp: CString },
}

#[derive(Default)]
struct Config {
    connect: Option<CString>,
    export: Option<CString>,
    format: Option<CString>,
    trace: c_int,
    debug: c_int,
    drives: Vec<Drive>,
    mounts: Vec<Mount>,
}

static CONFIG: Mutex<Option<Config>> = Mutex::new(None);

fn config() -> MutexGuard<'static, Option<Config>> {
    CONFIG.lock().unwrap_or_else(|e| e.into_inner())
}

unsafe extern "C" fn gfs_config(key: *const c_char, value: *const c_char) -> c_int {
    // SAFETY: the server passes two NUL-terminated strings.
    let (key, value) = unsafe { (abi::str_arg(key), abi::str_arg(value)) };
    let mut guard = config();
    let c = guard.get_or_insert_with(Config::default);
    match key.as_str() {
        "debug" | "trace" => {
            let v = abi::cstring(&value);
            // SAFETY: a NUL-terminated string; nbdkit_parse_bool reports
            // its own error first, as with nbdkit.
            let n = unsafe { abi::nbdkit_parse_bool(v.as_ptr()) };
            if n == -1 {
                // nbdkit's message (from when these were integers).
                abi::error(&format!(
                    "could not parse '{key}' option, expecting an integer"
                ));
                return -1;
            }
            if key == "debug" {
                c.debug = n;
            } else {
                c.trace = n;
            }
        }
        "connect" => c.connect = Some(abi::cstring(&value)),
        "export" => c.export = Some(abi::cstring(&value)),
        "format" => c.format = (!value.is_empty()).then(|| abi::cstring(&value)),
        "disk" => {
            let format = c.format.clone();
            c.drives.push(Drive::Disk {
                path: abi::cstring(&value),
                format,
            });
        }
        "domain" => c.drives.push(Drive::Domain(abi::cstring(&value))),
        "mount" => c.mounts.push(if value == "inspect" {
            Mount::Inspect
        } else {
            let (dev, mp) = value.split_once(':').unwrap_or((&value, "/"));
            Mount::Fs {
                dev: abi::cstring(dev),
                mp: abi::cstring(mp),
            }
        }),
        _ => {
            abi::error(&format!("unknown parameter '{key}'"));
            return -1;
        }
    }
    0
}

unsafe extern "C" fn gfs_config_complete() -> c_int {
    {
        let guard = config();
        let c = guard.as_ref();
        if !matches!(c, Some(c) if c.export.is_some()) {
            abi::error("the 'export' parameter is required");
            return -1;
        }
        if !matches!(c, Some(c) if !c.drives.is_empty()) {
            abi::error("at least one 'disk' or 'domain' parameter is required");
            return -1;
        }
    }
    abi::load_once(&LIB, load)
}

unsafe extern "C" fn gfs_unload() {
    *config() = None;
}

/// libguestfs's log and trace messages as nbdkit debug messages.
unsafe extern "C" fn log_to_nbdkit(
    _g: G,
    _opaque: *mut c_void,
    _event: u64,
    _eh: c_int,
    _flags: c_int,
    buf: *const c_char,
    len: usize,
    _array: *const u64,
    _array_len: usize,
) {
    if buf.is_null() {
        return;
    }
    // SAFETY: libguestfs passes `len` bytes at `buf` (not NUL-terminated).
    let bytes = unsafe { core::slice::from_raw_parts(buf.cast::<u8>(), len) };
    let text = String::from_utf8_lossy(bytes);
    abi::debug(text.trim_end_matches('\n'));
}

/// A NULL-terminated list of strings that libguestfs returned, freed
/// with its elements when dropped.
struct StrList(*mut *mut c_char);

impl StrList {
    fn items(&self) -> Vec<String> {
        let mut v = Vec::new();
        if self.0.is_null() {
            return v;
        }
        for i in 0.. {
            // SAFETY: the list is NULL-terminated; `i` stays before the end.
            let p = unsafe { *self.0.add(i) };
            if p.is_null() {
                break;
            }
            // SAFETY: each element is a NUL-terminated string.
            v.push(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned());
        }
        v
    }
}

impl Drop for StrList {
    fn drop(&mut self) {
        if self.0.is_null() {
            return;
        }
        // SAFETY: libguestfs allocated the list and its strings with
        // malloc; the caller owns them.
        unsafe {
            let mut i = 0;
            while !(*self.0.add(i)).is_null() {
                libc::free((*self.0.add(i)).cast());
                i += 1;
            }
            libc::free(self.0.cast());
        }
    }
}

/// One connection's libguestfs handle.
struct Handle {
    g: G,
    export: CString,
    is_device: bool,
    size: u64,
}

/// A libguestfs call failed: `context: libguestfs's message`.
fn gerror(lib: &Lib, g: G, context: &str) {
    // SAFETY: `g` is a live handle; the message is NUL-terminated and
    // valid until the next call on it.
    let p = unsafe { (lib.last_error)(g) };
    let msg = if p.is_null() {
        "unknown error".into()
    } else {
        // SAFETY: as above.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    };
    abi::error(&format!("{context}: {msg}"));
}

/// The errno of the last failure on `g` (EIO when libguestfs has none).
fn gerrno(lib: &Lib, g: G) -> c_int {
    // SAFETY: `g` is a live handle.
    match unsafe { (lib.last_errno)(g) } {
        0 => libc::EIO,
        e => e,
    }
}

/// Set up the handle as the configuration says and launch the appliance.
///
/// # Safety
/// `g` is a fresh handle from `guestfs_create_flags`.
unsafe fn set_up(lib: &Lib, g: G, c: &Config, readonly: bool) -> Result<(), ()> {
    let fail = |what: &str| {
        gerror(lib, g, what);
    };
    // SAFETY (whole block): calls on the live handle `g`, with
    // NUL-terminated strings and option structs that outlive each call.
    unsafe {
        (lib.set_error_handler)(g, core::ptr::null_mut(), core::ptr::null_mut());
        if c.trace != 0 {
            (lib.set_trace)(g, 1);
        }
        if c.debug != 0 {
            (lib.set_verbose)(g, 1);
        }
        if (lib.parse_environment)(g) == -1 {
            fail("guestfs_parse_environment");
            return Err(());
        }
        if (lib.set_event_callback)(g, log_to_nbdkit, LOG_EVENTS, 0, core::ptr::null_mut()) == -1 {
            fail("guestfs_set_event_callback");
            return Err(());
        }
        for d in &c.drives {
            match d {
                Drive::Disk { path, format } => {
                    let mut o = AddDriveOpts {
                        bitmask: ADD_DRIVE_OPTS_READONLY_BITMASK,
                        readonly: c_int::from(readonly),
                        format: core::ptr::null(),
                        _rest: [0; 16],
                    };
                    if let Some(f) = format {
                        o.bitmask |= ADD_DRIVE_OPTS_FORMAT_BITMASK;
                        o.format = f.as_ptr();
                    }
                    if (lib.add_drive_opts_argv)(g, path.as_ptr(), &o) == -1 {
                        fail(&format!("disk {}", path.to_string_lossy()));
                        return Err(());
                    }
                }
                Drive::Domain(name) => {
                    let mut o = AddDomainOpts {
                        bitmask: ADD_DOMAIN_READONLY_BITMASK | ADD_DOMAIN_ALLOWUUID_BITMASK,
                        libvirturi: core::ptr::null(),
                        readonly: c_int::from(readonly),
                        iface: core::ptr::null(),
                        live: 0,
                        allowuuid: 1,
                        _rest: [0; 16],
                    };
                    if let Some(uri) = &c.connect {
                        o.bitmask |= ADD_DOMAIN_LIBVIRTURI_BITMASK;
                        o.libvirturi = uri.as_ptr();
                    }
                    if (lib.add_domain_argv)(g, name.as_ptr(), &o) == -1 {
                        fail(&format!("domain {}", name.to_string_lossy()));
                        return Err(());
                    }
                }
            }
        }
        if (lib.launch)(g) == -1 {
            fail("guestfs_launch");
            return Err(());
        }
        let options: &CStr = if readonly { c"ro" } else { c"" };
        let opts = options.to_string_lossy();
        for m in &c.mounts {
            match m {
                Mount::Fs { dev, mp } => {
                    if (lib.mount_options)(g, options.as_ptr(), dev.as_ptr(), mp.as_ptr()) == -1 {
                        fail(&format!(
                            "mount [{opts}] {}:{}",
                            dev.to_string_lossy(),
                            mp.to_string_lossy()
                        ));
                        return Err(());
                    }
                }
                Mount::Inspect => inspect_and_mount(lib, g, options)?,
            }
        }
    }
    Ok(())
}

/// `mount=inspect`: mount the one operating system's file systems,
/// shortest mount point first.
fn inspect_and_mount(lib: &Lib, g: G, options: &CStr) -> Result<(), ()> {
    // SAFETY: a call on the live handle; the caller owns the list.
    let roots = StrList(unsafe { (lib.inspect_os)(g) });
    if roots.0.is_null() {
        gerror(lib, g, "mount=inspect: guestfs_inspect_os");
        return Err(());
    }
    let roots = roots.items();
    let root = match roots.as_slice() {
        [] => {
            abi::error("no operating system was found inside this disk image");
            return Err(());
        }
        [r] => abi::cstring(r),
        _ => {
            abi::error("multiple operating system were found.  The plugin doesn't support that.");
            return Err(());
        }
    };
    // SAFETY: as above.
    let list = StrList(unsafe { (lib.inspect_get_mountpoints)(g, root.as_ptr()) });
    if list.0.is_null() {
        gerror(lib, g, "mount=inspect: guestfs_inspect_get_mountpoints");
        return Err(());
    }
    let items = list.items();
    let mut pairs: Vec<(&String, &String)> =
        items.chunks_exact(2).map(|kv| (&kv[0], &kv[1])).collect();
    pairs.sort_by_key(|(mp, _)| mp.len());
    // Errors are ignored as long as one file system mounts.
    let mut mounted = 0;
    for (mp, dev) in pairs {
        let (mp, dev) = (abi::cstring(mp), abi::cstring(dev));
        // SAFETY: a call on the live handle with NUL-terminated strings.
        if unsafe { (lib.mount_options)(g, options.as_ptr(), dev.as_ptr(), mp.as_ptr()) } == 0 {
            mounted += 1;
        }
    }
    if mounted == 0 {
        abi::error("mount=inspect: could not mount any filesystems");
        return Err(());
    }
    Ok(())
}

unsafe extern "C" fn gfs_open(readonly: c_int) -> abi::H {
    let Some(lib) = LIB.get() else {
        abi::error("guestfs: the library is not loaded");
        return core::ptr::null_mut();
    };
    let guard = config();
    let Some(c) = guard.as_ref() else {
        return core::ptr::null_mut();
    };
    let export = c.export.clone().unwrap_or_default();
    // SAFETY: creates a handle; closed on every failure path below.
    let g = unsafe { (lib.create_flags)(CREATE_NO_ENVIRONMENT) };
    if g.is_null() {
        abi::error(&format!(
            "creating libguestfs handle: {}",
            std::io::Error::last_os_error()
        ));
        return core::ptr::null_mut();
    }
    let close = || {
        // SAFETY: the handle made above, closed once.
        unsafe { (lib.close)(g) }
    };
    // SAFETY: `g` is the fresh handle.
    if unsafe { set_up(lib, g, c, readonly != 0) }.is_err() {
        close();
        return core::ptr::null_mut();
    }
    let is_device = export.as_bytes().starts_with(b"/dev/");
    // SAFETY: calls on the live handle with a NUL-terminated name.
    let size = unsafe {
        if is_device {
            (lib.blockdev_getsize64)(g, export.as_ptr())
        } else {
            (lib.filesize)(g, export.as_ptr())
        }
    };
    if size < 0 {
        let f = if is_device {
            "guestfs_blockdev_getsize64"
        } else {
            "guestfs_filesize"
        };
        gerror(lib, g, &format!("{}: {f}", export.to_string_lossy()));
        close();
        return core::ptr::null_mut();
    }
    abi::debug(&format!(
        "guestfs: export {}, size = {size} bytes",
        export.to_string_lossy()
    ));
    Box::into_raw(Box::new(Handle {
        g,
        export,
        is_device,
        size: size as u64,
    }))
    .cast()
}

unsafe extern "C" fn gfs_close(h: abi::H) {
    if h.is_null() {
        return;
    }
    // SAFETY: `h` came from Box::into_raw in gfs_open and is closed once.
    let h = unsafe { Box::from_raw(h.cast::<Handle>()) };
    if let Some(lib) = LIB.get() {
        // SAFETY: the live handle, shut down and closed once.
        unsafe {
            if (lib.shutdown)(h.g) == -1 {
                gerror(lib, h.g, "shutdown failure: there may be unwritten data");
            }
            (lib.close)(h.g);
        }
    }
}

unsafe extern "C" fn gfs_get_size(h: abi::H) -> i64 {
    // SAFETY: a handle from gfs_open.
    let h = unsafe { &*h.cast::<Handle>() };
    i64::try_from(h.size).unwrap_or(i64::MAX)
}

/// Fail a data call: log libguestfs's message, set its errno.
fn data_error(lib: &Lib, h: &Handle, what: &str) -> c_int {
    gerror(lib, h.g, &format!("{}: {what}", h.export.to_string_lossy()));
    abi::set_error(gerrno(lib, h.g));
    -1
}

/// API version 1 `pread(h, buf, count, offset)`.
unsafe extern "C" fn gfs_pread(h: abi::H, buf: *mut c_void, count: u32, offset: u64) -> c_int {
    let Some(lib) = LIB.get() else {
        abi::set_error(libc::EIO);
        return -1;
    };
    // SAFETY: a handle from gfs_open.
    let h = unsafe { &*h.cast::<Handle>() };
    let f = if h.is_device {
        lib.pread_device
    } else {
        lib.pread
    };
    let mut done = 0usize;
    let count = count as usize;
    while done < count {
        let want = (count - done).min(c_int::MAX as usize) as c_int;
        let mut got = 0usize;
        // SAFETY: a call on the live handle; the result is malloc'd.
        let data = unsafe {
            f(
                h.g,
                h.export.as_ptr(),
                want,
                (offset + done as u64) as i64,
                &mut got,
            )
        };
        if data.is_null() {
            return data_error(lib, h, "pread");
        }
        let got = got.min(count - done);
        // SAFETY: `data` holds `got` bytes and `buf` has room for them;
        // `data` is freed once.
        unsafe {
            core::ptr::copy_nonoverlapping(data.cast::<u8>(), buf.cast::<u8>().add(done), got);
            libc::free(data.cast());
        }
        if got == 0 {
            abi::error(&format!(
                "{}: pread: unexpected end of data at offset {}",
                h.export.to_string_lossy(),
                offset + done as u64
            ));
            abi::set_error(libc::EIO);
            return -1;
        }
        done += got;
    }
    0
}

/// API version 1 `pwrite(h, buf, count, offset)`.
unsafe extern "C" fn gfs_pwrite(h: abi::H, buf: *const c_void, count: u32, offset: u64) -> c_int {
    let Some(lib) = LIB.get() else {
        abi::set_error(libc::EIO);
        return -1;
    };
    // SAFETY: a handle from gfs_open.
    let h = unsafe { &*h.cast::<Handle>() };
    let f = if h.is_device {
        lib.pwrite_device
    } else {
        lib.pwrite
    };
    let mut done = 0usize;
    let count = count as usize;
    while done < count {
        // SAFETY: a call on the live handle; `buf` holds `count` bytes.
        let r = unsafe {
            f(
                h.g,
                h.export.as_ptr(),
                buf.cast::<c_char>().add(done),
                count - done,
                (offset + done as u64) as i64,
            )
        };
        if r == -1 {
            return data_error(lib, h, "pwrite");
        }
        if r <= 0 {
            abi::error(&format!(
                "{}: pwrite: no progress at offset {}",
                h.export.to_string_lossy(),
                offset + done as u64
            ));
            abi::set_error(libc::EIO);
            return -1;
        }
        done += r as usize;
    }
    0
}

/// API version 1 `flush(h)`.
unsafe extern "C" fn gfs_flush(h: abi::H) -> c_int {
    let Some(lib) = LIB.get() else {
        abi::set_error(libc::EIO);
        return -1;
    };
    // SAFETY: a handle from gfs_open.
    let h = unsafe { &*h.cast::<Handle>() };
    // SAFETY: a call on the live handle.
    if unsafe { (lib.sync)(h.g) } == -1 {
        gerror(lib, h.g, "guestfs_sync");
        abi::set_error(gerrno(lib, h.g));
        return -1;
    }
    0
}

type PreadV1 = unsafe extern "C" fn(abi::H, *mut c_void, u32, u64) -> c_int;
type PwriteV1 = unsafe extern "C" fn(abi::H, *const c_void, u32, u64) -> c_int;
type FlushV1 = unsafe extern "C" fn(abi::H) -> c_int;

// The version 1 callbacks in the ABI's untyped slots (`_pread_v1`,
// `_pwrite_v1`, `_flush_v1`, ...). SAFETY (each): a function pointer
// stored as another function pointer type; the server calls it back
// through the type of its slot, which is the function's own.
const PREAD_V1: unsafe extern "C" fn() =
    unsafe { core::mem::transmute::<PreadV1, unsafe extern "C" fn()>(gfs_pread) };
const PWRITE_V1: unsafe extern "C" fn() =
    unsafe { core::mem::transmute::<PwriteV1, unsafe extern "C" fn()>(gfs_pwrite) };
const FLUSH_V1: unsafe extern "C" fn() =
    unsafe { core::mem::transmute::<FlushV1, unsafe extern "C" fn()>(gfs_flush) };

const CONFIG_HELP: &CStr = c"connect=<URI>       (optional) libvirt connection URI\n\
debug=on                       enable libguestfs debugging\n\
domain=<DOMAIN>                libvirt domain name\n\
disk=<DISK>                    disk name\n\
export=DEVICE|FILE  (required) export device or file\n\
format=<FORMAT>                specify the format of next disk\n\
mount=inspect|MOUNT            mount filesystems\n\
trace=on                       enable libguestfs call tracing";

static PLUGIN: abi::Registration = abi::Registration(abi::Plugin {
    api_version: 1,
    thread_model: abi::THREAD_MODEL_SERIALIZE_CONNECTIONS,
    name: c"guestfs".as_ptr(),
    longname: c"nbdkit guestfs plugin".as_ptr(),
    unload: Some(gfs_unload),
    config: Some(gfs_config),
    config_complete: Some(gfs_config_complete),
    config_help: CONFIG_HELP.as_ptr(),
    open: Some(gfs_open),
    close: Some(gfs_close),
    get_size: Some(gfs_get_size),
    v1_slots: [Some(PREAD_V1), Some(PWRITE_V1), Some(FLUSH_V1), None, None],
    ..abi::Plugin::EMPTY
});

/// The registration function the server calls when it loads this object.
#[no_mangle]
pub extern "C" fn plugin_init() -> *const c_void {
    PLUGIN.as_ptr()
}
