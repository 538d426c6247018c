//! Drop-in fidelity of the command line (issue 9, items 2 and 3):
//! relative paths in background mode, `--short-options`/`--long-options`,
//! `--tls` spellings, bare parameters, repeated and conflicting options,
//! and `--help` listing every parameter of each manual page.
#![allow(clippy::std_instead_of_core)]

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nbdkit_tests::*;

const REFERENCE: &str = "/usr/bin/nbdkit";

/// Writes an executable script through a child process (never
/// write + chmod + exec from this multi-threaded test: ETXTBSY).
fn write_script(path: &Path, text: &str) {
    let out = run_with_input(
        Command::new("sh")
            .args(["-c", "cat > \"$1\" && chmod 755 \"$1\"", "sh"])
            .arg(path),
        Some(text.as_bytes()),
        CMD_TIMEOUT,
    );
    assert!(out.success(), "{}", out.describe());
}

/// A server forked into the background (no `-f`) from `dir` as its
/// working directory, started with the relative `-P NAME.pid -U NAME.sock`.
/// Dropping it stops the daemon by the pid from its pidfile.
struct Daemon {
    pid: i32,
    sock: PathBuf,
}

impl Daemon {
    /// Starts nbdkit with `args` in `dir` and waits (bounded) for the
    /// pidfile to appear there. `name` must be unique to the test.
    fn start(dir: &TempDir, name: &str, args: &[&str]) -> Daemon {
        let pidname = format!("{name}.pid");
        let sockname = format!("{name}.sock");
        let out = run(
            nbdkit_cmd()
                .current_dir(dir.path())
                .args(["-P", &pidname, "-U", &sockname])
                .args(args),
            Duration::from_secs(60),
        );
        assert!(out.success(), "nbdkit did not start: {}", out.describe());
        let pidfile = dir.join(&pidname);
        if !wait_until(Duration::from_secs(20), || read_pidfile(&pidfile).is_some()) {
            // A server that resolved the relative name after moving to /
            // wrote /NAME.pid: stop that daemon (ours: the name is unique)
            // before failing.
            let stray = Path::new("/").join(&pidname);
            if let Some(pid) = read_pidfile(&stray) {
                // SAFETY: the daemon this test started; its pid is from
                // the pidfile only it writes.
                unsafe { libc::kill(pid, libc::SIGTERM) };
                let _ = fs::remove_file(&stray);
                panic!(
                    "relative -P {pidname} was written as {} instead of {}",
                    stray.display(),
                    pidfile.display()
                );
            }
            panic!("no pidfile {} within 20s", pidfile.display());
        }
        Daemon {
            pid: read_pidfile(&pidfile).unwrap_or_default(),
            sock: dir.join(&sockname),
        }
    }

    fn uri(&self) -> String {
        format!("nbd+unix:///?socket={}", self.sock.display())
    }

    /// SIGTERM, then wait (bounded) for the daemon to exit.
    fn stop(&mut self) {
        if self.pid <= 0 {
            return;
        }
        // SAFETY: the daemon this test started, by its pidfile's pid.
        unsafe { libc::kill(self.pid, libc::SIGTERM) };
        let pid = self.pid;
        if !wait_until(Duration::from_secs(10), || !pid_alive(pid)) {
            // SAFETY: as above.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let _ = wait_until(Duration::from_secs(5), || !pid_alive(pid));
        }
        self.pid = 0;
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

fn nbdinfo_size(uri: &str) -> String {
    let out = run_tool("nbdinfo", ["--size", uri]);
    assert!(out.success(), "{}", out.describe());
    out.stdout.trim().to_string()
}

/// Reads the whole export (every pread reaches the plugin).
fn read_all(uri: &str) -> Output {
    run_tool("nbdcopy", ["--", uri, "null:"])
}

// ---------------------------------------------------------------------------
// 2. Daemon mode and paths
// ---------------------------------------------------------------------------

#[test]
fn background_relative_pidfile_and_socket_are_in_the_start_directory() {
    skip_unless!("nbdinfo");
    let dir = TempDir::new();
    let d = Daemon::start(&dir, "relpid", &["memory", "1M"]);
    assert!(d.pid > 0 && d.pid as u32 != std::process::id());
    assert!(
        d.sock.exists(),
        "relative -U socket not in the start directory"
    );
    assert_eq!(nbdinfo_size(&d.uri()), "1048576");
}

#[test]
fn relative_unix_socket_is_made_absolute_for_run() {
    let dir = TempDir::new();
    let out = run(
        nbdkit_cmd()
            .current_dir(dir.path())
            .args(["-U", "rel.sock", "null", "--run"])
            .arg("echo \"sock=$unixsocket\"; echo \"uri=$uri\"; echo \"pwd=$(pwd)\""),
        CMD_TIMEOUT,
    );
    assert!(out.success(), "{}", out.describe());
    let field = |k: &str| {
        out.stdout
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .unwrap_or_default()
            .to_string()
    };
    let want = dir.join("rel.sock");
    assert_eq!(field("sock="), path_str(&want), "{}", out.stdout);
    assert!(
        field("uri=").ends_with(&format!("socket={}", path_str(&want))),
        "{}",
        out.stdout
    );
    // --run runs its command in nbdkit's working directory.
    assert_eq!(
        fs::canonicalize(field("pwd=")).ok(),
        fs::canonicalize(dir.path()).ok(),
        "{}",
        out.stdout
    );
}

#[test]
fn background_relative_plugin_files_are_resolved_at_start() {
    skip_unless!("nbdinfo", "nbdcopy");
    let dir = TempDir::new();
    write_random_file(&dir.join("disk.img"), 1 << 20, 1);
    write_random_file(&dir.join("part2.img"), 1 << 20, 2);
    fs::create_dir(dir.join("floppy")).unwrap();
    write_random_file(&dir.join("floppy/data.bin"), 100_000, 3);
    write_script(
        &dir.join("disk.sh"),
        "case \"$1\" in\n  get_size) echo 1M ;;\n  pread) dd if=/dev/zero count=$3 iflag=count_bytes 2>/dev/null ;;\n  *) exit 2 ;;\nesac\n",
    );
    let cases: &[(&str, &[&str])] = &[
        ("file", &["file", "disk.img"]),
        ("split", &["split", "disk.img", "part2.img"]),
        ("partitioning", &["partitioning", "disk.img", "part2.img"]),
        ("floppy", &["floppy", "floppy"]),
        ("sh", &["sh", "disk.sh"]),
    ];
    for (name, args) in cases {
        let d = Daemon::start(&dir, &format!("plugin-{name}"), args);
        let out = read_all(&d.uri());
        assert!(out.success(), "{name}: {}", out.describe());
    }
}

#[test]
fn background_relative_error_file_trigger() {
    skip_unless!("nbdcopy");
    let dir = TempDir::new();
    let d = Daemon::start(
        &dir,
        "errorfile",
        &[
            "--filter=error",
            "memory",
            "1M",
            "error-rate=100%",
            "error-file=trigger",
        ],
    );
    assert!(read_all(&d.uri()).success(), "no trigger yet: reads work");
    fs::write(dir.join("trigger"), "").unwrap();
    let out = read_all(&d.uri());
    assert!(
        !out.success(),
        "error-file=trigger (relative) was not seen by the background server"
    );
}

#[test]
fn background_relative_statsfile_is_written_at_exit() {
    skip_unless!("nbdinfo");
    let dir = TempDir::new();
    let mut d = Daemon::start(
        &dir,
        "stats",
        &["--filter=stats", "memory", "1M", "statsfile=stats.txt"],
    );
    assert_eq!(nbdinfo_size(&d.uri()), "1048576");
    d.stop();
    let text = fs::read_to_string(dir.join("stats.txt")).unwrap_or_default();
    assert!(
        text.starts_with("total:"),
        "stats.txt in the start directory has no report: {text:?}"
    );
}

#[test]
fn background_relative_pause_control_socket_is_removed_at_exit() {
    skip_unless!("nbdinfo");
    let dir = TempDir::new();
    let mut d = Daemon::start(
        &dir,
        "pause",
        &["--filter=pause", "memory", "1M", "pause-control=ctl.sock"],
    );
    assert!(dir.join("ctl.sock").exists());
    assert_eq!(nbdinfo_size(&d.uri()), "1048576");
    d.stop();
    assert!(
        !dir.join("ctl.sock").exists(),
        "the background server did not remove its relative pause-control socket"
    );
}

#[test]
fn background_relative_exitwhen_file() {
    let dir = TempDir::new();
    let mut d = Daemon::start(
        &dir,
        "exitwhen",
        &[
            "--filter=exitwhen",
            "memory",
            "1M",
            "exit-when-file-created=gone",
            "exit-when-poll=1",
        ],
    );
    let pid = d.pid;
    fs::write(dir.join("gone"), "").unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || !pid_alive(pid)),
        "the background server did not see its relative exit-when-file-created"
    );
    d.pid = 0;
}

#[test]
fn background_relative_tls_psk_file() {
    skip_unless!("nbdinfo");
    let dir = TempDir::new();
    let key: String = Prng::new(9)
        .bytes(32)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    fs::write(dir.join("keys.psk"), format!("alice:{key}\n")).unwrap();
    let d = Daemon::start(
        &dir,
        "psk",
        &["--tls=require", "--tls-psk=keys.psk", "memory", "1M"],
    );
    let uri = format!(
        "nbds+unix://alice@/?socket={}&tls-psk-file={}",
        d.sock.display(),
        dir.join("keys.psk").display()
    );
    assert_eq!(nbdinfo_size(&uri), "1048576");
}

// ---------------------------------------------------------------------------
// 3. Command line
// ---------------------------------------------------------------------------

const SHORT: &[&str] = &[
    "-4", "-6", "-D", "-e", "-f", "-g", "-i", "-n", "-o", "-p", "-P", "-r", "-s", "-t", "-u", "-U",
    "-v", "-V",
];
const SHORT_WITH_VALUE: &[&str] = &["-D", "-e", "-g", "-i", "-p", "-P", "-t", "-u", "-U"];
const LONG_WITH_VALUE: &[&str] = &[
    "--debug",
    "--export",
    "--export-name",
    "--exportname",
    "--filter",
    "--group",
    "--ip-addr",
    "--ipaddr",
    "--log",
    "--mask-handshake",
    "--pid-file",
    "--pidfile",
    "--port",
    "--run",
    "--selinux-label",
    "--threads",
    "--tls",
    "--tls-certificates",
    "--tls-psk",
    "--unix",
    "--user",
];

#[test]
fn short_and_long_options_list_every_option() {
    let short = run(nbdkit_cmd().arg("--short-options"), CMD_TIMEOUT);
    assert!(short.success(), "{}", short.describe());
    let short_lines: Vec<&str> = short.stdout.lines().collect();
    assert_eq!(short_lines, SHORT, "{}", short.stdout);
    let long = run(nbdkit_cmd().arg("--long-options"), CMD_TIMEOUT);
    assert!(long.success(), "{}", long.describe());
    let long_lines: Vec<&str> = long.stdout.lines().collect();
    assert!(long_lines.len() >= 40, "{}", long.stdout);
    // Each printed option is one our parser takes (--short-options then
    // ends the run at once).
    for opt in short_lines.iter().chain(long_lines.iter()) {
        assert!(opt.starts_with('-') && !opt.contains(' '), "{opt:?}");
        let mut cmd = nbdkit_cmd();
        cmd.arg(opt);
        if SHORT_WITH_VALUE.contains(opt) || LONG_WITH_VALUE.contains(opt) {
            cmd.arg("x");
        }
        cmd.arg("--short-options");
        let out = run(&mut cmd, CMD_TIMEOUT);
        assert!(
            out.success(),
            "{opt} is listed but refused: {}",
            out.describe()
        );
    }
    // Every option of the synopsis is listed.
    for o in [
        "--tls-verify-peer",
        "--vsock",
        "--swap",
        "--no-sr",
        "--selinux-label",
    ] {
        assert!(long_lines.contains(&o), "{o} missing: {}", long.stdout);
    }
    // Also after a plugin name, as getopt permutes.
    let out = run(nbdkit_cmd().args(["null", "--long-options"]), CMD_TIMEOUT);
    assert_eq!(out.stdout, long.stdout);
    // nbdkit 1.32 (the reference) has the same options as 1.36.
    if Path::new(REFERENCE).exists() {
        for (opt, ours) in [("--short-options", &short), ("--long-options", &long)] {
            let r = run(Command::new(REFERENCE).arg(opt), CMD_TIMEOUT);
            assert_eq!(r.stdout, ours.stdout, "{opt} differs from the reference");
        }
    } else {
        println!("SKIP: {REFERENCE} is not installed; compared with nbdkit 1.36's list only");
    }
}

/// Runs nbdkit with `args` (which must fail before serving) and checks
/// for exit status 1, nothing on stdout and one `nbdkit: error:` line.
fn one_error_line(args: &[&str]) -> String {
    let out = run(nbdkit_cmd().args(args), CMD_TIMEOUT);
    assert_eq!(out.code(), Some(1), "{args:?}: {}", out.describe());
    assert!(
        out.stdout.is_empty(),
        "{args:?}: stdout: {}",
        out.describe()
    );
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "{args:?}: want one error line: {}",
        out.describe()
    );
    assert!(
        lines[0].starts_with("nbdkit: error: "),
        "{args:?}: {}",
        out.describe()
    );
    lines[0].to_string()
}

/// A PSK file in `dir`, so that `--tls=on|require` has credentials.
fn psk_file(dir: &TempDir) -> String {
    let f = dir.join("keys.psk");
    fs::write(&f, format!("alice:{}\n", "5a".repeat(32))).unwrap();
    path_str(&f).to_string()
}

#[test]
fn tls_takes_every_spelling_nbdkit_takes() {
    let dir = TempDir::new();
    let psk = format!("--tls-psk={}", psk_file(&dir));
    let cases = [
        ("off", ""),
        ("on", "1"),
        ("require", "2"),
        ("required", "2"),
        ("force", "2"),
        ("REQUIRE", "2"),
        ("yes", "1"),
        ("true", "1"),
        ("1", "1"),
        ("y", "1"),
        ("ON", "1"),
        ("no", ""),
        ("false", ""),
        ("0", ""),
        ("n", ""),
        ("Off", ""),
    ];
    for (spelling, want) in cases {
        let tls = format!("--tls={spelling}");
        let out = run(
            nbdkit_cmd().args([
                tls.as_str(),
                psk.as_str(),
                "null",
                "--run",
                "echo \"tls=$tls\"",
            ]),
            CMD_TIMEOUT,
        );
        assert!(out.success(), "{tls}: {}", out.describe());
        assert_eq!(
            out.stdout.trim(),
            format!("tls={want}"),
            "{tls}: {}",
            out.describe()
        );
    }
    for bad in ["bogus", "", "enable"] {
        let line = one_error_line(&[&format!("--tls={bad}"), "null"]);
        assert!(
            line.contains(&format!("could not decipher boolean ({bad})")),
            "{line}"
        );
    }
}

#[test]
fn bare_parameters_follow_nbdkit() {
    // A plugin without a magic key takes a first bare value as script=,
    // and no other.
    let line = one_error_line(&["example2", "file=/dev/null", "foo"]);
    assert!(
        line.ends_with("expecting key=value on the command line but got: foo"),
        "{line}"
    );
    // A plugin without .config takes no parameters at all.
    for args in [
        &["example1", "foo"][..],
        &["zero", "a=b"],
        &["example1", "a=b"],
    ] {
        let line = one_error_line(args);
        assert!(
            line.contains("this plugin does not need command line configuration"),
            "{args:?}: {line}"
        );
    }
    // A key starts with a letter: `_a=1` is a value for the magic key.
    let line = one_error_line(&["null", "_a=1"]);
    assert!(
        line.contains("could not parse size string (_a=1)"),
        "{line}"
    );
    // Repeated magic values: the last one wins, as in nbdkit.
    if skip_unless("nbdinfo") {
        let out = run(
            nbdkit_cmd().args(["memory", "1M", "2M", "--run", "nbdinfo --size \"$uri\""]),
            CMD_TIMEOUT,
        );
        assert!(out.success(), "{}", out.describe());
        assert_eq!(out.stdout.trim(), "2097152");
    }
}

/// `nbdkit ARGS null --run 'echo ...'`: the variables --run sets.
fn run_env(args: &[&str]) -> Output {
    run(
        nbdkit_cmd().args(args).args([
            "null",
            "--run",
            "echo \"u=$unixsocket\"; echo \"e=$exportname\"; echo \"tls=$tls\"",
        ]),
        CMD_TIMEOUT,
    )
}

fn field(out: &Output, key: &str) -> String {
    out.stdout
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_default()
        .to_string()
}

#[test]
fn repeated_options_last_one_wins() {
    let dir = TempDir::new();
    let a = dir.join("a.sock");
    let b = dir.join("b.sock");
    let out = run_env(&["-U", path_str(&a), "-U", path_str(&b)]);
    assert!(out.success(), "{}", out.describe());
    assert_eq!(field(&out, "u"), path_str(&b));
    let out = run_env(&["-e", "foo", "-e", "bar"]);
    assert!(out.success(), "{}", out.describe());
    assert_eq!(field(&out, "e"), "bar");
    let psk = format!("--tls-psk={}", psk_file(&dir));
    let out = run_env(&["--tls=require", &psk, "--tls=on"]);
    assert!(out.success(), "{}", out.describe());
    assert_eq!(field(&out, "tls"), "1");
    for args in [
        &["-t", "4", "-t", "0"][..],
        &["-t", "0"],
        &["--log=bogus", "--log=stderr"],
        &["--mask-handshake=bogus", "--mask-handshake=3"],
        &["-r", "-r", "-f", "-f"],
        &["-o", "--tls=require", "--tls=off"],
    ] {
        let out = run_env(args);
        assert!(out.success(), "{args:?}: {}", out.describe());
    }
    // Two --run: the second is the one run.
    let out = run(
        nbdkit_cmd().args(["--run", "echo first", "null", "--run", "echo second"]),
        CMD_TIMEOUT,
    );
    assert!(out.success(), "{}", out.describe());
    assert_eq!(out.stdout.trim(), "second");
    // Two -P: the last one is written.
    let (p1, p2) = (dir.join("1.pid"), dir.join("2.pid"));
    let out = run(
        nbdkit_cmd()
            .arg("-P")
            .arg(&p1)
            .arg("-P")
            .arg(&p2)
            .args(["null", "--run", "true"]),
        CMD_TIMEOUT,
    );
    assert!(out.success(), "{}", out.describe());
    assert!(
        p2.exists() && !p1.exists(),
        "-P a -P b wrote the wrong pidfile"
    );
    // -o and -n: the last one wins.
    if skip_unless("nbdinfo") {
        for (args, want) in [(["-n", "-o"], "oldstyle"), (["-o", "-n"], "newstyle")] {
            let out = run(
                nbdkit_cmd()
                    .args(args)
                    .args(["null", "--run", "nbdinfo \"$uri\""]),
                CMD_TIMEOUT,
            );
            assert!(out.success(), "{args:?}: {}", out.describe());
            let proto = out
                .stdout
                .lines()
                .find(|l| l.trim_start().starts_with("protocol:"))
                .unwrap_or_default()
                .to_string();
            assert!(proto.contains(want), "{args:?}: {proto:?}");
        }
    }
}

#[test]
fn conflicting_options_are_refused_as_nbdkit_refuses_them() {
    let dir = TempDir::new();
    let sock = dir.join("c.sock");
    let sock = path_str(&sock);
    let combination =
        "--dump-plugin, -p, --run, -s, -U or --vsock options cannot be used in this combination";
    for args in [
        &["-s", "--dump-plugin", "null"][..],
        &["-s", "null", "--dump-plugin"],
        &["-s", "--run", "true", "null"],
        &["-s", "-U", sock, "null"],
        &["-s", "-p", "10809", "null"],
        &["-p", "10809", "-U", sock, "null"],
        &["--vsock", "-U", sock, "null"],
        &["--vsock", "-s", "null"],
        // Refused before the plugin is even looked for.
        &["-s", "--dump-plugin", "no-such-plugin"],
    ] {
        let line = one_error_line(args);
        assert!(line.ends_with(combination), "{args:?}: {line}");
    }
    for args in [
        &["-o", "--tls=require", "null"][..],
        &["--tls=require", "-o", "null"],
    ] {
        let line = one_error_line(args);
        assert!(
            line.ends_with("cannot use oldstyle protocol (-o) and require TLS"),
            "{args:?}: {line}"
        );
    }
    let line = one_error_line(&["--dump-plugin"]);
    assert!(line.contains("--dump-plugin"), "{line}");
    // What nbdkit allows: -i is ignored with -U (and with -s).
    let out = run(
        nbdkit_cmd().args(["-i", "127.0.0.1", "-U", sock, "null", "--run", "true"]),
        CMD_TIMEOUT,
    );
    assert!(out.success(), "-i with -U: {}", out.describe());
    let out = run(
        nbdkit_cmd().args(["-s", "-i", "127.0.0.1", "null"]),
        CMD_TIMEOUT,
    );
    assert!(out.success(), "-s with -i: {}", out.describe());
    // --dump-plugin with other listening options just dumps.
    let out = run(
        nbdkit_cmd().args(["-U", sock, "--run", "false", "null", "--dump-plugin"]),
        CMD_TIMEOUT,
    );
    assert!(out.success(), "{}", out.describe());
    assert!(out.stdout.contains("name=null"), "{}", out.describe());
}

/// The built-in plugins and filters (cli/src/registry.rs).
const PLUGINS: &[&str] = &[
    "memory",
    "null",
    "zero",
    "full",
    "pattern",
    "ones",
    "example1",
    "random",
    "sparse-random",
    "file",
    "sh",
    "eval",
    "cc",
    "split",
    "partitioning",
    "floppy",
    "info",
    "linuxdisk",
    "iso",
    "tmpdisk",
    "ondemand",
    "data",
    "example2",
    "example3",
];
const FILTERS: &[&str] = &[
    "blocksize",
    "blocksize-policy",
    "cacheextents",
    "checkwrite",
    "fua",
    "multi-conn",
    "nocache",
    "noextents",
    "nofilter",
    "noparallel",
    "nozero",
    "offset",
    "partition",
    "protect",
    "swab",
    "truncate",
    "cache",
    "cow",
    "error",
    "evil",
    "exportname",
    "retry",
    "retry-request",
    "delay",
    "ddrescue",
    "extentlist",
    "ext2",
    "pause",
    "rate",
    "readahead",
    "luks",
    "scan",
    "exitlast",
    "exitwhen",
    "gzip",
    "ip",
    "limit",
    "log",
    "qcow2dec",
    "stats",
    "tar",
    "tls-fallback",
    "xz",
];

/// `--help` for a plugin, or for a filter over `null`: the lines of the
/// plugin's (or filter's) own section, without the path line.
fn help_section(bin: &Path, kind: &str, name: &str) -> Vec<String> {
    let mut cmd = Command::new(bin);
    if kind == "filter" {
        cmd.arg(format!("--filter={name}")).arg("null");
    } else {
        cmd.arg(name);
    }
    let out = run(cmd.arg("--help"), CMD_TIMEOUT);
    if !out.success() {
        // The reference lacks the plugins and filters new in 1.36.
        assert!(bin != nbdkit_bin(), "{}", out.describe());
        return Vec::new();
    }
    // The section of the one plugin or filter (its title may be another
    // name: the error filter calls itself "error-inject").
    let head = format!("{kind}: ");
    out.stdout
        .lines()
        .skip_while(|l| !l.starts_with(&head))
        .take_while(|l| !l.is_empty())
        .filter(|l| !l.starts_with('('))
        .map(str::to_string)
        .collect()
}

/// The keys a help section names: `key=` at the start of a line, with
/// `[key=]` and `a|b|c=` spellings.
fn help_keys(lines: &[String]) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    for l in lines {
        let l = l.trim_start().trim_start_matches('[');
        let Some((k, _)) = l.split_once('=') else {
            continue;
        };
        let k = k.trim_end_matches(']');
        for part in k.split('|') {
            if !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                keys.insert(part.to_string());
            }
        }
    }
    keys
}

/// The keys the PARAMETERS section of manual `page` lists (`key=...` or
/// `[key=]...` items), or `None` when the manual is not installed.
fn manual_keys(page: &str) -> Option<BTreeSet<String>> {
    let out = run(
        Command::new("man").arg(page).env("MANWIDTH", "200"),
        CMD_TIMEOUT,
    );
    if !out.success() || out.stdout.trim().is_empty() {
        return None;
    }
    let mut keys = BTreeSet::new();
    let mut in_params = false;
    for line in out.stdout.lines() {
        if !line.starts_with(' ') && !line.is_empty() {
            in_params = line.trim() == "PARAMETERS";
            continue;
        }
        // Items sit at the first indent (7 spaces); their text deeper.
        if !in_params || !line.starts_with("       ") || line.starts_with("        ") {
            continue;
        }
        let item = line.trim_start().trim_start_matches('[');
        let Some((k, _)) = item.split_once('=') else {
            continue;
        };
        let k = k.trim_end_matches(']');
        if !k.is_empty()
            && k.starts_with(|c: char| c.is_ascii_lowercase())
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            keys.insert(k.to_string());
        }
    }
    Some(keys)
}

#[test]
fn partitioning_help_lists_mbr_id_type_guid_and_alignment() {
    let keys = help_keys(&help_section(&nbdkit_bin(), "plugin", "partitioning"));
    for k in ["file", "partition-type", "mbr-id", "type-guid", "alignment"] {
        assert!(keys.contains(k), "partitioning --help lacks {k}=: {keys:?}");
    }
}

#[test]
fn help_lists_every_parameter_of_the_manual() {
    skip_unless!("man");
    // eval's parameters are the callbacks' names (get_size=, pread=, ...):
    // its help shows the form, as nbdkit's does.
    let exempt = ["eval"];
    let mut checked = 0;
    let mut missing = Vec::new();
    for (kind, names) in [("plugin", PLUGINS), ("filter", FILTERS)] {
        for name in names.iter().filter(|n| !exempt.contains(n)) {
            let Some(manual) = manual_keys(&format!("nbdkit-{name}-{kind}")) else {
                println!("SKIP: no manual page nbdkit-{name}-{kind} installed");
                continue;
            };
            checked += 1;
            let help = help_keys(&help_section(&nbdkit_bin(), kind, name));
            for k in manual.difference(&help) {
                missing.push(format!("{kind} {name}: {k}="));
            }
        }
    }
    assert!(missing.is_empty(), "--help lacks: {missing:#?}");
    if checked == 0 {
        println!("SKIP: no nbdkit manual pages are installed");
    }
}

#[test]
fn help_and_version_match_the_reference() {
    let ours = run(nbdkit_cmd().arg("--help"), CMD_TIMEOUT);
    assert!(ours.success(), "{}", ours.describe());
    assert!(
        ours.stdout.starts_with("nbdkit [-4|--ipv4-only]"),
        "{}",
        ours.stdout
    );
    let version = run(
        nbdkit_cmd().args(["--filter=offset", "null", "--version"]),
        CMD_TIMEOUT,
    );
    assert!(version.success(), "{}", version.describe());
    let lines: Vec<&str> = version.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", version.stdout);
    assert!(lines[0].starts_with("nbdkit "), "{}", version.stdout);
    assert!(lines[1].starts_with("offset ") && lines[2].starts_with("null "));
    if !Path::new(REFERENCE).exists() {
        println!("SKIP: {REFERENCE} is not installed; no comparison with the reference");
        return;
    }
    let reference = run(Command::new(REFERENCE).arg("--help"), CMD_TIMEOUT);
    assert_eq!(ours.stdout, reference.stdout, "nbdkit --help differs");
    // Every line of the reference's help for a plugin or filter is in
    // ours (ours may list more parameters: those of the manual), except
    // where nbdkit 1.32's text is wrong: the file plugin's misspelt
    // "fadise=" and the xz filter's default depth (8, as its manual says).
    let known_wrong = ["fadise=<LEVEL>", "xz-max-depth=<N>"];
    for (kind, names) in [("plugin", PLUGINS), ("filter", FILTERS)] {
        for name in names.iter() {
            let r = help_section(Path::new(REFERENCE), kind, name);
            if r.is_empty() {
                continue; // not in nbdkit 1.32 (ones, evil, qcow2dec)
            }
            let o = help_section(&nbdkit_bin(), kind, name);
            assert!(!o.is_empty(), "{kind} {name}: no help section");
            for line in r
                .iter()
                .filter(|l| !known_wrong.iter().any(|w| l.starts_with(w)))
            {
                assert!(
                    o.contains(line),
                    "{kind} {name}: reference help line {line:?} missing from ours:\n{}",
                    o.join("\n")
                );
            }
        }
    }
}
