//! Command-line behaviour: version, --dump-config, --dump-plugin, errors,
//! --run, -s.

use core::time::Duration;
use nbdkit_tests::{
    expected_version, is_reference, nbdkit_cmd, run, skip_unless, wait_timeout, RawClient, TempDir,
    CMD_TIMEOUT, OUR_VERSION,
};
use std::fs;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Stdio};

/// `version_extra=` from `--dump-config`, if any.
fn version_extra() -> Option<String> {
    let out = run(nbdkit_cmd().arg("--dump-config"), CMD_TIMEOUT).assert_success();
    out.stdout
        .lines()
        .find_map(|l| l.strip_prefix("version_extra="))
        .map(str::to_string)
}

#[test]
fn version_prints_nbdkit_version_first() {
    let out = run(nbdkit_cmd().arg("--version"), CMD_TIMEOUT).assert_success();
    let first = out.stdout.lines().next().unwrap_or_default();
    let want = format!("nbdkit {}", expected_version());
    if !is_reference() {
        assert_eq!(expected_version(), OUR_VERSION);
    }
    // Like nbdkit: "nbdkit 1.36.2", or "nbdkit 1.36.2 (EXTRA)" when built
    // with a version_extra, which --dump-config then reports too.
    match version_extra() {
        None => assert_eq!(first, want, "{}", out.stdout),
        Some(extra) => assert!(
            first == want || first == format!("{want} ({extra})"),
            "--version first line {first:?}, want {want:?} or {:?}",
            format!("{want} ({extra})")
        ),
    }
    // -V is the short form.
    let short = run(nbdkit_cmd().arg("-V"), CMD_TIMEOUT).assert_success();
    assert_eq!(short.stdout.lines().next(), Some(first));
}

#[test]
fn dump_config_has_version() {
    let out = run(nbdkit_cmd().arg("--dump-config"), CMD_TIMEOUT).assert_success();
    let lines: Vec<&str> = out.stdout.lines().collect();
    let version = expected_version();
    assert!(
        lines.contains(&format!("version={version}").as_str()),
        "no version={version} in:\n{}",
        out.stdout
    );
    let mut parts = version.split('.');
    let major = parts.next().unwrap_or_default();
    let minor = parts.next().unwrap_or_default();
    assert!(lines.contains(&format!("version_major={major}").as_str()));
    assert!(lines.contains(&format!("version_minor={minor}").as_str()));
    // Debian's 1.32.5 has no version_extra line; ours must.
    if !is_reference() {
        assert!(
            lines.iter().any(|l| l.starts_with("version_extra=")),
            "no version_extra= in:\n{}",
            out.stdout
        );
    }
    for line in &lines {
        assert!(
            line.contains('='),
            "--dump-config line without '=': {line:?}"
        );
    }
}

#[test]
fn dump_plugin_memory() {
    let out = run(nbdkit_cmd().args(["memory", "--dump-plugin"]), CMD_TIMEOUT).assert_success();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(lines.contains(&"name=memory"), "{}", out.stdout);
    assert!(
        lines.iter().any(|l| l.starts_with("version=")),
        "{}",
        out.stdout
    );
    assert!(lines.contains(&"thread_model=parallel"), "{}", out.stdout);
    assert!(
        lines.iter().any(|l| l.starts_with("max_thread_model=")),
        "{}",
        out.stdout
    );
    assert!(lines.contains(&"has_pwrite=1"), "{}", out.stdout);
    assert!(lines.contains(&"has_extents=1"), "{}", out.stdout);
}

/// Runs nbdkit with `args` (which must fail before serving) and checks
/// for exit status 1 and exactly one `nbdkit: error: ...` line.
fn assert_one_error_line(args: &[&str]) -> String {
    let dir = TempDir::new();
    let sock = dir.join("sock");
    let out = run(
        nbdkit_cmd().arg("-U").arg(&sock).arg("-f").args(args),
        CMD_TIMEOUT,
    );
    assert_eq!(out.code(), Some(1), "{}", out.describe());
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(lines.len(), 1, "want one error line: {}", out.describe());
    assert!(
        lines[0].starts_with("nbdkit: error: "),
        "want `nbdkit: error: ...`: {}",
        out.describe()
    );
    lines[0].to_string()
}

#[test]
fn bad_size_parameter_is_one_error_line() {
    let line = assert_one_error_line(&["memory", "size=foo"]);
    assert!(line.contains("foo"), "{line}");
}

#[test]
fn unknown_parameter_is_one_error_line() {
    let line = assert_one_error_line(&["memory", "1M", "nosuchkey=bar"]);
    assert!(line.contains("nosuchkey"), "{line}");
}

#[test]
fn missing_required_parameter_is_one_error_line() {
    let line = assert_one_error_line(&["memory"]);
    assert!(line.contains("size"), "{line}");
}

#[test]
fn missing_plugin_is_an_error() {
    let dir = TempDir::new();
    let out = run(
        nbdkit_cmd()
            .arg("-U")
            .arg(dir.join("sock"))
            .args(["-f", "no-such-plugin-xyz"]),
        CMD_TIMEOUT,
    );
    assert_eq!(out.code(), Some(1), "{}", out.describe());
    let first = out.stderr.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("nbdkit: error: ") && first.contains("no-such-plugin-xyz"),
        "{}",
        out.describe()
    );
}

#[test]
fn run_nbdinfo_on_uri() {
    skip_unless!("nbdinfo");
    let out = run(
        nbdkit_cmd().args(["-U", "-", "memory", "1M", "--run", "nbdinfo \"$uri\""]),
        CMD_TIMEOUT,
    )
    .assert_success();
    assert!(
        out.stdout.contains("export-size: 1048576"),
        "{}",
        out.describe()
    );
}

#[test]
fn run_returns_command_exit_status() {
    for (cmd, want) in [("exit 0", 0), ("exit 3", 3), ("false", 1)] {
        let out = run(
            nbdkit_cmd().args(["-U", "-", "memory", "1M", "--run", cmd]),
            CMD_TIMEOUT,
        );
        assert_eq!(out.code(), Some(want), "--run {cmd:?}: {}", out.describe());
    }
}

#[test]
fn run_sets_uri_and_unixsocket() {
    let out = run(
        nbdkit_cmd().args([
            "-U",
            "-",
            "memory",
            "1M",
            "--run",
            "echo \"uri=$uri\"; echo \"sock=$unixsocket\"; test -S \"$unixsocket\"",
        ]),
        CMD_TIMEOUT,
    )
    .assert_success();
    let uri = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("uri="))
        .unwrap_or_default();
    let sock = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("sock="))
        .unwrap_or_default();
    assert!(!sock.is_empty(), "{}", out.stdout);
    // Both spellings are valid NBD URIs (nbdkit 1.32 prints the first).
    assert!(
        uri == format!("nbd+unix://?socket={sock}") || uri == format!("nbd+unix:///?socket={sock}"),
        "$uri {uri:?} does not name $unixsocket {sock:?}"
    );
}

/// Kills a child on drop (bounded cleanup if an assertion fails).
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = wait_timeout(&mut self.0, Duration::from_secs(5));
    }
}

#[test]
fn single_mode_on_a_socketpair() {
    let dir = TempDir::new();
    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    let theirs_out = theirs.try_clone().expect("dup");
    let stderr = fs::File::create(dir.join("stderr")).expect("stderr file");
    let child = nbdkit_cmd()
        .args(["-s", "memory", "1M"])
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .stdout(Stdio::from(OwnedFd::from(theirs_out)))
        .stderr(stderr)
        .process_group(0)
        .spawn()
        .expect("spawn nbdkit -s");
    let mut child = KillOnDrop(child);
    let stderr = || fs::read_to_string(dir.join("stderr")).unwrap_or_default();

    let mut c = RawClient::from_stream(ours);
    let export = c
        .handshake_go("")
        .unwrap_or_else(|e| panic!("handshake over -s: {e}; stderr: {}", stderr()));
    assert_eq!(export.size, 1 << 20);
    let data: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
    assert_eq!(c.pwrite(8192, &data, 1).expect("write"), 0);
    assert_eq!(
        c.pread(8192, 4096, 2).expect("read").expect("read ok"),
        data
    );
    c.disconnect().expect("disconnect");
    drop(c);

    // With its only client gone, nbdkit -s exits by itself, successfully.
    let status = wait_timeout(&mut child.0, Duration::from_secs(20));
    let status = status.unwrap_or_else(|| panic!("nbdkit -s did not exit; stderr: {}", stderr()));
    assert!(
        status.success(),
        "nbdkit -s: {status}; stderr: {}",
        stderr()
    );
}
