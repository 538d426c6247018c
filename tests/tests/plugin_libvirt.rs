//! The libvirt plugin (plugins/libvirt, `libnbdkit_libvirt_plugin.so`
//! beside the binary, libvirt.so.0 loaded with dlopen) against libvirt's
//! `test:///default` driver, which needs no daemon and has a domain
//! "test" with disk `vda` (`/guest/diskimage1`): the connection, the
//! domain lookup and `virDomainGetBlockInfo` are real libvirt calls. The
//! test driver has no `virDomainBlockPeek`, so reads are checked for the
//! error they must give; reading real bytes needs the qemu or Xen
//! drivers, which need qemu-system (not installable beside this machine's
//! qemu-utils) or Xen. `--dump-plugin`, `--help` and the configuration
//! errors are compared with Debian's C plugin where it is installed.

use std::path::Path;

use nbdkit_tests::{
    nbdkit_bin, nbdkit_cmd, run, run_tool, skip_unless, Output, Server, CMD_TIMEOUT, REFERENCE,
};

const TEST_URI: &str = "connect=test:///default";
/// The size `virDomainGetBlockInfo` gives for the test domain's disk
/// (its `physical` field, which nbdkit serves).
const TEST_DISK_SIZE: u64 = 1 << 40;

fn our_plugin() {
    nbdkit_tests::assert_plugin_built_beside("libvirt");
}

/// Whether libvirt.so.0 (Debian's libvirt0) is installed; SKIP if not.
fn have_libvirt() -> bool {
    let found = ["/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib"]
        .iter()
        .any(|d| Path::new(d).join("libvirt.so.0").exists());
    if !found {
        println!(
            "SKIP: libvirt.so.0 is not installed (Debian's libvirt0, see scripts/test-all.sh)"
        );
    }
    found
}

fn lines_without_path_and_version(o: &Output) -> Vec<String> {
    o.stdout
        .lines()
        .filter(|l| !l.starts_with("path=") && !l.starts_with("version="))
        .map(str::to_string)
        .collect()
}

#[test]
fn dump_plugin_is_nbdkits() {
    our_plugin();
    let o = run(nbdkit_cmd().args(["libvirt", "--dump-plugin"]), CMD_TIMEOUT).assert_success();
    let got = lines_without_path_and_version(&o);
    let want: Vec<String> = [
        "name=libvirt",
        "api_version=1",
        "struct_size=384",
        "max_thread_model=serialize_requests",
        "thread_model=serialize_requests",
        "errno_is_preserved=0",
        "has_longname=1",
        "has_config=1",
        "has_config_complete=1",
        "has_config_help=1",
        "has_open=1",
        "has_close=1",
        "has_get_size=1",
        "has__pread_v1=1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(got, want, "{}", o.describe());

    let reference = run(
        std::process::Command::new(REFERENCE).args(["libvirt", "--dump-plugin"]),
        CMD_TIMEOUT,
    );
    if reference.success() {
        assert_eq!(got, lines_without_path_and_version(&reference));
    } else {
        println!(
            "SKIP (differential part): {REFERENCE} has no libvirt plugin (nbdkit-plugin-libvirt)"
        );
    }

    let o = run(nbdkit_cmd().args(["libvirt", "--help"]), CMD_TIMEOUT).assert_success();
    for want in [
        "plugin: libvirt (nbdkit libvirt plugin)",
        "connect=<URI>   (optional) libvirt connection URI",
        "domain=<DOMAIN> (required) libvirt domain name",
        "disk=<DISK>     (required) guest disk name",
    ] {
        assert!(
            o.stdout.lines().any(|l| l == want),
            "no `{want}`: {}",
            o.describe()
        );
    }
}

/// `nbdkit libvirt ARGS` fails at start-up with exactly `message`, as
/// Debian's plugin does where it is installed.
fn fails_with(args: &[&str], message: &str) {
    let o = run(nbdkit_cmd().arg("libvirt").args(args), CMD_TIMEOUT);
    assert_eq!(o.code(), Some(1), "{}", o.describe());
    let first = o.stderr.lines().next().unwrap_or_default();
    assert_eq!(
        first,
        format!("nbdkit: error: {message}"),
        "{}",
        o.describe()
    );
    let r = run(
        std::process::Command::new(REFERENCE)
            .arg("libvirt")
            .args(args),
        CMD_TIMEOUT,
    );
    if r.stderr.contains("cannot open plugin") || !Path::new(REFERENCE).exists() {
        println!("SKIP (differential part): no reference libvirt plugin");
        return;
    }
    assert_eq!(r.code(), Some(1), "{}", r.describe());
    assert_eq!(r.stderr.lines().next().unwrap_or_default(), first);
}

#[test]
fn configuration_errors() {
    our_plugin();
    fails_with(&["disk=vda"], "the 'domain' parameter is required");
    fails_with(&["domain=test"], "the 'disk' parameter is required");
    fails_with(
        &["domain=test", "disk=vda", "foo=bar"],
        "unknown parameter 'foo'",
    );
}

#[test]
fn test_driver_disk_size_by_target_and_by_path() {
    skip_unless!("nbdinfo");
    our_plugin();
    if !have_libvirt() {
        return;
    }
    for disk in ["disk=vda", "disk=/guest/diskimage1"] {
        let srv = Server::start(["libvirt", TEST_URI, "domain=test", disk]);
        let o = run_tool("nbdinfo", ["--size", &srv.uri()]).assert_success();
        assert_eq!(o.stdout.trim(), TEST_DISK_SIZE.to_string(), "{disk}");
        let o = run_tool("nbdinfo", [srv.uri()]).assert_success();
        assert!(o.stdout.contains("is_read_only: true"), "{}", o.describe());
        assert!(o.stdout.contains("can_zero: false"), "{}", o.describe());
    }
}

#[test]
fn test_driver_read_is_an_error_naming_block_peek() {
    skip_unless!("nbdcopy");
    our_plugin();
    if !have_libvirt() {
        return;
    }
    let mut srv = Server::start(["libvirt", TEST_URI, "domain=test", "disk=vda"]);
    let o = run_tool("nbdcopy", [&srv.uri(), "null:"]);
    assert!(!o.success(), "{}", o.describe());
    assert!(o.stderr.contains("Input/output error"), "{}", o.describe());
    srv.stop();
    let log = srv.stderr();
    assert!(
        log.contains(
            "error: virDomainBlockPeek: cannot read block from disk 'vda': \
             this function is not supported by the connection driver: virDomainBlockPeek"
        ),
        "{log}"
    );
}

/// A server whose open fails: nbdinfo fails, the log has `log_has`.
fn open_fails(args: &[&str], log_has: &str) {
    let mut srv = Server::start(args);
    let o = run_tool("nbdinfo", [srv.uri()]);
    assert!(!o.success(), "{}", o.describe());
    srv.stop();
    let log = srv.stderr();
    assert!(log.contains(log_has), "no `{log_has}` in:\n{log}");
    // libvirt's own default error print is replaced by the plugin's line.
    assert!(!log.contains("libvirt: "), "{log}");
}

#[test]
fn open_errors_name_the_cause() {
    skip_unless!("nbdinfo");
    our_plugin();
    if !have_libvirt() {
        return;
    }
    open_fails(
        &["libvirt", TEST_URI, "domain=nosuch", "disk=vda"],
        "error: virDomainLookupByName: cannot open domain 'nosuch': \
         Domain not found",
    );
    open_fails(
        &["libvirt", TEST_URI, "domain=test", "disk=sdz"],
        "error: virDomainGetBlockInfo: cannot read information about disk 'sdz' \
         from domain 'test': invalid argument: invalid path sdz not assigned to domain",
    );
    open_fails(
        &[
            "libvirt",
            "connect=nosuchdriver:///x",
            "domain=test",
            "disk=vda",
        ],
        "error: virConnectOpen failed (nosuchdriver:///x): ",
    );
}

#[test]
fn missing_libvirt_is_one_error_line_naming_the_package() {
    our_plugin();
    if !have_libvirt() {
        return;
    }
    // Hide the installed library in a private mount namespace (root
    // only): an empty file bound over it cannot be loaded.
    let lib = [
        "/usr/lib/x86_64-linux-gnu/libvirt.so.0",
        "/usr/lib64/libvirt.so.0",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())
    .unwrap_or("/usr/lib/libvirt.so.0");
    let script = format!(
        "mount --bind /dev/null {lib} || exit 77; exec \"$0\" libvirt domain=test disk=vda --run true"
    );
    let o = run(
        std::process::Command::new("unshare")
            .args(["-m", "sh", "-c", &script])
            .arg(nbdkit_bin()),
        CMD_TIMEOUT,
    );
    if o.code() == Some(77) || o.stderr.contains("unshare failed") {
        println!(
            "SKIP: cannot hide libvirt.so.0 here (needs root and unshare -m): {}",
            o.stderr
        );
        return;
    }
    assert_eq!(o.code(), Some(1), "{}", o.describe());
    let lines: Vec<&str> = o.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{}", o.describe());
    assert!(
        lines[0].starts_with("nbdkit: error: libvirt: cannot load libvirt.so.0: ")
            && lines[0].ends_with("(install Debian's libvirt0)"),
        "{}",
        o.describe()
    );
}
