//! nbdkit's `S3` plugin (`nbdkit S3 bucket=BUCKET key=KEY ...`,
//! nbdkit-S3-plugin(1)): an object in Amazon S3 or a compatible store
//! (Ceph, MinIO, ...) as a read-only disk, or, with `size=` and
//! `object-size=`, a writable disk made of many objects `KEY/%016x`, one per
//! block, a missing object reading as zeroes.
//!
//! A shared object loaded through nbdkit's C plugin ABI, so that the
//! `nbdkit` executable carries no HTTP or TLS client code for it. The S3
//! requests are signed by `aws-sigv4` (AWS's own signer) and sent by
//! `ureq` (blocking, rustls): see `client`.
//!
//! Writes, trims and zeroes that cover part of an object read the object,
//! change it and write it back, one at a time per object. A trim or zero
//! that covers whole objects deletes them. Every write is stored when it
//! returns (FUA is native; flush has nothing to do).
#![allow(non_snake_case)] // the library is named after the plugin, `S3`

mod client;
mod config;

use core::ffi::CStr;
use core::ffi::{c_char, c_int, c_void};
use core::panic::AssertUnwindSafe;
use core::time::Duration;
use std::collections::HashSet;
use std::sync::{Condvar, Mutex, OnceLock};

use nbdkit_plugin_abi as abi;

use abi::H;
use client::{Client, Error};
use config::Keys;

/// Network timeout (connect, and each read or write) by default, in seconds.
const DEFAULT_TIMEOUT: u64 = 60;

/// Objects listed per request when trimming many.
const LIST_PAGE: u32 = 1000;

/// Objects deleted one by one, without listing first, up to this many.
const DELETE_DIRECT: u64 = 16;

/// The command line.
#[derive(Default)]
struct Params {
    access_key: Option<String>,
    secret_key: Option<String>,
    session_token: Option<String>,
    endpoint_url: Option<String>,
    bucket: Option<String>,
    key: Option<String>,
    size: Option<u64>,
    object_size: Option<u64>,
    region: Option<String>,
    profile: Option<String>,
    timeout: Option<u64>,
}

static PARAMS: Mutex<Option<Params>> = Mutex::new(None);

/// What `config_complete` made of the parameters.
struct State {
    client: Client,
    key: String,
    /// `Some((size, object_size))` for a disk of many objects.
    split: Option<(u64, u64)>,
}

static STATE: OnceLock<State> = OnceLock::new();

/// Objects being read-modified-written or replaced (by block number).
static BUSY: Mutex<Option<HashSet<u64>>> = Mutex::new(None);
static BUSY_CV: Condvar = Condvar::new();

/// Holds block `n` until dropped.
struct BlockLock(u64);

impl BlockLock {
    fn take(n: u64) -> BlockLock {
        let mut g = BUSY.lock().unwrap_or_else(|e| e.into_inner());
        while g.get_or_insert_with(HashSet::new).contains(&n) {
            g = BUSY_CV.wait(g).unwrap_or_else(|e| e.into_inner());
        }
        g.get_or_insert_with(HashSet::new).insert(n);
        BlockLock(n)
    }
}

impl Drop for BlockLock {
    fn drop(&mut self) {
        let mut g = BUSY.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = g.as_mut() {
            s.remove(&self.0);
        }
        BUSY_CV.notify_all();
    }
}

/// Run a callback; a panic never crosses into the server.
fn guard<R>(what: &str, fail: R, f: impl FnOnce() -> R) -> R {
    match std::panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(_) => {
            abi::error(&format!("S3: {what}: internal error"));
            abi::set_error(libc::EIO);
            fail
        }
    }
}

fn state() -> &'static State {
    STATE.get().expect("config_complete ran")
}

/// A request's failure: one error line, and EIO.
fn failed(what: &str, key: &str, e: &Error) -> c_int {
    let st = state();
    abi::error(&format!("{what} {}: {e}", st.client.name(key)));
    abi::set_error(libc::EIO);
    -1
}

fn cstr(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: the server passes NUL-terminated strings.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// A credential in any of nbdkit's password forms (`VALUE`, `+FILE`, `-`, `-FD`).
fn read_secret(value: *const c_char) -> Option<String> {
    let mut out: *mut c_char = core::ptr::null_mut();
    // SAFETY: `value` is the server's NUL-terminated string; `out` is ours.
    if unsafe { abi::nbdkit_read_password(value, &mut out) } == -1 {
        return None;
    }
    let s = cstr(out);
    // SAFETY: nbdkit_read_password's result is malloc'd and ours to free.
    unsafe { libc::free(out.cast()) };
    Some(s)
}

fn parse_size(what: &str, value: *const c_char) -> Option<u64> {
    // SAFETY: a NUL-terminated string.
    let n = unsafe { abi::nbdkit_parse_size(value) };
    if n < 0 {
        return None;
    }
    if n == 0 {
        abi::error(&format!("S3: {what} must be greater than 0"));
        return None;
    }
    Some(n as u64)
}

unsafe extern "C" fn s3_config(k: *const c_char, v: *const c_char) -> c_int {
    guard("config", None, || {
        let key = cstr(k);
        let value = cstr(v);
        let mut g = PARAMS.lock().unwrap_or_else(|e| e.into_inner());
        let p = g.get_or_insert_with(Params::default);
        match key.as_str() {
            "access-key" | "access_key" => p.access_key = Some(read_secret(v)?),
            "secret-key" | "secret_key" => p.secret_key = Some(read_secret(v)?),
            "session-token" | "session_token" => p.session_token = Some(read_secret(v)?),
            "endpoint-url" | "endpoint_url" => p.endpoint_url = Some(value),
            "bucket" => p.bucket = Some(value),
            "key" => p.key = Some(value),
            "size" => p.size = Some(parse_size("size", v)?),
            "object-size" | "object_size" => p.object_size = Some(parse_size("object-size", v)?),
            "region" => p.region = Some(value),
            "profile" => p.profile = Some(value),
            "timeout" => match value.parse::<u64>() {
                Ok(t) if t > 0 => p.timeout = Some(t),
                _ => {
                    abi::error(&format!(
                        "S3: timeout: '{value}' is not a positive number of seconds"
                    ));
                    return None;
                }
            },
            _ => {
                abi::error(&format!("S3: unknown parameter '{key}'"));
                return None;
            }
        }
        Some(0)
    })
    .unwrap_or(-1)
}

/// Credentials: the command line's, else (with no `profile=`) the
/// environment's, else the profile's in the shared files; none at all
/// means anonymous (unsigned) requests, for public buckets.
fn credentials(p: &Params, shared: &config::Shared, profile: &str) -> Result<Option<Keys>, String> {
    match (&p.access_key, &p.secret_key) {
        (Some(a), Some(s)) => {
            return Ok(Some(Keys {
                access_key: a.clone(),
                secret_key: s.clone(),
                session_token: p.session_token.clone(),
            }))
        }
        (Some(_), None) => return Err("access-key given without secret-key".into()),
        (None, Some(_)) => return Err("secret-key given without access-key".into()),
        (None, None) => {}
    }
    if p.profile.is_none() {
        if let Some(k) = config::env_keys() {
            abi::debug("S3: credentials from the environment");
            return Ok(Some(k));
        }
    }
    if let Some(k) = shared.keys(profile) {
        abi::debug(&format!("S3: credentials of profile '{profile}'"));
        return Ok(Some(k));
    }
    abi::debug("S3: no credentials: anonymous requests");
    Ok(None)
}

fn complete() -> Result<State, String> {
    let p = PARAMS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
        .unwrap_or_default();
    let bucket = p.bucket.clone().ok_or("bucket parameter missing")?;
    let key = p.key.clone().ok_or("key parameter missing")?;
    if bucket.is_empty() {
        return Err("bucket parameter is empty".into());
    }
    let split = match (p.size, p.object_size) {
        (None, None) => None,
        (Some(size), Some(obj)) => {
            if !size.is_multiple_of(obj) {
                return Err("size must be a multiple of object-size".into());
            }
            Some((size, obj))
        }
        _ => {
            return Err("size and object-size parameters must always be specified together".into())
        }
    };
    let shared = config::Shared::load();
    let (profile, named) = config::profile_name(p.profile.as_deref());
    if named && p.access_key.is_none() && !shared.has_profile(&profile) {
        return Err(format!(
            "profile '{profile}' is in neither {} nor {}",
            shared.credentials_path.display(),
            shared.config_path.display()
        ));
    }
    let keys = credentials(&p, &shared, &profile)?;
    let region = p
        .region
        .clone()
        .or_else(config::env_region)
        .or_else(|| shared.region(&profile))
        .unwrap_or_else(|| "us-east-1".into());
    let endpoint = p
        .endpoint_url
        .clone()
        .or_else(config::env_endpoint_url)
        .or_else(|| shared.endpoint_url(&profile));
    let timeout = Duration::from_secs(p.timeout.unwrap_or(DEFAULT_TIMEOUT));
    let client = Client::new(endpoint.as_deref(), &bucket, &region, keys, timeout)?;
    abi::debug(&format!(
        "S3: {} in region {region}{}",
        client.name(&key),
        endpoint.map(|e| format!(" at {e}")).unwrap_or_default()
    ));
    Ok(State { client, key, split })
}

unsafe extern "C" fn s3_config_complete() -> c_int {
    guard("config_complete", -1, || match complete() {
        Ok(st) => {
            let _ = STATE.set(st);
            0
        }
        Err(m) => {
            abi::error(&format!("S3: {m}"));
            -1
        }
    })
}

/// A non-null handle: all the state is global.
static HANDLE: u8 = 0;

unsafe extern "C" fn s3_open(_readonly: c_int) -> H {
    guard("open", core::ptr::null_mut(), || {
        let st = state();
        if st.split.is_some() {
            // Check the bucket and the credentials now, so that a client
            // sees one clear error instead of EIO on every request.
            let prefix = format!("{}/", st.key);
            if let Err(e) = st.client.list(&prefix, None, None, 1) {
                abi::error(&format!("cannot list {}: {e}", st.client.name(&prefix)));
                return core::ptr::null_mut();
            }
        }
        (&HANDLE as *const u8).cast_mut().cast()
    })
}

unsafe extern "C" fn s3_close(_h: H) {}

unsafe extern "C" fn s3_get_size(_h: H) -> i64 {
    guard("get_size", -1, || {
        let st = state();
        if let Some((size, _)) = st.split {
            return size as i64;
        }
        match st.client.size(&st.key) {
            Ok(n) => n as i64,
            Err(e) => {
                abi::error(&format!("{}: {e}", st.client.name(&st.key)));
                -1
            }
        }
    })
}

unsafe extern "C" fn s3_can_write(_h: H) -> c_int {
    c_int::from(STATE.get().is_some_and(|s| s.split.is_some()))
}

unsafe extern "C" fn s3_true(_h: H) -> c_int {
    1
}

unsafe extern "C" fn s3_false(_h: H) -> c_int {
    0
}

unsafe extern "C" fn s3_can_fua(_h: H) -> c_int {
    abi::FUA_NATIVE
}

unsafe extern "C" fn s3_can_cache(_h: H) -> c_int {
    abi::CACHE_NONE
}

unsafe extern "C" fn s3_block_size(_h: H, min: *mut u32, pref: *mut u32, max: *mut u32) -> c_int {
    let preferred = match STATE.get().and_then(|s| s.split) {
        Some((_, obj)) if obj.is_power_of_two() => obj.clamp(512, 32 * 1024 * 1024) as u32,
        _ => 512 * 1024,
    };
    // SAFETY: the server passes three writable u32s.
    unsafe {
        *min = 1;
        *pref = preferred;
        *max = u32::MAX;
    }
    0
}

/// The object of block `n`.
fn block_key(n: u64) -> String {
    format!("{}/{n:016x}", state().key)
}

/// Read block `n` from `off` into `buf` (zeroes where there is no object).
fn read_block(n: u64, off: u64, buf: &mut [u8]) -> Result<(), (String, Error)> {
    let st = state();
    let key = block_key(n);
    match st.client.get(&key, off, buf) {
        Ok(true) => Ok(()),
        Ok(false) => {
            buf.fill(0);
            Ok(())
        }
        Err(e) => Err((key, e)),
    }
}

unsafe extern "C" fn s3_pread(_h: H, buf: *mut c_void, count: u32, offset: u64, _f: u32) -> c_int {
    guard("pread", -1, || {
        let st = state();
        // SAFETY: the server's buffer of `count` bytes.
        let buf = unsafe { core::slice::from_raw_parts_mut(buf.cast::<u8>(), count as usize) };
        let Some((_, obj)) = st.split else {
            return match st.client.get(&st.key, offset, buf) {
                Ok(true) => 0,
                Ok(false) => failed(
                    "GET",
                    &st.key,
                    &Error::Status {
                        status: 404,
                        code: "NoSuchKey".into(),
                        message: "the object is gone".into(),
                    },
                ),
                Err(e) => failed("GET", &st.key, &e),
            };
        };
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let (n, off) = (pos / obj, pos % obj);
            let len = ((obj - off) as usize).min(buf.len() - done);
            if let Err((key, e)) = read_block(n, off, &mut buf[done..done + len]) {
                return failed("GET", &key, &e);
            }
            done += len;
        }
        0
    })
}

/// Write `data` into block `n` at `off`: the whole object when it covers
/// it, else read-modify-write. `data == None`: zeroes.
fn write_block(n: u64, off: u64, len: u64, data: Option<&[u8]>) -> Result<(), (String, Error)> {
    let st = state();
    let (_, obj) = st.split.expect("a disk of many objects");
    let key = block_key(n);
    let _lock = BlockLock::take(n);
    if off == 0 && len == obj {
        let r = match data {
            Some(d) => st.client.put(&key, d),
            None => st.client.delete(&key),
        };
        return r.map_err(|e| (key, e));
    }
    let mut whole = vec![0u8; obj as usize];
    let exists = st
        .client
        .get(&key, 0, &mut whole)
        .map_err(|e| (key.clone(), e))?;
    let range = off as usize..(off + len) as usize;
    match data {
        Some(d) => whole[range].copy_from_slice(d),
        // Zeroes in an object that does not exist: already zero.
        None if !exists => return Ok(()),
        None => whole[range].fill(0),
    }
    st.client.put(&key, &whole).map_err(|e| (key, e))
}

unsafe extern "C" fn s3_pwrite(
    _h: H,
    buf: *const c_void,
    count: u32,
    offset: u64,
    _f: u32,
) -> c_int {
    guard("pwrite", -1, || {
        let st = state();
        let Some((_, obj)) = st.split else {
            abi::error("S3: a single object is read-only");
            abi::set_error(libc::EROFS);
            return -1;
        };
        // SAFETY: the server's buffer of `count` bytes.
        let buf = unsafe { core::slice::from_raw_parts(buf.cast::<u8>(), count as usize) };
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let (n, off) = (pos / obj, pos % obj);
            let len = ((obj - off) as usize).min(buf.len() - done);
            if let Err((key, e)) = write_block(n, off, len as u64, Some(&buf[done..done + len])) {
                return failed("PUT", &key, &e);
            }
            done += len;
        }
        0
    })
}

/// Delete the objects of blocks `first..last`.
fn delete_blocks(first: u64, last: u64) -> Result<(), (String, Error)> {
    let st = state();
    if first >= last {
        return Ok(());
    }
    if last - first <= DELETE_DIRECT {
        for n in first..last {
            let key = block_key(n);
            let _lock = BlockLock::take(n);
            st.client.delete(&key).map_err(|e| (key, e))?;
        }
        return Ok(());
    }
    // Many: delete only the objects that exist.
    let prefix = format!("{}/", st.key);
    let start_after = first.checked_sub(1).map(block_key);
    let end = block_key(last);
    let mut token: Option<String> = None;
    loop {
        let (keys, next) = st
            .client
            .list(&prefix, start_after.as_deref(), token.as_deref(), LIST_PAGE)
            .map_err(|e| (prefix.clone(), e))?;
        for key in keys {
            if key >= end {
                return Ok(());
            }
            let Some(n) = key
                .strip_prefix(&prefix)
                .filter(|h| h.len() == 16)
                .and_then(|h| u64::from_str_radix(h, 16).ok())
            else {
                continue;
            };
            let _lock = BlockLock::take(n);
            st.client.delete(&key).map_err(|e| (key.clone(), e))?;
        }
        match next {
            Some(t) => token = Some(t),
            None => return Ok(()),
        }
    }
}

unsafe extern "C" fn s3_trim(_h: H, count: u32, offset: u64, _f: u32) -> c_int {
    guard("trim", -1, || {
        let Some((_, obj)) = state().split else {
            return 0;
        };
        // Only the objects the range covers whole.
        let first = offset.div_ceil(obj);
        let last = (offset + u64::from(count)) / obj;
        match delete_blocks(first, last) {
            Ok(()) => 0,
            Err((key, e)) => failed("DELETE", &key, &e),
        }
    })
}

unsafe extern "C" fn s3_zero(_h: H, count: u32, offset: u64, _f: u32) -> c_int {
    guard("zero", -1, || {
        let Some((_, obj)) = state().split else {
            abi::set_error(libc::EROFS);
            return -1;
        };
        let end = offset + u64::from(count);
        let first_whole = offset.div_ceil(obj);
        let last_whole = end / obj;
        let r = (|| {
            if first_whole >= last_whole {
                // Within one object, or across the edge of two.
                let mut pos = offset;
                while pos < end {
                    let (n, off) = (pos / obj, pos % obj);
                    let len = (obj - off).min(end - pos);
                    write_block(n, off, len, None)?;
                    pos += len;
                }
                return Ok(());
            }
            if !offset.is_multiple_of(obj) {
                write_block(offset / obj, offset % obj, obj - offset % obj, None)?;
            }
            if !end.is_multiple_of(obj) {
                write_block(end / obj, 0, end % obj, None)?;
            }
            delete_blocks(first_whole, last_whole)
        })();
        match r {
            Ok(()) => 0,
            Err((key, e)) => failed("zero", &key, &e),
        }
    })
}

unsafe extern "C" fn s3_flush(_h: H, _f: u32) -> c_int {
    // Every write is stored before it returns.
    0
}

unsafe extern "C" fn s3_thread_model() -> c_int {
    abi::THREAD_MODEL_PARALLEL
}

const CONFIG_HELP: &CStr = c"access-key=<KEY>         AWS access key (or +FILE, -, -FD).
secret-key=<KEY>         AWS secret key (or +FILE, -, -FD).
session-token=<TOKEN>    AWS session token (or +FILE, -, -FD).
endpoint-url=<URL>       S3-compatible service endpoint (Ceph, MinIO, ...).
bucket=<BUCKET>          (required) The bucket.
key=<KEY>                (required) The object, or the prefix of the objects.
size=<SIZE>              Disk size, stored in objects of object-size.
object-size=<SIZE>       Size of each object (with size=).
region=<REGION>          AWS region (else AWS_REGION, the profile's, us-east-1).
profile=<PROFILE>        Profile of ~/.aws/credentials and ~/.aws/config.
timeout=<SECS>           Network timeout (default 60).";

static PLUGIN: abi::Registration = abi::Registration(abi::Plugin {
    name: c"S3".as_ptr(),
    longname: c"nbdkit S3 plugin".as_ptr(),
    description: c"expose data in Amazon S3 or Ceph buckets as block device".as_ptr(),
    config: Some(s3_config),
    config_complete: Some(s3_config_complete),
    config_help: CONFIG_HELP.as_ptr(),
    open: Some(s3_open),
    close: Some(s3_close),
    get_size: Some(s3_get_size),
    can_write: Some(s3_can_write),
    can_flush: Some(s3_true),
    is_rotational: Some(s3_false),
    can_trim: Some(s3_true),
    can_zero: Some(s3_true),
    can_fua: Some(s3_can_fua),
    pread: Some(s3_pread),
    pwrite: Some(s3_pwrite),
    flush: Some(s3_flush),
    trim: Some(s3_trim),
    zero: Some(s3_zero),
    can_multi_conn: Some(s3_true),
    can_extents: Some(s3_false),
    can_cache: Some(s3_can_cache),
    thread_model_cb: Some(s3_thread_model),
    can_fast_zero: Some(s3_true),
    block_size: Some(s3_block_size),
    ..abi::Plugin::EMPTY
});

/// The registration function the server calls when it loads this object.
#[no_mangle]
pub extern "C" fn plugin_init() -> *const c_void {
    PLUGIN.as_ptr()
}
