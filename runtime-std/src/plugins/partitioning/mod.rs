//! `partitioning`: a partitioned disk made of files, one partition each.
//!
//! Parameters, read in order (the last three apply to the files after them):
//!
//! - `[file=]FILENAME`: a file holding one partition (at least one; zero
//!   length files are refused). The name as given also becomes the GPT
//!   partition name when it is shorter than 36 bytes.
//! - `partition-type=mbr|dos|gpt`: the table type. Without it: GPT for
//!   more than 4 files or more than MBR can address (about 2 TB), else MBR.
//!   MBR with more than 4 files puts files 4.. in logical partitions of an
//!   extended partition (one EBR sector before each).
//! - `alignment=N`: the alignment of following partitions, a multiple of
//!   512 from 512 to 1M (the default).
//! - `mbr-id=0xN|default`: the MBR type byte of following partitions
//!   (default 0x83).
//! - `type-guid=GUID|default`: the GPT type GUID of following partitions
//!   (default 0FC63DAF-8483-4772-8E79-3D69D8477DE4).
//!
//! The disk is the table, then each file aligned as asked and padded with
//! zeroes to a whole sector, then for GPT the backup table. The disk GUID
//! is zero; each partition's unique GUID is random. Writes reach the
//! files; writing the table or padding fails with EIO unless the bytes do
//! not change.
//!
//! Each file is opened once, read-only, when its parameter is read. The
//! first connection that may write opens each file once more, read-write
//! (checking it is still the same file), and every later writable
//! connection shares those descriptors: with `-r` no file is ever opened
//! for writing. (nbdkit opens every file read-write at start-up.)

mod disk;
mod gpt;
mod layout;
mod mbr;

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;

use nbdkit_core::backend::{Callbacks, Error, Handle, OpenArgs, Plugin, Result};
use nbdkit_core::errno::Errno;
use nbdkit_core::filters::params::parse_unsigned;
use nbdkit_core::plugins::{size_param, unknown_param};

use super::ptable::gpt::{parse_guid, random_bytes as random_guid};
use super::ptable::SECTOR;
use crate::os::errno::io_error;
use disk::{Content, Disk, PartitioningHandle};

/// The largest (and default) alignment: 2048 sectors.
const MAX_ALIGNMENT: u64 = 2048 * SECTOR;
/// The largest disk MBR can describe, less room for padding.
const MAX_MBR_DISK_SIZE: u64 = u32::MAX as u64 * SECTOR - 5 * MAX_ALIGNMENT;
/// GPT tables hold a multiple of this many entries.
const GPT_MIN_ENTRIES: usize = 128;
const DEFAULT_MBR_ID: u8 = 0x83;
const DEFAULT_TYPE_GUID: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";

/// Table type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PartType {
    Mbr,
    Gpt,
}

/// One `file=` and the settings in force when it was given.
#[derive(Debug)]
struct PartFile {
    /// The name as given, for messages and the GPT partition name.
    name: String,
    /// The resolved path, to reopen it read-write.
    path: PathBuf,
    /// The read-only descriptor opened at configuration.
    file: File,
    size: u64,
    dev: u64,
    ino: u64,
    alignment: u64,
    mbr_id: u8,
    type_guid: [u8; 16],
    unique_guid: [u8; 16],
}

/// The partitioning plugin.
#[derive(Debug)]
pub struct Partitioning {
    files: Vec<PartFile>,
    parttype: Option<PartType>,
    alignment: u64,
    mbr_id: u8,
    type_guid: [u8; 16],
    disk: Option<Arc<Disk>>,
}

impl Default for Partitioning {
    fn default() -> Self {
        Partitioning {
            files: Vec::new(),
            parttype: None,
            alignment: MAX_ALIGNMENT,
            mbr_id: DEFAULT_MBR_ID,
            type_guid: parse_guid(DEFAULT_TYPE_GUID).unwrap_or_default(),
            disk: None,
        }
    }
}

impl Plugin for Partitioning {
    fn debug_flags(&self) -> &'static [&'static str] {
        &["regions"]
    }
    fn name(&self) -> &'static str {
        "partitioning"
    }
    fn config_help(&self) -> &'static str {
        "file=<FILENAME>  (required) File(s) containing partitions\n\
         partition-type=mbr|gpt      Partition type\n\
         mbr-id=0xNN|default         MBR partition type byte of the following files\n\
         type-guid=GUID|default      GPT partition type GUID of the following files\n\
         alignment=<N>               Partition alignment (default 1M)"
    }
    fn magic_config_key(&self) -> Option<&'static str> {
        Some("file")
    }
    fn callbacks(&self) -> Callbacks {
        // nbdkit's partitioning is an API 1 plugin: its pread, pwrite and
        // flush are the `_v1` slots, which have no has_ line here.
        Callbacks::LOAD
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
            | Callbacks::PWRITE_V1
            | Callbacks::FLUSH_V1
    }

    fn config(&mut self, key: &str, value: &str) -> Result<()> {
        match key {
            "file" => {
                let file = File::open(value).map_err(|e| io_error(value, &e))?;
                let meta = file
                    .metadata()
                    .map_err(|e| io_error(&format!("{value}: stat"), &e))?;
                if meta.len() == 0 {
                    return Err(Error::config(format!(
                        "{value}: zero length partitions are not allowed"
                    )));
                }
                let path = std::fs::canonicalize(value)
                    .map_err(|e| io_error(&format!("realpath: {value}"), &e))?;
                self.files.push(PartFile {
                    name: value.to_string(),
                    path,
                    file,
                    size: meta.len(),
                    dev: meta.dev(),
                    ino: meta.ino(),
                    alignment: self.alignment,
                    mbr_id: self.mbr_id,
                    type_guid: self.type_guid,
                    unique_guid: random_guid(),
                });
            }
            "partition-type" => {
                self.parttype = Some(
                    if value.eq_ignore_ascii_case("mbr") || value.eq_ignore_ascii_case("dos") {
                        PartType::Mbr
                    } else if value.eq_ignore_ascii_case("gpt") {
                        PartType::Gpt
                    } else {
                        return Err(Error::config(format!("unknown partition-type: {value}")));
                    },
                );
            }
            "alignment" => {
                let a = size_param(value)?;
                if !(SECTOR..=MAX_ALIGNMENT).contains(&a) {
                    return Err(Error::config(format!(
                        "partition alignment {a} should be >= sector size {SECTOR} and \
                         <= maximum alignment {MAX_ALIGNMENT}"
                    )));
                }
                if a % SECTOR != 0 {
                    return Err(Error::config(format!(
                        "partition alignment {a} should be a multiple of sector size {SECTOR}"
                    )));
                }
                self.alignment = a;
            }
            "mbr-id" => {
                self.mbr_id = if value.eq_ignore_ascii_case("default") {
                    DEFAULT_MBR_ID
                } else {
                    parse_unsigned("mbr-id", value, u8::MAX.into())? as u8
                };
            }
            "type-guid" => {
                let v = if value.eq_ignore_ascii_case("default") {
                    DEFAULT_TYPE_GUID
                } else {
                    value
                };
                self.type_guid = parse_guid(v)
                    .ok_or_else(|| Error::config(format!("could not validate GUID: {value}")))?;
            }
            _ => return Err(unknown_param(key)),
        }
        Ok(())
    }

    fn config_complete(&mut self) -> Result<()> {
        if self.files.is_empty() {
            return Err(Error::config(
                "at least one file= parameter must be supplied",
            ));
        }
        let total = self
            .files
            .iter()
            .fold(0u64, |t, f| t.saturating_add(f.size));
        let needs_gpt = total > MAX_MBR_DISK_SIZE;
        let parttype = match self.parttype {
            None => {
                let t = if needs_gpt || self.files.len() > 4 {
                    PartType::Gpt
                } else {
                    PartType::Mbr
                };
                crate::log::debug(
                    None,
                    format_args!(
                        "picking partition type {}",
                        if t == PartType::Gpt { "GPT" } else { "MBR" }
                    ),
                );
                t
            }
            Some(PartType::Mbr) if needs_gpt => {
                return Err(Error::config(format!(
                    "MBR partition table type supports a maximum virtual disk size of \
                     about 2 TB, but you requested {} partition(s) and a total size of \
                     {total} bytes (> {MAX_MBR_DISK_SIZE}).  Try using: partition-type=gpt",
                    self.files.len()
                )));
            }
            Some(t) => t,
        };
        if total > u64::MAX / 2 {
            return Err(Error::config("partitioning: the files are too large"));
        }
        let disk = layout::build(std::mem::take(&mut self.files), parttype);
        // -D partitioning.regions=1: the region table, as nbdkit prints it.
        if nbdkit_core::debug::enabled("partitioning", "regions") {
            for (i, r) in disk.regions.iter().enumerate() {
                let kind = match &r.content {
                    Content::Data(_) => "data",
                    Content::Zero => "zero",
                    Content::File(f) => &disk.files[*f].name,
                };
                crate::log::debug(
                    None,
                    format_args!("region[{i}]: {:x}-{:x} type={kind}", r.start, r.end() - 1),
                );
            }
        }
        self.disk = Some(Arc::new(disk));
        Ok(())
    }

    fn open(&self, args: &OpenArgs<'_>) -> Result<Box<dyn Handle>> {
        let disk = self
            .disk
            .clone()
            .ok_or_else(|| Error::msg(Errno::EIO, "partitioning: not configured"))?;
        let writable = if args.readonly {
            None
        } else {
            Some(disk.open_writable()?)
        };
        Ok(Box::new(PartitioningHandle { disk, writable }))
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use crate::plugins::ptable::gpt::crc32;
    use crate::plugins::testing::{dir, open, TempDir};
    use nbdkit_core::backend::Flags;

    fn plugin(d: &TempDir, files: &[(&str, &[u8])], extra: &[(&str, &str)]) -> Partitioning {
        let mut p = Partitioning::default();
        for (k, v) in extra {
            p.config(k, v).unwrap();
        }
        for (name, content) in files {
            let f = d.path().join(name);
            std::fs::write(&f, content).unwrap();
            p.config("file", f.to_str().unwrap()).unwrap();
        }
        p.config_complete().unwrap();
        p
    }

    #[test]
    fn mbr_layout_and_entries() {
        let d = dir("nbdkit-partitioning-test");
        let p = plugin(&d, &[("a", &[1u8; 1000]), ("b", &[2u8; 512])], &[]);
        let h = open(&p, true);
        // MBR, pad to 1M, a (1000 + 24 pad), pad to 2M, b.
        assert_eq!(h.get_size().unwrap(), 2 * 1024 * 1024 + 512);
        let mut mbr = [0u8; 512];
        h.pread(&mut mbr, 0, Flags::NONE).unwrap();
        assert_eq!(&mbr[0x1fe..], &[0x55, 0xaa]);
        assert_eq!(
            &mbr[0x1be..0x1ce],
            &[0x80, 254, 255, 255, 0x83, 254, 255, 255, 0, 8, 0, 0, 2, 0, 0, 0]
        );
        assert_eq!(&mbr[0x1ce + 8..0x1ce + 16], &[0, 16, 0, 0, 1, 0, 0, 0]);
        let mut buf = [9u8; 1100];
        h.pread(&mut buf, 1024 * 1024, Flags::NONE).unwrap();
        assert!(buf[..1000].iter().all(|b| *b == 1));
        assert!(buf[1000..].iter().all(|b| *b == 0));
    }

    #[test]
    fn writes_reach_files_but_not_the_table() {
        let d = dir("nbdkit-partitioning-test");
        let p = plugin(&d, &[("a", &[0u8; 1024])], &[("alignment", "512")]);
        let h = open(&p, false);
        h.pwrite(b"hello", 512, Flags::NONE).unwrap();
        assert_eq!(&std::fs::read(d.path().join("a")).unwrap()[..5], b"hello");
        let mut mbr = [0u8; 512];
        h.pread(&mut mbr, 0, Flags::NONE).unwrap();
        // Rewriting the same table bytes is allowed; changing them is not.
        h.pwrite(&mbr, 0, Flags::NONE).unwrap();
        mbr[0] = 1;
        let e = h.pwrite(&mbr, 0, Flags::NONE).unwrap_err();
        assert_eq!(e.errno, Errno::EIO);
        let ro = open(&p, true);
        assert_eq!(
            ro.pwrite(b"x", 512, Flags::NONE).unwrap_err().errno,
            Errno::EROFS
        );
    }

    /// A read-only connection opens no file for writing.
    #[test]
    fn readonly_connections_leave_files_read_only() {
        let d = dir("nbdkit-partitioning-test");
        let p = plugin(&d, &[("a", &[0u8; 512])], &[]);
        let h = open(&p, true);
        let mut buf = [1u8; 512];
        h.pread(&mut buf, 1 << 20, Flags::NONE).unwrap();
        assert!(p.disk.as_ref().unwrap().writable.lock().unwrap().is_none());
    }

    #[test]
    fn gpt_headers_check_out() {
        let d = dir("nbdkit-partitioning-test");
        let p = plugin(&d, &[("a", &[1u8; 4096])], &[("partition-type", "gpt")]);
        let h = open(&p, true);
        let size = h.get_size().unwrap();
        let mut primary = vec![0u8; 34 * 512];
        h.pread(&mut primary, 0, Flags::NONE).unwrap();
        let hdr = &primary[512..512 + gpt::HEADER_SIZE as usize];
        assert_eq!(&hdr[..8], b"EFI PART");
        let mut copy = hdr.to_vec();
        copy[16..20].fill(0);
        assert_eq!(crc32(&copy).to_le_bytes(), hdr[16..20]);
        assert_eq!(crc32(&primary[1024..]).to_le_bytes(), hdr[88..92]);
        let mut backup = vec![0u8; 512];
        h.pread(&mut backup, size - 512, Flags::NONE).unwrap();
        assert_eq!(&backup[..8], b"EFI PART");
        assert_eq!(
            u64::from_le_bytes(backup[24..32].try_into().unwrap()),
            size / 512 - 1
        );
    }

    #[test]
    fn more_than_four_files_default_to_gpt() {
        let d = dir("nbdkit-partitioning-test");
        let files: Vec<(String, Vec<u8>)> = (0..5)
            .map(|i| (format!("f{i}"), vec![i as u8; 512]))
            .collect();
        let refs: Vec<(&str, &[u8])> = files
            .iter()
            .map(|(n, c)| (n.as_str(), c.as_slice()))
            .collect();
        let p = plugin(&d, &refs, &[]);
        let h = open(&p, true);
        let mut buf = [0u8; 8];
        h.pread(&mut buf, 512, Flags::NONE).unwrap();
        assert_eq!(&buf, b"EFI PART");
    }

    #[test]
    fn config_errors_match_nbdkit() {
        let mut p = Partitioning::default();
        let msg = |r: Result<()>| r.unwrap_err().message.unwrap();
        assert_eq!(
            msg(p.config("alignment", "1000")),
            "partition alignment 1000 should be a multiple of sector size 512"
        );
        assert_eq!(
            msg(p.config("mbr-id", "300")),
            "mbr-id: could not parse number: \"300\": Numerical result out of range"
        );
        assert_eq!(
            msg(p.config("type-guid", "abc")),
            "could not validate GUID: abc"
        );
        assert_eq!(
            msg(p.config("partition-type", "foo")),
            "unknown partition-type: foo"
        );
        assert_eq!(
            msg(p.config_complete()),
            "at least one file= parameter must be supplied"
        );
    }
}
