//! nbdkit's C ABI: compiled plugins and filters (`.so`) loaded by the
//! binary under test. Debian's plugin objects must serve what they serve
//! under Debian's C nbdkit; plugins and filters written for these tests
//! (tests/c/, built with gcc against the project's include/) exercise
//! every callback and the `nbdkit_*` functions the server exports.
#![allow(clippy::std_instead_of_core, clippy::alloc_instead_of_core)]

use std::path::{Path, PathBuf};
use std::process::Command;

use nbdkit_tests::*;

const REFERENCE: &str = "/usr/bin/nbdkit";
const DEBIAN_PLUGINS: &str = "/usr/lib/x86_64-linux-gnu/nbdkit/plugins";
const DEBIAN_FILTERS: &str = "/usr/lib/x86_64-linux-gnu/nbdkit/filters";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repository root")
        .to_path_buf()
}

/// Build tests/c/`src` as a shared object in `dir`, against `include`
/// (the project's headers unless given). `None` (with a SKIP line) when
/// gcc is missing.
fn build_so(
    dir: &TempDir,
    src: &str,
    out: &str,
    include: Option<&Path>,
    defs: &[&str],
) -> Option<PathBuf> {
    if !have_tool("gcc") {
        println!("SKIP: gcc is not installed");
        return None;
    }
    let inc = include.map_or_else(|| repo().join("include"), Path::to_path_buf);
    let so = dir.join(out);
    let o = run(
        Command::new("gcc")
            .args([
                "-Wall",
                "-Werror",
                "-Wno-unused-parameter",
                "-shared",
                "-fPIC",
            ])
            .arg(format!("-I{}", inc.display()))
            .args(defs)
            .arg(repo().join("tests/c").join(src))
            .arg("-o")
            .arg(&so),
        CMD_TIMEOUT,
    );
    assert!(o.success(), "gcc {src}: {}", o.describe());
    Some(so)
}

/// An executable script, written by a child process (no ETXTBSY race with
/// other test threads forking).
fn write_script(path: &Path, text: &str) {
    let o = run_with_input(
        Command::new("sh")
            .args(["-c", "cat > \"$1\" && chmod 755 \"$1\"", "sh"])
            .arg(path),
        Some(text.as_bytes()),
        CMD_TIMEOUT,
    );
    assert!(o.success(), "{}", o.describe());
}

fn reference() -> bool {
    if Path::new(REFERENCE).exists() {
        true
    } else {
        println!("SKIP: the reference {REFERENCE} is not installed");
        false
    }
}

/// Run `bin -U - ARGS --run SCRIPT` and return (status, stdout, stderr).
fn run_with(bin: &Path, args: &[&str], script: &str) -> Output {
    run(
        Command::new(bin)
            .env("PATH", "/usr/bin:/bin")
            .args(["-U", "-"])
            .args(args)
            .args(["--run", script]),
        CMD_TIMEOUT,
    )
}

/// `nbdsh` running the Python `code` (written to a file in `dir`) against
/// `$uri`, as a --run command.
fn nbdsh(dir: &TempDir, name: &str, code: &str) -> String {
    let f = dir.join(name);
    std::fs::write(&f, format!("import nbd\n{code}")).unwrap();
    format!(
        "nbdsh -u \"$uri\" -c \"exec(open('{}').read())\"",
        f.display()
    )
}

const PROBE: &str = "nbdinfo --json \"$uri\" | grep -v '\"uri\"'; nbdcopy \"$uri\" - | md5sum";

#[test]
fn debian_plugin_objects_serve_what_the_reference_serves() {
    if !reference() || !skip_unless("nbdinfo") || !skip_unless("nbdcopy") {
        return;
    }
    let dir = TempDir::new();
    let disk = dir.join("disk.img");
    write_random_file(&disk, 1 << 20, 7);
    let files = dir.join("files");
    std::fs::create_dir(&files).unwrap();
    std::fs::write(files.join("a.txt"), b"hello\n").unwrap();
    let script = dir.join("plugin.sh");
    write_script(
        &script,
        "case \"$1\" in get_size) echo 65536 ;; pread) dd if=/dev/zero count=$3 iflag=count_bytes 2>/dev/null | tr '\\0' 'A' ;; *) exit 2 ;; esac\n",
    );
    let d = disk.display().to_string();
    let f = files.display().to_string();
    let s = script.display().to_string();
    let remote = Server::start(["file", d.as_str()]);
    let py = dir.join("ram.py");
    std::fs::write(
        &py,
        "import nbdkit\nAPI_VERSION = 2\ndisk = bytearray(b'nbdkit' * 4096)\n\
         def open(readonly): return 1\ndef get_size(h): return len(disk)\n\
         def pread(h, buf, offset, flags): buf[:] = disk[offset:offset+len(buf)]\n",
    )
    .unwrap();
    let cases: Vec<(&str, Vec<String>)> = vec![
        ("zero", vec![]),
        ("null", vec!["size=1M".into()]),
        (
            "data",
            vec!["data=1 2 3 @0x1000 4".into(), "size=1M".into()],
        ),
        ("pattern", vec!["size=1M".into()]),
        ("memory", vec!["size=1M".into()]),
        ("file", vec![d.clone()]),
        // (split is left out: Debian's nbdinfo --json crashes on it.)
        ("partitioning", vec![d.clone()]),
        ("sh", vec![s]),
        (
            "eval",
            vec![
                "get_size=echo 4096".into(),
                "pread=dd if=/dev/zero count=$3 iflag=count_bytes 2>/dev/null".into(),
            ],
        ),
        ("random", vec!["size=1M".into(), "seed=1".into()]),
        ("sparse-random", vec!["size=1M".into(), "seed=1".into()]),
        ("full", vec!["size=1M".into()]),
        ("example1", vec![]),
        ("example2", vec![format!("file={d}")]),
        ("example3", vec![]),
        ("info", vec![]),
        ("floppy", vec![f]),
        // (iso is left out: its images carry the time they were made.)
        // The network plugins, against local servers: curl reads a file://
        // URL; nbd proxies to a server of ours started below.
        ("curl", vec![format!("file://{d}")]),
        ("nbd", vec![format!("socket={}", remote.socket().display())]),
        ("python", vec![py.display().to_string()]),
    ];
    let mut compared = 0;
    for (name, args) in &cases {
        let so = format!("{DEBIAN_PLUGINS}/nbdkit-{name}-plugin.so");
        if !Path::new(&so).exists() {
            println!("SKIP: {so} is not installed");
            continue;
        }
        // The object itself is loaded (not a built-in of the same name).
        let help = run(nbdkit_cmd().arg(&so).arg("--help"), CMD_TIMEOUT);
        assert!(
            help.stdout.contains(&format!("({so})")),
            "{name}: {}",
            help.describe()
        );
        let mut a: Vec<&str> = vec![&so];
        a.extend(args.iter().map(String::as_str));
        let ours = run_with(&nbdkit_bin(), &a, PROBE);
        let theirs = run_with(Path::new(REFERENCE), &a, PROBE);
        assert!(theirs.success(), "reference, {name}: {}", theirs.describe());
        assert!(ours.success(), "ours, {name}: {}", ours.describe());
        assert_eq!(
            ours.stdout, theirs.stdout,
            "{name}: nbdinfo --json and data differ"
        );
        compared += 1;
    }
    assert!(compared > 0, "no Debian plugin object was found to compare");
}

#[test]
fn dump_plugin_of_debian_objects_matches_the_reference() {
    if !reference() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(DEBIAN_PLUGINS) else {
        println!("SKIP: {DEBIAN_PLUGINS} does not exist");
        return;
    };
    let mut compared = 0;
    let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    paths.sort();
    for p in paths {
        let ps = p.display().to_string();
        // Language plugins start interpreters; cc compiles: their dumps
        // are theirs, not the loader's, and are left to their own tests.
        if !ps.ends_with("-plugin.so") || ps.contains("python") || ps.contains("-cc-") {
            continue;
        }
        let ours = run(nbdkit_cmd().arg(&p).arg("--dump-plugin"), CMD_TIMEOUT);
        let theirs = run(
            Command::new(REFERENCE).arg(&p).arg("--dump-plugin"),
            CMD_TIMEOUT,
        );
        if !theirs.success() {
            println!("SKIP: the reference cannot dump {ps}");
            continue;
        }
        assert!(ours.success(), "{ps}: {}", ours.describe());
        assert_eq!(ours.stdout, theirs.stdout, "--dump-plugin of {ps}");
        compared += 1;
    }
    assert!(compared > 5, "only {compared} plugin objects compared");
}

/// The test plugin with every callback (API 2).
fn test_plugin(dir: &TempDir) -> Option<PathBuf> {
    build_so(dir, "cabi-test-plugin.c", "tp.so", None, &[])
}

#[test]
fn v2_plugin_with_every_callback_serves_and_is_called_as_nbdkit_calls_it() {
    if !skip_unless("nbdsh") {
        return;
    }
    let dir = TempDir::new();
    let Some(so) = test_plugin(&dir) else { return };
    let log = dir.join("calls.log");
    let out = run(
        nbdkit_cmd()
            .env("PATH", "/usr/bin:/bin")
            .args(["-U", "-"])
            .arg(&so)
            .args(["1M", "error_offset=300000", "-D", "testplugin.level=7"])
            .arg(format!("log={}", log.display()))
            .args([
                "--run",
                &format!(
                    "{} && nbdinfo \"$uri\" | grep description: && nbdinfo --map \"$uri\"",
                    nbdsh(&dir, "v2.py", V2_PY)
                ),
            ]),
        CMD_TIMEOUT,
    );
    assert!(out.success(), "{}", out.describe());
    assert!(
        out.stdout
            .contains("description: test plugin, export '', level 7"),
        "export description / -D flag: {}",
        out.describe()
    );
    // 0..4096 was zeroed, 4096..8192 is data, then a hole (all zero), as
    // the plugin reports.
    let map: Vec<Vec<&str>> = out
        .stdout
        .lines()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<&str>>())
        .filter(|v| v.len() == 3 && v[0].parse::<u64>().is_ok())
        .collect();
    assert_eq!(
        &map[..2],
        &[vec!["0", "4096", "3"], vec!["4096", "4096", "0"]],
        "{}",
        out.describe()
    );
    assert!(
        out.stdout.contains("errno=EPERM"),
        "nbdkit_set_error(EPERM) must reach the reply: {}",
        out.describe()
    );
    assert!(
        out.stderr.contains("testplugin")
            && out
                .stderr
                .contains("error: injected error at offset 300000"),
        "nbdkit_error's message is logged: {}",
        out.describe()
    );
    let calls = std::fs::read_to_string(&log).unwrap_or_default();
    for want in [
        "config_complete",
        "parse_size=2048",
        "parse_bool=1",
        "parse_int=-16",
        "parse_unsigned=8",
        "parse_uint8_t_bad=-1",
        "parse_int64_t=-5",
        "parse_probability=0.25",
        "printf_intern=42-x",
        "strndup_intern=abc",
        "absolute_path=/abs",
        "realpath=/usr",
        "read_password=secret",
        "stdio_safe=1",
        "debug_level=7",
        "get_ready",
        "after_fork",
        "preconnect ro=0",
        "default_export",
        "open ro=0 export= tls=0",
        "peer_family=1",
        "peer_uid_ok=1",
        "pwrite fua",
        "flush",
        "trim",
        "zero flags=",
        "cache",
        "close",
        "cleanup",
        "unload",
    ] {
        assert!(
            calls.lines().any(|l| l.starts_with(want)),
            "the plugin did not log {want:?}:\n{calls}\n{}",
            out.describe()
        );
    }
    let order: Vec<&str> = [
        "get_ready",
        "after_fork",
        "preconnect",
        "open",
        "close",
        "cleanup",
        "unload",
    ]
    .into_iter()
    .collect();
    let pos: Vec<usize> = order
        .iter()
        .map(|w| calls.lines().position(|l| l.starts_with(w)).unwrap())
        .collect();
    assert!(
        pos.windows(2).all(|w| w[0] < w[1]),
        "call order {order:?}:\n{calls}"
    );
}

#[test]
fn v2_plugin_lists_its_exports_and_refuses_in_open() {
    if !skip_unless("nbdinfo") {
        return;
    }
    let dir = TempDir::new();
    let Some(so) = test_plugin(&dir) else { return };
    let so = so.display().to_string();
    let out = run_with(&nbdkit_bin(), &[&so, "1M"], "nbdinfo --list \"$uri\"");
    assert!(out.success(), "{}", out.describe());
    assert!(out.stdout.contains("export=\"second\""), "{}", out.stdout);
    assert!(
        out.stdout.contains("description: another export"),
        "{}",
        out.stdout
    );
    let out = run_with(
        &nbdkit_bin(),
        &[&so, "1M"],
        "nbdinfo \"nbd+unix:///refuse?socket=$unixsocket\"; echo status=$?",
    );
    assert!(!out.stdout.contains("status=0"), "{}", out.describe());
    assert!(
        out.stderr.contains("error: open: export refuse is refused"),
        "{}",
        out.describe()
    );
}

#[test]
fn v1_plugin_serves_and_reports_errno_when_preserved() {
    if !skip_unless("nbdsh") {
        return;
    }
    let dir = TempDir::new();
    let Some(so) = build_so(&dir, "cabi-test-plugin-v1.c", "tv1.so", None, &[]) else {
        return;
    };
    let out = run(
        nbdkit_cmd()
            .env("PATH", "/usr/bin:/bin")
            .args(["-U", "-"])
            .arg(&so)
            .args(["--run", &nbdsh(&dir, "v1.py", V1_PY)]),
        CMD_TIMEOUT,
    );
    assert!(out.success(), "{}", out.describe());
    assert!(
        out.stdout.contains("errno=ENOSPC"),
        "ENOSPC from errno: {}",
        out.describe()
    );
}

#[test]
fn plugins_built_with_our_headers_dump_as_under_the_reference() {
    if !reference() {
        return;
    }
    let dir = TempDir::new();
    let Some(so) = build_so(&dir, "cabi-test-plugin-v1.c", "tv1.so", None, &[]) else {
        return;
    };
    // Built with Debian's headers, the full test plugin loads in both.
    let deb = Path::new("/usr/include/nbdkit-plugin.h")
        .exists()
        .then(|| {
            build_so(
                &dir,
                "cabi-test-plugin.c",
                "tpdeb.so",
                Some(Path::new("/usr/include")),
                &[],
            )
        })
        .flatten();
    for p in [Some(so), deb].into_iter().flatten() {
        for flag in ["--dump-plugin", "--help", "--version"] {
            let ours = run(nbdkit_cmd().arg(&p).arg(flag), CMD_TIMEOUT);
            let theirs = run(Command::new(REFERENCE).arg(&p).arg(flag), CMD_TIMEOUT);
            assert!(theirs.success(), "{}", theirs.describe());
            assert!(ours.success(), "{}", ours.describe());
            let strip = |s: &str| -> String {
                // The server's own version lines differ by design.
                s.lines()
                    .filter(|l| !l.starts_with("nbdkit "))
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            if flag == "--help" {
                let tail = |s: &str| s[s.find("\nplugin:").unwrap_or(0)..].to_string();
                assert_eq!(
                    tail(&ours.stdout),
                    tail(&theirs.stdout),
                    "{flag} {}",
                    p.display()
                );
            } else {
                assert_eq!(
                    strip(&ours.stdout),
                    strip(&theirs.stdout),
                    "{flag} {}",
                    p.display()
                );
            }
        }
    }
}

#[test]
fn plugins_nbdkit_refuses_give_one_error_line_with_its_text() {
    let dir = TempDir::new();
    let cases = [
        "NAME",
        "NO_NAME",
        "NO_OPEN",
        "NO_GET_SIZE",
        "NO_PREAD",
        "NULL_INIT",
        "API_VERSION",
        "STRUCT_SIZE",
        "NO_INIT",
    ];
    for c in cases {
        let Some(so) = build_so(
            &dir,
            "cabi-bad-plugin.c",
            &format!("bad-{c}.so"),
            None,
            &[&format!("-DBAD_{c}")],
        ) else {
            return;
        };
        let ours = run(nbdkit_cmd().arg(&so), CMD_TIMEOUT);
        assert_eq!(ours.code(), Some(1), "{c}: {}", ours.describe());
        let lines: Vec<&str> = ours.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{c}: one line: {}", ours.describe());
        assert!(
            lines[0].starts_with("nbdkit: error: "),
            "{c}: {}",
            ours.describe()
        );
        if Path::new(REFERENCE).exists() {
            let theirs = run(Command::new(REFERENCE).arg(&so), CMD_TIMEOUT);
            assert_eq!(theirs.code(), Some(1), "{}", theirs.describe());
            // nbdkit prints these without "error:"; the text is the same.
            let want = theirs.stderr.lines().next().unwrap_or_default().replacen(
                "nbdkit: ",
                "nbdkit: error: ",
                1,
            );
            assert_eq!(lines[0], want, "{c}");
        }
    }
    // A missing file, and a filter given as a plugin and the reverse.
    let missing = dir.join("missing.so").display().to_string();
    let out = run(nbdkit_cmd().arg(&missing), CMD_TIMEOUT);
    assert_eq!(out.code(), Some(1));
    assert!(
        out.stderr.starts_with(&format!(
            "nbdkit: error: cannot open plugin '{missing}': {missing}: cannot open shared object file: No such file or directory"
        )),
        "{}",
        out.describe()
    );
    let Some(filter) = build_so(&dir, "cabi-test-filter.c", "tf.so", None, &[]) else {
        return;
    };
    let out = run(nbdkit_cmd().arg(&filter), CMD_TIMEOUT);
    assert_eq!(out.code(), Some(1));
    assert!(
        out.stderr.contains("undefined symbol: plugin_init"),
        "{}",
        out.describe()
    );
    let Some(plugin) = test_plugin(&dir) else {
        return;
    };
    let out = run(
        nbdkit_cmd()
            .arg(format!("--filter={}", plugin.display()))
            .arg("null"),
        CMD_TIMEOUT,
    );
    assert_eq!(out.code(), Some(1));
    assert!(
        out.stderr.contains("undefined symbol: filter_init"),
        "{}",
        out.describe()
    );
}

#[test]
fn plugin_config_errors_are_one_error_line() {
    let dir = TempDir::new();
    let Some(so) = test_plugin(&dir) else { return };
    let out = run(nbdkit_cmd().arg(&so).arg("fail=now"), CMD_TIMEOUT);
    assert_eq!(out.code(), Some(1), "{}", out.describe());
    assert_eq!(
        out.stderr.trim_end(),
        "nbdkit: error: config: asked to fail with now"
    );
    let out = run(nbdkit_cmd().arg(&so).arg("size=lots"), CMD_TIMEOUT);
    assert_eq!(out.code(), Some(1), "{}", out.describe());
    assert_eq!(
        out.stderr.trim_end(),
        "nbdkit: error: could not parse size string (lots)"
    );
}

#[test]
fn debian_filters_are_refused_for_their_version() {
    let so = format!("{DEBIAN_FILTERS}/nbdkit-offset-filter.so");
    if !Path::new(&so).exists() {
        println!("SKIP: {so} is not installed");
        return;
    }
    let out = run(
        nbdkit_cmd().arg(format!("--filter={so}")).arg("null"),
        CMD_TIMEOUT,
    );
    assert_eq!(out.code(), Some(1), "{}", out.describe());
    assert!(
        out.stderr.starts_with(&format!(
            "nbdkit: error: {so}: filter is incompatible with this version of nbdkit (_version = "
        )),
        "{}",
        out.describe()
    );
}

#[test]
fn c_filter_stacks_over_builtin_and_c_plugins_and_builtin_filters() {
    if !skip_unless("nbdsh") || !skip_unless("nbdinfo") {
        return;
    }
    let dir = TempDir::new();
    let Some(filter) = build_so(&dir, "cabi-test-filter.c", "tf.so", None, &[]) else {
        return;
    };
    let Some(plugin) = test_plugin(&dir) else {
        return;
    };
    let f = format!("--filter={}", filter.display());
    let p = plugin.display().to_string();
    // Over the built-in pattern plugin: bytes are XORed with 0x0f.
    for manual in ["manual=0", "manual=1"] {
        let out = run_with(
            &nbdkit_bin(),
            &[&f, "pattern", "size=1M", "xor=0x0f", manual],
            "nbdcopy \"$uri\" - | od -A n -t x1 -N 16",
        );
        assert!(out.success(), "{}", out.describe());
        // pattern's first 16 bytes are the offsets 0 and 8 as 64-bit
        // big-endian numbers.
        let mut want = vec!["0f"; 15];
        want.push("07");
        assert_eq!(
            out.stdout.split_whitespace().collect::<Vec<_>>(),
            want,
            "{manual}: {}",
            out.describe()
        );
    }
    // Over the C plugin, under the built-in offset filter: writes go
    // through both, the description and the export list through the C
    // filter's next calls.
    let out = run(
        nbdkit_cmd()
            .env("PATH", "/usr/bin:/bin")
            .args(["-U", "-", "--filter=offset", &f, &p, "1M", "offset=4096"])
            .args([
                "--run",
                &format!(
                    "nbdinfo --list \"$uri\" | grep export=; nbdinfo \"$uri\" | grep description:; {}",
                    nbdsh(&dir, "stack.py", STACK_PY)
                ),
            ]),
        CMD_TIMEOUT,
    );
    assert!(out.success(), "{}", out.describe());
    assert!(
        out.stdout.contains("export=\"xor-extra\""),
        "{}",
        out.describe()
    );
    assert!(
        out.stdout
            .contains("description: xor: test plugin, export '', level 0"),
        "{}",
        out.describe()
    );
    assert!(
        out.stdout.contains(&format!("size={}", (1 << 20) - 4096)),
        "{}",
        out.describe()
    );
    // And the data underneath is XORed with 0xff.
    let out = run_with(
        &nbdkit_bin(),
        &[&f, "memory", "size=64K", "xor=0xff"],
        &nbdsh(
            &dir,
            "xor.py",
            "h.pwrite(b'\\x00\\x01', 0)\nprint(h.pread(2, 0).hex())\n",
        ),
    );
    assert!(out.success(), "{}", out.describe());
    assert!(out.stdout.contains("0001"), "{}", out.describe());
}

#[test]
fn installed_headers_and_pkg_config_build_a_plugin() {
    if !skip_unless("pkg-config") || !skip_unless("gcc") || !skip_unless("nbdinfo") {
        return;
    }
    let dir = TempDir::new();
    let prefix = dir.join("prefix");
    let o = run(
        Command::new("sh")
            .arg(repo().join("scripts/install-dev.sh"))
            .arg(&prefix),
        CMD_TIMEOUT,
    );
    assert!(o.success(), "{}", o.describe());
    let so = dir.join("p.so");
    let cmd = format!(
        "cc -Wall -Werror -Wno-unused-parameter -shared -fPIC $(pkg-config --cflags nbdkit) {} -o {} && pkg-config --modversion nbdkit",
        repo().join("tests/c/cabi-test-plugin.c").display(),
        so.display()
    );
    let o = run(
        Command::new("sh")
            .arg("-c")
            .arg(&cmd)
            .env("PKG_CONFIG_PATH", prefix.join("lib/pkgconfig")),
        CMD_TIMEOUT,
    );
    assert!(o.success(), "{}", o.describe());
    assert_eq!(o.stdout.trim(), "1.36.2");
    let s = so.display().to_string();
    let out = run_with(&nbdkit_bin(), &[&s, "1M"], "nbdinfo --size \"$uri\"");
    assert!(out.success(), "{}", out.describe());
    assert_eq!(out.stdout.trim(), "1048576");
}

const V2_PY: &str = r#"
h.pwrite(b"hello" * 100, 4096, nbd.CMD_FLAG_FUA)
assert h.pread(500, 4096) == b"hello" * 100
h.flush()
h.trim(4096, 8192)
h.zero(512, 0)
h.cache(512, 0)
assert h.can_fua() and h.can_multi_conn() and h.can_cache() and h.is_rotational()
assert h.get_block_size(nbd.SIZE_PREFERRED) == 4096
try:
    h.pread(512, 299800)
    print("no error")
except nbd.Error as e:
    print("errno=" + str(e.errno))
"#;

const V1_PY: &str = r#"
h.pwrite(b"x" * 512, 0)
assert h.pread(512, 0) == b"x" * 512
h.zero(512, 0)
assert h.pread(512, 0) == bytearray(512)
h.trim(512, 1024)
h.flush()
try:
    h.pwrite(b"y" * 512, 4096)
    print("no error")
except nbd.Error as e:
    print("errno=" + str(e.errno))
"#;

const STACK_PY: &str = r#"
h.pwrite(b"abc", 0)
assert h.pread(3, 0) == b"abc"
h.zero(512, 512)
assert h.pread(4, 512) == bytearray(4)
print("size=%d" % h.get_size())
"#;
