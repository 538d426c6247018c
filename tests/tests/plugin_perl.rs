//! The perl plugin (plugins/perl, `libnbdkit_perl_plugin.so` beside the
//! binary) and example4 (a Perl script, `nbdkit-example4-plugin` beside
//! it): scripts of nbdkit-perl-plugin(3) served by the binary under test
//! and driven by real clients.
//!
//! Every test first checks that `nbdkit perl` loads the plugin built
//! beside the binary under test (not Debian's C plugin, which this server
//! could load too); build it with `cargo build -p nbdkit-perl-plugin`
//! (`--release` for target/release/nbdkit).
#![allow(clippy::std_instead_of_core)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use nbdkit_tests::*;

const REFERENCE: &str = "/usr/bin/nbdkit";
const NBD_EIO: u32 = 5;
const NBD_ENOSPC: u32 = 28;

/// Check once that `nbdkit perl` is this project's plugin, built beside
/// the binary under test. Panics with the way to build it otherwise.
fn perl_plugin() {
    static CHECKED: OnceLock<Result<(), String>> = OnceLock::new();
    let r = CHECKED.get_or_init(|| {
        let o = run(nbdkit_cmd().args(["perl", "--dump-plugin"]), CMD_TIMEOUT);
        if !o.success() {
            return Err(format!(
                "nbdkit perl --dump-plugin failed: {}",
                o.describe()
            ));
        }
        if is_reference() {
            return Ok(());
        }
        let bin = fs::canonicalize(nbdkit_bin()).unwrap();
        let dir = bin.parent().unwrap();
        let path = o
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix("path="))
            .unwrap_or_default()
            .to_string();
        if Path::new(&path) == dir.join("libnbdkit_perl_plugin.so") {
            Ok(())
        } else {
            Err(format!(
                "`nbdkit perl` loaded {path:?}, not the plugin built beside {}: build it \
                 with `cargo build -p nbdkit-perl-plugin` (add --release for a release \
                 nbdkit)",
                bin.display()
            ))
        }
    });
    if let Err(e) = r {
        panic!("{e}");
    }
}

/// Write the Perl script `text` as `dir/name`.
fn script(dir: &TempDir, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    fs::write(&p, text).unwrap();
    p
}

/// Run a libnbd Python program with `uri` as its `sys.argv[1]`; panics
/// unless it succeeds. Returns its stdout.
fn libnbd(code: &str, uri: &str) -> String {
    let o = run_python_code(code, [uri]);
    assert!(o.success(), "python-libnbd client failed: {}", o.describe());
    o.stdout
}

/// The `nbdkit: error:` lines (with or without a connection context).
fn error_lines(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter(|l| l.starts_with("nbdkit: ") && l.contains("error: "))
        .map(str::to_string)
        .collect()
}

/// A RAM disk along the lines of the manual's example (plugins/perl/example.pl).
const RAMDISK: &str = r#"
use strict;

my $disk = "\0" x (1024 * 1024);

sub config
{
    my $k = shift;
    my $v = shift;
    if ($k eq "size") {
        $disk = "\0" x int ($v);
    }
    else {
        die "unknown parameter $k";
    }
}

sub open
{
    my $readonly = shift;
    Nbdkit::debug ("open: readonly=$readonly");
    my $h = { readonly => $readonly };
    return $h;
}

sub get_size
{
    my $h = shift;
    return length ($disk);
}

sub pread
{
    my $h = shift;
    my $count = shift;
    my $offset = shift;
    my $flags = shift;
    return substr ($disk, $offset, $count);
}

sub pwrite
{
    my $h = shift;
    my $buf = shift;
    my $count = length ($buf);
    my $offset = shift;
    my $flags = shift;
    substr ($disk, $offset, $count) = $buf;
}

sub zero
{
    my ($h, $count, $offset, $flags) = @_;
    substr ($disk, $offset, $count) = "\0" x $count;
}

sub flush
{
}
"#;

#[test]
fn ramdisk_round_trips_through_qemu_img_and_nbdcopy() {
    skip_unless!("qemu-img", "nbdcopy");
    perl_plugin();
    let dir = TempDir::new();
    let s = script(&dir, "ramdisk.pl", RAMDISK);
    let srv = Server::start(["perl", path_str(&s), "size=8388608"]);
    round_trip_qemu_img_and_nbdcopy(&dir, &srv.uri(), 8 << 20, 21);
    assert!(
        error_lines(&srv.stderr()).is_empty(),
        "errors: {}",
        srv.stderr()
    );
}

#[test]
fn example4_round_trips_through_qemu_img_and_nbdcopy() {
    skip_unless!("qemu-img", "nbdcopy");
    perl_plugin();
    let dir = TempDir::new();
    let srv = Server::start(["example4", "size=8M"]);
    round_trip_qemu_img_and_nbdcopy(&dir, &srv.uri(), 8 << 20, 21);
    assert!(
        error_lines(&srv.stderr()).is_empty(),
        "errors: {}",
        srv.stderr()
    );
    if !is_reference() {
        // Our own script, beside the binary, not Debian's.
        let beside = fs::canonicalize(nbdkit_bin())
            .unwrap()
            .with_file_name("nbdkit-example4-plugin");
        assert!(beside.exists(), "{} is missing", beside.display());
    }
    let o = run(
        nbdkit_cmd().args(["-U", "-", "example4", "--run", "exit 0"]),
        CMD_TIMEOUT,
    );
    assert_eq!(o.code(), Some(1), "{}", o.describe());
    let e = error_lines(&o.stderr);
    assert_eq!(e.len(), 1, "{}", o.describe());
}

/// A script that defines every callback (the manual's, and the rest of
/// the plugin API) and logs them to the file given as `log=`.
const EVERY_CALLBACK: &str = r#"
use strict;
use POSIX ();

my $size = 1024 * 1024;
my $log;
my %disks;

sub note { open (my $f, ">>", $log) or die "log: $!"; print $f "@_\n"; close ($f); }

sub dump_plugin { print "test_dump_field=yes\n"; }

sub config
{
    my ($k, $v) = @_;
    if ($k eq "size") { $size = $v; }
    elsif ($k eq "log") { $log = $v; }
    else { die "unknown key $k"; }
}

sub config_complete { note ("config_complete"); }
sub get_ready { note ("get_ready"); }
sub after_fork { note ("after_fork"); }
sub cleanup { note ("cleanup"); }
sub preconnect { note ("preconnect"); }

sub list_exports { return (["a", "export A"], "b", ["c", undef]); }
sub default_export { return "a"; }

my $opened = 0;
sub open
{
    my $readonly = shift;
    $opened++;
    my $name = "conn$opened";
    $disks{$name} = "\0" x $size;
    note ("open readonly=" . ($readonly ? 1 : 0));
    return { name => $name, readonly => $readonly };
}

sub close { my $h = shift; note ("close " . $h->{name}); }

sub export_description { my $h = shift; return "the disk of " . $h->{name}; }
sub get_size { my $h = shift; return length ($disks{$h->{name}}); }
sub block_size { return (1, 4096, 1024 * 1024); }
sub is_rotational { return 1; }
sub can_multi_conn { return 1; }
sub can_write { return 1; }
sub can_flush { return 1; }
sub can_trim { return 1; }
sub can_zero { return 1; }
sub can_fast_zero { return 1; }
sub can_fua { return $Nbdkit::FUA_NATIVE; }
sub can_cache { return $Nbdkit::CACHE_NATIVE; }
sub can_extents { return 1; }

sub pread
{
    my ($h, $count, $offset, $flags) = @_;
    return substr ($disks{$h->{name}}, $offset, $count);
}

sub pwrite
{
    my ($h, $buf, $offset, $flags) = @_;
    note ("pwrite fua=" . (($flags & $Nbdkit::FLAG_FUA) ? 1 : 0));
    substr ($disks{$h->{name}}, $offset, length ($buf)) = $buf;
}

sub flush { note ("flush"); }

sub trim
{
    my ($h, $count, $offset, $flags) = @_;
    note ("trim");
    substr ($disks{$h->{name}}, $offset, $count) = "\0" x $count;
}

sub zero
{
    my ($h, $count, $offset, $flags) = @_;
    note (sprintf ("zero may_trim=%d fast=%d",
                   ($flags & $Nbdkit::FLAG_MAY_TRIM) ? 1 : 0,
                   ($flags & $Nbdkit::FLAG_FAST_ZERO) ? 1 : 0));
    substr ($disks{$h->{name}}, $offset, $count) = "\0" x $count;
}

sub cache { my ($h, $count, $offset, $flags) = @_; note ("cache $offset $count"); }

sub extents
{
    # The first half is data, the second half a hole that reads as zero.
    my ($h, $count, $offset, $flags) = @_;
    my $half = length ($disks{$h->{name}}) / 2;
    my $end = $offset + $count;
    my @out;
    push @out, [$offset, ($end < $half ? $end : $half) - $offset, 0] if $offset < $half;
    if ($end > $half) {
        my $s = $offset > $half ? $offset : $half;
        push @out, [$s, $end - $s, $Nbdkit::EXTENT_HOLE | $Nbdkit::EXTENT_ZERO];
    }
    return @out;
}
"#;

#[test]
fn every_callback_through_nbdinfo_and_libnbd() {
    skip_unless!("nbdinfo", "python3-nbd");
    perl_plugin();
    let dir = TempDir::new();
    let s = script(&dir, "every.pl", EVERY_CALLBACK);
    let log = dir.join("log");
    let log_arg = format!("log={}", path_str(&log));
    let mut srv = Server::start(["perl", path_str(&s), "size=2097152", &log_arg]);

    let o = run_tool("nbdinfo", ["--list", "--json", &srv.uri()]);
    assert!(o.success(), "nbdinfo --list: {}", o.describe());
    let j = Json::parse(&o.stdout).unwrap();
    let exports = j.get("exports").and_then(Json::as_array).unwrap();
    let names: Vec<&str> = exports
        .iter()
        .map(|e| e.get("export-name").and_then(Json::as_str).unwrap())
        .collect();
    assert_eq!(names, ["a", "b", "c"], "{}", o.stdout);
    let field = |i: usize, k: &str| exports[i].get(k);
    assert_eq!(
        field(0, "description").and_then(Json::as_str),
        Some("export A"),
        "{}",
        o.stdout
    );
    assert_eq!(
        field(0, "export-size").and_then(Json::as_u64),
        Some(2 << 20)
    );
    assert_eq!(
        field(0, "block_size_preferred").and_then(Json::as_u64),
        Some(4096)
    );
    assert_eq!(
        field(0, "block_size_maximum").and_then(Json::as_u64),
        Some(1 << 20)
    );
    for k in [
        "is_rotational",
        "can_multi_conn",
        "can_cache",
        "can_fua",
        "can_flush",
        "can_trim",
        "can_zero",
        "can_fast_zero",
    ] {
        assert_eq!(
            field(0, k).and_then(Json::as_bool),
            Some(true),
            "{k}: {}",
            o.stdout
        );
    }

    let o = run_tool("nbdinfo", ["--map", &srv.uri()]);
    assert!(o.success(), "nbdinfo --map: {}", o.describe());
    let map: Vec<Vec<String>> = o
        .stdout
        .lines()
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect();
    assert_eq!(
        map,
        [
            vec!["0", "1048576", "0", "data"],
            vec!["1048576", "1048576", "3", "hole,zero"]
        ],
        "{}",
        o.stdout
    );

    let code = r#"
import sys
import nbd
h = nbd.NBD()
h.set_full_info(True)
h.add_meta_context("base:allocation")
h.connect_uri(sys.argv[1])
assert h.get_export_description().startswith("the disk of conn")
assert h.get_size() == 2 << 20
h.pwrite(b"A" * 8192, 4096, nbd.CMD_FLAG_FUA)
h.pwrite(b"B" * 512, 0)
h.flush()
assert h.pread(512, 0) == b"B" * 512
assert h.pread(8192, 4096) == b"A" * 8192
h.zero(4096, 4096, nbd.CMD_FLAG_NO_HOLE)
h.zero(4096, 8192, nbd.CMD_FLAG_FAST_ZERO)
assert h.pread(8192, 4096) == bytes(8192)
h.trim(512, 0)
assert h.pread(512, 0) == bytes(512)
h.cache(65536, 0)
seen = []
def cb(meta, offset, entries, err):
    seen.extend(entries)
    return 0
h.block_status(2 << 20, 0, cb)
assert seen[:4] == [1 << 20, 0, 1 << 20, 3], seen
h.shutdown()
print("ok")
"#;
    assert_eq!(libnbd(code, &srv.uri()).trim(), "ok");
    srv.stop();
    let log = fs::read_to_string(&log).unwrap();
    for want in [
        "config_complete",
        "get_ready",
        "after_fork",
        "preconnect",
        "open readonly=0",
        "pwrite fua=1",
        "pwrite fua=0",
        "flush",
        "zero may_trim=0 fast=0",
        "zero may_trim=1 fast=1",
        "trim",
        "cache 0 65536",
        "cleanup",
    ] {
        assert!(
            log.lines().any(|l| l == want),
            "no {want:?} in the log:\n{log}"
        );
    }
    assert!(log.lines().any(|l| l.starts_with("close conn")), "{log}");
    let pos = |w: &str| log.lines().position(|l| l == w).unwrap();
    assert!(pos("config_complete") < pos("get_ready"));
    assert!(pos("get_ready") < pos("after_fork"));
    assert!(pos("after_fork") < pos("preconnect"));
    assert_eq!(log.lines().last(), Some("cleanup"), "{log}");

    // dump_plugin: perl_version, then the script's own lines.
    let o = run(
        nbdkit_cmd().args(["perl", path_str(&s), "--dump-plugin"]),
        CMD_TIMEOUT,
    );
    assert!(o.success(), "{}", o.describe());
    assert!(
        o.stdout.lines().any(|l| l.starts_with("perl_version=5.")),
        "{}",
        o.stdout
    );
    assert!(
        o.stdout.lines().any(|l| l == "test_dump_field=yes"),
        "{}",
        o.stdout
    );
}

#[test]
fn shebang_script_runs_directly() {
    skip_unless!("nbdinfo");
    perl_plugin();
    let dir = TempDir::new();
    let p = dir.join("disk.pl");
    write_executable(
        &p,
        &format!("#!{} perl\n{RAMDISK}", path_str(&nbdkit_bin())),
    );
    let o = run(
        Command::new(&p).env("PATH", "/usr/bin:/bin").args([
            "size=3145728",
            "-U",
            "-",
            "--run",
            "nbdinfo --size \"$uri\"",
        ]),
        CMD_TIMEOUT,
    );
    assert!(o.success(), "{}", o.describe());
    assert_eq!(o.stdout.trim(), "3145728");
}

/// Start `nbdkit perl ARGS` expecting it to fail at start-up; returns its
/// one error line.
fn start_fails(args: &[&str]) -> String {
    let o = run(
        nbdkit_cmd()
            .args(["-U", "-", "perl"])
            .args(args)
            .args(["--run", "exit 0"]),
        CMD_TIMEOUT,
    );
    assert_eq!(o.code(), Some(1), "{}", o.describe());
    let errors = error_lines(&o.stderr);
    assert_eq!(errors.len(), 1, "one error line: {}", o.describe());
    assert_eq!(
        o.stderr.lines().count(),
        1,
        "nothing else on stderr: {}",
        o.describe()
    );
    errors[0].clone()
}

#[test]
fn script_load_errors_are_one_line_with_the_place() {
    perl_plugin();
    let dir = TempDir::new();
    const REST: &str = "sub get_size { return 1; }\nsub pread { return \"\\0\"; }\n";
    type Case<'a> = (&'a str, Option<String>, &'a [&'a str], &'a [&'a str]);
    let cases: [Case<'_>; 6] = [
        (
            "syntax.pl",
            Some(format!("sub open {{ return 1; }}\n{REST}my $x = = 1;\n")),
            &[],
            &["syntax error at ", "syntax.pl line 4"],
        ),
        (
            "dies.pl",
            Some(format!("sub open {{ return 1; }}\n{REST}die \"broken\";\n")),
            &[],
            &["broken at ", "dies.pl line 4."],
        ),
        (
            "nosize.pl",
            Some("sub open { 1 }\nsub pread { \"\" }\n".into()),
            &[],
            &["'open', 'get_size' or 'pread' is not defined by this Perl script"],
        ),
        (
            "nopread.pl",
            Some("sub open { 1 }\nsub get_size { 1 }\n".into()),
            &[],
            &["'open', 'get_size' or 'pread' is not defined by this Perl script"],
        ),
        (
            "missing.pl",
            None,
            &[],
            &["cannot open file: No such file or directory"],
        ),
        (
            "cfg.pl",
            Some(format!("sub open {{ 1 }}\n{REST}")),
            &["foo=bar"],
            &["config: this plugin does not need command line configuration"],
        ),
    ];
    for (name, text, params, want) in cases {
        let p = match text {
            Some(t) => script(&dir, name, &t),
            None => dir.join(name),
        };
        let mut args = vec![path_str(&p)];
        args.extend_from_slice(params);
        let e = start_fails(&args);
        assert!(
            e.starts_with(&format!("nbdkit: error: {}: ", path_str(&p))),
            "{name}: {e}"
        );
        for w in want {
            assert!(e.contains(w), "{name}: no {w:?} in {e}");
        }
    }
    // A die in config: Perl's message with the script's line.
    let p = script(
        &dir,
        "cfgdie.pl",
        &format!("sub open {{ 1 }}\n{REST}sub config {{\n  die \"no key $_[0]\";\n}}\n"),
    );
    let e = start_fails(&[path_str(&p), "foo=bar"]);
    assert!(
        e.contains(&format!("no key foo at {} line 5.", path_str(&p))),
        "{e}"
    );
    let e = start_fails(&[]);
    assert!(e.contains("nbdkit perl /path/to/plugin.pl"), "{e}");
}

/// Errors in callbacks and values of the wrong type fail the request
/// (EIO unless the script chose the errno) with one error line with
/// Perl's message, and the server goes on serving.
#[test]
fn callback_errors_fail_the_request_and_the_server_goes_on() {
    perl_plugin();
    let dir = TempDir::new();
    let s = script(
        &dir,
        "errors.pl",
        r#"use POSIX ();
my $opens = 0;
sub open { $opens++; return $opens; }
sub get_size {
    my $h = shift;
    return "big" if $h == 2;
    return { size => 1 } if $h == 3;
    return 1048576;
}
sub pread {
    my ($h, $count, $offset) = @_;
    if ($offset == 4096) { Nbdkit::set_error (POSIX::ENOSPC); die "no room at $offset"; }
    die "plain failure\n" if $offset == 8192;
    return [1, 2] if $offset == 12288;
    return "ab" if $offset == 16384;
    return "r" x $count;
}
sub pwrite { die "read-only here"; }
"#,
    );
    let mut srv = Server::start(["perl", path_str(&s)]);
    let mut c = srv.connect_raw();
    c.handshake_go("").expect("handshake");
    assert_eq!(c.pread(0, 512, 1).unwrap(), Ok(vec![b'r'; 512]));
    assert_eq!(c.pread(4096, 512, 2).unwrap(), Err(NBD_ENOSPC));
    assert_eq!(c.pread(8192, 512, 3).unwrap(), Err(NBD_EIO));
    assert_eq!(c.pread(12288, 512, 4).unwrap(), Err(NBD_EIO));
    assert_eq!(c.pread(16384, 512, 5).unwrap(), Err(NBD_EIO));
    assert_eq!(c.pwrite(0, &[1; 512], 6).unwrap(), NBD_EIO);
    // set_error applies to one failure only.
    assert_eq!(c.pread(8192, 512, 7).unwrap(), Err(NBD_EIO));
    assert_eq!(c.pread(0, 512, 8).unwrap(), Ok(vec![b'r'; 512]));
    c.disconnect().unwrap();
    assert!(srv.is_alive());

    // A wrong return type from get_size fails that connection's open.
    for _ in 0..2 {
        let mut c = srv.connect_raw();
        assert!(c.handshake_go("").is_err());
        assert!(srv.is_alive());
    }
    let mut c = srv.connect_raw();
    c.handshake_go("").expect("handshake after the failures");
    assert_eq!(c.pread(0, 512, 9).unwrap(), Ok(vec![b'r'; 512]));

    let stderr = srv.stderr();
    let errors = error_lines(&stderr);
    let file = path_str(&s);
    let want = [
        format!("error: no room at 4096 at {file} line 12."),
        "error: plain failure".to_string(),
        format!("error: {file}: pread: returned a value that is not a string of bytes: ARRAY("),
        format!("error: {file}: pread: the buffer returned is too small (2 < 512 bytes)"),
        format!("error: read-only here at {file} line 18."),
        format!("error: {file}: get_size: returned a value that is not a number: big"),
        format!("error: {file}: get_size: returned a value that is not a number: HASH("),
    ];
    for w in &want {
        assert!(
            errors.iter().any(|l| l.contains(w.as_str())),
            "no error line with {w:?}:\n{stderr}"
        );
    }
    // One line per failure.
    assert_eq!(errors.len(), want.len() + 1, "{stderr}");
}

#[test]
fn zero_falls_back_to_pwrite_on_eopnotsupp() {
    skip_unless!("python3-nbd");
    perl_plugin();
    let dir = TempDir::new();
    let text = RAMDISK.replace(
        "sub zero\n{",
        "sub zero\n{\n    Nbdkit::set_error (POSIX::EOPNOTSUPP);\n    die \"use pwrite\";\n",
    );
    let s = script(&dir, "zero.pl", &format!("use POSIX ();\n{text}"));
    let srv = Server::start(["perl", path_str(&s)]);
    let code = r#"
import sys
import nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
h.pwrite(b"x" * 4096, 0)
h.zero(4096, 0)
assert h.pread(4096, 0) == bytes(4096)
print("ok")
"#;
    assert_eq!(libnbd(code, &srv.uri()).trim(), "ok");
    assert!(error_lines(&srv.stderr()).is_empty(), "{}", srv.stderr());
}

#[test]
fn plain_server_does_not_load_libperl() {
    perl_plugin();
    if is_reference() {
        println!("SKIP: about this project's binary");
        return;
    }
    let maps = |srv: &Server| fs::read_to_string(format!("/proc/{}/maps", srv.pid())).unwrap();
    let mem = Server::start(["memory", "1M"]);
    assert!(!maps(&mem).contains("libperl"), "{}", maps(&mem));
    let dir = TempDir::new();
    let s = script(&dir, "ramdisk.pl", RAMDISK);
    let pl = Server::start(["perl", path_str(&s)]);
    assert!(
        maps(&pl).contains("libperl"),
        "the perl plugin has no libperl?"
    );
}

/// Debian's C nbdkit runs the same scripts the same way.
#[test]
fn ramdisk_answers_like_the_reference() {
    skip_unless!("nbdinfo");
    perl_plugin();
    if !Path::new(REFERENCE).exists() {
        println!("SKIP: the reference {REFERENCE} is not installed");
        return;
    }
    if !run(
        Command::new(REFERENCE).args(["perl", "--dump-plugin"]),
        CMD_TIMEOUT,
    )
    .success()
    {
        println!("SKIP: the reference has no perl plugin (nbdkit-plugin-perl)");
        return;
    }
    let dir = TempDir::new();
    // Debian's perl plugin (1.32) serves a script without `can_write`
    // read-only even when it has `pwrite`, against nbdkit-plugin(3) (and
    // example4's manual, "read and written by all clients"); this project
    // follows the manual, so the compared script says it.
    let s = script(
        &dir,
        "ramdisk.pl",
        &format!("{RAMDISK}\nsub can_write {{ 1 }}\n"),
    );
    let probe = "nbdinfo --json \"$uri\" | grep -v '\"uri\"'; nbdcopy \"$uri\" - | md5sum";
    let go = |bin: &Path, args: &[&str]| {
        let o = run(
            Command::new(bin)
                .env("PATH", "/usr/bin:/bin")
                .args(["-U", "-"])
                .args(args)
                .args(["--run", probe]),
            CMD_TIMEOUT,
        );
        assert!(o.success(), "{}: {}", bin.display(), o.describe());
        o.stdout
    };
    let ramdisk = ["perl", path_str(&s), "size=2097152"];
    assert_eq!(
        go(&nbdkit_bin(), &ramdisk),
        go(Path::new(REFERENCE), &ramdisk)
    );
    // perl_version= is the same line.
    let v = |bin: &Path| {
        let o = run(
            Command::new(bin).args(["perl", "--dump-plugin"]),
            CMD_TIMEOUT,
        );
        o.stdout
            .lines()
            .find(|l| l.starts_with("perl_version="))
            .map(str::to_string)
    };
    assert_eq!(v(&nbdkit_bin()), v(Path::new(REFERENCE)));
}

/// A plugin whose libperl is not installed is refused with one error line
/// that names the Debian package to install.
#[test]
fn missing_libperl_names_the_debian_package() {
    if is_reference() {
        println!("SKIP: about this project's message");
        return;
    }
    skip_unless!("gcc");
    let dir = TempDir::new();
    let plugin = plugin_needing_missing_library(&dir, "libperl.so.5.99");
    let o = run(
        nbdkit_cmd().args(["-U", "-", path_str(&plugin), "--run", "exit 0"]),
        CMD_TIMEOUT,
    );
    assert_eq!(o.code(), Some(1), "{}", o.describe());
    let errors = error_lines(&o.stderr);
    assert_eq!(errors.len(), 1, "{}", o.stderr);
    assert!(
        errors[0].contains("libperl.so.5.99: cannot open shared object file")
            && errors[0].ends_with("(install Debian's libperl5.99)"),
        "{}",
        errors[0]
    );
}

/// `Nbdkit::debug` messages are the server's debug messages (`-v`).
#[test]
fn nbdkit_debug_is_a_debug_message() {
    skip_unless!("nbdinfo");
    perl_plugin();
    let dir = TempDir::new();
    let s = script(&dir, "ramdisk.pl", RAMDISK);
    let mut srv = Server::start(["-v", "perl", path_str(&s)]);
    let o = run_tool("nbdinfo", ["--size", &srv.uri()]);
    assert!(o.success(), "{}", o.describe());
    srv.stop();
    let stderr = srv.stderr();
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("nbdkit: ") && l.ends_with("debug: open: readonly=0")),
        "{stderr}"
    );
}
