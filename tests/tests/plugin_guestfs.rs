//! The guestfs plugin (plugins/guestfs, `libnbdkit_guestfs_plugin.so`
//! beside the binary, libguestfs.so.0 loaded with dlopen).
//!
//! libguestfs itself cannot be installed on this project's machines: its
//! Debian package needs qemu-system-x86 7.2, which Debian's qemu-utils
//! 10.0 installed here (backports) breaks. So the appliance never boots
//! here; the test `real_appliance_exports_a_partition` runs only where
//! `libguestfs-test-tool` passes, and SKIPs otherwise. What runs
//! everywhere: `--dump-plugin`, `--help`, the configuration errors, the
//! missing-library error, and the plugin's use of the C API against a
//! stand-in libguestfs.so.0 (tests/c/guestfs-standin.c, over local files,
//! NOT libguestfs): the drives and flags it adds, the mounts, byte-for-byte
//! reads and writes of a device and of a file, flush, and the errors.

use core::time::Duration;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use nbdkit_tests::{
    assert_bytes_eq, find_tool, have_tool, nbdkit_cmd, path_str, run, skip_unless,
    write_random_file, Output, TempDir, CMD_TIMEOUT, REFERENCE,
};

fn our_plugin() {
    nbdkit_tests::assert_plugin_built_beside("guestfs");
}

fn system_libguestfs() -> bool {
    ["/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib"]
        .iter()
        .any(|d| Path::new(d).join("libguestfs.so.0").exists())
}

#[test]
fn dump_plugin_and_help_are_nbdkits() {
    our_plugin();
    let o = run(nbdkit_cmd().args(["guestfs", "--dump-plugin"]), CMD_TIMEOUT).assert_success();
    let got: Vec<&str> = o
        .stdout
        .lines()
        .filter(|l| !l.starts_with("path=") && !l.starts_with("version="))
        .collect();
    assert_eq!(
        got,
        [
            "name=guestfs",
            "api_version=1",
            "struct_size=384",
            "max_thread_model=serialize_connections",
            "thread_model=serialize_connections",
            "errno_is_preserved=0",
            "has_longname=1",
            "has_unload=1",
            "has_config=1",
            "has_config_complete=1",
            "has_config_help=1",
            "has_open=1",
            "has_close=1",
            "has_get_size=1",
            "has__pread_v1=1",
            "has__pwrite_v1=1",
            "has__flush_v1=1",
        ],
        "{}",
        o.describe()
    );
    let r = run(
        Command::new(REFERENCE).args(["guestfs", "--dump-plugin"]),
        CMD_TIMEOUT,
    );
    if r.success() {
        let want: Vec<&str> = r
            .stdout
            .lines()
            .filter(|l| !l.starts_with("path=") && !l.starts_with("version="))
            .collect();
        assert_eq!(got, want);
    } else {
        println!(
            "SKIP (differential part): {REFERENCE} has no guestfs plugin \
             (nbdkit-plugin-guestfs needs libguestfs0)"
        );
    }
    let o = run(nbdkit_cmd().args(["guestfs", "--help"]), CMD_TIMEOUT).assert_success();
    for want in [
        "plugin: guestfs (nbdkit guestfs plugin)",
        "connect=<URI>       (optional) libvirt connection URI",
        "mount=inspect|MOUNT            mount filesystems",
        "trace=on                       enable libguestfs call tracing",
        "format=<FORMAT>                specify the format of next disk",
        "export=DEVICE|FILE  (required) export device or file",
    ] {
        assert!(
            o.stdout.lines().any(|l| l == want),
            "no `{want}`: {}",
            o.describe()
        );
    }
}

fn fails_with(args: &[&str], message: &str) {
    let o = run(nbdkit_cmd().arg("guestfs").args(args), CMD_TIMEOUT);
    assert_eq!(o.code(), Some(1), "{}", o.describe());
    assert_eq!(
        o.stderr.lines().last().unwrap_or_default(),
        format!("nbdkit: error: {message}"),
        "{}",
        o.describe()
    );
}

#[test]
fn configuration_errors() {
    our_plugin();
    fails_with(&["disk=/dev/null"], "the 'export' parameter is required");
    fails_with(
        &["export=/dev/sda"],
        "at least one 'disk' or 'domain' parameter is required",
    );
    fails_with(
        &["disk=/dev/null", "export=/dev/sda", "debug=maybe"],
        "could not parse 'debug' option, expecting an integer",
    );
    fails_with(
        &["disk=/dev/null", "export=/dev/sda", "trace=x"],
        "could not parse 'trace' option, expecting an integer",
    );
    fails_with(
        &["disk=/dev/null", "export=/dev/sda", "foo=1"],
        "unknown parameter 'foo'",
    );
}

#[test]
fn missing_libguestfs_is_one_error_line_naming_the_package() {
    our_plugin();
    if system_libguestfs() {
        println!("SKIP: libguestfs.so.0 is installed here");
        return;
    }
    fails_with(
        &["disk=/dev/null", "export=/dev/sda"],
        "guestfs: cannot load libguestfs.so.0: libguestfs.so.0: cannot open shared object \
         file: No such file or directory (install Debian's libguestfs0)",
    );
}

/// The stand-in library, built once per test in its own directory, with
/// the call log and the root of its "file systems".
struct Standin {
    dir: TempDir,
}

impl Standin {
    fn new() -> Option<Standin> {
        if !have_tool("gcc") {
            return None;
        }
        let dir = TempDir::new();
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("c/guestfs-standin.c");
        let o = run(
            Command::new("gcc")
                .args([
                    "-Wall",
                    "-Werror",
                    "-Wno-unused-parameter",
                    "-shared",
                    "-fPIC",
                ])
                .arg(&src)
                .arg("-o")
                .arg(dir.join("libguestfs.so.0")),
            CMD_TIMEOUT,
        );
        assert!(o.success(), "gcc: {}", o.describe());
        fs::create_dir(dir.join("root")).unwrap();
        Some(Standin { dir })
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    /// `nbdkit -U - guestfs ARGS --run SCRIPT` with the stand-in loaded.
    fn run(&self, args: &[&str], script: &str, env: &[(&str, &str)]) -> Output {
        let mut cmd = nbdkit_cmd();
        cmd.env("LD_LIBRARY_PATH", self.dir.path())
            .env("GUESTFS_STANDIN_LOG", self.dir.join("log"))
            .env("GUESTFS_STANDIN_ROOT", self.root())
            .current_dir(self.dir.path())
            .args(["-U", "-"])
            .args(args.iter().take_while(|a| a.starts_with('-')))
            .arg("guestfs")
            .args(args.iter().skip_while(|a| a.starts_with('-')))
            .args(["--run", script]);
        for (k, v) in env {
            cmd.env(k, v);
        }
        run(&mut cmd, CMD_TIMEOUT)
    }
}

/// The lines of `log` that start with `prefix`.
fn calls<'a>(log: &'a str, prefix: &str) -> Vec<&'a str> {
    log.lines().filter(|l| l.starts_with(prefix)).collect()
}

#[test]
fn standin_device_read_write_flush_byte_for_byte() {
    our_plugin();
    skip_unless!("nbdcopy", "qemu-img", "nbdsh");
    let Some(s) = Standin::new() else { return };
    let disk = s.dir.join("disk.img");
    let other = s.dir.join("other.img");
    let want = write_random_file(&disk, 3 << 20, 1);
    write_random_file(&other, 1 << 20, 2);
    let src = s.dir.join("src");
    let new = write_random_file(&src, 3 << 20, 3);
    let out = s.dir.join("out");
    let out2 = s.dir.join("out2");
    let o = s.run(
        &[
            "-v",
            "format=raw",
            &format!("disk={}", path_str(&disk)),
            "format=",
            &format!("disk={}", path_str(&other)),
            "export=/dev/sda",
            "trace=on",
            "debug=1",
        ],
        &format!(
            "nbdcopy \"$uri\" {out} && qemu-img convert -f raw -O raw \"$uri\" {out2} && \
             nbdcopy {src} \"$uri\" && \
             PATH=/usr/bin:$PATH nbdsh -u \"$uri\" -c 'h.flush()'",
            out = path_str(&out),
            out2 = path_str(&out2),
            src = path_str(&src),
        ),
        &[],
    );
    assert!(o.success(), "{}", o.describe());
    assert_bytes_eq("nbdcopy read of /dev/sda", &fs::read(&out).unwrap(), &want);
    assert_bytes_eq(
        "qemu-img read of /dev/sda",
        &fs::read(&out2).unwrap(),
        &want,
    );
    assert_bytes_eq(
        "the disk after nbdcopy wrote it",
        &fs::read(&disk).unwrap(),
        &new,
    );
    let log = s.log();
    // Each connection adds the drives in order, `format=` applying to the
    // disk after it only.
    let pair = [
        format!("add_drive {} readonly=0 format=raw", path_str(&disk)),
        format!("add_drive {} readonly=0 format=(auto)", path_str(&other)),
    ];
    let launches = calls(&log, "launch").len();
    assert!(launches >= 4, "{log}");
    let want: Vec<String> = (0..launches).flat_map(|_| pair.clone()).collect();
    assert_eq!(calls(&log, "add_drive"), want, "{log}");
    for want in [
        "create_flags 1",
        "set_error_handler NULL",
        "set_trace 1",
        "set_verbose 1",
        "set_event_callback 0x70",
        "sync",
        "shutdown",
        "close",
    ] {
        assert!(
            log.lines().any(|l| l == want),
            "no `{want}` in the log:\n{log}"
        );
    }
    // libguestfs's event messages are nbdkit debug messages.
    assert!(
        o.stderr.contains("debug: stand-in appliance is up"),
        "{}",
        o.describe()
    );
    assert!(
        o.stderr.contains(&format!(
            "guestfs: export /dev/sda, size = {} bytes",
            3 << 20
        )),
        "{}",
        o.describe()
    );
}

#[test]
fn standin_readonly_and_mounts_and_file_export() {
    our_plugin();
    skip_unless!("nbdcopy", "nbdinfo");
    let Some(s) = Standin::new() else { return };
    let disk = s.dir.join("disk.img");
    write_random_file(&disk, 1 << 20, 4);
    let file = s.root().join("data.bin");
    let want = write_random_file(&file, 300_000, 5);
    let out = s.dir.join("out");
    let src = s.dir.join("src");
    write_random_file(&src, 300_000, 6);
    // -r: the drive is added read-only, file systems mounted "ro", and a
    // write fails.
    let o = s.run(
        &[
            "-r",
            &format!("disk={}", path_str(&disk)),
            "mount=/dev/sda1",
            "mount=/dev/sda2:/boot",
            "export=/data.bin",
        ],
        &format!(
            "nbdcopy \"$uri\" {out} && nbdinfo \"$uri\" | grep 'is_read_only: true' && \
             ! nbdcopy {src} \"$uri\"",
            out = path_str(&out),
            src = path_str(&src)
        ),
        &[],
    );
    assert!(o.success(), "{}", o.describe());
    assert_bytes_eq("file export", &fs::read(&out).unwrap(), &want);
    assert_bytes_eq(
        "the file after a refused write",
        &fs::read(&file).unwrap(),
        &want,
    );
    let log = s.log();
    assert!(
        log.contains(&format!(
            "add_drive {} readonly=1 format=(auto)",
            path_str(&disk)
        )),
        "{log}"
    );
    let first_mounts: Vec<&str> = calls(&log, "mount").into_iter().take(2).collect();
    assert_eq!(
        first_mounts,
        ["mount [ro] /dev/sda1:/", "mount [ro] /dev/sda2:/boot"]
    );

    // mount=inspect: the one OS's file systems, "/" before "/boot"
    // whatever order libguestfs lists them in; a writable file export.
    fs::remove_file(s.dir.join("log")).unwrap();
    let new = write_random_file(&src, 300_000, 7);
    let o = s.run(
        &[
            &format!("disk={}", path_str(&disk)),
            "mount=inspect",
            "export=/data.bin",
        ],
        &format!("nbdcopy {src} \"$uri\"", src = path_str(&src)),
        &[],
    );
    assert!(o.success(), "{}", o.describe());
    assert_bytes_eq("file after write", &fs::read(&file).unwrap(), &new);
    let log = s.log();
    let mounts: Vec<&str> = calls(&log, "mount").into_iter().take(2).collect();
    assert_eq!(
        mounts,
        ["mount [] /dev/sda1:/", "mount [] /dev/sda2:/boot"],
        "{log}"
    );
}

/// `nbdinfo` against a server whose open fails: the error line is
/// nbdkit's with libguestfs's message.
fn open_fails(s: &Standin, args: &[&str], env: &[(&str, &str)], want: &str) {
    let o = s.run(args, "nbdinfo \"$uri\"", env);
    assert!(!o.success(), "{}", o.describe());
    assert!(
        o.stderr
            .lines()
            .any(|l| l.contains("error: ") && l.ends_with(want)),
        "no error ending `{want}`: {}",
        o.describe()
    );
}

#[test]
fn standin_errors_carry_libguestfs_messages() {
    our_plugin();
    skip_unless!("nbdinfo");
    let Some(s) = Standin::new() else { return };
    let disk = s.dir.join("disk.img");
    write_random_file(&disk, 1 << 20, 8);
    let d = format!("disk={}", path_str(&disk));
    open_fails(
        &s,
        &[&d, "export=/dev/sda"],
        &[("GUESTFS_STANDIN_LAUNCH_FAIL", "1")],
        "guestfs_launch: stand-in: cannot boot the appliance",
    );
    open_fails(
        &s,
        &["disk=/nonexistent.img", "export=/dev/sda"],
        &[],
        "disk /nonexistent.img: /nonexistent.img: No such file or directory",
    );
    open_fails(
        &s,
        &[&d, "export=/dev/sdb"],
        &[],
        "/dev/sdb: guestfs_blockdev_getsize64: /dev/sdb: No such file or directory",
    );
    open_fails(
        &s,
        &[&d, "mount=/dev/sdz9:/srv", "export=/dev/sda"],
        &[],
        "mount [] /dev/sdz9:/srv: mount_options: /dev/sdz9: No such device",
    );
    open_fails(
        &s,
        &[&d, "export=/missing"],
        &[],
        "/missing: guestfs_filesize: /missing: No such file or directory",
    );
    fs::remove_file(s.dir.join("log")).unwrap();
    open_fails(
        &s,
        &["connect=test:///default", "domain=test", "export=/dev/sda"],
        &[],
        "domain test: stand-in: no libvirt domains here",
    );
    assert!(
        s.log()
            .contains("add_domain test uri=test:///default readonly=0 allowuuid=1"),
        "{}",
        s.log()
    );
}

/// The real thing, where libguestfs and its appliance work: a partitioned
/// image made by virt-make-fs, `export=/dev/sda1` read back and compared
/// with the partition's bytes in the image.
#[test]
fn real_appliance_exports_a_partition() {
    our_plugin();
    skip_unless!("nbdcopy", "sfdisk");
    let (Some(test_tool), Some(make_fs)) =
        (find_tool("libguestfs-test-tool"), find_tool("virt-make-fs"))
    else {
        println!(
            "SKIP: libguestfs-tools is not installed (libguestfs0 cannot be installed beside \
             this machine's qemu-utils): the appliance cannot boot here"
        );
        return;
    };
    let t = run(
        Command::new(test_tool).args(["-t", "300"]),
        Duration::from_secs(320),
    );
    if !t.success() {
        println!("SKIP: libguestfs-test-tool fails here: the appliance does not boot");
        return;
    }
    let d = TempDir::new();
    fs::create_dir(d.join("content")).unwrap();
    write_random_file(&d.join("content/file"), 100_000, 9);
    let img = d.join("fs.img");
    let o = run(
        Command::new(make_fs)
            .args(["--partition", "--type=ext2", "--size=+4M", "--format=raw"])
            .arg(d.join("content"))
            .arg(&img),
        Duration::from_secs(600),
    );
    assert!(o.success(), "{}", o.describe());
    let o = run(
        Command::new("sfdisk").args(["--json"]).arg(&img),
        CMD_TIMEOUT,
    )
    .assert_success();
    let start = json_number(&o.stdout, "\"start\":").expect("partition start") * 512;
    let size = json_number(&o.stdout, "\"size\":").expect("partition size") * 512;
    let image = fs::read(&img).unwrap();
    let want = &image[start as usize..(start + size) as usize];
    let out = d.join("out");
    let o = run(
        nbdkit_cmd()
            .args(["-U", "-", "-r", "guestfs", "format=raw"])
            .arg(format!("disk={}", path_str(&img)))
            .args(["export=/dev/sda1", "--run"])
            .arg(format!("nbdcopy \"$uri\" {}", path_str(&out))),
        Duration::from_secs(600),
    );
    assert!(o.success(), "{}", o.describe());
    assert_bytes_eq("/dev/sda1", &fs::read(&out).unwrap(), want);
}

/// The first number after `key` in `json`.
fn json_number(json: &str, key: &str) -> Option<u64> {
    let rest = &json[json.find(key)? + key.len()..];
    let rest = rest.trim_start();
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}
