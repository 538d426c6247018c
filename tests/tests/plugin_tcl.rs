//! The tcl plugin (plugins/tcl, `libnbdkit_tcl_plugin.so` beside the
//! binary): scripts of nbdkit-tcl-plugin(3) served by the binary under
//! test and driven by real clients.
//!
//! Every test first checks that `nbdkit tcl` loads the plugin built beside
//! the binary under test (not Debian's C plugin, which this server could
//! load too); build it with `cargo build -p nbdkit-tcl-plugin` (`--release`
//! for target/release/nbdkit).
#![allow(clippy::std_instead_of_core)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use nbdkit_tests::*;

const REFERENCE: &str = "/usr/bin/nbdkit";
const NBD_EIO: u32 = 5;
const NBD_ENOSPC: u32 = 28;

/// Check once that `nbdkit tcl` is this project's plugin, built beside the
/// binary under test. Panics with the way to build it otherwise.
fn tcl_plugin() {
    static CHECKED: OnceLock<Result<(), String>> = OnceLock::new();
    let r = CHECKED.get_or_init(|| {
        let o = run(nbdkit_cmd().args(["tcl", "--dump-plugin"]), CMD_TIMEOUT);
        if !o.success() {
            return Err(format!("nbdkit tcl --dump-plugin failed: {}", o.describe()));
        }
        if is_reference() {
            return Ok(());
        }
        let bin = fs::canonicalize(nbdkit_bin()).unwrap();
        let path = o
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix("path="))
            .unwrap_or_default()
            .to_string();
        if Path::new(&path) == bin.with_file_name("libnbdkit_tcl_plugin.so") {
            Ok(())
        } else {
            Err(format!(
                "`nbdkit tcl` loaded {path:?}, not the plugin built beside {}: build it \
                 with `cargo build -p nbdkit-tcl-plugin` (add --release for a release \
                 nbdkit)",
                bin.display()
            ))
        }
    });
    if let Err(e) = r {
        panic!("{e}");
    }
}

/// Write the Tcl script `text` as `dir/name`.
fn script(dir: &TempDir, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    fs::write(&p, text).unwrap();
    p
}

/// The `nbdkit: error:` lines (with or without a connection context).
fn error_lines(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter(|l| l.starts_with("nbdkit: ") && l.contains("error: "))
        .map(str::to_string)
        .collect()
}

/// A RAM disk along the lines of the manual's example (plugins/tcl/example.tcl).
const RAMDISK: &str = r#"
set size 1048576
set disk [binary format "@$size"]

proc config {key value} {
    global size disk
    if {$key == "size"} {
        set size [expr {int($value)}]
        set disk [binary format "@$size"]
    } else {
        error "unknown parameter $key=$value"
    }
}

proc plugin_open {readonly} {
    return 1
}

proc get_size {h} {
    global size
    return $size
}

proc pread {h count offset} {
    global disk
    set last [expr {$offset+$count-1}]
    return [string range $disk $offset $last]
}

proc pwrite {h buf offset} {
    global disk
    set count [string length $buf]
    set last [expr {$offset+$count-1}]
    set disk [string replace $disk $offset $last $buf]
}

proc zero {h count offset may_trim} {
    global disk
    set last [expr {$offset+$count-1}]
    set disk [string replace $disk $offset $last [binary format "@$count"]]
}

proc plugin_flush {h} {
}
"#;

#[test]
fn ramdisk_round_trips_through_qemu_img_and_nbdcopy() {
    skip_unless!("qemu-img", "nbdcopy");
    tcl_plugin();
    let dir = TempDir::new();
    let s = script(&dir, "ramdisk.tcl", RAMDISK);
    let srv = Server::start(["tcl", path_str(&s), "size=8388608"]);
    round_trip_qemu_img_and_nbdcopy(&dir, &srv.uri(), 8 << 20, 31);
    assert!(
        error_lines(&srv.stderr()).is_empty(),
        "errors: {}",
        srv.stderr()
    );
}

/// A script that defines every callback (the manual's, and the rest of
/// the plugin API this plugin offers) and logs them to `log=`.
const EVERY_CALLBACK: &str = r#"
set size 1048576
set log ""
set opened 0
array set disks {}

proc note {what} {
    global log
    set f [open $log a]
    puts $f $what
    close $f
}

proc dump_plugin {} { puts "test_dump_field=yes" }

proc config {key value} {
    global size log
    switch -- $key {
        size { set size $value }
        log { set log $value }
        default { error "unknown key $key" }
    }
}

proc config_complete {} { note config_complete }
proc get_ready {} { note get_ready }
proc after_fork {} { note after_fork }
proc cleanup {} { note cleanup }
proc preconnect {readonly} { note preconnect }

proc list_exports {readonly is_tls} { return [list [list a "export A"] b c] }
proc default_export {readonly is_tls} { return a }

proc plugin_open {readonly} {
    global opened disks size
    incr opened
    set h "conn$opened"
    set disks($h) [binary format "@$size"]
    note "open readonly=$readonly"
    return $h
}

proc plugin_close {h} { note "close $h" }
proc export_description {h} { return "the disk of $h" }
proc get_size {h} { global disks; return [string length $disks($h)] }
proc is_rotational {h} { return true }
proc can_multi_conn {h} { return 1 }
proc can_write {h} { return yes }
proc can_flush {h} { return 1 }
proc can_trim {h} { return 1 }
proc can_cache {h} { return 1 }
proc can_extents {h} { return 1 }

proc pread {h count offset} {
    global disks
    return [string range $disks($h) $offset [expr {$offset+$count-1}]]
}

proc pwrite {h buf offset} {
    global disks
    note "pwrite [string length $buf]"
    set disks($h) [string replace $disks($h) $offset [expr {$offset+[string length $buf]-1}] $buf]
}

proc plugin_flush {h} { note flush }

proc trim {h count offset} {
    global disks
    note trim
    set disks($h) [string replace $disks($h) $offset [expr {$offset+$count-1}] [binary format "@$count"]]
}

proc zero {h count offset may_trim} {
    global disks
    note "zero may_trim=$may_trim"
    set disks($h) [string replace $disks($h) $offset [expr {$offset+$count-1}] [binary format "@$count"]]
}

proc cache {h count offset} { note "cache $offset $count" }

proc extents {h count offset flags} {
    # The first half is data, the second half a hole that reads as zero.
    global disks
    set half [expr {[string length $disks($h)] / 2}]
    set end [expr {$offset + $count}]
    set out {}
    if {$offset < $half} {
        lappend out [list $offset [expr {min($end, $half) - $offset}] 0]
    }
    if {$end > $half} {
        set s [expr {max($offset, $half)}]
        lappend out [list $s [expr {$end - $s}] 3]
    }
    return $out
}
"#;

#[test]
fn every_callback_through_nbdinfo_and_libnbd() {
    skip_unless!("nbdinfo", "python3-nbd");
    tcl_plugin();
    let dir = TempDir::new();
    let s = script(&dir, "every.tcl", EVERY_CALLBACK);
    let log = dir.join("log");
    let log_arg = format!("log={}", path_str(&log));
    let mut srv = Server::start(["tcl", path_str(&s), "size=2097152", &log_arg]);

    let o = run_tool("nbdinfo", ["--list", "--json", &srv.uri()]);
    assert!(o.success(), "nbdinfo --list: {}", o.describe());
    let j = Json::parse(&o.stdout).unwrap();
    let exports = j.get("exports").and_then(Json::as_array).unwrap();
    let names: Vec<&str> = exports
        .iter()
        .map(|e| e.get("export-name").and_then(Json::as_str).unwrap())
        .collect();
    assert_eq!(names, ["a", "b", "c"], "{}", o.stdout);
    let field = |i: usize, k: &str| exports[i].get(k);
    assert_eq!(
        field(0, "description").and_then(Json::as_str),
        Some("export A")
    );
    assert_eq!(
        field(0, "export-size").and_then(Json::as_u64),
        Some(2 << 20)
    );
    for k in [
        "is_rotational",
        "can_multi_conn",
        "can_cache",
        "can_flush",
        "can_trim",
        "can_zero",
    ] {
        assert_eq!(
            field(0, k).and_then(Json::as_bool),
            Some(true),
            "{k}: {}",
            o.stdout
        );
    }
    assert_eq!(
        field(0, "is_read_only").and_then(Json::as_bool),
        Some(false)
    );

    let o = run_tool("nbdinfo", ["--map", &srv.uri()]);
    assert!(o.success(), "nbdinfo --map: {}", o.describe());
    let map: Vec<Vec<String>> = o
        .stdout
        .lines()
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect();
    assert_eq!(
        map,
        [
            vec!["0", "1048576", "0", "data"],
            vec!["1048576", "1048576", "3", "hole,zero"]
        ],
        "{}",
        o.stdout
    );

    let code = r#"
import sys
import nbd
h = nbd.NBD()
h.set_full_info(True)
h.add_meta_context("base:allocation")
h.connect_uri(sys.argv[1])
assert h.get_export_description().startswith("the disk of conn")
assert h.get_size() == 2 << 20
data = bytes(range(256)) * 32
h.pwrite(data, 4096)
h.pwrite(b"B" * 512, 0)
h.flush()
assert h.pread(512, 0) == b"B" * 512
assert h.pread(8192, 4096) == data
h.zero(4096, 4096, nbd.CMD_FLAG_NO_HOLE)
h.zero(4096, 8192)
assert h.pread(8192, 4096) == bytes(8192)
h.trim(512, 0)
assert h.pread(512, 0) == bytes(512)
h.cache(65536, 0)
seen = []
def cb(meta, offset, entries, err):
    seen.extend(entries)
    return 0
h.block_status(2 << 20, 0, cb)
assert seen[:4] == [1 << 20, 0, 1 << 20, 3], seen
h.shutdown()
print("ok")
"#;
    let o = run_python_code(code, [&srv.uri()]);
    assert!(o.success(), "python-libnbd client failed: {}", o.describe());
    assert_eq!(o.stdout.trim(), "ok");
    srv.stop();
    let log = fs::read_to_string(&log).unwrap();
    for want in [
        "config_complete",
        "get_ready",
        "after_fork",
        "preconnect",
        "open readonly=0",
        "pwrite 8192",
        "pwrite 512",
        "flush",
        "zero may_trim=0",
        "zero may_trim=1",
        "trim",
        "cache 0 65536",
        "cleanup",
    ] {
        assert!(
            log.lines().any(|l| l == want),
            "no {want:?} in the log:\n{log}"
        );
    }
    assert!(log.lines().any(|l| l.starts_with("close conn")), "{log}");
    let pos = |w: &str| log.lines().position(|l| l == w).unwrap();
    assert!(pos("config_complete") < pos("get_ready"));
    assert!(pos("get_ready") < pos("after_fork"));
    assert_eq!(log.lines().last(), Some("cleanup"), "{log}");

    let o = run(
        nbdkit_cmd().args(["tcl", path_str(&s), "--dump-plugin"]),
        CMD_TIMEOUT,
    );
    assert!(o.success(), "{}", o.describe());
    assert!(
        o.stdout.lines().any(|l| l == "tcl_version=8.6"),
        "{}",
        o.stdout
    );
    assert!(
        o.stdout.lines().any(|l| l == "test_dump_field=yes"),
        "{}",
        o.stdout
    );
}

#[test]
fn shebang_script_runs_directly() {
    skip_unless!("nbdinfo");
    tcl_plugin();
    let dir = TempDir::new();
    let p = dir.join("disk.tcl");
    write_executable(&p, &format!("#!{} tcl\n{RAMDISK}", path_str(&nbdkit_bin())));
    let o = run(
        Command::new(&p).env("PATH", "/usr/bin:/bin").args([
            "size=3145728",
            "-U",
            "-",
            "--run",
            "nbdinfo --size \"$uri\"",
        ]),
        CMD_TIMEOUT,
    );
    assert!(o.success(), "{}", o.describe());
    assert_eq!(o.stdout.trim(), "3145728");
}

/// Start `nbdkit tcl ARGS` expecting it to fail at start-up; returns its
/// one error line.
fn start_fails(args: &[&str]) -> String {
    let o = run(
        nbdkit_cmd()
            .args(["-U", "-", "tcl"])
            .args(args)
            .args(["--run", "exit 0"]),
        CMD_TIMEOUT,
    );
    assert_eq!(o.code(), Some(1), "{}", o.describe());
    let errors = error_lines(&o.stderr);
    assert_eq!(errors.len(), 1, "one error line: {}", o.describe());
    assert_eq!(
        o.stderr.lines().count(),
        1,
        "nothing else: {}",
        o.describe()
    );
    errors[0].clone()
}

#[test]
fn script_load_errors_are_one_line_with_the_place() {
    tcl_plugin();
    let dir = TempDir::new();
    const REST: &str = "proc get_size {h} { return 1 }\nproc pread {h c o} { return x }\n";
    type Case<'a> = (&'a str, Option<String>, &'a [&'a str], &'a [&'a str]);
    let cases: [Case<'_>; 6] = [
        (
            "syntax.tcl",
            Some(format!(
                "proc plugin_open {{r}} {{ return 1 }}\n{REST}set x [expr {{1 +}}]\n"
            )),
            &[],
            &["line 4: missing operand"],
        ),
        (
            "errors.tcl",
            Some(format!(
                "proc plugin_open {{r}} {{ return 1 }}\n{REST}\nerror broken\n"
            )),
            &[],
            &["line 5: broken"],
        ),
        (
            "nosize.tcl",
            Some("proc plugin_open {r} { return 1 }\nproc pread {h c o} { return x }\n".into()),
            &[],
            &["'plugin_open', 'get_size' or 'pread' is not defined by this Tcl script"],
        ),
        (
            "noopen.tcl",
            Some(REST.into()),
            &[],
            &["'plugin_open', 'get_size' or 'pread' is not defined by this Tcl script"],
        ),
        (
            "missing.tcl",
            None,
            &[],
            &["cannot open file: No such file or directory"],
        ),
        (
            "cfg.tcl",
            Some(format!("proc plugin_open {{r}} {{ return 1 }}\n{REST}")),
            &["foo=bar"],
            &["config: this plugin does not need command line configuration"],
        ),
    ];
    for (name, text, params, want) in cases {
        let p = match text {
            Some(t) => script(&dir, name, &t),
            None => dir.join(name),
        };
        let mut args = vec![path_str(&p)];
        args.extend_from_slice(params);
        let e = start_fails(&args);
        assert!(
            e.starts_with(&format!("nbdkit: error: {}: ", path_str(&p))),
            "{name}: {e}"
        );
        for w in want {
            assert!(e.contains(w), "{name}: no {w:?} in {e}");
        }
    }
    let p = script(
        &dir,
        "cfgerr.tcl",
        &format!("proc plugin_open {{r}} {{ return 1 }}\n{REST}proc config {{k v}} {{\n    error \"no key $k\"\n}}\n"),
    );
    let e = start_fails(&[path_str(&p), "foo=bar"]);
    assert!(
        e.contains("config: no key foo (procedure \"config\" line 2)"),
        "{e}"
    );
    let e = start_fails(&[]);
    assert!(e.contains("nbdkit tcl /path/to/plugin.tcl"), "{e}");
}

/// Errors in callbacks and values of the wrong type fail the request (EIO
/// unless the script chose the errno) with one error line, and the server
/// goes on serving.
#[test]
fn callback_errors_fail_the_request_and_the_server_goes_on() {
    tcl_plugin();
    let dir = TempDir::new();
    let s = script(
        &dir,
        "errors.tcl",
        r#"set opens 0
proc plugin_open {readonly} { global opens; incr opens; return $opens }
proc get_size {h} {
    if {$h == 2} { return big }
    return 1048576
}
proc pread {h count offset} {
    if {$offset == 4096} {
        nbdkit::set_error 28
        error "no room at $offset"
    }
    if {$offset == 8192} { error "plain failure" }
    if {$offset == 12288} { return ab }
    return [string repeat r $count]
}
proc pwrite {h buf offset} { error "read-only here" }
"#,
    );
    let mut srv = Server::start(["tcl", path_str(&s)]);
    let mut c = srv.connect_raw();
    c.handshake_go("").expect("handshake");
    assert_eq!(c.pread(0, 512, 1).unwrap(), Ok(vec![b'r'; 512]));
    assert_eq!(c.pread(4096, 512, 2).unwrap(), Err(NBD_ENOSPC));
    assert_eq!(c.pread(8192, 512, 3).unwrap(), Err(NBD_EIO));
    assert_eq!(c.pread(12288, 512, 4).unwrap(), Err(NBD_EIO));
    assert_eq!(c.pwrite(0, &[1; 512], 5).unwrap(), NBD_EIO);
    assert_eq!(c.pread(8192, 512, 6).unwrap(), Err(NBD_EIO));
    assert_eq!(c.pread(0, 512, 7).unwrap(), Ok(vec![b'r'; 512]));
    c.disconnect().unwrap();
    assert!(srv.is_alive());

    // A wrong return type from get_size fails that connection's open.
    let mut c = srv.connect_raw();
    assert!(c.handshake_go("").is_err());
    assert!(srv.is_alive());
    let mut c = srv.connect_raw();
    c.handshake_go("").expect("handshake after the failure");
    assert_eq!(c.pread(0, 512, 8).unwrap(), Ok(vec![b'r'; 512]));

    let stderr = srv.stderr();
    let errors = error_lines(&stderr);
    let file = path_str(&s);
    let want = [
        format!("error: {file}: pread: no room at 4096 (procedure \"pread\" line 4)"),
        format!("error: {file}: pread: plain failure (procedure \"pread\" line 6)"),
        format!("error: {file}: pread: the buffer returned is too small (2 < 512 bytes)"),
        format!("error: {file}: pwrite: read-only here (procedure \"pwrite\" line 1)"),
        format!("error: {file}: get_size: returned a value that is not an integer: big"),
    ];
    for w in &want {
        assert!(
            errors.iter().any(|l| l.contains(w.as_str())),
            "no error line with {w:?}:\n{stderr}"
        );
    }
    assert_eq!(errors.len(), want.len() + 1, "{stderr}");
}

#[test]
fn plain_server_does_not_load_libtcl() {
    tcl_plugin();
    if is_reference() {
        println!("SKIP: about this project's binary");
        return;
    }
    let maps = |srv: &Server| fs::read_to_string(format!("/proc/{}/maps", srv.pid())).unwrap();
    let mem = Server::start(["memory", "1M"]);
    assert!(!maps(&mem).contains("libtcl"), "{}", maps(&mem));
    let dir = TempDir::new();
    let s = script(&dir, "ramdisk.tcl", RAMDISK);
    let t = Server::start(["tcl", path_str(&s)]);
    assert!(
        maps(&t).contains("libtcl8.6"),
        "the tcl plugin has no libtcl?"
    );
}

/// Debian's C nbdkit runs the same script the same way.
#[test]
fn ramdisk_answers_like_the_reference() {
    skip_unless!("nbdinfo", "nbdcopy");
    tcl_plugin();
    if !Path::new(REFERENCE).exists() {
        println!("SKIP: the reference {REFERENCE} is not installed");
        return;
    }
    if !run(
        Command::new(REFERENCE).args(["tcl", "--dump-plugin"]),
        CMD_TIMEOUT,
    )
    .success()
    {
        println!("SKIP: the reference has no tcl plugin (nbdkit-plugin-tcl)");
        return;
    }
    let dir = TempDir::new();
    let s = script(&dir, "ramdisk.tcl", RAMDISK);
    let input = dir.join("in.img");
    write_random_file(&input, 2 << 20, 33);
    let probe = format!(
        "nbdinfo --json \"$uri\" | grep -v '\"uri\"'; nbdcopy {} \"$uri\" && nbdcopy \"$uri\" - | md5sum",
        path_str(&input)
    );
    let go = |bin: &Path| {
        let o = run(
            Command::new(bin).env("PATH", "/usr/bin:/bin").args([
                "-U",
                "-",
                "tcl",
                path_str(&s),
                "size=2097152",
                "--run",
                &probe,
            ]),
            CMD_TIMEOUT,
        );
        assert!(o.success(), "{}: {}", bin.display(), o.describe());
        o.stdout
    };
    assert_eq!(go(&nbdkit_bin()), go(Path::new(REFERENCE)));
    let v = |bin: &Path| {
        let o = run(
            Command::new(bin).args(["tcl", "--dump-plugin"]),
            CMD_TIMEOUT,
        );
        o.stdout
            .lines()
            .filter(|l| l.starts_with("tcl_"))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert_eq!(v(&nbdkit_bin()), v(Path::new(REFERENCE)));
}

/// A plugin whose libtcl is not installed is refused with one error line
/// that names the Debian package to install.
#[test]
fn missing_libtcl_names_the_debian_package() {
    if is_reference() {
        println!("SKIP: about this project's message");
        return;
    }
    skip_unless!("gcc");
    let dir = TempDir::new();
    let plugin = plugin_needing_missing_library(&dir, "libtcl8.99.so");
    let o = run(
        nbdkit_cmd().args(["-U", "-", path_str(&plugin), "--run", "exit 0"]),
        CMD_TIMEOUT,
    );
    assert_eq!(o.code(), Some(1), "{}", o.describe());
    let errors = error_lines(&o.stderr);
    assert_eq!(errors.len(), 1, "{}", o.stderr);
    assert!(
        errors[0].contains("libtcl8.99.so: cannot open shared object file")
            && errors[0].ends_with("(install Debian's libtcl8.99)"),
        "{}",
        errors[0]
    );
}

/// `nbdkit::debug` messages are the server's debug messages (`-v`).
#[test]
fn nbdkit_debug_is_a_debug_message() {
    skip_unless!("nbdinfo");
    tcl_plugin();
    let dir = TempDir::new();
    let text = RAMDISK.replace(
        "proc plugin_open {readonly} {\n",
        "proc plugin_open {readonly} {\n    nbdkit::debug \"open: readonly=$readonly\"\n",
    );
    assert_ne!(text, RAMDISK);
    let s = script(&dir, "ramdisk.tcl", &text);
    let mut srv = Server::start(["-v", "tcl", path_str(&s)]);
    let o = run_tool("nbdinfo", ["--size", &srv.uri()]);
    assert!(o.success(), "{}", o.describe());
    srv.stop();
    let stderr = srv.stderr();
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("nbdkit: ") && l.ends_with("debug: open: readonly=0")),
        "{stderr}"
    );
}
