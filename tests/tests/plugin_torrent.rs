//! The torrent plugin against a real BitTorrent peer: a libtorrent
//! seeder with its own HTTP tracker on loopback (tests/torrent/seeder.py,
//! python3-libtorrent), reached through a .torrent file (tracker) and a
//! magnet link (metadata fetched from the peer named in it). DHT, LSD,
//! UPnP and NAT-PMP are off on both sides (`network-discovery=false`), so
//! nothing leaves the machine.

use nbdkit_tests::{
    assert_bytes_eq, assert_one_error, find_tool, nbdkit_bin, nbdkit_cmd, path_str,
    reference_installed, run, run_with_input, skip_unless, write_random_file, Output, TempDir,
    CMD_TIMEOUT,
};
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};

/// The seeder, stopped (stdin closed, then killed by pid) on drop.
struct Seeder {
    child: Child,
    stdin: Option<ChildStdin>,
    magnet: String,
    torrent: PathBuf,
    disk: Vec<u8>,
    readme: Vec<u8>,
}

impl Drop for Seeder {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn plugin_built() -> bool {
    let so = nbdkit_bin().with_file_name("libnbdkit_torrent_plugin.so");
    if !so.exists() {
        println!(
            "SKIP: {} is not built (cargo build -p nbdkit-torrent-plugin)",
            so.display()
        );
        return false;
    }
    true
}

fn python_libtorrent() -> bool {
    let out = run(
        Command::new("/usr/bin/python3").args(["-c", "import libtorrent"]),
        CMD_TIMEOUT,
    );
    if !out.success() {
        println!("SKIP: python3-libtorrent is not installed");
        return false;
    }
    true
}

/// Seeds `dir/content/{disk.img,README}` and writes `dir/t.torrent`.
fn start_seeder(dir: &Path) -> Seeder {
    let content = dir.join("content");
    fs::create_dir_all(&content).unwrap();
    let disk = write_random_file(&content.join("disk.img"), 3_000_000, 99);
    let readme = b"a small file beside the disk\n".to_vec();
    fs::write(content.join("README"), &readme).unwrap();
    let torrent = dir.join("t.torrent");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("torrent/seeder.py");
    let mut child = Command::new("/usr/bin/python3")
        .arg(script)
        .arg(&content)
        .arg(&torrent)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the seeder");
    let stdin = child.stdin.take();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // The seeder prints two lines once it seeds (or exits on failure,
    // which ends the loop: the reads are bounded by its output).
    let magnet = lines.next().and_then(|l| l.ok()).unwrap_or_default();
    let tracker = lines.next().and_then(|l| l.ok()).unwrap_or_default();
    assert!(
        magnet.starts_with("magnet:?") && tracker.starts_with("http://127.0.0.1:"),
        "the seeder did not start: {magnet:?} {tracker:?}"
    );
    Seeder {
        child,
        stdin,
        magnet,
        torrent,
        disk,
        readme,
    }
}

/// Loopback only, and no discovery beyond the torrent's own tracker/peer.
const LOCAL: [&str; 3] = [
    "network-discovery=false",
    "listen-interfaces=127.0.0.1:0",
    "outgoing-interfaces=127.0.0.1",
];

/// `nbdkit -U - torrent ARGS --run 'CMD'` with TMPDIR set.
fn serve_run(tmpdir: &Path, args: &[&str], cmd: &str) -> Output {
    let mut c = nbdkit_cmd();
    c.args(["-U", "-", "torrent"])
        .args(args)
        .args(LOCAL)
        .args(["--run", cmd])
        .env("TMPDIR", tmpdir);
    run(&mut c, CMD_TIMEOUT)
}

fn tool(t: &str) -> String {
    path_str(&find_tool(t).unwrap()).to_string()
}

#[test]
fn torrent_file_largest_file_out_of_order_reads() {
    if !plugin_built() || !python_libtorrent() {
        return;
    }
    for t in ["nbdcopy", "qemu-io"] {
        if !skip_unless(t) {
            println!("SKIP: {t} not installed");
            return;
        }
    }
    let tmp = TempDir::new();
    let seeder = start_seeder(tmp.path());
    let tmpdir = tmp.join("tmpdir");
    fs::create_dir(&tmpdir).unwrap();
    let out = tmp.join("out.img");
    let tail = tmp.join("tail.bin");
    // First a read near the end (pieces come in order of need), then all.
    let cmd = format!(
        "{} -r -f raw -c 'read -v 2999000 1000' \"$uri\" > {} && {} \"$uri\" {}",
        tool("qemu-io"),
        path_str(&tail),
        tool("nbdcopy"),
        path_str(&out)
    );
    let r = serve_run(&tmpdir, &[path_str(&seeder.torrent)], &cmd);
    assert!(r.success(), "{}", r.describe());
    assert_bytes_eq("disk.img over NBD", &fs::read(&out).unwrap(), &seeder.disk);
    let dump = fs::read_to_string(&tail).unwrap();
    let first: Vec<u8> = dump
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .take(16)
        .map(|h| u8::from_str_radix(h, 16).unwrap())
        .collect();
    assert_eq!(first, seeder.disk[2_999_000..2_999_016], "{dump}");
    assert_eq!(
        fs::read_dir(&tmpdir).unwrap().count(),
        0,
        "the temporary cache is removed on exit"
    );
}

#[test]
fn torrent_magnet_file_and_cache() {
    if !plugin_built() || !python_libtorrent() || !skip_unless("nbdcopy") {
        return;
    }
    let tmp = TempDir::new();
    let seeder = start_seeder(tmp.path());
    let cache = tmp.join("cache");
    fs::create_dir(&cache).unwrap();
    let out = tmp.join("readme.out");
    let cmd = format!("{} \"$uri\" {}", tool("nbdcopy"), path_str(&out));
    let r = serve_run(
        tmp.path(),
        &[
            &seeder.magnet,
            "file=content/README",
            &format!("cache={}", path_str(&cache)),
            "connections-limit=10",
            "download-rate-limit=100M",
            "upload_rate_limit=1M",
            "user-agent=nbdkit-test/1.0",
        ],
        &cmd,
    );
    assert!(r.success(), "{}", r.describe());
    assert_eq!(fs::read(&out).unwrap(), seeder.readme);
    // cache= is kept after exit.
    assert_eq!(
        fs::read(cache.join("content/README")).unwrap(),
        seeder.readme
    );

    // A file that is not in the torrent: the connection fails with it.
    let r = serve_run(
        tmp.path(),
        &[&seeder.magnet, "file=content/nosuch"],
        &format!("{} --size \"$uri\"", tool("nbdinfo")),
    );
    assert!(!r.success(), "{}", r.describe());
    assert!(
        r.stderr
            .contains("cannot find file ‘content/nosuch’ in the torrent"),
        "{}",
        r.stderr
    );
}

fn one_error(args: &[&str], want: &str) {
    let out = run_with_input(nbdkit_cmd().arg("torrent").args(args), None, CMD_TIMEOUT);
    assert_one_error(&out, want);
}

#[test]
fn torrent_bad_parameters() {
    if !plugin_built() {
        return;
    }
    let tmp = TempDir::new();
    let bad = tmp.join("bad.torrent");
    fs::write(&bad, "this is not bencoded").unwrap();
    one_error(&["file=x"], "you must specify a torrent or magnet link");
    one_error(&[path_str(&bad)], "parsing torrent metadata failed");
    one_error(&["magnet:?xt=urn:nothing"], "parsing magnet uri failed");
    one_error(
        &["http://example.com/x.torrent"],
        "downloading torrent files from URLs not yet implemented",
    );
    one_error(&["/nonexistent.torrent"], "realpath: /nonexistent.torrent");
    one_error(
        &["connections-limit=lots", "x"],
        "connections-limit: could not parse number",
    );
    one_error(&["network-discovery=maybe"], "could not decipher boolean");
    one_error(&["nosuch=1"], "unknown parameter 'nosuch'");
}

#[test]
fn torrent_dump_plugin_like_nbdkit() {
    if !plugin_built() {
        return;
    }
    let ours = run(nbdkit_cmd().args(["torrent", "--dump-plugin"]), CMD_TIMEOUT).assert_success();
    assert!(
        ours.stdout.contains("libnbdkit_torrent_plugin.so"),
        "{}",
        ours.stdout
    );
    let help = run(nbdkit_cmd().args(["torrent", "--help"]), CMD_TIMEOUT).assert_success();
    assert!(help
        .stdout
        .contains("torrent=<TORRENT>   (required) Torrent or magnet link."));
    let reference = Path::new("/usr/lib/x86_64-linux-gnu/nbdkit/plugins/nbdkit-torrent-plugin.so");
    if !reference_installed() || !reference.exists() {
        println!("SKIP: the reference nbdkit torrent plugin is not installed");
        return;
    }
    let theirs = run(
        Command::new("/usr/bin/nbdkit").args(["torrent", "--dump-plugin"]),
        CMD_TIMEOUT,
    )
    .assert_success();
    let pick = |s: &str| -> Vec<String> {
        s.lines()
            .filter(|l| {
                l.starts_with("has_")
                    || l.starts_with("magic_config_key=")
                    || l.contains("thread_model=")
            })
            .map(str::to_string)
            .collect()
    };
    assert_eq!(pick(&ours.stdout), pick(&theirs.stdout));
}
