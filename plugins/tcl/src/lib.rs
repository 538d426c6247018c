//! nbdkit's `tcl` plugin: plugins written in Tcl, run by the system
//! libtcl (8.6) embedded in this shared object.
//!
//! Like the python and perl plugins, this is a shared object that nbdkit
//! loads through its C plugin ABI, so the `nbdkit` executable never links
//! libtcl. Tcl's C API is plain functions, declared here (the only macros
//! it needs, the reference counts of `Tcl_Obj`, are two lines of Rust).
//!
//! The script (`script=`, the magic key: `nbdkit tcl FILE`) is evaluated
//! once; the callbacks of nbdkit-tcl-plugin(3) are the procs with those
//! names (`plugin_open`, `get_size`, `pread {h count offset}`, ...). An
//! `error` in a proc fails the callback with one `nbdkit: error:` line:
//! the script, the callback, Tcl's message and the proc's line, and the
//! errno the script gave `nbdkit::set_error` (EIO without one). Tcl runs
//! one callback at a time (the thread model is `serialize_all_requests`,
//! as nbdkit's).

use nbdkit_plugin_abi as abi;

use core::ffi::{c_char, c_int, c_void};
use std::ffi::CStr;
use std::sync::{Mutex, OnceLock};

use abi::script::{
    zero_falls_back, ExportList, ExtentList, Flags, ScriptError, ScriptPlugin, Slots,
};

#[repr(C)]
struct Interp {
    _private: [u8; 0],
}

/// The start of `Tcl_Obj` (its reference count comes first).
#[repr(C)]
struct Obj {
    ref_count: c_int,
}

const TCL_OK: c_int = 0;
const TCL_ERROR: c_int = 1;
const TCL_GLOBAL_ONLY: c_int = 1;
const TCL_EVAL_GLOBAL: c_int = 0x20000;

type ObjCmdProc = unsafe extern "C" fn(*mut c_void, *mut Interp, c_int, *const *mut Obj) -> c_int;

extern "C" {
    fn Tcl_FindExecutable(argv0: *const c_char);
    fn Tcl_CreateInterp() -> *mut Interp;
    fn Tcl_Init(interp: *mut Interp) -> c_int;
    fn Tcl_EvalFile(interp: *mut Interp, file: *const c_char) -> c_int;
    fn Tcl_EvalEx(interp: *mut Interp, script: *const c_char, len: c_int, flags: c_int) -> c_int;
    fn Tcl_EvalObjv(interp: *mut Interp, objc: c_int, objv: *const *mut Obj, flags: c_int)
        -> c_int;
    fn Tcl_GetObjResult(interp: *mut Interp) -> *mut Obj;
    fn Tcl_GetStringResult(interp: *mut Interp) -> *const c_char;
    fn Tcl_GetErrorLine(interp: *mut Interp) -> c_int;
    fn Tcl_GetVar2(
        interp: *mut Interp,
        name1: *const c_char,
        name2: *const c_char,
        flags: c_int,
    ) -> *const c_char;
    fn Tcl_NewStringObj(bytes: *const c_char, len: c_int) -> *mut Obj;
    fn Tcl_NewByteArrayObj(bytes: *const u8, len: c_int) -> *mut Obj;
    fn Tcl_NewWideIntObj(v: i64) -> *mut Obj;
    fn Tcl_NewBooleanObj(v: c_int) -> *mut Obj;
    fn Tcl_GetWideIntFromObj(interp: *mut Interp, obj: *mut Obj, v: *mut i64) -> c_int;
    fn Tcl_GetBooleanFromObj(interp: *mut Interp, obj: *mut Obj, v: *mut c_int) -> c_int;
    fn Tcl_GetByteArrayFromObj(obj: *mut Obj, len: *mut c_int) -> *const u8;
    fn Tcl_GetStringFromObj(obj: *mut Obj, len: *mut c_int) -> *const c_char;
    fn Tcl_ListObjGetElements(
        interp: *mut Interp,
        list: *mut Obj,
        objc: *mut c_int,
        objv: *mut *mut *mut Obj,
    ) -> c_int;
    fn Tcl_CreateObjCommand(
        interp: *mut Interp,
        name: *const c_char,
        proc_: ObjCmdProc,
        data: *mut c_void,
        delete: Option<unsafe extern "C" fn(*mut c_void)>,
    ) -> *mut c_void;
    fn Tcl_WrongNumArgs(
        interp: *mut Interp,
        objc: c_int,
        objv: *const *mut Obj,
        msg: *const c_char,
    );
    fn Tcl_GetIntFromObj(interp: *mut Interp, obj: *mut Obj, v: *mut c_int) -> c_int;
    fn TclFreeObj(obj: *mut Obj);
}

/// A counted reference to a `Tcl_Obj`, released on drop.
struct Val(*mut Obj);

impl Val {
    /// Take a reference to `o`.
    fn new(o: *mut Obj) -> Val {
        // SAFETY: a live object; Tcl_IncrRefCount.
        unsafe { (*o).ref_count += 1 };
        Val(o)
    }
    fn int(&self, i: &Tcl) -> Option<i64> {
        let mut v = 0i64;
        // SAFETY: a live object and interpreter (lock held).
        (unsafe { Tcl_GetWideIntFromObj(i.0, self.0, &mut v) } == TCL_OK).then_some(v)
    }
    fn boolean(&self, i: &Tcl) -> Option<bool> {
        let mut v: c_int = 0;
        // SAFETY: as above.
        (unsafe { Tcl_GetBooleanFromObj(i.0, self.0, &mut v) } == TCL_OK).then_some(v != 0)
    }
    fn bytes(&self) -> &[u8] {
        let mut len: c_int = 0;
        // SAFETY: the byte array lives as long as the object is unchanged.
        unsafe {
            let p = Tcl_GetByteArrayFromObj(self.0, &mut len);
            if p.is_null() || len <= 0 {
                return &[];
            }
            core::slice::from_raw_parts(p, len.max(0) as usize)
        }
    }
    fn text(&self) -> String {
        let mut len: c_int = 0;
        // SAFETY: the string representation of a live object (UTF-8).
        unsafe {
            let p = Tcl_GetStringFromObj(self.0, &mut len);
            if p.is_null() || len <= 0 {
                return String::new();
            }
            String::from_utf8_lossy(core::slice::from_raw_parts(
                p.cast::<u8>(),
                len.max(0) as usize,
            ))
            .into_owned()
        }
    }
    fn list(&self, i: &Tcl) -> Option<Vec<Val>> {
        let mut n: c_int = 0;
        let mut v: *mut *mut Obj = core::ptr::null_mut();
        // SAFETY: a live object; the elements are valid while it is.
        if unsafe { Tcl_ListObjGetElements(i.0, self.0, &mut n, &mut v) } != TCL_OK {
            return None;
        }
        if n <= 0 || v.is_null() {
            return Some(Vec::new());
        }
        // SAFETY: `n` element pointers at `v`.
        let items = unsafe { core::slice::from_raw_parts(v, n.max(0) as usize) };
        Some(items.iter().map(|&o| Val::new(o)).collect())
    }
}

impl Drop for Val {
    fn drop(&mut self) {
        // SAFETY: our reference; Tcl_DecrRefCount (the lock is held).
        unsafe {
            let o = self.0;
            (*o).ref_count -= 1;
            if (*o).ref_count <= 0 {
                TclFreeObj(o);
            }
        }
    }
}

/// The interpreter.
struct Tcl(*mut Interp);

// SAFETY: used only with the lock of `TCL` held, one thread at a time.
unsafe impl Send for Tcl {}

struct State {
    interp: Option<Tcl>,
    script: Option<String>,
}

static TCL: Mutex<State> = Mutex::new(State {
    interp: None,
    script: None,
});
static STARTED: OnceLock<bool> = OnceLock::new();

/// Arguments of a call.
enum Arg<'a> {
    Int(i64),
    Bool(bool),
    Bytes(&'a [u8]),
    Str(&'a str),
    Handle(&'a Handle),
}

impl Arg<'_> {
    fn make(&self) -> Val {
        // SAFETY: constructors of new objects (lock held).
        let o = unsafe {
            match *self {
                Arg::Int(v) => Tcl_NewWideIntObj(v),
                Arg::Bool(b) => Tcl_NewBooleanObj(c_int::from(b)),
                Arg::Bytes(b) => Tcl_NewByteArrayObj(b.as_ptr(), b.len() as c_int),
                Arg::Str(s) => Tcl_NewStringObj(s.as_ptr().cast(), s.len() as c_int),
                Arg::Handle(h) => return Val::new(h.0 .0),
            }
        };
        Val::new(o)
    }
}

/// How a callback failed.
enum Fail {
    /// A Tcl error: the message and where.
    Tcl(String),
    /// Something else wrong.
    Msg(String),
    /// Already reported.
    Quiet,
}

type Res<T> = Result<T, Fail>;

impl Tcl {
    /// The interpreter's result, as text.
    fn result(&self) -> String {
        // SAFETY: a live interpreter (lock held).
        unsafe { CStr::from_ptr(Tcl_GetStringResult(self.0)) }
            .to_string_lossy()
            .into_owned()
    }

    /// The error of the last evaluation, on one line, with the proc and
    /// line where it happened (from `errorInfo`).
    fn error(&self) -> Fail {
        let msg = one_line(&self.result());
        // SAFETY: reads a global variable of a live interpreter.
        let info = unsafe {
            let p = Tcl_GetVar2(
                self.0,
                c"errorInfo".as_ptr(),
                core::ptr::null(),
                TCL_GLOBAL_ONLY,
            );
            if p.is_null() {
                String::new()
            } else {
                CStr::from_ptr(p).to_string_lossy().into_owned()
            }
        };
        // The innermost `(procedure "NAME" line N)`.
        let place = info.lines().find_map(|l| {
            l.trim()
                .strip_prefix("(procedure ")
                .map(|p| p.trim_end_matches(')').to_string())
        });
        match place {
            Some(p) => Fail::Tcl(format!("{msg} (procedure {p})")),
            None => Fail::Tcl(msg),
        }
    }

    /// Whether the script defines proc `name` (Tcl's own commands such as
    /// `open` do not count).
    fn defined(&self, name: &str) -> bool {
        let objs = [
            Arg::Str("info").make(),
            Arg::Str("procs").make(),
            Arg::Str(name).make(),
        ];
        let ptrs: Vec<*mut Obj> = objs.iter().map(|v| v.0).collect();
        // SAFETY: a live interpreter and three objects we hold.
        if unsafe { Tcl_EvalObjv(self.0, 3, ptrs.as_ptr(), TCL_EVAL_GLOBAL) } != TCL_OK {
            return false;
        }
        // SAFETY: the result of the evaluation.
        let r = Val::new(unsafe { Tcl_GetObjResult(self.0) });
        r.list(self).is_some_and(|l| !l.is_empty())
    }

    /// Call proc `name` with `args`; its result.
    fn call(&self, name: &str, args: &[Arg<'_>]) -> Res<Val> {
        let mut objs = vec![Arg::Str(name).make()];
        objs.extend(args.iter().map(Arg::make));
        let ptrs: Vec<*mut Obj> = objs.iter().map(|v| v.0).collect();
        // SAFETY: a live interpreter and objects we hold.
        let r =
            unsafe { Tcl_EvalObjv(self.0, ptrs.len() as c_int, ptrs.as_ptr(), TCL_EVAL_GLOBAL) };
        if r != TCL_OK {
            return Err(self.error());
        }
        // SAFETY: the result of the evaluation, with our own reference.
        Ok(Val::new(unsafe { Tcl_GetObjResult(self.0) }))
    }

    /// Call `name` if the script defines it.
    fn call_opt(&self, name: &str, args: &[Arg<'_>]) -> Res<Option<Val>> {
        if self.defined(name) {
            self.call(name, args).map(Some)
        } else {
            Ok(None)
        }
    }
}

/// Tcl's message on one line.
fn one_line(msg: &str) -> String {
    msg.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Run `f` with the interpreter locked; a failure is an error of
/// `callback`, with the errno the script set (EIO by default).
fn run<R>(callback: &str, f: impl FnOnce(&Tcl) -> Res<R>) -> Result<R, ScriptError> {
    if STARTED.get() != Some(&true) {
        return Err(ScriptError::msg("tcl: the Tcl interpreter did not start"));
    }
    let st = TCL.lock().unwrap_or_else(|e| e.into_inner());
    let (Some(tcl), Some(path)) = (st.interp.as_ref(), st.script.as_deref()) else {
        return Err(ScriptError::msg(
            "a Tcl script is required: nbdkit tcl /path/to/plugin.tcl [key=value ...]",
        ));
    };
    abi::script::clear_script_errno();
    let msg = match f(tcl) {
        Ok(v) => return Ok(v),
        Err(Fail::Tcl(m)) | Err(Fail::Msg(m)) => format!("{path}: {callback}: {m}"),
        Err(Fail::Quiet) => return Err(ScriptError::reported()),
    };
    let e = abi::script::script_errno();
    Err(ScriptError::new(if e == 0 { libc::EIO } else { e }, msg))
}

/// The script's handle (the value its `plugin_open` returned).
struct Handle(Val);

// ---------------------------------------------------------------------------
// The nbdkit:: commands

/// The string of argument `i`.
///
/// # Safety
/// `objv` has more than `i` live objects.
unsafe fn obj_text(objv: *const *mut Obj, i: usize) -> String {
    // SAFETY: the caller's contract.
    let v = Val::new(unsafe { *objv.add(i) });
    v.text()
}

/// `nbdkit::debug MSG`
unsafe extern "C" fn cmd_debug(
    _: *mut c_void,
    interp: *mut Interp,
    objc: c_int,
    objv: *const *mut Obj,
) -> c_int {
    if objc != 2 {
        // SAFETY: the arguments Tcl gave this command.
        unsafe { Tcl_WrongNumArgs(interp, 1, objv, c"message".as_ptr()) };
        return TCL_ERROR;
    }
    // SAFETY: two arguments.
    abi::debug(&unsafe { obj_text(objv, 1) });
    TCL_OK
}

/// `nbdkit::set_error ERRNO`
unsafe extern "C" fn cmd_set_error(
    _: *mut c_void,
    interp: *mut Interp,
    objc: c_int,
    objv: *const *mut Obj,
) -> c_int {
    let mut e: c_int = 0;
    // SAFETY: the arguments Tcl gave this command.
    if objc != 2 || unsafe { Tcl_GetIntFromObj(interp, *objv.add(1), &mut e) } != TCL_OK {
        // SAFETY: as above.
        unsafe { Tcl_WrongNumArgs(interp, 1, objv, c"errno".as_ptr()) };
        return TCL_ERROR;
    }
    abi::script::script_set_error(e);
    TCL_OK
}

// ---------------------------------------------------------------------------
// Loading and configuration

/// Start the interpreter (at `load`).
fn start() {
    let r = std::panic::catch_unwind(|| {
        // SAFETY: Tcl's start-up sequence, once, before any other call.
        unsafe {
            Tcl_FindExecutable(c"nbdkit".as_ptr());
            let i = Tcl_CreateInterp();
            if i.is_null() {
                return Err("cannot create a Tcl interpreter".to_string());
            }
            let tcl = Tcl(i);
            if Tcl_Init(i) != TCL_OK {
                return Err(format!(
                    "cannot initialize Tcl interpreter: {}",
                    tcl.result()
                ));
            }
            if Tcl_EvalEx(
                i,
                c"namespace eval ::nbdkit {}".as_ptr(),
                -1,
                TCL_EVAL_GLOBAL,
            ) != TCL_OK
            {
                return Err(tcl.result());
            }
            Tcl_CreateObjCommand(
                i,
                c"::nbdkit::debug".as_ptr(),
                cmd_debug,
                core::ptr::null_mut(),
                None,
            );
            Tcl_CreateObjCommand(
                i,
                c"::nbdkit::set_error".as_ptr(),
                cmd_set_error,
                core::ptr::null_mut(),
                None,
            );
            Ok(tcl)
        }
    });
    let ok = match r {
        Ok(Ok(tcl)) => {
            TCL.lock().unwrap_or_else(|e| e.into_inner()).interp = Some(tcl);
            true
        }
        Ok(Err(m)) => {
            abi::error(&format!("tcl: {m}"));
            false
        }
        Err(_) => {
            abi::error("tcl: the Tcl interpreter could not start");
            false
        }
    };
    let _ = STARTED.set(ok);
}

fn dump() -> Result<(), ScriptError> {
    if STARTED.get() != Some(&true) {
        return Ok(());
    }
    let st = TCL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(tcl) = st.interp.as_ref() else {
        return Ok(());
    };
    for (k, var) in [
        ("tcl_version", c"tcl_version"),
        ("tcl_patch_level", c"tcl_patchLevel"),
    ] {
        // SAFETY: reads a global variable of the live interpreter.
        let p = unsafe { Tcl_GetVar2(tcl.0, var.as_ptr(), core::ptr::null(), TCL_GLOBAL_ONLY) };
        if !p.is_null() {
            // SAFETY: a NUL-terminated value.
            println!("{k}={}", unsafe { CStr::from_ptr(p) }.to_string_lossy());
        }
    }
    drop(st);
    if !TclPlugin::loaded() {
        return Ok(());
    }
    run("dump_plugin", |t| {
        t.call_opt("dump_plugin", &[])?;
        Ok(())
    })
}

/// Evaluate the script and check its required procs.
fn load_script(tcl: &Tcl, path: &str) -> Result<(), String> {
    if let Err(e) = std::fs::File::open(path) {
        return Err(format!(
            "cannot open file: {}",
            e.raw_os_error()
                .map_or_else(|| e.to_string(), abi::strerror)
        ));
    }
    let c = abi::cstring(path);
    // SAFETY: a live interpreter and a NUL-terminated path; lock held.
    if unsafe { Tcl_EvalFile(tcl.0, c.as_ptr()) } != TCL_OK {
        // SAFETY: as above.
        let line = unsafe { Tcl_GetErrorLine(tcl.0) };
        return Err(format!("line {line}: {}", one_line(&tcl.result())));
    }
    if ["plugin_open", "get_size", "pread"]
        .iter()
        .any(|n| !tcl.defined(n))
    {
        return Err(
            "one of the required callbacks 'plugin_open', 'get_size' or 'pread' is not \
                    defined by this Tcl script.  nbdkit requires these callbacks."
                .into(),
        );
    }
    Ok(())
}

/// Call the script's `name` with the handle first.
fn call_h(t: &Tcl, h: &Handle, name: &str, rest: &[Arg<'_>]) -> Res<Option<Val>> {
    let mut args = vec![Arg::Handle(h)];
    args.extend(rest.iter().map(|a| match *a {
        Arg::Int(v) => Arg::Int(v),
        Arg::Bool(v) => Arg::Bool(v),
        Arg::Bytes(b) => Arg::Bytes(b),
        Arg::Str(s) => Arg::Str(s),
        Arg::Handle(h) => Arg::Handle(h),
    }));
    t.call_opt(name, &args)
}

/// A data callback; a missing one is "not implemented".
fn data(h: &Handle, name: &'static str, args: &[Arg<'_>]) -> Result<(), ScriptError> {
    run(name, |t| match call_h(t, h, name, args)? {
        Some(_) => Ok(()),
        None => Err(Fail::Msg("not implemented".into())),
    })
}

/// The arguments `count, offset` of a data callback.
fn range(count: u32, offset: u64) -> [Arg<'static>; 2] {
    [Arg::Int(count.into()), Arg::Int(offset as i64)]
}

// ---------------------------------------------------------------------------
// The plugin

struct TclPlugin;

impl ScriptPlugin for TclPlugin {
    type Handle = Handle;

    const NAME: &'static CStr = c"tcl";
    const CONFIG_HELP: &'static CStr = abi::script_config_help!("Tcl plugin");
    const SLOTS: Slots = Slots {
        unload: false,
        can_zero: false,
        can_fua: false,
        block_size: false,
        thread_model: false,
    };

    const FLUSH: &'static str = "plugin_flush";

    fn loaded() -> bool {
        TCL.lock()
            .unwrap_or_else(|e| e.into_inner())
            .script
            .is_some()
    }

    fn global(name: &'static str, args: &[bool]) -> Result<(), ScriptError> {
        let args: Vec<Arg<'_>> = args.iter().map(|&b| Arg::Bool(b)).collect();
        run(name, |t| {
            t.call_opt(name, &args)?;
            Ok(())
        })
    }

    fn boolean(
        h: &Handle,
        name: &'static str,
        plain: Option<&'static str>,
        default: bool,
    ) -> Result<bool, ScriptError> {
        run(name, |t| match call_h(t, h, name, &[])? {
            Some(v) => v.boolean(t).ok_or_else(|| {
                Fail::Msg(format!(
                    "returned a value that is not a boolean: {}",
                    v.text()
                ))
            }),
            None => Ok(plain.map_or(default, |p| t.defined(p))),
        })
    }

    fn load() {
        start();
    }

    fn dump_plugin() -> Result<(), ScriptError> {
        dump()
    }

    fn config(key: &str, value: &str) -> Result<(), ScriptError> {
        if STARTED.get() != Some(&true) {
            return Err(ScriptError::msg("tcl: the Tcl interpreter did not start"));
        }
        let mut st = TCL.lock().unwrap_or_else(|e| e.into_inner());
        if st.script.is_none() {
            if key != "script" {
                return Err(ScriptError::msg(
                    "the first parameter must be script=/path/to/tcl/script.tcl",
                ));
            }
            let r = match st.interp.as_ref() {
                Some(tcl) => load_script(tcl, value),
                None => Err("the Tcl interpreter did not start".into()),
            };
            return match r {
                Ok(()) => {
                    st.script = Some(value.to_string());
                    Ok(())
                }
                Err(m) => Err(ScriptError::msg(format!("{value}: {m}"))),
            };
        }
        drop(st);
        run("config", |t| {
            if !t.defined("config") {
                return Err(Fail::Msg(
                    "this plugin does not need command line configuration".into(),
                ));
            }
            t.call("config", &[Arg::Str(key), Arg::Str(value)])?;
            Ok(())
        })
    }

    fn list_exports(
        readonly: bool,
        is_tls: bool,
        exports: &mut ExportList,
    ) -> Result<(), ScriptError> {
        run("list_exports", |t| {
            let args = [Arg::Bool(readonly), Arg::Bool(is_tls)];
            let Some(r) = t.call_opt("list_exports", &args)? else {
                return exports.use_default().map_err(|_| Fail::Quiet);
            };
            let not_list =
                || Fail::Msg("must return a list of names or {name description} pairs".into());
            for item in r.list(t).ok_or_else(not_list)? {
                let pair = item.list(t).ok_or_else(not_list)?;
                let (name, desc) = match &pair[..] {
                    [n] => (n.text(), None),
                    [n, d] => (n.text(), Some(d.text())),
                    _ => return Err(not_list()),
                };
                exports
                    .add(&name, desc.as_deref())
                    .map_err(|_| Fail::Quiet)?;
            }
            Ok(())
        })
    }

    fn default_export(readonly: bool, is_tls: bool) -> Result<Option<String>, ScriptError> {
        run("default_export", |t| {
            let args = [Arg::Bool(readonly), Arg::Bool(is_tls)];
            Ok(t.call_opt("default_export", &args)?.map(|v| v.text()))
        })
    }

    fn open(readonly: bool) -> Result<Handle, ScriptError> {
        run("plugin_open", |t| {
            let v = t.call("plugin_open", &[Arg::Bool(readonly)])?;
            Ok(Handle(v))
        })
    }

    fn close(h: Handle) -> Result<(), ScriptError> {
        run("plugin_close", move |t| {
            let r = t.call_opt("plugin_close", &[Arg::Handle(&h)]);
            // The handle's reference goes, with the lock held.
            drop(h);
            r.map(|_| ())
        })
    }

    fn export_description(h: &Handle) -> Result<Option<String>, ScriptError> {
        run("export_description", |t| {
            Ok(call_h(t, h, "export_description", &[])?.map(|v| v.text()))
        })
    }

    fn get_size(h: &Handle) -> Result<i64, ScriptError> {
        run("get_size", |t| {
            let v = call_h(t, h, "get_size", &[])?
                .ok_or_else(|| Fail::Msg("missing callback: get_size".into()))?;
            match v.int(t) {
                Some(n) if n >= 0 => Ok(n),
                Some(n) => Err(Fail::Msg(format!("returned a negative size ({n})"))),
                None => Err(Fail::Msg(format!(
                    "returned a value that is not an integer: {}",
                    v.text()
                ))),
            }
        })
    }

    /// Fast zeroes fail fast (see `zero`), so they are advertised.
    fn can_fast_zero(_h: &Handle) -> Result<bool, ScriptError> {
        Ok(true)
    }

    fn can_cache(h: &Handle) -> Result<c_int, ScriptError> {
        Ok(if Self::boolean(h, "can_cache", Some("cache"), false)? {
            abi::CACHE_NATIVE
        } else {
            abi::CACHE_NONE
        })
    }

    fn pread(h: &Handle, buf: &mut [u8], offset: u64, _flags: Flags) -> Result<(), ScriptError> {
        let count = buf.len();
        run("pread", |t| {
            let args = [Arg::Int(count as i64), Arg::Int(offset as i64)];
            let v = call_h(t, h, "pread", &args)?
                .ok_or_else(|| Fail::Msg("missing callback: pread".into()))?;
            let b = v.bytes();
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

    fn pwrite(h: &Handle, buf: &[u8], offset: u64, _flags: Flags) -> Result<(), ScriptError> {
        data(h, "pwrite", &[Arg::Bytes(buf), Arg::Int(offset as i64)])
    }

    fn flush(h: &Handle, _flags: Flags) -> Result<(), ScriptError> {
        data(h, "plugin_flush", &[])
    }

    fn trim(h: &Handle, count: u32, offset: u64, _flags: Flags) -> Result<(), ScriptError> {
        data(h, "trim", &range(count, offset))
    }

    fn cache(h: &Handle, count: u32, offset: u64, _flags: Flags) -> Result<(), ScriptError> {
        data(h, "cache", &range(count, offset))
    }

    fn zero(h: &Handle, count: u32, offset: u64, flags: Flags) -> Result<(), ScriptError> {
        if flags.fast_zero() {
            // A Tcl zero cannot promise to be fast: fail fast (as nbdkit).
            return Err(ScriptError::errno(libc::EOPNOTSUPP));
        }
        run("zero", |t| {
            let [c, o] = range(count, offset);
            let r = call_h(t, h, "zero", &[c, o, Arg::Bool(flags.may_trim())]);
            // nbdkit::set_error EOPNOTSUPP asks the server to write zeroes
            // instead, whether the script then errors or returns.
            let e = abi::script::script_errno();
            if zero_falls_back(e, matches!(r, Ok(None))) {
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
        run("extents", |t| {
            let [c, o] = range(count, offset);
            let args = [c, o, Arg::Int(flags.bits().into())];
            let Some(r) = call_h(t, h, "extents", &args)? else {
                // Like the server without the callback: all data.
                return extents
                    .add(offset, count.into(), 0)
                    .map_err(|_| Fail::Quiet);
            };
            let bad = || Fail::Msg("must return a list of {offset length type} triples".into());
            let items = r.list(t).ok_or_else(bad)?;
            if items.is_empty() {
                return Err(Fail::Msg("cannot return an empty list of extents".into()));
            }
            for item in items {
                let e = item.list(t).ok_or_else(bad)?;
                let n: Vec<Option<i64>> = e.iter().map(|v| v.int(t)).collect();
                let (o, l, ty) = match n[..] {
                    [Some(o), Some(l), Some(ty)] if o >= 0 && l >= 0 && ty >= 0 => (o, l, ty),
                    _ => return Err(bad()),
                };
                extents
                    .add(o as u64, l as u64, ty as u32)
                    .map_err(|_| Fail::Quiet)?;
            }
            Ok(())
        })
    }
}

abi::register_script_plugin!(TclPlugin);
