//! Export the `nbdkit_*` functions of the executable dynamically, so that
//! compiled plugins and filters (loaded with dlopen) resolve their calls to
//! `nbdkit_error`, `nbdkit_parse_size`, ... against this binary, as they do
//! against C nbdkit. Only those symbols are exported.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rustc-link-arg-bins=-Wl,--export-dynamic-symbol=nbdkit_*");
    // Compact relative relocations (DT_RELR, glibc >= 2.36, binutils >=
    // 2.38): the dynamic loader reads a few kilobytes at start-up instead
    // of the ~200 KiB .rela.dyn of a position-independent executable.
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "linux" && env == "gnu" {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
