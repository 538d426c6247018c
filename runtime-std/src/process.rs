//! Process control: forking into the background, dropping privileges,
//! locking memory, SELinux socket labels, systemd socket activation.

use std::ffi::CString;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::log;

/// The working directory nbdkit was started in, recorded before
/// [`daemonize`] moves to `/`.
static STARTUP_DIR: OnceLock<PathBuf> = OnceLock::new();

/// `nbdkit_absolute_path`: a relative path is taken from the current
/// directory (no symlinks are resolved and the file need not exist), so
/// that it still names the same file after the server moves to `/` in the
/// background. Parameters that name files go through this (or through
/// realpath) when they are read.
pub fn absolute_path(path: &str) -> Result<PathBuf, String> {
    if path.is_empty() {
        return Err("cannot convert null or empty path to an absolute path".into());
    }
    let p = Path::new(path);
    if p.is_absolute() {
        return Ok(p.to_path_buf());
    }
    let cwd = std::env::current_dir().map_err(|e| format!("get_current_dir_name: {e}"))?;
    Ok(cwd.join(p))
}

/// A path as the user meant it on the command line: relative paths are
/// taken from the directory nbdkit started in, also after it has moved to
/// `/` in the background. For values kept as given at configuration time
/// (the error filter's trigger files).
pub fn from_startup_dir(path: &str) -> PathBuf {
    match STARTUP_DIR.get() {
        Some(dir) if !path.starts_with('/') => dir.join(path),
        _ => PathBuf::from(path),
    }
}

/// Fork into the background (nbdkit without `-f`): the parent exits with
/// status 0 at once; the child starts a new session, moves to `/` and points
/// its standard streams at /dev/null. Messages go to syslog from then on
/// unless `--log` said otherwise.
pub fn daemonize(log_explicit: bool) -> Result<(), String> {
    // SAFETY: called before any thread is started (the async runtime is
    // created after this), so the child inherits a consistent process.
    match unsafe { nix::unistd::fork() } {
        Err(e) => Err(format!("fork: {e}")),
        Ok(nix::unistd::ForkResult::Parent { .. }) => std::process::exit(0),
        Ok(nix::unistd::ForkResult::Child) => {
            let _ = nix::unistd::setsid();
            if let Ok(dir) = std::env::current_dir() {
                let _ = STARTUP_DIR.set(dir);
            }
            let _ = std::env::set_current_dir("/");
            if let Ok(null) = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")
            {
                use std::os::fd::AsRawFd;
                for fd in 0..3 {
                    let _ = nix::unistd::dup2(null.as_raw_fd(), fd);
                }
            }
            if !log_explicit {
                log::set_destination(log::LogTo::Syslog);
            }
            Ok(())
        }
    }
}

/// Drop privileges after binding (`-u USER`, `-g GROUP`; names or numbers).
pub fn change_user(user: Option<&str>, group: Option<&str>) -> Result<(), String> {
    use nix::unistd::{Gid, Group, Uid, User};
    let gid = match group {
        None => None,
        Some(g) => Some(match g.parse::<u32>() {
            Ok(n) => Gid::from_raw(n),
            Err(_) => match Group::from_name(g) {
                Ok(Some(gr)) => gr.gid,
                _ => return Err(format!("-g option: unknown group: {g}")),
            },
        }),
    };
    let user = match user {
        None => None,
        Some(u) => Some(match u.parse::<u32>() {
            Ok(n) => (Uid::from_raw(n), None),
            Err(_) => match User::from_name(u) {
                Ok(Some(pw)) => (pw.uid, Some(pw.gid)),
                _ => return Err(format!("-u option: unknown user: {u}")),
            },
        }),
    };
    let gid = gid.or_else(|| user.and_then(|(_, g)| g));
    if let Some(g) = gid {
        nix::unistd::setgroups(&[g]).map_err(|e| format!("setgroups: {e}"))?;
        nix::unistd::setgid(g).map_err(|e| format!("setgid: {e}"))?;
    }
    if let Some((uid, _)) = user {
        nix::unistd::setuid(uid).map_err(|e| format!("setuid: {e}"))?;
    }
    if user.is_some() || gid.is_some() {
        log::debug(
            None,
            format_args!(
                "changed user to uid={} gid={}",
                nix::unistd::getuid(),
                nix::unistd::getgid()
            ),
        );
    }
    Ok(())
}

/// `--swap`: lock the whole process into memory.
pub fn lock_memory() -> Result<(), String> {
    use nix::sys::mman::{mlockall, MlockAllFlags};
    mlockall(MlockAllFlags::MCL_CURRENT | MlockAllFlags::MCL_FUTURE).map_err(|e| {
        format!("--swap: mlockall: {e} (raise RLIMIT_MEMLOCK with ulimit -l, or run as root)")
    })
}

/// Sockets passed by systemd (`LISTEN_PID`, `LISTEN_FDS`): `None` when this
/// process was not socket-activated. The variables are removed and the
/// descriptors marked close-on-exec, as nbdkit does.
pub fn activation_fds() -> Result<Option<Vec<OwnedFd>>, String> {
    let (Ok(pid), Ok(n)) = (std::env::var("LISTEN_PID"), std::env::var("LISTEN_FDS")) else {
        return Ok(None);
    };
    if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
        return Ok(None);
    }
    let n: RawFd = n
        .trim()
        .parse()
        .map_err(|_| format!("LISTEN_FDS: cannot parse: {n}"))?;
    if !(1..=16).contains(&n) {
        return Err(format!("LISTEN_FDS: out of range (1..16): {n}"));
    }
    std::env::remove_var("LISTEN_PID");
    std::env::remove_var("LISTEN_FDS");
    std::env::remove_var("LISTEN_FDNAMES");
    let mut v = Vec::new();
    for fd in 3..3 + n {
        // SAFETY: systemd passes these descriptors to this process, which
        // takes ownership of each exactly once here.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let _ = nix::fcntl::fcntl(
            fd,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        );
        v.push(owned);
    }
    Ok(Some(v))
}

/// Send messages to syslog (`--log=syslog`, or in the background).
pub(crate) fn syslog(priority: libc::c_int, msg: &str) {
    let Ok(c) = CString::new(msg.replace('\0', " ")) else {
        return;
    };
    // SAFETY: a constant format string and a NUL-terminated argument.
    unsafe {
        libc::syslog(priority, c"%s".as_ptr(), c.as_ptr());
    }
}
