//! A compiled nbdkit filter (`struct nbdkit_filter`, API 6) as a
//! [`Filter`] of the core's stack, and the server side of the filter API:
//! the `nbdkit_next` tables C filters call the layer below through, and
//! `nbdkit_next_context_open` & co.
//!
//! # The objects C holds
//! C receives three kinds of opaque pointers, all to Rust objects created
//! here and kept alive for as long as C may use them:
//! - `nbdkit_next *`: a [`NextC`], whose first field is the table of
//!   functions C calls; the rest says which [`Context`] it reaches.
//! - `nbdkit_backend *`: a [`BackendC`] (what the layer below is, for
//!   global callbacks and for opening extra contexts).
//! - `nbdkit_context *`: an [`OpenCtx`], the filter's open in progress.
//!
//! Each starts with (or, for `NextC`, follows its table with) a magic
//! number that is checked before use, so that a wrong kind of pointer
//! fails with an error instead of being misread.

use std::ffi::{c_char, c_int, c_void, CString};
use std::path::Path;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::{Arc, Mutex};

use nbdkit_core::backend::{
    BlockSize, Context, Error, Exports, Extents, Filter, FilterHandle, Flags, NextExports,
    NextOpener, OpenArgs, Peer, Reopener, Result, Support, ThreadModel,
};
use nbdkit_core::errno::Errno;

use super::{call, copy_str, ffi, intern, leak, pass_up, report_error, ConnInfo, LoadError, Scope};

const NEXT_MAGIC: u64 = 0x6e62_646b_6e65_7874; // "nbdknext"
const BACKEND_MAGIC: u64 = 0x6e62_646b_6261_636b; // "nbdkback"
const CONTEXT_MAGIC: u64 = 0x6e62_646b_6374_7874; // "nbdkctxt"

/// The filter API version this server implements.
const FILTER_API_VERSION: c_int = 6;

struct Shared {
    f: ffi::Filter,
    name: &'static str,
}

// SAFETY: function pointers and static strings of a library that is never
// unloaded, only read.
unsafe impl Send for Shared {}
// SAFETY: as above.
unsafe impl Sync for Shared {}

/// A filter loaded from a shared object.
pub(crate) struct CFilter {
    s: Arc<Shared>,
}

fn bad(path: &Path, what: &str) -> LoadError {
    LoadError {
        message: format!("{}: {what}", path.display()),
        usage_hint: false,
    }
}

impl CFilter {
    pub(crate) fn load(
        lib: &'static libloading::os::unix::Library,
        path: &Path,
    ) -> core::result::Result<CFilter, LoadError> {
        type Init = unsafe extern "C" fn() -> *const ffi::Filter;
        // SAFETY: `filter_init` is, by the ABI, `struct nbdkit_filter
        // *filter_init (void)`.
        let init: Init = match unsafe { lib.get::<Init>(b"filter_init\0") } {
            Ok(f) => *f,
            Err(e) => return Err(bad(path, &e.to_string())),
        };
        // SAFETY: no arguments, as the ABI defines it.
        let raw = unsafe { init() };
        if raw.is_null() {
            return Err(bad(path, "filter registration function failed"));
        }
        // SAFETY: the first two fields, `_api_version` and `_version`, are
        // part of the filter ABI of every version.
        let (api, version) = unsafe { ((*raw)._api_version, copy_str((*raw)._version)) };
        if api != FILTER_API_VERSION {
            return Err(bad(
                path,
                &format!(
                    "filter is incompatible with this version of nbdkit (_api_version = {api}, need {FILTER_API_VERSION})"
                ),
            ));
        }
        let want = nbdkit_core::NBDKIT_VERSION;
        if version.as_deref() != Some(want) {
            return Err(bad(
                path,
                &format!(
                    "filter is incompatible with this version of nbdkit (_version = {}, need {want})",
                    version.as_deref().unwrap_or("(null)")
                ),
            ));
        }
        // SAFETY: the version matches ours, so the struct has our layout.
        let f: ffi::Filter = unsafe { *raw };
        // SAFETY: NULL or a static string of the filter.
        let Some(name) = (unsafe { copy_str(f.name) }) else {
            return Err(bad(path, "filter must have a .name field"));
        };
        if !super::plugin::valid_name(&name) {
            return Err(bad(
                path,
                &format!(
                    "filter.name ('{name}') field must contain only ASCII alphanumeric or dash characters"
                ),
            ));
        }
        if let Some(load) = f.load {
            // SAFETY: no arguments; runs once, first.
            unsafe { load() };
        }
        Ok(CFilter {
            s: Arc::new(Shared {
                f,
                name: leak(name),
            }),
        })
    }

    fn global<T>(&self, f: impl FnOnce() -> T, failed: impl FnOnce(&T) -> bool) -> Result<T> {
        call(self.s.name, Scope::Global, false, f, failed)
    }

    fn global_int(&self, f: impl FnOnce() -> c_int, what: &str) -> Result<()> {
        self.global(f, |r| *r == -1).map(|_| ()).map_err(|mut e| {
            if e.message.is_none() {
                e.message = Some(format!("{}: {what} failed", self.s.name));
            }
            e
        })
    }
}

impl Drop for CFilter {
    fn drop(&mut self) {
        if let Some(u) = self.s.f.unload {
            // SAFETY: no arguments; runs once, last.
            unsafe { u() };
        }
    }
}

// ---------------------------------------------------------------------------
// nbdkit_backend

/// What a filter's `nbdkit_backend *` stands for.
#[repr(C)]
struct BackendC {
    magic: u64,
    /// Parameters the filter passed on with `next_config`.
    passed: Vec<(String, String)>,
    /// The layer below's export calls (list_exports, default_export).
    exports: Option<*const (dyn NextExports + 'static)>,
    is_tls: bool,
    /// Opens contexts of the layer below (during a connection).
    reopener: Option<Box<dyn Reopener>>,
}

impl BackendC {
    fn new() -> BackendC {
        BackendC {
            magic: BACKEND_MAGIC,
            passed: Vec::new(),
            exports: None,
            is_tls: false,
            reopener: None,
        }
    }
}

/// # Safety
/// `p` is NULL or a pointer C got from this module as an `nbdkit_backend
/// *`, still alive.
unsafe fn backend<'a>(p: *mut c_void) -> Option<&'a mut BackendC> {
    let b = p as *mut BackendC;
    // SAFETY: the caller's contract; the magic guards against another
    // kind of pointer of ours.
    match unsafe { b.as_mut() } {
        Some(b) if b.magic == BACKEND_MAGIC => Some(b),
        _ => None,
    }
}

unsafe extern "C" fn next_config(
    b: *mut c_void,
    key: *const c_char,
    value: *const c_char,
) -> c_int {
    // SAFETY: the backend pointer this module passed to `.config`.
    let Some(b) = (unsafe { backend(b) }) else {
        return -1;
    };
    // SAFETY: NUL-terminated strings from the filter.
    let (k, v) = unsafe { (copy_str(key), copy_str(value)) };
    b.passed
        .push((k.unwrap_or_default(), v.unwrap_or_default()));
    0
}

unsafe extern "C" fn next_config_complete(_b: *mut c_void) -> c_int {
    // The layers below completed their configuration before this one.
    0
}

unsafe extern "C" fn next_preconnect(_b: *mut c_void, _readonly: c_int) -> c_int {
    // The server calls every layer's preconnect itself.
    0
}

unsafe extern "C" fn next_list_exports(
    b: *mut c_void,
    readonly: c_int,
    e: *mut ffi::CExports,
) -> c_int {
    // SAFETY: the backend pointer this module passed to `.list_exports`.
    let Some(b) = (unsafe { backend(b) }) else {
        return -1;
    };
    // SAFETY: `exports` was set from a live reference for this call.
    let (Some(next), Some(list)) = (b.exports.map(|n| unsafe { &*n }), unsafe { e.as_mut() })
    else {
        report_error("next_list_exports: not available here".into());
        return -1;
    };
    match next.list_exports(readonly != 0, b.is_tls, list) {
        Ok(()) => 0,
        Err(e) => {
            pass_up(&e);
            -1
        }
    }
}

unsafe extern "C" fn next_default_export(b: *mut c_void, readonly: c_int) -> *const c_char {
    // SAFETY: the backend pointer this module passed to `.default_export`.
    let Some(b) = (unsafe { backend(b) }) else {
        return core::ptr::null();
    };
    // SAFETY: `exports` was set from a live reference for this call.
    let Some(next) = b.exports.map(|n| unsafe { &*n }) else {
        report_error("next_default_export: not available here".into());
        return core::ptr::null();
    };
    match next.default_export(readonly != 0, b.is_tls) {
        Ok(Some(name)) => intern(super::cstring_lossy(&name)),
        Ok(None) => core::ptr::null(),
        Err(e) => {
            pass_up(&e);
            core::ptr::null()
        }
    }
}

// ---------------------------------------------------------------------------
// nbdkit_next

/// A filter's view of a layer below (`nbdkit_next *`).
#[repr(C)]
struct NextC {
    ops: ffi::NextOps,
    magic: u64,
    /// The context below: the connection's (set on each call) or `owned`.
    ctx: AtomicPtr<Context>,
    /// A context opened with nbdkit_next_context_open.
    owned: Option<Box<Context>>,
}

impl NextC {
    fn new(owned: Option<Box<Context>>) -> Box<NextC> {
        let n = Box::new(NextC {
            ops: OPS,
            magic: NEXT_MAGIC,
            ctx: AtomicPtr::new(core::ptr::null_mut()),
            owned,
        });
        if let Some(c) = n.owned.as_deref() {
            n.ctx
                .store(c as *const Context as *mut Context, Ordering::Release);
        }
        n
    }

    fn as_c(&self) -> *mut ffi::NextOps {
        &self.ops as *const ffi::NextOps as *mut ffi::NextOps
    }
}

/// # Safety
/// `n` is NULL or an `nbdkit_next *` this module handed out, still alive.
unsafe fn next_ctx<'a>(n: *mut ffi::NextOps) -> Option<&'a Context> {
    let p = n as *const NextC;
    // SAFETY: the caller's contract; `ops` is the first field of the
    // repr(C) NextC, so the pointers are the same.
    let nc = unsafe { p.as_ref() }?;
    if nc.magic != NEXT_MAGIC {
        return None;
    }
    let c = nc.ctx.load(Ordering::Acquire);
    // SAFETY: `ctx` points to the connection's context below this filter,
    // which lives as long as the filter's handle, or to `owned`.
    unsafe { c.as_ref() }
}

fn no_next() -> c_int {
    report_error("nbdkit_next: used outside the connection it belongs to".into());
    -1
}

macro_rules! with_next {
    ($n:expr, $fail:expr, |$c:ident| $body:expr) => {{
        // SAFETY: C passes back the `nbdkit_next *` it was given.
        match unsafe { next_ctx($n) } {
            Some($c) => $body,
            None => {
                no_next();
                $fail
            }
        }
    }};
}

fn flag(b: bool) -> c_int {
    c_int::from(b)
}

fn support(s: Support) -> c_int {
    match s {
        Support::None => 0,
        Support::Emulate => 1,
        Support::Native => 2,
    }
}

fn data_result(r: Result<()>, err: *mut c_int) -> c_int {
    match r {
        Ok(()) => 0,
        Err(e) => {
            let errno = pass_up(&e);
            if !err.is_null() {
                // SAFETY: `err` points to the filter's int for the error.
                unsafe { *err = errno };
            }
            -1
        }
    }
}

unsafe extern "C" fn n_prepare(n: *mut ffi::NextOps) -> c_int {
    // Contexts are prepared when they are opened.
    with_next!(n, -1, |_c| 0)
}
unsafe extern "C" fn n_finalize(n: *mut ffi::NextOps) -> c_int {
    with_next!(n, -1, |c| data_result(c.finalize(), core::ptr::null_mut()))
}
unsafe extern "C" fn n_get_size(n: *mut ffi::NextOps) -> i64 {
    with_next!(n, -1, |c| c.caps().size as i64)
}
unsafe extern "C" fn n_export_description(n: *mut ffi::NextOps) -> *const c_char {
    with_next!(n, core::ptr::null(), |c| match c.export_description() {
        Ok(Some(d)) => intern(super::cstring_lossy(&d)),
        Ok(None) => core::ptr::null(),
        Err(e) => {
            // NULL, with the error reported as nbdkit_error would.
            super::pass_up(&e);
            core::ptr::null()
        }
    })
}
unsafe extern "C" fn n_block_size(
    n: *mut ffi::NextOps,
    min: *mut u32,
    pref: *mut u32,
    max: *mut u32,
) -> c_int {
    with_next!(n, -1, |c| {
        let b = c
            .caps()
            .block_size
            .map_or((0, 0, 0), |b| (b.minimum, b.preferred, b.maximum));
        // SAFETY: three pointers to the filter's u32s.
        unsafe {
            if let Some(p) = min.as_mut() {
                *p = b.0;
            }
            if let Some(p) = pref.as_mut() {
                *p = b.1;
            }
            if let Some(p) = max.as_mut() {
                *p = b.2;
            }
        }
        0
    })
}
unsafe extern "C" fn n_can_write(n: *mut ffi::NextOps) -> c_int {
    with_next!(n, -1, |c| flag(c.caps().can_write))
}
unsafe extern "C" fn n_can_flush(n: *mut ffi::NextOps) -> c_int {
    with_next!(n, -1, |c| flag(c.caps().can_flush))
}
unsafe extern "C" fn n_is_rotational(n: *mut ffi::NextOps) -> c_int {
    with_next!(n, -1, |c| flag(c.caps().is_rotational))
}
unsafe extern "C" fn n_can_trim(n: *mut ffi::NextOps) -> c_int {
    with_next!(n, -1, |c| flag(c.caps().can_trim))
}
unsafe extern "C" fn n_can_zero(n: *mut ffi::NextOps) -> c_int {
    with_next!(n, -1, |c| support(c.caps().can_zero))
}
unsafe extern "C" fn n_can_fast_zero(n: *mut ffi::NextOps) -> c_int {
    with_next!(n, -1, |c| flag(c.caps().can_fast_zero))
}
unsafe extern "C" fn n_can_extents(n: *mut ffi::NextOps) -> c_int {
    with_next!(n, -1, |c| flag(c.caps().can_extents))
}
unsafe extern "C" fn n_can_fua(n: *mut ffi::NextOps) -> c_int {
    with_next!(n, -1, |c| support(c.caps().can_fua))
}
unsafe extern "C" fn n_can_multi_conn(n: *mut ffi::NextOps) -> c_int {
    with_next!(n, -1, |c| flag(c.caps().can_multi_conn))
}
unsafe extern "C" fn n_can_cache(n: *mut ffi::NextOps) -> c_int {
    with_next!(n, -1, |c| support(c.caps().can_cache))
}
unsafe extern "C" fn n_pread(
    n: *mut ffi::NextOps,
    buf: *mut c_void,
    count: u32,
    offset: u64,
    flags: u32,
    err: *mut c_int,
) -> c_int {
    with_next!(n, -1, |c| {
        // SAFETY: the filter passes a buffer of `count` writable bytes.
        let b = unsafe { core::slice::from_raw_parts_mut(buf as *mut u8, count as usize) };
        data_result(c.pread(b, offset, Flags(flags)), err)
    })
}
unsafe extern "C" fn n_pwrite(
    n: *mut ffi::NextOps,
    buf: *const c_void,
    count: u32,
    offset: u64,
    flags: u32,
    err: *mut c_int,
) -> c_int {
    with_next!(n, -1, |c| {
        // SAFETY: the filter passes a buffer of `count` readable bytes.
        let b = unsafe { core::slice::from_raw_parts(buf as *const u8, count as usize) };
        data_result(c.pwrite(b, offset, Flags(flags)), err)
    })
}
unsafe extern "C" fn n_flush(n: *mut ffi::NextOps, flags: u32, err: *mut c_int) -> c_int {
    with_next!(n, -1, |c| data_result(c.flush(Flags(flags)), err))
}
unsafe extern "C" fn n_trim(
    n: *mut ffi::NextOps,
    count: u32,
    offset: u64,
    flags: u32,
    err: *mut c_int,
) -> c_int {
    with_next!(n, -1, |c| data_result(
        c.trim(u64::from(count), offset, Flags(flags)),
        err
    ))
}
unsafe extern "C" fn n_zero(
    n: *mut ffi::NextOps,
    count: u32,
    offset: u64,
    flags: u32,
    err: *mut c_int,
) -> c_int {
    with_next!(n, -1, |c| data_result(
        c.zero(u64::from(count), offset, Flags(flags)),
        err
    ))
}
unsafe extern "C" fn n_extents(
    n: *mut ffi::NextOps,
    count: u32,
    offset: u64,
    flags: u32,
    e: *mut ffi::CExtents,
    err: *mut c_int,
) -> c_int {
    with_next!(n, -1, |c| {
        // SAFETY: an extents list the filter owns or was given.
        let Some(e) = (unsafe { e.as_mut() }) else {
            return data_result(
                Err(Error::msg(Errno::EINVAL, "next extents: NULL list")),
                err,
            );
        };
        data_result(c.extents(u64::from(count), offset, Flags(flags), e), err)
    })
}
unsafe extern "C" fn n_cache(
    n: *mut ffi::NextOps,
    count: u32,
    offset: u64,
    flags: u32,
    err: *mut c_int,
) -> c_int {
    with_next!(n, -1, |c| data_result(
        c.cache(u64::from(count), offset, Flags(flags)),
        err
    ))
}

const OPS: ffi::NextOps = ffi::NextOps {
    prepare: n_prepare,
    finalize: n_finalize,
    get_size: n_get_size,
    export_description: n_export_description,
    block_size: n_block_size,
    can_write: n_can_write,
    can_flush: n_can_flush,
    is_rotational: n_is_rotational,
    can_trim: n_can_trim,
    can_zero: n_can_zero,
    can_fast_zero: n_can_fast_zero,
    can_extents: n_can_extents,
    can_fua: n_can_fua,
    can_multi_conn: n_can_multi_conn,
    can_cache: n_can_cache,
    pread: n_pread,
    pwrite: n_pwrite,
    flush: n_flush,
    trim: n_trim,
    zero: n_zero,
    extents: n_extents,
    cache: n_cache,
};

// ---------------------------------------------------------------------------
// nbdkit_context (a filter's .open in progress)

#[repr(C)]
struct OpenCtx {
    magic: u64,
    /// The core's opener, only while `.open` runs.
    opener: Option<*mut (dyn NextOpener + 'static)>,
    backend: *mut BackendC,
}

/// # Safety
/// `p` is NULL or an `nbdkit_context *` this module handed out, alive.
unsafe fn open_ctx<'a>(p: *mut c_void) -> Option<&'a mut OpenCtx> {
    // SAFETY: the caller's contract, checked by the magic.
    match unsafe { (p as *mut OpenCtx).as_mut() } {
        Some(c) if c.magic == CONTEXT_MAGIC => Some(c),
        _ => None,
    }
}

unsafe extern "C" fn next_open(ctx: *mut c_void, readonly: c_int, name: *const c_char) -> c_int {
    // SAFETY: the context pointer this module passed to `.open`.
    let Some(c) = (unsafe { open_ctx(ctx) }) else {
        return -1;
    };
    let Some(opener) = c.opener else {
        report_error("next_open: can only be called during .open".into());
        return -1;
    };
    // SAFETY: a NUL-terminated string from the filter.
    let name = unsafe { copy_str(name) }.unwrap_or_default();
    // SAFETY: the opener is alive while `.open` runs, and only used here,
    // on the thread that runs it.
    match unsafe { &mut *opener }.open(readonly != 0, &name) {
        Ok(()) => 0,
        Err(e) => {
            pass_up(&e);
            -1
        }
    }
}

/// `nbdkit_backend *nbdkit_context_get_backend (nbdkit_context *context)`.
#[no_mangle]
extern "C" fn nbdkit_context_get_backend(ctx: *mut c_void) -> *mut c_void {
    // SAFETY: an nbdkit_context * this module handed out.
    match unsafe { open_ctx(ctx) } {
        Some(c) => c.backend as *mut c_void,
        None => {
            report_error("nbdkit_context_get_backend: invalid context".into());
            core::ptr::null_mut()
        }
    }
}

/// `nbdkit_next *nbdkit_next_context_open (nbdkit_backend *backend, int
/// readonly, const char *exportname, int shared)`: a new context of the
/// layer below, owned by the filter. Available on the backend of a
/// connection's `.open` (for the life of the connection).
#[no_mangle]
extern "C" fn nbdkit_next_context_open(
    b: *mut c_void,
    readonly: c_int,
    name: *const c_char,
    _shared: c_int,
) -> *mut ffi::NextOps {
    // SAFETY: an nbdkit_backend * this module handed out.
    let Some(b) = (unsafe { backend(b) }) else {
        report_error("nbdkit_next_context_open: invalid backend".into());
        return core::ptr::null_mut();
    };
    let Some(r) = &b.reopener else {
        report_error(
            "nbdkit_next_context_open: this server can only open contexts from a connection's backend (from .open)"
                .into(),
        );
        return core::ptr::null_mut();
    };
    // SAFETY: NULL or a NUL-terminated string.
    let name = unsafe { copy_str(name) }.unwrap_or_default();
    match r.open(readonly != 0, &name) {
        Ok(ctx) => {
            let n = NextC::new(Some(Box::new(ctx)));
            let p = n.as_c();
            Box::leak(n);
            p
        }
        Err(e) => {
            pass_up(&e);
            core::ptr::null_mut()
        }
    }
}

/// `void nbdkit_next_context_close (nbdkit_next *next)`.
#[no_mangle]
extern "C" fn nbdkit_next_context_close(n: *mut ffi::NextOps) {
    let p = n as *mut NextC;
    // SAFETY: an nbdkit_next * this module handed out.
    match unsafe { p.as_ref() } {
        Some(nc) if nc.magic == NEXT_MAGIC && nc.owned.is_some() => {
            // SAFETY: contexts from nbdkit_next_context_open are leaked
            // boxes owned by the filter, which closes each once.
            let nc = unsafe { Box::from_raw(p) };
            if let Some(c) = &nc.owned {
                if let Err(e) = c.finalize() {
                    pass_up(&e);
                }
            }
            drop(nc);
        }
        Some(nc) if nc.magic == NEXT_MAGIC => report_error(
            "nbdkit_next_context_close: the connection's own next context is closed by the server"
                .into(),
        ),
        _ => report_error("nbdkit_next_context_close: invalid next".into()),
    }
}

/// `nbdkit_next *nbdkit_context_set_next (nbdkit_context *context,
/// nbdkit_next *next)`: during `.open`, use a context from
/// nbdkit_next_context_open as the filter's next layer; returns the one it
/// replaces (now owned by the filter), or NULL.
#[no_mangle]
extern "C" fn nbdkit_context_set_next(ctx: *mut c_void, n: *mut ffi::NextOps) -> *mut ffi::NextOps {
    // SAFETY: an nbdkit_context * this module handed out.
    let Some(c) = (unsafe { open_ctx(ctx) }) else {
        report_error("nbdkit_context_set_next: invalid context".into());
        return core::ptr::null_mut();
    };
    let Some(opener) = c.opener else {
        report_error("nbdkit_context_set_next: this server only supports it during .open".into());
        return core::ptr::null_mut();
    };
    let p = n as *mut NextC;
    // SAFETY: NULL or an nbdkit_next * this module handed out.
    let new = match unsafe { p.as_ref() } {
        Some(nc) if nc.magic == NEXT_MAGIC && nc.owned.is_some() => {
            // SAFETY: a leaked box from nbdkit_next_context_open; its
            // context moves to the server, and the box is freed.
            let mut nc = unsafe { Box::from_raw(p) };
            nc.owned.take()
        }
        _ => {
            report_error(
                "nbdkit_context_set_next: next must come from nbdkit_next_context_open".into(),
            );
            return core::ptr::null_mut();
        }
    };
    let Some(new) = new else {
        return core::ptr::null_mut();
    };
    // SAFETY: the opener is alive while `.open` runs.
    match unsafe { &mut *opener }.set_next(*new) {
        Ok(Some(old)) => {
            let n = NextC::new(Some(Box::new(old)));
            let p = n.as_c();
            Box::leak(n);
            p
        }
        Ok(None) => core::ptr::null_mut(),
        Err(e) => {
            pass_up(&e);
            core::ptr::null_mut()
        }
    }
}

// ---------------------------------------------------------------------------
// Extents helpers that call the layer below

fn extents_below(
    c: &Context,
    count: u64,
    offset: u64,
    flags: Flags,
) -> Result<Vec<(u64, u64, u32)>> {
    let end = offset.saturating_add(count).min(c.caps().size);
    let mut out = Vec::new();
    let mut pos = offset;
    let mut rounds = 0u32;
    while pos < end {
        let mut e = Extents::new(pos, end);
        c.extents(end - pos, pos, flags.without(Flags::REQ_ONE), &mut e)?;
        let before = pos;
        for x in e.as_slice() {
            out.push((x.offset, x.length, x.flags));
            pos = x.offset + x.length;
        }
        rounds += 1;
        if pos <= before || rounds > 1 << 20 {
            break;
        }
    }
    Ok(out)
}

/// `struct nbdkit_extents *nbdkit_extents_full (nbdkit_next *next,
/// uint32_t count, uint64_t offset, uint32_t flags, int *err)`.
#[no_mangle]
extern "C" fn nbdkit_extents_full(
    n: *mut ffi::NextOps,
    count: u32,
    offset: u64,
    flags: u32,
    err: *mut c_int,
) -> *mut ffi::CExtents {
    let r = with_next!(n, Err(Error::new(Errno::EINVAL)), |c| {
        extents_below(c, u64::from(count), offset, Flags(flags))
    });
    let list = match r {
        Ok(l) => l,
        Err(e) => {
            data_result(Err(e), err);
            return core::ptr::null_mut();
        }
    };
    let mut e = Extents::new(offset, offset.saturating_add(u64::from(count)));
    for (o, l, f) in list {
        if let Err(x) = e.add(o, l, f) {
            data_result(Err(x), err);
            return core::ptr::null_mut();
        }
    }
    Box::into_raw(Box::new(e))
}

/// `int nbdkit_extents_aligned (nbdkit_next *next, uint32_t count,
/// uint64_t offset, uint32_t flags, uint32_t align, struct nbdkit_extents
/// *extents, int *err)`: extents below, where every extent but a final one
/// covers whole multiples of `align` (a first extent shorter than `align`
/// is widened to `align`, its type the intersection of what it covers).
#[no_mangle]
extern "C" fn nbdkit_extents_aligned(
    n: *mut ffi::NextOps,
    count: u32,
    offset: u64,
    flags: u32,
    align: u32,
    e: *mut ffi::CExtents,
    err: *mut c_int,
) -> c_int {
    // SAFETY: an extents list the filter owns or was given.
    let Some(out) = (unsafe { e.as_mut() }) else {
        return data_result(
            Err(Error::msg(
                Errno::EINVAL,
                "nbdkit_extents_aligned: NULL list",
            )),
            err,
        );
    };
    let align = u64::from(align.max(1));
    let r = with_next!(n, Err(Error::new(Errno::EINVAL)), |c| {
        let want = u64::from(count).max(align);
        extents_below(c, want, offset, Flags(flags))
    });
    let list = match r {
        Ok(l) => l,
        Err(e) => return data_result(Err(e), err),
    };
    let mut result: Vec<(u64, u64, u32)> = Vec::new();
    let mut i = 0;
    if let Some(&(o, l, _)) = list.first() {
        if l < align {
            // Widen the first extent to one whole block.
            let mut typ = u32::MAX;
            let end = o + align;
            while i < list.len() && list[i].0 < end {
                typ &= list[i].2;
                if list[i].0 + list[i].1 > end {
                    break;
                }
                i += 1;
            }
            result.push((o, align, typ));
            // The extent straddling the block's end continues after it.
            if i < list.len() && list[i].0 < end {
                let (so, sl, st) = list[i];
                list_push_rest(&mut result, end, so + sl - end, st, align);
                i += 1;
            }
        }
    }
    for &(o, l, t) in &list[i..] {
        list_push_rest(&mut result, o, l, t, align);
    }
    let mut fresh = Extents::new(out.start(), out.end());
    for (o, l, t) in result {
        if let Err(x) = fresh.add(o, l, t) {
            return data_result(Err(x), err);
        }
    }
    *out = fresh;
    0
}

/// Append an extent, rounded down to whole blocks unless it is the last
/// piece before a gap (nothing follows a truncated one).
fn list_push_rest(out: &mut Vec<(u64, u64, u32)>, o: u64, l: u64, t: u32, align: u64) {
    if let Some(&(po, pl, _)) = out.last() {
        if po + pl != o {
            return;
        }
    }
    let end = (o + l) / align * align;
    if end > o {
        out.push((o, end - o, t));
    }
}

// ---------------------------------------------------------------------------
// The filter in the stack

impl Filter for CFilter {
    fn name(&self) -> &'static str {
        self.s.name
    }

    fn longname(&self) -> Option<&'static str> {
        // SAFETY: NULL or a static string of the filter.
        unsafe { copy_str(self.s.f.longname) }.map(leak)
    }

    fn config_help(&self) -> &'static str {
        // SAFETY: NULL or a static string of the filter.
        unsafe { copy_str(self.s.f.config_help) }
            .map(|h| leak(h.trim_end_matches('\n').to_string()))
            .unwrap_or("")
    }

    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        let Some(cfg) = self.s.f.config else {
            return Ok(false);
        };
        let mut b = BackendC::new();
        let bp: *mut BackendC = &mut b;
        let (k, v) = (super::config_arg(key), super::config_arg(value));
        // SAFETY: the continuation and the backend object live for the
        // call; the strings are NUL-terminated.
        self.global_int(
            || unsafe { cfg(next_config, bp as *mut c_void, k, v) },
            "config",
        )?;
        match b.passed.as_slice() {
            [] => Ok(true),
            [(k2, v2)] if k2 == key && v2 == value => Ok(false),
            _ => Err(Error::config(format!(
                "{}: the filter passed a changed or extra parameter to the next layer, which this server does not support",
                self.s.name
            ))),
        }
    }

    fn config_complete(&mut self) -> Result<()> {
        let Some(f) = self.s.f.config_complete else {
            return Ok(());
        };
        let mut b = BackendC::new();
        let bp: *mut BackendC = &mut b;
        // SAFETY: the continuation and backend live for the call.
        self.global_int(
            || unsafe { f(next_config_complete, bp as *mut c_void) },
            "config_complete",
        )
    }

    fn thread_model(&self) -> ThreadModel {
        let Some(f) = self.s.f.thread_model else {
            return ThreadModel::Parallel;
        };
        // SAFETY: no arguments.
        match self.global(|| unsafe { f() }, |r| *r == -1) {
            Ok(0) => ThreadModel::SerializeConnections,
            Ok(1) => ThreadModel::SerializeAllRequests,
            Ok(2) => ThreadModel::SerializeRequests,
            Ok(_) => ThreadModel::Parallel,
            Err(e) => {
                crate::log::error(None, &e.to_string());
                ThreadModel::SerializeConnections
            }
        }
    }

    fn get_ready(&self, tm: ThreadModel) -> Result<()> {
        match self.s.f.get_ready {
            // SAFETY: one int argument.
            Some(f) => self.global_int(|| unsafe { f(tm as c_int) }, "get_ready"),
            None => Ok(()),
        }
    }

    fn after_fork(&self) -> Result<()> {
        let Some(f) = self.s.f.after_fork else {
            return Ok(());
        };
        let mut b = BackendC::new();
        let bp: *mut BackendC = &mut b;
        // SAFETY: the backend lives for the call.
        self.global_int(|| unsafe { f(bp as *mut c_void) }, "after_fork")
    }

    fn cleanup(&self) {
        if let Some(f) = self.s.f.cleanup {
            let mut b = BackendC::new();
            let bp: *mut BackendC = &mut b;
            // SAFETY: the backend lives for the call.
            let _ = self.global(|| unsafe { f(bp as *mut c_void) }, |_| false);
        }
    }

    fn preconnect(&self, readonly: bool, peer: &Peer) -> Result<()> {
        let Some(f) = self.s.f.preconnect else {
            return Ok(());
        };
        let conn = ConnInfo::new(None, false, peer.clone());
        let mut b = BackendC::new();
        let bp: *mut BackendC = &mut b;
        call(
            self.s.name,
            Scope::Conn(&conn),
            false,
            // SAFETY: the continuation and backend live for the call.
            || unsafe { f(next_preconnect, bp as *mut c_void, c_int::from(readonly)) },
            |r| *r == -1,
        )
        .map(|_| ())
    }

    fn list_exports(
        &self,
        next: &dyn NextExports,
        readonly: bool,
        is_tls: bool,
        exports: &mut Exports,
    ) -> Result<()> {
        let Some(f) = self.s.f.list_exports else {
            return next.list_exports(readonly, is_tls, exports);
        };
        let conn = ConnInfo::new(None, is_tls, Peer::Unknown);
        let mut b = BackendC::new();
        b.is_tls = is_tls;
        // SAFETY: erases the lifetime of `next` for the pointer kept in
        // `b`, which is dropped before this function returns.
        b.exports = Some(unsafe {
            core::mem::transmute::<*const dyn NextExports, *const (dyn NextExports + 'static)>(
                next as *const dyn NextExports,
            )
        });
        let bp: *mut BackendC = &mut b;
        let e: *mut Exports = exports;
        call(
            self.s.name,
            Scope::Conn(&conn),
            false,
            // SAFETY: the continuation, backend and list live for the call.
            || unsafe {
                f(
                    next_list_exports,
                    bp as *mut c_void,
                    c_int::from(readonly),
                    c_int::from(is_tls),
                    e,
                )
            },
            |r| *r == -1,
        )
        .map(|_| ())
    }

    fn default_export(
        &self,
        next: &dyn NextExports,
        readonly: bool,
        is_tls: bool,
    ) -> Result<Option<String>> {
        let Some(f) = self.s.f.default_export else {
            return next.default_export(readonly, is_tls);
        };
        let conn = ConnInfo::new(None, is_tls, Peer::Unknown);
        let mut b = BackendC::new();
        b.is_tls = is_tls;
        // SAFETY: as in list_exports: `b` does not outlive `next`.
        b.exports = Some(unsafe {
            core::mem::transmute::<*const dyn NextExports, *const (dyn NextExports + 'static)>(
                next as *const dyn NextExports,
            )
        });
        let bp: *mut BackendC = &mut b;
        call(
            self.s.name,
            Scope::Conn(&conn),
            false,
            || {
                // SAFETY: the continuation and backend live for the call;
                // the result is NULL or a string valid for the connection,
                // copied at once.
                unsafe {
                    copy_str(f(
                        next_default_export,
                        bp as *mut c_void,
                        c_int::from(readonly),
                        c_int::from(is_tls),
                    ))
                }
            },
            |_| false,
        )
    }

    fn open(
        &self,
        next: &mut dyn NextOpener,
        args: &OpenArgs<'_>,
    ) -> Result<Box<dyn FilterHandle>> {
        let conn = ConnInfo::new(Some(args.export_name), args.is_tls, args.peer.clone());
        let mut backend = Box::new(BackendC::new());
        backend.is_tls = args.is_tls;
        backend.reopener = next.reopener();
        let h = match self.s.f.open {
            None => {
                next.open(args.readonly, args.export_name)?;
                core::ptr::null_mut()
            }
            Some(open) => {
                // SAFETY: erases the borrow's lifetime for the pointer kept
                // in `ctx`, which is cleared before this function returns.
                let opener: *mut (dyn NextOpener + 'static) = unsafe {
                    core::mem::transmute::<*mut dyn NextOpener, *mut (dyn NextOpener + 'static)>(
                        next as *mut dyn NextOpener,
                    )
                };
                let mut ctx = Box::new(OpenCtx {
                    magic: CONTEXT_MAGIC,
                    opener: Some(opener),
                    backend: &mut *backend,
                });
                let cp: *mut OpenCtx = &mut *ctx;
                let name = CString::new(args.export_name).unwrap_or_default();
                let r = call(
                    self.s.name,
                    Scope::Conn(&conn),
                    false,
                    // SAFETY: the continuation, context and string live for
                    // the call.
                    || unsafe {
                        open(
                            next_open,
                            cp as *mut c_void,
                            c_int::from(args.readonly),
                            name.as_ptr(),
                            c_int::from(args.is_tls),
                        )
                    },
                    |h| h.is_null(),
                );
                ctx.opener = None;
                // The context stays valid (without its opener) for as long
                // as the handle, in case the filter kept it.
                let h = r?;
                return Ok(Box::new(CFilterHandle {
                    s: Arc::clone(&self.s),
                    h: HandlePtr(h),
                    next: NextC::new(None),
                    conn,
                    _ctx: Mutex::new(Some(ctx)),
                    _backend: backend,
                }));
            }
        };
        Ok(Box::new(CFilterHandle {
            s: Arc::clone(&self.s),
            h: HandlePtr(h),
            next: NextC::new(None),
            conn,
            _ctx: Mutex::new(None),
            _backend: backend,
        }))
    }
}

/// A filter's per-connection handle pointer.
struct HandlePtr(*mut c_void);

// SAFETY: only handed back to the filter's own callbacks, which the runtime
// calls concurrently only as the stack's thread model allows.
unsafe impl Send for HandlePtr {}
// SAFETY: as above.
unsafe impl Sync for HandlePtr {}

struct CFilterHandle {
    s: Arc<Shared>,
    h: HandlePtr,
    /// The `nbdkit_next *` for the connection's layer below.
    next: Box<NextC>,
    conn: Arc<ConnInfo>,
    _ctx: Mutex<Option<Box<OpenCtx>>>,
    _backend: Box<BackendC>,
}

// SAFETY: the raw pointers inside (`_ctx`'s backend, `next`'s context) point
// to objects owned by this handle or by the connection's stack, which
// outlive it; the C code's use of them across threads is bounded by the
// thread model, as with the handle itself.
unsafe impl Send for CFilterHandle {}
// SAFETY: as above.
unsafe impl Sync for CFilterHandle {}

impl Drop for CFilterHandle {
    fn drop(&mut self) {
        if let Some(close) = self.s.f.close {
            let h = self.h.0;
            // SAFETY: the handle came from `.open` and is closed once.
            let _ = call(
                self.s.name,
                Scope::Conn(&self.conn),
                false,
                || unsafe { close(h) },
                |_| false,
            );
        }
    }
}

impl CFilterHandle {
    /// The `nbdkit_next *` for this call, pointing at `next`.
    fn n(&self, next: &Context) -> *mut ffi::NextOps {
        self.next
            .ctx
            .store(next as *const Context as *mut Context, Ordering::Release);
        self.next.as_c()
    }

    fn int(&self, f: impl FnOnce() -> c_int) -> Result<c_int> {
        call(self.s.name, Scope::Conn(&self.conn), false, f, |r| *r == -1)
    }

    /// A data call: `int (*)(..., int *err)`.
    fn data(&self, f: impl FnOnce(*mut c_int) -> c_int) -> Result<()> {
        let mut err: c_int = 0;
        let ep: *mut c_int = &mut err;
        let r = call(
            self.s.name,
            Scope::Conn(&self.conn),
            false,
            || f(ep),
            |r| *r == -1,
        );
        match r {
            Ok(_) => Ok(()),
            Err(mut e) => {
                if err != 0 {
                    e.errno = crate::os::errno::from_os(err);
                }
                Err(e)
            }
        }
    }
}

macro_rules! ask_bool {
    ($self:ident, $next:ident, $field:ident) => {
        match $self.s.f.$field {
            Some(f) => {
                let (n, h) = ($self.n($next), $self.h.0);
                // SAFETY: the filter's own handle and a live next.
                $self.int(|| unsafe { f(n, h) }).map(|r| r != 0)
            }
            None => Ok($next.caps().$field),
        }
    };
}

macro_rules! ask_support {
    ($self:ident, $next:ident, $field:ident) => {
        match $self.s.f.$field {
            Some(f) => {
                let (n, h) = ($self.n($next), $self.h.0);
                // SAFETY: the filter's own handle and a live next.
                $self.int(|| unsafe { f(n, h) }).map(|r| match r {
                    0 => Support::None,
                    1 => Support::Emulate,
                    _ => Support::Native,
                })
            }
            None => Ok(match $next.caps().$field {
                Support::None => Support::None,
                _ => Support::Native,
            }),
        }
    };
}

impl FilterHandle for CFilterHandle {
    fn prepare(&self, next: &Context, readonly: bool) -> Result<()> {
        let n = self.n(next);
        let Some(f) = self.s.f.prepare else {
            return Ok(());
        };
        let h = self.h.0;
        // SAFETY: the filter's own handle and a live next.
        self.int(|| unsafe { f(n, h, c_int::from(readonly)) })
            .map(|_| ())
    }

    fn finalize(&self, next: &Context) -> Result<()> {
        let n = self.n(next);
        let Some(f) = self.s.f.finalize else {
            return Ok(());
        };
        let h = self.h.0;
        // SAFETY: the filter's own handle and a live next.
        self.int(|| unsafe { f(n, h) }).map(|_| ())
    }

    fn get_size(&self, next: &Context) -> Result<u64> {
        let Some(f) = self.s.f.get_size else {
            return Ok(next.caps().size);
        };
        let (n, h) = (self.n(next), self.h.0);
        // SAFETY: the filter's own handle and a live next.
        let r = call(
            self.s.name,
            Scope::Conn(&self.conn),
            false,
            || unsafe { f(n, h) },
            |r| *r < 0,
        )?;
        Ok(r as u64)
    }

    fn export_description(&self, next: &Context) -> Result<Option<String>> {
        let Some(f) = self.s.f.export_description else {
            return next.export_description();
        };
        let (n, h) = (self.n(next), self.h.0);
        call(
            self.s.name,
            Scope::Conn(&self.conn),
            false,
            // SAFETY: the filter's own handle and a live next; the result
            // is NULL or a string valid for the connection, copied at once.
            || unsafe { copy_str(f(n, h)) },
            |_| false,
        )
    }

    fn block_size(&self, next: &Context) -> Result<Option<BlockSize>> {
        let Some(f) = self.s.f.block_size else {
            return Ok(next.caps().block_size);
        };
        let (n, h) = (self.n(next), self.h.0);
        let (mut a, mut b, mut c) = (0u32, 0u32, 0u32);
        // SAFETY: the filter's own handle, a live next and three u32s.
        self.int(|| unsafe { f(n, h, &mut a, &mut b, &mut c) })?;
        Ok(Some(BlockSize {
            minimum: a,
            preferred: b,
            maximum: c,
        }))
    }

    fn can_write(&self, next: &Context) -> Result<bool> {
        ask_bool!(self, next, can_write)
    }
    fn can_flush(&self, next: &Context) -> Result<bool> {
        ask_bool!(self, next, can_flush)
    }
    fn is_rotational(&self, next: &Context) -> Result<bool> {
        ask_bool!(self, next, is_rotational)
    }
    fn can_trim(&self, next: &Context) -> Result<bool> {
        ask_bool!(self, next, can_trim)
    }
    fn can_zero(&self, next: &Context) -> Result<Support> {
        ask_support!(self, next, can_zero)
    }
    fn can_fast_zero(&self, next: &Context) -> Result<bool> {
        ask_bool!(self, next, can_fast_zero)
    }
    fn can_extents(&self, next: &Context) -> Result<bool> {
        ask_bool!(self, next, can_extents)
    }
    fn can_fua(&self, next: &Context) -> Result<Support> {
        ask_support!(self, next, can_fua)
    }
    fn can_multi_conn(&self, next: &Context) -> Result<bool> {
        ask_bool!(self, next, can_multi_conn)
    }
    fn can_cache(&self, next: &Context) -> Result<Support> {
        ask_support!(self, next, can_cache)
    }

    fn pread(&self, next: &Context, buf: &mut [u8], offset: u64, flags: Flags) -> Result<()> {
        let Some(f) = self.s.f.pread else {
            return next.pread(buf, offset, flags);
        };
        let count = super::plugin::count32(buf.len() as u64)?;
        let (n, h, p) = (self.n(next), self.h.0, buf.as_mut_ptr() as *mut c_void);
        // SAFETY: `p` has `count` writable bytes; handle and next are live.
        self.data(|e| unsafe { f(n, h, p, count, offset, flags.0, e) })
    }

    fn pwrite(&self, next: &Context, buf: &[u8], offset: u64, flags: Flags) -> Result<()> {
        let Some(f) = self.s.f.pwrite else {
            return next.pwrite(buf, offset, flags);
        };
        let count = super::plugin::count32(buf.len() as u64)?;
        let (n, h, p) = (self.n(next), self.h.0, buf.as_ptr() as *const c_void);
        // SAFETY: `p` has `count` readable bytes; handle and next are live.
        self.data(|e| unsafe { f(n, h, p, count, offset, flags.0, e) })
    }

    fn flush(&self, next: &Context, flags: Flags) -> Result<()> {
        let Some(f) = self.s.f.flush else {
            return next.flush(flags);
        };
        let (n, h) = (self.n(next), self.h.0);
        // SAFETY: handle and next are live.
        self.data(|e| unsafe { f(n, h, flags.0, e) })
    }

    fn trim(&self, next: &Context, count: u64, offset: u64, flags: Flags) -> Result<()> {
        let Some(f) = self.s.f.trim else {
            return next.trim(count, offset, flags);
        };
        let c = super::plugin::count32(count)?;
        let (n, h) = (self.n(next), self.h.0);
        // SAFETY: handle and next are live.
        self.data(|e| unsafe { f(n, h, c, offset, flags.0, e) })
    }

    fn zero(&self, next: &Context, count: u64, offset: u64, flags: Flags) -> Result<()> {
        let Some(f) = self.s.f.zero else {
            return next.zero(count, offset, flags);
        };
        let c = super::plugin::count32(count)?;
        let (n, h) = (self.n(next), self.h.0);
        // SAFETY: handle and next are live.
        self.data(|e| unsafe { f(n, h, c, offset, flags.0, e) })
    }

    fn extents(
        &self,
        next: &Context,
        count: u64,
        offset: u64,
        flags: Flags,
        extents: &mut Extents,
    ) -> Result<()> {
        let Some(f) = self.s.f.extents else {
            return next.extents(count, offset, flags, extents);
        };
        let c = super::plugin::count32(count)?;
        let (n, h) = (self.n(next), self.h.0);
        let ep: *mut Extents = extents;
        // SAFETY: handle, next and the extents list are live for the call.
        self.data(|e| unsafe { f(n, h, c, offset, flags.0, ep, e) })
    }

    fn cache(&self, next: &Context, count: u64, offset: u64, flags: Flags) -> Result<()> {
        let Some(f) = self.s.f.cache else {
            return next.cache(count, offset, flags);
        };
        let c = super::plugin::count32(count)?;
        let (n, h) = (self.n(next), self.h.0);
        // SAFETY: handle and next are live.
        self.data(|e| unsafe { f(n, h, c, offset, flags.0, e) })
    }
}

/// The exported filter-side functions, for [`super::api::keep`].
pub(crate) fn keep() -> usize {
    let table: &[*const c_void] = &[
        nbdkit_context_get_backend as *const c_void,
        nbdkit_next_context_open as *const c_void,
        nbdkit_next_context_close as *const c_void,
        nbdkit_context_set_next as *const c_void,
        nbdkit_extents_full as *const c_void,
        nbdkit_extents_aligned as *const c_void,
    ];
    core::hint::black_box(table).len()
}
