//! `floppy`: a read-only disk holding a FAT32 file system made from a
//! directory, built when the server starts.
//!
//! Parameters:
//!
//! - `[dir=]DIRECTORY` (required, once): its files and subdirectories
//!   appear in the root directory. Only regular files and directories are
//!   served (symbolic links and special files are skipped); a file must
//!   be smaller than 4 GiB. Names keep their case and length through VFAT
//!   long file name entries beside generated 8.3 names.
//! - `label=LABEL`: the volume label, up to 11 bytes (default
//!   `NBDKITFLOPY`).
//! - `size=SIZE`: the disk size; without it the disk is just large enough
//!   for the files.
//!
//! The layout is nbdkit's, byte for byte, with three fixes that `fsck.vfat`
//! asks for: an empty file's first cluster is 0 (nbdkit points it at the
//! next file's), `..` in a directory under the root points at cluster 0
//! (nbdkit: 2), and a name with no valid leading short-name character (a
//! dot file, say) gets the short base `_` (nbdkit leaves it blank). A `size=` the layout cannot fill exactly gets zeroes
//! after the partition (nbdkit fails an assertion).
//!
//! Each file is opened read-only the first time it is read and kept open;
//! only if the process runs out of descriptors is a file opened for the
//! one read. The files must not change while the server runs.

mod directory;
mod layout;

use crate::os::errno::io_error;
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use nbdkit_core::backend::{Callbacks, Error, Flags, Handle, OpenArgs, Plugin, Result, Support};
use nbdkit_core::errno::Errno;
use nbdkit_core::plugins::{size_param, unknown_param};

use crate::plugins::realpath::realpath;
use directory::Tree;
use layout::{Content, Layout};

/// A file served from the host.
#[derive(Debug)]
struct HostFile {
    path: PathBuf,
    /// Opened on first read.
    file: OnceLock<File>,
}

/// The built disk, shared by every connection.
#[derive(Debug)]
struct Disk {
    layout: Layout,
    files: Vec<HostFile>,
}

/// The floppy plugin.
#[derive(Debug)]
pub struct Floppy {
    dir: Option<PathBuf>,
    label: Vec<u8>,
    size: u64,
    disk: Option<Arc<Disk>>,
}

impl Default for Floppy {
    fn default() -> Self {
        Floppy {
            dir: None,
            label: b"NBDKITFLOPY".to_vec(),
            size: 0,
            disk: None,
        }
    }
}

impl Plugin for Floppy {
    fn name(&self) -> &'static str {
        "floppy"
    }
    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit floppy plugin")
    }
    fn config_help(&self) -> &'static str {
        "dir=<DIRECTORY>     (required) The directory to serve.\n\
         label=<LABEL>                  The volume label.\n\
         size=<SIZE>                    The total disk size (default: just enough)."
    }
    fn magic_config_key(&self) -> Option<&'static str> {
        Some("dir")
    }
    fn callbacks(&self) -> Callbacks {
        // nbdkit's floppy is an API 1 plugin: its pread is the `_v1` slot,
        // which has no has_ line here.
        Callbacks::LONGNAME
            | Callbacks::LOAD
            | Callbacks::UNLOAD
            | Callbacks::CONFIG
            | Callbacks::CONFIG_COMPLETE
            | Callbacks::CONFIG_HELP
            | Callbacks::GET_READY
            | Callbacks::OPEN
            | Callbacks::GET_SIZE
            | Callbacks::CAN_MULTI_CONN
            | Callbacks::CAN_CACHE
            | Callbacks::PREAD_V1
    }

    fn config(&mut self, key: &str, value: &str) -> Result<()> {
        match key {
            "dir" => {
                if self.dir.is_some() {
                    return Err(Error::config("dir=<DIRECTORY> must only be set once"));
                }
                self.dir = Some(realpath(value)?);
            }
            "label" => self.label = value.as_bytes().to_vec(),
            "size" => self.size = size_param(value)?,
            _ => return Err(unknown_param(key)),
        }
        Ok(())
    }

    fn config_complete(&mut self) -> Result<()> {
        let Some(dir) = &self.dir else {
            return Err(Error::config(
                "you must supply the dir=<DIRECTORY> parameter after the plugin name \
                 on the command line",
            ));
        };
        let mut tree = Tree::scan(dir)?;
        for di in 0..tree.dirs.len() {
            tree.build_table(di, &self.label)?;
        }
        let layout = layout::build(&mut tree, &self.label, self.size)?;
        let files = tree
            .files
            .into_iter()
            .map(|f| HostFile {
                path: f.host_path,
                file: OnceLock::new(),
            })
            .collect();
        self.disk = Some(Arc::new(Disk { layout, files }));
        Ok(())
    }

    fn open(&self, _args: &OpenArgs<'_>) -> Result<Box<dyn Handle>> {
        let disk = self
            .disk
            .clone()
            .ok_or_else(|| Error::msg(Errno::EIO, "floppy: not configured"))?;
        Ok(Box::new(FloppyHandle { disk }))
    }
}

/// A connection: reads only.
#[derive(Debug)]
struct FloppyHandle {
    disk: Arc<Disk>,
}

fn open_ro(path: &PathBuf) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOCTTY)
        .open(path)
}

impl Disk {
    /// Read from the i'th host file at `offset`, filling `buf`.
    fn read_file(&self, i: usize, buf: &mut [u8], offset: u64) -> Result<()> {
        let hf = &self.files[i];
        let shown = hf.path.display();
        let owned;
        let file = match hf.file.get() {
            Some(f) => f,
            None => match open_ro(&hf.path) {
                Ok(f) => {
                    // Another thread may have won the race: use its copy.
                    let _ = hf.file.set(f);
                    match hf.file.get() {
                        Some(f) => f,
                        None => return Err(Error::msg(Errno::EIO, "floppy: open failed")),
                    }
                }
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                    // Out of descriptors: open the file for this read only.
                    owned =
                        open_ro(&hf.path).map_err(|e| io_error(&format!("open: {shown}"), &e))?;
                    &owned
                }
                Err(e) => return Err(io_error(&format!("open: {shown}"), &e)),
            },
        };
        let mut done = 0;
        while done < buf.len() {
            match file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => {
                    return Err(Error::msg(
                        Errno::EIO,
                        format!("pread: {shown}: unexpected end of file"),
                    ))
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_error(&format!("pread: {shown}"), &e)),
            }
        }
        Ok(())
    }
}

impl Handle for FloppyHandle {
    fn get_size(&self) -> Result<u64> {
        Ok(self.disk.layout.size)
    }

    fn can_multi_conn(&self) -> Result<bool> {
        Ok(true)
    }

    fn can_cache(&self) -> Result<Support> {
        Ok(Support::Emulate)
    }

    fn pread(&self, buf: &mut [u8], offset: u64, _flags: Flags) -> Result<()> {
        let layout = &self.disk.layout;
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|e| *e <= layout.size)
            .ok_or_else(|| Error::msg(Errno::EIO, "floppy: read beyond the end of the disk"))?;
        let mut i = layout
            .regions
            .partition_point(|r| r.start + r.len <= offset);
        let mut pos = offset;
        while pos < end && i < layout.regions.len() {
            let r = &layout.regions[i];
            let stop = (r.start + r.len).min(end);
            let part = &mut buf[(pos - offset) as usize..(stop - offset) as usize];
            let off = pos - r.start;
            match &r.content {
                Content::Zero => part.fill(0),
                Content::Data(d) => {
                    // Bytes past the data are padding.
                    let from = (off as usize).min(d.len());
                    let n = (d.len() - from).min(part.len());
                    part[..n].copy_from_slice(&d[from..from + n]);
                    part[n..].fill(0);
                }
                Content::File { index, len } => {
                    let n = len.saturating_sub(off).min(part.len() as u64) as usize;
                    self.disk.read_file(*index, &mut part[..n], off)?;
                    part[n..].fill(0);
                }
            }
            pos = stop;
            i += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use crate::plugins::testing::{dir, open};

    #[test]
    fn builds_a_fat32_partition() {
        let d = dir("nbdkit-floppy-test");
        std::fs::write(d.path().join("hello.txt"), b"hello\n").unwrap();
        let mut p = Floppy::default();
        p.config("dir", d.path().to_str().unwrap()).unwrap();
        p.config("label", "TESTLABEL").unwrap();
        p.config_complete().unwrap();
        let h = open(&p, true);
        let size = h.get_size().unwrap();
        // MBR + 32 reserved sectors + 2 FATs of one cluster + root + file.
        assert_eq!(size, (2048 + 32) * 512 + 4 * 16384);
        let mut s = [0u8; 512];
        h.pread(&mut s, 2048 * 512, Flags::NONE).unwrap();
        assert_eq!(&s[82..90], b"FAT32   ");
        assert_eq!(&s[71..82], b"TESTLABEL  ");
        let mut data = [0u8; 8];
        h.pread(&mut data, size - 16384, Flags::NONE).unwrap();
        assert_eq!(&data, b"hello\n\0\0");
        assert!(!h.can_write().unwrap());
    }

    #[test]
    fn config_errors_match_nbdkit() {
        let mut p = Floppy::default();
        let msg = |r: Result<()>| r.unwrap_err().message.unwrap();
        assert_eq!(
            msg(p.config_complete()),
            "you must supply the dir=<DIRECTORY> parameter after the plugin name on the \
             command line"
        );
        assert_eq!(
            msg(p.config("dir", "/nonexistent/x")),
            "realpath: /nonexistent/x: No such file or directory"
        );
        p.config("dir", "/").unwrap();
        assert_eq!(
            msg(p.config("dir", "/")),
            "dir=<DIRECTORY> must only be set once"
        );
        assert_eq!(msg(p.config("foo", "1")), "unknown parameter 'foo'");
    }

    #[test]
    fn size_too_small_is_refused() {
        let d = dir("nbdkit-floppy-test");
        std::fs::write(d.path().join("f"), vec![1u8; 100_000]).unwrap();
        let mut p = Floppy::default();
        p.config("dir", d.path().to_str().unwrap()).unwrap();
        p.config("size", "1100000").unwrap();
        assert_eq!(
            p.config_complete().unwrap_err().message.unwrap(),
            "filesystem is larger than \"size\" bytes"
        );
    }
}
