//! nbdkit's `torrent` plugin: serve one file of a BitTorrent torrent
//! (`.torrent` file or magnet link) read-only, downloading the pieces a
//! read needs first (nbdkit-torrent-plugin(1)).
//!
//! The BitTorrent engine is libtorrent-rasterbar (as in nbdkit), reached
//! through a thin C++ shim (`src/shim.cpp`); this is a shared object
//! loaded through the C plugin ABI, so the `nbdkit` executable never links
//! libtorrent. Built without libtorrent-rasterbar-dev, the plugin loads
//! but refuses to start with one error naming the package.
//!
//! Parameters: `[torrent=]FILE.torrent|magnet:?...`, `file=`, `cache=`,
//! `connections-limit=`, `download-rate-limit=`, `upload-rate-limit=`
//! (bits per second), `listen-interfaces=`, `outgoing-interfaces=`,
//! `user-agent=` (each setting also by libtorrent's name with
//! underscores), and, beyond nbdkit, `network-discovery=false`, which
//! turns off DHT, local service discovery, UPnP and NAT-PMP so that only
//! the trackers and peers named by the torrent are contacted.
//!
//! After the fork the session starts and a thread pops libtorrent's
//! alerts (each one a debug message) and wakes the readers. A connection
//! waits for the torrent's metadata; reads wait for each piece they need,
//! which is first given top priority and a deadline of now. As in nbdkit,
//! the whole torrent is downloaded meanwhile (sequentially): marking the
//! other files "don't download" lets libtorrent call the torrent finished
//! and drop its peers until the next announce, which stalls the next read
//! of a piece not yet there.

// Built without libtorrent, only the error paths remain.
#![cfg_attr(not(have_libtorrent), allow(dead_code, unused_imports))]

use nbdkit_plugin_abi as abi;

use core::ffi::{c_char, c_int, c_void};
use core::time::Duration;
use std::ffi::CStr;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Condvar, Mutex, OnceLock};

use abi::H;

#[cfg(have_libtorrent)]
mod lt {
    use core::ffi::{c_char, c_int, c_void};

    #[repr(C)]
    pub(crate) struct Tt {
        _private: [u8; 0],
    }

    extern "C" {
        pub(crate) fn tt_new() -> *mut Tt;
        pub(crate) fn tt_set_int(t: *mut Tt, name: *const c_char, v: c_int) -> c_int;
        pub(crate) fn tt_set_str(t: *mut Tt, name: *const c_char, v: *const c_char) -> c_int;
        pub(crate) fn tt_set_bool(t: *mut Tt, name: *const c_char, v: c_int) -> c_int;
        pub(crate) fn tt_torrent_file(
            t: *mut Tt,
            path: *const c_char,
            err: *mut *mut c_char,
        ) -> c_int;
        pub(crate) fn tt_magnet(t: *mut Tt, uri: *const c_char, err: *mut *mut c_char) -> c_int;
        pub(crate) fn tt_save_path(t: *mut Tt, dir: *const c_char);
        pub(crate) fn tt_start(t: *mut Tt, err: *mut *mut c_char) -> c_int;
        pub(crate) fn tt_stop(t: *mut Tt, delete_files: c_int);
        pub(crate) fn tt_pop_alerts(
            t: *mut Tt,
            timeout_ms: c_int,
            log: unsafe extern "C" fn(*mut c_void, *const c_char),
            data: *mut c_void,
        ) -> c_int;
        pub(crate) fn tt_has_metadata(t: *mut Tt) -> c_int;
        pub(crate) fn tt_num_files(t: *mut Tt) -> c_int;
        pub(crate) fn tt_file_path(t: *mut Tt, i: c_int) -> *mut c_char;
        pub(crate) fn tt_file_size(t: *mut Tt, i: c_int) -> i64;
        pub(crate) fn tt_map(
            t: *mut Tt,
            i: c_int,
            offset: i64,
            len: c_int,
            piece: *mut c_int,
            start: *mut c_int,
            count: *mut c_int,
        ) -> c_int;
        pub(crate) fn tt_have_piece(t: *mut Tt, piece: c_int) -> c_int;
        pub(crate) fn tt_want_piece(t: *mut Tt, piece: c_int);
        pub(crate) fn tt_free_string(s: *mut c_char);
    }
}

/// Everything configured, then the running torrent.
struct State {
    #[cfg(have_libtorrent)]
    tt: *mut lt::Tt,
    seen_torrent: bool,
    /// file= (or, after the metadata came, the largest file).
    file: Option<String>,
    cache: Option<PathBuf>,
    /// The cache is a directory we made: removed at unload.
    clean_cache: bool,
    /// The file served: index and size, once known.
    selected: Option<(c_int, u64)>,
    started: bool,
}

// SAFETY: the shim's object is used under the STATE lock, or through
// libtorrent's thread-safe handle and session calls.
unsafe impl Send for State {}

static STATE: Mutex<State> = Mutex::new(State {
    #[cfg(have_libtorrent)]
    tt: core::ptr::null_mut(),
    seen_torrent: false,
    file: None,
    cache: None,
    clean_cache: true,
    selected: None,
    started: false,
});

/// Signalled by the alerts thread when a piece or the metadata arrives.
static PROGRESS: Condvar = Condvar::new();
/// What the alerts thread has seen (bit 1: piece, bit 2: metadata).
static SEEN: Mutex<u64> = Mutex::new(0);

/// The shim's object, shared with the alerts thread and the readers once
/// the session started.
#[cfg(have_libtorrent)]
struct Shared(*mut lt::Tt);
// SAFETY: after tt_start only libtorrent's thread-safe calls are made.
#[cfg(have_libtorrent)]
unsafe impl Send for Shared {}
// SAFETY: as above.
#[cfg(have_libtorrent)]
unsafe impl Sync for Shared {}
#[cfg(have_libtorrent)]
static RUNNING: OnceLock<Shared> = OnceLock::new();

fn state() -> std::sync::MutexGuard<'static, State> {
    STATE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `f`, turning a Rust panic into an error rather than unwinding
/// into the server.
fn guard<T>(fail: T, f: impl FnOnce() -> Result<T, String>) -> T {
    match std::panic::catch_unwind(core::panic::AssertUnwindSafe(f)) {
        Ok(Ok(v)) => v,
        Ok(Err(msg)) => {
            if !msg.is_empty() {
                abi::error(&msg);
            }
            fail
        }
        Err(_) => {
            abi::error("torrent: internal error (panic)");
            fail
        }
    }
}

/// # Safety
/// `p` must be null or a NUL-terminated string.
unsafe fn cstr<'a>(p: *const c_char) -> &'a str {
    if p.is_null() {
        ""
    } else {
        // SAFETY: the caller's promise.
        unsafe { CStr::from_ptr(p) }.to_str().unwrap_or("")
    }
}

#[cfg(have_libtorrent)]
fn take_error(e: *mut c_char) -> String {
    if e.is_null() {
        return "unknown error".into();
    }
    // SAFETY: a malloc'd string from the shim.
    let s = unsafe { CStr::from_ptr(e) }.to_string_lossy().into_owned();
    // SAFETY: freed once, by the shim's free.
    unsafe { lt::tt_free_string(e) };
    s
}

fn parse_int(key: &str, value: &str) -> Result<c_int, String> {
    value
        .trim_start()
        .parse::<c_int>()
        .map_err(|_| format!("{key}: could not parse number: \"{value}\""))
}

fn parse_bps(value: &str) -> Result<c_int, String> {
    let v = abi::cstring(value);
    // SAFETY: a NUL-terminated string; prints its own error.
    let n = unsafe { abi::nbdkit_parse_size(v.as_ptr()) };
    if n == -1 {
        return Err(String::new());
    }
    Ok(c_int::try_from(n / 8).unwrap_or(c_int::MAX))
}

/// The settings nbdkit documents: (parameter, libtorrent's name, kind).
const SETTINGS: &[(&str, &str, Kind)] = &[
    ("connections-limit", "connections_limit", Kind::Int),
    ("download-rate-limit", "download_rate_limit", Kind::Bps),
    ("listen-interfaces", "listen_interfaces", Kind::Str),
    ("outgoing-interfaces", "outgoing_interfaces", Kind::Str),
    ("upload-rate-limit", "upload_rate_limit", Kind::Bps),
    ("user-agent", "user_agent", Kind::Str),
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Int,
    Bps,
    Str,
}

unsafe extern "C" fn tr_config(key: *const c_char, value: *const c_char) -> c_int {
    // SAFETY: the server passes NUL-terminated strings.
    let (key, value) = unsafe { (cstr(key), cstr(value)) };
    guard(-1, || config(key, value).map(|()| 0))
}

#[cfg(not(have_libtorrent))]
fn config(key: &str, _value: &str) -> Result<(), String> {
    let _ = key;
    Err(NO_LIBTORRENT.into())
}

#[cfg(not(have_libtorrent))]
const NO_LIBTORRENT: &str = "torrent: this plugin was built without libtorrent-rasterbar \
     (install Debian package libtorrent-rasterbar-dev and rebuild nbdkit-torrent-plugin)";

#[cfg(have_libtorrent)]
fn config(key: &str, value: &str) -> Result<(), String> {
    let mut st = state();
    if st.tt.is_null() {
        // SAFETY: no arguments.
        st.tt = unsafe { lt::tt_new() };
        if st.tt.is_null() {
            return Err("torrent: cannot create libtorrent settings".into());
        }
    }
    let tt = st.tt;
    match key {
        "torrent" => {
            if st.seen_torrent {
                return Err("torrent cannot be specified more than once".into());
            }
            st.seen_torrent = true;
            for scheme in ["http:", "https:", "ftp:", "ftps:"] {
                if value.starts_with(scheme) {
                    return Err("downloading torrent files from URLs not yet implemented".into());
                }
            }
            let mut err: *mut c_char = core::ptr::null_mut();
            if value.starts_with("magnet:") {
                let v = abi::cstring(value);
                // SAFETY: tt is live; v is NUL-terminated.
                if unsafe { lt::tt_magnet(tt, v.as_ptr(), &mut err) } == -1 {
                    return Err(format!("parsing magnet uri failed: {}", take_error(err)));
                }
            } else {
                let path = value.strip_prefix("file:").unwrap_or(value);
                let real = std::fs::canonicalize(path)
                    .map_err(|e| format!("realpath: {path}: {}", errno_text(&e)))?;
                let p = abi::cstring(&real.to_string_lossy());
                // SAFETY: as above.
                if unsafe { lt::tt_torrent_file(tt, p.as_ptr(), &mut err) } == -1 {
                    return Err(format!(
                        "parsing torrent metadata failed: {}",
                        take_error(err)
                    ));
                }
            }
        }
        "file" => st.file = Some(value.to_string()),
        "cache" => {
            let real = std::fs::canonicalize(value)
                .map_err(|e| format!("realpath: {value}: {}", errno_text(&e)))?;
            st.cache = Some(real);
            st.clean_cache = false;
        }
        "network-discovery" => {
            let on = match value.to_ascii_lowercase().as_str() {
                "1" | "true" | "on" | "yes" => 1,
                "0" | "false" | "off" | "no" => 0,
                _ => return Err(format!("could not decipher boolean ({value})")),
            };
            for s in ["enable_dht", "enable_lsd", "enable_upnp", "enable_natpmp"] {
                let n = abi::cstring(s);
                // SAFETY: tt is live.
                unsafe { lt::tt_set_bool(tt, n.as_ptr(), on) };
            }
        }
        _ => {
            let Some(&(_, lt_name, kind)) = SETTINGS
                .iter()
                .find(|(name, alt, _)| *name == key || *alt == key)
            else {
                return Err(format!("unknown parameter '{key}'"));
            };
            let n = abi::cstring(lt_name);
            // SAFETY: tt is live; the strings are NUL-terminated.
            unsafe {
                match kind {
                    Kind::Int => lt::tt_set_int(tt, n.as_ptr(), parse_int(key, value)?),
                    Kind::Bps => lt::tt_set_int(tt, n.as_ptr(), parse_bps(value)?),
                    Kind::Str => {
                        let v = abi::cstring(value);
                        lt::tt_set_str(tt, n.as_ptr(), v.as_ptr())
                    }
                }
            };
        }
    }
    Ok(())
}

fn errno_text(e: &std::io::Error) -> String {
    let s = e.to_string();
    s.split(" (os error").next().unwrap_or(&s).to_string()
}

unsafe extern "C" fn tr_config_complete() -> c_int {
    guard(-1, || config_complete().map(|()| 0))
}

#[cfg(not(have_libtorrent))]
fn config_complete() -> Result<(), String> {
    Err(NO_LIBTORRENT.into())
}

#[cfg(have_libtorrent)]
fn config_complete() -> Result<(), String> {
    let mut st = state();
    if !st.seen_torrent {
        return Err("you must specify a torrent or magnet link".into());
    }
    if st.cache.is_none() {
        let tmpdir = std::env::var("TMPDIR").unwrap_or_else(|_| "/var/tmp".into());
        let template = abi::cstring(&format!("{tmpdir}/torrentXXXXXX"));
        let mut buf = template.into_bytes_with_nul();
        // SAFETY: a writable NUL-terminated template.
        let p = unsafe { libc::mkdtemp(buf.as_mut_ptr().cast()) };
        if p.is_null() {
            return Err(format!(
                "mkdtemp: {}",
                errno_text(&std::io::Error::last_os_error())
            ));
        }
        buf.pop();
        st.cache = Some(PathBuf::from(String::from_utf8_lossy(&buf).into_owned()));
    }
    let cache = st.cache.clone().expect("set above");
    abi::debug(&format!(
        "torrent: cache directory: {}{}",
        cache.display(),
        if st.clean_cache {
            " (cleaned up on exit)"
        } else {
            ""
        }
    ));
    let c = abi::cstring(&cache.to_string_lossy());
    // SAFETY: tt is live.
    unsafe { lt::tt_save_path(st.tt, c.as_ptr()) };
    Ok(())
}

const CONFIG_HELP: &CStr = c"torrent=<TORRENT>   (required) Torrent or magnet link.\n\
file=DISK.iso                  File to serve within torrent.\n\
cache=DIR                      Set directory to store partial downloads.";

#[cfg(have_libtorrent)]
unsafe extern "C" fn log_alert(_data: *mut c_void, msg: *const c_char) {
    // SAFETY: the shim passes the alert's message.
    let m = unsafe { cstr(msg) };
    abi::debug(&format!("torrent: {m}"));
}

unsafe extern "C" fn tr_after_fork() -> c_int {
    guard(-1, || after_fork().map(|()| 0))
}

#[cfg(not(have_libtorrent))]
fn after_fork() -> Result<(), String> {
    Err(NO_LIBTORRENT.into())
}

/// Start the session (its threads must be made after the fork) and the
/// thread that pops its alerts.
#[cfg(have_libtorrent)]
fn after_fork() -> Result<(), String> {
    let mut st = state();
    let tt = st.tt;
    let mut err: *mut c_char = core::ptr::null_mut();
    // SAFETY: tt is live; its settings are complete.
    if unsafe { lt::tt_start(tt, &mut err) } == -1 {
        return Err(format!("torrent: could not start: {}", take_error(err)));
    }
    st.started = true;
    let _ = RUNNING.set(Shared(tt));
    let thread = std::thread::Builder::new()
        .name("torrent alerts".into())
        .spawn(|| {
            let tt = RUNNING.get().expect("set before").0;
            while !STOP.load(core::sync::atomic::Ordering::SeqCst) {
                // SAFETY: the session lives until the process exits.
                let m = unsafe { lt::tt_pop_alerts(tt, 1000, log_alert, core::ptr::null_mut()) };
                if m != 0 {
                    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
                    *seen = seen.wrapping_add(1);
                    PROGRESS.notify_all();
                }
            }
        })
        .map_err(|e| format!("torrent: cannot start the alerts thread: {e}"))?;
    *ALERTS.lock().unwrap_or_else(|e| e.into_inner()) = Some(thread);
    Ok(())
}

/// Tells the alerts thread to finish (at unload).
#[cfg(have_libtorrent)]
static STOP: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);
/// The alerts thread, joined at unload before the session goes.
#[cfg(have_libtorrent)]
static ALERTS: Mutex<Option<std::thread::JoinHandle<()>>> = Mutex::new(None);

/// Wait (at most `limit`) for the alerts thread to report progress.
#[cfg(have_libtorrent)]
fn wait_progress(limit: Duration) {
    let seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    let start = *seen;
    let _ = PROGRESS
        .wait_timeout_while(seen, limit, |s| *s == start)
        .unwrap_or_else(|e| e.into_inner());
}

/// Wait for the metadata, then choose the file (file= or the largest).
#[cfg(have_libtorrent)]
fn select_file() -> Result<(c_int, u64), String> {
    let tt = RUNNING.get().ok_or("torrent: not started")?.0;
    // SAFETY: a thread-safe query of the running session.
    while unsafe { lt::tt_has_metadata(tt) } == 0 {
        wait_progress(Duration::from_secs(1));
    }
    let mut st = state();
    if let Some(sel) = st.selected {
        return Ok(sel);
    }
    // SAFETY: the metadata is there.
    let n = unsafe { lt::tt_num_files(tt) };
    if n == 0 {
        return Err("torrent: no files in the torrent".into());
    }
    let mut files = Vec::new();
    for i in 0..n {
        // SAFETY: i is a file index of the torrent.
        let p = unsafe { lt::tt_file_path(tt, i) };
        let path = take_error(p);
        // SAFETY: as above.
        let size = unsafe { lt::tt_file_size(tt, i) } as u64;
        abi::debug(&format!("torrent: file[{i}]: {path} (size {size})"));
        files.push((path, size));
    }
    let want = match &st.file {
        Some(f) => f.clone(),
        None => {
            // The largest file (the first of equals).
            let mut best: Option<&(String, u64)> = None;
            for f in &files {
                if best.map_or(true, |b| f.1 > b.1) {
                    best = Some(f);
                }
            }
            best.map(|b| b.0.clone()).unwrap_or_default()
        }
    };
    let Some(i) = files.iter().position(|(p, _)| *p == want) else {
        return Err(format!("cannot find file ‘{want}’ in the torrent"));
    };
    abi::debug(&format!("torrent: serving file index {i}: {want}"));
    st.file = Some(want);
    st.selected = Some((i as c_int, files[i].1));
    Ok((i as c_int, files[i].1))
}

unsafe extern "C" fn tr_preconnect(_readonly: c_int) -> c_int {
    guard(-1, || preconnect().map(|_| 0))
}

#[cfg(not(have_libtorrent))]
fn preconnect() -> Result<(), String> {
    Err(NO_LIBTORRENT.into())
}

#[cfg(have_libtorrent)]
fn preconnect() -> Result<(), String> {
    select_file().map(|_| ())
}

/// A connection: the file in the cache, opened once it exists.
#[cfg_attr(not(have_libtorrent), allow(dead_code))]
struct Conn {
    file: File,
    index: c_int,
    size: u64,
}

unsafe extern "C" fn tr_open(_readonly: c_int) -> H {
    guard(core::ptr::null_mut(), || {
        let c = open()?;
        Ok(Box::into_raw(Box::new(c)).cast())
    })
}

#[cfg(not(have_libtorrent))]
fn open() -> Result<Conn, String> {
    Err(NO_LIBTORRENT.into())
}

#[cfg(have_libtorrent)]
fn open() -> Result<Conn, String> {
    let (index, size) = select_file()?;
    let path = {
        let st = state();
        st.cache
            .clone()
            .expect("set in config_complete")
            .join(st.file.as_deref().expect("selected"))
    };
    // libtorrent creates the file with the first piece it writes.
    loop {
        match File::open(&path) {
            Ok(file) => return Ok(Conn { file, index, size }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let tt = RUNNING.get().expect("started").0;
                // Ask for the file's first piece, so that it appears.
                let (mut piece, mut start, mut count) = (0, 0, 0);
                // SAFETY: the metadata is there; index is the file's.
                if unsafe { lt::tt_map(tt, index, 0, 1, &mut piece, &mut start, &mut count) } == 0 {
                    // SAFETY: a piece of the torrent.
                    unsafe { lt::tt_want_piece(tt, piece) };
                }
                wait_progress(Duration::from_secs(1));
            }
            Err(e) => {
                return Err(format!("open: {}: {}", path.display(), errno_text(&e)));
            }
        }
    }
}

unsafe extern "C" fn tr_close(h: H) {
    if !h.is_null() {
        // SAFETY: made by Box::into_raw in tr_open.
        drop(unsafe { Box::from_raw(h.cast::<Conn>()) });
    }
}

unsafe extern "C" fn tr_get_size(h: H) -> i64 {
    // SAFETY: a handle from tr_open.
    let c = unsafe { &*h.cast::<Conn>() };
    c.size as i64
}

unsafe extern "C" fn tr_pread(
    h: H,
    buf: *mut c_void,
    count: u32,
    offset: u64,
    _flags: u32,
) -> c_int {
    // SAFETY: a handle from tr_open; buf holds count bytes.
    let (c, buf) = unsafe {
        (
            &*h.cast::<Conn>(),
            core::slice::from_raw_parts_mut(buf.cast::<u8>(), count as usize),
        )
    };
    guard(-1, || pread(c, buf, offset).map(|()| 0))
}

#[cfg(not(have_libtorrent))]
fn pread(_c: &Conn, _buf: &mut [u8], _offset: u64) -> Result<(), String> {
    Err(NO_LIBTORRENT.into())
}

/// Read from the file, waiting for each piece of the range in turn;
/// every piece of the request is asked for (in order) before waiting.
#[cfg(have_libtorrent)]
fn pread(c: &Conn, buf: &mut [u8], offset: u64) -> Result<(), String> {
    let tt = RUNNING.get().expect("started").0;
    let mut parts = Vec::new();
    let (mut done, mut off) = (0usize, offset);
    while done < buf.len() {
        let want = c_int::try_from(buf.len() - done).unwrap_or(c_int::MAX);
        let (mut piece, mut start, mut count) = (0, 0, 0);
        // SAFETY: the metadata is there; index is the file's.
        if unsafe {
            lt::tt_map(
                tt, c.index, off as i64, want, &mut piece, &mut start, &mut count,
            )
        } != 0
            || count <= 0
        {
            abi::set_error(libc::EIO);
            return Err(format!("torrent: cannot map offset {off} to a piece"));
        }
        parts.push((piece, done, count as usize));
        done += count as usize;
        off += count as u64;
    }
    for &(piece, _, _) in &parts {
        // SAFETY: thread-safe queries of the running session.
        if unsafe { lt::tt_have_piece(tt, piece) } == 0 {
            unsafe { lt::tt_want_piece(tt, piece) };
        }
    }
    for (piece, at, len) in parts {
        // SAFETY: as above.
        while unsafe { lt::tt_have_piece(tt, piece) } == 0 {
            wait_progress(Duration::from_secs(1));
        }
        let dst = &mut buf[at..at + len];
        let mut got = 0;
        while got < len {
            match c.file.read_at(&mut dst[got..], offset + (at + got) as u64) {
                Ok(0) => {
                    abi::set_error(libc::EIO);
                    return Err("pread: unexpected end of file".into());
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    abi::set_error(e.raw_os_error().unwrap_or(libc::EIO));
                    return Err(format!("pread: {}", errno_text(&e)));
                }
            }
        }
    }
    Ok(())
}

unsafe extern "C" fn tr_unload() {
    let st = state();
    #[cfg(have_libtorrent)]
    if !st.tt.is_null() && st.started {
        // The alerts thread uses the session: it ends first (within the
        // second it waits for alerts).
        STOP.store(true, core::sync::atomic::Ordering::SeqCst);
        if let Some(t) = ALERTS.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.join();
        }
        // SAFETY: stops the session; readers are gone at unload.
        unsafe { lt::tt_stop(st.tt, st.clean_cache as c_int) };
    }
    if st.clean_cache {
        if let Some(c) = &st.cache {
            let _ = std::fs::remove_dir_all(c);
        }
    }
}

static PLUGIN: abi::Registration = abi::Registration(abi::Plugin {
    name: c"torrent".as_ptr(),
    longname: c"nbdkit bittorrent plugin".as_ptr(),
    unload: Some(tr_unload),
    config: Some(tr_config),
    config_complete: Some(tr_config_complete),
    config_help: CONFIG_HELP.as_ptr(),
    open: Some(tr_open),
    close: Some(tr_close),
    get_size: Some(tr_get_size),
    pread: Some(tr_pread),
    magic_config_key: c"torrent".as_ptr(),
    preconnect: Some(tr_preconnect),
    after_fork: Some(tr_after_fork),
    ..abi::Plugin::EMPTY
});

/// The registration function the server calls when it loads this object.
#[no_mangle]
pub extern "C" fn plugin_init() -> *const c_void {
    PLUGIN.as_ptr()
}
