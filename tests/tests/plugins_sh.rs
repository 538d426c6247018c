//! The sh and eval plugins: nbdkit's script protocol.

use core::time::Duration;
use nbdkit_tests::{
    nbdkit_cmd, path_str, run, run_tool, run_with_input, skip_unless, write_executable, Server,
    TempDir,
};
use std::fs;
use std::path::{Path, PathBuf};

const TIMEOUT: Duration = Duration::from_secs(60);

/// NBD error numbers.
const NBD_EIO: u32 = 5;
const NBD_ENOSPC: u32 = 28;

/// Write an executable script.
fn script(dir: &TempDir, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    write_executable(&p, text);
    p
}

/// A script serving a disk stored in `disk`.
fn store_script(dir: &TempDir, disk: &Path) -> PathBuf {
    let text = format!(
        r#"#!/bin/sh
f='{}'
case "$1" in
  open) echo "h-$3" ;;
  get_size) stat -L -c %s "$f" ;;
  can_write|can_flush) exit 0 ;;
  pread) [ "$2" = "h-" ] || {{ echo "EINVAL bad handle $2" >&2; exit 1; }}
         dd if="$f" skip="$4" count="$3" iflag=skip_bytes,count_bytes 2>/dev/null ;;
  pwrite) dd of="$f" seek="$4" conv=notrunc oflag=seek_bytes 2>/dev/null ;;
  flush) exit 0 ;;
  *) exit 2 ;;
esac
"#,
        path_str(disk)
    );
    script(dir, "store.sh", &text)
}

#[test]
fn sh_script_reads_and_writes_through_handle() {
    let dir = TempDir::new();
    let disk = dir.join("disk");
    fs::write(&disk, vec![b'.'; 65536]).unwrap();
    let s = store_script(&dir, &disk);
    let srv = Server::start(["sh", path_str(&s)]);
    let mut c = srv.connect_raw();
    let e = c.handshake_go("").expect("handshake");
    assert_eq!(e.size, 65536);
    assert_eq!(c.pwrite(1000, b"shell!", 1).unwrap(), 0);
    let got = c.pread(999, 8, 2).unwrap().expect("read");
    assert_eq!(got, b".shell!.");
    assert_eq!(&fs::read(&disk).unwrap()[1000..1006], b"shell!");
}

#[test]
fn sh_error_names_errno_and_message() {
    let dir = TempDir::new();
    let s = script(
        &dir,
        "err.sh",
        r#"#!/bin/sh
case "$1" in
  get_size) echo 1M ;;
  pread) case "$4" in
           0) echo "ENOSPC no room" >&2; exit 1 ;;
           512) echo "EBADF not one of ours" >&2; exit 1 ;;
           1024) printf abc ;;
           *) exit 1 ;;
         esac ;;
  *) exit 2 ;;
esac
"#,
    );
    let srv = Server::start(["sh", path_str(&s)]);
    let mut c = srv.connect_raw();
    c.handshake_go("").expect("handshake");
    assert_eq!(c.pread(0, 512, 1).unwrap(), Err(NBD_ENOSPC));
    assert_eq!(c.pread(512, 512, 2).unwrap(), Err(NBD_EIO));
    assert_eq!(c.pread(1024, 512, 3).unwrap(), Err(NBD_EIO));
    assert_eq!(c.pread(1536, 512, 4).unwrap(), Err(NBD_EIO));
    let log = srv.stderr();
    let name = path_str(&s);
    assert!(log.contains(&format!("{name}: no room")), "{log}");
    assert!(
        log.contains(&format!("{name}: EBADF not one of ours")),
        "{log}"
    );
    assert!(
        log.contains("incorrect amount of data read: expecting 512 bytes but received 3 bytes"),
        "{log}"
    );
    assert!(
        log.contains("script exited with error, but did not print an error message on stderr"),
        "{log}"
    );
}

#[test]
fn sh_inline_script_from_stdin() {
    skip_unless!("nbdinfo");
    let inline = br#"case "$1" in
  get_size) echo 1M ;;
  pread) dd if=/dev/zero count=$3 iflag=count_bytes ;;
  *) exit 2 ;;
esac
"#;
    let out = run_with_input(
        nbdkit_cmd().args(["-U", "-", "sh", "-", "--run", "nbdinfo --size \"$uri\""]),
        Some(inline),
        TIMEOUT,
    )
    .assert_success();
    assert_eq!(out.stdout.trim(), "1048576");
}

#[test]
fn eval_manual_example_reads_zeroes() {
    let srv = Server::start([
        "eval",
        "get_size=echo 1M",
        "pread=dd if=/dev/zero count=$3 iflag=count_bytes",
    ]);
    let mut c = srv.connect_raw();
    let e = c.handshake_go("").expect("handshake");
    assert_eq!(e.size, 1 << 20);
    let data = c.pread(4096, 65536, 1).unwrap().expect("read");
    assert!(data.iter().all(|&b| b == 0));
}

#[test]
fn eval_pwrite_implies_can_write() {
    let dir = TempDir::new();
    let disk = dir.join("disk");
    fs::write(&disk, vec![0u8; 8192]).unwrap();
    let d = path_str(&disk);
    let srv = Server::start([
        "eval".to_string(),
        format!("get_size=stat -L -c %s {d}"),
        format!("pread=dd if={d} skip=$4 count=$3 iflag=skip_bytes,count_bytes 2>/dev/null"),
        format!("pwrite=dd of={d} seek=$4 conv=notrunc oflag=seek_bytes 2>/dev/null"),
    ]);
    let mut c = srv.connect_raw();
    c.handshake_go("").expect("handshake");
    assert_eq!(c.pwrite(4096, b"eval", 1).unwrap(), 0);
    assert_eq!(&fs::read(&disk).unwrap()[4096..4100], b"eval");
}

#[test]
fn eval_unknown_key_without_config_fails() {
    let out = run(
        nbdkit_cmd().args([
            "-U",
            "-",
            "eval",
            "get_size=echo 1M",
            "foo=bar",
            "--run",
            "true",
        ]),
        TIMEOUT,
    );
    assert_eq!(out.code(), Some(1), "{}", out.describe());
    assert!(
        out.stderr
            .contains("callback 'foo' is unknown, and there is no 'config' callback to handle it"),
        "{}",
        out.describe()
    );
}

#[test]
fn eval_method_given_twice_fails() {
    let out = run(
        nbdkit_cmd().args([
            "eval",
            "get_size=echo 1M",
            "get_size=echo 2M",
            "--run",
            "true",
        ]),
        TIMEOUT,
    );
    assert_eq!(out.code(), Some(1));
    assert!(
        out.stderr
            .contains("method get_size defined more than once on the command line"),
        "{}",
        out.describe()
    );
}

#[test]
fn sh_magic_config_key_names_bare_parameters() {
    skip_unless!("nbdinfo");
    let dir = TempDir::new();
    let log = dir.join("log");
    let s = script(
        &dir,
        "magic.sh",
        &format!(
            r#"#!/bin/sh
case "$1" in
  magic_config_key) echo file ;;
  config) echo "$2=$3" >> '{}' ;;
  get_size) echo 512 ;;
  pread) dd if=/dev/zero count=$3 iflag=count_bytes 2>/dev/null ;;
  *) exit 2 ;;
esac
"#,
            path_str(&log)
        ),
    );
    run(
        nbdkit_cmd().args([
            "-U",
            "-",
            "sh",
            path_str(&s),
            "disk.img",
            "size=1",
            "--run",
            "nbdinfo --size \"$uri\"",
        ]),
        TIMEOUT,
    )
    .assert_success();
    assert_eq!(fs::read_to_string(&log).unwrap(), "file=disk.img\nsize=1\n");
}

#[test]
fn sh_bare_parameter_without_magic_key_fails() {
    let dir = TempDir::new();
    let s = script(&dir, "s.sh", "#!/bin/sh\nexit 2\n");
    let out = run(
        nbdkit_cmd().args(["sh", path_str(&s), "oops", "--run", "true"]),
        TIMEOUT,
    );
    assert_eq!(out.code(), Some(1));
    assert!(
        out.stderr
            .contains("expecting key=value on the command line but got: oops"),
        "{}",
        out.describe()
    );
}

#[test]
fn sh_tmpdir_exists_while_running_and_is_removed() {
    let dir = TempDir::new();
    let record = dir.join("tmpdir");
    let s = script(
        &dir,
        "t.sh",
        &format!(
            r#"#!/bin/sh
case "$1" in
  get_ready) [ -d "$tmpdir" ] && printf %s "$tmpdir" > '{}' ;;
  get_size) echo 512 ;;
  pread) dd if=/dev/zero count=$3 iflag=count_bytes 2>/dev/null ;;
  *) exit 2 ;;
esac
"#,
            path_str(&record)
        ),
    );
    run(
        nbdkit_cmd().args(["-U", "-", "sh", path_str(&s), "--run", "true"]),
        TIMEOUT,
    )
    .assert_success();
    let tmp = fs::read_to_string(&record).expect("get_ready saw $tmpdir");
    assert!(tmp.contains("nbdkit"), "{tmp}");
    assert!(!Path::new(&tmp).exists(), "{tmp} was not removed");
}

#[test]
fn sh_list_exports_and_description() {
    skip_unless!("nbdinfo");
    let dir = TempDir::new();
    let s = script(
        &dir,
        "l.sh",
        r#"#!/bin/sh
case "$1" in
  list_exports) printf 'INTERLEAVED\na\nfirst\nb\nsecond\n' ;;
  open) echo "$3" ;;
  export_description) echo "export $2" ;;
  get_size) echo 512 ;;
  pread) dd if=/dev/zero count=$3 iflag=count_bytes 2>/dev/null ;;
  *) exit 2 ;;
esac
"#,
    );
    let srv = Server::start(["sh", path_str(&s)]);
    let out = run_tool("nbdinfo", ["--list", &srv.uri()]).assert_success();
    assert!(out.stdout.contains("export=\"a\""), "{}", out.stdout);
    assert!(out.stdout.contains("export=\"b\""), "{}", out.stdout);
    let out = run_tool("nbdinfo", [srv.uri_export("b")]).assert_success();
    assert!(
        out.stdout.contains("description: export b"),
        "{}",
        out.stdout
    );
}

#[test]
fn sh_dump_plugin_adds_script_lines() {
    let dir = TempDir::new();
    let s = script(
        &dir,
        "d.sh",
        "#!/bin/sh\ncase \"$1\" in\n thread_model) echo parallel ;;\n dump_plugin) echo mine=1 ;;\n *) exit 2 ;;\nesac\n",
    );
    let out = run(
        nbdkit_cmd().args(["--dump-plugin", "sh", path_str(&s)]),
        TIMEOUT,
    )
    .assert_success();
    assert!(
        out.stdout.contains("thread_model=parallel\n"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("max_known_status=3\nmine=1\n"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("magic_config_key=script\n"));
}

#[test]
fn sh_zero_without_can_zero_writes_zeroes() {
    skip_unless!("python3-nbd");
    let dir = TempDir::new();
    let disk = dir.join("disk");
    fs::write(&disk, vec![0xffu8; 8192]).unwrap();
    let s = store_script(&dir, &disk);
    let srv = Server::start(["sh", path_str(&s)]);
    let py = dir.join("zero.py");
    fs::write(
        &py,
        "import nbd, sys\nh = nbd.NBD()\nh.connect_uri(sys.argv[1])\nh.zero(4096, 0)\nh.shutdown()\n",
    )
    .unwrap();
    let out = run(
        std::process::Command::new("/usr/bin/python3").args([path_str(&py), &srv.uri()]),
        TIMEOUT,
    );
    assert!(out.success(), "{}", out.describe());
    let d = fs::read(&disk).unwrap();
    assert!(d[..4096].iter().all(|&b| b == 0));
    assert!(d[4096..].iter().all(|&b| b == 0xff));
}
