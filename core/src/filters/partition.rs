//! `partition`: serve one partition of a disk with an MBR or GPT partition
//! table, found by reading the layer below when a connection opens.
//!
//! Parameter: `partition=N` (required, counting from 1; MBR logical
//! partitions are 5 and up). Every field read from the table is checked
//! against the disk before it is used.

use alloc::boxed::Box;
use alloc::format;

use super::offset::Window;
use super::params::parse_unsigned;
use crate::backend::{
    Context, Error, Extents, Filter, FilterHandle, Flags, NextOpener, OpenArgs, Result,
};
use crate::errno::Errno;

const SECTOR: u64 = 512;
/// MBR partition types of extended partitions (DOS, Windows LBA, Linux).
const EXTENDED: [u8; 3] = [0x05, 0x0f, 0x85];

/// The partition filter.
#[derive(Debug, Default)]
pub struct Partition {
    partnum: u32,
}

impl Filter for Partition {
    fn name(&self) -> &'static str {
        "partition"
    }
    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit partition filter")
    }
    fn config_help(&self) -> &'static str {
        "partition=<PART>    (required) The partition number (counting from 1)."
    }
    fn blocks(&self) -> bool {
        false
    }
    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        if key != "partition" {
            return Ok(false);
        }
        let n = parse_unsigned(key, value, u64::from(i32::MAX as u32))?;
        if n == 0 {
            return Err(Error::config("invalid partition number"));
        }
        self.partnum = n as u32;
        Ok(true)
    }
    fn config_complete(&mut self) -> Result<()> {
        if self.partnum == 0 {
            return Err(Error::config(
                "you must supply the partition parameter on the command line",
            ));
        }
        Ok(())
    }
    fn open(
        &self,
        next: &mut dyn NextOpener,
        args: &OpenArgs<'_>,
    ) -> Result<Box<dyn FilterHandle>> {
        next.open(args.readonly, args.export_name)?;
        Ok(Box::new(PartitionHandle {
            partnum: self.partnum,
            window: Window::new(0, Some(0)),
        }))
    }
}

struct PartitionHandle {
    partnum: u32,
    window: Window,
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn le64(b: &[u8], at: usize) -> u64 {
    u64::from(le32(b, at)) | u64::from(le32(b, at + 4)) << 32
}

fn fail(msg: impl Into<alloc::string::String>) -> Error {
    Error::msg(Errno::EINVAL, msg)
}

/// One MBR partition entry: type, first sector, sectors.
fn mbr_entry(sector: &[u8], i: usize) -> (u8, u64, u64) {
    let e = 0x1be + 16 * i;
    (
        sector[e + 4],
        u64::from(le32(sector, e + 8)),
        u64::from(le32(sector, e + 12)),
    )
}

/// Find partition `n` (from 1) of an MBR table: `(offset, length)`, with
/// nbdkit's rules and messages. Logical partitions (5 and up) are found by
/// following the chain of extended boot records from the first extended
/// partition; the chain must move forward through the disk, so it ends.
fn find_mbr(next: &Context, mbr: &[u8], n: u32) -> Result<(u64, u64)> {
    let not_found = || fail(format!("MBR partition {n} not found"));
    if n <= 4 {
        let (ty, start, len) = mbr_entry(mbr, n as usize - 1);
        if ty == 0 || EXTENDED.contains(&ty) || len == 0 {
            return Err(not_found());
        }
        return Ok((start * SECTOR, len * SECTOR));
    }
    let Some((_, ep_start, ep_len)) = (0..4)
        .map(|i| mbr_entry(mbr, i))
        .find(|(ty, _, len)| EXTENDED.contains(ty) && *len > 0)
    else {
        return Err(fail(
            "MBR logical partition selected, but there is no extended partition in the \
             partition table",
        ));
    };
    let size = next.get_size();
    let mut ebr = ep_start * SECTOR;
    let mut sector = [0u8; SECTOR as usize];
    // Bounded: each step moves the EBR forward, and it stays on the disk.
    for number in 5..=n {
        if ebr < SECTOR || ebr >= size - SECTOR {
            return Err(fail(
                "invalid EBR chain: next EBR boot sector is located outside disk boundary",
            ));
        }
        next.pread(&mut sector, ebr, Flags::NONE)?;
        if number == n {
            // The first entry is the logical partition, from its EBR.
            let (_, start, len) = mbr_entry(&sector, 0);
            let offset = ebr + start * SECTOR;
            let range = len * SECTOR;
            if offset <= ebr || offset + range > (ep_start + ep_len) * SECTOR {
                return Err(fail(format!(
                    "logical partition start or size out of range (offset={offset}, \
                     range={range}, ep:startsect={ep_start}, ep:nrsects={ep_len})"
                )));
            }
            return Ok((offset, range));
        }
        // The second links to the next EBR (from the extended partition's
        // start); all zeroes ends the chain.
        let (_, link, link_len) = mbr_entry(&sector, 1);
        if link == 0 && link_len == 0 {
            break;
        }
        let next_ebr = (ep_start + link) * SECTOR;
        if next_ebr <= ebr {
            return Err(fail(format!(
                "invalid EBR chain: next EBR {next_ebr} <= current EBR {ebr}"
            )));
        }
        ebr = next_ebr;
    }
    Err(not_found())
}

/// Find partition `n` (from 1) of a GPT whose header is `header`, with
/// nbdkit's rules and messages (the entries are read from LBA 2).
fn find_gpt(next: &Context, header: &[u8], n: u32) -> Result<(u64, u64)> {
    let size = next.get_size();
    let nr_entries = le32(header, 80);
    let entry_size = le32(header, 84);
    if n > nr_entries {
        return Err(fail("GPT partition number out of range"));
    }
    if entry_size < 128 {
        return Err(fail("GPT partition entry size is < 128 bytes"));
    }
    // The table (twice) and the headers must fit on the disk.
    let table = u128::from(nr_entries) * u128::from(entry_size) * 2;
    if u128::from(size) < u128::from(3 * SECTOR) + table {
        return Err(fail("GPT partition table is too large for this disk"));
    }
    let at = 2 * SECTOR + u64::from(n - 1) * u64::from(entry_size);
    let mut entry = [0u8; 128];
    next.pread(&mut entry, at, Flags::NONE)?;
    if entry[..16].iter().all(|&b| b == 0) {
        return Err(fail(format!("GPT partition {n} not found")));
    }
    let first = le64(&entry, 32);
    let last = le64(&entry, 40);
    let range = last
        .checked_sub(first)
        .and_then(|s| s.checked_add(1))
        .and_then(|s| s.checked_mul(SECTOR));
    match (first.checked_mul(SECTOR), range) {
        (Some(offset), Some(range)) => Ok((offset, range)),
        _ => Err(fail("partition is outside the disk")),
    }
}

impl FilterHandle for PartitionHandle {
    fn prepare(&self, next: &Context, _readonly: bool) -> Result<()> {
        let size = next.get_size();
        if size < 2 * SECTOR {
            return Err(fail("disk is too small to be a partitioned disk"));
        }
        let mut lba01 = [0u8; 2 * SECTOR as usize];
        next.pread(&mut lba01, 0, Flags::NONE)?;
        let (offset, len) = if size >= 2 * 34 * SECTOR && &lba01[512..520] == b"EFI PART" {
            find_gpt(next, &lba01[512..], self.partnum)?
        } else if le16(&lba01, 0x1fe) == 0xaa55 {
            find_mbr(next, &lba01[..512], self.partnum)?
        } else {
            return Err(fail(
                "disk does not contain MBR or GPT partition table signature",
            ));
        };
        if offset.checked_add(len).map_or(true, |end| end > size) {
            return Err(fail("partition is outside the disk"));
        }
        self.window.set(offset, len);
        Ok(())
    }
    fn get_size(&self, next: &Context) -> Result<u64> {
        self.window.get_size(next)
    }
    fn pread(&self, next: &Context, buf: &mut [u8], offset: u64, flags: Flags) -> Result<()> {
        self.window.pread(next, buf, offset, flags)
    }
    fn pwrite(&self, next: &Context, buf: &[u8], offset: u64, flags: Flags) -> Result<()> {
        self.window.pwrite(next, buf, offset, flags)
    }
    fn trim(&self, next: &Context, count: u64, offset: u64, flags: Flags) -> Result<()> {
        self.window.trim(next, count, offset, flags)
    }
    fn zero(&self, next: &Context, count: u64, offset: u64, flags: Flags) -> Result<()> {
        self.window.zero(next, count, offset, flags)
    }
    fn cache(&self, next: &Context, count: u64, offset: u64, flags: Flags) -> Result<()> {
        self.window.cache(next, count, offset, flags)
    }
    fn extents(
        &self,
        next: &Context,
        count: u64,
        offset: u64,
        flags: Flags,
        extents: &mut Extents,
    ) -> Result<()> {
        self.window.extents(next, count, offset, flags, extents)
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn partition_number_is_required_and_positive() {
        let mut f = Partition::default();
        assert!(f.config_complete().is_err());
        assert!(f.config("partition", "0").is_err());
        assert!(f.config("partition", "-1").is_err());
        assert!(f.config("partition", "x").is_err());
        assert!(f.config("partition", "2").unwrap());
        assert!(f.config_complete().is_ok());
    }
}
