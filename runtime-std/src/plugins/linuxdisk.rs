//! `linuxdisk`: a read-only disk holding an ext2, ext3 or ext4 file system
//! built from a directory with `mke2fs -d`, inside one GPT partition.
//!
//! Parameters:
//!
//! - `[dir=]DIRECTORY` (required, once): the files to put in the file
//!   system; they appear in its root directory.
//! - `label=LABEL`: the file system label (`mke2fs -L`).
//! - `type=ext2|ext3|ext4`: the file system type (default `ext2`).
//! - `size=SIZE`: the file system's size, rounded up to a whole sector;
//!   `mke2fs` fails (and so does the plugin) when the files do not fit.
//! - `size=+SIZE`: at least this much free space on top of the estimate.
//!
//! The file system is built once, in `get_ready`, in an unlinked file in
//! `$TMPDIR` (default `/var/tmp`). Its size is estimated as nbdkit does:
//! `du -c -k -s DIR` plus 20%, at least 1M, plus `+SIZE`, plus 32M for the
//! journal of ext3/ext4. The disk is a protective MBR and primary GPT, the
//! partition at 1MiB, and the backup GPT in the last 33 sectors.

use super::ptable::gpt::{self, crc32, parse_guid, random_guid_v4 as random_guid, Header};
use super::ptable::{mbr, SECTOR};
use std::fs::File;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use nbdkit_core::backend::{Callbacks, Error, Flags, Handle, OpenArgs, Plugin, Result, Support};
use nbdkit_core::errno::Errno;
use nbdkit_core::plugins::{size_param, unknown_param};

use super::mkfs;

/// The partition starts at 1MiB, as partitioning tools align it.
const PARTITION_START: u64 = 2048;
/// Entries in each GPT partition array, each 128 bytes: 32 sectors.
const GPT_ENTRIES: u64 = 128;
const GPT_ARRAY_SECTORS: u64 = GPT_ENTRIES * gpt::ENTRY_SIZE as u64 / SECTOR;
/// Sectors at the start that hold data: MBR, GPT header, partition array.
const HEAD_SECTORS: u64 = 2 + GPT_ARRAY_SECTORS;
/// Sectors at the end: backup partition array and backup header.
const TAIL_SECTORS: u64 = GPT_ARRAY_SECTORS + 1;
/// The GPT partition type "Linux filesystem data".
const LINUX_FS_GUID: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";
/// The journal nbdkit budgets for ext3 and ext4.
const JOURNAL_SIZE: u64 = 32 * 1024 * 1024;
const MIN_SIZE: u64 = 1024 * 1024;

/// `size=`: exact, or extra free space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SizeParam {
    Exact(u64),
    Add(u64),
}

/// The linuxdisk plugin.
#[derive(Default)]
pub struct LinuxDisk {
    dir: Option<PathBuf>,
    label: Option<String>,
    fstype: Option<String>,
    size: Option<SizeParam>,
    disk: std::sync::OnceLock<std::sync::Arc<Disk>>,
}

impl Plugin for LinuxDisk {
    fn name(&self) -> &'static str {
        "linuxdisk"
    }
    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit Linux virtual disk plugin")
    }
    fn config_help(&self) -> &'static str {
        "dir=<DIRECTORY>  (required) The directory to serve.\n\
         label=<LABEL>               The filesystem label.\n\
         type=ext2|ext3|ext4         The filesystem type.\n\
         size=[+]<SIZE>              The virtual filesystem size."
    }
    fn magic_config_key(&self) -> Option<&'static str> {
        Some("dir")
    }
    fn callbacks(&self) -> Callbacks {
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
            | Callbacks::PREAD
    }
    fn config(&mut self, key: &str, value: &str) -> Result<()> {
        match key {
            "dir" => {
                if self.dir.is_some() {
                    return Err(Error::config("dir=<DIRECTORY> must only be set once"));
                }
                self.dir = Some(PathBuf::from(value));
            }
            "label" => self.label = Some(value.to_string()),
            "type" => {
                if !matches!(value, "ext2" | "ext3" | "ext4") {
                    return Err(Error::config(
                        "type=<TYPE> must be an filesystem type supported by e2fsprogs",
                    ));
                }
                self.fstype = Some(value.to_string());
            }
            "size" => {
                self.size = Some(match value.strip_prefix('+') {
                    Some(rest) => SizeParam::Add(size_param(rest)?),
                    None => SizeParam::Exact(size_param(value)?),
                })
            }
            _ => return Err(unknown_param(key)),
        }
        Ok(())
    }
    fn config_complete(&mut self) -> Result<()> {
        if self.dir.is_none() {
            return Err(Error::config(
                "you must supply the dir=<DIRECTORY> parameter after the plugin name on the command line",
            ));
        }
        Ok(())
    }
    fn get_ready(&self) -> Result<()> {
        let dir = self.dir.as_ref().expect("config_complete checked dir");
        let fstype = self.fstype.as_deref().unwrap_or("ext2");
        let fs_size = match self.size {
            Some(SizeParam::Exact(n)) => n,
            add => {
                let estimate = estimate_size(dir)?;
                crate::log::debug(None, format_args!("filesystem size estimate: {estimate}"));
                let extra = match add {
                    Some(SizeParam::Add(n)) => n,
                    _ => 0,
                };
                filesystem_size(estimate, extra, fstype)?
            }
        };
        let fs_size = round_up(fs_size, SECTOR).ok_or_else(too_large)?;
        crate::log::debug(None, format_args!("filesystem virtual size: {fs_size}"));
        let fs = make_filesystem(dir, fstype, self.label.as_deref(), fs_size)?;
        let disk = Disk::new(fs, fs_size)?;
        let _ = self.disk.set(std::sync::Arc::new(disk));
        Ok(())
    }
    fn open(&self, _args: &OpenArgs<'_>) -> Result<Box<dyn Handle>> {
        let disk = self
            .disk
            .get()
            .ok_or_else(|| Error::msg(Errno::EIO, "linuxdisk: the disk was not built"))?;
        Ok(Box::new(DiskHandle(disk.clone())))
    }
}

fn too_large() -> Error {
    Error::config("filesystem size is too large")
}

fn round_up(n: u64, to: u64) -> Option<u64> {
    n.checked_add(to - 1).map(|v| v / to * to)
}

/// The file system size for `estimate` bytes of files: 20% slack, at
/// least 1M, the requested free space and a journal.
fn filesystem_size(estimate: u64, extra: u64, fstype: &str) -> Result<u64> {
    let mut size = estimate
        .checked_add(estimate / 5)
        .and_then(|s| round_up(s, SECTOR))
        .ok_or_else(too_large)?;
    size = size.max(MIN_SIZE);
    size = size.checked_add(extra).ok_or_else(too_large)?;
    if fstype != "ext2" {
        size = size.checked_add(JOURNAL_SIZE).ok_or_else(too_large)?;
    }
    Ok(size)
}

/// The space the directory takes, from `du -c -k -s DIR`.
fn estimate_size(dir: &std::path::Path) -> Result<u64> {
    crate::log::debug(None, format_args!("du -c -k -s {}", dir.display()));
    let out = Command::new("du")
        .args(["-c", "-k", "-s"])
        .arg(dir)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| mkfs::os_error("du: cannot run du", &e))?;
    mkfs::check_status("du", out.status).map_err(|e| Error {
        message: e.message.map(|m| format!("pclose: {m}")),
        ..e
    })?;
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().last().unwrap_or("");
    last.split_whitespace()
        .next()
        .and_then(|n| n.parse::<u64>().ok())
        .and_then(|k| k.checked_mul(1024))
        .ok_or_else(|| {
            Error::msg(
                Errno::EIO,
                format!("could not parse last line of output: {last}"),
            )
        })
}

/// The `mke2fs` to run: nbdkit's `/sbin/mke2fs`, else the one on `$PATH`.
fn mke2fs_path() -> PathBuf {
    for p in ["/sbin/mke2fs", "/usr/sbin/mke2fs"] {
        if std::path::Path::new(p).is_file() {
            return PathBuf::from(p);
        }
    }
    mkfs::which("mke2fs").unwrap_or_else(|| PathBuf::from("mke2fs"))
}

/// Build the file system in a fresh unlinked temporary file.
fn make_filesystem(
    dir: &std::path::Path,
    fstype: &str,
    label: Option<&str>,
    size: u64,
) -> Result<File> {
    let template = mkfs::tmpdir().join("linuxdiskXXXXXX");
    let (file, path) = crate::os::tmpfile::mkstemp(&template)
        .map_err(|e| mkfs::nix_error(format_args!("mkstemp: {}", template.display()), e))?;
    // Unlinked whatever happens; mke2fs writes through the name meanwhile.
    struct Unlink(PathBuf);
    impl Drop for Unlink {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _unlink = Unlink(path.clone());
    mkfs::set_cloexec(&file);
    file.set_len(size)
        .map_err(|e| mkfs::os_error(format_args!("ftruncate: {}", path.display()), &e))?;

    let prog = mke2fs_path();
    let mut cmd = Command::new(&prog);
    cmd.args(["-q", "-F", "-t", fstype]);
    if let Some(l) = label {
        cmd.arg("-L").arg(l);
    }
    cmd.arg("-d").arg(dir).arg(&path);
    crate::log::debug(
        None,
        format_args!(
            "{} -q -F -t {fstype} {}-d {} {}",
            prog.display(),
            label
                .map(|l| format!("-L {} ", mkfs::shell_quote(l)))
                .unwrap_or_default(),
            mkfs::shell_quote(&dir.to_string_lossy()),
            path.display()
        ),
    );
    mkfs::quiet_stdio(&mut cmd)?;
    mkfs::run("mke2fs", &mut cmd)?;
    Ok(file)
}

/// The first and last sectors of a disk holding a file system of
/// `fs_sectors` sectors at [`PARTITION_START`]: (head, tail).
fn partition_table(
    fs_sectors: u64,
    disk_guid: [u8; 16],
    part_guid: [u8; 16],
) -> (Vec<u8>, Vec<u8>) {
    let total = PARTITION_START + fs_sectors + TAIL_SECTORS;
    let last_lba = total - 1;
    let part_last = PARTITION_START + fs_sectors - 1;

    let mut head = vec![0u8; (HEAD_SECTORS * SECTOR) as usize];
    mbr::protective(&mut head, total);

    let mut entries = vec![0u8; (GPT_ARRAY_SECTORS * SECTOR) as usize];
    let linux_fs = parse_guid(LINUX_FS_GUID).unwrap_or_default();
    // Attribute bit 2: legacy BIOS bootable.
    gpt::entry(
        &mut entries,
        &linux_fs,
        &part_guid,
        PARTITION_START..=part_last,
        4,
        b"",
    );
    let header = |current_lba: u64, backup_lba: u64, entries_lba: u64| {
        let mut sector = vec![0u8; SECTOR as usize];
        let h = gpt::header(&Header {
            header_size: 92,
            current_lba,
            backup_lba,
            first_usable_lba: HEAD_SECTORS,
            last_usable_lba: total - TAIL_SECTORS - 1,
            disk_guid,
            entries_lba,
            entries: GPT_ENTRIES as u32,
            entries_crc: crc32(&entries),
        });
        sector[..h.len()].copy_from_slice(&h);
        sector
    };

    let s = SECTOR as usize;
    head[s..2 * s].copy_from_slice(&header(1, last_lba, 2));
    head[2 * s..].copy_from_slice(&entries);

    let mut tail = entries.clone();
    tail.extend_from_slice(&header(last_lba, 1, total - TAIL_SECTORS));
    (head, tail)
}

/// The built disk: partition table in memory around the file system file.
struct Disk {
    head: Vec<u8>,
    fs: File,
    fs_size: u64,
    tail: Vec<u8>,
}

impl Disk {
    fn new(fs: File, fs_size: u64) -> Result<Disk> {
        let (head, tail) = partition_table(fs_size / SECTOR, random_guid(), random_guid());
        Ok(Disk {
            head,
            fs,
            fs_size,
            tail,
        })
    }

    fn size(&self) -> u64 {
        (PARTITION_START + TAIL_SECTORS) * SECTOR + self.fs_size
    }

    fn pread(&self, mut buf: &mut [u8], mut offset: u64) -> Result<()> {
        let fs_start = PARTITION_START * SECTOR;
        let tail_start = fs_start + self.fs_size;
        while !buf.is_empty() {
            let n = if offset < fs_start {
                let n = (fs_start - offset).min(buf.len() as u64) as usize;
                let (dst, _) = buf.split_at_mut(n);
                let head_len = self.head.len() as u64;
                dst.fill(0);
                if offset < head_len {
                    let m = ((head_len - offset) as usize).min(n);
                    dst[..m].copy_from_slice(&self.head[offset as usize..offset as usize + m]);
                }
                n
            } else if offset < tail_start {
                let n = (tail_start - offset).min(buf.len() as u64) as usize;
                mkfs::read_exact(&self.fs, &mut buf[..n], offset - fs_start)?;
                n
            } else {
                let start = (offset - tail_start) as usize;
                let n = buf.len().min(self.tail.len().saturating_sub(start));
                if n == 0 {
                    return Err(Error::new(Errno::EIO));
                }
                buf[..n].copy_from_slice(&self.tail[start..start + n]);
                n
            };
            buf = &mut buf[n..];
            offset += n as u64;
        }
        Ok(())
    }
}

struct DiskHandle(std::sync::Arc<Disk>);

impl Handle for DiskHandle {
    fn get_size(&self) -> Result<u64> {
        Ok(self.0.size())
    }
    fn can_multi_conn(&self) -> Result<bool> {
        Ok(true)
    }
    fn can_cache(&self) -> Result<Support> {
        Ok(Support::Emulate)
    }
    fn pread(&self, buf: &mut [u8], offset: u64, _flags: Flags) -> Result<()> {
        self.0.pread(buf, offset)
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn size_estimate_matches_nbdkit() {
        // Figures taken from nbdkit 1.32 -v ("filesystem virtual size").
        assert_eq!(filesystem_size(61440, 0, "ext2").unwrap(), 1048576);
        assert_eq!(filesystem_size(61440, 10 << 20, "ext2").unwrap(), 11534336);
        assert_eq!(filesystem_size(61440, 0, "ext4").unwrap(), 34603008);
        assert_eq!(filesystem_size(61440, 10 << 20, "ext4").unwrap(), 45088768);
        assert_eq!(filesystem_size(10244096, 0, "ext2").unwrap(), 12293120);
        assert_eq!(
            filesystem_size(10244096, 1 << 20, "ext2").unwrap(),
            13341696
        );
        assert_eq!(filesystem_size(10244096, 0, "ext4").unwrap(), 45847552);
    }

    #[test]
    fn linux_fs_guid_is_mixed_endian() {
        assert_eq!(
            parse_guid(LINUX_FS_GUID).unwrap(),
            [
                0xaf, 0x3d, 0xc6, 0x0f, 0x83, 0x84, 0x72, 0x47, 0x8e, 0x79, 0x3d, 0x69, 0xd8, 0x47,
                0x7d, 0xe4
            ]
        );
    }

    #[test]
    fn gpt_headers_are_consistent() {
        let (head, tail) = partition_table(2048, [1; 16], [2; 16]);
        assert_eq!(&head[510..512], &[0x55, 0xaa]);
        let h = &head[512..1024];
        assert_eq!(&h[0..8], b"EFI PART");
        let mut z = h[..92].to_vec();
        z[16..20].fill(0);
        assert_eq!(crc32(&z).to_le_bytes(), h[16..20]);
        // 2048 + 2048 + 33 sectors: backup header in the last one.
        assert_eq!(u64::from_le_bytes(h[32..40].try_into().unwrap()), 4128);
        assert_eq!(u64::from_le_bytes(h[48..56].try_into().unwrap()), 4095);
        let b = &tail[tail.len() - 512..];
        assert_eq!(u64::from_le_bytes(b[24..32].try_into().unwrap()), 4128);
        assert_eq!(u64::from_le_bytes(b[72..80].try_into().unwrap()), 4096);
        assert_eq!(&tail[..128], &head[1024..1152]);
    }
}
