//! The filters that need the operating system: cow, cache, log, stats,
//! limit, exitlast, gzip, tar, tls-fallback.

use core::time::Duration;
use nbdkit_tests::{path_str, run_tool, skip_unless, Server, TempDir};
use std::fs;
use std::time::Instant;

#[test]
fn cow_writes_stay_in_the_overlay() {
    let dir = TempDir::new();
    let img = dir.join("base.img");
    fs::write(&img, vec![7u8; 1 << 20]).unwrap();
    let srv = Server::start(["--filter=cow", "file", path_str(&img)]);
    let mut c = srv.connect_raw();
    let e = c.handshake_go("").expect("handshake");
    assert_eq!(e.size, 1 << 20);
    assert_eq!(c.pwrite(100, &[1u8; 5000], 1).expect("io"), 0);
    let data = c.pread(0, 8192, 2).expect("io").expect("read ok");
    assert!(data[..100].iter().all(|&b| b == 7));
    assert!(data[100..5100].iter().all(|&b| b == 1));
    assert!(data[5100..].iter().all(|&b| b == 7));
    c.disconnect().ok();
    assert!(
        fs::read(&img).unwrap().iter().all(|&b| b == 7),
        "backing file modified"
    );
}

#[test]
fn cache_writeback_reaches_the_plugin_on_flush() {
    skip_unless!("python3-nbd");
    let dir = TempDir::new();
    let img = dir.join("c.img");
    fs::write(&img, vec![0u8; 1 << 20]).unwrap();
    let srv = Server::start(["--filter=cache", "file", path_str(&img)]);
    let script = format!(
        "import nbd\nh = nbd.NBD()\nh.connect_uri({:?})\nh.pwrite(b'w' * 5000, 3000)\n\
         assert h.pread(5000, 3000) == b'w' * 5000\nh.flush()\nh.shutdown()\n",
        srv.uri()
    );
    let out = run_tool("/usr/bin/python3", ["-c", &script]);
    assert!(out.success(), "{}", out.describe());
    let f = fs::read(&img).unwrap();
    assert!(f[3000..8000].iter().all(|&b| b == b'w'));
    assert!(f[..3000].iter().all(|&b| b == 0));
}

#[test]
fn log_file_lines() {
    let dir = TempDir::new();
    let log = dir.join("log");
    let srv = Server::start([
        "--filter=log",
        "memory",
        "1M",
        &format!("logfile={}", path_str(&log)),
    ]);
    let mut c = srv.connect_raw();
    c.handshake_go("").expect("handshake");
    c.pread(4096, 512, 1).expect("io").expect("read ok");
    c.disconnect().ok();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut text = String::new();
    while Instant::now() < deadline {
        text = fs::read_to_string(&log).unwrap_or_default();
        if text.contains("Disconnect") {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(text.contains(" Ready thread_model="), "{text}");
    assert!(
        text.contains("connection=1 Connect export=\"\" tls=0 size=0x100000 "),
        "{text}"
    );
    assert!(
        text.contains("connection=1 Read id=1 offset=0x1000 count=0x200 ...\n"),
        "{text}"
    );
    assert!(
        text.contains("connection=1 ...Read id=1 return=0\n"),
        "{text}"
    );
    assert!(
        text.contains("connection=1 Disconnect transactions=1"),
        "{text}"
    );
}

#[test]
fn limit_refuses_a_second_client() {
    let srv = Server::start(["--filter=limit", "memory", "1M"]);
    let mut a = srv.connect_raw();
    a.handshake_go("").expect("first client");
    let mut b = srv.connect_raw();
    assert!(b.handshake_go("").is_err(), "second client admitted");
    a.disconnect().ok();
}

#[test]
fn exitlast_exits_after_the_last_client() {
    let mut srv = Server::start(["--filter=exitlast", "memory", "1M"]);
    let mut a = srv.connect_raw();
    a.handshake_go("").expect("handshake");
    a.disconnect().ok();
    let deadline = Instant::now() + Duration::from_secs(10);
    while srv.is_alive() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!srv.is_alive(), "server still running");
}

#[test]
fn gzip_and_tar_serve_a_member() {
    skip_unless!("tar", "gzip", "nbdcopy");
    let dir = TempDir::new();
    let member = dir.join("disk.img");
    let content: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    fs::write(&member, &content).unwrap();
    let tarball = dir.join("t.tar");
    run_tool(
        "tar",
        [
            "-C",
            path_str(dir.path()),
            "-cf",
            path_str(&tarball),
            "disk.img",
        ],
    )
    .assert_success();
    run_tool("gzip", ["-k", path_str(&tarball)]).assert_success();
    let gz = dir.join("t.tar.gz");
    let srv = Server::start([
        "--filter=tar",
        "--filter=gzip",
        "file",
        path_str(&gz),
        "tar-entry=disk.img",
    ]);
    let out_file = dir.join("out");
    run_tool("nbdcopy", [srv.uri().as_str(), path_str(&out_file)]).assert_success();
    assert_eq!(fs::read(&out_file).unwrap(), content);
}

#[test]
fn tls_fallback_serves_the_readme_in_plaintext() {
    let srv = Server::start(["--filter=tls-fallback", "memory", "1M"]);
    let mut c = srv.connect_raw();
    let e = c.handshake_go("anything").expect("handshake");
    assert_eq!(e.size, 512);
    let data = c.pread(0, 512, 1).expect("io").expect("read ok");
    assert!(data.starts_with(b"This NBD server requires TLS"));
    c.disconnect().ok();
}
