//! The MBR of a partitioned disk, and the EBR chain when it has more than
//! four files: files 0..3 primary, the fourth slot an extended partition
//! (type 0x0F) holding one EBR and one logical partition per further file.

use super::layout::Slot;
use super::PartFile;
use crate::plugins::ptable::{mbr, SECTOR};

/// An entry for `len` bytes at byte `start` (rounded up to sectors).
fn entry(out: &mut [u8], bootable: bool, id: u8, start: u64, len: u64) {
    mbr::entry(
        out,
        bootable,
        id,
        (start / SECTOR) as u32,
        len.div_ceil(SECTOR) as u32,
    );
}

/// Build the MBR and the EBRs (tables 0..) of the disk laid out as
/// `slots`, `size` bytes long.
pub(super) fn tables(files: &[PartFile], slots: &[(u64, u64, Slot)], size: u64) -> Vec<Vec<u8>> {
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
        mbr::sign(t);
    }
    let at = |k: usize| mbr::ENTRIES + mbr::ENTRY_SIZE * k;
    let primaries = if n > 4 { 3 } else { n };
    for (i, f) in files.iter().enumerate().take(primaries) {
        let (start, len) = find(Slot::File(i));
        entry(&mut tables[0][at(i)..], i == 0, f.mbr_id, start, len);
    }
    if n > 4 {
        // The extended partition runs from the first EBR to the end.
        let (ext, _) = find(Slot::Table(1));
        entry(&mut tables[0][at(3)..], false, 0x0f, ext, size - ext);
        for i in 3..n {
            let (ebr, _) = find(Slot::Table(i - 2));
            let (start, len) = find(Slot::File(i));
            let t = &mut tables[i - 2];
            entry(&mut t[at(0)..], false, files[i].mbr_id, start - ebr, len);
            if i + 1 < n {
                // The next EBR, relative to the extended partition, and
                // its size up to the end of its partition's data.
                let (next_ebr, _) = find(Slot::Table(i - 1));
                let (next, next_len) = find(Slot::File(i + 1));
                entry(
                    &mut t[at(1)..],
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
