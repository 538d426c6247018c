//! runtime-embedded with real clients: the `tap` example of
//! nbdkit-runtime-embedded serves a RAM disk through smoltcp on a TAP
//! device inside a network namespace made for this test, and nbdinfo,
//! nbdcopy, qemu-img and nbdsh (run in the same namespace) read and write
//! it, directly or through core's filters (partition, protect, nozero)
//! on the embedded server. Every byte is checked.
//!
//! Needs root, /dev/net/tun and `ip`; skips with the reason otherwise. The
//! namespace has a unique name and is always deleted.
#![allow(clippy::std_instead_of_core, clippy::alloc_instead_of_core)] // an std test

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use nbdkit_tests::{first_difference, run, skip_unless, Prng, TempDir, CMD_TIMEOUT};

/// The host side of the TAP link and the address smoltcp answers on; a
/// private range, inside the test's own namespace only.
const HOST_CIDR: &str = "10.201.0.1/24";
const SERVER_IP: &str = "10.201.0.2";
const SERVER_CIDR: &str = "10.201.0.2/24";
const DISK_SIZE: usize = 1024 * 1024;

/// A network namespace that is deleted (by name) on drop, after the
/// processes started in it.
struct Netns {
    name: String,
    children: Vec<Child>,
}

impl Netns {
    /// Makes the namespace with a TAP device, or says why it cannot.
    fn create() -> Result<Netns, String> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!("nbdemb-{}-{:x}", std::process::id(), nanos);
        let out = run(
            Command::new("ip").args(["netns", "add", &name]),
            CMD_TIMEOUT,
        );
        if !out.success() {
            return Err(format!("`ip netns add` failed: {}", out.stderr.trim()));
        }
        let ns = Netns {
            name,
            children: Vec::new(),
        };
        for args in [
            &["link", "set", "lo", "up"][..],
            &["tuntap", "add", "dev", "tap0", "mode", "tap"],
            &["addr", "add", HOST_CIDR, "dev", "tap0"],
            &["link", "set", "tap0", "up"],
        ] {
            let out = run(ns.cmd("ip").args(args), CMD_TIMEOUT);
            if !out.success() {
                return Err(format!(
                    "`ip {}` failed: {}",
                    args.join(" "),
                    out.stderr.trim()
                ));
            }
        }
        Ok(ns)
    }

    /// A command that runs inside the namespace.
    fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Why this machine cannot run the test, if it cannot.
fn unsupported() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (network namespaces and TAP devices need it)".into());
    }
    if !Path::new("/dev/net/tun").exists() {
        return Some("/dev/net/tun does not exist (no tun driver)".into());
    }
    if nbdkit_tests::find_tool("ip").is_none() {
        return Some("`ip` (iproute2) is not installed".into());
    }
    None
}

/// The `tap` example: `$NBDKIT_EMBEDDED_TAP`, else built next to this test.
fn tap_example() -> PathBuf {
    if let Some(p) = std::env::var_os("NBDKIT_EMBEDDED_TAP").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> -> target/<profile>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable under target/<profile>/deps");
    let bin = profile_dir.join("examples").join("tap");
    if !bin.exists() {
        let mut c = Command::new(env!("CARGO"));
        c.args(["build", "-p", "nbdkit-runtime-embedded", "--example", "tap"]);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            c.arg("--release");
        }
        c.current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
        run(&mut c, Duration::from_secs(600)).assert_success();
    }
    bin
}

/// Start the tap example with `args` after the network ones.
fn start_server(ns: &mut Netns, args: &[&str]) {
    let bin = tap_example();
    let mut child = ns
        .cmd(bin.to_str().expect("utf-8 path"))
        .args(["--tap", "tap0", "--ip", SERVER_CIDR])
        .args(args)
        .args(["--exit-after", "300"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the tap example");
    let stdout = child.stdout.take().expect("stdout");
    ns.children.push(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the tap example did not say ready in 20 s");
    assert_eq!(line.trim(), "ready", "the tap example did not start");
}

/// The export at `uri`, read whole by qemu-img (into `path`).
fn qemu_img_read(ns: &Netns, uri: &str, path: &Path) -> Vec<u8> {
    run(
        ns.cmd("qemu-img")
            .args(["convert", "-f", "raw", "-O", "raw", uri])
            .arg(path),
        CMD_TIMEOUT,
    )
    .assert_success();
    fs::read(path).unwrap()
}

fn assert_same(what: &str, got: &[u8], want: &[u8]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = first_difference(got, want) {
        panic!("{what}: first difference at byte {i}");
    }
}

#[test]
fn real_clients_read_and_write_over_tap() {
    if let Some(why) = unsupported() {
        eprintln!("SKIP: {why}");
        return;
    }
    skip_unless!("nbdinfo", "nbdcopy", "qemu-img");
    let mut ns = match Netns::create() {
        Ok(ns) => ns,
        Err(why) => {
            eprintln!("SKIP: {why}");
            return;
        }
    };
    start_server(&mut ns, &["--size", &DISK_SIZE.to_string()]);
    let dir = TempDir::new();
    let uri = format!("nbd://{SERVER_IP}/");

    // nbdinfo: the export as negotiated.
    let out = run(ns.cmd("nbdinfo").arg(&uri), CMD_TIMEOUT).assert_success();
    assert!(
        out.stdout.contains(&format!("export-size: {DISK_SIZE}")),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("can_multi_conn: true") || out.stdout.contains("multi-conn"));
    let out = run(ns.cmd("nbdinfo").args(["--size", &uri]), CMD_TIMEOUT).assert_success();
    assert_eq!(out.stdout.trim(), DISK_SIZE.to_string());

    // nbdcopy writes a file with a zero hole into the RAM disk.
    let mut a = Prng::new(1).bytes(DISK_SIZE);
    a[256 * 1024..512 * 1024].fill(0);
    let a_path = dir.join("a.img");
    fs::write(&a_path, &a).unwrap();
    run(ns.cmd("nbdcopy").arg(&a_path).arg(&uri), CMD_TIMEOUT).assert_success();

    // Block status shows the hole.
    let out = run(ns.cmd("nbdinfo").args(["--map", &uri]), CMD_TIMEOUT).assert_success();
    assert!(out.stdout.contains("data"), "{}", out.stdout);
    assert!(out.stdout.contains("zero"), "{}", out.stdout);

    // qemu-img reads it back.
    assert_same(
        "qemu-img read after nbdcopy write",
        &qemu_img_read(&ns, &uri, &dir.join("b.img")),
        &a,
    );

    // qemu-img writes new data over it; nbdcopy reads it back.
    let c = Prng::new(2).bytes(DISK_SIZE);
    let c_path = dir.join("c.img");
    fs::write(&c_path, &c).unwrap();
    run(
        ns.cmd("qemu-img")
            .args(["convert", "-n", "-f", "raw", "-O", "raw"])
            .arg(&c_path)
            .arg(&uri),
        CMD_TIMEOUT,
    )
    .assert_success();
    let d_path = dir.join("d.img");
    run(ns.cmd("nbdcopy").arg(&uri).arg(&d_path), CMD_TIMEOUT).assert_success();
    assert_same(
        "nbdcopy read after qemu-img write",
        &fs::read(&d_path).unwrap(),
        &c,
    );
}

/// A disk of `size` random bytes with an MBR whose primary partitions are
/// `parts` (first sector, sectors; type 0x83).
fn mbr_disk(size: usize, parts: &[(u32, u32)]) -> Vec<u8> {
    let mut d = Prng::new(3).bytes(size);
    d[..512].fill(0);
    for (i, (start, len)) in parts.iter().enumerate() {
        let e = 0x1be + 16 * i;
        d[e + 4] = 0x83;
        d[e + 8..e + 12].copy_from_slice(&start.to_le_bytes());
        d[e + 12..e + 16].copy_from_slice(&len.to_le_bytes());
    }
    d[510] = 0x55;
    d[511] = 0xaa;
    d
}

#[test]
fn real_clients_read_a_partition_through_filters_over_tap() {
    if let Some(why) = unsupported() {
        eprintln!("SKIP: {why}");
        return;
    }
    skip_unless!("nbdinfo", "nbdcopy", "qemu-img", "nbdsh");
    let dir = TempDir::new();
    // Partition 1: 1 MiB from 64 KiB; partition 2 after it.
    let (p1, p1_len) = (64 * 1024usize, 1024 * 1024usize);
    let image = mbr_disk(2 * 1024 * 1024, &[(128, 2048), (2176, 1024)]);
    let want = &image[p1..p1 + p1_len];
    let image_path = dir.join("mbr.img");
    fs::write(&image_path, &image).unwrap();
    let mut ns = match Netns::create() {
        Ok(ns) => ns,
        Err(why) => {
            eprintln!("SKIP: {why}");
            return;
        }
    };
    start_server(
        &mut ns,
        &[
            "--image",
            image_path.to_str().expect("utf-8 path"),
            "--filter",
            "protect",
            "--filter",
            "nozero",
            "--filter",
            "partition",
            "partition=1",
            "protect=0-4095",
            "zeromode=emulate",
        ],
    );
    let uri = format!("nbd://{SERVER_IP}/");

    // The export is partition 1.
    let out = run(ns.cmd("nbdinfo").args(["--size", &uri]), CMD_TIMEOUT).assert_success();
    assert_eq!(out.stdout.trim(), p1_len.to_string());

    // nbdcopy and qemu-img read it, byte for byte.
    let a_path = dir.join("a.img");
    run(ns.cmd("nbdcopy").arg(&uri).arg(&a_path), CMD_TIMEOUT).assert_success();
    assert_same(
        "nbdcopy read of partition 1",
        &fs::read(&a_path).unwrap(),
        want,
    );
    assert_same(
        "qemu-img read of partition 1",
        &qemu_img_read(&ns, &uri, &dir.join("b.img")),
        want,
    );

    // protect: a write that changes the first 4 KiB fails with EPERM; a
    // write and a zero past it succeed and read back.
    let script = r#"
import errno
try:
    h.pwrite(b"\xff" * 512, 1024)
    print("protected write: ok")
except nbd.Error as e:
    print("protected write: errno", e.errno == errno.EPERM and "EPERM" or e.errno)
h.pwrite(b"abc" * 100, 8192)
h.zero(4096, 16384)
print("read back:", h.pread(300, 8192) == b"abc" * 100, h.pread(4096, 16384) == bytes(4096))
print("protected:", h.pread(512, 1024).hex()[:16])
"#;
    let path = format!("/usr/bin:{}", std::env::var("PATH").unwrap_or_default());
    let out = run(
        ns.cmd("nbdsh")
            .env("PATH", path)
            .args(["-u", &uri, "-c", script]),
        CMD_TIMEOUT,
    )
    .assert_success();
    assert!(
        out.stdout.contains("protected write: errno EPERM"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("read back: True True"),
        "{}",
        out.stdout
    );
    let unchanged = want[1024..1032]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>();
    assert!(
        out.stdout.contains(&format!("protected: {unchanged}")),
        "{}",
        out.stdout
    );
}
