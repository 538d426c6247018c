//! The global `nbdkit` table scripts can use: the server's functions for
//! plugins (`nbdkit.debug`, `nbdkit.set_error`, `nbdkit.parse_size`, ...)
//! and the constants of the plugin API (`nbdkit.FLAG_FUA`, ...), after
//! the python plugin's `nbdkit` module.

use core::ffi::{c_char, c_int};
use std::ffi::CStr;

use mlua::{Lua, Value};

use nbdkit_plugin_abi as abi;

/// A string the server returned, or `None` for NULL.
///
/// # Safety
/// `p` is NULL or a NUL-terminated string valid during the call.
unsafe fn server_str(p: *const c_char) -> Option<String> {
    if p.is_null() {
        None
    } else {
        // SAFETY: the caller's contract.
        Some(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
    }
}

fn failed(what: &str) -> mlua::Error {
    mlua::Error::RuntimeError(format!("nbdkit.{what} failed"))
}

fn peer(what: &'static str, r: i64) -> mlua::Result<i64> {
    if r == -1 {
        Err(failed(what))
    } else {
        Ok(r)
    }
}

/// The errno an `nbdkit.set_error` argument names: a number, or the
/// name of an errno constant (`"ENOSPC"`).
fn errno_of(v: &Value) -> mlua::Result<c_int> {
    match v {
        Value::Integer(i) => Ok(*i as c_int),
        Value::Number(n) => Ok(*n as c_int),
        Value::String(s) => ERRNOS
            .iter()
            .find(|(n, _)| s.as_bytes() == n.as_bytes())
            .map(|&(_, e)| e)
            .ok_or_else(|| {
                mlua::Error::RuntimeError(format!(
                    "nbdkit.set_error: unknown errno name {}",
                    s.to_string_lossy()
                ))
            }),
        v => Err(mlua::Error::RuntimeError(format!(
            "nbdkit.set_error: expected an errno number, got a {}",
            v.type_name()
        ))),
    }
}

/// Errno constants the table carries (`nbdkit.EIO`, ...).
const ERRNOS: [(&str, c_int); 18] = [
    ("EPERM", libc::EPERM),
    ("ENOENT", libc::ENOENT),
    ("EBADF", libc::EBADF),
    ("EAGAIN", libc::EAGAIN),
    ("EBUSY", libc::EBUSY),
    ("EFBIG", libc::EFBIG),
    ("ENOTCONN", libc::ENOTCONN),
    ("EIO", libc::EIO),
    ("ENOMEM", libc::ENOMEM),
    ("EACCES", libc::EACCES),
    ("EINVAL", libc::EINVAL),
    ("ENOSPC", libc::ENOSPC),
    ("EROFS", libc::EROFS),
    ("ERANGE", libc::ERANGE),
    ("ENOTSUP", libc::ENOTSUP),
    ("EOPNOTSUPP", libc::EOPNOTSUPP),
    ("ESHUTDOWN", libc::ESHUTDOWN),
    ("EOVERFLOW", libc::EOVERFLOW),
];

/// Make the global `nbdkit` table.
pub(crate) fn install(lua: &Lua) -> mlua::Result<()> {
    let t = lua.create_table()?;
    t.set(
        "debug",
        lua.create_function(|_, msg: mlua::String| {
            abi::debug(&msg.to_string_lossy());
            Ok(())
        })?,
    )?;
    t.set(
        "set_error",
        lua.create_function(|_, v: Value| {
            let e = errno_of(&v)?;
            abi::script::script_set_error(e);
            Ok(())
        })?,
    )?;
    t.set(
        "export_name",
        lua.create_function(|_, ()| {
            // SAFETY: no arguments; NULL or a string kept by the server.
            unsafe { server_str(abi::nbdkit_export_name()) }.ok_or_else(|| failed("export_name"))
        })?,
    )?;
    t.set(
        "is_tls",
        lua.create_function(|_, ()| {
            // SAFETY: no arguments.
            match unsafe { abi::nbdkit_is_tls() } {
                -1 => Err(failed("is_tls")),
                r => Ok(r != 0),
            }
        })?,
    )?;
    t.set(
        "peer_pid",
        // SAFETY (each): no arguments.
        lua.create_function(|_, ()| peer("peer_pid", unsafe { abi::nbdkit_peer_pid() }))?,
    )?;
    t.set(
        "peer_uid",
        lua.create_function(|_, ()| peer("peer_uid", unsafe { abi::nbdkit_peer_uid() }))?,
    )?;
    t.set(
        "peer_gid",
        lua.create_function(|_, ()| peer("peer_gid", unsafe { abi::nbdkit_peer_gid() }))?,
    )?;
    t.set(
        "shutdown",
        lua.create_function(|_, ()| {
            // SAFETY: no arguments.
            unsafe { abi::nbdkit_shutdown() };
            Ok(())
        })?,
    )?;
    t.set(
        "disconnect",
        lua.create_function(|_, force: Option<bool>| {
            // SAFETY: takes a plain int.
            unsafe { abi::nbdkit_disconnect(c_int::from(force.unwrap_or(false))) };
            Ok(())
        })?,
    )?;
    t.set(
        "parse_size",
        lua.create_function(|_, s: mlua::String| {
            let c = abi::cstring(&s.to_string_lossy());
            // SAFETY: a NUL-terminated string for the call.
            match unsafe { abi::nbdkit_parse_size(c.as_ptr()) } {
                -1 => Err(mlua::Error::RuntimeError(format!(
                    "nbdkit.parse_size: cannot parse size: {}",
                    s.to_string_lossy()
                ))),
                n => Ok(n),
            }
        })?,
    )?;
    t.set(
        "parse_probability",
        lua.create_function(|_, (what, s): (mlua::String, mlua::String)| {
            let w = abi::cstring(&what.to_string_lossy());
            let c = abi::cstring(&s.to_string_lossy());
            let mut r = 0.0;
            // SAFETY: two strings for the call and a double to fill.
            match unsafe { abi::nbdkit_parse_probability(w.as_ptr(), c.as_ptr(), &mut r) } {
                -1 => Err(mlua::Error::RuntimeError(format!(
                    "nbdkit.parse_probability: cannot parse probability: {}",
                    s.to_string_lossy()
                ))),
                _ => Ok(r),
            }
        })?,
    )?;
    for (n, v) in abi::SCRIPT_CONSTANTS {
        t.set(n, v)?;
    }
    for (n, e) in ERRNOS {
        t.set(n, i64::from(e))?;
    }
    lua.globals().set("nbdkit", t)
}
