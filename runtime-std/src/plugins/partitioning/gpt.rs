//! The GPT of a partitioned disk: the primary copy (protective MBR,
//! header, entries) at the start and the backup (entries, header) at the
//! end, one entry per file in a table of a multiple of 128 entries.

use super::layout::Slot;
use super::PartFile;
use crate::plugins::ptable::gpt::{self, crc32, Header, ENTRY_SIZE};
use crate::plugins::ptable::{mbr, SECTOR};

/// nbdkit writes the 92 bytes of fields padded to 96 (a C struct's size)
/// and says 96 in the header, which the header's CRC then covers.
pub(super) const HEADER_SIZE: u32 = 96;

/// Build the primary and backup tables (tables 0 and 1) of the disk laid
/// out as `slots`, `size` bytes long, with room for `entries` entries.
pub(super) fn tables(
    files: &[PartFile],
    slots: &[(u64, u64, Slot)],
    size: u64,
    entries: usize,
) -> Vec<Vec<u8>> {
    let pta_bytes = entries * ENTRY_SIZE;
    let pta_lbas = (pta_bytes as u64) / SECTOR;
    let mut pta = vec![0u8; pta_bytes];
    let mut n = 0;
    for &(start, len, slot) in slots {
        let Slot::File(i) = slot else { continue };
        let f = &files[i];
        // Attribute bit 2 (legacy BIOS bootable) on the first.
        gpt::entry(
            &mut pta[n * ENTRY_SIZE..(n + 1) * ENTRY_SIZE],
            &f.type_guid,
            &f.unique_guid,
            start / SECTOR..=(start + len - 1) / SECTOR,
            if i == 0 { 4 } else { 0 },
            f.name.as_bytes(),
        );
        n += 1;
    }
    let lbas = size / SECTOR;
    let header = |current_lba: u64, backup_lba: u64, entries_lba: u64| {
        gpt::header(&Header {
            header_size: HEADER_SIZE,
            current_lba,
            backup_lba,
            first_usable_lba: 2 + pta_lbas,
            last_usable_lba: lbas - pta_lbas - 2,
            // The disk GUID is left zero, as nbdkit leaves it.
            disk_guid: [0; 16],
            entries_lba,
            entries: entries as u32,
            entries_crc: crc32(&pta),
        })
    };

    let mut primary = vec![0u8; ((2 + pta_lbas) * SECTOR) as usize];
    mbr::protective(&mut primary, lbas);
    let h = header(1, lbas - 1, 2);
    primary[512..512 + h.len()].copy_from_slice(&h);
    primary[1024..].copy_from_slice(&pta);

    let mut backup = vec![0u8; ((pta_lbas + 1) * SECTOR) as usize];
    backup[..pta_bytes].copy_from_slice(&pta);
    let h = header(lbas - 1, 1, lbas - pta_lbas - 1);
    backup[pta_bytes..pta_bytes + h.len()].copy_from_slice(&h);
    vec![primary, backup]
}
