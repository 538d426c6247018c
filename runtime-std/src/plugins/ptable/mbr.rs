//! The MBR (and EBR) sector: 16-byte partition entries at 0x1BE, and the
//! boot signature `55 AA` at 0x1FE.

/// Offset of the first of the four partition entries.
pub(crate) const ENTRIES: usize = 0x1be;
/// Size of one partition entry.
pub(crate) const ENTRY_SIZE: usize = 16;

/// The CHS address that says "beyond CHS": LBA is always used.
const CHS_TOO_LARGE: [u8; 3] = [254, 0xff, 0xff];

/// Write a partition entry at `out[..16]`: type `id`, `sectors` sectors
/// from sector `first` (relative to what the table's format says).
pub(crate) fn entry(out: &mut [u8], bootable: bool, id: u8, first: u32, sectors: u32) {
    out[0] = if bootable { 0x80 } else { 0 };
    out[1..4].copy_from_slice(&CHS_TOO_LARGE);
    out[4] = id;
    out[5..8].copy_from_slice(&CHS_TOO_LARGE);
    out[8..12].copy_from_slice(&first.to_le_bytes());
    out[12..16].copy_from_slice(&sectors.to_le_bytes());
}

/// Put the boot signature at the end of the 512-byte `sector`.
pub(crate) fn sign(sector: &mut [u8]) {
    sector[0x1fe] = 0x55;
    sector[0x1ff] = 0xaa;
}

/// The protective MBR of a GPT disk of `sectors` sectors: one partition
/// of type 0xEE from sector 1 over as much of the disk as MBR can say.
pub(crate) fn protective(sector: &mut [u8], sectors: u64) {
    let covered = (sectors - 1).min(u64::from(u32::MAX));
    entry(&mut sector[ENTRIES..], false, 0xee, 1, covered as u32);
    sign(sector);
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn entry_layout() {
        let mut s = [0u8; 512];
        entry(&mut s[ENTRIES + ENTRY_SIZE..], true, 0x83, 2048, 4);
        assert_eq!(
            &s[0x1ce..0x1de],
            &[0x80, 254, 255, 255, 0x83, 254, 255, 255, 0, 8, 0, 0, 4, 0, 0, 0]
        );
        protective(&mut s, 1 << 40);
        assert_eq!(&s[0x1be + 4], &0xee);
        assert_eq!(&s[0x1be + 12..0x1be + 16], &[0xff; 4]);
        assert_eq!(&s[0x1fe..], &[0x55, 0xaa]);
    }
}
