//! TLS for NBD connections (`--tls`, `--tls-certificates`, `--tls-psk`,
//! `--tls-verify-peer`), started by NBD_OPT_STARTTLS.
//!
//! X.509 certificates are served with rustls. rustls has no external
//! pre-shared keys, so `--tls-psk` is served with OpenSSL (TLS 1.2 PSK
//! cipher suites and TLS 1.3 external PSKs through the server PSK
//! callback), loaded at run time only then ([`psk`]). Either way a
//! connection sees one [`TlsStream`].

mod cert;
mod psk;
mod record;

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use nbdkit_core::handshake::TlsMode;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::log;
use crate::readbuf::PooledBufReader;

/// The certificate authority (also checks client certificates).
const CA_CERT: &str = "ca-cert.pem";
/// The server certificate (chain).
const SERVER_CERT: &str = "server-cert.pem";
/// The server private key.
const SERVER_KEY: &str = "server-key.pem";
/// The optional certificate revocation list.
const CA_CRL: &str = "ca-crl.pem";

/// Where nbdkit looks for certificates when run as root without
/// `--tls-certificates` (`root_tls_certificates_dir` in `--dump-config`).
pub const ROOT_CERTIFICATES_DIR: &str = "/etc/pki/nbdkit";

static DEBUG_SESSION: AtomicBool = AtomicBool::new(false);

/// `-D nbdkit.tls.session=N`: print the details of each TLS session.
pub fn set_debug_session(on: bool) {
    DEBUG_SESSION.store(on, Ordering::Relaxed);
}

/// The TLS credentials of a server: cheap to clone, shared by every
/// connection.
#[derive(Clone)]
pub struct Tls {
    kind: Arc<Kind>,
}

enum Kind {
    X509(Arc<rustls::ServerConfig>),
    Psk(psk::PskContext),
}

impl core::fmt::Debug for Tls {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match &*self.kind {
            Kind::X509(_) => f.write_str("Tls(X.509)"),
            Kind::Psk(_) => f.write_str("Tls(PSK)"),
        }
    }
}

/// Why credentials could not be had.
enum LoadError {
    /// The certificate files are not there: TLS is turned off, with a
    /// warning (`--tls=on`) or an error (`--tls=require`).
    Missing(String),
    /// They are there but unusable: always an error.
    Invalid(String),
}

/// Decide the TLS mode from the command line, and load the credentials.
///
/// `tls` is the `--tls` value (`None` when absent; the caller has already
/// rejected values other than off, on and require). Like nbdkit:
/// - `--tls=off` ignores every other TLS option;
/// - `--tls-psk FILE` overrides certificates; an unreadable or invalid
///   file is an error;
/// - certificates come from `--tls-certificates DIR`, else from
///   `$HOME/.pki/nbdkit` then `$HOME/.config/pki/nbdkit` (non-root), or
///   `/etc/pki/nbdkit` (root);
/// - without `--tls`, TLS is on when credentials are found and off
///   (silently) when they are not; `--tls=on` without certificates warns
///   and turns TLS off; `--tls=require` without them is an error;
/// - certificate files that are present but invalid are always an error.
///
/// The error is one line, for `nbdkit: error: ...`.
pub fn configure(
    tls: Option<&str>,
    certificates: Option<&str>,
    psk: Option<&str>,
    verify_peer: bool,
) -> Result<(TlsMode, Option<Tls>), String> {
    let mode = match tls {
        Some("off") => return Ok((TlsMode::Off, None)),
        Some("require") => TlsMode::Require,
        _ => TlsMode::On,
    };
    let loaded = match psk {
        Some(file) => load_psk(Path::new(file)).map(|t| (t, "Pre-Shared Keys (PSK)")),
        None => load_x509(certificates, verify_peer).map(|t| (t, "X.509 certificates")),
    };
    match loaded {
        Ok((t, what)) => {
            log::debug(None, format_args!("TLS enabled using: {what}"));
            Ok((mode, Some(t)))
        }
        Err(LoadError::Invalid(e)) => Err(e),
        Err(LoadError::Missing(why)) => {
            let hint = "set --tls-certificates=/path/to/certificates or read the \"TLS\" section in nbdkit-tls(1)";
            match tls {
                Some("require") => Err(format!(
                    "--tls=require but could not load TLS certificates: {why} ({hint})"
                )),
                Some(_) => {
                    eprintln!(
                        "nbdkit: warning: --tls=on but could not load TLS certificates: {why}: TLS is disabled and TLS connections will be rejected ({hint})"
                    );
                    Ok((TlsMode::Off, None))
                }
                None => {
                    log::debug(
                        None,
                        format_args!("TLS disabled: could not load TLS certificates: {why}"),
                    );
                    Ok((TlsMode::Off, None))
                }
            }
        }
    }
}

/// The directories searched for certificates, in order.
fn certificate_dirs(certificates: Option<&str>) -> Vec<PathBuf> {
    if let Some(d) = certificates {
        return vec![PathBuf::from(d)];
    }
    if nix::unistd::geteuid().is_root() {
        return vec![PathBuf::from(ROOT_CERTIFICATES_DIR)];
    }
    match std::env::var_os("HOME") {
        Some(home) => {
            let home = PathBuf::from(home);
            vec![home.join(".pki/nbdkit"), home.join(".config/pki/nbdkit")]
        }
        None => Vec::new(),
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn load_x509(certificates: Option<&str>, verify_peer: bool) -> Result<Tls, LoadError> {
    let dirs = certificate_dirs(certificates);
    let mut why = Vec::new();
    for dir in &dirs {
        let missing: Vec<&str> = [CA_CERT, SERVER_CERT, SERVER_KEY]
            .into_iter()
            .filter(|f| !readable(&dir.join(f)))
            .collect();
        if !missing.is_empty() {
            why.push(format!(
                "{}: {} not found",
                dir.display(),
                missing.join(", ")
            ));
            continue;
        }
        let acceptor = x509_acceptor(dir, verify_peer).map_err(LoadError::Invalid)?;
        log::debug(
            None,
            format_args!(
                "successfully loaded TLS certificates from {}",
                dir.display()
            ),
        );
        return Ok(Tls {
            kind: Arc::new(Kind::X509(acceptor)),
        });
    }
    if why.is_empty() {
        why.push("no certificate directory ($HOME is not set)".into());
    }
    Err(LoadError::Missing(why.join("; ")))
}

/// An I/O error without Rust's "(os error N)".
fn io_message(e: &io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

fn readable(p: &Path) -> bool {
    std::fs::File::open(p).is_ok()
}

fn pem_error(path: &Path, e: rustls::pki_types::pem::Error) -> String {
    match e {
        rustls::pki_types::pem::Error::Io(e) => format!("{}: {}", path.display(), io_message(&e)),
        rustls::pki_types::pem::Error::Base64Decode(d) => {
            format!("{}: base64 decoding error: {d}", path.display())
        }
        rustls::pki_types::pem::Error::MissingSectionEnd { .. } => {
            format!("{}: a PEM section has no END line", path.display())
        }
        rustls::pki_types::pem::Error::NoItemsFound => {
            format!("{}: nothing usable found in the file", path.display())
        }
        _ => format!("{}: invalid PEM data", path.display()),
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, e))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate found", path.display()));
    }
    Ok(certs)
}

fn x509_acceptor(dir: &Path, verify_peer: bool) -> Result<Arc<rustls::ServerConfig>, String> {
    let ca_path = dir.join(CA_CERT);
    let cert_path = dir.join(SERVER_CERT);
    let key_path = dir.join(SERVER_KEY);
    let crl_path = dir.join(CA_CRL);

    let mut roots = rustls::RootCertStore::empty();
    for c in read_certs(&ca_path)? {
        roots
            .add(c)
            .map_err(|e| format!("{}: {e}", ca_path.display()))?;
    }
    let chain = read_certs(&cert_path)?;
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            format!("{}: no PEM private key found", key_path.display())
        }
        e => pem_error(&key_path, e),
    })?;
    let crls = if crl_path.exists() {
        let v = CertificateRevocationListDer::pem_file_iter(&crl_path)
            .map_err(|e| pem_error(&crl_path, e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pem_error(&crl_path, e))?;
        if v.is_empty() {
            return Err(format!(
                "{}: no PEM certificate revocation list found",
                crl_path.display()
            ));
        }
        v
    } else {
        Vec::new()
    };

    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let builder = if verify_peer {
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider(),
        )
        .with_crls(crls)
        .only_check_end_entity_revocation()
        .allow_unknown_revocation_status()
        .build()
        .map_err(|e| format!("{}: {e}", ca_path.display()))?;
        builder.with_client_cert_verifier(verifier)
    } else {
        // Client certificates are neither requested nor checked, but the
        // CA and CRL files must still be valid.
        builder.with_no_client_auth()
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| {
        let why = match e {
            rustls::Error::InconsistentKeys(_) => "the certificate and the key do not match".into(),
            e => e.to_string(),
        };
        format!(
            "loading server certificate and key ({}, {}): {why}",
            cert_path.display(),
            key_path.display()
        )
    })?;
    // Records are sealed and opened by [`record`] once the handshake is
    // over.
    config.enable_secret_extraction = true;
    Ok(Arc::new(config))
}

/// One `username:hexkey` line of a PSK file.
fn parse_psk_line(line: &str) -> Result<Option<(&str, Vec<u8>)>, String> {
    let line = line.trim_end_matches('\r');
    if line.is_empty() {
        return Ok(None);
    }
    let Some((user, hex)) = line.rsplit_once(':') else {
        return Err("expected username:hexkey".into());
    };
    if user.is_empty() {
        return Err("empty username".into());
    }
    if hex.is_empty() || hex.len() % 2 != 0 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "the key of {user} is not an even number of hex digits"
        ));
    }
    let key = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap_or(0))
        .collect::<Vec<u8>>();
    if key.len() > MAX_PSK_LEN {
        return Err(format!(
            "the key of {user} is longer than {MAX_PSK_LEN} bytes"
        ));
    }
    Ok(Some((user, key)))
}

/// OpenSSL's PSK_MAX_PSK_LEN.
const MAX_PSK_LEN: usize = 512;

/// Look `identity` up in the PSK file (read afresh for every handshake, so
/// that keys can be added or revoked while the server runs).
fn psk_lookup(file: &Path, identity: &[u8]) -> Option<Vec<u8>> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines()
        .filter_map(|l| parse_psk_line(l).ok().flatten())
        .find(|(u, _)| u.as_bytes() == identity)
        .map(|(_, k)| k)
}

fn load_psk(file: &Path) -> Result<Tls, LoadError> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| LoadError::Invalid(format!("{}: {}", file.display(), io_message(&e))))?;
    for (n, line) in text.lines().enumerate() {
        parse_psk_line(line)
            .map_err(|e| LoadError::Invalid(format!("{}: line {}: {e}", file.display(), n + 1)))?;
    }
    let ctx = psk::PskContext::server(file.to_path_buf())
        .map_err(|e| LoadError::Invalid(format!("--tls-psk: {e}")))?;
    Ok(Tls {
        kind: Arc::new(Kind::Psk(ctx)),
    })
}

impl Tls {
    /// Run the server side of the TLS handshake on `stream` (the client
    /// has just been sent STARTTLS's ACK).
    pub(crate) async fn accept<S>(&self, name: &str, stream: S) -> io::Result<TlsStream<S>>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        log::debug(Some(name), format_args!("starting TLS handshake"));
        let debug = DEBUG_SESSION.load(Ordering::Relaxed) && log::verbose();
        let s = match &*self.kind {
            Kind::X509(config) => {
                let s = record::accept(config.clone(), stream, |c| {
                    log::debug(Some(name), format_args!("TLS handshake completed"));
                    if debug {
                        debug_rustls(name, c);
                    }
                })
                .await?;
                TlsStream::Records(Box::new(s))
            }
            Kind::Psk(ctx) => {
                let s = TlsStream::Psk(Box::new(ctx.handshake(stream).await?));
                log::debug(Some(name), format_args!("TLS handshake completed"));
                if debug {
                    s.debug_session(name);
                }
                s
            }
        };
        Ok(s)
    }
}

/// A TLS connection over a stream: a client's (server side) or a remote
/// server's (client side, for the nbd plugin).
pub(crate) enum TlsStream<S> {
    /// X.509, server side: rustls for the handshake, then records sealed
    /// and opened in the connection's own buffers ([`record`]).
    Records(Box<record::Stream<S>>),
    /// X.509, client side. rustls asks for at most 4 KiB at a time, so a
    /// 16 KiB record took four reads from the socket: the socket is read
    /// through a pooled buffer, which an idle connection does not hold.
    Rustls(Box<tokio_rustls::TlsStream<PooledBufReader<S>>>),
    /// PSK.
    Psk(Box<psk::PskStream<S>>),
}

pub(crate) use record::{ReadHalf as RecordReadHalf, WriteHalf as RecordWriteHalf};

/// `-D nbdkit.tls.session=1`: the details of an X.509 session.
fn debug_rustls(name: &str, c: &rustls::CommonState) {
    let d = |args: core::fmt::Arguments<'_>| log::debug(Some(name), args);
    let version = match c.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
        _ => "unknown",
    };
    let suite = c
        .negotiated_cipher_suite()
        .and_then(|s| s.suite().as_str())
        .unwrap_or("unknown");
    d(format_args!("TLS session: {version} {suite}"));
    if let Some(g) = c.negotiated_key_exchange_group() {
        d(format_args!("TLS: negotiated group: {:?}", g.name()));
    }
    d(format_args!("TLS: authentication: certificate"));
    match c.peer_certificates() {
        Some(certs) if !certs.is_empty() => {
            d(format_args!(
                "TLS: peer provided {} certificate(s)",
                certs.len()
            ));
            for cert in certs {
                d(format_args!("TLS: {}", cert::describe(cert)));
            }
        }
        _ => d(format_args!("TLS: no peer certificates found")),
    }
}

impl<S> TlsStream<S> {
    /// `-D nbdkit.tls.session=1`: the details of a PSK session (X.509
    /// sessions are described during their handshake).
    fn debug_session(&self, name: &str) {
        if let TlsStream::Psk(s) = self {
            let d = |args: core::fmt::Arguments<'_>| log::debug(Some(name), args);
            let (version, suite) = s.version_and_cipher();
            d(format_args!("TLS session: {version} {suite}"));
            d(format_args!("TLS: authentication: PSK (Pre-Shared Key)"));
            if let Some(user) = s.username() {
                d(format_args!("TLS: PSK username: {user}"));
            }
        }
    }

    /// The connection as separate reading and writing halves over the
    /// socket's halves, where the TLS state allows it (`Err`: it does not,
    /// and the stream is given back).
    pub(crate) fn split_records<R, W>(
        self,
        split: impl FnOnce(S) -> (R, W),
    ) -> Result<(record::ReadHalf<R>, record::WriteHalf<W>), Self> {
        match self {
            TlsStream::Records(s) => Ok(s.split(split)),
            other => Err(other),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            TlsStream::Records(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            TlsStream::Rustls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            TlsStream::Psk(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            TlsStream::Records(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            TlsStream::Rustls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            TlsStream::Psk(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            TlsStream::Records(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            TlsStream::Rustls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            TlsStream::Psk(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            TlsStream::Records(_) => true,
            TlsStream::Rustls(s) => s.is_write_vectored(),
            TlsStream::Psk(_) => false,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            TlsStream::Records(s) => Pin::new(s.as_mut()).poll_flush(cx),
            TlsStream::Rustls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            TlsStream::Psk(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            TlsStream::Records(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            TlsStream::Rustls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            TlsStream::Psk(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

// ---------------------------------------------------------------------------
// Client side: the nbd plugin's tls-* parameters
// ---------------------------------------------------------------------------

/// The client's certificate (optional) and key in a certificates directory,
/// named as libnbd names them.
const CLIENT_CERT: &str = "client-cert.pem";
/// The client's private key.
const CLIENT_KEY: &str = "client-key.pem";
/// The system's trusted CAs, used when no certificates directory is found
/// (as libnbd falls back to GnuTLS's system trust).
const SYSTEM_CAS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// How a client authenticates to a server.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// `tls-certificates=DIR`: the CA (and the client's certificate).
    pub certificates: Option<PathBuf>,
    /// `tls-verify=BOOL`: check the server's certificate (default true).
    pub verify: bool,
    /// `tls-username=NAME`: the PSK identity.
    pub username: Option<String>,
    /// `tls-psk=FILE`: use a pre-shared key instead of certificates.
    pub psk: Option<PathBuf>,
}

/// TLS credentials of a client: cheap to clone.
#[derive(Clone)]
pub struct TlsClient {
    kind: Arc<ClientKind>,
}

enum ClientKind {
    X509 {
        /// Checks the chain only (or nothing, with `tls-verify=false`).
        any_name: Arc<rustls::ClientConfig>,
        /// Checks the chain and the server's name (`tls-verify=true`).
        checked: Option<Arc<rustls::ClientConfig>>,
    },
    Psk(psk::PskContext),
}

impl core::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match &*self.kind {
            ClientKind::X509 { .. } => f.write_str("TlsClient(X.509)"),
            ClientKind::Psk(_) => f.write_str("TlsClient(PSK)"),
        }
    }
}

/// The directories libnbd searches for client certificates.
fn client_certificate_dirs() -> Vec<PathBuf> {
    if nix::unistd::geteuid().is_root() {
        return vec![PathBuf::from("/etc/pki/libnbd")];
    }
    match std::env::var_os("HOME") {
        Some(home) => {
            let home = PathBuf::from(home);
            vec![home.join(".pki/libnbd"), home.join(".config/pki/libnbd")]
        }
        None => Vec::new(),
    }
}

/// The client's check of a server certificate when no name is checked:
/// the chain against the roots whatever name it carries (`chain`; for
/// connections without a host name: Unix and vsock sockets, inherited
/// descriptors, where libnbd checks the chain only), or nothing at all
/// (`tls-verify=false`). The handshake's signatures are always checked.
#[derive(Debug)]
struct AnyName {
    chain: Option<Arc<rustls::client::WebPkiServerVerifier>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        use rustls::CertificateError::{NotValidForName, NotValidForNameContext};
        let Some(chain) = &self.chain else {
            return Ok(rustls::client::danger::ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                NotValidForName | NotValidForNameContext { .. },
            )) => Ok(rustls::client::danger::ServerCertVerified::assertion()),
            r => r,
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Load a client's credentials. Errors are one line, for
/// `nbdkit: error: ...`.
pub fn client(opts: &ClientOptions) -> Result<TlsClient, String> {
    if let Some(file) = &opts.psk {
        return client_psk(file, opts.username.as_deref());
    }
    let dir = match &opts.certificates {
        Some(d) => Some(d.clone()),
        None => client_certificate_dirs()
            .into_iter()
            .find(|d| readable(&d.join(CA_CERT))),
    };
    let mut roots = rustls::RootCertStore::empty();
    let ca_path = match &dir {
        Some(d) => d.join(CA_CERT),
        None => PathBuf::from(SYSTEM_CAS),
    };
    if opts.verify {
        for c in read_certs(&ca_path)? {
            roots
                .add(c)
                .map_err(|e| format!("{}: {e}", ca_path.display()))?;
        }
    }
    let crl_path = dir.as_ref().map(|d| d.join(CA_CRL));
    let crls = match crl_path.filter(|p| p.exists()) {
        Some(p) => CertificateRevocationListDer::pem_file_iter(&p)
            .map_err(|e| pem_error(&p, e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pem_error(&p, e))?,
        None => Vec::new(),
    };
    // The client's own certificate, when the directory has one.
    let mut auth = None;
    let cert = dir
        .as_ref()
        .map(|d| (d.join(CLIENT_CERT), d.join(CLIENT_KEY)));
    if let Some((cert_path, key_path)) = cert.filter(|(c, k)| readable(c) && readable(k)) {
        let chain = read_certs(&cert_path)?;
        let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| pem_error(&key_path, e))?;
        auth = Some((chain, key, cert_path, key_path));
    }
    let config = |verifier: Arc<dyn rustls::client::danger::ServerCertVerifier>| {
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let config = match &auth {
            Some((chain, key, cert_path, key_path)) => builder
                .with_client_auth_cert(chain.clone(), key.clone_key())
                .map_err(|e| {
                    format!(
                        "loading client certificate and key ({}, {}): {e}",
                        cert_path.display(),
                        key_path.display()
                    )
                })?,
            None => builder.with_no_client_auth(),
        };
        Ok::<_, String>(Arc::new(config))
    };
    let (any_name, checked) = if opts.verify {
        let v = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider(),
        )
        .with_crls(crls)
        .only_check_end_entity_revocation()
        .allow_unknown_revocation_status()
        .build()
        .map_err(|e| format!("{}: {e}", ca_path.display()))?;
        (
            config(Arc::new(AnyName {
                chain: Some(v.clone()),
                provider: provider(),
            }))?,
            Some(config(v)?),
        )
    } else {
        (
            config(Arc::new(AnyName {
                chain: None,
                provider: provider(),
            }))?,
            None,
        )
    };
    Ok(TlsClient {
        kind: Arc::new(ClientKind::X509 { any_name, checked }),
    })
}

/// The login name of the effective user: libnbd's default PSK identity.
fn login_name() -> Option<String> {
    nix::unistd::User::from_uid(nix::unistd::geteuid())
        .ok()
        .flatten()
        .map(|u| u.name)
}

fn client_psk(file: &Path, username: Option<&str>) -> Result<TlsClient, String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("{}: {}", file.display(), io_message(&e)))?;
    let user = match username {
        Some(u) => u.to_string(),
        None => login_name().ok_or("tls-psk: cannot find the user name (use tls-username)")?,
    };
    let mut key = None;
    for (n, line) in text.lines().enumerate() {
        match parse_psk_line(line) {
            Ok(Some((u, k))) if u == user => {
                key = Some(k);
                break;
            }
            Ok(_) => {}
            Err(e) => return Err(format!("{}: line {}: {e}", file.display(), n + 1)),
        }
    }
    let key = key.ok_or_else(|| format!("{}: no key for user {user}", file.display()))?;
    let ctx =
        psk::PskContext::client(user.into_bytes(), key).map_err(|e| format!("tls-psk: {e}"))?;
    Ok(TlsClient {
        kind: Arc::new(ClientKind::Psk(ctx)),
    })
}

impl TlsClient {
    /// Run the client side of the TLS handshake on `stream` (the server
    /// has just acknowledged STARTTLS). `hostname` is the name the
    /// server's certificate must carry; without one only its chain is
    /// checked.
    pub(crate) async fn connect<S>(
        &self,
        hostname: Option<&str>,
        stream: S,
    ) -> io::Result<TlsStream<S>>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        match &*self.kind {
            ClientKind::X509 { any_name, checked } => {
                let (config, name) = match (hostname, checked) {
                    (Some(h), Some(checked)) => {
                        let name = rustls::pki_types::ServerName::try_from(h.to_string())
                            .map_err(|e| io::Error::other(format!("{h}: {e}")))?;
                        (checked.clone(), name)
                    }
                    (Some(h), None) => (
                        any_name.clone(),
                        rustls::pki_types::ServerName::try_from(h.to_string())
                            .unwrap_or_else(|_| localhost()),
                    ),
                    (None, _) => (any_name.clone(), localhost()),
                };
                let c = tokio_rustls::TlsConnector::from(config);
                let s = c.connect(name, PooledBufReader::new(stream)).await?;
                Ok(TlsStream::Rustls(Box::new(
                    tokio_rustls::TlsStream::Client(s),
                )))
            }
            ClientKind::Psk(ctx) => Ok(TlsStream::Psk(Box::new(ctx.handshake(stream).await?))),
        }
    }
}

fn localhost() -> rustls::pki_types::ServerName<'static> {
    rustls::pki_types::ServerName::try_from("localhost").expect("valid DNS name")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psk_lines() {
        assert_eq!(
            parse_psk_line("alice:00ff10").unwrap(),
            Some(("alice", vec![0, 0xff, 0x10]))
        );
        assert_eq!(parse_psk_line("").unwrap(), None);
        assert_eq!(
            parse_psk_line("bob:AbCd\r").unwrap(),
            Some(("bob", vec![0xab, 0xcd]))
        );
        assert!(parse_psk_line("bogus").is_err());
        assert!(parse_psk_line("bob:zz").is_err());
        assert!(parse_psk_line("bob:abc").is_err());
        assert!(parse_psk_line(":abcd").is_err());
    }

    #[test]
    fn psk_file_lookup() {
        let dir = std::env::temp_dir().join(format!("nbdkit-psk-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("keys.psk");
        std::fs::write(&f, "alice:0102\nbob:ffee\n").unwrap();
        assert_eq!(psk_lookup(&f, b"bob"), Some(vec![0xff, 0xee]));
        assert_eq!(psk_lookup(&f, b"alice"), Some(vec![1, 2]));
        assert_eq!(psk_lookup(&f, b"mallory"), None);
        assert!(load_psk(&f).is_ok());
        std::fs::write(&f, "alice:0102\nnonsense\n").unwrap();
        match load_psk(&f) {
            Err(LoadError::Invalid(e)) => assert!(e.contains("line 2"), "{e}"),
            _ => panic!("invalid file accepted"),
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
