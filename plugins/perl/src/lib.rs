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

use core::ffi::{c_char, c_int};
use std::ffi::CStr;
use std::sync::{Mutex, OnceLock};

use abi::script::{zero_falls_back, ExportList, ExtentList, Flags, ScriptError, ScriptPlugin};

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

/// Run `f` with the interpreter locked (and the script loaded, when
/// `need_script`); a failure is an error of `callback`, with the errno
/// the script set (EIO by default).
fn run<R>(
    callback: &str,
    need_script: bool,
    f: impl FnOnce(&Perl) -> Res<R>,
) -> Result<R, ScriptError> {
    if STARTED.get() != Some(&true) {
        return Err(ScriptError::msg("perl: the Perl interpreter did not start"));
    }
    let perl = PERL.lock().unwrap_or_else(|e| e.into_inner());
    if need_script && perl.script.is_none() {
        return Err(ScriptError::msg(
            "a Perl script is required: nbdkit perl /path/to/plugin.pl [key=value ...]",
        ));
    }
    // SAFETY: resets the shim's record of Nbdkit::set_error.
    unsafe { nbdkit_perl_clear_errno() };
    let path = perl.script.as_deref().unwrap_or("perl");
    let m = match f(&perl) {
        Ok(v) => return Ok(v),
        Err(Fail::Died(m)) => m,
        Err(Fail::Msg(m)) => format!("{path}: {callback}: {m}"),
        Err(Fail::Quiet) => return Err(ScriptError::reported()),
    };
    // SAFETY: reads the shim's record.
    let e = unsafe { nbdkit_perl_errno() };
    Err(ScriptError::new(if e == 0 { libc::EIO } else { e }, m))
}

/// The script's handle (the value its `open` returned).
struct Handle(*mut Sv);

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

/// Call the script's `name` with the handle first.
fn call_h(h: &Handle, name: &str, rest: &[Arg<'_>], list: bool) -> Res<Option<Val>> {
    let mut args = vec![Arg::Handle(h)];
    args.extend(rest.iter().map(|a| match *a {
        Arg::Uint(v) => Arg::Uint(v),
        Arg::Bool(v) => Arg::Bool(v),
        Arg::Str(s) => Arg::Str(s),
        Arg::Handle(h) => Arg::Handle(h),
    }));
    call_opt(name, &args, list)
}

/// An integer `can_*` callback (`can_fua`, `can_cache`); `default` without it.
fn integer(
    h: &Handle,
    name: &'static str,
    default: impl FnOnce() -> c_int,
) -> Result<c_int, ScriptError> {
    run(name, true, |_| match call_h(h, name, &[], false)? {
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

/// The arguments `count, offset, flags` of a data callback.
fn range(count: u32, offset: u64, flags: Flags) -> [Arg<'static>; 3] {
    [
        Arg::Uint(count.into()),
        Arg::Uint(offset),
        Arg::Uint(flags.bits().into()),
    ]
}

/// A data callback; a missing one is "not implemented".
fn data(h: &Handle, name: &'static str, args: &[Arg<'_>]) -> Result<(), ScriptError> {
    run(name, true, |_| match call_h(h, name, args, false)? {
        Some(_) => Ok(()),
        None => Err(Fail::Msg("not implemented".into())),
    })
}

// ---------------------------------------------------------------------------
// The plugin

struct PerlPlugin;

impl ScriptPlugin for PerlPlugin {
    type Handle = Handle;

    const NAME: &'static CStr = c"perl";
    const CONFIG_HELP: &'static CStr = abi::script_config_help!("Perl plugin");

    fn loaded() -> bool {
        PERL.lock()
            .unwrap_or_else(|e| e.into_inner())
            .script
            .is_some()
    }

    fn global(name: &'static str, args: &[bool]) -> Result<(), ScriptError> {
        let args: Vec<Arg<'_>> = args.iter().map(|&b| Arg::Bool(b)).collect();
        run(name, true, |_| {
            call_opt(name, &args, false)?;
            Ok(())
        })
    }

    fn boolean(
        h: &Handle,
        name: &'static str,
        plain: Option<&'static str>,
        default: bool,
    ) -> Result<bool, ScriptError> {
        run(name, true, |_| match call_h(h, name, &[], false)? {
            Some(v) => Ok(v.truth()),
            None => Ok(plain.map_or(default, defined)),
        })
    }

    fn load() {
        // SAFETY: starts the interpreter once, before any other call.
        let ok = std::panic::catch_unwind(|| unsafe { nbdkit_perl_start() } == 0).unwrap_or(false);
        if !ok {
            abi::error("perl: the Perl interpreter could not start");
        }
        let _ = STARTED.set(ok);
    }

    fn unload() {
        if STARTED.get() == Some(&true) {
            let _guard = PERL.lock().unwrap_or_else(|e| e.into_inner());
            // SAFETY: runs the script's END blocks and frees the
            // interpreter; nothing calls Perl afterwards (the server is
            // exiting).
            unsafe { nbdkit_perl_stop() };
        }
    }

    fn dump_plugin() -> Result<(), ScriptError> {
        run("dump_plugin", false, |perl| {
            // SAFETY: Perl's version (`$^V`) as a string, e.g. "5.36.0".
            let v = unsafe { CStr::from_ptr(nbdkit_perl_version()) }.to_string_lossy();
            println!("perl_version={v}");
            if perl.script.is_some() {
                call_opt("dump_plugin", &[], false)?;
            }
            Ok(())
        })
    }

    fn config(key: &str, value: &str) -> Result<(), ScriptError> {
        if STARTED.get() != Some(&true) {
            return Err(ScriptError::msg("perl: the Perl interpreter did not start"));
        }
        let mut perl = PERL.lock().unwrap_or_else(|e| e.into_inner());
        if perl.script.is_none() {
            if key != "script" {
                return Err(ScriptError::msg(
                    "the first parameter must be script=/path/to/perl/script.pl",
                ));
            }
            return match load_script(value) {
                Ok(()) => {
                    perl.script = Some(value.to_string());
                    Ok(())
                }
                Err(Fail::Died(m)) | Err(Fail::Msg(m)) => {
                    Err(ScriptError::msg(format!("{value}: {m}")))
                }
                Err(Fail::Quiet) => Err(ScriptError::reported()),
            };
        }
        drop(perl);
        run("config", true, |_| {
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
            Ok(())
        })
    }

    fn list_exports(
        readonly: bool,
        is_tls: bool,
        exports: &mut ExportList,
    ) -> Result<(), ScriptError> {
        run("list_exports", true, |_| {
            let args = [Arg::Bool(readonly), Arg::Bool(is_tls)];
            let Some(r) = call_opt("list_exports", &args, true)? else {
                return exports.use_default().map_err(|_| Fail::Quiet);
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
                                "list_exports must return names or [name, description] pairs"
                                    .into(),
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
                exports
                    .add(&name, desc.as_deref())
                    .map_err(|_| Fail::Quiet)?;
            }
            Ok(())
        })
    }

    fn default_export(readonly: bool, is_tls: bool) -> Result<Option<String>, ScriptError> {
        run("default_export", true, |_| {
            let args = [Arg::Bool(readonly), Arg::Bool(is_tls)];
            match call_opt("default_export", &args, false)? {
                None => Ok(None),
                Some(v) if v.kind() == 1 => Ok(Some(v.text())),
                Some(v) => Err(Fail::Msg(format!(
                    "default_export returned a value that is not a string: {}",
                    v.describe()
                ))),
            }
        })
    }

    fn open(readonly: bool) -> Result<Handle, ScriptError> {
        run("open", true, |_| {
            let v = call("open", &[Arg::Bool(readonly)], false)?;
            let h = Handle(v.0);
            core::mem::forget(v);
            Ok(h)
        })
    }

    fn close(h: Handle) -> Result<(), ScriptError> {
        run("close", true, move |_| {
            let r = call_opt("close", &[Arg::Handle(&h)], false);
            // The handle's reference goes, with the lock held.
            drop(Val(h.0));
            r.map(|_| ())
        })
    }

    fn export_description(h: &Handle) -> Result<Option<String>, ScriptError> {
        run("export_description", true, |_| {
            match call_h(h, "export_description", &[], false)? {
                None => Ok(None),
                Some(v) if v.kind() == 1 => Ok(Some(v.text())),
                Some(v) => Err(Fail::Msg(format!(
                    "export_description returned a value that is not a string: {}",
                    v.describe()
                ))),
            }
        })
    }

    fn get_size(h: &Handle) -> Result<i64, ScriptError> {
        run("get_size", true, |_| {
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

    fn block_size(h: &Handle) -> Result<(u32, u32, u32), ScriptError> {
        run("block_size", true, |_| {
            let Some(v) = call_h(h, "block_size", &[], true)? else {
                return Ok((0, 0, 0));
            };
            let e = v.elements();
            let n: Vec<Option<u32>> = e
                .iter()
                .map(|x| x.int().and_then(|i| u32::try_from(i).ok()))
                .collect();
            match n[..] {
                [Some(a), Some(b), Some(c)] => Ok((a, b, c)),
                _ => Err(Fail::Msg(
                    "must return a list of three numbers (minimum, preferred, maximum)".into(),
                )),
            }
        })
    }

    fn can_fast_zero(h: &Handle) -> Result<bool, ScriptError> {
        let has = {
            let perl = PERL.lock().unwrap_or_else(|e| e.into_inner());
            STARTED.get() == Some(&true) && perl.script.is_some() && defined("can_fast_zero")
        };
        if has {
            return Self::boolean(h, "can_fast_zero", None, false);
        }
        // Without it, a fast zero can fail fast when zeroing is not native.
        Ok(!Self::can_zero(h)?)
    }

    fn can_fua(h: &Handle) -> Result<c_int, ScriptError> {
        integer(h, "can_fua", || {
            if defined("flush") {
                abi::FUA_EMULATE
            } else {
                abi::FUA_NONE
            }
        })
    }

    fn can_cache(h: &Handle) -> Result<c_int, ScriptError> {
        integer(h, "can_cache", || {
            if defined("cache") {
                abi::CACHE_NATIVE
            } else {
                abi::CACHE_NONE
            }
        })
    }

    fn pread(h: &Handle, buf: &mut [u8], offset: u64, flags: Flags) -> Result<(), ScriptError> {
        let count = buf.len();
        run("pread", true, |_| {
            let args = range(count as u32, offset, flags);
            let v = call_h(h, "pread", &args, false)?
                .ok_or_else(|| Fail::Msg("missing callback: pread".into()))?;
            if v.kind() != 1 {
                return Err(Fail::Msg(format!(
                    "returned a value that is not a string of bytes: {}",
                    v.describe()
                )));
            }
            let b = v.bytes().ok_or_else(|| {
                Fail::Msg("returned a string with wide characters, not bytes".into())
            })?;
            if b.len() < count {
                return Err(Fail::Msg(format!(
                    "the buffer returned is too small ({} < {count} bytes)",
                    b.len()
                )));
            }
            buf.copy_from_slice(&b[..count]);
            Ok(())
        })
    }

    fn pwrite(h: &Handle, buf: &[u8], offset: u64, flags: Flags) -> Result<(), ScriptError> {
        data(
            h,
            "pwrite",
            &[
                Arg::Str(buf),
                Arg::Uint(offset),
                Arg::Uint(flags.bits().into()),
            ],
        )
    }

    fn flush(h: &Handle, flags: Flags) -> Result<(), ScriptError> {
        data(h, "flush", &[Arg::Uint(flags.bits().into())])
    }

    fn trim(h: &Handle, count: u32, offset: u64, flags: Flags) -> Result<(), ScriptError> {
        data(h, "trim", &range(count, offset, flags))
    }

    fn cache(h: &Handle, count: u32, offset: u64, flags: Flags) -> Result<(), ScriptError> {
        data(h, "cache", &range(count, offset, flags))
    }

    fn zero(h: &Handle, count: u32, offset: u64, flags: Flags) -> Result<(), ScriptError> {
        run("zero", true, |_| {
            let r = call_h(h, "zero", &range(count, offset, flags), false);
            // Nbdkit::set_error(POSIX::EOPNOTSUPP) asks the server to write
            // zeroes instead, whether the script then dies or returns.
            // SAFETY: reads the shim's record.
            if zero_falls_back(unsafe { nbdkit_perl_errno() }, matches!(r, Ok(None))) {
                return Err(Fail::Quiet);
            }
            r.map(|_| ())
        })
    }

    fn extents(
        h: &Handle,
        count: u32,
        offset: u64,
        flags: Flags,
        extents: &mut ExtentList,
    ) -> Result<(), ScriptError> {
        run("extents", true, |_| {
            let Some(r) = call_h(h, "extents", &range(count, offset, flags), true)? else {
                // Like the server without the callback: all data.
                return extents
                    .add(offset, count.into(), 0)
                    .map_err(|_| Fail::Quiet);
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
                extents
                    .add(o as u64, l as u64, t as u32)
                    .map_err(|_| Fail::Quiet)?;
            }
            Ok(())
        })
    }
}

abi::register_script_plugin!(PerlPlugin);
