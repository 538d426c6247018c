//! Differential tests: the same command against our binary and Debian's C
//! nbdkit (/usr/bin/nbdkit, the reference), comparing what scripts and
//! clients can observe. Each skips with a message when the reference is not
//! installed; the reference is never the server under test elsewhere.
#![allow(clippy::std_instead_of_core)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use nbdkit_tests::*;

/// The callbacks a script plugin sees during `nbdinfo`, in order.
fn call_sequence(nbdkit: &Path, dir: &TempDir) -> String {
    let script = dir.join("log.sh");
    write_executable(
        &script,
        "#!/bin/sh\necho \"$1\" >> \"$LOGF\"\ncase \"$1\" in\n  get_size) echo 1M ;;\n  can_write|can_flush|can_trim|can_zero|can_fast_zero|can_extents|can_multi_conn) exit 0 ;;\n  can_fua|can_cache) echo native ;;\n  pread) dd if=/dev/zero count=$3 iflag=count_bytes 2>/dev/null ;;\n  *) exit 2 ;;\nesac\n",
    );
    let log = dir.join(format!(
        "{}.log",
        nbdkit.display().to_string().replace('/', "_")
    ));
    let out = run(
        Command::new(nbdkit)
            .env("LOGF", &log)
            .args(["-U", "-", "sh"])
            .arg(&script)
            .args(["--run", "nbdinfo \"$uri\" >/dev/null"]),
        Duration::from_secs(60),
    );
    assert!(out.success(), "{}", out.describe());
    std::fs::read_to_string(&log).unwrap()
}

#[test]
fn script_plugins_see_the_same_calls_in_the_same_order() {
    if !reference_installed() || !skip_unless("nbdinfo") {
        return;
    }
    let dir = TempDir::new();
    // Compare up to the last data call: how quickly the reference tears
    // down after --run's command exits depends on timing (its child is
    // killed by a signal), so close/unload may or may not be logged.
    let until_data = |log: String| -> String {
        let lines: Vec<&str> = log.lines().collect();
        let end = lines
            .iter()
            .rposition(|l| *l == "pread")
            .map_or(lines.len(), |i| i + 1);
        lines[..end].join("\n")
    };
    let ours = until_data(call_sequence(&nbdkit_bin(), &dir));
    let theirs = until_data(call_sequence(Path::new(REFERENCE), &dir));
    assert!(ours.ends_with("pread"), "{ours}");
    assert_eq!(ours, theirs);
}

#[test]
fn data_plugin_serves_the_same_bytes() {
    if !reference_installed() || !skip_unless("nbdcopy") {
        return;
    }
    let dir = TempDir::new();
    let expr = "1 2 3 @0x100 ( \"hello\" 0xff )*100 @^512 le32:0x12345678 be16:0xabcd";
    let copy = |bin: &Path, name: &str| -> Vec<u8> {
        let out_file = dir.join(name);
        let r = run(
            Command::new(bin)
                .args(["-U", "-", "data", expr, "size=8K", "--run"])
                .arg(format!("nbdcopy \"$uri\" {}", path_str(&out_file))),
            Duration::from_secs(60),
        );
        assert!(r.success(), "{}", r.describe());
        std::fs::read(&out_file).unwrap()
    };
    assert_eq!(
        copy(&nbdkit_bin(), "ours.img"),
        copy(Path::new(REFERENCE), "ref.img")
    );
}

/// `nbdinfo --json` without the URI, for a command line.
/// `nbdinfo --json` of a server started with `args`, without the `uri`
/// line; `Err` with the whole output when the server or nbdinfo failed.
fn nbdinfo_json(nbdkit: &Path, args: &[&str]) -> Result<String, String> {
    let out = run(
        Command::new(nbdkit)
            .args(["-U", "-"])
            .args(args)
            .args(["--run", "nbdinfo --json \"$uri\""]),
        Duration::from_secs(60),
    );
    if !out.success() || !out.stdout.contains("\"export-size\"") {
        return Err(out.describe());
    }
    Ok(out
        .stdout
        .lines()
        .filter(|l| !l.contains("\"uri\""))
        .collect::<Vec<_>>()
        .join("\n"))
}

#[test]
fn nbdinfo_sees_the_same_exports() {
    if !reference_installed() || !skip_unless("nbdinfo") {
        return;
    }
    let cases: &[&[&str]] = &[
        &["memory", "1M"],
        &["-r", "memory", "1M"],
        &["null", "1M"],
        &["full", "1M"],
        &["zero"],
        &["pattern", "1M"],
        &["random", "1M", "seed=1"],
        &["sparse-random", "1M", "seed=1"],
        &["info"],
        &[
            "--filter=offset",
            "--filter=truncate",
            "pattern",
            "8M",
            "offset=1M",
            "truncate=3M",
        ],
        &["--filter=cow", "memory", "1M"],
        &["--filter=nozero", "memory", "1M"],
        &["--filter=noextents", "memory", "1M"],
        &["--filter=cache", "memory", "1M"],
        &["--filter=blocksize", "memory", "1M", "minblock=4096"],
        &["--filter=readahead", "memory", "1M"],
        &["--filter=nocache", "memory", "1M"],
        &["--filter=noparallel", "memory", "1M"],
        &["--filter=fua", "memory", "1M", "fuamode=emulate"],
        &["--filter=delay", "--filter=error", "memory", "1M"],
        &["--filter=protect", "memory", "1M", "protect=0-1023"],
        &["--filter=multi-conn", "memory", "1M"],
        &["--filter=cacheextents", "memory", "1M"],
        &["--filter=checkwrite", "memory", "1M"],
        &["--filter=swab", "pattern", "1M"],
        &["--filter=exportname", "memory", "1M", "exportname=a"],
        &["--filter=limit", "memory", "1M"],
        &["--filter=truncate", "memory", "1M", "round-up=4096"],
        &[
            "--filter=blocksize-policy",
            "memory",
            "1M",
            "blocksize-preferred=4096",
        ],
    ];
    for args in cases {
        // A plugin or filter the reference lacks is skipped, never
        // compared against an error message.
        let theirs = match nbdinfo_json(Path::new(REFERENCE), args) {
            Ok(t) => t,
            Err(e) => {
                println!("SKIP: nbdkit {}: the reference fails: {e}", args.join(" "));
                continue;
            }
        };
        let ours = nbdinfo_json(&nbdkit_bin(), args)
            .unwrap_or_else(|e| panic!("nbdkit {}: {e}", args.join(" ")));
        assert_eq!(ours, theirs, "nbdkit {}", args.join(" "));
    }
}

#[test]
fn dump_plugin_matches_for_plugins_of_the_same_api() {
    if !reference_installed() {
        return;
    }
    // split, partitioning, floppy and iso are old-API (v1) plugins in 1.32.5
    // and print has__pread_v1; data and memory print mlock/zstd support,
    // which this build does not have.
    let (mut compared, mut skipped) = (0, 0);
    for plugin in [
        "null",
        "full",
        "pattern",
        "file",
        "random",
        "sparse-random",
        "info",
        "sh",
        "eval",
        "linuxdisk",
        "tmpdisk",
        "ondemand",
        "example2",
        "example3",
        "zero",
    ] {
        let dump = |bin: &Path| -> Result<String, String> {
            let out = run(
                Command::new(bin).args([plugin, "--dump-plugin"]),
                Duration::from_secs(30),
            );
            if !out.success() {
                return Err(out.describe());
            }
            let lines = out
                .stdout
                .lines()
                .filter(|l| !l.starts_with("path=") && !l.starts_with("version="))
                .collect::<Vec<_>>();
            assert!(
                lines.iter().any(|l| l.starts_with("name=")),
                "no name= line: {}",
                out.describe()
            );
            Ok(lines.join("\n"))
        };
        // Debian ships some plugins in other packages (example2 is in
        // nbdkit-plugin-dev): a plugin the reference cannot load is skipped,
        // never compared against nothing.
        let theirs = match dump(Path::new(REFERENCE)) {
            Ok(t) => t,
            Err(e) => {
                println!("SKIP: {plugin}: the reference cannot load it: {e}");
                skipped += 1;
                continue;
            }
        };
        let ours = dump(&nbdkit_bin()).unwrap_or_else(|e| panic!("{plugin}: {e}"));
        assert_eq!(ours, theirs, "{plugin}");
        compared += 1;
    }
    println!("compared {compared} plugins, skipped {skipped}");
    assert!(
        compared > 0,
        "no plugin could be compared with the reference"
    );
}
