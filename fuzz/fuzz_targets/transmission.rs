//! The transmission engine over arbitrary bytes, fed whole and in pieces.
//! See `core/tests/fuzz_harness`: the body is shared with the stable
//! corpus replay test (`core/tests/corpus_replay.rs`).
#![no_main]

#[path = "../../core/tests/fuzz_harness/mod.rs"]
mod fuzz_harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_harness::transmission(data));
