//! Link the system libtcl (Debian's tcl-dev: libtcl8.6.so).

fn main() {
    let dirs = [
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/usr/lib64",
        "/usr/lib",
    ];
    let found = dirs
        .iter()
        .find(|d| std::path::Path::new(d).join("libtcl8.6.so").exists());
    let Some(dir) = found else {
        panic!("libtcl8.6.so is missing: install Debian's tcl-dev");
    };
    println!("cargo:rustc-link-search=native={dir}");
    println!("cargo:rustc-link-lib=dylib=tcl8.6");
}
