//! The ruby plugin (plugins/ruby, `libnbdkit_ruby_plugin.so` beside the
//! binary): scripts of nbdkit-ruby-plugin(3) served by the binary under
//! test and driven by real clients. Build it with
//! `cargo build -p nbdkit-ruby-plugin` (`--release` for target/release).
#![allow(clippy::std_instead_of_core)]

#[path = "lang_common/mod.rs"]
mod lang_common;

use std::time::Duration;

use lang_common::*;
use nbdkit_tests::*;

/// The manual's example (plugins/ruby/example.rb): a RAM disk in a String,
/// `zero` falling back to writes unless it may trim, `config` printing
/// the parameters.
const EXAMPLE: &str = r#"
include Nbdkit

$disk = "\0" * (1024 * 1024)

def config(key, value)
  if key == "size"
    $disk = "\0" * Nbdkit.parse_size(value)
  else
    printf("%s = %s\n", key, value)
  end
end

def open(readonly)
  h = {}
  return h
end

def get_size(h)
  return $disk.bytesize
end

def pread(h, count, offset)
  return $disk.byteslice(offset, count)
end

def pwrite(h, buf, offset)
  $disk[offset, buf.length] = buf
end

def zero(h, count, offset, may_trim)
  if may_trim
    $disk[offset, count] = "\0" * count
  else
    set_error(Errno::EOPNOTSUPP)
    raise "falling back to pwrite"
  end
end
"#;

#[test]
fn manual_example_round_trips_through_qemu_img_and_nbdcopy() {
    skip_unless!("qemu-img", "nbdcopy");
    check_plugin("ruby");
    let dir = TempDir::new();
    let s = script(&dir, "example.rb", EXAMPLE);
    let srv = Server::start(["ruby", path_str(&s), "size=8M", "test1=foo"]);
    round_trip(&srv, &dir);
}

/// The example's `zero` with may_trim false asks for the fall-back.
#[test]
fn zero_falls_back_to_pwrite() {
    skip_unless!("python3-nbd");
    check_plugin("ruby");
    let dir = TempDir::new();
    let s = script(&dir, "example.rb", EXAMPLE);
    let srv = Server::start(["ruby", path_str(&s)]);
    let code = r#"
import sys, nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
h.pwrite(b"\xff" * 65536, 0)
h.zero(4096, 4096, nbd.CMD_FLAG_NO_HOLE)
assert h.pread(4096, 4096) == bytes(4096)
h.zero(4096, 16384)
assert h.pread(4096, 16384) == bytes(4096)
assert h.pread(4096, 0) == b"\xff" * 4096
print("ok")
"#;
    assert_eq!(libnbd(code, &srv.uri()).trim(), "ok");
    assert!(error_lines(&srv.stderr()).is_empty(), "{}", srv.stderr());
}

/// Every callback of the manual, the optional ones beyond it, and the
/// `Nbdkit` module.
const EVERY_CALLBACK: &str = r#"
$log = nil
$size = 1024 * 1024
$disks = {}

def note(what)
  File.open($log, "a") { |f| f.puts(what) }
end

def dump_plugin
  puts "test_dump_field=yes"
end

def config(key, value)
  case key
  when "size" then $size = Nbdkit.parse_size(value)
  when "log" then $log = value
  else raise ArgumentError, "unknown key #{key}"
  end
end

def config_complete; note("config_complete"); end
def get_ready; note("get_ready"); end
def after_fork; note("after_fork"); end
def cleanup; note("cleanup"); end
def preconnect(readonly); note("preconnect"); end

def list_exports(readonly, is_tls)
  [["a", "export A"], "b"]
end

def default_export(readonly, is_tls); "a"; end

def open(readonly)
  name = Nbdkit.export_name
  unless ["a", "b"].include?(name)
    Nbdkit.set_error(Errno::ENOENT)
    raise "no export #{name}"
  end
  $disks[name] ||= "\0".b * $size
  note("open #{name}")
  { name: name }
end

def close(h); note("close #{h[:name]}"); end
def export_description(h); "export #{h[:name].upcase}"; end
def get_size(h); $disks[h[:name]].bytesize; end
def block_size(h); [1, 4096, 1024 * 1024]; end
def is_rotational(h); h[:name] == "b"; end
def can_multi_conn(h); true; end
def can_write(h); true; end
def can_flush(h); true; end
def can_trim(h); true; end
def can_zero(h); true; end
def can_fast_zero(h); true; end
def can_fua(h); Nbdkit::FUA_NATIVE; end
def can_cache(h); Nbdkit::CACHE_NATIVE; end
def can_extents(h); true; end

def pread(h, count, offset)
  $disks[h[:name]].byteslice(offset, count)
end

def pwrite(h, buf, offset, flags)
  note("pwrite fua=#{flags & Nbdkit::FLAG_FUA != 0}")
  $disks[h[:name]][offset, buf.bytesize] = buf
end

def flush(h); note("flush"); end

def trim(h, count, offset)
  note("trim")
  $disks[h[:name]][offset, count] = "\0".b * count
end

def zero(h, count, offset, may_trim)
  note("zero may_trim=#{may_trim}")
  $disks[h[:name]][offset, count] = "\0".b * count
end

def cache(h, count, offset)
  note("cache #{offset} #{count}")
end

def extents(h, count, offset, flags)
  half = $disks[h[:name]].bytesize / 2
  stop = offset + count
  out = []
  out << [offset, [stop, half].min - offset, 0] if offset < half
  if stop > half
    s = [offset, half].max
    out << [s, stop - s, Nbdkit::EXTENT_HOLE | Nbdkit::EXTENT_ZERO]
  end
  out
end
"#;

#[test]
fn every_callback_through_nbdinfo_and_libnbd() {
    skip_unless!("nbdinfo", "python3-nbd");
    check_plugin("ruby");
    let dir = TempDir::new();
    let s = script(&dir, "every.rb", EVERY_CALLBACK);
    let log = dir.join("log");
    let log_arg = format!("log={}", path_str(&log));
    let srv = Server::start(["ruby", path_str(&s), "size=2M", &log_arg]);
    check_every_callback(srv, &log);
}

#[test]
fn shebang_script_runs_directly() {
    skip_unless!("nbdinfo");
    check_plugin("ruby");
    let dir = TempDir::new();
    let size = shebang_runs("ruby", &dir, "disk.rb", EXAMPLE, &["size=3M"]);
    assert_eq!(size, "3145728");
}

/// nbdkit forks into the background after configuration: the script
/// still runs in the server that stays.
#[test]
fn background_server_runs_the_script() {
    skip_unless!("nbdinfo");
    check_plugin("ruby");
    let dir = TempDir::new();
    let s = script(&dir, "example.rb", EXAMPLE);
    let sock = dir.join("sock");
    let pidfile = dir.join("pid");
    let o = run(
        nbdkit_cmd()
            .args(["-U", path_str(&sock), "-P", path_str(&pidfile)])
            .args(["ruby", path_str(&s), "size=5M"]),
        CMD_TIMEOUT,
    );
    assert!(o.success(), "{}", o.describe());
    assert!(
        wait_until(Duration::from_secs(20), || read_pidfile(&pidfile).is_some()),
        "no pidfile"
    );
    let pid = read_pidfile(&pidfile).unwrap();
    let uri = format!("nbd+unix:///?socket={}", path_str(&sock));
    let o = run_tool("nbdinfo", ["--size", &uri]);
    // SAFETY: a server this test started, by its pid.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    assert!(o.success(), "{}", o.describe());
    assert_eq!(o.stdout.trim(), "5242880");
    assert!(wait_until(Duration::from_secs(10), || !pid_alive(pid)));
}

#[test]
fn dump_plugin_prints_ruby_version_and_the_script_callback() {
    check_plugin("ruby");
    let dir = TempDir::new();
    let s = script(&dir, "every.rb", EVERY_CALLBACK);
    let o = run(
        nbdkit_cmd().args(["ruby", path_str(&s), "--dump-plugin"]),
        CMD_TIMEOUT,
    );
    assert!(o.success(), "{}", o.describe());
    let lines: Vec<&str> = o.stdout.lines().collect();
    assert!(lines.contains(&"name=ruby"), "{}", o.stdout);
    assert!(
        lines.contains(&"thread_model=serialize_all_requests"),
        "{}",
        o.stdout
    );
    assert!(
        lines.iter().any(|l| l.starts_with("ruby_api_version=3.")),
        "{}",
        o.stdout
    );
    assert_eq!(lines.last(), Some(&"test_dump_field=yes"), "{}", o.stdout);
}

/// The plugin's own `--dump-plugin` lines are the reference's (Debian's C
/// ruby plugin is an API 1 plugin; the generic lines differ).
#[test]
fn dump_plugin_own_lines_match_the_reference() {
    check_plugin("ruby");
    if !reference_has("ruby") {
        return;
    }
    let dir = TempDir::new();
    let s = script(
        &dir,
        "dump.rb",
        &format!("def dump_plugin\n  puts 'mine=1'\nend\n{EXAMPLE}"),
    );
    // The reference's stdio buffer puts its own lines after the script's
    // (which Ruby flushes first): compare them sorted.
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    assert_eq!(
        sorted(dump_own_lines(&nbdkit_bin(), &s)),
        sorted(dump_own_lines(std::path::Path::new(REFERENCE), &s))
    );
    assert_eq!(
        dump_own_lines(&nbdkit_bin(), &s),
        ["name=ruby", "ruby_api_version=...", "mine=1"]
    );
}

#[test]
fn script_load_errors_are_one_line_with_the_place() {
    check_plugin("ruby");
    let dir = TempDir::new();
    const REST: &str = "def get_size(h)\n  1\nend\ndef pread(h, c, o)\n  ''\nend\n";
    let cases: [LoadCase<'_>; 6] = [
        (
            "syntax.rb",
            Some("def open(r)\n  1\nend\nx = = 1\n".into()),
            &[],
            &["could not load ruby script: ", "syntax.rb:4: syntax error"],
        ),
        (
            "raises.rb",
            Some(format!("def open(r)\n  1\nend\n{REST}raise 'broken'\n")),
            &[],
            &["raises.rb:10:in `<top (required)>': broken (RuntimeError)"],
        ),
        (
            "nosize.rb",
            Some("def open(r)\n  1\nend\ndef pread(h, c, o)\n  ''\nend\n".into()),
            &[],
            &["'open', 'get_size' or 'pread' is not defined by this Ruby script"],
        ),
        (
            "nopread.rb",
            Some("def open(r)\n  1\nend\ndef get_size(h)\n  1\nend\n".into()),
            &[],
            &["'open', 'get_size' or 'pread' is not defined by this Ruby script"],
        ),
        ("missing.rb", None, &[], &["No such file or directory"]),
        (
            "cfg.rb",
            Some(format!(
                "def config(k, v)\n  raise ArgumentError, \"bad key #{{k}}\"\nend\ndef open(r)\n  1\nend\n{REST}"
            )),
            &["foo=bar"],
            &["config: ", "cfg.rb:2:in `config': bad key foo (ArgumentError)"],
        ),
    ];
    check_load_errors("ruby", &dir, &cases);
    let e = start_fails("ruby", &["foo=bar"]);
    assert!(e.contains("script=/path/to/ruby/script.rb"), "{e}");
}

/// Exceptions in callbacks and values of the wrong type fail the request
/// (EIO unless the script chose the errno) with one error line naming the
/// script's line, and the server goes on serving.
#[test]
fn callback_errors_fail_the_request_and_the_server_goes_on() {
    check_plugin("ruby");
    let dir = TempDir::new();
    let s = script(
        &dir,
        "errors.rb",
        r#"
def open(readonly)
  Nbdkit.export_name
end

def get_size(h)
  return "big" if h == "badsize"
  1024 * 1024
end

def pread(h, count, offset)
  case offset
  when 4096
    Nbdkit.set_error(Errno::ENOSPC)
    raise IOError, "no room at #{offset}"
  when 8192
    raise "plain failure"
  when 12288
    return 42
  when 16384
    return "short"
  when 20480
    Nbdkit.set_error(28)
    raise "by number"
  end
  "r" * count
end

def pwrite(h, buf, offset)
  raise Errno::EROFS
end

def can_fua(h)
  h == "badfua" ? "native" : false
end
"#,
    );
    let mut srv = Server::start(["ruby", path_str(&s)]);
    let mut c = srv.connect_raw();
    c.handshake_go("").expect("handshake");
    assert_eq!(c.pread(0, 512, 1).unwrap(), Ok(vec![b'r'; 512]));
    assert_eq!(c.pread(4096, 512, 2).unwrap(), Err(NBD_ENOSPC));
    assert_eq!(c.pread(8192, 512, 3).unwrap(), Err(NBD_EIO));
    assert_eq!(c.pread(12288, 512, 4).unwrap(), Err(NBD_EIO));
    assert_eq!(c.pread(16384, 512, 5).unwrap(), Err(NBD_EIO));
    assert_eq!(c.pread(20480, 512, 6).unwrap(), Err(NBD_ENOSPC));
    assert_eq!(c.pwrite(0, &[1; 512], 7).unwrap(), NBD_EIO);
    assert_eq!(c.pread(0, 512, 8).unwrap(), Ok(vec![b'r'; 512]));
    c.disconnect().unwrap();
    assert!(srv.is_alive());

    for bad in ["badsize", "badfua"] {
        let mut c = srv.connect_raw();
        assert!(c.handshake_go(bad).is_err(), "{bad}");
        assert!(srv.is_alive());
    }
    let mut c = srv.connect_raw();
    c.handshake_go("").expect("handshake after the failures");
    assert_eq!(c.pread(0, 512, 9).unwrap(), Ok(vec![b'r'; 512]));

    let stderr = srv.stderr();
    let errors = error_lines(&stderr);
    let p = path_str(&s);
    let want = [
        format!("pread: {p}:15:in `pread': no room at 4096 (IOError)"),
        format!("pread: {p}:17:in `pread': plain failure (RuntimeError)"),
        format!("{p}: pread: pread did not return a String (Integer)"),
        format!("{p}: pread: byte array returned from pread is too small (5 < 512 bytes)"),
        format!("pread: {p}:24:in `pread': by number (RuntimeError)"),
        format!("pwrite: {p}:30:in `pwrite': Read-only file system (Errno::EROFS)"),
        format!("{p}: get_size: get_size did not return an Integer (String)"),
        format!("{p}: can_fua: can_fua did not return true, false or 0, 1, 2 (String)"),
    ];
    for w in &want {
        let n = errors.iter().filter(|l| l.contains(w.as_str())).count();
        assert!(n >= 1, "no error line with {w:?}:\n{stderr}");
    }
}

/// The backtrace is a debug message.
#[test]
fn backtrace_is_in_the_debug_output() {
    skip_unless!("nbdcopy");
    check_plugin("ruby");
    let dir = TempDir::new();
    let s = script(
        &dir,
        "tb.rb",
        "def open(r)\n  1\nend\ndef get_size(h)\n  512\nend\ndef inner\n  raise 'deep'\nend\n\
         def pread(h, c, o)\n  inner\nend\n",
    );
    let o = run(
        nbdkit_cmd()
            .env("PATH", "/usr/bin:/bin")
            .args(["-v", "-U", "-", "ruby", path_str(&s)])
            .args(["--run", "nbdcopy \"$uri\" - >/dev/null"]),
        CMD_TIMEOUT,
    );
    assert!(!o.success(), "nbdcopy should fail: {}", o.describe());
    assert!(
        o.stderr.contains("tb.rb:8:in `inner': deep (RuntimeError)"),
        "{}",
        o.stderr
    );
    assert!(o.stderr.contains("backtrace:"), "{}", o.stderr);
    assert!(o.stderr.contains("tb.rb:11:in `pread'"), "{}", o.stderr);
}

#[test]
fn missing_libruby_names_the_debian_package() {
    missing_library_names_the_package("libruby-3.9.so.3.9", "libruby3.9");
}

#[test]
fn config_printing_goes_to_stdout() {
    check_plugin("ruby");
    let dir = TempDir::new();
    let s = script(&dir, "example.rb", EXAMPLE);
    let o = run(
        nbdkit_cmd()
            .args(["-U", "-", "ruby", path_str(&s), "test1=foo", "test2=bar"])
            .args(["--run", "true"]),
        CMD_TIMEOUT,
    );
    assert!(o.success(), "{}", o.describe());
    assert!(
        o.stdout.contains("test1 = foo\ntest2 = bar\n"),
        "{}",
        o.describe()
    );
}
