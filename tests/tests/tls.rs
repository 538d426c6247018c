//! TLS with real clients: nbdinfo and nbdcopy over `nbds+unix://` URIs,
//! libnbd's Python bindings, qemu-img's `tls-creds-x509` and
//! `tls-creds-psk` objects, with X.509 certificates (made here with certtool,
//! or openssl when certtool is missing) and with PSK files.

use nbdkit_tests::{
    assert_bytes_eq, find_tool, nbdkit_cmd, path_str, run, run_tool, skip_unless,
    write_random_file, Server, TempDir, CMD_TIMEOUT, PYTHON,
};
use std::fs;
use std::path::Path;
use std::process::Command;

// ---------------------------------------------------------------------------
// Credentials
// ---------------------------------------------------------------------------

/// A PKI in `dir`: `pki/` is the server's directory (ca-cert.pem,
/// server-cert.pem, server-key.pem), `client/` holds what libnbd wants
/// (ca-cert.pem, client-cert.pem, client-key.pem), `rogue/` a client
/// certificate signed by another CA, `ca-only/` only the CA.
struct Pki {
    server: String,
    client: String,
    rogue: String,
    ca_only: String,
}

fn sh(cmd: &str, dir: &Path) {
    let out = run(
        Command::new("/bin/sh").arg("-ec").arg(cmd).current_dir(dir),
        CMD_TIMEOUT,
    );
    assert!(
        out.success(),
        "making certificates failed: {}",
        out.describe()
    );
}

const CERTTOOL: &str = r#"
ca() { # name cn
  certtool --generate-privkey --outfile $1-key.pem >/dev/null 2>&1
  printf 'cn = %s\nca\ncert_signing_key\nexpiration_days = 3650\n' "$2" > $1.info
  certtool --generate-self-signed --load-privkey $1-key.pem --template $1.info --outfile $1-cert.pem >/dev/null 2>&1
}
leaf() { # name ca template
  certtool --generate-privkey --outfile $1-key.pem >/dev/null 2>&1
  printf "$3" > $1.info
  certtool --generate-certificate --load-ca-certificate $2-cert.pem --load-ca-privkey $2-key.pem \
    --load-privkey $1-key.pem --template $1.info --outfile $1-cert.pem >/dev/null 2>&1
}
ca ca 'Test CA'
ca other 'Other CA'
leaf server ca 'organization = Test\ncn = localhost\ndns_name = localhost\nip_address = 127.0.0.1\ntls_www_server\nencryption_key\nsigning_key\nexpiration_days = 3650\n'
leaf client ca 'country = US\norganization = Test\ncn = client\ntls_www_client\nencryption_key\nsigning_key\nexpiration_days = 3650\n'
leaf rogue other 'organization = Rogue\ncn = rogue\ntls_www_client\nencryption_key\nsigning_key\nexpiration_days = 3650\n'
"#;

const OPENSSL: &str = r#"
ca() { # name cn
  openssl req -x509 -newkey rsa:2048 -nodes -keyout $1-key.pem -out $1-cert.pem -days 3650 \
    -subj "/CN=$2" -addext basicConstraints=critical,CA:TRUE \
    -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
}
leaf() { # name ca subject extensions
  openssl req -newkey rsa:2048 -nodes -keyout $1-key.pem -out $1.csr -subj "$3" 2>/dev/null
  printf "$4" > $1.ext
  openssl x509 -req -in $1.csr -CA $2-cert.pem -CAkey $2-key.pem -CAcreateserial \
    -out $1-cert.pem -days 3650 -extfile $1.ext 2>/dev/null
}
ca ca 'Test CA'
ca other 'Other CA'
leaf server ca /O=Test/CN=localhost 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n'
leaf client ca /C=US/O=Test/CN=client 'extendedKeyUsage=clientAuth\n'
leaf rogue other /O=Rogue/CN=rogue 'extendedKeyUsage=clientAuth\n'
"#;

/// Makes the PKI, or prints why not and returns `None`.
fn make_pki(dir: &TempDir) -> Option<Pki> {
    let work = dir.join("work");
    fs::create_dir_all(&work).unwrap();
    if find_tool("certtool").is_some() {
        sh(CERTTOOL, &work);
    } else if find_tool("openssl").is_some() {
        sh(OPENSSL, &work);
    } else {
        eprintln!("SKIP: neither certtool (gnutls-bin) nor openssl is installed");
        return None;
    }
    let copy = |sub: &str, files: &[(&str, &str)]| -> String {
        let d = dir.join(sub);
        fs::create_dir_all(&d).unwrap();
        for (from, to) in files {
            fs::copy(work.join(from), d.join(to)).unwrap();
        }
        path_str(&d).to_string()
    };
    Some(Pki {
        server: copy(
            "pki",
            &[
                ("ca-cert.pem", "ca-cert.pem"),
                ("server-cert.pem", "server-cert.pem"),
                ("server-key.pem", "server-key.pem"),
            ],
        ),
        client: copy(
            "client",
            &[
                ("ca-cert.pem", "ca-cert.pem"),
                ("client-cert.pem", "client-cert.pem"),
                ("client-key.pem", "client-key.pem"),
            ],
        ),
        rogue: copy(
            "rogue",
            &[
                ("ca-cert.pem", "ca-cert.pem"),
                ("rogue-cert.pem", "client-cert.pem"),
                ("rogue-key.pem", "client-key.pem"),
            ],
        ),
        ca_only: copy("ca-only", &[("ca-cert.pem", "ca-cert.pem")]),
    })
}

/// A PSK file `dir/psk/keys.psk` (psktool's format) for alice; returns its
/// path. qemu wants the directory.
fn make_psk(dir: &TempDir) -> String {
    let d = dir.join("psk");
    fs::create_dir_all(&d).unwrap();
    let f = d.join("keys.psk");
    if find_tool("psktool").is_some() {
        run_tool("psktool", ["-u", "alice", "-p", path_str(&f)]).assert_success();
    } else {
        let key: String = nbdkit_tests::Prng::new(7)
            .bytes(32)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        fs::write(&f, format!("alice:{key}\n")).unwrap();
    }
    path_str(&f).to_string()
}

fn x509_uri(srv: &Server, certs: &str) -> String {
    format!(
        "nbds+unix:///?socket={}&tls-certificates={certs}",
        srv.socket().display()
    )
}

fn psk_uri(srv: &Server, user: &str, file: &str) -> String {
    format!(
        "nbds+unix://{user}@/?socket={}&tls-psk-file={file}",
        srv.socket().display()
    )
}

fn nbdinfo_size(uri: &str) -> nbdkit_tests::Output {
    run_tool("nbdinfo", ["--size", uri])
}

// ---------------------------------------------------------------------------
// X.509
// ---------------------------------------------------------------------------

#[test]
fn nbdinfo_x509_require() {
    skip_unless!("nbdinfo");
    let dir = TempDir::new();
    let Some(pki) = make_pki(&dir) else { return };
    let srv = Server::start([
        "--tls=require",
        &format!("--tls-certificates={}", pki.server),
        "memory",
        "3M",
    ]);
    let out = nbdinfo_size(&x509_uri(&srv, &pki.client)).assert_success();
    assert_eq!(out.stdout.trim(), "3145728");
    // Without client certificates (they are optional without
    // --tls-verify-peer).
    let out = nbdinfo_size(&x509_uri(&srv, &pki.ca_only)).assert_success();
    assert_eq!(out.stdout.trim(), "3145728");
}

#[test]
fn plain_client_refused_by_require() {
    skip_unless!("nbdinfo");
    let dir = TempDir::new();
    let Some(pki) = make_pki(&dir) else { return };
    let srv = Server::start([
        "--tls=require",
        &format!("--tls-certificates={}", pki.server),
        "memory",
        "1M",
    ]);
    let out = nbdinfo_size(&srv.uri());
    assert!(
        !out.success(),
        "a plain client was served: {}",
        out.describe()
    );
    // TLS clients still work afterwards.
    nbdinfo_size(&x509_uri(&srv, &pki.client)).assert_success();
}

#[test]
fn tls_on_serves_plain_and_tls() {
    skip_unless!("nbdinfo");
    let dir = TempDir::new();
    let Some(pki) = make_pki(&dir) else { return };
    let srv = Server::start([
        "--tls=on",
        &format!("--tls-certificates={}", pki.server),
        "memory",
        "1M",
    ]);
    nbdinfo_size(&srv.uri()).assert_success();
    nbdinfo_size(&x509_uri(&srv, &pki.client)).assert_success();
}

#[test]
fn nbdcopy_roundtrip_over_tls() {
    skip_unless!("nbdcopy");
    let dir = TempDir::new();
    let Some(pki) = make_pki(&dir) else { return };
    let src = dir.join("src.img");
    let out = dir.join("out.img");
    let data = write_random_file(&src, 16 << 20, 0x7150);
    let srv = Server::start([
        "--tls=require",
        &format!("--tls-certificates={}", pki.server),
        "memory",
        "16M",
    ]);
    let uri = x509_uri(&srv, &pki.client);
    run_tool("nbdcopy", [path_str(&src), &uri]).assert_success();
    run_tool("nbdcopy", [uri.as_str(), path_str(&out)]).assert_success();
    assert_bytes_eq("image copied over TLS", &fs::read(&out).unwrap(), &data);
}

#[test]
fn verify_peer_refuses_other_ca_and_no_cert() {
    skip_unless!("nbdinfo");
    let dir = TempDir::new();
    let Some(pki) = make_pki(&dir) else { return };
    let srv = Server::start([
        "--tls=require",
        &format!("--tls-certificates={}", pki.server),
        "--tls-verify-peer",
        "memory",
        "1M",
    ]);
    let out = nbdinfo_size(&x509_uri(&srv, &pki.rogue));
    assert!(
        !out.success(),
        "a certificate of another CA was accepted: {}",
        out.describe()
    );
    let out = nbdinfo_size(&x509_uri(&srv, &pki.ca_only));
    assert!(
        !out.success(),
        "a client without a certificate was accepted: {}",
        out.describe()
    );
    nbdinfo_size(&x509_uri(&srv, &pki.client)).assert_success();
}

#[test]
fn python_libnbd_x509_and_psk() {
    skip_unless!("python3-nbd");
    let dir = TempDir::new();
    let Some(pki) = make_pki(&dir) else { return };
    let psk = make_psk(&dir);
    let script = r#"
import sys, nbd
sock, mode, cred = sys.argv[1:4]
h = nbd.NBD()
h.set_tls(nbd.TLS_REQUIRE)
if mode == "x509":
    h.set_tls_certificates(cred)
    h.set_tls_verify_peer(True)
else:
    h.set_tls_psk_file(cred)
    h.set_tls_username("alice")
h.connect_unix(sock)
assert h.get_tls_negotiated()
data = bytes(range(256)) * 512
h.pwrite(data, 4096)
h.flush()
assert h.pread(len(data), 4096) == data
h.shutdown()
print("ok")
"#;
    for (mode, args) in [
        (
            "x509",
            vec![
                "--tls=require".to_string(),
                format!("--tls-certificates={}", pki.server),
            ],
        ),
        (
            "psk",
            vec!["--tls=require".to_string(), format!("--tls-psk={psk}")],
        ),
    ] {
        let srv = Server::start(args.iter().map(String::as_str).chain(["memory", "1M"]));
        let cred = if mode == "x509" { &pki.client } else { &psk };
        let out = run(
            Command::new(PYTHON)
                .args(["-c", script, path_str(srv.socket()), mode, cred])
                .env_remove("PYTHONHOME")
                .env_remove("PYTHONPATH"),
            CMD_TIMEOUT,
        )
        .assert_success();
        assert_eq!(out.stdout.trim(), "ok", "{mode}");
    }
}

#[test]
fn nbdsh_over_tls() {
    skip_unless!("nbdsh", "python3-nbd");
    let dir = TempDir::new();
    let Some(pki) = make_pki(&dir) else { return };
    let srv = Server::start([
        "--tls=require",
        &format!("--tls-certificates={}", pki.server),
        "memory",
        "1M",
    ]);
    let path = format!("/usr/bin:{}", std::env::var("PATH").unwrap_or_default());
    let out = run(
        Command::new("nbdsh").env("PATH", path).args([
            "-c",
            "h.set_uri_allow_local_file(True)",
            "-c",
            &format!("h.connect_uri({:?})", x509_uri(&srv, &pki.client)),
            "-c",
            "print(h.get_tls_negotiated(), h.get_size())",
        ]),
        CMD_TIMEOUT,
    )
    .assert_success();
    assert_eq!(out.stdout.trim(), "True 1048576");
}

/// `qemu-img info` of the 2 MiB export of `srv` through the TLS credentials
/// object `creds` (id tls0), with `extra` appended to the image options.
fn qemu_img_info_2m(srv: &Server, creds: &str, extra: &str) {
    let out = run_tool(
        "qemu-img",
        [
            "info",
            "--output=json",
            "--object",
            creds,
            "--image-opts",
            &format!(
                "file.driver=nbd,file.server.type=unix,file.server.path={},file.tls-creds=tls0{extra}",
                srv.socket().display()
            ),
        ],
    )
    .assert_success();
    assert!(
        out.stdout.contains("\"virtual-size\": 2097152"),
        "{}",
        out.describe()
    );
}

#[test]
fn qemu_img_info_x509() {
    skip_unless!("qemu-img");
    let dir = TempDir::new();
    let Some(pki) = make_pki(&dir) else { return };
    let srv = Server::start([
        "--tls=require",
        &format!("--tls-certificates={}", pki.server),
        "memory",
        "2M",
    ]);
    qemu_img_info_2m(
        &srv,
        &format!("tls-creds-x509,id=tls0,dir={},endpoint=client", pki.client),
        ",file.tls-hostname=localhost",
    );
}

// ---------------------------------------------------------------------------
// PSK
// ---------------------------------------------------------------------------

#[test]
fn nbdinfo_psk() {
    skip_unless!("nbdinfo");
    let dir = TempDir::new();
    let psk = make_psk(&dir);
    let srv = Server::start(["--tls=require", &format!("--tls-psk={psk}"), "memory", "1M"]);
    let out = nbdinfo_size(&psk_uri(&srv, "alice", &psk)).assert_success();
    assert_eq!(out.stdout.trim(), "1048576");
    // An unknown user and a wrong key fail.
    let out = nbdinfo_size(&psk_uri(&srv, "mallory", &psk));
    assert!(
        !out.success(),
        "unknown PSK user accepted: {}",
        out.describe()
    );
    let bad = dir.join("bad.psk");
    fs::write(&bad, format!("alice:{}\n", "ab".repeat(32))).unwrap();
    let out = nbdinfo_size(&psk_uri(&srv, "alice", path_str(&bad)));
    assert!(!out.success(), "wrong PSK accepted: {}", out.describe());
    // Plain clients are refused.
    assert!(!nbdinfo_size(&srv.uri()).success());
    nbdinfo_size(&psk_uri(&srv, "alice", &psk)).assert_success();
}

#[test]
fn psk_tls12() {
    // GnuTLS clients offer TLS 1.3 first; with it disabled by a priority
    // file the server's TLS 1.2 PSK cipher suites are used.
    skip_unless!("nbdinfo");
    let dir = TempDir::new();
    let psk = make_psk(&dir);
    let prio = dir.join("prio.conf");
    fs::write(&prio, "[overrides]\ndisabled-version = tls1.3\n").unwrap();
    let srv = Server::start([
        "-v",
        "-D",
        "nbdkit.tls.session=1",
        "--tls=require",
        &format!("--tls-psk={psk}"),
        "memory",
        "1M",
    ]);
    run(
        Command::new("nbdinfo")
            .env("GNUTLS_SYSTEM_PRIORITY_FILE", &prio)
            .args(["--size", &psk_uri(&srv, "alice", &psk)]),
        CMD_TIMEOUT,
    )
    .assert_success();
    let log = srv.stderr();
    assert!(log.contains("TLS session: TLSv1.2"), "{log}");
}

#[test]
fn qemu_img_info_psk() {
    skip_unless!("qemu-img");
    let dir = TempDir::new();
    let psk = make_psk(&dir);
    let pskdir = Path::new(&psk).parent().unwrap();
    let srv = Server::start(["--tls=require", &format!("--tls-psk={psk}"), "memory", "2M"]);
    qemu_img_info_2m(
        &srv,
        &format!(
            "tls-creds-psk,id=tls0,dir={},username=alice,endpoint=client",
            pskdir.display()
        ),
        "",
    );
}

// ---------------------------------------------------------------------------
// Debug output, --run, start-up errors
// ---------------------------------------------------------------------------

#[test]
fn debug_tls_session() {
    skip_unless!("nbdinfo");
    let dir = TempDir::new();
    let Some(pki) = make_pki(&dir) else { return };
    let srv = Server::start([
        "-v",
        "-D",
        "nbdkit.tls.session=1",
        "--tls=require",
        "--tls-verify-peer",
        &format!("--tls-certificates={}", pki.server),
        "memory",
        "1M",
    ]);
    nbdinfo_size(&x509_uri(&srv, &pki.client)).assert_success();
    let log = srv.stderr();
    assert!(log.contains("TLS session: TLSv1.3"), "{log}");
    assert!(log.contains("subject `CN=client"), "{log}");
    assert!(log.contains("using TLS on this connection"), "{log}");

    let psk = make_psk(&dir);
    let srv = Server::start([
        "-v",
        "-D",
        "nbdkit.tls.session=1",
        "--tls=require",
        &format!("--tls-psk={psk}"),
        "memory",
        "1M",
    ]);
    nbdinfo_size(&psk_uri(&srv, "alice", &psk)).assert_success();
    let log = srv.stderr();
    assert!(log.contains("TLS: PSK username: alice"), "{log}");
}

fn captive(args: &[&str]) -> nbdkit_tests::Output {
    run(
        nbdkit_cmd().args(args).args([
            "-U",
            "-",
            "memory",
            "1M",
            "--run",
            "echo \"tls=${tls-unset} uri=$uri\"",
        ]),
        CMD_TIMEOUT,
    )
}

#[test]
fn run_environment() {
    let dir = TempDir::new();
    let Some(pki) = make_pki(&dir) else { return };
    let certs = format!("--tls-certificates={}", pki.server);
    let out = captive(&["--tls=require", &certs]).assert_success();
    assert!(
        out.stdout.starts_with("tls=2 uri=nbds+unix://"),
        "{}",
        out.describe()
    );
    let out = captive(&["--tls=on", &certs]).assert_success();
    assert!(
        out.stdout.starts_with("tls=1 uri=nbd+unix://"),
        "{}",
        out.describe()
    );
    // Credentials found without --tls: TLS on.
    let out = captive(&[&certs]).assert_success();
    assert!(
        out.stdout.starts_with("tls=1 uri=nbd+unix://"),
        "{}",
        out.describe()
    );
    let out = captive(&["--tls=off", &certs]).assert_success();
    assert!(
        out.stdout.starts_with("tls=unset uri=nbd+unix://"),
        "{}",
        out.describe()
    );
}

#[test]
fn startup_errors() {
    let dir = TempDir::new();
    let Some(pki) = make_pki(&dir) else { return };
    let missing = path_str(&dir.join("missing")).to_string();
    let one_error = |out: &nbdkit_tests::Output, what: &str| {
        assert_eq!(out.code(), Some(1), "{what}: {}", out.describe());
        let lines: Vec<&str> = out.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{what}: {}", out.describe());
        assert!(
            lines[0].starts_with("nbdkit: error: "),
            "{what}: {}",
            out.describe()
        );
    };
    let out = captive(&["--tls=require", &format!("--tls-certificates={missing}")]);
    one_error(&out, "require, no certificates");
    let out = captive(&["--tls=require", &format!("--tls-psk={missing}")]);
    one_error(&out, "missing PSK file");
    let bad = dir.join("bad.psk");
    fs::write(&bad, "alice:xyz\n").unwrap();
    let out = captive(&["--tls=require", &format!("--tls-psk={}", bad.display())]);
    one_error(&out, "invalid PSK file");
    // A certificate directory with a broken key.
    let broken = dir.join("broken");
    fs::create_dir_all(&broken).unwrap();
    for f in ["ca-cert.pem", "server-cert.pem"] {
        fs::copy(Path::new(&pki.server).join(f), broken.join(f)).unwrap();
    }
    fs::write(broken.join("server-key.pem"), "junk\n").unwrap();
    let out = captive(&[
        "--tls=on",
        &format!("--tls-certificates={}", broken.display()),
    ]);
    one_error(&out, "invalid key");
    // --tls=on without certificates: a warning, then plain service.
    let out = captive(&["--tls=on", &format!("--tls-certificates={missing}")]).assert_success();
    assert!(out.stderr.contains("warning"), "{}", out.describe());
    assert!(out.stdout.starts_with("tls=unset"), "{}", out.describe());
}

#[test]
fn dump_config_says_tls() {
    let out = run(nbdkit_cmd().arg("--dump-config"), CMD_TIMEOUT).assert_success();
    assert!(out.stdout.lines().any(|l| l == "tls=yes"), "{}", out.stdout);
}

#[test]
fn plugins_see_is_tls() {
    skip_unless!("nbdinfo");
    let dir = TempDir::new();
    let Some(pki) = make_pki(&dir) else { return };
    let log = dir.join("opens");
    let srv = match Server::try_start([
        "--tls=on".to_string(),
        format!("--tls-certificates={}", pki.server),
        "eval".to_string(),
        format!("open=echo \"$@\" >> {}; echo h", log.display()),
        "get_size=echo 1048576".to_string(),
        "pread=dd if=/dev/zero count=$3 iflag=count_bytes 2>/dev/null".to_string(),
    ]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("SKIP: the eval plugin is not available: {e}");
            return;
        }
    };
    nbdinfo_size(&srv.uri()).assert_success();
    nbdinfo_size(&x509_uri(&srv, &pki.client)).assert_success();
    // open READONLY EXPORTNAME TLS
    let opens = fs::read_to_string(&log).unwrap();
    let tls: Vec<&str> = opens
        .lines()
        .map(|l| l.split(' ').next_back().unwrap_or(""))
        .collect();
    assert_eq!(tls, ["false", "true"], "{opens}");
}

#[test]
fn crl_revokes_client_certificate() {
    skip_unless!("nbdinfo", "certtool");
    let dir = TempDir::new();
    let Some(pki) = make_pki(&dir) else { return };
    sh(
        "printf 'crl_next_update = 365\\ncrl_number = 1\\n' > crl.info
         certtool --generate-crl --load-ca-privkey ca-key.pem --load-ca-certificate ca-cert.pem \
           --load-certificate client-cert.pem --template crl.info --outfile ca-crl.pem >/dev/null 2>&1",
        &dir.join("work"),
    );
    fs::copy(
        dir.join("work/ca-crl.pem"),
        Path::new(&pki.server).join("ca-crl.pem"),
    )
    .unwrap();
    let srv = Server::start([
        "--tls=require",
        "--tls-verify-peer",
        &format!("--tls-certificates={}", pki.server),
        "memory",
        "1M",
    ]);
    let out = nbdinfo_size(&x509_uri(&srv, &pki.client));
    assert!(
        !out.success(),
        "a revoked certificate was accepted: {}",
        out.describe()
    );
}
