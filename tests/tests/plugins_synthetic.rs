//! The synthetic plugins: pattern, random, sparse-random, ones, data,
//! info and the examples. Expected bytes were taken from nbdkit 1.32.5.

use nbdkit_tests::{nbdkit_cmd, run, run_tool, skip_unless, Server, TempDir, CMD_TIMEOUT};

/// Handshake with the default export and read `len` bytes at `offset`.
fn read(srv: &Server, export: &str, offset: u64, len: u32) -> (u64, Vec<u8>) {
    let mut c = srv.connect_raw();
    let e = c.handshake_go(export).expect("handshake");
    let data = c.pread(offset, len, 1).expect("io").expect("read ok");
    c.disconnect().ok();
    (e.size, data)
}

/// The NBD error of a write of `data` at `offset`.
fn write_error(srv: &Server, offset: u64, data: &[u8]) -> u32 {
    let mut c = srv.connect_raw();
    c.handshake_go("").expect("handshake");
    let e = c.pwrite(offset, data, 1).expect("io");
    c.disconnect().ok();
    e
}

const NBD_EIO: u32 = 5;
const NBD_EPERM: u32 = 1;

#[test]
fn pattern_words_hold_their_offset() {
    let srv = Server::start(["pattern", "1M"]);
    let (size, data) = read(&srv, "", 123_457, 4096);
    assert_eq!(size, 1 << 20);
    for (i, b) in data.iter().enumerate() {
        let off = 123_457 + i as u64;
        assert_eq!(
            *b,
            (off & !7).to_be_bytes()[(off & 7) as usize],
            "offset {off}"
        );
    }
    assert_eq!(write_error(&srv, 0, &[0; 8]), NBD_EPERM);
}

#[test]
fn random_matches_nbdkit_and_checks_writes() {
    let srv = Server::start(["random", "1M", "seed=7"]);
    let (_, data) = read(&srv, "", 0, 16);
    assert_eq!(
        data,
        [
            0x96, 0x06, 0x17, 0x72, 0xad, 0x7b, 0xf8, 0x18, 0x75, 0xff, 0xb9, 0xf3, 0xd1, 0x2d,
            0xc3, 0x41
        ]
    );
    assert_eq!(write_error(&srv, 0, &data), 0);
    assert_eq!(write_error(&srv, 0, &[0; 16]), NBD_EIO);
}

#[test]
fn sparse_random_matches_nbdkit() {
    let srv = Server::start([
        "sparse-random",
        "64M",
        "seed=3",
        "percent=50",
        "runlength=1048576",
    ]);
    // nbdkit: holes up to 2670592, then data blocks of one byte each.
    assert_eq!(read(&srv, "", 2_670_592 - 8, 8).1, [0; 8]);
    assert_eq!(read(&srv, "", 2_670_592, 8).1, [0xbf; 8]);
    assert_eq!(read(&srv, "", 2_670_592 + 4096, 8).1, [0x95; 8]);
    // An unaligned read generates its first block from its own offset.
    assert_eq!(read(&srv, "", 2_670_592 + 5, 4).1, [0x74; 4]);
    assert_eq!(write_error(&srv, 2_670_592, &[0xbf; 4096]), 0);
    assert_eq!(write_error(&srv, 2_670_592, &[0; 4096]), NBD_EIO);

    let srv = Server::start([
        "sparse-random",
        "1M",
        "seed=3",
        "percent=100",
        "random-content=true",
    ]);
    assert_eq!(
        read(&srv, "", 0, 8).1,
        [0xc0, 0xee, 0x51, 0xea, 0x0a, 0x83, 0x56, 0xe6]
    );
    assert_eq!(
        read(&srv, "", 8192, 8).1,
        [0xd2, 0xe9, 0x1a, 0x9e, 0x68, 0x95, 0xe4, 0x7e]
    );
}

#[test]
fn ones_reads_its_byte() {
    let srv = Server::start(["ones", "1M", "byte=0x5a"]);
    assert_eq!(read(&srv, "", 100, 100).1, [0x5a; 100]);
    assert_eq!(write_error(&srv, 0, &[1; 512]), 0);
    assert_eq!(read(&srv, "", 0, 4).1, [0x5a; 4]);
}

#[test]
fn data_manual_example() {
    let srv = Server::start(["data", " ( 0x55 0xAA )*2048 "]);
    let (size, data) = read(&srv, "", 0, 4096);
    assert_eq!(size, 4096);
    assert_eq!(data, b"\x55\xaa".repeat(2048));
}

#[test]
fn data_language() {
    let srv = Server::start([
        "data",
        "( 0x55 0xAA ) -> \\sig ( @0x1fe \\sig ) -> \\sector \\sector \\sector",
    ]);
    let (size, data) = read(&srv, "", 0x1fe, 514);
    assert_eq!(size, 1024);
    assert_eq!(&data[..2], b"\x55\xaa");
    assert_eq!(&data[512..], b"\x55\xaa");
    let srv = Server::start(["data", "\"Hello\"*2000", "size=8192"]);
    let (size, data) = read(&srv, "", 8190, 2);
    assert_eq!((size, &data[..]), (8192, &b"He"[..]));
    let srv = Server::start(["data", "<(printf abc)[1:] $v", "v=le16:0x0102"]);
    assert_eq!(read(&srv, "", 0, 4), (4, b"bc\x02\x01".to_vec()));
}

#[test]
fn data_huge_repeat_is_cut_at_size() {
    let srv = Server::start(["data", "( 1 2 )*1000000000000000", "size=1M"]);
    let (size, data) = read(&srv, "", (1 << 20) - 4, 4);
    assert_eq!((size, data), (1 << 20, vec![1, 2, 1, 2]));
}

#[test]
fn data_errors_are_nbdkit_errors() {
    for (expr, msg) in [
        ("( 1 2", "unmatched '(' in data string"),
        ("0x100", "data parameter BYTE must be in the range 0..255"),
        (
            "1 @-5",
            "data parameter @-5 must not be larger than the current offset 1",
        ),
        ("@0x7fffffffffffffff 1", "offset is larger than 2^63-1"),
    ] {
        let out = run(
            nbdkit_cmd().args(["data", expr, "--run", "true"]),
            CMD_TIMEOUT,
        );
        assert_eq!(out.code(), Some(1), "{expr}: {}", out.describe());
        assert!(out.stderr.contains(msg), "{expr}: {}", out.stderr);
    }
}

#[test]
fn info_reflects_export_name_and_address() {
    let srv = Server::start(["info"]);
    assert_eq!(read(&srv, "hello", 0, 5), (5, b"hello".to_vec()));
    let srv = Server::start(["info", "mode=base64exportname"]);
    assert_eq!(read(&srv, "aGVsbG8=", 0, 5), (5, b"hello".to_vec()));
    let srv = Server::start(["info", "address"]);
    assert_eq!(read(&srv, "", 0, 4), (4, b"unix".to_vec()));
    let srv = Server::start(["info", "time"]);
    let (size, t) = read(&srv, "", 0, 12);
    assert_eq!(size, 12);
    let secs = u64::from_be_bytes(t[..8].try_into().unwrap());
    assert!(secs > 1_600_000_000);
}

#[test]
fn examples_serve_what_nbdkit_serves() {
    let srv = Server::start(["example1"]);
    let (size, data) = read(&srv, "", 0x1b8, 72);
    assert_eq!(size, 100 << 20);
    assert_eq!(&data[..3], [0xe1, 0x5b, 0x02]);
    assert_eq!(&data[70..], [0x55, 0xaa]);

    let dir = TempDir::new();
    let file = dir.join("f");
    std::fs::write(&file, b"example two").unwrap();
    let srv = Server::start(["example2".to_string(), format!("file={}", file.display())]);
    assert_eq!(read(&srv, "", 0, 11), (11, b"example two".to_vec()));

    let srv = Server::start(["example3", "size=1M"]);
    assert_eq!(write_error(&srv, 512, b"abc"), 0);
    // Every connection gets a fresh disk.
    assert_eq!(read(&srv, "", 512, 3).1, [0, 0, 0]);
}

#[test]
fn dump_plugin_lists_nbdkit_callbacks() {
    let out = run(
        nbdkit_cmd().args(["sparse-random", "--dump-plugin"]),
        CMD_TIMEOUT,
    )
    .assert_success();
    for line in [
        "magic_config_key=size",
        "has_get_ready=1",
        "has_extents=1",
        "thread_model=parallel",
    ] {
        assert!(
            out.stdout.lines().any(|l| l == line),
            "{line}: {}",
            out.stdout
        );
    }
}

#[test]
fn data_copies_like_nbdkit() {
    skip_unless!("nbdcopy");
    let dir = TempDir::new();
    let img = dir.join("img");
    let srv = Server::start(["data", "1 2 3 @1048576 4", "size=2M"]);
    run_tool("nbdcopy", [srv.uri(), img.display().to_string()]).assert_success();
    let data = std::fs::read(&img).unwrap();
    assert_eq!(data.len(), 2 << 20);
    assert_eq!(&data[..4], [1, 2, 3, 0]);
    assert_eq!(data[1 << 20], 4);
}
