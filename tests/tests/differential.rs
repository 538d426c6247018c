//! Differential tests: the same command against our binary and Debian's C
//! nbdkit (/usr/bin/nbdkit, the reference), comparing what scripts and
//! clients can observe. Each skips with a message when the reference is not
//! installed; the reference is never the server under test elsewhere.
#![allow(clippy::std_instead_of_core)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use nbdkit_tests::*;

const REFERENCE: &str = "/usr/bin/nbdkit";

fn reference() -> bool {
    if Path::new(REFERENCE).exists() {
        true
    } else {
        println!("SKIP: the reference nbdkit ({REFERENCE}) is not installed");
        false
    }
}

/// The callbacks a script plugin sees during `nbdinfo`, in order.
fn call_sequence(nbdkit: &Path, dir: &TempDir) -> String {
    let script = dir.join("log.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\necho \"$1\" >> \"$LOGF\"\ncase \"$1\" in\n  get_size) echo 1M ;;\n  can_write|can_flush|can_trim|can_zero|can_fast_zero|can_extents|can_multi_conn) exit 0 ;;\n  can_fua|can_cache) echo native ;;\n  pread) dd if=/dev/zero count=$3 iflag=count_bytes 2>/dev/null ;;\n  *) exit 2 ;;\nesac\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let log = dir.join(format!(
        "{}.log",
        nbdkit.display().to_string().replace('/', "_")
    ));
    let out = run(
        Command::new(nbdkit)
            .env("LOGF", &log)
            .args(["-U", "-", "sh"])
            .arg(&script)
            .args(["--run", "nbdinfo \"$uri\" >/dev/null"]),
        Duration::from_secs(60),
    );
    assert!(out.success(), "{}", out.describe());
    std::fs::read_to_string(&log).unwrap()
}

#[test]
fn script_plugins_see_the_same_calls_in_the_same_order() {
    if !reference() || !skip_unless("nbdinfo") {
        return;
    }
    let dir = TempDir::new();
    let ours = call_sequence(&nbdkit_bin(), &dir);
    let theirs = call_sequence(Path::new(REFERENCE), &dir);
    assert_eq!(ours, theirs);
}

#[test]
fn data_plugin_serves_the_same_bytes() {
    if !reference() || !skip_unless("nbdcopy") {
        return;
    }
    let dir = TempDir::new();
    let expr = "1 2 3 @0x100 ( \"hello\" 0xff )*100 @^512 le32:0x12345678 be16:0xabcd";
    let copy = |bin: &Path, name: &str| -> Vec<u8> {
        let out_file = dir.join(name);
        let r = run(
            Command::new(bin)
                .args(["-U", "-", "data", expr, "size=8K", "--run"])
                .arg(format!("nbdcopy \"$uri\" {}", path_str(&out_file))),
            Duration::from_secs(60),
        );
        assert!(r.success(), "{}", r.describe());
        std::fs::read(&out_file).unwrap()
    };
    assert_eq!(
        copy(&nbdkit_bin(), "ours.img"),
        copy(Path::new(REFERENCE), "ref.img")
    );
}
