//! More filters that need the operating system: rate, pause, extentlist,
//! ddrescue, scan, luks, ext2.

use core::time::Duration;
use nbdkit_tests::{
    is_reference, nbdkit_cmd, path_str, run, run_tool, skip_unless, write_random_file, Prng,
    Server, TempDir,
};
use std::fs;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Instant;

/// NBD_EIO.
const NBD_EIO: u32 = 5;

/// Runs nbdkit with `args` and `--run true`; returns (exit code, stderr).
fn config_fails(args: &[&str]) -> (Option<i32>, String) {
    let mut cmd = nbdkit_cmd();
    cmd.arg("-f").args(args).args(["--run", "true"]);
    let out = run(&mut cmd, Duration::from_secs(30));
    (out.code(), out.stderr)
}

#[test]
fn rate_limits_read_bandwidth() {
    // 8 Mbit/s = 1 MiB/s with a 2 s burst: 3 MiB take about 1 s.
    let srv = Server::start(["--filter=rate", "memory", "4M", "rate=8M"]);
    let mut c = srv.connect_raw();
    c.handshake_go("").expect("handshake");
    let t = Instant::now();
    for i in 0..3u64 {
        c.pread(i << 20, 1 << 20, i + 1)
            .expect("io")
            .expect("read ok");
    }
    let secs = t.elapsed().as_secs_f64();
    assert!((0.8..8.0).contains(&secs), "took {secs} s");
}

#[test]
fn rate_zero_is_refused() {
    let (code, err) = config_fails(&["--filter=rate", "null", "rate=0"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("rate cannot be set to 0"), "{err}");
}

#[test]
fn pause_holds_requests_until_resumed() {
    let dir = TempDir::new();
    let ctl = dir.join("ctl");
    let srv = Server::start([
        "--filter=pause",
        "memory",
        "1M",
        &format!("pause-control={}", path_str(&ctl)),
    ]);
    let mut s = UnixStream::connect(&ctl).expect("control socket");
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let mut b = [0u8; 1];
    s.write_all(b"p").unwrap();
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"P");
    let mut c = srv.connect_raw();
    c.handshake_go("").expect("handshake");
    let reader = std::thread::spawn(move || {
        let r = c.pread(0, 512, 1).expect("io");
        (Instant::now(), r)
    });
    std::thread::sleep(Duration::from_millis(500));
    let resumed_at = Instant::now();
    s.write_all(b"r").unwrap();
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"R");
    s.write_all(b"?").unwrap();
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"X");
    let (done_at, r) = reader.join().unwrap();
    assert!(r.is_ok());
    assert!(done_at >= resumed_at, "the read finished while paused");
}

#[test]
fn pause_control_is_required() {
    let (code, err) = config_fails(&["--filter=pause", "null"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("pause-control socket was not set"), "{err}");
}

#[test]
fn extentlist_replaces_extents() {
    skip_unless!("nbdinfo");
    let dir = TempDir::new();
    let list = dir.join("list");
    fs::write(&list, "4M 1M 0\n0 1M zero\n1M 1M 1\n").unwrap();
    let srv = Server::start([
        "--filter=extentlist",
        "memory",
        "10M",
        &format!("extentlist={}", path_str(&list)),
    ]);
    let out = run_tool("nbdinfo", ["--map", &srv.uri()]);
    assert!(out.success(), "{}", out.describe());
    let rows: Vec<Vec<&str>> = out
        .stdout
        .lines()
        .map(|l| l.split_whitespace().take(3).collect())
        .collect();
    let want = [
        ["0", "1048576", "2"],
        ["1048576", "1048576", "1"],
        ["2097152", "2097152", "3"],
        ["4194304", "1048576", "0"],
        ["5242880", "5242880", "3"],
    ];
    assert_eq!(rows, want, "{}", out.stdout);
}

#[test]
fn extentlist_overlap_is_an_error() {
    let dir = TempDir::new();
    let list = dir.join("list");
    fs::write(&list, "0 1M\n512K 1M hole\n").unwrap();
    let arg = format!("extentlist={}", path_str(&list));
    let (code, err) = config_fails(&["--filter=extentlist", "memory", "10M", &arg]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("extents in the extent list are overlapping"),
        "{err}"
    );
}

#[test]
fn ddrescue_fails_reads_of_bad_blocks() {
    let dir = TempDir::new();
    let map = dir.join("map");
    fs::write(
        &map,
        "# Mapfile. Created by GNU ddrescue\n0x00100000     +               1\n\
         #      pos        size  status\n0x00000000  0x00100000  +\n\
         0x00100000  0x00001000  -\n0x00101000  0x00eff000  +\n",
    )
    .unwrap();
    let srv = Server::start([
        "--filter=ddrescue",
        "memory",
        "16M",
        &format!("ddrescue-mapfile={}", path_str(&map)),
    ]);
    let mut c = srv.connect_raw();
    let e = c.handshake_go("").expect("handshake");
    assert_ne!(e.flags & 2, 0, "export should be read-only");
    assert!(c.pread(0, 512, 1).expect("io").is_ok());
    assert_eq!(c.pread(0x100000, 512, 2).expect("io"), Err(NBD_EIO));
    assert_eq!(c.pread(0xff000, 8192, 3).expect("io"), Err(NBD_EIO));
    assert!(c.pread(0x101000, 512, 4).expect("io").is_ok());
}

#[test]
fn scan_prefetches_the_whole_disk() {
    let dir = TempDir::new();
    let stats = dir.join("stats");
    let mut srv = Server::start([
        "--filter=scan",
        "--filter=stats",
        "memory",
        "10M",
        "scan-size=1M",
        &format!("statsfile={}", path_str(&stats)),
    ]);
    let mut c = srv.connect_raw();
    c.handshake_go("").expect("handshake");
    std::thread::sleep(Duration::from_millis(500));
    c.disconnect().ok();
    drop(c);
    std::thread::sleep(Duration::from_millis(200));
    srv.stop();
    let text = fs::read_to_string(&stats).unwrap_or_default();
    assert!(text.contains("cache: 10 ops"), "{text}");
}

#[test]
fn scan_size_must_be_a_power_of_two() {
    let (code, err) = config_fails(&["--filter=scan", "null", "scan-size=3000"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("scan-size parameter should be [512..32M] and a power of two"),
        "{err}"
    );
}

/// Formats `img` (20 MiB) with cryptsetup and `args`; false if it cannot.
fn luks_format(img: &Path, key: &Path, args: &[&str]) -> bool {
    fs::write(img, []).unwrap();
    let f = fs::OpenOptions::new().write(true).open(img).unwrap();
    f.set_len(20 << 20).unwrap();
    let mut all = vec!["luksFormat", "--batch-mode"];
    all.extend_from_slice(args);
    all.extend_from_slice(&[path_str(img), path_str(key)]);
    let out = run_tool("cryptsetup", all);
    if !out.success() {
        eprintln!("SKIP: cryptsetup luksFormat failed: {}", out.describe());
    }
    out.success()
}

/// Writes random data through the luks filter, reads it back through a
/// new server, and returns it.
fn luks_round_trip(img: &Path, key: &Path) -> Vec<u8> {
    let pass = format!("passphrase=+{}", path_str(key));
    let srv = Server::start(["--filter=luks", "file", path_str(img), &pass]);
    let mut c = srv.connect_raw();
    let e = c.handshake_go("").expect("handshake");
    let data = Prng::new(5).bytes(1 << 20);
    assert_eq!(c.pwrite(e.size - (1 << 20), &data, 1).expect("io"), 0);
    assert_eq!(c.pwrite(0, &data[..8192], 2).expect("io"), 0);
    c.disconnect().ok();
    drop(srv);
    let srv = Server::start(["--filter=luks", "file", path_str(img), &pass]);
    let mut c = srv.connect_raw();
    let e = c.handshake_go("").expect("handshake");
    let got = c
        .pread(e.size - (1 << 20), 1 << 20, 1)
        .expect("io")
        .unwrap();
    assert!(got == data, "data read back differs");
    let head = c.pread(0, 8192, 2).expect("io").unwrap();
    assert!(head == data[..8192], "first sectors differ");
    // The ciphertext on disk is not the plaintext.
    let raw = fs::read(img).unwrap();
    assert!(!raw.windows(64).any(|w| w == &data[..64]));
    got
}

#[test]
fn luks1_round_trip_matches_reference() {
    skip_unless!("cryptsetup");
    let dir = TempDir::new();
    let (img, key) = (dir.join("l1.img"), dir.join("key"));
    fs::write(&key, "secret").unwrap();
    let args = ["--type", "luks1", "--pbkdf-force-iterations", "1000"];
    if !luks_format(&img, &key, &args) {
        return;
    }
    let data = luks_round_trip(&img, &key);
    // The reference nbdkit (LUKSv1 only) reads what we wrote.
    if Path::new("/usr/bin/nbdkit").exists() && !is_reference() {
        let pass = format!("passphrase=+{}", path_str(&key));
        let sock = dir.join("ref.sock");
        let mut child = std::process::Command::new("/usr/bin/nbdkit")
            .args(["-U", path_str(&sock), "-f", "--filter=luks", "file"])
            .args([path_str(&img), &pass])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while UnixStream::connect(&sock).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut c = nbdkit_tests::RawClient::connect(&sock);
        let e = c.handshake_go("").expect("handshake");
        let got = c
            .pread(e.size - (1 << 20), 1 << 20, 1)
            .expect("io")
            .unwrap();
        let _ = child.kill();
        let _ = child.wait();
        assert!(got == data, "the reference reads different data");
    }
}

#[test]
fn luks2_pbkdf2_round_trip() {
    skip_unless!("cryptsetup");
    if is_reference() {
        eprintln!("SKIP: the reference luks filter reads LUKSv1 only");
        return;
    }
    let dir = TempDir::new();
    let (img, key) = (dir.join("l2.img"), dir.join("key"));
    fs::write(&key, "secret").unwrap();
    let args = [
        "--type",
        "luks2",
        "--pbkdf",
        "pbkdf2",
        "--pbkdf-force-iterations",
        "1000",
    ];
    if luks_format(&img, &key, &args) {
        luks_round_trip(&img, &key);
    }
}

#[test]
fn luks2_argon2_round_trip() {
    skip_unless!("cryptsetup");
    if is_reference() {
        eprintln!("SKIP: the reference luks filter reads LUKSv1 only");
        return;
    }
    let dir = TempDir::new();
    let (img, key) = (dir.join("l2a.img"), dir.join("key"));
    fs::write(&key, "secret").unwrap();
    let args = [
        "--type",
        "luks2",
        "--pbkdf",
        "argon2id",
        "--pbkdf-memory",
        "32",
        "--pbkdf-force-iterations",
        "4",
    ];
    if luks_format(&img, &key, &args) {
        luks_round_trip(&img, &key);
    }
}

#[test]
fn luks_wrong_passphrase_fails_the_connection() {
    skip_unless!("cryptsetup");
    let dir = TempDir::new();
    let (img, key) = (dir.join("l1.img"), dir.join("key"));
    fs::write(&key, "secret").unwrap();
    let args = ["--type", "luks1", "--pbkdf-force-iterations", "1000"];
    if !luks_format(&img, &key, &args) {
        return;
    }
    let srv = Server::start(["--filter=luks", "file", path_str(&img), "passphrase=wrong"]);
    let mut c = srv.connect_raw();
    assert!(c.handshake_go("").is_err());
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        srv.stderr()
            .contains("LUKS passphrase is not correct, no key slot could be unlocked"),
        "{}",
        srv.stderr()
    );
}

#[test]
fn ext2_serves_a_file_inside_the_filesystem() {
    skip_unless!("mke2fs");
    let dir = TempDir::new();
    let content = dir.join("content");
    fs::create_dir(&content).unwrap();
    let want = write_random_file(&content.join("disk.raw"), 3_000_000, 9);
    for t in ["ext2", "ext4"] {
        let img = dir.join(format!("{t}.img"));
        fs::File::create(&img).unwrap().set_len(16 << 20).unwrap();
        let out = run_tool(
            "mke2fs",
            ["-q", "-t", t, "-d", path_str(&content), path_str(&img)],
        );
        assert!(out.success(), "{}", out.describe());
        let srv = Server::start([
            "--filter=ext2",
            "file",
            path_str(&img),
            "ext2file=/disk.raw",
        ]);
        let mut c = srv.connect_raw();
        let e = c.handshake_go("").expect("handshake");
        assert_eq!(e.size, want.len() as u64);
        let got = c.pread(1000, 2_000_000, 1).expect("io").unwrap();
        assert!(got == want[1000..2_001_000], "{t}: data differs");
    }
}

#[test]
fn ext2_missing_file_fails_the_connection() {
    skip_unless!("mke2fs");
    let dir = TempDir::new();
    let img = dir.join("e.img");
    fs::File::create(&img).unwrap().set_len(8 << 20).unwrap();
    let out = run_tool("mke2fs", ["-q", "-t", "ext4", path_str(&img)]);
    assert!(out.success(), "{}", out.describe());
    let srv = Server::start(["--filter=ext2", "file", path_str(&img), "ext2file=/nope"]);
    let mut c = srv.connect_raw();
    assert!(c.handshake_go("").is_err());
}

#[test]
fn ext2_relative_path_is_refused() {
    let (code, err) = config_fails(&["--filter=ext2", "null", "ext2file=foo"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("the file parameter must refer to an absolute path"),
        "{err}"
    );
}
