//! The lua plugin (plugins/lua, `libnbdkit_lua_plugin.so` beside the
//! binary): scripts of nbdkit-lua-plugin(3) served by the binary under
//! test and driven by real clients. Build it with
//! `cargo build -p nbdkit-lua-plugin` (`--release` for target/release).
#![allow(clippy::std_instead_of_core)]

#[path = "lang_common/mod.rs"]
mod lang_common;

use std::fs;
use std::process::Command;

use lang_common::*;
use nbdkit_tests::*;

/// A RAM disk in 4K blocks (missing blocks read as zeroes).
const RAMDISK: &str = r#"
local BS = 4096
local ZERO = string.rep("\0", BS)
local blocks = {}
size = 1024 * 1024

function config (key, value)
   if key == "size" then
      size = nbdkit.parse_size (value)
   else
      error ("unknown parameter " .. key .. "=" .. value)
   end
end

function open (readonly)
   return {}
end

function get_size (h)
   return size
end

function pread (h, count, offset)
   local out = {}
   local pos, stop = offset, offset + count
   while pos < stop do
      local i, o = pos // BS, pos % BS
      local n = math.min (BS - o, stop - pos)
      out[#out + 1] = string.sub (blocks[i] or ZERO, o + 1, o + n)
      pos = pos + n
   end
   return table.concat (out)
end

function pwrite (h, buf, offset)
   local pos, len = 0, #buf
   while pos < len do
      local i, o = (offset + pos) // BS, (offset + pos) % BS
      local n = math.min (BS - o, len - pos)
      local piece = string.sub (buf, pos + 1, pos + n)
      if n == BS then
         blocks[i] = piece
      else
         local b = blocks[i] or ZERO
         blocks[i] = string.sub (b, 1, o) .. piece .. string.sub (b, o + n + 1)
      end
      pos = pos + n
   end
end

function zero (h, count, offset, may_trim)
   pwrite (h, string.rep ("\0", count), offset)
end

function flush (h)
end
"#;

#[test]
fn ramdisk_round_trips_through_qemu_img_and_nbdcopy() {
    skip_unless!("qemu-img", "nbdcopy");
    check_plugin("lua");
    let dir = TempDir::new();
    let s = script(&dir, "ramdisk.lua", RAMDISK);
    let srv = Server::start(["lua", path_str(&s), "size=8M"]);
    round_trip(&srv, &dir);
}

/// The manual's example (plugins/lua/example.lua): a file served through
/// Lua's io library, `file=` checked by config_complete.
#[test]
fn manual_example_serves_a_file() {
    skip_unless!("qemu-img", "nbdcopy");
    check_plugin("lua");
    let dir = TempDir::new();
    let s = script(
        &dir,
        "example.lua",
        r#"
function dump_plugin ()
   print ("example_lua=1")
end

function config (key, value)
   if key == "file" then
      file = value
   else
      error ("unknown parameter " .. key .. "=" .. value)
   end
end

function config_complete ()
   if not file then
      error ("file parameter missing")
   end
end

function open (readonly)
   local fh = assert (io.open (file, readonly and "rb" or "r+b"))
   return fh
end

function close (fh)
   assert (fh:close ())
end

function get_size (fh)
   return assert (fh:seek ("end"))
end

function pread (fh, count, offset)
   assert (fh:seek ("set", offset))
   return assert (fh:read (count))
end

function pwrite (fh, buf, offset)
   assert (fh:seek ("set", offset))
   assert (fh:write (buf))
   assert (fh:flush ())
end
"#,
    );
    let disk = dir.join("disk.img");
    fs::write(&disk, vec![0u8; 8 << 20]).unwrap();
    let file = format!("file={}", path_str(&disk));
    let srv = Server::start(["lua", path_str(&s), &file]);
    round_trip(&srv, &dir);

    let o = run(
        nbdkit_cmd().args(["lua", path_str(&s), "--dump-plugin"]),
        CMD_TIMEOUT,
    );
    assert!(o.success(), "{}", o.describe());
    assert_eq!(
        o.stdout.lines().last(),
        Some("example_lua=1"),
        "{}",
        o.stdout
    );
    let e = start_fails("lua", &[path_str(&s)]);
    assert!(
        e.contains("config_complete: ") && e.contains("example.lua:16: file parameter missing"),
        "{e}"
    );
}

/// Every callback of the manual, the optional ones beyond it, and the
/// `nbdkit` table.
const EVERY_CALLBACK: &str = r#"
local LOG
local SIZE = 1024 * 1024
local disks = {}

local function note (what)
   local f = assert (io.open (LOG, "a"))
   f:write (what, "\n")
   f:close ()
end

function dump_plugin () print ("test_dump_field=yes") end

function config (key, value)
   if key == "size" then SIZE = nbdkit.parse_size (value)
   elseif key == "log" then LOG = value
   else error ("unknown key " .. key) end
end

function config_complete () note ("config_complete") end
function get_ready () note ("get_ready") end
function after_fork () note ("after_fork") end
function cleanup () note ("cleanup") end
function preconnect (readonly) note ("preconnect") end

function list_exports (readonly, is_tls)
   return { { "a", "export A" }, "b" }
end

function default_export (readonly, is_tls) return "a" end

function open (readonly)
   local name = nbdkit.export_name ()
   if name ~= "a" and name ~= "b" then
      nbdkit.set_error (nbdkit.ENOENT)
      error ("no export " .. name)
   end
   disks[name] = disks[name] or string.rep ("\0", SIZE)
   note ("open " .. name)
   return { name = name }
end

function close (h) note ("close " .. h.name) end
function export_description (h) return "export " .. string.upper (h.name) end
function get_size (h) return #disks[h.name] end
function block_size (h) return 1, 4096, 1024 * 1024 end
function is_rotational (h) return h.name == "b" end
function can_multi_conn (h) return true end
function can_write (h) return true end
function can_flush (h) return true end
function can_trim (h) return true end
function can_zero (h) return true end
function can_fast_zero (h) return true end
function can_fua (h) return nbdkit.FUA_NATIVE end
function can_cache (h) return nbdkit.CACHE_NATIVE end
function can_extents (h) return true end

local function put (h, offset, data)
   local d = disks[h.name]
   disks[h.name] = d:sub (1, offset) .. data .. d:sub (offset + #data + 1)
end

function pread (h, count, offset)
   return disks[h.name]:sub (offset + 1, offset + count)
end

function pwrite (h, buf, offset, flags)
   note ("pwrite fua=" .. tostring (flags & nbdkit.FLAG_FUA ~= 0))
   put (h, offset, buf)
end

function flush (h) note ("flush") end

function trim (h, count, offset)
   note ("trim")
   put (h, offset, string.rep ("\0", count))
end

function zero (h, count, offset, may_trim)
   note ("zero may_trim=" .. tostring (may_trim))
   put (h, offset, string.rep ("\0", count))
end

function cache (h, count, offset)
   note ("cache " .. offset .. " " .. count)
end

function extents (h, count, offset, flags)
   local half = #disks[h.name] // 2
   local stop = offset + count
   local out = {}
   if offset < half then
      out[#out + 1] = { offset, math.min (stop, half) - offset, 0 }
   end
   if stop > half then
      local s = math.max (offset, half)
      out[#out + 1] = { s, stop - s, nbdkit.EXTENT_HOLE | nbdkit.EXTENT_ZERO }
   end
   return out
end
"#;

#[test]
fn every_callback_through_nbdinfo_and_libnbd() {
    skip_unless!("nbdinfo", "python3-nbd");
    check_plugin("lua");
    let dir = TempDir::new();
    let s = script(&dir, "every.lua", EVERY_CALLBACK);
    let log = dir.join("log");
    let log_arg = format!("log={}", path_str(&log));
    let srv = Server::start(["lua", path_str(&s), "size=2M", &log_arg]);
    check_every_callback(srv, &log);
}

#[test]
fn shebang_script_runs_directly() {
    skip_unless!("nbdinfo");
    check_plugin("lua");
    let dir = TempDir::new();
    let size = shebang_runs("lua", &dir, "disk.lua", RAMDISK, &["size=3M"]);
    assert_eq!(size, "3145728");
}

#[test]
fn dump_plugin_prints_lua_version_and_the_script_callback() {
    check_plugin("lua");
    let dir = TempDir::new();
    let s = script(&dir, "every.lua", EVERY_CALLBACK);
    let o = run(
        nbdkit_cmd().args(["lua", path_str(&s), "--dump-plugin"]),
        CMD_TIMEOUT,
    );
    assert!(o.success(), "{}", o.describe());
    let lines: Vec<&str> = o.stdout.lines().collect();
    assert!(lines.contains(&"name=lua"), "{}", o.stdout);
    assert!(
        lines.contains(&"thread_model=serialize_all_requests"),
        "{}",
        o.stdout
    );
    assert!(
        lines.iter().any(|l| l.starts_with("lua_version=5.4.")),
        "{}",
        o.stdout
    );
    assert_eq!(lines.last(), Some(&"test_dump_field=yes"), "{}", o.stdout);
}

/// The plugin's own `--dump-plugin` lines (`name`, `lua_version` and the
/// script's) are the reference's: Debian's C lua plugin is an API 1 plugin
/// linked with Lua 5.3, so the generic lines and the version differ.
#[test]
fn dump_plugin_own_lines_match_the_reference() {
    check_plugin("lua");
    if !reference_has("lua") {
        return;
    }
    let dir = TempDir::new();
    let s = script(
        &dir,
        "dump.lua",
        &format!("function dump_plugin ()\n  print ('mine=1')\nend\n{RAMDISK}"),
    );
    assert_eq!(
        dump_own_lines(&nbdkit_bin(), &s),
        dump_own_lines(std::path::Path::new(REFERENCE), &s)
    );
    assert_eq!(
        dump_own_lines(&nbdkit_bin(), &s),
        ["name=lua", "lua_version=...", "mine=1"]
    );
}

#[test]
fn script_load_errors_are_one_line_with_the_place() {
    check_plugin("lua");
    let dir = TempDir::new();
    const REST: &str =
        "function get_size (h) return 1 end\nfunction pread (h, c, o) return '' end\n";
    let cases: [LoadCase<'_>; 6] = [
        (
            "syntax.lua",
            Some("function open (r)\n  return 1\nend\nx = = 1\n".into()),
            &[],
            &["could not parse Lua script ", "syntax.lua:4: unexpected symbol near '='"],
        ),
        (
            "raises.lua",
            Some(format!("function open (r) return 1 end\n{REST}\nerror ('broken')\n")),
            &[],
            &["could not run Lua script: ", "raises.lua:5: broken"],
        ),
        (
            "nosize.lua",
            Some("function open (r) return 1 end\nfunction pread (h, c, o) return '' end\n".into()),
            &[],
            &["'open', 'get_size' or 'pread' is not defined by this Lua script"],
        ),
        (
            "nopread.lua",
            Some("function open (r) return 1 end\nfunction get_size (h) return 1 end\n".into()),
            &[],
            &["'open', 'get_size' or 'pread' is not defined by this Lua script"],
        ),
        ("missing.lua", None, &[], &["No such file or directory"]),
        (
            "cfg.lua",
            Some(format!(
                "function config (k, v)\n  error ('bad key ' .. k)\nend\nfunction open (r) return 1 end\n{REST}"
            )),
            &["foo=bar"],
            &["config: ", "cfg.lua:2: bad key foo"],
        ),
    ];
    check_load_errors("lua", &dir, &cases);
    let e = start_fails("lua", &["foo=bar"]);
    assert!(e.contains("script=/path/to/script.lua"), "{e}");
}

/// Errors in callbacks and values of the wrong type fail the request (EIO
/// unless the script chose the errno) with one error line naming the
/// script's line, and the server goes on serving.
#[test]
fn callback_errors_fail_the_request_and_the_server_goes_on() {
    check_plugin("lua");
    let dir = TempDir::new();
    let s = script(
        &dir,
        "errors.lua",
        r#"
function open (readonly)
   return nbdkit.export_name ()
end

function get_size (h)
   if h == "badsize" then return "big" end
   return 1024 * 1024
end

function pread (h, count, offset)
   if offset == 4096 then
      nbdkit.set_error (nbdkit.ENOSPC)
      error ("no room at " .. offset)
   elseif offset == 8192 then
      error ("plain failure")
   elseif offset == 12288 then
      return 42
   elseif offset == 16384 then
      return "short"
   end
   return string.rep ("r", count)
end

function pwrite (h, buf, offset)
   assert (false, "read-only here")
end

function can_fua (h)
   if h == "badfua" then return "native" end
   return false
end
"#,
    );
    let mut srv = Server::start(["lua", path_str(&s)]);
    let mut c = srv.connect_raw();
    c.handshake_go("").expect("handshake");
    assert_eq!(c.pread(0, 512, 1).unwrap(), Ok(vec![b'r'; 512]));
    assert_eq!(c.pread(4096, 512, 2).unwrap(), Err(NBD_ENOSPC));
    assert_eq!(c.pread(8192, 512, 3).unwrap(), Err(NBD_EIO));
    assert_eq!(c.pread(12288, 512, 4).unwrap(), Err(NBD_EIO));
    assert_eq!(c.pread(16384, 512, 5).unwrap(), Err(NBD_EIO));
    assert_eq!(c.pwrite(0, &[1; 512], 6).unwrap(), NBD_EIO);
    assert_eq!(c.pread(0, 512, 7).unwrap(), Ok(vec![b'r'; 512]));
    c.disconnect().unwrap();
    assert!(srv.is_alive());

    for bad in ["badsize", "badfua"] {
        let mut c = srv.connect_raw();
        assert!(c.handshake_go(bad).is_err(), "{bad}");
        assert!(srv.is_alive());
    }
    let mut c = srv.connect_raw();
    c.handshake_go("").expect("handshake after the failures");
    assert_eq!(c.pread(0, 512, 8).unwrap(), Ok(vec![b'r'; 512]));

    let stderr = srv.stderr();
    let errors = error_lines(&stderr);
    let p = path_str(&s);
    let want = [
        format!("pread: {p}:14: no room at 4096"),
        format!("pread: {p}:16: plain failure"),
        "pread: return value is not a string (of type integer)".to_string(),
        "pread: returned string length < count bytes (5 < 512)".to_string(),
        format!("pwrite: {p}:26: read-only here"),
        "get_size: cannot convert returned value to an integer (of type string)".to_string(),
        "can_fua: return value is not a boolean or 0, 1, 2 (of type string)".to_string(),
    ];
    for w in &want {
        let n = errors.iter().filter(|l| l.contains(w.as_str())).count();
        assert!(n >= 1, "no error line with {w:?}:\n{stderr}");
    }
    assert!(!stderr.contains("stack traceback"), "{stderr}");
}

/// The traceback is a debug message.
#[test]
fn traceback_is_in_the_debug_output() {
    skip_unless!("nbdcopy");
    check_plugin("lua");
    let dir = TempDir::new();
    let s = script(
        &dir,
        "tb.lua",
        "function open (r) return 1 end\nfunction get_size (h) return 512 end\n\
         local function inner () error ('deep') end\nfunction pread (h, c, o) inner () end\n",
    );
    let o = run(
        nbdkit_cmd()
            .env("PATH", "/usr/bin:/bin")
            .args(["-v", "-U", "-", "lua", path_str(&s)])
            .args(["--run", "nbdcopy \"$uri\" - >/dev/null"]),
        CMD_TIMEOUT,
    );
    assert!(!o.success(), "nbdcopy should fail: {}", o.describe());
    assert!(o.stderr.contains("stack traceback:"), "{}", o.stderr);
    assert!(o.stderr.contains("tb.lua:4: in function"), "{}", o.stderr);
    assert!(o.stderr.contains("tb.lua:3: deep"), "{}", o.stderr);
}

/// `zero` calling nbdkit.set_error(EOPNOTSUPP), or no `zero` at all, makes
/// the server write zeroes instead.
#[test]
fn zero_falls_back_to_pwrite() {
    skip_unless!("python3-nbd");
    check_plugin("lua");
    let dir = TempDir::new();
    for zero in [
        "function zero (h, c, o, t)\n  nbdkit.set_error (nbdkit.EOPNOTSUPP)\n  error ('use pwrite')\nend\n",
        "",
    ] {
        let s = script(
            &dir,
            "zero.lua",
            &format!(
                r#"
disk = string.rep ("\xff", 65536)
function open (r) return 1 end
function get_size (h) return #disk end
function pread (h, c, o) return disk:sub (o + 1, o + c) end
function pwrite (h, b, o) disk = disk:sub (1, o) .. b .. disk:sub (o + #b + 1) end
{zero}"#
            ),
        );
        let srv = Server::start(["lua", path_str(&s)]);
        let code = r#"
import sys, nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
h.zero(4096, 4096)
assert h.pread(4096, 4096) == bytes(4096)
assert h.pread(4096, 0) == b"\xff" * 4096
print("ok")
"#;
        assert_eq!(libnbd(code, &srv.uri()).trim(), "ok");
        assert!(error_lines(&srv.stderr()).is_empty(), "{}", srv.stderr());
    }
}

/// The same failing script under the reference and ours: the error line
/// of a callback has the same text.
#[test]
fn callback_error_line_matches_the_reference() {
    skip_unless!("nbdcopy");
    check_plugin("lua");
    if !reference_has("lua") {
        return;
    }
    let dir = TempDir::new();
    let s = script(
        &dir,
        "fail.lua",
        "function open (r) return 1 end\nfunction get_size (h) return 512 end\n\
         function pread (h, c, o)\n  error ('could not read ' .. c)\nend\n",
    );
    let go = |bin: &std::path::Path| {
        let o = run(
            Command::new(bin)
                .env("PATH", "/usr/bin:/bin")
                .args(["-U", "-", "lua", path_str(&s)])
                .args(["--run", "nbdcopy \"$uri\" - >/dev/null"]),
            CMD_TIMEOUT,
        );
        assert!(!o.success(), "{}", o.describe());
        error_lines(&o.stderr)
            .into_iter()
            .filter(|l| l.contains("pread"))
            .map(|l| l[l.find("pread").unwrap()..].to_string())
            .next()
            .unwrap_or_default()
    };
    let ours = go(&nbdkit_bin());
    let theirs = go(std::path::Path::new(REFERENCE));
    assert_eq!(ours, theirs);
    assert_eq!(
        ours,
        format!("pread: {}:4: could not read 512", path_str(&s))
    );
}

#[test]
fn missing_liblua_names_the_debian_package() {
    missing_library_names_the_package("liblua5.9.so.0", "liblua5.9-0");
}
