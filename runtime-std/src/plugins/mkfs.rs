//! Helpers shared by the plugins that build a disk with an external
//! program: `linuxdisk` (mke2fs), `iso` (xorriso/genisoimage/mkisofs),
//! `tmpdisk` and `ondemand` (mkfs or a `command=` shell script).
//!
//! Children get `/dev/null` as stdin and our stderr as stdout and stderr,
//! so their chatter never reaches an NBD socket on stdout (`-s`) and their
//! error messages reach the user.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

use nbdkit_core::backend::{Error, Flags, Handle, Result, Support};
use nbdkit_core::errno::Errno;

/// Where temporary disks go: `$TMPDIR`, else `/var/tmp` (nbdkit's
/// `LARGE_TMPDIR`).
pub(crate) fn tmpdir() -> PathBuf {
    crate::os::tmpfile::dir("/var/tmp")
}

/// The C library's text for an OS error, as `%m` prints it.
pub(crate) fn strerror(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => {
            let text = io::Error::from_raw_os_error(code).to_string();
            match text.strip_suffix(&format!(" (os error {code})")) {
                Some(t) => t.to_string(),
                None => text,
            }
        }
        None => e.to_string(),
    }
}

/// An OS error as `what: strerror`, keeping its errno.
pub(crate) fn os_error(what: impl std::fmt::Display, e: &io::Error) -> Error {
    let errno = e
        .raw_os_error()
        .map(crate::os::errno::from_os)
        .unwrap_or(Errno::EIO);
    Error::msg(errno, format!("{what}: {}", strerror(e)))
}

/// A nix error as `what: strerror`.
pub(crate) fn nix_error(what: impl std::fmt::Display, e: nix::errno::Errno) -> Error {
    os_error(what, &io::Error::from_raw_os_error(e as i32))
}

/// An unlinked temporary file `$TMPDIR/PREFIXXXXXXX`.
pub(crate) fn temp_file(prefix: &str) -> Result<File> {
    let template = tmpdir().join(format!("{prefix}XXXXXX"));
    let file = crate::os::tmpfile::unlinked(&template)
        .map_err(|e| nix_error(format_args!("mkstemp: {}", template.display()), e))?;
    set_cloexec(&file);
    Ok(file)
}

/// Keep a descriptor out of the programs we run.
pub(crate) fn set_cloexec(file: &File) {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    let _ = fcntl(
        std::os::fd::AsRawFd::as_raw_fd(file),
        FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC),
    );
}

pub(crate) use crate::os::tmpfile::TempDir;

/// Quote a string for `/bin/sh`, leaving it bare when it is safe.
pub(crate) fn shell_quote(s: &str) -> String {
    let safe = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"%+,-./:=@_".contains(&b));
    if safe {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// How a child ended, as nbdkit's `exit_status_to_nbd_error` words it:
/// `NAME: command failed with exit code N`.
pub(crate) fn check_status(name: &str, status: ExitStatus) -> Result<()> {
    if status.success() {
        Ok(())
    } else if let Some(code) = status.code() {
        Err(Error::msg(
            Errno::EIO,
            format!("{name}: command failed with exit code {code}"),
        ))
    } else if let Some(sig) = status.signal() {
        Err(Error::msg(
            Errno::EIO,
            format!("{name}: command was killed by signal {sig}"),
        ))
    } else {
        Err(Error::msg(Errno::EIO, format!("{name}: command failed")))
    }
}

/// Give a command nbdkit's standard descriptors: stdin `/dev/null`,
/// stdout and stderr our stderr.
pub(crate) fn quiet_stdio(cmd: &mut Command) -> Result<()> {
    let err = io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| os_error("dup", &e))?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(err))
        .stderr(Stdio::inherit());
    Ok(())
}

/// Run a prepared command to completion. A program that cannot be run is
/// an error naming it.
pub(crate) fn run(name: &str, cmd: &mut Command) -> Result<()> {
    let status = cmd.status().map_err(|e| {
        let prog = cmd.get_program().to_string_lossy().into_owned();
        os_error(format_args!("{name}: cannot run {prog}"), &e)
    })?;
    check_status(name, status)
}

/// Find `prog` on `$PATH` (or take it as is when it names a path).
pub(crate) fn which(prog: &str) -> Option<PathBuf> {
    if prog.contains('/') {
        let p = PathBuf::from(prog);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(prog))
        .find(|p| p.is_file())
}

/// `pread` from a file that must hold the whole range.
pub(crate) fn read_exact(file: &File, buf: &mut [u8], offset: u64) -> Result<()> {
    file.read_exact_at(buf, offset).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            Error::msg(Errno::EIO, "pread: unexpected end of file")
        } else {
            os_error("pread", &e)
        }
    })
}

/// A writable disk on a local file: the handle of `tmpdisk` and
/// `ondemand`. FUA and flush are `fdatasync`; trim punches holes (and
/// ignores file systems that cannot).
pub(crate) struct WritableDisk {
    pub(crate) file: File,
    pub(crate) size: u64,
}

impl WritableDisk {
    fn sync(&self) -> Result<()> {
        self.file.sync_data().map_err(|e| os_error("fdatasync", &e))
    }
}

impl Handle for WritableDisk {
    fn get_size(&self) -> Result<u64> {
        Ok(self.size)
    }
    fn can_trim(&self) -> Result<bool> {
        Ok(true)
    }
    fn can_fua(&self) -> Result<Support> {
        Ok(Support::Native)
    }
    fn pread(&self, buf: &mut [u8], offset: u64, _flags: Flags) -> Result<()> {
        read_exact(&self.file, buf, offset)
    }
    fn pwrite(&self, buf: &[u8], offset: u64, flags: Flags) -> Result<()> {
        self.file
            .write_all_at(buf, offset)
            .map_err(|e| os_error("pwrite", &e))?;
        if flags.contains(Flags::FUA) {
            self.sync()?;
        }
        Ok(())
    }
    fn flush(&self, _flags: Flags) -> Result<()> {
        self.sync()
    }
    fn trim(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        use std::os::fd::AsFd;
        let (Ok(off), Ok(len)) = (i64::try_from(offset), i64::try_from(count)) else {
            return Err(Error::new(Errno::EINVAL));
        };
        let r = crate::os::fspace::punch_hole(self.file.as_fd(), off, len);
        if let Err(e) = r {
            let e = io::Error::from(e);
            crate::log::debug(
                None,
                format_args!("ignoring failed fallocate during trim: {}", strerror(&e)),
            );
        }
        if flags.contains(Flags::FUA) {
            self.sync()?;
        }
        Ok(())
    }
}

/// The `command=` of `tmpdisk` and `ondemand`: a shell script run with
/// `$disk`, `$size` and every other parameter as shell variables.
#[derive(Debug, Clone, Default)]
pub(crate) struct DiskCommand {
    /// The script; `None` runs [`DEFAULT_COMMAND`].
    pub(crate) command: Option<String>,
    /// `size=`, once given.
    pub(crate) size: Option<u64>,
    /// Every other `key=value`, in order.
    pub(crate) params: Vec<(String, String)>,
}

/// The script run when `command=` is not given: mkfs with the options each
/// file system type needs to work on a plain file without asking.
pub(crate) const DEFAULT_COMMAND: &str = r#"type="${type:-ext4}"
labelopt='-L'
case "$type" in
    ext?)
        extra='-F' ;;
    *fat|msdos)
        extra='-I' ;;
    ntfs)
        extra='-Q -F'
        labelopt='-n' ;;
    xfs)
        extra='-f' ;;
esac
truncate -s $size "$disk"
if [ "x$label" = "x" ]; then
    mkfs -t "$type" $extra "$disk"
else
    mkfs -t "$type" $extra $labelopt "$label" "$disk"
fi
"#;

impl DiskCommand {
    /// Take one parameter: `command=`, `size=`, the forbidden `disk=`, or
    /// any other key as a shell variable.
    pub(crate) fn config(&mut self, key: &str, value: &str) -> Result<()> {
        match key {
            "command" => self.command = Some(value.to_string()),
            "size" => self.size = Some(nbdkit_core::plugins::size_param(value)?),
            // $disk is how the script learns where to write.
            "disk" => {
                return Err(Error::config(
                    "'disk' parameter cannot be set on the command line",
                ))
            }
            _ => {
                if !is_shell_name(key) {
                    return Err(Error::config(format!(
                        "parameter '{key}' cannot be used as a shell variable name"
                    )));
                }
                self.params.push((key.to_string(), value.to_string()));
            }
        }
        Ok(())
    }

    /// The whole script for `disk`.
    pub(crate) fn script(&self, disk: &Path) -> String {
        let mut s = String::from("exec </dev/null >/dev/null\n");
        s += &format!(
            "disk={}\nsize={}\n\n",
            shell_quote(&disk.to_string_lossy()),
            self.size.unwrap_or(0)
        );
        for (k, v) in &self.params {
            s += &format!("{k}={}\n", shell_quote(v));
        }
        s.push('\n');
        s += self.command.as_deref().unwrap_or(DEFAULT_COMMAND);
        s
    }

    /// Run the script for `disk` with `/bin/sh`.
    pub(crate) fn run(&self, disk: &Path) -> Result<()> {
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c").arg(self.script(disk));
        quiet_stdio(&mut cmd)?;
        let status = cmd
            .status()
            .map_err(|e| os_error("failed to execute command", &e))?;
        if status.success() {
            Ok(())
        } else if let Some(code) = status.code() {
            Err(Error::msg(
                Errno::EIO,
                format!("command exited with code {code}"),
            ))
        } else {
            let sig = status.signal().unwrap_or(0);
            Err(Error::msg(
                Errno::EIO,
                format!("command killed by signal {sig}"),
            ))
        }
    }
}

/// Whether `key` can be a shell variable (a parameter key nbdkit accepts,
/// minus the characters the shell refuses in names).
fn is_shell_name(key: &str) -> bool {
    let mut b = key.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn shell_quote_leaves_safe_strings_bare() {
        assert_eq!(shell_quote("/var/tmp/disk"), "/var/tmp/disk");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
    }

    #[test]
    fn script_sets_variables_then_runs_command() {
        let mut c = DiskCommand::default();
        c.config("size", "1M").unwrap();
        c.config("label", "my disk").unwrap();
        c.config("command", "truncate -s $size \"$disk\"").unwrap();
        let s = c.script(Path::new("/tmp/x/disk"));
        assert!(s.starts_with("exec </dev/null >/dev/null\ndisk=/tmp/x/disk\nsize=1048576\n"));
        assert!(s.contains("label='my disk'\n"));
        assert!(s.ends_with("truncate -s $size \"$disk\""));
    }

    #[test]
    fn disk_parameter_is_refused() {
        let e = DiskCommand::default().config("disk", "x").unwrap_err();
        assert_eq!(
            e.message.unwrap(),
            "'disk' parameter cannot be set on the command line"
        );
    }

    #[test]
    fn script_runs_and_reports_exit_code() {
        let dir = TempDir::new_in(&std::env::temp_dir(), "mkfstest").unwrap();
        let disk = dir.path().join("disk");
        let mut c = DiskCommand::default();
        c.config("size", "4096").unwrap();
        c.config("command", "truncate -s $size \"$disk\"").unwrap();
        c.run(&disk).unwrap();
        assert_eq!(std::fs::metadata(&disk).unwrap().len(), 4096);
        c.config("command", "exit 3").unwrap();
        let e = c.run(&disk).unwrap_err();
        assert_eq!(e.message.unwrap(), "command exited with code 3");
    }

    #[test]
    fn missing_program_is_named() {
        let mut cmd = Command::new("/nonexistent/prog");
        let e = run("prog", &mut cmd).unwrap_err();
        assert!(e.message.unwrap().contains("/nonexistent/prog"));
    }
}
