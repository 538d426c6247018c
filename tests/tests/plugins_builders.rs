//! Disk builders that run external programs: linuxdisk (mke2fs -d), iso
//! (xorriso/genisoimage/mkisofs), tmpdisk and ondemand (mkfs or a
//! `command=` script). The images are checked with the real tools:
//! e2fsck, debugfs, sfdisk, isoinfo.

use core::time::Duration;
use std::fs;
use std::path::Path;
use std::time::Instant;

use nbdkit_tests::{
    find_tool, nbdkit_cmd, path_str, run, run_tool, skip_unless, Output, Server, TempDir,
    CMD_TIMEOUT,
};

/// Runs `nbdkit -U - ARGS --run RUN` with `$TMPDIR` set to `tmp`.
fn captive(tmp: &Path, args: &[&str], run_cmd: &str) -> Output {
    let mut cmd = nbdkit_cmd();
    cmd.env("TMPDIR", tmp)
        .arg("-U")
        .arg("-")
        .args(args)
        .arg("--run")
        .arg(run_cmd);
    run(&mut cmd, CMD_TIMEOUT)
}

/// A small tree: a file, a symlink and a file in a subdirectory.
fn sample_tree(dir: &Path) {
    fs::create_dir_all(dir.join("sub")).unwrap();
    fs::write(dir.join("hello.txt"), b"hello, world\n").unwrap();
    let numbers: String = (1..=2000).map(|i| format!("{i}\n")).collect();
    fs::write(dir.join("sub/numbers.txt"), numbers).unwrap();
    std::os::unix::fs::symlink("hello.txt", dir.join("link")).unwrap();
}

/// Copies the export to `out` with nbdcopy.
fn copy_out(tmp: &Path, args: &[&str], out: &Path) -> Output {
    captive(tmp, args, &format!("nbdcopy \"$uri\" '{}'", path_str(out)))
}

/// The file system of a linuxdisk image: what lies between the 1MiB
/// partition start and the 33 sectors of the backup GPT.
fn extract_partition(image: &Path, out: &Path) {
    let data = fs::read(image).unwrap();
    assert!(data.len() > 1024 * 1024 + 33 * 512);
    fs::write(out, &data[1024 * 1024..data.len() - 33 * 512]).unwrap();
}

fn debugfs(fs_image: &Path, request: &str) -> String {
    let out = run_tool("debugfs", ["-R", request, path_str(fs_image)]);
    assert!(out.success(), "{}", out.describe());
    out.stdout
}

#[test]
fn dump_plugin_thread_models_are_parallel() {
    for p in ["linuxdisk", "iso", "tmpdisk", "ondemand"] {
        let out = run(nbdkit_cmd().args([p, "--dump-plugin"]), CMD_TIMEOUT).assert_success();
        let text = out.stdout.as_str();
        assert!(text.contains(&format!("name={p}\n")), "{text}");
        assert!(text.contains("thread_model=parallel\n"), "{text}");
    }
}

#[test]
fn linuxdisk_builds_a_gpt_disk_with_an_ext2_file_system() {
    skip_unless!("nbdcopy", "e2fsck", "debugfs");
    let t = TempDir::new();
    let src = t.join("src");
    sample_tree(&src);
    let img = t.join("disk.img");
    let out = copy_out(
        t.path(),
        &["linuxdisk", path_str(&src), "label=ROOTFS"],
        &img,
    );
    assert!(out.success(), "{}", out.describe());

    let data = fs::read(&img).unwrap();
    assert_eq!(&data[510..512], &[0x55, 0xaa], "protective MBR");
    assert_eq!(data[446 + 4], 0xee);
    assert_eq!(&data[512..520], b"EFI PART");
    assert_eq!(&data[data.len() - 512..data.len() - 504], b"EFI PART");

    let part = t.join("part.img");
    extract_partition(&img, &part);
    let fsck = run_tool("e2fsck", ["-fn", path_str(&part)]);
    assert!(fsck.success(), "{}", fsck.describe());
    let ls = debugfs(&part, "ls -l /");
    for name in ["hello.txt", "link", "sub", "lost+found"] {
        assert!(ls.contains(name), "{name} missing from:\n{ls}");
    }
    assert_eq!(debugfs(&part, "cat /hello.txt"), "hello, world\n");
    assert!(debugfs(&part, "cat /sub/numbers.txt").ends_with("1999\n2000\n"));
    let stats = debugfs(&part, "stats");
    assert!(
        stats.contains("Filesystem volume name:   ROOTFS"),
        "{stats}"
    );
    assert!(!stats.contains("has_journal"), "ext2 is the default");
}

#[test]
fn linuxdisk_partition_table_is_valid() {
    skip_unless!("nbdcopy", "sfdisk");
    let t = TempDir::new();
    let src = t.join("src");
    sample_tree(&src);
    let img = t.join("disk.img");
    let out = copy_out(t.path(), &["linuxdisk", path_str(&src)], &img);
    assert!(out.success(), "{}", out.describe());
    let v = run_tool("sfdisk", ["-V", path_str(&img)]);
    assert!(v.success(), "{}", v.describe());
    assert!(v.stdout.as_str().contains("No errors detected"));
    let d = run_tool("sfdisk", ["-d", path_str(&img)]);
    let dump = d.stdout.as_str();
    assert!(dump.contains("label: gpt"), "{dump}");
    assert!(dump.contains("start=        2048"), "{dump}");
    assert!(
        dump.contains("type=0FC63DAF-8483-4772-8E79-3D69D8477DE4"),
        "{dump}"
    );
}

#[test]
fn linuxdisk_ext4_with_exact_size() {
    skip_unless!("nbdcopy", "e2fsck", "debugfs");
    let t = TempDir::new();
    let src = t.join("src");
    sample_tree(&src);
    let img = t.join("disk.img");
    let out = copy_out(
        t.path(),
        &["linuxdisk", path_str(&src), "type=ext4", "size=40M"],
        &img,
    );
    assert!(out.success(), "{}", out.describe());
    // 1MiB before the partition, 33 sectors of backup GPT after it.
    assert_eq!(
        fs::metadata(&img).unwrap().len(),
        (40 << 20) + (1 << 20) + 33 * 512
    );
    let part = t.join("part.img");
    extract_partition(&img, &part);
    assert!(run_tool("e2fsck", ["-fn", path_str(&part)]).success());
    let stats = debugfs(&part, "stats");
    assert!(
        stats.contains("has_journal") && stats.contains("extent"),
        "{stats}"
    );
}

#[test]
fn linuxdisk_plus_size_adds_free_space() {
    skip_unless!("nbdinfo");
    let t = TempDir::new();
    let src = t.join("src");
    sample_tree(&src);
    let size_of = |extra: &[&str]| {
        let mut args = vec!["linuxdisk", path_str(&src)];
        args.extend_from_slice(extra);
        let out = captive(t.path(), &args, "nbdinfo --size \"$uri\"");
        assert!(out.success(), "{}", out.describe());
        out.stdout.as_str().trim().parse::<u64>().unwrap()
    };
    assert_eq!(size_of(&["size=+10M"]) - size_of(&[]), 10 << 20);
}

#[test]
fn linuxdisk_configuration_errors() {
    let t = TempDir::new();
    let cases: &[(&[&str], &str)] = &[
        (
            &["linuxdisk"],
            "you must supply the dir=<DIRECTORY> parameter",
        ),
        (
            &["linuxdisk", "/", "type=xfs"],
            "type=<TYPE> must be an filesystem type supported by e2fsprogs",
        ),
        (
            &["linuxdisk", "/", "dir=/tmp"],
            "dir=<DIRECTORY> must only be set once",
        ),
        (&["linuxdisk", "/", "foo=bar"], "unknown parameter 'foo'"),
    ];
    for (args, msg) in cases {
        let out = captive(t.path(), args, "true");
        assert_eq!(out.code(), Some(1), "{}", out.describe());
        assert!(out.stderr.as_str().contains(msg), "{}", out.describe());
    }
}

#[test]
fn linuxdisk_too_small_fails_at_start_with_mke2fs_error() {
    let t = TempDir::new();
    let src = t.join("src");
    sample_tree(&src);
    let out = captive(t.path(), &["linuxdisk", path_str(&src), "size=1K"], "true");
    assert_eq!(out.code(), Some(1), "{}", out.describe());
    assert!(
        out.stderr
            .as_str()
            .contains("mke2fs: command failed with exit code"),
        "{}",
        out.describe()
    );
    // The temporary file is gone.
    let left: Vec<_> = fs::read_dir(t.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("linuxdisk"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

fn iso_program() -> Option<&'static str> {
    ["xorriso", "genisoimage", "mkisofs"]
        .into_iter()
        .find(|p| find_tool(p).is_some())
}

#[test]
fn iso_merges_directories_and_passes_params() {
    skip_unless!("nbdcopy", "isoinfo");
    if iso_program().is_none() {
        eprintln!("SKIP: no xorriso, genisoimage or mkisofs");
        return;
    }
    let t = TempDir::new();
    let a = t.join("a");
    sample_tree(&a);
    let b = t.join("b");
    fs::create_dir(&b).unwrap();
    fs::write(b.join("second-file-with-long-name.txt"), b"two\n").unwrap();
    let img = t.join("cd.iso");
    let out = copy_out(
        t.path(),
        &[
            "iso",
            path_str(&a),
            &format!("dir={}", path_str(&b)),
            "params=-JrT -V \"My Disk\"",
        ],
        &img,
    );
    assert!(out.success(), "{}", out.describe());
    let d = run_tool("isoinfo", ["-d", "-i", path_str(&img)]);
    assert!(
        d.stdout.as_str().contains("Volume id: My Disk"),
        "{}",
        d.describe()
    );
    let l = run_tool("isoinfo", ["-R", "-l", "-i", path_str(&img)]);
    let listing = l.stdout.as_str();
    for name in [
        "hello.txt",
        "numbers.txt",
        "second-file-with-long-name.txt",
        "link -> hello.txt",
    ] {
        assert!(listing.contains(name), "{name} missing from:\n{listing}");
    }
}

#[test]
fn iso_with_each_installed_program() {
    skip_unless!("nbdinfo", "isoinfo");
    let t = TempDir::new();
    let a = t.join("a");
    sample_tree(&a);
    let mut tried = 0;
    for prog in ["xorriso", "genisoimage", "mkisofs"] {
        if find_tool(prog).is_none() {
            continue;
        }
        tried += 1;
        let out = captive(
            t.path(),
            &["iso", path_str(&a), &format!("prog={prog}")],
            "nbdinfo --size \"$uri\"",
        );
        assert!(out.success(), "{prog}: {}", out.describe());
        let size: u64 = out.stdout.as_str().trim().parse().unwrap();
        assert!(size > 0 && size.is_multiple_of(2048), "{prog}: size {size}");
    }
    if tried == 0 {
        eprintln!("SKIP: no xorriso, genisoimage or mkisofs");
    }
}

#[test]
fn iso_missing_program_is_named() {
    let t = TempDir::new();
    let out = captive(t.path(), &["iso", "/", "prog=no-such-isoprog"], "true");
    assert_eq!(out.code(), Some(1), "{}", out.describe());
    let err = out.stderr.as_str();
    assert!(
        err.contains("no-such-isoprog: command failed with exit code 127"),
        "{err}"
    );
}

#[test]
fn iso_requires_existing_dir() {
    let t = TempDir::new();
    let out = captive(t.path(), &["iso", "/no/such/dir"], "true");
    assert_eq!(out.code(), Some(1));
    assert!(out
        .stderr
        .as_str()
        .contains("realpath: /no/such/dir: No such file or directory"));
    let out = captive(t.path(), &["iso"], "true");
    assert_eq!(out.code(), Some(1));
}

#[test]
fn tmpdisk_makes_ext4_by_default_and_leaves_nothing_behind() {
    skip_unless!("nbdcopy", "e2fsck", "debugfs", "mkfs");
    let t = TempDir::new();
    let tmp = t.join("tmp");
    fs::create_dir(&tmp).unwrap();
    let img = t.join("fs.img");
    let out = copy_out(&tmp, &["tmpdisk", "16M", "label=SCRATCH"], &img);
    assert!(out.success(), "{}", out.describe());
    assert_eq!(fs::metadata(&img).unwrap().len(), 16 << 20);
    assert!(run_tool("e2fsck", ["-fn", path_str(&img)]).success());
    let stats = debugfs(&img, "stats");
    assert!(
        stats.contains("Filesystem volume name:   SCRATCH"),
        "{stats}"
    );
    assert!(stats.contains("has_journal"), "ext4: {stats}");
    assert_eq!(
        fs::read_dir(&tmp).unwrap().count(),
        0,
        "temporary disks removed"
    );
}

#[test]
fn tmpdisk_command_gets_variables() {
    skip_unless!("nbdcopy");
    let t = TempDir::new();
    let img = t.join("out.img");
    let out = copy_out(
        t.path(),
        &[
            "tmpdisk",
            "size=1M",
            "greeting=it's me",
            "command=printf '%s|%s|%s' \"$greeting\" \"$size\" \"${type:-unset}\" > \"$disk\"; echo noise; truncate -s 4096 \"$disk\"",
        ],
        &img,
    );
    assert!(out.success(), "{}", out.describe());
    let data = fs::read(&img).unwrap();
    assert_eq!(data.len(), 4096, "the size the command made");
    assert!(data.starts_with(b"it's me|1048576|unset\0"));
    assert!(!out.stdout.as_str().contains("noise"));
}

#[test]
fn tmpdisk_each_connection_gets_a_fresh_disk() {
    let srv = Server::start(["tmpdisk", "1M", "command=truncate -s $size \"$disk\""]);
    let mut a = srv.connect_raw();
    assert_eq!(a.handshake_go("").unwrap().size, 1 << 20);
    assert_eq!(a.pwrite(0, b"written by a", 1).unwrap(), 0);
    assert_eq!(a.pread(0, 12, 2).unwrap().unwrap(), b"written by a");
    let mut b = srv.connect_raw();
    b.handshake_go("").unwrap();
    assert_eq!(b.pread(0, 12, 1).unwrap().unwrap(), vec![0u8; 12]);
}

#[test]
fn tmpdisk_failing_command_refuses_the_client() {
    let srv = Server::start(["tmpdisk", "1M", "command=echo oops >&2; exit 3"]);
    let mut c = srv.connect_raw();
    assert!(c.handshake_go("").is_err());
    let err = wait_for_stderr(&srv, "command exited with code 3");
    assert!(err.contains("oops"), "{err}");
}

#[test]
fn tmpdisk_configuration_errors() {
    let t = TempDir::new();
    let out = captive(t.path(), &["tmpdisk", "type=ext4"], "true");
    assert_eq!(out.code(), Some(1));
    assert!(out.stderr.as_str().contains("size parameter is required"));
    let out = captive(t.path(), &["tmpdisk", "1M", "disk=/x"], "true");
    assert_eq!(out.code(), Some(1));
    assert!(out
        .stderr
        .as_str()
        .contains("'disk' parameter cannot be set on the command line"));
}

fn wait_for_stderr(srv: &Server, want: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    for _ in 0..500 {
        let err = srv.stderr();
        if err.contains(want) || Instant::now() > deadline {
            assert!(err.contains(want), "want {want:?} in:\n{err}");
            return err;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{want:?} never appeared");
}

const TRUNCATE: &str = "command=truncate -s $size \"$disk\"";

#[test]
fn ondemand_creates_exports_that_persist() {
    let t = TempDir::new();
    let dir = t.join("exports");
    fs::create_dir(&dir).unwrap();
    let dir_arg = format!("dir={}", path_str(&dir));
    let srv = Server::start(["ondemand", &dir_arg, "64K", TRUNCATE]);
    {
        let mut c = srv.connect_raw();
        assert_eq!(c.handshake_go("alpha").unwrap().size, 65536);
        assert_eq!(c.pwrite(100, b"kept", 1).unwrap(), 0);
        c.disconnect().unwrap();
        assert!(c.closed_within(Duration::from_secs(10)));
    }
    assert_eq!(fs::metadata(dir.join("alpha")).unwrap().len(), 65536);
    let mut c = srv.connect_raw();
    c.handshake_go("alpha").unwrap();
    assert_eq!(c.pread(100, 4, 1).unwrap().unwrap(), b"kept");
    // "" is the export "default".
    let mut d = srv.connect_raw();
    d.handshake_go("").unwrap();
    assert!(dir.join("default").exists());
}

#[test]
fn ondemand_lists_existing_exports() {
    skip_unless!("nbdinfo");
    let t = TempDir::new();
    let dir = t.join("exports");
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join("one"), vec![0u8; 4096]).unwrap();
    fs::write(dir.join("two"), vec![0u8; 4096]).unwrap();
    fs::write(dir.join(".hidden"), vec![0u8; 4096]).unwrap();
    let dir_arg = format!("dir={}", path_str(&dir));
    let srv = Server::start(["ondemand", &dir_arg, "64K", TRUNCATE]);
    let out = run_tool("nbdinfo", ["--list", &srv.uri()]);
    assert!(out.success(), "{}", out.describe());
    let text = out.stdout.as_str();
    assert!(text.contains("export=\"one\""), "{text}");
    assert!(text.contains("export=\"two\""), "{text}");
    assert!(!text.contains("hidden"), "{text}");
}

#[test]
fn ondemand_rejects_bad_export_names() {
    let t = TempDir::new();
    let dir = t.join("exports");
    fs::create_dir(&dir).unwrap();
    let dir_arg = format!("dir={}", path_str(&dir));
    let srv = Server::start(["ondemand", &dir_arg, "64K", TRUNCATE]);
    let long = "x".repeat(256);
    for name in ["a.b", "../escape", "a/b", "a:b", ".hidden", long.as_str()] {
        let mut c = srv.connect_raw();
        assert!(c.handshake_go(name).is_err(), "{name} accepted");
    }
    wait_for_stderr(&srv, "invalid exportname \u{2018}a.b\u{2019} rejected");
    assert_eq!(fs::read_dir(&dir).unwrap().count(), 0, "nothing created");
    assert!(!t.join("escape").exists());
}

#[test]
fn ondemand_locks_an_export_in_use() {
    let t = TempDir::new();
    let dir = t.join("exports");
    fs::create_dir(&dir).unwrap();
    let dir_arg = format!("dir={}", path_str(&dir));
    let srv = Server::start(["ondemand", &dir_arg, "64K", TRUNCATE]);
    let mut a = srv.connect_raw();
    a.handshake_go("shared").unwrap();
    let mut b = srv.connect_raw();
    assert!(b.handshake_go("shared").is_err());
    wait_for_stderr(&srv, "shared: filesystem is locked by another client");
    // Another export is not affected.
    let mut c = srv.connect_raw();
    c.handshake_go("other").unwrap();
    a.disconnect().unwrap();
    assert!(a.closed_within(Duration::from_secs(10)));
    // Once the first client is gone the export is free again (the server
    // closes the handle after the socket, so allow it a moment).
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut ok = false;
    for _ in 0..200 {
        let mut d = srv.connect_raw();
        if d.handshake_go("shared").is_ok() {
            ok = true;
            break;
        }
        if Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(ok, "export still locked:\n{}", srv.stderr());
}

#[test]
fn ondemand_wait_makes_the_second_client_wait() {
    let t = TempDir::new();
    let dir = t.join("exports");
    fs::create_dir(&dir).unwrap();
    let dir_arg = format!("dir={}", path_str(&dir));
    let srv = Server::start(["ondemand", &dir_arg, "64K", "wait=true", TRUNCATE]);
    let mut a = srv.connect_raw();
    a.handshake_go("shared").unwrap();
    let sock = srv.socket().to_path_buf();
    let started = Instant::now();
    let waiter = std::thread::spawn(move || {
        let mut b = nbdkit_tests::RawClient::connect(&sock);
        b.handshake_go("shared").map(|e| e.size)
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(!waiter.is_finished(), "second client did not wait");
    a.disconnect().unwrap();
    assert!(a.closed_within(Duration::from_secs(10)));
    let size = waiter
        .join()
        .unwrap()
        .expect("second client gets the export");
    assert_eq!(size, 65536);
    assert!(started.elapsed() >= Duration::from_millis(500));
}

#[test]
fn ondemand_failing_command_leaves_no_export() {
    let t = TempDir::new();
    let dir = t.join("exports");
    fs::create_dir(&dir).unwrap();
    let dir_arg = format!("dir={}", path_str(&dir));
    let srv = Server::start([
        "ondemand",
        &dir_arg,
        "64K",
        "command=truncate -s 1 \"$disk\"; exit 3",
    ]);
    let mut c = srv.connect_raw();
    assert!(c.handshake_go("broken").is_err());
    wait_for_stderr(&srv, "command exited with code 3");
    assert!(!dir.join("broken").exists());
}

#[test]
fn ondemand_default_mkfs_makes_ext4() {
    skip_unless!("nbdinfo", "e2fsck", "mkfs");
    let t = TempDir::new();
    let dir = t.join("exports");
    fs::create_dir(&dir).unwrap();
    let dir_arg = format!("dir={}", path_str(&dir));
    let out = captive(
        t.path(),
        &["ondemand", &dir_arg, "8M", "label=OD"],
        "nbdinfo --size \"nbd+unix:///fs1?socket=$unixsocket\"",
    );
    assert!(out.success(), "{}", out.describe());
    assert_eq!(out.stdout.as_str().trim(), "8388608");
    let fsck = run_tool("e2fsck", ["-fn", path_str(&dir.join("fs1"))]);
    assert!(fsck.success(), "{}", fsck.describe());
}

#[test]
fn ondemand_configuration_errors() {
    let t = TempDir::new();
    let cases: &[(&[&str], &str)] = &[
        (&["ondemand", "1M"], "dir and size parameters are required"),
        (
            &["ondemand", "dir=/tmp"],
            "dir and size parameters are required",
        ),
        (
            &["ondemand", "dir=/no/such/dir", "1M"],
            "realpath: /no/such/dir: No such file or directory",
        ),
        (
            &["ondemand", "dir=/tmp", "1M", "wait=maybe"],
            "could not decipher boolean (maybe)",
        ),
        (
            &["ondemand", "dir=/tmp", "1M", "disk=x"],
            "'disk' parameter cannot be set on the command line",
        ),
    ];
    for (args, msg) in cases {
        let out = captive(t.path(), args, "true");
        assert_eq!(out.code(), Some(1), "{}", out.describe());
        assert!(out.stderr.as_str().contains(msg), "{}", out.describe());
    }
}
