//! The curl plugin (plugins/curl, `libnbdkit_curl_plugin.so` beside the
//! binary) against a real nginx that each test starts on loopback ports
//! with a temporary configuration (Debian's `nginx`), and against small
//! misbehaving servers of the test's own for the failures nginx cannot
//! show (a short body, a stall, a server that ignores ranges).
//!
//! Every test first checks that `nbdkit curl` loads the plugin built
//! beside the binary under test (not Debian's C plugin, which this server
//! could load too); build it with `cargo build -p nbdkit-curl-plugin`
//! (`--release` for target/release/nbdkit).
#![allow(clippy::std_instead_of_core)]

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use nbdkit_tests::*;

const MIB: usize = 1 << 20;

/// Check once that `nbdkit curl` is this project's plugin, built beside
/// the binary under test. Panics with the way to build it otherwise.
fn curl_plugin() {
    assert_plugin_built_beside("curl");
}

/// Whether nginx is installed (else the test prints SKIP and returns).
fn have_nginx() -> bool {
    curl_plugin();
    if Path::new("/usr/sbin/nginx").exists() {
        true
    } else {
        println!("SKIP: /usr/sbin/nginx is not installed (Debian package nginx)");
        false
    }
}

/// A free TCP port on loopback (bound, then released).
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

fn sh(cmd: &str) -> Output {
    run(Command::new("/bin/sh").args(["-c", cmd]), CMD_TIMEOUT)
}

// ---------------------------------------------------------------------------
// nginx
// ---------------------------------------------------------------------------

/// A test CA and a certificate for localhost, example.test and 127.0.0.1.
fn make_pki(dir: &Path) {
    let d = path_str(dir);
    let o = sh(&format!(
        "set -e; cd '{d}'
         openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 \
            -subj /CN=nbdkit-test-ca 2>/dev/null
         openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr \
            -subj /CN=localhost 2>/dev/null
         printf 'subjectAltName=DNS:localhost,DNS:example.test,IP:127.0.0.1\\n' > ext
         openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
            -out server.pem -days 2 -extfile ext 2>/dev/null"
    ));
    assert!(o.success(), "openssl: {}", o.describe());
}

/// nginx serving `www()` on a loopback port (and a Unix socket), with
/// `/auth/` behind basic auth (user `u`, password `secret`), `/norange/`
/// without range support, `/slow/` rate limited, `/redirect.img` a
/// redirect to `/disk.img`, PUT allowed under `/dav/`, an HTTPS server on
/// `tls_port` and a forward proxy on `proxy_port`.
struct Nginx {
    child: Child,
    dir: TempDir,
    port: u16,
    tls_port: u16,
    proxy_port: u16,
}

impl Nginx {
    fn start() -> Nginx {
        let dir = TempDir::new();
        for d in ["www/auth", "www/norange", "www/slow", "www/dav", "tmp"] {
            fs::create_dir_all(dir.join(d)).unwrap();
        }
        make_pki(dir.path());
        let o = sh("openssl passwd -apr1 secret");
        assert!(o.success(), "openssl passwd: {}", o.describe());
        fs::write(dir.join("htpasswd"), format!("u:{}", o.stdout)).unwrap();
        let mut last = String::new();
        for _ in 0..5 {
            let (port, tls_port, proxy_port) = (free_port(), free_port(), free_port());
            let d = path_str(dir.path());
            // SAFETY: geteuid has no preconditions.
            let user = if unsafe { libc::geteuid() } == 0 {
                "user root root;"
            } else {
                ""
            };
            let conf = format!(
                r#"{user}
worker_processes 2;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 256; }}
http {{
  log_format t '$server_protocol $request_method $uri $status range=[$http_range] crange=[$http_content_range] token=[$http_x_token] cookie=[$cookie_session] xurl=[$http_x_url] ua=[$http_user_agent] user=[$remote_user]';
  log_format p '$request_method host=[$host] $request_uri pauth=[$http_proxy_authorization]';
  access_log {d}/access.log t;
  client_body_temp_path {d}/tmp/body;
  proxy_temp_path {d}/tmp/proxy;
  fastcgi_temp_path {d}/tmp/fastcgi;
  uwsgi_temp_path {d}/tmp/uwsgi;
  scgi_temp_path {d}/tmp/scgi;
  default_type application/octet-stream;
  server {{
    listen 127.0.0.1:{port};
    listen unix:{d}/http.sock;
    root {d}/www;
    location /auth/ {{ auth_basic "test"; auth_basic_user_file {d}/htpasswd; }}
    location /norange/ {{ max_ranges 0; }}
    location /slow/ {{ limit_rate 2m; }}
    location /dav/ {{ dav_methods PUT; }}
    location = /redirect.img {{ return 302 /disk.img; }}
  }}
  server {{
    listen 127.0.0.1:{tls_port} ssl http2;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_certificate {d}/server.pem;
    ssl_certificate_key {d}/server.key;
    root {d}/www;
  }}
  server {{
    listen 127.0.0.1:{proxy_port};
    access_log {d}/proxy.log p;
    location / {{ proxy_pass http://127.0.0.1:{port}; }}
  }}
}}
"#
            );
            fs::write(dir.join("nginx.conf"), conf).unwrap();
            let log = fs::File::create(dir.join("stderr")).unwrap();
            let mut child = Command::new("/usr/sbin/nginx")
                .arg("-c")
                .arg(dir.join("nginx.conf"))
                .arg("-p")
                .arg(dir.path())
                .args(["-g", "daemon off;"])
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .process_group(0)
                .spawn()
                .expect("start nginx");
            let up = wait_until(START_TIMEOUT, || {
                matches!(child.try_wait(), Ok(Some(_)))
                    || [port, tls_port, proxy_port]
                        .iter()
                        .all(|p| TcpStream::connect(("127.0.0.1", *p)).is_ok())
            });
            if up && matches!(child.try_wait(), Ok(None)) {
                return Nginx {
                    child,
                    dir,
                    port,
                    tls_port,
                    proxy_port,
                };
            }
            let _ = child.kill();
            let _ = child.wait();
            last = format!(
                "{}{}",
                fs::read_to_string(dir.join("stderr")).unwrap_or_default(),
                fs::read_to_string(dir.join("error.log")).unwrap_or_default()
            );
        }
        panic!("nginx did not start: {last}");
    }

    fn www(&self) -> PathBuf {
        self.dir.join("www")
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/{path}", self.port)
    }

    fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("http.sock")
    }

    fn access_log(&self) -> String {
        fs::read_to_string(self.dir.join("access.log")).unwrap_or_default()
    }

    fn proxy_log(&self) -> String {
        fs::read_to_string(self.dir.join("proxy.log")).unwrap_or_default()
    }

    /// Kill nginx and its workers now (a server that dies).
    fn kill(&mut self) {
        let pgid = self.child.id() as libc::pid_t;
        // SAFETY: signals the process group of the nginx this test started.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let _ = wait_timeout(&mut self.child, STOP_TIMEOUT);
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let pid = self.child.id() as libc::pid_t;
        if matches!(self.child.try_wait(), Ok(None)) {
            // SAFETY: signals the nginx master this test started.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let _ = wait_timeout(&mut self.child, STOP_TIMEOUT);
        }
        // Workers left behind by a master that did not stop in time.
        // SAFETY: the process group of the nginx this test started.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
        let _ = self.child.try_wait();
    }
}

/// A file of `len` random bytes in nginx's `www/rel`.
fn serve(ng: &Nginx, rel: &str, len: usize, seed: u64) -> Vec<u8> {
    let p = ng.www().join(rel);
    let data = write_random_file(&p, len, seed);
    fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    data
}

// ---------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------

/// `python3-libnbd` reading `(offset, length)` pieces of `uri`: each piece
/// as hex, or `ERR ENAME` when the read fails.
fn read_pieces(uri: &str, pieces: &[(u64, u32)]) -> Vec<Result<Vec<u8>, String>> {
    let spec: Vec<String> = pieces.iter().map(|(o, l)| format!("{o}:{l}")).collect();
    let o = run_python_code(
        "import nbd, sys\n\
         h = nbd.NBD()\n\
         h.connect_uri(sys.argv[1])\n\
         for p in sys.argv[2:]:\n\
         \x20   o, l = map(int, p.split(':'))\n\
         \x20   try:\n\
         \x20       print(h.pread(l, o).hex())\n\
         \x20   except nbd.Error as e:\n\
         \x20       print('ERR', e.errno)\n\
         \x20   sys.stdout.flush()\n",
        std::iter::once(uri.to_string()).chain(spec),
    );
    assert!(o.success(), "python-libnbd client: {}", o.describe());
    o.stdout
        .lines()
        .map(|l| match l.strip_prefix("ERR ") {
            Some(e) => Err(e.trim().to_string()),
            None => Ok(hex_decode(l)),
        })
        .collect()
}

fn hex_decode(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

/// Each piece of `uri` equals the same piece of `want`.
fn assert_pieces(uri: &str, want: &[u8], pieces: &[(u64, u32)], what: &str) {
    for (got, (o, l)) in read_pieces(uri, pieces).into_iter().zip(pieces) {
        let got = got.unwrap_or_else(|e| panic!("{what}: read {l}@{o} failed: errno {e}"));
        let (o, l) = (*o as usize, *l as usize);
        assert_bytes_eq(&format!("{what}: {l}@{o}"), &got, &want[o..o + l]);
    }
}

/// `nbdkit -U - ARGS --run 'nbdinfo --size $uri'`: the output.
fn size_run(args: &[&str]) -> Output {
    let mut c = nbdkit_cmd();
    c.args(["-U", "-"])
        .args(args)
        .args(["--run", "nbdinfo --size \"$uri\""]);
    run(&mut c, CMD_TIMEOUT)
}

/// The `nbdkit: ... error: ...` lines of `stderr`.
fn error_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.starts_with("nbdkit:") && l.contains("error:"))
        .collect()
}

// ---------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------

#[test]
fn range_reads_at_odd_offsets_equal_the_file() {
    if !have_nginx() {
        return;
    }
    let ng = Nginx::start();
    let want = serve(&ng, "disk.img", 3 * MIB + 517, 1);
    let s = Server::start(["-r", "curl", &ng.url("disk.img")]);
    let size = run_tool("nbdinfo", ["--size", &s.uri()]).assert_success();
    assert_eq!(size.stdout.trim(), (3 * MIB + 517).to_string());
    let pieces = [
        (0, 512),
        (1, 1),
        (4095, 2),
        (MIB as u64 - 7, 65536),
        (3 * MIB as u64, 517),
        (3 * MIB as u64 + 516, 1),
        (12345, 1 << 20),
    ];
    assert_pieces(&s.uri(), &want, &pieces, "disk.img");
    // Each read was a GET of exactly that byte range, answered 206.
    let log = ng.access_log();
    assert!(
        log.contains("GET /disk.img 206 range=[bytes=4095-4096]"),
        "{log}"
    );
    assert!(
        log.contains("GET /disk.img 206 range=[bytes=3146244-3146244]"),
        "{log}"
    );
    assert!(log.contains("HEAD /disk.img 200 range=[-]"), "{log}");
}

#[test]
fn copies_of_64m_through_the_plugin_cow_and_cache_equal_the_image() {
    if !have_nginx() || !skip_unless("qemu-img") || !skip_unless("nbdcopy") {
        return;
    }
    let ng = Nginx::start();
    let want = serve(&ng, "disk.img", 64 * MIB, 2);
    for filters in [&[][..], &["--filter=cow"][..], &["--filter=cache"][..]] {
        let mut args: Vec<&str> = vec!["-r"];
        args.extend_from_slice(filters);
        let url = ng.url("disk.img");
        args.extend(["curl", url.as_str()]);
        let s = Server::start(&args);
        assert_copies_equal(&s.uri(), &want, &format!("curl {filters:?}"));
    }
}

#[test]
fn file_urls_are_read_and_served_read_only() {
    curl_plugin();
    let dir = TempDir::new();
    let img = dir.join("disk.img");
    let want = write_random_file(&img, 2 * MIB + 3, 3);
    let url = format!("file://{}", img.display());
    let s = Server::start(["curl", url.as_str()]);
    assert_pieces(
        &s.uri(),
        &want,
        &[(0, 4096), (MIB as u64 + 1, 70000), (2 * MIB as u64, 3)],
        "file://",
    );
    // libcurl cannot write a file: URL in place, so the export is read-only
    // even without -r.
    let info = run_tool("nbdinfo", [&s.uri()]).assert_success();
    assert!(
        info.stdout.contains("is_read_only: true"),
        "{}",
        info.stdout
    );
    if have_tool("nbdcopy") {
        let out = dir.join("out.img");
        run_tool("nbdcopy", [s.uri().as_str(), path_str(&out)]).assert_success();
        assert_bytes_eq("file:// nbdcopy", &fs::read(&out).unwrap(), &want);
    }
}

#[test]
fn ftp_urls_with_user_and_password() {
    curl_plugin();
    let o = run_python_code("import pyftpdlib", Vec::<String>::new());
    if !o.success() {
        println!("SKIP: pyftpdlib is not installed (Debian package python3-pyftpdlib)");
        return;
    }
    let dir = TempDir::new();
    fs::create_dir(dir.join("pub")).unwrap();
    let want = write_random_file(&dir.join("pub/disk.img"), 2 * MIB + 9, 18);
    let port = free_port();
    let log = fs::File::create(dir.join("ftp.log")).unwrap();
    let mut ftp = Command::new(PYTHON)
        .args([
            "-m",
            "pyftpdlib",
            "-i",
            "127.0.0.1",
            "-u",
            "u",
            "-P",
            "secret",
            "-d",
        ])
        .arg(dir.join("pub"))
        .args(["-p", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start pyftpdlib");
    let up = wait_until(START_TIMEOUT, || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let result = std::panic::catch_unwind(|| {
        assert!(up, "pyftpdlib did not listen");
        let url = format!("ftp://127.0.0.1:{port}/disk.img");
        let s = Server::start(["-r", "curl", url.as_str(), "user=u", "password=secret"]);
        let size = run_tool("nbdinfo", ["--size", &s.uri()]).assert_success();
        assert_eq!(size.stdout.trim(), (2 * MIB + 9).to_string());
        assert_pieces(
            &s.uri(),
            &want,
            &[(0, 512), (MIB as u64 + 3, 100_000), (2 * MIB as u64, 9)],
            "ftp://",
        );
        drop(s);
        // A wrong password is one error line.
        let o = size_run(&["-r", "curl", &url, "user=u", "password=wrong"]);
        assert!(!o.success(), "{}", o.describe());
        assert_eq!(error_lines(&o.stderr).len(), 1, "{}", o.stderr);
        assert!(o.stderr.contains("Login denied"), "{}", o.stderr);
    });
    let _ = ftp.kill();
    let _ = ftp.wait();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

#[test]
fn unix_socket_path_redirects_and_followlocation() {
    if !have_nginx() {
        return;
    }
    let ng = Nginx::start();
    let want = serve(&ng, "disk.img", MIB, 4);
    // The URL's host is not used: the connection goes to the socket.
    let sock = format!("unix-socket-path={}", ng.socket().display());
    let s = Server::start([
        "-r",
        "curl",
        "http://nowhere.invalid/disk.img",
        sock.as_str(),
    ]);
    assert_pieces(&s.uri(), &want, &[(100, 1000)], "unix-socket-path");
    drop(s);
    // A redirect is followed by default ...
    let s = Server::start(["-r", "curl", &ng.url("redirect.img")]);
    assert_pieces(&s.uri(), &want, &[(5000, 3000)], "redirect");
    drop(s);
    // ... and not with followlocation=false.
    let o = size_run(&[
        "-r",
        "curl",
        &ng.url("redirect.img"),
        "followlocation=false",
    ]);
    assert!(!o.success(), "{}", o.describe());
    let errs = error_lines(&o.stderr);
    assert!(
        errs.iter()
            .any(|l| l.contains("302, a redirect that is not followed")),
        "{}",
        o.stderr
    );
}

// ---------------------------------------------------------------------------
// Authentication, TLS, proxy
// ---------------------------------------------------------------------------

#[test]
fn basic_auth_with_password_forms() {
    if !have_nginx() {
        return;
    }
    let ng = Nginx::start();
    let want = serve(&ng, "auth/disk.img", MIB, 5);
    let url = ng.url("auth/disk.img");
    // No credentials: the server's 401 as one error line.
    let o = size_run(&["-r", "curl", &url]);
    assert!(!o.success(), "{}", o.describe());
    let errs = error_lines(&o.stderr);
    assert!(
        errs.iter().any(|l| l.contains("401")),
        "no 401 error: {}",
        o.stderr
    );
    // A wrong password: 401 too.
    let o = size_run(&["-r", "curl", &url, "user=u", "password=wrong"]);
    assert!(!o.success() && o.stderr.contains("401"), "{}", o.describe());
    // password=PASSWORD
    let s = Server::start(["-r", "curl", &url, "user=u", "password=secret"]);
    assert_pieces(&s.uri(), &want, &[(7, 9000)], "password=");
    drop(s);
    // password=+FILE
    let dir = TempDir::new();
    fs::write(dir.join("pw"), "secret\n").unwrap();
    let plus = format!("password=+{}", dir.join("pw").display());
    let s = Server::start(["-r", "curl", &url, "user=u", plus.as_str()]);
    assert_pieces(&s.uri(), &want, &[(0, 512)], "password=+FILE");
    drop(s);
    // password=-FD (an inherited descriptor)
    let cmd = format!(
        "exec '{}' -U - -r curl '{url}' user=u password=-3 --run 'nbdinfo --size \"$uri\"' 3<'{}'",
        nbdkit_bin().display(),
        dir.join("pw").display()
    );
    let o = sh(&cmd);
    assert!(o.success(), "password=-FD: {}", o.describe());
    assert_eq!(o.stdout.trim(), MIB.to_string());
    // password=- (typed at the terminal: on a pty, once echo is off).
    let o = run_python_code(
        "import os, pty, sys, termios, time\n\
         pid, fd = pty.fork()\n\
         if pid == 0:\n\
         \x20   os.execv(sys.argv[1], sys.argv[1:])\n\
         out = b''\n\
         end = time.time() + 60\n\
         while b'password:' not in out and time.time() < end:\n\
         \x20   out += os.read(fd, 1024)\n\
         while termios.tcgetattr(fd)[3] & termios.ECHO and time.time() < end:\n\
         \x20   time.sleep(0.01)\n\
         os.write(fd, b'secret\\n')\n\
         while time.time() < end:\n\
         \x20   try:\n\
         \x20       b = os.read(fd, 1024)\n\
         \x20   except OSError:\n\
         \x20       break\n\
         \x20   if not b:\n\
         \x20       break\n\
         \x20   out += b\n\
         _, st = os.waitpid(pid, 0)\n\
         sys.stdout.write(out.decode(errors='replace'))\n\
         sys.exit(os.waitstatus_to_exitcode(st))\n",
        [
            path_str(&nbdkit_bin()),
            "-U",
            "-",
            "-r",
            "curl",
            &url,
            "user=u",
            "password=-",
            "--run",
            "nbdinfo --size \"$uri\"",
        ],
    );
    assert!(o.success(), "password=-: {}", o.describe());
    assert!(o.stdout.contains(&MIB.to_string()), "{}", o.stdout);
    // The user reached nginx.
    assert!(ng.access_log().contains("user=[u]"), "{}", ng.access_log());
}

#[test]
fn https_with_a_test_ca_resolve_and_sslverify() {
    if !have_nginx() {
        return;
    }
    let ng = Nginx::start();
    let want = serve(&ng, "disk.img", MIB, 6);
    let url = format!("https://localhost:{}/disk.img", ng.tls_port);
    let ca = format!("cainfo={}", ng.ca().display());
    let s = Server::start(["-r", "curl", url.as_str(), ca.as_str()]);
    assert_pieces(
        &s.uri(),
        &want,
        &[(1, 4096), (MIB as u64 - 10, 10)],
        "https",
    );
    drop(s);
    // Without the CA: the certificate is refused.
    let o = size_run(&["-r", "curl", &url, "cainfo=/dev/null"]);
    assert!(!o.success(), "{}", o.describe());
    assert!(
        error_lines(&o.stderr)
            .iter()
            .any(|l| l.to_lowercase().contains("certificate")),
        "{}",
        o.stderr
    );
    // sslverify=false accepts it.
    let s = Server::start([
        "-r",
        "curl",
        url.as_str(),
        "sslverify=false",
        "cainfo=/dev/null",
    ]);
    assert_pieces(&s.uri(), &want, &[(3, 300)], "sslverify=false");
    drop(s);
    // resolve= maps a name that has no DNS entry; the certificate names it.
    let url2 = format!("https://example.test:{}/disk.img", ng.tls_port);
    let resolve = format!("resolve=example.test:{}:127.0.0.1", ng.tls_port);
    let s = Server::start([
        "-r",
        "curl",
        url2.as_str(),
        ca.as_str(),
        resolve.as_str(),
        "ssl-version=tlsv1.2",
        "http-version=1.1",
        "ipresolve=v4",
    ]);
    assert_pieces(&s.uri(), &want, &[(11, 1111)], "resolve=");
    drop(s);
    // http-version=: HTTP/2 over TLS, or HTTP/1.1 only.
    for (v, proto) in [("2TLS", "HTTP/2.0"), ("1.1", "HTTP/1.1")] {
        let hv = format!("http-version={v}");
        let s = Server::start(["-r", "curl", url.as_str(), ca.as_str(), hv.as_str()]);
        let before = ng.access_log().lines().count();
        assert_pieces(&s.uri(), &want, &[(77, 777)], &hv);
        let log = ng.access_log();
        let line = log
            .lines()
            .skip(before)
            .find(|l| l.contains(" GET "))
            .unwrap();
        assert!(
            line.starts_with(&format!("{proto} GET /disk.img 206")),
            "{hv}: {log}"
        );
    }
    // capath= (a hashed directory) instead of a bundle; cainfo= (empty)
    // drops libcurl's default bundle.
    let capath = ng.dir.join("capath");
    fs::create_dir_all(&capath).unwrap();
    fs::copy(ng.ca(), capath.join("ca.pem")).unwrap();
    let o = sh(&format!("openssl rehash '{}'", capath.display()));
    assert!(o.success(), "openssl rehash: {}", o.describe());
    let cp = format!("capath={}", capath.display());
    let s = Server::start(["-r", "curl", url.as_str(), "cainfo=", cp.as_str()]);
    assert_pieces(&s.uri(), &want, &[(5, 55)], "capath=");
    drop(s);
    // TLS 1.2 cipher list: one nginx has works, an unknown one fails.
    let s = Server::start([
        "-r",
        "curl",
        url.as_str(),
        ca.as_str(),
        "ssl-version=tlsv1.2",
        "ssl-cipher-list=ECDHE-RSA-AES128-GCM-SHA256",
    ]);
    assert_pieces(&s.uri(), &want, &[(6, 66)], "ssl-cipher-list=");
    drop(s);
    let o = size_run(&["-r", "curl", &url, &ca, "ssl-cipher-list=NO-SUCH-CIPHER"]);
    assert!(!o.success(), "{}", o.describe());
    assert!(
        error_lines(&o.stderr).iter().any(|l| l.contains("cipher")),
        "{}",
        o.stderr
    );
    // TLS 1.3 ciphers: an unknown one is libcurl's error.
    let o = size_run(&[
        "-r",
        "curl",
        &url,
        &ca,
        "ssl-version=tlsv1.3",
        "tls13-ciphers=NO_SUCH_CIPHER",
    ]);
    assert!(!o.success(), "{}", o.describe());
    let s = Server::start([
        "-r",
        "curl",
        url.as_str(),
        ca.as_str(),
        "ssl-version=tlsv1.3",
        "tls13-ciphers=TLS_AES_128_GCM_SHA256",
    ]);
    assert_pieces(&s.uri(), &want, &[(0, 100)], "tls13-ciphers");
}

#[test]
fn proxy_with_proxy_user_and_password() {
    if !have_nginx() {
        return;
    }
    let ng = Nginx::start();
    let want = serve(&ng, "disk.img", MIB, 7);
    // The URL's host only exists behind the proxy.
    let url = format!("http://behind.proxy.invalid:{}/disk.img", ng.port);
    let proxy = format!("proxy=http://127.0.0.1:{}", ng.proxy_port);
    let s = Server::start([
        "-r",
        "curl",
        url.as_str(),
        proxy.as_str(),
        "proxy-user=pu",
        "proxy-password=pp",
    ]);
    assert_pieces(&s.uri(), &want, &[(99, 999)], "proxy");
    let log = ng.proxy_log();
    // "pu:pp" in base64.
    assert!(log.contains("pauth=[Basic cHU6cHA=]"), "{log}");
    assert!(
        log.contains("GET host=[behind.proxy.invalid] /disk.img"),
        "{log}"
    );
}

// ---------------------------------------------------------------------------
// Headers, cookies and their scripts
// ---------------------------------------------------------------------------

#[test]
fn header_cookie_and_user_agent_are_sent() {
    if !have_nginx() {
        return;
    }
    let ng = Nginx::start();
    let want = serve(&ng, "disk.img", MIB, 8);
    let s = Server::start([
        "-r",
        "curl",
        &ng.url("disk.img"),
        "header=X-Token: static",
        "cookie=session=fixed",
        "user-agent=nbdkit-test-agent",
        "tcp-keepalive=true",
        "tcp-nodelay=false",
    ]);
    assert_pieces(&s.uri(), &want, &[(0, 10)], "headers");
    let log = ng.access_log();
    let get = log.lines().find(|l| l.contains(" GET /disk.img")).unwrap();
    assert!(get.contains("token=[static]"), "{log}");
    assert!(get.contains("cookie=[fixed]"), "{log}");
    assert!(get.contains("ua=[nbdkit-test-agent]"), "{log}");
}

#[test]
fn header_and_cookie_scripts_run_and_renew() {
    if !have_nginx() {
        return;
    }
    let ng = Nginx::start();
    let want = serve(&ng, "disk.img", MIB, 9);
    let dir = TempDir::new();
    let count = dir.join("runs");
    let hs = format!(
        "header-script=echo h >> '{}'; printf 'X-Token: tok%s\\nX-Url: %s\\n' \"$iteration\" \"$url\"",
        count.display()
    );
    let cs = "cookie-script=echo \"session=c$iteration\"".to_string();
    let mut s = Server::start([
        "-r",
        "-v",
        "-D",
        "curl.scripts=1",
        "curl",
        &ng.url("disk.img"),
        hs.as_str(),
        "header-script-renew=1",
        cs.as_str(),
        "cookie-script-renew=1",
        "connections=2",
    ]);
    assert_pieces(&s.uri(), &want, &[(0, 100), (200, 100)], "first");
    // Past the renewal time the scripts run again for the next request.
    thread::sleep(Duration::from_millis(2200));
    assert_pieces(&s.uri(), &want, &[(300, 100)], "renewed");
    let log = ng.access_log();
    let gets: Vec<&str> = log.lines().filter(|l| l.contains(" GET ")).collect();
    assert!(!gets.is_empty(), "{log}");
    // The first request (the HEAD for the size) carries iteration 0; the
    // one after the pause a later one. Every request carries $url.
    let first = log.lines().next().unwrap();
    assert!(first.contains(" HEAD "), "{log}");
    assert!(
        first.contains("token=[tok0]") && first.contains("cookie=[c0]"),
        "{log}"
    );
    let last = gets.last().unwrap();
    assert!(
        last.contains("token=[tok") && !last.contains("token=[tok0]"),
        "{log}"
    );
    assert!(
        last.contains("cookie=[c") && !last.contains("cookie=[c0]"),
        "{log}"
    );
    let url = ng.url("disk.img");
    assert!(
        gets.iter().all(|g| g.contains(&format!("xurl=[{url}]"))),
        "{log}"
    );
    let runs = fs::read_to_string(&count).unwrap().lines().count();
    assert!(runs >= 2, "header-script ran {runs} time(s)");
    s.stop();
    let err = s.stderr();
    assert!(
        err.contains("header-script: setting header X-Token: tok0"),
        "{err}"
    );
    assert!(
        err.contains("cookie-script: setting cookie session=c0"),
        "{err}"
    );
}

#[test]
fn a_failing_script_is_one_error_and_eio() {
    if !have_nginx() {
        return;
    }
    let ng = Nginx::start();
    serve(&ng, "disk.img", MIB, 10);
    let o = size_run(&[
        "-r",
        "curl",
        &ng.url("disk.img"),
        "header-script=echo 'token service down' >&2; exit 1",
    ]);
    assert!(!o.success(), "{}", o.describe());
    assert!(
        error_lines(&o.stderr)
            .iter()
            .any(|l| l.ends_with("header-script failed: token service down")),
        "{}",
        o.stderr
    );
}

// ---------------------------------------------------------------------------
// connections=
// ---------------------------------------------------------------------------

/// Seconds to read `uri` with 8 requests in flight.
fn parallel_read_secs(uri: &str) -> f64 {
    let dir = TempDir::new();
    let out = dir.join("out");
    let t = Instant::now();
    run_tool(
        "nbdcopy",
        [
            "--requests=8",
            "--connections=1",
            "--request-size=262144",
            uri,
            path_str(&out),
        ],
    )
    .assert_success();
    t.elapsed().as_secs_f64()
}

#[test]
fn connections_4_and_1_read_in_parallel_correctly() {
    if !have_nginx() || !skip_unless("nbdcopy") {
        return;
    }
    let ng = Nginx::start();
    // /slow/ sends each response at 2 MiB/s: requests in parallel on
    // separate HTTP connections finish sooner.
    let want = serve(&ng, "slow/disk.img", 8 * MIB, 11);
    serve(&ng, "disk.img", 32 * MIB, 12);
    let mut times = Vec::new();
    for n in [1, 4] {
        let conns = format!("connections={n}");
        let s = Server::start(["-r", "curl", &ng.url("slow/disk.img"), conns.as_str()]);
        let slow = parallel_read_secs(&s.uri());
        assert_pieces(&s.uri(), &want, &[(MIB as u64, 4096)], "slow");
        drop(s);
        let s = Server::start(["-r", "curl", &ng.url("disk.img"), conns.as_str()]);
        let fast = parallel_read_secs(&s.uri());
        times.push((n, slow, fast));
    }
    for (n, slow, fast) in &times {
        println!(
            "connections={n}: 8 MiB at 2 MiB/s per request in {slow:.2} s; \
             32 MiB unlimited in {fast:.2} s"
        );
    }
    // At most 4 and at most 1 connection reached nginx from each.
    let log = ng.access_log();
    assert!(
        log.lines()
            .filter(|l| l.contains("/slow/disk.img 206"))
            .count()
            >= 32
    );
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

#[test]
fn refused_404_and_no_range_are_one_clear_error() {
    if !have_nginx() {
        return;
    }
    let ng = Nginx::start();
    serve(&ng, "norange/disk.img", MIB, 13);
    let closed = free_port();
    let cases = [
        (
            format!("http://127.0.0.1:{closed}/disk.img"),
            "Couldn't connect to server",
        ),
        (ng.url("missing.img"), "returned error: 404"),
        (
            ng.url("norange/disk.img"),
            "server does not support 'range' (byte range) requests",
        ),
    ];
    for (url, want) in &cases {
        let t = Instant::now();
        let o = size_run(&["-r", "curl", url]);
        assert!(!o.success(), "{url}: {}", o.describe());
        let errs = error_lines(&o.stderr);
        assert!(
            errs.iter().any(|l| l.contains(want)),
            "{url}: no {want:?}: {}",
            o.stderr
        );
        println!("{url}: failed in {:.2} s", t.elapsed().as_secs_f64());
        // The reference says the same.
        if reference_installed() && Path::new(REFERENCE_CURL).exists() {
            let mut c = Command::new(REFERENCE);
            c.args([
                "-U",
                "-",
                "-r",
                "curl",
                url.as_str(),
                "--run",
                "nbdinfo --size \"$uri\"",
            ]);
            let r = run(&mut c, CMD_TIMEOUT);
            assert!(!r.success());
            assert!(
                error_lines(&r.stderr).iter().any(|l| l.contains(want)),
                "reference: {}",
                r.stderr
            );
        }
    }
}

const REFERENCE_CURL: &str = "/usr/lib/x86_64-linux-gnu/nbdkit/plugins/nbdkit-curl-plugin.so";

#[test]
fn a_server_that_dies_mid_request_gives_eio_not_a_hang() {
    if !have_nginx() {
        return;
    }
    let mut ng = Nginx::start();
    serve(&ng, "slow/disk.img", 16 * MIB, 14);
    let s = Server::start(["-r", "curl", &ng.url("slow/disk.img"), "timeout=60"]);
    // A 16 MiB read at 2 MiB/s takes 8 s; nginx dies after 1 s.
    let uri = s.uri();
    let reader = thread::spawn(move || {
        let t = Instant::now();
        let r = read_pieces(&uri, &[(0, 16 * MIB as u32)]);
        (r, t.elapsed())
    });
    thread::sleep(Duration::from_secs(1));
    ng.kill();
    let (r, took) = reader.join().unwrap();
    assert_eq!(r[0].as_ref().err().map(String::as_str), Some("EIO"));
    assert!(took < Duration::from_secs(60), "took {took:?}");
    let err = s.stderr();
    assert_eq!(error_lines(&err).len(), 1, "not one error line: {err}");
}

/// How a [`BadServer`] answers a GET.
#[derive(Clone, Copy)]
enum Bad {
    /// 206 promising the range, half of it, then the connection closes.
    Short,
    /// 206 promising the range, half of it, then nothing (not closed).
    Stall,
    /// 200 with the whole file (ranges ignored though advertised).
    IgnoresRange,
    /// 206 with more bytes than asked.
    Oversized,
}

/// A small HTTP server of the test's own on loopback: HEAD answers size
/// `SIZE` with `Accept-Ranges: bytes`; GET misbehaves as told.
struct BadServer {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

const BAD_SIZE: usize = 1 << 20;

impl BadServer {
    fn start(how: Bad) -> BadServer {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let port = l.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let thread = thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(120);
            let mut conns = Vec::new();
            while !st.load(Ordering::Relaxed) && Instant::now() < deadline {
                match l.accept() {
                    Ok((c, _)) => {
                        let st = st.clone();
                        conns.push(thread::spawn(move || serve_bad(c, how, &st, deadline)));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
            for c in conns {
                let _ = c.join();
            }
        });
        BadServer {
            port,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/disk.img", self.port)
    }
}

impl Drop for BadServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve_bad(mut c: TcpStream, how: Bad, stop: &AtomicBool, deadline: Instant) {
    c.set_read_timeout(Some(Duration::from_millis(100))).ok();
    let mut req = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        while !req.windows(4).any(|w| w == b"\r\n\r\n") {
            if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                return;
            }
            match c.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => req.extend_from_slice(&buf[..n]),
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => return,
            }
        }
        let end = req.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let head = String::from_utf8_lossy(&req[..end]).into_owned();
        req.drain(..end);
        if head.starts_with("HEAD ") {
            let r = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {BAD_SIZE}\r\nAccept-Ranges: bytes\r\n\r\n"
            );
            if c.write_all(r.as_bytes()).is_err() {
                return;
            }
            continue;
        }
        // GET with "Range: bytes=A-B".
        let (a, b) = head
            .lines()
            .find_map(|l| l.strip_prefix("Range: bytes="))
            .and_then(|r| r.trim().split_once('-'))
            .map(|(a, b)| (a.parse::<usize>().unwrap(), b.parse::<usize>().unwrap()))
            .unwrap_or((0, BAD_SIZE - 1));
        let len = b - a + 1;
        let body = vec![0xabu8; BAD_SIZE + 4096];
        let _ = match how {
            Bad::Short | Bad::Stall => c
                .write_all(
                    format!(
                        "HTTP/1.1 206 Partial Content\r\nContent-Length: {len}\r\n\
                         Content-Range: bytes {a}-{b}/{BAD_SIZE}\r\n\r\n"
                    )
                    .as_bytes(),
                )
                .and_then(|()| c.write_all(&body[..len / 2])),
            Bad::IgnoresRange => c
                .write_all(
                    format!("HTTP/1.1 200 OK\r\nContent-Length: {BAD_SIZE}\r\n\r\n").as_bytes(),
                )
                .and_then(|()| c.write_all(&body[..BAD_SIZE])),
            Bad::Oversized => c
                .write_all(
                    format!(
                        "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\n\
                         Content-Range: bytes {a}-{b}/{BAD_SIZE}\r\n\r\n",
                        len + 100
                    )
                    .as_bytes(),
                )
                .and_then(|()| c.write_all(&body[..len + 100])),
        };
        match how {
            Bad::Short => return,
            Bad::Stall => {
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    thread::sleep(Duration::from_millis(20));
                }
                return;
            }
            _ => {}
        }
    }
}

#[test]
fn short_stalled_ignored_and_oversized_responses_give_eio() {
    curl_plugin();
    let cases = [
        (Bad::Short, "timeout=30", "pread: curl_easy_perform"),
        (Bad::Stall, "timeout=2", "Timeout was reached"),
        (
            Bad::IgnoresRange,
            "timeout=30",
            "server does not support 'range' (byte range) requests",
        ),
        (
            Bad::Oversized,
            "timeout=30",
            "more data than the 4096 bytes",
        ),
    ];
    for (how, timeout, want) in cases {
        let bad = BadServer::start(how);
        let mut s = Server::start(["-r", "curl", &bad.url(), timeout]);
        let t = Instant::now();
        let r = read_pieces(&s.uri(), &[(8192, 4096)]);
        let took = t.elapsed();
        assert_eq!(
            r[0].as_ref().err().map(String::as_str),
            Some("EIO"),
            "{want}"
        );
        println!("{want}: EIO after {:.2} s", took.as_secs_f64());
        assert!(s.is_alive());
        s.stop();
        let err = s.stderr();
        let errs = error_lines(&err);
        assert_eq!(errs.len(), 1, "{want}: {err}");
        assert!(errs[0].contains(want), "{want}: {err}");
    }
}

#[test]
fn writes_are_put_requests_of_the_range() {
    if !have_nginx() {
        return;
    }
    let ng = Nginx::start();
    serve(&ng, "dav/disk.img", MIB, 15);
    fs::set_permissions(
        ng.www().join("dav"),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let s = Server::start(["curl", &ng.url("dav/disk.img")]);
    let o = run_python_code(
        "import nbd, sys\n\
         h = nbd.NBD()\n\
         h.connect_uri(sys.argv[1])\n\
         print('ro', h.is_read_only())\n\
         try:\n\
         \x20   h.pwrite(b'x' * 4096, 8192)\n\
         \x20   print('ok')\n\
         except nbd.Error as e:\n\
         \x20   print('ERR', e.errno)\n\
         print('read', len(h.pread(10, 0)))\n",
        [s.uri()],
    );
    assert!(o.success(), "{}", o.describe());
    assert!(o.stdout.contains("ro False"), "{}", o.stdout);
    // nginx's PUT does not take a range: the write fails with EIO, and the
    // request was a PUT of that range.
    assert!(o.stdout.contains("ERR EIO"), "{}", o.stdout);
    let log = ng.access_log();
    assert!(
        log.contains("PUT /dav/disk.img 501") && log.contains("crange=[bytes 8192-12287/1048576]"),
        "{log}"
    );
    // The next read goes without the write's Content-Range.
    assert!(o.stdout.contains("read 10"), "{}", o.stdout);
    let last_get = log.lines().rfind(|l| l.contains(" GET ")).unwrap();
    assert!(last_get.contains("crange=[-]"), "{log}");
}

// ---------------------------------------------------------------------------
// Command line, debug flags
// ---------------------------------------------------------------------------

#[test]
fn bad_parameters_are_one_error_line() {
    curl_plugin();
    let cases: &[(&[&str], &str)] = &[
        (&[], "you must supply the url=<URL> parameter"),
        (
            &["file:///x", "connections=0"],
            "connections parameter must not be 0",
        ),
        (&["file:///x", "http-version=9"], "unknown http-version: 9"),
        (
            &["file:///x", "ssl-version=tlsv9"],
            "unknown ssl-version: tlsv9",
        ),
        (
            &["file:///x", "protocols=http,bogus"],
            "protocols: protocol name not found: bogus",
        ),
        (
            &["file:///x", "header=A: b", "header-script=true"],
            "header and header-script cannot be used at the same time",
        ),
        (
            &["file:///x", "cookie=a=b", "cookie-script=true"],
            "cookie and cookie-script cannot be used at the same time",
        ),
        (
            &["file:///x", "header-script-renew=5"],
            "header-script-renew cannot be used without header-script",
        ),
        (
            &["file:///x", "cookiejar=-"],
            "cookiejar parameter cannot be \"-\"",
        ),
        (
            &["file:///x", "sslverify=maybe"],
            "could not decipher boolean (maybe)",
        ),
        (&["file:///x", "nosuch=1"], "unknown parameter 'nosuch'"),
    ];
    for (args, want) in cases {
        let mut c = nbdkit_cmd();
        c.args(["-U", "-", "curl"])
            .args(*args)
            .args(["--run", "true"]);
        let o = run(&mut c, CMD_TIMEOUT);
        assert_eq!(o.code(), Some(1), "{args:?}: {}", o.describe());
        let errs = error_lines(&o.stderr);
        assert_eq!(errs.len(), 1, "{args:?}: {}", o.stderr);
        assert!(errs[0].contains(want), "{args:?}: {}", o.stderr);
    }
    // protocols= limits what the URL may use.
    let dir = TempDir::new();
    fs::write(dir.join("d"), vec![0u8; 4096]).unwrap();
    let url = format!("file://{}", dir.join("d").display());
    let o = size_run(&["curl", &url, "protocols=http,https"]);
    assert!(!o.success(), "{}", o.describe());
    assert!(
        o.stderr.contains("not supported or disabled"),
        "{}",
        o.stderr
    );
    let o = size_run(&["curl", &url, "protocols=file"]);
    assert!(o.success(), "{}", o.describe());
}

#[test]
fn help_lists_every_parameter_of_the_manual() {
    curl_plugin();
    let o = run(nbdkit_cmd().args(["curl", "--help"]), CMD_TIMEOUT).assert_success();
    for p in [
        "cainfo=",
        "capath=",
        "connections=",
        "cookie=",
        "cookiefile=",
        "cookiejar=",
        "cookie-script=",
        "cookie-script-renew=",
        "followlocation=",
        "header=",
        "header-script=",
        "header-script-renew=",
        "http-version=",
        "ipresolve=",
        "password=",
        "protocols=",
        "proxy=",
        "proxy-password=",
        "proxy-user=",
        "resolve=",
        "sslverify=",
        "ssl-cipher-list=",
        "ssl-version=",
        "tcp-keepalive=",
        "tcp-nodelay=",
        "timeout=",
        "tls13-ciphers=",
        "unix-socket-path=",
        "url=",
        "user=",
        "user-agent=",
    ] {
        assert!(o.stdout.contains(p), "--help lacks {p}: {}", o.stdout);
    }
    // The reference's help lines are all there.
    if reference_installed() && Path::new(REFERENCE_CURL).exists() {
        let r = run(
            Command::new(REFERENCE).args(["curl", "--help"]),
            CMD_TIMEOUT,
        );
        let after = |s: &str| -> Vec<String> {
            s.lines()
                .skip_while(|l| !l.starts_with("cainfo="))
                .map(|l| l.split_whitespace().next().unwrap_or("").to_string())
                .collect()
        };
        let ours = after(&o.stdout);
        for k in after(&r.stdout) {
            assert!(ours.contains(&k), "ours lacks {k}");
        }
    }
    let d = run(nbdkit_cmd().args(["curl", "--dump-plugin"]), CMD_TIMEOUT).assert_success();
    assert!(d.stdout.contains("thread_model=parallel"), "{}", d.stdout);
    assert!(d.stdout.contains("magic_config_key=url"), "{}", d.stdout);
    assert!(d.stdout.contains("curl_version="), "{}", d.stdout);
}

#[test]
fn debug_verbose_and_times() {
    if !have_nginx() {
        return;
    }
    let ng = Nginx::start();
    serve(&ng, "disk.img", MIB, 16);
    let mut c = nbdkit_cmd();
    c.args([
        "-U",
        "-",
        "-r",
        "-v",
        "-D",
        "curl.verbose=1",
        "-D",
        "curl.times=1",
        "curl",
    ])
    .arg(ng.url("disk.img"))
    .args(["--run", "nbdinfo --size \"$uri\""]);
    let o = run(&mut c, CMD_TIMEOUT);
    assert!(o.success(), "{}", o.describe());
    // libcurl's trace: the request line sent, the status line received.
    assert!(
        o.stderr.contains("C: HEAD /disk.img HTTP/1.1"),
        "{}",
        o.stderr
    );
    assert!(o.stderr.contains("S: HTTP/1.1 200 OK"), "{}", o.stderr);
    // The times, at exit.
    assert!(
        o.stderr.contains("times (-D curl.times=1):"),
        "{}",
        o.stderr
    );
    for name in [
        "name resolution",
        "connection",
        "first byte received",
        "data transfer",
    ] {
        assert!(
            o.stderr
                .lines()
                .any(|l| l.contains(name) && l.trim_end().ends_with(" s")),
            "{name}: {}",
            o.stderr
        );
    }
    // Without the flags, none of that.
    let mut c = nbdkit_cmd();
    c.args(["-U", "-", "-r", "-v", "curl"])
        .arg(ng.url("disk.img"))
        .args(["--run", "nbdinfo --size \"$uri\""]);
    let o = run(&mut c, CMD_TIMEOUT);
    assert!(o.success(), "{}", o.describe());
    assert!(!o.stderr.contains("C: HEAD"), "{}", o.stderr);
    assert!(!o.stderr.contains("times (-D"), "{}", o.stderr);
}

#[test]
fn cookiejar_is_written_when_the_handles_close() {
    if !have_nginx() {
        return;
    }
    let ng = Nginx::start();
    serve(&ng, "disk.img", MIB, 17);
    let dir = TempDir::new();
    let jar = dir.join("jar");
    let cookies = dir.join("cookies");
    // A Netscape cookie file for the server; the jar gets it back at exit.
    fs::write(
        &cookies,
        "# Netscape HTTP Cookie File\n127.0.0.1\tFALSE\t/\tFALSE\t0\tsession\tfromfile\n",
    )
    .unwrap();
    let cf = format!("cookiefile={}", cookies.display());
    let cj = format!("cookiejar={}", jar.display());
    let o = size_run(&["-r", "curl", &ng.url("disk.img"), &cf, &cj]);
    assert!(o.success(), "{}", o.describe());
    assert!(
        ng.access_log().contains("cookie=[fromfile]"),
        "{}",
        ng.access_log()
    );
    let j = fs::read_to_string(&jar).unwrap_or_default();
    assert!(j.contains("fromfile"), "cookie jar: {j:?}");
}
