//! nbdkit's `perl` plugin: plugins written in Perl 5, run by the system
//! libperl embedded in this shared object.
//!
//! Like the python plugin, this is a shared object that nbdkit loads
//! through its C plugin ABI, so the `nbdkit` executable never links
//! libperl. Perl's embedding API is mostly C macros (the argument stack,
//! reference counts, the interpreter context), so the few operations that
//! need it live in a small C shim (`shim.c`, compiled by the `cc` crate
//! with the flags of `perl -MExtUtils::Embed`): start the interpreter with
//! the `Nbdkit::` package, load a script, call a sub, make and read
//! values. Everything else is here.
//!
//! The script (`script=`, the magic key: `nbdkit perl FILE`) runs once,
//! its text evaluated in package `main` (Perl's messages name the file
//! and its lines); the callbacks of nbdkit-perl-plugin(3) are the subs
//! of package `main` with those names. A `die` in a callback fails it
//! with one `nbdkit: error:` line, Perl's own message (which names the
//! script and the line), and the errno the script gave
//! `Nbdkit::set_error` (EIO without one). Perl runs one callback at a
//! time (the thread model is `serialize_all_requests`, as nbdkit's).

use nbdkit_plugin_abi as abi;

use core::ffi::{c_char, c_int, c_void};
use core::panic::AssertUnwindSafe;
use std::ffi::CStr;
use std::sync::{Mutex, OnceLock};

use abi::H;

#[repr(C)]
struct Sv {
    _private: [u8; 0],
}

extern "C" {
    fn nbdkit_perl_start() -> c_int;
    fn nbdkit_perl_stop();
    fn nbdkit_perl_load(
        file: *const c_char,
        source: *const c_char,
        len: usize,
        err: *mut *mut c_char,
    ) -> c_int;
    fn nbdkit_perl_defined(name: *const c_char) -> c_int;
    fn nbdkit_perl_version() -> *const c_char;
    fn nbdkit_perl_clear_errno();
    fn nbdkit_perl_errno() -> c_int;
    fn nbdkit_perl_uv(v: u64) -> *mut Sv;
    fn nbdkit_perl_bool(v: c_int) -> *mut Sv;
    fn nbdkit_perl_str(s: *const c_char, len: usize) -> *mut Sv;
    fn nbdkit_perl_ref(sv: *mut Sv) -> *mut Sv;
    fn nbdkit_perl_free(sv: *mut Sv);
    fn nbdkit_perl_call(
        name: *const c_char,
        args: *mut *mut Sv,
        nargs: c_int,
        list: c_int,
        ret: *mut *mut Sv,
        err: *mut *mut c_char,
    ) -> c_int;
    fn nbdkit_perl_kind(sv: *mut Sv) -> c_int;
    fn nbdkit_perl_to_i64(sv: *mut Sv, v: *mut i64) -> c_int;
    fn nbdkit_perl_truth(sv: *mut Sv) -> c_int;
    fn nbdkit_perl_bytes(sv: *mut Sv, len: *mut usize) -> *const c_char;
    fn nbdkit_perl_text(sv: *mut Sv, len: *mut usize) -> *const c_char;
    fn nbdkit_perl_av_len(sv: *mut Sv) -> usize;
    fn nbdkit_perl_av_get(sv: *mut Sv, i: usize) -> *mut Sv;
}

/// The interpreter: every use holds this lock (Perl runs one thing at a
/// time; the server may call from any thread).
struct Perl {
    /// The script's path, once loaded.
    script: Option<String>,
}

static PERL: Mutex<Perl> = Mutex::new(Perl { script: None });
static STARTED: OnceLock<bool> = OnceLock::new();

/// A Perl value owned by Rust (one reference), released on drop.
struct Val(*mut Sv);

impl Drop for Val {
    fn drop(&mut self) {
        // SAFETY: our reference to a live value, dropped with the lock held
        // (values never outlive a `run`).
        unsafe { nbdkit_perl_free(self.0) }
    }
}

/// Kinds of values (`nbdkit_perl_kind`).
const UNDEF: c_int = 0;
const ARRAY: c_int = 2;

impl Val {
    fn kind(&self) -> c_int {
        // SAFETY: a live value.
        unsafe { nbdkit_perl_kind(self.0) }
    }
    fn int(&self) -> Option<i64> {
        let mut v = 0i64;
        // SAFETY: a live value and an out-parameter.
        (unsafe { nbdkit_perl_to_i64(self.0, &mut v) } == 0).then_some(v)
    }
    fn truth(&self) -> bool {
        // SAFETY: a live value.
        unsafe { nbdkit_perl_truth(self.0) != 0 }
    }
    /// Its bytes (valid while the value lives and is not changed).
    fn bytes(&self) -> Option<&[u8]> {
        let mut len = 0usize;
        // SAFETY: a live value; the string it returns stays valid while
        // the value is alive and unchanged.
        unsafe {
            let p = nbdkit_perl_bytes(self.0, &mut len);
            (!p.is_null()).then(|| core::slice::from_raw_parts(p.cast::<u8>(), len))
        }
    }
    fn text(&self) -> String {
        let mut len = 0usize;
        // SAFETY: as for `bytes`; copied at once.
        unsafe {
            let p = nbdkit_perl_text(self.0, &mut len);
            String::from_utf8_lossy(core::slice::from_raw_parts(p.cast::<u8>(), len)).into_owned()
        }
    }
    /// The elements of an array reference (new references).
    fn elements(&self) -> Vec<Val> {
        // SAFETY: an array reference (checked by the callers with `kind`).
        let n = unsafe { nbdkit_perl_av_len(self.0) };
        (0..n)
            // SAFETY: a borrowed element, given its own reference.
            .map(|i| Val(unsafe { nbdkit_perl_ref(nbdkit_perl_av_get(self.0, i)) }))
            .collect()
    }
    /// A short description for errors.
    fn describe(&self) -> String {
        match self.kind() {
            UNDEF => "undef".into(),
            _ => self.text(),
        }
    }
}

/// Arguments of a call (made with the lock held).
enum Arg<'a> {
    Uint(u64),
    Bool(bool),
    Str(&'a [u8]),
    Handle(&'a Handle),
}

impl Arg<'_> {
    fn make(&self) -> *mut Sv {
        // SAFETY: constructors of new values; the handle's value is live.
        unsafe {
            match *self {
                Arg::Uint(v) => nbdkit_perl_uv(v),
                Arg::Bool(b) => nbdkit_perl_bool(c_int::from(b)),
                Arg::Str(s) => nbdkit_perl_str(s.as_ptr().cast(), s.len()),
                Arg::Handle(h) => nbdkit_perl_ref(h.0),
            }
        }
    }
}

/// How a callback failed.
enum Fail {
    /// The script died: Perl's message.
    Died(String),
    /// Something else wrong: this message (prefixed with the script and
    /// the callback).
    Msg(String),
    /// Already reported.
    Quiet,
}

type Res<T> = Result<T, Fail>;

/// A C string copied and freed (malloc'd by the shim).
fn take_cstr(p: *mut c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: a NUL-terminated string malloc'd by the shim, ours to free.
    let s = unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned();
    // SAFETY: as above.
    unsafe { libc::free(p.cast()) };
    s
}

/// Perl's message on one line (a compilation may report several lines).
fn one_line(msg: &str) -> String {
    msg.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether the script defines sub `name`.
fn defined(name: &str) -> bool {
    let c = abi::cstring(name);
    // SAFETY: a NUL-terminated name; the caller holds the lock.
    unsafe { nbdkit_perl_defined(c.as_ptr()) != 0 }
}

/// Call sub `name` (scalar context, or list context gathered into one
/// array reference). A die is `Fail::Died`.
fn call(name: &str, args: &[Arg<'_>], list: bool) -> Res<Val> {
    let c = abi::cstring(name);
    let mut svs: Vec<*mut Sv> = args.iter().map(Arg::make).collect();
    let mut ret: *mut Sv = core::ptr::null_mut();
    let mut err: *mut c_char = core::ptr::null_mut();
    // SAFETY: a NUL-terminated name, new values (taken over by the call)
    // and two out-parameters; the caller holds the lock.
    let r = unsafe {
        nbdkit_perl_call(
            c.as_ptr(),
            svs.as_mut_ptr(),
            svs.len() as c_int,
            c_int::from(list),
            &mut ret,
            &mut err,
        )
    };
    if r == -1 {
        return Err(Fail::Died(one_line(&take_cstr(err))));
    }
    Ok(Val(ret))
}

/// Call `name` if the script defines it.
fn call_opt(name: &str, args: &[Arg<'_>], list: bool) -> Res<Option<Val>> {
    if defined(name) {
        call(name, args, list).map(Some)
    } else {
        Ok(None)
    }
}

/// Run `f` with the interpreter locked; a failure is reported as an
/// error of `callback` and turns into `fail`, with the errno the script
/// set (EIO by default). A panic never crosses into the server.
fn run<R>(callback: &str, need_script: bool, fail: R, f: impl FnOnce(&Perl) -> Res<R>) -> R {
    if STARTED.get() != Some(&true) {
        abi::error("perl: the Perl interpreter did not start");
        return fail;
    }
    let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let perl = PERL.lock().unwrap_or_else(|e| e.into_inner());
        if need_script && perl.script.is_none() {
            abi::error("a Perl script is required: nbdkit perl /path/to/plugin.pl [key=value ...]");
            return None;
        }
        // SAFETY: resets the shim's record of Nbdkit::set_error.
        unsafe { nbdkit_perl_clear_errno() };
        let path = perl.script.as_deref().unwrap_or("perl");
        let r = f(&perl);
        let err = match r {
            Ok(v) => return Some(v),
            Err(Fail::Died(m)) => Some(m),
            Err(Fail::Msg(m)) => Some(format!("{path}: {callback}: {m}")),
            Err(Fail::Quiet) => None,
        };
        if let Some(m) = err {
            abi::error(&m);
            // SAFETY: reads the shim's record.
            let e = unsafe { nbdkit_perl_errno() };
            abi::set_error(if e == 0 { libc::EIO } else { e });
        }
        None
    }));
    match r {
        Ok(Some(v)) => v,
        Ok(None) => fail,
        Err(_) => {
            abi::error(&format!("perl: {callback}: internal error"));
            fail
        }
    }
}

/// The script's handle (the value its `open` returned).
struct Handle(*mut Sv);

/// # Safety
/// `h` came from [`pl_open`] and is not yet closed.
unsafe fn handle<'a>(h: H) -> &'a Handle {
    // SAFETY: the caller's contract.
    unsafe { &*(h as *const Handle) }
}

// ---------------------------------------------------------------------------
// Loading and configuration

unsafe extern "C" fn pl_load() {
    // SAFETY: starts the interpreter once, before any other call.
    let ok = std::panic::catch_unwind(|| unsafe { nbdkit_perl_start() } == 0).unwrap_or(false);
    if !ok {
        abi::error("perl: the Perl interpreter could not start");
    }
    let _ = STARTED.set(ok);
}

unsafe extern "C" fn pl_unload() {
    if STARTED.get() == Some(&true) {
        let _guard = PERL.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: runs the script's END blocks and frees the interpreter;
        // nothing calls Perl afterwards (the server is exiting).
        let _ = std::panic::catch_unwind(|| unsafe { nbdkit_perl_stop() });
    }
}

unsafe extern "C" fn pl_dump_plugin() {
    run("dump_plugin", false, (), |perl| {
        // SAFETY: Perl's version (`$^V`) as a string, e.g. "5.36.0".
        let v = unsafe { CStr::from_ptr(nbdkit_perl_version()) }.to_string_lossy();
        println!("perl_version={v}");
        if perl.script.is_some() {
            call_opt("dump_plugin", &[], false)?;
        }
        Ok(())
    })
}

/// Load the script and check its required subs.
fn load_script(path: &str) -> Res<()> {
    let source = std::fs::read(path).map_err(|e| {
        Fail::Msg(format!(
            "cannot open file: {}",
            e.raw_os_error()
                .map_or_else(|| e.to_string(), abi::strerror)
        ))
    })?;
    // Perl's `#line` directive names the file: a name it cannot quote
    // shows as the bare file name.
    let shown = if path.contains(['"', '\n']) {
        "script"
    } else {
        path
    };
    let c = abi::cstring(shown);
    let mut err: *mut c_char = core::ptr::null_mut();
    // SAFETY: a NUL-terminated name, the source's bytes and an
    // out-parameter; the caller holds the lock.
    if unsafe { nbdkit_perl_load(c.as_ptr(), source.as_ptr().cast(), source.len(), &mut err) } == -1
    {
        return Err(Fail::Died(one_line(&take_cstr(err))));
    }
    if ["open", "get_size", "pread"].iter().any(|n| !defined(n)) {
        return Err(Fail::Msg(
            "one of the required callbacks 'open', 'get_size' or 'pread' is not defined \
             by this Perl script.  nbdkit requires these callbacks."
                .into(),
        ));
    }
    Ok(())
}

unsafe extern "C" fn pl_config(key: *const c_char, value: *const c_char) -> c_int {
    // SAFETY: the server passes two NUL-terminated strings.
    let (key, value) = unsafe { (abi::str_arg(key), abi::str_arg(value)) };
    if STARTED.get() != Some(&true) {
        abi::error("perl: the Perl interpreter did not start");
        return -1;
    }
    let loaded = PERL
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .script
        .is_some();
    if !loaded {
        if key != "script" {
            abi::error("the first parameter must be script=/path/to/perl/script.pl");
            return -1;
        }
        let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let mut perl = PERL.lock().unwrap_or_else(|e| e.into_inner());
            let r = load_script(&value);
            if r.is_ok() {
                perl.script = Some(value.clone());
            }
            r
        }));
        return match r {
            Ok(Ok(())) => 0,
            Ok(Err(Fail::Died(m))) => {
                abi::error(&format!("{value}: {m}"));
                -1
            }
            Ok(Err(Fail::Msg(m))) => {
                abi::error(&format!("{value}: {m}"));
                -1
            }
            Ok(Err(Fail::Quiet)) => -1,
            Err(_) => {
                abi::error(&format!("{value}: internal error"));
                -1
            }
        };
    }
    run("config", true, -1, |_| {
        if !defined("config") {
            return Err(Fail::Msg(
                "this plugin does not need command line configuration".into(),
            ));
        }
        call(
            "config",
            &[Arg::Str(key.as_bytes()), Arg::Str(value.as_bytes())],
            false,
        )?;
        Ok(0)
    })
}

/// Call the script's global callback `name` with no arguments, if defined.
fn global0(name: &'static str) -> c_int {
    run(name, true, -1, |_| {
        call_opt(name, &[], false)?;
        Ok(0)
    })
}

unsafe extern "C" fn pl_config_complete() -> c_int {
    global0("config_complete")
}

unsafe extern "C" fn pl_get_ready() -> c_int {
    global0("get_ready")
}

unsafe extern "C" fn pl_after_fork() -> c_int {
    global0("after_fork")
}

unsafe extern "C" fn pl_cleanup() {
    if PERL
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .script
        .is_some()
    {
        global0("cleanup");
    }
}

// ---------------------------------------------------------------------------
// Connections

unsafe extern "C" fn pl_preconnect(readonly: c_int) -> c_int {
    run("preconnect", true, -1, |_| {
        call_opt("preconnect", &[Arg::Bool(readonly != 0)], false)?;
        Ok(0)
    })
}

unsafe extern "C" fn pl_list_exports(
    readonly: c_int,
    is_tls: c_int,
    exports: *mut abi::Exports,
) -> c_int {
    run("list_exports", true, -1, |_| {
        let args = [Arg::Bool(readonly != 0), Arg::Bool(is_tls != 0)];
        let Some(r) = call_opt("list_exports", &args, true)? else {
            // SAFETY: the server's list for this call.
            return Ok(unsafe { abi::nbdkit_use_default_export(exports) });
        };
        let mut items = r.elements();
        // One array reference of exports is the same as a list of them.
        if items.len() == 1 && items[0].kind() == ARRAY {
            let inner = items[0].elements();
            if inner.iter().all(|i| i.kind() == ARRAY) {
                items = inner;
            }
        }
        for item in items {
            let (name, desc) = match item.kind() {
                ARRAY => {
                    let pair = item.elements();
                    if pair.is_empty() || pair.len() > 2 || pair[0].kind() == UNDEF {
                        return Err(Fail::Msg(
                            "list_exports must return names or [name, description] pairs".into(),
                        ));
                    }
                    let d = pair.get(1).filter(|d| d.kind() != UNDEF).map(Val::text);
                    (pair[0].text(), d)
                }
                1 => (item.text(), None),
                _ => {
                    return Err(Fail::Msg(format!(
                        "list_exports returned a value that is not a name: {}",
                        item.describe()
                    )))
                }
            };
            let n = abi::cstring(&name);
            let d = desc.as_deref().map(abi::cstring);
            let dp = d.as_ref().map_or(core::ptr::null(), |d| d.as_ptr());
            // SAFETY: the server's list and two strings (or NULL) it copies.
            if unsafe { abi::nbdkit_add_export(exports, n.as_ptr(), dp) } == -1 {
                return Err(Fail::Quiet);
            }
        }
        Ok(0)
    })
}

unsafe extern "C" fn pl_default_export(readonly: c_int, is_tls: c_int) -> *const c_char {
    run("default_export", true, core::ptr::null(), |_| {
        let args = [Arg::Bool(readonly != 0), Arg::Bool(is_tls != 0)];
        match call_opt("default_export", &args, false)? {
            None => Ok(c"".as_ptr()),
            Some(v) if v.kind() == 1 => Ok(abi::intern_str(&v.text())),
            Some(v) => Err(Fail::Msg(format!(
                "default_export returned a value that is not a string: {}",
                v.describe()
            ))),
        }
    })
}

unsafe extern "C" fn pl_open(readonly: c_int) -> H {
    run("open", true, core::ptr::null_mut(), |_| {
        let v = call("open", &[Arg::Bool(readonly != 0)], false)?;
        let h = Handle(v.0);
        core::mem::forget(v);
        Ok(Box::into_raw(Box::new(h)) as H)
    })
}

unsafe extern "C" fn pl_close(h: H) {
    if h.is_null() {
        return;
    }
    // SAFETY: the server closes each handle from pl_open once.
    let hd = unsafe { Box::from_raw(h as *mut Handle) };
    run("close", true, (), move |_| {
        let r = call_opt("close", &[Arg::Handle(&hd)], false);
        // The handle's reference goes, with the lock held.
        drop(Val(hd.0));
        r.map(|_| ())
    })
}

/// Call the script's `name` with the handle first.
fn call_h(h: H, name: &str, rest: &[Arg<'_>], list: bool) -> Res<Option<Val>> {
    // SAFETY: a live handle from pl_open.
    let hd = unsafe { handle(h) };
    let mut args = vec![Arg::Handle(hd)];
    args.extend(rest.iter().map(|a| match *a {
        Arg::Uint(v) => Arg::Uint(v),
        Arg::Bool(v) => Arg::Bool(v),
        Arg::Str(s) => Arg::Str(s),
        Arg::Handle(h) => Arg::Handle(h),
    }));
    call_opt(name, &args, list)
}

unsafe extern "C" fn pl_export_description(h: H) -> *const c_char {
    run(
        "export_description",
        true,
        core::ptr::null(),
        |_| match call_h(h, "export_description", &[], false)? {
            None => Ok(core::ptr::null()),
            Some(v) if v.kind() == 1 => Ok(abi::intern_str(&v.text())),
            Some(v) => Err(Fail::Msg(format!(
                "export_description returned a value that is not a string: {}",
                v.describe()
            ))),
        },
    )
}

unsafe extern "C" fn pl_get_size(h: H) -> i64 {
    run("get_size", true, -1, |_| {
        let v = call_h(h, "get_size", &[], false)?
            .ok_or_else(|| Fail::Msg("missing callback: get_size".into()))?;
        match v.int() {
            Some(n) if n >= 0 => Ok(n),
            Some(n) => Err(Fail::Msg(format!("returned a negative size ({n})"))),
            None => Err(Fail::Msg(format!(
                "returned a value that is not a number: {}",
                v.describe()
            ))),
        }
    })
}

unsafe extern "C" fn pl_block_size(h: H, min: *mut u32, pref: *mut u32, max: *mut u32) -> c_int {
    let r = run("block_size", true, None, |_| {
        let Some(v) = call_h(h, "block_size", &[], true)? else {
            return Ok(Some((0, 0, 0)));
        };
        let e = v.elements();
        let n: Vec<Option<u32>> = e
            .iter()
            .map(|x| x.int().and_then(|i| u32::try_from(i).ok()))
            .collect();
        match n[..] {
            [Some(a), Some(b), Some(c)] => Ok(Some((a, b, c))),
            _ => Err(Fail::Msg(
                "must return a list of three numbers (minimum, preferred, maximum)".into(),
            )),
        }
    });
    match r {
        Some((a, b, c)) => {
            // SAFETY: three u32s of the server's for the call.
            unsafe {
                *min = a;
                *pref = b;
                *max = c;
            }
            0
        }
        None => -1,
    }
}

/// A boolean `can_*`-style callback: its result's truth; without it,
/// whether the script defines `plain` (e.g. `pwrite` for `can_write`).
fn boolean(h: H, name: &'static str, plain: Option<&'static str>) -> c_int {
    run(name, true, -1, |_| match call_h(h, name, &[], false)? {
        Some(v) => Ok(c_int::from(v.truth())),
        None => Ok(c_int::from(plain.is_some_and(defined))),
    })
}

/// An integer `can_*` callback (`can_fua`, `can_cache`); `default` without it.
fn integer(h: H, name: &'static str, default: impl FnOnce() -> c_int) -> c_int {
    run(name, true, -1, |_| match call_h(h, name, &[], false)? {
        Some(v) => match v.int().and_then(|i| c_int::try_from(i).ok()) {
            Some(i) => Ok(i),
            None => Err(Fail::Msg(format!(
                "returned a value that is not a number: {}",
                v.describe()
            ))),
        },
        None => Ok(default()),
    })
}

unsafe extern "C" fn pl_is_rotational(h: H) -> c_int {
    boolean(h, "is_rotational", None)
}

unsafe extern "C" fn pl_can_multi_conn(h: H) -> c_int {
    boolean(h, "can_multi_conn", None)
}

unsafe extern "C" fn pl_can_write(h: H) -> c_int {
    boolean(h, "can_write", Some("pwrite"))
}

unsafe extern "C" fn pl_can_flush(h: H) -> c_int {
    boolean(h, "can_flush", Some("flush"))
}

unsafe extern "C" fn pl_can_trim(h: H) -> c_int {
    boolean(h, "can_trim", Some("trim"))
}

unsafe extern "C" fn pl_can_zero(h: H) -> c_int {
    boolean(h, "can_zero", Some("zero"))
}

unsafe extern "C" fn pl_can_extents(h: H) -> c_int {
    boolean(h, "can_extents", Some("extents"))
}

unsafe extern "C" fn pl_can_fast_zero(h: H) -> c_int {
    let has = {
        let perl = PERL.lock().unwrap_or_else(|e| e.into_inner());
        STARTED.get() == Some(&true) && perl.script.is_some() && defined("can_fast_zero")
    };
    if has {
        return boolean(h, "can_fast_zero", None);
    }
    // Without it, a fast zero can fail fast when zeroing is not native.
    // SAFETY: the same live handle.
    match unsafe { pl_can_zero(h) } {
        -1 => -1,
        z => c_int::from(z == 0),
    }
}

unsafe extern "C" fn pl_can_fua(h: H) -> c_int {
    integer(h, "can_fua", || {
        if defined("flush") {
            abi::FUA_EMULATE
        } else {
            abi::FUA_NONE
        }
    })
}

unsafe extern "C" fn pl_can_cache(h: H) -> c_int {
    integer(h, "can_cache", || {
        if defined("cache") {
            abi::CACHE_NATIVE
        } else {
            abi::CACHE_NONE
        }
    })
}

// ---------------------------------------------------------------------------
// Data

unsafe extern "C" fn pl_pread(
    h: H,
    buf: *mut c_void,
    count: u32,
    offset: u64,
    flags: u32,
) -> c_int {
    run("pread", true, -1, |_| {
        let args = range(count, offset, flags);
        let v = call_h(h, "pread", &args, false)?
            .ok_or_else(|| Fail::Msg("missing callback: pread".into()))?;
        if v.kind() != 1 {
            return Err(Fail::Msg(format!(
                "returned a value that is not a string of bytes: {}",
                v.describe()
            )));
        }
        let b = v
            .bytes()
            .ok_or_else(|| Fail::Msg("returned a string with wide characters, not bytes".into()))?;
        if b.len() < count as usize {
            return Err(Fail::Msg(format!(
                "the buffer returned is too small ({} < {count} bytes)",
                b.len()
            )));
        }
        // SAFETY: `count` readable bytes and the server's buffer of
        // `count` bytes; they cannot overlap.
        unsafe { core::ptr::copy_nonoverlapping(b.as_ptr(), buf.cast::<u8>(), count as usize) };
        Ok(0)
    })
}

/// The arguments `count, offset, flags` of a data callback.
fn range(count: u32, offset: u64, flags: u32) -> [Arg<'static>; 3] {
    [
        Arg::Uint(count.into()),
        Arg::Uint(offset),
        Arg::Uint(flags.into()),
    ]
}

/// A data callback; a missing one is "not implemented".
fn data(h: H, name: &'static str, args: &[Arg<'_>]) -> c_int {
    run(name, true, -1, |_| match call_h(h, name, args, false)? {
        Some(_) => Ok(0),
        None => Err(Fail::Msg("not implemented".into())),
    })
}

unsafe extern "C" fn pl_pwrite(
    h: H,
    buf: *const c_void,
    count: u32,
    offset: u64,
    flags: u32,
) -> c_int {
    // SAFETY: the server lends `count` bytes for the call.
    let b = unsafe { core::slice::from_raw_parts(buf.cast::<u8>(), count as usize) };
    data(
        h,
        "pwrite",
        &[Arg::Str(b), Arg::Uint(offset), Arg::Uint(flags.into())],
    )
}

unsafe extern "C" fn pl_flush(h: H, flags: u32) -> c_int {
    data(h, "flush", &[Arg::Uint(flags.into())])
}

unsafe extern "C" fn pl_trim(h: H, count: u32, offset: u64, flags: u32) -> c_int {
    data(h, "trim", &range(count, offset, flags))
}

unsafe extern "C" fn pl_cache(h: H, count: u32, offset: u64, flags: u32) -> c_int {
    data(h, "cache", &range(count, offset, flags))
}

unsafe extern "C" fn pl_zero(h: H, count: u32, offset: u64, flags: u32) -> c_int {
    run("zero", true, -1, |_| {
        let args = range(count, offset, flags);
        let r = call_h(h, "zero", &args, false);
        // Nbdkit::set_error(POSIX::EOPNOTSUPP) asks the server to write
        // zeroes instead, whether the script then dies or returns.
        // SAFETY: reads the shim's record.
        let e = unsafe { nbdkit_perl_errno() };
        if e == libc::EOPNOTSUPP || e == libc::ENOTSUP {
            abi::debug("zero requested falling back to pwrite");
            abi::set_error(e);
            return Err(Fail::Quiet);
        }
        match r? {
            Some(_) => Ok(0),
            None => {
                abi::debug("zero missing, falling back to pwrite");
                abi::set_error(libc::EOPNOTSUPP);
                Err(Fail::Quiet)
            }
        }
    })
}

unsafe extern "C" fn pl_extents(
    h: H,
    count: u32,
    offset: u64,
    flags: u32,
    extents: *mut abi::Extents,
) -> c_int {
    run("extents", true, -1, |_| {
        let args = range(count, offset, flags);
        let Some(r) = call_h(h, "extents", &args, true)? else {
            // Like the server without the callback: all data.
            // SAFETY: the server's list for this call.
            return match unsafe { abi::nbdkit_add_extent(extents, offset, count.into(), 0) } {
                -1 => Err(Fail::Quiet),
                _ => Ok(0),
            };
        };
        let mut items = r.elements();
        // One array reference of extents is the same as a list of them.
        if items.len() == 1 && items[0].kind() == ARRAY {
            let inner = items[0].elements();
            if !inner.is_empty() && inner.iter().all(|i| i.kind() == ARRAY) {
                items = inner;
            }
        }
        if items.is_empty() {
            return Err(Fail::Msg("cannot return an empty list of extents".into()));
        }
        for item in items {
            let e = if item.kind() == ARRAY {
                item.elements()
            } else {
                Vec::new()
            };
            let n: Vec<Option<i64>> = e.iter().map(Val::int).collect();
            let (o, l, t) = match n[..] {
                [Some(o), Some(l), Some(t)] if o >= 0 && l >= 0 && t >= 0 => (o, l, t),
                _ => {
                    return Err(Fail::Msg(format!(
                        "must return [offset, length, type] triples, not {}",
                        item.describe()
                    )))
                }
            };
            // SAFETY: the server's list for this call.
            if unsafe { abi::nbdkit_add_extent(extents, o as u64, l as u64, t as u32) } == -1 {
                return Err(Fail::Quiet);
            }
        }
        Ok(0)
    })
}

// ---------------------------------------------------------------------------
// Registration

const CONFIG_HELP: &CStr = c"script=<FILENAME>     (required) The Perl plugin to run.\n\
[other arguments may be used by the plugin that you load]";

static PLUGIN: abi::Registration = abi::Registration(abi::Plugin {
    thread_model: abi::THREAD_MODEL_SERIALIZE_ALL_REQUESTS,
    name: c"perl".as_ptr(),
    load: Some(pl_load),
    unload: Some(pl_unload),
    config: Some(pl_config),
    config_complete: Some(pl_config_complete),
    config_help: CONFIG_HELP.as_ptr(),
    open: Some(pl_open),
    close: Some(pl_close),
    get_size: Some(pl_get_size),
    can_write: Some(pl_can_write),
    can_flush: Some(pl_can_flush),
    is_rotational: Some(pl_is_rotational),
    can_trim: Some(pl_can_trim),
    dump_plugin: Some(pl_dump_plugin),
    can_zero: Some(pl_can_zero),
    can_fua: Some(pl_can_fua),
    pread: Some(pl_pread),
    pwrite: Some(pl_pwrite),
    flush: Some(pl_flush),
    trim: Some(pl_trim),
    zero: Some(pl_zero),
    magic_config_key: c"script".as_ptr(),
    can_multi_conn: Some(pl_can_multi_conn),
    can_extents: Some(pl_can_extents),
    extents: Some(pl_extents),
    can_cache: Some(pl_can_cache),
    cache: Some(pl_cache),
    can_fast_zero: Some(pl_can_fast_zero),
    preconnect: Some(pl_preconnect),
    get_ready: Some(pl_get_ready),
    after_fork: Some(pl_after_fork),
    list_exports: Some(pl_list_exports),
    default_export: Some(pl_default_export),
    export_description: Some(pl_export_description),
    cleanup: Some(pl_cleanup),
    block_size: Some(pl_block_size),
    ..abi::Plugin::EMPTY
});

/// The registration function the server calls when it loads this object.
#[no_mangle]
pub extern "C" fn plugin_init() -> *const c_void {
    PLUGIN.as_ptr()
}
