//! The partitioning plugin: MBR and GPT disks made of files, checked with
//! sfdisk and sgdisk, and byte for byte where nbdkit's output is fixed.

use core::time::Duration;
use nbdkit_tests::{nbdkit_cmd, path_str, run, run_tool, skip_unless, Server, TempDir};
use std::fs;

/// Files of the given sizes, filled with a byte per file.
fn files(dir: &TempDir, sizes: &[usize]) -> Vec<String> {
    sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let p = dir.join(format!("p{i}.img"));
            fs::write(&p, vec![b'a' + i as u8; n]).unwrap();
            path_str(&p).to_string()
        })
        .collect()
}

/// The whole virtual disk, copied out with nbdcopy.
fn copy_out(srv: &Server, dir: &TempDir) -> Vec<u8> {
    let out = dir.join("disk.out");
    run_tool("nbdcopy", [srv.uri().as_str(), path_str(&out)]).assert_success();
    fs::read(out).unwrap()
}

fn sfdisk_dump(dir: &TempDir, disk: &[u8]) -> String {
    let p = dir.join("dump.img");
    fs::write(&p, disk).unwrap();
    let o = run_tool("sfdisk", ["--dump", path_str(&p)]).assert_success();
    o.stdout.replace(path_str(&p), "D")
}

#[test]
fn mbr_sector_matches_nbdkit_byte_for_byte() {
    skip_unless!("nbdcopy");
    let dir = TempDir::new();
    let f = files(&dir, &[1000, 3000]);
    let srv = Server::start(["partitioning", &f[0], "mbr-id=0x82", &f[1]]);
    let disk = copy_out(&srv, &dir);
    assert_eq!(disk.len(), 2 * 1024 * 1024 + 3072);
    // Captured from nbdkit 1.32.5 with the same files.
    let mut mbr = [0u8; 512];
    mbr[0x1be..0x1ce].copy_from_slice(&[
        0x80, 254, 255, 255, 0x83, 254, 255, 255, 0, 8, 0, 0, 2, 0, 0, 0,
    ]);
    mbr[0x1ce..0x1de].copy_from_slice(&[
        0, 254, 255, 255, 0x82, 254, 255, 255, 0, 16, 0, 0, 6, 0, 0, 0,
    ]);
    mbr[0x1fe] = 0x55;
    mbr[0x1ff] = 0xaa;
    assert_eq!(&disk[..512], &mbr[..]);
    // The partitions hold the files, padded with zeroes to a sector.
    assert!(disk[1 << 20..(1 << 20) + 1000].iter().all(|b| *b == b'a'));
    assert!(disk[(1 << 20) + 1000..2 << 20].iter().all(|b| *b == 0));
    assert!(disk[2 << 20..].iter().take(3000).all(|b| *b == b'b'));
}

#[test]
fn mbr_with_more_than_four_files_uses_logical_partitions() {
    skip_unless!("nbdcopy", "sfdisk");
    let dir = TempDir::new();
    let f = files(&dir, &[1000, 3000, 70000, 512, 5000, 1024]);
    let mut args = vec!["partitioning", "partition-type=mbr", "alignment=512"];
    args.extend([f[0].as_str(), f[1].as_str(), "alignment=4k"]);
    args.extend(f[2..].iter().map(String::as_str));
    let srv = Server::start(args);
    let disk = copy_out(&srv, &dir);
    assert_eq!(disk.len(), 95_232);
    let dump = sfdisk_dump(&dir, &disk);
    // The layout nbdkit 1.32.5 builds from the same parameters.
    for line in [
        "D1 : start=           1, size=           2, type=83, bootable",
        "D2 : start=           3, size=           6, type=83",
        "D3 : start=          16, size=         137, type=83",
        "D4 : start=         153, size=          33, type=f",
        "D5 : start=         160, size=           1, type=83",
        "D6 : start=         168, size=          10, type=83",
        "D7 : start=         184, size=           2, type=83",
    ] {
        assert!(dump.contains(line), "missing {line:?} in\n{dump}");
    }
}

#[test]
fn gpt_layout_is_valid_and_names_the_files() {
    skip_unless!("nbdcopy", "sfdisk", "sgdisk");
    let dir = TempDir::new();
    let f = files(&dir, &[4096, 512]);
    let srv = Server::start([
        "partitioning",
        "partition-type=gpt",
        "type-guid=C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
        &f[0],
        "type-guid=default",
        &f[1],
    ]);
    let disk = copy_out(&srv, &dir);
    // Primary table (34 sectors), 1M alignment twice, backup (33 sectors).
    assert_eq!(disk.len(), (2 << 20) + 512 + 33 * 512);
    let p = dir.join("gpt.img");
    fs::write(&p, &disk).unwrap();
    let v = run_tool("sgdisk", ["-v", path_str(&p)]).assert_success();
    assert!(v.stdout.contains("No problems found"), "{}", v.describe());
    let dump = sfdisk_dump(&dir, &disk);
    assert!(dump.contains("label: gpt"), "{dump}");
    assert!(dump.contains("label-id: 00000000-0000-0000-0000-000000000000"));
    let names: Vec<&str> = dump.lines().filter(|l| l.starts_with("D")).collect();
    assert_eq!(names.len(), 2, "{dump}");
    assert!(names[0].contains(
        "start=        2048, size=           8, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
    ));
    assert!(names[0].contains("attrs=\"LegacyBIOSBootable\""));
    assert!(names[1].contains(
        "start=        4096, size=           1, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4"
    ));
    // Names are the paths given, when shorter than 36 bytes.
    assert_eq!(
        f[0].len() < 36,
        names[0].contains(&format!("name=\"{}\"", f[0]))
    );
}

#[test]
fn five_files_default_to_gpt() {
    skip_unless!("nbdcopy");
    let dir = TempDir::new();
    let f = files(&dir, &[512; 5]);
    let mut args = vec!["partitioning"];
    args.extend(f.iter().map(String::as_str));
    let srv = Server::start(args);
    let disk = copy_out(&srv, &dir);
    assert_eq!(&disk[512..520], b"EFI PART");
    assert_eq!(disk[0x1be + 4], 0xee);
}

#[test]
fn writes_reach_the_files_but_not_the_table() {
    skip_unless!("nbdcopy");
    let dir = TempDir::new();
    let f = files(&dir, &[1024, 1024]);
    let srv = Server::start(["partitioning", "alignment=512", &f[0], &f[1]]);
    let mut disk = copy_out(&srv, &dir);
    disk[512..516].copy_from_slice(b"WXYZ");
    disk[1536 + 1020..1536 + 1024].copy_from_slice(b"1234");
    let img = dir.join("new.img");
    fs::write(&img, &disk).unwrap();
    run_tool("nbdcopy", [path_str(&img), srv.uri().as_str()]).assert_success();
    assert_eq!(&fs::read(&f[0]).unwrap()[..4], b"WXYZ");
    assert_eq!(&fs::read(&f[1]).unwrap()[1020..], b"1234");
    // A change to the partition table is refused.
    disk[0x1be + 4] = 0x07;
    fs::write(&img, &disk).unwrap();
    let o = run_tool("nbdcopy", [path_str(&img), srv.uri().as_str()]);
    assert!(!o.success(), "{}", o.describe());
}

#[test]
fn readonly_server_refuses_writes() {
    skip_unless!("nbdinfo");
    let dir = TempDir::new();
    let f = files(&dir, &[512]);
    let srv = Server::start(["-r", "partitioning", &f[0]]);
    let o = run_tool("nbdinfo", [srv.uri().as_str()]).assert_success();
    assert!(o.stdout.contains("is_read_only: true"), "{}", o.describe());
    assert!(o.stdout.contains("can_multi_conn: true"));
}

#[test]
fn bad_parameters_fail_with_nbdkit_messages() {
    let dir = TempDir::new();
    let f = files(&dir, &[512]);
    let empty = dir.join("empty.img");
    fs::write(&empty, b"").unwrap();
    let cases: [(Vec<&str>, String); 5] = [
        (
            vec![],
            "at least one file= parameter must be supplied".into(),
        ),
        (
            vec![&f[0], "alignment=1000"],
            "partition alignment 1000 should be a multiple of sector size 512".into(),
        ),
        (
            vec![&f[0], "mbr-id=0x1ff"],
            "mbr-id: could not parse number: \"0x1ff\": Numerical result out of range".into(),
        ),
        (
            vec![&f[0], "partition-type=foo"],
            "unknown partition-type: foo".into(),
        ),
        (
            vec![path_str(&empty)],
            format!(
                "{}: zero length partitions are not allowed",
                path_str(&empty)
            ),
        ),
    ];
    for (params, want) in cases {
        let o = run(
            nbdkit_cmd()
                .args(["-U", "-", "partitioning"])
                .args(&params)
                .args(["--run", "true"]),
            Duration::from_secs(30),
        );
        assert_eq!(o.code(), Some(1), "{}", o.describe());
        assert!(o.stderr.contains(&want), "want {want:?}: {}", o.describe());
    }
}
