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

use core::ffi::c_int;
use std::ffi::CStr;
use std::sync::{Mutex, MutexGuard, OnceLock};

use abi::script::{zero_falls_back, ExportList, ExtentList, Flags, ScriptError, ScriptPlugin};
use mlua::{Function, Lua, MultiValue, RegistryKey, Table, Value, Variadic};

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

/// A failure of `callback` for the server (`nbdkit: error: CALLBACK:
/// MESSAGE`); a Lua error's traceback follows as a debug message.
fn report(callback: &str, f: Fail) -> ScriptError {
    match f {
        Fail::Lua(e) => {
            let (m, t) = lua_message(&e);
            abi::error(&format!("{callback}: {m}"));
            if let Some(t) = t {
                abi::debug(&format!("{callback}: {t}"));
            }
            ScriptError::reported()
        }
        Fail::Msg(m) => ScriptError::msg(format!("{callback}: {m}")),
        Fail::Quiet => ScriptError::reported(),
    }
}

/// Run `f` with the Lua state and the script loaded; a failure is an
/// error of `callback`.
fn run<R>(callback: &str, f: impl FnOnce(&Lua) -> Res<R>) -> Result<R, ScriptError> {
    let g = lock();
    let r = match g.as_ref() {
        None => Err(Fail::Msg("the Lua interpreter did not start".into())),
        Some(st) if st.path.is_none() => Err(Fail::Msg(
            "a Lua script is required: nbdkit lua /path/to/plugin.lua [key=value ...]".into(),
        )),
        Some(st) => {
            abi::script::clear_script_errno();
            f(&st.lua)
        }
    };
    r.map_err(|e| report(callback, e))
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

/// Call the script's `name` with the handle `h` first, then `args`;
/// `None` when the script does not define it.
fn call_h(
    lua: &Lua,
    name: &str,
    h: &Handle,
    args: impl mlua::IntoLuaMulti,
) -> Res<Option<MultiValue>> {
    let Some(f) = function(lua, name) else {
        return Ok(None);
    };
    let hv: Value = lua.registry_value(&h.key)?;
    let mut a = args.into_lua_multi(lua)?;
    a.push_front(hv);
    Ok(Some(f.call::<MultiValue>(a)?))
}

/// The first value of a callback's results (nil without one).
fn first(r: MultiValue) -> Value {
    r.into_iter().next().unwrap_or(Value::Nil)
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

mod module;

/// Run the script `path` in `lua`.
fn load_script(lua: &Lua, path: &str) -> Res<()> {
    let mut source = std::fs::read(path).map_err(|e| {
        Fail::Msg(format!(
            "cannot open {path}: {}",
            e.raw_os_error()
                .map_or_else(|| e.to_string(), abi::strerror)
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

/// `can_fua`/`can_cache`: a boolean (true is the native level) or one of
/// the levels; `default` without the callback.
fn level(
    h: &Handle,
    name: &'static str,
    native: c_int,
    default: impl FnOnce(&Lua) -> c_int,
) -> Result<c_int, ScriptError> {
    run(name, |lua| match call_h(lua, name, h, ())? {
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

/// A string result, as text.
fn string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(String::from_utf8_lossy(&s.as_bytes()).into_owned()),
        _ => None,
    }
}

/// A data callback that returns nothing.
fn data(h: &Handle, name: &'static str, args: impl mlua::IntoLuaMulti) -> Result<(), ScriptError> {
    run(name, |lua| {
        call_h(lua, name, h, args)?;
        Ok(())
    })
}

// ---------------------------------------------------------------------------
// The plugin

struct LuaPlugin;

impl ScriptPlugin for LuaPlugin {
    type Handle = Handle;
    const ZERO_WITHOUT_CAN_ZERO: bool = true;

    const NAME: &'static CStr = c"lua";
    const CONFIG_HELP: &'static CStr = abi::script_config_help!("Lua script");

    fn loaded() -> bool {
        PATH.get().is_some()
    }

    fn global(name: &'static str, args: &[bool]) -> Result<(), ScriptError> {
        run(name, |lua| {
            if let Some(f) = function(lua, name) {
                f.call::<()>(Variadic::from_iter(args.iter().copied()))?;
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
        run(name, |lua| match call_h(lua, name, h, ())? {
            Some(r) => match first(r) {
                Value::Boolean(b) => Ok(b),
                v => Err(Fail::Msg(format!(
                    "return value is not a boolean (of type {})",
                    type_name(&v)
                ))),
            },
            None => Ok(plain.map_or(default, |p| defined(lua, p))),
        })
    }

    fn load() {
        let lua = Lua::new();
        match module::install(&lua) {
            Ok(()) => *lock() = Some(State { lua, path: None }),
            Err(e) => abi::error(&format!("lua: cannot start: {e}")),
        }
    }

    fn unload() {
        // Drop the state (closing Lua runs the script's finalizers).
        let st = lock().take();
        drop(st);
    }

    fn dump_plugin() -> Result<(), ScriptError> {
        println!("lua_version={}", env!("NBDKIT_LUA_VERSION"));
        let g = lock();
        let Some(st) = g.as_ref() else { return Ok(()) };
        if st.path.is_none() {
            return Ok(());
        }
        if let Some(f) = function(&st.lua, "dump_plugin") {
            use std::io::Write;
            let _ = std::io::stdout().flush();
            f.call::<()>(())
                .map_err(|e| report("dump_plugin", Fail::Lua(e)))?;
        }
        Ok(())
    }

    fn config(key: &str, value: &str) -> Result<(), ScriptError> {
        let mut g = lock();
        let Some(st) = g.as_mut() else {
            return Err(ScriptError::msg("the Lua interpreter did not start"));
        };
        if st.path.is_none() {
            if key != "script" {
                return Err(ScriptError::msg(
                    "the first parameter must be script=/path/to/script.lua",
                ));
            }
            match load_script(&st.lua, value) {
                Ok(()) => {}
                Err(Fail::Msg(m)) => return Err(ScriptError::msg(m)),
                Err(f) => return Err(report("config", f)),
            }
            st.path = Some(value.to_string());
            let _ = PATH.set(value.to_string());
            return Ok(());
        }
        match function(&st.lua, "config") {
            Some(f) => {
                abi::script::clear_script_errno();
                f.call::<()>((key, value))
                    .map_err(|e| report("config", Fail::Lua(e)))
            }
            None => Err(ScriptError::msg(format!(
                "{}: this plugin does not need command line configuration",
                st.path.as_deref().unwrap_or_default()
            ))),
        }
    }

    fn list_exports(
        readonly: bool,
        is_tls: bool,
        exports: &mut ExportList,
    ) -> Result<(), ScriptError> {
        run("list_exports", |lua| {
            let Some(f) = function(lua, "list_exports") else {
                return exports.use_default().map_err(|_| Fail::Quiet);
            };
            let r = first(f.call::<MultiValue>((readonly, is_tls))?);
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
                exports
                    .add(&name, desc.as_deref())
                    .map_err(|_| Fail::Quiet)?;
            }
            Ok(())
        })
    }

    fn default_export(readonly: bool, is_tls: bool) -> Result<Option<String>, ScriptError> {
        run("default_export", |lua| {
            let Some(f) = function(lua, "default_export") else {
                return Ok(None);
            };
            let r = first(f.call::<MultiValue>((readonly, is_tls))?);
            match string(&r) {
                Some(s) => Ok(Some(s)),
                None => Err(Fail::Msg("the return value is not a string".into())),
            }
        })
    }

    fn open(readonly: bool) -> Result<Handle, ScriptError> {
        run("open", |lua| {
            let f = function(lua, "open").ok_or_else(|| Fail::Msg("missing callback".into()))?;
            let v = first(f.call::<MultiValue>(readonly)?);
            let key = lua.create_registry_value(v)?;
            Ok(Handle { key })
        })
    }

    fn close(h: Handle) -> Result<(), ScriptError> {
        let g = lock();
        let Some(st) = g.as_ref() else { return Ok(()) };
        let r = match function(&st.lua, "close") {
            Some(f) => st
                .lua
                .registry_value::<Value>(&h.key)
                .and_then(|v| f.call::<()>(v))
                .map_err(|e| report("close", Fail::Lua(e))),
            None => Ok(()),
        };
        // The handle goes with the lock held.
        let _ = st.lua.remove_registry_value(h.key);
        r
    }

    fn export_description(h: &Handle) -> Result<Option<String>, ScriptError> {
        run("export_description", |lua| {
            match call_h(lua, "export_description", h, ())? {
                None => Ok(None),
                Some(r) => match string(&first(r)) {
                    Some(s) => Ok(Some(s)),
                    None => Err(Fail::Msg("the return value is not a string".into())),
                },
            }
        })
    }

    fn get_size(h: &Handle) -> Result<i64, ScriptError> {
        run("get_size", |lua| {
            let r = call_h(lua, "get_size", h, ())?
                .ok_or_else(|| Fail::Msg("missing callback".into()))?;
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

    fn block_size(h: &Handle) -> Result<(u32, u32, u32), ScriptError> {
        run("block_size", |lua| {
            let Some(r) = call_h(lua, "block_size", h, ())? else {
                return Ok((0, 0, 0));
            };
            let v: Vec<Value> = r.into_iter().collect();
            let n: Vec<u32> = v
                .iter()
                .take(3)
                .filter_map(|v| integer(v).and_then(|n| u32::try_from(n).ok()))
                .collect();
            match n[..] {
                [a, b, c] => Ok((a, b, c)),
                _ => Err(Fail::Msg("the return value is not three numbers".into())),
            }
        })
    }

    fn can_fast_zero(h: &Handle) -> Result<bool, ScriptError> {
        // Without it, a fast zero fails fast when the script has no `zero`.
        if run("can_fast_zero", |lua| Ok(defined(lua, "can_fast_zero")))? {
            Self::boolean(h, "can_fast_zero", None, false)
        } else {
            run("can_fast_zero", |lua| Ok(!defined(lua, "zero")))
        }
    }

    fn can_fua(h: &Handle) -> Result<c_int, ScriptError> {
        level(h, "can_fua", abi::FUA_NATIVE, |lua| {
            if defined(lua, "flush") {
                abi::FUA_EMULATE
            } else {
                abi::FUA_NONE
            }
        })
    }

    fn can_cache(h: &Handle) -> Result<c_int, ScriptError> {
        level(h, "can_cache", abi::CACHE_NATIVE, |lua| {
            if defined(lua, "cache") {
                abi::CACHE_NATIVE
            } else {
                abi::CACHE_NONE
            }
        })
    }

    fn pread(h: &Handle, buf: &mut [u8], offset: u64, _flags: Flags) -> Result<(), ScriptError> {
        let count = buf.len();
        run("pread", |lua| {
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
            if b.len() < count {
                return Err(Fail::Msg(format!(
                    "returned string length < count bytes ({} < {count})",
                    b.len()
                )));
            }
            buf.copy_from_slice(&b[..count]);
            Ok(())
        })
    }

    fn pwrite(h: &Handle, buf: &[u8], offset: u64, flags: Flags) -> Result<(), ScriptError> {
        run("pwrite", |lua| {
            let s = lua.create_string(buf)?;
            match call_h(lua, "pwrite", h, (s, offset, flags.bits()))? {
                Some(_) => Ok(()),
                None => Err(Fail::Msg("pwrite not implemented".into())),
            }
        })
    }

    fn flush(h: &Handle, flags: Flags) -> Result<(), ScriptError> {
        data(h, "flush", flags.bits())
    }

    fn trim(h: &Handle, count: u32, offset: u64, flags: Flags) -> Result<(), ScriptError> {
        data(h, "trim", (count, offset, flags.bits()))
    }

    fn cache(h: &Handle, count: u32, offset: u64, flags: Flags) -> Result<(), ScriptError> {
        data(h, "cache", (count, offset, flags.bits()))
    }

    fn zero(h: &Handle, count: u32, offset: u64, flags: Flags) -> Result<(), ScriptError> {
        run("zero", |lua| {
            let r = call_h(
                lua,
                "zero",
                h,
                (count, offset, flags.may_trim(), flags.bits()),
            );
            // nbdkit.set_error(nbdkit.EOPNOTSUPP) asks the server to write
            // zeroes instead.
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
        run("extents", |lua| {
            let Some(r) = call_h(lua, "extents", h, (count, offset, flags.bits()))? else {
                // Like the server without the callback: all data.
                return extents
                    .add(offset, count.into(), 0)
                    .map_err(|_| Fail::Quiet);
            };
            let v = first(r);
            let bad =
                || Fail::Msg("the return value is not a list of {offset, length, type}".into());
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
                let (Ok(o), Ok(l), Ok(ty)) =
                    (u64::try_from(o), u64::try_from(l), u32::try_from(ty))
                else {
                    return Err(bad());
                };
                n += 1;
                extents.add(o, l, ty).map_err(|_| Fail::Quiet)?;
            }
            if n == 0 {
                return Err(Fail::Msg("the list of extents is empty".into()));
            }
            Ok(())
        })
    }
}

abi::register_script_plugin!(LuaPlugin);
