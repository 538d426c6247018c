//! Helpers shared by the integration tests.
//!
//! The tests drive the real `nbdkit` binary with real NBD clients
//! (qemu-img, nbdinfo, nbdcopy, libnbd's Python bindings) and with a small
//! raw client ([`RawClient`]) for malformed traffic.
//!
//! The binary under test is chosen by explicit path only: `$NBDKIT_BIN`, or
//! `target/<profile>/nbdkit` next to the test executable.  There is never a
//! fallback to `nbdkit` on `PATH`, so a missing build cannot silently test
//! the reference server instead.
//!
//! Every wait is bounded in time and in iterations; servers listen on Unix
//! sockets in private temporary directories only.
#![allow(clippy::std_instead_of_core, clippy::alloc_instead_of_core)] // an std crate

use core::sync::atomic::{AtomicU32, Ordering};
use core::time::Duration;
use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::Instant;

/// Default time allowed for one client command.
pub const CMD_TIMEOUT: Duration = Duration::from_secs(120);
/// Time allowed for a server to start listening.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Time between SIGTERM and SIGKILL when a server is stopped.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// The interpreter that has Debian's libnbd bindings (`import nbd`).
pub const PYTHON: &str = "/usr/bin/python3";
/// The nbdkit version the Rust implementation reports.
pub const OUR_VERSION: &str = "1.36.2";

const POLL: Duration = Duration::from_millis(20);

// ---------------------------------------------------------------------------
// The binary under test
// ---------------------------------------------------------------------------

/// Path of the `nbdkit` binary under test.
///
/// `$NBDKIT_BIN` if set, else `target/<profile>/nbdkit` derived from the
/// test executable (`target/<profile>/deps/<test>-<hash>`).  Panics with a
/// clear message if the binary does not exist.
pub fn nbdkit_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let (path, how) = match std::env::var_os("NBDKIT_BIN") {
            Some(p) if !p.is_empty() => (PathBuf::from(p), "$NBDKIT_BIN"),
            _ => {
                let exe = std::env::current_exe().expect("current_exe");
                // target/<profile>/deps/<test> -> target/<profile>/nbdkit
                let profile_dir = exe
                    .parent()
                    .and_then(Path::parent)
                    .expect("test executable is not under target/<profile>/deps");
                (
                    profile_dir.join("nbdkit"),
                    "the test executable's target directory",
                )
            }
        };
        if !path.is_file() {
            panic!(
                "nbdkit binary under test not found at {} (from {how}).\n\
                 Build it first (`cargo build --release -p nbdkit-cli`, then run the tests \
                 with --release), or set NBDKIT_BIN=/path/to/nbdkit.",
                path.display()
            );
        }
        path
    })
    .clone()
}

/// Debian's C nbdkit: the reference that differential tests compare with
/// (never the binary under test).
pub const REFERENCE: &str = "/usr/bin/nbdkit";

/// True if the reference nbdkit is installed; otherwise prints a skip
/// message, and the caller returns from its test.
pub fn reference_installed() -> bool {
    if Path::new(REFERENCE).exists() {
        true
    } else {
        println!("SKIP: the reference nbdkit ({REFERENCE}) is not installed");
        false
    }
}

/// True when the binary under test is Debian's C nbdkit (`/usr/bin/nbdkit`),
/// the reference the tests are validated against.  Only tests about our own
/// version string look at this.
pub fn is_reference() -> bool {
    let bin = fs::canonicalize(nbdkit_bin()).unwrap_or_else(|_| nbdkit_bin());
    let reference = fs::canonicalize("/usr/bin/nbdkit").ok();
    Some(&bin) == reference.as_ref()
}

/// The version the binary under test must report: `1.36.2` for ours, the
/// Debian package's version for the reference.
pub fn expected_version() -> String {
    if is_reference() {
        let out = run(Command::new(nbdkit_bin()).arg("--version"), CMD_TIMEOUT);
        let first = out.stdout.lines().next().unwrap_or_default().to_string();
        first
            .strip_prefix("nbdkit ")
            .unwrap_or(&first)
            .trim()
            .to_string()
    } else {
        OUR_VERSION.to_string()
    }
}

/// A `Command` for the binary under test.
pub fn nbdkit_cmd() -> Command {
    Command::new(nbdkit_bin())
}

// ---------------------------------------------------------------------------
// Client tools
// ---------------------------------------------------------------------------

/// Full path of `tool` found on `PATH` (then `/usr/bin`, `/usr/sbin`), if any.
pub fn find_tool(tool: &str) -> Option<PathBuf> {
    if tool.contains('/') {
        return is_executable(Path::new(tool)).then(|| PathBuf::from(tool));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|d| d.join(tool))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// True if `tool` is installed.  Otherwise prints a clear skip message
/// (visible with `--nocapture`, and in the output of a failing run) and
/// returns false; the caller then returns from the test.  See
/// [`skip_unless!`].
pub fn have_tool(tool: &str) -> bool {
    if find_tool(tool).is_some() {
        return true;
    }
    eprintln!("SKIP: `{tool}` is not installed; this test needs it (see scripts/test-all.sh)");
    false
}

/// Check (once per plugin) that `nbdkit NAME` loads this project's plugin
/// shared object built beside the binary under test (crate
/// `nbdkit-NAME-plugin`), not the reference's C plugin of the same name
/// in the plugin directory. Panics with the way to build it otherwise.
pub fn assert_plugin_built_beside(name: &str) {
    static CHECKED: std::sync::Mutex<Vec<(String, Result<(), String>)>> =
        std::sync::Mutex::new(Vec::new());
    let mut checked = CHECKED.lock().unwrap_or_else(|e| e.into_inner());
    if !checked.iter().any(|(n, _)| n == name) {
        let r = plugin_built_beside(name);
        checked.push((name.to_string(), r));
    }
    if let Some((_, Err(e))) = checked.iter().find(|(n, _)| n == name) {
        panic!("{e}");
    }
}

/// True if `/usr/bin/python3` can `import nbd` (Debian's python3-libnbd).
/// Otherwise prints a skip message and returns false.
pub fn have_python_nbd() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    let ok = *OK.get_or_init(|| {
        is_executable(Path::new(PYTHON))
            && run(Command::new(PYTHON).args(["-c", "import nbd"]), CMD_TIMEOUT).success()
    });
    if !ok {
        eprintln!(
            "SKIP: {PYTHON} cannot `import nbd` (install python3-libnbd); this test needs it"
        );
    }
    ok
}

/// Return from the current test (after printing a skip message) unless
/// every named client tool is installed.  `"python3-nbd"` stands for
/// `/usr/bin/python3` with the libnbd bindings.
///
/// ```ignore
/// skip_unless!("qemu-img", "nbdinfo");
/// ```
#[macro_export]
macro_rules! skip_unless {
    ($($tool:expr),+ $(,)?) => {
        $(
            if !$crate::skip_unless($tool) {
                return;
            }
        )+
    };
}

/// Function form of [`skip_unless!`]: true if `tool` is installed, else
/// prints a skip message and returns false.
pub fn skip_unless(tool: &str) -> bool {
    if tool == "python3-nbd" {
        have_python_nbd()
    } else {
        have_tool(tool)
    }
}

// ---------------------------------------------------------------------------
// Temporary directories
// ---------------------------------------------------------------------------

/// A private temporary directory, removed on drop.  Its path is kept short
/// so that a socket inside it fits in `sun_path`.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates a fresh directory under `$TMPDIR` (default `/tmp`).
    pub fn new() -> TempDir {
        TempDir::new_in(&std::env::temp_dir())
    }

    /// Creates a fresh directory under `base` (removed, with its contents,
    /// when dropped, also when a test panics).
    pub fn new_in(base: &Path) -> TempDir {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        for attempt in 0..100u32 {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let name = format!(
                "nbdkit-t{}-{}-{:x}",
                std::process::id(),
                n,
                nanos.wrapping_add(attempt)
            );
            let path = base.join(name);
            match fs::create_dir(&path) {
                Ok(()) => {
                    let _ = fs::set_permissions(&path, fs::Permissions::from_mode(0o700));
                    return TempDir { path };
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => panic!(
                    "cannot create a temporary directory in {}: {e}",
                    base.display()
                ),
            }
        }
        panic!(
            "cannot create a unique temporary directory in {}",
            base.display()
        );
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path inside the directory.
    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.path.join(name)
    }
}

impl Default for TempDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

// ---------------------------------------------------------------------------
// Running commands with a timeout
// ---------------------------------------------------------------------------

/// What a finished (or timed-out) command produced.
#[derive(Debug)]
pub struct Output {
    /// Exit status; `None` if it was killed because of the timeout.
    pub status: Option<ExitStatus>,
    /// Standard output (lossy UTF-8).
    pub stdout: String,
    /// Standard error (lossy UTF-8).
    pub stderr: String,
    /// Standard output as bytes.
    pub stdout_bytes: Vec<u8>,
    /// A description of the command, for messages.
    pub cmdline: String,
}

impl Output {
    /// True if the command exited with status 0.
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    /// The exit code, if the command exited normally.
    pub fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }

    /// Panics with the command line, status, stdout and stderr unless the
    /// command succeeded; returns `self` for chaining.
    #[track_caller]
    pub fn assert_success(self) -> Output {
        if !self.success() {
            panic!("command failed: {}", self.describe());
        }
        self
    }

    /// A multi-line description for assertion messages.
    pub fn describe(&self) -> String {
        let status = match self.status {
            None => "timed out (killed)".to_string(),
            Some(s) => s.to_string(),
        };
        format!(
            "`{}`: {status}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.cmdline,
            truncate(&self.stdout, 4000),
            truncate(&self.stderr, 4000)
        )
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn describe_cmd(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd` to completion with stdin from /dev/null (unless the caller
/// set stdin), capturing stdout and stderr.  The command runs in its own
/// process group; after `timeout` the whole group is killed and
/// `Output::status` is `None`.
pub fn run(cmd: &mut Command, timeout: Duration) -> Output {
    run_with_input(cmd, None, timeout)
}

/// Like [`run`], feeding `input` to the command's stdin.
pub fn run_with_input(cmd: &mut Command, input: Option<&[u8]>, timeout: Duration) -> Output {
    let cmdline = describe_cmd(cmd);
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    if input.is_some() {
        cmd.stdin(Stdio::piped());
    } else {
        cmd.stdin(Stdio::null());
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run `{cmdline}`: {e}"));
    let pid = child.id() as libc::pid_t;
    let stdin_thread = match (input, child.stdin.take()) {
        (Some(data), Some(mut stdin)) => {
            let data = data.to_vec();
            Some(thread::spawn(move || {
                let _ = stdin.write_all(&data);
            }))
        }
        _ => None,
    };
    let out_thread = reader_thread(child.stdout.take());
    let err_thread = reader_thread(child.stderr.take());

    let status = wait_timeout(&mut child, timeout);
    if status.is_none() {
        // Kill the whole group (the command and anything it started).
        kill_group(pid, libc::SIGKILL);
        let _ = child.kill();
        let _ = wait_timeout(&mut child, STOP_TIMEOUT);
    }
    // A grandchild may still hold the pipes open; after the command exits
    // give the readers a bounded time, then kill the group and wait again.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(out_thread.is_finished() && err_thread.is_finished()) && Instant::now() < deadline {
        thread::sleep(POLL);
    }
    if !(out_thread.is_finished() && err_thread.is_finished()) {
        kill_group(pid, libc::SIGKILL);
    }
    let stdout_bytes = out_thread.join().unwrap_or_default();
    let stderr_bytes = err_thread.join().unwrap_or_default();
    if let Some(t) = stdin_thread {
        let _ = t.join();
    }
    Output {
        status,
        stdout: String::from_utf8_lossy(&stdout_bytes).into_owned(),
        stderr: String::from_utf8_lossy(&stderr_bytes).into_owned(),
        stdout_bytes,
        cmdline,
    }
}

fn reader_thread<R: Read + Send + 'static>(r: Option<R>) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut r) = r {
            let _ = r.read_to_end(&mut buf);
        }
        buf
    })
}

/// Polls `child` until it exits or `timeout` passes.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    let max_polls = timeout.as_millis() / POLL.as_millis() + 2;
    for _ in 0..max_polls {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) => {}
            Err(_) => return None,
        }
        if Instant::now() >= deadline {
            break;
        }
        thread::sleep(POLL);
    }
    child.try_wait().ok().flatten()
}

fn kill_group(pgid: libc::pid_t, sig: libc::c_int) {
    if pgid > 0 {
        // SAFETY: kill(2) with a negative pid signals a process group; no
        // memory is involved.
        unsafe {
            libc::kill(-pgid, sig);
        }
    }
}

fn kill_pid(pid: libc::pid_t, sig: libc::c_int) {
    if pid > 0 {
        // SAFETY: kill(2) on a pid we started; no memory is involved.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

/// Runs a client tool (`nbdinfo`, `qemu-img`, ...) with [`CMD_TIMEOUT`].
pub fn run_tool<I, S>(tool: &str, args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let path = find_tool(tool).unwrap_or_else(|| PathBuf::from(tool));
    run(Command::new(path).args(args), CMD_TIMEOUT)
}

/// Writes an executable file (mode 0755) holding `text`.
///
/// The file is written by a child process (`sh -c 'cat > FILE'`), never
/// through a descriptor of this process: the tests run in many threads, and
/// a write descriptor open here while another thread forks is inherited by
/// that child until it execs, so executing the file in that window fails
/// with ETXTBSY ("Text file busy"). The child that writes is
/// single-threaded and has exited, its descriptor closed, before this
/// returns.
pub fn write_executable(path: &Path, text: &str) {
    let out = run_with_input(
        Command::new("/bin/sh")
            .args(["-c", "cat > \"$1\" && chmod 755 \"$1\"", "sh"])
            .arg(path),
        Some(text.as_bytes()),
        CMD_TIMEOUT,
    );
    assert!(
        out.success(),
        "cannot write {}: {}",
        path.display(),
        out.describe()
    );
}

/// Asserts that a command failed as nbdkit does on a bad start: exit
/// status 1 and exactly one `nbdkit: error: ` line on stderr, containing
/// `want`.
#[track_caller]
pub fn assert_one_error(out: &Output, want: &str) {
    assert_eq!(out.code(), Some(1), "{}", out.describe());
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{}", out.stderr);
    assert!(lines[0].starts_with("nbdkit: error: "), "{}", out.stderr);
    assert!(lines[0].contains(want), "want {want:?}: {}", out.stderr);
}

/// A path as `&str` (test paths are always UTF-8).
pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

/// Directory of the Python test scripts (`tests/scripts`).
pub fn scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts")
}

/// Runs `tests/scripts/<script>` with `/usr/bin/python3` and `args`,
/// with [`CMD_TIMEOUT`].
pub fn run_python<I, S>(script: &str, args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(PYTHON);
    cmd.arg(scripts_dir().join(script)).args(args);
    // Debian's libnbd bindings only load into Debian's interpreter; keep a
    // foreign PYTHONPATH/PYTHONHOME from confusing it.
    cmd.env_remove("PYTHONHOME").env_remove("PYTHONPATH");
    run(&mut cmd, CMD_TIMEOUT)
}

/// Runs the Python program `code` (`python3 -c`) with `/usr/bin/python3`
/// and `args` (its `sys.argv[1..]`), with [`CMD_TIMEOUT`].
pub fn run_python_code<I, S>(code: &str, args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(PYTHON);
    cmd.arg("-c").arg(code).args(args);
    cmd.env_remove("PYTHONHOME").env_remove("PYTHONPATH");
    run(&mut cmd, CMD_TIMEOUT)
}

/// Polls `f` every 20 ms until it holds or `timeout` passes; true if it held.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return true;
        }
        thread::sleep(POLL);
    }
    f()
}

/// Whether process `pid` exists.
pub fn pid_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

/// The pid in a complete pidfile (nbdkit writes "PID\n"), if any yet.
pub fn read_pidfile(p: &Path) -> Option<i32> {
    let s = fs::read_to_string(p).ok()?;
    if !s.ends_with('\n') {
        return None;
    }
    s.trim().parse().ok()
}

// ---------------------------------------------------------------------------
// A server under test
// ---------------------------------------------------------------------------

/// A running `nbdkit -U <dir>/sock -f <args...>`, stopped on drop.
#[derive(Debug)]
pub struct Server {
    child: Child,
    dir: TempDir,
    socket: PathBuf,
    args: Vec<String>,
}

impl Server {
    /// Starts the server under test with `args` after `-U <sock> -f`
    /// (plugin, parameters, other options) and waits until its socket
    /// accepts connections.  Panics (with the server's stderr) if it exits
    /// or does not listen within [`START_TIMEOUT`].
    #[track_caller]
    pub fn start<I, S>(args: I) -> Server
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        match Self::try_start(args) {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        }
    }

    /// Like [`Server::start`], returning the failure as a message.
    pub fn try_start<I, S>(args: I) -> Result<Server, String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let args: Vec<String> = args.into_iter().map(|a| a.as_ref().to_string()).collect();
        let dir = TempDir::new();
        let socket = dir.join("sock");
        let stdout = fs::File::create(dir.join("stdout")).map_err(|e| e.to_string())?;
        let stderr = fs::File::create(dir.join("stderr")).map_err(|e| e.to_string())?;
        let bin = nbdkit_bin();
        let child = Command::new(&bin)
            .arg("-U")
            .arg(&socket)
            .arg("-f")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let mut server = Server {
            child,
            dir,
            socket,
            args,
        };
        server.wait_ready()?;
        Ok(server)
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        let max_polls = START_TIMEOUT.as_millis() / POLL.as_millis() + 2;
        for _ in 0..max_polls {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "server `nbdkit -U {} -f {}` exited before listening ({status}); stderr:\n{}",
                    self.socket.display(),
                    self.args.join(" "),
                    self.stderr()
                ));
            }
            if self.socket.exists() && UnixStream::connect(&self.socket).is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                break;
            }
            thread::sleep(POLL);
        }
        Err(format!(
            "server `nbdkit -U {} -f {}` did not listen within {:?}; stderr:\n{}",
            self.socket.display(),
            self.args.join(" "),
            START_TIMEOUT,
            self.stderr()
        ))
    }

    /// The `nbd+unix:///?socket=...` URI of the default export.
    pub fn uri(&self) -> String {
        self.uri_export("")
    }

    /// The URI of export `name` (which must not need URI escaping).
    pub fn uri_export(&self, name: &str) -> String {
        format!("nbd+unix:///{name}?socket={}", self.socket.display())
    }

    /// The Unix socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The server's private directory (holds the socket and its logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the server wrote to stderr so far.
    pub fn stderr(&self) -> String {
        fs::read(self.dir.join("stderr"))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// True if the server process has not exited.
    pub fn is_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// A raw connection to the socket (no handshake read yet).
    pub fn connect_raw(&self) -> RawClient {
        RawClient::connect(&self.socket)
    }

    /// Stops the server: SIGTERM by pid, SIGKILL to its process group after
    /// [`STOP_TIMEOUT`].  Returns its exit status if it exited.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        if let Ok(Some(status)) = self.child.try_wait() {
            kill_group(self.child.id() as libc::pid_t, libc::SIGKILL);
            return Some(status);
        }
        let pid = self.child.id() as libc::pid_t;
        kill_pid(pid, libc::SIGTERM);
        let status = wait_timeout(&mut self.child, STOP_TIMEOUT);
        // Kill anything left in its group (the server if it ignored
        // SIGTERM, and any helper processes).
        kill_group(pid, libc::SIGKILL);
        match status {
            Some(s) => Some(s),
            None => {
                let _ = self.child.kill();
                wait_timeout(&mut self.child, STOP_TIMEOUT)
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
        // The TempDir field removes the directory.
    }
}

// ---------------------------------------------------------------------------
// Deterministic data
// ---------------------------------------------------------------------------

/// A small deterministic PRNG (SplitMix64), so test data is reproducible.
#[derive(Debug, Clone)]
pub struct Prng(u64);

impl Prng {
    /// A generator with the given seed.
    pub fn new(seed: u64) -> Prng {
        Prng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }

    /// `len` random bytes.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.fill(&mut v);
        v
    }
}

/// Writes `len` deterministic random bytes (from `seed`) to `path`.
pub fn write_random_file(path: &Path, len: usize, seed: u64) -> Vec<u8> {
    let data = Prng::new(seed).bytes(len);
    fs::write(path, &data).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    data
}

/// Index of the first differing byte, if the slices differ.
pub fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .or_else(|| (a.len() != b.len()).then(|| a.len().min(b.len())))
}

/// Asserts that two byte buffers are equal without printing megabytes.
#[track_caller]
pub fn assert_bytes_eq(what: &str, got: &[u8], want: &[u8]) {
    if let Some(i) = first_difference(got, want) {
        panic!(
            "{what}: contents differ at byte {i} (got len {}, want len {}; got {:?}, want {:?})",
            got.len(),
            want.len(),
            got.get(i),
            want.get(i)
        );
    }
}

// ---------------------------------------------------------------------------
// A raw NBD client, for handshakes and malformed traffic
// ---------------------------------------------------------------------------

/// NBD protocol constants used by [`RawClient`].
pub mod proto {
    /// "NBDMAGIC".
    pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
    /// "IHAVEOPT".
    pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
    /// Option reply magic.
    pub const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
    /// Request magic.
    pub const REQUEST_MAGIC: u32 = 0x2560_9513;
    /// Simple reply magic.
    pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
    /// Server handshake flag: fixed newstyle.
    pub const FLAG_FIXED_NEWSTYLE: u16 = 1;
    /// Server handshake flag: no zeroes.
    pub const FLAG_NO_ZEROES: u16 = 2;
    /// Client flag: fixed newstyle.
    pub const C_FIXED_NEWSTYLE: u32 = 1;
    /// Client flag: no zeroes.
    pub const C_NO_ZEROES: u32 = 2;
    /// NBD_OPT_EXPORT_NAME.
    pub const OPT_EXPORT_NAME: u32 = 1;
    /// NBD_OPT_ABORT.
    pub const OPT_ABORT: u32 = 2;
    /// NBD_OPT_LIST.
    pub const OPT_LIST: u32 = 3;
    /// NBD_OPT_GO.
    pub const OPT_GO: u32 = 7;
    /// NBD_REP_ACK.
    pub const REP_ACK: u32 = 1;
    /// NBD_REP_INFO.
    pub const REP_INFO: u32 = 3;
    /// NBD_INFO_EXPORT.
    pub const INFO_EXPORT: u16 = 0;
    /// NBD_CMD_READ.
    pub const CMD_READ: u16 = 0;
    /// NBD_CMD_WRITE.
    pub const CMD_WRITE: u16 = 1;
    /// NBD_CMD_DISC.
    pub const CMD_DISC: u16 = 2;
    /// NBD_CMD_FLUSH.
    pub const CMD_FLUSH: u16 = 3;
    /// NBD_FLAG_READ_ONLY (transmission flags).
    pub const FLAG_READ_ONLY: u16 = 1 << 1;
}

/// A minimal blocking NBD client over any stream, with read timeouts, for
/// tests that need exact bytes on the wire.
#[derive(Debug)]
pub struct RawClient {
    /// The connection.
    pub sock: UnixStream,
}

/// Result of a successful handshake with [`RawClient::handshake_go`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Export {
    /// Export size in bytes.
    pub size: u64,
    /// Transmission flags.
    pub flags: u16,
}

impl RawClient {
    /// Connects to a Unix socket (10 s read/write timeouts).
    pub fn connect(path: &Path) -> RawClient {
        let sock =
            UnixStream::connect(path).unwrap_or_else(|e| panic!("connect {}: {e}", path.display()));
        Self::from_stream(sock)
    }

    /// Wraps an existing stream (e.g. one end of a socketpair).
    pub fn from_stream(sock: UnixStream) -> RawClient {
        sock.set_read_timeout(Some(Duration::from_secs(10))).ok();
        sock.set_write_timeout(Some(Duration::from_secs(10))).ok();
        RawClient { sock }
    }

    /// Reads exactly `n` bytes.
    pub fn read_exact(&mut self, n: usize) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; n];
        self.sock.read_exact(&mut buf)?;
        Ok(buf)
    }

    fn read_u16(&mut self) -> io::Result<u16> {
        let b = self.read_exact(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn read_u32(&mut self) -> io::Result<u32> {
        let b = self.read_exact(4)?;
        Ok(u32::from_be_bytes(b[..4].try_into().expect("4 bytes")))
    }

    fn read_u64(&mut self) -> io::Result<u64> {
        let b = self.read_exact(8)?;
        Ok(u64::from_be_bytes(b[..8].try_into().expect("8 bytes")))
    }

    /// Sends raw bytes.
    pub fn send(&mut self, data: &[u8]) -> io::Result<()> {
        self.sock.write_all(data)
    }

    /// Reads the fixed newstyle greeting and answers with the client flags
    /// (fixed newstyle + no zeroes).  Returns the server's handshake flags.
    pub fn greeting(&mut self) -> io::Result<u16> {
        let magic = self.read_u64()?;
        if magic != proto::NBDMAGIC {
            return Err(io::Error::other(format!("bad NBDMAGIC {magic:#x}")));
        }
        let opt = self.read_u64()?;
        if opt != proto::IHAVEOPT {
            return Err(io::Error::other(format!(
                "not a newstyle server (got {opt:#x} after NBDMAGIC)"
            )));
        }
        let flags = self.read_u16()?;
        let mut cflags = proto::C_FIXED_NEWSTYLE;
        if flags & proto::FLAG_NO_ZEROES != 0 {
            cflags |= proto::C_NO_ZEROES;
        }
        self.send(&cflags.to_be_bytes())?;
        Ok(flags)
    }

    /// Sends an option header `IHAVEOPT, option, len` followed by `data`.
    pub fn send_option(&mut self, option: u32, len: u32, data: &[u8]) -> io::Result<()> {
        let mut msg = Vec::with_capacity(16 + data.len());
        msg.extend_from_slice(&proto::IHAVEOPT.to_be_bytes());
        msg.extend_from_slice(&option.to_be_bytes());
        msg.extend_from_slice(&len.to_be_bytes());
        msg.extend_from_slice(data);
        self.send(&msg)
    }

    /// Reads one option reply: (option, reply type, payload).
    pub fn read_option_reply(&mut self) -> io::Result<(u32, u32, Vec<u8>)> {
        let magic = self.read_u64()?;
        if magic != proto::OPT_REPLY_MAGIC {
            return Err(io::Error::other(format!(
                "bad option reply magic {magic:#x}"
            )));
        }
        let option = self.read_u32()?;
        let rtype = self.read_u32()?;
        let len = self.read_u32()?;
        if len > 1 << 20 {
            return Err(io::Error::other(format!("option reply too long ({len})")));
        }
        let data = self.read_exact(len as usize)?;
        Ok((option, rtype, data))
    }

    /// Greeting, then NBD_OPT_GO for export `name`; returns the export.
    pub fn handshake_go(&mut self, name: &str) -> io::Result<Export> {
        self.greeting()?;
        let mut data = Vec::new();
        data.extend_from_slice(&(name.len() as u32).to_be_bytes());
        data.extend_from_slice(name.as_bytes());
        data.extend_from_slice(&0u16.to_be_bytes()); // no info requests
        self.send_option(proto::OPT_GO, data.len() as u32, &data)?;
        let mut export = None;
        for _ in 0..64 {
            let (option, rtype, payload) = self.read_option_reply()?;
            if option != proto::OPT_GO {
                return Err(io::Error::other(format!("reply for option {option}")));
            }
            match rtype {
                proto::REP_ACK => {
                    return export.ok_or_else(|| {
                        io::Error::other("NBD_OPT_GO: ACK without NBD_INFO_EXPORT")
                    });
                }
                proto::REP_INFO
                    if payload.len() >= 12
                        && u16::from_be_bytes([payload[0], payload[1]]) == proto::INFO_EXPORT =>
                {
                    let size = u64::from_be_bytes(payload[2..10].try_into().expect("8"));
                    let flags = u16::from_be_bytes([payload[10], payload[11]]);
                    export = Some(Export { size, flags });
                }
                t if t & 0x8000_0000 != 0 => {
                    return Err(io::Error::other(format!(
                        "NBD_OPT_GO refused: error reply {t:#x} {}",
                        String::from_utf8_lossy(&payload)
                    )));
                }
                _ => {}
            }
        }
        Err(io::Error::other("NBD_OPT_GO: too many replies"))
    }

    /// Sends a request header (and `payload`, for writes).
    pub fn send_request(
        &mut self,
        flags: u16,
        cmd: u16,
        handle: u64,
        offset: u64,
        len: u32,
        payload: &[u8],
    ) -> io::Result<()> {
        let mut msg = Vec::with_capacity(28 + payload.len());
        msg.extend_from_slice(&proto::REQUEST_MAGIC.to_be_bytes());
        msg.extend_from_slice(&flags.to_be_bytes());
        msg.extend_from_slice(&cmd.to_be_bytes());
        msg.extend_from_slice(&handle.to_be_bytes());
        msg.extend_from_slice(&offset.to_be_bytes());
        msg.extend_from_slice(&len.to_be_bytes());
        msg.extend_from_slice(payload);
        self.send(&msg)
    }

    /// Reads a simple reply header: (error, handle).
    pub fn read_simple_reply(&mut self) -> io::Result<(u32, u64)> {
        let magic = self.read_u32()?;
        if magic != proto::SIMPLE_REPLY_MAGIC {
            return Err(io::Error::other(format!(
                "bad simple reply magic {magic:#x}"
            )));
        }
        let error = self.read_u32()?;
        let handle = self.read_u64()?;
        Ok((error, handle))
    }

    /// NBD_CMD_READ with simple replies; returns the data or the NBD error.
    pub fn pread(
        &mut self,
        offset: u64,
        len: u32,
        handle: u64,
    ) -> io::Result<Result<Vec<u8>, u32>> {
        self.send_request(0, proto::CMD_READ, handle, offset, len, &[])?;
        let (error, h) = self.read_simple_reply()?;
        if h != handle {
            return Err(io::Error::other(format!(
                "reply handle {h:#x}, want {handle:#x}"
            )));
        }
        if error != 0 {
            return Ok(Err(error));
        }
        Ok(Ok(self.read_exact(len as usize)?))
    }

    /// NBD_CMD_WRITE; returns the NBD error (0 on success).
    pub fn pwrite(&mut self, offset: u64, data: &[u8], handle: u64) -> io::Result<u32> {
        self.send_request(0, proto::CMD_WRITE, handle, offset, data.len() as u32, data)?;
        let (error, h) = self.read_simple_reply()?;
        if h != handle {
            return Err(io::Error::other(format!(
                "reply handle {h:#x}, want {handle:#x}"
            )));
        }
        Ok(error)
    }

    /// NBD_CMD_DISC (no reply).
    pub fn disconnect(&mut self) -> io::Result<()> {
        self.send_request(0, proto::CMD_DISC, 0, 0, 0, &[])
    }

    /// True if the peer closes the connection (EOF or reset) within
    /// `timeout`; unread bytes are discarded.
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        self.sock
            .set_read_timeout(Some(Duration::from_millis(200)))
            .ok();
        let mut buf = [0u8; 4096];
        for _ in 0..100_000 {
            if Instant::now() >= deadline {
                return false;
            }
            match self.sock.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::TimedOut
                        || e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return true,
            }
        }
        false
    }
}

// ---------------------------------------------------------------------------
// A small JSON reader (for `nbdinfo --json`)
// ---------------------------------------------------------------------------

/// A parsed JSON value.
#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    /// `null`
    Null,
    /// `true` / `false`
    Bool(bool),
    /// A number (integers up to 2^53 are exact).
    Num(f64),
    /// A string.
    Str(String),
    /// An array.
    Arr(Vec<Json>),
    /// An object, in document order.
    Obj(Vec<(String, Json)>),
}

impl Json {
    /// Parses a JSON document.
    pub fn parse(text: &str) -> Result<Json, String> {
        let mut p = JsonParser {
            s: text.as_bytes(),
            i: 0,
            depth: 0,
        };
        let v = p.value()?;
        p.ws();
        if p.i != p.s.len() {
            return Err(format!("trailing characters at offset {}", p.i));
        }
        Ok(v)
    }

    /// Member `key` of an object.
    pub fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Obj(m) => m.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The value as a bool.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Json::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// The value as a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Json::Num(n) if *n >= 0.0 && n.fract() == 0.0 => Some(*n as u64),
            _ => None,
        }
    }

    /// The value as a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Json::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The value as an array.
    pub fn as_array(&self) -> Option<&[Json]> {
        match self {
            Json::Arr(a) => Some(a),
            _ => None,
        }
    }
}

struct JsonParser<'a> {
    s: &'a [u8],
    i: usize,
    depth: u32,
}

impl JsonParser<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && matches!(self.s[self.i], b' ' | b'\t' | b'\n' | b'\r') {
            self.i += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn expect(&mut self, c: u8) -> Result<(), String> {
        self.ws();
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(format!("expected '{}' at offset {}", c as char, self.i))
        }
    }

    fn value(&mut self) -> Result<Json, String> {
        self.ws();
        self.depth += 1;
        if self.depth > 64 {
            return Err("JSON nested too deeply".into());
        }
        let v = match self.peek() {
            Some(b'{') => {
                self.i += 1;
                let mut m = Vec::new();
                self.ws();
                if self.peek() == Some(b'}') {
                    self.i += 1;
                } else {
                    loop {
                        self.ws();
                        let k = self.string()?;
                        self.expect(b':')?;
                        let v = self.value()?;
                        m.push((k, v));
                        self.ws();
                        match self.peek() {
                            Some(b',') => self.i += 1,
                            Some(b'}') => {
                                self.i += 1;
                                break;
                            }
                            _ => return Err(format!("expected ',' or '}}' at {}", self.i)),
                        }
                    }
                }
                Json::Obj(m)
            }
            Some(b'[') => {
                self.i += 1;
                let mut a = Vec::new();
                self.ws();
                if self.peek() == Some(b']') {
                    self.i += 1;
                } else {
                    loop {
                        a.push(self.value()?);
                        self.ws();
                        match self.peek() {
                            Some(b',') => self.i += 1,
                            Some(b']') => {
                                self.i += 1;
                                break;
                            }
                            _ => return Err(format!("expected ',' or ']' at {}", self.i)),
                        }
                    }
                }
                Json::Arr(a)
            }
            Some(b'"') => Json::Str(self.string()?),
            Some(b't') => self.word("true", Json::Bool(true))?,
            Some(b'f') => self.word("false", Json::Bool(false))?,
            Some(b'n') => self.word("null", Json::Null)?,
            Some(c) if c == b'-' || c.is_ascii_digit() => {
                let start = self.i;
                while self.i < self.s.len()
                    && matches!(
                        self.s[self.i],
                        b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'
                    )
                {
                    self.i += 1;
                }
                let t = core::str::from_utf8(&self.s[start..self.i]).map_err(|e| e.to_string())?;
                Json::Num(t.parse().map_err(|_| format!("bad number {t:?}"))?)
            }
            _ => return Err(format!("unexpected input at offset {}", self.i)),
        };
        self.depth -= 1;
        Ok(v)
    }

    fn word(&mut self, w: &str, v: Json) -> Result<Json, String> {
        if self.s[self.i..].starts_with(w.as_bytes()) {
            self.i += w.len();
            Ok(v)
        } else {
            Err(format!("unexpected input at offset {}", self.i))
        }
    }

    fn string(&mut self) -> Result<String, String> {
        if self.peek() != Some(b'"') {
            return Err(format!("expected string at offset {}", self.i));
        }
        self.i += 1;
        let mut out = Vec::new();
        loop {
            let c = self.peek().ok_or("unterminated string")?;
            self.i += 1;
            match c {
                b'"' => break,
                b'\\' => {
                    let e = self.peek().ok_or("unterminated escape")?;
                    self.i += 1;
                    match e {
                        b'n' => out.push(b'\n'),
                        b't' => out.push(b'\t'),
                        b'r' => out.push(b'\r'),
                        b'b' => out.push(8),
                        b'f' => out.push(12),
                        b'u' => {
                            let hex = self.s.get(self.i..self.i + 4).ok_or("short \\u escape")?;
                            let hex = core::str::from_utf8(hex).map_err(|e| e.to_string())?;
                            let cp = u32::from_str_radix(hex, 16).map_err(|e| e.to_string())?;
                            self.i += 4;
                            let ch = char::from_u32(cp).unwrap_or('\u{fffd}');
                            let mut b = [0u8; 4];
                            out.extend_from_slice(ch.encode_utf8(&mut b).as_bytes());
                        }
                        other => out.push(other),
                    }
                }
                other => out.push(other),
            }
        }
        String::from_utf8(out).map_err(|e| e.to_string())
    }
}

// ---------------------------------------------------------------------------
// Plugins built as shared objects beside the binary
// ---------------------------------------------------------------------------

/// Whether `nbdkit NAME` loads this workspace's plugin built beside the
/// binary under test (`libnbdkit_NAME_plugin.so`), not another object of
/// that name (Debian's C plugin): the failure names the cargo package to
/// build. Always true for the reference.
pub fn plugin_built_beside(name: &str) -> Result<(), String> {
    let o = run(nbdkit_cmd().args([name, "--dump-plugin"]), CMD_TIMEOUT);
    if !o.success() {
        return Err(format!(
            "nbdkit {name} --dump-plugin failed: {}",
            o.describe()
        ));
    }
    if is_reference() {
        return Ok(());
    }
    let bin = fs::canonicalize(nbdkit_bin()).map_err(|e| e.to_string())?;
    let dir = bin.parent().unwrap_or(Path::new("/"));
    let path = o
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("path="))
        .unwrap_or_default()
        .to_string();
    let beside = [
        dir.join(format!("libnbdkit_{name}_plugin.so")),
        dir.join(format!("nbdkit-{name}-plugin.so")),
    ];
    if beside.iter().any(|p| Path::new(&path) == p) {
        Ok(())
    } else {
        Err(format!(
            "`nbdkit {name}` loaded {path:?}, not the plugin built beside {}: build it \
             with `cargo build -p nbdkit-{name}-plugin` (add --release for a release \
             nbdkit)",
            bin.display()
        ))
    }
}

/// `qemu-img convert` and `nbdcopy` of the export at `uri` both equal
/// `want`.
pub fn assert_copies_equal(uri: &str, want: &[u8], what: &str) {
    let dir = TempDir::new();
    let out = dir.join("out.img");
    run_tool(
        "qemu-img",
        ["convert", "-f", "raw", "-O", "raw", uri, path_str(&out)],
    )
    .assert_success();
    assert_bytes_eq(
        &format!("{what}: qemu-img convert"),
        &fs::read(&out).expect("read out.img"),
        want,
    );
    fs::remove_file(&out).ok();
    run_tool("nbdcopy", [uri, path_str(&out)]).assert_success();
    assert_bytes_eq(
        &format!("{what}: nbdcopy"),
        &fs::read(&out).expect("read out.img"),
        want,
    );
}

/// A C plugin `dir/nbdkit-fake-plugin.so` linked against a library with
/// the soname `soname` that is then removed, so that loading the plugin
/// fails as when an interpreter library (libpython, libperl, libtcl) is
/// not installed. Needs gcc.
pub fn plugin_needing_missing_library(dir: &TempDir, soname: &str) -> PathBuf {
    let c = dir.join("fake-empty.c");
    std::fs::write(&c, "int nbdkit_test_fake (void) { return 0; }\n").unwrap();
    let lib = dir.join(soname);
    let o = run(
        Command::new("gcc")
            .args(["-shared", "-fPIC"])
            .arg(format!("-Wl,-soname,{soname}"))
            .arg("-o")
            .arg(&lib)
            .arg(&c),
        CMD_TIMEOUT,
    );
    assert!(o.success(), "{}", o.describe());
    let plugin = dir.join("nbdkit-fake-plugin.so");
    let o = run(
        Command::new("gcc")
            .args(["-shared", "-fPIC", "-o"])
            .arg(&plugin)
            .arg(&c)
            .arg("-Wl,--no-as-needed")
            .arg(&lib),
        CMD_TIMEOUT,
    );
    assert!(o.success(), "{}", o.describe());
    std::fs::remove_file(&lib).unwrap();
    plugin
}

/// qemu-img then nbdcopy write `len` bytes of random data (seeds `seed`
/// and `seed + 1`) to the export at `uri` and read them back byte for byte.
pub fn round_trip_qemu_img_and_nbdcopy(dir: &TempDir, uri: &str, len: usize, seed: u64) {
    let input = dir.join("in.img");
    let want = write_random_file(&input, len, seed);
    let o = run_tool(
        "qemu-img",
        [
            "convert",
            "-n",
            "-f",
            "raw",
            "-O",
            "raw",
            path_str(&input),
            uri,
        ],
    );
    assert!(o.success(), "qemu-img convert to nbd: {}", o.describe());
    let back = dir.join("back-qemu.img");
    let o = run_tool(
        "qemu-img",
        ["convert", "-f", "raw", "-O", "raw", uri, path_str(&back)],
    );
    assert!(o.success(), "qemu-img convert from nbd: {}", o.describe());
    assert_bytes_eq("qemu-img round trip", &fs::read(&back).unwrap(), &want);

    let input2 = dir.join("in2.img");
    let want2 = write_random_file(&input2, len, seed + 1);
    let o = run_tool("nbdcopy", [path_str(&input2), uri]);
    assert!(o.success(), "nbdcopy to nbd: {}", o.describe());
    let back2 = dir.join("back-nbdcopy.img");
    let o = run_tool("nbdcopy", [uri, path_str(&back2)]);
    assert!(o.success(), "nbdcopy from nbd: {}", o.describe());
    assert_bytes_eq("nbdcopy round trip", &fs::read(&back2).unwrap(), &want2);
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn json_parses_nbdinfo_shape() {
        let j = Json::parse(r#"{ "a": [1, 2.5, "x\"y"], "b": true, "c": null, "d": {"e": -3} }"#)
            .unwrap();
        assert_eq!(j.get("a").unwrap().as_array().unwrap().len(), 3);
        assert_eq!(j.get("b").unwrap().as_bool(), Some(true));
        assert_eq!(j.get("c"), Some(&Json::Null));
        assert_eq!(
            j.get("a").unwrap().as_array().unwrap()[2].as_str(),
            Some("x\"y")
        );
        assert!(Json::parse("[1,").is_err());
    }

    #[test]
    fn prng_is_deterministic() {
        assert_eq!(Prng::new(1).bytes(100), Prng::new(1).bytes(100));
        assert_ne!(Prng::new(1).bytes(100), Prng::new(2).bytes(100));
    }

    #[test]
    fn first_difference_finds_length_mismatch() {
        assert_eq!(first_difference(b"abc", b"abc"), None);
        assert_eq!(first_difference(b"abc", b"abd"), Some(2));
        assert_eq!(first_difference(b"ab", b"abc"), Some(2));
    }
}
