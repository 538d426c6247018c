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

const PYTHON: &str = "/usr/bin/python3";

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

/// `BIN -U - ARGS --run RUN` with `env`.
fn run_served(bin: &Path, args: &[String], run_cmd: &str, env: &[(&str, String)]) -> Output {
    let mut cmd = Command::new(bin);
    cmd.args(["-U", "-"]).args(args).args(["--run", run_cmd]);
    cmd.env_remove("PYTHONHOME").env_remove("PYTHONPATH");
    for (k, v) in env {
        cmd.env(k, v);
    }
    run(&mut cmd, Duration::from_secs(300))
}

/// [`run_served`]: what the `--run` command printed on stdout, and the
/// whole output for messages.
fn served(bin: &Path, args: &[String], run_cmd: &str, env: &[(&str, String)]) -> (String, String) {
    let out = run_served(bin, args, run_cmd, env);
    (out.stdout.clone(), out.describe())
}

/// `FILTERS... sh PLUGIN PARAMS...`.
fn plugin_args(filters: &[&str], plugin: &Path, params: &[&str]) -> Vec<String> {
    let mut args = strings(filters);
    args.extend(strings(&["sh", path_str(plugin)]));
    args.extend(strings(params));
    args
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
    if !reference_installed() || !skip_unless("python3-nbd") {
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
    if !reference_installed() || !skip_unless("python3-nbd") {
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
    if !reference_installed() || !skip_unless("python3-nbd") {
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
    if !reference_installed() || !skip_unless("python3-nbd") {
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
    if !reference_installed() || !reference_filter("ext2") || !skip_unless("python3-nbd") {
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

// ---------------------------------------------------------------------------
// Block status through filters that move or resize data
// ---------------------------------------------------------------------------

/// A script plugin with irregular extents (the whole map on every call,
/// or with `$ONE` set only the extent at the offset asked for), serving
/// `$IMG` (else 1M of zeroes) and accepting writes it throws away.
const EXTENTS_PLUGIN: &str = r#"#!/bin/bash
MAP='0 1000 data
1000 4000 hole,zero
5000 65000 zero
70000 130000 data
200000 300000 hole
500000 548576 hole,zero
1048576 100000 data
1148576 2000000 hole,zero
3148576 1000000 data
4148576 10000000 hole,zero'
case "$1" in
  thread_model) echo parallel ;;
  get_size) if [ -n "$IMG" ]; then stat -c %s "$IMG"; else echo 1M; fi ;;
  pread) if [ -n "$IMG" ]; then dd if="$IMG" skip=$4 count=$3 iflag=skip_bytes,count_bytes 2>/dev/null
         else dd if=/dev/zero count=$3 iflag=count_bytes 2>/dev/null; fi ;;
  can_extents|can_write|can_trim|can_zero|can_flush|trim|zero|flush) exit 0 ;;
  pwrite) cat >/dev/null ;;
  extents)
    echo "$MAP" | while read o l t; do
      [ "$t" = data ] && t=
      if [ -z "$ONE" ] || { [ "$o" -le "$4" ] && [ "$4" -lt $((o + l)) ]; }; then
        echo "$o $l $t"
      fi
    done ;;
  *) exit 2 ;;
esac
"#;

/// The `--run` command for the block status probe.
fn block_status_probe(extra: &[&str]) -> String {
    let mut c = format!(
        "{PYTHON} {} \"$unixsocket\"",
        sq(path_str(&scripts_dir().join("dropin_block_status.py")))
    );
    for a in extra {
        c.push(' ');
        c.push_str(&sq(a));
    }
    c
}

/// Compare block status through `filters` (then the extents plugin and
/// `params`) with the reference.
fn assert_same_block_status(
    plugin: &Path,
    filters: &[&str],
    params: &[&str],
    probe: &[&str],
    env: &[(&str, String)],
) -> String {
    let args = plugin_args(filters, plugin, params);
    let seen = assert_same(&args, &block_status_probe(probe), env);
    assert!(seen.starts_with("size "), "{seen}");
    seen
}

#[test]
fn block_status_through_offset_and_size_filters_matches_nbdkit() {
    // nbdkit lets extents run past the request (up to the end of the
    // export, or of what the filter asked the layer below for), and
    // blocksize reports whole blocks as nbdkit_extents_aligned does.
    if !reference_installed() || !skip_unless("python3-nbd") {
        return;
    }
    let dir = TempDir::new();
    let plugin = dir.join("extents.sh");
    write_executable(&plugin, EXTENTS_PLUGIN);
    let cases: &[(&[&str], &[&str])] = &[
        (&["--filter=blocksize"], &[]),
        (&["--filter=blocksize"], &["minblock=4096"]),
        (&["--filter=blocksize"], &["minblock=512", "maxlen=4096"]),
        (&["--filter=blocksize"], &["minblock=65536"]),
        (&["--filter=blocksize"], &["maxlen=4096"]),
        (&["--filter=offset"], &["offset=1", "range=600000"]),
        (&["--filter=offset"], &["offset=4096"]),
        (&["--filter=truncate"], &["truncate=700001"]),
        (
            &["--filter=truncate"],
            &["round-up=4096", "truncate=1000001"],
        ),
        (&["--filter=swab"], &["swab-bits=32"]),
        (
            &["--filter=blocksize-policy"],
            &["blocksize-minimum=4096", "blocksize-error-policy=allow"],
        ),
        (
            &["--filter=blocksize-policy"],
            &["blocksize-minimum=4096", "blocksize-error-policy=error"],
        ),
    ];
    for (filters, params) in cases {
        assert_same_block_status(&plugin, filters, params, &[], &[]);
    }
    // A layer below that answers one extent at a time: a split first
    // block needs a second question.
    for params in [
        &["minblock=4096"][..],
        &["minblock=2048", "maxlen=8192"][..],
    ] {
        assert_same_block_status(
            &plugin,
            &["--filter=blocksize"],
            params,
            &[],
            &[("ONE", "1".into())],
        );
    }
    // Minimum block size from the layer below.
    let with_bs = EXTENTS_PLUGIN.replace(
        "  *) exit 2 ;;",
        "  block_size) echo 4096 4096 65536 ;;\n  *) exit 2 ;;",
    );
    let plugin_bs = dir.join("extents-bs.sh");
    write_executable(&plugin_bs, &with_bs);
    assert_same_block_status(&plugin_bs, &["--filter=blocksize"], &[], &[], &[]);
}

#[test]
fn block_status_through_cow_matches_nbdkit() {
    // Whole overlay blocks, past the request to the end of its last
    // block; with REQ_ONE one overlay block of what was written.
    if !reference_installed() || !skip_unless("python3-nbd") {
        return;
    }
    let dir = TempDir::new();
    let plugin = dir.join("extents.sh");
    write_executable(&plugin, EXTENTS_PLUGIN);
    for params in [&[][..], &["cow-block-size=4096"][..]] {
        assert_same_block_status(&plugin, &["--filter=cow"], params, &[], &[]);
        assert_same_block_status(&plugin, &["--filter=cow"], params, &["", "write"], &[]);
    }
}

#[test]
fn block_status_through_cache_matches_nbdkit() {
    // What the layer below says, past the request. (In writeback mode
    // nbdkit reports blocks written but not yet flushed with the plugin's
    // stale status, calling written data a hole: that is a bug, and ours
    // reports them as data; writethrough, where the two agree, is
    // compared.)
    if !reference_installed() || !skip_unless("python3-nbd") {
        return;
    }
    let dir = TempDir::new();
    let plugin = dir.join("extents.sh");
    write_executable(&plugin, EXTENTS_PLUGIN);
    assert_same_block_status(&plugin, &["--filter=cache"], &[], &[], &[]);
    assert_same_block_status(
        &plugin,
        &["--filter=cache"],
        &["cache=writethrough"],
        &["", "write"],
        &[],
    );
    // Writeback: the data written is never called a hole.
    let srv = Server::start(["--filter=cache", "sh", path_str(&plugin)]);
    let out = run_python_code(
        r#"
import nbd, sys
h = nbd.NBD(); h.add_meta_context("base:allocation"); h.connect_unix(sys.argv[1])
h.pwrite(b"\x55" * 512, 300000)
out = []
h.block_status(512, 300000, lambda m, o, e, err: out.append(e) or 0)
print(out[0][1] & 3)
"#,
        [path_str(srv.socket())],
    );
    assert!(out.success(), "{}", out.describe());
    assert_eq!(out.stdout.trim(), "0", "written data reported as a hole");
}

#[test]
fn block_status_through_tar_and_partition_matches_nbdkit() {
    // The entry's (partition's) extents, past the request to its end.
    if !reference_installed() || !skip_unless("python3-nbd") || !skip_unless("tar") {
        return;
    }
    let dir = TempDir::new();
    let plugin = dir.join("extents.sh");
    write_executable(&plugin, EXTENTS_PLUGIN);
    let src = dir.join("src");
    std::fs::create_dir(&src).unwrap();
    write_random_file(&src.join("disk.img"), 8 << 20, 9);
    let tarball = dir.join("t.tar");
    run(
        Command::new("tar")
            .arg("-C")
            .arg(&src)
            .args(["-cf", path_str(&tarball), "disk.img"]),
        Duration::from_secs(60),
    )
    .assert_success();
    let env = [("IMG", path_str(&tarball).to_string())];
    assert_same_block_status(
        &plugin,
        &["--filter=tar"],
        &["tar-entry=disk.img"],
        &[],
        &env,
    );

    if !skip_unless("sfdisk") {
        return;
    }
    let img = dir.join("part.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    let sf = run_with_input(
        Command::new(find_tool("sfdisk").unwrap()).args(["-q", path_str(&img)]),
        Some(b"label: dos\nstart=2048, size=4096, type=83\nstart=8192, size=4096, type=83\n"),
        Duration::from_secs(60),
    );
    assert!(sf.success(), "{}", sf.describe());
    let env = [("IMG", path_str(&img).to_string())];
    for p in ["partition=1", "partition=2"] {
        assert_same_block_status(&plugin, &["--filter=partition"], &[p], &[], &env);
    }
}

#[test]
fn swab_and_blocksize_policy_refusals_say_what_nbdkit_says() {
    if !reference_installed() || !skip_unless("python3-nbd") {
        return;
    }
    let dir = TempDir::new();
    let plugin = dir.join("extents.sh");
    write_executable(&plugin, EXTENTS_PLUGIN);
    for (filter, params, want) in [
        (
            "--filter=swab",
            "swab-bits=32",
            "swab: requests to this filter must be aligned",
        ),
        (
            "--filter=blocksize-policy",
            "blocksize-minimum=4096 blocksize-error-policy=error",
            "client extents request rejected: count 100 is smaller than minimum size 4096",
        ),
    ] {
        for bin in [nbdkit_bin(), Path::new(REFERENCE).to_path_buf()] {
            let mut args = vec![filter.to_string(), "sh".into(), path_str(&plugin).into()];
            args.extend(params.split(' ').map(String::from));
            let (_, all) = served(&bin, &args, &block_status_probe(&[]), &[]);
            assert!(all.contains(want), "{}: {all}", bin.display());
        }
    }
}

// ---------------------------------------------------------------------------
// The calls filters make to the layer below
// ---------------------------------------------------------------------------

/// A script plugin that logs (to `$STATE/log`) opens, closes and data
/// calls with the handle they were made on; fails data calls while
/// `$STATE/fail` counts down from above 0, and opens while
/// `$STATE/failopen` does; has the size in `$STATE/size.HANDLE` if that
/// file exists (else 1M); takes its FUA, cache and multi-conn support
/// from `$FUA`, `$CACHE` and `$MC`; does not log closes with `$NOCLOSE`.
const CALLS_PLUGIN: &str = r#"#!/bin/bash
S=$STATE
log() { echo "$*" >> $S/log; }
countdown() {
  n=$(cat $S/$1 2>/dev/null || echo 0)
  [ "$n" -gt 0 ] || return 1
  echo $((n - 1)) > $S/$1
}
fail() { if countdown fail; then echo "injected failure" >&2; exit 1; fi; }
case "$1" in
  thread_model) echo parallel ;;
  open) if countdown failopen; then log "open failed"; echo "injected failure" >&2; exit 1; fi
        n=$(($(cat $S/opens 2>/dev/null || echo 0) + 1)); echo $n > $S/opens
        log "open readonly=$2"; echo h$n ;;
  close) [ -z "$NOCLOSE" ] && log "close $2"; exit 0 ;;
  get_size) if [ -f $S/size.$2 ]; then cat $S/size.$2; else echo 1M; fi ;;
  pread) log "pread $2 $3 $4"; fail; dd if=/dev/zero count=$3 iflag=count_bytes 2>/dev/null ;;
  pwrite) log "pwrite $2 $3 $4 $5"; cat >/dev/null; fail ;;
  flush) log "flush $2"; fail ;;
  trim) log "trim $2 $3 $4 $5"; fail ;;
  zero) log "zero $2 $3 $4 $5"; fail ;;
  cache) log "cache $2 $3 $4"; fail ;;
  extents) log "extents $2 $3 $4 $5"; fail; echo 0 1048576 ;;
  can_write|can_flush|can_trim|can_zero|can_extents|can_fast_zero) exit 0 ;;
  can_multi_conn) [ -n "$MC" ] && exit 0 || exit 3 ;;
  can_fua) echo ${FUA:-native} ;;
  can_cache) echo ${CACHE:-native} ;;
  *) exit 2 ;;
esac
"#;

/// What a workload of `dropin_calls.py` saw and did to the plugin.
struct Calls {
    /// The client's report.
    client: String,
    /// The plugin's log.
    log: String,
    /// The retry filters' debug messages (with `-v`), without prefixes.
    debug: String,
    /// Everything, for messages.
    all: String,
}

/// Run `workload` on `bin` with `args` (filters, the calls plugin and its
/// parameters follow), a fresh state directory prepared by `prepare`, and
/// `env`.
fn calls(
    bin: &Path,
    dir: &TempDir,
    tag: &str,
    args: &[String],
    workload: &str,
    env: &[(&str, String)],
    prepare: &dyn Fn(&Path),
) -> Calls {
    let state = dir.join(format!("state-{tag}"));
    let _ = std::fs::remove_dir_all(&state);
    std::fs::create_dir(&state).unwrap();
    prepare(&state);
    let mut env = env.to_vec();
    env.push(("STATE", path_str(&state).to_string()));
    let run_cmd = format!(
        "{PYTHON} {} {workload} \"$unixsocket\"",
        sq(path_str(&scripts_dir().join("dropin_calls.py")))
    );
    let out = run_served(bin, args, &run_cmd, &env);
    let debug = out
        .stderr
        .lines()
        .filter_map(|l| l.split_once("debug: ").map(|(_, m)| m))
        .filter(|m| {
            [
                "failed: original errno",
                "waiting",
                "could not recover",
                "reopens needed",
            ]
            .iter()
            .any(|k| m.contains(k))
        })
        .collect::<Vec<_>>()
        .join("\n");
    Calls {
        client: out.stdout.clone(),
        log: std::fs::read_to_string(state.join("log")).unwrap_or_default(),
        debug,
        all: out.describe(),
    }
}

/// `calls` on ours and the reference; asserts the client saw the same,
/// the plugin's logs are the same and so are the debug messages.
#[track_caller]
fn assert_same_calls(
    dir: &TempDir,
    plugin: &Path,
    filters: &[&str],
    params: &[&str],
    workload: &str,
    env: &[(&str, String)],
    prepare: &dyn Fn(&Path),
) -> Calls {
    let args = plugin_args(filters, plugin, params);
    let ours = calls(&nbdkit_bin(), dir, "ours", &args, workload, env, prepare);
    let theirs = calls(
        Path::new(REFERENCE),
        dir,
        "ref",
        &args,
        workload,
        env,
        prepare,
    );
    let what = format!("`nbdkit {}` with {env:?}", args.join(" "));
    assert!(
        ours.client == theirs.client && ours.log == theirs.log && ours.debug == theirs.debug,
        "{what} differs from the reference\n=== ours: client ===\n{}\n=== plugin ===\n{}\n=== debug ===\n{}\n=== reference: client ===\n{}\n=== plugin ===\n{}\n=== debug ===\n{}\n=== ours ===\n{}",
        ours.client,
        ours.log,
        ours.debug,
        theirs.client,
        theirs.log,
        theirs.debug,
        ours.all
    );
    ours
}

#[test]
fn multi_conn_flushes_reach_the_plugin_as_in_nbdkit() {
    // Which connections are flushed (emulate), which flushes are skipped
    // as clean (the group's dirtiness decides), and FUA passed down or
    // turned into flushes, for two connections taking turns.
    if !reference_installed() || !skip_unless("python3-nbd") {
        return;
    }
    let dir = TempDir::new();
    let plugin = dir.join("calls.sh");
    write_executable(&plugin, CALLS_PLUGIN);
    let modes: &[(&str, &str)] = &[
        ("emulate", "conn"),
        ("emulate", "fast"),
        ("emulate", "off"),
        ("plugin", "conn"),
        ("plugin", "fast"),
        ("unsafe", "connection"),
        ("disable", "fast"),
        ("auto", "conn"),
        ("auto", "off"),
    ];
    for (mode, track) in modes {
        for (mc, fua) in [("", "native"), ("1", "emulate")] {
            let seen = assert_same_calls(
                &dir,
                &plugin,
                &["--filter=multi-conn"],
                &[
                    &format!("multi-conn-mode={mode}"),
                    &format!("multi-conn-track-dirty={track}"),
                ],
                "multi-conn",
                // Which connection's handle closes first is a race in
                // nbdkit (it closes after the client sees the end).
                &[
                    ("MC", mc.into()),
                    ("FUA", fua.into()),
                    ("NOCLOSE", "1".into()),
                ],
                &|_| {},
            );
            assert!(seen.log.contains("flush h1"), "{}", seen.all);
        }
    }
}

#[test]
fn readahead_prefetches_what_nbdkit_prefetches() {
    // One prefetch per read, of the window after it (32K, doubling when a
    // read starts past the last prefetch, back to 32K when reads go back),
    // on the connection's own handle; nothing unless the plugin caches
    // natively.
    if !reference_installed() || !skip_unless("python3-nbd") {
        return;
    }
    let dir = TempDir::new();
    let plugin = dir.join("calls.sh");
    write_executable(&plugin, CALLS_PLUGIN);
    let args = strings(&["--filter=readahead", "sh", path_str(&plugin)]);
    let prefetches = |c: &Calls| -> Vec<String> {
        c.log
            .lines()
            .filter(|l| l.starts_with("cache"))
            .map(String::from)
            .collect()
    };
    let ours = calls(
        &nbdkit_bin(),
        &dir,
        "ours",
        &args,
        "readahead",
        &[],
        &|_| {},
    );
    let mine = prefetches(&ours);
    // The reads that do not end at the end of the disk ask for one each.
    assert_eq!(mine.len(), 32, "{}", ours.all);
    assert!(
        mine.iter().all(|l| l.starts_with("cache h1 ")),
        "{}",
        ours.log
    );
    assert_eq!(ours.log.matches("open ").count(), 1, "{}", ours.log);
    // The reference may exit before its background thread is done: compare
    // with a complete run of it, or at least with what it did.
    let mut theirs = Vec::new();
    for _ in 0..3 {
        let r = calls(
            Path::new(REFERENCE),
            &dir,
            "ref",
            &args,
            "readahead",
            &[],
            &|_| {},
        );
        theirs = prefetches(&r);
        if theirs.len() == mine.len() {
            break;
        }
    }
    assert!(
        !theirs.is_empty() && mine.starts_with(&theirs),
        "ours:\n{}\nreference:\n{}",
        mine.join("\n"),
        theirs.join("\n")
    );
    for cache in ["emulate", "none"] {
        let c = calls(
            &nbdkit_bin(),
            &dir,
            "ours",
            &args,
            "readahead",
            &[("CACHE", cache.into())],
            &|_| {},
        );
        assert!(prefetches(&c).is_empty(), "{}", c.log);
        assert!(
            c.all
                .contains("readahead: try adding --filter=cache after this filter"),
            "{}",
            c.all
        );
    }
}

#[test]
fn retry_waits_closes_and_reopens_as_nbdkit() {
    // Every failed try waits (the delay restarting for each request and
    // doubling with retry-exponential), then the plugin is closed and
    // opened again; the checks before each try and the debug messages are
    // nbdkit's.
    if !reference_installed() || !skip_unless("python3-nbd") {
        return;
    }
    let dir = TempDir::new();
    let plugin = dir.join("calls.sh");
    write_executable(&plugin, CALLS_PLUGIN);
    let seen = assert_same_calls(
        &dir,
        &plugin,
        &["-v", "--filter=retry"],
        &["retries=2", "retry-delay=1", "retry-exponential=yes"],
        "retry",
        &[],
        &|_| {},
    );
    assert!(
        seen.log
            .starts_with("open readonly=false\npread h1 512 4096\nclose h1\nopen"),
        "{}",
        seen.log
    );
    assert!(
        seen.debug
            .contains("retry 2: waiting 2 seconds before retrying"),
        "{}",
        seen.debug
    );
    // A plugin that comes back smaller after a reopen: the request is
    // past its end, which is a failure like any other.
    assert_same_calls(
        &dir,
        &plugin,
        &["-v", "--filter=retry"],
        &["retries=3", "retry-delay=1"],
        "retry-size",
        &[],
        &|state| {
            for h in ["h2", "h4", "h6"] {
                std::fs::write(state.join(format!("size.{h}")), "512\n").unwrap();
            }
        },
    );
    // Reopens that fail (ESHUTDOWN), and retry-readonly.
    assert_same_calls(
        &dir,
        &plugin,
        &["-v", "--filter=retry"],
        &[
            "retries=2",
            "retry-delay=1",
            "retry-exponential=no",
            "retry-readonly=true",
        ],
        "retry-reopen",
        &[],
        &|_| {},
    );
}

#[test]
fn retry_request_retries_every_request_as_nbdkit() {
    // Every failure is retried after the same delay, fast zero and FUA
    // included, and opens too unless retry-request-open=false.
    if !reference_installed() || !skip_unless("python3-nbd") {
        return;
    }
    let dir = TempDir::new();
    let plugin = dir.join("calls.sh");
    write_executable(&plugin, CALLS_PLUGIN);
    for open in ["true", "false"] {
        let seen = assert_same_calls(
            &dir,
            &plugin,
            &["-v", "--filter=retry-request"],
            &[
                "retry-request-retries=2",
                "retry-request-delay=1",
                &format!("retry-request-open={open}"),
            ],
            "retry-request",
            &[],
            &|_| {},
        );
        assert!(
            seen.debug
                .contains("retry 2: waiting 1 seconds before retrying"),
            "{}",
            seen.all
        );
    }
    let out = run(
        nbdkit_cmd().args([
            "--filter=retry-request",
            "null",
            "retry-request-retries=1001",
            "--run",
            "true",
        ]),
        Duration::from_secs(30),
    );
    assert_eq!(out.code(), Some(1), "{}", out.describe());
    assert!(
        out.stderr
            .contains("retry-request-retries: value too large"),
        "{}",
        out.stderr
    );
}
