//! The filters of the core (offset, truncate, partition, swab, evil,
//! noextents, error, ...) driven through real clients.

use nbdkit_tests::{path_str, run_tool, skip_unless, Server, TempDir};
use std::fs;

/// `nbdinfo --size URI`.
fn size_of(uri: &str) -> u64 {
    let out = run_tool("nbdinfo", ["--size", uri]).assert_success();
    out.stdout
        .trim()
        .parse()
        .expect("nbdinfo --size prints a number")
}

/// The whole export, copied to a file with nbdcopy.
fn contents(uri: &str, dir: &TempDir) -> Vec<u8> {
    let out = dir.join("copy.img");
    run_tool("nbdcopy", [uri, path_str(&out)]).assert_success();
    fs::read(out).expect("nbdcopy output")
}

/// A 1 MiB disk with an MBR: partition 1 at sector 8 (16 sectors), an
/// extended partition at sector 64 holding logical partition 5 at sector
/// 72 (8 sectors). Each partition starts with its number repeated.
fn mbr_disk(dir: &TempDir) -> String {
    let mut d = vec![0u8; 1 << 20];
    let entry = |d: &mut [u8], at: usize, ty: u8, start: u32, len: u32| {
        d[at + 4] = ty;
        d[at + 8..at + 12].copy_from_slice(&start.to_le_bytes());
        d[at + 12..at + 16].copy_from_slice(&len.to_le_bytes());
    };
    entry(&mut d, 0x1be, 0x83, 8, 16);
    entry(&mut d, 0x1ce, 0x05, 64, 64);
    d[510] = 0x55;
    d[511] = 0xaa;
    // The extended boot record: logical partition 8 sectors after it.
    let ebr = 64 * 512;
    entry(&mut d, ebr + 0x1be, 0x83, 8, 8);
    d[ebr + 510] = 0x55;
    d[ebr + 511] = 0xaa;
    d[8 * 512..8 * 512 + 512].fill(1);
    d[72 * 512..72 * 512 + 512].fill(5);
    let path = dir.join("mbr.img");
    fs::write(&path, d).unwrap();
    path_str(&path).to_string()
}

#[test]
fn partition_finds_primary_and_logical_partitions() {
    skip_unless!("nbdinfo");
    skip_unless!("nbdcopy");
    let dir = TempDir::new();
    let disk = mbr_disk(&dir);
    let p1 = Server::start(["--filter=partition", "file", &disk, "partition=1"]);
    assert_eq!(size_of(&p1.uri()), 16 * 512);
    assert_eq!(&contents(&p1.uri(), &dir)[..512], &[1u8; 512][..]);
    let p5 = Server::start(["--filter=partition", "file", &disk, "partition=5"]);
    assert_eq!(size_of(&p5.uri()), 8 * 512);
    assert_eq!(&contents(&p5.uri(), &dir)[..512], &[5u8; 512][..]);
}

#[test]
fn partition_refuses_the_extended_container_and_missing_ones() {
    skip_unless!("nbdinfo");
    let dir = TempDir::new();
    let disk = mbr_disk(&dir);
    for n in ["2", "3", "6"] {
        let arg = format!("partition={n}");
        let srv = Server::start(["--filter=partition", "file", &disk, &arg]);
        let out = run_tool("nbdinfo", ["--size", &srv.uri()]);
        assert!(!out.success(), "partition {n} should not open");
        assert!(srv
            .stderr()
            .contains(&format!("MBR partition {n} not found")));
    }
}

#[test]
fn offset_and_truncate_sizes() {
    skip_unless!("nbdinfo");
    let srv = Server::start([
        "--filter=truncate",
        "--filter=offset",
        "memory",
        "10M",
        "offset=1M",
        "range=5M",
        "round-up=4M",
    ]);
    assert_eq!(size_of(&srv.uri()), 8 << 20);
}

#[test]
fn swab_swaps_pattern_words() {
    skip_unless!("nbdcopy");
    let dir = TempDir::new();
    let srv = Server::start(["--filter=swab", "pattern", "64K", "swab-bits=64"]);
    let data = contents(&srv.uri(), &dir);
    for (i, w) in data.chunks(8).enumerate() {
        assert_eq!(u64::from_le_bytes(w.try_into().unwrap()), i as u64 * 8);
    }
}

#[test]
fn evil_stuck_bits_are_reproducible() {
    skip_unless!("nbdcopy");
    let dir = TempDir::new();
    // noextents: nbdcopy would skip reading the holes of null.
    let args = [
        "--filter=evil",
        "--filter=noextents",
        "null",
        "256K",
        "evil=stuck-bits",
        "evil-probability=0.001",
        "evil-seed=42",
    ];
    let a = contents(&Server::start(args).uri(), &dir);
    let b = contents(&Server::start(args).uri(), &dir);
    assert_eq!(a, b);
    assert!(a.iter().any(|&x| x != 0), "some bits must be stuck high");
}

#[test]
fn noextents_reports_all_data() {
    skip_unless!("nbdinfo");
    let srv = Server::start(["--filter=noextents", "memory", "1M"]);
    let out = run_tool("nbdinfo", ["--map", &srv.uri()]).assert_success();
    assert!(out.stdout.contains("data"), "{}", out.stdout);
    assert!(!out.stdout.contains("hole"), "{}", out.stdout);
}

#[test]
fn error_rate_100_fails_reads() {
    skip_unless!("nbdcopy");
    let dir = TempDir::new();
    let srv = Server::start([
        "--filter=error",
        "--filter=noextents",
        "memory",
        "1M",
        "error-pread-rate=100%",
    ]);
    let out = dir.join("x.img");
    let r = run_tool("nbdcopy", [srv.uri().as_str(), path_str(&out)]);
    assert!(!r.success());
    assert!(srv.stderr().contains("injecting EIO error into pread"));
}
