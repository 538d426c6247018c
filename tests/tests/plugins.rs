//! The null, zero, full and file plugins.

use nbdkit_tests::{path_str, run_python, run_tool, skip_unless, Json, Prng, Server, TempDir};
use std::fs;

fn nbdinfo_export(uri: &str) -> Json {
    let out = run_tool("nbdinfo", ["--json", uri]).assert_success();
    let doc = Json::parse(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout));
    doc.get("exports")
        .and_then(Json::as_array)
        .and_then(|a| a.first())
        .cloned()
        .unwrap_or_else(|| panic!("no export: {}", out.stdout))
}

#[test]
fn null_plugin_reads_zeroes() {
    let srv = Server::start(["null", "1M"]);
    // Raw client: no client tools needed.
    let mut c = srv.connect_raw();
    let export = c.handshake_go("").expect("handshake");
    assert_eq!(export.size, 1 << 20);
    let data = c.pread(0, 65536, 1).expect("io").expect("read ok");
    assert!(data.iter().all(|&b| b == 0), "null plugin read non-zero");
    assert_eq!(c.pwrite(4096, &[0xff; 4096], 2).expect("io"), 0);
    let data = c.pread(4096, 4096, 3).expect("io").expect("read ok");
    assert!(
        data.iter().all(|&b| b == 0),
        "null plugin kept written data"
    );
    c.disconnect().ok();

    if skip_unless("python3-nbd") {
        let out = run_python("null_reads_zeroes.py", [srv.uri()]);
        assert!(out.success(), "{}", out.describe());
    }
}

#[test]
fn null_plugin_size_from_nbdinfo() {
    skip_unless!("nbdinfo");
    let srv = Server::start(["null", "size=3M"]);
    let e = nbdinfo_export(&srv.uri());
    assert_eq!(e.get("export-size").and_then(Json::as_u64), Some(3 << 20));
}

#[test]
fn zero_plugin_is_empty_and_read_only() {
    skip_unless!("nbdinfo");
    let srv = Server::start(["zero"]);
    let e = nbdinfo_export(&srv.uri());
    assert_eq!(e.get("export-size").and_then(Json::as_u64), Some(0));
    assert_eq!(e.get("is_read_only").and_then(Json::as_bool), Some(true));
}

#[test]
fn full_plugin_writes_fail_with_enospc() {
    // Raw client first: NBD error 28 is ENOSPC.
    let srv = Server::start(["full", "1M"]);
    let mut c = srv.connect_raw();
    let export = c.handshake_go("").expect("handshake");
    assert_eq!(export.size, 1 << 20);
    assert_eq!(c.pwrite(0, &[1; 512], 1).expect("io"), 28, "want ENOSPC");
    let data = c.pread(0, 4096, 2).expect("io").expect("read ok");
    assert!(data.iter().all(|&b| b == 0), "full plugin read non-zero");
    c.disconnect().ok();

    if skip_unless("python3-nbd") {
        let out = run_python("full_enospc.py", [srv.uri()]);
        assert!(out.success(), "{}", out.describe());
    }
}

#[test]
fn file_plugin_writes_through_to_the_file() {
    let dir = TempDir::new();
    let img = dir.join("disk.img");
    let mut want = Prng::new(0xf11e).bytes(1 << 20);
    fs::write(&img, &want).expect("write disk.img");

    let srv = Server::start(["file", path_str(&img)]);
    let mut c = srv.connect_raw();
    let export = c.handshake_go("").expect("handshake");
    assert_eq!(export.size, 1 << 20);
    // Reads see the file.
    let got = c.pread(12345, 5000, 1).expect("io").expect("read ok");
    assert_eq!(got, want[12345..17345]);
    // Writes land in the file.
    let patch = Prng::new(7).bytes(8192 + 3);
    assert_eq!(c.pwrite(4096 + 1, &patch, 2).expect("io"), 0);
    want[4097..4097 + patch.len()].copy_from_slice(&patch);
    c.send_request(0, nbdkit_tests::proto::CMD_FLUSH, 3, 0, 0, &[])
        .expect("flush");
    let (err, h) = c.read_simple_reply().expect("flush reply");
    assert_eq!((err, h), (0, 3), "flush failed");
    let on_disk = fs::read(&img).expect("read disk.img");
    nbdkit_tests::assert_bytes_eq("file after NBD write", &on_disk, &want);
    c.disconnect().ok();

    // The file also works with other plugin parameter spelling.
    drop(srv);
    let srv = Server::start(["file".to_string(), format!("file={}", img.display())]);
    let mut c = srv.connect_raw();
    c.handshake_go("").expect("handshake");
    let got = c.pread(4096, 8192, 1).expect("io").expect("read ok");
    assert_eq!(got, want[4096..4096 + 8192]);
}

#[test]
fn file_plugin_read_only_file_with_r() {
    let dir = TempDir::new();
    let img = dir.join("ro.img");
    fs::write(&img, vec![0x42; 65536]).expect("write");
    let srv = Server::start(["-r", "file", path_str(&img)]);
    let mut c = srv.connect_raw();
    let export = c.handshake_go("").expect("handshake");
    assert_ne!(export.flags & nbdkit_tests::proto::FLAG_READ_ONLY, 0);
    assert_eq!(c.pwrite(0, &[0; 512], 1).expect("io"), 1, "want EPERM");
    assert_eq!(fs::read(&img).expect("read"), vec![0x42; 65536]);
}

#[test]
fn file_plugin_dir_lists_exports() {
    skip_unless!("nbdinfo");
    let dir = TempDir::new();
    let d = dir.join("exports");
    fs::create_dir(&d).expect("mkdir");
    fs::write(d.join("a.img"), vec![0xaa; 1 << 20]).expect("a.img");
    fs::write(d.join("b.img"), vec![0xbb; 2 << 20]).expect("b.img");

    let srv = Server::start(["file".to_string(), format!("dir={}", d.display())]);
    let out = run_tool("nbdinfo", ["--list", "--json", &srv.uri()]).assert_success();
    let doc = Json::parse(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout));
    let mut exports: Vec<(String, u64)> = doc
        .get("exports")
        .and_then(Json::as_array)
        .unwrap_or_default()
        .iter()
        .map(|e| {
            (
                e.get("export-name")
                    .and_then(Json::as_str)
                    .unwrap_or_default()
                    .to_string(),
                e.get("export-size").and_then(Json::as_u64).unwrap_or(0),
            )
        })
        .collect();
    exports.sort();
    assert_eq!(
        exports,
        vec![
            ("a.img".to_string(), 1 << 20),
            ("b.img".to_string(), 2 << 20)
        ],
        "{}",
        out.stdout
    );
    // The plain-text listing names both too.
    let out = run_tool("nbdinfo", ["--list", &srv.uri()]).assert_success();
    assert!(out.stdout.contains("export=\"a.img\"") && out.stdout.contains("export=\"b.img\""));

    // Each export serves its own file.
    let mut c = srv.connect_raw();
    let export = c.handshake_go("b.img").expect("handshake b.img");
    assert_eq!(export.size, 2 << 20);
    let got = c.pread(0, 512, 1).expect("io").expect("read ok");
    assert_eq!(got, vec![0xbb; 512]);
    // A name that is not in the directory is refused.
    let mut c = srv.connect_raw();
    assert!(c.handshake_go("missing.img").is_err());
}
