//! The Lua release this plugin is built against, for `--dump-plugin`'s
//! `lua_version=` (Lua itself only tells its major and minor numbers).
fn main() {
    let v = std::process::Command::new("pkg-config")
        .args(["--modversion", "lua5.4"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "5.4".to_string());
    println!("cargo:rustc-env=NBDKIT_LUA_VERSION={v}");
    println!("cargo:rerun-if-changed=build.rs");
}
