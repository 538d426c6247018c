//! NBD URIs (`nbd://`, `nbds://`, `nbd+unix://`, `nbds+unix://`,
//! `nbd+vsock://`, `nbds+vsock://`), parsed as libnbd's `nbd_connect_uri`
//! reads them: the authority names the TCP host and port or the vsock CID
//! and port (none for Unix sockets), the path is the export name
//! (percent-decoded, without its leading `/`), and the query may give
//! `socket=` (required for `+unix`), `tls-certificates=`, `tls-psk-file=`,
//! `tls-verify-peer=` and `tls-hostname=`; other query keys are ignored.
//! A user name before `@` is the TLS user name.

use std::path::PathBuf;

use super::Target;

/// A parsed URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Uri {
    /// Where to connect.
    pub(super) target: Target,
    /// The `nbds` schemes require TLS.
    pub(super) tls: bool,
    /// The export name.
    pub(super) export: String,
    /// `user@`.
    pub(super) username: Option<String>,
    /// `?tls-certificates=`.
    pub(super) tls_certificates: Option<PathBuf>,
    /// `?tls-psk-file=`.
    pub(super) tls_psk: Option<PathBuf>,
    /// `?tls-verify-peer=`.
    pub(super) tls_verify: Option<bool>,
    /// `?tls-hostname=`.
    pub(super) tls_hostname: Option<String>,
}

/// Decode `%XX` escapes.
fn percent_decode(s: &str, what: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("invalid percent-encoding in the {what}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("the {what} is not valid UTF-8"))
}

/// Parse `uri`; the error is one line for `nbdkit: error:`.
pub(super) fn parse(uri: &str) -> Result<Uri, String> {
    let fail = |why: &str| Err(format!("uri: {uri}: {why}"));
    let Some((scheme, rest)) = uri.split_once("://") else {
        return fail("not an NBD URI (expected nbd://, nbds://, nbd+unix://, ...)");
    };
    let (tls, transport) = match scheme.to_ascii_lowercase().as_str() {
        "nbd" => (false, "tcp"),
        "nbds" => (true, "tcp"),
        "nbd+unix" => (false, "unix"),
        "nbds+unix" => (true, "unix"),
        "nbd+vsock" => (false, "vsock"),
        "nbds+vsock" => (true, "vsock"),
        other => return fail(&format!("unknown NBD URI scheme: {other}")),
    };
    let (rest, _fragment) = rest.split_once('#').unwrap_or((rest, ""));
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let (username, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (
            Some(percent_decode(u, "user name").map_err(|e| format!("uri: {uri}: {e}"))?),
            h,
        ),
        None => (None, authority),
    };
    let export = percent_decode(path.strip_prefix('/').unwrap_or(path), "export name")
        .map_err(|e| format!("uri: {uri}: {e}"))?;
    let mut socket = None;
    let mut parsed = Uri {
        target: Target::Fd(-1),
        tls,
        export,
        username,
        tls_certificates: None,
        tls_psk: None,
        tls_verify: None,
        tls_hostname: None,
    };
    for kv in query.split('&').filter(|s| !s.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        let v = percent_decode(v, "query").map_err(|e| format!("uri: {uri}: {e}"))?;
        match k {
            "socket" => socket = Some(PathBuf::from(v)),
            "tls-certificates" => parsed.tls_certificates = Some(PathBuf::from(v)),
            "tls-psk-file" => parsed.tls_psk = Some(PathBuf::from(v)),
            "tls-verify-peer" => match nbdkit_core::size::parse_bool(&v) {
                Some(b) => parsed.tls_verify = Some(b),
                None => return fail(&format!("tls-verify-peer: not a boolean: {v}")),
            },
            "tls-hostname" => parsed.tls_hostname = Some(v),
            _ => {}
        }
    }
    // host[:port], where host may be a bracketed IPv6 address.
    let (host, port) = if let Some(h) = hostport.strip_prefix('[') {
        match h.split_once(']') {
            Some((h, "")) => (h, None),
            Some((h, p)) => match p.strip_prefix(':') {
                Some(p) => (h, Some(p)),
                None => return fail("malformed IPv6 address"),
            },
            None => return fail("malformed IPv6 address"),
        }
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    let port = port.filter(|p| !p.is_empty());
    parsed.target = match transport {
        "tcp" => {
            if socket.is_some() {
                return fail("socket= is only for nbd+unix:// URIs");
            }
            let host = if host.is_empty() { "localhost" } else { host };
            Target::Tcp {
                host: percent_decode(host, "host name").map_err(|e| format!("uri: {uri}: {e}"))?,
                port: port.unwrap_or("10809").to_string(),
            }
        }
        "unix" => {
            if !hostport.is_empty() {
                return fail("a nbd+unix:// URI has no server name or port");
            }
            match socket {
                Some(s) => Target::Unix(s),
                None => return fail("a nbd+unix:// URI needs ?socket=PATH"),
            }
        }
        _ => {
            if socket.is_some() {
                return fail("socket= is only for nbd+unix:// URIs");
            }
            // The hypervisor (CID 2) by default.
            let cid = if host.is_empty() {
                2
            } else {
                match host.parse::<u32>() {
                    Ok(c) => c,
                    Err(_) => return fail(&format!("vsock CID is not a number: {host}")),
                }
            };
            let port = match port.map(str::parse::<u32>) {
                None => 10809,
                Some(Ok(p)) => p,
                Some(Err(_)) => return fail("vsock port is not a 32-bit number"),
            };
            Target::Vsock { cid, port }
        }
    };
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_with_port_and_export() {
        let u = parse("nbd://example.com:1234/my%20disk").unwrap();
        assert_eq!(
            u.target,
            Target::Tcp {
                host: "example.com".into(),
                port: "1234".into()
            }
        );
        assert_eq!(u.export, "my disk");
        assert!(!u.tls);
        let u = parse("nbds://[::1]/").unwrap();
        assert_eq!(
            u.target,
            Target::Tcp {
                host: "::1".into(),
                port: "10809".into()
            }
        );
        assert!(u.tls && u.export.is_empty());
        // A second slash is part of the export name.
        assert_eq!(parse("nbd://h//abs").unwrap().export, "/abs");
        assert_eq!(parse("nbd://").unwrap().export, "");
    }

    #[test]
    fn unix_needs_a_socket_and_no_authority() {
        let u = parse("nbds+unix://alice@/foo?socket=/tmp/s&tls-certificates=certs").unwrap();
        assert_eq!(u.target, Target::Unix("/tmp/s".into()));
        assert_eq!(u.export, "foo");
        assert_eq!(u.username.as_deref(), Some("alice"));
        assert_eq!(u.tls_certificates, Some(PathBuf::from("certs")));
        assert!(parse("nbd+unix:///foo").is_err());
        assert!(parse("nbd+unix://host/?socket=/s").is_err());
    }

    #[test]
    fn vsock_defaults_to_the_host() {
        let u = parse("nbd+vsock:///").unwrap();
        assert_eq!(
            u.target,
            Target::Vsock {
                cid: 2,
                port: 10809
            }
        );
        let u = parse("nbd+vsock://3:4000/e").unwrap();
        assert_eq!(u.target, Target::Vsock { cid: 3, port: 4000 });
        assert!(parse("nbd+vsock://x/").is_err());
    }

    #[test]
    fn other_schemes_are_refused() {
        let e = parse("http://foo").unwrap_err();
        assert!(e.contains("unknown NBD URI scheme: http"), "{e}");
        assert!(parse("/just/a/path").is_err());
        assert!(parse("nbd://h/%zz").is_err());
    }
}
