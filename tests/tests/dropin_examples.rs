//! Examples from nbdkit's manual pages (and the plain mistakes a user makes
//! while following them), run under the binary under test and, where it is
//! installed, under the reference (`/usr/bin/nbdkit`), comparing what a
//! script sees. Differences found by scripts/dropin-sweep.py.
//!
//! Differential tests skip with a message when the reference or a tool is
//! missing; each also checks the expected behaviour of the binary under
//! test on its own, so that it never passes by comparing against nothing.
#![allow(clippy::std_instead_of_core)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use nbdkit_tests::*;

const TIMEOUT: Duration = Duration::from_secs(60);

/// `nbdkit ARGS` run by `bin` in `dir` (under `sh -c`, so that ARGS may
/// quote a --run script).
fn nbdkit_sh(bin: &Path, dir: &TempDir, args: &str) -> Output {
    run(
        Command::new("/bin/sh")
            .arg("-c")
            .arg(format!("exec \"$0\" {args}"))
            .arg(bin)
            .current_dir(dir.path())
            .env("PATH", "/usr/bin:/bin:/usr/sbin:/sbin")
            .env("LC_ALL", "C"),
        TIMEOUT,
    )
}

/// Stderr with nbdkit's per-thread prefixes removed (`nbdkit: file.0:`
/// and `nbdkit: file[1]:` both become `nbdkit:`).
fn strip_thread(stderr: &str) -> String {
    stderr
        .lines()
        .map(|l| match l.strip_prefix("nbdkit: ") {
            Some(rest) => match rest.split_once(": error: ") {
                Some((who, msg)) if !who.contains(' ') => format!("nbdkit: error: {msg}"),
                _ => l.to_string(),
            },
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The first line of stderr, without the thread prefix.
fn first_error(o: &Output) -> String {
    strip_thread(&o.stderr)
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

/// The same command under the binary under test and the reference, when
/// the reference can load what it needs: `(ours, reference)`.
fn differential(dir: &TempDir, args: &str) -> (Output, Option<Output>) {
    let ours = nbdkit_sh(&nbdkit_bin(), dir, args);
    if !reference_installed() {
        return (ours, None);
    }
    let theirs = nbdkit_sh(Path::new(REFERENCE), dir, args);
    if theirs.stderr.contains("cannot open plugin") || theirs.stderr.contains("cannot open filter")
    {
        println!(
            "SKIP: the reference cannot load what `nbdkit {args}` needs:\n{}",
            theirs.stderr
        );
        return (ours, None);
    }
    (ours, Some(theirs))
}

fn write_bytes(path: &Path, len: usize) {
    let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8 + 1).collect();
    std::fs::write(path, data).unwrap();
}

/// nbdkit-blocksize-filter(1): "Serve a file as if it were a block device
/// that insists on 4k alignment": the extents it reports are aligned to
/// minblock too (the last, partly data block is data).
#[test]
fn blocksize_and_truncate_example_reports_aligned_extents() {
    skip_unless!("nbdinfo");
    let dir = TempDir::new();
    write_bytes(&dir.join("file"), 10243);
    let args = "-U - --filter=blocksize --filter=truncate file file minblock=4k round-up=4k \
                --run 'nbdinfo --map \"$uri\"'";
    let (ours, theirs) = differential(&dir, args);
    assert!(ours.success(), "{}", ours.describe());
    let map: Vec<Vec<&str>> = ours
        .stdout
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        map,
        vec![vec!["0", "12288", "0", "data"]],
        "{}",
        ours.stdout
    );
    if let Some(theirs) = theirs {
        assert_eq!(ours.stdout, theirs.stdout);
    }
}

/// nbdkit-truncate-filter(1): the filter offers fast zeroes (zeroing the
/// tail is always fast) and extents whatever the plugin below does; a
/// fast zero of the real part still needs the plugin's support.
#[test]
fn truncate_offers_fast_zero_like_nbdkit() {
    skip_unless!("nbdsh");
    let dir = TempDir::new();
    write_bytes(&dir.join("disk.img"), 10243);
    let script = "print('fast_zero', h.can_fast_zero(), 'zero', h.can_zero())\n\
                  for off in (12288, 0):\n\
                  \x20   try:\n\
                  \x20       h.zero(512, off, nbd.CMD_FLAG_FAST_ZERO)\n\
                  \x20       print(off, 'ok')\n\
                  \x20   except nbd.Error as e:\n\
                  \x20       print(off, e.errno)\n";
    std::fs::write(dir.join("t.py"), script).unwrap();
    std::fs::write(
        dir.join("run.sh"),
        "PATH=/usr/bin:$PATH exec nbdsh -u \"$1\" -c 'exec(open(\"t.py\").read())'\n",
    )
    .unwrap();
    // A plugin below that cannot zero fast.
    let args = "-U - --filter=truncate eval get_size='echo 10243' can_write='exit 0' \
                pread='dd if=/dev/zero count=$3 iflag=count_bytes 2>/dev/null' \
                pwrite='cat >/dev/null' can_zero='exit 0' zero='exit 0' \
                can_fast_zero='exit 3' round-up=16384 --run 'sh run.sh \"$uri\"'";
    let (ours, theirs) = differential(&dir, args);
    assert!(ours.success(), "{}", ours.describe());
    let lines: Vec<&str> = ours.stdout.lines().collect();
    assert_eq!(
        lines,
        ["fast_zero True zero True", "12288 ok", "0 ENOTSUP"],
        "{}",
        ours.describe()
    );
    if let Some(theirs) = theirs {
        assert_eq!(ours.stdout, theirs.stdout, "{}", theirs.describe());
    }
}

/// A write of data past the real end of the layer below fails with ENOSPC
/// and nbdkit's message.
#[test]
fn truncate_write_beyond_end_says_why() {
    skip_unless!("nbdsh");
    let dir = TempDir::new();
    std::fs::write(
        dir.join("run.sh"),
        "PATH=/usr/bin:$PATH exec nbdsh -u \"$1\" -c 'h.pwrite(b\"x\", 1048576)'\n",
    )
    .unwrap();
    let args = "-U - --filter=truncate memory 1M truncate=1048577 --run 'sh run.sh \"$uri\"'";
    let (ours, theirs) = differential(&dir, args);
    assert!(!ours.success(), "{}", ours.describe());
    let want = "nbdkit: error: truncate: write beyond end of underlying device";
    assert_eq!(first_error(&ours), want, "{}", ours.describe());
    assert!(
        ours.stderr.contains("No space left on device"),
        "{}",
        ours.describe()
    );
    if let Some(theirs) = theirs {
        assert_eq!(first_error(&ours), first_error(&theirs));
    }
}

/// nbdkit-exitwhen-filter(1): "If /tmp/stop exists before nbdkit starts,
/// it will exit immediately": successfully, without serving and without
/// running --run's command.
#[test]
fn exitwhen_event_before_start_exits_at_once() {
    let dir = TempDir::new();
    std::fs::write(dir.join("stop"), b"").unwrap();
    let args = "-U - --filter=exitwhen memory 1M exit-when-file-created=stop --run 'echo ran'";
    let (ours, theirs) = differential(&dir, args);
    assert_eq!(ours.code(), Some(0), "{}", ours.describe());
    assert_eq!(ours.stdout, "", "{}", ours.describe());
    if let Some(theirs) = theirs {
        assert_eq!((ours.code(), &ours.stdout), (theirs.code(), &theirs.stdout));
    }
    // Listening on a named socket: never created.
    let out = nbdkit_sh(
        &nbdkit_bin(),
        &dir,
        "-U sock -f --filter=exitwhen memory 1M exit-when-file-created=stop",
    );
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    assert!(!dir.join("sock").exists());
}

/// Sizes out of range and a missing size= are reported in nbdkit's words.
#[test]
fn size_errors_use_nbdkits_words() {
    let dir = TempDir::new();
    for (args, want) in [
        (
            "memory size=9223372036854775808",
            "nbdkit: error: size (9223372036854775808) exceeds maximum value",
        ),
        (
            "memory 99999999999999999999M",
            "nbdkit: error: size (99999999999999999999M) exceeds maximum value",
        ),
        ("memory 8E", "nbdkit: error: overflow computing size (8E)"),
        ("full", "nbdkit: error: size parameter is required"),
    ] {
        let args = format!("-U - {args} --run 'echo served'");
        let (ours, theirs) = differential(&dir, &args);
        assert_eq!(ours.code(), Some(1), "{}", ours.describe());
        assert_eq!(ours.stderr.trim_end(), want, "{}", ours.describe());
        if let Some(theirs) = theirs {
            assert_eq!(
                (ours.code(), &ours.stdout, &ours.stderr),
                (theirs.code(), &theirs.stdout, &theirs.stderr)
            );
        }
    }
}

/// nbdkit-gzip-filter(1) over something that is not gzip: zlib's words.
#[test]
fn gzip_filter_on_plain_data_says_incorrect_header() {
    skip_unless!("nbdinfo");
    let dir = TempDir::new();
    write_bytes(&dir.join("disk.img"), 4096);
    let args = "-U - --filter=gzip file disk.img --run 'nbdinfo --size \"$uri\"'";
    let (ours, theirs) = differential(&dir, args);
    assert!(!ours.success(), "{}", ours.describe());
    assert_eq!(
        first_error(&ours),
        "nbdkit: error: gzip: inflate: incorrect header check",
        "{}",
        ours.describe()
    );
    if let Some(theirs) = theirs {
        assert_eq!(first_error(&ours), first_error(&theirs));
    }
}

/// `nbdkit --filter=FILTER null --help`: the filter's parameter lines.
fn filter_help(bin: &Path, filter: &str) -> Vec<String> {
    let out = run(
        Command::new(bin).args([&format!("--filter={filter}"), "null", "--help"]),
        TIMEOUT,
    );
    assert!(out.success(), "{}", out.describe());
    let lines: Vec<&str> = out.stdout.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.starts_with(&format!("filter: {filter}")))
        .unwrap_or_else(|| panic!("no filter section: {}", out.stdout));
    // Skip the heading and the "(path)" line; stop at the blank line.
    lines[start + 2..]
        .iter()
        .take_while(|l| !l.is_empty())
        .map(|l| l.to_string())
        .collect()
}

/// Filter parameter help reads as nbdkit's (same words, same columns).
#[test]
fn filter_help_matches_nbdkit() {
    for filter in ["cache", "cow", "ip", "log", "scan"] {
        let ours = filter_help(&nbdkit_bin(), filter);
        assert!(!ours.is_empty(), "{filter}: no help");
        assert!(ours.iter().all(|l| l.len() < 80), "{filter}: {ours:#?}");
        if reference_installed() {
            // The manual documents cache-min-block-size=, which 1.32.5's
            // help text forgets: ours lists it (dropin_cli checks every
            // manual parameter), so it is left out of the comparison.
            let ours: Vec<String> = ours
                .into_iter()
                .filter(|l| !l.starts_with("cache-min-block-size="))
                .collect();
            assert_eq!(ours, filter_help(Path::new(REFERENCE), filter), "{filter}");
        }
    }
}
