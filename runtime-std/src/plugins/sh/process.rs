//! Running a script: the child process, its `$tmpdir`, and the pump that
//! feeds its stdin while collecting stdout and stderr.

use super::*;
use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use nbdkit_core::backend::{Error, Result};
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::log;

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
    pub(super) fn text(&self) -> String {
        let out = self.out.strip_suffix(b"\n").unwrap_or(&self.out);
        String::from_utf8_lossy(out).into_owned()
    }
}

/// The private directory in `$tmpdir`, removed with everything in it
/// when dropped.
pub(crate) type TmpDir = crate::os::tmpfile::TempDir;

/// Create `${TMPDIR:-/tmp}/nbdkitXXXXXX` (nbdkit's message on failure:
/// `mkdtemp: strerror`).
pub(crate) fn new_tmpdir() -> Result<TmpDir> {
    let template = crate::os::tmpfile::dir("/tmp").join("nbdkitXXXXXX");
    TmpDir::create(&template).map_err(|e| {
        Error::msg(
            crate::os::errno::from_os(e as i32),
            format!("mkdtemp: {}", e.desc()),
        )
    })
}

/// Where a script's stdout goes.
pub(super) enum Sink<'a> {
    /// Into a buffer the caller owns (`pread`): excess is counted and
    /// dropped.
    Buf(&'a mut [u8]),
    /// Into a vector, up to [`MAX_OUTPUT`].
    Vec(Vec<u8>),
}

/// Whether `path` starts with a `#!` line naming nbdkit as its interpreter.
pub(super) fn shebang_is_nbdkit(path: &Path) -> bool {
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
pub(super) fn run(
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
pub(super) fn pump(
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
