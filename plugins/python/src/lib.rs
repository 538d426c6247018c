//! nbdkit's `python` plugin: plugins written in Python 3, run by the
//! system CPython (libpython, embedded with pyo3).
//!
//! This is a shared object that nbdkit loads through its C plugin ABI
//! (`plugin_init` returns a `struct nbdkit_plugin`), so that the `nbdkit`
//! executable itself never links libpython: the interpreter is only loaded
//! when `nbdkit python SCRIPT` asks for it. It calls back into the server
//! through the `nbdkit_*` functions the executable exports.
//!
//! The script (`script=`, the first bare parameter) runs once as the
//! `__main__` module when it is given; every callback of nbdkit's manual
//! (`nbdkit-python-plugin(3)`) is looked up there by name, each time it is
//! needed. Python runs only while a callback runs: the interpreter lock is
//! released the rest of the time, so a script that chooses a parallel
//! thread model has its requests run concurrently whenever it releases the
//! lock itself (I/O, `time.sleep`, C extensions).
//!
//! An exception in a callback (or a value of the wrong type) fails that
//! callback: one `nbdkit: error:` line with the script, the callback, the
//! exception and its line in the script; the errno is the one the script
//! gave `nbdkit.set_error`, else EIO. The full traceback is a debug
//! message (`-v`).

use nbdkit_plugin_abi as abi;
mod errors;
mod module;

use core::ffi::{c_char, c_int, c_void};
use core::panic::AssertUnwindSafe;
use std::ffi::CStr;
use std::sync::OnceLock;

use pyo3::call::PyCallArgs;
use pyo3::exceptions::PyTypeError;
use pyo3::ffi as pyffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyString, PyTuple};

use abi::H;

/// The newest API version a script may declare (`API_VERSION = 2`).
const MAX_API_VERSION: i64 = 2;
/// The stable ABI version of Python 3 (PEP 384).
const PEP_384_ABI_VERSION: u32 = 3;

/// The loaded script.
struct Script {
    /// The path as given on the command line.
    path: String,
    /// Its `__main__` module, where the callbacks are.
    module: Py<PyModule>,
    /// The `API_VERSION` it declared (1 without one).
    api_version: i64,
}

static SCRIPT: OnceLock<Script> = OnceLock::new();

/// Whether the interpreter started (in `.load`).
static STARTED: OnceLock<bool> = OnceLock::new();

/// How a callback failed.
enum Fail {
    /// An exception of the script's: reported with its place.
    Py(PyErr),
    /// Something else wrong: this message.
    Msg(String),
    /// Already reported (or nothing to report: `zero`'s fall-back).
    Quiet,
}

impl From<PyErr> for Fail {
    fn from(e: PyErr) -> Fail {
        Fail::Py(e)
    }
}

type Res<T> = Result<T, Fail>;

/// Run `f` with the interpreter lock held and the loaded script (when
/// `need_script`); a failure is reported as an error of `callback` and
/// turns into `fail`. A panic never crosses into the server.
fn run<R>(
    callback: &str,
    need_script: bool,
    fail: R,
    f: impl FnOnce(Python<'_>, Option<&Script>) -> Res<R>,
) -> R {
    if STARTED.get() != Some(&true) {
        abi::error("python: the Python interpreter did not start");
        return fail;
    }
    let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
        Python::attach(|py| {
            let script = SCRIPT.get();
            if need_script && script.is_none() {
                abi::error(
                    "a Python script is required: nbdkit python /path/to/plugin.py [key=value ...]",
                );
                return None;
            }
            let path = script.map_or("python", |s| s.path.as_str());
            match f(py, script) {
                Ok(v) => Some(v),
                Err(Fail::Py(e)) => {
                    errors::report(py, path, &format!("{callback}: error"), &e);
                    None
                }
                Err(Fail::Msg(m)) => {
                    abi::error(&format!("{path}: {callback}: error: {m}"));
                    None
                }
                Err(Fail::Quiet) => None,
            }
        })
    }));
    match r {
        Ok(Some(v)) => v,
        Ok(None) => fail,
        Err(_) => {
            abi::error(&format!("python: {callback}: internal error"));
            fail
        }
    }
}

/// The script's callback `name`, when it defines it (and it is callable).
fn callback<'py>(
    py: Python<'py>,
    s: &Script,
    name: &Bound<'py, PyString>,
) -> Option<Bound<'py, PyAny>> {
    let f = s.module.bind(py).as_any().getattr(name).ok()?;
    if f.is_callable() {
        Some(f)
    } else {
        abi::debug(&format!("object {name} isn't callable"));
        None
    }
}

/// The failure for a callback `f` that returned a value of the wrong type.
fn bad_return(py: Python<'_>, f: &Bound<'_, PyAny>, what: &str, e: PyErr) -> Fail {
    let line = f
        .getattr("__code__")
        .and_then(|c| c.getattr("co_firstlineno"))
        .and_then(|l| l.extract::<u64>())
        .map(|l| format!(" (defined at line {l})"))
        .unwrap_or_default();
    let ty = e
        .get_type(py)
        .name()
        .map(|n| n.to_string())
        .unwrap_or_default();
    let msg = e.value(py).str().map(|s| s.to_string()).unwrap_or_default();
    Fail::Msg(format!(
        "{what} returned a value of the wrong type: {ty}: {msg}{line}"
    ))
}

/// A Python handle (the object the script's `open` returned).
struct Handle {
    obj: Py<PyAny>,
}

/// The script's handle behind the server's pointer.
///
/// # Safety
/// `h` came from [`py_open`] and is not yet closed.
unsafe fn handle<'a>(h: H) -> &'a Handle {
    // SAFETY: the caller's contract: a live Box<Handle> from py_open.
    unsafe { &*(h as *const Handle) }
}

fn strerror(errno: i32) -> String {
    // SAFETY: strerror returns a valid string for any errno value.
    unsafe { CStr::from_ptr(libc::strerror(errno)) }
        .to_string_lossy()
        .into_owned()
}

// ---------------------------------------------------------------------------
// Loading and configuration

unsafe extern "C" fn py_load() {
    let ok = std::panic::catch_unwind(|| {
        Python::initialize();
        Python::attach(|py| -> PyResult<()> {
            // Make this (the server's main) thread Python's main thread.
            py.import("threading")?;
            module::install(py)
        })
    });
    let started = match ok {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            Python::attach(|py| errors::report(py, "python", "cannot start", &e));
            false
        }
        Err(_) => {
            abi::error("python: the Python interpreter could not start");
            false
        }
    };
    let _ = STARTED.set(started);
}

/// Flush Python's own buffers of stdout and stderr (the process may end
/// without finalising the interpreter).
fn flush_stdio(py: Python<'_>) {
    if let Ok(sys) = py.import("sys") {
        for n in ["stdout", "stderr"] {
            if let Ok(f) = sys.getattr(n) {
                if !f.is_none() {
                    let _ = f.call_method0("flush");
                }
            }
        }
    }
}

unsafe extern "C" fn py_unload() {
    if STARTED.get() != Some(&true) {
        return;
    }
    let _ = std::panic::catch_unwind(|| {
        Python::attach(|py| {
            // The script's atexit handlers run at exit, as when the
            // interpreter is finalised; the interpreter itself is left
            // alone (other threads may still be in it).
            if let Ok(a) = py.import("atexit") {
                if let Err(e) = a.call_method0("_run_exitfuncs") {
                    let path = SCRIPT.get().map_or("python", |s| s.path.as_str());
                    errors::report(py, path, "atexit: error", &e);
                }
            }
            flush_stdio(py);
        })
    });
}

unsafe extern "C" fn py_dump_plugin() {
    run("dump_plugin", false, (), |py, script| {
        // SAFETY: Py_GetVersion returns a static string.
        let v = unsafe { CStr::from_ptr(pyffi::Py_GetVersion()) }.to_string_lossy();
        let v = v.split_whitespace().next().unwrap_or_default();
        println!("python_version={v}");
        println!("python_pep_384_abi_version={PEP_384_ABI_VERSION}");
        println!("nbdkit_python_maximum_api_version={MAX_API_VERSION}");
        let Some(s) = script else { return Ok(()) };
        if let Some(f) = callback(py, s, intern!(py, "dump_plugin")) {
            let r = f.call0();
            flush_stdio(py);
            r?;
        }
        Ok(())
    })
}

/// Run the script as `__main__`.
fn load_script(py: Python<'_>, path: &str) -> Res<Script> {
    let source = std::fs::read(path).map_err(|e| {
        Fail::Msg(format!(
            "cannot open file: {}",
            e.raw_os_error().map_or_else(|| e.to_string(), strerror)
        ))
    })?;
    let main = py.import("__main__")?;
    let globals = main.dict();
    globals.set_item("__file__", path)?;
    globals.set_item("__cached__", py.None())?;
    let builtins = py.import("builtins")?;
    let run = || -> PyResult<()> {
        let code = builtins
            .getattr("compile")?
            .call1((PyBytes::new(py, &source), path, "exec"))?;
        builtins.getattr("exec")?.call1((code, &globals))?;
        Ok(())
    };
    if let Err(e) = run() {
        errors::report(py, path, "error running this script", &e);
        return Err(Fail::Quiet);
    }
    let module: Py<PyModule> = main.unbind();
    let s = Script {
        path: path.to_string(),
        module,
        api_version: 1,
    };
    let required = ["open", "get_size", "pread"];
    if required
        .iter()
        .any(|n| callback(py, &s, &PyString::new(py, n)).is_none())
    {
        return Err(Fail::Msg(
            "one of the required callbacks 'open', 'get_size' or 'pread' is not defined \
             by this Python script.  nbdkit requires these callbacks."
                .to_string(),
        ));
    }
    let api_version = match s.module.bind(py).as_any().getattr("API_VERSION") {
        Err(_) => 1,
        Ok(v) => match v.extract::<i64>() {
            Ok(n) if (1..=MAX_API_VERSION).contains(&n) => n,
            Ok(n) => {
                return Err(Fail::Msg(format!(
                    "API_VERSION requested unknown version: {n}.  \
                     This plugin supports API versions between 1 and {MAX_API_VERSION}."
                )))
            }
            Err(_) => {
                return Err(Fail::Msg(format!(
                    "API_VERSION must be an integer between 1 and {MAX_API_VERSION}"
                )))
            }
        },
    };
    abi::debug(&format!("module requested API_VERSION {api_version}"));
    Ok(Script { api_version, ..s })
}

/// The error of a failed script load: `SCRIPT: MESSAGE`.
fn load_failed(path: &str, f: Fail) -> c_int {
    match f {
        Fail::Msg(m) => abi::error(&format!("{path}: {m}")),
        Fail::Py(e) => Python::attach(|py| errors::report(py, path, "error", &e)),
        Fail::Quiet => {}
    }
    -1
}

/// A C string argument as Rust text.
///
/// # Safety
/// `p` is NULL or a NUL-terminated string valid for the call.
unsafe fn arg(p: *const c_char) -> String {
    if p.is_null() {
        String::new()
    } else {
        // SAFETY: the caller's contract.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }
}

unsafe extern "C" fn py_config(key: *const c_char, value: *const c_char) -> c_int {
    // SAFETY: the server passes two NUL-terminated strings.
    let (key, value) = unsafe { (arg(key), arg(value)) };
    if SCRIPT.get().is_none() {
        if key != "script" {
            abi::error("the first parameter must be script=/path/to/python/script.py");
            return -1;
        }
        if STARTED.get() != Some(&true) {
            abi::error("python: the Python interpreter did not start");
            return -1;
        }
        let loaded = std::panic::catch_unwind(AssertUnwindSafe(|| {
            Python::attach(|py| load_script(py, &value))
        }));
        return match loaded {
            Ok(Ok(s)) => {
                let _ = SCRIPT.set(s);
                0
            }
            Ok(Err(f)) => load_failed(&value, f),
            Err(_) => load_failed(&value, Fail::Msg("internal error".into())),
        };
    }
    run_s("config", -1, |py, s| {
        match callback(py, s, intern!(py, "config")) {
            Some(f) => {
                f.call1((key, value))?;
                Ok(0)
            }
            None => Err(Fail::Msg(
                "this plugin does not need command line configuration".into(),
            )),
        }
    })
}

/// Call the script's global callback `name` with no arguments, if defined.
fn global0(name: &'static str) -> c_int {
    run_s(name, -1, |py, s| {
        if let Some(f) = callback(py, s, &PyString::intern(py, name)) {
            f.call0()?;
        }
        Ok(0)
    })
}

unsafe extern "C" fn py_config_complete() -> c_int {
    global0("config_complete")
}

unsafe extern "C" fn py_thread_model() -> c_int {
    if SCRIPT.get().is_none() {
        return abi::THREAD_MODEL_SERIALIZE_ALL_REQUESTS;
    }
    run_s("thread_model", -1, |py, s| {
        match callback(py, s, intern!(py, "thread_model")) {
            Some(f) => {
                let r = f.call0()?;
                r.extract::<c_int>()
                    .map_err(|e| bad_return(py, &f, "thread_model", e))
            }
            None => Ok(abi::THREAD_MODEL_SERIALIZE_ALL_REQUESTS),
        }
    })
}

unsafe extern "C" fn py_get_ready() -> c_int {
    global0("get_ready")
}

unsafe extern "C" fn py_after_fork() -> c_int {
    global0("after_fork")
}

unsafe extern "C" fn py_cleanup() {
    if SCRIPT.get().is_some() {
        global0("cleanup");
    }
}

// ---------------------------------------------------------------------------
// Connections

fn pybool(py: Python<'_>, b: c_int) -> Bound<'_, PyBool> {
    PyBool::new(py, b != 0).to_owned()
}

unsafe extern "C" fn py_preconnect(readonly: c_int) -> c_int {
    run_s("preconnect", -1, |py, s| {
        if let Some(f) = callback(py, s, intern!(py, "preconnect")) {
            f.call1((pybool(py, readonly),))?;
        }
        Ok(0)
    })
}

/// A name or description from the script: `str` (or `bytes`).
fn text(v: &Bound<'_, PyAny>) -> Option<String> {
    if let Ok(s) = v.extract::<String>() {
        return Some(s);
    }
    v.cast::<PyBytes>()
        .ok()
        .map(|b| String::from_utf8_lossy(b.as_bytes()).into_owned())
}

unsafe extern "C" fn py_list_exports(
    readonly: c_int,
    is_tls: c_int,
    exports: *mut abi::Exports,
) -> c_int {
    run_s("list_exports", -1, |py, s| {
        let Some(f) = callback(py, s, intern!(py, "list_exports")) else {
            // SAFETY: the server's list for this call.
            return Ok(unsafe { abi::nbdkit_use_default_export(exports) });
        };
        let r = f.call1((pybool(py, readonly), pybool(py, is_tls)))?;
        let iter = r.try_iter().map_err(|_| {
            Fail::Msg("list_exports method did not return something which is iterable".into())
        })?;
        for item in iter {
            let item = item?;
            let (name, desc) = if let Some(n) = text(&item) {
                (n, None)
            } else {
                let pair = item.cast::<PyTuple>().ok().filter(|t| t.len() == 2);
                let Some(pair) = pair else {
                    return Err(Fail::Msg(
                        "list_exports method did not return an iterable of names or \
                         (name, description) 2-tuples"
                            .into(),
                    ));
                };
                let name = text(&pair.get_item(0)?);
                let d = pair.get_item(1)?;
                let desc = if d.is_none() {
                    Some(None)
                } else {
                    text(&d).map(Some)
                };
                match (name, desc) {
                    (Some(n), Some(d)) => (n, d),
                    _ => {
                        return Err(Fail::Msg(
                            "list_exports method did not return an iterable of string 2-tuples"
                                .into(),
                        ))
                    }
                }
            };
            let n = abi::cstring(&name);
            let d = desc.as_deref().map(abi::cstring);
            let dp = d.as_ref().map_or(core::ptr::null(), |d| d.as_ptr());
            // SAFETY: the server's list for this call and two strings (or
            // NULL) that it copies.
            if unsafe { abi::nbdkit_add_export(exports, n.as_ptr(), dp) } == -1 {
                return Err(Fail::Quiet);
            }
        }
        Ok(0)
    })
}

/// Hand a string to the server, which keeps it for the connection.
fn intern_str(s: &str) -> *const c_char {
    let c = abi::cstring(s);
    // SAFETY: a NUL-terminated string, copied by the server.
    unsafe { abi::nbdkit_strdup_intern(c.as_ptr()) }
}

unsafe extern "C" fn py_default_export(readonly: c_int, is_tls: c_int) -> *const c_char {
    run_s("default_export", core::ptr::null(), |py, s| {
        let Some(f) = callback(py, s, intern!(py, "default_export")) else {
            return Ok(c"".as_ptr());
        };
        let r = f.call1((pybool(py, readonly), pybool(py, is_tls)))?;
        match text(&r) {
            Some(name) => Ok(intern_str(&name)),
            None => Err(Fail::Msg(
                "default_export method did not return a string".into(),
            )),
        }
    })
}

unsafe extern "C" fn py_open(readonly: c_int) -> H {
    run_s("open", core::ptr::null_mut(), |py, s| {
        let f = callback(py, s, intern!(py, "open"))
            .ok_or_else(|| Fail::Msg("missing callback: open".into()))?;
        let obj = f.call1((pybool(py, readonly),))?.unbind();
        Ok(Box::into_raw(Box::new(Handle { obj })) as H)
    })
}

unsafe extern "C" fn py_close(h: H) {
    if h.is_null() {
        return;
    }
    // SAFETY: the server closes each handle from py_open once.
    let hd = unsafe { Box::from_raw(h as *mut Handle) };
    run("close", true, (), move |py, s| {
        let r = match s.and_then(|s| callback(py, s, intern!(py, "close"))) {
            Some(f) => f.call1((hd.obj.bind(py),)).map(|_| ()),
            None => Ok(()),
        };
        // The handle is released with the lock held.
        drop(hd);
        r.map_err(Fail::from)
    })
}

/// Call the script's `name` with `args` (the handle first); `None` when
/// the script does not define `name`.
fn call_h<'py>(
    py: Python<'py>,
    s: &Script,
    name: &Bound<'py, PyString>,
    args: impl PyCallArgs<'py>,
) -> Res<Option<(Bound<'py, PyAny>, Bound<'py, PyAny>)>> {
    let Some(f) = callback(py, s, name) else {
        return Ok(None);
    };
    let r = f.call1(args)?;
    Ok(Some((f, r)))
}

/// Like [`run`], for a callback that needs the loaded script.
fn run_s<R>(callback: &str, fail: R, f: impl FnOnce(Python<'_>, &Script) -> Res<R>) -> R {
    run(callback, true, fail, |py, s| f(py, s.ok_or(Fail::Quiet)?))
}

unsafe extern "C" fn py_export_description(h: H) -> *const c_char {
    // SAFETY: a live handle from py_open.
    let hd = unsafe { handle(h) };
    run_s(
        "export_description",
        core::ptr::null(),
        |py, s| match call_h(py, s, intern!(py, "export_description"), (hd.obj.bind(py),))? {
            None => Ok(core::ptr::null()),
            Some((_, r)) => match text(&r) {
                Some(d) => Ok(intern_str(&d)),
                None => Err(Fail::Msg(
                    "export_description method did not return a string".into(),
                )),
            },
        },
    )
}

unsafe extern "C" fn py_get_size(h: H) -> i64 {
    // SAFETY: a live handle from py_open.
    let hd = unsafe { handle(h) };
    run_s("get_size", -1, |py, s| {
        let Some((f, r)) = call_h(py, s, intern!(py, "get_size"), (hd.obj.bind(py),))? else {
            return Err(Fail::Msg("missing callback: get_size".into()));
        };
        let n = r
            .extract::<i64>()
            .map_err(|e| bad_return(py, &f, "get_size", e))?;
        if n < 0 {
            return Err(Fail::Msg(format!(
                "get_size returned a negative size ({n})"
            )));
        }
        Ok(n)
    })
}

unsafe extern "C" fn py_block_size(h: H, min: *mut u32, pref: *mut u32, max: *mut u32) -> c_int {
    // SAFETY: a live handle from py_open.
    let hd = unsafe { handle(h) };
    let r = run_s("block_size", None, |py, s| {
        match call_h(py, s, intern!(py, "block_size"), (hd.obj.bind(py),))? {
            None => Ok(Some((0, 0, 0))),
            Some((f, r)) => r
                .extract::<(u32, u32, u32)>()
                .map(Some)
                .map_err(|e| bad_return(py, &f, "block_size", e)),
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

/// A boolean `can_*`-style callback: its result's truth value; without it,
/// whether the script defines `plain` (e.g. `pwrite` for `can_write`).
fn boolean(h: H, name: &'static str, plain: Option<&'static str>) -> c_int {
    // SAFETY: a live handle from py_open.
    let hd = unsafe { handle(h) };
    run_s(name, -1, |py, s| {
        match call_h(py, s, &PyString::intern(py, name), (hd.obj.bind(py),))? {
            Some((f, r)) => r
                .is_truthy()
                .map(c_int::from)
                .map_err(|e| bad_return(py, &f, name, e)),
            None => Ok(c_int::from(plain.is_some_and(|p| {
                callback(py, s, &PyString::intern(py, p)).is_some()
            }))),
        }
    })
}

/// An integer `can_*` callback (`can_fua`, `can_cache`); `default` without it.
fn integer(h: H, name: &'static str, default: impl FnOnce(Python<'_>, &Script) -> c_int) -> c_int {
    // SAFETY: a live handle from py_open.
    let hd = unsafe { handle(h) };
    run_s(name, -1, |py, s| {
        match call_h(py, s, &PyString::intern(py, name), (hd.obj.bind(py),))? {
            Some((f, r)) => r
                .extract::<c_int>()
                .map_err(|e| bad_return(py, &f, name, e)),
            None => Ok(default(py, s)),
        }
    })
}

unsafe extern "C" fn py_is_rotational(h: H) -> c_int {
    boolean(h, "is_rotational", None)
}

unsafe extern "C" fn py_can_multi_conn(h: H) -> c_int {
    boolean(h, "can_multi_conn", None)
}

unsafe extern "C" fn py_can_write(h: H) -> c_int {
    boolean(h, "can_write", Some("pwrite"))
}

unsafe extern "C" fn py_can_flush(h: H) -> c_int {
    boolean(h, "can_flush", Some("flush"))
}

unsafe extern "C" fn py_can_trim(h: H) -> c_int {
    boolean(h, "can_trim", Some("trim"))
}

unsafe extern "C" fn py_can_zero(h: H) -> c_int {
    boolean(h, "can_zero", Some("zero"))
}

unsafe extern "C" fn py_can_extents(h: H) -> c_int {
    boolean(h, "can_extents", Some("extents"))
}

unsafe extern "C" fn py_can_fast_zero(h: H) -> c_int {
    let defined = STARTED.get() == Some(&true)
        && Python::attach(|py| {
            SCRIPT
                .get()
                .is_some_and(|s| callback(py, s, intern!(py, "can_fast_zero")).is_some())
        });
    if defined {
        return boolean(h, "can_fast_zero", None);
    }
    // Without it, a fast zero can fail fast when zeroing is not native.
    // SAFETY: the same live handle.
    match unsafe { py_can_zero(h) } {
        -1 => -1,
        z => c_int::from(z == 0),
    }
}

unsafe extern "C" fn py_can_fua(h: H) -> c_int {
    integer(h, "can_fua", |py, s| {
        if callback(py, s, intern!(py, "flush")).is_some() {
            abi::FUA_EMULATE
        } else {
            abi::FUA_NONE
        }
    })
}

unsafe extern "C" fn py_can_cache(h: H) -> c_int {
    integer(h, "can_cache", |py, s| {
        if callback(py, s, intern!(py, "cache")).is_some() {
            abi::CACHE_NATIVE
        } else {
            abi::CACHE_NONE
        }
    })
}

// ---------------------------------------------------------------------------
// Data

/// A memoryview of `len` bytes at `p` (`PyBUF_WRITE` or `PyBUF_READ`),
/// valid only during the callback: it is released afterwards if the
/// script kept a reference to it.
fn memoryview<'py>(
    py: Python<'py>,
    p: *mut c_char,
    len: u32,
    flags: c_int,
) -> PyResult<Bound<'py, PyAny>> {
    // SAFETY: `p` points to `len` bytes the server lends for the call
    // (writable when `flags` is PyBUF_WRITE); the view is released before
    // the call returns to the server (see `release`).
    unsafe {
        let v = pyffi::PyMemoryView_FromMemory(p, len as pyffi::Py_ssize_t, flags);
        Bound::from_owned_ptr_or_err(py, v)
    }
}

/// Release a memoryview of the server's buffer if anything else still
/// refers to it, so that the script cannot reach the buffer after the
/// callback.
fn release(v: Bound<'_, PyAny>) {
    // SAFETY: reading the reference count of a live object.
    if unsafe { pyffi::Py_REFCNT(v.as_ptr()) } > 1 {
        let _ = v.call_method0("release");
    }
}

unsafe extern "C" fn py_pread(
    h: H,
    buf: *mut c_void,
    count: u32,
    offset: u64,
    flags: u32,
) -> c_int {
    // SAFETY: a live handle from py_open.
    let hd = unsafe { handle(h) };
    run_s("pread", -1, |py, s| {
        let name = intern!(py, "pread");
        if s.api_version >= 2 {
            let v = memoryview(py, buf.cast(), count, pyffi::PyBUF_WRITE)?;
            let r = call_h(py, s, name, (hd.obj.bind(py), v.clone(), offset, flags));
            release(v);
            return match r? {
                Some(_) => Ok(0),
                None => Err(Fail::Msg("missing callback: pread".into())),
            };
        }
        let Some((f, r)) = call_h(py, s, name, (hd.obj.bind(py), count, offset))? else {
            return Err(Fail::Msg("missing callback: pread".into()));
        };
        copy_result(py, &f, &r, buf.cast(), count as usize)?;
        Ok(0)
    })
}

/// API 1's `pread` returns a buffer: copy its first `count` bytes.
fn copy_result(
    py: Python<'_>,
    f: &Bound<'_, PyAny>,
    r: &Bound<'_, PyAny>,
    dst: *mut u8,
    count: usize,
) -> Res<()> {
    // SAFETY: all-zero bytes are a valid empty Py_buffer.
    let mut view: pyffi::Py_buffer = unsafe { core::mem::zeroed() };
    // SAFETY: `view` is ours to fill; released below when filled.
    if unsafe { pyffi::PyObject_GetBuffer(r.as_ptr(), &mut view, pyffi::PyBUF_SIMPLE) } == -1 {
        let e = PyErr::fetch(py);
        drop(e);
        return Err(bad_return(
            py,
            f,
            "pread",
            PyTypeError::new_err(
                "the value returned from pread does not support the buffer protocol",
            ),
        ));
    }
    let res = if (view.len as usize) < count {
        Err(Fail::Msg(format!(
            "the buffer returned from pread is too small ({} < {count} bytes)",
            view.len
        )))
    } else {
        // SAFETY: the view has at least `count` readable bytes and `dst`
        // is the server's buffer of `count` bytes; they cannot overlap.
        unsafe { core::ptr::copy_nonoverlapping(view.buf as *const u8, dst, count) };
        Ok(())
    };
    // SAFETY: the view was filled by PyObject_GetBuffer above.
    unsafe { pyffi::PyBuffer_Release(&mut view) };
    res
}

/// The script's data callback `name` with a handle; a missing callback
/// is an error ("not implemented").
fn data(
    h: H,
    name: &'static str,
    args: impl for<'py> FnOnce(
        Python<'py>,
        &Script,
        &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyTuple>>,
) -> c_int {
    // SAFETY: a live handle from py_open.
    let hd = unsafe { handle(h) };
    run_s(name, -1, |py, s| {
        let a = args(py, s, hd.obj.bind(py))?;
        match call_h(py, s, &PyString::intern(py, name), a)? {
            Some(_) => Ok(0),
            None => Err(Fail::Msg(format!("{name} not implemented"))),
        }
    })
}

unsafe extern "C" fn py_pwrite(
    h: H,
    buf: *const c_void,
    count: u32,
    offset: u64,
    flags: u32,
) -> c_int {
    // SAFETY: a live handle from py_open.
    let hd = unsafe { handle(h) };
    run_s("pwrite", -1, |py, s| {
        let v = memoryview(py, buf as *mut c_char, count, pyffi::PyBUF_READ)?;
        let name = intern!(py, "pwrite");
        let r = if s.api_version >= 2 {
            call_h(py, s, name, (hd.obj.bind(py), v.clone(), offset, flags))
        } else {
            call_h(py, s, name, (hd.obj.bind(py), v.clone(), offset))
        };
        release(v);
        match r? {
            Some(_) => Ok(0),
            None => Err(Fail::Msg("pwrite not implemented".into())),
        }
    })
}

unsafe extern "C" fn py_flush(h: H, flags: u32) -> c_int {
    data(h, "flush", |py, s, h| {
        if s.api_version >= 2 {
            (h, flags).into_pyobject(py)
        } else {
            (h,).into_pyobject(py)
        }
    })
}

unsafe extern "C" fn py_trim(h: H, count: u32, offset: u64, flags: u32) -> c_int {
    data(h, "trim", |py, s, h| {
        if s.api_version >= 2 {
            (h, count, offset, flags).into_pyobject(py)
        } else {
            (h, count, offset).into_pyobject(py)
        }
    })
}

unsafe extern "C" fn py_cache(h: H, count: u32, offset: u64, flags: u32) -> c_int {
    data(h, "cache", |py, _, h| {
        (h, count, offset, flags).into_pyobject(py)
    })
}

unsafe extern "C" fn py_zero(h: H, count: u32, offset: u64, flags: u32) -> c_int {
    // SAFETY: a live handle from py_open.
    let hd = unsafe { handle(h) };
    run_s("zero", -1, |py, s| {
        let name = intern!(py, "zero");
        module::clear_last_error();
        let r = if s.api_version >= 2 {
            call_h(py, s, name, (hd.obj.bind(py), count, offset, flags))
        } else {
            let may_trim = flags & abi::FLAG_MAY_TRIM != 0;
            call_h(py, s, name, (hd.obj.bind(py), count, offset, may_trim))
        };
        // nbdkit.set_error(errno.EOPNOTSUPP) asks the server to write
        // zeroes instead, whether the script then raises or returns.
        let e = module::last_error();
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

unsafe extern "C" fn py_extents(
    h: H,
    count: u32,
    offset: u64,
    flags: u32,
    extents: *mut abi::Extents,
) -> c_int {
    // SAFETY: a live handle from py_open.
    let hd = unsafe { handle(h) };
    run_s("extents", -1, |py, s| {
        let Some((f, r)) = call_h(
            py,
            s,
            intern!(py, "extents"),
            (hd.obj.bind(py), count, offset, flags),
        )?
        else {
            // Like the server without the callback: all data.
            // SAFETY: the server's list for this call.
            return match unsafe { abi::nbdkit_add_extent(extents, offset, count.into(), 0) } {
                -1 => Err(Fail::Quiet),
                _ => Ok(0),
            };
        };
        let iter = r.try_iter().map_err(|_| {
            Fail::Msg("extents method did not return something which is iterable".into())
        })?;
        let mut n = 0u64;
        for item in iter {
            let item = item?;
            let t = item.cast::<PyTuple>().ok().filter(|t| t.len() == 3);
            let Some(t) = t else {
                return Err(Fail::Msg(
                    "extents method did not return an iterable of 3-tuples".into(),
                ));
            };
            let (o, l, ty) = t
                .extract::<(u64, u64, u32)>()
                .map_err(|e| bad_return(py, &f, "extents", e))?;
            n += 1;
            // SAFETY: the server's list for this call.
            if unsafe { abi::nbdkit_add_extent(extents, o, l, ty) } == -1 {
                return Err(Fail::Quiet);
            }
        }
        if n == 0 {
            return Err(Fail::Msg(
                "extents method cannot return an empty list".into(),
            ));
        }
        Ok(0)
    })
}

// ---------------------------------------------------------------------------
// Registration

const CONFIG_HELP: &CStr = c"script=<FILENAME>     (required) The Python plugin to run.\n\
[other arguments may be used by the plugin that you load]";

static PLUGIN: abi::Registration = abi::Registration(abi::Plugin {
    name: c"python".as_ptr(),
    load: Some(py_load),
    unload: Some(py_unload),
    config: Some(py_config),
    config_complete: Some(py_config_complete),
    config_help: CONFIG_HELP.as_ptr(),
    open: Some(py_open),
    close: Some(py_close),
    get_size: Some(py_get_size),
    can_write: Some(py_can_write),
    can_flush: Some(py_can_flush),
    is_rotational: Some(py_is_rotational),
    can_trim: Some(py_can_trim),
    dump_plugin: Some(py_dump_plugin),
    can_zero: Some(py_can_zero),
    can_fua: Some(py_can_fua),
    pread: Some(py_pread),
    pwrite: Some(py_pwrite),
    flush: Some(py_flush),
    trim: Some(py_trim),
    zero: Some(py_zero),
    can_multi_conn: Some(py_can_multi_conn),
    can_extents: Some(py_can_extents),
    extents: Some(py_extents),
    can_cache: Some(py_can_cache),
    cache: Some(py_cache),
    thread_model_cb: Some(py_thread_model),
    can_fast_zero: Some(py_can_fast_zero),
    preconnect: Some(py_preconnect),
    get_ready: Some(py_get_ready),
    after_fork: Some(py_after_fork),
    list_exports: Some(py_list_exports),
    default_export: Some(py_default_export),
    export_description: Some(py_export_description),
    cleanup: Some(py_cleanup),
    block_size: Some(py_block_size),
    ..abi::Plugin::EMPTY
});

/// The registration function the server calls when it loads this object.
#[no_mangle]
pub extern "C" fn plugin_init() -> *const c_void {
    PLUGIN.as_ptr()
}
