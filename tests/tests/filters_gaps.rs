//! multi-conn emulation, background readahead and `exportdesc=script:`,
//! driven through real clients.

use nbdkit_tests::{
    assert_bytes_eq, path_str, run_python_code, run_tool, skip_unless, write_random_file, Json,
    Server, TempDir,
};
use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

/// Per connection id of the log filter, how many lines contain `what`
/// (a request name such as `Flush` or `Cache`, followed by a space).
fn count_by_conn(log: &Path, what: &str) -> BTreeMap<u32, usize> {
    let text = fs::read_to_string(log).expect("log file");
    let mut counts = BTreeMap::new();
    let needle = format!(" {what} id=");
    for line in text.lines().filter(|l| l.contains(&needle)) {
        let conn = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("connection="))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        *counts.entry(conn).or_insert(0) += 1;
    }
    counts
}

/// Two clients (URIs in argv): `a` writes, `b` reads, `a` flushes (its reply printed as
/// `flushed`), `a` flushes again, then `b` reads back what `a` wrote.
const TWO_CLIENTS: &str = r#"
import nbd, sys
a = nbd.NBD(); a.connect_uri(sys.argv[1])
b = nbd.NBD(); b.connect_uri(sys.argv[2])
print("multi-conn", a.can_multi_conn(), b.can_multi_conn())
a.pwrite(b"A" * 4096, 0)
b.pread(512, 65536)
a.flush()
print("flushed", flush=True)
a.flush()
assert b.pread(4096, 0) == b"A" * 4096, "b does not see a's flushed write"
b.pwrite(b"B" * 512, 8192, nbd.CMD_FLAG_FUA)
assert a.pread(512, 8192) == b"B" * 512, "a does not see b's FUA write"
a.shutdown(); b.shutdown()
print("ok")
"#;

/// Runs [`TWO_CLIENTS`] against a file-backed export with the log filter
/// under multi-conn, and returns the flushes per connection below.
fn two_clients(extra: &[&str], export_a: &str, export_b: &str) -> BTreeMap<u32, usize> {
    let dir = TempDir::new();
    let img = dir.join("disk.img");
    write_random_file(&img, 1 << 20, 1);
    let log = dir.join("log");
    let mut args = vec![
        "--filter=multi-conn".to_string(),
        "--filter=log".to_string(),
        "file".to_string(),
        path_str(&img).to_string(),
        format!("logfile={}", path_str(&log)),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let mut srv = Server::start(&args);
    let out = run_python_code(
        TWO_CLIENTS,
        [srv.uri_export(export_a), srv.uri_export(export_b)],
    );
    assert!(out.success(), "{}", out.describe());
    assert!(
        out.stdout.contains("multi-conn True True"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("ok"), "{}", out.stdout);
    srv.stop();
    count_by_conn(&log, "Flush")
}

#[test]
fn multi_conn_emulate_flushes_every_dirty_connection() {
    skip_unless!("python3-nbd");
    let flushes = two_clients(&["multi-conn-mode=emulate"], "", "");
    // a's flush reached both connections' layers below (a wrote, b read);
    // the second flush found everything clean; b's FUA write flushed b.
    let total: usize = flushes.values().sum();
    assert_eq!(flushes.len(), 2, "flushes per connection: {flushes:?}");
    assert_eq!(total, 3, "flushes per connection: {flushes:?}");
}

#[test]
fn multi_conn_emulate_track_dirty_off_flushes_everyone_every_time() {
    skip_unless!("python3-nbd");
    let flushes = two_clients(
        &["multi-conn-mode=emulate", "multi-conn-track-dirty=off"],
        "",
        "",
    );
    // Two client flushes and one FUA write, each replicated to both.
    assert_eq!(flushes.len(), 2, "flushes per connection: {flushes:?}");
    assert!(
        flushes.values().all(|&n| n == 3),
        "flushes per connection: {flushes:?}"
    );
}

#[test]
fn multi_conn_emulate_fast_tracking() {
    skip_unless!("python3-nbd");
    let flushes = two_clients(
        &["multi-conn-mode=emulate", "multi-conn-track-dirty=fast"],
        "",
        "",
    );
    // Each flush after a write goes to both; the clean flush to none.
    assert_eq!(flushes.len(), 2, "flushes per connection: {flushes:?}");
    assert!(
        flushes.values().all(|&n| n == 2),
        "flushes per connection: {flushes:?}"
    );
}

#[test]
fn multi_conn_exportname_limits_emulation_to_the_same_export() {
    skip_unless!("python3-nbd");
    // The file plugin serves one file whatever the export name.
    let split = two_clients(
        &[
            "multi-conn-mode=emulate",
            "multi-conn-track-dirty=off",
            "multi-conn-exportname=true",
        ],
        "one",
        "two",
    );
    // Each connection flushed only itself: 2 flushes from a, 1 from b.
    let mut counts: Vec<usize> = split.values().copied().collect();
    counts.sort_unstable();
    assert_eq!(counts, [1, 2], "flushes per connection: {split:?}");
    let shared = two_clients(
        &["multi-conn-mode=emulate", "multi-conn-track-dirty=off"],
        "one",
        "two",
    );
    assert!(
        shared.len() == 2 && shared.values().all(|&n| n == 3),
        "flushes per connection: {shared:?}"
    );
}

#[test]
fn multi_conn_modes_advertise_like_nbdkit() {
    skip_unless!("nbdinfo");
    let dir = TempDir::new();
    let img = dir.join("disk.img");
    fs::write(&img, vec![0u8; 1 << 20]).unwrap();
    // eval without can_multi_conn: auto emulates, disable hides it.
    let eval = [
        "eval",
        "get_size=echo 1048576",
        "pread=dd if=/dev/zero count=$3 iflag=count_bytes status=none",
        "pwrite=true",
        "flush=true",
    ];
    for (mode, want) in [("auto", true), ("emulate", true), ("disable", false)] {
        let mut args = vec!["--filter=multi-conn".to_string()];
        args.extend(eval.iter().map(|s| s.to_string()));
        args.push(format!("multi-conn-mode={mode}"));
        let srv = Server::start(&args);
        let out = run_tool("nbdinfo", ["--json", srv.uri().as_str()]).assert_success();
        let j = Json::parse(&out.stdout).expect("nbdinfo --json");
        let got = j
            .get("exports")
            .and_then(Json::as_array)
            .and_then(|e| e.first())
            .and_then(|e| e.get("can_multi_conn"))
            .and_then(Json::as_bool);
        assert_eq!(got, Some(want), "mode {mode}: {}", out.stdout);
    }
}

#[test]
fn multi_conn_emulate_needs_flush() {
    skip_unless!("nbdinfo");
    let srv = Server::start([
        "--filter=multi-conn",
        "eval",
        "get_size=echo 1048576",
        "pread=dd if=/dev/zero count=$3 iflag=count_bytes status=none",
        "multi-conn-mode=emulate",
    ]);
    let out = run_tool("nbdinfo", [srv.uri().as_str()]);
    assert!(!out.success(), "{}", out.describe());
    assert!(
        srv.stderr()
            .contains("emulating multi-conn requires working flush"),
        "{}",
        srv.stderr()
    );
}

#[test]
fn readahead_prefetches_in_the_background_and_data_is_unchanged() {
    skip_unless!("nbdcopy");
    let dir = TempDir::new();
    let img = dir.join("disk.img");
    let want = write_random_file(&img, 8 << 20, 7);
    let log = dir.join("log");
    let mut srv = Server::start([
        "--filter=readahead",
        "--filter=log",
        "file",
        path_str(&img),
        &format!("logfile={}", path_str(&log)),
    ]);
    let out = dir.join("copy.img");
    // One connection, one request at a time: sequential reads.
    run_tool(
        "nbdcopy",
        [
            "--connections=1",
            "--requests=1",
            "--request-size=65536",
            srv.uri().as_str(),
            path_str(&out),
        ],
    )
    .assert_success();
    assert_bytes_eq("copy through readahead", &fs::read(&out).unwrap(), &want);
    srv.stop();
    let reads = count_by_conn(&log, "Read");
    let caches = count_by_conn(&log, "Cache");
    assert!(
        !caches.is_empty(),
        "no prefetch: {}",
        fs::read_to_string(&log).unwrap()
    );
    // As nbdkit, the prefetches go through the context that serves the
    // client's reads (the layers below are opened once).
    for conn in caches.keys() {
        assert!(
            reads.contains_key(conn),
            "reads {reads:?}, caches {caches:?}"
        );
    }
}

#[test]
fn readahead_random_reads_see_writes() {
    skip_unless!("python3-nbd");
    let dir = TempDir::new();
    let img = dir.join("disk.img");
    write_random_file(&img, 4 << 20, 3);
    let srv = Server::start(["--filter=readahead", "file", path_str(&img)]);
    let code = r#"
import nbd, sys, random
h = nbd.NBD(); h.connect_uri(sys.argv[1])
data = bytearray(open(sys.argv[2], "rb").read())
rnd = random.Random(5)
for i in range(300):
    off = rnd.randrange(0, len(data) - 65536) if i % 3 == 0 else off + n
    n = rnd.choice([512, 4096, 32768])
    if off + n > len(data):
        off = 0
    if i % 7 == 0:
        buf = bytes([i % 251]) * n
        h.pwrite(buf, off)
        data[off:off + n] = buf
    assert h.pread(n, off) == data[off:off + n], "mismatch at %d" % off
h.shutdown()
print("ok")
"#;
    let out = run_python_code(code, [srv.uri().as_str(), path_str(&img)]);
    assert!(
        out.success() && out.stdout.contains("ok"),
        "{}",
        out.describe()
    );
}

#[test]
fn exportname_exportdesc_script() {
    skip_unless!("nbdinfo");
    let srv = Server::start([
        "--filter=exportname",
        "memory",
        "1M",
        "exportname-list=explicit",
        "exportname=foo",
        "exportname=it's",
        "exportname=quiet",
        r#"exportdesc=script:test "$name" = quiet && exit 1; printf 'about %s\n' "$name""#,
    ]);
    let out = run_tool("nbdinfo", ["--list", "--json", srv.uri().as_str()]).assert_success();
    let j = Json::parse(&out.stdout).expect("nbdinfo --json");
    let exports = j.get("exports").and_then(Json::as_array).expect("exports");
    let mut got = Vec::new();
    for e in exports {
        let name = e
            .get("export-name")
            .and_then(Json::as_str)
            .unwrap()
            .to_string();
        let desc = e
            .get("description")
            .and_then(Json::as_str)
            .map(str::to_string);
        got.push((name, desc));
    }
    assert_eq!(
        got,
        [
            ("foo".to_string(), Some("about foo".to_string())),
            ("it's".to_string(), Some("about it's".to_string())),
            ("quiet".to_string(), None),
        ],
        "{}",
        out.stdout
    );
    // The description of the export a client opens comes from the script
    // too, for the name after default-export.
    let srv = Server::start([
        "--filter=exportname",
        "memory",
        "1M",
        "default-export=dflt",
        "exportdesc=script:echo \"[$name]\"",
    ]);
    let out = run_tool("nbdinfo", ["--json", srv.uri().as_str()]).assert_success();
    assert!(
        out.stdout.contains(r#""description": "[dflt]""#),
        "{}",
        out.stdout
    );
}
