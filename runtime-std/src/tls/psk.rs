//! TLS with pre-shared keys (`--tls-psk`, and the nbd plugin's `tls-psk`)
//! on OpenSSL, loaded with `dlopen` only when a PSK file is used.
//!
//! rustls has no external PSKs, and linking OpenSSL into the binary mapped
//! libssl and libcrypto (about 1.7 MB resident) into every nbdkit process.
//! Here `libssl.so.3` is opened at run time and the few functions the PSK
//! path needs are looked up by name.
//!
//! Each connection's `SSL` talks to a BIO pair: OpenSSL reads and writes
//! records in the pair's buffers, and [`PskStream`] moves them between
//! those buffers and the async stream without an extra copy (`BIO_nread0`
//! / `BIO_nwrite0` give pointers into the pair's ring buffers).

use core::ffi::{c_char, c_int, c_long, c_uint, c_ulong, c_void, CStr};
use core::mem::MaybeUninit;
use core::pin::Pin;
use core::task::{ready, Context, Poll};
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The library opened (it pulls in libcrypto): OpenSSL 3's soname on
/// Linux, then FreeBSD's base system's.
const LIBSSL: &[&str] = &["libssl.so.3", "libssl.so.30"];

/// An opaque OpenSSL object (`SSL_CTX`, `SSL`, `BIO`, `SSL_METHOD`, ...).
type Obj = *mut c_void;

type ServerCallback = unsafe extern "C" fn(Obj, *const c_char, *mut u8, c_uint) -> c_uint;
type ClientCallback =
    unsafe extern "C" fn(Obj, *const c_char, *mut c_char, c_uint, *mut u8, c_uint) -> c_uint;

macro_rules! api {
    ($($name:ident: fn($($arg:ty),*) $(-> $ret:ty)?;)*) => {
        /// The OpenSSL functions used, looked up in libssl.so.3 (and,
        /// through it, libcrypto.so.3).
        #[allow(non_snake_case)]
        struct Api {
            $($name: unsafe extern "C" fn($($arg),*) $(-> $ret)?,)*
            /// Never closed: OpenSSL keeps process-wide state.
            _lib: libloading::Library,
        }

        impl Api {
            fn load(path: &str) -> Result<Api, String> {
                // SAFETY: libssl's initialisers are safe to run at any
                // time, and each symbol is declared with its C prototype
                // (OpenSSL 3.0's ssl.h, bio.h, err.h).
                unsafe {
                    let lib = libloading::Library::new(path).map_err(|e| e.to_string())?;
                    Ok(Api {
                        $($name: *lib
                            .get::<unsafe extern "C" fn($($arg),*) $(-> $ret)?>(
                                concat!(stringify!($name), "\0").as_bytes(),
                            )
                            .map_err(|e| e.to_string())?,)*
                        _lib: lib,
                    })
                }
            }
        }
    };
}

api! {
    TLS_server_method: fn() -> Obj;
    TLS_client_method: fn() -> Obj;
    SSL_CTX_new: fn(Obj) -> Obj;
    SSL_CTX_free: fn(Obj);
    SSL_CTX_ctrl: fn(Obj, c_int, c_long, *mut c_void) -> c_long;
    SSL_CTX_set_options: fn(Obj, u64) -> u64;
    SSL_CTX_set_cipher_list: fn(Obj, *const c_char) -> c_int;
    SSL_CTX_set_ciphersuites: fn(Obj, *const c_char) -> c_int;
    SSL_CTX_set_psk_server_callback: fn(Obj, Option<ServerCallback>);
    SSL_CTX_set_psk_client_callback: fn(Obj, Option<ClientCallback>);
    SSL_new: fn(Obj) -> Obj;
    SSL_free: fn(Obj);
    SSL_set_bio: fn(Obj, Obj, Obj);
    SSL_set_accept_state: fn(Obj);
    SSL_set_connect_state: fn(Obj);
    SSL_set_ex_data: fn(Obj, c_int, *mut c_void) -> c_int;
    SSL_get_ex_data: fn(Obj, c_int) -> *mut c_void;
    SSL_do_handshake: fn(Obj) -> c_int;
    SSL_read_ex: fn(Obj, *mut u8, usize, *mut usize) -> c_int;
    SSL_write_ex: fn(Obj, *const u8, usize, *mut usize) -> c_int;
    SSL_shutdown: fn(Obj) -> c_int;
    SSL_get_error: fn(Obj, c_int) -> c_int;
    SSL_get_version: fn(Obj) -> *const c_char;
    SSL_get_current_cipher: fn(Obj) -> Obj;
    SSL_CIPHER_get_name: fn(Obj) -> *const c_char;
    BIO_new_bio_pair: fn(*mut Obj, usize, *mut Obj, usize) -> c_int;
    BIO_free: fn(Obj) -> c_int;
    BIO_ctrl: fn(Obj, c_int, c_long, *mut c_void) -> c_long;
    BIO_nread0: fn(Obj, *mut *mut c_char) -> c_int;
    BIO_nread: fn(Obj, *mut *mut c_char, c_int) -> c_int;
    BIO_nwrite0: fn(Obj, *mut *mut c_char) -> c_int;
    BIO_nwrite: fn(Obj, *mut *mut c_char, c_int) -> c_int;
    ERR_get_error: fn() -> c_ulong;
    ERR_error_string_n: fn(c_ulong, *mut c_char, usize);
    ERR_clear_error: fn();
}

// ssl.h, bio.h and tls1.h constants (OpenSSL 3.0).
const SSL_CTRL_MODE: c_int = 33;
const SSL_CTRL_SET_MIN_PROTO_VERSION: c_int = 123;
const TLS1_2_VERSION: c_long = 0x0303;
const SSL_MODE_ENABLE_PARTIAL_WRITE: c_long = 1;
const SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER: c_long = 2;
const SSL_MODE_AUTO_RETRY: c_long = 4;
const SSL_OP_NO_TICKET: u64 = 1 << 14;
const SSL_OP_NO_COMPRESSION: u64 = 1 << 17;
const SSL_OP_CIPHER_SERVER_PREFERENCE: u64 = 1 << 22;
const SSL_OP_PRIORITIZE_CHACHA: u64 = 1 << 21;
const SSL_ERROR_WANT_READ: c_int = 2;
const SSL_ERROR_WANT_WRITE: c_int = 3;
const SSL_ERROR_SYSCALL: c_int = 5;
const SSL_ERROR_ZERO_RETURN: c_int = 6;
const BIO_CTRL_PENDING: c_int = 10;
const BIO_C_GET_WRITE_GUARANTEE: c_int = 140;
/// `SSL_set_app_data`'s index.
const APP_DATA: c_int = 0;

/// The TLS 1.2 cipher suites (forward secret ones first).
const CIPHERS: &CStr =
    c"ECDHE-PSK+AESGCM:ECDHE-PSK+CHACHA20:PSK+AESGCM:PSK+CHACHA20:ECDHE-PSK:PSK:!NULL:!3DES";

/// The TLS 1.3 cipher suites, most preferred first. An external PSK (from
/// the PSK callbacks) is bound to SHA-256, so only the SHA-256 suites can
/// be negotiated with it: OpenSSL's default order puts ChaCha20-Poly1305
/// before AES-128-GCM, and AES-GCM with AES instructions costs both ends a
/// fraction of ChaCha20's CPU (GnuTLS, libnbd's TLS, does ChaCha20 at a
/// seventh of its AES-128-GCM speed). A client that lists ChaCha20 first
/// (one without AES instructions) still gets it: see
/// `SSL_OP_PRIORITIZE_CHACHA`.
const CIPHERSUITES: &CStr =
    c"TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_256_GCM_SHA384";

/// The size of each of a connection's two BIO pair buffers: four full TLS
/// records, so that a large reply goes out in few system calls.
const BIO_BUFFER: usize = 64 * 1024;

/// OpenSSL, loaded on first use. The error is one line.
fn api() -> Result<&'static Api, String> {
    static API: OnceLock<Result<Api, String>> = OnceLock::new();
    API.get_or_init(|| {
        let mut first = None;
        for name in LIBSSL {
            match load_api(name) {
                Ok(a) => return Ok(a),
                Err(e) => {
                    first.get_or_insert(e);
                }
            }
        }
        Err(first.unwrap_or_default())
    })
    .as_ref()
    .map_err(Clone::clone)
}

fn load_api(path: &str) -> Result<Api, String> {
    Api::load(path).map_err(|e| {
        format!("TLS with pre-shared keys needs OpenSSL 3 ({e}; Debian's libssl3 package)")
    })
}

/// OpenSSL's queued errors, as one line (empty when there are none).
fn error_queue(api: &Api) -> String {
    let mut parts = Vec::new();
    loop {
        // SAFETY: no arguments; reads this thread's error queue.
        let code = unsafe { (api.ERR_get_error)() };
        if code == 0 {
            break;
        }
        let mut buf = [0 as c_char; 256];
        // SAFETY: the buffer and its length; the result is NUL-terminated.
        let s = unsafe {
            (api.ERR_error_string_n)(code, buf.as_mut_ptr(), buf.len());
            CStr::from_ptr(buf.as_ptr())
        };
        parts.push(s.to_string_lossy().into_owned());
    }
    parts.join("; ")
}

fn setup_error(api: &Api, what: &str) -> String {
    match error_queue(api) {
        e if e.is_empty() => format!("TLS (PSK): {what} failed"),
        e => format!("TLS (PSK): {e}"),
    }
}

/// What the PSK callbacks of one connection see (its `SSL`'s app data).
struct Session {
    /// Server: the PSK file, read for each handshake.
    file: Option<Arc<PathBuf>>,
    /// Client: the identity and key offered.
    client: Option<Arc<(Vec<u8>, Vec<u8>)>>,
    /// Server: the identity the client was accepted with.
    username: Option<String>,
}

/// A configured `SSL_CTX` for servers or clients; shared by connections.
pub(super) struct PskContext {
    api: &'static Api,
    ctx: Obj,
    file: Option<Arc<PathBuf>>,
    client: Option<Arc<(Vec<u8>, Vec<u8>)>>,
}

// SAFETY: an SSL_CTX is safe to share between threads once configured
// (SSL_new only reads it, under OpenSSL's own locks).
unsafe impl Send for PskContext {}
// SAFETY: as above.
unsafe impl Sync for PskContext {}

impl Drop for PskContext {
    fn drop(&mut self) {
        // SAFETY: ctx came from SSL_CTX_new; SSLs hold their own reference.
        unsafe { (self.api.SSL_CTX_free)(self.ctx) }
    }
}

impl PskContext {
    fn new(server: bool) -> Result<PskContext, String> {
        let api = api()?;
        // SAFETY: plain OpenSSL calls on the context created here.
        unsafe {
            (api.ERR_clear_error)();
            let method = if server {
                (api.TLS_server_method)()
            } else {
                (api.TLS_client_method)()
            };
            let ctx = (api.SSL_CTX_new)(method);
            if ctx.is_null() {
                return Err(setup_error(api, "SSL_CTX_new"));
            }
            let c = PskContext {
                api,
                ctx,
                file: None,
                client: None,
            };
            if (api.SSL_CTX_ctrl)(ctx, SSL_CTRL_SET_MIN_PROTO_VERSION, TLS1_2_VERSION, null()) != 1
            {
                return Err(setup_error(api, "setting TLS 1.2 as the minimum"));
            }
            (api.SSL_CTX_ctrl)(
                ctx,
                SSL_CTRL_MODE,
                SSL_MODE_ENABLE_PARTIAL_WRITE
                    | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER
                    | SSL_MODE_AUTO_RETRY,
                null(),
            );
            let mut opts = SSL_OP_NO_COMPRESSION;
            if server {
                opts |=
                    SSL_OP_NO_TICKET | SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_PRIORITIZE_CHACHA;
            }
            (api.SSL_CTX_set_options)(ctx, opts);
            if (api.SSL_CTX_set_cipher_list)(ctx, CIPHERS.as_ptr()) != 1 {
                return Err(setup_error(api, "setting the PSK cipher suites"));
            }
            if (api.SSL_CTX_set_ciphersuites)(ctx, CIPHERSUITES.as_ptr()) != 1 {
                return Err(setup_error(api, "setting the TLS 1.3 cipher suites"));
            }
            Ok(c)
        }
    }

    /// A server context looking identities up in `file`.
    pub(super) fn server(file: PathBuf) -> Result<PskContext, String> {
        let mut c = PskContext::new(true)?;
        // SAFETY: a callback with the prototype OpenSSL expects.
        unsafe { (c.api.SSL_CTX_set_psk_server_callback)(c.ctx, Some(server_callback)) };
        c.file = Some(Arc::new(file));
        Ok(c)
    }

    /// A client context offering `identity` with `key`.
    pub(super) fn client(identity: Vec<u8>, key: Vec<u8>) -> Result<PskContext, String> {
        let mut c = PskContext::new(false)?;
        // SAFETY: a callback with the prototype OpenSSL expects.
        unsafe { (c.api.SSL_CTX_set_psk_client_callback)(c.ctx, Some(client_callback)) };
        c.client = Some(Arc::new((identity, key)));
        Ok(c)
    }

    /// Run a handshake on `stream`, as the server or the client of this
    /// context.
    pub(super) async fn handshake<S>(&self, stream: S) -> io::Result<PskStream<S>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut s = PskStream::new(self, stream)?;
        core::future::poll_fn(|cx| s.poll_handshake(cx)).await?;
        Ok(s)
    }
}

fn null() -> *mut c_void {
    core::ptr::null_mut()
}

/// The session of `ssl` (its app data), if any.
///
/// # Safety
/// `ssl` is a live SSL of this module, called from inside one of its
/// OpenSSL calls (the stream is not otherwise touched meanwhile).
unsafe fn session<'a>(ssl: Obj) -> Option<&'a mut Session> {
    let api = api().ok()?;
    // SAFETY: the app data is the Box<Session> PskStream::new set.
    unsafe { ((api.SSL_get_ex_data)(ssl, APP_DATA) as *mut Session).as_mut() }
}

/// OpenSSL's server PSK callback: the key of `identity` (0: unknown).
unsafe extern "C" fn server_callback(
    ssl: Obj,
    identity: *const c_char,
    psk: *mut u8,
    max_psk_len: c_uint,
) -> c_uint {
    std::panic::catch_unwind(|| {
        // SAFETY: called by OpenSSL during a handshake of our SSL.
        let session = unsafe { session(ssl) }?;
        if identity.is_null() {
            return None;
        }
        // SAFETY: OpenSSL passes a NUL-terminated identity.
        let id = unsafe { CStr::from_ptr(identity) }.to_bytes();
        let key = super::psk_lookup(session.file.as_ref()?, id)?;
        if key.is_empty() || key.len() > max_psk_len as usize {
            return None;
        }
        // SAFETY: psk has room for max_psk_len bytes.
        unsafe { core::ptr::copy_nonoverlapping(key.as_ptr(), psk, key.len()) };
        session.username = Some(String::from_utf8_lossy(id).into_owned());
        Some(key.len() as c_uint)
    })
    .ok()
    .flatten()
    .unwrap_or(0)
}

/// OpenSSL's client PSK callback: our identity and key (0: none).
unsafe extern "C" fn client_callback(
    ssl: Obj,
    _hint: *const c_char,
    identity: *mut c_char,
    max_identity_len: c_uint,
    psk: *mut u8,
    max_psk_len: c_uint,
) -> c_uint {
    std::panic::catch_unwind(|| {
        // SAFETY: called by OpenSSL during a handshake of our SSL.
        let session = unsafe { session(ssl) }?;
        let (id, key) = &**session.client.as_ref()?;
        if id.len() >= max_identity_len as usize || key.len() > max_psk_len as usize {
            return None;
        }
        // SAFETY: both buffers are as large as OpenSSL says; the identity
        // is NUL-terminated.
        unsafe {
            core::ptr::copy_nonoverlapping(id.as_ptr(), identity as *mut u8, id.len());
            *identity.add(id.len()) = 0;
            core::ptr::copy_nonoverlapping(key.as_ptr(), psk, key.len());
        }
        Some(key.len() as c_uint)
    })
    .ok()
    .flatten()
    .unwrap_or(0)
}

/// What one OpenSSL call came to.
enum Step {
    Done(usize),
    WantRead,
    WantWrite,
    /// The peer sent close_notify.
    Closed,
    Failed(io::Error),
}

/// Which side of a connection drives OpenSSL (see `PskStream::poll_drive`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Handshake,
    Read,
    Write,
}

/// A TLS-PSK connection over `S`.
pub(crate) struct PskStream<S> {
    api: &'static Api,
    ssl: Obj,
    /// Our end of the BIO pair (the SSL holds the other).
    net: Obj,
    session: *mut Session,
    stream: S,
    /// The stream has returned end of file.
    eof: bool,
    /// close_notify has been queued.
    shut: bool,
}

// SAFETY: the SSL, its BIOs and the session belong to this stream alone
// and are only used through `&mut self` (or read-only through `&self`).
unsafe impl<S: Send> Send for PskStream<S> {}
// SAFETY: `&self` methods only read the negotiated parameters.
unsafe impl<S: Sync> Sync for PskStream<S> {}

impl<S> Drop for PskStream<S> {
    fn drop(&mut self) {
        // SAFETY: created in PskStream::new; SSL_free also frees the
        // SSL's end of the pair, then ours is freed, then the session the
        // SSL pointed to.
        unsafe {
            (self.api.SSL_free)(self.ssl);
            (self.api.BIO_free)(self.net);
            drop(Box::from_raw(self.session));
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> PskStream<S> {
    fn new(ctx: &PskContext, stream: S) -> io::Result<PskStream<S>> {
        let api = ctx.api;
        // SAFETY: plain OpenSSL calls; every object is owned by the
        // returned stream (or freed here on failure).
        unsafe {
            (api.ERR_clear_error)();
            let ssl = (api.SSL_new)(ctx.ctx);
            if ssl.is_null() {
                return Err(io::Error::other(setup_error(api, "SSL_new")));
            }
            let (mut inner, mut net) = (null(), null());
            if (api.BIO_new_bio_pair)(&mut inner, BIO_BUFFER, &mut net, BIO_BUFFER) != 1 {
                (api.SSL_free)(ssl);
                return Err(io::Error::other(setup_error(api, "BIO_new_bio_pair")));
            }
            (api.SSL_set_bio)(ssl, inner, inner);
            let session = Box::into_raw(Box::new(Session {
                file: ctx.file.clone(),
                client: ctx.client.clone(),
                username: None,
            }));
            (api.SSL_set_ex_data)(ssl, APP_DATA, session as *mut c_void);
            if ctx.file.is_some() {
                (api.SSL_set_accept_state)(ssl);
            } else {
                (api.SSL_set_connect_state)(ssl);
            }
            Ok(PskStream {
                api,
                ssl,
                net,
                session,
                stream,
                eof: false,
                shut: false,
            })
        }
    }

    /// One OpenSSL call `f(ssl, &mut count)` and what it came to.
    fn step(&mut self, f: impl FnOnce(&Api, Obj, &mut usize) -> c_int) -> Step {
        let api = self.api;
        let mut n = 0;
        // SAFETY: clears this thread's error queue, so that what follows
        // is about this call only.
        unsafe { (api.ERR_clear_error)() };
        let r = f(api, self.ssl, &mut n);
        if r > 0 {
            return Step::Done(n);
        }
        // SAFETY: ssl is live; r is the result of the call just made.
        match unsafe { (api.SSL_get_error)(self.ssl, r) } {
            SSL_ERROR_WANT_READ => Step::WantRead,
            SSL_ERROR_WANT_WRITE => Step::WantWrite,
            SSL_ERROR_ZERO_RETURN => Step::Closed,
            e => {
                let q = error_queue(api);
                Step::Failed(io::Error::other(if !q.is_empty() {
                    q
                } else if e == SSL_ERROR_SYSCALL || self.eof {
                    "TLS: the peer closed the connection".to_string()
                } else {
                    format!("TLS: OpenSSL error {e}")
                }))
            }
        }
    }

    /// Send what OpenSSL has written into the BIO pair.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let api = self.api;
        loop {
            // SAFETY: net is our live end of the pair.
            if unsafe { (api.BIO_ctrl)(self.net, BIO_CTRL_PENDING, 0, null()) } <= 0 {
                return Poll::Ready(Ok(()));
            }
            let mut p = core::ptr::null_mut();
            // SAFETY: p is set to n readable bytes in the pair's buffer.
            let n = unsafe { (api.BIO_nread0)(self.net, &mut p) };
            if n <= 0 {
                return Poll::Ready(Ok(()));
            }
            // SAFETY: as above; the buffer is not touched until BIO_nread.
            let data = unsafe { core::slice::from_raw_parts(p as *const u8, n as usize) };
            let w = ready!(Pin::new(&mut self.stream).poll_write(cx, data))?;
            if w == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            // SAFETY: consumes the w bytes just sent (w <= n).
            unsafe { (api.BIO_nread)(self.net, &mut p, w as c_int) };
        }
    }

    /// Receive bytes from the stream into the BIO pair for OpenSSL (at
    /// end of file, set `eof`).
    fn poll_receive(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let api = self.api;
        let mut p = core::ptr::null_mut();
        // SAFETY: net is our live end of the pair; p is set to n writable
        // bytes of its buffer.
        let n = unsafe {
            if (api.BIO_ctrl)(self.net, BIO_C_GET_WRITE_GUARANTEE, 0, null()) <= 0 {
                0
            } else {
                (api.BIO_nwrite0)(self.net, &mut p)
            }
        };
        if n <= 0 {
            return Poll::Ready(Err(io::Error::other("TLS: input buffer full")));
        }
        // SAFETY: n writable (possibly uninitialised) bytes at p.
        let space =
            unsafe { core::slice::from_raw_parts_mut(p as *mut MaybeUninit<u8>, n as usize) };
        let mut buf = ReadBuf::uninit(space);
        ready!(Pin::new(&mut self.stream).poll_read(cx, &mut buf))?;
        let got = buf.filled().len();
        if got == 0 {
            self.eof = true;
        } else {
            // SAFETY: commits the got bytes just written at p.
            unsafe { (api.BIO_nwrite)(self.net, &mut p, got as c_int) };
        }
        Poll::Ready(Ok(()))
    }

    /// Drive `f` until it completes. `Ok(None)`: the connection was closed
    /// (close_notify, or end of file where OpenSSL wanted more).
    ///
    /// A stream registers one waker for reading and one for writing, and
    /// after the handshake the two directions are polled by different
    /// tasks (the halves of `tokio::io::split`): a read must not wait to
    /// send nor a write to receive, or it would take the other task's
    /// wake-up. So `Role::Read` leaves what OpenSSL queued to send to the
    /// next write or flush, and `Role::Write` fails where OpenSSL would
    /// need to receive (TLS 1.2 renegotiation, which nbdkit's clients do
    /// not use). The handshake runs in one task and does both.
    fn poll_drive(
        &mut self,
        cx: &mut Context<'_>,
        role: Role,
        mut f: impl FnMut(&Api, Obj, &mut usize) -> c_int,
    ) -> Poll<io::Result<Option<usize>>> {
        loop {
            match self.step(&mut f) {
                Step::Done(n) => return Poll::Ready(Ok(Some(n))),
                Step::Closed => return Poll::Ready(Ok(None)),
                Step::Failed(e) => return Poll::Ready(Err(e)),
                Step::WantWrite if role == Role::Read => {
                    return Poll::Ready(Err(io::Error::other(
                        "TLS: OpenSSL cannot read before it has written",
                    )))
                }
                Step::WantWrite => ready!(self.poll_send(cx))?,
                Step::WantRead if role == Role::Write => {
                    return Poll::Ready(Err(io::Error::other(
                        "TLS: renegotiation is not supported",
                    )))
                }
                Step::WantRead => {
                    if role == Role::Handshake {
                        ready!(self.poll_send(cx))?;
                    }
                    if self.eof {
                        return Poll::Ready(Ok(None));
                    }
                    ready!(self.poll_receive(cx))?;
                }
            }
        }
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // SAFETY: ssl is live.
        let done = ready!(self.poll_drive(cx, Role::Handshake, |api, ssl, _| unsafe {
            (api.SSL_do_handshake)(ssl)
        }))?;
        if done.is_none() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "TLS: the peer closed the connection during the handshake",
            )));
        }
        // The last flight (and any session ticket) must reach the peer.
        self.poll_send(cx)
    }
}

impl<S> PskStream<S> {
    /// The protocol version and cipher suite negotiated.
    pub(super) fn version_and_cipher(&self) -> (String, String) {
        let s = |p: *const c_char| {
            if p.is_null() {
                "unknown".to_string()
            } else {
                // SAFETY: OpenSSL returns static NUL-terminated names.
                unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
            }
        };
        // SAFETY: read-only queries of a live SSL.
        unsafe {
            let version = s((self.api.SSL_get_version)(self.ssl));
            let cipher = (self.api.SSL_get_current_cipher)(self.ssl);
            let cipher = if cipher.is_null() {
                "unknown".to_string()
            } else {
                s((self.api.SSL_CIPHER_get_name)(cipher))
            };
            (version, cipher)
        }
    }

    /// The identity a server accepted the client with.
    pub(super) fn username(&self) -> Option<&str> {
        // SAFETY: the session lives as long as self; the callback that
        // writes it only runs inside `&mut self` calls.
        unsafe { (*self.session).username.as_deref() }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for PskStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // Each SSL_read returns at most one record (16 KiB): take in what
        // has already arrived, up to the caller's space, in one call.
        let start = buf.filled().len();
        loop {
            // SAFETY: OpenSSL only writes to the space (never reads it), so
            // it need not be initialised (zeroing a large payload's buffer
            // before each record cost as much as decrypting it).
            let space = unsafe { buf.unfilled_mut() };
            if space.is_empty() {
                return Poll::Ready(Ok(()));
            }
            let (p, len) = (space.as_mut_ptr() as *mut u8, space.len());
            let got = if buf.filled().len() == start {
                // SAFETY: OpenSSL writes at most len bytes at p.
                ready!(this.poll_drive(cx, Role::Read, |api, ssl, n| unsafe {
                    (api.SSL_read_ex)(ssl, p, len, n)
                }))?
            } else {
                // More only if OpenSSL has it without waiting.
                // SAFETY: as above.
                match this.step(|api, ssl, n| unsafe { (api.SSL_read_ex)(ssl, p, len, n) }) {
                    Step::Done(n) => Some(n),
                    _ => return Poll::Ready(Ok(())),
                }
            };
            let Some(n) = got.filter(|&n| n > 0) else {
                return Poll::Ready(Ok(()));
            };
            // SAFETY: OpenSSL wrote n bytes at p.
            unsafe { buf.assume_init(n) };
            buf.advance(n);
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for PskStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        // SAFETY: OpenSSL reads at most data.len() bytes of data.
        let n = ready!(this.poll_drive(cx, Role::Write, |api, ssl, n| unsafe {
            (api.SSL_write_ex)(ssl, data.as_ptr(), data.len(), n)
        }))?;
        let Some(n) = n else {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        };
        // Start sending now; what the stream does not take yet is sent by
        // the next write or flush.
        if let Poll::Ready(Err(e)) = this.poll_send(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.shut {
            this.shut = true;
            // SAFETY: queues close_notify into the pair (0: sent, the
            // peer's not yet received; either way nothing to wait for).
            unsafe {
                (this.api.ERR_clear_error)();
                (this.api.SSL_shutdown)(this.ssl);
                (this.api.ERR_clear_error)();
            }
        }
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_library_is_one_line_naming_the_package() {
        let e = load_api("libssl-does-not-exist.so.3")
            .err()
            .expect("loaded?");
        assert!(!e.contains('\n'), "{e}");
        assert!(e.contains("libssl3"), "{e}");
        assert!(e.contains("libssl-does-not-exist.so.3"), "{e}");
    }

    /// A server and a client of this module agree on a key over a socket
    /// pair, and refuse a wrong one.
    #[test]
    fn handshake_and_data() {
        if api().is_err() {
            println!("SKIP: libssl.so.3 is not installed");
            return;
        }
        let dir = std::env::temp_dir().join(format!("nbdkit-psk-ossl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("keys.psk");
        std::fs::write(&f, "alice:0102030405060708\n").unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let server = PskContext::server(f.clone()).unwrap();
            let good = PskContext::client(b"alice".to_vec(), vec![1, 2, 3, 4, 5, 6, 7, 8]).unwrap();
            let (a, b) = tokio::io::duplex(4096);
            let (s, c) = tokio::join!(server.handshake(a), good.handshake(b));
            let (mut s, mut c) = (s.unwrap(), c.unwrap());
            assert_eq!(s.username(), Some("alice"));
            let big: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
            let big2 = big.clone();
            let w = async move {
                c.write_all(&big2).await.unwrap();
                c.flush().await.unwrap();
                c.shutdown().await.unwrap();
            };
            let r = async move {
                let mut got = Vec::new();
                s.read_to_end(&mut got).await.unwrap();
                got
            };
            let ((), got) = tokio::join!(w, r);
            assert!(got == big, "data differs");

            let bad = PskContext::client(b"alice".to_vec(), vec![9; 8]).unwrap();
            let (a, b) = tokio::io::duplex(4096);
            let (s, c) = tokio::join!(server.handshake(a), bad.handshake(b));
            assert!(s.is_err() && c.is_err());
        });
        let _ = std::fs::remove_dir_all(&dir);
    }
}
