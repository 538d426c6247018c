//! Plugins written in other languages that reach the server through
//! nbdkit's C ABI (issue 10, part 4): the `cc` plugin (C and C++ compiled
//! at start-up), Rust plugins made with the crates.io `nbdkit` crate, Go
//! plugins made with plugins/golang, OCaml plugins made with
//! plugins/ocaml. Each example serves a disk that nbdcopy and qemu-img
//! write and read back byte for byte.
#![allow(clippy::std_instead_of_core, clippy::alloc_instead_of_core)]

use std::path::{Path, PathBuf};
use std::process::Command;

use nbdkit_tests::*;

const REFERENCE: &str = "/usr/bin/nbdkit";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repository root")
        .to_path_buf()
}

/// A manual page as plain text (`None`, with a SKIP line, when it is not
/// installed).
fn manual(page: &str) -> Option<String> {
    if !have_tool("man") {
        return None;
    }
    let o = run(
        Command::new("man")
            .env("MANWIDTH", "200")
            .env("MAN_KEEP_FORMATTING", "")
            .args(["-P", "cat", page]),
        CMD_TIMEOUT,
    );
    if !o.success() || o.stdout.is_empty() {
        println!("SKIP: the manual page {page} is not installed (Debian's nbdkit, man-db)");
        return None;
    }
    // Drop any overstrike (bold "X\bX", underline "_\bX").
    let mut text = String::new();
    for c in o.stdout.chars() {
        if c == '\u{8}' {
            text.pop();
        } else {
            text.push(c);
        }
    }
    Some(text)
}

/// The lines of `text` from the first line after one containing `after`
/// up to the first that `last` accepts (`inclusive`: whether that one
/// belongs to the block), dedented by the indentation of the first line.
fn block(
    text: &str,
    after: &str,
    first: impl Fn(&str) -> bool,
    last: impl Fn(&str) -> bool,
    inclusive: bool,
) -> Option<String> {
    let mut lines = text.lines().skip_while(|l| !l.contains(after)).skip(1);
    let start = lines.by_ref().find(|l| first(l))?;
    let indent = start.len() - start.trim_start().len();
    let mut out = vec![start[indent..].to_string()];
    for l in lines {
        let done = last(l);
        if done && !inclusive {
            break;
        }
        out.push(l.get(indent..).unwrap_or("").to_string());
        if done {
            break;
        }
    }
    Some(out.join("\n") + "\n")
}

/// The C plugin of nbdkit-cc-plugin(3)'s EXAMPLE section, as printed.
fn manual_c_example() -> Option<String> {
    let man = manual("nbdkit-cc-plugin")?;
    let ex = man.split("\nEXAMPLE").nth(1)?;
    let code = block(
        ex,
        "nbdkit cc - <<'EOF'",
        |_| true,
        |l| l.trim() == "EOF",
        false,
    )?;
    assert!(
        code.contains("NBDKIT_REGISTER_PLUGIN(plugin)"),
        "cannot find the example in nbdkit-cc-plugin(3):\n{code}"
    );
    Some(code)
}

/// The registration fragment of nbdkit-plugin(3)'s "WRITING PLUGINS IN
/// C++", as printed.
fn manual_cxx_fragment() -> Option<String> {
    let man = manual("nbdkit-plugin")?;
    let code = block(
        &man,
        "WRITING PLUGINS IN C++",
        |l| l.trim_start().starts_with("namespace {"),
        |l| l.contains("NBDKIT_REGISTER_PLUGIN(plugin)"),
        true,
    )?;
    assert!(
        code.contains("create_plugin"),
        "cannot find the C++ fragment in nbdkit-plugin(3):\n{code}"
    );
    Some(code)
}

/// Files of one write-then-read-back check: `--run` writes `data` into the
/// export with nbdcopy, then reads it back with nbdcopy and with qemu-img
/// convert, and records nbdinfo's size.
struct Roundtrip {
    data: PathBuf,
    out_nbdcopy: PathBuf,
    out_qemu: PathBuf,
    size: PathBuf,
    want: Vec<u8>,
    /// With [`Roundtrip::with_hole`]: where `nbdinfo --map` goes.
    map: Option<PathBuf>,
}

/// The stretch that [`Roundtrip::with_hole`] zeroes.
const HOLE: core::ops::Range<usize> = 1 << 20..2 << 20;

impl Roundtrip {
    /// For a writable disk of `len` bytes.
    fn new(dir: &TempDir, len: usize, seed: u64) -> Roundtrip {
        let data = dir.join("data");
        let want = write_random_file(&data, len, seed);
        Roundtrip {
            data,
            out_nbdcopy: dir.join("out-nbdcopy"),
            out_qemu: dir.join("out-qemu"),
            size: dir.join("size"),
            want,
            map: None,
        }
    }

    /// The data with [`HOLE`] zeroed, which a plugin with extents must
    /// then report as a hole that reads as zeroes.
    fn with_hole(mut self, dir: &TempDir) -> Roundtrip {
        self.want[HOLE].fill(0);
        std::fs::write(&self.data, &self.want).unwrap();
        self.map = Some(dir.join("map"));
        self
    }

    /// The `--run` command.
    fn script(&self) -> String {
        let map = match &self.map {
            Some(m) => format!("; nbdinfo --map \"$uri\" > {}", m.display()),
            None => String::new(),
        };
        format!(
            "set -e; nbdcopy {data} \"$uri\"; nbdcopy \"$uri\" {out1}; \
             qemu-img convert -f raw -O raw \"$uri\" {out2}; \
             nbdinfo --size \"$uri\" > {size}{map}",
            data = self.data.display(),
            out1 = self.out_nbdcopy.display(),
            out2 = self.out_qemu.display(),
            size = self.size.display(),
        )
    }

    /// After the run: both copies are the data, byte for byte.
    fn check(&self, what: &str, o: &Output) {
        assert!(o.success(), "{what}: {}", o.describe());
        let size = std::fs::read_to_string(&self.size).unwrap_or_default();
        assert_eq!(size.trim(), self.want.len().to_string(), "{what}: size");
        let got = std::fs::read(&self.out_nbdcopy).expect("nbdcopy's copy");
        assert_bytes_eq(&format!("{what}: read back by nbdcopy"), &got, &self.want);
        let got = std::fs::read(&self.out_qemu).expect("qemu-img's copy");
        assert_bytes_eq(&format!("{what}: read back by qemu-img"), &got, &self.want);
        if let Some(m) = &self.map {
            let map = std::fs::read_to_string(m).unwrap_or_default();
            let (start, len) = (HOLE.start.to_string(), HOLE.len().to_string());
            assert!(
                map.lines().any(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    f.len() >= 4 && f[0] == start && f[1] == len && l.contains("hole,zero")
                }),
                "{what}: nbdinfo --map does not show the hole:\n{map}"
            );
        }
    }
}

fn have_clients() -> bool {
    have_tool("nbdcopy") && have_tool("nbdinfo") && have_tool("qemu-img")
}

/// `cmd ARGS... --run ROUNDTRIP` (with `/usr/bin` first on PATH for the
/// clients), `input` on stdin.
fn serve_and_check(what: &str, cmd: &mut Command, rt: &Roundtrip, input: Option<&[u8]>) {
    // A PATH the command was given comes first.
    let given = cmd
        .get_envs()
        .find(|(k, _)| *k == "PATH")
        .and_then(|(_, v)| v.map(|v| format!("{}:", v.to_string_lossy())))
        .unwrap_or_default();
    let path = format!(
        "{given}/usr/bin:/bin:{}",
        std::env::var("PATH").unwrap_or_default()
    );
    let o = run_with_input(
        cmd.env("PATH", path).arg("--run").arg(rt.script()),
        input,
        CMD_TIMEOUT,
    );
    rt.check(what, &o);
}

/// `nbdkit -U - ARGS...` of the binary under test.
fn ours(args: &[&str]) -> Command {
    let mut c = nbdkit_cmd();
    c.args(["-U", "-"]).args(args);
    c
}

/// `nbdkit SO --dump-plugin`, which must print each of `lines`.
fn dump_plugin_has(so: &Path, lines: &[&str]) -> Output {
    let o = run(nbdkit_cmd().arg(so).arg("--dump-plugin"), CMD_TIMEOUT);
    assert!(o.success(), "{}", o.describe());
    for line in lines {
        assert!(
            o.stdout.lines().any(|l| l == *line),
            "{line}: {}",
            o.describe()
        );
    }
    o
}

const MANUAL_EXAMPLE_SIZE: usize = 10 * 1024 * 1024;

// --- cc ------------------------------------------------------------------

#[test]
fn cc_manual_example_from_stdin() {
    if !have_clients() || !have_tool("gcc") {
        return;
    }
    let Some(code) = manual_c_example() else {
        return;
    };
    let dir = TempDir::new();
    let rt = Roundtrip::new(&dir, MANUAL_EXAMPLE_SIZE, 1);
    serve_and_check(
        "nbdkit cc - <<EOF",
        &mut ours(&["cc", "-"]),
        &rt,
        Some(code.as_bytes()),
    );
}

#[test]
fn cc_manual_example_from_a_file_with_flags() {
    if !have_clients() || !have_tool("gcc") {
        return;
    }
    let Some(code) = manual_c_example() else {
        return;
    };
    let dir = TempDir::new();
    let src = dir.join("plugin.c");
    std::fs::write(&src, &code).unwrap();
    let src = path_str(&src);
    // The default flags, then replaced ones, then extra ones.
    let rt = Roundtrip::new(&dir, MANUAL_EXAMPLE_SIZE, 2);
    serve_and_check("default flags", &mut ours(&["cc", src]), &rt, None);
    serve_and_check(
        "CFLAGS=",
        &mut ours(&["cc", src, "CFLAGS=-O0 -fPIC -shared"]),
        &rt,
        None,
    );
    serve_and_check(
        "EXTRA_CFLAGS=",
        &mut ours(&["cc", src, "EXTRA_CFLAGS=-DUNUSED=1 -Wall"]),
        &rt,
        None,
    );
    // Flags that cannot make a shared object: the compiler's own failure.
    let o = run(
        &mut ours(&["cc", src, "CFLAGS=-O0", "--run", "true"]),
        CMD_TIMEOUT,
    );
    assert_eq!(o.code(), Some(1), "{}", o.describe());
}

#[test]
fn cc_cxx_with_the_manual_registration() {
    if !have_clients() || !have_tool("g++") {
        return;
    }
    let Some(fragment) = manual_cxx_fragment() else {
        return;
    };
    let dir = TempDir::new();
    let mut code = std::fs::read_to_string(repo().join("tests/lang/cc/ramdisk.cpp")).unwrap();
    code.push_str(&fragment);
    let src = dir.join("ramdisk.cpp");
    std::fs::write(&src, code).unwrap();
    let rt = Roundtrip::new(&dir, 4 << 20, 3);
    // CC= before the source, as the manual writes it, and after it.
    serve_and_check(
        "nbdkit cc CC=g++ source.cpp",
        &mut ours(&["cc", "CC=g++", path_str(&src)]),
        &rt,
        None,
    );
    serve_and_check(
        "nbdkit cc source.cpp CC=g++",
        &mut ours(&["cc", path_str(&src), "CC=g++"]),
        &rt,
        None,
    );
}

#[test]
fn cc_self_contained_scripts() {
    if !have_clients() || !have_tool("gcc") {
        return;
    }
    let Some(code) = manual_c_example() else {
        return;
    };
    let dir = TempDir::new();
    let bin = nbdkit_bin();
    // The manual's form: run by /bin/sh, which execs `nbdkit` from PATH.
    let bindir = dir.join("bin");
    std::fs::create_dir(&bindir).unwrap();
    let used = dir.join("used");
    write_executable(
        &bindir.join("nbdkit"),
        &format!(
            "#!/bin/sh\ntouch {}\nexec {} \"$@\"\n",
            used.display(),
            bin.display()
        ),
    );
    let script = dir.join("sh-plugin.c");
    write_executable(
        &script,
        &format!("#if 0\nexec nbdkit cc \"$0\" \"$@\"\n#endif\n{code}"),
    );
    let rt = Roundtrip::new(&dir, MANUAL_EXAMPLE_SIZE, 4);
    // (Run from a shell, as the manual does: a file without `#!` is
    // handed to the shell by it, not by the kernel.)
    serve_and_check(
        "#if 0 / exec nbdkit cc",
        Command::new("/bin/sh")
            .args(["-c", "\"$0\" \"$@\""])
            .arg(&script)
            .env("PATH", bindir.display().to_string())
            .args(["-U", "-"]),
        &rt,
        None,
    );
    assert!(
        used.exists(),
        "the script did not run the binary under test"
    );
    // A `#!` line naming the binary: the kernel runs `nbdkit cc SCRIPT`.
    let script = dir.join("shebang-plugin.c");
    write_executable(&script, &format!("#!{} cc\n{code}", bin.display()));
    serve_and_check(
        "#!nbdkit cc",
        Command::new(&script).args(["-U", "-"]),
        &rt,
        None,
    );
    // Its compiler errors still name the script and its lines.
    let bad = dir.join("bad-plugin.c");
    write_executable(&bad, &format!("#!{} cc\nint x = ;\n", bin.display()));
    let o = run(
        Command::new(&bad).args(["-U", "-", "--run", "true"]),
        CMD_TIMEOUT,
    );
    assert_eq!(o.code(), Some(1), "{}", o.describe());
    assert!(
        o.stderr.contains(&format!("{}:2:", bad.display())),
        "{}",
        o.describe()
    );
}

/// The last line of stderr, with temporary file names blanked.
fn last_error_line(o: &Output) -> String {
    let line = o.stderr.lines().last().unwrap_or("").to_string();
    match line.find("/tmp/") {
        Some(i) => {
            let end = line[i..].find(':').map_or(line.len(), |e| i + e);
            format!("{}TMP{}", &line[..i], &line[end..])
        }
        None => line,
    }
}

#[test]
fn cc_errors_are_one_line_and_exit_1_as_the_reference() {
    if !have_tool("gcc") {
        return;
    }
    let dir = TempDir::new();
    let good = dir.join("good.c");
    std::fs::write(
        &good,
        "#define NBDKIT_API_VERSION 2\n#include <nbdkit-plugin.h>\n\
         #define THREAD_MODEL NBDKIT_THREAD_MODEL_PARALLEL\n\
         static void *o (int r) { return NBDKIT_HANDLE_NOT_NEEDED; }\n\
         static int64_t s (void *h) { return 512; }\n\
         static int p (void *h, void *b, uint32_t c, uint64_t off, uint32_t f) { return 0; }\n\
         static struct nbdkit_plugin plugin = { .name = \"good\", .open = o, .get_size = s, .pread = p };\n\
         NBDKIT_REGISTER_PLUGIN(plugin)\n",
    )
    .unwrap();
    let v1 = dir.join("v1.c");
    std::fs::write(
        &v1,
        std::fs::read_to_string(&good)
            .unwrap()
            .replace("NBDKIT_API_VERSION 2", "NBDKIT_API_VERSION 1")
            .replace(", uint32_t f)", ")"),
    )
    .unwrap();
    let broken = dir.join("broken.c");
    std::fs::write(&broken, "int x = ;\n").unwrap();
    let noinit = dir.join("noinit.c");
    std::fs::write(&noinit, "int x;\n").unwrap();
    let (good, v1, broken, noinit) = (
        path_str(&good),
        path_str(&v1),
        path_str(&broken),
        path_str(&noinit),
    );
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![broken],
            "nbdkit: error: gcc: command failed with exit code 1",
        ),
        (
            vec!["/nonexistent/plugin.c"],
            "nbdkit: error: realpath: /nonexistent/plugin.c: No such file or directory",
        ),
        (
            vec![],
            "nbdkit: error: cc: no C program name (or \"-\") given",
        ),
        (
            vec![v1],
            "nbdkit: error: plugin uses the wrong NBDKIT_API_VERSION, it must be 2",
        ),
        (
            vec![noinit],
            "nbdkit: error: no plugin_init symbol found: TMP: undefined symbol: plugin_init",
        ),
        (
            vec![good, "CC=false"],
            "nbdkit: error: false: command failed with exit code 1",
        ),
        (
            vec![good, "script=x.c"],
            "nbdkit: error: cc: script parameter must appear only once",
        ),
        (
            vec![good, "foo=bar"],
            "nbdkit: error: unknown parameter: foo",
        ),
    ];
    let reference = Path::new(REFERENCE).exists();
    if !reference {
        println!("SKIP: the reference {REFERENCE} is not installed; checking our messages only");
    }
    for (args, want) in &cases {
        let mut a = vec!["cc"];
        a.extend(args);
        a.extend(["--run", "true"]);
        let o = run(&mut ours(&a), CMD_TIMEOUT);
        assert_eq!(o.code(), Some(1), "{args:?}: {}", o.describe());
        assert_eq!(&last_error_line(&o), want, "{args:?}: {}", o.describe());
        let errors = o
            .stderr
            .lines()
            .filter(|l| l.starts_with("nbdkit: error:"))
            .count();
        assert_eq!(errors, 1, "{args:?}: {}", o.describe());
        if reference {
            let r = run(
                Command::new(REFERENCE).args(["-U", "-"]).args(&a),
                CMD_TIMEOUT,
            );
            assert_eq!(r.code(), Some(1), "reference {args:?}: {}", r.describe());
            assert_eq!(&last_error_line(&r), want, "reference {args:?}");
        }
    }
    // The compiler's own messages come first.
    let o = run(&mut ours(&["cc", broken, "--run", "true"]), CMD_TIMEOUT);
    assert!(
        o.stderr.contains(&format!("{broken}:1:")),
        "{}",
        o.describe()
    );
    // An inline script needs stdin.
    let o = run_with_input(
        nbdkit_cmd().args(["-s", "cc", "-"]),
        Some(b"int x;\n"),
        CMD_TIMEOUT,
    );
    assert_eq!(o.code(), Some(1), "{}", o.describe());
    assert_eq!(
        last_error_line(&o),
        "nbdkit: error: inline script is incompatible with -s"
    );
}

#[test]
fn cc_dump_plugin_and_help() {
    let o = run(nbdkit_cmd().args(["cc", "--dump-plugin"]), CMD_TIMEOUT);
    assert!(o.success(), "{}", o.describe());
    for want in ["name=cc\n", "CC=gcc\n", "CFLAGS=-g -O2 -fPIC -shared\n"] {
        assert!(o.stdout.contains(want), "{want}: {}", o.describe());
    }
    let o = run(nbdkit_cmd().args(["cc", "--help"]), CMD_TIMEOUT);
    assert!(o.success(), "{}", o.describe());
    assert!(
        o.stdout.contains("plugin: cc (nbdkit C compiler plugin)"),
        "{}",
        o.describe()
    );
}

// --- rust ----------------------------------------------------------------

/// The Rust plugins, built once per test run.
struct RustPlugins {
    /// plugins/rust: this project's example made with the `nbdkit` crate.
    ramdisk: PathBuf,
    /// The `nbdkit` crate's own examples/ramdisk.rs, unchanged.
    crate_example: PathBuf,
}

/// `cargo build --offline` of `manifest` into `target` (debug profile).
fn cargo_build(manifest: &Path, target: &Path, locked: bool) -> Result<(), String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--offline", "--manifest-path"])
        .arg(manifest)
        .arg("--target-dir")
        .arg(target)
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTFLAGS");
    if locked {
        cmd.arg("--locked");
    }
    let o = run(&mut cmd, CMD_TIMEOUT * 5);
    if o.success() {
        Ok(())
    } else {
        Err(o.describe())
    }
}

/// The directory of the `nbdkit` crate's sources that `manifest` uses.
fn nbdkit_crate_dir(manifest: &Path) -> Result<PathBuf, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let o = run(
        Command::new(cargo)
            .args([
                "metadata",
                "--offline",
                "--format-version",
                "1",
                "--manifest-path",
            ])
            .arg(manifest),
        CMD_TIMEOUT,
    );
    if !o.success() {
        return Err(o.describe());
    }
    let meta = Json::parse(&o.stdout)?;
    meta.get("packages")
        .and_then(Json::as_array)
        .unwrap_or(&[])
        .iter()
        .find(|p| p.get("name").and_then(Json::as_str) == Some("nbdkit"))
        .and_then(|p| p.get("manifest_path").and_then(Json::as_str))
        .and_then(|m| Path::new(m).parent().map(Path::to_path_buf))
        .ok_or_else(|| "cargo metadata does not list the nbdkit crate".to_string())
}

fn build_rust_plugins() -> Result<RustPlugins, String> {
    let manifest = repo().join("plugins/rust/Cargo.toml");
    assert!(manifest.exists(), "{} is missing", manifest.display());
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("lang-rust");
    cargo_build(&manifest, &target, true)?;
    // The crate's example, as a cdylib of its own (it needs lazy_static).
    let example = nbdkit_crate_dir(&manifest)?.join("examples/ramdisk.rs");
    let krate = target.join("crate-example");
    std::fs::create_dir_all(krate.join("src")).map_err(|e| e.to_string())?;
    std::fs::copy(&example, krate.join("src/lib.rs"))
        .map_err(|e| format!("{}: {e}", example.display()))?;
    std::fs::write(
        krate.join("Cargo.toml"),
        "[package]\nname = \"nbdkit-crate-example\"\nversion = \"0.1.0\"\nedition = \"2018\"\n\
         [lib]\ncrate-type = [\"cdylib\"]\n\
         [dependencies]\nnbdkit = \"=0.3.0\"\nlibc = \"0.2\"\nlazy_static = \"1\"\n\
         [workspace]\n",
    )
    .map_err(|e| e.to_string())?;
    cargo_build(&krate.join("Cargo.toml"), &target, false)?;
    Ok(RustPlugins {
        ramdisk: target.join("debug/libnbdkit_rust_ramdisk.so"),
        crate_example: target.join("debug/libnbdkit_crate_example.so"),
    })
}

/// The built plugins, or `None` with a SKIP line saying why not.
fn rust_plugins() -> Option<&'static RustPlugins> {
    static BUILT: std::sync::OnceLock<Result<RustPlugins, String>> = std::sync::OnceLock::new();
    match BUILT.get_or_init(build_rust_plugins) {
        Ok(p) => Some(p),
        Err(e) => {
            println!(
                "SKIP: cannot build the Rust plugins offline (fetch the nbdkit crate once: \
                 cargo fetch --manifest-path plugins/rust/Cargo.toml): {e}"
            );
            None
        }
    }
}

#[test]
fn rust_plugin_made_with_the_nbdkit_crate() {
    if !have_clients() {
        return;
    }
    let Some(p) = rust_plugins() else {
        return;
    };
    let dir = TempDir::new();
    // Random data with a zeroed stretch, which the plugin reports as a hole.
    let rt = Roundtrip::new(&dir, 8 << 20, 5).with_hole(&dir);
    serve_and_check(
        "plugins/rust",
        &mut ours(&[path_str(&p.ramdisk), "size=8M"]),
        &rt,
        None,
    );
}

#[test]
fn rust_nbdkit_crate_example_unchanged() {
    if !have_clients() {
        return;
    }
    let Some(p) = rust_plugins() else {
        return;
    };
    let dir = TempDir::new();
    let rt = Roundtrip::new(&dir, 8 << 20, 6);
    serve_and_check(
        "the nbdkit crate's examples/ramdisk.rs",
        &mut ours(&[path_str(&p.crate_example), "size=8M"]),
        &rt,
        None,
    );
}

// --- golang --------------------------------------------------------------

/// plugins/golang/examples/ramdisk built with `go build -buildmode=c-shared`
/// (offline: the package has no module dependencies), once per test run;
/// `None` with a SKIP line when `go` is missing.
fn go_ramdisk() -> Option<&'static Path> {
    static BUILT: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            if !have_tool("go") {
                println!("SKIP: `go` is not installed (Debian: golang-go)");
                return None;
            }
            let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("lang-go");
            std::fs::create_dir_all(&out).unwrap();
            let so = out.join("nbdkit-goramdisk-plugin.so");
            let mut go = Command::new("go");
            go.current_dir(repo().join("plugins/golang/examples/ramdisk"))
                .env("GOPROXY", "off")
                .env("GOFLAGS", "")
                .args(["build", "-buildmode=c-shared", "-o"])
                .arg(&so);
            // go needs a cache directory (and GOPATH): without HOME, ours.
            if std::env::var_os("HOME").is_none() {
                go.env("GOCACHE", out.join("cache"))
                    .env("GOPATH", out.join("gopath"));
            }
            let o = run(&mut go, CMD_TIMEOUT * 5);
            assert!(o.success(), "go build: {}", o.describe());
            Some(so)
        })
        .as_deref()
}

#[test]
fn golang_example_serves_a_ram_disk() {
    if !have_clients() {
        return;
    }
    let Some(so) = go_ramdisk() else {
        return;
    };
    let dir = TempDir::new();
    let rt = Roundtrip::new(&dir, 8 << 20, 7);
    serve_and_check(
        "plugins/golang/examples/ramdisk",
        &mut ours(&[path_str(so), "size=8M"]),
        &rt,
        None,
    );
    // The callbacks the Go package registers are nbdkit's Go bindings'.
    let o = dump_plugin_has(
        so,
        &[
            "name=goramdisk",
            "thread_model=parallel",
            "errno_is_preserved=0",
            "has_load=1",
            "has_preconnect=1",
            "has_can_multi_conn=1",
            "has_zero=1",
        ],
    );
    if Path::new(REFERENCE).exists() {
        let r = run(
            Command::new(REFERENCE).arg(so).arg("--dump-plugin"),
            CMD_TIMEOUT,
        );
        assert_eq!(
            o.stdout, r.stdout,
            "--dump-plugin differs from the reference"
        );
    }
}

#[test]
fn golang_errors_reach_the_user() {
    let Some(so) = go_ramdisk() else {
        return;
    };
    let so = path_str(so);
    for (args, want) in [
        (vec![so], "nbdkit: error: size parameter is required"),
        (
            vec![so, "size=1M", "colour=red"],
            "nbdkit: error: unknown parameter colour",
        ),
        (
            vec![so, "size=lots"],
            "nbdkit: error: cannot parse size \"lots\"",
        ),
    ] {
        let mut a = args.clone();
        a.extend(["--run", "true"]);
        let o = run(&mut ours(&a), CMD_TIMEOUT);
        assert_eq!(o.code(), Some(1), "{args:?}: {}", o.describe());
        assert_eq!(o.stderr.trim_end(), want, "{args:?}");
    }
}

// --- ocaml ---------------------------------------------------------------

/// Where plugins/ocaml/build.sh put the NBDKit module and the example
/// plugin (once per test run); `None` with a SKIP line without ocamlopt.
fn ocaml_build() -> Option<&'static Path> {
    static BUILT: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            if !have_tool("ocamlopt") {
                println!("SKIP: `ocamlopt` is not installed (Debian: ocaml-nox)");
                return None;
            }
            let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("lang-ocaml");
            let o = run(
                Command::new(repo().join("plugins/ocaml/build.sh")).arg(&out),
                CMD_TIMEOUT * 5,
            );
            assert!(o.success(), "plugins/ocaml/build.sh: {}", o.describe());
            Some(out)
        })
        .as_deref()
}

#[test]
fn ocaml_example_serves_a_ram_disk() {
    if !have_clients() {
        return;
    }
    let Some(dir_built) = ocaml_build() else {
        return;
    };
    let so = dir_built.join("nbdkit-ocamlramdisk-plugin.so");
    let dir = TempDir::new();
    let rt = Roundtrip::new(&dir, 8 << 20, 8).with_hole(&dir);
    // 8M: the bare size, through the plugin's magic_config_key.
    serve_and_check(
        "plugins/ocaml/ramdisk.ml",
        &mut ours(&[path_str(&so), "8M"]),
        &rt,
        None,
    );
    let o = dump_plugin_has(
        &so,
        &[
            "name=ocamlramdisk",
            "version=1.36.2",
            "magic_config_key=size",
            "has_extents=1",
            "ocamlramdisk_block=4096",
        ],
    );
    // What the plugin prints comes after the server's lines.
    assert_eq!(o.stdout.lines().last(), Some("ocamlramdisk_block=4096"));
    // An exception from a callback is the error.
    let o = run(
        &mut ours(&[path_str(&so), "colour=red", "--run", "true"]),
        CMD_TIMEOUT,
    );
    assert_eq!(o.code(), Some(1), "{}", o.describe());
    assert_eq!(
        o.stderr.trim_end(),
        "nbdkit: error: unknown parameter: colour"
    );
}

#[test]
fn ocaml_plugin_through_nbdkit_cc() {
    if !have_clients() {
        return;
    }
    let Some(built) = ocaml_build() else {
        return;
    };
    // nbdkit-cc-plugin(3), "Using this plugin with OCaml", with the
    // module's directory added.
    let dir = TempDir::new();
    let src = dir.join("ramdisk.ml");
    std::fs::copy(repo().join("plugins/ocaml/ramdisk.ml"), &src).unwrap();
    let b = built.display();
    let extra = format!("EXTRA_CFLAGS=-I {b} -ccopt -L{b}");
    let rt = Roundtrip::new(&dir, 4 << 20, 9);
    serve_and_check(
        "nbdkit cc CC=ocamlopt",
        &mut ours(&[
            "cc",
            path_str(&src),
            "CC=ocamlopt",
            "CFLAGS=-output-obj -runtime-variant _pic unix.cmxa NBDKit.cmx -cclib -lnbdkitocaml",
            &extra,
            "size=4M",
        ]),
        &rt,
        None,
    );
}

#[test]
fn cc_debug_flags_reach_the_compiled_plugin() {
    if !have_tool("gcc") || !have_tool("nbdinfo") {
        return;
    }
    let dir = TempDir::new();
    let src = dir.join("dbg.c");
    std::fs::write(
        &src,
        "#define NBDKIT_API_VERSION 2\n#include <nbdkit-plugin.h>\n\
         #define THREAD_MODEL NBDKIT_THREAD_MODEL_PARALLEL\n\
         int ccdbg_debug_blocks = 1;\n\
         static void *o (int r) { return NBDKIT_HANDLE_NOT_NEEDED; }\n\
         static int64_t s (void *h) { return 512 * (int64_t) ccdbg_debug_blocks; }\n\
         static int p (void *h, void *b, uint32_t c, uint64_t off, uint32_t f) { return 0; }\n\
         static struct nbdkit_plugin plugin = { .name = \"ccdbg\", .open = o, .get_size = s, .pread = p };\n\
         NBDKIT_REGISTER_PLUGIN(plugin)\n",
    )
    .unwrap();
    // The plugin exists only after configuration, long after -D is read.
    let o = run(
        nbdkit_cmd()
            .env("PATH", "/usr/bin:/bin")
            .args(["-U", "-", "-D", "ccdbg.blocks=8", "cc"])
            .arg(&src)
            .args(["--run", "nbdinfo --size \"$uri\""]),
        CMD_TIMEOUT,
    );
    assert!(o.success(), "{}", o.describe());
    assert_eq!(o.stdout.trim(), "4096", "{}", o.describe());
}
