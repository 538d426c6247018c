//! The floppy plugin: a FAT32 disk made from a directory, checked with
//! fsck.vfat, and with mtools reading the files back.

use core::time::Duration;
use nbdkit_tests::{nbdkit_cmd, path_str, run, run_tool, skip_unless, Server, TempDir};
use std::fs;
use std::path::Path;
use std::process::Command;

/// A small tree: long and short names, mixed case, a subdirectory two
/// levels deep, an empty file and a name that is not ASCII.
fn make_tree(root: &Path) {
    fs::create_dir_all(root.join("sub/deeper")).unwrap();
    fs::write(root.join("hello.txt"), b"hello\n").unwrap();
    let big: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    fs::write(root.join("A_Very_Long_File_Name_with_Mixed_Case.bin"), big).unwrap();
    fs::write(root.join("sub/short.TXT"), b"x\n").unwrap();
    fs::write(root.join("sub/deeper/data.dat"), vec![0x5a; 40_000]).unwrap();
    fs::write(root.join("empty"), b"").unwrap();
    fs::write(root.join("Ünïcödé name.txt"), b"unicode\n").unwrap();
}

/// The disk, copied out with nbdcopy.
fn copy_out(srv: &Server, out: &Path) {
    run_tool("nbdcopy", [srv.uri().as_str(), path_str(out)]).assert_success();
}

/// The FAT partition of a disk image (it starts at 1 MiB).
fn partition(disk: &Path, out: &Path) {
    let data = fs::read(disk).unwrap();
    fs::write(out, &data[1 << 20..]).unwrap();
}

#[test]
fn small_disk_passes_fsck() {
    skip_unless!("nbdcopy", "fsck.vfat", "sfdisk");
    let dir = TempDir::new();
    let root = dir.join("root");
    make_tree(&root);
    let srv = Server::start(["floppy", path_str(&root)]);
    let disk = dir.join("disk.img");
    copy_out(&srv, &disk);
    let dump = run_tool("sfdisk", ["--dump", path_str(&disk)]).assert_success();
    assert!(
        dump.stdout.contains("start=        2048"),
        "{}",
        dump.describe()
    );
    assert!(dump.stdout.contains("type=c"), "{}", dump.describe());
    let part = dir.join("part.img");
    partition(&disk, &part);
    let o = run_tool("fsck.vfat", ["-n", path_str(&part)]);
    assert!(o.success(), "{}", o.describe());
    // Six files and three directories (with the root), nothing to fix.
    assert!(o.stdout.contains("files"), "{}", o.describe());
}

#[test]
fn mtools_reads_back_every_file() {
    skip_unless!("nbdcopy", "mdir", "mcopy");
    let dir = TempDir::new();
    let root = dir.join("root");
    make_tree(&root);
    // mtools only takes FAT32 with at least 65525 clusters: ask for a
    // disk that large (it is mostly virtual zeroes).
    let srv = Server::start(["floppy", path_str(&root), "size=1100M", "label=MyLabel"]);
    let disk = dir.join("disk.img");
    copy_out(&srv, &disk);
    assert_eq!(fs::metadata(&disk).unwrap().len(), 1100 << 20);
    let image = format!("{}@@1M", path_str(&disk));
    let mtools = |tool: &str, args: &[&str]| {
        let mut cmd = Command::new(tool);
        cmd.env("MTOOLS_SKIP_CHECK", "1")
            .arg("-i")
            .arg(&image)
            .args(args);
        run(&mut cmd, Duration::from_secs(60))
    };
    let o = mtools("mdir", &["-/", "::"]);
    assert!(o.success(), "{}", o.describe());
    assert!(
        o.stdout.contains("Volume in drive : is MyLabel"),
        "{}",
        o.describe()
    );
    assert!(o
        .stdout
        .contains("A_Very_Long_File_Name_with_Mixed_Case.bin"));
    assert!(o.stdout.contains("Ünïcödé name.txt"), "{}", o.describe());
    assert!(o.stdout.contains("HELLO    TXT"));
    let back = dir.join("back");
    fs::create_dir(&back).unwrap();
    let o = mtools("mcopy", &["-s", "-n", "::/*", path_str(&back)]);
    assert!(o.success(), "{}", o.describe());
    for f in [
        "hello.txt",
        "A_Very_Long_File_Name_with_Mixed_Case.bin",
        "sub/short.TXT",
        "sub/deeper/data.dat",
        "empty",
        "Ünïcödé name.txt",
    ] {
        assert_eq!(
            fs::read(root.join(f)).unwrap(),
            fs::read(back.join(f)).unwrap_or_default(),
            "{f} differs"
        );
    }
}

#[test]
fn disk_is_read_only() {
    skip_unless!("nbdinfo");
    let dir = TempDir::new();
    let root = dir.join("root");
    make_tree(&root);
    let srv = Server::start(["floppy", &format!("dir={}", path_str(&root))]);
    let o = run_tool("nbdinfo", [srv.uri().as_str()]).assert_success();
    assert!(o.stdout.contains("is_read_only: true"), "{}", o.describe());
    assert!(
        o.stdout.contains("can_multi_conn: true"),
        "{}",
        o.describe()
    );
}

#[test]
fn bad_parameters_fail_with_nbdkit_messages() {
    let dir = TempDir::new();
    let root = dir.join("root");
    make_tree(&root);
    let file = root.join("hello.txt");
    let cases = [
        (
            vec![],
            "you must supply the dir=<DIRECTORY> parameter after the plugin name on the command line".to_string(),
        ),
        (
            vec![path_str(&root), path_str(&root)],
            "dir=<DIRECTORY> must only be set once".into(),
        ),
        (
            vec![path_str(&file)],
            format!("chdir: {}: Not a directory", path_str(&file)),
        ),
        (
            vec![path_str(&root), "size=1100000"],
            "filesystem is larger than \"size\" bytes".into(),
        ),
    ];
    for (params, want) in cases {
        let o = run(
            nbdkit_cmd()
                .args(["-U", "-", "floppy"])
                .args(&params)
                .args(["--run", "true"]),
            Duration::from_secs(30),
        );
        assert_eq!(o.code(), Some(1), "{}", o.describe());
        assert!(o.stderr.contains(&want), "want {want:?}: {}", o.describe());
    }
}
