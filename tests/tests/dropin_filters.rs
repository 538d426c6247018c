//! Filters behave as C nbdkit's do (issue 9, item 5): export names,
//! descriptions and `NBD_OPT_INFO` through exportname, ext2 and
//! tls-fallback; block status through the filters that move or resize
//! data; the calls fua, multi-conn and readahead make to the layer below;
//! retry and retry-request. Most tests run the same client against our
//! binary and Debian's C nbdkit (/usr/bin/nbdkit, the reference) and
//! compare what the client saw; each skips with a message when the
//! reference or a tool is missing. Where the reference has a bug, the test
//! checks what nbdkit's manual promises instead, and says so.
#![allow(clippy::std_instead_of_core)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use nbdkit_tests::*;

const REFERENCE: &str = "/usr/bin/nbdkit";
const PYTHON: &str = "/usr/bin/python3";

/// True when the reference nbdkit is installed (else prints a skip).
fn reference() -> bool {
    if Path::new(REFERENCE).exists() {
        true
    } else {
        println!("SKIP: the reference nbdkit ({REFERENCE}) is not installed");
        false
    }
}

/// True when the reference has filter `name` (else prints a skip).
fn reference_filter(name: &str) -> bool {
    let ok = run(
        Command::new(REFERENCE).args([&format!("--filter={name}"), "null", "--version"]),
        Duration::from_secs(30),
    )
    .success();
    if !ok {
        println!("SKIP: the reference nbdkit has no {name} filter");
    }
    ok
}

/// Quote `s` for the shell.
fn sq(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// `BIN -U - ARGS --run RUN` with `env`: what the `--run` command printed
/// on stdout, and the whole output for messages.
fn served(bin: &Path, args: &[String], run_cmd: &str, env: &[(&str, String)]) -> (String, String) {
    let mut cmd = Command::new(bin);
    cmd.args(["-U", "-"]).args(args).args(["--run", run_cmd]);
    cmd.env_remove("PYTHONHOME").env_remove("PYTHONPATH");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = run(&mut cmd, Duration::from_secs(120));
    (out.stdout.clone(), out.describe())
}

/// Run the same client against ours and the reference; assert that it saw
/// the same; return what it saw.
#[track_caller]
fn assert_same(args: &[String], run_cmd: &str, env: &[(&str, String)]) -> String {
    let (ours, ours_all) = served(&nbdkit_bin(), args, run_cmd, env);
    let (theirs, theirs_all) = served(Path::new(REFERENCE), args, run_cmd, env);
    assert!(
        ours == theirs,
        "`nbdkit {}` differs from the reference\n=== ours ===\n{ours_all}\n=== reference ===\n{theirs_all}",
        args.join(" ")
    );
    ours
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// The `--run` command for the export probe with `names`.
fn exports_probe(names: &[&str]) -> String {
    let mut c = format!(
        "{PYTHON} {} \"$unixsocket\"",
        sq(path_str(&scripts_dir().join("dropin_exports.py")))
    );
    for n in names {
        c.push(' ');
        c.push_str(&sq(n));
    }
    c
}

// ---------------------------------------------------------------------------
// Export names, descriptions and NBD_OPT_INFO
// ---------------------------------------------------------------------------

/// A script plugin with a named default export, a listed pair of exports
/// with descriptions, and a description that names the opened export; it
/// logs every call to `$LOG` when set.
const EXPORTS_PLUGIN: &str = r#"#!/bin/sh
[ -n "$LOG" ] && echo "$@" >> "$LOG"
case "$1" in
  thread_model) echo parallel ;;
  get_size) echo 1M ;;
  pread) dd if=/dev/zero count=$3 iflag=count_bytes 2>/dev/null ;;
  default_export) echo plugname ;;
  list_exports) printf 'INTERLEAVED\nplugname\nplugin desc\nother\nother desc\n' ;;
  open) echo "$3" ;;
  export_description) echo "desc of $2" ;;
  can_write) exit 0 ;;
  pwrite) cat >/dev/null ;;
  *) exit 2 ;;
esac
"#;

#[test]
fn exportname_lists_names_and_descriptions_as_nbdkit() {
    if !reference() || !skip_unless("python3-nbd") {
        return;
    }
    let dir = TempDir::new();
    let plugin = dir.join("exports.sh");
    write_executable(&plugin, EXPORTS_PLUGIN);
    let modes: &[&[&str]] = &[
        &[],
        &["exportname-list=defaultonly"],
        &["exportname-list=defaultonly", "default-export=xx"],
        &["exportname-list=empty"],
        &["exportname-list=error"],
        &["exportname-list=explicit", "exportname=a", "exportname="],
        // Strict: "" is allowed only when listed, and then is the
        // plugin's default export.
        &["exportname-strict=true", "exportname=a"],
        &["exportname-strict=true", "exportname=", "exportname=a"],
        &["exportname-strict=true", "exportname=", "default-export=a"],
        &[
            "exportname-list=defaultonly",
            "exportname-strict=true",
            "exportname=a",
        ],
        &[
            "exportname-list=defaultonly",
            "exportname-strict=true",
            "exportname=",
        ],
        &["exportdesc=fixed:FIX"],
        &["exportdesc=fixed:"],
        &["exportdesc=none"],
        &["exportdesc=script:echo \"script $name\""],
    ];
    for plugin_args in [
        vec!["sh".to_string(), path_str(&plugin).to_string()],
        strings(&["memory", "1M"]),
    ] {
        for mode in modes {
            let mut args = strings(&["--filter=exportname"]);
            args.extend(plugin_args.iter().cloned());
            args.extend(strings(mode));
            let seen = assert_same(&args, &exports_probe(&["", "a", "other"]), &[]);
            assert!(seen.starts_with("list:"), "{seen}");
        }
    }
}

#[test]
fn exportname_strict_default_export_is_resolved_by_the_plugin() {
    // With "" listed, nbdkit opens the plugin with "" and the plugin's own
    // default export (here "plugname") is what it serves.
    if !skip_unless("python3-nbd") {
        return;
    }
    let dir = TempDir::new();
    let plugin = dir.join("exports.sh");
    write_executable(&plugin, EXPORTS_PLUGIN);
    let srv = Server::start([
        "--filter=exportname",
        "sh",
        path_str(&plugin),
        "exportname-strict=true",
        "exportname=",
    ]);
    let out = run(
        Command::new(PYTHON)
            .arg(scripts_dir().join("dropin_exports.py"))
            .arg(srv.socket())
            .args(["", "a"]),
        Duration::from_secs(60),
    );
    assert!(out.success(), "{}", out.describe());
    assert!(
        out.stdout
            .contains("info '': size=1048576 canon='' desc='desc of plugname'"),
        "{}\n{}",
        out.stdout,
        srv.stderr()
    );
    assert!(out.stdout.contains("go 'a': error 2"), "{}", out.stdout);
}

#[test]
fn exportname_description_script_output_is_the_description() {
    // An empty output is an empty description (not none); one trailing
    // newline is dropped; the exit status does not matter.
    if !reference() || !skip_unless("python3-nbd") {
        return;
    }
    for script in ["true", "printf 'l1\\nl2\\n\\n'", "echo \"$name\"; exit 3"] {
        let args = strings(&[
            "--filter=exportname",
            "memory",
            "1M",
            &format!("exportdesc=script:{script}"),
        ]);
        let seen = assert_same(&args, &exports_probe(&["", "a b"]), &[]);
        if script == "true" {
            assert!(
                seen.contains("info 'a b': size=1048576 canon='a b' desc=''"),
                "{seen}"
            );
        }
    }
}

#[test]
fn exportname_asks_each_layer_for_its_default_once_per_connection() {
    // The plugin's calls, in order, are nbdkit's (default_export at most
    // once per connection, open with the resolved name).
    if !reference() || !skip_unless("python3-nbd") {
        return;
    }
    let dir = TempDir::new();
    let plugin = dir.join("exports.sh");
    write_executable(&plugin, EXPORTS_PLUGIN);
    for mode in [
        &[][..],
        &["exportname-strict=true", "exportname=", "exportname=a"][..],
        &["exportname-list=defaultonly"][..],
    ] {
        let mut calls = Vec::new();
        for (bin, tag) in [
            (nbdkit_bin(), "ours"),
            (Path::new(REFERENCE).to_path_buf(), "ref"),
        ] {
            let log = dir.join(format!("{tag}.log"));
            let _ = std::fs::remove_file(&log);
            let mut args = strings(&["--filter=exportname", "sh", path_str(&plugin)]);
            args.extend(strings(mode));
            served(
                &bin,
                &args,
                &exports_probe(&["", "a"]),
                &[("LOG", path_str(&log).to_string())],
            );
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            calls.push(
                text.lines()
                    .filter(|l| {
                        ["preconnect", "list_exports", "default_export", "open"]
                            .iter()
                            .any(|c| l.split(' ').next() == Some(c))
                    })
                    .collect::<Vec<_>>()
                    .join("\n"),
            );
        }
        assert_eq!(
            calls[0], calls[1],
            "mode {mode:?}: ours, then the reference"
        );
        assert!(
            calls[0].contains("open false plugname false"),
            "{}",
            calls[0]
        );
    }
}

/// A PSK file for user alice, made with psktool.
fn psk_file(dir: &TempDir) -> Option<String> {
    if !skip_unless("psktool") {
        return None;
    }
    let f = dir.join("keys.psk");
    run_tool("psktool", ["-u", "alice", "-p", path_str(&f)]).assert_success();
    Some(path_str(&f).to_string())
}

#[test]
fn tls_fallback_opens_the_plugin_only_for_tls_clients() {
    // A plaintext client gets the 512-byte message for any export name,
    // and the plugin is not opened for it (here a plugin whose default
    // export cannot be opened, and a script that logs its calls); a TLS
    // client sees the plugin's exports.
    if !reference() || !skip_unless("python3-nbd") {
        return;
    }
    let dir = TempDir::new();
    let Some(psk) = psk_file(&dir) else { return };
    let files = dir.join("files");
    std::fs::create_dir(&files).unwrap();
    std::fs::write(files.join("file1"), vec![1u8; 4096]).unwrap();
    let tls = [
        "--tls=on".to_string(),
        format!("--tls-psk={psk}"),
        "--filter=tls-fallback".to_string(),
    ];
    let mut args = tls.to_vec();
    args.extend(strings(&[
        "file",
        &format!("dir={}", path_str(&files)),
        "tlsreadme=hello",
    ]));
    let seen = assert_same(&args, &exports_probe(&["", "file1", "nosuch"]), &[]);
    assert!(
        seen.contains("info '': size=512 canon='' desc=None"),
        "{seen}"
    );
    assert!(seen.contains("go 'nosuch': size=512"), "{seen}");

    let plugin = dir.join("exports.sh");
    write_executable(&plugin, EXPORTS_PLUGIN);
    let log = dir.join("calls.log");
    let mut args = tls.to_vec();
    args.extend(strings(&["sh", path_str(&plugin)]));
    let (out, all) = served(
        &nbdkit_bin(),
        &args,
        &exports_probe(&["", "a"]),
        &[("LOG", path_str(&log).to_string())],
    );
    assert!(out.contains("go 'a': size=512"), "{all}");
    let calls = std::fs::read_to_string(&log).unwrap();
    assert!(
        !calls.lines().any(|l| l.starts_with("open")),
        "the plugin was opened for a plaintext client:\n{calls}"
    );

    let mut args = tls.to_vec();
    args.extend(strings(&["sh", path_str(&plugin)]));
    let seen = assert_same(&args, &exports_probe(&["", "a"]), &[("PSK", psk.clone())]);
    assert!(
        seen.contains("canon='plugname' desc='desc of plugname'"),
        "{seen}"
    );
}

/// An ext2 image made with `mke2fs -d` holding /hello.txt and
/// /sub/data.bin (100000 bytes); `None` (after a skip message) without
/// mke2fs.
fn ext2_image(dir: &TempDir) -> Option<std::path::PathBuf> {
    if !skip_unless("mke2fs") {
        return None;
    }
    let src = dir.join("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("hello.txt"), "hello\n").unwrap();
    write_random_file(&src.join("sub/data.bin"), 100_000, 7);
    let img = dir.join("fs.img");
    run_tool(
        "mke2fs",
        [
            "-q",
            "-t",
            "ext2",
            "-d",
            path_str(&src),
            path_str(&img),
            "4M",
        ],
    )
    .assert_success();
    Some(img)
}

#[test]
fn ext2_exportname_serves_the_named_file() {
    // Relative names are taken from the root; nothing is listed; "" is
    // refused; the flags are nbdkit's (no trim; cache by reading).
    if !reference() || !reference_filter("ext2") || !skip_unless("python3-nbd") {
        return;
    }
    let dir = TempDir::new();
    let Some(img) = ext2_image(&dir) else { return };
    let names = [
        "",
        "/hello.txt",
        "hello.txt",
        "sub/data.bin",
        "//sub/data.bin",
        "/nosuch",
        "/sub",
    ];
    for extra in [
        &[][..],
        &[
            "--filter=exportname",
            "exportname-list=explicit",
            "exportname=hello.txt",
        ][..],
    ] {
        let mut args = Vec::new();
        if !extra.is_empty() {
            args.push(extra[0].to_string());
        }
        args.extend(strings(&[
            "--filter=ext2",
            "file",
            path_str(&img),
            "ext2file=exportname",
        ]));
        args.extend(extra.iter().skip(1).map(|s| s.to_string()));
        let seen = assert_same(&args, &exports_probe(&names), &[]);
        assert!(seen.contains("info 'hello.txt': size=6"), "{seen}");
        assert!(seen.contains("go 'sub/data.bin': size=100000"), "{seen}");
    }
    // nbdinfo --json on a relative name, and --list.
    if !skip_unless("nbdinfo") {
        return;
    }
    let args = strings(&[
        "--filter=ext2",
        "file",
        path_str(&img),
        "ext2file=exportname",
    ]);
    let seen = assert_same(
        &args,
        "nbdinfo --json \"nbd+unix:///hello.txt?socket=$unixsocket\" | grep -v '\"uri\"'; nbdinfo --list \"$uri\"",
        &[],
    );
    assert!(seen.contains("\"export-size\": 6"), "{seen}");
}
