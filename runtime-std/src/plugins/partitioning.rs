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

use super::gpt::{crc32, parse_guid, random_bytes as random_guid};
use crate::os::errno::io_error;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use nbdkit_core::backend::{Callbacks, Error, Flags, Handle, OpenArgs, Plugin, Result, Support};
use nbdkit_core::errno::Errno;
use nbdkit_core::filters::params::parse_unsigned;
use nbdkit_core::plugins::{size_param, unknown_param};

const SECTOR: u64 = 512;
/// The largest (and default) alignment: 2048 sectors.
const MAX_ALIGNMENT: u64 = 2048 * SECTOR;
/// The largest disk MBR can describe, less room for padding.
const MAX_MBR_DISK_SIZE: u64 = u32::MAX as u64 * SECTOR - 5 * MAX_ALIGNMENT;
/// GPT tables hold a multiple of this many entries.
const GPT_MIN_ENTRIES: usize = 128;
const GPT_ENTRY_SIZE: usize = 128;
/// nbdkit writes the 92 bytes of fields padded to 96 (a C struct's size)
/// and says 96 in the header, which the header's CRC then covers.
const GPT_HEADER_SIZE: usize = 96;
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

/// What a range of the virtual disk holds.
#[derive(Debug)]
enum Content {
    /// Table bytes (MBR, EBR, GPT primary or backup).
    Data(Box<[u8]>),
    /// Zero padding.
    Zero,
    /// The i'th file.
    File(usize),
}

/// A range of the disk.
#[derive(Debug)]
struct Region {
    start: u64,
    len: u64,
    content: Content,
}

impl Region {
    fn end(&self) -> u64 {
        self.start + self.len
    }
}

/// The disk: shared by all connections.
#[derive(Debug)]
struct Disk {
    files: Vec<PartFile>,
    regions: Vec<Region>,
    size: u64,
    /// Read-write descriptors, in file order, once a writable connection
    /// has opened them.
    writable: Mutex<Option<Arc<Vec<File>>>>,
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

/// Write an MBR partition entry at `out[..16]`: `start` and `len` in bytes
/// (`start` a multiple of the sector size; `len` rounded up to sectors).
/// CHS fields say "too large", as LBA is always used.
fn mbr_entry(out: &mut [u8], bootable: bool, id: u8, start: u64, len: u64) {
    const CHS_TOO_LARGE: [u8; 3] = [254, 0xff, 0xff];
    out[0] = if bootable { 0x80 } else { 0 };
    out[1..4].copy_from_slice(&CHS_TOO_LARGE);
    out[4] = id;
    out[5..8].copy_from_slice(&CHS_TOO_LARGE);
    out[8..12].copy_from_slice(&((start / SECTOR) as u32).to_le_bytes());
    out[12..16].copy_from_slice(&(len.div_ceil(SECTOR) as u32).to_le_bytes());
}

/// Where things go on the disk, before the tables are filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Table(usize),
    Zero,
    File(usize),
}

/// Lay out the disk: `(start, len, slot)` for each region in order.
/// Tables are numbered: 0 the primary table, 1.. the EBRs (MBR) or 1 the
/// GPT backup table.
fn layout(files: &[PartFile], parttype: PartType, pta_lbas: u64) -> Vec<(u64, u64, Slot)> {
    let mut out: Vec<(u64, u64, Slot)> = Vec::new();
    let mut end = 0u64;
    let mut push = |out: &mut Vec<(u64, u64, Slot)>, len: u64, slot| {
        out.push((end, len, slot));
        end += len;
        end
    };
    let primary = match parttype {
        PartType::Mbr => SECTOR,
        PartType::Gpt => (2 + pta_lbas) * SECTOR,
    };
    let mut pos = push(&mut out, primary, Slot::Table(0));
    let logical = parttype == PartType::Mbr && files.len() > 4;
    for (i, f) in files.iter().enumerate() {
        if logical && i >= 3 {
            pos = push(&mut out, SECTOR, Slot::Table(i - 2));
        }
        let aligned = pos.next_multiple_of(f.alignment);
        if aligned > pos {
            push(&mut out, aligned - pos, Slot::Zero);
        }
        pos = push(&mut out, f.size, Slot::File(i));
        let rounded = pos.next_multiple_of(SECTOR);
        if rounded > pos {
            pos = push(&mut out, rounded - pos, Slot::Zero);
        }
    }
    if parttype == PartType::Gpt {
        push(&mut out, (pta_lbas + 1) * SECTOR, Slot::Table(1));
    }
    out
}

/// Build the MBR and the EBRs (tables 0..).
fn mbr_tables(files: &[PartFile], slots: &[(u64, u64, Slot)], size: u64) -> Vec<Vec<u8>> {
    let find = |want: Slot| {
        slots
            .iter()
            .find(|s| s.2 == want)
            .map(|s| (s.0, s.1))
            .unwrap_or((0, 0))
    };
    let n = files.len();
    let mut tables = vec![vec![0u8; SECTOR as usize]; if n > 4 { n - 2 } else { 1 }];
    for t in tables.iter_mut() {
        t[0x1fe] = 0x55;
        t[0x1ff] = 0xaa;
    }
    let primaries = if n > 4 { 3 } else { n };
    for (i, f) in files.iter().enumerate().take(primaries) {
        let (start, len) = find(Slot::File(i));
        mbr_entry(
            &mut tables[0][0x1be + 16 * i..],
            i == 0,
            f.mbr_id,
            start,
            len,
        );
    }
    if n > 4 {
        // The extended partition runs from the first EBR to the end.
        let (ext, _) = find(Slot::Table(1));
        mbr_entry(&mut tables[0][0x1ee..], false, 0x0f, ext, size - ext);
        for i in 3..n {
            let (ebr, _) = find(Slot::Table(i - 2));
            let (start, len) = find(Slot::File(i));
            let t = &mut tables[i - 2];
            mbr_entry(&mut t[0x1be..], false, files[i].mbr_id, start - ebr, len);
            if i + 1 < n {
                // The next EBR, relative to the extended partition, and
                // its size up to the end of its partition's data.
                let (next_ebr, _) = find(Slot::Table(i - 1));
                let (next, next_len) = find(Slot::File(i + 1));
                mbr_entry(
                    &mut t[0x1ce..],
                    false,
                    0x0f,
                    next_ebr - ext,
                    next + next_len - next_ebr,
                );
            }
        }
    }
    tables
}

/// Build the GPT primary (protective MBR, header, entries) and backup
/// (entries, header) tables.
fn gpt_tables(
    files: &[PartFile],
    slots: &[(u64, u64, Slot)],
    size: u64,
    entries: usize,
) -> Vec<Vec<u8>> {
    let pta_bytes = entries * GPT_ENTRY_SIZE;
    let pta_lbas = (pta_bytes as u64) / SECTOR;
    let mut pta = vec![0u8; pta_bytes];
    let mut n = 0;
    for &(start, len, slot) in slots {
        let Slot::File(i) = slot else { continue };
        let f = &files[i];
        let e = &mut pta[n * GPT_ENTRY_SIZE..(n + 1) * GPT_ENTRY_SIZE];
        e[0..16].copy_from_slice(&f.type_guid);
        e[16..32].copy_from_slice(&f.unique_guid);
        e[32..40].copy_from_slice(&(start / SECTOR).to_le_bytes());
        e[40..48].copy_from_slice(&((start + len - 1) / SECTOR).to_le_bytes());
        let attributes: u64 = if i == 0 { 4 } else { 0 };
        e[48..56].copy_from_slice(&attributes.to_le_bytes());
        // The name as given, byte by byte into UTF-16LE units, when short.
        let name = f.name.as_bytes();
        if name.len() < 36 {
            for (k, &c) in name.iter().enumerate() {
                e[56 + 2 * k] = c;
            }
        }
        n += 1;
    }
    let lbas = size / SECTOR;
    let header = |current: u64, backup: u64, entries_lba: u64| {
        let mut h = vec![0u8; GPT_HEADER_SIZE];
        h[0..8].copy_from_slice(b"EFI PART");
        h[8..12].copy_from_slice(&[0, 0, 1, 0]);
        h[12..16].copy_from_slice(&(GPT_HEADER_SIZE as u32).to_le_bytes());
        h[24..32].copy_from_slice(&current.to_le_bytes());
        h[32..40].copy_from_slice(&backup.to_le_bytes());
        h[40..48].copy_from_slice(&(2 + pta_lbas).to_le_bytes());
        h[48..56].copy_from_slice(&(lbas - pta_lbas - 2).to_le_bytes());
        // 56..72: the disk GUID, left zero.
        h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
        h[80..84].copy_from_slice(&(entries as u32).to_le_bytes());
        h[84..88].copy_from_slice(&(GPT_ENTRY_SIZE as u32).to_le_bytes());
        h[88..92].copy_from_slice(&crc32(&pta).to_le_bytes());
        let crc = crc32(&h);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        h
    };

    let mut primary = vec![0u8; ((2 + pta_lbas) * SECTOR) as usize];
    // Protective MBR: one 0xEE partition over as much of the disk as MBR
    // can describe.
    let end = (size - 1).min(u32::MAX as u64 * SECTOR);
    mbr_entry(&mut primary[0x1be..], false, 0xee, SECTOR, end - SECTOR + 1);
    primary[0x1fe] = 0x55;
    primary[0x1ff] = 0xaa;
    let h = header(1, lbas - 1, 2);
    primary[512..512 + GPT_HEADER_SIZE].copy_from_slice(&h);
    primary[1024..].copy_from_slice(&pta);

    let mut backup = vec![0u8; ((pta_lbas + 1) * SECTOR) as usize];
    backup[..pta_bytes].copy_from_slice(&pta);
    let h = header(lbas - 1, 1, lbas - pta_lbas - 1);
    backup[pta_bytes..pta_bytes + GPT_HEADER_SIZE].copy_from_slice(&h);
    vec![primary, backup]
}

impl Partitioning {
    /// Lay out the disk and build its tables.
    fn build(&mut self, parttype: PartType) -> Disk {
        let files = std::mem::take(&mut self.files);
        let entries = files.len().next_multiple_of(GPT_MIN_ENTRIES);
        let pta_lbas = (entries * GPT_ENTRY_SIZE) as u64 / SECTOR;
        let slots = layout(&files, parttype, pta_lbas);
        let size = slots.last().map(|s| s.0 + s.1).unwrap_or(0);
        let tables = match parttype {
            PartType::Mbr => mbr_tables(&files, &slots, size),
            PartType::Gpt => gpt_tables(&files, &slots, size, entries),
        };
        let mut tables: Vec<Option<Vec<u8>>> = tables.into_iter().map(Some).collect();
        let regions = slots
            .iter()
            .map(|&(start, len, slot)| Region {
                start,
                len,
                content: match slot {
                    Slot::Table(t) => {
                        Content::Data(tables[t].take().unwrap_or_default().into_boxed_slice())
                    }
                    Slot::Zero => Content::Zero,
                    Slot::File(i) => Content::File(i),
                },
            })
            .collect();
        Disk {
            files,
            regions,
            size,
            writable: Mutex::new(None),
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
        let disk = self.build(parttype);
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

impl Disk {
    /// The read-write descriptors, opening them on first use.
    fn open_writable(&self) -> Result<Arc<Vec<File>>> {
        let mut slot = self
            .writable
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(files) = &*slot {
            return Ok(files.clone());
        }
        let mut out = Vec::with_capacity(self.files.len());
        for f in &self.files {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
                .open(&f.path)
                .map_err(|e| io_error(&f.name, &e))?;
            let meta = file
                .metadata()
                .map_err(|e| io_error(&format!("{}: stat", f.name), &e))?;
            if meta.dev() != f.dev || meta.ino() != f.ino {
                return Err(Error::msg(
                    Errno::EIO,
                    format!("{}: file was replaced while nbdkit was running", f.name),
                ));
            }
            out.push(file);
        }
        let files = Arc::new(out);
        *slot = Some(files.clone());
        Ok(files)
    }

    /// The index of the region holding `offset` (which is below the size).
    fn region_at(&self, offset: u64) -> usize {
        self.regions.partition_point(|r| r.end() <= offset)
    }

    /// Call `f(region, offset_in_region, range_in_request)` for each region
    /// that `offset..offset+count` touches, in order.
    fn for_each(
        &self,
        offset: u64,
        count: u64,
        mut f: impl FnMut(&Region, u64, core::ops::Range<usize>) -> Result<()>,
    ) -> Result<()> {
        let end = offset
            .checked_add(count)
            .filter(|e| *e <= self.size)
            .ok_or_else(|| {
                Error::msg(
                    Errno::EIO,
                    "partitioning: request beyond the end of the disk",
                )
            })?;
        let mut pos = offset;
        let mut i = self.region_at(offset);
        while pos < end && i < self.regions.len() {
            let r = &self.regions[i];
            let n = r.end().min(end) - pos;
            let start = (pos - offset) as usize;
            f(r, pos - r.start, start..start + n as usize)?;
            pos += n;
            i += 1;
        }
        Ok(())
    }
}

/// A connection: reads through the read-only descriptors unless it may
/// write.
#[derive(Debug)]
struct PartitioningHandle {
    disk: Arc<Disk>,
    writable: Option<Arc<Vec<File>>>,
}

impl PartitioningHandle {
    fn file(&self, i: usize) -> &File {
        match &self.writable {
            Some(w) => &w[i],
            None => &self.disk.files[i].file,
        }
    }
}

impl Handle for PartitioningHandle {
    fn get_size(&self) -> Result<u64> {
        Ok(self.disk.size)
    }

    fn can_multi_conn(&self) -> Result<bool> {
        Ok(true)
    }

    fn can_cache(&self) -> Result<Support> {
        Ok(Support::Emulate)
    }

    fn pread(&self, buf: &mut [u8], offset: u64, _flags: Flags) -> Result<()> {
        self.disk
            .for_each(offset, buf.len() as u64, |r, off, range| {
                let part = &mut buf[range];
                match &r.content {
                    Content::Data(d) => {
                        part.copy_from_slice(&d[off as usize..off as usize + part.len()])
                    }
                    Content::Zero => part.fill(0),
                    Content::File(i) => {
                        let name = &self.disk.files[*i].name;
                        let file = self.file(*i);
                        let mut done = 0;
                        while done < part.len() {
                            match file.read_at(&mut part[done..], off + done as u64) {
                                Ok(0) => {
                                    return Err(Error::msg(
                                        Errno::EIO,
                                        format!("pread: {name}: unexpected end of file"),
                                    ))
                                }
                                Ok(n) => done += n,
                                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                                Err(e) => return Err(io_error(&format!("pread: {name}"), &e)),
                            }
                        }
                    }
                }
                Ok(())
            })
    }

    fn pwrite(&self, buf: &[u8], offset: u64, _flags: Flags) -> Result<()> {
        let Some(files) = &self.writable else {
            return Err(Error::new(Errno::EROFS));
        };
        self.disk
            .for_each(offset, buf.len() as u64, |r, off, range| {
                let part = &buf[range];
                match &r.content {
                    Content::Data(d) => {
                        if d[off as usize..off as usize + part.len()] != *part {
                            return Err(Error::msg(
                                Errno::EIO,
                                "attempt to change partition table of virtual disk",
                            ));
                        }
                    }
                    Content::Zero => {
                        if part.iter().any(|b| *b != 0) {
                            return Err(Error::msg(
                                Errno::EIO,
                                "write non-zeroes to padding region",
                            ));
                        }
                    }
                    Content::File(i) => {
                        let name = &self.disk.files[*i].name;
                        let mut done = 0;
                        while done < part.len() {
                            match files[*i].write_at(&part[done..], off + done as u64) {
                                Ok(0) => {
                                    return Err(Error::msg(
                                        Errno::EIO,
                                        format!("pwrite: {name}: wrote nothing"),
                                    ))
                                }
                                Ok(n) => done += n,
                                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                                Err(e) => return Err(io_error(&format!("pwrite: {name}"), &e)),
                            }
                        }
                    }
                }
                Ok(())
            })
    }

    fn flush(&self, _flags: Flags) -> Result<()> {
        for i in 0..self.disk.files.len() {
            self.file(i)
                .sync_data()
                .map_err(|e| io_error("fdatasync", &e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use nbdkit_core::backend::Peer;

    struct Dir(PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    fn dir() -> Dir {
        let t = std::env::temp_dir().join("nbdkit-partitioning-testXXXXXX");
        Dir(nix::unistd::mkdtemp(&t).unwrap())
    }

    fn open(p: &Partitioning, readonly: bool) -> Box<dyn Handle> {
        let peer = Peer::Unknown;
        p.open(&OpenArgs {
            readonly,
            export_name: "",
            is_tls: false,
            peer: &peer,
        })
        .unwrap()
    }

    fn plugin(d: &Dir, files: &[(&str, &[u8])], extra: &[(&str, &str)]) -> Partitioning {
        let mut p = Partitioning::default();
        for (k, v) in extra {
            p.config(k, v).unwrap();
        }
        for (name, content) in files {
            let f = d.0.join(name);
            std::fs::write(&f, content).unwrap();
            p.config("file", f.to_str().unwrap()).unwrap();
        }
        p.config_complete().unwrap();
        p
    }

    #[test]
    fn mbr_layout_and_entries() {
        let d = dir();
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
        let d = dir();
        let p = plugin(&d, &[("a", &[0u8; 1024])], &[("alignment", "512")]);
        let h = open(&p, false);
        h.pwrite(b"hello", 512, Flags::NONE).unwrap();
        assert_eq!(&std::fs::read(d.0.join("a")).unwrap()[..5], b"hello");
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
        let d = dir();
        let p = plugin(&d, &[("a", &[0u8; 512])], &[]);
        let h = open(&p, true);
        let mut buf = [1u8; 512];
        h.pread(&mut buf, 1 << 20, Flags::NONE).unwrap();
        assert!(p.disk.as_ref().unwrap().writable.lock().unwrap().is_none());
    }

    #[test]
    fn gpt_headers_check_out() {
        let d = dir();
        let p = plugin(&d, &[("a", &[1u8; 4096])], &[("partition-type", "gpt")]);
        let h = open(&p, true);
        let size = h.get_size().unwrap();
        let mut primary = vec![0u8; 34 * 512];
        h.pread(&mut primary, 0, Flags::NONE).unwrap();
        let hdr = &primary[512..512 + GPT_HEADER_SIZE];
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
        let d = dir();
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
