//! Replays every checked-in fuzz corpus file (`fuzz/corpus/<target>/`)
//! through the fuzz targets' own code, on stable, in `cargo test`.
#![allow(clippy::std_instead_of_core)]

mod fuzz_harness;

use std::fs;
use std::path::PathBuf;

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} is empty", dir.display());
    files
        .into_iter()
        .map(|p| {
            let data = fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, data)
        })
        .collect()
}

fn replay(target: &str, f: fn(&[u8])) {
    for (path, data) in corpus(target) {
        let r = std::panic::catch_unwind(|| f(&data));
        assert!(r.is_ok(), "{target}: {} panicked", path.display());
    }
}

#[test]
fn handshake_corpus_replays_cleanly() {
    replay("handshake", fuzz_harness::handshake);
}

#[test]
fn transmission_corpus_replays_cleanly() {
    replay("transmission", fuzz_harness::transmission);
}

#[test]
fn roundtrip_corpus_replays_cleanly() {
    replay("roundtrip", fuzz_harness::roundtrip);
}
