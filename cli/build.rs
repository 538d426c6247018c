//! Export the `nbdkit_*` functions of the executable dynamically, so that
//! compiled plugins and filters (loaded with dlopen) resolve their calls to
//! `nbdkit_error`, `nbdkit_parse_size`, ... against this binary, as they do
//! against C nbdkit. Only those symbols are exported.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rustc-link-arg-bins=-Wl,--export-dynamic-symbol=nbdkit_*");
}
