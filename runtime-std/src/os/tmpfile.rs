//! Temporary files: `mkstemp(3)` through nix, returning an owned [`File`]
//! (nix 0.29 hands back a raw descriptor), so that the one `unsafe`
//! adoption of the descriptor lives here.

use std::fs::File;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

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
    fn dir_falls_back_on_empty() {
        // Only reads the variable: whatever it is, the answer is not empty.
        assert!(!dir("/var/tmp").as_os_str().is_empty());
    }
}
