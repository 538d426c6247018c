//! The ext2 filter's write path: writes into the allocated blocks of a
//! file inside an ext2/3/4 image land in place, checked with debugfs and
//! e2fsck; writes needing allocation fail.

use nbdkit_tests::{path_str, run_tool, skip_unless, write_random_file, Server, TempDir};
use std::fs;
use std::path::Path;

/// Connects to `argv[1]`, checks the size `argv[2]`, applies the writes
/// `argv[5]` (JSON: [op, offset, length, seed]) to the export and to the
/// copy of `argv[3]` written to `argv[4]`, then reads the export back and
/// compares. Writes listed in `argv[6]` must fail with EIO.
const SCRIPT: &str = r#"
import json, nbd, random, sys
uri, size, orig, expected = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
ops, bad = json.loads(sys.argv[5]), json.loads(sys.argv[6])
h = nbd.NBD()
h.connect_uri(uri)
assert h.get_size() == size, h.get_size()
assert not h.is_read_only()
exp = bytearray(open(orig, 'rb').read())
for op, off, n, seed in ops:
    if op == 'write':
        data = random.Random(seed).randbytes(n)
        h.pwrite(data, off)
        exp[off:off + n] = data
    elif op == 'zero':
        h.zero(n, off)
        exp[off:off + n] = bytes(n)
    elif op == 'trim':
        h.trim(n, off)
for off, n in bad:
    try:
        h.pwrite(b'x' * n, off)
    except nbd.Error as e:
        assert e.errno == 'EIO', e.errno
    else:
        raise SystemExit('write at %d needing allocation succeeded' % off)
h.flush()
got = b''.join(h.pread(min(1 << 24, size - o), o) for o in range(0, size, 1 << 24))
assert got == bytes(exp), 'read back differs'
h.shutdown()
open(expected, 'wb').write(exp)
"#;

fn mkfs(img: &Path, size: u64, args: &[&str], content: &Path) {
    fs::File::create(img).unwrap().set_len(size).unwrap();
    let mut a: Vec<&str> = vec!["-q"];
    a.extend_from_slice(args);
    a.extend_from_slice(&["-d", path_str(content), path_str(img)]);
    let out = run_tool("mke2fs", &a);
    assert!(out.success(), "{}", out.describe());
}

/// The file `name` inside `img`, as debugfs dumps it.
fn dump(dir: &Path, img: &Path, name: &str) -> Vec<u8> {
    let out_file = dir.join("dumped");
    let _ = fs::remove_file(&out_file);
    let out = run_tool(
        "debugfs",
        [
            "-R",
            &format!("dump {name} {}", path_str(&out_file)),
            path_str(img),
        ],
    );
    assert!(out.success(), "{}", out.describe());
    fs::read(&out_file).unwrap_or_else(|e| panic!("debugfs dump {name}: {e}"))
}

fn fsck_clean(img: &Path) {
    let out = run_tool("e2fsck", ["-fn", path_str(img)]);
    assert!(out.success(), "e2fsck: {}", out.describe());
}

/// Serve `file` of `img` with the filter, apply `ops` and `bad` through
/// python nbd, stop, and check the file in the image is what the client
/// wrote, that nothing else broke, and return the expected contents.
#[allow(clippy::too_many_arguments)]
fn write_and_check(
    dir: &Path,
    img: &Path,
    file: &str,
    dump_name: &str,
    orig: &[u8],
    ops: &str,
    bad: &str,
) -> Vec<u8> {
    let orig_path = dir.join("orig");
    let expected = dir.join("expected");
    fs::write(&orig_path, orig).unwrap();
    let mut srv = Server::start([
        "--filter=ext2",
        "file",
        path_str(img),
        &format!("ext2file={file}"),
    ]);
    let out = run_tool(
        "/usr/bin/python3",
        [
            "-c",
            SCRIPT,
            &srv.uri(),
            &orig.len().to_string(),
            path_str(&orig_path),
            path_str(&expected),
            ops,
            bad,
        ],
    );
    assert!(
        out.success(),
        "{}\n--- server ---\n{}",
        out.describe(),
        srv.stderr()
    );
    if bad != "[]" {
        assert!(
            srv.stderr()
                .contains("ext2: writing to unallocated blocks is not supported"),
            "{}",
            srv.stderr()
        );
    }
    srv.stop();
    let want = fs::read(&expected).unwrap();
    let got = dump(dir, img, dump_name);
    assert!(got == want, "{file}: the file inside the image differs");
    fsck_clean(img);
    want
}

const OPS: &str = r#"[["write", 0, 4096, 1], ["write", 1000, 5000, 2],
    ["write", 4193527, 777, 3], ["write", 2097149, 70000, 4], ["write", 123456, 1, 5],
    ["zero", 40000, 8192, 0], ["write", 3000000, 1048576, 6]]"#;

#[test]
fn ext2_writes_in_place_on_ext2_ext3_ext4() {
    skip_unless!("mke2fs", "debugfs", "e2fsck", "python3-nbd");
    let dir = TempDir::new();
    let content = dir.join("content");
    fs::create_dir(&content).unwrap();
    let orig = write_random_file(&content.join("disk.img"), 4 << 20, 21);
    for t in ["ext2", "ext3", "ext4"] {
        let img = dir.join(format!("{t}.img"));
        mkfs(&img, 32 << 20, &["-t", t], &content);
        let want = write_and_check(dir.path(), &img, "/disk.img", "/disk.img", &orig, OPS, "[]");
        assert!(want != orig);
    }
}

/// The reference nbdkit (which writes through libext2fs), given the same
/// writes, leaves the same file contents.
#[test]
fn ext2_writes_match_the_reference_nbdkit() {
    skip_unless!("mke2fs", "debugfs", "e2fsck", "python3-nbd");
    if !Path::new("/usr/bin/nbdkit").exists() {
        eprintln!("SKIP: no reference /usr/bin/nbdkit");
        return;
    }
    let dir = TempDir::new();
    let content = dir.join("content");
    fs::create_dir(&content).unwrap();
    let orig = write_random_file(&content.join("disk.img"), 4 << 20, 22);
    let ops = OPS;
    let img = dir.join("ours.img");
    mkfs(&img, 32 << 20, &["-t", "ext4"], &content);
    let ours = write_and_check(dir.path(), &img, "/disk.img", "/disk.img", &orig, ops, "[]");

    let ref_img = dir.join("ref.img");
    mkfs(&ref_img, 32 << 20, &["-t", "ext4"], &content);
    fs::write(dir.join("script.py"), SCRIPT).unwrap();
    let out = run_tool(
        "/usr/bin/nbdkit",
        [
            "-U",
            "-",
            "--filter=ext2",
            "file",
            path_str(&ref_img),
            "ext2file=/disk.img",
            "--run",
            &format!(
                "/usr/bin/python3 {} \"$uri\" {} {} {} '{}' '[]'",
                path_str(&dir.join("script.py")),
                orig.len(),
                path_str(&dir.join("orig")),
                path_str(&dir.join("ref-expected")),
                ops.replace('\n', " ")
            ),
        ],
    );
    assert!(out.success(), "reference: {}", out.describe());
    let theirs = dump(dir.path(), &ref_img, "/disk.img");
    assert!(
        ours == theirs,
        "the file differs from the reference's result"
    );
    fsck_clean(&ref_img);
}

#[test]
fn ext2_writes_through_triple_indirect_blocks() {
    skip_unless!("mke2fs", "debugfs", "e2fsck", "python3-nbd");
    let dir = TempDir::new();
    let content = dir.join("content");
    fs::create_dir(&content).unwrap();
    // 1 KiB blocks: past 12 + 256 + 65536 blocks the file uses the
    // triple indirect block.
    let orig = write_random_file(&content.join("big.img"), (68 << 20) + 12345, 23);
    let img = dir.join("e2.img");
    mkfs(&img, 80 << 20, &["-t", "ext2", "-b", "1024"], &content);
    let n = orig.len();
    let ops = format!(
        r#"[["write", 0, 100, 1], ["write", 12278, 20, 2], ["write", 274427, 10, 3],
        ["write", 67383196, 5000, 4], ["write", {}, 4000, 5], ["write", 41943043, 3145728, 6],
        ["zero", 70000000, 100000, 0]]"#,
        n - 4000
    );
    write_and_check(dir.path(), &img, "/big.img", "/big.img", &orig, &ops, "[]");
}

#[test]
fn ext2_writes_into_a_sparse_file_with_a_deep_extent_tree() {
    skip_unless!("mke2fs", "debugfs", "e2fsck", "python3-nbd");
    let dir = TempDir::new();
    let content = dir.join("content");
    fs::create_dir_all(content.join("sub")).unwrap();
    // Data in every other 1 KiB block: 1500 extents, a tree of depth 2.
    let mut orig = vec![0u8; 3000 * 1024];
    let data = nbdkit_tests::Prng::new(24).bytes(1500 * 1024);
    for b in (0..3000).step_by(2) {
        let i = b / 2 * 1024;
        orig[b * 1024..b * 1024 + 1024].copy_from_slice(&data[i..i + 1024]);
    }
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = fs::File::create(content.join("sub/sparse.img")).unwrap();
        f.set_len(orig.len() as u64).unwrap();
        for b in (0..3000).step_by(2) {
            f.seek(SeekFrom::Start(b as u64 * 1024)).unwrap();
            f.write_all(&orig[b * 1024..b * 1024 + 1024]).unwrap();
        }
    }
    std::os::unix::fs::symlink("sub/sparse.img", content.join("link")).unwrap();
    let img = dir.join("e4.img");
    mkfs(&img, 32 << 20, &["-t", "ext4", "-b", "1024"], &content);
    let ex = run_tool("debugfs", ["-R", "ex /sub/sparse.img", path_str(&img)]);
    assert!(
        ex.stdout.contains(" 0/ 2 "),
        "depth 2 expected: {}",
        ex.stdout
    );
    let ops: Vec<String> = (0..3000)
        .step_by(74)
        .map(|b| format!(r#"["write", {}, 900, {b}]"#, b * 1024 + 50))
        .chain(["[\"zero\", 2048, 1024, 0]".to_string()])
        .collect();
    let ops = format!("[{}]", ops.join(", "));
    // Holes: a whole hole, a write straddling data and a hole, everything.
    let bad = "[[1024, 10], [1000, 100], [0, 3072000]]";
    let want = write_and_check(
        dir.path(),
        &img,
        "/sub/sparse.img",
        "/sub/sparse.img",
        &orig,
        &ops,
        bad,
    );
    // Through the symbolic link too.
    write_and_check(
        dir.path(),
        &img,
        "/link",
        "/sub/sparse.img",
        &want,
        "[[\"write\", 4096, 1024, 9]]",
        "[[3072, 1]]",
    );
}

#[test]
fn ext2_unwritten_extents_are_not_written() {
    skip_unless!("mke2fs", "debugfs", "e2fsck", "python3-nbd");
    let dir = TempDir::new();
    let content = dir.join("content");
    fs::create_dir(&content).unwrap();
    write_random_file(&content.join("other"), 100_000, 25);
    let img = dir.join("u.img");
    mkfs(&img, 32 << 20, &["-t", "ext4", "-b", "4096"], &content);
    // 2 MiB file: blocks 0-255 unwritten, 256-511 written.
    let cmds = dir.join("cmds");
    let half = dir.join("half");
    let data = write_random_file(&half, 1 << 20, 26);
    fs::write(
        &cmds,
        format!(
            "write {} /f\nsif /f size 2097152\nfallocate /f 256 511\n",
            path_str(&half)
        ),
    )
    .unwrap();
    let out = run_tool("debugfs", ["-w", "-f", path_str(&cmds), path_str(&img)]);
    assert!(out.success(), "{}", out.describe());
    let ex = run_tool("debugfs", ["-R", "ex /f", path_str(&img)]);
    assert!(ex.stdout.contains("Uninit"), "{}", ex.stdout);
    fsck_clean(&img);
    let mut orig = data.clone();
    orig.resize(2 << 20, 0);
    let ops = r#"[["write", 0, 4096, 1], ["write", 1048000, 576, 2]]"#;
    let bad = "[[1048576, 1], [1048000, 1000], [2000000, 4096]]";
    write_and_check(dir.path(), &img, "/f", "/f", &orig, ops, bad);
}

#[test]
fn ext2_read_only_connection_does_not_write() {
    skip_unless!("mke2fs", "python3-nbd");
    let dir = TempDir::new();
    let content = dir.join("content");
    fs::create_dir(&content).unwrap();
    write_random_file(&content.join("disk.img"), 1 << 20, 27);
    let img = dir.join("r.img");
    mkfs(&img, 16 << 20, &["-t", "ext4"], &content);
    let srv = Server::start([
        "-r",
        "--filter=ext2",
        "file",
        path_str(&img),
        "ext2file=/disk.img",
    ]);
    let out = run_tool(
        "/usr/bin/python3",
        [
            "-c",
            "import nbd, sys\nh = nbd.NBD()\nh.connect_uri(sys.argv[1])\nassert h.is_read_only()\n",
            &srv.uri(),
        ],
    );
    assert!(out.success(), "{}", out.describe());
}
