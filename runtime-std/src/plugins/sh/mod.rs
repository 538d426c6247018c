//! The script protocol shared by the `sh` and `eval` plugins.
//!
//! Every plugin method runs an executable as `SCRIPT METHOD ARGS...`, with
//! `$tmpdir` in its environment (a private directory removed when nbdkit
//! exits). Its exit status says what happened:
//!
//! - 0: success; the method's result, if any, is on stdout;
//! - 1 and 4..: failure; stderr may start with an errno name (`ENOSPC`,
//!   `EIO`, ...; case-insensitive) followed by whitespace and a message;
//! - 2: the script does not implement the method (nbdkit's default applies);
//! - 3: false, for the boolean `can_*` methods.
//!
//! `pwrite` data goes to the script's stdin and `pread` data comes from
//! its stdout. Arguments are passed as an argument vector, never through a
//! shell command line. The methods, their arguments and the way their
//! output is parsed are nbdkit's (see nbdkit-sh-plugin(3)).

pub mod eval;
#[allow(clippy::module_inception)] // the sh plugin inside the script-plugin folder
pub mod sh;

use std::ffi::{OsStr, OsString};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use nbdkit_core::backend::{
    BlockSize, Error, Exports, Extents, Flags, Handle, OpenArgs, Result, Support, ThreadModel,
};
use nbdkit_core::errno::Errno;
use nbdkit_core::plugins::size_param;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::log;

/// The Plugin callbacks that the sh and eval plugins pass straight to their
/// scripts; `$get` is the method that returns the configured `Scripts`.
macro_rules! forward_to_scripts {
    ($get:ident) => {
        fn get_ready(&self) -> Result<()> {
            self.$get()?.call_void("get_ready", &[])
        }

        fn after_fork(&self) -> Result<()> {
            self.$get()?.call_void("after_fork", &[])
        }

        fn cleanup(&self) {
            if let Some(s) = &self.scripts {
                s.unload();
            }
        }

        fn preconnect(&self, readonly: bool, _peer: &nbdkit_core::backend::Peer) -> Result<()> {
            self.$get()?.preconnect(readonly)
        }

        fn list_exports(&self, readonly: bool, is_tls: bool, exports: &mut Exports) -> Result<()> {
            self.$get()?.list_exports(readonly, is_tls, exports)
        }

        fn default_export(&self, readonly: bool, is_tls: bool) -> Result<Option<String>> {
            self.$get()?.default_export(readonly, is_tls)
        }

        fn open(&self, args: &OpenArgs<'_>) -> Result<Box<dyn Handle>> {
            self.$get()?.open(args)
        }
    };
}
pub(crate) use forward_to_scripts;

/// The `has_*` callbacks both plugins print in `--dump-plugin`.
pub(crate) const CALLBACKS: &[&str] = &[
    "load",
    "unload",
    "dump_plugin",
    "config",
    "config_complete",
    "config_help",
    "thread_model",
    "get_ready",
    "after_fork",
    "preconnect",
    "list_exports",
    "default_export",
    "open",
    "close",
    "export_description",
    "get_size",
    "block_size",
    "can_write",
    "can_flush",
    "is_rotational",
    "can_trim",
    "can_zero",
    "can_fast_zero",
    "can_extents",
    "can_fua",
    "can_multi_conn",
    "can_cache",
    "pread",
    "pwrite",
    "flush",
    "trim",
    "zero",
    "extents",
    "cache",
];

/// The highest exit status with a meaning (`max_known_status` in
/// `--dump-plugin`).
const MAX_KNOWN_STATUS: u8 = 3;

/// Most output kept from a method other than `pread` (export lists,
/// extents, ...): more is an error rather than unbounded memory.
const MAX_OUTPUT: usize = 64 << 20;

/// Most of stderr kept for the error message.
const MAX_STDERR: usize = 64 << 10;

/// Largest inline script read from stdin (`nbdkit sh -`).
const MAX_INLINE_SCRIPT: u64 = 64 << 20;

/// What a script's exit status means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Code {
    /// 0: success.
    Ok,
    /// 1 and 4..=255, or killed by a signal: failure.
    Error,
    /// 2: the method is not implemented.
    Missing,
    /// 3: false.
    False,
}

/// What one run of a script produced.
#[derive(Debug)]
pub(crate) struct Reply {
    /// The meaning of its exit status.
    pub(crate) code: Code,
    /// Its stdout (empty when the caller gave a buffer of its own).
    pub(crate) out: Vec<u8>,
    /// How many bytes it wrote on stdout in all.
    pub(crate) out_len: u64,
    /// The start of its stderr.
    pub(crate) err: Vec<u8>,
}

impl Reply {
    /// Stdout as text, without one trailing newline (as nbdkit strips it).
    fn text(&self) -> String {
        let out = self.out.strip_suffix(b"\n").unwrap_or(&self.out);
        String::from_utf8_lossy(out).into_owned()
    }
}

/// The private directory in `$tmpdir`, removed with everything in it
/// when dropped.
#[derive(Debug)]
pub(crate) struct TmpDir(PathBuf);

impl TmpDir {
    /// Create `${TMPDIR:-/tmp}/nbdkitXXXXXX`.
    pub(crate) fn new() -> Result<TmpDir> {
        let base = std::env::var_os("TMPDIR")
            .filter(|t| !t.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/tmp"));
        let template = base.join("nbdkitXXXXXX");
        nix::unistd::mkdtemp(&template).map(TmpDir).map_err(|e| {
            Error::msg(
                crate::os::errno::from_os(e as i32),
                format!("mkdtemp: {}", e.desc()),
            )
        })
    }

    /// The directory.
    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TmpDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Where a script's stdout goes.
enum Sink<'a> {
    /// Into a buffer the caller owns (`pread`): excess is counted and
    /// dropped.
    Buf(&'a mut [u8]),
    /// Into a vector, up to [`MAX_OUTPUT`].
    Vec(Vec<u8>),
}

/// Whether `path` starts with a `#!` line naming nbdkit as its interpreter.
fn shebang_is_nbdkit(path: &Path) -> bool {
    let mut head = [0u8; 256];
    let n = match std::fs::File::open(path).and_then(|mut f| io::Read::read(&mut f, &mut head)) {
        Ok(n) => n,
        Err(_) => return false,
    };
    let Some(line) = head[..n].strip_prefix(b"#!") else {
        return false;
    };
    let line = line.split(|&b| b == b'\n').next().unwrap_or(&[]);
    let interpreter = line
        .split(|b| b.is_ascii_whitespace())
        .find(|w| !w.is_empty())
        .unwrap_or(&[]);
    let name = interpreter.rsplit(|&b| b == b'/').next().unwrap_or(&[]);
    if name == b"nbdkit" {
        return true;
    }
    // Or this very binary, whatever it is called.
    match (std::env::current_exe(), std::str::from_utf8(interpreter)) {
        (Ok(exe), Ok(i)) => std::fs::canonicalize(i).is_ok_and(|p| p == exe),
        _ => false,
    }
}

/// Run `path ARGS...` with `$tmpdir` set, feeding it `input` and capturing
/// its output. Never fails: a script that cannot be started is reported
/// as one that failed with the reason on stderr, as nbdkit's forked child
/// does when `execvp` fails.
/// `via_shell` runs the script with /bin/sh whatever its `#!` line says
/// (see [`shebang_is_nbdkit`]).
fn run(
    path: &Path,
    via_shell: bool,
    args: &[&OsStr],
    tmpdir: &Path,
    input: &[u8],
    buf: Option<&mut [u8]>,
) -> Reply {
    let mut sink = match buf {
        Some(b) => Sink::Buf(b),
        None => Sink::Vec(Vec::new()),
    };
    let spawn = |program: &Path, first: Option<&Path>| {
        let mut cmd = Command::new(program);
        if let Some(f) = first {
            cmd.arg(f);
        }
        cmd.args(args)
            .env("tmpdir", tmpdir)
            .stdin(if input.is_empty() {
                Stdio::null()
            } else {
                Stdio::piped()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd.spawn()
    };
    // A script without `#!` is run by /bin/sh, as execvp(3) does. So is a
    // shebang script whose interpreter is nbdkit itself (`#!/usr/sbin/nbdkit
    // sh`): executing it would start another nbdkit, forever.
    let child = if via_shell {
        spawn(Path::new("/bin/sh"), Some(path))
    } else {
        match spawn(path, None) {
            Err(e) if e.raw_os_error() == Some(libc::ENOEXEC) => {
                spawn(Path::new("/bin/sh"), Some(path))
            }
            r => r,
        }
    };
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            let reason = match e.raw_os_error() {
                Some(code) => strerror(code),
                None => e.to_string(),
            };
            return Reply {
                code: Code::Error,
                out: Vec::new(),
                out_len: 0,
                err: format!("{}: {reason}\n", path.display()).into_bytes(),
            };
        }
    };
    let mut out_len = 0u64;
    let mut err = Vec::new();
    if let Err(e) = pump(&mut child, input, &mut sink, &mut out_len, &mut err) {
        let _ = child.kill();
        let _ = child.wait();
        return Reply {
            code: Code::Error,
            out: Vec::new(),
            out_len,
            err: format!("{}: {e}\n", path.display()).into_bytes(),
        };
    }
    let status = loop {
        match child.wait() {
            Ok(s) => break Some(s),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break None,
        }
    };
    let code = match status {
        Some(s) => match (s.code(), s.signal()) {
            (Some(0), _) => Code::Ok,
            (Some(2), _) => Code::Missing,
            (Some(3), _) => Code::False,
            (Some(_), _) => Code::Error,
            (None, Some(sig)) => {
                log::error(
                    None,
                    &format!("{}: script terminated by signal {sig}", path.display()),
                );
                Code::Error
            }
            (None, None) => {
                log::error(
                    None,
                    &format!("{}: script was stopped or ended oddly", path.display()),
                );
                Code::Error
            }
        },
        None => Code::Error,
    };
    let out = match sink {
        Sink::Buf(_) => Vec::new(),
        Sink::Vec(v) => v,
    };
    Reply {
        code,
        out,
        out_len,
        err,
    }
}

/// Write `input` to the child's stdin while reading its stdout and
/// stderr, until both reach end of file.
fn pump(
    child: &mut Child,
    input: &[u8],
    sink: &mut Sink<'_>,
    out_len: &mut u64,
    err: &mut Vec<u8>,
) -> io::Result<()> {
    let mut stdin = child.stdin.take();
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    for fd in [
        stdin.as_ref().map(|f| f.as_fd()),
        stdout.as_ref().map(|f| f.as_fd()),
        stderr.as_ref().map(|f| f.as_fd()),
    ]
    .into_iter()
    .flatten()
    {
        let raw = fd.as_raw_fd();
        let fl = OFlag::from_bits_truncate(fcntl(raw, FcntlArg::F_GETFL)?);
        fcntl(raw, FcntlArg::F_SETFL(fl | OFlag::O_NONBLOCK))?;
    }
    let mut written = 0usize;
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        if written >= input.len() {
            stdin = None; // end of file for the script
        }
        if stdin.is_none() && stdout.is_none() && stderr.is_none() {
            return Ok(());
        }
        let mut ready = [false; 3];
        {
            let mut fds = Vec::with_capacity(3);
            let mut which = Vec::with_capacity(3);
            if let Some(f) = &stdin {
                fds.push(PollFd::new(f.as_fd(), PollFlags::POLLOUT));
                which.push(0);
            }
            if let Some(f) = &stdout {
                fds.push(PollFd::new(f.as_fd(), PollFlags::POLLIN));
                which.push(1);
            }
            if let Some(f) = &stderr {
                fds.push(PollFd::new(f.as_fd(), PollFlags::POLLIN));
                which.push(2);
            }
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
            for (fd, w) in fds.iter().zip(which) {
                ready[w] = fd.revents().is_some_and(|r| !r.is_empty());
            }
        }
        if ready[0] {
            if let Some(f) = stdin.as_mut() {
                match f.write(&input[written..]) {
                    Ok(n) => written += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    // The script does not want (the rest of) its input.
                    Err(_) => written = input.len(),
                }
            }
        }
        if ready[1] {
            if let Some(f) = stdout.as_mut() {
                match f.read(&mut chunk) {
                    Ok(0) => stdout = None,
                    Ok(n) => {
                        let start = *out_len;
                        *out_len += n as u64;
                        match sink {
                            Sink::Buf(b) => {
                                if start < b.len() as u64 {
                                    let s = start as usize;
                                    let m = n.min(b.len() - s);
                                    b[s..s + m].copy_from_slice(&chunk[..m]);
                                }
                            }
                            Sink::Vec(v) => {
                                if v.len() + n > MAX_OUTPUT {
                                    return Err(io::Error::other("script output is too large"));
                                }
                                v.extend_from_slice(&chunk[..n]);
                            }
                        }
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                        ) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        if ready[2] {
            if let Some(f) = stderr.as_mut() {
                match f.read(&mut chunk) {
                    Ok(0) => stderr = None,
                    Ok(n) => {
                        let room = MAX_STDERR.saturating_sub(err.len());
                        err.extend_from_slice(&chunk[..n.min(room)]);
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                        ) => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
}

/// The C library's text for an errno.
fn strerror(code: i32) -> String {
    nix::errno::Errno::from_raw(code).desc().to_string()
}

/// The errno names a script may print first on stderr: those the NBD
/// protocol has errors for, and those nbdkit's server maps specially.
const ERRNO_NAMES: &[(&str, Errno)] = &[
    ("EPERM", Errno::EPERM),
    ("EIO", Errno::EIO),
    ("ENOMEM", Errno::ENOMEM),
    ("EINVAL", Errno::EINVAL),
    ("ENOSPC", Errno::ENOSPC),
    ("EOVERFLOW", Errno::EOVERFLOW),
    ("ESHUTDOWN", Errno::ESHUTDOWN),
    ("ENOTSUP", Errno::ENOTSUP),
    ("EOPNOTSUPP", Errno::ENOTSUP),
    ("EROFS", Errno::EROFS),
    ("EDQUOT", Errno::EDQUOT),
    ("EFBIG", Errno::EFBIG),
];

/// Split a failed script's stderr into the errno it names (EIO when it
/// names none) and the message: what follows the name and any whitespace,
/// up to the end of the first line. `None` when stderr is empty.
pub(crate) fn parse_error(stderr: &[u8]) -> Option<(Errno, String)> {
    if stderr.is_empty() {
        return None;
    }
    let mut errno = Errno::EIO;
    let mut rest = stderr;
    for (name, e) in ERRNO_NAMES {
        let n = name.len();
        if stderr.len() >= n
            && stderr[..n].eq_ignore_ascii_case(name.as_bytes())
            && stderr.get(n).map_or(true, |c| is_c_space(*c))
        {
            errno = *e;
            rest = &stderr[n..];
            while let [c, tail @ ..] = rest {
                if !is_c_space(*c) {
                    break;
                }
                rest = tail;
            }
            break;
        }
    }
    let line = rest.split(|c| *c == b'\n').next().unwrap_or_default();
    Some((errno, String::from_utf8_lossy(line).into_owned()))
}

/// isspace(3) in the C locale.
fn is_c_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

/// The error for a script that failed.
pub(crate) fn script_error(argv0: &Path, reply: &Reply) -> Error {
    match parse_error(&reply.err) {
        Some((errno, msg)) => Error::msg(errno, format!("{}: {msg}", argv0.display())),
        None => Error::msg(
            Errno::EIO,
            format!(
                "{}: script exited with error, but did not print an error message on stderr",
                argv0.display()
            ),
        ),
    }
}

/// An EIO error about a script's behaviour.
fn protocol_error(argv0: &Path, what: impl std::fmt::Display) -> Error {
    Error::msg(Errno::EIO, format!("{}: {what}", argv0.display()))
}

/// The error for exit status 3 from a method that does not return a
/// boolean.
fn unexpected_false(argv0: &Path, method: &str) -> Error {
    protocol_error(
        argv0,
        format_args!("{method} method returned unexpected code (3/false)"),
    )
}

/// `true`/`false` as scripts see booleans.
fn tf(b: bool) -> &'static OsStr {
    OsStr::new(if b { "true" } else { "false" })
}

/// The flags argument: a comma-separated list, possibly empty.
fn flags_arg(flags: Flags) -> OsString {
    let mut words = Vec::new();
    if flags.contains(Flags::FUA) {
        words.push("fua");
    }
    if flags.contains(Flags::MAY_TRIM) {
        words.push("may_trim");
    }
    if flags.contains(Flags::REQ_ONE) {
        words.push("req_one");
    }
    if flags.contains(Flags::FAST_ZERO) {
        words.push("fast");
    }
    OsString::from(words.join(","))
}

/// Parse a size that a script printed, logging nbdkit's parse error.
fn parse_script_size(s: &str) -> Option<u64> {
    match size_param(s) {
        Ok(n) => Some(n),
        Err(e) => {
            log::error(None, &e.to_string());
            None
        }
    }
}

/// The complete lines of `out` (an unterminated last line is ignored,
/// as nbdkit does for export lists).
fn complete_lines(out: &[u8]) -> Vec<&[u8]> {
    let mut lines: Vec<&[u8]> = out.split(|c| *c == b'\n').collect();
    lines.pop(); // what follows the last newline
    lines
}

/// How an export list is laid out (its optional first line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ListMode {
    Names,
    Interleaved,
    NamesDescriptions,
}

/// The mode named by the first line, and the rest of the output.
fn list_mode(out: &[u8]) -> (ListMode, &[u8]) {
    for (head, mode) in [
        (&b"INTERLEAVED\n"[..], ListMode::Interleaved),
        (&b"NAMES+DESCRIPTIONS\n"[..], ListMode::NamesDescriptions),
        (&b"NAMES\n"[..], ListMode::Names),
    ] {
        if let Some(rest) = out.strip_prefix(head) {
            return (mode, rest);
        }
    }
    (ListMode::Names, out)
}

/// Parse `list_exports` output into names and descriptions.
pub(crate) fn parse_exports(out: &[u8]) -> Vec<(String, Option<String>)> {
    let (mode, rest) = list_mode(out);
    let lines = complete_lines(rest);
    let text = |l: &[u8]| String::from_utf8_lossy(l).into_owned();
    match mode {
        ListMode::Names => lines.iter().map(|l| (text(l), None)).collect(),
        ListMode::Interleaved => lines
            .chunks(2)
            .map(|p| (text(p[0]), p.get(1).map(|d| text(d))))
            .collect(),
        ListMode::NamesDescriptions => {
            let names = lines.len().div_ceil(2);
            (0..names)
                .map(|i| (text(lines[i]), lines.get(names + i).map(|d| text(d))))
                .collect()
        }
    }
}

/// Parse `default_export` output: the first name listed, or `""`.
pub(crate) fn parse_default_export(out: &[u8]) -> String {
    let (_, rest) = list_mode(out);
    let first = rest.split(|c| *c == b'\n').next().unwrap_or_default();
    String::from_utf8_lossy(first).into_owned()
}

/// Parse `extents` output: `offset length [type]` lines, where type is a
/// number or a comma-separated list of `hole` and `zero`.
pub(crate) fn parse_extents(argv0: &Path, out: &[u8]) -> Result<Vec<(u64, u64, u32)>> {
    let mut lines: Vec<&[u8]> = out.split(|c| *c == b'\n').collect();
    if lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    let mut list = Vec::with_capacity(lines.len().min(Extents::MAX));
    for line in lines {
        let text = String::from_utf8_lossy(line);
        let cannot = || protocol_error(argv0, format_args!("extents: cannot parse {text}"));
        let mut words = text.split([' ', '\t']).filter(|w| !w.is_empty());
        let (Some(off), Some(len)) = (words.next(), words.next()) else {
            return Err(cannot());
        };
        // A bad size is reported by the size parser alone, as in nbdkit.
        let size = |w: &str| {
            size_param(w).map_err(|e| Error {
                errno: Errno::EIO,
                ..e
            })
        };
        let offset = size(off)?;
        let length = size(len)?;
        let flags = match words.next() {
            None => 0,
            Some(t) if t.bytes().all(|c| c.is_ascii_digit()) => {
                (t.parse::<u64>().unwrap_or(0) & 3) as u32
            }
            Some(t) => t.split(',').fold(0, |f, w| match w {
                "hole" => f | 1,
                "zero" => f | 2,
                _ => f,
            }),
        };
        if list.len() >= Extents::MAX {
            break;
        }
        list.push((offset, length, flags));
    }
    Ok(list)
}

/// Parse a `can_fua`/`can_cache` answer.
fn parse_support(s: &str) -> Option<Support> {
    Some(match s.to_ascii_lowercase().as_str() {
        "none" => Support::None,
        "emulate" => Support::Emulate,
        "native" => Support::Native,
        _ => return None,
    })
}

/// Which executable serves a method.
#[derive(Debug)]
pub(crate) enum Kind {
    /// `sh`: one script for every method.
    Sh(PathBuf),
    /// `eval`: `$tmpdir/METHOD` for each method given (its file exists),
    /// `$tmpdir/missing` for the others.
    Eval,
}

/// A configured script plugin: what runs each method, and `$tmpdir`.
#[derive(Debug)]
pub(crate) struct Scripts {
    pub(crate) tmpdir: TmpDir,
    pub(crate) kind: Kind,
    thread_model: OnceLock<ThreadModel>,
    /// The sh script names nbdkit as its interpreter: run it with /bin/sh.
    via_shell: OnceLock<bool>,
    unloaded: AtomicBool,
    unload_on_drop: AtomicBool,
}

impl Scripts {
    pub(crate) fn new(tmpdir: TmpDir, kind: Kind) -> Scripts {
        Scripts {
            tmpdir,
            kind,
            thread_model: OnceLock::new(),
            via_shell: OnceLock::new(),
            unloaded: AtomicBool::new(false),
            unload_on_drop: AtomicBool::new(false),
        }
    }

    /// The executable for `method`.
    pub(crate) fn path(&self, method: &str) -> PathBuf {
        match &self.kind {
            Kind::Sh(p) => p.clone(),
            Kind::Eval => {
                let p = self.tmpdir.path().join(method);
                if p.is_file() {
                    p
                } else {
                    self.tmpdir.path().join("missing")
                }
            }
        }
    }

    /// Run `method` with `args`; returns the executable's path (for
    /// messages) and what it did.
    fn call_with(
        &self,
        method: &str,
        args: &[&OsStr],
        input: &[u8],
        buf: Option<&mut [u8]>,
    ) -> (PathBuf, Reply) {
        let path = self.path(method);
        let mut argv: Vec<&OsStr> = Vec::with_capacity(args.len() + 1);
        argv.push(OsStr::new(method));
        argv.extend_from_slice(args);
        let via_shell = match &self.kind {
            Kind::Sh(p) => *self.via_shell.get_or_init(|| shebang_is_nbdkit(p)),
            Kind::Eval => false,
        };
        let reply = run(&path, via_shell, &argv, self.tmpdir.path(), input, buf);
        (path, reply)
    }

    pub(crate) fn call(&self, method: &str, args: &[&OsStr]) -> (PathBuf, Reply) {
        self.call_with(method, args, &[], None)
    }

    /// A method whose only result is success: missing is success too.
    pub(crate) fn call_void(&self, method: &str, args: &[&OsStr]) -> Result<()> {
        let (path, r) = self.call(method, args);
        match r.code {
            Code::Ok | Code::Missing => Ok(()),
            Code::Error => Err(script_error(&path, &r)),
            Code::False => Err(unexpected_false(&path, method)),
        }
    }

    /// A method that prints a line of text; `None` when missing.
    fn call_text(&self, method: &str, args: &[&OsStr]) -> Result<Option<(PathBuf, String)>> {
        let (path, r) = self.call(method, args);
        match r.code {
            Code::Ok => {
                let t = r.text();
                Ok(Some((path, t)))
            }
            Code::Missing => Ok(None),
            Code::Error => Err(script_error(&path, &r)),
            Code::False => Err(unexpected_false(&path, method)),
        }
    }

    /// `thread_model`: the script's choice, asked once. Unrecognised
    /// output and a missing method give `serialize_all_requests`.
    pub(crate) fn thread_model(&self) -> Result<ThreadModel> {
        if let Some(m) = self.thread_model.get() {
            return Ok(*m);
        }
        let model = match self.call_text("thread_model", &[])? {
            Some((path, t)) => ThreadModel::from_name(&t).unwrap_or_else(|| {
                log::debug(
                    None,
                    format_args!(
                        "{}: unrecognized thread model: {t}, using serialize_all_requests",
                        path.display()
                    ),
                );
                ThreadModel::SerializeAllRequests
            }),
            None => ThreadModel::SerializeAllRequests,
        };
        Ok(*self.thread_model.get_or_init(|| model))
    }

    /// The chosen thread model, for `Plugin::thread_model` (errors were
    /// already reported by `config_complete`).
    pub(crate) fn chosen_thread_model(&self) -> ThreadModel {
        self.thread_model().unwrap_or_else(|e| {
            log::error(None, &e.to_string());
            ThreadModel::SerializeAllRequests
        })
    }

    /// `dump_plugin`: `max_known_status=` and whatever the script prints,
    /// straight to stdout.
    pub(crate) fn dump_plugin(&self) {
        let (path, r) = self.call("dump_plugin", &[]);
        let mut o = io::stdout().lock();
        let _ = writeln!(o, "max_known_status={MAX_KNOWN_STATUS}");
        match r.code {
            Code::Ok => {
                let _ = o.write_all(&r.out);
            }
            Code::Missing => {}
            Code::Error => log::error(None, &script_error(&path, &r).to_string()),
            Code::False => log::error(None, &unexpected_false(&path, "dump_plugin").to_string()),
        }
        let _ = o.flush();
    }

    pub(crate) fn preconnect(&self, readonly: bool) -> Result<()> {
        self.call_void("preconnect", &[tf(readonly)])
    }

    pub(crate) fn list_exports(
        &self,
        readonly: bool,
        is_tls: bool,
        exports: &mut Exports,
    ) -> Result<()> {
        let (path, r) = self.call("list_exports", &[tf(readonly), tf(is_tls)]);
        match r.code {
            Code::Ok => {
                for (name, desc) in parse_exports(&r.out) {
                    exports.add(&name, desc.as_deref())?;
                }
                Ok(())
            }
            Code::Missing => {
                exports.use_default = true;
                Ok(())
            }
            Code::Error => Err(script_error(&path, &r)),
            Code::False => Err(unexpected_false(&path, "list_exports")),
        }
    }

    pub(crate) fn default_export(&self, readonly: bool, is_tls: bool) -> Result<Option<String>> {
        let (path, r) = self.call("default_export", &[tf(readonly), tf(is_tls)]);
        match r.code {
            Code::Ok => Ok(Some(parse_default_export(&r.out))),
            Code::Missing => Ok(Some(String::new())),
            Code::Error => Err(script_error(&path, &r)),
            Code::False => Err(unexpected_false(&path, "default_export")),
        }
    }

    /// `open`: the handle the script prints (`""` when it has no open).
    pub(crate) fn open(self: &Arc<Self>, args: &OpenArgs<'_>) -> Result<Box<dyn Handle>> {
        let (path, r) = self.call(
            "open",
            &[
                tf(args.readonly),
                OsStr::new(args.export_name),
                tf(args.is_tls),
            ],
        );
        let handle = match r.code {
            Code::Ok => {
                let out = r.out.strip_suffix(b"\n").unwrap_or(&r.out);
                OsString::from_vec(out.to_vec())
            }
            Code::Missing => OsString::new(),
            Code::Error => return Err(script_error(&path, &r)),
            Code::False => return Err(unexpected_false(&path, "open")),
        };
        Ok(Box::new(ScriptHandle {
            scripts: self.clone(),
            handle,
            can_flush: OnceLock::new(),
            can_zero: OnceLock::new(),
        }))
    }

    /// Run `unload` when the plugin is dropped without `cleanup` (after
    /// `--dump-plugin`). A configuration error exits without it, as in
    /// nbdkit.
    pub(crate) fn unload_on_drop(&self) {
        self.unload_on_drop.store(true, Ordering::Release);
    }

    /// The plugin is being dropped.
    pub(crate) fn dropped(&self) {
        if self.unload_on_drop.load(Ordering::Acquire) {
            self.unload();
        }
    }

    /// `unload`, once; its errors are ignored.
    pub(crate) fn unload(&self) {
        if !self.unloaded.swap(true, Ordering::AcqRel) {
            let _ = self.call("unload", &[]);
            // As nbdkit, remove $tmpdir now: the process may exit without
            // dropping the plugin.
            let _ = std::fs::remove_dir_all(self.tmpdir.path());
        }
    }
}

/// Read an inline script from stdin into `dir/inline-script.sh`.
pub(crate) fn save_inline_script(dir: &Path) -> Result<PathBuf> {
    let path = dir.join("inline-script.sh");
    let mut script = Vec::new();
    io::stdin()
        .lock()
        .take(MAX_INLINE_SCRIPT + 1)
        .read_to_end(&mut script)
        .map_err(|e| Error::msg(Errno::EIO, format!("reading script from stdin: {e}")))?;
    if script.len() as u64 > MAX_INLINE_SCRIPT {
        return Err(Error::config("script on stdin is too large"));
    }
    write_executable(&path, &script)?;
    Ok(path)
}

/// Create `path` with mode 0700 holding `content`.
pub(crate) fn write_executable(path: &Path, content: &[u8]) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o700)
        .open(path)
        .map_err(|e| Error::msg(Errno::EIO, format!("{}: {e}", path.display())))?;
    f.write_all(content)
        .map_err(|e| Error::msg(Errno::EIO, format!("{}: {e}", path.display())))
}

/// A connection's handle: the string the script's `open` printed.
struct ScriptHandle {
    scripts: Arc<Scripts>,
    handle: OsString,
    can_flush: OnceLock<bool>,
    can_zero: OnceLock<bool>,
}

impl ScriptHandle {
    fn h(&self) -> &OsStr {
        &self.handle
    }

    /// A boolean method: 0 true, 3 false, missing false.
    fn boolean(&self, method: &str) -> Result<bool> {
        let (path, r) = self.scripts.call(method, &[self.h()]);
        match r.code {
            Code::Ok => Ok(true),
            Code::False | Code::Missing => Ok(false),
            Code::Error => Err(script_error(&path, &r)),
        }
    }

    /// A boolean method asked at most once per connection.
    fn cached(&self, cell: &OnceLock<bool>, method: &str) -> Result<bool> {
        if let Some(b) = cell.get() {
            return Ok(*b);
        }
        let b = self.boolean(method)?;
        Ok(*cell.get_or_init(|| b))
    }

    /// `can_fua`/`can_cache`: `none`, `emulate` or `native`.
    fn support(&self, method: &str) -> Result<Option<Support>> {
        match self.scripts.call_text(method, &[self.h()])? {
            None => Ok(None),
            Some((path, t)) => parse_support(&t).map(Some).ok_or_else(|| {
                protocol_error(
                    &path,
                    format_args!("could not parse output from {method} method: {t}"),
                )
            }),
        }
    }

    /// A data method with no output; `missing` is what exit status 2 means.
    fn data_call(
        &self,
        method: &str,
        args: &[&OsStr],
        input: &[u8],
        missing: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<()> {
        let mut argv = vec![self.h()];
        argv.extend_from_slice(args);
        let (path, r) = self.scripts.call_with(method, &argv, input, None);
        match r.code {
            Code::Ok => Ok(()),
            Code::Missing => missing(&path),
            Code::Error => Err(script_error(&path, &r)),
            Code::False => Err(unexpected_false(&path, method)),
        }
    }
}

impl Handle for ScriptHandle {
    fn get_size(&self) -> Result<u64> {
        let (path, r) = self.scripts.call("get_size", &[self.h()]);
        match r.code {
            Code::Ok => {
                let t = r.text();
                parse_script_size(&t).ok_or_else(|| {
                    protocol_error(
                        &path,
                        format_args!("could not parse output from get_size method: {t}"),
                    )
                })
            }
            Code::Missing => Err(protocol_error(&path, "the get_size method is required")),
            Code::Error => Err(script_error(&path, &r)),
            Code::False => Err(unexpected_false(&path, "get_size")),
        }
    }

    fn export_description(&self) -> Result<Option<String>> {
        Ok(self
            .scripts
            .call_text("export_description", &[self.h()])?
            .map(|(_, t)| t))
    }

    fn block_size(&self) -> Result<Option<BlockSize>> {
        let (path, r) = self.scripts.call("block_size", &[self.h()]);
        match r.code {
            Code::Ok => {
                let text = String::from_utf8_lossy(&r.out).into_owned();
                let cannot = || protocol_error(&path, "block_size method cannot be parsed");
                let mut words = text.split_ascii_whitespace();
                let mut v = [0u32; 3];
                for slot in &mut v {
                    let w = words.next().ok_or_else(cannot)?;
                    let n = parse_script_size(w).ok_or_else(cannot)?;
                    *slot = u32::try_from(n).map_err(|_| cannot())?;
                }
                if v == [0, 0, 0] {
                    return Ok(None);
                }
                Ok(Some(BlockSize {
                    minimum: v[0],
                    preferred: v[1],
                    maximum: v[2],
                }))
            }
            Code::Missing => Ok(None),
            Code::Error => Err(script_error(&path, &r)),
            Code::False => Err(unexpected_false(&path, "block_size")),
        }
    }

    fn can_write(&self) -> Result<bool> {
        self.boolean("can_write")
    }

    fn can_flush(&self) -> Result<bool> {
        self.cached(&self.can_flush, "can_flush")
    }

    fn is_rotational(&self) -> Result<bool> {
        self.boolean("is_rotational")
    }

    fn can_trim(&self) -> Result<bool> {
        self.boolean("can_trim")
    }

    fn can_zero(&self) -> Result<Support> {
        Ok(if self.cached(&self.can_zero, "can_zero")? {
            Support::Native
        } else {
            Support::Emulate
        })
    }

    fn can_fast_zero(&self) -> Result<bool> {
        let (path, r) = self.scripts.call("can_fast_zero", &[self.h()]);
        match r.code {
            Code::Ok => Ok(true),
            Code::False => Ok(false),
            // nbdkit's default: fast when zeroing is emulated (it can fail
            // fast instead of writing).
            Code::Missing => Ok(self.can_zero()? == Support::Emulate),
            Code::Error => Err(script_error(&path, &r)),
        }
    }

    fn can_extents(&self) -> Result<bool> {
        self.boolean("can_extents")
    }

    fn can_fua(&self) -> Result<Support> {
        match self.support("can_fua")? {
            Some(s) => Ok(s),
            None => Ok(if self.can_flush()? {
                Support::Emulate
            } else {
                Support::None
            }),
        }
    }

    fn can_multi_conn(&self) -> Result<bool> {
        self.boolean("can_multi_conn")
    }

    fn can_cache(&self) -> Result<Support> {
        Ok(self.support("can_cache")?.unwrap_or(Support::None))
    }

    fn pread(&self, buf: &mut [u8], offset: u64, _flags: Flags) -> Result<()> {
        let count = OsString::from(buf.len().to_string());
        let off = OsString::from(offset.to_string());
        let want = buf.len() as u64;
        let (path, r) = self
            .scripts
            .call_with("pread", &[self.h(), &count, &off], &[], Some(buf));
        match r.code {
            Code::Ok if r.out_len == want => Ok(()),
            Code::Ok => Err(protocol_error(
                &path,
                format_args!(
                    "incorrect amount of data read: expecting {want} bytes but received {} \
                     bytes from the script",
                    r.out_len
                ),
            )),
            Code::Missing => Err(protocol_error(&path, "the pread method is required")),
            Code::Error => Err(script_error(&path, &r)),
            Code::False => Err(unexpected_false(&path, "pread")),
        }
    }

    fn pwrite(&self, buf: &[u8], offset: u64, flags: Flags) -> Result<()> {
        let count = OsString::from(buf.len().to_string());
        let off = OsString::from(offset.to_string());
        let fl = flags_arg(flags);
        self.data_call("pwrite", &[&count, &off, &fl], buf, |_| {
            Err(Error::msg(Errno::EIO, "pwrite not implemented"))
        })
    }

    fn flush(&self, _flags: Flags) -> Result<()> {
        // nbdkit treats a missing flush, trim or cache as success.
        self.data_call("flush", &[], &[], |_| Ok(()))
    }

    fn trim(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        let c = OsString::from(count.to_string());
        let o = OsString::from(offset.to_string());
        let fl = flags_arg(flags);
        self.data_call("trim", &[&c, &o, &fl], &[], |_| Ok(()))
    }

    fn zero(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        let c = OsString::from(count.to_string());
        let o = OsString::from(offset.to_string());
        let fl = flags_arg(flags);
        // Missing: let the server write zeroes instead.
        self.data_call("zero", &[&c, &o, &fl], &[], |_| {
            Err(Error::new(Errno::ENOTSUP))
        })
    }

    fn extents(&self, count: u64, offset: u64, flags: Flags, extents: &mut Extents) -> Result<()> {
        let c = OsString::from(count.to_string());
        let o = OsString::from(offset.to_string());
        let fl = flags_arg(flags);
        let (path, r) = self.scripts.call("extents", &[self.h(), &c, &o, &fl]);
        match r.code {
            Code::Ok => {
                for (off, len, typ) in parse_extents(&path, &r.out)? {
                    extents.add(off, len, typ)?;
                }
                Ok(())
            }
            Code::Missing => Err(protocol_error(
                &path,
                "can_extents returned true, but extents method is not defined",
            )),
            Code::Error => Err(script_error(&path, &r)),
            Code::False => Err(unexpected_false(&path, "extents")),
        }
    }

    fn cache(&self, count: u64, offset: u64, _flags: Flags) -> Result<()> {
        let c = OsString::from(count.to_string());
        let o = OsString::from(offset.to_string());
        self.data_call("cache", &[&c, &o], &[], |_| Ok(()))
    }
}

impl Drop for ScriptHandle {
    fn drop(&mut self) {
        if let Err(e) = self
            .scripts
            .call_void("close", &[OsStr::from_bytes(self.handle.as_bytes())])
        {
            log::error(None, &e.to_string());
        }
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn error_names_errno_and_message() {
        assert_eq!(
            parse_error(b"ENOSPC no room\n"),
            Some((Errno::ENOSPC, "no room".into()))
        );
        assert_eq!(
            parse_error(b"eio lower\n"),
            Some((Errno::EIO, "lower".into()))
        );
        assert_eq!(
            parse_error(b"EPERM\rx\nmore"),
            Some((Errno::EPERM, "x".into()))
        );
        assert_eq!(parse_error(b"ENOMEM"), Some((Errno::ENOMEM, "".into())));
        assert_eq!(
            parse_error(b"EOPNOTSUPP x"),
            Some((Errno::ENOTSUP, "x".into()))
        );
    }

    #[test]
    fn error_without_known_name_is_eio_with_whole_line() {
        assert_eq!(
            parse_error(b"EBADF whatever\nline2"),
            Some((Errno::EIO, "EBADF whatever".into()))
        );
        assert_eq!(
            parse_error(b"EROFSfoo bar"),
            Some((Errno::EIO, "EROFSfoo bar".into()))
        );
        assert_eq!(
            parse_error(b"ENOTSUP: x"),
            Some((Errno::EIO, "ENOTSUP: x".into()))
        );
        assert_eq!(parse_error(b"\nENOMEM"), Some((Errno::EIO, "".into())));
        assert_eq!(parse_error(b""), None);
    }

    #[test]
    fn export_list_modes() {
        let n = |v: &[(&str, Option<&str>)]| {
            v.iter()
                .map(|(a, b)| (a.to_string(), b.map(String::from)))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            parse_exports(b"NAMES\na\nb\n"),
            n(&[("a", None), ("b", None)])
        );
        assert_eq!(parse_exports(b"a\nb"), n(&[("a", None)]));
        assert_eq!(
            parse_exports(b"names\na\n"),
            n(&[("names", None), ("a", None)])
        );
        assert_eq!(
            parse_exports(b"INTERLEAVED\na\nad\nb\n"),
            n(&[("a", Some("ad")), ("b", None)])
        );
        assert_eq!(
            parse_exports(b"NAMES+DESCRIPTIONS\na\nb\nc\n"),
            n(&[("a", Some("c")), ("b", None)])
        );
        assert_eq!(
            parse_exports(b"NAMES+DESCRIPTIONS\na\nb\nc\nad\nbd\n"),
            n(&[("a", Some("ad")), ("b", Some("bd")), ("c", None)])
        );
        assert_eq!(parse_exports(b"foo"), n(&[]));
    }

    #[test]
    fn default_export_is_first_name() {
        assert_eq!(parse_default_export(b"foo"), "foo");
        assert_eq!(parse_default_export(b"x\ny"), "x");
        assert_eq!(parse_default_export(b"INTERLEAVED\nz"), "z");
        assert_eq!(parse_default_export(b"NAMES\n"), "");
        assert_eq!(parse_default_export(b"\n"), "");
    }

    #[test]
    fn extents_lines() {
        let p = Path::new("s");
        assert_eq!(
            parse_extents(p, b"0 4096 hole,zero\n4096 4K zero\n8192 1M 7\n").unwrap(),
            vec![(0, 4096, 3), (4096, 4096, 2), (8192, 1 << 20, 3)]
        );
        assert_eq!(
            parse_extents(p, b"  0 4096 \t hole  zero").unwrap(),
            vec![(0, 4096, 1)]
        );
        assert_eq!(
            parse_extents(p, b"0 4096 HOLE,junk\n").unwrap(),
            vec![(0, 4096, 0)]
        );
        assert!(parse_extents(p, b"\n0 4096\n").is_err());
        assert!(parse_extents(p, b"0\n").is_err());
        assert!(parse_extents(p, b"").unwrap().is_empty());
    }

    #[test]
    fn flags_words() {
        assert_eq!(flags_arg(Flags::NONE), "");
        assert_eq!(
            flags_arg(Flags::FUA | Flags::MAY_TRIM | Flags::FAST_ZERO),
            "fua,may_trim,fast"
        );
        assert_eq!(flags_arg(Flags::REQ_ONE), "req_one");
    }

    #[test]
    fn runs_script_with_input_and_exit_codes() {
        let dir = TmpDir::new().unwrap();
        let script = dir.path().join("s");
        write_executable(
            &script,
            b"#!/bin/sh\ncase \"$1\" in\n cat) cat ;;\n missing) exit 2 ;;\n false) exit 3 ;;\n tmp) printf %s \"$tmpdir\" ;;\n *) echo 'ENOSPC full' >&2; exit 1 ;;\nesac\n",
        )
        .unwrap();
        let input = vec![7u8; 300_000];
        let r = run(
            &script,
            false,
            &[OsStr::new("cat")],
            dir.path(),
            &input,
            None,
        );
        assert_eq!(r.code, Code::Ok);
        assert_eq!(r.out, input);
        let mut buf = [0u8; 10];
        let r = run(
            &script,
            false,
            &[OsStr::new("cat")],
            dir.path(),
            &input,
            Some(&mut buf),
        );
        assert_eq!(r.out_len, 300_000);
        assert_eq!(buf, [7u8; 10]);
        let r = run(
            &script,
            false,
            &[OsStr::new("missing")],
            dir.path(),
            &[],
            None,
        );
        assert_eq!(r.code, Code::Missing);
        let r = run(
            &script,
            false,
            &[OsStr::new("false")],
            dir.path(),
            &[],
            None,
        );
        assert_eq!(r.code, Code::False);
        let r = run(&script, false, &[OsStr::new("tmp")], dir.path(), &[], None);
        assert_eq!(r.out, dir.path().as_os_str().as_bytes());
        let r = run(&script, false, &[OsStr::new("x")], dir.path(), &[], None);
        assert_eq!(r.code, Code::Error);
        let e = script_error(&script, &r);
        assert_eq!(e.errno, Errno::ENOSPC);
        assert_eq!(e.message.unwrap(), format!("{}: full", script.display()));
    }

    #[test]
    fn script_without_shebang_runs_under_sh() {
        let dir = TmpDir::new().unwrap();
        let script = dir.path().join("s");
        write_executable(&script, b"echo \"$1\"\n").unwrap();
        let r = run(&script, false, &[OsStr::new("hi")], dir.path(), &[], None);
        assert_eq!(r.code, Code::Ok);
        assert_eq!(r.out, b"hi\n");
    }

    #[test]
    fn unstartable_script_is_an_error_naming_it() {
        let dir = TmpDir::new().unwrap();
        let script = dir.path().join("nonexistent");
        let r = run(&script, false, &[], dir.path(), &[], None);
        assert_eq!(r.code, Code::Error);
        let e = script_error(&script, &r);
        assert!(e.message.unwrap().ends_with("No such file or directory"));
    }

    #[test]
    fn tmpdir_is_removed() {
        let dir = TmpDir::new().unwrap();
        let p = dir.path().to_path_buf();
        std::fs::write(p.join("f"), b"x").unwrap();
        drop(dir);
        assert!(!p.exists());
    }
}
