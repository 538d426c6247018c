//! Behaviours of plugins and filters that scripts and clients can observe,
//! checked against what C nbdkit does (Debian's /usr/bin/nbdkit is the
//! reference of the differential checks, which skip with a message when it
//! is missing; the binary under test is always ours).
#![allow(clippy::std_instead_of_core)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use nbdkit_tests::*;

const REFERENCE: &str = "/usr/bin/nbdkit";

/// True if the reference nbdkit is installed, else prints a skip message.
fn reference() -> bool {
    if Path::new(REFERENCE).exists() {
        true
    } else {
        println!("SKIP: the reference nbdkit ({REFERENCE}) is not installed");
        false
    }
}

/// Writes an executable script through a child process (no ETXTBSY race
/// with other test threads forking).
fn write_script(path: &Path, text: &str) {
    let out = run_with_input(
        Command::new("/bin/sh")
            .args(["-c", "cat > \"$1\" && chmod 755 \"$1\"", "sh"])
            .arg(path),
        Some(text.as_bytes()),
        CMD_TIMEOUT,
    );
    assert!(out.success(), "{}", out.describe());
}

/// `nbdkit -U - ARGS --run CMD` with `env`, under `bin`.
fn run_captive(bin: &Path, args: &[&str], cmd: &str, env: &[(&str, &Path)]) -> Output {
    let mut c = Command::new(bin);
    c.args(["-U", "-"]).args(args).args(["--run", cmd]);
    for (k, v) in env {
        c.env(k, v);
    }
    c.env("PATH", format!("/usr/bin:{}", std::env::var("PATH").unwrap_or_default()));
    run(&mut c, Duration::from_secs(60))
}

// ---------------------------------------------------------------------------
// Per-connection callbacks: called once per connection, as nbdkit does
// ---------------------------------------------------------------------------

/// A script plugin that logs every call (with its arguments) to `$LOGF`.
const LOGGING_SCRIPT: &str = r#"#!/bin/sh
echo "$@" >> "$LOGF"
case "$1" in
  get_size) echo 1M ;;
  can_write|can_flush|can_trim|can_zero|can_fast_zero|can_extents|can_multi_conn) exit 0 ;;
  can_fua|can_cache) echo native ;;
  pread) dd if=/dev/zero count=$3 iflag=count_bytes 2>/dev/null ;;
  *) exit 2 ;;
esac
"#;

/// The clients whose call logs are compared: each is one connection.
const CLIENTS: &[(&str, &str)] = &[
    ("qemu-nbd --list", "qemu-nbd --list -k \"$unixsocket\" >/dev/null"),
    ("nbdinfo --list", "nbdinfo --list \"$uri\" >/dev/null"),
    ("nbdinfo", "nbdinfo \"$uri\" >/dev/null"),
    ("qemu-io read", "qemu-io -r -f raw -c 'r 0 512' \"$uri\" >/dev/null"),
];

/// The calls a connection made, from `preconnect` on; the trailing
/// `close`/`unload` are dropped (how quickly a server tears down after
/// --run's command exits is timing).
fn connection_calls(bin: &Path, dir: &TempDir, script: &Path, cmd: &str, tag: &str) -> Vec<String> {
    let log = dir.join(format!("{tag}.log"));
    let _ = std::fs::remove_file(&log);
    let out = run_captive(bin, &["sh", path_str(script)], cmd, &[("LOGF", &log)]);
    assert!(out.success(), "{}", out.describe());
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let mut calls: Vec<String> = text
        .lines()
        .skip_while(|l| !l.starts_with("preconnect"))
        .map(str::to_string)
        .collect();
    while calls
        .last()
        .is_some_and(|l| l.trim() == "close" || l.trim() == "unload")
    {
        calls.pop();
    }
    calls
}

#[test]
fn per_connection_callbacks_are_called_once_as_nbdkit_does() {
    if !skip_unless("qemu-nbd") || !skip_unless("nbdinfo") || !skip_unless("qemu-io") {
        return;
    }
    let dir = TempDir::new();
    let script = dir.join("log.sh");
    write_script(&script, LOGGING_SCRIPT);
    for (i, (what, cmd)) in CLIENTS.iter().enumerate() {
        let ours = connection_calls(&nbdkit_bin(), &dir, &script, cmd, &format!("ours{i}"));
        // qemu-nbd --list sends NBD_OPT_LIST then NBD_OPT_INFO; nbdinfo
        // sends INFO then GO: the default export is resolved once.
        let defaults = ours.iter().filter(|l| l.starts_with("default_export")).count();
        assert_eq!(defaults, 1, "{what}: default_export calls: {ours:#?}");
        // The description is asked for only when the client wants it
        // (NBD_INFO_DESCRIPTION): qemu's clients do not.
        if what.starts_with("qemu") {
            assert!(
                !ours.iter().any(|l| l.starts_with("export_description")),
                "{what}: {ours:#?}"
            );
        }
        if !reference() {
            continue;
        }
        let theirs = connection_calls(Path::new(REFERENCE), &dir, &script, cmd, &format!("ref{i}"));
        assert_eq!(ours, theirs, "{what}: our calls (left) and nbdkit's (right)");
    }
}
