//! Where each file and table goes on the disk: the primary table, then
//! each file aligned as asked (an EBR before each logical partition) and
//! padded with zeroes to a whole sector, then the GPT backup table; and
//! the [`Disk`] of regions made from that layout and the tables.

use std::sync::Mutex;

use super::disk::{Content, Disk, Region};
use super::{gpt, mbr, PartFile, PartType, GPT_MIN_ENTRIES};
use crate::plugins::ptable::gpt::ENTRY_SIZE;
use crate::plugins::ptable::SECTOR;

/// Where things go on the disk, before the tables are filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Slot {
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

/// Lay out the disk of `files` and build its tables.
pub(super) fn build(files: Vec<PartFile>, parttype: PartType) -> Disk {
    let entries = files.len().next_multiple_of(GPT_MIN_ENTRIES);
    let pta_lbas = (entries * ENTRY_SIZE) as u64 / SECTOR;
    let slots = layout(&files, parttype, pta_lbas);
    let size = slots.last().map(|s| s.0 + s.1).unwrap_or(0);
    let tables = match parttype {
        PartType::Mbr => mbr::tables(&files, &slots, size),
        PartType::Gpt => gpt::tables(&files, &slots, size, entries),
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
