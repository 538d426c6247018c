//! The parts of VMware's VixDiskLib C API that the plugin uses: its
//! structures (as laid out by VDDK >= 6.5 on x86-64 Linux) and the
//! library, opened with `dlopen` when the plugin is chosen.

use core::ffi::{c_char, c_int, c_long, c_void};
use std::path::{Path, PathBuf};

/// `VixError`: 0 is success.
pub(super) type VixError = u64;
pub(super) const VIX_OK: VixError = 0;

pub(super) const SECTOR_SIZE: u64 = 512;
/// The smallest chunk (in sectors) QueryAllocatedBlocks accepts.
pub(super) const MIN_CHUNK_SIZE: u64 = 128;
/// The most chunks one QueryAllocatedBlocks call may ask about.
pub(super) const MAX_CHUNK_NUMBER: u64 = 512 * 1024;

pub(super) const FLAG_OPEN_UNBUFFERED: u32 = 1;
pub(super) const FLAG_OPEN_SINGLE_LINK: u32 = 2;
pub(super) const FLAG_OPEN_READ_ONLY: u32 = 4;
pub(super) const FLAG_OPEN_COMPRESSION_ZLIB: u32 = 16;
pub(super) const FLAG_OPEN_COMPRESSION_FASTLZ: u32 = 32;
pub(super) const FLAG_OPEN_COMPRESSION_SKIPZ: u32 = 64;

pub(super) const CRED_UID: c_int = 1;
pub(super) const CRED_SESSIONID: c_int = 2;
pub(super) const SPEC_VMX: c_int = 0;

/// `VixDiskLibConnectParams`.
#[repr(C)]
pub(super) struct ConnectParams {
    pub(super) vmx_spec: *const c_char,
    pub(super) server_name: *const c_char,
    pub(super) thumb_print: *const c_char,
    pub(super) reserved1: c_long,
    pub(super) cred_type: c_int,
    /// The credentials union: `uid { userName, password }` or `sessionId
    /// { cookie, userName, key }`.
    pub(super) creds: [*const c_char; 3],
    pub(super) port: u32,
    pub(super) nfc_host_port: u32,
    pub(super) reserved3: *const c_char,
    pub(super) reserved4: [c_char; 8],
    pub(super) reserved5: *mut c_void,
    /// `vStorageObjSpec { id, datastoreMoRef, ssId }`.
    pub(super) spec: [*const c_char; 3],
    pub(super) spec_type: c_int,
}

/// `VixDiskLibGeometry`.
#[repr(C)]
pub(super) struct Geometry {
    pub(super) cylinders: u32,
    pub(super) heads: u32,
    pub(super) sectors: u32,
}

/// `VixDiskLibInfo` (the two sector sizes exist since VDDK 7).
#[repr(C)]
pub(super) struct Info {
    pub(super) bios_geo: Geometry,
    pub(super) phys_geo: Geometry,
    pub(super) capacity: u64,
    pub(super) adapter_type: c_int,
    pub(super) num_links: c_int,
    pub(super) parent_file_name_hint: *const c_char,
    pub(super) uuid: *const c_char,
    pub(super) logical_sector_size: u32,
    pub(super) physical_sector_size: u32,
}

/// `VixDiskLibBlock`, in sectors.
#[repr(C)]
#[derive(Clone, Copy)]
pub(super) struct Block {
    pub(super) offset: u64,
    pub(super) length: u64,
}

/// `VixDiskLibBlockList`: `num_blocks` entries follow the count.
#[repr(C)]
pub(super) struct BlockList {
    pub(super) num_blocks: u32,
    pub(super) blocks: [Block; 1],
}

/// `VixDiskLibCreateParams`.
#[repr(C)]
pub(super) struct CreateParams {
    pub(super) disk_type: c_int,
    pub(super) adapter_type: c_int,
    pub(super) hw_version: u16,
    pub(super) capacity: u64,
    pub(super) logical_sector_size: u32,
    pub(super) physical_sector_size: u32,
}

pub(super) type Connection = *mut c_void;
pub(super) type DiskHandle = *mut c_void;
/// `VixDiskLibGenericLogFunc`: `(const char *fmt, va_list args)`; on
/// x86-64 a `va_list` parameter is a pointer.
pub(super) type LogFunc = unsafe extern "C" fn(*const c_char, *mut c_void);

/// Every function looked up, in nbdkit's order: name and whether VDDK
/// 6.5 may lack it.
pub(super) const FUNCTIONS: &[(&str, bool)] = &[
    ("VixDiskLib_InitEx", false),
    ("VixDiskLib_Exit", false),
    ("VixDiskLib_GetErrorText", false),
    ("VixDiskLib_FreeErrorText", false),
    ("VixDiskLib_FreeConnectParams", false),
    ("VixDiskLib_ConnectEx", false),
    ("VixDiskLib_Open", false),
    ("VixDiskLib_GetTransportMode", false),
    ("VixDiskLib_Close", false),
    ("VixDiskLib_Disconnect", false),
    ("VixDiskLib_GetInfo", false),
    ("VixDiskLib_FreeInfo", false),
    ("VixDiskLib_Read", false),
    ("VixDiskLib_Write", false),
    ("VixDiskLib_Create", false),
    ("VixDiskLib_Flush", true),
    ("VixDiskLib_ReadAsync", true),
    ("VixDiskLib_WriteAsync", true),
    ("VixDiskLib_Wait", true),
    ("VixDiskLib_QueryAllocatedBlocks", true),
    ("VixDiskLib_FreeBlockList", true),
    ("VixDiskLib_AllocateConnectParams", true),
];

/// Indexes into [`FUNCTIONS`] (and the statistics); the async calls are
/// looked up for `--dump-plugin` only.
#[allow(dead_code)]
#[derive(Clone, Copy)]
pub(super) enum F {
    InitEx = 0,
    Exit,
    GetErrorText,
    FreeErrorText,
    FreeConnectParams,
    ConnectEx,
    Open,
    GetTransportMode,
    Close,
    Disconnect,
    GetInfo,
    FreeInfo,
    Read,
    Write,
    Create,
    Flush,
    ReadAsync,
    WriteAsync,
    Wait,
    QueryAllocatedBlocks,
    FreeBlockList,
    AllocateConnectParams,
}

/// The sonames tried in each directory, newest first, with the major
/// version each one means.
pub(super) const SONAMES: &[(&str, u32)] = &[
    ("lib64/libvixDiskLib.so.9", 9),
    ("libvixDiskLib.so.9", 9),
    ("lib64/libvixDiskLib.so.8", 8),
    ("libvixDiskLib.so.8", 8),
    ("lib64/libvixDiskLib.so.7", 7),
    ("libvixDiskLib.so.7", 7),
    ("lib64/libvixDiskLib.so.6", 6),
    ("libvixDiskLib.so.6", 6),
];

/// The opened library and the addresses of its functions.
pub(super) struct Library {
    /// Keeps the code mapped; never closed before exit (VDDK's threads
    /// may outlive the last call).
    _lib: libloading::Library,
    /// The file that was opened.
    pub(super) path: PathBuf,
    /// The major version its soname says.
    pub(super) version: u32,
    /// One address per [`FUNCTIONS`] entry (null: absent).
    addrs: Vec<*mut c_void>,
}

// SAFETY: the library handle and function addresses are immutable after
// loading; VDDK's functions are called from any thread as nbdkit does.
unsafe impl Send for Library {}
// SAFETY: as above.
unsafe impl Sync for Library {}

/// Why the library could not be used.
pub(super) enum LoadError {
    /// No candidate could be opened: the first `dlerror`.
    NotFound(String),
    /// A required symbol is missing.
    Missing(&'static str, String),
}

impl Library {
    /// Open the newest VDDK found in `libdir` (as `lib64/libvixDiskLib.so.N`
    /// or `libvixDiskLib.so.N`), then on the dynamic linker's usual paths.
    pub(super) fn load(libdir: &Path) -> Result<Library, LoadError> {
        let mut first_error = None;
        let candidates = SONAMES
            .iter()
            .map(|(name, v)| (libdir.join(name), *v))
            .chain(
                SONAMES
                    .iter()
                    .filter(|(name, _)| !name.contains('/'))
                    .map(|(name, v)| (PathBuf::from(name), *v)),
            );
        for (path, version) in candidates {
            // SAFETY: loading VDDK runs its initialisers; that is what the
            // user asked for by choosing this plugin.
            match unsafe { libloading::Library::new(&path) } {
                Ok(lib) => return Self::resolve(lib, path, version),
                Err(e) => {
                    first_error.get_or_insert_with(|| dl_message(&e));
                }
            }
        }
        Err(LoadError::NotFound(
            first_error.unwrap_or_else(|| "(unknown error)".into()),
        ))
    }

    fn resolve(
        lib: libloading::Library,
        path: PathBuf,
        version: u32,
    ) -> Result<Library, LoadError> {
        let mut addrs = Vec::with_capacity(FUNCTIONS.len());
        for (name, optional) in FUNCTIONS {
            // SAFETY: only the address is taken; it is called through the
            // typed accessors below with VDDK's documented signature.
            let sym = unsafe { lib.get::<*mut c_void>(name.as_bytes()) };
            match sym {
                Ok(s) => addrs.push(*s),
                Err(e) if !*optional => return Err(LoadError::Missing(name, dl_message(&e))),
                Err(_) => addrs.push(core::ptr::null_mut()),
            }
        }
        // The real path (symlinks resolved), which names the version.
        let path = std::fs::canonicalize(&path).unwrap_or(path);
        Ok(Library {
            _lib: lib,
            path,
            version,
            addrs,
        })
    }

    /// Whether the library exports `f`.
    pub(super) fn has(&self, f: F) -> bool {
        !self.addrs[f as usize].is_null()
    }

    /// The names of the functions found, in [`FUNCTIONS`] order.
    pub(super) fn found(&self) -> impl Iterator<Item = &'static str> + '_ {
        FUNCTIONS
            .iter()
            .zip(&self.addrs)
            .filter(|(_, a)| !a.is_null())
            .map(|((n, _), _)| *n)
    }

    fn addr(&self, f: F) -> *mut c_void {
        let a = self.addrs[f as usize];
        assert!(!a.is_null(), "{} is not present", FUNCTIONS[f as usize].0);
        a
    }
}

fn dl_message(e: &libloading::Error) -> String {
    // libloading wraps dlerror's text; nbdkit prints dlerror alone.
    let s = e.to_string();
    match s.split_once(": ") {
        Some((head, rest)) if head.starts_with("dlopen") || head.starts_with("dlsym") => {
            rest.to_string()
        }
        _ => s,
    }
}

/// Typed accessors: each transmutes the looked-up address to the
/// function's C signature.
macro_rules! vddk_fn {
    ($name:ident, $f:ident, fn($($arg:ident: $ty:ty),* $(,)?) -> $ret:ty) => {
        impl Library {
            /// Call the VDDK function of the same name.
            ///
            /// # Safety
            /// The arguments must be valid as VDDK's API requires.
            #[allow(clippy::too_many_arguments)] // VDDK's InitEx takes 7
            pub(super) unsafe fn $name(&self, $($arg: $ty),*) -> $ret {
                // SAFETY: the symbol has this signature in every VDDK
                // version the plugin supports.
                let f: unsafe extern "C" fn($($ty),*) -> $ret =
                    unsafe { core::mem::transmute(self.addr(F::$f)) };
                unsafe { f($($arg),*) }
            }
        }
    };
}

vddk_fn!(
    init_ex,
    InitEx,
    fn(
        major: u32,
        minor: u32,
        log: Option<LogFunc>,
        warn: Option<LogFunc>,
        panic: Option<LogFunc>,
        libdir: *const c_char,
        config: *const c_char,
    ) -> VixError
);
vddk_fn!(exit, Exit, fn() -> ());
vddk_fn!(
    get_error_text,
    GetErrorText,
    fn(err: VixError, unused: *const c_char) -> *mut c_char
);
vddk_fn!(free_error_text, FreeErrorText, fn(text: *mut c_char) -> ());
vddk_fn!(
    free_connect_params,
    FreeConnectParams,
    fn(p: *mut ConnectParams) -> ()
);
vddk_fn!(
    connect_ex,
    ConnectEx,
    fn(
        p: *const ConnectParams,
        ro: c_char,
        snapshot: *const c_char,
        transports: *const c_char,
        conn: *mut Connection,
    ) -> VixError
);
vddk_fn!(
    open,
    Open,
    fn(conn: Connection, path: *const c_char, flags: u32, h: *mut DiskHandle) -> VixError
);
vddk_fn!(
    get_transport_mode,
    GetTransportMode,
    fn(h: DiskHandle) -> *const c_char
);
vddk_fn!(close, Close, fn(h: DiskHandle) -> VixError);
vddk_fn!(disconnect, Disconnect, fn(conn: Connection) -> VixError);
vddk_fn!(
    get_info,
    GetInfo,
    fn(h: DiskHandle, info: *mut *mut Info) -> VixError
);
vddk_fn!(free_info, FreeInfo, fn(info: *mut Info) -> ());
vddk_fn!(
    read,
    Read,
    fn(h: DiskHandle, start: u64, n: u64, buf: *mut u8) -> VixError
);
vddk_fn!(
    write,
    Write,
    fn(h: DiskHandle, start: u64, n: u64, buf: *const u8) -> VixError
);
vddk_fn!(
    create,
    Create,
    fn(
        conn: Connection,
        path: *const c_char,
        p: *const CreateParams,
        progress: *const c_void,
        data: *mut c_void,
    ) -> VixError
);
vddk_fn!(flush, Flush, fn(h: DiskHandle) -> VixError);
vddk_fn!(
    query_allocated_blocks,
    QueryAllocatedBlocks,
    fn(h: DiskHandle, start: u64, n: u64, chunk: u64, list: *mut *mut BlockList) -> VixError
);
vddk_fn!(
    free_block_list,
    FreeBlockList,
    fn(list: *mut BlockList) -> VixError
);
vddk_fn!(
    allocate_connect_params,
    AllocateConnectParams,
    fn() -> *mut ConnectParams
);
