//! The `nbdkit` module that scripts import: the server's functions for
//! plugins (`nbdkit.debug`, `nbdkit.set_error`, `nbdkit.export_name`, ...)
//! and the constants of the plugin API (`nbdkit.FLAG_FUA`, ...).

use core::ffi::{c_char, c_int};
use std::ffi::CStr;

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use nbdkit_plugin_abi as abi;

/// `nbdkit.debug(msg)`: a debug message (shown with `-v`).
#[pyfunction]
fn debug(msg: &str) {
    abi::debug(msg);
}

/// `nbdkit.set_error(err)`: the errno the client gets when the callback
/// raises next.
#[pyfunction]
fn set_error(err: c_int) {
    abi::script::script_set_error(err);
}

/// A string the server returned, or `None` for NULL.
///
/// # Safety
/// `p` is NULL or a NUL-terminated string valid during the call.
unsafe fn server_str(p: *const c_char) -> Option<&'static CStr> {
    if p.is_null() {
        None
    } else {
        // SAFETY: the caller's contract; the server keeps such strings at
        // least for the current connection, longer than this call.
        Some(unsafe { CStr::from_ptr(p) })
    }
}

/// `nbdkit.export_name()`: the export name the client asked for.
#[pyfunction]
fn export_name() -> PyResult<String> {
    // SAFETY: no arguments; NULL or a string interned by the server.
    let s = unsafe { server_str(abi::nbdkit_export_name()) }
        .ok_or_else(|| PyRuntimeError::new_err("nbdkit.export_name failed"))?;
    s.to_str().map(str::to_string).map_err(|_| {
        PyValueError::new_err("nbdkit.export_name: the export name is not valid UTF-8")
    })
}

/// `nbdkit.is_tls()`: whether the connection is protected by TLS.
#[pyfunction]
fn is_tls() -> PyResult<bool> {
    // SAFETY: no arguments.
    match unsafe { abi::nbdkit_is_tls() } {
        -1 => Err(PyRuntimeError::new_err("nbdkit.is_tls failed")),
        r => Ok(r != 0),
    }
}

fn peer_id(what: &str, r: i64) -> PyResult<i64> {
    if r == -1 {
        Err(PyRuntimeError::new_err(format!("nbdkit.{what} failed")))
    } else {
        Ok(r)
    }
}

/// `nbdkit.peer_pid()`: the client's process ID (Unix sockets).
#[pyfunction]
fn peer_pid() -> PyResult<i64> {
    // SAFETY: no arguments.
    peer_id("peer_pid", unsafe { abi::nbdkit_peer_pid() })
}

/// `nbdkit.peer_uid()`: the client's user ID (Unix sockets).
#[pyfunction]
fn peer_uid() -> PyResult<i64> {
    // SAFETY: no arguments.
    peer_id("peer_uid", unsafe { abi::nbdkit_peer_uid() })
}

/// `nbdkit.peer_gid()`: the client's group ID (Unix sockets).
#[pyfunction]
fn peer_gid() -> PyResult<i64> {
    // SAFETY: no arguments.
    peer_id("peer_gid", unsafe { abi::nbdkit_peer_gid() })
}

/// `nbdkit.peer_security_context()`: the client's security label.
#[pyfunction]
fn peer_security_context() -> PyResult<String> {
    // SAFETY: no arguments; NULL or a string from malloc that we free.
    let p = unsafe { abi::nbdkit_peer_security_context() };
    if p.is_null() {
        return Err(PyRuntimeError::new_err(
            "nbdkit.peer_security_context failed",
        ));
    }
    // SAFETY: a NUL-terminated string from malloc, copied then freed once.
    let s = unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned();
    // SAFETY: as above.
    unsafe { libc::free(p.cast()) };
    Ok(s)
}

/// `nbdkit.peer_name()`: the client's address in the form Python's
/// `socket` module uses: `(host, port)` for IPv4, `(host, port, flowinfo,
/// scope_id)` for IPv6, `(cid, port)` for vsock, the path (`""` when
/// unnamed) for a Unix socket.
#[pyfunction]
fn peer_name(py: Python<'_>) -> PyResult<Py<PyAny>> {
    // SAFETY: all-zero bytes are a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { core::mem::zeroed() };
    let mut len = core::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: a buffer of `len` bytes and its length.
    let r =
        unsafe { abi::nbdkit_peer_name((&mut ss as *mut libc::sockaddr_storage).cast(), &mut len) };
    if r == -1 {
        return Err(PyRuntimeError::new_err("nbdkit.peer_name failed"));
    }
    let obj = match c_int::from(ss.ss_family) {
        libc::AF_INET => {
            // SAFETY: the server wrote a sockaddr_in for this family.
            let a = unsafe { &*(&ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = core::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            (ip.to_string(), u16::from_be(a.sin_port))
                .into_pyobject(py)?
                .into_any()
        }
        libc::AF_INET6 => {
            // SAFETY: the server wrote a sockaddr_in6 for this family.
            let a =
                unsafe { &*(&ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let ip = core::net::Ipv6Addr::from(a.sin6_addr.s6_addr);
            (
                ip.to_string(),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )
                .into_pyobject(py)?
                .into_any()
        }
        #[cfg(target_os = "linux")]
        libc::AF_VSOCK => {
            // SAFETY: the server wrote a sockaddr_vm for this family.
            let a = unsafe { &*(&ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_vm>() };
            (a.svm_cid, a.svm_port).into_pyobject(py)?.into_any()
        }
        libc::AF_UNIX => {
            let hdr = core::mem::size_of::<libc::sa_family_t>();
            let n = (len as usize).saturating_sub(hdr);
            // SAFETY: the server wrote a sockaddr_un (maybe just its
            // family) of `len` bytes into the storage.
            let a = unsafe { &*(&ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_un>() };
            let path: Vec<u8> = a.sun_path[..n.min(a.sun_path.len())]
                .iter()
                .map(|&c| c as u8)
                .take_while(|&c| c != 0)
                .collect();
            String::from_utf8_lossy(&path).into_pyobject(py)?.into_any()
        }
        f => {
            return Err(PyRuntimeError::new_err(format!(
                "nbdkit.peer_name: unknown address family {f}"
            )))
        }
    };
    Ok(obj.unbind())
}

/// `nbdkit.shutdown()`: ask the server to shut down.
#[pyfunction]
fn shutdown() {
    // SAFETY: no arguments.
    unsafe { abi::nbdkit_shutdown() };
}

/// `nbdkit.disconnect(force)`: ask the server to drop this client.
#[pyfunction]
#[pyo3(signature = (force = false))]
fn disconnect(force: bool) {
    // SAFETY: one int argument.
    unsafe { abi::nbdkit_disconnect(c_int::from(force)) };
}

/// `nbdkit.parse_size(str)`: a size such as `100M`, in bytes.
#[pyfunction]
fn parse_size(s: &str) -> PyResult<i64> {
    let c = abi::cstring(s);
    // SAFETY: a NUL-terminated string.
    match unsafe { abi::nbdkit_parse_size(c.as_ptr()) } {
        -1 => Err(PyValueError::new_err(format!(
            "Unable to parse string as size: {s}"
        ))),
        n => Ok(n),
    }
}

/// `nbdkit.parse_probability(what, str)`: a probability such as `1%`,
/// `1:100` or `0.01`.
#[pyfunction]
fn parse_probability(what: &str, s: &str) -> PyResult<f64> {
    let (w, c) = (abi::cstring(what), abi::cstring(s));
    let mut r = 0.0f64;
    // SAFETY: two NUL-terminated strings and a double to write.
    match unsafe { abi::nbdkit_parse_probability(w.as_ptr(), c.as_ptr(), &mut r) } {
        -1 => Err(PyValueError::new_err(format!(
            "{what}: unable to parse string as probability: {s}"
        ))),
        _ => Ok(r),
    }
}

/// Build the `nbdkit` module and make `import nbdkit` find it.
pub(crate) fn install(py: Python<'_>) -> PyResult<()> {
    let m = PyModule::new(py, "nbdkit")?;
    m.add("__doc__", "Module used to access nbdkit server API")?;
    m.add_function(wrap_pyfunction!(debug, &m)?)?;
    m.add_function(wrap_pyfunction!(set_error, &m)?)?;
    m.add_function(wrap_pyfunction!(export_name, &m)?)?;
    m.add_function(wrap_pyfunction!(is_tls, &m)?)?;
    m.add_function(wrap_pyfunction!(peer_name, &m)?)?;
    m.add_function(wrap_pyfunction!(peer_pid, &m)?)?;
    m.add_function(wrap_pyfunction!(peer_uid, &m)?)?;
    m.add_function(wrap_pyfunction!(peer_gid, &m)?)?;
    m.add_function(wrap_pyfunction!(peer_security_context, &m)?)?;
    m.add_function(wrap_pyfunction!(shutdown, &m)?)?;
    m.add_function(wrap_pyfunction!(disconnect, &m)?)?;
    m.add_function(wrap_pyfunction!(parse_size, &m)?)?;
    m.add_function(wrap_pyfunction!(parse_probability, &m)?)?;
    let ints: [(&str, i64); 16] = [
        (
            "THREAD_MODEL_SERIALIZE_CONNECTIONS",
            abi::THREAD_MODEL_SERIALIZE_CONNECTIONS.into(),
        ),
        (
            "THREAD_MODEL_SERIALIZE_ALL_REQUESTS",
            abi::THREAD_MODEL_SERIALIZE_ALL_REQUESTS.into(),
        ),
        (
            "THREAD_MODEL_SERIALIZE_REQUESTS",
            abi::THREAD_MODEL_SERIALIZE_REQUESTS.into(),
        ),
        ("THREAD_MODEL_PARALLEL", abi::THREAD_MODEL_PARALLEL.into()),
        ("FLAG_MAY_TRIM", abi::FLAG_MAY_TRIM.into()),
        ("FLAG_FUA", abi::FLAG_FUA.into()),
        ("FLAG_REQ_ONE", abi::FLAG_REQ_ONE.into()),
        ("FLAG_FAST_ZERO", abi::FLAG_FAST_ZERO.into()),
        ("FUA_NONE", abi::FUA_NONE.into()),
        ("FUA_EMULATE", abi::FUA_EMULATE.into()),
        ("FUA_NATIVE", abi::FUA_NATIVE.into()),
        ("CACHE_NONE", abi::CACHE_NONE.into()),
        ("CACHE_EMULATE", abi::CACHE_EMULATE.into()),
        ("CACHE_NATIVE", abi::CACHE_NATIVE.into()),
        ("EXTENT_HOLE", abi::EXTENT_HOLE.into()),
        ("EXTENT_ZERO", abi::EXTENT_ZERO.into()),
    ];
    for (name, v) in ints {
        m.add(name, v)?;
    }
    let modules = py.import("sys")?.getattr("modules")?;
    let modules = modules.cast::<PyDict>()?;
    modules.set_item("nbdkit", &m)?;
    Ok(())
}
