//! Link libruby as the system's pkg-config file for Ruby describes it,
//! and record its API version for `--dump-plugin`'s `ruby_api_version=`.
use std::process::Command;

fn pkg_config(args: &[&str]) -> Option<String> {
    let o = Command::new("pkg-config").args(args).output().ok()?;
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let Some(libs) = pkg_config(&["--libs", "ruby"]) else {
        panic!(
            "the ruby plugin needs libruby and its pkg-config file: install Debian's ruby-dev \
             (`apt-get install ruby-dev`)"
        );
    };
    for f in libs.split_whitespace() {
        if let Some(dir) = f.strip_prefix("-L") {
            println!("cargo:rustc-link-search=native={dir}");
        } else if let Some(lib) = f.strip_prefix("-l") {
            println!("cargo:rustc-link-lib=dylib={lib}");
        }
    }
    let v = pkg_config(&["--variable=ruby_version", "ruby"]).unwrap_or_default();
    println!("cargo:rustc-env=NBDKIT_RUBY_API_VERSION={v}");
    let major = pkg_config(&["--variable=MAJOR", "ruby"]).unwrap_or_default();
    if major != "3" {
        // The special constants (Qnil, Qtrue) this plugin uses are those
        // of Ruby 3 on 64-bit hosts.
        panic!("the ruby plugin needs Ruby 3 (pkg-config says {major:?})");
    }
}
