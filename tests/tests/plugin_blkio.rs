//! The blkio plugin (libblkio's drivers, built in from the `blkio` crate)
//! against the real thing: the `io_uring` driver on a file, read and
//! written byte for byte with nbdcopy, qemu-img and python3-libnbd
//! (buffered and `direct=true`, with post-connect properties), and the
//! `virtio-blk-vhost-user` driver against Debian's qemu-storage-daemon
//! serving a file; `--dump-plugin`, `--help` and the error paths.
//! libblkio is Linux-only (io_uring, vhost, VFIO), and so are these tests.
#![cfg(target_os = "linux")]

use core::time::Duration;
use nbdkit_tests::{
    assert_bytes_eq, find_tool, nbdkit_cmd, path_str, run, run_python_code, run_tool, skip_unless,
    wait_until, write_random_file, Server, TempDir, CMD_TIMEOUT,
};
use std::fs;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};

const SIZE: usize = 8 << 20;

/// Whether this kernel lets the process create an io_uring (a seccomp
/// policy or `kernel.io_uring_disabled` may refuse it); prints SKIP if not.
fn io_uring_usable() -> bool {
    // struct io_uring_params is 120 bytes; zeroed asks for defaults.
    let mut params = [0u8; 120];
    // SAFETY: io_uring_setup(entries, params) writes into `params` only.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 4u32, params.as_mut_ptr()) };
    if fd < 0 {
        println!(
            "SKIP: io_uring_setup failed ({}): the io_uring driver cannot run here",
            std::io::Error::last_os_error()
        );
        return false;
    }
    // SAFETY: closing the descriptor just created.
    unsafe { libc::close(fd as i32) };
    true
}

#[test]
fn dump_plugin_has_nbdkits_lines() {
    let o = run(nbdkit_cmd().args(["blkio", "--dump-plugin"]), CMD_TIMEOUT).assert_success();
    let out = &o.stdout;
    for want in [
        "name=blkio",
        "api_version=2",
        "max_thread_model=serialize_requests",
        "thread_model=serialize_requests",
        "magic_config_key=driver",
    ] {
        assert!(out.lines().any(|l| l == want), "no `{want}` in:\n{out}");
    }
    let has: Vec<&str> = out.lines().filter(|l| l.starts_with("has_")).collect();
    let want: Vec<String> = [
        "unload",
        "config",
        "config_complete",
        "config_help",
        "open",
        "close",
        "get_size",
        "block_size",
        "can_write",
        "can_flush",
        "can_trim",
        "can_zero",
        "can_fua",
        "pread",
        "pwrite",
        "flush",
        "trim",
        "zero",
    ]
    .iter()
    .map(|c| format!("has_{c}=1"))
    .collect();
    assert_eq!(has, want, "has_ lines of:\n{out}");

    let o = run(nbdkit_cmd().args(["blkio", "--help"]), CMD_TIMEOUT).assert_success();
    let out = &o.stdout;
    assert!(out.contains("plugin: blkio"), "{out}");
    assert!(out.contains("driver=<DRIVER> (required)"), "{out}");
    assert!(out.contains("get=PROPERTY"), "{out}");
}

/// `nbdkit blkio ARGS` fails at start-up with exactly `message`.
fn fails_with(args: &[&str], message: &str) {
    let o = run(nbdkit_cmd().arg("blkio").args(args), CMD_TIMEOUT);
    assert_eq!(o.code(), Some(1), "{}", o.describe());
    let err = &o.stderr;
    assert_eq!(
        err.trim_end(),
        format!("nbdkit: error: {message}"),
        "{}",
        o.describe()
    );
}

#[test]
fn command_line_errors() {
    fails_with(
        &["path=/dev/null"],
        "you must supply the driver=<DRIVER> parameter after the plugin name on the command line",
    );
    fails_with(
        &["io_uring", "driver=io_uring"],
        "'driver' property set more than once",
    );
    fails_with(
        &["io_uring", "path=/dev/null", "read-only=true"],
        "do not set the libblkio \"read-only\" parameter, use the nbdkit -r flag if read-only is required",
    );
}

/// A client's view of a server whose plugin fails to open: nbdinfo fails
/// and the server's log names the cause.
fn open_fails(args: &[&str], log_has: &str) {
    let mut srv = Server::start(args);
    let o = run_tool("nbdinfo", [srv.uri()]);
    assert!(!o.success(), "nbdinfo succeeded: {}", o.describe());
    srv.stop();
    let log = srv.stderr();
    assert!(
        log.contains(log_has),
        "no `{log_has}` in the server's log:\n{log}"
    );
}

#[test]
fn open_errors_name_the_cause() {
    skip_unless!("nbdinfo");
    if !io_uring_usable() {
        return;
    }
    let d = TempDir::new();
    let img = d.join("disk");
    write_random_file(&img, 1 << 20, 1);
    open_fails(
        &["blkio", "no-such-driver", "path=/dev/null"],
        "error: blkio_create: error opening driver: no-such-driver: Unknown driver name",
    );
    open_fails(
        &["blkio", "io_uring"],
        "error: blkio_connect: failed to connect to device: One of path and fd must be set",
    );
    let missing = d.join("missing");
    open_fails(
        &["blkio", "io_uring", &format!("path={}", path_str(&missing))],
        "error: blkio_connect: failed to connect to device: No such file or directory",
    );
    let path = format!("path={}", path_str(&img));
    open_fails(
        &["blkio", "io_uring", &path, "num-entries=abc"],
        "error: error setting property: num-entries=abc: Value must be a signed 32-bit integer",
    );
    // The other drivers are libblkio's own: without their devices (an NVMe
    // generic character device, a vDPA device, a VFIO PCI function) each
    // says what is wrong with the path it was given.
    open_fails(
        &["blkio", "nvme-io_uring", &path],
        "error: blkio_connect: failed to connect to device: The file must be a character device",
    );
    open_fails(
        &["blkio", "virtio-blk-vhost-vdpa", &path],
        "error: blkio_connect: failed to connect to device: Failed to connect to vDPA device path",
    );
    open_fails(
        &["blkio", "virtio-blk-vfio-pci", &path],
        "error: blkio_connect: failed to connect to device: Not a directory",
    );
    open_fails(
        &["blkio", "io_uring", &path, "no-such-property=1"],
        "error: error setting property: no-such-property=1: Unknown property name",
    );
}

/// Read the whole export with nbdcopy and qemu-img, compare with `want`.
fn read_back_both(uri: &str, d: &TempDir, want: &[u8]) {
    let out = d.join("nbdcopy.out");
    run_tool("nbdcopy", [uri, path_str(&out)]).assert_success();
    assert_bytes_eq("nbdcopy read", &fs::read(&out).unwrap(), want);
    let out = d.join("qemu.out");
    run_tool(
        "qemu-img",
        ["convert", "-f", "raw", "-O", "raw", uri, path_str(&out)],
    )
    .assert_success();
    assert_bytes_eq("qemu-img read", &fs::read(&out).unwrap(), want);
}

/// Overwrite the export with nbdcopy then qemu-img; check the backing
/// file after each.
fn write_both(uri: &str, d: &TempDir, backing: &Path) {
    let src = d.join("src1");
    let want = write_random_file(&src, SIZE, 7);
    run_tool("nbdcopy", [path_str(&src), uri]).assert_success();
    assert_bytes_eq("after nbdcopy write", &fs::read(backing).unwrap(), &want);
    let src = d.join("src2");
    let want = write_random_file(&src, SIZE, 8);
    run_tool(
        "qemu-img",
        [
            "convert",
            "-n",
            "-f",
            "raw",
            "-O",
            "raw",
            path_str(&src),
            uri,
        ],
    )
    .assert_success();
    assert_bytes_eq("after qemu-img write", &fs::read(backing).unwrap(), &want);
}

#[test]
fn io_uring_file_read_and_write() {
    skip_unless!("nbdcopy", "qemu-img");
    if !io_uring_usable() {
        return;
    }
    let d = TempDir::new();
    let img = d.join("disk");
    let want = write_random_file(&img, SIZE, 1);
    // The bare first value is the driver (magic key); path is relative to
    // nbdkit's directory when it starts.
    let mut srv = Server::start(["blkio", "io_uring", &format!("path={}", path_str(&img))]);
    let o = run_tool("nbdinfo", [srv.uri()]).assert_success();
    let info = &o.stdout;
    assert!(info.contains(&format!("export-size: {SIZE} ")), "{info}");
    assert!(info.contains("can_fua: true"), "{info}");
    read_back_both(&srv.uri(), &d, &want);
    write_both(&srv.uri(), &d, &img);
    srv.stop();
}

#[test]
fn io_uring_zero_trim_flush_fua() {
    skip_unless!("python3-nbd");
    if !io_uring_usable() {
        return;
    }
    let d = TempDir::new();
    let img = d.join("disk");
    let mut want = write_random_file(&img, 1 << 20, 3);
    let srv = Server::start(["blkio", "io_uring", &format!("path={}", path_str(&img))]);
    let code = r#"
import nbd, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
assert h.can_zero() and h.can_trim() and h.can_flush() and h.can_fua()
h.pwrite(b"\xab" * 4096, 8192, nbd.CMD_FLAG_FUA)
h.zero(65536, 131072)
h.zero(4096, 4096, nbd.CMD_FLAG_NO_HOLE | nbd.CMD_FLAG_FUA)
h.trim(524288, 524288, nbd.CMD_FLAG_FUA)
h.flush()
assert h.pread(4096, 8192) == b"\xab" * 4096
h.shutdown()
"#;
    run_python_code(code, [srv.uri()]).assert_success();
    want[8192..12288].fill(0xab);
    want[131072..196608].fill(0);
    want[4096..8192].fill(0);
    let got = fs::read(&img).unwrap();
    // The trimmed half may read back as anything; the rest is exact.
    assert_bytes_eq("after zero/write", &got[..524288], &want[..524288]);
}

#[test]
fn io_uring_direct_and_post_connect_properties() {
    skip_unless!("nbdcopy", "qemu-img");
    if !io_uring_usable() {
        return;
    }
    // O_DIRECT needs a file system that has it (tmpfs has had it since
    // Linux 6.6); the temporary directory is tried first.
    let d = TempDir::new();
    let img = d.join("disk");
    let want = write_random_file(&img, SIZE, 5);
    let mut srv = Server::start([
        "-v",
        "blkio",
        "io_uring",
        &format!("path={}", path_str(&img)),
        "direct=true",
        "num-queues=2",
        "num-entries=64",
        "get=direct",
        "get=num-entries",
        "get=capacity",
    ]);
    let o = run_tool("nbdinfo", [srv.uri()]);
    if !o.success() && srv.stderr().contains("Invalid argument") {
        println!("SKIP: the temporary directory's file system refuses O_DIRECT");
        return;
    }
    let info = o.assert_success().stdout;
    assert!(info.contains("block_size_minimum: 512"), "{info}");
    read_back_both(&srv.uri(), &d, &want);
    write_both(&srv.uri(), &d, &img);
    srv.stop();
    let log = srv.stderr();
    for want in [
        "debug: get direct = true",
        "debug: get num-entries = 64",
        &format!("debug: get capacity = {SIZE}"),
        "driver io_uring requires a bounce buffer",
    ] {
        assert!(log.contains(want), "no `{want}` in the log:\n{log}");
    }
}

#[test]
fn io_uring_readonly_flag() {
    skip_unless!("nbdinfo", "nbdcopy");
    if !io_uring_usable() {
        return;
    }
    let d = TempDir::new();
    let img = d.join("disk");
    let want = write_random_file(&img, 1 << 20, 9);
    let mut perms = fs::metadata(&img).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o444);
    fs::set_permissions(&img, perms).unwrap();
    let srv = Server::start([
        "-r",
        "blkio",
        "io_uring",
        &format!("path={}", path_str(&img)),
    ]);
    let o = run_tool("nbdinfo", [srv.uri()]).assert_success();
    assert!(o.stdout.contains("is_read_only: true"), "{}", o.describe());
    let src = d.join("src");
    write_random_file(&src, 1 << 20, 10);
    let o = run_tool("nbdcopy", [path_str(&src), &srv.uri()]);
    assert!(
        !o.success(),
        "write to a read-only export: {}",
        o.describe()
    );
    assert_bytes_eq("read-only file", &fs::read(&img).unwrap(), &want);
}

/// qemu-storage-daemon exporting `file` as a vhost-user-blk socket.
struct Qsd {
    child: Child,
}

impl Drop for Qsd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn vhost_user_against_qemu_storage_daemon() {
    skip_unless!("qemu-storage-daemon", "nbdcopy", "qemu-img");
    let d = TempDir::new();
    let img = d.join("disk");
    let want = write_random_file(&img, SIZE, 11);
    let sock = d.join("vhost.sock");
    let qsd = find_tool("qemu-storage-daemon").unwrap();
    let child = Command::new(qsd)
        .arg("--blockdev")
        .arg(format!(
            "driver=file,node-name=file,filename={}",
            path_str(&img)
        ))
        .arg("--export")
        .arg(format!(
            "type=vhost-user-blk,id=export,addr.type=unix,addr.path={},node-name=file,writable=on",
            path_str(&sock)
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(d.join("qsd.log")).unwrap())
        .spawn()
        .expect("start qemu-storage-daemon");
    let _qsd = Qsd { child };
    assert!(
        wait_until(Duration::from_secs(20), || sock.exists()
            && UnixStream::connect(&sock).is_ok()),
        "qemu-storage-daemon did not listen: {}",
        fs::read_to_string(d.join("qsd.log")).unwrap_or_default()
    );
    // One connection at a time: the vhost-user export serves one front end.
    let mut srv = Server::start([
        "blkio",
        "virtio-blk-vhost-user",
        &format!("path={}", path_str(&sock)),
    ]);
    read_back_both(&srv.uri(), &d, &want);
    write_both(&srv.uri(), &d, &img);
    srv.stop();
}
