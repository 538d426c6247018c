//! Temporary files and directories: `mkstemp(3)` through nix, returning
//! an owned [`File`] (nix 0.29 hands back a raw descriptor), so that the
//! one `unsafe` adoption of the descriptor lives here; `mkdtemp(3)` as a
//! [`TempDir`] removed with its contents when dropped.

use std::fs::File;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nbdkit_core::backend::{Error, Result};

/// `$TMPDIR` when set and not empty, else `default`.
pub(crate) fn dir(default: &str) -> PathBuf {
    std::env::var_os("TMPDIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default))
}

/// Create a file from `template` (ending in `XXXXXX`), mode 0600, open for
/// reading and writing: the file and its name.
pub(crate) fn mkstemp(template: &Path) -> nix::Result<(File, PathBuf)> {
    let (fd, path) = nix::unistd::mkstemp(template)?;
    // SAFETY: mkstemp just returned this descriptor; nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    Ok((File::from(fd), path))
}

/// [`mkstemp`], then remove the name at once, so that the file goes with
/// the last descriptor.
pub(crate) fn unlinked(template: &Path) -> nix::Result<File> {
    let (file, path) = mkstemp(template)?;
    let _ = std::fs::remove_file(path);
    Ok(file)
}

/// A temporary directory, removed with its contents when dropped.
#[derive(Debug)]
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    /// `mkdtemp(3)` of `template` (ending in `XXXXXX`).
    pub(crate) fn create(template: &Path) -> nix::Result<TempDir> {
        nix::unistd::mkdtemp(template).map(TempDir)
    }

    /// `PARENT/PREFIXXXXXXX`; the error says `mkdtemp: TEMPLATE: strerror`.
    pub(crate) fn new_in(parent: &Path, prefix: &str) -> Result<TempDir> {
        let template = parent.join(format!("{prefix}XXXXXX"));
        TempDir::create(&template).map_err(|e| {
            Error::msg(
                crate::os::errno::from_os(e as i32),
                format!("mkdtemp: {}: {}", template.display(), e.desc()),
            )
        })
    }

    /// Its path.
    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, Write};

    #[test]
    fn unlinked_file_is_usable_and_nameless() {
        let dir = std::env::temp_dir();
        let mut f = unlinked(&dir.join("nbdkit-tmpfile-testXXXXXX")).unwrap();
        f.write_all(b"abc").unwrap();
        f.rewind().unwrap();
        let mut s = String::new();
        f.read_to_string(&mut s).unwrap();
        assert_eq!(s, "abc");
        let (g, path) = mkstemp(&dir.join("nbdkit-tmpfile-testXXXXXX")).unwrap();
        assert!(path.exists());
        assert!(!path.to_string_lossy().ends_with("XXXXXX"));
        drop(g);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn temp_dir_goes_with_its_contents() {
        let d = TempDir::new_in(&std::env::temp_dir(), "nbdkit-tmpfile-test").unwrap();
        let p = d.path().to_path_buf();
        std::fs::write(p.join("f"), b"x").unwrap();
        drop(d);
        assert!(!p.exists());
        let e = TempDir::new_in(Path::new("/nonexistent-nbdkit"), "x").unwrap_err();
        assert_eq!(
            e.message.unwrap(),
            "mkdtemp: /nonexistent-nbdkit/xXXXXXX: No such file or directory"
        );
    }

    #[test]
    fn dir_falls_back_on_empty() {
        // Only reads the variable: whatever it is, the answer is not empty.
        assert!(!dir("/var/tmp").as_os_str().is_empty());
    }
}
