//! Link arguments of the `nbdkit` executable:
//! 1. Export the `nbdkit_*` functions of the executable dynamically, so
//!    that compiled plugins and filters (loaded with dlopen) resolve their
//!    calls to `nbdkit_error`, `nbdkit_parse_size`, ... against this
//!    binary, as they do against C nbdkit. Only those symbols are exported.
//! 2. Compact relative relocations on Linux/glibc (see `main`).
//! 3. On Linux, the functions listed in `hot-text.txt` (those nbdkit runs
//!    to start, to answer a handshake and to serve requests) linked
//!    together, in an output section `.text.hot` placed before `.text`.
//!
//! Why 3: Linux maps a binary's code in fault-around blocks of 64 KiB (the
//! page-cache pages around each faulting page are mapped too), so the
//! resident size of the code is the number of 64 KiB blocks the executed
//! functions are spread over. In link order they touched 50 of the 70
//! blocks of the 4.5 MB `.text` (2.4 MB resident after start-up and one
//! handshake); placed together, about 17 (1.1 MB). (`madvise(MADV_RANDOM)`
//! does not help: it turns off readahead, not fault-around.)
//!
//! How: a linker script with `INSERT BEFORE .text`, which adds to the
//! linker's default layout instead of replacing it (rust-lld, the default
//! for x86_64-unknown-linux-gnu, and GNU ld both support it). Each line of
//! `hot-text.txt` is a glob of a mangled symbol name, matched against the
//! function's section (`.text.NAME`, or `.text.unlikely.NAME` for cold
//! functions; rustc puts each function in its own section), with the
//! build-dependent hashes replaced by `*`, so that the list survives code
//! changes and new toolchains: a stale line matches nothing, and a function
//! missing from the list is only linked where it would have been anyway.
//! `scripts/hot-text.py` regenerates the list.
//!
//! Set `NBDKIT_NO_HOT_TEXT=1` to link without 3 (e.g. with a linker that
//! does not take linker scripts, such as mold).
#![allow(clippy::std_instead_of_core)] // a build script

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rustc-link-arg-bins=-Wl,--export-dynamic-symbol=nbdkit_*");
    // Compact relative relocations (DT_RELR, glibc >= 2.36, binutils >=
    // 2.38): the dynamic loader reads a few kilobytes at start-up instead
    // of the ~200 KiB .rela.dyn of a position-independent executable.
    let os = env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let target_env = env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "linux" && target_env == "gnu" {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    hot_text(&os);
}

fn hot_text(os: &str) {
    println!("cargo:rerun-if-changed=hot-text.txt");
    println!("cargo:rerun-if-env-changed=NBDKIT_NO_HOT_TEXT");
    if os != "linux" || env::var_os("NBDKIT_NO_HOT_TEXT").is_some_and(|v| !v.is_empty() && v != "0")
    {
        return;
    }
    let list = match fs::read_to_string("hot-text.txt") {
        Ok(list) => list,
        Err(e) => fail(&format!("cannot read cli/hot-text.txt: {e}")),
    };
    let mut script = String::from("SECTIONS\n{\n  .text.hot :\n  {\n");
    for (n, line) in list.lines().enumerate() {
        let glob = line.trim();
        if glob.is_empty() || glob.starts_with('#') {
            continue;
        }
        // Mangled names (legacy and v0) use only these; anything else
        // could end the linker script's pattern or statement.
        if !glob
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_$.*".contains(&b))
        {
            fail(&format!(
                "cli/hot-text.txt:{}: not a mangled symbol name glob: {glob}",
                n + 1
            ));
        }
        let _ = writeln!(script, "    *(.text.{glob} .text.unlikely.{glob})");
    }
    script.push_str("  }\n}\nINSERT BEFORE .text;\n");
    let Some(out_dir) = env::var_os("OUT_DIR") else {
        fail("OUT_DIR is not set (not run by cargo?)");
    };
    let path = PathBuf::from(out_dir).join("hot-text.ld");
    if let Err(e) = fs::write(&path, script) {
        fail(&format!("cannot write {}: {e}", path.display()));
    }
    // rustc links through cc: -Xlinker passes each argument verbatim
    // (unlike -Wl, which splits at commas).
    for arg in ["-Xlinker", "-T", "-Xlinker"] {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
    println!("cargo:rustc-link-arg-bins={}", path.display());
}

fn fail(msg: &str) -> ! {
    eprintln!("nbdkit-cli build: {msg}");
    std::process::exit(1);
}
