//! The xz and qcow2dec filters, on files made by the real tools (xz,
//! sfdisk, qemu-img, qemu-io), compared byte for byte with the original.

use nbdkit_tests::{assert_bytes_eq, path_str, run_tool, skip_unless, Prng, Server, TempDir};
use std::fs;
use std::path::Path;

/// Copy the whole export of `srv` to a file and return its bytes.
fn copy_out(srv: &Server, dir: &TempDir, name: &str) -> Vec<u8> {
    let out = dir.join(name);
    run_tool("nbdcopy", [srv.uri().as_str(), path_str(&out)]).assert_success();
    fs::read(&out).unwrap()
}

/// Data that compresses a little but is not trivial.
fn disk_data(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = Prng::new(seed);
    let mut v = vec![0u8; len];
    for chunk in v.chunks_mut(4096) {
        match rng.next_u64() % 3 {
            0 => {}
            1 => rng.fill(chunk),
            _ => chunk.fill(rng.next_u64() as u8),
        }
    }
    v
}

// ---------------------------------------------------------------------------
// xz
// ---------------------------------------------------------------------------

/// The manual's example: a partitioned disk compressed with small blocks,
/// served through the partition filter.
#[test]
fn xz_partitioned_disk_matches_the_original_partition() {
    skip_unless!("xz", "sfdisk", "nbdcopy");
    let dir = TempDir::new();
    let img = dir.join("disk.img");
    let mut disk = disk_data(24 << 20, 1);
    fs::write(&img, &disk).unwrap();
    let script = dir.join("layout");
    fs::write(
        &script,
        "label: dos\nstart=2048, size=20480, type=83\ntype=83\n",
    )
    .unwrap();
    let out = std::process::Command::new("sfdisk")
        .arg(&img)
        .stdin(fs::File::open(&script).unwrap())
        .output()
        .unwrap();
    assert!(out.status.success(), "sfdisk: {out:?}");
    disk = fs::read(&img).unwrap();
    run_tool(
        "xz",
        ["-0", "-k", "-T2", "--block-size=1MiB", path_str(&img)],
    )
    .assert_success();
    let xz = dir.join("disk.img.xz");

    let srv = Server::start([
        "--filter=partition",
        "--filter=xz",
        "file",
        path_str(&xz),
        "partition=1",
    ]);
    let got = copy_out(&srv, &dir, "p1");
    assert_bytes_eq("partition 1", &got, &disk[2048 * 512..(2048 + 20480) * 512]);

    if nbdkit_tests::have_tool("qemu-img") {
        let raw = dir.join("p1.raw");
        fs::write(&raw, &disk[2048 * 512..(2048 + 20480) * 512]).unwrap();
        let out = run_tool(
            "qemu-img",
            [
                "compare",
                "-f",
                "raw",
                "-F",
                "raw",
                path_str(&raw),
                &srv.uri(),
            ],
        );
        assert!(out.success(), "{}", out.describe());
    }
}

/// Reads that cross block boundaries and come back to evicted blocks.
#[test]
fn xz_random_reads_with_a_small_cache() {
    skip_unless!("xz");
    let dir = TempDir::new();
    let img = dir.join("r.img");
    let data = disk_data(5 << 20, 2);
    fs::write(&img, &data).unwrap();
    run_tool("xz", ["-0", "-k", "--block-size=300000", path_str(&img)]).assert_success();
    let srv = Server::start([
        "--filter=xz",
        "file",
        path_str(&dir.join("r.img.xz")),
        "xz-max-depth=1",
    ]);
    let mut c = srv.connect_raw();
    let e = c.handshake_go("").expect("handshake");
    assert_eq!(e.size, data.len() as u64);
    let mut rng = Prng::new(3);
    for h in 0..40u64 {
        let len = 1 + (rng.next_u64() % 700_000) as usize;
        let off = (rng.next_u64() % (data.len() - len) as u64) as usize;
        let got = c
            .pread(off as u64, len as u32, h)
            .expect("io")
            .expect("read ok");
        assert_bytes_eq("read", &got, &data[off..off + len]);
    }
    // Read-only.
    let err = c.pwrite(0, &[1u8; 512], 99).expect("io");
    assert_ne!(err, 0);
    c.disconnect().ok();
}

/// A file of one block larger than xz-max-block is refused with nbdkit's
/// message.
#[test]
fn xz_single_large_block_is_refused() {
    skip_unless!("xz", "nbdinfo");
    let dir = TempDir::new();
    let img = dir.join("one.img");
    fs::write(&img, disk_data(3 << 20, 4)).unwrap();
    run_tool("xz", ["-0", "-k", path_str(&img)]).assert_success();
    let srv = Server::start([
        "--filter=xz",
        "file",
        path_str(&dir.join("one.img.xz")),
        "xz-max-block=1M",
    ]);
    let out = run_tool("nbdinfo", [srv.uri().as_str()]);
    assert!(!out.success());
    let err = srv.stderr();
    assert!(
        err.contains("xz file largest block is bigger than maxblock")
            && err.contains("maxblock = 1048576 (bytes)")
            && err.contains("largest block in xz file = 3145728 (bytes)"),
        "{err}"
    );
}

#[test]
fn xz_not_an_xz_file() {
    skip_unless!("nbdinfo");
    let dir = TempDir::new();
    let img = dir.join("plain");
    fs::write(&img, vec![1u8; 4096]).unwrap();
    let srv = Server::start(["--filter=xz", "file", path_str(&img)]);
    assert!(!run_tool("nbdinfo", [srv.uri().as_str()]).success());
    assert!(
        srv.stderr().contains("xz: not an xz file"),
        "{}",
        srv.stderr()
    );
}

#[test]
fn xz_bad_parameters() {
    for (arg, msg) in [
        ("xz-max-depth=0", "'xz-max-depth' parameter must be >= 1"),
        (
            "xz-max-depth=foo",
            "xz-max-depth: empty string where we expected a number",
        ),
        ("xz-max-block=foo", "could not parse size string (foo)"),
    ] {
        let e = Server::try_start(["--filter=xz", "memory", "1M", arg])
            .err()
            .unwrap_or_else(|| panic!("{arg} accepted"));
        assert!(e.contains(msg), "{arg}: {e}");
    }
}

// ---------------------------------------------------------------------------
// qcow2dec
// ---------------------------------------------------------------------------

fn qemu_img(args: &[&str]) {
    run_tool("qemu-img", args).assert_success();
}

/// Serve `qcow2` through qcow2dec and compare with `qemu-img convert -O raw`.
fn assert_qcow2_matches_qemu(dir: &TempDir, qcow2: &Path) {
    let raw = dir.join("expected.raw");
    qemu_img(&["convert", "-O", "raw", path_str(qcow2), path_str(&raw)]);
    let want = fs::read(&raw).unwrap();
    let srv = Server::start(["--filter=qcow2dec", "file", path_str(qcow2)]);
    let got = copy_out(&srv, dir, "got.raw");
    assert_bytes_eq("qcow2dec", &got, &want);
}

/// An image with a pattern, a zeroed range and unallocated space.
fn written_qcow2(dir: &TempDir, name: &str, opts: &str) -> std::path::PathBuf {
    let img = dir.join(name);
    qemu_img(&["create", "-f", "qcow2", "-o", opts, path_str(&img), "9M"]);
    for cmd in [
        "write -P 0x55 0 1M",
        "write -P 0xaa 3M 70k",
        "write -P 0x11 5000k 1234k",
        "write -z 3M 8k",
        "write -P 0x77 9215k 1k",
    ] {
        run_tool("qemu-io", ["-f", "qcow2", "-c", cmd, path_str(&img)]).assert_success();
    }
    img
}

#[test]
fn qcow2dec_plain_images_of_every_cluster_size() {
    skip_unless!("qemu-img", "qemu-io", "nbdcopy");
    for (cs, compat) in [
        ("512", "1.1"),
        ("4096", "0.10"),
        ("65536", "1.1"),
        ("2M", "1.1"),
    ] {
        let dir = TempDir::new();
        let img = written_qcow2(
            &dir,
            "a.qcow2",
            &format!("cluster_size={cs},compat={compat}"),
        );
        assert_qcow2_matches_qemu(&dir, &img);
    }
}

#[test]
fn qcow2dec_compressed_zlib_and_zstd() {
    skip_unless!("qemu-img", "qemu-io", "nbdcopy");
    for ctype in ["zlib", "zstd"] {
        let dir = TempDir::new();
        let src = dir.join("src.raw");
        fs::write(&src, disk_data(6 << 20, 5)).unwrap();
        let img = dir.join("c.qcow2");
        qemu_img(&[
            "convert",
            "-c",
            "-O",
            "qcow2",
            "-o",
            &format!("compression_type={ctype}"),
            path_str(&src),
            path_str(&img),
        ]);
        let srv = Server::start(["--filter=qcow2dec", "file", path_str(&img)]);
        let got = copy_out(&srv, &dir, "got.raw");
        assert_bytes_eq(ctype, &got, &fs::read(&src).unwrap());
    }
}

#[test]
fn qcow2dec_unallocated_clusters_are_holes() {
    skip_unless!("qemu-img", "qemu-io", "nbdinfo");
    let dir = TempDir::new();
    let img = written_qcow2(&dir, "h.qcow2", "cluster_size=65536");
    let srv = Server::start(["--filter=qcow2dec", "file", path_str(&img)]);
    let out = run_tool("nbdinfo", ["--map", srv.uri().as_str()]);
    assert!(out.success(), "{}", out.describe());
    let map = &out.stdout;
    // 1M..3M was never written: a hole that reads as zeroes.
    assert!(
        map.lines().any(
            |l| l.split_whitespace().take(3).collect::<Vec<_>>() == ["1048576", "2097152", "3"]
        ),
        "{map}"
    );
}

#[test]
fn qcow2dec_refuses_backing_files() {
    skip_unless!("qemu-img", "nbdinfo");
    let dir = TempDir::new();
    let base = dir.join("base.qcow2");
    qemu_img(&["create", "-f", "qcow2", path_str(&base), "1M"]);
    let top = dir.join("top.qcow2");
    qemu_img(&[
        "create",
        "-f",
        "qcow2",
        "-b",
        path_str(&base),
        "-F",
        "qcow2",
        path_str(&top),
    ]);
    let srv = Server::start(["--filter=qcow2dec", "file", path_str(&top)]);
    assert!(!run_tool("nbdinfo", [srv.uri().as_str()]).success());
    assert!(srv.stderr().contains("backing file"), "{}", srv.stderr());
}

/// Corrupt L1 entries give read errors, not crashes.
#[test]
fn qcow2dec_corrupt_tables_are_read_errors() {
    skip_unless!("qemu-img", "qemu-io", "nbdinfo", "nbdcopy");
    let dir = TempDir::new();
    let img = written_qcow2(&dir, "k.qcow2", "cluster_size=65536");
    let good = fs::read(&img).unwrap();
    let l1 = u64::from_be_bytes(good[40..48].try_into().unwrap()) as usize;
    for (i, entry) in [
        (1u64 << 63) | (1 << 50), // beyond the end of the file
        (1u64 << 63) | 0x1200,    // not cluster-aligned
    ]
    .into_iter()
    .enumerate()
    {
        let mut bad = good.clone();
        bad[l1..l1 + 8].copy_from_slice(&entry.to_be_bytes());
        let path = dir.join(format!("bad{i}.qcow2"));
        fs::write(&path, &bad).unwrap();
        let mut srv = Server::start(["--filter=qcow2dec", "file", path_str(&path)]);
        let out = run_tool("nbdcopy", [srv.uri().as_str(), path_str(&dir.join("o"))]);
        assert!(!out.success(), "entry {entry:#x} read");
        assert!(
            srv.stderr().contains("qcow2dec: L2 table"),
            "{}",
            srv.stderr()
        );
        assert!(srv.is_alive());
    }
    let mut bad = good.clone();
    bad[0] = b'X';
    let path = dir.join("nomagic.qcow2");
    fs::write(&path, &bad).unwrap();
    let srv = Server::start(["--filter=qcow2dec", "file", path_str(&path)]);
    assert!(!run_tool("nbdinfo", [srv.uri().as_str()]).success());
    assert!(
        srv.stderr().contains("qcow2dec: not a qcow2 file"),
        "{}",
        srv.stderr()
    );
}

#[test]
fn qcow2dec_extended_l2_subclusters() {
    skip_unless!("qemu-img", "qemu-io", "nbdcopy");
    let dir = TempDir::new();
    let img = written_qcow2(&dir, "x.qcow2", "cluster_size=65536,extended_l2=on");
    assert_qcow2_matches_qemu(&dir, &img);
}
