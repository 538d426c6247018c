//! nbdinfo: export flags and allocation map of memory disks.

use nbdkit_tests::{run_tool, skip_unless, Json, Server};

/// `nbdinfo --json URI`, parsed; returns the first export object.
fn nbdinfo_json(uri: &str) -> (Json, Json) {
    let out = run_tool("nbdinfo", ["--json", uri]).assert_success();
    let doc = Json::parse(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout));
    let export = doc
        .get("exports")
        .and_then(Json::as_array)
        .and_then(|a| a.first())
        .cloned()
        .unwrap_or_else(|| panic!("no exports in nbdinfo --json: {}", out.stdout));
    (doc, export)
}

fn flag(export: &Json, name: &str) -> bool {
    export
        .get(name)
        .and_then(Json::as_bool)
        .unwrap_or_else(|| panic!("nbdinfo --json: no boolean {name:?} in {export:?}"))
}

#[test]
fn nbdinfo_json_memory_disk_flags() {
    skip_unless!("nbdinfo");
    let srv = Server::start(["memory", "1G"]);
    let (doc, e) = nbdinfo_json(&srv.uri());
    assert_eq!(
        doc.get("protocol").and_then(Json::as_str),
        Some("newstyle-fixed")
    );
    assert_eq!(doc.get("TLS").and_then(Json::as_bool), Some(false));
    assert_eq!(doc.get("structured").and_then(Json::as_bool), Some(true));
    assert_eq!(e.get("export-size").and_then(Json::as_u64), Some(1 << 30));
    assert_eq!(e.get("export-name").and_then(Json::as_str), Some(""));
    assert!(!flag(&e, "is_read_only"), "memory disk must be writable");
    for f in [
        "can_flush",
        "can_trim",
        "can_zero",
        "can_multi_conn",
        "can_fua",
        "can_cache",
        "can_fast_zero",
        "can_df",
    ] {
        assert!(flag(&e, f), "memory disk: {f} should be true: {e:?}");
    }
    assert!(!flag(&e, "is_rotational"));
    let contexts: Vec<&str> = e
        .get("contexts")
        .and_then(Json::as_array)
        .unwrap_or_default()
        .iter()
        .filter_map(Json::as_str)
        .collect();
    assert!(
        contexts.contains(&"base:allocation"),
        "base:allocation not offered: {contexts:?}"
    );
}

#[test]
fn nbdinfo_json_readonly_disk_flags() {
    skip_unless!("nbdinfo");
    let srv = Server::start(["-r", "memory", "1M"]);
    let (_, e) = nbdinfo_json(&srv.uri());
    assert_eq!(e.get("export-size").and_then(Json::as_u64), Some(1 << 20));
    assert!(flag(&e, "is_read_only"));
    for f in ["can_trim", "can_zero", "can_fua", "can_fast_zero"] {
        assert!(!flag(&e, f), "read-only disk: {f} should be false");
    }
    assert!(flag(&e, "can_flush"));
    assert!(flag(&e, "can_multi_conn"));
}

/// One extent of `nbdinfo --map --json`.
#[derive(Debug)]
struct Extent {
    offset: u64,
    length: u64,
    kind: u64,
}

fn map(uri: &str) -> Vec<Extent> {
    let out = run_tool("nbdinfo", ["--map", "--json", uri]).assert_success();
    let doc = Json::parse(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout));
    doc.as_array()
        .unwrap_or_else(|| panic!("map is not an array: {}", out.stdout))
        .iter()
        .map(|x| Extent {
            offset: x.get("offset").and_then(Json::as_u64).expect("offset"),
            length: x.get("length").and_then(Json::as_u64).expect("length"),
            kind: x.get("type").and_then(Json::as_u64).expect("type"),
        })
        .collect()
}

fn kind_at(map: &[Extent], offset: u64) -> u64 {
    map.iter()
        .find(|e| e.offset <= offset && offset < e.offset + e.length)
        .unwrap_or_else(|| panic!("offset {offset} not in the map {map:?}"))
        .kind
}

#[test]
fn nbdinfo_map_shows_written_data() {
    skip_unless!("nbdinfo", "qemu-io");
    const MIB: u64 = 1 << 20;
    let size = 64 * MIB;
    let srv = Server::start(["memory", "64M"]);
    let uri = srv.uri();

    // A fresh disk is one big hole that reads as zeroes (type 3).
    let m = map(&uri);
    assert!(!m.is_empty());
    assert!(m.iter().all(|e| e.kind == 3), "fresh disk map: {m:?}");

    // Data at known offsets; a range written then zeroed.
    let writes = [(MIB, 64 * 1024), (8 * MIB, 128 * 1024), (40 * MIB, MIB)];
    let mut cmd = vec!["-f".to_string(), "raw".to_string()];
    for (off, len) in writes {
        cmd.push("-c".into());
        cmd.push(format!("write -P 0x55 {off} {len}"));
    }
    cmd.push("-c".into());
    cmd.push(format!("write -P 0xaa {} 65536", 20 * MIB));
    cmd.push("-c".into());
    cmd.push(format!("write -z {} 65536", 20 * MIB));
    cmd.push(uri.clone());
    run_tool("qemu-io", &cmd).assert_success();

    let m = map(&uri);
    // The map tiles the disk.
    let mut pos = 0;
    for e in &m {
        assert_eq!(e.offset, pos, "map has a gap or overlap: {m:?}");
        assert!(e.length > 0);
        pos += e.length;
    }
    assert_eq!(pos, size, "map does not cover the disk: {m:?}");
    // Written bytes are data (type 0: neither hole nor zero).
    for (off, len) in writes {
        for p in [off, off + len / 2, off + len - 1] {
            assert_eq!(kind_at(&m, p), 0, "written byte {p} not data: {m:?}");
        }
    }
    // The zeroed range reads as zero (type bit 2).
    assert_eq!(
        kind_at(&m, 20 * MIB) & 2,
        2,
        "zeroed range not reported as zero: {m:?}"
    );
    // 1 MiB blocks with no writes at all are holes.
    for p in [0, 4 * MIB, 16 * MIB, 30 * MIB, size - 1] {
        assert_eq!(kind_at(&m, p), 3, "unwritten byte {p} not a hole: {m:?}");
    }
}
