//! nbdkit's `ssh` plugin (`nbdkit-ssh-plugin(1)`): a disk image that is a
//! file on an SSH server, read and written over SFTP.
//!
//! The SSH side is the system libssh (the library nbdkit's own plugin
//! uses), so `config=`, `identity=` and `known-hosts=` mean exactly what
//! they mean there: OpenSSH-style configuration files, the `%`-expansions
//! of libssh, `~/.ssh/known_hosts`, the SSH agent. This is a shared object
//! that the server loads through its C plugin ABI only when `nbdkit ssh`
//! is asked for, so the `nbdkit` executable never links libssh.
//!
//! Each NBD connection opens its own SSH session, SFTP session and remote
//! file. Requests on one connection are serialised (an SFTP file handle has
//! one position); reads are pipelined as several SFTP reads in flight.
//! Every wait for the server is bounded (see [`watchdog`]): by `timeout=`
//! when it is given, else by [`DEFAULT_TIMEOUT`].

mod ffi;
mod watchdog;

use core::ffi::{c_char, c_int, c_void};
use core::panic::AssertUnwindSafe;
use core::sync::atomic::{AtomicI32, Ordering};
use core::time::Duration;
use std::collections::VecDeque;
use std::ffi::{CStr, CString};
use std::sync::Mutex;

use nbdkit_plugin_abi as abi;

use abi::H;
use watchdog::Watchdog;

/// `-D ssh.log=N`: libssh's log level (1 to 4), its messages as debug
/// messages. The server sets this variable by its name.
#[no_mangle]
#[allow(non_upper_case_globals)]
pub static ssh_debug_log: AtomicI32 = AtomicI32::new(0);

/// The bound on each wait for the server when `timeout=` is not given.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// The size of one SFTP read; OpenSSH answers up to 256 KiB minus a bit,
/// other servers less, so stay well below.
const READ_CHUNK: u32 = 64 * 1024;
/// How many SFTP reads one request keeps in flight.
const READ_WINDOW: usize = 16;
/// The size of one SFTP write (OpenSSH's packets are at most 256 KiB).
const WRITE_CHUNK: usize = 128 * 1024;

/// The parameters.
#[derive(Clone)]
struct Config {
    host: Option<CString>,
    path: Option<CString>,
    port: Option<CString>,
    user: Option<CString>,
    password: Option<CString>,
    verify_remote_host: bool,
    known_hosts: Option<CString>,
    identities: Vec<CString>,
    /// Seconds; 0 when not given.
    timeout: u32,
    compression: bool,
    create: bool,
    create_size: Option<u64>,
    create_mode: u32,
    /// None: the default files; Some(""): none; else this file.
    config: Option<CString>,
}

static CONFIG: Mutex<Config> = Mutex::new(Config {
    host: None,
    path: None,
    port: None,
    user: None,
    password: None,
    verify_remote_host: true,
    known_hosts: None,
    identities: Vec::new(),
    timeout: 0,
    compression: false,
    create: false,
    create_size: None,
    create_mode: 0o600,
    config: None,
});

/// Whether the remote file is still to be created (`create=true`, no
/// connection has done it yet). The lock also makes creation happen once
/// when several connections open at the same time.
static CREATE_PENDING: Mutex<bool> = Mutex::new(false);

fn config() -> std::sync::MutexGuard<'static, Config> {
    CONFIG.lock().unwrap_or_else(|e| e.into_inner())
}

fn cstr(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: the server and libssh hand NUL-terminated strings.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// Run a callback body; a panic never crosses into the server.
fn guard<R>(what: &str, fail: R, f: impl FnOnce() -> R) -> R {
    match std::panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(_) => {
            abi::error(&format!("ssh: {what}: internal error"));
            abi::set_error(libc::EIO);
            fail
        }
    }
}

// ---------------------------------------------------------------------------
// Configuration

fn parse_bool(value: *const c_char) -> Option<bool> {
    // SAFETY: a NUL-terminated string from the server.
    match unsafe { abi::nbdkit_parse_bool(value) } {
        -1 => None,
        r => Some(r != 0),
    }
}

unsafe extern "C" fn ssh_config_cb(key: *const c_char, value: *const c_char) -> c_int {
    guard("config", -1, || {
        let k = cstr(key);
        // SAFETY: the server's NUL-terminated value.
        let v = unsafe { CStr::from_ptr(value) }.to_owned();
        let mut c = config();
        match k.as_str() {
            "host" => c.host = Some(v),
            "path" => c.path = Some(v),
            "port" => c.port = Some(v),
            "user" => c.user = Some(v),
            "password" => {
                let mut p: *mut c_char = core::ptr::null_mut();
                // SAFETY: the server fills `p` with a malloc'd string.
                if unsafe { abi::nbdkit_read_password(value, &mut p) } == -1 {
                    return -1;
                }
                if !p.is_null() {
                    // SAFETY: a NUL-terminated malloc'd string, ours to free.
                    let s = unsafe { CStr::from_ptr(p) }.to_owned();
                    // SAFETY: as above; wipe it before giving it back.
                    unsafe {
                        libc::memset(p.cast(), 0, s.as_bytes().len());
                        libc::free(p.cast());
                    }
                    c.password = Some(s);
                }
            }
            // These three are %-expanded by libssh, so kept as given.
            "config" => c.config = Some(v),
            "known-hosts" => c.known_hosts = Some(v),
            "identity" => c.identities.push(v),
            "verify-remote-host" => match parse_bool(value) {
                Some(b) => c.verify_remote_host = b,
                None => return -1,
            },
            "timeout" => {
                let mut t = 0u32;
                // SAFETY: NUL-terminated strings and a valid out pointer.
                if unsafe { abi::nbdkit_parse_uint32_t(c"timeout".as_ptr(), value, &mut t) } == -1 {
                    return -1;
                }
                c.timeout = t;
            }
            "compression" => match parse_bool(value) {
                Some(b) => c.compression = b,
                None => return -1,
            },
            "create" => match parse_bool(value) {
                Some(b) => c.create = b,
                None => return -1,
            },
            "create-size" => {
                // SAFETY: a NUL-terminated string.
                let s = unsafe { abi::nbdkit_parse_size(value) };
                if s == -1 {
                    return -1;
                }
                c.create_size = Some(s as u64);
            }
            "create-mode" => {
                let mut m = 0u32;
                // SAFETY: NUL-terminated strings and a valid out pointer.
                if unsafe { abi::nbdkit_parse_unsigned(key, value, &mut m) } == -1 {
                    return -1;
                }
                if m > 0o777 {
                    abi::error("create-mode must be <= 0777");
                    return -1;
                }
                c.create_mode = m;
            }
            _ => {
                abi::error(&format!("unknown parameter '{k}'"));
                return -1;
            }
        }
        0
    })
}

unsafe extern "C" fn ssh_config_complete() -> c_int {
    guard("config_complete", -1, || {
        let c = config();
        if c.host.is_none() || c.path.is_none() {
            abi::error(
                "you must supply the host and path parameters after the plugin name on the \
                 command line",
            );
            return -1;
        }
        if c.create && c.create_size.is_none() {
            abi::error(
                "if using create=true, you must specify the size of the new remote file using \
                 create-size=SIZE",
            );
            return -1;
        }
        *CREATE_PENDING.lock().unwrap_or_else(|e| e.into_inner()) = c.create;
        0
    })
}

unsafe extern "C" fn ssh_unload() {
    let mut c = config();
    if let Some(p) = c.password.take() {
        let mut b = p.into_bytes();
        b.iter_mut().for_each(|x| *x = 0);
    }
}

const CONFIG_HELP: &CStr = c"host=<HOST>     (required) SSH server hostname.
[path=]<PATH>   (required) SSH remote path.
port=<PORT>                SSH protocol port number.
user=<USER>                SSH user name.
password=<PASSWORD>        SSH password.
config=<CONFIG>            Alternate local SSH configuration file.
known-hosts=<FILENAME>     Set location of known_hosts file.
identity=<FILENAME>        Prepend private key (identity) file.
timeout=SECS               Set SSH connection timeout.
verify-remote-host=false   Ignore known_hosts.
compression=true           Enable compression.
create=true                Create the remote file.
create-mode=MODE           Set the permissions of the remote file.
create-size=SIZE           Set the size of the remote file.";

// ---------------------------------------------------------------------------
// Connections

/// libssh's log messages (`-D ssh.log=N`) as debug messages.
unsafe extern "C" fn log_callback(
    priority: c_int,
    _function: *const c_char,
    message: *const c_char,
    _userdata: *mut c_void,
) {
    let level = match priority {
        0 => "none",
        1 => "warning",
        2 => "protocol",
        3 => "packet",
        4 => "function",
        _ => "unknown",
    };
    // The function's name already starts the message.
    abi::debug(&format!("libssh: {level}: {}", cstr(message)));
}

/// One connection: an SSH session, its SFTP session and the remote file.
struct Handle {
    session: ffi::ssh_session,
    sftp: ffi::sftp_session,
    file: ffi::sftp_file,
    /// Started once the session is connected.
    watchdog: Option<Watchdog>,
}

/// How a step failed: the message is the whole error line's text.
type Res<T> = Result<T, String>;

impl Handle {
    /// libssh's message for the last error of the session, or the
    /// watchdog's when it cut the connection.
    fn error(&self) -> String {
        if let Some(w) = &self.watchdog {
            if w.fired() {
                return format!(
                    "the SSH server did not answer within {} seconds",
                    w.limit().as_secs()
                );
            }
        }
        // SAFETY: a live session; libssh returns a static or
        // session-owned string.
        cstr(unsafe { ffi::ssh_get_error(self.session.cast()) })
    }

    /// Arm the watchdog (once the session is connected) around `f`.
    fn bounded<R>(&self, f: impl FnOnce() -> R) -> R {
        let _armed = self.watchdog.as_ref().map(Watchdog::arm);
        f()
    }

    fn set_option(&self, what: &str, shown: &str, typ: c_int, value: *const c_void) -> Res<()> {
        // SAFETY: a live session; `value` has the type libssh expects for
        // `typ` (the callers pair them).
        if unsafe { ffi::ssh_options_set(self.session, typ, value) } != ffi::SSH_OK {
            return Err(format!(
                "failed to set {what} in libssh session: {shown}: {}",
                self.error()
            ));
        }
        Ok(())
    }

    fn open(readonly: bool) -> Res<Box<Handle>> {
        let c = config().clone();
        // SAFETY: plain constructor.
        let session = unsafe { ffi::ssh_new() };
        if session.is_null() {
            return Err("failed to initialize libssh session".into());
        }
        let mut h = Box::new(Handle {
            session,
            sftp: core::ptr::null_mut(),
            file: core::ptr::null_mut(),
            watchdog: None,
        });

        let log = ssh_debug_log.load(Ordering::Relaxed);
        if log > 0 {
            // SAFETY: an int option; the callback is a plain function. The
            // callback is process-wide but must be set for each session, or
            // libssh prints to stderr.
            unsafe {
                ffi::ssh_options_set(
                    session,
                    ffi::SSH_OPTIONS_LOG_VERBOSITY,
                    (&log as *const c_int).cast(),
                );
                ffi::ssh_set_log_callback(Some(log_callback));
            }
        }
        // No Nagle delays (libssh recommends it for SFTP); not fatal.
        let one: c_int = 1;
        // SAFETY: an int option.
        unsafe {
            ffi::ssh_options_set(
                session,
                ffi::SSH_OPTIONS_NODELAY,
                (&one as *const c_int).cast(),
            )
        };

        let host = c.host.clone().unwrap_or_default();
        let shown = |s: &CString| s.to_string_lossy().into_owned();
        h.set_option(
            "host",
            &shown(&host),
            ffi::SSH_OPTIONS_HOST,
            host.as_ptr().cast(),
        )?;
        if let Some(p) = &c.port {
            h.set_option(
                "port",
                &shown(p),
                ffi::SSH_OPTIONS_PORT_STR,
                p.as_ptr().cast(),
            )?;
        }
        if let Some(u) = &c.user {
            h.set_option("user", &shown(u), ffi::SSH_OPTIONS_USER, u.as_ptr().cast())?;
        }
        if let Some(k) = &c.known_hosts {
            h.set_option(
                "known_hosts",
                &shown(k),
                ffi::SSH_OPTIONS_KNOWNHOSTS,
                k.as_ptr().cast(),
            )?;
        }
        for i in &c.identities {
            h.set_option(
                "identity",
                &shown(i),
                ffi::SSH_OPTIONS_ADD_IDENTITY,
                i.as_ptr().cast(),
            )?;
        }
        if c.timeout > 0 {
            let t = ffi::TimeoutArg::from(c.timeout);
            h.set_option(
                "timeout",
                &c.timeout.to_string(),
                ffi::SSH_OPTIONS_TIMEOUT,
                (&t as *const ffi::TimeoutArg).cast(),
            )?;
        }
        if c.compression {
            // SAFETY: a string option.
            let r = unsafe {
                ffi::ssh_options_set(
                    session,
                    ffi::SSH_OPTIONS_COMPRESSION,
                    c"yes".as_ptr().cast(),
                )
            };
            if r != ffi::SSH_OK {
                return Err(format!(
                    "failed to enable compression in libssh session: {}",
                    h.error()
                ));
            }
        }

        // The configuration files last, once the host is known: values
        // already set win over theirs.
        match &c.config {
            None => {
                // SAFETY: NULL reads ~/.ssh/config and /etc/ssh/ssh_config.
                if unsafe { ffi::ssh_options_parse_config(session, core::ptr::null()) }
                    != ffi::SSH_OK
                {
                    return Err(format!(
                        "failed to parse local SSH configuration: {}",
                        h.error()
                    ));
                }
            }
            Some(f) if f.as_bytes().is_empty() => {}
            Some(f) => {
                // SAFETY: a NUL-terminated file name.
                if unsafe { ffi::ssh_options_parse_config(session, f.as_ptr()) } != ffi::SSH_OK {
                    return Err(format!(
                        "failed to parse SSH configuration: {}: {}",
                        shown(f),
                        h.error()
                    ));
                }
            }
        }

        // SAFETY: a configured session. libssh bounds the connection and
        // key exchange by its timeout option.
        if unsafe { ffi::ssh_connect(session) } != ffi::SSH_OK {
            return Err(format!(
                "failed to connect to remote host: {}: {}",
                shown(&host),
                h.error()
            ));
        }
        // From here on every wait is bounded by the watchdog.
        let limit = if c.timeout > 0 {
            Duration::from_secs(c.timeout.into())
        } else {
            DEFAULT_TIMEOUT
        };
        // SAFETY: a connected session.
        let fd = unsafe { ffi::ssh_get_fd(session) };
        if fd >= 0 {
            h.watchdog = Some(
                Watchdog::start(fd, limit).map_err(|e| format!("cannot start a thread: {e}"))?,
            );
        }

        if c.verify_remote_host {
            h.verify_remote_host()?;
        }
        let password = c.password.clone();
        let path = c.path.clone().unwrap_or_default();
        let (create_mode, create_size) = (c.create_mode, c.create_size.unwrap_or(0));
        h.bounded(|| h.authenticate(password.as_deref()))?;

        // SAFETY: an authenticated session.
        h.sftp = unsafe { ffi::sftp_new(session) };
        if h.sftp.is_null() {
            return Err(format!("failed to allocate sftp session: {}", h.error()));
        }
        // SAFETY: a new SFTP session.
        if h.bounded(|| unsafe { ffi::sftp_init(h.sftp) }) != ffi::SSH_OK {
            return Err(format!("failed to initialize sftp session: {}", h.error()));
        }
        h.file = h.bounded(|| h.open_file(&path, readonly, create_mode, create_size))?;
        abi::debug("opened libssh handle");
        Ok(h)
    }

    fn verify_remote_host(&self) -> Res<()> {
        // SAFETY: a connected session.
        let state = unsafe { ffi::ssh_session_is_known_server(self.session) };
        match state {
            ffi::SSH_KNOWN_HOSTS_OK => Ok(()),
            ffi::SSH_KNOWN_HOSTS_CHANGED => Err("host key for server changed".into()),
            ffi::SSH_KNOWN_HOSTS_OTHER => {
                Err("host key for server was not found but another type of key exists".into())
            }
            // No file, or the host is not in it: the user must set the
            // host key up before using nbdkit.
            ffi::SSH_KNOWN_HOSTS_NOT_FOUND | ffi::SSH_KNOWN_HOSTS_UNKNOWN => Err(
                "either the host key is unknown, you must use ssh first and accept the host \
                 key; or the known_hosts file (usually ~/.ssh/known_hosts) could not be \
                 opened, check that the file exists and file permissions"
                    .into(),
            ),
            _ => Err(format!("known hosts error: {}", self.error())),
        }
    }

    /// The methods `none`, `publickey` (agent and identity files) and
    /// `password`, in that order, as far as the server offers them.
    fn authenticate(&self, password: Option<&CStr>) -> Res<()> {
        let s = self.session;
        // SAFETY: a connected session; NULL user: the configured one.
        let rc = unsafe { ffi::ssh_userauth_none(s, core::ptr::null()) };
        if rc == ffi::SSH_AUTH_SUCCESS {
            return Ok(());
        }
        if rc == ffi::SSH_AUTH_ERROR {
            return Err(format!("authentication failed: {}", self.error()));
        }
        // SAFETY: as above.
        let method = unsafe { ffi::ssh_userauth_list(s, core::ptr::null()) } as u32;
        let names = [
            (ffi::SSH_AUTH_METHOD_NONE, " none"),
            (ffi::SSH_AUTH_METHOD_PASSWORD, " password"),
            (ffi::SSH_AUTH_METHOD_PUBLICKEY, " publickey"),
            (ffi::SSH_AUTH_METHOD_HOSTBASED, " hostbased"),
            (ffi::SSH_AUTH_METHOD_INTERACTIVE, " keyboard-interactive"),
            (ffi::SSH_AUTH_METHOD_GSSAPI_MIC, " gssapi-with-mic"),
        ];
        let mut list: String = names
            .iter()
            .filter(|(bit, _)| method & bit != 0)
            .map(|(_, n)| *n)
            .collect();
        if method & !0x3f != 0 {
            list.push_str(" (and other unknown methods)");
        }
        abi::debug(&format!(
            "authentication methods offered by the server [0x{method:x}]: {list}"
        ));

        if method & ffi::SSH_AUTH_METHOD_PUBLICKEY != 0 {
            // SAFETY: as above; NULL passphrase (no one to ask).
            let rc = unsafe {
                ffi::ssh_userauth_publickey_auto(s, core::ptr::null(), core::ptr::null())
            };
            if rc == ffi::SSH_AUTH_SUCCESS {
                return Ok(());
            }
            if rc == ffi::SSH_AUTH_ERROR {
                abi::debug(&format!(
                    "public key authentication failed: {}",
                    self.error()
                ));
            }
        }
        // keyboard-interactive needs someone to answer: not for a server.
        if let Some(p) = password {
            if method & ffi::SSH_AUTH_METHOD_PASSWORD != 0 {
                // SAFETY: as above; a NUL-terminated password.
                let rc = unsafe { ffi::ssh_userauth_password(s, core::ptr::null(), p.as_ptr()) };
                if rc == ffi::SSH_AUTH_SUCCESS {
                    return Ok(());
                }
                if rc == ffi::SSH_AUTH_ERROR {
                    abi::debug(&format!("password authentication failed: {}", self.error()));
                }
            }
        }
        if self.watchdog.as_ref().is_some_and(Watchdog::fired) {
            return Err(format!("authentication failed: {}", self.error()));
        }
        Err("all possible authentication methods failed".into())
    }

    /// Open the remote file, or create it for the first connection of
    /// `create=true` (replacing any file there).
    fn open_file(&self, path: &CStr, readonly: bool, mode: u32, size: u64) -> Res<ffi::sftp_file> {
        let mut pending = CREATE_PENDING.lock().unwrap_or_else(|e| e.into_inner());
        let create = *pending;
        let mut flags = if readonly {
            libc::O_RDONLY
        } else {
            libc::O_RDWR
        };
        if create {
            flags |= libc::O_CREAT | libc::O_TRUNC;
        }
        // SAFETY: a live SFTP session and a NUL-terminated path.
        let file = unsafe { ffi::sftp_open(self.sftp, path.as_ptr(), flags, mode as libc::mode_t) };
        if file.is_null() {
            return Err(format!(
                "cannot {} file for {}: {}",
                if create { "create" } else { "open" },
                if readonly { "reading" } else { "writing" },
                self.error()
            ));
        }
        if create {
            // SFTP has no ftruncate: SETSTAT with a size truncates (or
            // extends) the file on OpenSSH; the mode is set the same way
            // so that the umask on the server does not change it.
            // SAFETY: all-zero is a valid value of this plain C struct.
            let mut attrs: ffi::sftp_attributes_struct = unsafe { core::mem::zeroed() };
            attrs.flags = ffi::SSH_FILEXFER_ATTR_SIZE | ffi::SSH_FILEXFER_ATTR_PERMISSIONS;
            attrs.size = size;
            attrs.permissions = mode;
            // SAFETY: live session, NUL-terminated path, valid attributes.
            if unsafe { ffi::sftp_setstat(self.sftp, path.as_ptr(), &mut attrs) } != ffi::SSH_OK {
                let e = format!("setstat failed: {}", self.error());
                // SAFETY: as above; best effort.
                unsafe {
                    ffi::sftp_close(file);
                    if ffi::sftp_unlink(self.sftp, path.as_ptr()) != ffi::SSH_OK {
                        abi::debug(&format!("unlink failed: {}", self.error()));
                    }
                }
                return Err(e);
            }
        }
        // Later connections open the file as it is.
        *pending = false;
        Ok(file)
    }

    fn size(&self) -> Res<i64> {
        // SAFETY: an open file.
        let attrs = self.bounded(|| unsafe { ffi::sftp_fstat(self.file) });
        if attrs.is_null() {
            return Err(format!("fstat failed: {}", self.error()));
        }
        // SAFETY: non-NULL attributes from libssh, freed right after.
        let size = unsafe { (*attrs).size };
        // SAFETY: as above.
        unsafe { ffi::sftp_attributes_free(attrs) };
        i64::try_from(size).map_err(|_| format!("remote file size too large: {size}"))
    }

    fn seek(&self, offset: u64) -> Res<()> {
        // SAFETY: an open file; only sets the handle's position.
        if unsafe { ffi::sftp_seek64(self.file, offset) } != ffi::SSH_OK {
            return Err(format!("seek64 failed: {}", self.error()));
        }
        Ok(())
    }

    /// Read `buf` from `offset`: up to [`READ_WINDOW`] SFTP reads in
    /// flight, then any part a short answer left out read synchronously.
    fn pread(&self, buf: &mut [u8], offset: u64) -> Res<()> {
        self.seek(offset)?;
        let total = buf.len();
        let base = buf.as_mut_ptr();
        let mut next = 0usize;
        let mut pending: VecDeque<(u32, usize, u32)> = VecDeque::new();
        let mut short: Vec<(usize, usize)> = Vec::new();
        let mut err: Option<String> = None;
        loop {
            while err.is_none() && pending.len() < READ_WINDOW && next < total {
                let len = (total - next).min(READ_CHUNK as usize) as u32;
                // SAFETY: an open file; sends a read at its position.
                let id = self.bounded(|| unsafe { ffi::sftp_async_read_begin(self.file, len) });
                if id < 0 {
                    err = Some(format!("read failed: {} ({id})", self.error()));
                    break;
                }
                pending.push_back((id as u32, next, len));
                next += len as usize;
            }
            let Some((id, start, len)) = pending.pop_front() else {
                break;
            };
            // SAFETY: `start + len <= total`: the bytes are inside `buf`.
            let r = self.bounded(|| unsafe {
                ffi::sftp_async_read(self.file, base.add(start).cast(), len, id)
            });
            if err.is_some() {
                continue; // collecting the answers still in flight
            }
            if r < 0 {
                err = Some(format!("read failed: {} ({r})", self.error()));
            } else if (r as u32) < len {
                short.push((start + r as usize, start + len as usize));
            }
        }
        if let Some(e) = err {
            return Err(e);
        }
        for (mut at, end) in short {
            self.seek(offset + at as u64)?;
            while at < end {
                // SAFETY: `at..end` is inside `buf`.
                let r = self.bounded(|| unsafe {
                    ffi::sftp_read(self.file, base.add(at).cast(), end - at)
                });
                if r < 0 {
                    return Err(format!("read failed: {} ({r})", self.error()));
                }
                if r == 0 {
                    return Err(format!(
                        "read failed: unexpected end of file at offset {}",
                        offset + at as u64
                    ));
                }
                at += r as usize;
            }
        }
        Ok(())
    }

    fn pwrite(&self, buf: &[u8], offset: u64) -> Res<()> {
        self.seek(offset)?;
        for chunk in buf.chunks(WRITE_CHUNK) {
            let mut at = 0;
            while at < chunk.len() {
                let rest = &chunk[at..];
                // SAFETY: an open file; `rest` is valid for its length.
                let r = self.bounded(|| unsafe {
                    ffi::sftp_write(self.file, rest.as_ptr().cast(), rest.len())
                });
                if r < 0 {
                    return Err(format!("write failed: {} ({r})", self.error()));
                }
                if r == 0 {
                    return Err("write failed: the server wrote nothing".into());
                }
                at += r as usize;
            }
        }
        Ok(())
    }

    fn can_fsync(&self) -> bool {
        // The extension OpenSSH has had since 6.5; other servers may lack it.
        // SAFETY: an initialised SFTP session; NUL-terminated strings.
        let r = unsafe {
            ffi::sftp_extension_supported(self.sftp, c"fsync@openssh.com".as_ptr(), c"1".as_ptr())
        };
        r != 0
    }

    fn flush(&self) -> Res<()> {
        // SSH_AGAIN only comes from a non-blocking session; bounded anyway.
        for _ in 0..1000 {
            // SAFETY: an open file.
            let r = self.bounded(|| unsafe { ffi::sftp_fsync(self.file) });
            if r == ffi::SSH_OK {
                return Ok(());
            }
            if r != ffi::SSH_AGAIN {
                break;
            }
        }
        Err(format!("fsync failed: {}", self.error()))
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        // Closing talks to the server too: keep the watchdog until done.
        if !self.file.is_null() {
            // SAFETY: an open file, closed once.
            let r = self.bounded(|| unsafe { ffi::sftp_close(self.file) });
            if r != ffi::SSH_OK {
                abi::error(&format!("cannot close file: {}", self.error()));
            }
        }
        if !self.sftp.is_null() {
            // SAFETY: freed once, its file already closed.
            self.bounded(|| unsafe { ffi::sftp_free(self.sftp) });
        }
        // SAFETY: the session, disconnected and freed once; the watchdog
        // thread is stopped before the socket is closed by ssh_free.
        self.bounded(|| unsafe { ffi::ssh_disconnect(self.session) });
        self.watchdog = None;
        // SAFETY: as above.
        unsafe { ffi::ssh_free(self.session) };
    }
}

// ---------------------------------------------------------------------------
// The C ABI callbacks

/// The connection's handle behind the server's pointer.
///
/// # Safety
/// `h` came from [`ssh_open`] and is not yet closed.
unsafe fn handle<'a>(h: H) -> &'a Handle {
    // SAFETY: the caller's contract.
    unsafe { &*(h as *const Handle) }
}

/// Report a failed request: one error line, EIO.
fn fail(e: String) -> c_int {
    abi::error(&e);
    abi::set_error(libc::EIO);
    -1
}

unsafe extern "C" fn ssh_open(readonly: c_int) -> H {
    guard("open", core::ptr::null_mut(), || {
        match Handle::open(readonly != 0) {
            Ok(h) => Box::into_raw(h).cast(),
            Err(e) => {
                abi::error(&e);
                core::ptr::null_mut()
            }
        }
    })
}

unsafe extern "C" fn ssh_close(h: H) {
    guard("close", (), || {
        // SAFETY: the server closes each handle from ssh_open once.
        drop(unsafe { Box::from_raw(h as *mut Handle) });
    })
}

unsafe extern "C" fn ssh_get_size(h: H) -> i64 {
    // SAFETY: a live handle.
    guard("get_size", -1, || match unsafe { handle(h) }.size() {
        Ok(s) => s,
        Err(e) => fail(e).into(),
    })
}

unsafe extern "C" fn ssh_can_flush(h: H) -> c_int {
    // SAFETY: a live handle.
    guard("can_flush", -1, || {
        c_int::from(unsafe { handle(h) }.can_fsync())
    })
}

/// OpenSSH's sftp-server makes what one connection flushed visible to the
/// others, so multi-conn is as safe as flush is (the fsync extension is
/// the sign of that server).
unsafe extern "C" fn ssh_can_multi_conn(h: H) -> c_int {
    // SAFETY: a live handle.
    guard("can_multi_conn", -1, || {
        c_int::from(unsafe { handle(h) }.can_fsync())
    })
}

unsafe extern "C" fn ssh_pread(
    h: H,
    buf: *mut c_void,
    count: u32,
    offset: u64,
    _flags: u32,
) -> c_int {
    guard("pread", -1, || {
        // SAFETY: the server's buffer of `count` bytes.
        let b = unsafe { core::slice::from_raw_parts_mut(buf.cast::<u8>(), count as usize) };
        // SAFETY: a live handle.
        match unsafe { handle(h) }.pread(b, offset) {
            Ok(()) => 0,
            Err(e) => fail(e),
        }
    })
}

unsafe extern "C" fn ssh_pwrite(
    h: H,
    buf: *const c_void,
    count: u32,
    offset: u64,
    _flags: u32,
) -> c_int {
    guard("pwrite", -1, || {
        // SAFETY: the server's buffer of `count` bytes.
        let b = unsafe { core::slice::from_raw_parts(buf.cast::<u8>(), count as usize) };
        // SAFETY: a live handle.
        match unsafe { handle(h) }.pwrite(b, offset) {
            Ok(()) => 0,
            Err(e) => fail(e),
        }
    })
}

unsafe extern "C" fn ssh_flush(h: H, _flags: u32) -> c_int {
    // SAFETY: a live handle.
    guard("flush", -1, || match unsafe { handle(h) }.flush() {
        Ok(()) => 0,
        Err(e) => fail(e),
    })
}

static PLUGIN: abi::Registration = abi::Registration(abi::Plugin {
    // An SFTP file handle has one position: one request at a time on each
    // connection.
    thread_model: abi::THREAD_MODEL_SERIALIZE_REQUESTS,
    name: c"ssh".as_ptr(),
    unload: Some(ssh_unload),
    config: Some(ssh_config_cb),
    config_complete: Some(ssh_config_complete),
    config_help: CONFIG_HELP.as_ptr(),
    open: Some(ssh_open),
    close: Some(ssh_close),
    get_size: Some(ssh_get_size),
    can_flush: Some(ssh_can_flush),
    pread: Some(ssh_pread),
    pwrite: Some(ssh_pwrite),
    flush: Some(ssh_flush),
    magic_config_key: c"path".as_ptr(),
    can_multi_conn: Some(ssh_can_multi_conn),
    ..abi::Plugin::EMPTY
});

/// The registration function the server calls when it loads this object.
#[no_mangle]
pub extern "C" fn plugin_init() -> *const c_void {
    PLUGIN.as_ptr()
}
