//! The few S3 operations the plugin needs (HEAD, ranged GET, PUT, DELETE,
//! ListObjectsV2), as blocking HTTP(S) requests (`ureq`) signed with AWS
//! Signature Version 4 (`aws-sigv4`).
//!
//! Every network wait has a limit (connect, and each read and write of the
//! connection), a failed request is retried a bounded number of times, and
//! a body shorter or longer than asked for is an error: a request never
//! waits forever on a dead server.

use core::time::Duration;
use std::io::Read;
use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    sign, PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
    UriPathNormalizationMode,
};
use aws_sigv4::sign::v4;

use crate::config::Keys;

/// Attempts of one operation when the server fails or goes away.
const ATTEMPTS: u32 = 3;

/// How a request failed.
#[derive(Debug)]
pub(crate) enum Error {
    /// The server answered with an error status (and S3's error code).
    Status {
        status: u16,
        code: String,
        message: String,
    },
    /// No answer: connection refused or reset, a timeout, a TLS failure.
    Transport(String),
    /// An answer that does not make sense (a short or oversized body).
    Protocol(String),
}

impl Error {
    fn retryable(&self) -> bool {
        match self {
            Error::Status { status, .. } => matches!(status, 500 | 502 | 503 | 504 | 429),
            Error::Transport(_) | Error::Protocol(_) => true,
        }
    }
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Error::Status {
                status,
                code,
                message,
            } => {
                write!(f, "HTTP status {status}")?;
                if !code.is_empty() {
                    write!(f, ": {code}")?;
                }
                if !message.is_empty() {
                    write!(f, ": {message}")?;
                }
                Ok(())
            }
            Error::Transport(m) | Error::Protocol(m) => f.write_str(m),
        }
    }
}

/// An S3 bucket on one endpoint.
pub(crate) struct Client {
    agent: ureq::Agent,
    /// `scheme://host[:port]`
    origin: String,
    /// The path to the bucket: `/BUCKET` (path style) or empty (virtual host).
    bucket_path: String,
    bucket: String,
    region: String,
    creds: Option<Credentials>,
}

/// Percent-encode `s` as SigV4 wants: everything but the unreserved
/// characters (and `/` when `keep_slash`).
pub(crate) fn encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The text of every `<tag>...</tag>` element of `xml`, unescaped.
pub(crate) fn xml_values(xml: &str, tag: &str) -> Vec<String> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find(&open) {
        rest = &rest[i + open.len()..];
        let Some(j) = rest.find(&close) else { break };
        out.push(unescape(&rest[..j]));
        rest = &rest[j + close.len()..];
    }
    out
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        let Some(j) = rest.find(';') else { break };
        let ent = &rest[1..j];
        let c = match ent {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => ent
                .strip_prefix("#x")
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .or_else(|| ent.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        };
        match c {
            Some(c) => {
                out.push(c);
                rest = &rest[j + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Whether a bucket name can be a DNS label (virtual-host addressing).
fn dns_compatible(bucket: &str) -> bool {
    (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !bucket.starts_with('-')
        && !bucket.ends_with('-')
}

type Resp = http::Response<ureq::Body>;

impl Client {
    /// A client of `bucket`. With an `endpoint` (Ceph, MinIO, ...) the bucket
    /// is addressed in the path; on AWS it is the host name when it can be.
    pub(crate) fn new(
        endpoint: Option<&str>,
        bucket: &str,
        region: &str,
        keys: Option<Keys>,
        timeout: Duration,
    ) -> Result<Client, String> {
        let (origin, bucket_path) = match endpoint {
            Some(e) => {
                let e = e.trim_end_matches('/');
                let scheme_end = e
                    .find("://")
                    .filter(|_| e.starts_with("http://") || e.starts_with("https://"))
                    .ok_or_else(|| {
                        format!("endpoint-url '{e}' must start with http:// or https://")
                    })?;
                if e[scheme_end + 3..].is_empty() {
                    return Err(format!("endpoint-url '{e}' has no host"));
                }
                (e.to_string(), format!("/{}", encode(bucket, false)))
            }
            None if dns_compatible(bucket) => (
                format!("https://{bucket}.s3.{region}.amazonaws.com"),
                String::new(),
            ),
            None => (
                format!("https://s3.{region}.amazonaws.com"),
                format!("/{}", encode(bucket, false)),
            ),
        };
        // Check the URL once here, so a bad one is a configuration error.
        format!("{origin}/")
            .parse::<http::Uri>()
            .map_err(|e| format!("endpoint-url '{origin}': {e}"))?;
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_resolve(Some(timeout))
            .timeout_connect(Some(timeout))
            .timeout_per_read(Some(timeout))
            .timeout_per_write(Some(timeout))
            .user_agent(concat!("nbdkit-S3-plugin/", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent();
        let creds = keys
            .map(|k| Credentials::new(k.access_key, k.secret_key, k.session_token, None, "nbdkit"));
        Ok(Client {
            agent,
            origin,
            bucket_path,
            bucket: bucket.to_string(),
            region: region.to_string(),
            creds,
        })
    }

    /// `s3://bucket/key`, for messages.
    pub(crate) fn name(&self, key: &str) -> String {
        format!("s3://{}/{}", self.bucket, key)
    }

    /// Send one request: `path_query` is the encoded path below the bucket
    /// (`/key` or `/?list-type=2...`).
    fn send(
        &self,
        method: &str,
        path_query: &str,
        headers: &[(&str, String)],
        body: &[u8],
    ) -> Result<Resp, Error> {
        let url = format!("{}{}{}", self.origin, self.bucket_path, path_query);
        let mut all: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| ((*k).to_string(), v.clone()))
            .collect();
        if let Some(creds) = &self.creds {
            let identity = creds.clone().into();
            let mut settings = SigningSettings::default();
            settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
            settings.percent_encoding_mode = PercentEncodingMode::Single;
            settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
            let params = v4::SigningParams::builder()
                .identity(&identity)
                .region(&self.region)
                .name("s3")
                .time(SystemTime::now())
                .settings(settings)
                .build()
                .map_err(|e| Error::Protocol(format!("cannot sign the request: {e}")))?
                .into();
            let signable = SignableRequest::new(
                method,
                url.as_str(),
                headers.iter().map(|(k, v)| (*k, v.as_str())),
                SignableBody::Bytes(body),
            )
            .map_err(|e| Error::Protocol(format!("cannot sign the request: {e}")))?;
            let (instructions, _) = sign(signable, &params)
                .map_err(|e| Error::Protocol(format!("cannot sign the request: {e}")))?
                .into_parts();
            for (k, v) in instructions.headers() {
                all.push((k.to_string(), v.to_string()));
            }
        }
        let r = match method {
            "GET" | "HEAD" | "DELETE" => {
                let mut b = match method {
                    "GET" => self.agent.get(&url),
                    "HEAD" => self.agent.head(&url),
                    _ => self.agent.delete(&url),
                };
                for (k, v) in &all {
                    b = b.header(k, v);
                }
                b.call()
            }
            _ => {
                let mut b = self.agent.put(&url);
                for (k, v) in &all {
                    b = b.header(k, v);
                }
                b.send(body)
            }
        };
        r.map_err(|e| match e {
            ureq::Error::Timeout(t) => Error::Transport(format!("timed out ({t})")),
            e => Error::Transport(e.to_string()),
        })
    }

    /// The error of a response with a failing status: S3's code and
    /// message from its XML body, when it has one.
    fn status_error(mut r: Resp) -> Error {
        let status = r.status().as_u16();
        let body = r
            .body_mut()
            .with_config()
            .limit(64 * 1024)
            .read_to_string()
            .unwrap_or_default();
        let code = xml_values(&body, "Code").into_iter().next();
        let message = xml_values(&body, "Message").into_iter().next();
        Error::Status {
            status,
            code: code.unwrap_or_else(|| {
                r.status()
                    .canonical_reason()
                    .unwrap_or_default()
                    .to_string()
            }),
            message: message.unwrap_or_default(),
        }
    }

    /// Run `op` until it succeeds, fails for good, or runs out of attempts.
    fn retry<T>(&self, what: &str, mut op: impl FnMut() -> Result<T, Error>) -> Result<T, Error> {
        let mut attempt = 1;
        loop {
            match op() {
                Err(e) if e.retryable() && attempt < ATTEMPTS => {
                    nbdkit_plugin_abi::debug(&format!(
                        "{what}: {e} (attempt {attempt} of {ATTEMPTS})"
                    ));
                    std::thread::sleep(Duration::from_millis(200 << attempt));
                    attempt += 1;
                }
                r => return r,
            }
        }
    }

    /// The size of object `key`.
    pub(crate) fn size(&self, key: &str) -> Result<u64, Error> {
        let path = format!("/{}", encode(key, true));
        self.retry("HEAD", || {
            let r = self.send("HEAD", &path, &[], &[])?;
            if r.status().is_success() {
                return r
                    .headers()
                    .get("content-length")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| {
                        Error::Protocol("HEAD: no Content-Length in the answer".into())
                    });
            }
            if r.status().is_client_error() {
                // A HEAD answer has no body: ask again to learn why.
                let g = self.send("GET", &path, &[("range", "bytes=0-0".into())], &[])?;
                if !g.status().is_success() {
                    return Err(Client::status_error(g));
                }
            }
            Err(Client::status_error(r))
        })
    }

    /// Read `buf.len()` bytes of `key` from `offset`. `Ok(false)`: there
    /// is no such object (the caller reads it as zeroes).
    pub(crate) fn get(&self, key: &str, offset: u64, buf: &mut [u8]) -> Result<bool, Error> {
        if buf.is_empty() {
            return Ok(true);
        }
        let path = format!("/{}", encode(key, true));
        let range = format!("bytes={}-{}", offset, offset + buf.len() as u64 - 1);
        self.retry("GET", || {
            let mut r = self.send("GET", &path, &[("range", range.clone())], &[])?;
            let status = r.status().as_u16();
            if status == 404 {
                let e = Client::status_error(r);
                return match &e {
                    Error::Status { code, .. } if code == "NoSuchKey" => Ok(false),
                    _ => Err(e),
                };
            }
            if status != 206 && !(status == 200 && offset == 0) {
                return Err(Client::status_error(r));
            }
            if let Some(len) = r
                .headers()
                .get("content-length")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
            {
                if len < buf.len() as u64 {
                    return Err(Error::Protocol(format!(
                        "GET {range}: the server sent {len} bytes instead of {}",
                        buf.len()
                    )));
                }
                if status == 206 && len > buf.len() as u64 {
                    return Err(Error::Protocol(format!(
                        "GET {range}: the server sent {len} bytes, more than the {} asked for",
                        buf.len()
                    )));
                }
            }
            let mut reader = r.body_mut().as_reader();
            let mut done = 0;
            while done < buf.len() {
                match reader.read(&mut buf[done..]) {
                    Ok(0) => {
                        return Err(Error::Protocol(format!(
                            "GET {range}: the answer ended after {done} of {} bytes",
                            buf.len()
                        )))
                    }
                    Ok(n) => done += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        return Err(Error::Transport(format!(
                            "GET {range}: reading the answer after {done} bytes: {e}"
                        )))
                    }
                }
            }
            // A whole-object answer (200) may go on; a range answer may not.
            if status == 206 {
                let mut extra = [0u8; 1];
                match reader.read(&mut extra) {
                    Ok(0) => {}
                    Ok(_) => {
                        return Err(Error::Protocol(format!(
                            "GET {range}: the server sent more than the {} bytes asked for",
                            buf.len()
                        )))
                    }
                    Err(e) => {
                        return Err(Error::Transport(format!(
                            "GET {range}: reading the end of the answer: {e}"
                        )))
                    }
                }
            }
            Ok(true)
        })
    }

    /// Store `data` as object `key`.
    pub(crate) fn put(&self, key: &str, data: &[u8]) -> Result<(), Error> {
        let path = format!("/{}", encode(key, true));
        self.retry("PUT", || {
            let r = self.send("PUT", &path, &[], data)?;
            if r.status().is_success() {
                Ok(())
            } else {
                Err(Client::status_error(r))
            }
        })
    }

    /// Delete object `key` (no error when there is none).
    pub(crate) fn delete(&self, key: &str) -> Result<(), Error> {
        let path = format!("/{}", encode(key, true));
        self.retry("DELETE", || {
            let r = self.send("DELETE", &path, &[], &[])?;
            if r.status().is_success() {
                return Ok(());
            }
            let e = Client::status_error(r);
            match &e {
                Error::Status { code, .. } if code == "NoSuchKey" => Ok(()),
                _ => Err(e),
            }
        })
    }

    /// One page of the keys under `prefix` after `start_after`, and the
    /// token of the next page.
    pub(crate) fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        token: Option<&str>,
        max_keys: u32,
    ) -> Result<(Vec<String>, Option<String>), Error> {
        // The query parameters in the order SigV4 sorts them.
        let mut q = Vec::new();
        if let Some(t) = token {
            q.push(format!("continuation-token={}", encode(t, false)));
        }
        q.push("list-type=2".to_string());
        q.push(format!("max-keys={max_keys}"));
        q.push(format!("prefix={}", encode(prefix, false)));
        if let Some(s) = start_after {
            q.push(format!("start-after={}", encode(s, false)));
        }
        let path = format!("/?{}", q.join("&"));
        self.retry("LIST", || {
            let mut r = self.send("GET", &path, &[], &[])?;
            if !r.status().is_success() {
                return Err(Client::status_error(r));
            }
            let body = r
                .body_mut()
                .with_config()
                .limit(64 * 1024 * 1024)
                .read_to_string()
                .map_err(|e| Error::Transport(format!("reading the list of objects: {e}")))?;
            if !body.contains("<ListBucketResult") {
                return Err(Error::Protocol(
                    "the answer to a list of objects is not a ListBucketResult".into(),
                ));
            }
            let keys = xml_values(&body, "Key");
            let truncated = xml_values(&body, "IsTruncated")
                .first()
                .is_some_and(|t| t == "true");
            let next = if truncated {
                xml_values(&body, "NextContinuationToken")
                    .into_iter()
                    .next()
            } else {
                None
            };
            Ok((keys, next))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml() {
        let x = "<R><Key>a&amp;b</Key><Key>c&#x2F;d</Key><IsTruncated>false</IsTruncated></R>";
        assert_eq!(xml_values(x, "Key"), ["a&b", "c/d"]);
        assert_eq!(xml_values(x, "IsTruncated"), ["false"]);
    }

    #[test]
    fn encoding() {
        assert_eq!(encode("a b/c~", true), "a%20b/c~");
        assert_eq!(encode("a/b", false), "a%2Fb");
    }
}
