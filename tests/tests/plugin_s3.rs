//! The S3 plugin (plugins/s3, `libnbdkit_S3_plugin.so` beside the binary)
//! against a real S3-compatible server started on loopback by each test:
//! moto (`moto[server]` from PyPI, installed by scripts/test-all.sh in the
//! virtual environment target/moto-venv), and, for the broken answers no
//! real server gives, a small HTTP server of the test's own.
//!
//! Build the plugin with `cargo build -p nbdkit-S3-plugin` (`--release`
//! for target/release/nbdkit).
#![allow(clippy::std_instead_of_core)]

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use nbdkit_tests::*;

const MIB: usize = 1024 * 1024;
const NBD_EIO: &str = "errno=EIO";

/// Check once that `nbdkit S3` is this project's plugin, built beside the
/// binary under test. Panics with the way to build it otherwise.
fn s3_plugin() {
    static CHECKED: OnceLock<Result<(), String>> = OnceLock::new();
    let r = CHECKED.get_or_init(|| {
        let o = run(nbdkit_cmd().args(["S3", "--dump-plugin"]), CMD_TIMEOUT);
        let bin = fs::canonicalize(nbdkit_bin()).unwrap();
        let dir = bin.parent().unwrap();
        let path = o
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix("path="))
            .unwrap_or_default()
            .to_string();
        let beside = [
            dir.join("libnbdkit_S3_plugin.so"),
            dir.join("nbdkit-S3-plugin.so"),
        ];
        if o.success() && beside.iter().any(|p| Path::new(&path) == p) {
            Ok(())
        } else {
            Err(format!(
                "`nbdkit S3` did not load the plugin built beside {} ({}): build it with \
                 `cargo build -p nbdkit-S3-plugin` (add --release for a release nbdkit)",
                bin.display(),
                o.describe()
            ))
        }
    });
    if let Err(e) = r {
        panic!("{e}");
    }
}

// ---------------------------------------------------------------------------
// moto

/// A Python with moto's server and boto3: target/moto-venv's (what
/// scripts/test-all.sh installs), else `python3` on PATH if it has them.
fn moto_python() -> Option<PathBuf> {
    static PY: OnceLock<Option<PathBuf>> = OnceLock::new();
    let py = PY.get_or_init(|| {
        let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/moto-venv/bin/python");
        let mut candidates = vec![venv];
        if let Some(p) = find_tool("python3") {
            candidates.push(p);
        }
        candidates.into_iter().find(|py| {
            py.exists()
                && run(
                    Command::new(py).args(["-c", "import moto.server, boto3, flask"]),
                    CMD_TIMEOUT,
                )
                .success()
        })
    });
    if py.is_none() {
        println!(
            "SKIP: no Python with moto[server] (scripts/test-all.sh installs it in \
             target/moto-venv); this test needs an S3 server"
        );
    }
    py.clone()
}

/// A moto server on 127.0.0.1, killed (by pid) on drop.
struct Moto {
    child: Child,
    python: PathBuf,
    endpoint: String,
    dir: TempDir,
}

/// The boto3 helpers the tests run with moto's Python.
const HELPER: &str = r#"
import boto3, json, sys
endpoint, ak, sk, op = sys.argv[1:5]
args = sys.argv[5:]
kw = dict(endpoint_url=endpoint, aws_access_key_id=ak, aws_secret_access_key=sk,
          region_name="us-east-1")
s3 = boto3.client("s3", **kw)
if op == "mkbucket":
    s3.create_bucket(Bucket=args[0])
elif op == "upload":
    s3.upload_file(args[2], args[0], args[1])
elif op == "list":
    keys = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=args[0], Prefix=args[1]):
        keys += [c["Key"] for c in page.get("Contents", [])]
    print(json.dumps(keys))
elif op == "user":
    # A user with every right, for a server that checks signatures.
    iam = boto3.client("iam", **kw)
    iam.create_user(UserName="nbdkit")
    k = iam.create_access_key(UserName="nbdkit")["AccessKey"]
    iam.put_user_policy(UserName="nbdkit", PolicyName="all", PolicyDocument=json.dumps(
        {"Version": "2012-10-17",
         "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
    print(k["AccessKeyId"], k["SecretAccessKey"])
else:
    sys.exit("unknown op " + op)
"#;

/// The fixed credentials of a moto that does not check them.
const AK: &str = "AKIATESTNBDKIT";
const SK: &str = "testsecret";

impl Moto {
    /// Start moto. `checked_after`: moto checks signatures (against its IAM
    /// users) after this many requests (`INITIAL_NO_AUTH_ACTION_COUNT`).
    fn start(checked_after: Option<u32>) -> Option<Moto> {
        let python = moto_python()?;
        let dir = TempDir::new();
        fs::write(dir.join("helper.py"), HELPER).unwrap();
        // A free port: bind, read it, close; moto may lose a race for it,
        // then try another.
        for _ in 0..3 {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let log = fs::File::create(dir.join("moto.log")).unwrap();
            let mut cmd = Command::new(&python);
            cmd.args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .env_remove("PYTHONPATH")
            .env_remove("PYTHONHOME");
            if let Some(n) = checked_after {
                cmd.env("INITIAL_NO_AUTH_ACTION_COUNT", n.to_string());
            }
            let mut child = cmd.spawn().expect("start moto");
            let up = wait_until(Duration::from_secs(60), || {
                matches!(child.try_wait(), Ok(Some(_)))
                    || TcpStream::connect(("127.0.0.1", port)).is_ok()
            });
            if up && matches!(child.try_wait(), Ok(None)) {
                return Some(Moto {
                    child,
                    python,
                    endpoint: format!("http://127.0.0.1:{port}"),
                    dir,
                });
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!(
            "moto did not start; its log:\n{}",
            fs::read_to_string(dir.join("moto.log")).unwrap_or_default()
        );
    }

    /// Run a helper operation with these credentials; its stdout.
    fn helper_as(&self, ak: &str, sk: &str, op: &str, args: &[&str]) -> String {
        let mut cmd = Command::new(&self.python);
        cmd.arg(self.dir.join("helper.py"))
            .args([&self.endpoint, ak, sk, op])
            .args(args)
            .env_remove("PYTHONPATH")
            .env_remove("PYTHONHOME");
        let o = run(&mut cmd, Duration::from_secs(120));
        assert!(o.success(), "boto3 {op} {args:?}: {}", o.describe());
        o.stdout
    }

    fn helper(&self, op: &str, args: &[&str]) -> String {
        self.helper_as(AK, SK, op, args)
    }

    fn list(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let out = self.helper("list", &[bucket, prefix]);
        out.trim()
            .trim_matches(['[', ']'])
            .split(',')
            .map(|k| k.trim().trim_matches('"').to_string())
            .filter(|k| !k.is_empty())
            .collect()
    }

    /// Kill it now (by pid), as a server that dies.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------
// nbdkit with a controlled environment

/// The environment of every nbdkit here: no AWS_* of the caller's, and a
/// HOME without ~/.aws (unless the test writes one).
fn clean_env(cmd: &mut Command, home: &Path) {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("AWS_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("HOME", home);
}

/// `nbdkit -U - S3 ARGS --run RUN` in `dir`; its output.
fn run_s3(dir: &TempDir, env: &[(&str, &str)], args: &[&str], run_cmd: &str) -> Output {
    let mut cmd = nbdkit_cmd();
    cmd.current_dir(dir.path())
        .args(["-U", "-", "S3"])
        .args(args)
        .args(["--run", run_cmd]);
    clean_env(&mut cmd, dir.path());
    cmd.env(
        "PATH",
        format!("/usr/bin:{}", std::env::var("PATH").unwrap_or_default()),
    );
    for (k, v) in env {
        cmd.env(k, v);
    }
    run(&mut cmd, Duration::from_secs(300))
}

/// A running `nbdkit -U SOCK -f S3 ARGS`, killed (by pid) on drop.
struct S3Server {
    child: Child,
    sock: PathBuf,
    stderr: PathBuf,
}

impl S3Server {
    fn start(dir: &TempDir, name: &str, args: &[&str]) -> S3Server {
        let sock = dir.join(format!("{name}.sock"));
        let stderr = dir.join(format!("{name}.err"));
        let mut cmd = nbdkit_cmd();
        cmd.arg("-U").arg(&sock).args(["-f", "S3"]).args(args);
        clean_env(&mut cmd, dir.path());
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let mut s = S3Server {
            child,
            sock,
            stderr,
        };
        let up = wait_until(START_TIMEOUT, || {
            matches!(s.child.try_wait(), Ok(Some(_))) || UnixStream::connect(&s.sock).is_ok()
        });
        assert!(
            up && matches!(s.child.try_wait(), Ok(None)),
            "nbdkit S3 {args:?} did not start: {}",
            s.stderr()
        );
        s
    }

    fn uri(&self) -> String {
        format!("nbd+unix:///?socket={}", self.sock.display())
    }

    fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run a libnbd program (`sys.argv[1]` is the URI); its output.
fn libnbd(code: &str, uri: &str) -> Output {
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.arg("-c").arg(code).arg(uri);
    cmd.env_remove("PYTHONHOME").env_remove("PYTHONPATH");
    run(&mut cmd, Duration::from_secs(300))
}

/// Prints `errno=N` for a failed request, for the checks below.
const NBD_PRELUDE: &str = r#"
import nbd, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
def attempt(f, *a):
    try:
        f(*a)
        print("ok")
    except nbd.Error as e:
        print("errno=%s" % e.errno)
"#;

fn endpoint_args(m: &Moto, bucket: &str, key: &str) -> Vec<String> {
    vec![
        format!("endpoint-url={}", m.endpoint),
        format!("bucket={bucket}"),
        format!("key={key}"),
        format!("access-key={AK}"),
        format!("secret-key={SK}"),
    ]
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// The `nbdkit: ... error: ...` lines of a stderr.
fn error_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.starts_with("nbdkit:") && l.contains("error:"))
        .collect()
}

/// moto with bucket `bkt`, this plugin checked, a directory with a random
/// `disk.img` of `len` bytes (uploaded as `upload` when given); its bytes.
fn setup(len: usize, seed: u64, upload: Option<&str>) -> Option<(Moto, TempDir, Vec<u8>)> {
    let moto = Moto::start(None)?;
    s3_plugin();
    let dir = TempDir::new();
    let img = dir.join("disk.img");
    let want = write_random_file(&img, len, seed);
    moto.helper("mkbucket", &["bkt"]);
    if let Some(key) = upload {
        moto.helper("upload", &["bkt", key, path_str(&img)]);
    }
    Some((moto, dir, want))
}

// ---------------------------------------------------------------------------
// Tests

/// A 64 MiB object copied out by qemu-img convert and nbdcopy, plain and
/// through the cow and cache filters, byte for byte; the disk is read-only.
#[test]
fn s3_object_copied_by_qemu_img_and_nbdcopy() {
    skip_unless!("nbdcopy", "qemu-img", "python3-nbd");
    let Some((moto, dir, want)) = setup(64 * MIB, 0x53, Some("images/disk.img")) else {
        return;
    };
    let args = endpoint_args(&moto, "bkt", "images/disk.img");
    // The filters' blocks as large as nbdcopy's requests: moto reads the
    // whole object for each ranged GET, which makes 64K requests slow.
    for filter in [
        None,
        Some(["--filter=cow", "cow-block-size=1M"]),
        Some(["--filter=cache", "cache-min-block-size=1M"]),
    ] {
        let mut a = strs(&args);
        if let Some(f) = filter {
            a.extend(f);
        }
        let o = run_s3(
            &dir,
            &[],
            &a,
            "nbdcopy \"$uri\" out-nbdcopy.img && \
             qemu-img convert -f raw \"$uri\" -O raw out-qemu.img && \
             nbdinfo --size \"$uri\"",
        );
        assert!(o.success(), "{filter:?}: {}", o.describe());
        assert_eq!(o.stdout.trim(), (64 * MIB).to_string(), "{filter:?}");
        for out in ["out-nbdcopy.img", "out-qemu.img"] {
            let got = fs::read(dir.join(out)).unwrap();
            assert_bytes_eq(&format!("{out} {filter:?}"), &got, &want);
            fs::remove_file(dir.join(out)).unwrap();
        }
    }
    // A single object is read-only.
    let s = S3Server::start(&dir, "ro", &strs(&args));
    let o = libnbd(
        &format!("{NBD_PRELUDE}print(h.is_read_only())\nattempt(h.pwrite, b'x', 0)\n"),
        &s.uri(),
    );
    assert!(o.success(), "{}", o.describe());
    let lines: Vec<&str> = o.stdout.lines().collect();
    assert_eq!(lines[0], "True", "{}", o.stdout);
    assert_ne!(lines[1], "ok", "a write to a read-only disk succeeded");
}

/// size= and object-size=: a disk of many objects, written by nbdcopy and
/// qemu-img, read back; unaligned writes and zeroes (read-modify-write),
/// trims and zeroes deleting whole objects, with a model of the disk.
#[test]
fn s3_many_objects_write_read_trim_zero() {
    skip_unless!("nbdcopy", "qemu-img", "python3-nbd");
    let Some((moto, dir, want)) = setup(64 * MIB, 0x54, None) else {
        return;
    };
    let mut args = endpoint_args(&moto, "bkt", "disk");
    args.extend(["size=64M".into(), "object-size=1M".into()]);

    // Written by nbdcopy, read back by qemu-img (and the other way round).
    let o = run_s3(
        &dir,
        &[],
        &strs(&args),
        "nbdcopy disk.img \"$uri\" && qemu-img convert -f raw \"$uri\" -O raw back.img",
    );
    assert!(o.success(), "{}", o.describe());
    assert_bytes_eq(
        "nbdcopy in, qemu-img out",
        &fs::read(dir.join("back.img")).unwrap(),
        &want,
    );
    let keys = moto.list("bkt", "disk/");
    assert_eq!(keys.len(), 64, "one object per MiB: {keys:?}");
    assert_eq!(keys[0], "disk/0000000000000000");
    assert_eq!(keys[63], "disk/000000000000003f");

    let mut a2 = strs(&args);
    a2[2] = "key=disk2";
    let o = run_s3(
        &dir,
        &[],
        &a2,
        "qemu-img convert -n -f raw disk.img -O raw \"$uri\" && nbdcopy \"$uri\" back2.img",
    );
    assert!(o.success(), "{}", o.describe());
    assert_bytes_eq(
        "qemu-img in, nbdcopy out",
        &fs::read(dir.join("back2.img")).unwrap(),
        &want,
    );

    // Unaligned writes, trims, zeroes against a model.
    let s = S3Server::start(&dir, "rw", &strs(&args));
    let code = format!(
        "{NBD_PRELUDE}{}",
        r#"
M = 1024 * 1024
model = bytearray(open("disk.img", "rb").read())
assert h.is_read_only() == 0 and h.can_trim() and h.can_zero()
def check(what):
    got = b"".join(h.pread(16 * M, i * 16 * M) for i in range(4))
    if got != model:
        i = next(i for i in range(len(got)) if got[i] != model[i])
        sys.exit("%s: differs at %d" % (what, i))
# a write inside one object, and one across three
h.pwrite(b"a" * 1000, 5 * M + 17); model[5*M+17:5*M+1017] = b"a" * 1000
h.pwrite(b"b" * (2 * M + 10), 7 * M - 5); model[7*M-5:9*M+5] = b"b" * (2 * M + 10)
check("writes")
# trim: objects 10..=19 wholly inside go; the edges stay (trim is advisory)
h.trim(10 * M + 200, 10 * M - 100)
for i in range(10, 20):
    model[i*M:(i+1)*M] = bytes(M)
check("trim")
# zero: the edges are rewritten, the middle deleted
h.zero(20 * M + 2, 30 * M - 1)
model[30*M-1:50*M+1] = bytes(20 * M + 2)
check("zero")
h.zero(100, 60 * M + 3)
model[60*M+3:60*M+103] = bytes(100)
h.flush()
check("small zero")
print("done")
"#
    );
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.current_dir(dir.path())
        .arg("-c")
        .arg(&code)
        .arg(s.uri());
    let o = run(&mut cmd, Duration::from_secs(300));
    assert!(o.success(), "{}\nnbdkit: {}", o.describe(), s.stderr());
    let keys = moto.list("bkt", "disk/");
    let blocks: Vec<u64> = keys
        .iter()
        .map(|k| u64::from_str_radix(k.trim_start_matches("disk/"), 16).unwrap())
        .collect();
    // Trimmed 10..=19 and zeroed 30..=49 (whole) are gone, the rest stays.
    let expect: Vec<u64> = (0..64)
        .filter(|b| !(10..20).contains(b) && !(30..50).contains(b))
        .collect();
    assert_eq!(blocks, expect, "objects after trim and zero");
}

/// Credentials from AWS's shared files by profile=, from the environment,
/// and from +FILE; a server that checks signatures refuses a wrong secret
/// with one clear error line.
#[test]
fn s3_credentials_profiles_and_wrong_secret() {
    skip_unless!("nbdinfo", "python3-nbd");
    // moto checks signatures after the 3 requests that create the user.
    let Some(moto) = Moto::start(Some(3)) else {
        return;
    };
    s3_plugin();
    let out = moto.helper("user", &[]);
    let (ak, sk) = out.trim().split_once(' ').expect("access key and secret");
    moto.helper_as(ak, sk, "mkbucket", &["sec"]);
    let dir = TempDir::new();
    let img = dir.join("small.img");
    let want = write_random_file(&img, 3 * MIB + 512, 0x55);
    moto.helper_as(ak, sk, "upload", &["sec", "small.img", path_str(&img)]);

    let aws = dir.join("aws");
    fs::create_dir(&aws).unwrap();
    let creds = aws.join("credentials");
    let config = aws.join("config");
    fs::write(
        &creds,
        format!(
            "[default]\naws_access_key_id = {ak}\naws_secret_access_key = wrong\n\n\
             [good]\naws_access_key_id = {ak}\naws_secret_access_key = {sk}\n"
        ),
    )
    .unwrap();
    fs::write(
        &config,
        format!(
            "[default]\nregion = us-east-1\n\n[profile cfg]\nregion = eu-west-1\n\
             aws_access_key_id = {ak}\naws_secret_access_key = {sk}\nendpoint_url = {}\n",
            moto.endpoint
        ),
    )
    .unwrap();
    let files = [
        ("AWS_SHARED_CREDENTIALS_FILE", path_str(&creds)),
        ("AWS_CONFIG_FILE", path_str(&config)),
    ];
    let ep = format!("endpoint-url={}", moto.endpoint);
    let base = [ep.as_str(), "bucket=sec", "key=small.img"];
    let copy = "nbdcopy \"$uri\" out.img";
    let check_copy = |what: &str, o: Output| {
        assert!(o.success(), "{what}: {}", o.describe());
        assert_bytes_eq(what, &fs::read(dir.join("out.img")).unwrap(), &want);
        fs::remove_file(dir.join("out.img")).unwrap();
    };

    // profile= in the credentials file.
    let mut a = base.to_vec();
    a.push("profile=good");
    check_copy("profile=good", run_s3(&dir, &files, &a, copy));
    // AWS_PROFILE names it too.
    let mut env = files.to_vec();
    env.push(("AWS_PROFILE", "good"));
    check_copy("AWS_PROFILE=good", run_s3(&dir, &env, &base, copy));
    // A profile of the config file, with its endpoint_url (no endpoint-url=).
    check_copy(
        "profile=cfg",
        run_s3(
            &dir,
            &files,
            &["bucket=sec", "key=small.img", "profile=cfg"],
            copy,
        ),
    );
    // The environment's keys.
    let mut env: Vec<(&str, &str)> = vec![("AWS_ACCESS_KEY_ID", ak), ("AWS_SECRET_ACCESS_KEY", sk)];
    env.extend(files);
    check_copy("AWS_ACCESS_KEY_ID", run_s3(&dir, &env, &base, copy));
    // access-key= and secret-key=+FILE.
    fs::write(dir.join("secret"), format!("{sk}\n")).unwrap();
    let ak_arg = format!("access-key={ak}");
    let mut a = base.to_vec();
    a.extend([ak_arg.as_str(), "secret-key=+secret"]);
    check_copy("secret-key=+FILE", run_s3(&dir, &[], &a, copy));

    // The default profile has a wrong secret: refused, one error line.
    let o = run_s3(&dir, &files, &base, copy);
    assert!(
        !o.success(),
        "a wrong secret was accepted: {}",
        o.describe()
    );
    let errors = error_lines(&o.stderr);
    assert_eq!(errors.len(), 1, "one error line: {}", o.stderr);
    assert!(
        errors[0].contains("SignatureDoesNotMatch") && errors[0].contains("s3://sec/small.img"),
        "{}",
        errors[0]
    );
    // No credentials at all: anonymous requests, refused.
    let o = run_s3(&dir, &[], &base, copy);
    assert!(
        !o.success(),
        "anonymous access was accepted: {}",
        o.describe()
    );
    assert_eq!(error_lines(&o.stderr).len(), 1, "{}", o.stderr);
    // A profile that does not exist: a configuration error.
    let mut a = base.to_vec();
    a.push("profile=nosuch");
    let o = run_s3(&dir, &files, &a, copy);
    assert_eq!(o.code(), Some(1), "{}", o.describe());
    assert!(
        o.stderr.starts_with("nbdkit: error: ") && o.stderr.contains("nosuch"),
        "{}",
        o.stderr
    );
}

/// A missing bucket or object: one clear error when a client connects;
/// bad command lines: one `nbdkit: error:` line and exit status 1.
#[test]
fn s3_missing_bucket_key_and_bad_parameters() {
    skip_unless!("nbdinfo");
    s3_plugin();
    let dir = TempDir::new();
    for (args, want) in [
        (vec!["key=k"], "bucket"),
        (vec!["bucket=b"], "key"),
        (vec!["bucket=b", "key=k", "size=1M"], "object-size"),
        (
            vec!["bucket=b", "key=k", "size=1M", "object-size=3k"],
            "multiple",
        ),
        (vec!["bucket=b", "key=k", "object-size=0"], "object-size"),
        (vec!["bucket=b", "key=k", "timeout=x"], "timeout"),
        (vec!["bucket=b", "key=k", "nosuch=1"], "nosuch"),
        (vec!["bucket=b", "key=k", "access-key=a"], "secret-key"),
        (
            vec!["bucket=b", "key=k", "endpoint-url=ftp://x"],
            "endpoint-url",
        ),
    ] {
        let o = run_s3(&dir, &[], &args, "true");
        assert_eq!(o.code(), Some(1), "{args:?}: {}", o.describe());
        let lines: Vec<&str> = o.stderr.lines().collect();
        assert!(
            lines.len() == 1 && lines[0].starts_with("nbdkit: error: ") && lines[0].contains(want),
            "{args:?}: {}",
            o.stderr
        );
    }

    // Nothing listens at the endpoint: one error line when a client
    // connects, after the retries, and no hang.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let ep = format!("endpoint-url=http://127.0.0.1:{port}");
    let o = run_s3(
        &dir,
        &[],
        &[&ep, "bucket=b", "key=k"],
        "nbdinfo --size \"$uri\"",
    );
    assert!(!o.success(), "{}", o.describe());
    let errors = error_lines(&o.stderr);
    assert!(
        errors.len() == 1 && errors[0].contains("s3://b/k") && errors[0].contains("refused"),
        "{}",
        o.stderr
    );

    let Some(moto) = Moto::start(None) else {
        return;
    };
    moto.helper("mkbucket", &["bkt"]);
    for (bucket, key, extra, want) in [
        ("nosuch", "k", None, "NoSuchBucket"),
        ("bkt", "nosuch", None, "NoSuchKey"),
        ("nosuch", "k", Some("size=1M"), "NoSuchBucket"),
    ] {
        let mut args = endpoint_args(&moto, bucket, key);
        if let Some(e) = extra {
            args.extend([e.to_string(), "object-size=64k".into()]);
        }
        let o = run_s3(&dir, &[], &strs(&args), "nbdinfo --size \"$uri\"");
        assert!(!o.success(), "{bucket}/{key}: {}", o.describe());
        let errors = error_lines(&o.stderr);
        assert!(
            errors.len() == 1 && errors[0].contains(want),
            "{bucket}/{key}: {}",
            o.stderr
        );
    }
}

/// The server is killed while nbdkit serves: reads (and writes) fail with
/// EIO, promptly, and nbdkit goes on serving.
#[test]
fn s3_server_gone_gives_eio() {
    skip_unless!("python3-nbd");
    let Some((mut moto, dir, _)) = setup(4 * MIB, 0x56, Some("disk.img")) else {
        return;
    };
    let mut ro = S3Server::start(&dir, "ro", &strs(&endpoint_args(&moto, "bkt", "disk.img")));
    let mut rw_args = endpoint_args(&moto, "bkt", "multi");
    rw_args.extend(["size=4M".into(), "object-size=64k".into()]);
    let mut rw = S3Server::start(&dir, "rw", &strs(&rw_args));

    // Each client connects, reads once, then waits for the go-ahead (a
    // file) before the next requests.
    let go = dir.join("go");
    let code = format!(
        "{NBD_PRELUDE}{}",
        r#"
import os, time
attempt(h.pread, 65536, 0)
sys.stdout.flush()
for _ in range(3000):
    if os.path.exists(sys.argv[2]): break
    time.sleep(0.02)
attempt(h.pread, 65536, 1 << 20)
if not h.is_read_only():
    attempt(h.pwrite, b"x" * 65536, 0)
    attempt(h.pwrite, b"y" * 100, 70000)
    attempt(h.trim, 65536 * 4, 0)
"#
    );
    let spawn = |uri: String| {
        Command::new("/usr/bin/python3")
            .arg("-c")
            .arg(&code)
            .arg(uri)
            .arg(&go)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env_remove("PYTHONHOME")
            .env_remove("PYTHONPATH")
            .spawn()
            .unwrap()
    };
    let mut clients = [spawn(ro.uri()), spawn(rw.uri())];
    // Both have done their first read (it printed "ok") before the kill.
    for c in clients.iter_mut() {
        let mut line = String::new();
        BufReader::new(c.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ok", "first read before the kill");
    }
    moto.kill();
    fs::write(&go, "").unwrap();
    for (c, what) in clients.iter_mut().zip(["single object", "many objects"]) {
        let status = wait_timeout(c, Duration::from_secs(120));
        assert!(
            status.is_some(),
            "{what}: the client hung after the server died"
        );
        let mut out = String::new();
        c.stdout.as_mut().unwrap().read_to_string(&mut out).unwrap();
        let results: Vec<&str> = out.lines().collect();
        assert!(!results.is_empty(), "{what}: no results");
        assert!(results.iter().all(|r| *r == NBD_EIO), "{what}: {results:?}");
    }
    assert!(ro.alive() && rw.alive(), "nbdkit exited");
    assert!(
        ro.stderr().contains("error:"),
        "no error message: {}",
        ro.stderr()
    );
}

/// What the test's own HTTP server does with a GET.
#[derive(Clone, Copy)]
enum Broken {
    /// Sends half the body it announced, then closes.
    Short,
    /// Sends more than the range asked for.
    Oversized,
    /// Never answers.
    Silent,
}

/// An HTTP server on loopback that answers HEAD properly (1 MiB) and GET
/// in the `Broken` way named by the object's key.
/// The header lines of every HEAD request go to `heads` (lower case).
fn broken_server(
    stop: Arc<AtomicBool>,
    heads: Arc<Mutex<Vec<String>>>,
) -> (String, thread::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let addr = format!("http://{}", l.local_addr().unwrap());
    let h = thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(600);
        let mut held = Vec::new();
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            let Ok((mut s, _)) = l.accept() else {
                thread::sleep(Duration::from_millis(10));
                continue;
            };
            s.set_nonblocking(false).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut first = String::new();
            if r.read_line(&mut first).is_err() {
                continue;
            }
            let mut range = (0u64, 0u64);
            let mut headers = Vec::new();
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                let lower = line.to_ascii_lowercase();
                headers.push(lower.trim_end().to_string());
                if let Some(v) = lower.strip_prefix("range: bytes=") {
                    let (a, b) = v.trim().split_once('-').unwrap();
                    range = (a.parse().unwrap(), b.parse().unwrap());
                }
            }
            let len = range.1 - range.0 + 1;
            let mode = if first.contains("/short") {
                Broken::Short
            } else if first.contains("/oversized") {
                Broken::Oversized
            } else {
                Broken::Silent
            };
            if first.starts_with("HEAD") {
                heads.lock().unwrap().extend(headers);
                let _ = s.write_all(
                    format!("HTTP/1.1 200 OK\r\nContent-Length: {MIB}\r\n\r\n").as_bytes(),
                );
                continue;
            }
            let _ = match mode {
                Broken::Short => s.write_all(
                    format!(
                        "HTTP/1.1 206 Partial Content\r\nContent-Length: {len}\r\n\
                         Connection: close\r\n\r\n{}",
                        "z".repeat((len / 2) as usize)
                    )
                    .as_bytes(),
                ),
                Broken::Oversized => s.write_all(
                    format!(
                        "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\n\
                         Connection: close\r\n\r\n{}",
                        len + 10,
                        "z".repeat((len + 10) as usize)
                    )
                    .as_bytes(),
                ),
                Broken::Silent => {
                    held.push(s);
                    Ok(())
                }
            };
        }
    });
    (addr, h)
}

/// A short body, an oversized one, a server that never answers (with
/// timeout=1): EIO on the read, never a hang.
#[test]
fn s3_short_oversized_and_silent_answers_give_eio() {
    skip_unless!("python3-nbd");
    s3_plugin();
    let dir = TempDir::new();
    let stop = Arc::new(AtomicBool::new(false));
    let (addr, h) = broken_server(stop.clone(), Arc::default());
    let ep = format!("endpoint-url={addr}");
    for key in ["short", "oversized", "silent"] {
        let k = format!("key={key}");
        let s = S3Server::start(&dir, key, &[&ep, "bucket=b", &k, "timeout=1"]);
        let o = libnbd(
            &format!("{NBD_PRELUDE}print(h.get_size())\nattempt(h.pread, 4096, 8192)\n"),
            &s.uri(),
        );
        assert!(o.success(), "{key}: {}", o.describe());
        assert_eq!(
            o.stdout.lines().collect::<Vec<_>>(),
            [&MIB.to_string(), NBD_EIO],
            "{key}"
        );
        let errors = error_lines(&s.stderr()).len();
        assert!(errors >= 1, "{key}: no error message: {}", s.stderr());
    }
    stop.store(true, Ordering::Relaxed);
    h.join().unwrap();
}

/// C nbdkit's S3 plugin (Python, boto3) and this one store a disk of many
/// objects the same way: each reads what the other wrote.
#[test]
fn s3_same_objects_as_the_reference() {
    skip_unless!("nbdcopy");
    if !reference_installed() {
        return;
    }
    if !Path::new("/usr/lib/x86_64-linux-gnu/nbdkit/plugins/nbdkit-S3-plugin").exists()
        || !run(
            Command::new("/usr/bin/python3").args(["-c", "import boto3"]),
            CMD_TIMEOUT,
        )
        .success()
    {
        println!("SKIP: the reference has no S3 plugin (nbdkit-plugin-python, python3-boto3)");
        return;
    }
    let Some((moto, dir, want)) = setup(4 * MIB, 0x57, None) else {
        return;
    };
    let ours = |key: &str, run_cmd: &str| {
        let mut a = endpoint_args(&moto, "bkt", key);
        a.extend(["size=4M".into(), "object-size=64k".into()]);
        run_s3(&dir, &[], &strs(&a), run_cmd)
    };
    let reference = |key: &str, run_cmd: &str| {
        let mut cmd = Command::new(REFERENCE);
        cmd.current_dir(dir.path()).args(["-U", "-", "S3"]);
        cmd.args(endpoint_args(&moto, "bkt", key));
        cmd.args(["size=4M", "object-size=64k", "--run", run_cmd]);
        clean_env(&mut cmd, dir.path());
        cmd.env(
            "PATH",
            format!("/usr/bin:{}", std::env::var("PATH").unwrap_or_default()),
        );
        cmd.env_remove("PYTHONPATH").env_remove("PYTHONHOME");
        run(&mut cmd, Duration::from_secs(300))
    };
    let o = reference("theirs", "nbdcopy disk.img \"$uri\"");
    assert!(o.success(), "reference write: {}", o.describe());
    let o = ours("theirs", "nbdcopy \"$uri\" a.img");
    assert!(o.success(), "our read: {}", o.describe());
    assert_bytes_eq(
        "ours reading the reference's",
        &fs::read(dir.join("a.img")).unwrap(),
        &want,
    );
    let o = ours("mine", "nbdcopy disk.img \"$uri\"");
    assert!(o.success(), "our write: {}", o.describe());
    let o = reference("mine", "nbdcopy \"$uri\" b.img");
    assert!(o.success(), "reference read: {}", o.describe());
    assert_bytes_eq(
        "the reference reading ours",
        &fs::read(dir.join("b.img")).unwrap(),
        &want,
    );
    assert_eq!(
        moto.list("bkt", "mine/"),
        moto.list("bkt", "theirs/")
            .iter()
            .map(|k| k.replace("theirs/", "mine/"))
            .collect::<Vec<_>>()
    );
}

/// region= and session-token= reach the request: the signature's scope
/// names the region, the token goes in x-amz-security-token (moto checks
/// neither: the test's own server records the request).
#[test]
fn s3_region_and_session_token_are_sent() {
    skip_unless!("nbdinfo");
    s3_plugin();
    let dir = TempDir::new();
    let stop = Arc::new(AtomicBool::new(false));
    let heads = Arc::new(Mutex::new(Vec::new()));
    let (addr, h) = broken_server(stop.clone(), heads.clone());
    let ep = format!("endpoint-url={addr}");
    fs::write(dir.join("token"), "TOKEN+/=xyz\n").unwrap();
    let o = run_s3(
        &dir,
        &[],
        &[
            &ep,
            "bucket=b",
            "key=short",
            "access-key=AKIAREGION",
            "secret-key=s",
            "session-token=+token",
            "region=eu-west-3",
        ],
        "nbdinfo --size \"$uri\"",
    );
    stop.store(true, Ordering::Relaxed);
    h.join().unwrap();
    assert!(o.success(), "{}", o.describe());
    assert_eq!(o.stdout.trim(), MIB.to_string());
    let heads = heads.lock().unwrap();
    let auth = heads
        .iter()
        .find(|l| l.starts_with("authorization:"))
        .unwrap_or_else(|| panic!("no authorization header: {heads:?}"));
    assert!(
        auth.contains("aws4-hmac-sha256 credential=akiaregion/")
            && auth.contains("/eu-west-3/s3/aws4_request")
            && auth.contains("x-amz-security-token"),
        "{auth}"
    );
    assert!(
        heads
            .iter()
            .any(|l| l == "x-amz-security-token: token+/=xyz"),
        "{heads:?}"
    );
}
