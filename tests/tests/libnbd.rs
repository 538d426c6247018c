//! libnbd (python3-libnbd) scripts from tests/scripts against memory disks:
//! structured reads, block status, flush, trim, zero, cache, FUA, 64
//! requests in flight, read-only.

use nbdkit_tests::{run_python, skip_unless, Server};

/// Starts `args`, runs `tests/scripts/<script>` with the URI, and checks
/// that it printed "ok".  Returns its stdout.
fn run_script(script: &str, args: &[&str]) -> String {
    let srv = Server::start(args);
    let out = run_python(script, [srv.uri()]);
    assert!(
        out.success() && out.stdout.lines().any(|l| l == "ok"),
        "{script} failed: {}\n--- server stderr ---\n{}",
        out.describe(),
        srv.stderr()
    );
    out.stdout
}

#[test]
fn structured_reads() {
    skip_unless!("python3-nbd");
    run_script("structured_read.py", &["memory", "64M"]);
}

#[test]
fn block_status_on_sparse_disk() {
    skip_unless!("python3-nbd");
    run_script("block_status.py", &["memory", "64M"]);
}

#[test]
fn flush() {
    skip_unless!("python3-nbd");
    run_script("flush.py", &["memory", "1M"]);
}

#[test]
fn trim_then_read_zeroes() {
    skip_unless!("python3-nbd");
    run_script("trim.py", &["memory", "1M"]);
}

#[test]
fn zero_with_and_without_fast_zero() {
    skip_unless!("python3-nbd");
    let out = run_script("zero.py", &["memory", "1M"]);
    assert!(
        out.contains("can_fast_zero=True"),
        "memory plugin should advertise fast zero: {out}"
    );
}

#[test]
fn cache() {
    skip_unless!("python3-nbd");
    run_script("cache.py", &["memory", "2M"]);
}

#[test]
fn fua_writes() {
    skip_unless!("python3-nbd");
    run_script("fua.py", &["memory", "1M"]);
}

#[test]
fn sixty_four_requests_in_flight() {
    skip_unless!("python3-nbd");
    run_script("inflight.py", &["memory", "16M"]);
}

#[test]
fn read_only_refuses_writes_with_eperm() {
    skip_unless!("python3-nbd");
    run_script("readonly.py", &["-r", "memory", "1M"]);
}
