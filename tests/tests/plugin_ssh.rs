//! The ssh plugin (plugins/ssh, `libnbdkit_ssh_plugin.so` beside the
//! binary) against a real OpenSSH server that each test starts itself:
//! `/usr/sbin/sshd -D -f CONFIG -p PORT` on 127.0.0.1 with a temporary host
//! key and an authorised test key, its SFTP server `internal-sftp`.
//!
//! sshd is run as the test user. As root it needs its privilege separation
//! directory `/run/sshd` (what the Debian service creates): the tests create
//! it when it is missing. No system service or file is changed otherwise;
//! the password test sees a private copy of /etc/shadow through a bind mount
//! in its own mount namespace (root only).
//!
//! Every test first checks that `nbdkit ssh` loads the plugin built beside
//! the binary under test (not Debian's C plugin, which this server could
//! load too); build it with `cargo build -p nbdkit-ssh-plugin` (`--release`
//! for target/release/nbdkit).
#![allow(clippy::std_instead_of_core)]

use std::fs;
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nbdkit_tests::*;

const SSHD: &str = "/usr/sbin/sshd";
const IMAGE_SIZE: usize = 64 * 1024 * 1024;

/// `nbdkit ssh` is this project's plugin, built beside the binary.
fn ssh_plugin() {
    assert_plugin_built_beside("ssh");
}

/// The tools a test needs, else a SKIP line and false.
fn have_tools() -> bool {
    for t in [SSHD, "/usr/bin/ssh-keygen"] {
        if !Path::new(t).exists() {
            println!("SKIP: {t} is not installed (Debian openssh-server, openssh-client)");
            return false;
        }
    }
    ssh_plugin();
    true
}

fn is_root() -> bool {
    // SAFETY: no arguments.
    unsafe { libc::geteuid() == 0 }
}

/// The name of the user running the tests (sshd logs in only that user).
fn user_name() -> String {
    // SAFETY: getpwuid returns NULL or a pointer to a static record.
    let pw = unsafe { libc::getpwuid(libc::geteuid()) };
    assert!(!pw.is_null(), "the test user has no passwd entry");
    // SAFETY: a valid record with a NUL-terminated name.
    unsafe { std::ffi::CStr::from_ptr((*pw).pw_name) }
        .to_string_lossy()
        .into_owned()
}

/// A free TCP port on 127.0.0.1 (free when this returns).
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// The pids of the processes below `pid` (children first found by their
/// parent in /proc), deepest last.
fn descendants(pid: i32) -> Vec<i32> {
    let mut all: Vec<(i32, i32)> = Vec::new();
    if let Ok(rd) = fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let Ok(stat) = fs::read_to_string(e.path().join("stat")) else {
                continue;
            };
            // "PID (COMM) STATE PPID ..."; COMM may hold spaces.
            let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
                continue;
            };
            if let Some(pp) = rest.split_whitespace().nth(1).and_then(|s| s.parse().ok()) {
                all.push((p, pp));
            }
        }
    }
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    for _ in 0..16 {
        let next: Vec<i32> = all
            .iter()
            .filter(|(_, pp)| frontier.contains(pp))
            .map(|(p, _)| *p)
            .collect();
        if next.is_empty() {
            break;
        }
        out.extend(&next);
        frontier = next;
    }
    out
}

fn signal(pids: &[i32], sig: libc::c_int) {
    for &p in pids {
        // SAFETY: a signal to a process this test started (or its child).
        unsafe { libc::kill(p, sig) };
    }
}

/// A running sshd with its keys, stopped (with its session processes) on drop.
struct Sshd {
    dir: TempDir,
    child: Child,
    port: u16,
    user: String,
}

/// Extra sshd_config lines for a test.
const NO_PASSWORDS: &str = "PasswordAuthentication no\n";

impl Sshd {
    fn start() -> Sshd {
        Sshd::start_with(NO_PASSWORDS, None)
    }

    /// sshd with `extra` config lines; `wrap` runs it through a shell
    /// command (`sh -c WRAP sh SSHD ARGS...`), for the mount namespace.
    fn start_with(extra: &str, wrap: Option<&str>) -> Sshd {
        if is_root() && !Path::new("/run/sshd").is_dir() {
            // sshd's privilege separation directory, as the Debian service
            // makes it.
            fs::create_dir_all("/run/sshd").expect("cannot create /run/sshd");
            fs::set_permissions("/run/sshd", fs::Permissions::from_mode(0o755)).unwrap();
        }
        let dir = TempDir::new();
        for key in ["hostkey", "otherhostkey", "userkey", "wrongkey"] {
            let o = run(
                Command::new("/usr/bin/ssh-keygen")
                    .args(["-q", "-t", "ed25519", "-N", "", "-C", key, "-f"])
                    .arg(dir.join(key)),
                CMD_TIMEOUT,
            );
            assert!(o.success(), "ssh-keygen failed: {}", o.describe());
        }
        fs::copy(dir.join("userkey.pub"), dir.join("authorized_keys")).unwrap();
        let config = format!(
            "ListenAddress 127.0.0.1\n\
             HostKey {hostkey}\n\
             AuthorizedKeysFile {auth}\n\
             PidFile {pid}\n\
             UsePAM no\n\
             StrictModes no\n\
             PermitRootLogin yes\n\
             KbdInteractiveAuthentication no\n\
             Subsystem sftp internal-sftp\n\
             LogLevel VERBOSE\n\
             {extra}",
            hostkey = dir.join("hostkey").display(),
            auth = dir.join("authorized_keys").display(),
            pid = dir.join("sshd.pid").display(),
        );
        fs::write(dir.join("sshd_config"), config).unwrap();
        let mut last = String::new();
        for _attempt in 0..5 {
            let port = free_port();
            let mut cmd = match wrap {
                Some(w) => {
                    let mut c = Command::new("/bin/sh");
                    c.args(["-c", w, "sh", SSHD]);
                    c
                }
                None => Command::new(SSHD),
            };
            cmd.args(["-D", "-e", "-f"])
                .arg(dir.join("sshd_config"))
                .args(["-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(fs::File::create(dir.join("sshd.log")).unwrap());
            let mut child = cmd.spawn().expect("cannot start sshd");
            let ready = wait_until(Duration::from_secs(20), || {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    return true;
                }
                banner(port)
            });
            if ready && matches!(child.try_wait(), Ok(None)) {
                let kh = format!("[127.0.0.1]:{port} {}", key_field(&dir.join("hostkey.pub")));
                fs::write(dir.join("known_hosts"), kh + "\n").unwrap();
                return Sshd {
                    dir,
                    child,
                    port,
                    user: user_name(),
                };
            }
            let _ = child.kill();
            let _ = child.wait();
            last = fs::read_to_string(dir.join("sshd.log")).unwrap_or_default();
        }
        panic!("sshd did not start; its log:\n{last}");
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn p(&self, name: &str) -> String {
        path_str(&self.path(name)).to_string()
    }

    /// The parameters that reach this server with the authorised key.
    fn params(&self) -> Vec<String> {
        vec![
            "host=127.0.0.1".into(),
            format!("port={}", self.port),
            format!("user={}", self.user),
            format!("identity={}", self.p("userkey")),
            format!("known-hosts={}", self.p("known_hosts")),
            // Leave the user's ~/.ssh/config out of it.
            "config=".into(),
        ]
    }

    /// The pid of the listener (wrapped: the sshd below the shell).
    fn listener(&mut self) -> i32 {
        let pid = self.child.id() as i32;
        fs::read_to_string(self.path("sshd.pid"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(pid)
    }

    /// The session processes (everything below the listener).
    fn sessions(&mut self) -> Vec<i32> {
        let l = self.listener();
        descendants(l)
    }

    /// SIGKILL the listener and its sessions: the server is gone.
    fn kill(&mut self) {
        let mut all = self.sessions();
        all.push(self.listener());
        signal(&all, libc::SIGKILL);
        let _ = self.child.kill();
        let _ = wait_timeout(&mut self.child, STOP_TIMEOUT);
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let mut all = self.sessions();
        all.push(self.listener());
        signal(&all, libc::SIGCONT);
        signal(&all, libc::SIGKILL);
        let _ = self.child.kill();
        let _ = wait_timeout(&mut self.child, STOP_TIMEOUT);
    }
}

/// Whether an SSH server answers with its banner on `port`.
fn banner(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut b = [0u8; 8];
    s.read_exact(&mut b).is_ok() && b.starts_with(b"SSH-2.0")
}

/// "TYPE BASE64" of a .pub file.
fn key_field(pubfile: &Path) -> String {
    let s = fs::read_to_string(pubfile).unwrap();
    s.split_whitespace().take(2).collect::<Vec<_>>().join(" ")
}

/// The `nbdkit: ... error: ` lines.
fn error_lines(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter(|l| l.starts_with("nbdkit: ") && l.contains("error: "))
        .map(str::to_string)
        .collect()
}

/// Start nbdkit ssh with `args`, try a connection that must fail, and
/// return the error lines (exactly one expected).
fn open_fails(args: &[String]) -> String {
    let mut all = vec!["ssh".to_string()];
    all.extend(args.iter().cloned());
    let srv = Server::start(&all);
    let o = run_tool("nbdinfo", ["--size", &srv.uri()]);
    assert!(!o.success(), "the connection worked: {}", o.describe());
    let errors = error_lines(&srv.stderr());
    assert_eq!(
        errors.len(),
        1,
        "want one error line, got: {}",
        srv.stderr()
    );
    errors[0].clone()
}

fn with(base: Vec<String>, more: &[&str]) -> Vec<String> {
    let mut v = base;
    v.extend(more.iter().map(|s| s.to_string()));
    v
}

/// Serve `path` (remote file) through nbdkit ssh with `extra` options.
fn serve(sshd: &Sshd, extra: &[&str], path: &Path) -> Server {
    let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    args.push("ssh".into());
    args.extend(sshd.params());
    args.push(path_str(path).into());
    Server::start(&args)
}

/// `assert_bytes_eq`, with the common equal case compared by memcmp (the
/// test code is built without optimisation; 64 MiB byte by byte is slow).
#[track_caller]
fn same(what: &str, got: &[u8], want: &[u8]) {
    if got != want {
        assert_bytes_eq(what, got, want);
    }
}

/// `qemu-img convert` of raw `from` to raw `to` (`-n`: into an existing
/// target, such as an NBD URI).
fn qemu_img_convert(from: &str, to: &str, existing: bool) {
    let mut args = vec!["convert"];
    if existing {
        args.push("-n");
    }
    args.extend(["-f", "raw", "-O", "raw", from, to]);
    run_tool("qemu-img", args).assert_success();
}

/// `data` rotated by `n` bytes: another image without another PRNG run.
fn variant(data: &[u8], n: usize, path: &Path) -> Vec<u8> {
    let mut v = data.to_vec();
    v.rotate_left(n);
    fs::write(path, &v).unwrap();
    v
}

#[test]
fn image_round_trips_through_qemu_img_and_nbdcopy() {
    if !have_tools() || !skip_unless("nbdcopy") || !skip_unless("qemu-img") {
        return;
    }
    let sshd = Sshd::start();
    let remote = sshd.path("disk.img");
    let data = write_random_file(&remote, IMAGE_SIZE, 12);
    let local = TempDir::new();
    let out = local.join("out.img");

    // Reads, plain and through the cow and cache filters.
    for filter in [None, Some("--filter=cow"), Some("--filter=cache")] {
        let extra: Vec<&str> = filter.into_iter().collect();
        let srv = serve(&sshd, &extra, &remote);
        let what = filter.unwrap_or("plain");
        let _ = fs::remove_file(&out);
        run_tool("nbdcopy", [srv.uri().as_str(), path_str(&out)]).assert_success();
        same(
            &format!("nbdcopy read ({what})"),
            &fs::read(&out).unwrap(),
            &data,
        );
        let _ = fs::remove_file(&out);
        qemu_img_convert(&srv.uri(), path_str(&out), false);
        same(
            &format!("qemu-img read ({what})"),
            &fs::read(&out).unwrap(),
            &data,
        );
        // What the client wrote through cow stays in the overlay.
        if filter == Some("--filter=cow") {
            let src = local.join("cow-src.img");
            let mine = variant(&data, 1, &src);
            run_tool("nbdcopy", ["--flush", path_str(&src), srv.uri().as_str()]).assert_success();
            let _ = fs::remove_file(&out);
            run_tool("nbdcopy", [srv.uri().as_str(), path_str(&out)]).assert_success();
            same("read back through cow", &fs::read(&out).unwrap(), &mine);
            same(
                "remote after writes through cow",
                &fs::read(&remote).unwrap(),
                &data,
            );
        }
    }

    // Writes, plain and through the cache filter (written back on flush).
    for (i, filter) in [None, Some("--filter=cache")].into_iter().enumerate() {
        let extra: Vec<&str> = filter.into_iter().collect();
        let what = filter.unwrap_or("plain");
        let srv = serve(&sshd, &extra, &remote);
        let src = local.join("src.img");
        let want = variant(&data, 4096 * (i + 1) + 7, &src);
        // --flush: the cache filter writes back on flush.
        run_tool("nbdcopy", ["--flush", path_str(&src), srv.uri().as_str()]).assert_success();
        same(
            &format!("nbdcopy write ({what})"),
            &fs::read(&remote).unwrap(),
            &want,
        );
        let want = variant(&data, 65536 * (i + 3) + 11, &src);
        qemu_img_convert(path_str(&src), &srv.uri(), true);
        drop(srv);
        same(
            &format!("qemu-img write ({what})"),
            &fs::read(&remote).unwrap(),
            &want,
        );
    }
}

#[test]
fn flush_size_and_multi_conn_are_the_servers() {
    if !have_tools() || !skip_unless("nbdinfo") || !skip_unless("python3-nbd") {
        return;
    }
    let sshd = Sshd::start();
    let remote = sshd.path("disk.img");
    write_random_file(&remote, 3 * 1024 * 1024 + 512, 1);
    let srv = serve(&sshd, &[], &remote);
    let o = run_tool("nbdinfo", ["--json", &srv.uri()]).assert_success();
    let j = Json::parse(&o.stdout).unwrap();
    let e = &j.get("exports").unwrap().as_array().unwrap()[0];
    assert_eq!(
        e.get("export-size").unwrap().as_u64(),
        Some(3 * 1024 * 1024 + 512)
    );
    // OpenSSH has fsync@openssh.com: flush, FUA and multi-conn.
    for k in ["can_flush", "can_fua", "can_multi_conn"] {
        assert_eq!(e.get(k).unwrap().as_bool(), Some(true), "{k}: {}", o.stdout);
    }
    assert_eq!(e.get("is_read_only").unwrap().as_bool(), Some(false));
    // The file shrinks under the connection: reads past its new end fail
    // (EIO, one error line each) instead of looping; reads before it work.
    let code = r#"
import nbd, os, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
before = h.pread(1 << 20, 0)
os.truncate(sys.argv[2], 100000)
try:
    h.pread(1 << 20, 0)
    print("PAST END OK")
except nbd.Error as e:
    print("PAST END", e.errnum)
assert h.pread(65536, 0) == before[:65536]
print("BEFORE END OK")
"#;
    let o = run_python_code(code, [srv.uri().as_str(), path_str(&remote)]);
    assert!(o.success(), "{}\nserver: {}", o.describe(), srv.stderr());
    assert!(o.stdout.contains("PAST END 5"), "{}", o.stdout);
    assert!(
        srv.stderr()
            .contains("read failed: unexpected end of file at offset 100000"),
        "{}",
        srv.stderr()
    );
    // A read-only server opens the file read-only.
    let ro = {
        let mut a = vec!["-r".to_string(), "ssh".into()];
        a.extend(sshd.params());
        a.push(path_str(&remote).into());
        Server::start(&a)
    };
    let o = run_tool("nbdinfo", ["--json", &ro.uri()]).assert_success();
    let j = Json::parse(&o.stdout).unwrap();
    let e = &j.get("exports").unwrap().as_array().unwrap()[0];
    assert_eq!(e.get("is_read_only").unwrap().as_bool(), Some(true));
}

#[test]
fn create_makes_the_remote_file_once() {
    if !have_tools() || !skip_unless("python3-nbd") {
        return;
    }
    let sshd = Sshd::start();
    let remote = sshd.path("new.img");
    // An existing file is replaced.
    fs::write(&remote, vec![0xaa; 4096]).unwrap();
    let mut args = vec!["ssh".to_string()];
    args.extend(sshd.params());
    args.extend([
        path_str(&remote).to_string(),
        "create=true".into(),
        "create-size=1M".into(),
        "create-mode=0640".into(),
    ]);
    let srv = Server::start(&args);
    let code = r#"
import nbd, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
assert h.get_size() == 1048576, h.get_size()
assert h.pread(4096, 0) == bytes(4096)
h.pwrite(b"hello" * 100, 8192)
h.flush()
h.shutdown()
# A second connection opens what the first created: no new truncation.
h = nbd.NBD()
h.connect_uri(sys.argv[1])
assert h.pread(500, 8192) == b"hello" * 100
h.shutdown()
"#;
    let o = run_python_code(code, [srv.uri()]);
    assert!(o.success(), "{}\nserver: {}", o.describe(), srv.stderr());
    let md = fs::metadata(&remote).unwrap();
    assert_eq!(md.len(), 1048576);
    assert_eq!(md.permissions().mode() & 0o777, 0o640);

    // create=true needs create-size; create-mode is at most 0777.
    let o = run(
        nbdkit_cmd().args(["ssh", "host=h", "p", "create=true", "--run", "true"]),
        CMD_TIMEOUT,
    );
    assert_eq!(o.code(), Some(1), "{}", o.describe());
    assert!(o.stderr.contains("create-size=SIZE"), "{}", o.describe());
    let o = run(
        nbdkit_cmd().args(["ssh", "host=h", "p", "create-mode=01000", "--run", "true"]),
        CMD_TIMEOUT,
    );
    assert_eq!(o.code(), Some(1), "{}", o.describe());
    assert!(
        o.stderr.contains("create-mode must be <= 0777"),
        "{}",
        o.describe()
    );
}

#[test]
fn config_file_compression_and_libssh_log() {
    if !have_tools() || !skip_unless("nbdcopy") {
        return;
    }
    let sshd = Sshd::start();
    let remote = sshd.path("disk.img");
    let data = write_random_file(&remote, 4 * 1024 * 1024, 2);
    // Everything but the host alias and the path comes from the file.
    let cfg = sshd.path("ssh_config");
    fs::write(
        &cfg,
        format!(
            "Host testalias\n  HostName 127.0.0.1\n  Port {}\n  User {}\n  IdentityFile {}\n  \
             UserKnownHostsFile {}\n",
            sshd.port,
            sshd.user,
            sshd.p("userkey"),
            sshd.p("known_hosts")
        ),
    )
    .unwrap();
    let srv = Server::start([
        "-v",
        "-D",
        "ssh.log=2",
        "ssh",
        "host=testalias",
        &format!("config={}", path_str(&cfg)),
        "compression=true",
        "timeout=30",
        path_str(&remote),
    ]);
    let out = TempDir::new();
    run_tool("nbdcopy", [srv.uri().as_str(), path_str(&out.join("o"))]).assert_success();
    assert_bytes_eq("through config=", &fs::read(out.join("o")).unwrap(), &data);
    let log = srv.stderr();
    assert!(
        log.contains("libssh: protocol: "),
        "no libssh log lines: {log}"
    );
    // compression=true: zlib negotiated.
    assert!(
        log.lines()
            .any(|l| l.contains("libssh") && l.contains("zlib")),
        "compression not negotiated: {log}"
    );
    // Without -D ssh.log there are no libssh lines.
    drop(srv);
    let srv = Server::start([
        "-v",
        "ssh",
        "host=testalias",
        &format!("config={}", path_str(&cfg)),
        path_str(&remote),
    ]);
    run_tool("nbdinfo", ["--size", &srv.uri()]).assert_success();
    assert!(!srv.stderr().contains("libssh: "), "{}", srv.stderr());
    // config= (empty) reads no file: the alias does not resolve.
    let e = open_fails(&[
        "host=testalias".into(),
        "config=".into(),
        "timeout=10".into(),
        path_str(&remote).into(),
    ]);
    assert!(
        e.contains("failed to connect to remote host: testalias"),
        "{e}"
    );
}

/// `nbdkit -U - ssh ARGS --run 'nbdinfo --size $uri'` with `env`; the
/// size it printed, or the failure.
fn size_with_env(args: &[String], env: &[(&str, &str)]) -> Result<String, String> {
    let mut cmd = nbdkit_cmd();
    cmd.args(["-U", "-", "ssh"])
        .args(args)
        .args(["--run", "nbdinfo --size \"$uri\""])
        .env_remove("SSH_AUTH_SOCK");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let o = run(&mut cmd, CMD_TIMEOUT);
    if o.success() {
        Ok(o.stdout.trim().to_string())
    } else {
        Err(o.describe())
    }
}

/// libssh finds `~` through the password database, not `$HOME`, so the
/// default files (~/.ssh/known_hosts, ~/.ssh/id_*) and `%d` are left out:
/// the test would have to write into the real home directory.
#[test]
fn path_expansions_and_agent() {
    if !have_tools() || !skip_unless("nbdinfo") || !skip_unless("/usr/bin/ssh-agent") {
        return;
    }
    let sshd = Sshd::start();
    let remote = sshd.path("disk.img");
    write_random_file(&remote, 1024 * 1024, 9);
    let dir = TempDir::new();
    // %p (the port), %h (the remote host), %u (the local user), %r (the
    // remote user) in identity= and known-hosts=.
    fs::copy(
        sshd.path("known_hosts"),
        dir.join(format!("kh-127.0.0.1-{}", sshd.port)),
    )
    .unwrap();
    let id = dir.join(format!("id-{}-{}", user_name(), sshd.user));
    fs::copy(sshd.path("userkey"), &id).unwrap();
    fs::set_permissions(&id, fs::Permissions::from_mode(0o600)).unwrap();
    let d = path_str(dir.path());
    let common = vec![
        "host=127.0.0.1".to_string(),
        format!("port={}", sshd.port),
        format!("user={}", sshd.user),
        "config=".into(),
        path_str(&remote).to_string(),
    ];
    let kh = format!("known-hosts={d}/kh-%h-%p");
    let expanded = with(common.clone(), &[&kh, &format!("identity={d}/id-%u-%r")]);
    assert_eq!(size_with_env(&expanded, &[]).as_deref(), Ok("1048576"));
    // The key held by an SSH agent, no key file given.
    let with_kh = with(common.clone(), &[&kh]);
    let e = size_with_env(&with_kh, &[]).unwrap_err();
    assert!(
        e.contains("all possible authentication methods failed"),
        "{e}"
    );
    let sock = dir.join("agent.sock");
    let mut agent = Command::new("/usr/bin/ssh-agent")
        .args(["-D", "-a"])
        .arg(&sock)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("cannot start ssh-agent");
    let up = wait_until(Duration::from_secs(20), || sock.exists());
    let added = run(
        Command::new("/usr/bin/ssh-add")
            .arg(&id)
            .env("SSH_AUTH_SOCK", &sock),
        CMD_TIMEOUT,
    );
    let r = size_with_env(&with_kh, &[("SSH_AUTH_SOCK", path_str(&sock))]);
    let _ = agent.kill();
    let _ = agent.wait();
    assert!(up, "ssh-agent did not create its socket");
    assert!(added.success(), "ssh-add: {}", added.describe());
    assert_eq!(r.as_deref(), Ok("1048576"));
}

#[test]
fn known_hosts_verification() {
    if !have_tools() || !skip_unless("nbdinfo") {
        return;
    }
    let sshd = Sshd::start();
    let remote = sshd.path("disk.img");
    write_random_file(&remote, 1024 * 1024, 3);
    let empty = sshd.path("empty_known_hosts");
    fs::write(&empty, "").unwrap();
    let base = |kh: &Path| -> Vec<String> {
        sshd.params()
            .into_iter()
            .map(|p| {
                if p.starts_with("known-hosts=") {
                    format!("known-hosts={}", path_str(kh))
                } else {
                    p
                }
            })
            .collect()
    };
    // Unknown host key.
    let e = open_fails(&with(base(&empty), &[path_str(&remote)]));
    assert!(e.contains("the host key is unknown"), "{e}");
    // A missing known_hosts file.
    let e = open_fails(&with(base(&sshd.path("missing")), &[path_str(&remote)]));
    assert!(e.contains("the host key is unknown"), "{e}");
    // A changed key.
    let changed = sshd.path("changed_known_hosts");
    fs::write(
        &changed,
        format!(
            "[127.0.0.1]:{} {}\n",
            sshd.port,
            key_field(&sshd.path("otherhostkey.pub"))
        ),
    )
    .unwrap();
    let e = open_fails(&with(base(&changed), &[path_str(&remote)]));
    assert!(e.contains("host key for server changed"), "{e}");
    // verify-remote-host=false skips the check.
    let mut a = vec!["ssh".to_string()];
    a.extend(base(&empty));
    a.extend(["verify-remote-host=false".into(), path_str(&remote).into()]);
    let srv = Server::start(&a);
    let o = run_tool("nbdinfo", ["--size", &srv.uri()]).assert_success();
    assert_eq!(o.stdout.trim(), "1048576");
}

#[test]
fn wrong_key_is_an_authentication_failure() {
    if !have_tools() || !skip_unless("nbdinfo") {
        return;
    }
    let sshd = Sshd::start();
    let remote = sshd.path("disk.img");
    write_random_file(&remote, 1024 * 1024, 4);
    let args: Vec<String> = sshd
        .params()
        .into_iter()
        .map(|p| {
            if p.starts_with("identity=") {
                format!("identity={}", sshd.p("wrongkey"))
            } else {
                p
            }
        })
        .collect();
    let e = open_fails(&with(args, &[path_str(&remote)]));
    assert!(
        e.contains("all possible authentication methods failed"),
        "{e}"
    );
    // A missing remote file.
    let e = open_fails(&with(sshd.params(), &[path_str(&sshd.path("nope"))]));
    assert!(e.contains("cannot open file for writing"), "{e}");
}

#[test]
fn connection_refused_is_one_error_line() {
    if !have_tools() || !skip_unless("nbdinfo") {
        return;
    }
    let port = free_port();
    let e = open_fails(&[
        "host=127.0.0.1".into(),
        format!("port={port}"),
        "config=".into(),
        "/disk.img".into(),
    ]);
    assert!(
        e.contains("failed to connect to remote host: 127.0.0.1: Connection refused"),
        "{e}"
    );
    // The parameters a start needs.
    let o = run(
        nbdkit_cmd().args(["ssh", "host=h", "--run", "true"]),
        CMD_TIMEOUT,
    );
    assert_eq!(o.code(), Some(1), "{}", o.describe());
    let errors = error_lines(&o.stderr);
    assert_eq!(errors.len(), 1, "{}", o.describe());
    assert!(
        errors[0].contains("you must supply the host and path parameters"),
        "{}",
        o.stderr
    );
    let o = run(
        nbdkit_cmd().args(["ssh", "host=h", "p", "bogus=1"]),
        CMD_TIMEOUT,
    );
    assert_eq!(o.code(), Some(1), "{}", o.describe());
    assert!(
        o.stderr.contains("unknown parameter 'bogus'"),
        "{}",
        o.stderr
    );
    let o = run(
        nbdkit_cmd().args(["ssh", "host=h", "p", "timeout=x"]),
        CMD_TIMEOUT,
    );
    assert_eq!(o.code(), Some(1), "{}", o.describe());
    assert_eq!(error_lines(&o.stderr).len(), 1, "{}", o.stderr);
}

#[test]
fn stopped_listener_times_out_on_connect() {
    if !have_tools() || !skip_unless("nbdinfo") {
        return;
    }
    let mut sshd = Sshd::start();
    let remote = sshd.path("disk.img");
    write_random_file(&remote, 1024 * 1024, 5);
    // The kernel still accepts the TCP connection; sshd never answers.
    let l = sshd.listener();
    signal(&[l], libc::SIGSTOP);
    let e = open_fails(&with(sshd.params(), &["timeout=2", path_str(&remote)]));
    signal(&[l], libc::SIGCONT);
    assert!(e.contains("failed to connect to remote host"), "{e}");
    assert!(e.to_lowercase().contains("timeout"), "{e}");
}

/// A libnbd client (argv: URI, sshd listener pid, mode) that reads once,
/// then either stops the sshd session processes and reads (`stop`), or
/// stops them, starts a read and kills the whole sshd while the read is in
/// flight (`kill`). It prints how that read and one after it ended.
const AFTER_ACTION: &str = r#"
import nbd, os, signal, sys, time
uri, listener, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]

def kids(pid):
    out, frontier = [], [pid]
    for _ in range(16):
        nxt = []
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                stat = open("/proc/%s/stat" % d).read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) in frontier:
                nxt.append(int(d))
        if not nxt:
            break
        out += nxt
        frontier = nxt
    return out

def send(pids, sig):
    for p in pids:
        try:
            os.kill(p, sig)
        except OSError:
            pass

h = nbd.NBD()
h.connect_uri(uri)
assert len(h.pread(65536, 0)) == 65536
sessions = kids(listener)
assert sessions, "no sshd session processes"
send(sessions, signal.SIGSTOP)
if mode == "kill":
    buf = nbd.Buffer(4 << 20)
    cookie = h.aio_pread(buf, 0)
    # Give the request time to reach the plugin; the outcome does not
    # depend on it.
    for _ in range(10):
        h.poll(0)
        time.sleep(0.03)
    send(sessions + [listener], signal.SIGKILL)
    for _ in range(1000):
        try:
            if h.aio_command_completed(cookie):
                print("FIRST OK")
                break
        except nbd.Error as e:
            print("FIRST", e.errnum)
            break
        h.poll(100)
    else:
        print("FIRST HUNG")
else:
    try:
        h.pread(4 << 20, 0)
        print("FIRST OK")
    except nbd.Error as e:
        print("FIRST", e.errnum)
try:
    h.pread(4096, 0)
    print("SECOND OK")
except nbd.Error as e:
    print("SECOND", e.errnum)
send(sessions, signal.SIGCONT)
"#;

#[test]
fn sshd_killed_mid_request_gives_eio() {
    if !have_tools() || !skip_unless("python3-nbd") {
        return;
    }
    let mut sshd = Sshd::start();
    let remote = sshd.path("disk.img");
    write_random_file(&remote, 8 * 1024 * 1024, 6);
    // No timeout=: the failure must come from the closed connection.
    let srv = serve(&sshd, &[], &remote);
    let l = sshd.listener().to_string();
    let o = run_python_code(AFTER_ACTION, [srv.uri().as_str(), &l, "kill"]);
    sshd.kill();
    assert!(o.success(), "{}\nserver: {}", o.describe(), srv.stderr());
    assert!(
        o.stdout.contains("FIRST 5"),
        "in-flight read: {}\nserver: {}",
        o.stdout,
        srv.stderr()
    );
    assert!(
        o.stdout.contains("SECOND 5"),
        "next read: {}\nserver: {}",
        o.stdout,
        srv.stderr()
    );
    let errs = error_lines(&srv.stderr());
    assert!(
        errs.iter().any(|l| l.contains("read failed")),
        "no read error: {}",
        srv.stderr()
    );
    assert!(
        !errs.iter().any(|l| l.contains("did not answer")),
        "a closed connection must not wait for the timeout: {}",
        srv.stderr()
    );
}

#[test]
fn stopped_server_times_out_with_eio() {
    if !have_tools() || !skip_unless("python3-nbd") {
        return;
    }
    let mut sshd = Sshd::start();
    let remote = sshd.path("disk.img");
    write_random_file(&remote, 8 * 1024 * 1024, 7);
    // The sshd processes are stopped, their sockets open: the answer never
    // comes, and timeout= bounds the wait.
    let mut a = vec!["ssh".to_string()];
    a.extend(sshd.params());
    a.extend(["timeout=2".into(), path_str(&remote).into()]);
    let srv = Server::start(&a);
    let l = sshd.listener().to_string();
    let o = run_python_code(AFTER_ACTION, [srv.uri().as_str(), &l, "stop"]);
    let sessions = sshd.sessions();
    signal(&sessions, libc::SIGCONT);
    assert!(o.success(), "{}\nserver: {}", o.describe(), srv.stderr());
    assert!(
        o.stdout.contains("FIRST 5"),
        "{}\nserver: {}",
        o.stdout,
        srv.stderr()
    );
    assert!(
        o.stdout.contains("SECOND 5"),
        "{}\nserver: {}",
        o.stdout,
        srv.stderr()
    );
    let errs = error_lines(&srv.stderr());
    assert!(
        errs.iter()
            .any(|l| l.contains("read failed: the SSH server did not answer within 2 seconds")),
        "{}",
        srv.stderr()
    );
}

/// Run argv[1:] on a new pseudo-terminal, answer its password prompt,
/// print what it wrote and exit with its status (bounded waits).
const ON_A_TTY: &str = r#"
import os, pty, select, sys, termios, time
pid, fd = pty.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
out = b""
answered = False
deadline = time.time() + 100
while time.time() < deadline:
    r, _, _ = select.select([fd], [], [], 0.05)
    if r:
        try:
            data = os.read(fd, 4096)
        except OSError:
            break
        if not data:
            break
        out += data
    # Answer once the prompt is out and echo is off (the server flushes
    # what was typed before it turned echo off).
    if not answered and b"assword" in out and not termios.tcgetattr(fd)[3] & termios.ECHO:
        os.write(fd, b"s3cret pass\n")
        answered = True
sys.stdout.write(out.decode(errors="replace"))
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"#;

#[test]
fn password_forms() {
    if !have_tools() || !skip_unless("nbdinfo") {
        return;
    }
    if !is_root() {
        println!("SKIP: password authentication needs a private /etc/shadow (root only)");
        return;
    }
    // A private shadow file in which the test user's password is known,
    // seen only by this sshd (its own mount namespace).
    let dir = TempDir::new();
    let hash = run(
        Command::new("openssl").args(["passwd", "-6", "-salt", "nbdkitsalt", "s3cret pass"]),
        CMD_TIMEOUT,
    );
    if !hash.success() {
        println!("SKIP: openssl passwd failed: {}", hash.describe());
        return;
    }
    let user = user_name();
    let shadow: String = fs::read_to_string("/etc/shadow")
        .unwrap()
        .lines()
        .map(|l| {
            let mut f: Vec<&str> = l.split(':').collect();
            if f.first() == Some(&user.as_str()) && f.len() > 2 {
                f[1] = hash.stdout.trim();
            }
            f.join(":") + "\n"
        })
        .collect();
    let fake = dir.join("shadow");
    fs::write(&fake, shadow).unwrap();
    let probe = run(
        Command::new("unshare").args(["-m", "/bin/true"]),
        CMD_TIMEOUT,
    );
    if !probe.success() {
        println!("SKIP: cannot make a mount namespace: {}", probe.describe());
        return;
    }
    let wrap = format!(
        "mount --make-rprivate / && mount --bind {} /etc/shadow && exec \"$@\"",
        path_str(&fake)
    );
    let wrap = format!("exec unshare -m /bin/sh -c '{wrap}' sh \"$@\"");
    let sshd = Sshd::start_with(
        "PasswordAuthentication yes\nPubkeyAuthentication no\n",
        Some(&wrap),
    );
    let remote = sshd.path("disk.img");
    write_random_file(&remote, 1024 * 1024, 8);
    let base: Vec<String> = sshd
        .params()
        .into_iter()
        .filter(|p| !p.starts_with("identity="))
        .collect();
    let pwfile = dir.join("pw");
    fs::write(&pwfile, "s3cret pass\n").unwrap();
    let ok = |pw: &str| {
        let mut a = vec!["ssh".to_string()];
        a.extend(base.iter().cloned());
        a.extend([pw.to_string(), path_str(&remote).into()]);
        let srv = Server::start(&a);
        let o = run_tool("nbdinfo", ["--size", &srv.uri()]);
        assert!(
            o.success(),
            "{pw}: {}\nserver: {}",
            o.describe(),
            srv.stderr()
        );
        assert_eq!(o.stdout.trim(), "1048576");
    };
    ok("password=s3cret pass");
    ok(&format!("password=+{}", path_str(&pwfile)));
    // password=-FD: a descriptor inherited from the parent.
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg("exec \"$@\" 3<\"$PWFILE\"")
        .arg("sh")
        .arg(nbdkit_bin())
        .args(["-U", "-", "ssh"])
        .args(&base)
        .args([
            "password=-3",
            path_str(&remote),
            "--run",
            "nbdinfo --size \"$uri\"",
        ])
        .env("PWFILE", &pwfile);
    let o = run(&mut cmd, CMD_TIMEOUT);
    assert!(o.success(), "password=-3: {}", o.describe());
    assert_eq!(o.stdout.trim(), "1048576");
    // password=-: asked for on the terminal.
    let mut argv: Vec<String> = vec![path_str(&nbdkit_bin()).into(), "-U".into(), "-".into()];
    argv.push("ssh".into());
    argv.extend(base.iter().cloned());
    argv.extend([
        "password=-".into(),
        path_str(&remote).into(),
        "--run".into(),
        "nbdinfo --size \"$uri\"".into(),
    ]);
    let o = run_python_code(ON_A_TTY, &argv);
    assert!(o.success(), "password=-: {}", o.describe());
    assert!(o.stdout.contains("1048576"), "password=-: {}", o.describe());
    // A wrong password.
    let e = open_fails(&with(base.clone(), &["password=wrong", path_str(&remote)]));
    assert!(
        e.contains("all possible authentication methods failed"),
        "{e}"
    );
    // No password, no key.
    let e = open_fails(&with(base.clone(), &[path_str(&remote)]));
    assert!(
        e.contains("all possible authentication methods failed"),
        "{e}"
    );
}

#[test]
fn dump_plugin_and_help() {
    if !have_tools() {
        return;
    }
    let o = run(nbdkit_cmd().args(["ssh", "--dump-plugin"]), CMD_TIMEOUT);
    assert!(o.success(), "{}", o.describe());
    for want in [
        "name=ssh",
        "magic_config_key=path",
        "thread_model=serialize_requests",
        "has_flush=1",
        "has_can_multi_conn=1",
    ] {
        assert!(
            o.stdout.lines().any(|l| l == want),
            "no {want}: {}",
            o.stdout
        );
    }
    let o = run(nbdkit_cmd().args(["ssh", "--help"]), CMD_TIMEOUT);
    assert!(o.success(), "{}", o.describe());
    for p in ["host=<HOST>", "known-hosts=<FILENAME>", "create-size=SIZE"] {
        assert!(o.stdout.contains(p), "no {p}: {}", o.stdout);
    }
}

/// The error lines of `BIN -U - ssh ARGS --run 'nbdinfo --size $uri'`,
/// without the `nbdkit: ssh[N]: ` prefix.
fn error_texts(bin: &Path, args: &[String]) -> Vec<String> {
    let o = run(
        Command::new(bin)
            .args(["-U", "-", "ssh"])
            .args(args)
            .args(["--run", "nbdinfo --size \"$uri\""])
            .env_remove("SSH_AUTH_SOCK"),
        CMD_TIMEOUT,
    );
    error_lines(&o.stderr)
        .iter()
        .map(|l| {
            l.split_once("error: ")
                .map_or(l.as_str(), |x| x.1)
                .to_string()
        })
        .collect()
}

#[test]
fn errors_match_the_reference() {
    if !have_tools() || !skip_unless("nbdinfo") || !reference_installed() {
        return;
    }
    let plugin = "/usr/lib/x86_64-linux-gnu/nbdkit/plugins/nbdkit-ssh-plugin.so";
    if !Path::new(plugin).exists() {
        println!("SKIP: the reference has no ssh plugin ({plugin})");
        return;
    }
    let sshd = Sshd::start();
    let remote = sshd.path("disk.img");
    write_random_file(&remote, 1024 * 1024, 10);
    let empty = sshd.path("empty");
    fs::write(&empty, "").unwrap();
    let swap = |key: &str, value: String| -> Vec<String> {
        let mut v: Vec<String> = sshd
            .params()
            .into_iter()
            .map(|p| if p.starts_with(key) { value.clone() } else { p })
            .collect();
        v.push(path_str(&remote).into());
        v
    };
    let cases = [
        swap("identity=", format!("identity={}", sshd.p("wrongkey"))),
        swap("known-hosts=", format!("known-hosts={}", path_str(&empty))),
        swap("port=", format!("port={}", free_port())),
        with(sshd.params(), &[path_str(&sshd.path("missing"))]),
        with(sshd.params(), &[path_str(&remote), "bogus=1"]),
        vec!["host=127.0.0.1".into()],
        with(sshd.params(), &[path_str(&remote), "create=true"]),
        with(sshd.params(), &[path_str(&remote), "create-mode=01000"]),
        with(
            sshd.params(),
            &[path_str(&remote), "verify-remote-host=maybe"],
        ),
    ];
    for args in &cases {
        let ours = error_texts(&nbdkit_bin(), args);
        let theirs = error_texts(Path::new(REFERENCE), args);
        assert!(!ours.is_empty(), "no error for {args:?}");
        assert_eq!(ours, theirs, "error lines for {args:?}");
    }
}
