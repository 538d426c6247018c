//! What the tests of the language plugins built as shared objects (lua,
//! ruby) share: the check that `nbdkit LANG` loads this project's plugin,
//! the RAM-disk round trip, the client side of the "every callback"
//! script, and the start-up and missing-library error checks.
#![allow(dead_code, unreachable_pub, clippy::std_instead_of_core)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use nbdkit_tests::*;

pub const NBD_EIO: u32 = 5;
pub const NBD_ENOSPC: u32 = 28;

/// Check that `nbdkit LANG` is this project's plugin, built beside the
/// binary under test; panics with the way to build it otherwise.
pub fn check_plugin(lang: &str) {
    let o = run(nbdkit_cmd().args([lang, "--dump-plugin"]), CMD_TIMEOUT);
    assert!(
        o.success(),
        "nbdkit {lang} --dump-plugin failed: {}",
        o.describe()
    );
    if is_reference() {
        return;
    }
    let bin = fs::canonicalize(nbdkit_bin()).unwrap();
    let dir = bin.parent().unwrap();
    let path = o
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("path="))
        .unwrap_or_default()
        .to_string();
    let beside = [
        dir.join(format!("libnbdkit_{lang}_plugin.so")),
        dir.join(format!("nbdkit-{lang}-plugin.so")),
    ];
    assert!(
        beside.iter().any(|p| Path::new(&path) == p),
        "`nbdkit {lang}` loaded {path:?}, not the plugin built beside {}: build it with \
         `cargo build -p nbdkit-{lang}-plugin` (add --release for a release nbdkit)",
        bin.display()
    );
}

/// Whether the reference has the plugin `lang` (prints a SKIP line when not).
pub fn reference_has(lang: &str) -> bool {
    if !reference_installed() {
        return false;
    }
    let o = run(
        Command::new(REFERENCE).args([lang, "--dump-plugin"]),
        CMD_TIMEOUT,
    );
    if !o.success() {
        println!("SKIP: the reference has no {lang} plugin (nbdkit-plugin-{lang})");
    }
    o.success()
}

/// Write the script `text` as `dir/name`.
pub fn script(dir: &TempDir, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    fs::write(&p, text).unwrap();
    p
}

/// Run a libnbd Python program with `uri` as `sys.argv[1]`; its stdout.
pub fn libnbd(code: &str, uri: &str) -> String {
    let o = run_python_code(code, [uri]);
    assert!(o.success(), "python-libnbd client failed: {}", o.describe());
    o.stdout
}

/// The `nbdkit: error:` lines (with or without a connection context).
pub fn error_lines(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter(|l| l.starts_with("nbdkit: ") && l.contains("error: "))
        .map(str::to_string)
        .collect()
}

/// `qemu-img convert` and `nbdcopy` write 8M of random data to the
/// server and read it back byte for byte.
pub fn round_trip(srv: &Server, dir: &TempDir) {
    let input = dir.join("in.img");
    let want = write_random_file(&input, 8 << 20, 11);
    let uri = srv.uri();
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
            &uri,
        ],
    );
    assert!(o.success(), "qemu-img convert to nbd: {}", o.describe());
    let back = dir.join("back-qemu.img");
    let o = run_tool(
        "qemu-img",
        ["convert", "-f", "raw", "-O", "raw", &uri, path_str(&back)],
    );
    assert!(o.success(), "qemu-img convert from nbd: {}", o.describe());
    assert_bytes_eq("qemu-img round trip", &fs::read(&back).unwrap(), &want);

    let input2 = dir.join("in2.img");
    let want2 = write_random_file(&input2, 8 << 20, 12);
    let o = run_tool("nbdcopy", [path_str(&input2), &uri]);
    assert!(o.success(), "nbdcopy to nbd: {}", o.describe());
    let back2 = dir.join("back-nbdcopy.img");
    let o = run_tool("nbdcopy", [&uri, path_str(&back2)]);
    assert!(o.success(), "nbdcopy from nbd: {}", o.describe());
    assert_bytes_eq("nbdcopy round trip", &fs::read(&back2).unwrap(), &want2);
    assert!(
        error_lines(&srv.stderr()).is_empty(),
        "errors: {}",
        srv.stderr()
    );
}

/// Drive a server of the "every callback" script (exports "a" with the
/// description "export A" and "b"; 2M each, the first half data, the
/// second a hole; block sizes 1/4096/1M; "b" rotational; FUA and cache
/// native; logging to `log`) with nbdinfo and python-libnbd, stop it, and
/// check the log.
pub fn check_every_callback(mut srv: Server, log: &Path) {
    let o = run_tool("nbdinfo", ["--list", "--json", &srv.uri()]);
    assert!(o.success(), "nbdinfo --list: {}", o.describe());
    let j = Json::parse(&o.stdout).unwrap();
    let exports = j.get("exports").and_then(Json::as_array).unwrap();
    let names: Vec<&str> = exports
        .iter()
        .map(|e| e.get("export-name").and_then(Json::as_str).unwrap())
        .collect();
    assert_eq!(names, ["a", "b"], "{}", o.stdout);
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
    for k in [
        "can_multi_conn",
        "can_cache",
        "can_fua",
        "can_flush",
        "can_trim",
        "can_zero",
        "can_fast_zero",
    ] {
        assert_eq!(field(0, k).and_then(Json::as_bool), Some(true), "{k}");
    }

    // Extents of the default export ("a", from default_export).
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
assert h.get_export_description() == "export B", h.get_export_description()
assert h.get_size() == 2 << 20
h.pwrite(b"A" * 8192, 4096, nbd.CMD_FLAG_FUA)
h.pwrite(b"B" * 512, 0)
h.flush()
assert h.pread(512, 0) == b"B" * 512
assert h.pread(8192, 4096) == b"A" * 8192
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
    let uri = format!("nbd+unix:///b?socket={}", path_str(srv.socket()));
    assert_eq!(libnbd(code, &uri).trim(), "ok");
    assert!(
        error_lines(&srv.stderr()).is_empty(),
        "errors: {}",
        srv.stderr()
    );
    srv.stop();
    let log = fs::read_to_string(log).unwrap();
    for want in [
        "config_complete",
        "get_ready",
        "after_fork",
        "preconnect",
        "open a",
        "open b",
        "close b",
        "pwrite fua=true",
        "pwrite fua=false",
        "flush",
        "zero may_trim=false",
        "zero may_trim=true",
        "trim",
        "cache 0 65536",
        "cleanup",
    ] {
        assert!(
            log.lines().any(|l| l == want),
            "no {want:?} in the log:\n{log}"
        );
    }
    let pos = |w: &str| log.lines().position(|l| l == w).unwrap();
    assert!(pos("config_complete") < pos("get_ready"));
    assert!(pos("get_ready") < pos("after_fork"));
    assert!(pos("after_fork") < pos("preconnect"));
    assert_eq!(log.lines().last(), Some("cleanup"), "{log}");
}

/// Start `nbdkit -U - LANG ARGS` expecting it to fail at start-up with
/// exit status 1; returns its one error line.
pub fn start_fails(lang: &str, args: &[&str]) -> String {
    let o = run(
        nbdkit_cmd()
            .args(["-U", "-", lang])
            .args(args)
            .args(["--run", "exit 0"]),
        CMD_TIMEOUT,
    );
    assert_eq!(o.code(), Some(1), "{}", o.describe());
    let errors = error_lines(&o.stderr);
    assert_eq!(errors.len(), 1, "one error line: {}", o.describe());
    assert!(!o.stderr.contains("panick"), "{}", o.describe());
    errors[0].clone()
}

/// A plugin linked to the interpreter library `soname` that is not
/// installed is refused with one error line naming Debian's `package`.
pub fn missing_library_names_the_package(soname: &str, package: &str) {
    if is_reference() {
        println!("SKIP: about this project's message");
        return;
    }
    if !have_tool("gcc") {
        println!("SKIP: gcc is not installed");
        return;
    }
    let dir = TempDir::new();
    let c = dir.join("empty.c");
    fs::write(&c, "int nbdkit_test_fake (void) { return 0; }\n").unwrap();
    let lib = dir.join(soname);
    let o = run(
        Command::new("gcc")
            .args(["-shared", "-fPIC"])
            .arg(format!("-Wl,-soname,{soname}"))
            .arg("-o")
            .arg(&lib)
            .arg(&c),
        CMD_TIMEOUT,
    );
    assert!(o.success(), "{}", o.describe());
    let plugin = dir.join("nbdkit-fakelang-plugin.so");
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
        errors[0].contains(&format!("{soname}: cannot open shared object file"))
            && errors[0].ends_with(&format!("(install Debian's {package})")),
        "{}",
        errors[0]
    );
}

/// A shebang script `#!NBDKIT LANG` runs directly.
pub fn shebang_runs(lang: &str, dir: &TempDir, name: &str, body: &str, params: &[&str]) -> String {
    let p = dir.join(name);
    write_executable(&p, &format!("#!{} {lang}\n{body}", path_str(&nbdkit_bin())));
    let o = run(
        Command::new(&p)
            .env("PATH", "/usr/bin:/bin")
            .args(params)
            .args(["-U", "-", "--run", "nbdinfo --size \"$uri\""]),
        CMD_TIMEOUT,
    );
    assert!(o.success(), "{}", o.describe());
    o.stdout.trim().to_string()
}

/// The lines of `BIN LANG SCRIPT --dump-plugin` that are the plugin's own:
/// `name=`, the `LANG_..._version=` line (value elided) and the script's,
/// without the generic `has_*`, `api_version`, ... lines.
pub fn dump_own_lines(bin: &Path, script: &Path) -> Vec<String> {
    let lang = script
        .extension()
        .map(|e| if e == "rb" { "ruby" } else { "lua" })
        .unwrap();
    let o = run(
        Command::new(bin).args([lang, path_str(script), "--dump-plugin"]),
        CMD_TIMEOUT,
    );
    assert!(o.success(), "{}", o.describe());
    let generic = [
        "path",
        "version",
        "api_version",
        "struct_size",
        "max_thread_model",
        "thread_model",
        "errno_is_preserved",
        "magic_config_key",
    ];
    o.stdout
        .lines()
        .filter(|l| !l.starts_with("has_"))
        .filter_map(|l| match l.split_once('=') {
            Some((k, _)) if generic.contains(&k) => None,
            Some((k, _)) if k.starts_with(lang) && k.ends_with("_version") => {
                Some(format!("{k}=..."))
            }
            _ => Some(l.to_string()),
        })
        .collect()
}

/// A script that fails to start: (file name, its text or `None` for a
/// missing file, more parameters, what the one error line says).
pub type LoadCase<'a> = (&'a str, Option<String>, &'a [&'a str], &'a [&'a str]);

/// Each case fails start-up with one error line naming the script and
/// saying what the case wants.
pub fn check_load_errors(lang: &str, dir: &TempDir, cases: &[LoadCase<'_>]) {
    for (name, text, params, want) in cases {
        let p = match text {
            Some(t) => script(dir, name, t),
            None => dir.join(name),
        };
        let mut args = vec![path_str(&p)];
        args.extend_from_slice(params);
        let e = start_fails(lang, &args);
        assert!(
            e.contains(path_str(&p)),
            "{name}: the script is not named: {e}"
        );
        for w in *want {
            assert!(e.contains(w), "{name}: no {w:?} in {e}");
        }
    }
}
