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

#[test]
fn session_corpus_replays_cleanly() {
    replay("session", fuzz_harness::session);
}

/// A short, deterministic stand-in for a fuzzing run on stable (cargo-fuzz
/// is not always at hand): every session seed, mutated a few hundred ways
/// (bit flips, byte overwrites, truncations, duplicated runs), through the
/// handshake and the transmission engine.
#[test]
fn session_survives_mutated_seeds() {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for (path, seed) in corpus("session") {
        for round in 0..300 {
            let mut d = seed.clone();
            for _ in 0..1 + next() % 4 {
                if d.len() < 2 {
                    break;
                }
                let at = 1 + (next() as usize) % (d.len() - 1);
                match next() % 4 {
                    0 => d[at] ^= 1 << (next() % 8),
                    1 => d[at] = next() as u8,
                    2 => d.truncate(at),
                    _ => {
                        let n = (next() as usize % 64).min(d.len() - at);
                        let run: Vec<u8> = d[at..at + n].to_vec();
                        d.splice(at..at, run);
                    }
                }
            }
            let r = std::panic::catch_unwind(|| fuzz_harness::session(&d));
            assert!(
                r.is_ok(),
                "{} mutation {round} panicked: {:02x?}",
                path.display(),
                &d[..d.len().min(256)]
            );
        }
    }
}

/// The session seeds do reach the transmission engine: real clients'
/// requests are handed out, and refused on the read-only export.
#[test]
fn session_seeds_reach_transmission() {
    let seeds = corpus("session");
    let find = |name: &str| {
        &seeds
            .iter()
            .find(|(p, _)| p.file_name().is_some_and(|n| n == name))
            .unwrap_or_else(|| panic!("no seed {name}"))
            .1
    };
    let (requests, refused) = fuzz_harness::session_counts(find("nbdsh-commands-1"));
    assert!(requests >= 6 && refused == 0, "{requests} {refused}");
    // pwrite, trim and zero are refused; flush, cache and pread are not.
    let (requests, refused) = fuzz_harness::session_counts(find("nbdsh-commands-1-read-only"));
    assert!(requests >= 3 && refused >= 3, "{requests} {refused}");
    let (requests, _) = fuzz_harness::session_counts(find("nbdinfo-oldstyle-1"));
    assert!(requests > 0);
}
