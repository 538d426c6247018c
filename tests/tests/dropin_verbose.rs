//! `-v` output that tools and people grep, and `-D` debug flags: the
//! per-layer call lines (`offset: pwrite count=512 offset=0 fua=0`), the
//! thread names that prefix them, the `nbdkit.backend.*` switches, the
//! `-D` syntax and warnings, the flags plugins and filters document, and
//! `--dump-plugin`'s thread model of a filter stack.
//!
//! Differential tests run the same command against Debian's C nbdkit
//! (/usr/bin/nbdkit) and skip with a message when it is not installed;
//! the others check what nbdkit prints, written out.
#![allow(clippy::std_instead_of_core)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use nbdkit_core::backend::Callbacks;
use nbdkit_tests::*;

const TIMEOUT: Duration = Duration::from_secs(60);

/// Run `bin` with `args` (nbdsh and python3-libnbd found through
/// /usr/bin first); its stderr.
fn stderr_of(bin: &Path, args: &[&str]) -> Output {
    let path = format!("/usr/bin:{}", std::env::var("PATH").unwrap_or_default());
    run(Command::new(bin).env("PATH", path).args(args), TIMEOUT)
}

/// `nbdsh -c SCRIPT` against the server's `$uri`, for `--run`.
fn nbdsh(script: &str) -> String {
    format!("nbdsh --base-allocation -u \"$uri\" -c '{script}'")
}

/// The message of a debug line: `nbdkit: THREAD: debug: MSG` or
/// `nbdkit: debug: MSG` gives `(THREAD, MSG)`.
fn debug_line(line: &str) -> Option<(&str, &str)> {
    let rest = line.strip_prefix("nbdkit: ")?;
    if let Some(msg) = rest.strip_prefix("debug: ") {
        return Some(("", msg));
    }
    let (thread, msg) = rest.split_once(": debug: ")?;
    Some((thread, msg))
}

/// Whether `verb` is a per-connection call whose line is compared:
/// nbdkit's callbacks from `open` on (without `export_description`, which
/// nbdkit asks for only when the client wants it), prepare and finalize.
fn is_call(verb: &str) -> bool {
    verb == "prepare"
        || verb == "finalize"
        || Callbacks::all_names()
            .skip_while(|c| *c != "open")
            .any(|c| c == verb && c != "export_description")
}

/// Whether `verb` is a data-path call.
fn is_data_call(verb: &str) -> bool {
    Callbacks::all_names()
        .skip_while(|c| *c != "pread")
        .any(|c| c == verb)
}

/// The per-layer call lines (`LAYER: CALL ...`) of `layers`, without
/// thread names, with handle addresses blanked.
fn backend_lines(stderr: &str, layers: &[&str]) -> Vec<String> {
    stderr
        .lines()
        .filter_map(debug_line)
        .filter_map(|(_, msg)| {
            let (layer, call) = msg.split_once(": ")?;
            let verb = call.split(' ').next()?;
            (layers.contains(&layer) && is_call(verb)).then(|| {
                let msg = match msg.find("returned handle ") {
                    Some(i) => format!("{}returned handle PTR", &msg[..i]),
                    None => msg.to_string(),
                };
                msg
            })
        })
        .collect()
}

fn is_data(line: &str) -> bool {
    line.split_once(": ")
        .and_then(|(_, c)| c.split(' ').next())
        .is_some_and(is_data_call)
}

/// The lines up to the last data-path line: how quickly the reference
/// tears down after `--run`'s command exits depends on timing.
fn until_last_data(lines: Vec<String>) -> Vec<String> {
    let n = lines.iter().rposition(|l| is_data(l)).map_or(0, |i| i + 1);
    lines[..n].to_vec()
}

/// Requests of every kind, in the order nbdkit's tests use them.
const EVERY_REQUEST: &str = "h.pwrite(b\"x\"*512, 0); \
     h.pwrite(b\"y\"*512, 1024, nbd.CMD_FLAG_FUA); \
     h.flush(); \
     h.trim(4096, 8192); \
     h.trim(512, 0, nbd.CMD_FLAG_FUA); \
     h.zero(4096, 0); \
     h.zero(4096, 0, nbd.CMD_FLAG_NO_HOLE|nbd.CMD_FLAG_FUA); \
     h.zero(512, 0, nbd.CMD_FLAG_FAST_ZERO); \
     h.cache(4096, 0); \
     h.block_status(65536, 0, lambda *a: 0); \
     h.block_status(65536, 0, lambda *a: 0, nbd.CMD_FLAG_REQ_ONE); \
     h.pread(512, 0)";

fn filter_stack_args(run: &str) -> Vec<String> {
    [
        "-U",
        "-",
        "-v",
        "--filter=noextents",
        "--filter=offset",
        "memory",
        "1M",
        "offset=4096",
        "--run",
        run,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[test]
fn every_layer_logs_its_calls_as_nbdkit_does() {
    skip_unless!("nbdsh", "python3-nbd");
    let args = filter_stack_args(&nbdsh(EVERY_REQUEST));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = stderr_of(&nbdkit_bin(), &args);
    assert!(out.success(), "{}", out.describe());
    let lines = backend_lines(&out.stderr, &["noextents", "offset", "memory"]);
    let want_in_order = [
        "noextents: open readonly=0 exportname=\"\" tls=0",
        "offset: open readonly=0 exportname=\"\" tls=0",
        "memory: open readonly=0 exportname=\"\" tls=0",
        "memory: open returned handle PTR",
        "offset: open returned handle PTR",
        "noextents: open returned handle PTR",
        "memory: prepare readonly=0",
        "offset: prepare readonly=0",
        "noextents: prepare readonly=0",
        "noextents: get_size",
        "offset: get_size",
        "memory: get_size",
        "noextents: can_write",
        "offset: can_write",
        "memory: can_write",
        "noextents: can_extents",
        "noextents: pwrite count=512 offset=0 fua=0",
        "offset: pwrite count=512 offset=0 fua=0",
        "memory: pwrite count=512 offset=4096 fua=0",
        "memory: pwrite count=512 offset=5120 fua=1",
        "noextents: flush",
        "memory: flush",
        "memory: trim count=4096 offset=12288 fua=0",
        "memory: trim count=512 offset=4096 fua=1",
        "memory: zero count=4096 offset=4096 may_trim=1 fua=0 fast=0",
        "memory: zero count=4096 offset=4096 may_trim=0 fua=1 fast=0",
        "memory: zero count=512 offset=4096 may_trim=1 fua=0 fast=1",
        "memory: cache count=4096 offset=4096",
        "noextents: extents count=65536 offset=0 req_one=0",
        "noextents: extents count=65536 offset=0 req_one=1",
        "noextents: pread count=512 offset=0",
        "memory: pread count=512 offset=4096",
        "noextents: finalize",
        "offset: finalize",
        "memory: finalize",
        "noextents: close",
        "offset: close",
        "memory: close",
    ];
    let mut at = 0;
    for want in want_in_order {
        match lines[at..].iter().position(|l| l == want) {
            Some(i) => at += i + 1,
            None => panic!(
                "missing (or out of order) `{want}` in:\n{}\n--- stderr ---\n{}",
                lines.join("\n"),
                out.stderr
            ),
        }
    }
    // noextents answers can_extents itself: the layers below are not asked.
    assert!(
        !lines.iter().any(|l| l == "offset: can_extents"),
        "{}",
        lines.join("\n")
    );
}

#[test]
fn backend_lines_are_the_references() {
    if !reference_installed() {
        return;
    }
    skip_unless!("nbdsh", "python3-nbd");
    let args = filter_stack_args(&nbdsh(EVERY_REQUEST));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let layers = ["noextents", "offset", "memory"];
    let ours = stderr_of(&nbdkit_bin(), &args);
    assert!(ours.success(), "{}", ours.describe());
    let theirs = stderr_of(Path::new(REFERENCE), &args);
    assert!(theirs.success(), "{}", theirs.describe());
    let ours = until_last_data(backend_lines(&ours.stderr, &layers));
    let theirs = until_last_data(backend_lines(&theirs.stderr, &layers));
    assert!(ours.iter().any(|l| is_data(l)), "{}", ours.join("\n"));
    if ours != theirs {
        panic!(
            "backend lines differ\n--- ours ---\n{}\n--- reference ---\n{}",
            ours.join("\n"),
            theirs.join("\n")
        );
    }
}

#[test]
fn list_and_info_lines_are_the_references() {
    if !reference_installed() {
        return;
    }
    skip_unless!("nbdinfo");
    let args = [
        "-U",
        "-",
        "-v",
        "--filter=offset",
        "memory",
        "1M",
        "offset=512",
        "--run",
        "nbdinfo --list \"$uri\" >/dev/null",
    ];
    // The lines of the export list and of each layer's answers; nbdkit
    // asks for the description only when the client wants it, and where
    // it resolves the default export name differs, so neither is compared.
    let pick = |stderr: &str| -> Vec<String> {
        stderr
            .lines()
            .filter_map(debug_line)
            .map(|(_, m)| m.to_string())
            .filter(|m| {
                m.contains(": list_exports") || {
                    let (layer, call) = m.split_once(": ").unwrap_or_default();
                    ["offset", "memory"].contains(&layer)
                        && ["get_size", "can_write", "can_zero", "block_size", "prepare"]
                            .contains(&call.split(' ').next().unwrap_or_default())
                }
            })
            .collect()
    };
    let ours = stderr_of(&nbdkit_bin(), &args);
    assert!(ours.success(), "{}", ours.describe());
    let theirs = stderr_of(Path::new(REFERENCE), &args);
    assert!(theirs.success(), "{}", theirs.describe());
    let (ours, theirs) = (pick(&ours.stderr), pick(&theirs.stderr));
    assert!(
        ours.contains(&"memory: list_exports returned 1 names".to_string()),
        "{}",
        ours.join("\n")
    );
    assert_eq!(
        ours,
        theirs,
        "ours:\n{}\nreference:\n{}",
        ours.join("\n"),
        theirs.join("\n")
    );
}

#[test]
fn backend_switches_silence_each_path() {
    skip_unless!("nbdsh", "python3-nbd");
    let script = nbdsh("h.pwrite(b\"x\"*512, 0); h.pread(512, 0)");
    let count = |extra: &[&str]| -> (usize, usize) {
        let mut args = vec!["-U", "-"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["memory", "1M", "--run", &script]);
        let out = stderr_of(&nbdkit_bin(), &args);
        assert!(out.success(), "{}", out.describe());
        let lines = backend_lines(&out.stderr, &["memory"]);
        let data = lines.iter().filter(|l| is_data(l)).count();
        (lines.len() - data, data)
    };
    let (control, data) = count(&["-v"]);
    assert!(control > 5 && data == 2, "control {control}, data {data}");
    assert_eq!(
        count(&["-v", "-D", "nbdkit.backend.datapath=0"]),
        (control, 0)
    );
    assert_eq!(count(&["-v", "-D", "nbdkit.backend.controlpath=0"]), (0, 2));
    // Underscores and dots in a flag name are the same flag.
    assert_eq!(
        count(&["-v", "-D", "nbdkit.backend_datapath=0"]),
        (control, 0)
    );
    assert_eq!(count(&[]), (0, 0));
}

#[test]
fn thread_names_are_nbdkits() {
    skip_unless!("nbdsh", "python3-nbd");
    let script = nbdsh("h.pread(512, 0)");
    let threads = |extra: &[&str]| -> Vec<(String, String)> {
        let mut args = vec!["-U", "-", "-v"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["memory", "1M", "--run", &script]);
        let out = stderr_of(&nbdkit_bin(), &args);
        assert!(out.success(), "{}", out.describe());
        out.stderr
            .lines()
            .filter_map(debug_line)
            .filter(|(_, m)| {
                m.starts_with("memory: pread") || m.starts_with("memory: open readonly")
            })
            .map(|(t, m)| (t.to_string(), m.split(' ').nth(1).unwrap_or("").to_string()))
            .collect()
    };
    // A parallel connection's requests run on workers PLUGIN.N; the
    // connection's own calls carry PLUGIN[N].
    let got = threads(&[]);
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(
        got[0],
        ("memory[1]".to_string(), "open".to_string()),
        "{got:?}"
    );
    let worker = &got[1].0;
    assert!(
        worker
            .strip_prefix("memory.")
            .is_some_and(|n| n.parse::<u32>().is_ok_and(|n| n < 16)),
        "{got:?}"
    );
    // Serialized requests run on the connection's thread.
    for extra in [&["--filter=noparallel"][..], &["-t", "1"][..]] {
        let got = threads(extra);
        assert!(
            got.len() == 2 && got.iter().all(|(t, _)| t == "memory[1]"),
            "{got:?}"
        );
    }
}

#[test]
fn global_calls_are_logged_in_nbdkits_order() {
    let out = stderr_of(
        &nbdkit_bin(),
        &[
            "-U",
            "-",
            "-v",
            "-D",
            "nbdkit.backend.controlpath=0",
            "--filter=noextents",
            "--filter=offset",
            "memory",
            "1M",
            "offset=0",
            "--run",
            "true",
        ],
    );
    assert!(out.success(), "{}", out.describe());
    let msgs: Vec<&str> = out
        .stderr
        .lines()
        .filter_map(debug_line)
        .map(|(_, m)| m)
        .collect();
    // nbdkit prints these whatever controlpath says.
    let want = [
        "memory: load",
        "offset: load",
        "noextents: load",
        "noextents: config key=size, value=1M",
        "offset: config key=size, value=1M",
        "memory: config key=size, value=1M",
        "noextents: config key=offset, value=0",
        "offset: config key=offset, value=0",
        "noextents: config_complete",
        "offset: config_complete",
        "memory: config_complete",
        "using thread model: parallel",
        "memory: get_ready",
        "offset: get_ready thread_model=3",
        "noextents: get_ready thread_model=3",
        "memory: after_fork",
        "offset: after_fork",
        "noextents: after_fork",
        "noextents: cleanup",
        "offset: cleanup",
        "memory: cleanup",
    ];
    let mut at = 0;
    for w in want {
        match msgs[at..].iter().position(|m| *m == w) {
            Some(i) => at += i + 1,
            None => panic!("missing or out of order `{w}`:\n{}", out.stderr),
        }
    }
    assert!(!out.stderr.contains("unload"), "{}", out.stderr);
}

// ---------------------------------------------------------------------------
// -D syntax and warnings

/// (argument, stderr, exit code), as nbdkit 1.32 prints them.
const BAD_FLAGS: &[(&str, &str, i32)] = &[
    (
        "foo",
        "nbdkit: -D (Debug Flag) must have the format NAME.FLAG=N\n",
        1,
    ),
    (
        "foo=1",
        "nbdkit: -D (Debug Flag) must have the format NAME.FLAG=N\n",
        1,
    ),
    (
        ".bar=1",
        "nbdkit: -D (Debug Flag) must have the format NAME.FLAG=N\n",
        1,
    ),
    (
        "foo.=1",
        "nbdkit: -D (Debug Flag) must have the format NAME.FLAG=N\n",
        1,
    ),
    (
        "foo.bar=",
        "nbdkit: -D (Debug Flag) must have the format NAME.FLAG=N\n",
        1,
    ),
    (
        "foo.bar=x",
        "nbdkit: error: flag: empty string where we expected a number\n\
         nbdkit: -D (Debug Flag) must have the format NAME.FLAG=N\n",
        1,
    ),
    (
        "foo.bar=1x",
        "nbdkit: error: flag: could not parse number: \"1x\": trailing garbage\n\
         nbdkit: -D (Debug Flag) must have the format NAME.FLAG=N\n",
        1,
    ),
    (
        "foo.bar=2147483648",
        "nbdkit: error: flag: could not parse number: \"2147483648\": \
         Numerical result out of range\n\
         nbdkit: -D (Debug Flag) must have the format NAME.FLAG=N\n",
        1,
    ),
    (
        "foo.bar=0x10",
        "nbdkit: warning: debug flag -D foo.bar was not used\n",
        0,
    ),
    (
        "nbdkit.foo=1",
        "nbdkit: warning: -D nbdkit.foo: nbdkit does not contain a global variable \
         called nbdkit_debug_foo\n",
        0,
    ),
    (
        "memory.x=2",
        "nbdkit: warning: -D memory.x: memory does not contain a global variable \
         called memory_debug_x\n",
        0,
    ),
    ("memory.dir=1", "", 0),
];

#[test]
fn debug_flag_syntax_and_warnings_are_nbdkits() {
    for (flag, stderr, code) in BAD_FLAGS {
        let args = ["-U", "-", "-D", flag, "memory", "1M", "--run", "true"];
        let out = stderr_of(&nbdkit_bin(), &args);
        assert_eq!(out.code(), Some(*code), "-D {flag}: {}", out.describe());
        assert_eq!(out.stderr, *stderr, "-D {flag}: {}", out.describe());
    }
    // The unused warning comes at exit, after --dump-plugin too.
    let out = stderr_of(
        &nbdkit_bin(),
        &["-D", "foo.bar=1", "memory", "--dump-plugin"],
    );
    assert!(out.success(), "{}", out.describe());
    assert_eq!(
        out.stderr,
        "nbdkit: warning: debug flag -D foo.bar was not used\n"
    );
}

#[test]
fn debug_flag_syntax_and_warnings_are_the_references() {
    if !reference_installed() {
        return;
    }
    for (flag, _, _) in BAD_FLAGS {
        let args = ["-U", "-", "-D", flag, "memory", "1M", "--run", "true"];
        let ours = stderr_of(&nbdkit_bin(), &args);
        let theirs = stderr_of(Path::new(REFERENCE), &args);
        assert_eq!(
            (ours.code(), &ours.stderr),
            (theirs.code(), &theirs.stderr),
            "-D {flag}"
        );
    }
}

// ---------------------------------------------------------------------------
// --dump-plugin of a stack

#[test]
fn dump_plugin_gives_the_stacks_thread_model() {
    let dump = |bin: &Path, args: &[&str]| -> Vec<String> {
        let out = stderr_of(bin, args);
        assert!(out.success(), "{}", out.describe());
        out.stdout
            .lines()
            .filter(|l| l.starts_with("thread_model=") || l.starts_with("max_thread_model="))
            .map(String::from)
            .collect()
    };
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "--filter=noparallel",
                "sh",
                "-",
                "serialize=connections",
                "--dump-plugin",
            ],
            "serialize_connections",
        ),
        (
            &[
                "--filter=noparallel",
                "--filter=offset",
                "memory",
                "1M",
                "--dump-plugin",
            ],
            "serialize_requests",
        ),
        (
            &["--filter=offset", "memory", "1M", "--dump-plugin"],
            "parallel",
        ),
    ];
    for (args, model) in cases {
        let ours = dump(&nbdkit_bin(), args);
        assert!(
            ours.contains(&format!("thread_model={model}")),
            "{args:?}: {ours:?}"
        );
        if Path::new(REFERENCE).exists() {
            assert_eq!(ours, dump(Path::new(REFERENCE), args), "{args:?}");
        }
    }
}

// ---------------------------------------------------------------------------
// The debug flags plugins and filters document

/// Run with `-v -D FLAG` and the backend lines silenced; the debug
/// messages that contain `pattern`, without thread names or addresses.
fn flag_output(bin: &Path, args: &[&str], pattern: &str) -> Vec<String> {
    let mut all = vec![
        "-U",
        "-",
        "-v",
        "-D",
        "nbdkit.backend.controlpath=0",
        "-D",
        "nbdkit.backend.datapath=0",
    ];
    all.extend_from_slice(args);
    let out = stderr_of(bin, &all);
    assert!(out.success(), "{}", out.describe());
    out.stderr
        .lines()
        .filter_map(debug_line)
        .map(|(_, m)| m)
        .filter(|m| m.contains(pattern))
        .filter(|m| {
            // The global calls of the layer are printed with -v anyway.
            !m.split_once(": ").is_some_and(|(_, c)| {
                [
                    "load",
                    "config",
                    "config_complete",
                    "get_ready",
                    "after_fork",
                ]
                .iter()
                .any(|g| c.starts_with(g))
                    || c == "preconnect"
                    || c == "cleanup"
            })
        })
        .map(|m| {
            let mut s = m.to_string();
            while let Some(i) = s.find("0x") {
                let end = s[i + 2..]
                    .find(|c: char| !c.is_ascii_hexdigit())
                    .map_or(s.len(), |e| i + 2 + e);
                s.replace_range(i..end, "PTR");
            }
            s
        })
        .collect()
}

/// (what, arguments, pattern of the lines to compare, a line ours must print).
fn flag_cases(dir: &TempDir) -> Vec<(&'static str, Vec<String>, &'static str, String)> {
    let img = dir.join("disk.img");
    std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
    let img2 = dir.join("disk2.img");
    std::fs::write(&img2, vec![1u8; 1000]).unwrap();
    let list = dir.join("extents.txt");
    std::fs::write(&list, "0 4096\n8192 4096 hole,zero\n65536 100 3\n").unwrap();
    let run = |s: &str| nbdsh(s);
    let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    vec![
        (
            "data.AST",
            v(&[
                "-D",
                "data.AST=1",
                "data",
                "1 2 3 @0x100 (0x55 0xAA)*4 \"hello\" @^512 le32:0x12345678 (1 2)*3*2 \
                 (\"abcdef\")[1:3] (1) -> \\a \\a \"x\"*5 $x",
                "x=9 8",
                "--run",
                "true",
            ]),
            "",
            "    \"U\\xaaU\\xaaU\\xaaU\\xaahello\"".to_string(),
        ),
        (
            "partitioning.regions",
            v(&[
                "-D",
                "partitioning.regions=1",
                "partitioning",
                arg_path(&img),
                arg_path(&img2),
                "partition-type=gpt",
                "--run",
                "true",
            ]),
            "region[",
            "region[0]: 0-43ff type=data".to_string(),
        ),
        (
            "memory.dir",
            v(&[
                "-D",
                "memory.dir=1",
                "memory",
                "1G",
                "--run",
                &run("h.pwrite(b\"x\"*4096, 0); h.pwrite(b\"z\"*512, 1<<29); \
                      h.pwrite(b\"z\"*512, 1<<28); h.zero(4096, 0); h.pread(10, 0)"),
            ]),
            "L1",
            "insert_l1_entry: inserted new L1 entry for 268435456 at l1_dir.ptr[1]".to_string(),
        ),
        (
            "file.zero",
            v(&[
                "-D",
                "file.zero=1",
                "file",
                arg_path(&img),
                "--run",
                &run("h.zero(4096, 0); h.zero(4096, 8192, nbd.CMD_FLAG_NO_HOLE)"),
            ]),
            "zero succeeded",
            "h->can_punch_hole && may_trim: zero succeeded using fallocate".to_string(),
        ),
        (
            "protect.write",
            v(&[
                "-D",
                "protect.write=1",
                "--filter=protect",
                "memory",
                "1M",
                "protect=1000-1999",
                "protect=1500-2500",
                "--run",
                &run("h.pwrite(bytearray(4096), 0); h.pwrite(bytearray(5), 999)"),
            ]),
            "region",
            "protect: checking protected region offset 1000 length 1501".to_string(),
        ),
        (
            "ip.rules",
            v(&[
                "-D",
                "ip.rules=1",
                "--filter=ip",
                "memory",
                "1M",
                "allow=anyipv6,allunix",
                "deny=all",
                "allow=uid:0",
                "deny=gid:5",
                "--run",
                &run("h.pread(512, 0)"),
            ]),
            "ip: ",
            "ip: match source with allow=anyunix => yes".to_string(),
        ),
        (
            "extentlist.lookup",
            v(&[
                "-D",
                "extentlist.lookup=1",
                "--filter=extentlist",
                "memory",
                "1M",
                &format!("extentlist={}", arg_path(&list)),
                "--run",
                &run("h.block_status(65536, 100, lambda *a: 0)"),
            ]),
            "extentlist",
            "extentlist lookup: loop i=1 count=61540 offset=4096".to_string(),
        ),
        (
            "cacheextents.cache",
            v(&[
                "-D",
                "cacheextents.cache=1",
                "--filter=cacheextents",
                "memory",
                "1M",
                "--run",
                &run("h.pwrite(b\"x\"*65536, 65536); \
                      h.block_status(65536, 0, lambda *a: 0); \
                      h.block_status(512, 100, lambda *a: 0); \
                      h.block_status(32768, 65536, lambda *a: 0)"),
            ]),
            "cacheextents:",
            "cacheextents: returning from cache".to_string(),
        ),
        (
            "cow.verbose",
            v(&[
                "-D",
                "cow.verbose=1",
                "--filter=cow",
                "memory",
                "1M",
                "--run",
                &run("h.pread(512, 0); h.pwrite(b\"x\"*512, 70000); h.trim(65536, 131072)"),
            ]),
            "cow: blk",
            "cow: blk_write block 1 (offset 65536)".to_string(),
        ),
        (
            "cache.verbose",
            v(&[
                "-D",
                "cache.verbose=1",
                "--filter=cache",
                "memory",
                "1M",
                "--run",
                &run(
                    "h.pread(512, 0); h.pwrite(b\"x\"*512, 70000); h.cache(4096, 200000); \
                      h.flush()",
                ),
            ]),
            "cache: ",
            "cache: writeback block 1 (offset 65536)".to_string(),
        ),
        (
            "example2.extra",
            v(&[
                "-D",
                "example2.extra=1",
                "example2",
                &format!("file={}", arg_path(&img)),
                "--run",
                &run("h.pread(512, 0)"),
            ]),
            "extra",
            "extra debugging: statbuf.st_size = 1048576".to_string(),
        ),
        (
            "rate.bucket",
            v(&[
                "-D",
                "rate.bucket=1",
                "--filter=rate",
                "memory",
                "1M",
                "rate=100M",
                "--run",
                &run("h.pread(4096, 0)"),
            ]),
            "bucket",
            "bucket read (global limit): deducting 32768 tokens".to_string(),
        ),
    ]
}

fn arg_path(p: &Path) -> &str {
    path_str(p)
}

#[test]
fn documented_debug_flags_print_what_nbdkit_prints() {
    skip_unless!("nbdsh", "python3-nbd");
    let dir = TempDir::new();
    for (what, args, pattern, must) in flag_cases(&dir) {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let ours = flag_output(&nbdkit_bin(), &args, pattern);
        assert!(
            ours.contains(&must),
            "-D {what}: missing `{must}` in:\n{}",
            ours.join("\n")
        );
        // Without the flag (the first two arguments), none of it.
        let quiet = flag_output(&nbdkit_bin(), &args[2..], &must);
        assert!(quiet.is_empty(), "-D {what} off: {quiet:?}");
    }
}

#[test]
fn documented_debug_flags_print_what_the_reference_prints() {
    if !reference_installed() {
        return;
    }
    skip_unless!("nbdsh", "python3-nbd");
    let dir = TempDir::new();
    for (what, args, pattern, _) in flag_cases(&dir) {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut ours = flag_output(&nbdkit_bin(), &args, pattern);
        let mut theirs = flag_output(Path::new(REFERENCE), &args, pattern);
        match what {
            // The reference prints these from its own start-up too.
            "data.AST" => {
                let ast = |v: Vec<String>| -> Vec<String> {
                    let start = v.iter().position(|l| l.starts_with("BEGIN AST"));
                    let end = v.iter().position(|l| l == "END AST");
                    match (start, end) {
                        (Some(s), Some(e)) => v[s..=e].to_vec(),
                        _ => v,
                    }
                };
                ours = ast(ours);
                theirs = ast(theirs);
            }
            // Sleeps and tokens depend on timing; compare the first lines.
            "rate.bucket" => {
                ours.truncate(4);
                theirs.truncate(4);
            }
            // The reference's cow/cache print the size twice.
            "cow.verbose" | "cache.verbose" => {
                let keep = |l: &String| !l.contains("size") && !l.contains("temporary");
                ours.retain(keep);
                theirs.retain(keep);
            }
            _ => {}
        }
        theirs.retain(|l| !l.starts_with("register"));
        assert_eq!(
            ours,
            theirs,
            "-D {what}\n--- ours ---\n{}\n--- reference ---\n{}",
            ours.join("\n"),
            theirs.join("\n")
        );
    }
}

// ---------------------------------------------------------------------------
// Negotiation

/// The negotiation lines of a run: `newstyle negotiation: ...` and
/// `replying to ...`.
fn negotiation_lines(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter_map(debug_line)
        .map(|(_, m)| m)
        .filter(|m| m.starts_with("newstyle negotiation: ") || m.starts_with("replying to "))
        .map(String::from)
        .collect()
}

const NEGOTIATE: &str = "nbdinfo --map \"$uri\" >/dev/null; \
     nbdinfo --list \"$uri\" >/dev/null; \
     nbdsh --opt-mode -u \"$uri\" -c '\
     h.add_meta_context(\"base:\"); \
     h.add_meta_context(\"qemu:dirty\"); \
     h.opt_list_meta_context(lambda *a: 0); \
     h.opt_abort()'";

#[test]
fn negotiation_is_logged_as_nbdkit_does() {
    skip_unless!("nbdinfo", "nbdsh", "python3-nbd");
    let out = stderr_of(
        &nbdkit_bin(),
        &["-U", "-", "-v", "memory", "1M", "--run", NEGOTIATE],
    );
    assert!(out.success(), "{}", out.describe());
    let got = negotiation_lines(&out.stderr);
    let want_in_order = [
        "newstyle negotiation: flags: global 0x3",
        "newstyle negotiation: client flags: 0x3",
        "newstyle negotiation: NBD_OPT_STRUCTURED_REPLY: client requested structured replies",
        "replying to NBD_OPT_STRUCTURED_REPLY with NBD_REP_ACK",
        "newstyle negotiation: NBD_OPT_SET_META_CONTEXT: client requested export ''",
        "newstyle negotiation: NBD_OPT_SET_META_CONTEXT: set count: 1",
        "newstyle negotiation: NBD_OPT_SET_META_CONTEXT: set base:allocation",
        "newstyle negotiation: NBD_OPT_SET_META_CONTEXT: replying with base:allocation id 1",
        "replying to NBD_OPT_SET_META_CONTEXT with NBD_REP_ACK",
        "newstyle negotiation: NBD_OPT_SET_META_CONTEXT: reply complete",
        "newstyle negotiation: NBD_OPT_GO: client requested export ''",
        "replying to NBD_OPT_GO with NBD_REP_ACK",
        "newstyle negotiation: NBD_OPT_LIST: advertising exports",
        "replying to NBD_OPT_LIST with NBD_REP_ACK",
        "newstyle negotiation: NBD_OPT_INFO: NBD_INFO_DESCRIPTION: no description to send",
        "newstyle negotiation: NBD_OPT_LIST_META_CONTEXT: query count: 2",
        "newstyle negotiation: NBD_OPT_LIST_META_CONTEXT: query base:",
        "newstyle negotiation: NBD_OPT_LIST_META_CONTEXT: replying with base:allocation id 0",
        "newstyle negotiation: NBD_OPT_LIST_META_CONTEXT: query qemu:dirty",
        "replying to NBD_OPT_ABORT with NBD_REP_ACK",
    ];
    let mut at = 0;
    for w in want_in_order {
        match got[at..].iter().position(|m| m == w) {
            Some(i) => at += i + 1,
            None => panic!("missing or out of order `{w}` in:\n{}", got.join("\n")),
        }
    }
}

#[test]
fn negotiation_lines_are_the_references() {
    if !reference_installed() {
        return;
    }
    skip_unless!("nbdinfo", "nbdsh", "python3-nbd");
    let args = ["-U", "-", "-v", "memory", "1M", "--run", NEGOTIATE];
    let ours = stderr_of(&nbdkit_bin(), &args);
    assert!(ours.success(), "{}", ours.describe());
    let theirs = stderr_of(Path::new(REFERENCE), &args);
    assert!(theirs.success(), "{}", theirs.describe());
    let (ours, theirs) = (
        negotiation_lines(&ours.stderr),
        negotiation_lines(&theirs.stderr),
    );
    assert_eq!(
        ours,
        theirs,
        "--- ours ---\n{}\n--- reference ---\n{}",
        ours.join("\n"),
        theirs.join("\n")
    );
}
