//! The pool of libcurl easy handles (`connections=`), shared by every NBD
//! connection: a request takes a free handle (opening a new one while
//! fewer than `connections` exist, else waiting for one), uses it alone,
//! and puts it back. Each new handle asks the server for the size first
//! (a HEAD request for HTTP) and checks that it serves byte ranges.

use core::ffi::c_long;
use core::sync::atomic::{AtomicU64, Ordering};
use core::time::Duration;
use std::sync::{Condvar, Mutex};

use curl::easy::{Easy2, Handler, InfoType, List, ReadError, WriteError};
use nbdkit_plugin_abi as abi;

use crate::config::Config;
use crate::scripts;

const CURLOPT_TLS13_CIPHERS: curl_sys::CURLoption = curl_sys::CURLOPTTYPE_OBJECTPOINT + 276;
const CURLOPT_PROTOCOLS_STR: curl_sys::CURLoption = curl_sys::CURLOPTTYPE_OBJECTPOINT + 318;
const CURLOPT_REDIR_PROTOCOLS_STR: curl_sys::CURLoption = curl_sys::CURLOPTTYPE_OBJECTPOINT + 319;

/// Without `timeout=`, a transfer slower than 1 byte/s for this long, or
/// a connection not made in this long, fails rather than waiting forever
/// on a dead server.
pub(crate) const STALL: Duration = Duration::from_secs(60);

/// Where a transfer's data goes (and comes from), and what the response
/// headers said. Reset before each transfer.
#[derive(Default)]
pub(crate) struct Transfer {
    /// The caller's buffer for a read, its size, and how much arrived.
    dst: usize,
    dst_len: usize,
    got: usize,
    /// The caller's data for a write, its size, and how much was sent.
    src: usize,
    src_len: usize,
    sent: usize,
    /// The offset a read asked for (checked against Content-Range).
    want_offset: u64,
    /// The last HTTP status line's code (0: not HTTP).
    status: u32,
    /// The last response advertised `Accept-Ranges: bytes`.
    accept_range: bool,
    /// The first byte position of the last `Content-Range:`.
    range_start: Option<u64>,
    /// Why the transfer was stopped from a callback.
    abort: Option<String>,
}

// SAFETY: the buffer addresses are only used during the `perform` of the
// request that set them, on that request's thread.
unsafe impl Send for Transfer {}

fn strip_eol(b: &[u8]) -> String {
    String::from_utf8_lossy(b)
        .trim_end_matches(['\r', '\n'])
        .to_string()
}

impl Handler for Transfer {
    fn write(&mut self, data: &[u8]) -> Result<usize, WriteError> {
        if self.dst == 0 {
            // No read in progress: the size request, for which libcurl
            // hands FTP and file: "headers" (Content-Length: ...) here too.
            return Ok(data.len());
        }
        if self.status != 0 {
            if self.status != 206 {
                self.abort = Some(if self.status == 200 {
                    "server does not support 'range' (byte range) requests".into()
                } else {
                    format!("unexpected HTTP status {}", self.status)
                });
                return Ok(0);
            }
            if let Some(start) = self.range_start {
                if start != self.want_offset {
                    self.abort = Some(format!(
                        "server returned the range starting at {start}, not {}",
                        self.want_offset
                    ));
                    return Ok(0);
                }
            }
        }
        let room = self.dst_len - self.got;
        let n = data.len().min(room);
        if n > 0 {
            // SAFETY: dst..dst+dst_len is the caller's buffer for this
            // transfer, and got + n <= dst_len.
            unsafe {
                core::ptr::copy_nonoverlapping(
                    data.as_ptr(),
                    (self.dst as *mut u8).add(self.got),
                    n,
                )
            };
            self.got += n;
        }
        if n < data.len() {
            self.abort = Some(format!(
                "server sent more data than the {} bytes requested",
                self.dst_len
            ));
            return Ok(0);
        }
        Ok(data.len())
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<usize, ReadError> {
        let n = buf.len().min(self.src_len - self.sent);
        if n > 0 {
            // SAFETY: src..src+src_len is the caller's data for this
            // transfer, and sent + n <= src_len.
            unsafe {
                core::ptr::copy_nonoverlapping(
                    (self.src as *const u8).add(self.sent),
                    buf.as_mut_ptr(),
                    n,
                )
            };
            self.sent += n;
        }
        Ok(n)
    }

    fn header(&mut self, data: &[u8]) -> bool {
        let line = strip_eol(data);
        if line.starts_with("HTTP/") {
            // A new response (after a redirect or a 100 Continue).
            self.status = line
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            self.accept_range = false;
            self.range_start = None;
            return true;
        }
        let Some((name, value)) = line.split_once(':') else {
            return true;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("accept-ranges") {
            if value == "bytes" {
                self.accept_range = true;
            }
        } else if name.eq_ignore_ascii_case("content-range") {
            self.range_start = value
                .strip_prefix("bytes ")
                .and_then(|r| r.split('-').next())
                .and_then(|s| s.trim().parse().ok());
        }
        true
    }

    fn debug(&mut self, kind: InfoType, data: &[u8]) {
        match kind {
            InfoType::Text => abi::debug(&strip_eol(data)),
            InfoType::HeaderIn => abi::debug(&format!("S: {}", strip_eol(data))),
            InfoType::HeaderOut => {
                for l in String::from_utf8_lossy(data).lines() {
                    if !l.is_empty() {
                        abi::debug(&format!("C: {l}"));
                    }
                }
            }
            _ => abi::debug(&format!("<data with size={}>", data.len())),
        }
    }
}

/// One libcurl handle of the pool.
pub(crate) struct Conn {
    pub(crate) easy: Easy2<Transfer>,
    /// The size the server gave when this handle was opened.
    pub(crate) size: u64,
    /// The scripts' output generation this handle has applied.
    generation: u64,
}

/// A libcurl failure: the error's text and libcurl's detail.
fn curl_msg(e: &curl::Error) -> String {
    match e.extra_description() {
        Some(x) if !x.is_empty() => format!("{}: {x}", e.description()),
        _ => e.description().to_string(),
    }
}

fn setopt_str(
    easy: &Easy2<Transfer>,
    opt: curl_sys::CURLoption,
    v: &str,
    what: &str,
) -> Result<(), String> {
    let c = abi::cstring(v);
    // SAFETY: a string option of this libcurl; libcurl copies the string.
    let rc = unsafe { curl_sys::curl_easy_setopt(easy.raw(), opt, c.as_ptr()) };
    if rc != curl_sys::CURLE_OK {
        return Err(format!(
            "curl_easy_setopt: {what}: {}",
            curl::Error::new(rc).description()
        ));
    }
    Ok(())
}

fn setopt_long(
    easy: &Easy2<Transfer>,
    opt: curl_sys::CURLoption,
    v: c_long,
    what: &str,
) -> Result<(), String> {
    // SAFETY: a long option of this libcurl.
    let rc = unsafe { curl_sys::curl_easy_setopt(easy.raw(), opt, v) };
    if rc != curl_sys::CURLE_OK {
        return Err(format!(
            "curl_easy_setopt: {what}: {}",
            curl::Error::new(rc).description()
        ));
    }
    Ok(())
}

fn list(items: &[String]) -> Result<List, String> {
    let mut l = List::new();
    for i in items {
        l.append(i)
            .map_err(|e| format!("curl_slist_append: {}", curl_msg(&e)))?;
    }
    Ok(l)
}

/// The options every request of a handle uses.
fn configure(easy: &mut Easy2<Transfer>, cfg: &Config) -> Result<(), String> {
    let ctx = |what: &'static str| {
        move |e: curl::Error| format!("curl_easy_setopt: {what}: {}", curl_msg(&e))
    };
    if crate::DEBUG_VERBOSE.load(Ordering::Relaxed) != 0 {
        easy.verbose(true).map_err(ctx("CURLOPT_VERBOSE"))?;
    }
    if let Some(p) = &cfg.unix_socket_path {
        easy.unix_socket(p)
            .map_err(ctx("CURLOPT_UNIX_SOCKET_PATH"))?;
    }
    easy.url(cfg.url()).map_err(|e| {
        format!(
            "curl_easy_setopt: CURLOPT_URL [{}]: {}",
            cfg.url(),
            curl_msg(&e)
        )
    })?;
    easy.signal(false).map_err(ctx("CURLOPT_NOSIGNAL"))?;
    easy.autoreferer(true).map_err(ctx("CURLOPT_AUTOREFERER"))?;
    easy.follow_location(cfg.followlocation)
        .map_err(ctx("CURLOPT_FOLLOWLOCATION"))?;
    easy.fail_on_error(true)
        .map_err(ctx("CURLOPT_FAILONERROR"))?;
    if let Some(c) = &cfg.cainfo {
        if c.is_empty() {
            // No CA bundle at all (not even libcurl's default).
            // SAFETY: CURLOPT_CAINFO takes a string or NULL.
            unsafe {
                curl_sys::curl_easy_setopt(
                    easy.raw(),
                    curl_sys::CURLOPT_CAINFO,
                    core::ptr::null::<u8>(),
                )
            };
        } else {
            easy.cainfo(c).map_err(ctx("CURLOPT_CAINFO"))?;
        }
    }
    if let Some(c) = &cfg.capath {
        easy.capath(c).map_err(ctx("CURLOPT_CAPATH"))?;
    }
    if let Some(c) = &cfg.cookie {
        easy.cookie(c).map_err(ctx("CURLOPT_COOKIE"))?;
    }
    if let Some(c) = &cfg.cookiefile {
        easy.cookie_file(c).map_err(ctx("CURLOPT_COOKIEFILE"))?;
    }
    if let Some(c) = &cfg.cookiejar {
        easy.cookie_jar(c).map_err(ctx("CURLOPT_COOKIEJAR"))?;
    }
    if !cfg.headers.is_empty() {
        easy.http_headers(list(&cfg.headers)?)
            .map_err(ctx("CURLOPT_HTTPHEADER"))?;
    }
    if cfg.http_version != 0 {
        setopt_long(
            easy,
            curl_sys::CURLOPT_HTTP_VERSION,
            cfg.http_version,
            "CURLOPT_HTTP_VERSION",
        )?;
    }
    if cfg.ipresolve != 0 {
        setopt_long(
            easy,
            curl_sys::CURLOPT_IPRESOLVE,
            cfg.ipresolve,
            "CURLOPT_IPRESOLVE",
        )?;
    }
    if let Some(p) = &cfg.password {
        easy.password(p).map_err(ctx("CURLOPT_PASSWORD"))?;
    }
    if let Some(p) = &cfg.protocols {
        setopt_str(easy, CURLOPT_PROTOCOLS_STR, p, "CURLOPT_PROTOCOLS_STR")?;
        setopt_str(
            easy,
            CURLOPT_REDIR_PROTOCOLS_STR,
            p,
            "CURLOPT_REDIR_PROTOCOLS_STR",
        )?;
    }
    if let Some(p) = &cfg.proxy {
        easy.proxy(p).map_err(ctx("CURLOPT_PROXY"))?;
    }
    if let Some(p) = &cfg.proxy_password {
        easy.proxy_password(p)
            .map_err(ctx("CURLOPT_PROXYPASSWORD"))?;
    }
    if let Some(p) = &cfg.proxy_user {
        easy.proxy_username(p)
            .map_err(ctx("CURLOPT_PROXYUSERNAME"))?;
    }
    if !cfg.resolve.is_empty() {
        easy.resolve(list(&cfg.resolve)?)
            .map_err(ctx("CURLOPT_RESOLVE"))?;
    }
    if !cfg.sslverify {
        easy.ssl_verify_peer(false)
            .map_err(ctx("CURLOPT_SSL_VERIFYPEER"))?;
        easy.ssl_verify_host(false)
            .map_err(ctx("CURLOPT_SSL_VERIFYHOST"))?;
    }
    if cfg.ssl_version != 0 {
        setopt_long(
            easy,
            curl_sys::CURLOPT_SSLVERSION,
            cfg.ssl_version,
            "CURLOPT_SSLVERSION",
        )?;
    }
    if let Some(c) = &cfg.ssl_cipher_list {
        easy.ssl_cipher_list(c)
            .map_err(ctx("CURLOPT_SSL_CIPHER_LIST"))?;
    }
    if let Some(c) = &cfg.tls13_ciphers {
        setopt_str(easy, CURLOPT_TLS13_CIPHERS, c, "CURLOPT_TLS13_CIPHERS")?;
    }
    if cfg.tcp_keepalive {
        easy.tcp_keepalive(true)
            .map_err(ctx("CURLOPT_TCP_KEEPALIVE"))?;
    }
    if !cfg.tcp_nodelay {
        easy.tcp_nodelay(false)
            .map_err(ctx("CURLOPT_TCP_NODELAY"))?;
    }
    if cfg.timeout > 0 {
        let t = Duration::from_secs(u64::from(cfg.timeout));
        easy.timeout(t).map_err(ctx("CURLOPT_TIMEOUT"))?;
        easy.connect_timeout(t)
            .map_err(ctx("CURLOPT_CONNECTTIMEOUT"))?;
    } else {
        easy.connect_timeout(STALL)
            .map_err(ctx("CURLOPT_CONNECTTIMEOUT"))?;
    }
    // Never wait forever on a server that stopped sending.
    easy.low_speed_limit(1)
        .map_err(ctx("CURLOPT_LOW_SPEED_LIMIT"))?;
    easy.low_speed_time(STALL)
        .map_err(ctx("CURLOPT_LOW_SPEED_TIME"))?;
    if let Some(u) = &cfg.user {
        easy.username(u).map_err(ctx("CURLOPT_USERNAME"))?;
    }
    if let Some(u) = &cfg.user_agent {
        easy.useragent(u).map_err(ctx("CURLOPT_USERAGENT"))?;
    }
    Ok(())
}

/// Cumulative times of every transfer (`-D curl.times=1`), in nanoseconds.
pub(crate) static TIMES: [AtomicU64; 7] = [const { AtomicU64::new(0) }; 7];
pub(crate) const TIME_NAMES: [&str; 7] = [
    "name resolution",
    "connection",
    "SSL negotiation",
    "pretransfer",
    "first byte received",
    "data transfer",
    "redirection time",
];

fn add_times(easy: &Easy2<Transfer>) {
    if crate::DEBUG_TIMES.load(Ordering::Relaxed) == 0 {
        return;
    }
    let d = |r: Result<Duration, curl::Error>| r.unwrap_or_default();
    let nt = d(easy.namelookup_time());
    let ct = d(easy.connect_time()).max(nt);
    let at = d(easy.appconnect_time());
    let at = if at.is_zero() { ct } else { at.max(ct) };
    let pt = d(easy.pretransfer_time()).max(at);
    let st = d(easy.starttransfer_time()).max(pt);
    let tt = d(easy.total_time()).max(st);
    let rt = d(easy.redirect_time());
    let phases = [nt, ct - nt, at - ct, pt - at, st - pt, tt - st, rt];
    for (t, p) in TIMES.iter().zip(phases) {
        t.fetch_add(p.as_nanos() as u64, Ordering::Relaxed);
    }
}

impl Conn {
    /// Open a handle: configure it and ask for the size.
    fn open(cfg: &Config) -> Result<Conn, String> {
        let mut easy = Easy2::new(Transfer::default());
        configure(&mut easy, cfg)?;
        let mut c = Conn {
            easy,
            size: 0,
            generation: 0,
        };
        c.scripts(cfg)?;
        *c.easy.get_mut() = Transfer::default();
        c.easy.nobody(true).map_err(|e| curl_msg(&e))?;
        let r = c.easy.perform();
        add_times(&c.easy);
        if let Err(e) = r {
            return Err(format!(
                "problem doing HEAD request to fetch size of URL [{}]: {}",
                cfg.url(),
                curl_msg(&e)
            ));
        }
        let status = c.easy.get_ref().status;
        if (300..400).contains(&status) {
            return Err(format!(
                "problem doing HEAD request to fetch size of URL [{}]: the server answered \
                 {status}, a redirect that is not followed (followlocation=false)",
                cfg.url()
            ));
        }
        let len = c.easy.content_length_download().unwrap_or(-1.0);
        if len < 0.0 {
            return Err(format!(
                "could not get length of remote file [{}], is the URL correct?",
                cfg.url()
            ));
        }
        c.size = len as u64;
        abi::debug(&format!("content length: {}", c.size));
        let t = c.easy.get_ref();
        if t.status != 0 {
            if !t.accept_range {
                return Err("server does not support 'range' (byte range) requests".into());
            }
            abi::debug("accept range supported (for HTTP/HTTPS)");
        }
        Ok(c)
    }

    /// Run the scripts when due and give this handle their output.
    fn scripts(&mut self, cfg: &Config) -> Result<(), String> {
        let easy = &mut self.easy;
        self.generation = scripts::update(cfg, self.generation, |out| {
            let mut headers = cfg.headers.clone();
            headers.extend(out.headers.iter().cloned());
            easy.http_headers(list(&headers)?)
                .map_err(|e| format!("CURLOPT_HTTPHEADER: {}", curl_msg(&e)))?;
            match out.cookie.as_ref().or(cfg.cookie.as_ref()) {
                Some(c) => easy
                    .cookie(c)
                    .map_err(|e| format!("CURLOPT_COOKIE: {}", curl_msg(&e)))?,
                // The script printed no cookie this time: send none.
                // SAFETY: CURLOPT_COOKIE takes a string or NULL.
                None => unsafe {
                    curl_sys::curl_easy_setopt(
                        easy.raw(),
                        curl_sys::CURLOPT_COOKIE,
                        core::ptr::null::<u8>(),
                    );
                },
            }
            Ok(())
        })?;
        Ok(())
    }

    /// Read `buf.len()` bytes at `offset` (a range request).
    pub(crate) fn pread(
        &mut self,
        cfg: &Config,
        buf: &mut [u8],
        offset: u64,
    ) -> Result<(), String> {
        self.scripts(cfg)?;
        let count = buf.len();
        *self.easy.get_mut() = Transfer {
            dst: buf.as_mut_ptr() as usize,
            dst_len: count,
            want_offset: offset,
            ..Transfer::default()
        };
        let e = |e: curl::Error| curl_msg(&e);
        self.easy.get(true).map_err(e)?;
        let last = offset + count as u64 - 1;
        self.easy.range(&format!("{offset}-{last}")).map_err(e)?;
        let r = self.easy.perform();
        add_times(&self.easy);
        let t = self.easy.get_mut();
        let (dst, got) = (t.dst, t.got);
        t.dst = 0;
        t.dst_len = 0;
        if let Some(why) = t.abort.take() {
            return Err(why);
        }
        if let Err(err) = r {
            return Err(format!("pread: curl_easy_perform: {}", curl_msg(&err)));
        }
        debug_assert_eq!(dst, buf.as_ptr() as usize);
        if got < count {
            return Err(format!(
                "pread: short read: the server sent {got} of the {count} bytes at offset {offset}"
            ));
        }
        Ok(())
    }

    /// Write `buf` at `offset`: an HTTP PUT of that range.
    pub(crate) fn pwrite(&mut self, cfg: &Config, buf: &[u8], offset: u64) -> Result<(), String> {
        self.scripts(cfg)?;
        let count = buf.len();
        let last = offset + count as u64 - 1;
        *self.easy.get_mut() = Transfer {
            src: buf.as_ptr() as usize,
            src_len: count,
            ..Transfer::default()
        };
        let e = |e: curl::Error| curl_msg(&e);
        // This request's headers: the usual ones and its range.
        let mut headers = cfg.headers.clone();
        if cfg.header_script.is_some() || cfg.cookie_script.is_some() {
            let st = scripts::current_headers();
            headers.extend(st);
        }
        headers.push(format!(
            "Content-Range: bytes {offset}-{last}/{}",
            self.size
        ));
        self.easy.http_headers(list(&headers)?).map_err(e)?;
        // The next request puts the usual headers back.
        self.generation = u64::MAX;
        self.easy.upload(true).map_err(e)?;
        self.easy.in_filesize(count as u64).map_err(e)?;
        let r = self.easy.perform();
        add_times(&self.easy);
        // The next requests go without this one's Content-Range (with
        // scripts, their headers come back with the next request).
        let restore = self.easy.http_headers(list(&cfg.headers)?);
        let t = self.easy.get_mut();
        t.src = 0;
        t.src_len = 0;
        let sent = t.sent;
        r.map_err(|err| format!("pwrite: curl_easy_perform: {}", curl_msg(&err)))?;
        restore.map_err(e)?;
        if sent < count {
            return Err(format!("pwrite: short write: {sent} of {count} bytes sent"));
        }
        Ok(())
    }
}

struct State {
    free: Vec<Conn>,
    open: u32,
}

/// The handles, up to `connections`.
pub(crate) struct Pool {
    state: Mutex<State>,
    cond: Condvar,
}

impl Pool {
    pub(crate) const fn new() -> Pool {
        Pool {
            state: Mutex::new(State {
                free: Vec::new(),
                open: 0,
            }),
            cond: Condvar::new(),
        }
    }

    /// A handle for this request alone (opened when there is room).
    pub(crate) fn get(&self, cfg: &Config) -> Result<Conn, String> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(c) = st.free.pop() {
                return Ok(c);
            }
            if st.open < cfg.connections {
                st.open += 1;
                drop(st);
                let r = Conn::open(cfg);
                if r.is_err() {
                    let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
                    st.open -= 1;
                    self.cond.notify_one();
                }
                return r;
            }
            st = self.cond.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Give a handle back.
    pub(crate) fn put(&self, c: Conn) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.free.push(c);
        self.cond.notify_one();
    }

    /// Close every handle (cookie jars are written then).
    pub(crate) fn close_all(&self) -> usize {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let n = st.free.len();
        st.free.clear();
        n
    }
}
