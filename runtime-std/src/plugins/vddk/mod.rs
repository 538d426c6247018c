//! `vddk`: serve a VMDK file, local or on a VMware ESXi/vCenter server,
//! through VMware's proprietary VDDK library (`libvixDiskLib.so.N`).
//!
//! Nothing of VDDK is linked at build time: the library is opened with
//! `dlopen` when the plugin gets ready (`libdir=` first, as
//! `lib64/libvixDiskLib.so.N` or `libvixDiskLib.so.N` for N = 9, 8, 7, 6,
//! then the dynamic linker's usual paths), so the server builds and runs
//! on machines without it.
//!
//! Parameters follow nbdkit-vddk-plugin(1): `[file=]FILENAME`,
//! `libdir=`, `config=`, `server=`, `user=`, `password=` (also `-`,
//! `+FILE`, `-FD`), `cookie=`, `thumbprint=`, `port=`, `nfchostport=`,
//! `vm=moref=ID`, `snapshot=`, `transports=`, `compression=`,
//! `single-link=`, `unbuffered=`, `create=` with `create-size=`,
//! `create-type=`, `create-adapter-type=`, `create-hwversion=`, and the
//! ignored `vimapiver=`. Debug flags: `-D vddk.diskinfo=1`,
//! `-D vddk.extents=1`, `-D vddk.datapath=0`, `-D vddk.stats=1`.
//!
//! Unlike nbdkit, the plugin does not re-execute the server with
//! `LD_LIBRARY_PATH` set to the library's directory: a VDDK whose private
//! libraries are not found beside it needs `LD_LIBRARY_PATH` set by the
//! caller.

mod ffi;

use core::ffi::{c_char, c_void};
use std::ffi::{CStr, CString};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use nbdkit_core::backend::{
    BlockSize, Callbacks, Error, Extents, Flags, Handle, OpenArgs, Plugin, Result, Support,
    ThreadModel,
};
use nbdkit_core::errno::Errno;

use crate::plugins::realpath::realpath;
use ffi::{Library, LoadError, F, FUNCTIONS, SECTOR_SIZE, VIX_OK};

/// The libdir used without `libdir=` (nbdkit's compiled-in
/// `$libdir/vmware-vix-disklib`).
const DEFAULT_LIBDIR: &str = if cfg!(all(target_os = "linux", target_arch = "x86_64")) {
    "/usr/lib/x86_64-linux-gnu/vmware-vix-disklib"
} else {
    "/usr/local/lib/vmware-vix-disklib"
};

/// The VDDK API version the plugin asks `InitEx` for.
const VDDK_MAJOR: u32 = 6;
const VDDK_MINOR: u32 = 5;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Compression {
    #[default]
    None,
    Zlib,
    Fastlz,
    Skipz,
}

/// Everything `config` collected, as C strings for VDDK.
#[derive(Default)]
struct Config {
    compression: Compression,
    config: Option<CString>,
    cookie: Option<CString>,
    file: Option<CString>,
    libdir: Option<PathBuf>,
    nfc_host_port: u16,
    password: Option<CString>,
    port: u16,
    server: Option<CString>,
    single_link: bool,
    snapshot: Option<CString>,
    thumbprint: Option<CString>,
    transports: Option<CString>,
    unbuffered: bool,
    user: Option<CString>,
    vm: Option<CString>,
    create: bool,
    create_size: Option<u64>,
    create_type: i32,
    create_adapter_type: i32,
    create_hwversion: u16,
    is_remote: bool,
}

/// The vddk plugin.
pub struct Vddk {
    cfg: Config,
    lib: OnceLock<Library>,
    init_called: AtomicBool,
    /// Set once the first connection created the disk (`create=true`).
    created: AtomicBool,
    /// Serialises Open and Close, as VDDK's thread rules require.
    open_close: Mutex<()>,
}

impl Default for Vddk {
    fn default() -> Self {
        Vddk {
            cfg: Config {
                create_type: 1,         // monolithic-sparse
                create_adapter_type: 2, // scsi-buslogic
                create_hwversion: 4,    // workstation5
                ..Config::default()
            },
            lib: OnceLock::new(),
            init_called: AtomicBool::new(false),
            created: AtomicBool::new(false),
            open_close: Mutex::new(()),
        }
    }
}

fn cstring(key: &str, value: &str) -> Result<CString> {
    CString::new(value).map_err(|_| Error::config(format!("{key}: value contains a NUL byte")))
}

fn parse_bool(value: &str) -> Result<bool> {
    nbdkit_core::size::parse_bool(value)
        .ok_or_else(|| Error::config(format!("could not decipher boolean ({value})")))
}

fn parse_u16(key: &str, value: &str) -> Result<u16> {
    let v = value.trim_start();
    let n: i64 = v
        .parse()
        .map_err(|_| Error::config(format!("{key}: could not parse number: \"{value}\"")))?;
    u16::try_from(n).map_err(|_| {
        Error::config(format!(
            "{key}: could not parse number: \"{value}\": Numerical result out of range"
        ))
    })
}

/// `create-type=` names and VDDK's `VixDiskLibDiskType` values.
const DISK_TYPES: &[(&str, i32)] = &[
    ("monolithic-sparse", 1),
    ("monolithic-flat", 2),
    ("split-sparse", 3),
    ("split-flat", 4),
    ("vmfs-flat", 5),
    ("stream-optimized", 6),
    ("vmfs-thin", 7),
    ("vmfs-sparse", 8),
];

/// `create-adapter-type=` names and `VixDiskLibAdapterType` values.
const ADAPTER_TYPES: &[(&str, i32)] = &[("ide", 1), ("scsi-buslogic", 2), ("scsi-lsilogic", 3)];

/// `create-hwversion=` names and `VIXDISKLIB_HWVERSION_*` values.
const HW_VERSIONS: &[(&str, u16)] = &[
    ("workstation4", 3),
    ("workstation5", 4),
    ("workstation6", 6),
    ("esx30", 4),
    ("esx4x", 7),
    ("esx50", 8),
    ("esx51", 9),
    ("esx55", 10),
    ("esx60", 11),
    ("esx65", 13),
];

impl Config {
    fn set(&mut self, key: &str, value: &str) -> Result<()> {
        match key {
            "compression" => {
                self.compression = match value {
                    "none" => Compression::None,
                    "zlib" => Compression::Zlib,
                    "fastlz" => Compression::Fastlz,
                    "skipz" => Compression::Skipz,
                    _ => return Err(Error::config(format!("unknown compression type: {value}"))),
                }
            }
            "config" => self.config = Some(path_cstring(realpath(value)?)?),
            "cookie" => self.cookie = Some(cstring(key, value)?),
            "create" => self.create = parse_bool(value)?,
            "create-adapter-type" => {
                self.create_adapter_type = lookup(ADAPTER_TYPES, value)
                    .ok_or_else(|| Error::config(format!("unknown create-adapter-type: {value}")))?
            }
            "create-hwversion" => {
                self.create_hwversion = match lookup(HW_VERSIONS, value) {
                    Some(v) => v,
                    None => value
                        .parse()
                        .map_err(|_| Error::config(format!("unknown create-hwversion: {value}")))?,
                }
            }
            "create-size" => {
                let size = nbdkit_core::plugins::size_param(value)?;
                if size == 0 || size % SECTOR_SIZE != 0 {
                    return Err(Error::config(format!(
                        "create-size must be greater than zero and a multiple of {SECTOR_SIZE}"
                    )));
                }
                self.create_size = Some(size);
            }
            "create-type" => {
                self.create_type = lookup(DISK_TYPES, value)
                    .ok_or_else(|| Error::config(format!("unknown create-type: {value}")))?
            }
            // Not made absolute: on a server this names a datastore file.
            "file" => self.file = Some(cstring(key, value)?),
            "libdir" => self.libdir = Some(realpath(value)?),
            "nfchostport" => self.nfc_host_port = parse_u16("nfchostport", value)?,
            // nbdkit's switch for its re-execution, which this plugin never does.
            "noreexec" => {
                parse_bool(value)?;
            }
            "password" => {
                let p = crate::filters::luks::read_password(value)?;
                self.password = Some(
                    CString::new(p).map_err(|_| Error::config("password: contains a NUL byte"))?,
                );
            }
            "port" => self.port = parse_u16("port", value)?,
            "server" => self.server = Some(cstring(key, value)?),
            "single-link" => self.single_link = parse_bool(value)?,
            "snapshot" => self.snapshot = Some(cstring(key, value)?),
            "thumbprint" => self.thumbprint = Some(cstring(key, value)?),
            "transports" => self.transports = Some(cstring(key, value)?),
            "unbuffered" => self.unbuffered = parse_bool(value)?,
            "user" => self.user = Some(cstring(key, value)?),
            "vimapiver" => {} // ignored, as in nbdkit
            "vm" => self.vm = Some(cstring(key, value)?),
            _ => return Err(Error::config(format!("unknown parameter '{key}'"))),
        }
        Ok(())
    }

    fn complete(&mut self) -> Result<()> {
        if self.file.is_none() {
            return Err(Error::config(
                "you must supply the file=<FILENAME> parameter after the plugin name on the command line",
            ));
        }
        self.is_remote = self.vm.is_some()
            || self.server.is_some()
            || self.user.is_some()
            || self.password.is_some()
            || self.cookie.is_some()
            || self.thumbprint.is_some()
            || self.port != 0
            || self.nfc_host_port != 0;
        if self.is_remote {
            for (missing, name) in [
                (self.server.is_none(), "server"),
                (self.user.is_none(), "user"),
                (self.password.is_none(), "password"),
                (self.vm.is_none(), "vm"),
            ] {
                if missing {
                    return Err(Error::config(format!(
                        "remote connection requested, missing parameter: {name}"
                    )));
                }
            }
        }
        if self.create {
            if self.is_remote {
                return Err(Error::config(
                    "create=true can only be used to create local VMDK files",
                ));
            }
            if self.create_size.is_none() {
                return Err(Error::config(
                    "if using create=true you must specify the size using the create-size parameter",
                ));
            }
        }
        Ok(())
    }

    fn libdir(&self) -> PathBuf {
        self.libdir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_LIBDIR))
    }

    fn open_flags(&self, readonly: bool) -> u32 {
        let mut flags = 0;
        if readonly {
            flags |= ffi::FLAG_OPEN_READ_ONLY;
        }
        if self.single_link {
            flags |= ffi::FLAG_OPEN_SINGLE_LINK;
        }
        if self.unbuffered {
            flags |= ffi::FLAG_OPEN_UNBUFFERED;
        }
        flags |= match self.compression {
            Compression::None => 0,
            Compression::Zlib => ffi::FLAG_OPEN_COMPRESSION_ZLIB,
            Compression::Fastlz => ffi::FLAG_OPEN_COMPRESSION_FASTLZ,
            Compression::Skipz => ffi::FLAG_OPEN_COMPRESSION_SKIPZ,
        };
        flags
    }
}

fn lookup<T: Copy>(table: &[(&str, T)], name: &str) -> Option<T> {
    table.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
}

fn path_cstring(p: PathBuf) -> Result<CString> {
    use std::os::unix::ffi::OsStringExt;
    CString::new(p.into_os_string().into_vec())
        .map_err(|_| Error::config("path contains a NUL byte"))
}

fn opt_ptr(s: &Option<CString>) -> *const c_char {
    s.as_ref().map_or(core::ptr::null(), |s| s.as_ptr())
}

fn opt_str(s: &Option<CString>) -> String {
    s.as_ref()
        .map_or_else(|| "NULL".into(), |s| s.to_string_lossy().into_owned())
}

/// Per-function statistics for `-D vddk.stats=1`.
struct Stat {
    nanos: AtomicU64,
    calls: AtomicU64,
    bytes: AtomicU64,
}

static STATS: [Stat; FUNCTIONS.len()] = {
    #[allow(clippy::declare_interior_mutable_const)] // only copied into STATS
    const Z: Stat = Stat {
        nanos: AtomicU64::new(0),
        calls: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
    };
    [Z; FUNCTIONS.len()]
};

/// Whether `f` is a data-path call (its debug line is silenced by
/// `-D vddk.datapath=0`).
fn is_datapath(f: F) -> bool {
    matches!(
        f,
        F::Read | F::Write | F::Flush | F::QueryAllocatedBlocks | F::FreeBlockList
    )
}

fn debug(args: core::fmt::Arguments<'_>) {
    nbdkit_core::debug::debug(args);
}

/// Run one VDDK call: its debug line (unless a data-path call under
/// `-D vddk.datapath=0`), then its time and bytes for the statistics.
fn call<R>(f: F, args: impl FnOnce() -> String, bytes: u64, body: impl FnOnce() -> R) -> R {
    if nbdkit_core::debug::verbose()
        && (!is_datapath(f) || nbdkit_core::debug::value("vddk", "datapath").unwrap_or(1) != 0)
    {
        debug(format_args!("{}: {}", FUNCTIONS[f as usize].0, args()));
    }
    let start = Instant::now();
    let r = body();
    let st = &STATS[f as usize];
    st.nanos
        .fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
    st.calls.fetch_add(1, Ordering::Relaxed);
    st.bytes.fetch_add(bytes, Ordering::Relaxed);
    r
}

fn display_stats() {
    let mut rows: Vec<(&str, u64, u64, u64)> = FUNCTIONS
        .iter()
        .zip(STATS.iter())
        .map(|((name, _), s)| {
            (
                name.strip_prefix("VixDiskLib_").unwrap_or(name),
                s.nanos.load(Ordering::Relaxed) / 1000,
                s.calls.load(Ordering::Relaxed),
                s.bytes.load(Ordering::Relaxed),
            )
        })
        .filter(|r| r.2 > 0)
        .collect();
    rows.sort_by_key(|r| core::cmp::Reverse(r.1));
    debug(format_args!("VDDK function stats (-D vddk.stats=1):"));
    debug(format_args!(
        "{:<24}  {:>15} {:>5} {:>15}",
        "VixDiskLib_...", "µs", "calls", "bytes"
    ));
    for (name, us, calls, bytes) in rows {
        if bytes > 0 {
            debug(format_args!("  {name:<22} {us:>15} {calls:>5} {bytes:>15}"));
        } else {
            debug(format_args!("  {name:<22} {us:>15} {calls:>5}"));
        }
    }
}

thread_local! {
    /// Set around calls whose failure is expected (the extents probe):
    /// VDDK's error messages are dropped meanwhile.
    static SUPPRESS_ERRORS: core::cell::Cell<bool> = const { core::cell::Cell::new(false) };
}

extern "C" {
    fn vasprintf(strp: *mut *mut c_char, fmt: *const c_char, ap: *mut c_void) -> core::ffi::c_int;
}

/// Format a VDDK log message (`fmt`, `va_list`).
///
/// # Safety
/// `fmt` and `ap` must be the arguments VDDK passed to its log function.
unsafe fn format_message(fmt: *const c_char, ap: *mut c_void) -> String {
    let mut out: *mut c_char = core::ptr::null_mut();
    // SAFETY: vasprintf consumes the va_list once and allocates the result.
    let n = unsafe { vasprintf(&mut out, fmt, ap) };
    if n < 0 || out.is_null() {
        // SAFETY: fmt is a C string from VDDK.
        let f = unsafe { CStr::from_ptr(fmt) }.to_string_lossy();
        return format!("lost message: {f}");
    }
    // SAFETY: vasprintf returned a NUL-terminated string it allocated.
    let s = unsafe { CStr::from_ptr(out) }
        .to_string_lossy()
        .into_owned();
    // SAFETY: allocated by vasprintf with malloc.
    unsafe { libc::free(out.cast()) };
    s.strip_suffix('\n').map(str::to_string).unwrap_or(s)
}

unsafe extern "C" fn log_function(fmt: *const c_char, ap: *mut c_void) {
    // SAFETY: called by VDDK with its format and arguments.
    let s = unsafe { format_message(fmt, ap) };
    debug(format_args!("{s}"));
}

unsafe extern "C" fn error_function(fmt: *const c_char, ap: *mut c_void) {
    if SUPPRESS_ERRORS.with(|c| c.get()) {
        return;
    }
    // SAFETY: called by VDDK with its format and arguments.
    let s = unsafe { format_message(fmt, ap) };
    // VDDK 7's "phone home" noise is only worth a debug line.
    if s.contains("Get CEIP status failed") {
        debug(format_args!("{s}"));
    } else {
        nbdkit_core::debug::error(format_args!("{s}"));
    }
}

impl Vddk {
    fn lib(&self) -> &Library {
        self.lib.get().expect("VDDK is loaded in get_ready")
    }

    fn load(&self) -> core::result::Result<&Library, LoadError> {
        if let Some(l) = self.lib.get() {
            return Ok(l);
        }
        let l = Library::load(&self.cfg.libdir())?;
        Ok(self.lib.get_or_init(|| l))
    }

    /// VDDK's text for `err`, prefixed by `what`.
    fn vix_error(&self, err: ffi::VixError, what: &str) -> Error {
        let lib = self.lib();
        // SAFETY: GetErrorText returns a string that FreeErrorText frees.
        let text = unsafe {
            let p = lib.get_error_text(err, core::ptr::null());
            if p.is_null() {
                format!("error {err}")
            } else {
                let s = CStr::from_ptr(p).to_string_lossy().into_owned();
                lib.free_error_text(p);
                s
            }
        };
        Error::msg(Errno::EIO, format!("{what}: {}", text.trim_end()))
    }
}

impl Plugin for Vddk {
    fn name(&self) -> &'static str {
        "vddk"
    }
    fn longname(&self) -> Option<&'static str> {
        Some("VMware VDDK plugin")
    }
    fn config_help(&self) -> &'static str {
        "[file=]<FILENAME>   (required) The filename (eg. VMDK file) to serve.\n\
         Many optional parameters are supported, see nbdkit-vddk-plugin(1)."
    }
    fn magic_config_key(&self) -> Option<&'static str> {
        Some("file")
    }
    fn callbacks(&self) -> Callbacks {
        Callbacks::LONGNAME
            | Callbacks::VERSION
            | Callbacks::UNLOAD
            | Callbacks::DUMP_PLUGIN
            | Callbacks::CONFIG
            | Callbacks::CONFIG_COMPLETE
            | Callbacks::CONFIG_HELP
            | Callbacks::GET_READY
            | Callbacks::AFTER_FORK
            | Callbacks::OPEN
            | Callbacks::CLOSE
            | Callbacks::GET_SIZE
            | Callbacks::BLOCK_SIZE
            | Callbacks::CAN_FLUSH
            | Callbacks::CAN_EXTENTS
            | Callbacks::CAN_FUA
            | Callbacks::PREAD
            | Callbacks::PWRITE
            | Callbacks::FLUSH
            | Callbacks::EXTENTS
    }
    fn debug_flags(&self) -> &'static [&'static str] {
        &["diskinfo", "extents", "datapath", "stats"]
    }
    fn max_thread_model(&self) -> ThreadModel {
        ThreadModel::SerializeRequests
    }
    fn dump_plugin(&self) -> Vec<(String, String)> {
        let mut out = vec![
            (
                "vddk_default_libdir".to_string(),
                DEFAULT_LIBDIR.to_string(),
            ),
            ("vddk_has_nfchostport".into(), "1".into()),
        ];
        // As nbdkit: a library that cannot be loaded is left out silently.
        if let Ok(lib) = self.load() {
            out.push(("vddk_library_version".into(), lib.version.to_string()));
            out.push(("vddk_dll".into(), lib.path.display().to_string()));
            for name in lib.found() {
                out.push((name.to_string(), "1".into()));
            }
        }
        out
    }
    fn config(&mut self, key: &str, value: &str) -> Result<()> {
        self.cfg.set(key, value)
    }
    fn config_complete(&mut self) -> Result<()> {
        self.cfg.complete()
    }
    fn get_ready(&self) -> Result<()> {
        let lib = match self.load() {
            Ok(l) => l,
            Err(LoadError::NotFound(msg)) => {
                return Err(Error::config(format!(
                "cannot load VMware VDDK (libvixDiskLib.so.N, proprietary, downloaded separately \
                     from VMware): not in {}/[lib64/] nor on the library path: {msg}; \
                     set libdir=/path/to/vmware-vix-disklib-distrib \
                     (see nbdkit-vddk-plugin(1) section \"LIBRARY LOCATION\")",
                self.cfg.libdir().display()
            )))
            }
            Err(LoadError::Missing(name, msg)) => {
                return Err(Error::config(format!(
                    "required VDDK symbol \"{name}\" is missing: {msg}"
                )))
            }
        };
        if !lib.has(F::Wait) {
            return Err(Error::config(
                "VDDK version must be >= 6.5. See nbdkit-vddk-plugin(1) man page section \"SUPPORTED VERSIONS OF VDDK\".",
            ));
        }
        Ok(())
    }
    fn after_fork(&self) -> Result<()> {
        // VDDK starts threads in InitEx, so it runs after the fork.
        let lib = self.lib();
        let libdir = path_cstring(self.cfg.libdir())?;
        let err = call(
            F::InitEx,
            || {
                format!(
                    "{VDDK_MAJOR}, {VDDK_MINOR}, &debug_fn, &error_fn, &error_fn, {}, {}",
                    libdir.to_string_lossy(),
                    opt_str(&self.cfg.config)
                )
            },
            0,
            || {
                // SAFETY: the strings outlive the call; the log functions
                // have VDDK's signature.
                unsafe {
                    lib.init_ex(
                        VDDK_MAJOR,
                        VDDK_MINOR,
                        Some(log_function),
                        Some(error_function),
                        Some(error_function),
                        libdir.as_ptr(),
                        opt_ptr(&self.cfg.config),
                    )
                }
            },
        );
        if err != VIX_OK {
            return Err(self.vix_error(err, "VixDiskLib_InitEx"));
        }
        self.init_called.store(true, Ordering::SeqCst);
        Ok(())
    }
    fn cleanup(&self) {
        if self.init_called.swap(false, Ordering::SeqCst) {
            let lib = self.lib();
            // SAFETY: InitEx succeeded and every handle is closed.
            call(F::Exit, String::new, 0, || unsafe { lib.exit() });
        }
        if nbdkit_core::debug::enabled("vddk", "stats") {
            display_stats();
        }
    }
    fn open(&self, args: &OpenArgs<'_>) -> Result<Box<dyn Handle>> {
        let _guard = self.open_close.lock().unwrap_or_else(|e| e.into_inner());
        let lib = self.lib();
        let cfg = &self.cfg;
        let params = ParamsBox::new(lib);
        if params.ptr.is_null() {
            return Err(Error::msg(
                Errno::ENOMEM,
                "allocate VixDiskLibConnectParams: Cannot allocate memory",
            ));
        }
        if cfg.is_remote {
            // SAFETY: params points to a zeroed VixDiskLibConnectParams;
            // the strings live as long as the plugin.
            let p = unsafe { &mut *params.ptr };
            p.vmx_spec = opt_ptr(&cfg.vm);
            p.server_name = opt_ptr(&cfg.server);
            if cfg.cookie.is_none() {
                p.cred_type = ffi::CRED_UID;
                p.creds = [
                    opt_ptr(&cfg.user),
                    opt_ptr(&cfg.password),
                    core::ptr::null(),
                ];
            } else {
                p.cred_type = ffi::CRED_SESSIONID;
                p.creds = [
                    opt_ptr(&cfg.cookie),
                    opt_ptr(&cfg.user),
                    opt_ptr(&cfg.password),
                ];
            }
            p.thumb_print = opt_ptr(&cfg.thumbprint);
            p.port = cfg.port.into();
            p.nfc_host_port = cfg.nfc_host_port.into();
            p.spec_type = ffi::SPEC_VMX;
        }
        let mut connection: ffi::Connection = core::ptr::null_mut();
        let err = call(
            F::ConnectEx,
            || {
                format!(
                    "h->params, {}, {}, {}, &connection",
                    args.readonly as i32,
                    opt_str(&cfg.snapshot),
                    opt_str(&cfg.transports)
                )
            },
            0,
            || {
                // SAFETY: params is valid; the strings outlive the call.
                unsafe {
                    lib.connect_ex(
                        params.ptr,
                        args.readonly as c_char,
                        opt_ptr(&cfg.snapshot),
                        opt_ptr(&cfg.transports),
                        &mut connection,
                    )
                }
            },
        );
        if err != VIX_OK {
            return Err(self.vix_error(err, "VixDiskLib_ConnectEx"));
        }
        let conn = ConnGuard {
            lib,
            conn: connection,
        };
        let file = cfg.file.as_ref().expect("checked in config_complete");
        if cfg.create && !self.created.load(Ordering::SeqCst) {
            let size = cfg.create_size.expect("checked in config_complete");
            let cp = ffi::CreateParams {
                disk_type: cfg.create_type,
                adapter_type: cfg.create_adapter_type,
                hw_version: cfg.create_hwversion,
                capacity: size / SECTOR_SIZE,
                logical_sector_size: 0,
                physical_sector_size: 0,
            };
            let err = call(
                F::Create,
                || {
                    format!(
                        "connection, {}, &create_params, NULL, NULL",
                        file.to_string_lossy()
                    )
                },
                0,
                // SAFETY: the connection is open; cp and file outlive the call.
                || unsafe {
                    lib.create(
                        conn.conn,
                        file.as_ptr(),
                        &cp,
                        core::ptr::null(),
                        core::ptr::null_mut(),
                    )
                },
            );
            if err != VIX_OK {
                return Err(self.vix_error(
                    err,
                    &format!("VixDiskLib_Create: {}", file.to_string_lossy()),
                ));
            }
            self.created.store(true, Ordering::SeqCst);
        }
        let flags = cfg.open_flags(args.readonly);
        let mut handle: ffi::DiskHandle = core::ptr::null_mut();
        let err = call(
            F::Open,
            || format!("connection, {}, {flags}, &handle", file.to_string_lossy()),
            0,
            // SAFETY: the connection is open; file outlives the call.
            || unsafe { lib.open(conn.conn, file.as_ptr(), flags, &mut handle) },
        );
        if err != VIX_OK {
            return Err(
                self.vix_error(err, &format!("VixDiskLib_Open: {}", file.to_string_lossy()))
            );
        }
        // SAFETY: the disk handle is open.
        let mode = call(
            F::GetTransportMode,
            || "handle".into(),
            0,
            || unsafe { lib.get_transport_mode(handle) },
        );
        let mode = if mode.is_null() {
            "NULL".into()
        } else {
            // SAFETY: VDDK returns a static string.
            unsafe { CStr::from_ptr(mode) }
                .to_string_lossy()
                .into_owned()
        };
        debug(format_args!("transport mode: {mode}"));
        let connection = conn.conn;
        core::mem::forget(conn);
        Ok(Box::new(VddkHandle {
            plugin: self,
            params,
            connection,
            handle,
        }))
    }
}

/// Connect parameters from `AllocateConnectParams` (freed with
/// `FreeConnectParams`) or, for VDDK without it, our own zeroed memory.
struct ParamsBox {
    lib: *const Library,
    ptr: *mut ffi::ConnectParams,
    ours: bool,
}

impl ParamsBox {
    fn new(lib: &Library) -> ParamsBox {
        if lib.has(F::AllocateConnectParams) {
            // SAFETY: no arguments; returns zeroed parameters or NULL.
            let ptr = call(F::AllocateConnectParams, String::new, 0, || unsafe {
                lib.allocate_connect_params()
            });
            ParamsBox {
                lib,
                ptr,
                ours: false,
            }
        } else {
            // SAFETY: every field of ConnectParams is valid as zero.
            let b: Box<ffi::ConnectParams> = Box::new(unsafe { core::mem::zeroed() });
            ParamsBox {
                lib,
                ptr: Box::into_raw(b),
                ours: true,
            }
        }
    }
}

impl Drop for ParamsBox {
    fn drop(&mut self) {
        if self.ptr.is_null() {
            return;
        }
        if self.ours {
            // SAFETY: made by Box::into_raw in new.
            drop(unsafe { Box::from_raw(self.ptr) });
        } else {
            // SAFETY: the library lives in the plugin, which outlives
            // every handle; ptr came from AllocateConnectParams.
            let lib = unsafe { &*self.lib };
            call(
                F::FreeConnectParams,
                || "params".into(),
                0,
                || unsafe { lib.free_connect_params(self.ptr) },
            );
        }
    }
}

/// Disconnects on an error path of `open`.
struct ConnGuard<'a> {
    lib: &'a Library,
    conn: ffi::Connection,
}

impl Drop for ConnGuard<'_> {
    fn drop(&mut self) {
        // SAFETY: the connection is open and nothing uses it after this.
        call(
            F::Disconnect,
            || "connection".into(),
            0,
            || unsafe { self.lib.disconnect(self.conn) },
        );
    }
}

struct VddkHandle {
    plugin: *const Vddk,
    params: ParamsBox,
    connection: ffi::Connection,
    handle: ffi::DiskHandle,
}

// SAFETY: VDDK handles may be used from any thread as long as calls on
// one handle do not overlap, which the serialize_requests model ensures;
// the plugin outlives every handle.
unsafe impl Send for VddkHandle {}
// SAFETY: as above.
unsafe impl Sync for VddkHandle {}

impl VddkHandle {
    fn plugin(&self) -> &Vddk {
        // SAFETY: the plugin outlives its handles.
        unsafe { &*self.plugin }
    }
    fn lib(&self) -> &Library {
        self.plugin().lib()
    }

    fn check_aligned(what: &str, count: u64, offset: u64) -> Result<()> {
        if offset % SECTOR_SIZE != 0 || count % SECTOR_SIZE != 0 {
            return Err(Error::msg(
                Errno::EINVAL,
                format!("{what} is not aligned to sectors"),
            ));
        }
        Ok(())
    }

    fn add_extent(
        &self,
        extents: &mut Extents,
        position: &mut u64,
        next: u64,
        hole: bool,
    ) -> Result<()> {
        if *position >= next {
            return Ok(());
        }
        let mut kind = 0;
        if hole {
            kind = nbdkit_core::wire::consts::STATE_HOLE;
            // A single link may be backed by a parent: its holes are not
            // known to read as zero.
            if !self.plugin().cfg.single_link {
                kind |= nbdkit_core::wire::consts::STATE_ZERO;
            }
        }
        if nbdkit_core::debug::enabled("vddk", "extents") {
            debug(format_args!(
                "adding extent type {} at [{}...{}]",
                if hole { "hole" } else { "allocated data" },
                *position,
                next - 1
            ));
        }
        extents.add(*position, next - *position, kind)?;
        *position = next;
        Ok(())
    }
}

impl Drop for VddkHandle {
    fn drop(&mut self) {
        let plugin = self.plugin();
        let _guard = plugin.open_close.lock().unwrap_or_else(|e| e.into_inner());
        let lib = plugin.lib();
        // SAFETY: the handle and connection are open and unused after this.
        call(
            F::Close,
            || "handle".into(),
            0,
            || unsafe { lib.close(self.handle) },
        );
        call(
            F::Disconnect,
            || "connection".into(),
            0,
            || unsafe { lib.disconnect(self.connection) },
        );
        let _ = &self.params; // freed after the disconnect
    }
}

impl Handle for VddkHandle {
    fn get_size(&self) -> Result<u64> {
        let lib = self.lib();
        let mut info: *mut ffi::Info = core::ptr::null_mut();
        // SAFETY: the handle is open.
        let err = call(
            F::GetInfo,
            || "handle, &info".into(),
            0,
            || unsafe { lib.get_info(self.handle, &mut info) },
        );
        if err != VIX_OK || info.is_null() {
            return Err(self.plugin().vix_error(err, "VixDiskLib_GetInfo"));
        }
        // SAFETY: GetInfo succeeded, so info points to its structure.
        let i = unsafe { &*info };
        let size = i.capacity.saturating_mul(SECTOR_SIZE);
        if nbdkit_core::debug::enabled("vddk", "diskinfo") {
            let cstr = |p: *const c_char| {
                if p.is_null() {
                    "NULL".to_string()
                } else {
                    // SAFETY: VDDK's NUL-terminated strings.
                    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
                }
            };
            debug(format_args!(
                "disk info: capacity: {} sectors ({size} bytes)",
                i.capacity
            ));
            debug(format_args!(
                "disk info: biosGeo: C:{} H:{} S:{}",
                i.bios_geo.cylinders, i.bios_geo.heads, i.bios_geo.sectors
            ));
            debug(format_args!(
                "disk info: physGeo: C:{} H:{} S:{}",
                i.phys_geo.cylinders, i.phys_geo.heads, i.phys_geo.sectors
            ));
            debug(format_args!("disk info: adapter type: {}", i.adapter_type));
            debug(format_args!("disk info: num links: {}", i.num_links));
            debug(format_args!(
                "disk info: parent filename hint: {}",
                cstr(i.parent_file_name_hint)
            ));
            debug(format_args!("disk info: uuid: {}", cstr(i.uuid)));
            if lib.version >= 7 {
                debug(format_args!(
                    "disk info: sector size: logical {} physical {}",
                    i.logical_sector_size, i.physical_sector_size
                ));
            }
        }
        // SAFETY: info came from GetInfo.
        call(
            F::FreeInfo,
            || "info".into(),
            0,
            || unsafe { lib.free_info(info) },
        );
        Ok(size)
    }

    fn block_size(&self) -> Result<Option<BlockSize>> {
        // VDDK reads and writes whole sectors only.
        Ok(Some(BlockSize {
            minimum: SECTOR_SIZE as u32,
            preferred: SECTOR_SIZE as u32,
            maximum: 0xffff_ffff,
        }))
    }

    fn can_flush(&self) -> Result<bool> {
        Ok(self.lib().has(F::Flush))
    }

    fn can_fua(&self) -> Result<Support> {
        Ok(if self.lib().has(F::Flush) {
            Support::Native
        } else {
            Support::None
        })
    }

    fn can_extents(&self) -> Result<bool> {
        let lib = self.lib();
        if !lib.has(F::QueryAllocatedBlocks) || !lib.has(F::FreeBlockList) {
            debug(format_args!(
                "can_extents: VixDiskLib_QueryAllocatedBlocks == NULL, probably this is VDDK < 6.7"
            ));
            return Ok(false);
        }
        // The call exists but often does not work: try it once, with
        // VDDK's error messages suppressed.
        let mut list: *mut ffi::BlockList = core::ptr::null_mut();
        SUPPRESS_ERRORS.with(|c| c.set(true));
        let chunk = ffi::MIN_CHUNK_SIZE;
        let err = call(
            F::QueryAllocatedBlocks,
            || format!("handle, 0, {chunk} sectors, {chunk} sectors"),
            0,
            // SAFETY: the handle is open.
            || unsafe { lib.query_allocated_blocks(self.handle, 0, chunk, chunk, &mut list) },
        );
        SUPPRESS_ERRORS.with(|c| c.set(false));
        if err == VIX_OK {
            // SAFETY: list came from QueryAllocatedBlocks.
            call(
                F::FreeBlockList,
                || "block_list".into(),
                0,
                || unsafe { lib.free_block_list(list) },
            );
            return Ok(true);
        }
        let e = self.plugin().vix_error(err, "original error");
        debug(format_args!(
            "can_extents: VixDiskLib_QueryAllocatedBlocks test failed, extents support will be disabled: {}",
            e.message.as_deref().unwrap_or("")
        ));
        Ok(false)
    }

    fn pread(&self, buf: &mut [u8], offset: u64, _flags: Flags) -> Result<()> {
        let count = buf.len() as u64;
        Self::check_aligned("read", count, offset)?;
        let lib = self.lib();
        let (start, n) = (offset / SECTOR_SIZE, count / SECTOR_SIZE);
        let err = call(
            F::Read,
            || format!("handle, {start} sectors, {n} sectors, buffer"),
            count,
            // SAFETY: buf holds n sectors.
            || unsafe { lib.read(self.handle, start, n, buf.as_mut_ptr()) },
        );
        if err != VIX_OK {
            return Err(self.plugin().vix_error(err, "VixDiskLib_Read"));
        }
        Ok(())
    }

    fn pwrite(&self, buf: &[u8], offset: u64, flags: Flags) -> Result<()> {
        let count = buf.len() as u64;
        Self::check_aligned("write", count, offset)?;
        let lib = self.lib();
        let (start, n) = (offset / SECTOR_SIZE, count / SECTOR_SIZE);
        let err = call(
            F::Write,
            || format!("handle, {start} sectors, {n} sectors, buffer"),
            count,
            // SAFETY: buf holds n sectors.
            || unsafe { lib.write(self.handle, start, n, buf.as_ptr()) },
        );
        if err != VIX_OK {
            return Err(self.plugin().vix_error(err, "VixDiskLib_Write"));
        }
        if flags.contains(Flags::FUA) {
            self.flush(Flags::NONE)?;
        }
        Ok(())
    }

    fn flush(&self, _flags: Flags) -> Result<()> {
        let lib = self.lib();
        // SAFETY: the handle is open.
        let err = call(
            F::Flush,
            || "handle".into(),
            0,
            || unsafe { lib.flush(self.handle) },
        );
        if err != VIX_OK {
            return Err(self.plugin().vix_error(err, "VixDiskLib_Flush"));
        }
        Ok(())
    }

    fn extents(&self, count: u64, offset: u64, flags: Flags, extents: &mut Extents) -> Result<()> {
        let lib = self.lib();
        let req_one = flags.contains(Flags::REQ_ONE);
        let chunk_bytes = ffi::MIN_CHUNK_SIZE * SECTOR_SIZE;
        let end = offset + count;
        let mut position = offset;
        // Only whole chunks can be asked about: start at the chunk
        // holding offset.
        let mut start_sector = offset / chunk_bytes * ffi::MIN_CHUNK_SIZE;
        while start_sector * SECTOR_SIZE < end {
            let nr_chunks = (end - start_sector * SECTOR_SIZE)
                .div_ceil(chunk_bytes)
                .min(ffi::MAX_CHUNK_NUMBER);
            let nr_sectors = nr_chunks * ffi::MIN_CHUNK_SIZE;
            let mut list: *mut ffi::BlockList = core::ptr::null_mut();
            let err = call(
                F::QueryAllocatedBlocks,
                || {
                    format!(
                        "handle, {start_sector} sectors, {nr_sectors} sectors, {} sectors",
                        ffi::MIN_CHUNK_SIZE
                    )
                },
                0,
                // SAFETY: the handle is open.
                || unsafe {
                    lib.query_allocated_blocks(
                        self.handle,
                        start_sector,
                        nr_sectors,
                        ffi::MIN_CHUNK_SIZE,
                        &mut list,
                    )
                },
            );
            if err != VIX_OK || list.is_null() {
                return Err(self
                    .plugin()
                    .vix_error(err, "VixDiskLib_QueryAllocatedBlocks"));
            }
            // SAFETY: QueryAllocatedBlocks returned num_blocks entries.
            let blocks: Vec<ffi::Block> = unsafe {
                let n = (*list).num_blocks as usize;
                let first = core::ptr::addr_of!((*list).blocks).cast::<ffi::Block>();
                core::slice::from_raw_parts(first, n).to_vec()
            };
            // SAFETY: list came from QueryAllocatedBlocks.
            call(
                F::FreeBlockList,
                || "block_list".into(),
                0,
                || unsafe { lib.free_block_list(list) },
            );
            for b in blocks {
                let blk_offset = b.offset * SECTOR_SIZE;
                let blk_end = blk_offset + b.length * SECTOR_SIZE;
                self.add_extent(extents, &mut position, blk_offset, true)?;
                self.add_extent(extents, &mut position, blk_end, false)?;
            }
            // What follows the last block, to the end of the query, is a hole.
            let query_end = (start_sector + nr_sectors) * SECTOR_SIZE;
            self.add_extent(extents, &mut position, query_end, true)?;
            start_sector += nr_sectors;
            if req_one && position > offset {
                break;
            }
        }
        Ok(())
    }
}
