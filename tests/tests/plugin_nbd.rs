//! The nbd plugin (a proxy to another NBD server) against real remote
//! servers: this project's own nbdkit, Debian's qemu-nbd and nbd-server,
//! over Unix sockets and TCP loopback, with and without TLS (X.509 and
//! PSK); command= and its socket activation; and what happens when the
//! remote is missing, refuses, dies in the middle of a request or breaks
//! the protocol (one error line or EIO, never a hang).

use core::time::Duration;
use nbdkit_tests::{
    assert_bytes_eq, find_tool, nbdkit_bin, path_str, run, run_python_code, run_tool, skip_unless,
    write_random_file, Output, Server, TempDir, CMD_TIMEOUT,
};
use std::fs;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::Instant;

const SIZE: usize = 64 << 20;
const POLL: Duration = Duration::from_millis(20);
const READY: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------
// Remote servers
// ---------------------------------------------------------------------------

/// Where a remote server listens.
enum Addr {
    Unix(PathBuf),
    Tcp(u16),
}

/// A remote NBD server started by a test, stopped (by pid) on drop.
struct Remote {
    child: Child,
    /// For servers that daemonize (nbd-server): the pid in this file.
    pidfile: Option<PathBuf>,
    addr: Addr,
    log: PathBuf,
    _dir: TempDir,
}

/// A free TCP port on loopback (bound, then released).
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

fn accepts(addr: &Addr) -> bool {
    match addr {
        Addr::Unix(p) => p.exists() && UnixStream::connect(p).is_ok(),
        Addr::Tcp(port) => std::net::TcpStream::connect(("127.0.0.1", *port)).is_ok(),
    }
}

impl Remote {
    /// Start `cmd` (stdout and stderr to a log) and wait until `addr`
    /// accepts connections.
    fn start(mut cmd: Command, addr: Addr, pidfile: Option<PathBuf>, dir: TempDir) -> Remote {
        let log = dir.join("remote.log");
        let f = fs::File::create(&log).expect("create log");
        let f2 = f.try_clone().expect("clone log");
        use std::os::unix::process::CommandExt;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(f)
            .stderr(f2)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let mut r = Remote {
            child,
            pidfile,
            addr,
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + READY;
        for _ in 0..(READY.as_millis() / POLL.as_millis() + 2) {
            if accepts(&r.addr) {
                return r;
            }
            if r.pidfile.is_none() {
                if let Ok(Some(st)) = r.child.try_wait() {
                    panic!("remote {cmd:?} exited ({st}): {}", r.log_text());
                }
            }
            if Instant::now() > deadline {
                break;
            }
            thread::sleep(POLL);
        }
        panic!("remote {cmd:?} did not listen: {}", r.log_text());
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The pid serving (the daemon's, for servers that fork).
    fn pid(&self) -> Option<i32> {
        let Some(p) = &self.pidfile else {
            return Some(self.child.id() as i32);
        };
        for _ in 0..100 {
            if let Some(pid) = fs::read_to_string(p)
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                return Some(pid);
            }
            thread::sleep(POLL);
        }
        None
    }

    /// The plugin parameter that reaches this server.
    fn param(&self) -> String {
        match &self.addr {
            Addr::Unix(p) => format!("socket={}", p.display()),
            Addr::Tcp(port) => format!("uri=nbd://127.0.0.1:{port}/"),
        }
    }

    /// A URI of `export` on this server, for clients.
    fn uri(&self, export: &str) -> String {
        match &self.addr {
            Addr::Unix(p) => format!("nbd+unix:///{export}?socket={}", p.display()),
            Addr::Tcp(port) => format!("nbd://127.0.0.1:{port}/{export}"),
        }
    }

    fn kill(&mut self, sig: i32) {
        if let Some(pid) = self.pid() {
            // SAFETY: kill(2) on a pid this test started (or its daemon).
            unsafe {
                libc::kill(pid, sig);
            }
        }
    }
}

impl Drop for Remote {
    fn drop(&mut self) {
        self.kill(libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.pidfile.is_none() {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
            } else if self
                .pid()
                .is_none_or(|pid| !Path::new(&format!("/proc/{pid}")).exists())
            {
                let _ = self.child.try_wait();
                return;
            }
            thread::sleep(POLL);
        }
        self.kill(libc::SIGKILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Our own nbdkit as the remote, on a Unix socket or TCP loopback.
fn ours(tcp: bool, args: &[&str]) -> Remote {
    let dir = TempDir::new();
    let mut cmd = Command::new(nbdkit_bin());
    let addr = if tcp {
        let port = free_port();
        cmd.args(["-f", "-i", "127.0.0.1", "-p", &port.to_string()]);
        Addr::Tcp(port)
    } else {
        let sock = dir.join("remote.sock");
        cmd.arg("-f").arg("-U").arg(&sock);
        Addr::Unix(sock)
    };
    cmd.args(args);
    Remote::start(cmd, addr, None, dir)
}

/// qemu-nbd serving `image` (format `fmt`) with `extra` options.
fn qemu_nbd(tcp: bool, image: &Path, fmt: &str, extra: &[&str]) -> Remote {
    let dir = TempDir::new();
    let mut cmd = Command::new(find_tool("qemu-nbd").expect("qemu-nbd"));
    let addr = if tcp {
        let port = free_port();
        cmd.args(["-b", "127.0.0.1", "-p", &port.to_string()]);
        Addr::Tcp(port)
    } else {
        let sock = dir.join("q.sock");
        cmd.arg("-k").arg(&sock);
        Addr::Unix(sock)
    };
    cmd.args(["-t", "-e", "8", "-f", fmt])
        .args(extra)
        .arg(image);
    Remote::start(cmd, addr, None, dir)
}

/// nbd-server (which daemonizes) serving `image` as export `disk`.
fn nbd_server(tcp: bool, image: &Path) -> Remote {
    let dir = TempDir::new();
    let conf = dir.join("nbd-server.conf");
    let pidfile = dir.join("pid");
    let (generic, addr) = if tcp {
        let port = free_port();
        (
            format!("listenaddr = 127.0.0.1\nport = {port}\n"),
            Addr::Tcp(port),
        )
    } else {
        let sock = dir.join("ns.sock");
        (format!("unixsock = {}\n", sock.display()), Addr::Unix(sock))
    };
    fs::write(
        &conf,
        format!(
            "[generic]\n{generic}allowlist = true\n[disk]\nexportname = {}\nflush = true\nfua = true\ntrim = true\n",
            image.display()
        ),
    )
    .expect("write nbd-server.conf");
    let mut cmd = Command::new(find_tool("nbd-server").expect("nbd-server"));
    cmd.arg("-C").arg(&conf).arg("-p").arg(&pidfile);
    Remote::start(cmd, addr, Some(pidfile), dir)
}

fn have_nbd_server() -> bool {
    if find_tool("nbd-server").is_some() {
        return true;
    }
    eprintln!(
        "SKIP: nbd-server is not installed (Debian package nbd-server; see scripts/test-all.sh)"
    );
    false
}

/// The proxy in front of `remote`: `args` that start with `-` are server
/// options, the others plugin parameters.
fn proxy(remote: &Remote, args: &[&str]) -> Server {
    let p = remote.param();
    let mut all: Vec<&str> = args
        .iter()
        .copied()
        .filter(|a| a.starts_with('-'))
        .collect();
    all.push("nbd");
    all.push(&p);
    all.extend(args.iter().copied().filter(|a| !a.starts_with('-')));
    Server::start(all)
}

// ---------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------

/// `qemu-img convert` and `nbdcopy` of the export at `uri` equal `want`.
fn assert_reads_back(uri: &str, want: &[u8], what: &str) {
    let dir = TempDir::new();
    let out = dir.join("out.img");
    run_tool(
        "qemu-img",
        ["convert", "-f", "raw", "-O", "raw", uri, path_str(&out)],
    )
    .assert_success();
    assert_bytes_eq(
        &format!("{what}: qemu-img convert"),
        &fs::read(&out).expect("read out.img"),
        want,
    );
    fs::remove_file(&out).ok();
    run_tool("nbdcopy", [uri, path_str(&out)]).assert_success();
    assert_bytes_eq(
        &format!("{what}: nbdcopy"),
        &fs::read(&out).expect("read out.img"),
        want,
    );
}

/// An image of `SIZE` random bytes with some zero blocks (for extents).
fn image(dir: &TempDir, seed: u64) -> (PathBuf, Vec<u8>) {
    let p = dir.join("src.img");
    let mut data = write_random_file(&p, SIZE, seed);
    for z in [0..(1 << 20), (8 << 20)..(9 << 20), (SIZE - (1 << 20))..SIZE] {
        data[z].fill(0);
    }
    fs::write(&p, &data).expect("write image");
    (p, data)
}

fn map(uri: &str) -> String {
    run_tool("nbdinfo", ["--map", uri]).assert_success().stdout
}

fn info(uri: &str) -> String {
    run_tool("nbdinfo", [uri]).assert_success().stdout
}

/// The `key: value` lines of `nbdinfo` that describe the export.
fn info_lines(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| {
            [
                "export-size",
                "is_",
                "can_",
                "block_size",
                "base:allocation",
            ]
            .iter()
            .any(|k| l.starts_with(k))
        })
        .map(String::from)
        .collect()
}

// ---------------------------------------------------------------------------
// --help and --dump-plugin
// ---------------------------------------------------------------------------

fn reference_has_nbd() -> bool {
    let ok = Path::new("/usr/bin/nbdkit").exists()
        && run(
            Command::new("/usr/bin/nbdkit").args(["nbd", "--dump-plugin"]),
            CMD_TIMEOUT,
        )
        .success();
    if !ok {
        println!("SKIP: the reference /usr/bin/nbdkit has no nbd plugin");
    }
    ok
}

/// `nbdkit nbd FLAG` from the reference and from ours (None, after a skip
/// message, without a reference).
fn both(flag: &str) -> Option<(Output, Output)> {
    if !reference_has_nbd() {
        return None;
    }
    let theirs = run(
        Command::new("/usr/bin/nbdkit").args(["nbd", flag]),
        CMD_TIMEOUT,
    );
    let ours = run(Command::new(nbdkit_bin()).args(["nbd", flag]), CMD_TIMEOUT);
    assert!(ours.success(), "{}", ours.describe());
    Some((theirs, ours))
}

#[test]
fn dump_plugin_has_the_reference_keys() {
    let Some((theirs, ours)) = both("--dump-plugin") else {
        return;
    };
    let keys = |t: &str| -> Vec<String> {
        t.lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, _)| k.to_string())
            .collect()
    };
    assert_eq!(keys(&ours.stdout), keys(&theirs.stdout), "{}", ours.stdout);
    for line in theirs.stdout.lines() {
        let same = line.starts_with("has_")
            || line.starts_with("name=")
            || line.starts_with("magic_config_key=")
            || line.starts_with("thread_model=")
            || line.starts_with("max_thread_model=")
            || (line.starts_with("libnbd_") && !line.starts_with("libnbd_version="));
        if same {
            assert!(
                ours.stdout.lines().any(|l| l == line),
                "missing `{line}`:\n{}",
                ours.stdout
            );
        }
    }
}

#[test]
fn help_lists_every_parameter_of_the_reference() {
    let Some((theirs, ours)) = both("--help") else {
        return;
    };
    let start = theirs
        .stdout
        .find("[uri=]")
        .expect("reference help has [uri=]");
    for line in theirs.stdout[start..].lines() {
        assert!(
            ours.stdout.lines().any(|l| l == line),
            "missing help line `{line}`:\n{}",
            ours.stdout
        );
    }
}

// ---------------------------------------------------------------------------
// Data through the proxy
// ---------------------------------------------------------------------------

fn copy_through(tcp: bool) {
    skip_unless!("qemu-img", "nbdcopy");
    let dir = TempDir::new();
    let (img, data) = image(&dir, 0x7e57_0001 + tcp as u64);
    let remote = ours(tcp, &["file", path_str(&img)]);
    for filter in [None, Some("--filter=cow"), Some("--filter=cache")] {
        let extra: Vec<&str> = filter.into_iter().collect();
        let p = proxy(&remote, &extra);
        assert_reads_back(&p.uri(), &data, &format!("{filter:?}"));
    }
}

#[test]
fn copy_64m_from_our_nbdkit_over_unix() {
    copy_through(false);
}

#[test]
fn copy_64m_from_our_nbdkit_over_tcp() {
    copy_through(true);
}

#[test]
fn copy_64m_from_qemu_nbd_over_unix_and_tcp() {
    skip_unless!("qemu-nbd", "qemu-img", "nbdcopy", "nbdinfo");
    let dir = TempDir::new();
    let (raw, data) = image(&dir, 0x7e57_0003);
    // A qcow2 image: qemu-nbd decodes it, the proxy passes it on.
    let qcow2 = dir.join("src.qcow2");
    run_tool(
        "qemu-img",
        [
            "convert",
            "-f",
            "raw",
            "-O",
            "qcow2",
            path_str(&raw),
            path_str(&qcow2),
        ],
    )
    .assert_success();
    for tcp in [false, true] {
        let remote = qemu_nbd(tcp, &qcow2, "qcow2", &["-r"]);
        for filter in [None, Some("--filter=cow"), Some("--filter=cache")] {
            let extra: Vec<&str> = filter.into_iter().collect();
            let p = proxy(&remote, &extra);
            assert_reads_back(&p.uri(), &data, &format!("qemu-nbd tcp={tcp} {filter:?}"));
        }
        // The extents and the export's properties are the remote's (but
        // nbdkit, C or Rust, offers no FUA on a read-only export).
        let p = proxy(&remote, &[]);
        assert_eq!(map(&p.uri()), map(&remote.uri("")), "nbdinfo --map");
        let no_fua = |t: String| -> Vec<String> {
            info_lines(&t)
                .into_iter()
                .filter(|l| !l.starts_with("can_fua"))
                .collect()
        };
        assert_eq!(
            no_fua(info(&p.uri())),
            no_fua(info(&remote.uri(""))),
            "nbdinfo"
        );
    }
}

#[test]
fn copy_64m_from_nbd_server_over_unix_and_tcp() {
    skip_unless!("qemu-img", "nbdcopy", "nbdinfo");
    if !have_nbd_server() {
        return;
    }
    let dir = TempDir::new();
    let (img, data) = image(&dir, 0x7e57_0004);
    for tcp in [false, true] {
        let remote = nbd_server(tcp, &img);
        let p = proxy(&remote, &["export=disk"]);
        assert_reads_back(&p.uri(), &data, &format!("nbd-server tcp={tcp}"));
        // nbd-server 3.24 has no base:allocation: through nbdkit it is
        // all data, as with C nbdkit.
        let m = map(&p.uri());
        assert_eq!(m.lines().count(), 1, "{m}");
        assert!(m.contains("data"), "{m}");
        let p = proxy(&remote, &["--filter=cow", "export=disk"]);
        assert_reads_back(&p.uri(), &data, "nbd-server with cow");
    }
}

#[test]
fn nbdinfo_map_through_the_proxy_equals_the_remote() {
    skip_unless!("nbdinfo", "nbdcopy");
    // A sparse memory disk with data in a few places.
    let remote = ours(
        false,
        &[
            "data",
            "data=@1048576 1 2 3 @8388608 4 5 @16777216 6",
            "size=64M",
        ],
    );
    let p = proxy(&remote, &["-v"]);
    let theirs = map(&remote.uri(""));
    assert!(theirs.lines().count() > 2, "{theirs}");
    assert_eq!(map(&p.uri()), theirs);
    // Both sides have extended headers: the proxy used them.
    assert!(
        p.stderr()
            .contains("structured replies true extended headers true base:allocation true"),
        "{}",
        p.stderr()
    );
    // A remote with neither structured replies nor extended headers: simple
    // replies, no extents (all data, as nbdkit reports for any plugin
    // without extents).
    let plain = ours(
        false,
        &["--no-sr", "data", "data=@1048576 1 2 3", "size=4M"],
    );
    let p = proxy(&plain, &["-v"]);
    let m = map(&p.uri());
    assert_eq!(m.lines().count(), 1, "{m}");
    assert!(
        p.stderr()
            .contains("structured replies false extended headers false base:allocation false"),
        "{}",
        p.stderr()
    );
    run_tool("nbdcopy", [p.uri().as_str(), "null:"]).assert_success();
}

/// Python (libnbd) that writes, trims, zeroes and flushes through `uri`.
const WRITE_SCRIPT: &str = r#"
import nbd, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
h.pwrite(b"\x5a" * 65536, 1 << 20)
h.pwrite(b"abc", 5, nbd.CMD_FLAG_FUA)
h.zero(65536, 2 << 20)
h.trim(65536, 3 << 20)
if h.can_fast_zero():
    h.zero(4096, 4 << 20, nbd.CMD_FLAG_FAST_ZERO)
if h.can_cache():
    h.cache(65536, 0)
h.flush()
h.shutdown()
"#;

#[test]
fn writes_trims_zeroes_and_flushes_land_on_the_remote() {
    skip_unless!("python3-nbd");
    for tcp in [false, true] {
        let remote = ours(tcp, &["memory", "16M"]);
        // Make the zeroed and trimmed ranges non-zero first.
        let fill = r#"
import nbd, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
h.pwrite(b"\x11" * (4 << 20), 1 << 20)
h.shutdown()
"#;
        run_python_code(fill, [remote.uri("")]).assert_success();
        let p = proxy(&remote, &[]);
        run_python_code(WRITE_SCRIPT, [p.uri()]).assert_success();
        let check = r#"
import nbd, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
assert h.pread(65536, 1 << 20) == b"\x5a" * 65536
assert h.pread(3, 5) == b"abc"
assert h.pread(65536, 2 << 20) == bytes(65536)
assert h.pread(65536, 3 << 20) == bytes(65536)
assert h.pread(4096, 4 << 20) == bytes(4096)
assert h.pread(4096, (4 << 20) + 4096) == b"\x11" * 4096
print("ok")
"#;
        let out = run_python_code(check, [remote.uri("")]);
        assert!(out.stdout.contains("ok"), "tcp={tcp}: {}", out.describe());
    }
}

#[test]
fn copy_64m_into_the_proxy_lands_on_the_remote() {
    skip_unless!("nbdcopy", "qemu-img");
    let dir = TempDir::new();
    let (img, data) = image(&dir, 0x7e57_0008);
    let remote = ours(false, &["memory", "64M"]);
    let p = proxy(&remote, &[]);
    // Many large writes in flight, then reads, on one remote connection.
    run_tool("nbdcopy", [path_str(&img), p.uri().as_str()]).assert_success();
    run_tool(
        "qemu-img",
        [
            "convert",
            "-n",
            "-f",
            "raw",
            "-O",
            "raw",
            path_str(&img),
            p.uri().as_str(),
        ],
    )
    .assert_success();
    drop(p);
    assert_reads_back(&remote.uri(""), &data, "written through the proxy");
}

#[test]
fn writes_through_qemu_nbd_land_in_the_image() {
    skip_unless!("python3-nbd", "qemu-nbd");
    let dir = TempDir::new();
    let img = dir.join("w.img");
    fs::write(&img, vec![0x11u8; 8 << 20]).unwrap();
    {
        let remote = qemu_nbd(false, &img, "raw", &["--discard=unmap"]);
        let p = proxy(&remote, &[]);
        run_python_code(WRITE_SCRIPT, [p.uri()]).assert_success();
    }
    let got = fs::read(&img).unwrap();
    assert_eq!(&got[1 << 20..(1 << 20) + 65536], &[0x5a; 65536][..]);
    assert_eq!(&got[5..8], b"abc");
    assert!(got[2 << 20..(2 << 20) + 65536].iter().all(|&b| b == 0));
    assert!(got[3 << 20..(3 << 20) + 65536].iter().all(|&b| b == 0));
}

#[test]
fn many_requests_are_in_flight_on_one_remote_connection() {
    skip_unless!("python3-nbd");
    let dir = TempDir::new();
    let log = dir.join("remote-requests.log");
    let logf = format!("logfile={}", log.display());
    // Reads wait at the remote, so a pipelining proxy has several of them
    // open there at once.
    let remote = ours(
        false,
        &[
            "--filter=log",
            "--filter=delay",
            "memory",
            "1M",
            &logf,
            "rdelay=300ms",
        ],
    );
    let p = proxy(&remote, &[]);
    let script = r#"
import nbd, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
bufs = [nbd.Buffer(4096) for _ in range(8)]
cookies = [h.aio_pread(b, i * 4096) for i, b in enumerate(bufs)]
for _ in range(1000):
    if all(h.aio_command_completed(c) for c in cookies):
        break
    h.poll(1)
print("done")
"#;
    let out = run_python_code(script, [p.uri()]);
    assert!(out.stdout.contains("done"), "{}", out.describe());
    drop(p);
    // The log filter writes "Read id=N ..." when a read starts and
    // "...Read id=N return" when it ends: several start before one ends.
    let text = fs::read_to_string(&log).expect("read log");
    let mut open = 0usize;
    let mut most = 0usize;
    for l in text.lines() {
        if l.contains(" Read id=") {
            open += 1;
            most = most.max(open);
        } else if l.contains("...Read id=") {
            open = open.saturating_sub(1);
        }
    }
    assert!(most >= 2, "reads were not pipelined:\n{text}");
}

#[test]
fn block_size_fast_zero_multi_conn_and_description_pass_through() {
    skip_unless!("nbdinfo");
    let remote = ours(
        false,
        &[
            "--filter=blocksize-policy",
            "memory",
            "1M",
            "blocksize-minimum=4096",
            "blocksize-preferred=65536",
            "blocksize-maximum=1048576",
        ],
    );
    let p = proxy(&remote, &[]);
    let ours_ = info(&p.uri());
    assert!(ours_.contains("block_size_minimum: 4096"), "{ours_}");
    assert!(ours_.contains("block_size_maximum: 1048576"), "{ours_}");
    assert_eq!(info_lines(&ours_), info_lines(&info(&remote.uri(""))));
    // A read-only remote is read-only through the proxy.
    let ro = ours(false, &["-r", "memory", "1M"]);
    let p = proxy(&ro, &[]);
    assert!(info(&p.uri()).contains("is_read_only: true"));
}

#[test]
fn remote_errors_keep_their_errno() {
    skip_unless!("python3-nbd");
    let remote = ours(
        false,
        &[
            "--filter=error",
            "memory",
            "1M",
            "error-pwrite=ENOSPC",
            "error-pwrite-rate=100%",
            "error-pread=EPERM",
            "error-pread-rate=100%",
        ],
    );
    let p = proxy(&remote, &[]);
    let script = r#"
import errno, nbd, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
for what, f in (("write", lambda: h.pwrite(b"x" * 512, 0)), ("read", lambda: h.pread(512, 0))):
    try:
        f()
        print(what, "succeeded")
    except nbd.Error as e:
        print(what, errno.errorcode.get(e.errno, e.errno))
"#;
    let out = run_python_code(script, [p.uri()]);
    assert!(out.stdout.contains("write ENOSPC"), "{}", out.describe());
    assert!(out.stdout.contains("read EPERM"), "{}", out.describe());
}

// ---------------------------------------------------------------------------
// Exports
// ---------------------------------------------------------------------------

/// Python (libnbd) that prints the whole export at argv[1] as text.
const READ_ALL: &str = r#"
import nbd, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
print(bytes(h.pread(h.get_size(), 0)).decode())
"#;

#[test]
fn dynamic_export_lists_and_passes_the_export_name() {
    skip_unless!("nbdinfo", "python3-nbd");
    let remote = ours(
        false,
        &[
            "--filter=exportname",
            "info",
            "mode=exportname",
            "exportname=alpha",
            "exportname=beta",
            "exportname-list=explicit",
        ],
    );
    let p = proxy(&remote, &["dynamic-export=true"]);
    let out = run_tool("nbdinfo", ["--list", &p.uri()]).assert_success();
    assert!(
        out.stdout.contains("export=\"alpha\"") && out.stdout.contains("export=\"beta\""),
        "{}",
        out.stdout
    );
    let out = run_python_code(READ_ALL, [p.uri_export("beta")]).assert_success();
    assert_eq!(out.stdout.trim(), "beta");
    // Without dynamic-export the proxy serves one export, whatever the name.
    let p = proxy(&remote, &["export=alpha"]);
    let out = run_python_code(READ_ALL, [p.uri_export("anything")]).assert_success();
    assert_eq!(out.stdout.trim(), "alpha");
    let out = run_tool("nbdinfo", ["--list", &p.uri()]).assert_success();
    assert!(!out.stdout.contains("beta"), "{}", out.stdout);
}

#[test]
fn uri_gives_the_export_name() {
    skip_unless!("python3-nbd");
    let remote = ours(false, &["info", "mode=exportname"]);
    let Addr::Unix(sock) = &remote.addr else {
        unreachable!()
    };
    let uri = format!("uri=nbd+unix:///gamma?socket={}", sock.display());
    let p = Server::start(["nbd", uri.as_str()]);
    let out = run_python_code(READ_ALL, [p.uri()]).assert_success();
    assert_eq!(out.stdout.trim(), "gamma");
    // The magic key: a bare URI.
    let bare = format!("nbd+unix:///delta?socket={}", sock.display());
    let p = Server::start(["nbd", bare.as_str()]);
    let out = run_python_code(READ_ALL, [p.uri()]).assert_success();
    assert_eq!(out.stdout.trim(), "delta");
}

// ---------------------------------------------------------------------------
// command=, shared=, retry=
// ---------------------------------------------------------------------------

#[test]
fn command_runs_our_nbdkit_with_socket_activation() {
    skip_unless!("qemu-img", "nbdcopy");
    let dir = TempDir::new();
    let (img, data) = image(&dir, 0x7e57_0005);
    let cmd = format!("command={}", nbdkit_bin().display());
    let file = format!("arg={}", img.display());
    let p = Server::start(["nbd", cmd.as_str(), "arg=file", file.as_str()]);
    assert_reads_back(&p.uri(), &data, "command=nbdkit");
}

#[test]
fn command_runs_qemu_nbd_and_stops_it_with_nbdkit() {
    skip_unless!("qemu-nbd", "nbdinfo");
    let dir = TempDir::new();
    let img = dir.join("c.qcow2");
    run_tool("qemu-img", ["create", "-f", "qcow2", path_str(&img), "16M"]).assert_success();
    let file = format!("arg={}", img.display());
    let mut p = Server::start([
        "nbd",
        "command=qemu-nbd",
        "arg=-f",
        "arg=qcow2",
        file.as_str(),
    ]);
    let out = run_tool("nbdinfo", ["--size", &p.uri()]).assert_success();
    assert_eq!(out.stdout.trim(), "16777216");
    let pid = p.pid();
    p.stop();
    // No qemu-nbd child of the proxy is left.
    let children =
        fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    assert!(children.trim().is_empty(), "left over: {children}");
    // The image is free again (qemu-nbd held its lock).
    run_tool("qemu-img", ["info", path_str(&img)]).assert_success();
}

#[test]
fn command_whose_server_fails_is_an_error_at_start_not_a_hang() {
    // nbdkit -s cannot be socket-activated: it refuses, and so must we.
    let cmd = format!("command={}", nbdkit_bin().display());
    let out = run(
        Command::new(nbdkit_bin()).args([
            "-U",
            "-",
            "nbd",
            &cmd,
            "arg=-s",
            "arg=memory",
            "arg=1M",
            "--run",
            "true",
        ]),
        Duration::from_secs(90),
    );
    assert!(out.status.is_some(), "hung: {}", out.describe());
    assert_eq!(out.code(), Some(1), "{}", out.describe());
    assert!(out.stderr.contains("nbdkit: error:"), "{}", out.stderr);
    let out = run(
        Command::new(nbdkit_bin()).args([
            "-U",
            "-",
            "nbd",
            "command=/nonexistent/server",
            "--run",
            "true",
        ]),
        Duration::from_secs(90),
    );
    assert_eq!(out.code(), Some(1), "{}", out.describe());
    assert!(out.stderr.contains("not found"), "{}", out.stderr);
}

#[test]
fn socket_fd_uses_an_inherited_connection() {
    skip_unless!("nbdinfo");
    let remote = ours(false, &["memory", "3M"]);
    let Addr::Unix(sock) = &remote.addr else {
        unreachable!()
    };
    // Python connects, makes the socket inheritable and becomes nbdkit.
    let script = r#"
import os, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[2])
s.set_inheritable(True)
os.execv(sys.argv[1], [sys.argv[1], "-U", "-", "nbd", "socket-fd=%d" % s.fileno(),
                       "--run", "nbdinfo --size $uri"])
"#;
    let out = run_python_code(script, [path_str(&nbdkit_bin()), path_str(sock)]);
    assert!(out.success(), "{}", out.describe());
    assert_eq!(out.stdout.trim(), "3145728");
    // A descriptor that is not open is refused at once.
    start_fails(&["nbd", "socket-fd=999"]);
}

#[test]
fn shared_connection_serves_several_clients_and_fails_at_start_without_remote() {
    skip_unless!("nbdinfo");
    let remote = ours(false, &["memory", "1M"]);
    let p = proxy(&remote, &["shared=true"]);
    for _ in 0..3 {
        let out = run_tool("nbdinfo", ["--size", &p.uri()]).assert_success();
        assert_eq!(out.stdout.trim(), "1048576");
    }
    let out = start_fails(&["nbd", "socket=/nonexistent/sock", "shared=true"]);
    assert!(out.stderr.contains("/nonexistent/sock"), "{}", out.stderr);
}

#[test]
fn retry_waits_for_a_remote_that_starts_late() {
    skip_unless!("nbdinfo");
    let dir = TempDir::new();
    let sock = dir.join("late.sock");
    let sock2 = sock.clone();
    let starter = thread::spawn(move || {
        thread::sleep(Duration::from_millis(1500));
        let mut cmd = Command::new(nbdkit_bin());
        cmd.arg("-f").arg("-U").arg(&sock2).args(["memory", "2M"]);
        Remote::start(cmd, Addr::Unix(sock2.clone()), None, TempDir::new())
    });
    let param = format!("socket={}", sock.display());
    let p = Server::start(["nbd", param.as_str(), "retry=20"]);
    let out = run_tool("nbdinfo", ["--size", &p.uri()]);
    let _remote = starter.join().unwrap();
    assert_eq!(out.stdout.trim(), "2097152", "{}", out.describe());
}

// ---------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------

/// X.509 credentials (certtool) and a PSK file: `server/` for nbdkit and
/// qemu-nbd, `client/` for the proxy, `keys.psk` with user alice.
struct Pki {
    dir: TempDir,
}

impl Pki {
    fn new() -> Option<Pki> {
        if find_tool("certtool").is_none() || find_tool("psktool").is_none() {
            println!("SKIP: certtool/psktool (gnutls-bin) are not installed");
            return None;
        }
        let dir = TempDir::new();
        let script = r#"
set -e
tmpl() { printf "$2" > $1.info; }
certtool --generate-privkey --outfile ca-key.pem >/dev/null 2>&1
tmpl ca 'cn = Test CA\nca\ncert_signing_key\nexpiration_days = 3650\n'
certtool --generate-self-signed --load-privkey ca-key.pem --template ca.info --outfile ca-cert.pem >/dev/null 2>&1
leaf() {
  certtool --generate-privkey --outfile $1-key.pem >/dev/null 2>&1
  tmpl $1 "$2"
  certtool --generate-certificate --load-ca-certificate ca-cert.pem --load-ca-privkey ca-key.pem \
    --load-privkey $1-key.pem --template $1.info --outfile $1-cert.pem >/dev/null 2>&1
}
leaf server 'organization = Test\ncn = localhost\ndns_name = localhost\nip_address = 127.0.0.1\ntls_www_server\nencryption_key\nsigning_key\nexpiration_days = 3650\n'
leaf client 'organization = Test\ncn = client\ntls_www_client\nencryption_key\nsigning_key\nexpiration_days = 3650\n'
mkdir server client
cp ca-cert.pem server-cert.pem server-key.pem server/
cp ca-cert.pem client-cert.pem client-key.pem client/
psktool -u alice -p keys.psk >/dev/null 2>&1
cp keys.psk server/keys.psk
"#;
        let out = run(
            Command::new("/bin/sh")
                .args(["-c", script])
                .current_dir(dir.path()),
            CMD_TIMEOUT,
        );
        assert!(out.success(), "{}", out.describe());
        Some(Pki { dir })
    }
    fn server(&self) -> PathBuf {
        self.dir.join("server")
    }
    fn client(&self) -> PathBuf {
        self.dir.join("client")
    }
    fn psk(&self) -> PathBuf {
        self.dir.join("keys.psk")
    }
}

#[test]
fn tls_x509_and_psk_to_our_nbdkit_over_unix_and_tcp() {
    skip_unless!("qemu-img", "nbdcopy");
    let Some(pki) = Pki::new() else { return };
    let dir = TempDir::new();
    let (img, data) = image(&dir, 0x7e57_0006);
    let certs = format!("--tls-certificates={}", pki.server().display());
    let psk = format!("--tls-psk={}", pki.psk().display());
    let client = format!("tls-certificates={}", pki.client().display());
    let client_psk = format!("tls-psk={}", pki.psk().display());
    for tcp in [false, true] {
        let remote = ours(
            tcp,
            &[
                "--tls=require",
                &certs,
                "--tls-verify-peer",
                "file",
                path_str(&img),
            ],
        );
        // Without TLS the remote refuses the proxy: one clear line.
        let p = proxy(&remote, &[]);
        let out = run_tool("nbdinfo", ["--size", &p.uri()]);
        assert!(!out.success());
        assert!(p.stderr().contains("requires TLS"), "{}", p.stderr());
        let p = proxy(&remote, &["tls=require", &client]);
        assert_reads_back(&p.uri(), &data, &format!("X.509 tcp={tcp}"));
        let remote = ours(tcp, &["--tls=require", &psk, "file", path_str(&img)]);
        let p = proxy(&remote, &["tls=require", &client_psk, "tls-username=alice"]);
        assert_reads_back(&p.uri(), &data, &format!("PSK tcp={tcp}"));
        // A user the file does not have: an error at start-up.
        let out = start_fails(&["nbd", &remote.param(), &client_psk, "tls-username=mallory"]);
        assert!(out.stderr.contains("mallory"), "{}", out.stderr);
    }
}

#[test]
fn tls_checks_the_server_name_unless_told_not_to() {
    skip_unless!("nbdinfo");
    let Some(pki) = Pki::new() else { return };
    let certs = format!("--tls-certificates={}", pki.server().display());
    let client = format!("tls-certificates={}", pki.client().display());
    let remote = ours(true, &["--tls=require", &certs, "memory", "1M"]);
    let Addr::Tcp(port) = remote.addr else {
        unreachable!()
    };
    let port = format!("port={port}");
    // The certificate is for localhost and 127.0.0.1.
    for (host, extra, ok) in [
        ("hostname=127.0.0.1", "tls-verify=true", true),
        ("hostname=127.0.0.1", "tls-hostname=wrong.example", false),
        ("hostname=127.0.0.1", "tls-hostname=localhost", true),
    ] {
        let p = Server::start(["nbd", host, port.as_str(), "tls=require", &client, extra]);
        let out = run_tool("nbdinfo", ["--size", &p.uri()]);
        assert_eq!(out.success(), ok, "{host} {extra}: {}", p.stderr());
        if !ok {
            assert!(p.stderr().contains("not valid for name"), "{}", p.stderr());
        }
    }
    // A CA that did not sign the server's certificate fails, unless
    // verification is off.
    let other = TempDir::new();
    let script = "certtool --generate-privkey --outfile k.pem >/dev/null 2>&1 && printf 'cn = Other\\nca\\ncert_signing_key\\n' > t && certtool --generate-self-signed --load-privkey k.pem --template t --outfile ca-cert.pem >/dev/null 2>&1";
    run(
        Command::new("/bin/sh")
            .args(["-c", script])
            .current_dir(other.path()),
        CMD_TIMEOUT,
    )
    .assert_success();
    let wrong_ca = format!("tls-certificates={}", other.path().display());
    let p = Server::start([
        "nbd",
        "hostname=localhost",
        port.as_str(),
        "tls=require",
        &wrong_ca,
    ]);
    assert!(!run_tool("nbdinfo", ["--size", &p.uri()]).success());
    let p = Server::start([
        "nbd",
        "hostname=localhost",
        port.as_str(),
        "tls=require",
        &wrong_ca,
        "tls-verify=false",
    ]);
    run_tool("nbdinfo", ["--size", &p.uri()]).assert_success();
}

#[test]
fn tls_to_qemu_nbd_x509_and_psk() {
    skip_unless!("qemu-nbd", "qemu-img", "nbdcopy");
    let Some(pki) = Pki::new() else { return };
    let dir = TempDir::new();
    let (img, data) = image(&dir, 0x7e57_0007);
    let client = format!("tls-certificates={}", pki.client().display());
    let client_psk = format!("tls-psk={}", pki.psk().display());
    let x509 = format!(
        "tls-creds-x509,id=tls0,endpoint=server,dir={},verify-peer=on",
        pki.server().display()
    );
    let psk = format!(
        "tls-creds-psk,id=tls0,endpoint=server,dir={}",
        pki.server().display()
    );
    for tcp in [false, true] {
        let remote = qemu_nbd(
            tcp,
            &img,
            "raw",
            &["-r", "--object", &x509, "--tls-creds", "tls0"],
        );
        let p = proxy(&remote, &["tls=require", &client]);
        assert_reads_back(&p.uri(), &data, &format!("qemu-nbd X.509 tcp={tcp}"));
        let remote = qemu_nbd(
            tcp,
            &img,
            "raw",
            &["-r", "--object", &psk, "--tls-creds", "tls0"],
        );
        let p = proxy(&remote, &["tls=require", &client_psk, "tls-username=alice"]);
        assert_reads_back(&p.uri(), &data, &format!("qemu-nbd PSK tcp={tcp}"));
    }
}

#[test]
fn nbds_uri_requires_tls() {
    skip_unless!("nbdinfo");
    // Our nbdkit without TLS: an nbds:// URI refuses it.
    let remote = ours(true, &["memory", "1M"]);
    let Addr::Tcp(port) = remote.addr else {
        unreachable!()
    };
    let uri = format!("nbds://127.0.0.1:{port}/");
    let p = Server::start(["nbd", uri.as_str(), "tls-verify=false"]);
    assert!(!run_tool("nbdinfo", ["--size", &p.uri()]).success());
    assert!(
        p.stderr()
            .contains("TLS is required but the server does not support it"),
        "{}",
        p.stderr()
    );
    // tls=on goes on in plaintext.
    let port = format!("port={port}");
    let p = Server::start([
        "nbd",
        "hostname=127.0.0.1",
        port.as_str(),
        "tls=on",
        "tls-verify=false",
    ]);
    let out = run_tool("nbdinfo", ["--size", &p.uri()]).assert_success();
    assert_eq!(out.stdout.trim(), "1048576");
}

// ---------------------------------------------------------------------------
// Errors: never a hang
// ---------------------------------------------------------------------------

fn start_fails(args: &[&str]) -> Output {
    let mut all = vec!["-U", "-"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--run", "true"]);
    let out = run(Command::new(nbdkit_bin()).args(&all), CMD_TIMEOUT);
    assert_eq!(out.code(), Some(1), "{}", out.describe());
    let errors: Vec<&str> = out.stderr.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(errors.len(), 1, "{}", out.stderr);
    assert!(errors[0].starts_with("nbdkit: error: "), "{}", out.stderr);
    out
}

#[test]
fn bad_parameters_are_one_error_line() {
    let out = start_fails(&["nbd", "uri=http://example.com/"]);
    assert!(
        out.stderr.contains("unknown NBD URI scheme: http"),
        "{}",
        out.stderr
    );
    start_fails(&["nbd", "nbd+unix:///?nosocket=1"]);
    let out = start_fails(&["nbd", "socket=/a", "hostname=b"]);
    assert!(out.stderr.contains("cannot mix"), "{}", out.stderr);
    let out = start_fails(&["nbd"]);
    assert!(out.stderr.contains("exactly one of"), "{}", out.stderr);
    let out = start_fails(&["nbd", "socket=/a", "port=1"]);
    assert!(out.stderr.contains("‘port’"), "{}", out.stderr);
    let out = start_fails(&["nbd", "socket=/a", "export=x", "dynamic-export=true"]);
    assert!(out.stderr.contains("dynamic-export"), "{}", out.stderr);
    start_fails(&["nbd", "socket=/a", "tls=maybe"]);
    start_fails(&["nbd", "socket=/a", "retry=-1"]);
    start_fails(&["nbd", "socket-fd=-1"]);
    start_fails(&["nbd", "vsock=x"]);
    start_fails(&["nbd", "socket=/a", "frobnicate=1"]);
}

#[test]
fn missing_remote_is_an_error_for_the_client() {
    skip_unless!("nbdinfo");
    let dir = TempDir::new();
    let param = format!("socket={}", dir.join("nothing").display());
    let p = Server::start(["nbd", param.as_str()]);
    let out = run_tool("nbdinfo", ["--size", &p.uri()]);
    assert!(!out.success());
    assert!(
        p.stderr().contains("error: connect:") && p.stderr().contains("No such file or directory"),
        "{}",
        p.stderr()
    );
    // TCP, refused.
    let port = format!("port={}", free_port());
    let p = Server::start(["nbd", "hostname=127.0.0.1", port.as_str()]);
    assert!(!run_tool("nbdinfo", ["--size", &p.uri()]).success());
    assert!(p.stderr().contains("Connection refused"), "{}", p.stderr());
    // vsock: no hang whatever the kernel has.
    let p = Server::start(["nbd", "vsock=1", "port=1"]);
    let out = run_tool("nbdinfo", ["--size", &p.uri()]);
    assert!(out.status.is_some() && !out.success(), "{}", out.describe());
}

#[test]
fn remote_killed_mid_request_gives_eio_and_no_hang() {
    skip_unless!("python3-nbd");
    let mut remote = ours(false, &["--filter=delay", "memory", "1M", "rdelay=5"]);
    let mut p = proxy(&remote, &[]);
    let script = r#"
import errno, nbd, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
print("connected", flush=True)
sys.stdin.readline()
for attempt in range(2):
    try:
        h.pread(512, 0)
        print("read succeeded")
    except nbd.Error as e:
        print("read failed", errno.errorcode.get(e.errno, e.errno), flush=True)
"#;
    let mut client = Command::new(nbdkit_tests::PYTHON)
        .args(["-c", script, &p.uri()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = client.stdout.take().unwrap();
    let mut first = [0u8; 10];
    stdout.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"connected\n");
    client.stdin.take().unwrap().write_all(b"go\n").unwrap();
    // The read is now waiting at the remote (5 s); kill the remote.
    thread::sleep(Duration::from_millis(500));
    remote.kill(libc::SIGKILL);
    let status = nbdkit_tests::wait_timeout(&mut client, Duration::from_secs(30));
    if status.is_none() {
        let _ = client.kill();
        panic!("client hung after the remote died; proxy: {}", p.stderr());
    }
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    assert!(
        rest.contains("read failed EIO"),
        "{rest}\nproxy: {}",
        p.stderr()
    );
    assert!(!rest.contains("succeeded"), "{rest}");
    assert!(
        p.stderr()
            .contains("error: nbd: lost the connection to the remote server"),
        "{}",
        p.stderr()
    );
    // The proxy is still up and says what is wrong to the next client.
    assert!(p.is_alive());
    assert!(!run_tool("nbdinfo", ["--size", &p.uri()]).success());
    p.stop();
}

/// A fake remote: an oldstyle greeting for a 1 MiB export, then whatever
/// `reply` sends for the first request.
fn fake_remote(reply: fn(&mut UnixStream, u64)) -> (TempDir, PathBuf, thread::JoinHandle<()>) {
    let dir = TempDir::new();
    let sock = dir.join("fake.sock");
    let l = UnixListener::bind(&sock).unwrap();
    let t = thread::spawn(move || {
        // One connection per test client, at most 4.
        for _ in 0..4 {
            let Ok((mut s, _)) = l.accept() else { return };
            s.set_read_timeout(Some(Duration::from_secs(30))).ok();
            let mut g = Vec::new();
            g.extend_from_slice(b"NBDMAGIC");
            g.extend_from_slice(&0x0000_4202_8186_1253u64.to_be_bytes());
            g.extend_from_slice(&(1u64 << 20).to_be_bytes());
            g.extend_from_slice(&0u16.to_be_bytes());
            g.extend_from_slice(&1u16.to_be_bytes());
            g.extend_from_slice(&[0u8; 124]);
            if s.write_all(&g).is_err() {
                continue;
            }
            let mut req = [0u8; 28];
            if s.read_exact(&mut req).is_err() {
                continue;
            }
            let cookie = u64::from_be_bytes(req[8..16].try_into().unwrap());
            reply(&mut s, cookie);
        }
    });
    (dir, sock, t)
}

fn read_fails_with(sock: &Path, want: &str) -> String {
    let param = format!("socket={}", sock.display());
    let p = Server::start(["nbd", param.as_str()]);
    let script = r#"
import errno, nbd, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
try:
    h.pread(4096, 0)
    print("read succeeded")
except nbd.Error as e:
    print("read failed", errno.errorcode.get(e.errno, e.errno))
"#;
    let out = run_python_code(script, [p.uri()]);
    assert!(out.status.is_some(), "hung: {}", out.describe());
    assert!(out.stdout.contains("read failed EIO"), "{}", out.describe());
    let err = p.stderr();
    assert!(err.contains(want), "wanted `{want}` in:\n{err}");
    err
}

#[test]
fn short_reply_is_eio() {
    skip_unless!("python3-nbd");
    let (_d, sock, _t) = fake_remote(|s, cookie| {
        // A good header, then half the data, then the connection ends.
        let mut r = Vec::new();
        r.extend_from_slice(&0x6744_6698u32.to_be_bytes());
        r.extend_from_slice(&0u32.to_be_bytes());
        r.extend_from_slice(&cookie.to_be_bytes());
        r.extend_from_slice(&[7u8; 2048]);
        let _ = s.write_all(&r);
    });
    read_fails_with(&sock, "in the middle of a reply");
}

#[test]
fn reply_with_a_strange_cookie_or_magic_is_eio() {
    skip_unless!("python3-nbd");
    let (_d, sock, _t) = fake_remote(|s, cookie| {
        let mut r = Vec::new();
        r.extend_from_slice(&0x6744_6698u32.to_be_bytes());
        r.extend_from_slice(&0u32.to_be_bytes());
        r.extend_from_slice(&(cookie ^ 0xffff).to_be_bytes());
        let _ = s.write_all(&r);
        thread::sleep(Duration::from_millis(200));
    });
    read_fails_with(&sock, "unknown cookie");
    let (_d, sock, _t) = fake_remote(|s, _| {
        let _ = s.write_all(&[0xde; 64]);
        thread::sleep(Duration::from_millis(200));
    });
    read_fails_with(&sock, "bad reply magic");
}

#[test]
fn oversized_structured_reply_is_refused_without_reading_it() {
    skip_unless!("python3-nbd");
    // A newstyle server with structured replies whose read reply claims
    // 4 GiB of data.
    let dir = TempDir::new();
    let sock = dir.join("big.sock");
    let l = UnixListener::bind(&sock).unwrap();
    let _t = thread::spawn(move || {
        for _ in 0..2 {
            let Ok((mut s, _)) = l.accept() else { return };
            s.set_read_timeout(Some(Duration::from_secs(30))).ok();
            if fake_newstyle(&mut s).is_err() {
                continue;
            }
            let mut req = [0u8; 28];
            if s.read_exact(&mut req).is_err() {
                continue;
            }
            let mut r = Vec::new();
            r.extend_from_slice(&0x668e_33efu32.to_be_bytes());
            r.extend_from_slice(&1u16.to_be_bytes()); // DONE
            r.extend_from_slice(&1u16.to_be_bytes()); // OFFSET_DATA
            r.extend_from_slice(&req[8..16]);
            r.extend_from_slice(&u32::MAX.to_be_bytes());
            let _ = s.write_all(&r);
            thread::sleep(Duration::from_millis(200));
        }
    });
    read_fails_with(&sock, "bad data chunk length");
}

/// The server side of a fixed newstyle handshake that accepts structured
/// replies and answers GO with a 1 MiB export; every other option gets
/// ERR_UNSUP.
fn fake_newstyle(s: &mut UnixStream) -> std::io::Result<()> {
    let mut g = Vec::new();
    g.extend_from_slice(b"NBDMAGIC");
    g.extend_from_slice(b"IHAVEOPT");
    g.extend_from_slice(&3u16.to_be_bytes());
    s.write_all(&g)?;
    let mut flags = [0u8; 4];
    s.read_exact(&mut flags)?;
    for _ in 0..16 {
        let mut h = [0u8; 16];
        s.read_exact(&mut h)?;
        let opt = u32::from_be_bytes(h[8..12].try_into().unwrap());
        let len = u32::from_be_bytes(h[12..16].try_into().unwrap()) as usize;
        let mut payload = vec![0u8; len];
        s.read_exact(&mut payload)?;
        let reply = |s: &mut UnixStream, ty: u32, data: &[u8]| -> std::io::Result<()> {
            let mut r = Vec::new();
            r.extend_from_slice(&0x0003_e889_0455_65a9u64.to_be_bytes());
            r.extend_from_slice(&opt.to_be_bytes());
            r.extend_from_slice(&ty.to_be_bytes());
            r.extend_from_slice(&(data.len() as u32).to_be_bytes());
            r.extend_from_slice(data);
            s.write_all(&r)
        };
        match opt {
            8 => reply(s, 1, &[])?,
            7 => {
                let mut info = vec![0u8, 0];
                info.extend_from_slice(&(1u64 << 20).to_be_bytes());
                info.extend_from_slice(&1u16.to_be_bytes());
                reply(s, 3, &info)?;
                reply(s, 1, &[])?;
                return Ok(());
            }
            _ => reply(s, 0x8000_0001, &[])?,
        }
    }
    Err(std::io::Error::other("too many options"))
}
