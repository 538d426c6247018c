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

use core::ffi::{c_char, c_int};
use std::ffi::CStr;
use std::sync::OnceLock;

use pyo3::call::PyCallArgs;
use pyo3::exceptions::PyTypeError;
use pyo3::ffi as pyffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyString, PyTuple};

use abi::script::{
    zero_falls_back, ExportList, ExtentList, Flags, ScriptError, ScriptPlugin, Slots,
};

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
/// `need_script`); a failure is an error of `callback`.
fn run<R>(
    callback: &str,
    need_script: bool,
    f: impl FnOnce(Python<'_>, Option<&Script>) -> Res<R>,
) -> Result<R, ScriptError> {
    if STARTED.get() != Some(&true) {
        return Err(ScriptError::msg(
            "python: the Python interpreter did not start",
        ));
    }
    Python::attach(|py| {
        let script = SCRIPT.get();
        if need_script && script.is_none() {
            return Err(ScriptError::msg(
                "a Python script is required: nbdkit python /path/to/plugin.py [key=value ...]",
            ));
        }
        let path = script.map_or("python", |s| s.path.as_str());
        f(py, script).map_err(|e| match e {
            Fail::Py(e) => ScriptError::msg(errors::describe(
                py,
                path,
                &format!("{callback}: error"),
                &e,
            )),
            Fail::Msg(m) => ScriptError::msg(format!("{path}: {callback}: error: {m}")),
            Fail::Quiet => ScriptError::reported(),
        })
    })
}

/// Like [`run`], for a callback that needs the loaded script.
fn run_s<R>(
    callback: &str,
    f: impl FnOnce(Python<'_>, &Script) -> Res<R>,
) -> Result<R, ScriptError> {
    run(callback, true, |py, s| f(py, s.ok_or(Fail::Quiet)?))
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

// ---------------------------------------------------------------------------
// Loading and configuration

/// Start the interpreter (at `load`).
fn start() {
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

/// Run the script as `__main__`.
fn load_script(py: Python<'_>, path: &str) -> Res<Script> {
    let source = std::fs::read(path).map_err(|e| {
        Fail::Msg(format!(
            "cannot open file: {}",
            e.raw_os_error()
                .map_or_else(|| e.to_string(), abi::strerror)
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
fn load_failed(path: &str, f: Fail) -> ScriptError {
    match f {
        Fail::Msg(m) => ScriptError::msg(format!("{path}: {m}")),
        Fail::Py(e) => {
            ScriptError::msg(Python::attach(|py| errors::describe(py, path, "error", &e)))
        }
        Fail::Quiet => ScriptError::reported(),
    }
}

fn pybool(py: Python<'_>, b: bool) -> Bound<'_, PyBool> {
    PyBool::new(py, b).to_owned()
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

/// An integer `can_*` callback (`can_fua`, `can_cache`); `default` without it.
fn integer(
    h: &Handle,
    name: &'static str,
    default: impl FnOnce(Python<'_>, &Script) -> c_int,
) -> Result<c_int, ScriptError> {
    run_s(name, |py, s| {
        match call_h(py, s, &PyString::intern(py, name), (h.obj.bind(py),))? {
            Some((f, r)) => r
                .extract::<c_int>()
                .map_err(|e| bad_return(py, &f, name, e)),
            None => Ok(default(py, s)),
        }
    })
}

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
    h: &Handle,
    name: &'static str,
    args: impl for<'py> FnOnce(
        Python<'py>,
        &Script,
        &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyTuple>>,
) -> Result<(), ScriptError> {
    run_s(name, |py, s| {
        let a = args(py, s, h.obj.bind(py))?;
        match call_h(py, s, &PyString::intern(py, name), a)? {
            Some(_) => Ok(()),
            None => Err(Fail::Msg(format!("{name} not implemented"))),
        }
    })
}

// ---------------------------------------------------------------------------
// The plugin

struct PythonPlugin;

impl ScriptPlugin for PythonPlugin {
    type Handle = Handle;

    const NAME: &'static CStr = c"python";
    const CONFIG_HELP: &'static CStr = abi::script_config_help!("Python plugin");
    const MAGIC_CONFIG_KEY: Option<&'static CStr> = None;
    const THREAD_MODEL: c_int = abi::THREAD_MODEL_PARALLEL;
    const SLOTS: Slots = Slots {
        thread_model: true,
        ..Slots::STANDARD
    };

    fn loaded() -> bool {
        SCRIPT.get().is_some()
    }

    fn global(name: &'static str, args: &[bool]) -> Result<(), ScriptError> {
        run_s(name, |py, s| {
            if let Some(f) = callback(py, s, &PyString::intern(py, name)) {
                f.call1(PyTuple::new(py, args.iter().map(|&b| pybool(py, b)))?)?;
            }
            Ok(())
        })
    }

    fn boolean(
        h: &Handle,
        name: &'static str,
        plain: Option<&'static str>,
        default: bool,
    ) -> Result<bool, ScriptError> {
        run_s(name, |py, s| {
            match call_h(py, s, &PyString::intern(py, name), (h.obj.bind(py),))? {
                Some((f, r)) => r.is_truthy().map_err(|e| bad_return(py, &f, name, e)),
                None => Ok(plain.map_or(default, |p| {
                    callback(py, s, &PyString::intern(py, p)).is_some()
                })),
            }
        })
    }

    fn load() {
        start();
    }

    fn unload() {
        if STARTED.get() != Some(&true) {
            return;
        }
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
    }

    fn dump_plugin() -> Result<(), ScriptError> {
        run("dump_plugin", false, |py, script| {
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

    fn config(key: &str, value: &str) -> Result<(), ScriptError> {
        if SCRIPT.get().is_none() {
            if key != "script" {
                return Err(ScriptError::msg(
                    "the first parameter must be script=/path/to/python/script.py",
                ));
            }
            if STARTED.get() != Some(&true) {
                return Err(ScriptError::msg(
                    "python: the Python interpreter did not start",
                ));
            }
            let s =
                Python::attach(|py| load_script(py, value)).map_err(|f| load_failed(value, f))?;
            let _ = SCRIPT.set(s);
            return Ok(());
        }
        run_s("config", |py, s| {
            match callback(py, s, intern!(py, "config")) {
                Some(f) => {
                    f.call1((key, value))?;
                    Ok(())
                }
                None => Err(Fail::Msg(
                    "this plugin does not need command line configuration".into(),
                )),
            }
        })
    }

    fn thread_model() -> Result<c_int, ScriptError> {
        if SCRIPT.get().is_none() {
            return Ok(abi::THREAD_MODEL_SERIALIZE_ALL_REQUESTS);
        }
        run_s("thread_model", |py, s| {
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

    fn list_exports(
        readonly: bool,
        is_tls: bool,
        exports: &mut ExportList,
    ) -> Result<(), ScriptError> {
        run_s("list_exports", |py, s| {
            let Some(f) = callback(py, s, intern!(py, "list_exports")) else {
                return exports.use_default().map_err(|_| Fail::Quiet);
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
                                "list_exports method did not return an iterable of string \
                                 2-tuples"
                                    .into(),
                            ))
                        }
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
        run_s("default_export", |py, s| {
            let Some(f) = callback(py, s, intern!(py, "default_export")) else {
                return Ok(None);
            };
            let r = f.call1((pybool(py, readonly), pybool(py, is_tls)))?;
            match text(&r) {
                Some(name) => Ok(Some(name)),
                None => Err(Fail::Msg(
                    "default_export method did not return a string".into(),
                )),
            }
        })
    }

    fn open(readonly: bool) -> Result<Handle, ScriptError> {
        run_s("open", |py, s| {
            let f = callback(py, s, intern!(py, "open"))
                .ok_or_else(|| Fail::Msg("missing callback: open".into()))?;
            let obj = f.call1((pybool(py, readonly),))?.unbind();
            Ok(Handle { obj })
        })
    }

    fn close(h: Handle) -> Result<(), ScriptError> {
        run("close", true, move |py, s| {
            let r = match s.and_then(|s| callback(py, s, intern!(py, "close"))) {
                Some(f) => f.call1((h.obj.bind(py),)).map(|_| ()),
                None => Ok(()),
            };
            // The handle is released with the lock held.
            drop(h);
            r.map_err(Fail::from)
        })
    }

    fn export_description(h: &Handle) -> Result<Option<String>, ScriptError> {
        run_s("export_description", |py, s| {
            match call_h(py, s, intern!(py, "export_description"), (h.obj.bind(py),))? {
                None => Ok(None),
                Some((_, r)) => match text(&r) {
                    Some(d) => Ok(Some(d)),
                    None => Err(Fail::Msg(
                        "export_description method did not return a string".into(),
                    )),
                },
            }
        })
    }

    fn get_size(h: &Handle) -> Result<i64, ScriptError> {
        run_s("get_size", |py, s| {
            let Some((f, r)) = call_h(py, s, intern!(py, "get_size"), (h.obj.bind(py),))? else {
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

    fn block_size(h: &Handle) -> Result<(u32, u32, u32), ScriptError> {
        run_s("block_size", |py, s| {
            match call_h(py, s, intern!(py, "block_size"), (h.obj.bind(py),))? {
                None => Ok((0, 0, 0)),
                Some((f, r)) => r
                    .extract::<(u32, u32, u32)>()
                    .map_err(|e| bad_return(py, &f, "block_size", e)),
            }
        })
    }

    fn can_fast_zero(h: &Handle) -> Result<bool, ScriptError> {
        let defined = STARTED.get() == Some(&true)
            && Python::attach(|py| {
                SCRIPT
                    .get()
                    .is_some_and(|s| callback(py, s, intern!(py, "can_fast_zero")).is_some())
            });
        if defined {
            return Self::boolean(h, "can_fast_zero", None, false);
        }
        // Without it, a fast zero can fail fast when zeroing is not native.
        Ok(!Self::can_zero(h)?)
    }

    fn can_fua(h: &Handle) -> Result<c_int, ScriptError> {
        integer(h, "can_fua", |py, s| {
            if callback(py, s, intern!(py, "flush")).is_some() {
                abi::FUA_EMULATE
            } else {
                abi::FUA_NONE
            }
        })
    }

    fn can_cache(h: &Handle) -> Result<c_int, ScriptError> {
        integer(h, "can_cache", |py, s| {
            if callback(py, s, intern!(py, "cache")).is_some() {
                abi::CACHE_NATIVE
            } else {
                abi::CACHE_NONE
            }
        })
    }

    fn pread(h: &Handle, buf: &mut [u8], offset: u64, flags: Flags) -> Result<(), ScriptError> {
        let count = buf.len() as u32;
        let buf = buf.as_mut_ptr();
        run_s("pread", |py, s| {
            let name = intern!(py, "pread");
            if s.api_version >= 2 {
                // The script fills the server's buffer in place.
                let v = memoryview(py, buf.cast(), count, pyffi::PyBUF_WRITE)?;
                let r = call_h(
                    py,
                    s,
                    name,
                    (h.obj.bind(py), v.clone(), offset, flags.bits()),
                );
                release(v);
                return match r? {
                    Some(_) => Ok(()),
                    None => Err(Fail::Msg("missing callback: pread".into())),
                };
            }
            let Some((f, r)) = call_h(py, s, name, (h.obj.bind(py), count, offset))? else {
                return Err(Fail::Msg("missing callback: pread".into()));
            };
            copy_result(py, &f, &r, buf, count as usize)
        })
    }

    fn pwrite(h: &Handle, buf: &[u8], offset: u64, flags: Flags) -> Result<(), ScriptError> {
        run_s("pwrite", |py, s| {
            let v = memoryview(
                py,
                buf.as_ptr() as *mut c_char,
                buf.len() as u32,
                pyffi::PyBUF_READ,
            )?;
            let name = intern!(py, "pwrite");
            let r = if s.api_version >= 2 {
                call_h(
                    py,
                    s,
                    name,
                    (h.obj.bind(py), v.clone(), offset, flags.bits()),
                )
            } else {
                call_h(py, s, name, (h.obj.bind(py), v.clone(), offset))
            };
            release(v);
            match r? {
                Some(_) => Ok(()),
                None => Err(Fail::Msg("pwrite not implemented".into())),
            }
        })
    }

    fn flush(h: &Handle, flags: Flags) -> Result<(), ScriptError> {
        data(h, "flush", |py, s, h| {
            if s.api_version >= 2 {
                (h, flags.bits()).into_pyobject(py)
            } else {
                (h,).into_pyobject(py)
            }
        })
    }

    fn trim(h: &Handle, count: u32, offset: u64, flags: Flags) -> Result<(), ScriptError> {
        data(h, "trim", |py, s, h| {
            if s.api_version >= 2 {
                (h, count, offset, flags.bits()).into_pyobject(py)
            } else {
                (h, count, offset).into_pyobject(py)
            }
        })
    }

    fn cache(h: &Handle, count: u32, offset: u64, flags: Flags) -> Result<(), ScriptError> {
        data(h, "cache", |py, _, h| {
            (h, count, offset, flags.bits()).into_pyobject(py)
        })
    }

    fn zero(h: &Handle, count: u32, offset: u64, flags: Flags) -> Result<(), ScriptError> {
        run_s("zero", |py, s| {
            let name = intern!(py, "zero");
            abi::script::clear_script_errno();
            let r = if s.api_version >= 2 {
                call_h(py, s, name, (h.obj.bind(py), count, offset, flags.bits()))
            } else {
                call_h(
                    py,
                    s,
                    name,
                    (h.obj.bind(py), count, offset, flags.may_trim()),
                )
            };
            // nbdkit.set_error(errno.EOPNOTSUPP) asks the server to write
            // zeroes instead, whether the script then raises or returns.
            if zero_falls_back(abi::script::script_errno(), matches!(r, Ok(None))) {
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
        run_s("extents", |py, s| {
            let Some((f, r)) = call_h(
                py,
                s,
                intern!(py, "extents"),
                (h.obj.bind(py), count, offset, flags.bits()),
            )?
            else {
                // Like the server without the callback: all data.
                return extents
                    .add(offset, count.into(), 0)
                    .map_err(|_| Fail::Quiet);
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
                extents.add(o, l, ty).map_err(|_| Fail::Quiet)?;
            }
            if n == 0 {
                return Err(Fail::Msg(
                    "extents method cannot return an empty list".into(),
                ));
            }
            Ok(())
        })
    }
}

abi::register_script_plugin!(PythonPlugin);
