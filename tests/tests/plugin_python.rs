//! The python plugin (plugins/python, `libnbdkit_python_plugin.so` beside
//! the binary): scripts of nbdkit-python-plugin(3) served by the binary
//! under test and driven by real clients.
//!
//! Every test first checks that `nbdkit python` loads the plugin built
//! beside the binary under test (not Debian's C plugin, which this server
//! could load too); build it with `cargo build -p nbdkit-python-plugin`
//! (`--release` for target/release/nbdkit).
#![allow(clippy::std_instead_of_core)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nbdkit_tests::*;

const REFERENCE: &str = "/usr/bin/nbdkit";
const NBD_EIO: u32 = 5;
const NBD_ENOSPC: u32 = 28;

/// `nbdkit python` is this project's plugin, built beside the binary.
fn python_plugin() {
    assert_plugin_built_beside("python");
}

/// Write the Python script `text` as `dir/name`.
fn script(dir: &TempDir, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    fs::write(&p, text).unwrap();
    p
}

/// Run a libnbd Python program with `uri` as its `sys.argv[1]`; panics
/// unless it succeeds. Returns its stdout.
fn libnbd(code: &str, uri: &str) -> String {
    let o = run_python_code(code, [uri]);
    assert!(o.success(), "python-libnbd client failed: {}", o.describe());
    o.stdout
}

/// The `nbdkit: error:` lines (with or without a connection context).
fn error_lines(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter(|l| l.starts_with("nbdkit: ") && l.contains("error: "))
        .map(str::to_string)
        .collect()
}

/// The error lines about `script` (not about a client that went away).
fn script_errors(stderr: &str, script: &Path) -> Vec<String> {
    let name = script.file_name().unwrap().to_str().unwrap();
    error_lines(stderr)
        .into_iter()
        .filter(|l| l.contains(name))
        .collect()
}

/// A RAM disk along the lines of the manual's example (examples/ramdisk.py).
const RAMDISK: &str = r#"
import nbdkit

API_VERSION = 2

disk = bytearray(1024 * 1024)

def config(key, value):
    global disk
    if key == "size":
        disk = bytearray(nbdkit.parse_size(value))
    else:
        raise RuntimeError("unknown parameter: " + key)

def thread_model():
    return nbdkit.THREAD_MODEL_PARALLEL

def open(readonly):
    nbdkit.debug("open: readonly=%d" % readonly)
    return 1

def get_size(h):
    return len(disk)

def pread(h, buf, offset, flags):
    end = offset + len(buf)
    buf[:] = disk[offset:end]

def pwrite(h, buf, offset, flags):
    end = offset + len(buf)
    disk[offset:end] = buf

def zero(h, count, offset, flags):
    disk[offset:offset + count] = bytearray(count)

def flush(h, flags):
    pass
"#;

#[test]
fn ramdisk_round_trips_through_qemu_img_and_nbdcopy() {
    skip_unless!("qemu-img", "nbdcopy");
    python_plugin();
    let dir = TempDir::new();
    let s = script(&dir, "ramdisk.py", RAMDISK);
    let input = dir.join("in.img");
    let want = write_random_file(&input, 8 << 20, 11);
    let srv = Server::start(["python", path_str(&s), "size=8M"]);

    // qemu-img writes the image and reads it back.
    let o = run_tool(
        "qemu-img",
        [
            "convert",
            "-n",
            "-f",
            "raw",
            "-O",
            "raw",
            path_str(&input),
            &srv.uri(),
        ],
    );
    assert!(o.success(), "qemu-img convert to nbd: {}", o.describe());
    let back = dir.join("back-qemu.img");
    let o = run_tool(
        "qemu-img",
        [
            "convert",
            "-f",
            "raw",
            "-O",
            "raw",
            &srv.uri(),
            path_str(&back),
        ],
    );
    assert!(o.success(), "qemu-img convert from nbd: {}", o.describe());
    assert_bytes_eq("qemu-img round trip", &fs::read(&back).unwrap(), &want);

    // nbdcopy overwrites it with other data and reads that back.
    let input2 = dir.join("in2.img");
    let want2 = write_random_file(&input2, 8 << 20, 12);
    let o = run_tool("nbdcopy", [path_str(&input2), &srv.uri()]);
    assert!(o.success(), "nbdcopy to nbd: {}", o.describe());
    let back2 = dir.join("back-nbdcopy.img");
    let o = run_tool("nbdcopy", [&srv.uri(), path_str(&back2)]);
    assert!(o.success(), "nbdcopy from nbd: {}", o.describe());
    assert_bytes_eq("nbdcopy round trip", &fs::read(&back2).unwrap(), &want2);
    assert!(
        script_errors(&srv.stderr(), &s).is_empty(),
        "errors: {}",
        srv.stderr()
    );
}

/// A script that defines every callback of nbdkit-python-plugin(3) and
/// logs the global ones to the file given as `log=`.
const EVERY_CALLBACK: &str = r#"
import nbdkit
import errno
import json
import os

API_VERSION = 2
SIZE = 1024 * 1024
LOG = None
disks = {}

def note(what):
    with __builtins__.open(LOG, "a") as f:
        f.write(what + "\n")

def dump_plugin():
    print("test_dump_field=yes")

def config(key, value):
    global SIZE, LOG
    if key == "size":
        SIZE = nbdkit.parse_size(value)
    elif key == "log":
        LOG = value
    else:
        raise ValueError("unknown key " + key)

def config_complete():
    note("config_complete")

def thread_model():
    return nbdkit.THREAD_MODEL_SERIALIZE_REQUESTS

def get_ready():
    note("get_ready")

def after_fork():
    note("after_fork")

def cleanup():
    note("cleanup")

def preconnect(readonly):
    note("preconnect")

def list_exports(readonly, is_tls):
    return [("a", "export A"), "b", ("c", None)]

def default_export(readonly, is_tls):
    return "a"

def open(readonly):
    name = nbdkit.export_name()
    if name not in ("a", "b", "c"):
        nbdkit.set_error(errno.ENOENT)
        raise LookupError("no export " + repr(name))
    d = disks.setdefault(name, bytearray(SIZE))
    note("open " + name)
    return {"name": name, "disk": d}

def close(h):
    note("close " + h["name"])

def export_description(h):
    return json.dumps({
        "name": h["name"],
        "tls": nbdkit.is_tls(),
        "pid": nbdkit.peer_pid(),
        "uid": nbdkit.peer_uid(),
        "gid": nbdkit.peer_gid(),
    })

def get_size(h):
    return len(h["disk"])

def block_size(h):
    return (1, 4096, 1024 * 1024)

def is_rotational(h):
    return h["name"] == "b"

def can_multi_conn(h):
    return True

def can_write(h):
    return h["name"] != "c"

def can_flush(h):
    return True

def can_trim(h):
    return True

def can_zero(h):
    return True

def can_fast_zero(h):
    return True

def can_fua(h):
    return nbdkit.FUA_NATIVE

def can_cache(h):
    return nbdkit.CACHE_NATIVE

def can_extents(h):
    return True

def pread(h, buf, offset, flags):
    buf[:] = h["disk"][offset:offset + len(buf)]

def pwrite(h, buf, offset, flags):
    note("pwrite fua=%d" % bool(flags & nbdkit.FLAG_FUA))
    h["disk"][offset:offset + len(buf)] = buf

def flush(h, flags):
    note("flush")

def trim(h, count, offset, flags):
    note("trim")
    h["disk"][offset:offset + count] = bytearray(count)

def zero(h, count, offset, flags):
    note("zero may_trim=%d fast=%d" % (bool(flags & nbdkit.FLAG_MAY_TRIM),
                                       bool(flags & nbdkit.FLAG_FAST_ZERO)))
    h["disk"][offset:offset + count] = bytearray(count)

def cache(h, count, offset, flags):
    note("cache %d %d" % (offset, count))

def extents(h, count, offset, flags):
    # The first half is data, the second half a hole that reads as zero.
    half = len(h["disk"]) // 2
    out = []
    end = offset + count
    if offset < half:
        out.append((offset, min(end, half) - offset, 0))
    if end > half:
        s = max(offset, half)
        out.append((s, end - s, nbdkit.EXTENT_HOLE | nbdkit.EXTENT_ZERO))
    return out
"#;

#[test]
fn every_callback_through_nbdinfo_and_libnbd() {
    skip_unless!("nbdinfo", "python3-nbd");
    python_plugin();
    let dir = TempDir::new();
    let s = script(&dir, "every.py", EVERY_CALLBACK);
    let log = dir.join("log");
    let log_arg = format!("log={}", path_str(&log));
    let mut srv = Server::start(["python", path_str(&s), "size=2M", &log_arg]);

    // nbdinfo --list: list_exports, export_description, block_size,
    // is_rotational, can_* of each export.
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
    assert_eq!(
        field(0, "block_size_preferred").and_then(Json::as_u64),
        Some(4096)
    );
    assert_eq!(
        field(0, "block_size_maximum").and_then(Json::as_u64),
        Some(1 << 20)
    );
    assert_eq!(
        field(1, "is_rotational").and_then(Json::as_bool),
        Some(true)
    );
    assert_eq!(
        field(0, "is_rotational").and_then(Json::as_bool),
        Some(false)
    );
    assert_eq!(field(2, "is_read_only").and_then(Json::as_bool), Some(true));
    for k in [
        "can_multi_conn",
        "can_cache",
        "can_fua",
        "can_trim",
        "can_zero",
        "can_fast_zero",
    ] {
        assert_eq!(field(0, k).and_then(Json::as_bool), Some(true), "{k}");
    }

    // nbdinfo --map: extents (default export "a" from default_export).
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

    // python-libnbd: the data callbacks, flags, and the nbdkit module's
    // connection functions (through export_description).
    let code = r#"
import json, os, sys
import nbd
h = nbd.NBD()
h.set_full_info(True)
h.add_meta_context("base:allocation")
h.connect_uri(sys.argv[1])
d = json.loads(h.get_export_description())
assert d["name"] == "b", d
assert d["tls"] is False, d
assert d["pid"] == os.getpid(), (d, os.getpid())
assert d["uid"] == os.getuid() and d["gid"] == os.getgid(), d
assert h.get_size() == 2 << 20
h.pwrite(b"A" * 8192, 4096, nbd.CMD_FLAG_FUA)
h.pwrite(b"B" * 512, 0)
h.flush()
assert h.pread(512, 0) == b"B" * 512
assert h.pread(8192, 4096) == b"A" * 8192
h.zero(4096, 4096, nbd.CMD_FLAG_NO_HOLE)
h.zero(4096, 8192, nbd.CMD_FLAG_FAST_ZERO)
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
    let uri = format!("nbd+unix:///b?socket={}", path_str(srv.socket()));
    assert_eq!(libnbd(code, &uri).trim(), "ok");

    // An export that open refuses (nbdkit.set_error(ENOENT)).
    let o = run_tool(
        "nbdinfo",
        [&format!(
            "nbd+unix:///nosuch?socket={}",
            path_str(srv.socket())
        )],
    );
    assert!(
        !o.success(),
        "nbdinfo of a refused export: {}",
        o.describe()
    );
    assert!(
        srv.stderr()
            .contains("open: error: LookupError: no export 'nosuch'"),
        "{}",
        srv.stderr()
    );

    srv.stop();
    let log = fs::read_to_string(&log).unwrap();
    for want in [
        "config_complete",
        "get_ready",
        "after_fork",
        "preconnect",
        "open a",
        "open b",
        "close b",
        "pwrite fua=1",
        "pwrite fua=0",
        "flush",
        "zero may_trim=0 fast=0",
        "zero may_trim=1 fast=1",
        "trim",
        "cache 0 65536",
        "cleanup",
    ] {
        assert!(
            log.lines().any(|l| l == want),
            "no {want:?} in the log:\n{log}"
        );
    }
    // The global callbacks run once each, in nbdkit's order.
    let pos = |w: &str| log.lines().position(|l| l == w).unwrap();
    assert!(pos("config_complete") < pos("get_ready"));
    assert!(pos("get_ready") < pos("after_fork"));
    assert!(pos("after_fork") < pos("preconnect"));
    assert_eq!(log.lines().last(), Some("cleanup"), "{log}");
}

#[test]
fn dump_plugin_prints_python_fields_and_the_script_callback() {
    python_plugin();
    let dir = TempDir::new();
    let s = script(&dir, "every.py", EVERY_CALLBACK);
    let o = run(
        nbdkit_cmd().args(["python", path_str(&s), "--dump-plugin"]),
        CMD_TIMEOUT,
    );
    assert!(o.success(), "{}", o.describe());
    let lines: Vec<&str> = o.stdout.lines().collect();
    assert!(lines.contains(&"name=python"), "{}", o.stdout);
    assert!(
        lines.contains(&"python_pep_384_abi_version=3"),
        "{}",
        o.stdout
    );
    assert!(
        lines.contains(&"nbdkit_python_maximum_api_version=2"),
        "{}",
        o.stdout
    );
    assert!(
        lines.contains(&"thread_model=serialize_requests"),
        "{}",
        o.stdout
    );
    // The script's dump_plugin prints after the plugin's own lines.
    assert_eq!(lines.last(), Some(&"test_dump_field=yes"), "{}", o.stdout);
    let version = lines
        .iter()
        .find_map(|l| l.strip_prefix("python_version="))
        .expect("python_version");
    let real = run(
        Command::new(PYTHON).args(["-c", "import platform; print(platform.python_version())"]),
        CMD_TIMEOUT,
    );
    assert_eq!(
        version,
        real.stdout.trim(),
        "the embedded Python is {PYTHON}'s"
    );
}

#[test]
fn dump_plugin_lines_match_the_reference() {
    python_plugin();
    if !Path::new(REFERENCE).exists() {
        println!("SKIP: the reference {REFERENCE} is not installed");
        return;
    }
    let probe = run(
        Command::new(REFERENCE).args(["python", "--dump-plugin"]),
        CMD_TIMEOUT,
    );
    if !probe.success() {
        println!("SKIP: the reference has no python plugin (nbdkit-plugin-python)");
        return;
    }
    let dir = TempDir::new();
    let s = script(&dir, "ramdisk.py", RAMDISK);
    // Values that name the build rather than behaviour.
    let differs = ["path", "version", "python_version"];
    let keys = |o: &Output| -> Vec<String> {
        o.stdout
            .lines()
            .map(|l| match l.split_once('=') {
                Some((k, _)) if differs.contains(&k) => format!("{k}=..."),
                _ => l.to_string(),
            })
            .collect()
    };
    for args in [
        vec!["python", "--dump-plugin"],
        vec!["python", path_str(&s), "--dump-plugin"],
    ] {
        let ours = run(nbdkit_cmd().args(&args), CMD_TIMEOUT);
        let theirs = run(Command::new(REFERENCE).args(&args), CMD_TIMEOUT);
        assert!(ours.success(), "{}", ours.describe());
        assert!(theirs.success(), "{}", theirs.describe());
        assert_eq!(keys(&ours), keys(&theirs), "nbdkit {}", args.join(" "));
    }
}

#[test]
fn api_version_1_script() {
    skip_unless!("python3-nbd");
    python_plugin();
    let dir = TempDir::new();
    let log = dir.join("log");
    let s = script(
        &dir,
        "v1.py",
        &format!(
            r#"
disk = bytearray(65536)
LOG = {log:?}

def note(s):
    with __builtins__.open(LOG, "a") as f:
        f.write(s + "\n")

def open(readonly):
    return "handle"

def get_size(h):
    assert h == "handle"
    return len(disk)

def pread(h, count, offset):
    return disk[offset:offset + count + 10]

def pwrite(h, buf, offset):
    disk[offset:offset + len(buf)] = buf

def flush(h):
    note("flush")

def trim(h, count, offset):
    note("trim %d" % count)
    disk[offset:offset + count] = bytearray(count)

def zero(h, count, offset, may_trim):
    note("zero %d may_trim=%s" % (count, may_trim))
    disk[offset:offset + count] = bytearray(count)
"#,
            log = path_str(&log)
        ),
    );
    let srv = Server::start(["python", path_str(&s)]);
    let code = r#"
import sys, nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
# FUA is emulated with flush(h).
assert h.can_fua()
h.pwrite(b"xy" * 1024, 1000, nbd.CMD_FLAG_FUA)
assert h.pread(2048, 1000) == b"xy" * 1024
h.flush()
h.zero(1024, 1000)
h.trim(1024, 2024)
assert h.pread(2048, 1000) == bytes(2048)
print("ok")
"#;
    assert_eq!(libnbd(code, &srv.uri()).trim(), "ok");
    let log = fs::read_to_string(&log).unwrap();
    assert!(log.contains("flush\n"), "{log}");
    assert!(log.contains("zero 1024 may_trim=True\n"), "{log}");
    assert!(log.contains("trim 1024\n"), "{log}");
}

#[test]
fn shebang_script_runs_directly() {
    skip_unless!("nbdinfo");
    python_plugin();
    let dir = TempDir::new();
    let p = dir.join("disk.py");
    write_executable(
        &p,
        &format!("#!{} python\n{RAMDISK}", path_str(&nbdkit_bin())),
    );
    let o = run(
        Command::new(&p).env("PATH", "/usr/bin:/bin").args([
            "size=3M",
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

/// Start `nbdkit python SCRIPT` expecting it to fail at start-up; returns
/// its one error line.
fn start_fails(args: &[&str]) -> String {
    let o = run(
        nbdkit_cmd()
            .args(["-U", "-", "python"])
            .args(args)
            .args(["--run", "exit 0"]),
        CMD_TIMEOUT,
    );
    assert_eq!(o.code(), Some(1), "{}", o.describe());
    let errors = error_lines(&o.stderr);
    assert_eq!(errors.len(), 1, "one error line: {}", o.describe());
    assert!(
        !o.stderr.contains("Traceback") && !o.stderr.contains("panick"),
        "{}",
        o.describe()
    );
    errors[0].clone()
}

#[test]
fn script_load_errors_are_one_line_with_the_place() {
    python_plugin();
    let dir = TempDir::new();
    const REST: &str = "def get_size(h):\n    return 1\ndef pread(h, b, o, f):\n    pass\n";
    // (file, its text or None for a missing file, extra parameters, what
    // the one error line says)
    type Case<'a> = (&'a str, Option<String>, &'a [&'a str], &'a [&'a str]);
    let cases: [Case<'_>; 7] = [
        (
            "syntax.py",
            Some("def open(readonly):\n    return 1\nx = = 1\n".into()),
            &[],
            &["SyntaxError: invalid syntax", "line 3"],
        ),
        (
            "raises.py",
            Some(
                "import nbdkit\n\ndef open(r):\n    return 1\n\nraise ValueError('broken')\n"
                    .into(),
            ),
            &[],
            &["error running this script: ValueError: broken (line 6, in <module>)"],
        ),
        (
            "nosize.py",
            Some("def open(r):\n    return 1\ndef pread(h, b, o, f):\n    pass\n".into()),
            &[],
            &["'open', 'get_size' or 'pread' is not defined by this Python script"],
        ),
        (
            "nopread.py",
            Some("def open(r):\n    return 1\ndef get_size(h):\n    return 1\n".into()),
            &[],
            &["'open', 'get_size' or 'pread' is not defined by this Python script"],
        ),
        (
            "missing.py",
            None,
            &[],
            &["cannot open file: No such file or directory"],
        ),
        (
            "badapi.py",
            Some(format!(
                "API_VERSION = 7\ndef open(r):\n    return 1\n{REST}"
            )),
            &[],
            &["API_VERSION requested unknown version: 7"],
        ),
        (
            "cfg.py",
            Some(format!(
                "def config(k, v):\n    raise KeyError(k)\ndef open(r):\n    return 1\n{REST}"
            )),
            &["foo=bar"],
            &["config: error: KeyError: 'foo' (line 2, in config)"],
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
    let e = start_fails(&[]);
    assert!(e.contains("nbdkit python /path/to/plugin.py"), "{e}");
}

/// Errors in callbacks, and values of the wrong type, fail the request
/// (EIO unless the script chose the errno) with one error line naming the
/// script's line, and the server goes on serving.
#[test]
fn callback_errors_fail_the_request_and_the_server_goes_on() {
    python_plugin();
    let dir = TempDir::new();
    let s = script(
        &dir,
        "errors.py",
        r#"
import nbdkit, errno, sys
API_VERSION = 2

def open(readonly):
    return nbdkit.export_name()

def get_size(h):
    if h == "badsize":
        return "big"
    return 1 << 20

def check(offset):
    if offset == 4096:
        nbdkit.set_error(errno.ENOSPC)
        raise ValueError("no room at %d" % offset)
    if offset == 8192:
        raise RuntimeError("plain failure")
    if offset == 12288:
        sys.exit(3)

def pread(h, buf, offset, flags):
    check(offset)
    buf[:] = b"r" * len(buf)

def pwrite(h, buf, offset, flags):
    raise OSError(errno.EROFS, "read-only here")

def can_fua(h):
    return "native" if h == "badfua" else nbdkit.FUA_NONE
"#,
    );
    let mut srv = Server::start(["python", path_str(&s)]);
    let mut c = srv.connect_raw();
    c.handshake_go("").expect("handshake");
    assert_eq!(c.pread(0, 512, 1).unwrap(), Ok(vec![b'r'; 512]));
    assert_eq!(c.pread(4096, 512, 2).unwrap(), Err(NBD_ENOSPC));
    assert_eq!(c.pread(8192, 512, 3).unwrap(), Err(NBD_EIO));
    // SystemExit fails the request too; it does not end the server.
    assert_eq!(c.pread(12288, 512, 4).unwrap(), Err(NBD_EIO));
    assert_eq!(c.pwrite(0, &[1; 512], 5).unwrap(), NBD_EIO);
    assert_eq!(c.pread(0, 512, 6).unwrap(), Ok(vec![b'r'; 512]));
    c.disconnect().unwrap();
    assert!(srv.is_alive());

    // A wrong return type from get_size fails that export's open.
    for bad in ["badsize", "badfua"] {
        let mut c = srv.connect_raw();
        assert!(c.handshake_go(bad).is_err(), "{bad}");
        assert!(srv.is_alive());
    }
    let mut c = srv.connect_raw();
    c.handshake_go("").expect("handshake after the failures");
    assert_eq!(c.pread(0, 512, 7).unwrap(), Ok(vec![b'r'; 512]));

    let stderr = srv.stderr();
    let errors = error_lines(&stderr);
    let want = [
        "pread: error: ValueError: no room at 4096 (line 16, in check)",
        "pread: error: RuntimeError: plain failure (line 18, in check)",
        "pread: error: SystemExit: 3 (line 20, in check)",
        "pwrite: error: OSError: [Errno 30] read-only here (line 27, in pwrite)",
        "get_size: error: get_size returned a value of the wrong type: TypeError: \
         'str' object cannot be interpreted as an integer (defined at line 8)",
        "can_fua: error: can_fua returned a value of the wrong type",
    ];
    for w in want {
        let n = errors.iter().filter(|l| l.contains(w)).count();
        assert!(n >= 1, "no error line with {w:?}:\n{stderr}");
    }
    for l in &errors {
        assert!(l.contains(path_str(&s)), "error without the script: {l}");
    }
    assert!(!stderr.contains("Traceback"), "{stderr}");
}

/// The traceback is a debug message.
#[test]
fn traceback_is_in_the_debug_output() {
    skip_unless!("nbdcopy");
    python_plugin();
    let dir = TempDir::new();
    let s = script(
        &dir,
        "tb.py",
        "API_VERSION = 2\ndef open(r):\n    return 1\ndef get_size(h):\n    return 512\n\
         def inner():\n    raise ValueError('deep')\ndef pread(h, b, o, f):\n    inner()\n",
    );
    let o = run(
        nbdkit_cmd()
            .env("PATH", "/usr/bin:/bin")
            .args(["-v", "-U", "-", "python", path_str(&s)])
            .args(["--run", "nbdcopy \"$uri\" - >/dev/null"]),
        CMD_TIMEOUT,
    );
    assert!(!o.success(), "nbdcopy should fail: {}", o.describe());
    assert!(
        o.stderr.contains("Traceback (most recent call last):"),
        "{}",
        o.stderr
    );
    assert!(o.stderr.contains("line 9, in pread"), "{}", o.stderr);
    assert!(
        o.stderr.contains("ValueError: deep (line 7, in inner)"),
        "{}",
        o.stderr
    );
}

/// `zero` with nbdkit.set_error(EOPNOTSUPP) makes the server write zeroes.
#[test]
fn zero_falls_back_to_pwrite_on_eopnotsupp() {
    skip_unless!("python3-nbd");
    python_plugin();
    let dir = TempDir::new();
    let s = script(
        &dir,
        "zero.py",
        r#"
import nbdkit, errno
API_VERSION = 2
disk = bytearray(b"\xff" * 65536)
def open(readonly):
    return 1
def get_size(h):
    return len(disk)
def pread(h, buf, offset, flags):
    buf[:] = disk[offset:offset + len(buf)]
def pwrite(h, buf, offset, flags):
    disk[offset:offset + len(buf)] = buf
def zero(h, count, offset, flags):
    nbdkit.set_error(errno.EOPNOTSUPP)
    raise NotImplementedError("use pwrite")
"#,
    );
    let srv = Server::start(["python", path_str(&s)]);
    let code = r#"
import sys, nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
h.zero(4096, 4096)
assert h.pread(4096, 4096) == bytes(4096)
assert h.pread(4096, 0) == b"\xff" * 4096
print("ok")
"#;
    assert_eq!(libnbd(code, &srv.uri()).trim(), "ok");
    assert!(
        script_errors(&srv.stderr(), &s).is_empty(),
        "{}",
        srv.stderr()
    );
}

/// pread's buffer is a memoryview over the server's own buffer, filled in
/// place; the script cannot keep using it after the call.
#[test]
fn pread_memoryview_is_the_request_buffer_and_is_released_after() {
    skip_unless!("python3-nbd");
    python_plugin();
    let dir = TempDir::new();
    let s = script(
        &dir,
        "mv.py",
        r#"
API_VERSION = 2
saved = []
def open(readonly):
    return 1
def get_size(h):
    return 65536
def pread(h, buf, offset, flags):
    assert type(buf) is memoryview and not buf.readonly, buf
    assert buf.nbytes == len(buf) and buf.contiguous
    if offset == 0:
        saved.append(buf)
        buf[:] = b"a" * len(buf)
    else:
        try:
            saved[0][0] = 0
            buf[:] = b"!" * len(buf)
        except ValueError:
            buf[:] = b"r" * len(buf)
def pwrite(h, buf, offset, flags):
    assert type(buf) is memoryview and buf.readonly
    buf[0:1] = b"x"
"#,
    );
    let srv = Server::start(["python", path_str(&s)]);
    let code = r#"
import sys, nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
assert h.pread(512, 0) == b"a" * 512
assert h.pread(512, 512) == b"r" * 512
try:
    h.pwrite(b"z" * 512, 0)
    print("write should fail")
except nbd.Error as e:
    assert e.errno == "EIO", e
print("ok")
"#;
    assert_eq!(libnbd(code, &srv.uri()).trim(), "ok");
    assert!(
        srv.stderr()
            .contains("TypeError: cannot modify read-only memory"),
        "{}",
        srv.stderr()
    );
}

/// The `nbdkit` module's functions and constants.
#[test]
fn nbdkit_module_functions_and_constants() {
    skip_unless!("nbdinfo");
    python_plugin();
    let dir = TempDir::new();
    let out = dir.join("out");
    let s = script(
        &dir,
        "module.py",
        &format!(
            r#"
import nbdkit
OUT = {out:?}
def say(s):
    with __builtins__.open(OUT, "a") as f:
        f.write(s + "\n")
say("size=%d" % nbdkit.parse_size("1M"))
say("prob=%g" % nbdkit.parse_probability("p", "1:4"))
say("prob%%=%g" % nbdkit.parse_probability("p", "10%"))
try:
    nbdkit.parse_size("nonsense")
except ValueError as e:
    say("parse_size error")
try:
    nbdkit.export_name()
except RuntimeError:
    say("export_name outside a connection")
say("consts=%s" % [nbdkit.THREAD_MODEL_SERIALIZE_CONNECTIONS,
                   nbdkit.THREAD_MODEL_SERIALIZE_ALL_REQUESTS,
                   nbdkit.THREAD_MODEL_SERIALIZE_REQUESTS,
                   nbdkit.THREAD_MODEL_PARALLEL,
                   nbdkit.FLAG_MAY_TRIM, nbdkit.FLAG_FUA, nbdkit.FLAG_REQ_ONE,
                   nbdkit.FLAG_FAST_ZERO,
                   nbdkit.FUA_NONE, nbdkit.FUA_EMULATE, nbdkit.FUA_NATIVE,
                   nbdkit.CACHE_NONE, nbdkit.CACHE_EMULATE, nbdkit.CACHE_NATIVE,
                   nbdkit.EXTENT_HOLE, nbdkit.EXTENT_ZERO])
nbdkit.debug("a debug message from the script")
def open(readonly):
    say("export=%s tls=%s" % (nbdkit.export_name(), nbdkit.is_tls()))
    say("peer=%r" % (nbdkit.peer_name(),))
    return 1
def get_size(h):
    return 4096
def pread(h, buf, offset, flags):
    buf[:] = bytes(len(buf))
"#,
            out = path_str(&out)
        ),
    );
    let o = run(
        nbdkit_cmd()
            .env("PATH", "/usr/bin:/bin")
            .args(["-v", "-U", "-", "python", path_str(&s)])
            .args([
                "--run",
                "nbdinfo --size \"nbd+unix:///exp?socket=$unixsocket\"",
            ]),
        CMD_TIMEOUT,
    );
    assert!(o.success(), "{}", o.describe());
    assert!(
        o.stderr.contains("debug: a debug message from the script"),
        "{}",
        o.stderr
    );
    let got = fs::read_to_string(&out).unwrap();
    let want = "size=1048576\nprob=0.25\nprob%=0.1\nparse_size error\n\
                export_name outside a connection\n\
                consts=[0, 1, 2, 3, 1, 2, 4, 8, 0, 1, 2, 0, 1, 2, 1, 2]\n\
                export=exp tls=False\npeer=''\n";
    assert_eq!(got, want);
}

/// nbdkit.shutdown() from a callback stops the server.
#[test]
fn nbdkit_shutdown_stops_the_server() {
    skip_unless!("nbdinfo");
    python_plugin();
    let dir = TempDir::new();
    let s = script(
        &dir,
        "shut.py",
        "import nbdkit\nAPI_VERSION = 2\ndef open(r):\n    return 1\ndef get_size(h):\n    return 512\n\
         def pread(h, b, o, f):\n    nbdkit.shutdown()\n    b[:] = bytes(len(b))\n",
    );
    let mut srv = Server::start(["python", path_str(&s)]);
    let o = run_tool("nbdcopy", [&srv.uri(), "null:"]);
    assert!(o.success(), "{}", o.describe());
    assert!(
        wait_until(Duration::from_secs(20), || !srv.is_alive()),
        "the server did not stop after nbdkit.shutdown()"
    );
}

/// With the parallel thread model two requests run in the script at the
/// same time (they meet at a barrier); serialized, they cannot.
#[test]
fn parallel_scripts_run_requests_concurrently() {
    skip_unless!("python3-nbd");
    python_plugin();
    let dir = TempDir::new();
    let s = script(
        &dir,
        "par.py",
        r#"
import nbdkit, threading
API_VERSION = 2
MODEL = nbdkit.THREAD_MODEL_PARALLEL
TIMEOUT = 60
barrier = None
def config(k, v):
    global MODEL, TIMEOUT
    if k == "model":
        MODEL = getattr(nbdkit, "THREAD_MODEL_" + v.upper())
    else:
        TIMEOUT = float(v)
def config_complete():
    global barrier
    barrier = threading.Barrier(2, timeout=TIMEOUT)
def thread_model():
    return MODEL
def open(readonly):
    return 1
def get_size(h):
    return 1 << 20
def pread(h, buf, offset, flags):
    # Two requests pass only if both are here at once.
    barrier.wait()
    buf[:] = bytes(len(buf))
"#,
    );
    let client = r#"
import nbd, sys, time
h = nbd.NBD()
h.connect_uri(sys.argv[1])
bufs = [nbd.Buffer(512), nbd.Buffer(512)]
cookies = [h.aio_pread(bufs[0], 0), h.aio_pread(bufs[1], 4096)]
deadline = time.monotonic() + 100
while h.aio_in_flight() > 0 and time.monotonic() < deadline:
    h.poll(1)
res = []
for c in cookies:
    try:
        h.aio_command_completed(c)
        res.append("ok")
    except nbd.Error as e:
        res.append(e.errno)
print(" ".join(res))
"#;
    let srv = Server::start(["python", path_str(&s), "model=parallel"]);
    assert_eq!(
        libnbd(client, &srv.uri()).trim(),
        "ok ok",
        "{}",
        srv.stderr()
    );
    drop(srv);
    // Negative control: serialized, the first request waits alone.
    let srv = Server::start([
        "python",
        path_str(&s),
        "model=serialize_all_requests",
        "timeout=2",
    ]);
    assert_eq!(libnbd(client, &srv.uri()).trim(), "EIO EIO");
    assert!(
        srv.stderr().contains("BrokenBarrierError"),
        "{}",
        srv.stderr()
    );
}

/// The interpreter lock is free while the server waits: a thread of the
/// script runs between requests.
#[test]
fn script_threads_run_while_the_server_waits() {
    skip_unless!("python3-nbd");
    python_plugin();
    let dir = TempDir::new();
    let marker = dir.join("marker");
    let s = script(
        &dir,
        "bg.py",
        &format!(
            r#"
import threading
API_VERSION = 2
go = threading.Event()
def work():
    go.wait()
    with __builtins__.open({marker:?}, "w") as f:
        f.write("ran\n")
threading.Thread(target=work, daemon=True).start()
def open(readonly):
    return 1
def get_size(h):
    return 4096
def pread(h, buf, offset, flags):
    go.set()
    buf[:] = bytes(len(buf))
"#,
            marker = path_str(&marker)
        ),
    );
    let srv = Server::start(["python", path_str(&s)]);
    let code = r#"
import sys, nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
h.pread(512, 0)
print("ok")
"#;
    assert_eq!(libnbd(code, &srv.uri()).trim(), "ok");
    // The connection is idle now (and still open in no client): the
    // script's thread must get the interpreter.
    assert!(
        wait_until(Duration::from_secs(30), || marker.exists()),
        "the script's thread never ran: {}",
        srv.stderr()
    );
}

/// The interpreter is loaded only when the python plugin is used.
#[test]
fn plain_server_does_not_load_libpython() {
    python_plugin();
    if is_reference() {
        println!("SKIP: about this project's binary");
        return;
    }
    let maps = |srv: &Server| fs::read_to_string(format!("/proc/{}/maps", srv.pid())).unwrap();
    let mem = Server::start(["memory", "1M"]);
    let m = maps(&mem);
    assert!(
        !m.contains("libpython"),
        "memory plugin maps libpython:\n{m}"
    );
    assert!(!m.contains("nbdkit_python_plugin"), "{m}");
    let dir = TempDir::new();
    let s = script(&dir, "ramdisk.py", RAMDISK);
    let py = Server::start(["python", path_str(&s)]);
    assert!(
        maps(&py).contains("libpython3"),
        "the python plugin has no libpython?"
    );
    // The binary itself does not link it.
    let o = run(Command::new("ldd").arg(nbdkit_bin()), CMD_TIMEOUT);
    if o.success() {
        assert!(!o.stdout.contains("libpython"), "{}", o.stdout);
    }
}

/// Debian's C nbdkit runs the same RAM-disk script the same way.
#[test]
fn ramdisk_answers_like_the_reference() {
    skip_unless!("nbdinfo");
    python_plugin();
    if !Path::new(REFERENCE).exists() {
        println!("SKIP: the reference {REFERENCE} is not installed");
        return;
    }
    if !run(
        Command::new(REFERENCE).args(["python", "--dump-plugin"]),
        CMD_TIMEOUT,
    )
    .success()
    {
        println!("SKIP: the reference has no python plugin (nbdkit-plugin-python)");
        return;
    }
    let dir = TempDir::new();
    let s = script(&dir, "ramdisk.py", RAMDISK);
    let probe = "nbdinfo --json \"$uri\" | grep -v '\"uri\"'";
    let go = |bin: &Path| {
        let o = run(
            Command::new(bin).env("PATH", "/usr/bin:/bin").args([
                "-U",
                "-",
                "python",
                path_str(&s),
                "size=2M",
                "--run",
                probe,
            ]),
            CMD_TIMEOUT,
        );
        assert!(o.success(), "{}: {}", bin.display(), o.describe());
        o.stdout
    };
    assert_eq!(go(&nbdkit_bin()), go(Path::new(REFERENCE)));
}

/// A plugin whose libpython is not installed is refused with one error
/// line that names the Debian package to install.
#[test]
fn missing_libpython_names_the_debian_package() {
    if is_reference() {
        println!("SKIP: about this project's message");
        return;
    }
    skip_unless!("gcc");
    let dir = TempDir::new();
    // A stand-in libpython3.99 to link against, removed before loading.
    let c = dir.join("empty.c");
    fs::write(&c, "int nbdkit_test_fake (void) { return 0; }\n").unwrap();
    let lib = dir.join("libpython3.99.so.1.0");
    let o = run(
        Command::new("gcc")
            .args(["-shared", "-fPIC", "-Wl,-soname,libpython3.99.so.1.0", "-o"])
            .arg(&lib)
            .arg(&c),
        CMD_TIMEOUT,
    );
    assert!(o.success(), "{}", o.describe());
    let plugin = dir.join("nbdkit-fakepy-plugin.so");
    let o = run(
        Command::new("gcc")
            .args(["-shared", "-fPIC", "-o"])
            .arg(&plugin)
            .arg(&c)
            .args(["-Wl,--no-as-needed"])
            .arg(&lib),
        CMD_TIMEOUT,
    );
    assert!(o.success(), "{}", o.describe());
    fs::remove_file(&lib).unwrap();
    let o = run(
        nbdkit_cmd().args(["-U", "-", path_str(&plugin), "--run", "exit 0"]),
        CMD_TIMEOUT,
    );
    assert_eq!(o.code(), Some(1), "{}", o.describe());
    let errors = error_lines(&o.stderr);
    assert_eq!(errors.len(), 1, "{}", o.stderr);
    assert!(
        errors[0].contains("libpython3.99.so.1.0: cannot open shared object file")
            && errors[0].ends_with("(install Debian's libpython3.99)"),
        "{}",
        errors[0]
    );
}
