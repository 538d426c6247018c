//! Behaviours of plugins and filters that scripts and clients can observe,
//! checked against what C nbdkit does (Debian's /usr/bin/nbdkit is the
//! reference of the differential checks, which skip with a message when it
//! is missing; the binary under test is always ours).
#![allow(clippy::std_instead_of_core)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use nbdkit_tests::*;

/// Writes an executable script through a child process (no ETXTBSY race
/// with other test threads forking).
fn write_script(path: &Path, text: &str) {
    let out = run_with_input(
        Command::new("/bin/sh")
            .args(["-c", "cat > \"$1\" && chmod 755 \"$1\"", "sh"])
            .arg(path),
        Some(text.as_bytes()),
        CMD_TIMEOUT,
    );
    assert!(out.success(), "{}", out.describe());
}

/// `nbdkit -U - ARGS --run CMD` with `env`, under `bin`.
fn run_captive(bin: &Path, args: &[&str], cmd: &str, env: &[(&str, &Path)]) -> Output {
    let mut c = Command::new(bin);
    c.args(["-U", "-"]).args(args).args(["--run", cmd]);
    for (k, v) in env {
        c.env(k, v);
    }
    c.env(
        "PATH",
        format!("/usr/bin:{}", std::env::var("PATH").unwrap_or_default()),
    );
    run(&mut c, Duration::from_secs(60))
}

// ---------------------------------------------------------------------------
// Per-connection callbacks: called once per connection, as nbdkit does
// ---------------------------------------------------------------------------

/// A script plugin that logs every call (with its arguments) to `$LOGF`.
const LOGGING_SCRIPT: &str = r#"#!/bin/sh
echo "$@" >> "$LOGF"
case "$1" in
  get_size) echo 1M ;;
  can_write|can_flush|can_trim|can_zero|can_fast_zero|can_extents|can_multi_conn) exit 0 ;;
  can_fua|can_cache) echo native ;;
  pread) dd if=/dev/zero count=$3 iflag=count_bytes 2>/dev/null ;;
  *) exit 2 ;;
esac
"#;

/// The clients whose call logs are compared: each is one connection.
const CLIENTS: &[(&str, &str)] = &[
    (
        "qemu-nbd --list",
        "qemu-nbd --list -k \"$unixsocket\" >/dev/null",
    ),
    ("nbdinfo --list", "nbdinfo --list \"$uri\" >/dev/null"),
    ("nbdinfo", "nbdinfo \"$uri\" >/dev/null"),
    (
        "qemu-io read",
        "qemu-io -r -f raw -c 'r 0 512' \"$uri\" >/dev/null",
    ),
];

/// The calls a connection made, from `preconnect` on; the trailing
/// `close`/`unload` are dropped (how quickly a server tears down after
/// --run's command exits is timing).
fn connection_calls(bin: &Path, dir: &TempDir, script: &Path, cmd: &str, tag: &str) -> Vec<String> {
    let log = dir.join(format!("{tag}.log"));
    let _ = std::fs::remove_file(&log);
    let out = run_captive(bin, &["sh", path_str(script)], cmd, &[("LOGF", &log)]);
    assert!(out.success(), "{}", out.describe());
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let mut calls: Vec<String> = text
        .lines()
        .skip_while(|l| !l.starts_with("preconnect"))
        .map(str::to_string)
        .collect();
    while calls
        .last()
        .is_some_and(|l| l.trim() == "close" || l.trim() == "unload")
    {
        calls.pop();
    }
    calls
}

#[test]
fn per_connection_callbacks_are_called_once_as_nbdkit_does() {
    if !skip_unless("qemu-nbd") || !skip_unless("nbdinfo") || !skip_unless("qemu-io") {
        return;
    }
    let dir = TempDir::new();
    let script = dir.join("log.sh");
    write_script(&script, LOGGING_SCRIPT);
    for (i, (what, cmd)) in CLIENTS.iter().enumerate() {
        let ours = connection_calls(&nbdkit_bin(), &dir, &script, cmd, &format!("ours{i}"));
        // qemu-nbd --list sends NBD_OPT_LIST then NBD_OPT_INFO; nbdinfo
        // sends INFO then GO: the default export is resolved once.
        let defaults = ours
            .iter()
            .filter(|l| l.starts_with("default_export"))
            .count();
        assert_eq!(defaults, 1, "{what}: default_export calls: {ours:#?}");
        // The description is asked for only when the client wants it
        // (NBD_INFO_DESCRIPTION): qemu's clients do not.
        if what.starts_with("qemu") {
            assert!(
                !ours.iter().any(|l| l.starts_with("export_description")),
                "{what}: {ours:#?}"
            );
        }
        if !reference_installed() {
            continue;
        }
        let theirs = connection_calls(Path::new(REFERENCE), &dir, &script, cmd, &format!("ref{i}"));
        assert_eq!(
            ours, theirs,
            "{what}: our calls (left) and nbdkit's (right)"
        );
    }
}

// ---------------------------------------------------------------------------
// data: nbdkit's sparse array, and expressions far larger than memory
// ---------------------------------------------------------------------------

/// `nbdinfo --map` and a digest of the contents, for a command line.
fn map_and_digest(bin: &Path, args: &[&str]) -> String {
    let out = run_captive(
        bin,
        args,
        "nbdinfo --map \"$uri\" && nbdcopy \"$uri\" - | md5sum",
        &[],
    );
    assert!(out.success(), "{}", out.describe());
    out.stdout
}

/// Expressions whose block status shows which pages nbdkit's evaluation
/// allocates (writes), frees (zeroes, copies of zeroes) or leaves alone.
const DATA_EXPRESSIONS: &[&str] = &[
    "\"0\"",
    "0",
    "0 0",
    "( 0 )*100",
    "( \"hello\" )*1000",
    "0 @1048575 1",
    "( @+65536 1 )",
    "1 @65536 1 @0 ( @+200000 )",
    "0xff*100000 @50000 0*10000",
    "0xff*100000 @32768 ( @+32768 )",
    "0xff*70000 @0 ( 0 0 0 )",
    "\"\\x00\" \"\\x00\" @70000 \"\\x01\\x00\"[1:]",
    "\"\\x00\"*3 @40000 \"\\x00\"*5",
    "le32:0 be64:0 @40000 le16:0x100",
    "( 0 0 0 1 ) * 20000 @0 ( @+40000 )",
    "\"hello\" -> \\h ( \\h @+40000 \\h ) * 2",
    "( ( \"x\" @+100000 ) * 5 )[30000:400000]",
    "\"ab\" * 4 @40000 \"\\x00\\x00\" * 4 @80000 \"\\x00\\x00\" * 5",
    "( \"a\" 0 ) -> \\x \\x * 2 @50000 \\x [0:1]",
    "<(printf 'x\\0\\0\\0y') @70000 <(head -c 100 /dev/zero)",
];

#[test]
fn data_block_status_shows_allocated_zero_pages_as_nbdkit_does() {
    if !skip_unless("nbdinfo") || !skip_unless("nbdcopy") {
        return;
    }
    // Without the reference: what nbdkit 1.32 prints for two of them.
    let map = |expr: &str| -> String {
        let out = run_captive(
            &nbdkit_bin(),
            &["data", expr, "size=1M"],
            "nbdinfo --map \"$uri\"",
            &[],
        );
        assert!(out.success(), "{}", out.describe());
        out.stdout
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(map("\"0\""), "0 32768 0 data\n32768 1015808 3 hole,zero");
    assert_eq!(map("0"), "0 32768 2 zero\n32768 1015808 3 hole,zero");
    if !reference_installed() {
        return;
    }
    for sized in [true, false] {
        for expr in DATA_EXPRESSIONS {
            let mut args = vec!["data", expr];
            if sized {
                args.push("size=300000");
            }
            let ours = map_and_digest(&nbdkit_bin(), &args);
            let theirs = map_and_digest(Path::new(REFERENCE), &args);
            assert_eq!(
                ours, theirs,
                "data '{expr}' sized={sized}: ours (left), nbdkit's (right)"
            );
        }
    }
}

#[test]
fn memory_block_status_shows_written_zeroes_as_nbdkit_does() {
    if !skip_unless("nbdinfo") || !skip_unless("nbdsh") {
        return;
    }
    let cmd = "nbdsh -u \"$uri\" -c 'h.pwrite(bytearray(512), 40000)' \
               -c 'h.pwrite(b\"a\" * 512, 100000)' -c 'h.zero(512, 100000)' \
               -c 'h.pwrite(bytearray(70000), 200000)' && nbdinfo --map \"$uri\"";
    let map = |bin: &Path| -> String {
        let out = run_captive(bin, &["memory", "1M"], cmd, &[]);
        assert!(out.success(), "{}", out.describe());
        out.stdout
    };
    let ours = map(&nbdkit_bin());
    let flags: Vec<&str> = ours
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .collect();
    // Written zeroes are allocated zeroes; a page zeroed back is a hole.
    assert_eq!(flags, ["3", "2", "3", "2", "3"], "{ours}");
    if reference_installed() {
        assert_eq!(ours, map(Path::new(REFERENCE)));
    }
}

/// The server's peak resident memory, from /proc.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[test]
fn data_expressions_far_beyond_memory_are_served_lazily() {
    if !skip_unless("python3-nbd") {
        return;
    }
    // 4 GiB of a 5 MB pattern with a byte at the last offset; 8 TiB of a
    // repeated pattern; 2^63-1 bytes of one byte; a random block repeated.
    type Reads = &'static [(u64, &'static [u8])];
    let cases: &[(&str, u64, Reads)] = &[
        (
            "( \"hello\" * 1000000 @^1073741824 )*4 @0x7ffffffffffffffe 1",
            i64::MAX as u64,
            &[
                (0, b"hello"),
                ((3 << 30) + 4_999_995, b"hello\0"),
                (i64::MAX as u64 - 1, b"\x01"),
            ],
        ),
        (
            "( ( 1 2 3 ) * 1000000000 ) * 3000",
            9_000_000_000_000,
            &[
                (8_999_999_999_997, b"\x01\x02\x03"),
                (4_000_000_000_001, b"\x03\x01"),
            ],
        ),
        (
            "0x55*0x7fffffffffffffff",
            i64::MAX as u64,
            &[(1 << 62, b"\x55\x55")],
        ),
        (
            "( 0x55*1073741824 )*4 @^8589934592 ( \"ab\" @+100000000 )*100000",
            8589934592 + 10_000_000_200_000,
            &[(8589934592 + 100_000_002 * 99_999, b"ab\0")],
        ),
    ];
    for (expr, size, reads) in cases {
        let srv = Server::start(["data", expr]);
        let mut code = format!(
            "import nbd, sys\nh = nbd.NBD()\nh.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)\nh.connect_uri(sys.argv[1])\nassert h.get_size() == {size}, h.get_size()\n"
        );
        for (off, want) in reads.iter() {
            let hex: String = want.iter().map(|b| format!("{b:02x}")).collect();
            code += &format!(
                "got = h.pread({}, {off})\nassert got == bytes.fromhex('{hex}'), ({off}, got)\n",
                want.len()
            );
        }
        // Block status of the first 4 GiB.
        code += "h.block_status(1 << 31, 0, lambda *a: 0)\n";
        let out = run_python_code(&code, [srv.uri()]);
        assert!(out.success(), "data '{expr}': {}", out.describe());
        let rss = peak_rss_kib(srv.pid());
        assert!(
            rss < 256 * 1024,
            "data '{expr}': the server's peak memory is {rss} KiB"
        );
    }
}

// ---------------------------------------------------------------------------
// sh/eval: exports, cache, close
// ---------------------------------------------------------------------------

/// What three clients see of an eval plugin's exports, and what the server
/// logs, with temporary paths replaced.
fn eval_exports_seen(bin: &Path, methods: &[&str]) -> String {
    let mut args = vec![
        "eval",
        "get_size=echo 1M",
        "pread=dd if=/dev/zero count=$3 iflag=count_bytes",
    ];
    args.extend_from_slice(methods);
    let out = run_captive(
        bin,
        &args,
        "nbdinfo --list \"$uri\" 2>&1 | grep -E 'export=|rror'; echo ---; \
         qemu-nbd --list -k \"$unixsocket\" 2>&1 | grep -E 'export:|rror'; echo ---; \
         nbdinfo \"$uri\" 2>&1 | grep -E 'export=|rror'; true",
        &[],
    );
    assert!(out.success(), "{}", out.describe());
    let text = format!("{}\n{}", out.stdout, out.stderr);
    // Temporary directories and sockets differ from run to run.
    text.split(|c: char| c.is_whitespace() || c == '\'' || c == '"')
        .map(|w| {
            if w.starts_with("/tmp/") || w.contains("socket=") {
                "PATH"
            } else {
                w
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn eval_export_methods_missing_or_failing_behave_as_in_nbdkit() {
    if !skip_unless("nbdinfo") || !skip_unless("qemu-nbd") {
        return;
    }
    // A default export that cannot be resolved is left out of the list
    // (nbdkit does not fail NBD_OPT_LIST for it).
    let out = run_captive(
        &nbdkit_bin(),
        &[
            "eval",
            "get_size=echo 1M",
            "pread=exit 1",
            "default_export=exit 3",
        ],
        "nbdinfo --list \"$uri\"",
        &[],
    );
    assert!(out.success(), "{}", out.describe());
    assert!(
        out.stderr
            .contains("default_export method returned unexpected code (3/false)"),
        "{}",
        out.describe()
    );
    if !reference_installed() {
        return;
    }
    let cases: &[&[&str]] = &[
        &[],
        &["list_exports=echo a"],
        &["default_export=echo b"],
        &["list_exports=exit 2", "default_export=exit 2"],
        &["list_exports=echo NAMES; echo x; echo y"],
        &[
            "list_exports=echo NAMES; echo x; echo y",
            "default_export=echo y",
        ],
        &["missing=exit 0"],
        &["list_exports=exit 3"],
        &["default_export=exit 3"],
    ];
    for methods in cases {
        let ours = eval_exports_seen(&nbdkit_bin(), methods);
        let theirs = eval_exports_seen(Path::new(REFERENCE), methods);
        assert_eq!(
            ours, theirs,
            "eval {methods:?}: ours (left), nbdkit's (right)"
        );
    }
}

/// An eval plugin's calls, and what nbdsh saw, for a cache request.
fn eval_cache_seen(bin: &Path, dir: &TempDir, methods: &[&str]) -> String {
    let log = dir.join("cache.log");
    let _ = std::fs::remove_file(&log);
    let mut args = vec![
        "eval",
        "get_size=echo 1M",
        "pread=echo pread $3 $4 >>\"$LOGF\"; dd if=/dev/zero count=$3 iflag=count_bytes",
    ];
    args.extend_from_slice(methods);
    let out = run_captive(
        bin,
        &args,
        "nbdsh -u \"$uri\" -c 'print(h.can_cache())' -c 'h.cache(512, 0)' 2>&1 | tail -1; true",
        &[("LOGF", &log)],
    );
    assert!(out.success(), "{}", out.describe());
    let calls = std::fs::read_to_string(&log).unwrap_or_default();
    let errors: Vec<&str> = out
        .stderr
        .lines()
        .map(|l| l.rsplit(": ").next().unwrap_or(l))
        .collect();
    format!("{}{calls}{errors:?}", out.stdout)
}

#[test]
fn eval_cache_without_a_method_behaves_as_in_nbdkit() {
    if !skip_unless("nbdsh") || !reference_installed() {
        return;
    }
    let dir = TempDir::new();
    let cases: &[&[&str]] = &[
        &[],
        &["can_cache=echo native"],
        &["can_cache=echo emulate"],
        &["cache=echo cache $3 $4 >>\"$LOGF\""],
        &["can_cache=echo none", "cache=echo cache >>\"$LOGF\""],
        &["can_cache=echo native", "cache=exit 3"],
    ];
    for methods in cases {
        let ours = eval_cache_seen(&nbdkit_bin(), &dir, methods);
        let theirs = eval_cache_seen(Path::new(REFERENCE), &dir, methods);
        assert_eq!(
            ours, theirs,
            "eval {methods:?}: ours (left), nbdkit's (right)"
        );
    }
}

// ---------------------------------------------------------------------------
// file, ondemand
// ---------------------------------------------------------------------------

#[test]
fn file_takes_directory_as_the_long_form_of_dir() {
    if !skip_unless("nbdinfo") {
        return;
    }
    let dir = TempDir::new();
    write_random_file(&dir.join("disk.img"), 4096, 1);
    let out = run_captive(
        &nbdkit_bin(),
        &["file", &format!("directory={}", path_str(dir.path()))],
        "nbdinfo --list --json \"$uri\"",
        &[],
    );
    assert!(out.success(), "{}", out.describe());
    assert!(
        out.stdout.contains("\"export-name\": \"disk.img\""),
        "{}",
        out.stdout
    );
    // As with dir=, it cannot be given with file=.
    let out = run(
        nbdkit_cmd().args([
            "file",
            "file=/dev/null",
            &format!("directory={}", path_str(dir.path())),
            "--run",
            "true",
        ]),
        CMD_TIMEOUT,
    );
    assert_eq!(out.code(), Some(1), "{}", out.describe());
    assert!(
        out.stderr
            .contains("file= and dir= cannot be used at the same time"),
        "{}",
        out.stderr
    );
}

#[test]
fn ondemand_lists_the_default_export_first() {
    if !skip_unless("python3-nbd") {
        return;
    }
    let dir = TempDir::new();
    for name in ["disk1", "x.img", "a:b", "default"] {
        std::fs::write(dir.join(name), b"").unwrap();
    }
    let srv = Server::start([
        "ondemand".to_string(),
        format!("dir={}", path_str(dir.path())),
        "1M".to_string(),
    ]);
    let out = run_python_code(
        "import nbd, sys\nh = nbd.NBD()\nh.set_opt_mode(True)\nh.connect_uri(sys.argv[1])\n\
         names = []\nh.opt_list(lambda n, d: names.append(n))\nprint(names)",
        [srv.uri()],
    )
    .assert_success();
    // nbdkit lists "" (its name for the default export, the file
    // "default"), then what a client may open.
    assert_eq!(out.stdout.trim(), "['', 'disk1']", "{}", out.describe());
}

// ---------------------------------------------------------------------------
// partition filter
// ---------------------------------------------------------------------------

/// Put an MBR-style partition entry `i` (type, first sector, sectors) in
/// the boot sector at `at`, and its signature.
fn mbr_entry(disk: &mut [u8], at: usize, i: usize, ty: u8, start: u32, len: u32) {
    let e = at + 0x1be + 16 * i;
    disk[e + 4] = ty;
    disk[e + 8..e + 12].copy_from_slice(&start.to_le_bytes());
    disk[e + 12..e + 16].copy_from_slice(&len.to_le_bytes());
    disk[at + 0x1fe] = 0x55;
    disk[at + 0x1ff] = 0xaa;
}

/// What `nbdinfo --size` says about partition `n` of `disk`, or the
/// server's error.
fn partition_seen(bin: &Path, disk: &Path, n: u32) -> String {
    let out = run_captive(
        bin,
        &[
            "--filter=partition",
            "file",
            path_str(disk),
            &format!("partition={n}"),
        ],
        "nbdinfo --size \"$uri\" 2>/dev/null; true",
        &[],
    );
    let errors: Vec<&str> = out
        .stderr
        .lines()
        .map(|l| l.rsplit("error: ").next().unwrap_or(l))
        .collect();
    format!("{}{}", out.stdout, errors.join("\n"))
}

#[test]
fn partition_errors_are_nbdkits() {
    if !skip_unless("nbdinfo") {
        return;
    }
    let dir = TempDir::new();
    // One primary partition, no extended partition.
    let mut primary = vec![0u8; 4 << 20];
    mbr_entry(&mut primary, 0, 0, 0x83, 2048, 2048);
    // An extended partition with two logical partitions, 5 and 6.
    let mut logical = primary.clone();
    mbr_entry(&mut logical, 0, 1, 0x05, 4096, 4096);
    mbr_entry(&mut logical, 4096 * 512, 0, 0x83, 8, 1000);
    mbr_entry(&mut logical, 4096 * 512, 1, 0x05, 2048, 2048);
    mbr_entry(&mut logical, 6144 * 512, 0, 0x83, 8, 1000);
    // The same, with a chain that goes back, a logical partition that
    // leaves the extended one, and an extended partition off the disk.
    let mut back = logical.clone();
    mbr_entry(&mut back, 4096 * 512, 1, 0x05, 0, 5);
    let mut outside = logical.clone();
    mbr_entry(&mut outside, 4096 * 512, 0, 0x83, 8, 1 << 20);
    let mut off_disk = logical.clone();
    mbr_entry(&mut off_disk, 0, 1, 0x05, 1 << 30, 4096);
    let disks = [
        ("primary", primary),
        ("logical", logical),
        ("back", back),
        ("outside", outside),
        ("off_disk", off_disk),
    ];
    for (name, bytes) in &disks {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    let seen = |name: &str, n: u32| partition_seen(&nbdkit_bin(), &dir.join(name), n);
    assert_eq!(
        seen("primary", 5),
        "MBR logical partition selected, but there is no extended partition in the partition table"
    );
    assert_eq!(seen("logical", 6).trim(), "512000");
    assert_eq!(seen("logical", 7), "MBR partition 7 not found");
    assert_eq!(
        seen("back", 6),
        "invalid EBR chain: next EBR 2097152 <= current EBR 2097152"
    );
    if !reference_installed() {
        return;
    }
    for (name, _) in &disks {
        for n in [1, 2, 4, 5, 6, 7] {
            let disk = dir.join(name);
            assert_eq!(
                partition_seen(&nbdkit_bin(), &disk, n),
                partition_seen(Path::new(REFERENCE), &disk, n),
                "{name} partition={n}: ours (left), nbdkit's (right)"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// delay filter
// ---------------------------------------------------------------------------

/// Waits (bounded) until `path` contains `want`.
fn wait_for_file(path: &Path, want: &str) -> String {
    for _ in 0..1000 {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(want) {
            return text;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{want:?} never appeared in {}", path.display());
}

#[test]
fn delay_close_delays_a_graceful_disconnect() {
    if !skip_unless("python3-nbd") {
        return;
    }
    let dir = TempDir::new();
    let log = dir.join("log");
    // The delay filter closes first (outermost), then the log filter logs
    // "Disconnect": a client that said goodbye sees its connection close
    // only after both, as with nbdkit.
    let srv = Server::start([
        "--filter=delay".to_string(),
        "--filter=log".to_string(),
        "memory".to_string(),
        "1M".to_string(),
        format!("logfile={}", path_str(&log)),
        "delay-close=2".to_string(),
    ]);
    let out = run_python_code(
        "import nbd, sys\nh = nbd.NBD()\nh.connect_uri(sys.argv[1])\nh.pread(512, 0)\n\
         h.shutdown()\nprint(open(sys.argv[2]).read())",
        [srv.uri(), path_str(&log).to_string()],
    )
    .assert_success();
    assert!(out.stdout.contains("Disconnect"), "{}", out.describe());
}

#[test]
fn a_server_in_a_delay_stops_promptly_on_a_signal() {
    if !skip_unless("python3-nbd") {
        return;
    }
    for (delay, client) in [
        ("rdelay=60", "h.pread(512, 0)"),
        ("delay-close=60", "h.pread(512, 0)\nh.shutdown()"),
    ] {
        let dir = TempDir::new();
        let log = dir.join("log");
        // The log filter (outermost) shows the request reached the delay.
        let mut srv = Server::start([
            "--filter=log".to_string(),
            "--filter=delay".to_string(),
            "memory".to_string(),
            "1M".to_string(),
            format!("logfile={}", path_str(&log)),
            delay.to_string(),
        ]);
        let mut py = Command::new(PYTHON);
        py.arg("-c")
            .arg(format!(
                "import nbd, sys\nh = nbd.NBD()\nh.connect_uri(sys.argv[1])\n{client}"
            ))
            .arg(srv.uri())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let mut child = py.spawn().unwrap();
        wait_for_file(
            &log,
            if delay.starts_with("rdelay") {
                "Read id=1"
            } else {
                "Disconnect"
            },
        );
        // SIGTERM; stop() sends SIGKILL only if the server is still there
        // after STOP_TIMEOUT (5 s), far less than the 60 s delay.
        let status = srv.stop().expect("the server exits");
        assert!(
            status.code().is_some(),
            "{delay}: the server did not stop on SIGTERM ({status})"
        );
        let _ = child.kill();
        let _ = child.wait();
    }
}

// ---------------------------------------------------------------------------
// error filter
// ---------------------------------------------------------------------------

/// Each kind of request, before the trigger file exists, while it exists
/// and after it is removed: "ok" or the errno.
const ERROR_FILE_PROBE: &str = r#"
import nbd, os, sys
h = nbd.NBD()
h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
h.connect_uri(sys.argv[1])
trigger = sys.argv[2]
def ops():
    r = []
    for name, f in [("pread", lambda: h.pread(512, 0)),
                    ("pwrite", lambda: h.pwrite(b"x" * 512, 0)),
                    ("zero", lambda: h.zero(512, 0)),
                    ("trim", lambda: h.trim(512, 0)),
                    ("extents", lambda: h.block_status(512, 0, lambda *a: 0)),
                    ("cache", lambda: h.cache(512, 0))]:
        try:
            f()
            r.append(name + ":ok")
        except nbd.Error as e:
            r.append(name + ":" + str(e.errno))
    return " ".join(r)
print(ops())
open(trigger, "w").close()
print(ops())
os.unlink(trigger)
print(ops())
"#;

#[test]
fn error_files_trigger_errors_while_they_exist() {
    if !skip_unless("python3-nbd") {
        return;
    }
    let ops = ["pread", "pwrite", "zero", "trim", "extents", "cache"];
    for key in std::iter::once("error-file".to_string())
        .chain(ops.iter().map(|o| format!("error-{o}-file")))
    {
        let dir = TempDir::new();
        let trigger = dir.join("trigger");
        let srv = Server::start([
            "--filter=error".to_string(),
            "memory".to_string(),
            "1M".to_string(),
            "error-rate=1".to_string(),
            format!("{key}={}", path_str(&trigger)),
        ]);
        let out = run_python_code(
            ERROR_FILE_PROBE,
            [srv.uri(), path_str(&trigger).to_string()],
        )
        .assert_success();
        let lines: Vec<&str> = out.stdout.lines().collect();
        // Only the request kinds the file applies to wait for it; the
        // others fail at error-rate=1 all along.
        let expect = |with_file: bool| -> String {
            ops.iter()
                .map(|o| {
                    let gated = key == "error-file" || key == format!("error-{o}-file");
                    if gated && !with_file {
                        format!("{o}:ok")
                    } else {
                        format!("{o}:EIO")
                    }
                })
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert_eq!(lines, [expect(false), expect(true), expect(false)], "{key}");
    }
}

// ---------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------

/// A PSK file `DIR/keys.psk` for alice (qemu wants the directory).
fn psk_dir(dir: &TempDir) -> std::path::PathBuf {
    let d = dir.join("psk");
    std::fs::create_dir_all(&d).unwrap();
    let key: String = Prng::new(11)
        .bytes(32)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    std::fs::write(d.join("keys.psk"), format!("alice:{key}\n")).unwrap();
    d
}

/// A client that sends STARTTLS, then (by `how`) nothing, a piece of a
/// ClientHello, or garbage, and goes away.
const DYING_TLS_CLIENT: &str = r#"
import os, socket, struct, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
def rd(n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            raise EOFError
        b += c
    return b
rd(18)
s.sendall(struct.pack(">I", 3))
s.sendall(struct.pack(">QII", 0x49484156454F5054, 5, 0))
rd(20)
how = sys.argv[2]
if how == "partial":
    s.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01")
elif how == "garbage":
    s.sendall(os.urandom(300))
if how != "nothing":
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
s.close()
"#;

#[test]
fn tls_psk_serves_qemu_over_tcp_and_survives_dying_clients() {
    if !skip_unless("qemu-img") || !skip_unless("nbdinfo") {
        return;
    }
    let dir = TempDir::new();
    let psk = psk_dir(&dir);
    let keys = psk.join("keys.psk");
    // qemu-img's tls-creds-psk over TCP.
    let out = run(
        nbdkit_cmd()
            .args(["-i", "127.0.0.1", "-p", "0", "--tls=require"])
            .arg(format!("--tls-psk={}", path_str(&keys)))
            .args(["memory", "2M", "--run"])
            .arg(format!(
                "qemu-img info --object tls-creds-psk,id=tls0,dir={},username=alice,\
                 endpoint=client --image-opts driver=nbd,host=127.0.0.1,port=$port,tls-creds=tls0",
                path_str(&psk)
            )),
        CMD_TIMEOUT,
    );
    assert!(out.success(), "{}", out.describe());
    assert!(
        out.stdout.contains("virtual size: 2 MiB"),
        "{}",
        out.describe()
    );
    // Clients that die in the TLS handshake leave the next one unharmed.
    let srv = Server::start([
        "--tls=require".to_string(),
        format!("--tls-psk={}", path_str(&keys)),
        "memory".to_string(),
        "2M".to_string(),
    ]);
    let uri = format!(
        "nbds+unix://alice@/?socket={}&tls-psk-file={}",
        srv.socket().display(),
        path_str(&keys)
    );
    for how in ["nothing", "partial", "garbage"] {
        run_python_code(DYING_TLS_CLIENT, [path_str(srv.socket()), how]);
        let out = run_tool("nbdinfo", ["--size", &uri]);
        assert_eq!(
            out.stdout.trim(),
            "2097152",
            "after {how}: {}",
            out.describe()
        );
    }
}
