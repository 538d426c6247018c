//! The vddk plugin against a stand-in VDDK (tests/vddk/stub-vddk.c,
//! compiled with gcc by each test into its own libdir), as nbdkit's own
//! test suite does: VMware's library is proprietary and cannot be
//! installed here. The stand-in serves a local file and logs every call
//! with its arguments, so the tests check both the bytes (read back with
//! nbdcopy and qemu-img) and what the plugin passed to VDDK.

use nbdkit_tests::{
    assert_bytes_eq, assert_one_error, nbdkit_cmd, path_str, run, run_tool, skip_unless,
    write_random_file, Server, TempDir, CMD_TIMEOUT,
};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const SIZE: usize = 4 << 20;

/// A libdir holding the stand-in as `libvixDiskLib.so.<major>` (under
/// `lib64/` when `lib64`), or `None` (after printing SKIP) without gcc.
fn stub_libdir(dir: &Path, major: u32, lib64: bool) -> Option<PathBuf> {
    if !skip_unless("gcc") {
        println!("SKIP: gcc is needed to build the stand-in VDDK library");
        return None;
    }
    let libdir = dir.join("vddk");
    let sodir = if lib64 {
        libdir.join("lib64")
    } else {
        libdir.clone()
    };
    fs::create_dir_all(&sodir).unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("vddk/stub-vddk.c");
    let out = run(
        Command::new("gcc")
            .args(["-shared", "-fPIC", "-Wall", "-o"])
            .arg(sodir.join(format!("libvixDiskLib.so.{major}")))
            .arg(&src)
            .arg("-ldl"),
        CMD_TIMEOUT,
    );
    assert!(out.success(), "gcc: {}", out.describe());
    Some(libdir)
}

/// The stand-in's call log (it lives beside the library).
fn calls(libdir: &Path) -> String {
    let flat = libdir.join("calls.log");
    let p = if flat.exists() {
        flat
    } else {
        libdir.join("lib64/calls.log")
    };
    fs::read_to_string(p).unwrap_or_default()
}

fn arg(k: &str, v: &Path) -> String {
    format!("{k}={}", path_str(v))
}

fn have_clients() -> bool {
    for t in ["nbdcopy", "nbdinfo", "qemu-img"] {
        if !skip_unless(t) {
            println!("SKIP: {t} not installed");
            return false;
        }
    }
    true
}

/// A temporary directory with the stand-in as `libvixDiskLib.so.<major>`,
/// when gcc and the NBD clients are installed.
fn setup(major: u32, lib64: bool) -> Option<(TempDir, PathBuf)> {
    let tmp = TempDir::new();
    let libdir = stub_libdir(tmp.path(), major, lib64)?;
    have_clients().then_some((tmp, libdir))
}

#[test]
fn vddk_reads_and_writes_byte_for_byte() {
    let Some((tmp, libdir)) = setup(6, false) else {
        return;
    };
    let disk = tmp.join("disk.img");
    let want = write_random_file(&disk, SIZE, 13);
    let mut srv = Server::start(["vddk", &arg("libdir", &libdir), path_str(&disk)]);

    let out = run_tool("nbdinfo", ["--size", &srv.uri()]).assert_success();
    assert_eq!(out.stdout.trim(), SIZE.to_string());

    // Read everything with nbdcopy.
    let copy = tmp.join("copy.raw");
    run_tool("nbdcopy", [&srv.uri(), path_str(&copy)]).assert_success();
    assert_bytes_eq("nbdcopy read", &fs::read(&copy).unwrap(), &want);

    // Write a new image through qemu-img, then read it back both ways.
    let src = tmp.join("src.raw");
    let new = write_random_file(&src, SIZE, 14);
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
            &srv.uri(),
        ],
    )
    .assert_success();
    let back = tmp.join("back.raw");
    run_tool(
        "qemu-img",
        ["convert", "-O", "raw", &srv.uri(), path_str(&back)],
    )
    .assert_success();
    assert_bytes_eq("qemu-img read back", &fs::read(&back).unwrap(), &new);
    srv.stop();
    assert_bytes_eq("file under the stand-in", &fs::read(&disk).unwrap(), &new);

    let log = calls(&libdir);
    assert!(
        log.contains(&format!(
            "InitEx 6.5 libdir={} config=NULL",
            path_str(&libdir)
        )),
        "{log}"
    );
    assert!(
        log.contains(&format!("Open {} flags=0", path_str(&disk))),
        "{log}"
    );
    assert!(log.contains("Close"), "{log}");
    assert!(log.contains("Flush"), "qemu-img flushes: {log}");
    assert!(log.trim_end().ends_with("Exit"), "{log}");
}

#[test]
fn vddk_readonly_and_extents() {
    let Some((tmp, libdir)) = setup(7, true) else {
        return;
    };
    // 1 MiB of zeroes, 128 KiB of data, zeroes to 4 MiB (chunks are 64 KiB).
    let disk = tmp.join("disk.img");
    let mut want = vec![0u8; SIZE];
    for (i, b) in want[1 << 20..(1 << 20) + (128 << 10)]
        .iter_mut()
        .enumerate()
    {
        *b = (i % 251) as u8 + 1;
    }
    fs::write(&disk, &want).unwrap();
    let mut srv = Server::start(["-r", "vddk", &arg("libdir", &libdir), &arg("file", &disk)]);
    let out = run_tool("nbdinfo", ["--map", &srv.uri()]).assert_success();
    let map: Vec<Vec<&str>> = out
        .stdout
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    let starts: Vec<(&str, &str, &str)> = map.iter().map(|f| (f[0], f[1], f[2])).collect();
    assert_eq!(
        starts,
        [
            ("0", "1048576", "3"),
            ("1048576", "131072", "0"),
            ("1179648", "3014656", "3")
        ],
        "{}",
        out.stdout
    );
    let copy = tmp.join("copy.raw");
    run_tool("nbdcopy", [&srv.uri(), path_str(&copy)]).assert_success();
    assert_bytes_eq("nbdcopy read", &fs::read(&copy).unwrap(), &want);
    // Writes are refused on a read-only export.
    let w = run_tool(
        "qemu-io",
        ["-f", "raw", "-c", "write -P 1 0 512", &srv.uri()],
    );
    assert!(
        w.stdout.contains("failed") || w.stderr.contains("failed") || !w.success(),
        "{}",
        w.describe()
    );
    srv.stop();
    let log = calls(&libdir);
    assert!(log.contains("readonly=1"), "{log}");
    assert!(
        log.contains(&format!("Open {} flags=4", path_str(&disk))),
        "{log}"
    );
    assert!(
        log.contains("QueryAllocatedBlocks 0 128 128"),
        "probe: {log}"
    );
    assert_eq!(fs::read(&disk).unwrap(), want);
}

#[test]
fn vddk_single_link_holes_are_not_zero() {
    let Some((tmp, libdir)) = setup(8, false) else {
        return;
    };
    let disk = tmp.join("disk.img");
    fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let srv = Server::start([
        "-r",
        "vddk",
        &arg("libdir", &libdir),
        "single-link=true",
        path_str(&disk),
    ]);
    let out = run_tool("nbdinfo", ["--map", &srv.uri()]).assert_success();
    let first: Vec<&str> = out.stdout.split_whitespace().take(3).collect();
    assert_eq!(first, ["0", "1048576", "1"], "{}", out.stdout);
}

#[test]
fn vddk_remote_parameters_reach_vddk() {
    let Some((tmp, libdir)) = setup(6, false) else {
        return;
    };
    let disk = tmp.join("disk.img");
    let want = write_random_file(&disk, 1 << 20, 5);
    fs::write(libdir.join("disk-map"), format!("{}\n", path_str(&disk))).unwrap();
    let pw = tmp.join("pw");
    fs::write(&pw, "s3cret\n").unwrap();
    let config = tmp.join("vddk.conf");
    fs::write(&config, "vixDiskLib.transport.LogLevel = 4\n").unwrap();
    let srv = Server::start([
        "-r",
        "vddk",
        &arg("libdir", &libdir),
        &arg("config", &config),
        "server=esxi.example.com",
        "user=root",
        &format!("password=+{}", path_str(&pw)),
        "thumbprint=B2:31:BD:DE:9F:DB:9D:E0:78:EF:30:42:8A:41:B0:28:92:93:C8:DD",
        "vm=moref=2",
        "snapshot=snapshot-7",
        "transports=nbd:nbdssl",
        "port=8443",
        "nfchostport=9020",
        "compression=zlib",
        "single-link=true",
        "unbuffered=true",
        "vimapiver=ignored",
        "[datastore1] Fedora/Fedora.vmdk",
    ]);
    let copy = tmp.join("copy.raw");
    run_tool("nbdcopy", [&srv.uri(), path_str(&copy)]).assert_success();
    assert_bytes_eq("remote read", &fs::read(&copy).unwrap(), &want);
    drop(srv);
    let log = calls(&libdir);
    assert!(
        log.contains(&format!("config={}", path_str(&config))),
        "{log}"
    );
    assert!(
        log.contains(
            "ConnectEx vm=moref=2 server=esxi.example.com \
             thumbprint=B2:31:BD:DE:9F:DB:9D:E0:78:EF:30:42:8A:41:B0:28:92:93:C8:DD \
             credtype=1 cred0=root cred1=s3cret cred2=- port=8443 nfchostport=9020 spectype=0 \
             readonly=1 snapshot=snapshot-7 transports=nbd:nbdssl"
        ),
        "{log}"
    );
    // read-only 4 | single-link 2 | unbuffered 1 | zlib 16
    assert!(
        log.contains("Open [datastore1] Fedora/Fedora.vmdk flags=23"),
        "{log}"
    );

    // cookie= switches to session credentials.
    let srv = Server::start([
        "-r",
        "vddk",
        &arg("libdir", &libdir),
        "server=vcenter.example.com",
        "user=admin",
        "password=pw",
        "cookie=vmware_soap_session=abc",
        "vm=moref=vm-16",
        "compression=skipz",
        "[datastore1] Fedora/Fedora.vmdk",
    ]);
    run_tool("nbdinfo", ["--size", &srv.uri()]).assert_success();
    drop(srv);
    let log = calls(&libdir);
    assert!(
        log.contains("credtype=2 cred0=vmware_soap_session=abc cred1=admin cred2=pw port=0"),
        "{log}"
    );
    assert!(log.contains("flags=68"), "read-only 4 | skipz 64: {log}");
}

#[test]
fn vddk_create() {
    let Some((tmp, libdir)) = setup(6, false) else {
        return;
    };
    let disk = tmp.join("new.vmdk");
    let src = tmp.join("src.raw");
    let want = write_random_file(&src, 1 << 20, 77);
    let srv = Server::start([
        "vddk",
        &arg("libdir", &libdir),
        "create=true",
        "create-size=1M",
        "create-type=monolithic-flat",
        "create-adapter-type=ide",
        "create-hwversion=esx65",
        path_str(&disk),
    ]);
    run_tool("nbdcopy", [path_str(&src), &srv.uri()]).assert_success();
    // A second connection opens the disk made by the first.
    let back = tmp.join("back.raw");
    run_tool("nbdcopy", [&srv.uri(), path_str(&back)]).assert_success();
    assert_bytes_eq("created disk", &fs::read(&back).unwrap(), &want);
    drop(srv);
    let log = calls(&libdir);
    assert_eq!(
        log.matches(&format!(
            "Create {} type=2 adapter=1 hwversion=13 capacity=2048",
            path_str(&disk)
        ))
        .count(),
        1,
        "{log}"
    );

    // Defaults: monolithic-sparse, scsi-buslogic, workstation5.
    let disk2 = tmp.join("new2.vmdk");
    let srv = Server::start([
        "vddk",
        &arg("libdir", &libdir),
        "create=1",
        "create-size=64k",
        path_str(&disk2),
    ]);
    let out = run_tool("nbdinfo", ["--size", &srv.uri()]).assert_success();
    assert_eq!(out.stdout.trim(), "65536");
    drop(srv);
    assert!(
        calls(&libdir).contains("type=1 adapter=2 hwversion=4 capacity=128"),
        "{}",
        calls(&libdir)
    );
}

/// Runs `nbdkit vddk ARGS` expecting one error line and status 1.
fn one_error(args: &[&str], want: &str) {
    let out = run(nbdkit_cmd().arg("vddk").args(args), CMD_TIMEOUT);
    assert_one_error(&out, want);
}

#[test]
fn vddk_missing_library_is_one_error_line() {
    let tmp = TempDir::new();
    let empty = tmp.join("empty");
    fs::create_dir(&empty).unwrap();
    one_error(
        &[
            &arg("libdir", &empty),
            "/some/disk.vmdk",
            "--run",
            "true",
            "-U",
            "-",
        ],
        "libvixDiskLib",
    );
}

#[test]
fn vddk_bad_parameters() {
    one_error(
        &["libdir=/"],
        "you must supply the file=<FILENAME> parameter",
    );
    one_error(
        &["server=esxi", "user=root", "/x.vmdk"],
        "remote connection requested, missing parameter: password",
    );
    one_error(
        &["server=esxi", "user=root", "password=x", "/x.vmdk"],
        "remote connection requested, missing parameter: vm",
    );
    one_error(
        &["compression=lz4", "/x.vmdk"],
        "unknown compression type: lz4",
    );
    one_error(&["create=true", "/x.vmdk"], "create-size");
    one_error(
        &["create=true", "create-size=1000", "/x.vmdk"],
        "multiple of 512",
    );
    one_error(&["create-type=floppy", "/x.vmdk"], "create-type");
    one_error(&["port=99999", "/x.vmdk"], "port");
    one_error(&["nosuch=1", "/x.vmdk"], "unknown parameter 'nosuch'");
}

#[test]
fn vddk_dump_plugin() {
    let tmp = TempDir::new();
    // Without a library: nbdkit's fixed lines only.
    let out = run(
        nbdkit_cmd().args(["vddk", "--dump-plugin", &arg("libdir", tmp.path())]),
        CMD_TIMEOUT,
    )
    .assert_success();
    assert!(out.stdout.contains("name=vddk\n"), "{}", out.stdout);
    assert!(
        out.stdout.contains("vddk_default_libdir="),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("vddk_has_nfchostport=1\n"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("thread_model=serialize_requests\n"));
    assert!(out.stdout.contains("magic_config_key=file\n"));
    assert!(
        !out.stdout.contains("vddk_library_version"),
        "{}",
        out.stdout
    );

    let Some(libdir) = stub_libdir(tmp.path(), 7, true) else {
        return;
    };
    let out = run(
        nbdkit_cmd().args(["vddk", "--dump-plugin", &arg("libdir", &libdir)]),
        CMD_TIMEOUT,
    )
    .assert_success();
    let so = libdir.join("lib64/libvixDiskLib.so.7");
    for line in [
        "vddk_library_version=7".to_string(),
        format!("vddk_dll={}", path_str(&so)),
        "VixDiskLib_InitEx=1".into(),
        "VixDiskLib_QueryAllocatedBlocks=1".into(),
        "VixDiskLib_Flush=1".into(),
        "has_extents=1".into(),
        "has_after_fork=1".into(),
    ] {
        assert!(
            out.stdout.lines().any(|l| l == line),
            "{line}: {}",
            out.stdout
        );
    }
    assert!(
        !out.stdout.contains("VixDiskLib_ReadAsync"),
        "{}",
        out.stdout
    );

    let out = run(nbdkit_cmd().args(["vddk", "--help"]), CMD_TIMEOUT).assert_success();
    assert!(out.stdout.contains("[file=]<FILENAME>"), "{}", out.stdout);
}

#[test]
fn vddk_debug_flags() {
    let Some((tmp, libdir)) = setup(6, false) else {
        return;
    };
    let disk = tmp.join("disk.img");
    write_random_file(&disk, 1 << 20, 3);
    let copy = tmp.join("copy.raw");
    let serve = |extra: &[&str]| {
        let mut args = vec!["-v".to_string()];
        args.extend(extra.iter().map(|s| s.to_string()));
        args.extend(["vddk".into(), arg("libdir", &libdir), arg("file", &disk)]);
        let mut srv = Server::start(&args);
        run_tool("nbdcopy", [&srv.uri(), path_str(&copy)]).assert_success();
        srv.stop();
        srv.stderr()
    };
    let plain = serve(&[]);
    assert!(
        plain.contains("VixDiskLib_Read: handle, 0 sectors"),
        "{plain}"
    );
    assert!(plain.contains("VixDiskLib_Open: connection"), "{plain}");
    assert!(
        plain.contains("stub VDDK says hello to nbdkit number 42"),
        "VDDK's log function reaches the debug log: {plain}"
    );
    assert!(plain.contains("transport mode: file"), "{plain}");
    assert!(!plain.contains("VDDK function stats"), "{plain}");
    assert!(!plain.contains("disk info:"), "{plain}");

    let quiet = serve(&[
        "-D",
        "vddk.datapath=0",
        "-D",
        "vddk.stats=1",
        "-D",
        "vddk.diskinfo=1",
    ]);
    assert!(!quiet.contains("VixDiskLib_Read:"), "{quiet}");
    assert!(quiet.contains("VixDiskLib_Open: connection"), "{quiet}");
    assert!(
        quiet.contains("VDDK function stats (-D vddk.stats=1):"),
        "{quiet}"
    );
    let read_row = quiet
        .lines()
        .find(|l| l.split_whitespace().any(|w| w == "Read"))
        .unwrap_or_else(|| panic!("no Read row: {quiet}"));
    assert!(read_row.trim_end().ends_with("1048576"), "{read_row}");
    assert!(
        quiet.contains("disk info: capacity: 2048 sectors (1048576 bytes)"),
        "{quiet}"
    );
    assert!(quiet.contains("disk info: uuid: stub-uuid"), "{quiet}");
}
