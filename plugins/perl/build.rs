//! Compile the C shim against the system Perl (flags from
//! `perl -MExtUtils::Embed`) and link libperl.

use std::process::Command;

fn perl_opts(what: &str) -> Vec<String> {
    let out = Command::new("perl")
        .args(["-MExtUtils::Embed", "-e", what])
        .output()
        .unwrap_or_else(|e| panic!("cannot run perl (install Debian's perl): {e}"));
    assert!(
        out.status.success(),
        "perl -MExtUtils::Embed -e {what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

fn main() {
    println!("cargo:rerun-if-changed=src/shim.c");
    println!("cargo:rerun-if-changed=example4.pl");
    install_example4();
    let ccopts = perl_opts("ccopts");
    let core = ccopts
        .iter()
        .filter_map(|f| f.strip_prefix("-I"))
        .find(|d| d.ends_with("/CORE"))
        .map(str::to_string)
        .unwrap_or_default();
    assert!(
        std::path::Path::new(&core).join("EXTERN.h").exists(),
        "Perl's embedding headers are missing (looked in {core:?}): \
         install Debian's libperl-dev"
    );
    let mut b = cc::Build::new();
    b.file("src/shim.c").warnings(false);
    for f in &ccopts {
        if let Some(d) = f.strip_prefix("-I") {
            b.include(d);
        } else if let Some(d) = f.strip_prefix("-D") {
            match d.split_once('=') {
                Some((k, v)) => b.define(k, v),
                None => b.define(d, None),
            };
        } else if f.starts_with("-f") {
            b.flag(f);
        }
    }
    b.compile("nbdkit_perl_shim");
    for f in perl_opts("ldopts") {
        if let Some(d) = f.strip_prefix("-L") {
            println!("cargo:rustc-link-search=native={d}");
        } else if f == "-lperl" {
            println!("cargo:rustc-link-lib=dylib=perl");
        }
    }
}

/// Put example4 (a Perl plugin script) beside the nbdkit executable as
/// `nbdkit-example4-plugin`, where `nbdkit example4` finds it: OUT_DIR is
/// `target/PROFILE/build/CRATE-HASH/out`.
fn install_example4() {
    use std::os::unix::fs::PermissionsExt;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").unwrap_or_default());
    let Some(dir) = out.ancestors().nth(3) else {
        return;
    };
    if out.ancestors().nth(2).and_then(|b| b.file_name()) != Some("build".as_ref()) {
        return;
    }
    let dst = dir.join("nbdkit-example4-plugin");
    let tmp = dir.join(".nbdkit-example4-plugin.tmp");
    let text = std::fs::read("example4.pl").expect("plugins/perl/example4.pl");
    std::fs::write(&tmp, text).expect("write nbdkit-example4-plugin");
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
        .expect("chmod nbdkit-example4-plugin");
    std::fs::rename(&tmp, &dst).expect("install nbdkit-example4-plugin");
}
