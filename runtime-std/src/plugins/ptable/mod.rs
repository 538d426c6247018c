//! The on-disk partition table formats that the disk-image plugins write
//! (partitioning, linuxdisk, floppy): [`mbr`] entries and boot signature,
//! [`gpt`] headers, entries, CRC-32 and GUIDs. Which tables a disk gets,
//! and where, is each plugin's business.

pub(crate) mod gpt;
pub(crate) mod mbr;

/// The sector size of every disk these plugins make.
pub(crate) const SECTOR: u64 = 512;
