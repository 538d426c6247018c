//! nbdkit's `lua` plugin: plugins written in Lua, run by the system Lua
//! 5.4 (liblua5.4, embedded with mlua).
//!
//! A shared object that nbdkit loads through its C plugin ABI, so that the
//! `nbdkit` executable never links liblua: the interpreter is only loaded
//! when `nbdkit lua SCRIPT` asks for it.
//!
//! The script (`script=`, the first bare parameter) runs once at start-up
//! in one Lua state; its global functions are the callbacks of nbdkit's
//! manual (`nbdkit-lua-plugin(3)`), looked up by name each time. As in
//! nbdkit, requests are serialized (`serialize_all_requests`): one Lua
//! state runs one callback at a time.
//!
//! An `error(...)` (or `assert`) in a callback fails it: one
//! `nbdkit: error: CALLBACK: SCRIPT:LINE: MESSAGE` line, and the client
//! gets the errno given to `nbdkit.set_error`, else EIO. The traceback is
//! a debug message (`-v`).
//!
//! Beyond the manual (nbdkit 1.32's Lua plugin has only the callbacks it
//! lists), scripts may use the `nbdkit` table (`nbdkit.debug`,
//! `nbdkit.set_error`, `nbdkit.parse_size`, ... and the `EXTENT_*`,
//! `FLAG_*`, `FUA_*`, `CACHE_*` constants) and these optional callbacks,
//! in the manual's style:
//! `can_zero(h)`, `can_fast_zero(h)`, `can_multi_conn(h)`,
//! `can_extents(h)` (booleans), `can_fua(h)`, `can_cache(h)` (a boolean,
//! or an `nbdkit.FUA_*`/`nbdkit.CACHE_*` number), `cache(h, count,
//! offset)`, `extents(h, count, offset, flags)` returning a list of
//! `{offset, length, type}`, `list_exports(readonly, is_tls)` returning a
//! list of names or `{name, description}`, `default_export(readonly,
//! is_tls)`, `export_description(h)` (strings), `block_size(h)` (three
//! numbers), `preconnect(readonly)`, `get_ready()`, `after_fork()`,
//! `cleanup()`. The data callbacks get the request's flags
//! (`nbdkit.FLAG_*`) as one more, last argument, which scripts written for
//! the manual's signatures simply do not see: `pwrite(h, buf, offset,
//! flags)`, `flush(h, flags)`, `trim(h, count, offset, flags)`, `zero(h,
//! count, offset, may_trim, flags)`, `cache(h, count, offset, flags)`; a
//! script whose `can_fua` says native FUA must honour `nbdkit.FLAG_FUA`.

use nbdkit_plugin_abi as abi;

use core::ffi::{c_char, c_int, c_void};
use core::panic::AssertUnwindSafe;
use std::ffi::CStr;
use std::sync::{Mutex, MutexGuard, OnceLock};

use mlua::{Function, Lua, MultiValue, RegistryKey, Table, Value};

use abi::H;

/// The interpreter and the loaded script.
struct State {
    lua: Lua,
    /// The script, once `script=` ran it.
    path: Option<String>,
}

// SAFETY: the Lua state (and every value of it) is only ever used with
// the STATE lock held, so by one thread at a time.
unsafe impl Send for State {}

static STATE: Mutex<Option<State>> = Mutex::new(None);

/// The script's path for messages (also readable outside the lock).
static PATH: OnceLock<String> = OnceLock::new();

fn lock() -> MutexGuard<'static, Option<State>> {
    STATE.lock().unwrap_or_else(|e| e.into_inner())
}

/// How a callback failed.
enum Fail {
    /// A Lua error: reported with its place.
    Lua(mlua::Error),
    /// Something else wrong: this message.
    Msg(String),
    /// Already reported (or nothing to report).
    Quiet,
}

impl From<mlua::Error> for Fail {
    fn from(e: mlua::Error) -> Fail {
        Fail::Lua(e)
    }
}

type Res<T> = Result<T, Fail>;

/// A Lua error's own message (`SCRIPT:LINE: MESSAGE` for `error("...")`),
/// without mlua's wrapping; and its traceback, when there is one.
fn lua_message(e: &mlua::Error) -> (String, Option<String>) {
    match e {
        mlua::Error::CallbackError { cause, traceback } => {
            let (m, t) = lua_message(cause);
            (m, t.or_else(|| Some(traceback.clone())))
        }
        mlua::Error::WithContext { cause, .. } => lua_message(cause),
        mlua::Error::SyntaxError { message, .. } => (message.clone(), None),
        mlua::Error::RuntimeError(m) => match m.split_once("\nstack traceback:") {
            Some((m, t)) => (m.to_string(), Some(format!("stack traceback:{t}"))),
            None => (m.clone(), None),
        },
        e => (e.to_string(), None),
    }
}

/// Report a failure of `callback` (`nbdkit: error: CALLBACK: MESSAGE`).
fn report(callback: &str, f: Fail) {
    match f {
        Fail::Lua(e) => {
            let (m, t) = lua_message(&e);
            abi::error(&format!("{callback}: {m}"));
            if let Some(t) = t {
                abi::debug(&format!("{callback}: {t}"));
            }
        }
        Fail::Msg(m) => abi::error(&format!("{callback}: {m}")),
        Fail::Quiet => {}
    }
}

/// Run `f` with the Lua state (and the script loaded, when
/// `need_script`); a failure is reported as an error of `callback` and
/// turns into `fail`. A panic never crosses into the server.
fn run<R>(callback: &str, fail: R, f: impl FnOnce(&Lua) -> Res<R>) -> R {
    let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let g = lock();
        let Some(st) = g.as_ref() else {
            return Err(Fail::Msg("the Lua interpreter did not start".into()));
        };
        if st.path.is_none() {
            return Err(Fail::Msg(
                "a Lua script is required: nbdkit lua /path/to/plugin.lua [key=value ...]".into(),
            ));
        }
        module::clear_last_error();
        f(&st.lua)
    }));
    match r {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            report(callback, e);
            fail
        }
        Err(_) => {
            abi::error(&format!("lua: {callback}: internal error"));
            fail
        }
    }
}

/// The script's global function `name`, when it defines one.
fn function(lua: &Lua, name: &str) -> Option<Function> {
    match lua.globals().raw_get::<Value>(name) {
        Ok(Value::Function(f)) => Some(f),
        _ => None,
    }
}

fn defined(lua: &Lua, name: &str) -> bool {
    function(lua, name).is_some()
}

/// A Lua handle: the value `open` returned, kept in the registry.
struct Handle {
    key: RegistryKey,
}

/// The script's handle behind the server's pointer.
///
/// # Safety
/// `h` came from [`lua_open`] and is not yet closed.
unsafe fn handle<'a>(h: H) -> &'a Handle {
    // SAFETY: the caller's contract: a live Box<Handle> from lua_open.
    unsafe { &*(h as *const Handle) }
}

/// Call the script's `name` with the handle `h` first, then `args`;
/// `None` when the script does not define it.
fn call_h(lua: &Lua, name: &str, h: H, args: impl mlua::IntoLuaMulti) -> Res<Option<MultiValue>> {
    let Some(f) = function(lua, name) else {
        return Ok(None);
    };
    // SAFETY: the server passes a live handle.
    let hd = unsafe { handle(h) };
    let hv: Value = lua.registry_value(&hd.key)?;
    let mut a = args.into_lua_multi(lua)?;
    a.push_front(hv);
    Ok(Some(f.call::<MultiValue>(a)?))
}

/// The first value of a callback's results (nil without one).
fn first(r: MultiValue) -> Value {
    r.into_iter().next().unwrap_or(Value::Nil)
}

fn strerror(errno: i32) -> String {
    // SAFETY: strerror returns a valid string for any errno value.
    unsafe { CStr::from_ptr(libc::strerror(errno)) }
        .to_string_lossy()
        .into_owned()
}

/// A Lua number that is an integer (integers, and floats with no
/// fractional part, as nbdkit's `get_size` accepts).
fn integer(v: &Value) -> Option<i64> {
    match v {
        Value::Integer(i) => Some(*i),
        Value::Number(n) if n.fract() == 0.0 && n.abs() < 9.3e18 => Some(*n as i64),
        _ => None,
    }
}

fn type_name(v: &Value) -> &'static str {
    v.type_name()
}

// ---------------------------------------------------------------------------
// Loading and configuration

mod module;

unsafe extern "C" fn lua_load() {
    let r = std::panic::catch_unwind(|| {
        let lua = Lua::new();
        module::install(&lua).map(|()| lua)
    });
    match r {
        Ok(Ok(lua)) => *lock() = Some(State { lua, path: None }),
        Ok(Err(e)) => abi::error(&format!("lua: cannot start: {e}")),
        Err(_) => abi::error("lua: the Lua interpreter could not start"),
    }
}

unsafe extern "C" fn lua_unload() {
    // Drop the state (closing Lua runs the script's finalizers).
    let _ = std::panic::catch_unwind(|| {
        let st = lock().take();
        drop(st);
    });
}

unsafe extern "C" fn lua_dump_plugin() {
    let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
        println!("lua_version={}", env!("NBDKIT_LUA_VERSION"));
        let g = lock();
        let Some(st) = g.as_ref() else { return };
        if st.path.is_none() {
            return;
        }
        if let Some(f) = function(&st.lua, "dump_plugin") {
            use std::io::Write;
            let _ = std::io::stdout().flush();
            if let Err(e) = f.call::<()>(()) {
                report("dump_plugin", Fail::Lua(e));
            }
        }
    }));
    if r.is_err() {
        abi::error("lua: dump_plugin: internal error");
    }
}

/// Run the script `path` in `lua`.
fn load_script(lua: &Lua, path: &str) -> Res<()> {
    let mut source = std::fs::read(path).map_err(|e| {
        Fail::Msg(format!(
            "cannot open {path}: {}",
            e.raw_os_error().map_or_else(|| e.to_string(), strerror)
        ))
    })?;
    // Like lua(1), skip a first line starting with '#' (a shebang), but
    // keep its newline so that line numbers stay right.
    if source.first() == Some(&b'#') {
        let end = source
            .iter()
            .position(|&b| b == b'\n')
            .unwrap_or(source.len());
        source.drain(..end);
    }
    let chunk = lua
        .load(&source[..])
        .set_name(format!("@{path}"))
        .set_mode(mlua::ChunkMode::Text);
    let f = chunk
        .into_function()
        .map_err(|e| Fail::Msg(format!("could not parse Lua script {}", lua_message(&e).0)))?;
    if let Err(e) = f.call::<()>(()) {
        let (m, t) = lua_message(&e);
        if let Some(t) = t {
            abi::debug(&t);
        }
        return Err(Fail::Msg(format!("could not run Lua script: {m}")));
    }
    if !defined(lua, "open") || !defined(lua, "get_size") || !defined(lua, "pread") {
        return Err(Fail::Msg(format!(
            "{path}: one of the required callbacks 'open', 'get_size' or 'pread' is not \
             defined by this Lua script.  nbdkit requires these callbacks."
        )));
    }
    Ok(())
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

unsafe extern "C" fn lua_config(key: *const c_char, value: *const c_char) -> c_int {
    // SAFETY: the server passes two NUL-terminated strings.
    let (key, value) = unsafe { (arg(key), arg(value)) };
    let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let mut g = lock();
        let Some(st) = g.as_mut() else {
            return Err(Fail::Msg("the Lua interpreter did not start".into()));
        };
        if st.path.is_none() {
            if key != "script" {
                return Err(Fail::Msg(
                    "the first parameter must be script=/path/to/script.lua".into(),
                ));
            }
            load_script(&st.lua, &value)?;
            st.path = Some(value.clone());
            let _ = PATH.set(value.clone());
            return Ok(0);
        }
        match function(&st.lua, "config") {
            Some(f) => {
                module::clear_last_error();
                f.call::<()>((key.as_str(), value.as_str())).map_err(|e| {
                    report("config", Fail::Lua(e));
                    Fail::Quiet
                })?;
                Ok(0)
            }
            None => Err(Fail::Msg(format!(
                "{}: this plugin does not need command line configuration",
                st.path.as_deref().unwrap_or_default()
            ))),
        }
    }));
    match r {
        Ok(Ok(v)) => v,
        Ok(Err(Fail::Msg(m))) => {
            abi::error(&m);
            -1
        }
        Ok(Err(f)) => {
            report("config", f);
            -1
        }
        Err(_) => {
            abi::error("lua: config: internal error");
            -1
        }
    }
}

/// Call the script's global callback `name` with `args`, if defined.
fn global(name: &'static str, args: impl mlua::IntoLuaMulti) -> c_int {
    run(name, -1, |lua| {
        if let Some(f) = function(lua, name) {
            f.call::<()>(args)?;
        }
        Ok(0)
    })
}

unsafe extern "C" fn lua_config_complete() -> c_int {
    global("config_complete", ())
}

unsafe extern "C" fn lua_get_ready() -> c_int {
    global("get_ready", ())
}

unsafe extern "C" fn lua_after_fork() -> c_int {
    global("after_fork", ())
}

unsafe extern "C" fn lua_cleanup() {
    if PATH.get().is_some() {
        global("cleanup", ());
    }
}

unsafe extern "C" fn lua_preconnect(readonly: c_int) -> c_int {
    global("preconnect", readonly != 0)
}

// ---------------------------------------------------------------------------
// Connections

unsafe extern "C" fn lua_open(readonly: c_int) -> H {
    run("open", core::ptr::null_mut(), |lua| {
        let f = function(lua, "open").ok_or_else(|| Fail::Msg("missing callback".into()))?;
        let v = first(f.call::<MultiValue>(readonly != 0)?);
        let key = lua.create_registry_value(v)?;
        Ok(Box::into_raw(Box::new(Handle { key })) as H)
    })
}

unsafe extern "C" fn lua_close(h: H) {
    if h.is_null() {
        return;
    }
    // SAFETY: the server closes each handle from lua_open once.
    let hd = unsafe { Box::from_raw(h as *mut Handle) };
    let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let g = lock();
        let Some(st) = g.as_ref() else { return };
        if let Some(f) = function(&st.lua, "close") {
            let r = st
                .lua
                .registry_value::<Value>(&hd.key)
                .and_then(|v| f.call::<()>(v));
            if let Err(e) = r {
                report("close", Fail::Lua(e));
            }
        }
        // The handle goes with the lock held.
        let _ = st.lua.remove_registry_value(hd.key);
    }));
    if r.is_err() {
        abi::error("lua: close: internal error");
    }
}

unsafe extern "C" fn lua_get_size(h: H) -> i64 {
    run("get_size", -1, |lua| {
        let r =
            call_h(lua, "get_size", h, ())?.ok_or_else(|| Fail::Msg("missing callback".into()))?;
        let v = first(r);
        match integer(&v) {
            Some(n) if n >= 0 => Ok(n),
            Some(n) => Err(Fail::Msg(format!("returned a negative size ({n})"))),
            None => Err(Fail::Msg(format!(
                "cannot convert returned value to an integer (of type {})",
                type_name(&v)
            ))),
        }
    })
}

/// A boolean callback: its result; without it, whether the script
/// defines `plain` (e.g. `pwrite` for `can_write`), else `default`.
fn boolean(h: H, name: &'static str, plain: Option<&'static str>, default: bool) -> c_int {
    run(name, -1, |lua| match call_h(lua, name, h, ())? {
        Some(r) => match first(r) {
            Value::Boolean(b) => Ok(c_int::from(b)),
            v => Err(Fail::Msg(format!(
                "return value is not a boolean (of type {})",
                type_name(&v)
            ))),
        },
        None => Ok(c_int::from(plain.map_or(default, |p| defined(lua, p)))),
    })
}

unsafe extern "C" fn lua_can_write(h: H) -> c_int {
    boolean(h, "can_write", Some("pwrite"), false)
}

unsafe extern "C" fn lua_can_flush(h: H) -> c_int {
    boolean(h, "can_flush", Some("flush"), false)
}

unsafe extern "C" fn lua_is_rotational(h: H) -> c_int {
    boolean(h, "is_rotational", None, false)
}

unsafe extern "C" fn lua_can_trim(h: H) -> c_int {
    boolean(h, "can_trim", Some("trim"), false)
}

unsafe extern "C" fn lua_can_zero(h: H) -> c_int {
    // Without can_zero, zeroing is on: `zero` (or the server's fall-back
    // to writes when the script has none), as in nbdkit.
    boolean(h, "can_zero", None, true)
}

unsafe extern "C" fn lua_can_multi_conn(h: H) -> c_int {
    boolean(h, "can_multi_conn", None, false)
}

unsafe extern "C" fn lua_can_extents(h: H) -> c_int {
    boolean(h, "can_extents", Some("extents"), false)
}

unsafe extern "C" fn lua_can_fast_zero(h: H) -> c_int {
    // Without it, a fast zero fails fast when the script has no `zero`.
    let plain = run("can_fast_zero", -1, |lua| {
        Ok(c_int::from(defined(lua, "can_fast_zero")))
    });
    match plain {
        -1 => -1,
        1 => boolean(h, "can_fast_zero", None, false),
        _ => run("can_fast_zero", -1, |lua| {
            Ok(c_int::from(!defined(lua, "zero")))
        }),
    }
}

/// `can_fua`/`can_cache`: a boolean (true is the native level) or one of
/// the levels; `default` without the callback.
fn level(h: H, name: &'static str, native: c_int, default: impl FnOnce(&Lua) -> c_int) -> c_int {
    run(name, -1, |lua| match call_h(lua, name, h, ())? {
        Some(r) => match first(r) {
            Value::Boolean(b) => Ok(if b { native } else { 0 }),
            v => match integer(&v) {
                Some(n @ 0..=2) => Ok(n as c_int),
                _ => Err(Fail::Msg(format!(
                    "return value is not a boolean or 0, 1, 2 (of type {})",
                    type_name(&v)
                ))),
            },
        },
        None => Ok(default(lua)),
    })
}

unsafe extern "C" fn lua_can_fua(h: H) -> c_int {
    level(h, "can_fua", abi::FUA_NATIVE, |lua| {
        if defined(lua, "flush") {
            abi::FUA_EMULATE
        } else {
            abi::FUA_NONE
        }
    })
}

unsafe extern "C" fn lua_can_cache(h: H) -> c_int {
    level(h, "can_cache", abi::CACHE_NATIVE, |lua| {
        if defined(lua, "cache") {
            abi::CACHE_NATIVE
        } else {
            abi::CACHE_NONE
        }
    })
}

unsafe extern "C" fn lua_block_size(h: H, min: *mut u32, pref: *mut u32, max: *mut u32) -> c_int {
    let r = run("block_size", None, |lua| {
        let Some(r) = call_h(lua, "block_size", h, ())? else {
            return Ok(Some((0, 0, 0)));
        };
        let v: Vec<Value> = r.into_iter().collect();
        let n: Vec<u32> = v
            .iter()
            .take(3)
            .filter_map(|v| integer(v).and_then(|n| u32::try_from(n).ok()))
            .collect();
        match n[..] {
            [a, b, c] => Ok(Some((a, b, c))),
            _ => Err(Fail::Msg("the return value is not three numbers".into())),
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

/// Hand a string to the server, which keeps it for the connection.
fn intern_str(s: &[u8]) -> *const c_char {
    let c = abi::cstring(&String::from_utf8_lossy(s));
    // SAFETY: a NUL-terminated string, copied by the server.
    unsafe { abi::nbdkit_strdup_intern(c.as_ptr()) }
}

fn string(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::String(s) => Some(s.as_bytes().to_vec()),
        _ => None,
    }
}

unsafe extern "C" fn lua_list_exports(
    readonly: c_int,
    is_tls: c_int,
    exports: *mut abi::Exports,
) -> c_int {
    run("list_exports", -1, |lua| {
        let Some(f) = function(lua, "list_exports") else {
            // SAFETY: the server's list for this call.
            return Ok(unsafe { abi::nbdkit_use_default_export(exports) });
        };
        let r = first(f.call::<MultiValue>((readonly != 0, is_tls != 0))?);
        let Value::Table(t) = r else {
            return Err(Fail::Msg(format!(
                "the return value is not a table (of type {})",
                type_name(&r)
            )));
        };
        for item in t.sequence_values::<Value>() {
            let item = item?;
            let (name, desc) = match &item {
                Value::String(_) => (string(&item), None),
                Value::Table(p) => {
                    let d: Value = p.raw_get(2)?;
                    (string(&p.raw_get(1)?), string(&d))
                }
                _ => (None, None),
            };
            let Some(name) = name else {
                return Err(Fail::Msg(
                    "the list must hold names or {name, description} pairs of strings".into(),
                ));
            };
            let n = abi::cstring(&String::from_utf8_lossy(&name));
            let d = desc.map(|d| abi::cstring(&String::from_utf8_lossy(&d)));
            let dp = d.as_ref().map_or(core::ptr::null(), |d| d.as_ptr());
            // SAFETY: the server's list for this call and strings it copies.
            if unsafe { abi::nbdkit_add_export(exports, n.as_ptr(), dp) } == -1 {
                return Err(Fail::Quiet);
            }
        }
        Ok(0)
    })
}

unsafe extern "C" fn lua_default_export(readonly: c_int, is_tls: c_int) -> *const c_char {
    run("default_export", core::ptr::null(), |lua| {
        let Some(f) = function(lua, "default_export") else {
            return Ok(c"".as_ptr());
        };
        let r = first(f.call::<MultiValue>((readonly != 0, is_tls != 0))?);
        match string(&r) {
            Some(s) => Ok(intern_str(&s)),
            None => Err(Fail::Msg("the return value is not a string".into())),
        }
    })
}

unsafe extern "C" fn lua_export_description(h: H) -> *const c_char {
    run("export_description", core::ptr::null(), |lua| match call_h(
        lua,
        "export_description",
        h,
        (),
    )? {
        None => Ok(core::ptr::null()),
        Some(r) => match string(&first(r)) {
            Some(s) => Ok(intern_str(&s)),
            None => Err(Fail::Msg("the return value is not a string".into())),
        },
    })
}

// ---------------------------------------------------------------------------
// Data

unsafe extern "C" fn lua_pread(
    h: H,
    buf: *mut c_void,
    count: u32,
    offset: u64,
    _flags: u32,
) -> c_int {
    run("pread", -1, |lua| {
        let r = call_h(lua, "pread", h, (count, offset))?
            .ok_or_else(|| Fail::Msg("missing callback".into()))?;
        let v = first(r);
        let Value::String(s) = &v else {
            return Err(Fail::Msg(format!(
                "return value is not a string (of type {})",
                type_name(&v)
            )));
        };
        let b = s.as_bytes();
        if b.len() < count as usize {
            return Err(Fail::Msg(format!(
                "returned string length < count bytes ({} < {count})",
                b.len()
            )));
        }
        // SAFETY: the server's buffer of `count` bytes; `b` has at least
        // that many, and they cannot overlap.
        unsafe { core::ptr::copy_nonoverlapping(b.as_ptr(), buf.cast::<u8>(), count as usize) };
        Ok(0)
    })
}

unsafe extern "C" fn lua_pwrite(
    h: H,
    buf: *const c_void,
    count: u32,
    offset: u64,
    flags: u32,
) -> c_int {
    run("pwrite", -1, |lua| {
        // SAFETY: the server lends `count` bytes at `buf` for the call.
        let data = unsafe { core::slice::from_raw_parts(buf.cast::<u8>(), count as usize) };
        let s = lua.create_string(data)?;
        match call_h(lua, "pwrite", h, (s, offset, flags))? {
            Some(_) => Ok(0),
            None => Err(Fail::Msg("pwrite not implemented".into())),
        }
    })
}

unsafe extern "C" fn lua_flush(h: H, flags: u32) -> c_int {
    run("flush", -1, |lua| {
        call_h(lua, "flush", h, flags)?;
        Ok(0)
    })
}

unsafe extern "C" fn lua_trim(h: H, count: u32, offset: u64, flags: u32) -> c_int {
    run("trim", -1, |lua| {
        call_h(lua, "trim", h, (count, offset, flags))?;
        Ok(0)
    })
}

unsafe extern "C" fn lua_cache(h: H, count: u32, offset: u64, flags: u32) -> c_int {
    run("cache", -1, |lua| {
        call_h(lua, "cache", h, (count, offset, flags))?;
        Ok(0)
    })
}

unsafe extern "C" fn lua_zero(h: H, count: u32, offset: u64, flags: u32) -> c_int {
    run("zero", -1, |lua| {
        let may_trim = flags & abi::FLAG_MAY_TRIM != 0;
        let r = call_h(lua, "zero", h, (count, offset, may_trim, flags));
        // nbdkit.set_error(nbdkit.EOPNOTSUPP) asks the server to write
        // zeroes instead.
        let e = module::last_error();
        if matches!(r, Ok(None)) || e == libc::EOPNOTSUPP || e == libc::ENOTSUP {
            abi::debug("zero falling back to pwrite");
            abi::set_error(libc::EOPNOTSUPP);
            return Err(Fail::Quiet);
        }
        r.map(|_| 0)
    })
}

unsafe extern "C" fn lua_extents(
    h: H,
    count: u32,
    offset: u64,
    flags: u32,
    extents: *mut abi::Extents,
) -> c_int {
    run("extents", -1, |lua| {
        let Some(r) = call_h(lua, "extents", h, (count, offset, flags))? else {
            // Like the server without the callback: all data.
            // SAFETY: the server's list for this call.
            return match unsafe { abi::nbdkit_add_extent(extents, offset, count.into(), 0) } {
                -1 => Err(Fail::Quiet),
                _ => Ok(0),
            };
        };
        let v = first(r);
        let bad = || Fail::Msg("the return value is not a list of {offset, length, type}".into());
        let Value::Table(t) = v else {
            return Err(bad());
        };
        let mut n = 0;
        for item in t.sequence_values::<Table>() {
            let item = item.map_err(|_| bad())?;
            let f: Vec<Value> = (1..=3)
                .map(|i| item.raw_get(i))
                .collect::<mlua::Result<_>>()?;
            let (Some(o), Some(l), Some(ty)) = (integer(&f[0]), integer(&f[1]), integer(&f[2]))
            else {
                return Err(bad());
            };
            let (Ok(o), Ok(l), Ok(ty)) = (u64::try_from(o), u64::try_from(l), u32::try_from(ty))
            else {
                return Err(bad());
            };
            n += 1;
            // SAFETY: the server's list for this call.
            if unsafe { abi::nbdkit_add_extent(extents, o, l, ty) } == -1 {
                return Err(Fail::Quiet);
            }
        }
        if n == 0 {
            return Err(Fail::Msg("the list of extents is empty".into()));
        }
        Ok(0)
    })
}

// ---------------------------------------------------------------------------
// Registration

const CONFIG_HELP: &CStr = c"script=<FILENAME>     (required) The Lua script to run.\n\
[other arguments may be used by the plugin that you load]";

static PLUGIN: abi::Registration = abi::Registration(abi::Plugin {
    thread_model: abi::THREAD_MODEL_SERIALIZE_ALL_REQUESTS,
    name: c"lua".as_ptr(),
    load: Some(lua_load),
    unload: Some(lua_unload),
    config: Some(lua_config),
    config_complete: Some(lua_config_complete),
    config_help: CONFIG_HELP.as_ptr(),
    open: Some(lua_open),
    close: Some(lua_close),
    get_size: Some(lua_get_size),
    can_write: Some(lua_can_write),
    can_flush: Some(lua_can_flush),
    is_rotational: Some(lua_is_rotational),
    can_trim: Some(lua_can_trim),
    dump_plugin: Some(lua_dump_plugin),
    can_zero: Some(lua_can_zero),
    can_fua: Some(lua_can_fua),
    pread: Some(lua_pread),
    pwrite: Some(lua_pwrite),
    flush: Some(lua_flush),
    trim: Some(lua_trim),
    zero: Some(lua_zero),
    magic_config_key: c"script".as_ptr(),
    can_multi_conn: Some(lua_can_multi_conn),
    can_extents: Some(lua_can_extents),
    extents: Some(lua_extents),
    can_cache: Some(lua_can_cache),
    cache: Some(lua_cache),
    can_fast_zero: Some(lua_can_fast_zero),
    preconnect: Some(lua_preconnect),
    get_ready: Some(lua_get_ready),
    after_fork: Some(lua_after_fork),
    list_exports: Some(lua_list_exports),
    default_export: Some(lua_default_export),
    export_description: Some(lua_export_description),
    cleanup: Some(lua_cleanup),
    block_size: Some(lua_block_size),
    ..abi::Plugin::EMPTY
});

/// The registration function the server calls when it loads this object.
#[no_mangle]
pub extern "C" fn plugin_init() -> *const c_void {
    PLUGIN.as_ptr()
}
