//! The `nbdkit_*` functions a plugin or filter calls, exported by the
//! `nbdkit` executable (the cli's build script exports every `nbdkit_*`
//! symbol dynamically). The variadic ones are in `variadic.c`.
//!
//! Every function here takes its pointers from C: the invariant each
//! `unsafe` block relies on is the ABI contract nbdkit documents for that
//! function (a NUL-terminated string, a pointer to a live object of the
//! declared type, ...). A function that cannot do what nbdkit does reports
//! an error through `nbdkit_error` and fails; none of them pretends.
#![allow(unsafe_code)]

use std::ffi::{c_char, c_double, c_int, c_uint, c_void, CStr, CString};
use std::time::{Duration, Instant};

use nbdkit_core::backend::{Exports, Extents, Peer};
use nbdkit_core::filters::params;

use super::{copy_str, current_conn, ffi, intern, report_error, set_errno};

fn errno_set(e: c_int) {
    nix::errno::Errno::set_raw(e);
}

/// Fail the way nbdkit's helpers do: `nbdkit_error(msg)`, `errno = e`.
fn fail(msg: impl Into<String>, e: c_int) {
    report_error(msg.into());
    errno_set(e);
}

/// A string argument, or `None` (with an error) for NULL.
///
/// # Safety
/// `p` is NULL or a NUL-terminated string valid for the call.
unsafe fn arg<'a>(p: *const c_char, func: &str) -> Option<&'a str> {
    if p.is_null() {
        fail(format!("{func}: NULL string"), libc::EINVAL);
        return None;
    }
    // SAFETY: the caller's contract.
    match unsafe { CStr::from_ptr(p) }.to_str() {
        Ok(s) => Some(s),
        Err(_) => {
            fail(format!("{func}: string is not valid UTF-8"), libc::EINVAL);
            None
        }
    }
}

/// A string copied into memory from `malloc`, which the caller frees with
/// `free` (as nbdkit's functions that return `char *` do).
fn malloc_str(s: &[u8]) -> *mut c_char {
    // SAFETY: malloc of len+1 bytes, checked for NULL, filled completely.
    unsafe {
        let p = libc::malloc(s.len() + 1) as *mut u8;
        if p.is_null() {
            return core::ptr::null_mut();
        }
        core::ptr::copy_nonoverlapping(s.as_ptr(), p, s.len());
        *p.add(s.len()) = 0;
        p as *mut c_char
    }
}

// ---------------------------------------------------------------------------
// Messages (called from variadic.c)

#[no_mangle]
extern "C" fn cabi_rs_error(msg: *const c_char) {
    // SAFETY: variadic.c passes a NUL-terminated string it owns.
    if let Some(m) = unsafe { copy_str(msg) } {
        report_error(m);
    }
}

#[no_mangle]
extern "C" fn cabi_rs_debug(msg: *const c_char) {
    // SAFETY: as above.
    if let Some(m) = unsafe { copy_str(msg) } {
        crate::log::debug(super::current_layer(), format_args!("{m}"));
    }
}

#[no_mangle]
extern "C" fn cabi_rs_verbose() -> c_int {
    c_int::from(crate::log::verbose())
}

/// `void nbdkit_set_error (int err)`.
#[no_mangle]
extern "C" fn nbdkit_set_error(err: c_int) {
    set_errno(err);
}

// ---------------------------------------------------------------------------
// The connection

/// `const char *nbdkit_export_name (void)`.
#[no_mangle]
extern "C" fn nbdkit_export_name() -> *const c_char {
    match current_conn().and_then(|c| c.export_name.as_ref().map(|n| n.as_ptr())) {
        // The name lives in the connection, which outlives the call.
        Some(p) => intern_copy(p),
        None => {
            fail(
                "nbdkit_export_name: can only be called from connected callbacks",
                libc::EINVAL,
            );
            core::ptr::null()
        }
    }
}

fn intern_copy(p: *const c_char) -> *const c_char {
    // SAFETY: `p` is a CString's pointer, valid here.
    intern(unsafe { CStr::from_ptr(p) }.to_owned())
}

/// `int nbdkit_is_tls (void)`.
#[no_mangle]
extern "C" fn nbdkit_is_tls() -> c_int {
    match current_conn() {
        Some(c) => c_int::from(c.is_tls),
        None => {
            fail(
                "nbdkit_is_tls: can only be called from connected callbacks",
                libc::EINVAL,
            );
            -1
        }
    }
}

fn peer() -> Option<Peer> {
    match current_conn() {
        Some(c) => Some(c.peer.clone()),
        None => {
            fail(
                "nbdkit_peer_*: can only be called from connected callbacks",
                libc::EINVAL,
            );
            None
        }
    }
}

/// `int nbdkit_peer_name (struct sockaddr *addr, socklen_t *addrlen)`.
#[no_mangle]
extern "C" fn nbdkit_peer_name(addr: *mut libc::sockaddr, addrlen: *mut libc::socklen_t) -> c_int {
    let Some(p) = peer() else { return -1 };
    if addr.is_null() || addrlen.is_null() {
        fail("nbdkit_peer_name: NULL argument", libc::EINVAL);
        return -1;
    }
    // SAFETY: all-zero bytes are a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { core::mem::zeroed() };
    let len = match p {
        Peer::Inet(std::net::SocketAddr::V4(a)) => {
            // SAFETY: sockaddr_storage is large and aligned enough for
            // any socket address type.
            let s = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in) };
            s.sin_family = libc::AF_INET as libc::sa_family_t;
            s.sin_port = a.port().to_be();
            s.sin_addr.s_addr = u32::from(*a.ip()).to_be();
            core::mem::size_of::<libc::sockaddr_in>()
        }
        Peer::Inet(std::net::SocketAddr::V6(a)) => {
            // SAFETY: as above.
            let s = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in6) };
            s.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            s.sin6_port = a.port().to_be();
            s.sin6_addr.s6_addr = a.ip().octets();
            s.sin6_flowinfo = a.flowinfo();
            s.sin6_scope_id = a.scope_id();
            core::mem::size_of::<libc::sockaddr_in6>()
        }
        Peer::Unix { .. } => {
            // A client's end of a Unix socket is unnamed: the family only.
            ss.ss_family = libc::AF_UNIX as libc::sa_family_t;
            core::mem::size_of::<libc::sa_family_t>()
        }
        Peer::Vsock { cid, port } => crate::os::vsock::write_sockaddr(&mut ss, cid, port),
        Peer::Unknown => {
            fail(
                "peer_name: getpeername: Socket operation on non-socket",
                libc::ENOTSOCK,
            );
            return -1;
        }
    };
    // SAFETY: the caller passes a buffer of *addrlen bytes; we copy no
    // more than that and report the full length, as getpeername does.
    unsafe {
        let room = *addrlen as usize;
        core::ptr::copy_nonoverlapping(
            &ss as *const _ as *const u8,
            addr as *mut u8,
            room.min(len),
        );
        *addrlen = len as libc::socklen_t;
    }
    0
}

fn peer_cred(which: &str, get: impl Fn(&Peer) -> Option<i64>) -> i64 {
    let Some(p) = peer() else { return -1 };
    match get(&p) {
        Some(v) => v,
        None => {
            fail(
                format!("nbdkit_peer_{which}: not a Unix domain socket or no credentials"),
                libc::ENOTSUP,
            );
            -1
        }
    }
}

/// `int64_t nbdkit_peer_pid (void)`.
#[no_mangle]
extern "C" fn nbdkit_peer_pid() -> i64 {
    peer_cred("pid", |p| match p {
        Peer::Unix { pid: Some(v), .. } => Some(i64::from(*v)),
        _ => None,
    })
}

/// `int64_t nbdkit_peer_uid (void)`.
#[no_mangle]
extern "C" fn nbdkit_peer_uid() -> i64 {
    peer_cred("uid", |p| match p {
        Peer::Unix { uid: Some(v), .. } => Some(i64::from(*v)),
        _ => None,
    })
}

/// `int64_t nbdkit_peer_gid (void)`.
#[no_mangle]
extern "C" fn nbdkit_peer_gid() -> i64 {
    peer_cred("gid", |p| match p {
        Peer::Unix { gid: Some(v), .. } => Some(i64::from(*v)),
        _ => None,
    })
}

/// `char *nbdkit_peer_security_context (void)`: this server does not
/// keep the client's socket for plugins, so it cannot ask for SO_PEERSEC.
#[no_mangle]
extern "C" fn nbdkit_peer_security_context() -> *mut c_char {
    fail(
        "nbdkit_peer_security_context: not supported by this server",
        libc::ENOTSUP,
    );
    core::ptr::null_mut()
}

/// `void nbdkit_shutdown (void)`.
#[no_mangle]
extern "C" fn nbdkit_shutdown() {
    crate::server::request_shutdown();
}

/// `void nbdkit_disconnect (int force)`: this server cannot yet drop one
/// client from inside a plugin call; the request is logged as an error.
#[no_mangle]
extern "C" fn nbdkit_disconnect(_force: c_int) {
    crate::log::error(
        super::current_layer(),
        "nbdkit_disconnect: not supported by this server; the client stays connected",
    );
}

/// `int nbdkit_stdio_safe (void)`.
#[no_mangle]
extern "C" fn nbdkit_stdio_safe() -> c_int {
    c_int::from(super::stdio_safe())
}

/// `int nbdkit_nanosleep (unsigned sec, unsigned nsec)`: sleeps, but
/// returns early with ESHUTDOWN when the server is shutting down.
#[no_mangle]
extern "C" fn nbdkit_nanosleep(sec: c_uint, nsec: c_uint) -> c_int {
    let total = Duration::from_secs(u64::from(sec)) + Duration::from_nanos(u64::from(nsec));
    let end = Instant::now() + total;
    loop {
        if crate::server::stopping() {
            fail("aborting sleep to shut down", libc::ESHUTDOWN);
            return -1;
        }
        let now = Instant::now();
        if now >= end {
            return 0;
        }
        std::thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

// ---------------------------------------------------------------------------
// Strings and paths

/// `const char *nbdkit_strdup_intern (const char *str)`.
#[no_mangle]
extern "C" fn nbdkit_strdup_intern(s: *const c_char) -> *const c_char {
    if s.is_null() {
        fail("nbdkit_strdup_intern: NULL string", libc::EINVAL);
        return core::ptr::null();
    }
    // SAFETY: a NUL-terminated string by the function's contract.
    intern(unsafe { CStr::from_ptr(s) }.to_owned())
}

/// `const char *nbdkit_strndup_intern (const char *str, size_t n)`.
#[no_mangle]
extern "C" fn nbdkit_strndup_intern(s: *const c_char, n: usize) -> *const c_char {
    if s.is_null() {
        fail("nbdkit_strndup_intern: NULL string", libc::EINVAL);
        return core::ptr::null();
    }
    // SAFETY: strnlen reads at most `n` bytes of a string that is either
    // NUL-terminated or at least `n` bytes long (strndup's contract).
    let len = unsafe { libc::strnlen(s, n) };
    // SAFETY: `len` bytes are readable, as just measured.
    let bytes = unsafe { core::slice::from_raw_parts(s as *const u8, len) };
    intern(CString::new(bytes).unwrap_or_default())
}

/// `char *nbdkit_absolute_path (const char *path)`.
#[no_mangle]
extern "C" fn nbdkit_absolute_path(path: *const c_char) -> *mut c_char {
    // SAFETY: NULL or a NUL-terminated string.
    let p = unsafe { copy_str(path) }.unwrap_or_default();
    if p.is_empty() {
        fail(
            "cannot convert null or empty path to an absolute path",
            libc::EINVAL,
        );
        return core::ptr::null_mut();
    }
    if p.starts_with('/') {
        return malloc_str(p.as_bytes());
    }
    match std::env::current_dir() {
        Ok(d) => malloc_str(format!("{}/{p}", d.display()).as_bytes()),
        Err(e) => {
            fail(
                format!("getcwd: {e}"),
                e.raw_os_error().unwrap_or(libc::EIO),
            );
            core::ptr::null_mut()
        }
    }
}

/// `char *nbdkit_realpath (const char *path)`.
#[no_mangle]
extern "C" fn nbdkit_realpath(path: *const c_char) -> *mut c_char {
    // SAFETY: NULL or a NUL-terminated string.
    let p = unsafe { copy_str(path) }.unwrap_or_default();
    if p.is_empty() {
        fail("cannot resolve a null or empty path", libc::EINVAL);
        return core::ptr::null_mut();
    }
    match std::fs::canonicalize(&p) {
        Ok(r) => malloc_str(r.as_os_str().as_encoded_bytes()),
        Err(e) => {
            let errno = e.raw_os_error().unwrap_or(libc::EIO);
            fail(
                format!(
                    "realpath: {p}: {}",
                    crate::os::errno::from_os(errno).description()
                ),
                errno,
            );
            core::ptr::null_mut()
        }
    }
}

/// `int nbdkit_read_password (const char *value, char **password)`.
#[no_mangle]
extern "C" fn nbdkit_read_password(value: *const c_char, password: *mut *mut c_char) -> c_int {
    // SAFETY: NULL or a NUL-terminated string.
    let Some(v) = (unsafe { arg(value, "nbdkit_read_password") }) else {
        return -1;
    };
    if password.is_null() {
        fail("nbdkit_read_password: NULL password pointer", libc::EINVAL);
        return -1;
    }
    // SAFETY: `password` points to a `char *` the caller owns.
    unsafe { *password = core::ptr::null_mut() };
    if v == "-" && !super::stdio_safe() {
        fail("stdin is not available for reading password", libc::EINVAL);
        return -1;
    }
    match crate::filters::luks::read_password(v) {
        Ok(bytes) => {
            let p = malloc_str(&bytes);
            if p.is_null() {
                fail("nbdkit_read_password: out of memory", libc::ENOMEM);
                return -1;
            }
            // SAFETY: as above.
            unsafe { *password = p };
            0
        }
        Err(e) => {
            fail(e.to_string(), crate::os::errno::to_os(e.errno));
            -1
        }
    }
}

// ---------------------------------------------------------------------------
// Parsers

/// `int64_t nbdkit_parse_size (const char *str)`.
#[no_mangle]
extern "C" fn nbdkit_parse_size(s: *const c_char) -> i64 {
    // SAFETY: NULL or a NUL-terminated string.
    let Some(v) = (unsafe { arg(s, "nbdkit_parse_size") }) else {
        return -1;
    };
    match nbdkit_core::plugins::size_param(v) {
        Ok(n) => n as i64,
        Err(e) => {
            fail(e.to_string(), libc::EINVAL);
            -1
        }
    }
}

/// `int nbdkit_parse_bool (const char *str)`.
#[no_mangle]
extern "C" fn nbdkit_parse_bool(s: *const c_char) -> c_int {
    // SAFETY: NULL or a NUL-terminated string.
    let Some(v) = (unsafe { arg(s, "nbdkit_parse_bool") }) else {
        return -1;
    };
    match params::bool_param(v) {
        Ok(b) => c_int::from(b),
        Err(e) => {
            fail(e.to_string(), libc::EINVAL);
            -1
        }
    }
}

/// `int nbdkit_parse_probability (const char *what, const char *str,
/// double *ret)`: `0.1`, `1e-1`, `10%`, `1:10` or `1/10`.
#[no_mangle]
extern "C" fn nbdkit_parse_probability(
    what: *const c_char,
    s: *const c_char,
    ret: *mut c_double,
) -> c_int {
    // SAFETY: NULL or NUL-terminated strings.
    let (Some(w), Some(v)) = (unsafe { arg(what, "nbdkit_parse_probability") }, unsafe {
        arg(s, "nbdkit_parse_probability")
    }) else {
        return -1;
    };
    let ratio = |sep: char| -> Option<f64> {
        let (a, b) = v.split_once(sep)?;
        let a: f64 = a.trim().parse().ok()?;
        let b: f64 = b.trim().parse().ok()?;
        (b != 0.0).then(|| a / b)
    };
    let p = ratio(':')
        .or_else(|| ratio('/'))
        .or_else(|| params::parse_probability(v));
    match p {
        Some(p) if p.is_finite() && p >= 0.0 => {
            if !ret.is_null() {
                // SAFETY: `ret` points to a double the caller owns.
                unsafe { *ret = p };
            }
            0
        }
        _ => {
            fail(
                format!("{w}: could not parse probability: {v}"),
                libc::EINVAL,
            );
            -1
        }
    }
}

/// A number that did not parse: ERANGE when out of range, else EINVAL.
fn number_failed(e: &nbdkit_core::backend::Error) -> c_int {
    let msg = e.to_string();
    let errno = if msg.contains("out of range") {
        libc::ERANGE
    } else {
        libc::EINVAL
    };
    fail(msg, errno);
    -1
}

macro_rules! parse_int {
    ($name:ident, $t:ty, signed) => {
        #[doc = concat!("`int ", stringify!($name), " (const char *what, const char *str, ...)`.")]
        #[no_mangle]
        extern "C" fn $name(what: *const c_char, s: *const c_char, r: *mut $t) -> c_int {
            // SAFETY: NULL or NUL-terminated strings.
            let (Some(w), Some(v)) = (unsafe { arg(what, stringify!($name)) }, unsafe {
                arg(s, stringify!($name))
            }) else {
                return -1;
            };
            match params::parse_signed(w, v, i64::from(<$t>::MIN), i64::from(<$t>::MAX)) {
                Ok(n) => {
                    if !r.is_null() {
                        // SAFETY: `r` points to the caller's integer; the
                        // value is in its range, checked above.
                        unsafe { *r = n as $t };
                    }
                    0
                }
                Err(e) => number_failed(&e),
            }
        }
    };
    ($name:ident, $t:ty, unsigned) => {
        #[doc = concat!("`int ", stringify!($name), " (const char *what, const char *str, ...)`.")]
        #[no_mangle]
        extern "C" fn $name(what: *const c_char, s: *const c_char, r: *mut $t) -> c_int {
            // SAFETY: NULL or NUL-terminated strings.
            let (Some(w), Some(v)) = (unsafe { arg(what, stringify!($name)) }, unsafe {
                arg(s, stringify!($name))
            }) else {
                return -1;
            };
            match params::parse_unsigned(w, v, u64::from(<$t>::MAX)) {
                Ok(n) => {
                    if !r.is_null() {
                        // SAFETY: `r` points to the caller's integer; the
                        // value is in its range, checked above.
                        unsafe { *r = n as $t };
                    }
                    0
                }
                Err(e) => number_failed(&e),
            }
        }
    };
}

parse_int!(nbdkit_parse_int, c_int, signed);
parse_int!(nbdkit_parse_unsigned, c_uint, unsigned);
parse_int!(nbdkit_parse_int8_t, i8, signed);
parse_int!(nbdkit_parse_uint8_t, u8, unsigned);
parse_int!(nbdkit_parse_int16_t, i16, signed);
parse_int!(nbdkit_parse_uint16_t, u16, unsigned);
parse_int!(nbdkit_parse_int32_t, i32, signed);
parse_int!(nbdkit_parse_uint32_t, u32, unsigned);
parse_int!(nbdkit_parse_int64_t, i64, signed);
parse_int!(nbdkit_parse_uint64_t, u64, unsigned);

// ---------------------------------------------------------------------------
// Extents

/// `struct nbdkit_extents *nbdkit_extents_new (uint64_t start, uint64_t end)`.
#[no_mangle]
extern "C" fn nbdkit_extents_new(start: u64, end: u64) -> *mut ffi::CExtents {
    if start > i64::MAX as u64 || end > i64::MAX as u64 {
        fail(
            format!("nbdkit_extents_new: start ({start}) or end ({end}) > INT64_MAX"),
            libc::ERANGE,
        );
        return core::ptr::null_mut();
    }
    if start > end {
        fail(
            format!("nbdkit_extents_new: start ({start}) > end ({end})"),
            libc::ERANGE,
        );
        return core::ptr::null_mut();
    }
    Box::into_raw(Box::new(Extents::new(start, end)))
}

/// `void nbdkit_extents_free (struct nbdkit_extents *)`.
#[no_mangle]
extern "C" fn nbdkit_extents_free(e: *mut ffi::CExtents) {
    if !e.is_null() {
        // SAFETY: a list from nbdkit_extents_new (the only lists a plugin
        // or filter may free), freed once.
        drop(unsafe { Box::from_raw(e) });
    }
}

/// `size_t nbdkit_extents_count (const struct nbdkit_extents *)`.
#[no_mangle]
extern "C" fn nbdkit_extents_count(e: *const ffi::CExtents) -> usize {
    // SAFETY: NULL or a live extents list.
    unsafe { e.as_ref() }.map_or(0, Extents::len)
}

/// `struct nbdkit_extent nbdkit_get_extent (const struct nbdkit_extents *, size_t)`.
#[no_mangle]
extern "C" fn nbdkit_get_extent(e: *const ffi::CExtents, i: usize) -> ffi::Extent {
    // SAFETY: NULL or a live extents list.
    let x = unsafe { e.as_ref() }.and_then(|e| e.as_slice().get(i).copied());
    match x {
        Some(x) => ffi::Extent {
            offset: x.offset,
            length: x.length,
            typ: x.flags,
        },
        None => {
            fail("nbdkit_get_extent: index out of range", libc::ERANGE);
            ffi::Extent {
                offset: 0,
                length: 0,
                typ: 0,
            }
        }
    }
}

/// `int nbdkit_add_extent (struct nbdkit_extents *, uint64_t offset,
/// uint64_t length, uint32_t type)`.
#[no_mangle]
extern "C" fn nbdkit_add_extent(
    e: *mut ffi::CExtents,
    offset: u64,
    length: u64,
    typ: u32,
) -> c_int {
    // SAFETY: NULL or a live extents list the caller may add to.
    let Some(e) = (unsafe { e.as_mut() }) else {
        fail("nbdkit_add_extent: NULL extents", libc::EINVAL);
        return -1;
    };
    match e.add(offset, length, typ) {
        Ok(()) => 0,
        Err(err) => {
            fail(err.to_string(), crate::os::errno::to_os(err.errno));
            -1
        }
    }
}

// ---------------------------------------------------------------------------
// Exports

/// `struct nbdkit_exports *nbdkit_exports_new (void)`.
#[no_mangle]
extern "C" fn nbdkit_exports_new() -> *mut ffi::CExports {
    Box::into_raw(Box::new(Exports::default()))
}

/// `void nbdkit_exports_free (struct nbdkit_exports *)`.
#[no_mangle]
extern "C" fn nbdkit_exports_free(e: *mut ffi::CExports) {
    if !e.is_null() {
        // SAFETY: a list from nbdkit_exports_new, freed once.
        drop(unsafe { Box::from_raw(e) });
    }
}

/// `size_t nbdkit_exports_count (const struct nbdkit_exports *)`.
#[no_mangle]
extern "C" fn nbdkit_exports_count(e: *const ffi::CExports) -> usize {
    // SAFETY: NULL or a live export list.
    unsafe { e.as_ref() }.map_or(0, |e| e.list.len())
}

/// `const struct nbdkit_export nbdkit_get_export (const struct nbdkit_exports *, size_t)`.
/// The strings stay valid for the current connection.
#[no_mangle]
extern "C" fn nbdkit_get_export(e: *const ffi::CExports, i: usize) -> ffi::Export {
    // SAFETY: NULL or a live export list.
    let x = unsafe { e.as_ref() }.and_then(|e| e.list.get(i).cloned());
    match x {
        Some(x) => ffi::Export {
            name: intern(super::cstring_lossy(&x.name)) as *mut c_char,
            description: x.description.map_or(core::ptr::null_mut(), |d| {
                intern(super::cstring_lossy(&d)) as *mut c_char
            }),
        },
        None => {
            fail("nbdkit_get_export: index out of range", libc::ERANGE);
            ffi::Export {
                name: core::ptr::null_mut(),
                description: core::ptr::null_mut(),
            }
        }
    }
}

/// `int nbdkit_add_export (struct nbdkit_exports *, const char *name,
/// const char *description)`.
#[no_mangle]
extern "C" fn nbdkit_add_export(
    e: *mut ffi::CExports,
    name: *const c_char,
    description: *const c_char,
) -> c_int {
    // SAFETY: NULL or a live export list the caller may add to.
    let Some(list) = (unsafe { e.as_mut() }) else {
        fail("nbdkit_add_export: NULL exports", libc::EINVAL);
        return -1;
    };
    // SAFETY: a NUL-terminated string.
    let Some(n) = (unsafe { arg(name, "nbdkit_add_export") }) else {
        return -1;
    };
    // SAFETY: NULL or a NUL-terminated string.
    let d = unsafe { copy_str(description) };
    match list.add(n, d.as_deref()) {
        Ok(()) => 0,
        Err(err) => {
            fail(err.to_string(), crate::os::errno::to_os(err.errno));
            -1
        }
    }
}

/// `int nbdkit_use_default_export (struct nbdkit_exports *)`.
#[no_mangle]
extern "C" fn nbdkit_use_default_export(e: *mut ffi::CExports) -> c_int {
    // SAFETY: NULL or a live export list the caller may add to.
    match unsafe { e.as_mut() } {
        Some(list) => {
            list.use_default = true;
            0
        }
        None => {
            fail("nbdkit_use_default_export: NULL exports", libc::EINVAL);
            -1
        }
    }
}

// ---------------------------------------------------------------------------

extern "C" {
    fn nbdkit_error(fs: *const c_char, ...);
    fn nbdkit_debug(fs: *const c_char, ...);
    fn nbdkit_verror(fs: *const c_char, args: *mut c_void);
    fn nbdkit_vdebug(fs: *const c_char, args: *mut c_void);
    fn nbdkit_printf_intern(fs: *const c_char, ...) -> *const c_char;
    fn nbdkit_vprintf_intern(fs: *const c_char, args: *mut c_void) -> *const c_char;
}

/// The address of every exported function, so that the linker keeps them
/// all in the executable although nothing in it calls them.
pub(crate) fn keep() -> usize {
    let table: &[*const c_void] = &[
        nbdkit_error as *const c_void,
        nbdkit_debug as *const c_void,
        nbdkit_verror as *const c_void,
        nbdkit_vdebug as *const c_void,
        nbdkit_printf_intern as *const c_void,
        nbdkit_vprintf_intern as *const c_void,
        nbdkit_set_error as *const c_void,
        nbdkit_export_name as *const c_void,
        nbdkit_is_tls as *const c_void,
        nbdkit_peer_name as *const c_void,
        nbdkit_peer_pid as *const c_void,
        nbdkit_peer_uid as *const c_void,
        nbdkit_peer_gid as *const c_void,
        nbdkit_peer_security_context as *const c_void,
        nbdkit_shutdown as *const c_void,
        nbdkit_disconnect as *const c_void,
        nbdkit_stdio_safe as *const c_void,
        nbdkit_nanosleep as *const c_void,
        nbdkit_strdup_intern as *const c_void,
        nbdkit_strndup_intern as *const c_void,
        nbdkit_absolute_path as *const c_void,
        nbdkit_realpath as *const c_void,
        nbdkit_read_password as *const c_void,
        nbdkit_parse_size as *const c_void,
        nbdkit_parse_bool as *const c_void,
        nbdkit_parse_probability as *const c_void,
        nbdkit_parse_int as *const c_void,
        nbdkit_parse_unsigned as *const c_void,
        nbdkit_parse_int8_t as *const c_void,
        nbdkit_parse_uint8_t as *const c_void,
        nbdkit_parse_int16_t as *const c_void,
        nbdkit_parse_uint16_t as *const c_void,
        nbdkit_parse_int32_t as *const c_void,
        nbdkit_parse_uint32_t as *const c_void,
        nbdkit_parse_int64_t as *const c_void,
        nbdkit_parse_uint64_t as *const c_void,
        nbdkit_extents_new as *const c_void,
        nbdkit_extents_free as *const c_void,
        nbdkit_extents_count as *const c_void,
        nbdkit_get_extent as *const c_void,
        nbdkit_add_extent as *const c_void,
        nbdkit_exports_new as *const c_void,
        nbdkit_exports_free as *const c_void,
        nbdkit_exports_count as *const c_void,
        nbdkit_get_export as *const c_void,
        nbdkit_add_export as *const c_void,
        nbdkit_use_default_export as *const c_void,
        cabi_rs_error as *const c_void,
        cabi_rs_debug as *const c_void,
        cabi_rs_verbose as *const c_void,
    ];
    let extra = super::filter::keep();
    core::hint::black_box(table).len() + extra
}
