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
use core::panic::AssertUnwindSafe;
use std::ffi::CStr;
use std::sync::{Mutex, OnceLock};

use abi::H;

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

/// The errno the script last gave `nbdkit::set_error` (0: none).
static LAST_ERRNO: core::sync::atomic::AtomicI32 = core::sync::atomic::AtomicI32::new(0);

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

/// Run `f` with the interpreter locked; a failure is reported as an error
/// of `callback` and turns into `fail`, with the errno the script set
/// (EIO by default). A panic never crosses into the server.
fn run<R>(callback: &str, fail: R, f: impl FnOnce(&Tcl) -> Res<R>) -> R {
    if STARTED.get() != Some(&true) {
        abi::error("tcl: the Tcl interpreter did not start");
        return fail;
    }
    let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let st = TCL.lock().unwrap_or_else(|e| e.into_inner());
        let (Some(tcl), Some(path)) = (st.interp.as_ref(), st.script.as_deref()) else {
            abi::error("a Tcl script is required: nbdkit tcl /path/to/plugin.tcl [key=value ...]");
            return None;
        };
        LAST_ERRNO.store(0, core::sync::atomic::Ordering::Relaxed);
        let msg = match f(tcl) {
            Ok(v) => return Some(v),
            Err(Fail::Tcl(m)) | Err(Fail::Msg(m)) => format!("{path}: {callback}: {m}"),
            Err(Fail::Quiet) => return None,
        };
        abi::error(&msg);
        let e = LAST_ERRNO.load(core::sync::atomic::Ordering::Relaxed);
        abi::set_error(if e == 0 { libc::EIO } else { e });
        None
    }));
    match r {
        Ok(Some(v)) => v,
        Ok(None) => fail,
        Err(_) => {
            abi::error(&format!("tcl: {callback}: internal error"));
            fail
        }
    }
}

/// The script's handle (the value its `plugin_open` returned).
struct Handle(Val);

/// # Safety
/// `h` came from [`tcl_open`] and is not yet closed.
unsafe fn handle<'a>(h: H) -> &'a Handle {
    // SAFETY: the caller's contract.
    unsafe { &*(h as *const Handle) }
}

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
    LAST_ERRNO.store(e, core::sync::atomic::Ordering::Relaxed);
    abi::set_error(e);
    TCL_OK
}

// ---------------------------------------------------------------------------
// Loading and configuration

unsafe extern "C" fn tcl_load() {
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

unsafe extern "C" fn tcl_dump_plugin() {
    if STARTED.get() != Some(&true) {
        return;
    }
    let st = TCL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(tcl) = st.interp.as_ref() else {
        return;
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
    if TCL
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .script
        .is_some()
    {
        run("dump_plugin", (), |t| {
            t.call_opt("dump_plugin", &[])?;
            Ok(())
        });
    }
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

unsafe extern "C" fn tcl_config(key: *const c_char, value: *const c_char) -> c_int {
    // SAFETY: the server passes two NUL-terminated strings.
    let (key, value) = unsafe { (abi::str_arg(key), abi::str_arg(value)) };
    if STARTED.get() != Some(&true) {
        abi::error("tcl: the Tcl interpreter did not start");
        return -1;
    }
    let loaded = TCL
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .script
        .is_some();
    if !loaded {
        if key != "script" {
            abi::error("the first parameter must be script=/path/to/tcl/script.tcl");
            return -1;
        }
        let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let mut st = TCL.lock().unwrap_or_else(|e| e.into_inner());
            let r = match st.interp.as_ref() {
                Some(tcl) => load_script(tcl, &value),
                None => Err("the Tcl interpreter did not start".into()),
            };
            if r.is_ok() {
                st.script = Some(value.clone());
            }
            r
        }));
        return match r {
            Ok(Ok(())) => 0,
            Ok(Err(m)) => {
                abi::error(&format!("{value}: {m}"));
                -1
            }
            Err(_) => {
                abi::error(&format!("{value}: internal error"));
                -1
            }
        };
    }
    run("config", -1, |t| {
        if !t.defined("config") {
            return Err(Fail::Msg(
                "this plugin does not need command line configuration".into(),
            ));
        }
        t.call("config", &[Arg::Str(&key), Arg::Str(&value)])?;
        Ok(0)
    })
}

/// Call the script's global proc `name` with no arguments, if defined.
fn global0(name: &'static str) -> c_int {
    run(name, -1, |t| {
        t.call_opt(name, &[])?;
        Ok(0)
    })
}

unsafe extern "C" fn tcl_config_complete() -> c_int {
    global0("config_complete")
}

unsafe extern "C" fn tcl_get_ready() -> c_int {
    global0("get_ready")
}

unsafe extern "C" fn tcl_after_fork() -> c_int {
    global0("after_fork")
}

unsafe extern "C" fn tcl_cleanup() {
    if TCL
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

unsafe extern "C" fn tcl_preconnect(readonly: c_int) -> c_int {
    run("preconnect", -1, |t| {
        t.call_opt("preconnect", &[Arg::Bool(readonly != 0)])?;
        Ok(0)
    })
}

unsafe extern "C" fn tcl_list_exports(
    readonly: c_int,
    is_tls: c_int,
    exports: *mut abi::Exports,
) -> c_int {
    run("list_exports", -1, |t| {
        let args = [Arg::Bool(readonly != 0), Arg::Bool(is_tls != 0)];
        let Some(r) = t.call_opt("list_exports", &args)? else {
            // SAFETY: the server's list for this call.
            return Ok(unsafe { abi::nbdkit_use_default_export(exports) });
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

unsafe extern "C" fn tcl_default_export(readonly: c_int, is_tls: c_int) -> *const c_char {
    run("default_export", core::ptr::null(), |t| {
        let args = [Arg::Bool(readonly != 0), Arg::Bool(is_tls != 0)];
        Ok(match t.call_opt("default_export", &args)? {
            None => c"".as_ptr(),
            Some(v) => abi::intern_str(&v.text()),
        })
    })
}

unsafe extern "C" fn tcl_open(readonly: c_int) -> H {
    run("plugin_open", core::ptr::null_mut(), |t| {
        let v = t.call("plugin_open", &[Arg::Bool(readonly != 0)])?;
        Ok(Box::into_raw(Box::new(Handle(v))) as H)
    })
}

unsafe extern "C" fn tcl_close(h: H) {
    if h.is_null() {
        return;
    }
    // SAFETY: the server closes each handle from tcl_open once.
    let hd = unsafe { Box::from_raw(h as *mut Handle) };
    run("plugin_close", (), move |t| {
        let r = t.call_opt("plugin_close", &[Arg::Handle(&hd)]);
        // The handle's reference goes, with the lock held.
        drop(hd);
        r.map(|_| ())
    })
}

/// Call the script's `name` with the handle first.
fn call_h(t: &Tcl, h: H, name: &str, rest: &[Arg<'_>]) -> Res<Option<Val>> {
    // SAFETY: a live handle from tcl_open.
    let hd = unsafe { handle(h) };
    let mut args = vec![Arg::Handle(hd)];
    args.extend(rest.iter().map(|a| match *a {
        Arg::Int(v) => Arg::Int(v),
        Arg::Bool(v) => Arg::Bool(v),
        Arg::Bytes(b) => Arg::Bytes(b),
        Arg::Str(s) => Arg::Str(s),
        Arg::Handle(h) => Arg::Handle(h),
    }));
    t.call_opt(name, &args)
}

unsafe extern "C" fn tcl_export_description(h: H) -> *const c_char {
    run("export_description", core::ptr::null(), |t| {
        Ok(match call_h(t, h, "export_description", &[])? {
            None => core::ptr::null(),
            Some(v) => abi::intern_str(&v.text()),
        })
    })
}

unsafe extern "C" fn tcl_get_size(h: H) -> i64 {
    run("get_size", -1, |t| {
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

/// A boolean callback: its result; without it, whether the script
/// defines `plain` (e.g. `pwrite` for `can_write`).
fn boolean(h: H, name: &'static str, plain: Option<&'static str>) -> c_int {
    run(name, -1, |t| match call_h(t, h, name, &[])? {
        Some(v) => v.boolean(t).map(c_int::from).ok_or_else(|| {
            Fail::Msg(format!(
                "returned a value that is not a boolean: {}",
                v.text()
            ))
        }),
        None => Ok(c_int::from(plain.is_some_and(|p| t.defined(p)))),
    })
}

unsafe extern "C" fn tcl_is_rotational(h: H) -> c_int {
    boolean(h, "is_rotational", None)
}

unsafe extern "C" fn tcl_can_multi_conn(h: H) -> c_int {
    boolean(h, "can_multi_conn", None)
}

unsafe extern "C" fn tcl_can_write(h: H) -> c_int {
    boolean(h, "can_write", Some("pwrite"))
}

unsafe extern "C" fn tcl_can_flush(h: H) -> c_int {
    boolean(h, "can_flush", Some("plugin_flush"))
}

unsafe extern "C" fn tcl_can_trim(h: H) -> c_int {
    boolean(h, "can_trim", Some("trim"))
}

unsafe extern "C" fn tcl_can_extents(h: H) -> c_int {
    boolean(h, "can_extents", Some("extents"))
}

/// Fast zeroes fail fast (see `tcl_zero`), so they are advertised.
unsafe extern "C" fn tcl_can_fast_zero(_h: H) -> c_int {
    1
}

unsafe extern "C" fn tcl_can_cache(h: H) -> c_int {
    match boolean(h, "can_cache", Some("cache")) {
        -1 => -1,
        0 => abi::CACHE_NONE,
        _ => abi::CACHE_NATIVE,
    }
}

// ---------------------------------------------------------------------------
// Data

unsafe extern "C" fn tcl_pread(
    h: H,
    buf: *mut c_void,
    count: u32,
    offset: u64,
    _flags: u32,
) -> c_int {
    run("pread", -1, |t| {
        let args = [Arg::Int(count.into()), Arg::Int(offset as i64)];
        let v = call_h(t, h, "pread", &args)?
            .ok_or_else(|| Fail::Msg("missing callback: pread".into()))?;
        let b = v.bytes();
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

/// A data callback; a missing one is "not implemented".
fn data(h: H, name: &'static str, args: &[Arg<'_>]) -> c_int {
    run(name, -1, |t| match call_h(t, h, name, args)? {
        Some(_) => Ok(0),
        None => Err(Fail::Msg("not implemented".into())),
    })
}

unsafe extern "C" fn tcl_pwrite(
    h: H,
    buf: *const c_void,
    count: u32,
    offset: u64,
    _flags: u32,
) -> c_int {
    // SAFETY: the server lends `count` bytes for the call.
    let b = unsafe { core::slice::from_raw_parts(buf.cast::<u8>(), count as usize) };
    data(h, "pwrite", &[Arg::Bytes(b), Arg::Int(offset as i64)])
}

unsafe extern "C" fn tcl_flush(h: H, _flags: u32) -> c_int {
    data(h, "plugin_flush", &[])
}

unsafe extern "C" fn tcl_trim(h: H, count: u32, offset: u64, _flags: u32) -> c_int {
    data(
        h,
        "trim",
        &[Arg::Int(count.into()), Arg::Int(offset as i64)],
    )
}

unsafe extern "C" fn tcl_cache(h: H, count: u32, offset: u64, _flags: u32) -> c_int {
    data(
        h,
        "cache",
        &[Arg::Int(count.into()), Arg::Int(offset as i64)],
    )
}

unsafe extern "C" fn tcl_zero(h: H, count: u32, offset: u64, flags: u32) -> c_int {
    if flags & abi::FLAG_FAST_ZERO != 0 {
        // A Tcl zero cannot promise to be fast: fail fast (as nbdkit).
        abi::set_error(libc::EOPNOTSUPP);
        return -1;
    }
    run("zero", -1, |t| {
        let may_trim = flags & abi::FLAG_MAY_TRIM != 0;
        let args = [
            Arg::Int(count.into()),
            Arg::Int(offset as i64),
            Arg::Bool(may_trim),
        ];
        let r = call_h(t, h, "zero", &args);
        // nbdkit::set_error EOPNOTSUPP asks the server to write zeroes
        // instead, whether the script then errors or returns.
        let e = LAST_ERRNO.load(core::sync::atomic::Ordering::Relaxed);
        if e == libc::EOPNOTSUPP || e == libc::ENOTSUP {
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

unsafe extern "C" fn tcl_extents(
    h: H,
    count: u32,
    offset: u64,
    flags: u32,
    extents: *mut abi::Extents,
) -> c_int {
    run("extents", -1, |t| {
        let args = [
            Arg::Int(count.into()),
            Arg::Int(offset as i64),
            Arg::Int(flags.into()),
        ];
        let Some(r) = call_h(t, h, "extents", &args)? else {
            // SAFETY: the server's list for this call.
            return match unsafe { abi::nbdkit_add_extent(extents, offset, count.into(), 0) } {
                -1 => Err(Fail::Quiet),
                _ => Ok(0),
            };
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
            // SAFETY: the server's list for this call.
            if unsafe { abi::nbdkit_add_extent(extents, o as u64, l as u64, ty as u32) } == -1 {
                return Err(Fail::Quiet);
            }
        }
        Ok(0)
    })
}

// ---------------------------------------------------------------------------
// Registration

const CONFIG_HELP: &CStr = c"script=<FILENAME>     (required) The Tcl plugin to run.\n\
[other arguments may be used by the plugin that you load]";

static PLUGIN: abi::Registration = abi::Registration(abi::Plugin {
    thread_model: abi::THREAD_MODEL_SERIALIZE_ALL_REQUESTS,
    name: c"tcl".as_ptr(),
    load: Some(tcl_load),
    config: Some(tcl_config),
    config_complete: Some(tcl_config_complete),
    config_help: CONFIG_HELP.as_ptr(),
    open: Some(tcl_open),
    close: Some(tcl_close),
    get_size: Some(tcl_get_size),
    can_write: Some(tcl_can_write),
    can_flush: Some(tcl_can_flush),
    is_rotational: Some(tcl_is_rotational),
    can_trim: Some(tcl_can_trim),
    dump_plugin: Some(tcl_dump_plugin),
    pread: Some(tcl_pread),
    pwrite: Some(tcl_pwrite),
    flush: Some(tcl_flush),
    trim: Some(tcl_trim),
    zero: Some(tcl_zero),
    magic_config_key: c"script".as_ptr(),
    can_multi_conn: Some(tcl_can_multi_conn),
    can_extents: Some(tcl_can_extents),
    extents: Some(tcl_extents),
    can_cache: Some(tcl_can_cache),
    cache: Some(tcl_cache),
    can_fast_zero: Some(tcl_can_fast_zero),
    preconnect: Some(tcl_preconnect),
    get_ready: Some(tcl_get_ready),
    after_fork: Some(tcl_after_fork),
    list_exports: Some(tcl_list_exports),
    default_export: Some(tcl_default_export),
    export_description: Some(tcl_export_description),
    cleanup: Some(tcl_cleanup),
    ..abi::Plugin::EMPTY
});

/// The registration function the server calls when it loads this object.
#[no_mangle]
pub extern "C" fn plugin_init() -> *const c_void {
    PLUGIN.as_ptr()
}
