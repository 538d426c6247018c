//! The plugin's parameters (`man nbdkit-curl-plugin`), each a libcurl
//! option, parsed as nbdkit's curl plugin parses them.

use core::ffi::{c_char, c_int, c_long};
use std::ffi::CStr;

use nbdkit_plugin_abi as abi;

/// `http-version=` values and their `CURL_HTTP_VERSION_*` numbers.
const HTTP_VERSIONS: &[(&str, c_long)] = &[
    ("none", 0),
    ("1.0", 1),
    ("1.1", 2),
    ("2.0", 3),
    ("2TLS", 4),
    ("2-prior-knowledge", 5),
    ("3", 30),
    ("3only", 31),
];

/// `ssl-version=` values and their `CURL_SSLVERSION_*` numbers.
const SSL_VERSIONS: &[(&str, c_long)] = &[
    ("default", 0),
    ("tlsv1", 1),
    ("sslv2", 2),
    ("sslv3", 3),
    ("tlsv1.0", 4),
    ("tlsv1.1", 5),
    ("tlsv1.2", 6),
    ("tlsv1.3", 7),
    ("max-default", 1 << 16),
    ("max-tlsv1.0", 4 << 16),
    ("max-tlsv1.1", 5 << 16),
    ("max-tlsv1.2", 6 << 16),
    ("max-tlsv1.3", 7 << 16),
];

/// The protocol names `protocols=` accepts (the manual's list).
const PROTOCOLS: &[&str] = &[
    "dict", "file", "ftp", "ftps", "gopher", "gophers", "http", "https", "imap", "imaps", "ldap",
    "ldaps", "mqtt", "pop3", "pop3s", "rtmp", "rtmpe", "rtmps", "rtmpt", "rtmpte", "rtmpts",
    "rtsp", "scp", "sftp", "smb", "smbs", "smtp", "smtps", "telnet", "tftp",
];

/// `ipresolve=` values and their `CURL_IPRESOLVE_*` numbers.
const IP_RESOLVE: &[(&str, c_long)] = &[("any", 0), ("v4", 1), ("v6", 2)];

/// Everything the command line set.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) url: Option<String>,
    pub(crate) cainfo: Option<String>,
    pub(crate) capath: Option<String>,
    pub(crate) connections: u32,
    pub(crate) cookie: Option<String>,
    pub(crate) cookiefile: Option<String>,
    pub(crate) cookiejar: Option<String>,
    pub(crate) cookie_script: Option<String>,
    pub(crate) cookie_script_renew: u32,
    pub(crate) followlocation: bool,
    pub(crate) headers: Vec<String>,
    pub(crate) header_script: Option<String>,
    pub(crate) header_script_renew: u32,
    pub(crate) http_version: c_long,
    pub(crate) ipresolve: c_long,
    pub(crate) password: Option<String>,
    pub(crate) protocols: Option<String>,
    pub(crate) proxy: Option<String>,
    pub(crate) proxy_password: Option<String>,
    pub(crate) proxy_user: Option<String>,
    pub(crate) resolve: Vec<String>,
    pub(crate) sslverify: bool,
    pub(crate) ssl_cipher_list: Option<String>,
    pub(crate) ssl_version: c_long,
    pub(crate) tls13_ciphers: Option<String>,
    pub(crate) tcp_keepalive: bool,
    pub(crate) tcp_nodelay: bool,
    pub(crate) timeout: u32,
    pub(crate) unix_socket_path: Option<String>,
    pub(crate) user: Option<String>,
    pub(crate) user_agent: Option<String>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            url: None,
            cainfo: None,
            capath: None,
            connections: 4,
            cookie: None,
            cookiefile: None,
            cookiejar: None,
            cookie_script: None,
            cookie_script_renew: 0,
            followlocation: true,
            headers: Vec::new(),
            header_script: None,
            header_script_renew: 0,
            http_version: 0,
            ipresolve: 0,
            password: None,
            protocols: None,
            proxy: None,
            proxy_password: None,
            proxy_user: None,
            resolve: Vec::new(),
            sslverify: true,
            ssl_cipher_list: None,
            ssl_version: 0,
            tls13_ciphers: None,
            tcp_keepalive: false,
            tcp_nodelay: true,
            timeout: 0,
            unix_socket_path: None,
            user: None,
            user_agent: None,
        }
    }
}

/// A failed parameter: the message is already reported (nbdkit's own
/// parsers report theirs) or is given here.
pub(crate) struct Bad(pub(crate) Option<String>);

fn bad<T>(msg: impl Into<String>) -> Result<T, Bad> {
    Err(Bad(Some(msg.into())))
}

/// `nbdkit_read_password`: the value itself, `-` (ask), `+FILE`, `-FD`.
fn read_password(value: &str) -> Result<String, Bad> {
    let v = abi::cstring(value);
    let mut out: *mut c_char = core::ptr::null_mut();
    // SAFETY: a NUL-terminated string and a pointer to our `char *`.
    if unsafe { abi::nbdkit_read_password(v.as_ptr(), &mut out) } == -1 {
        return Err(Bad(None));
    }
    if out.is_null() {
        return Ok(String::new());
    }
    // SAFETY: nbdkit returns a malloc'd NUL-terminated string.
    let s = unsafe { CStr::from_ptr(out) }
        .to_string_lossy()
        .into_owned();
    // SAFETY: allocated by malloc in the server, ours to free.
    unsafe { libc::free(out.cast()) };
    Ok(s)
}

fn parse_bool(value: &str) -> Result<bool, Bad> {
    let v = abi::cstring(value);
    // SAFETY: a NUL-terminated string.
    match unsafe { abi::nbdkit_parse_bool(v.as_ptr()) } {
        -1 => Err(Bad(None)),
        r => Ok(r != 0),
    }
}

fn parse_u32(what: &str, value: &str, unsigned: bool) -> Result<u32, Bad> {
    let w = abi::cstring(what);
    let v = abi::cstring(value);
    let mut r: u32 = 0;
    // SAFETY: NUL-terminated strings and a pointer to a 32-bit integer
    // (`unsigned` is 32 bits on every platform nbdkit runs on).
    let rc: c_int = unsafe {
        if unsigned {
            abi::nbdkit_parse_unsigned(w.as_ptr(), v.as_ptr(), &mut r)
        } else {
            abi::nbdkit_parse_uint32_t(w.as_ptr(), v.as_ptr(), &mut r)
        }
    };
    if rc == -1 {
        Err(Bad(None))
    } else {
        Ok(r)
    }
}

fn lookup(table: &[(&str, c_long)], value: &str, what: &str) -> Result<c_long, Bad> {
    match table.iter().find(|(n, _)| *n == value) {
        Some((_, v)) => Ok(*v),
        None => bad(format!("unknown {what}: {value}")),
    }
}

/// Check `protocols=` against the known names, as nbdkit does.
fn check_protocols(value: &str) -> Result<String, Bad> {
    for p in value.split(',').filter(|p| !p.is_empty()) {
        if !PROTOCOLS.contains(&p) {
            return bad(format!("protocols: protocol name not found: {p}"));
        }
    }
    if value.split(',').all(str::is_empty) {
        return bad("protocols: empty list of protocols is not allowed");
    }
    Ok(value.to_string())
}

impl Config {
    /// One `key=value`.
    pub(crate) fn set(&mut self, key: &str, value: &str) -> Result<(), Bad> {
        let some = || Some(value.to_string());
        match key {
            "cainfo" => self.cainfo = some(),
            "capath" => self.capath = some(),
            "connections" => {
                let n = parse_u32("connections", value, true)?;
                if n == 0 {
                    return bad("connections parameter must not be 0");
                }
                self.connections = n;
            }
            "cookie" => self.cookie = Some(read_password(value)?),
            "cookiefile" => {
                // libcurl would read stdin.
                if value == "-" {
                    return bad("cookiefile parameter cannot be \"-\"");
                }
                self.cookiefile = some();
            }
            "cookiejar" => {
                // libcurl would write to stdout.
                if value == "-" {
                    return bad("cookiejar parameter cannot be \"-\"");
                }
                self.cookiejar = some();
            }
            "cookie-script" => self.cookie_script = some(),
            "cookie-script-renew" => {
                self.cookie_script_renew = parse_u32("cookie-script-renew", value, true)?
            }
            "followlocation" => self.followlocation = parse_bool(value)?,
            "header" => self.headers.push(value.to_string()),
            "header-script" => self.header_script = some(),
            "header-script-renew" => {
                self.header_script_renew = parse_u32("header-script-renew", value, true)?
            }
            "http-version" => self.http_version = lookup(HTTP_VERSIONS, value, "http-version")?,
            "ipresolve" => self.ipresolve = lookup(IP_RESOLVE, value, "ipresolve")?,
            "password" => self.password = Some(read_password(value)?),
            "protocols" => self.protocols = Some(check_protocols(value)?),
            "proxy" => self.proxy = some(),
            "proxy-password" => self.proxy_password = Some(read_password(value)?),
            "proxy-user" => self.proxy_user = some(),
            "resolve" => self.resolve.push(value.to_string()),
            "sslverify" => self.sslverify = parse_bool(value)?,
            "ssl-version" => self.ssl_version = lookup(SSL_VERSIONS, value, "ssl-version")?,
            "ssl-cipher-list" => self.ssl_cipher_list = some(),
            "tls13-ciphers" => self.tls13_ciphers = some(),
            "tcp-keepalive" => self.tcp_keepalive = parse_bool(value)?,
            "tcp-nodelay" => self.tcp_nodelay = parse_bool(value)?,
            "timeout" => self.timeout = parse_u32("timeout", value, false)?,
            "unix-socket-path" | "unix_socket_path" => self.unix_socket_path = some(),
            "url" => self.url = some(),
            "user" => self.user = some(),
            "user-agent" => self.user_agent = some(),
            _ => return bad(format!("unknown parameter '{key}'")),
        }
        Ok(())
    }

    /// The checks of `.config_complete`.
    pub(crate) fn complete(&self) -> Result<(), String> {
        if self.url.is_none() {
            return Err("you must supply the url=<URL> parameter \
                        after the plugin name on the command line"
                .into());
        }
        if !self.headers.is_empty() && self.header_script.is_some() {
            return Err("header and header-script cannot be used at the same time".into());
        }
        if self.header_script.is_none() && self.header_script_renew > 0 {
            return Err("header-script-renew cannot be used without header-script".into());
        }
        if self.cookie.is_some() && self.cookie_script.is_some() {
            return Err("cookie and cookie-script cannot be used at the same time".into());
        }
        if self.cookie_script.is_none() && self.cookie_script_renew > 0 {
            return Err("cookie-script-renew cannot be used without cookie-script".into());
        }
        Ok(())
    }

    pub(crate) fn url(&self) -> &str {
        self.url.as_deref().unwrap_or_default()
    }

    /// Whether the URL is HTTP or HTTPS (the schemes with PUT for writes).
    pub(crate) fn is_http(&self) -> bool {
        let u = self.url().to_ascii_lowercase();
        u.starts_with("http://") || u.starts_with("https://")
    }
}

/// `--help` text after the plugin's name.
pub(crate) const HELP: &CStr = c"cainfo=<CAINFO>            Path to Certificate Authority file.
capath=<CAPATH>            Path to directory with CA certificates.
connections=<N>            Number of libcurl connections to use.
cookie=<COOKIE>            Set HTTP/HTTPS cookies.
cookiefile=                Enable cookie processing.
cookiefile=<FILENAME>      Read cookies from file.
cookiejar=<FILENAME>       Read and write cookies to jar.
cookie-script=<SCRIPT>     Script to set HTTP/HTTPS cookies.
cookie-script-renew=<SECS> Time to renew HTTP/HTTPS cookies.
followlocation=false       Do not follow redirects.
header=<HEADER>            Set HTTP/HTTPS header.
header-script=<SCRIPT>     Script to set HTTP/HTTPS headers.
header-script-renew=<SECS> Time to renew HTTP/HTTPS headers.
http-version=none|...      Force a particular HTTP protocol.
ipresolve=any|v4|v6        Restrict to IPv4 or IPv6 addresses.
password=<PASSWORD>        The password for the user account.
protocols=PROTO,PROTO,..   Limit protocols allowed.
proxy=<PROXY>              Set proxy URL.
proxy-password=<PASSWORD>  The proxy password.
proxy-user=<USER>          The proxy user.
resolve=<HOST>:<PORT>:<ADDR> Custom host to IP address resolution.
sslverify=false            Do not verify SSL certificate of remote host.
ssl-cipher-list=C1:C2:..   Specify TLS/SSL cipher suites to be used.
ssl-version=<VERSION>      Specify preferred TLS/SSL version.
tcp-keepalive=true         Enable TCP keepalives.
tcp-nodelay=false          Disable Nagle’s algorithm.
timeout=<TIMEOUT>          Set the timeout for requests (seconds).
tls13-ciphers=C1:C2:..     Specify TLS 1.3 cipher suites to be used.
unix-socket-path=<PATH>    Open Unix domain socket instead of TCP/IP.
url=<URL>       (required) The disk image URL to serve.
user=<USER>                The user to log in as.
user-agent=<USER-AGENT>    Send user-agent header for HTTP/HTTPS.";
