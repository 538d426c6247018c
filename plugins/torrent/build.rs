//! Compiles the C++ shim over libtorrent-rasterbar when pkg-config finds
//! it (Debian: libtorrent-rasterbar-dev). Without it the plugin still
//! builds, and refuses to load its torrent with one clear error naming
//! the package.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(have_libtorrent)");
    println!("cargo:rerun-if-changed=src/shim.cpp");
    match pkg_config::Config::new()
        .atleast_version("2.0")
        .probe("libtorrent-rasterbar")
    {
        Ok(lib) => {
            let mut b = cc::Build::new();
            b.cpp(true)
                .file("src/shim.cpp")
                .flag_if_supported("-std=c++17");
            for p in &lib.include_paths {
                b.include(p);
            }
            for (k, v) in &lib.defines {
                b.define(k, v.as_deref());
            }
            b.compile("nbdkit_torrent_shim");
            println!("cargo:rustc-cfg=have_libtorrent");
        }
        Err(e) => {
            println!(
                "cargo:warning=libtorrent-rasterbar not found ({e}); the torrent plugin is built without it"
            );
        }
    }
}
