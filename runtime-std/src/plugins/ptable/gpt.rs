//! GPT: the header, the partition entries, its CRC-32, GUIDs parsed into
//! their on-disk byte order, and random GUIDs.

/// Size of one partition entry.
pub(crate) const ENTRY_SIZE: usize = 128;

/// The bytes [`header`] writes: 92 of fields, padded to 96 as a C struct
/// is (the `header_size` a table declares is one or the other).
pub(crate) const HEADER_BYTES: usize = 96;

/// The fields of a GPT header.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Header {
    /// The size the header says it has, which its CRC covers: 92, or 96
    /// as nbdkit's partitioning plugin says.
    pub header_size: u32,
    /// This header's LBA.
    pub current_lba: u64,
    /// The other header's LBA.
    pub backup_lba: u64,
    pub first_usable_lba: u64,
    pub last_usable_lba: u64,
    pub disk_guid: [u8; 16],
    /// Where this copy's partition entries start.
    pub entries_lba: u64,
    pub entries: u32,
    /// The CRC-32 of the whole entries array.
    pub entries_crc: u32,
}

/// The header's bytes (zero past the fields), its CRC filled in.
pub(crate) fn header(h: &Header) -> [u8; HEADER_BYTES] {
    let mut b = [0u8; HEADER_BYTES];
    b[0..8].copy_from_slice(b"EFI PART");
    b[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
    b[12..16].copy_from_slice(&h.header_size.to_le_bytes());
    b[24..32].copy_from_slice(&h.current_lba.to_le_bytes());
    b[32..40].copy_from_slice(&h.backup_lba.to_le_bytes());
    b[40..48].copy_from_slice(&h.first_usable_lba.to_le_bytes());
    b[48..56].copy_from_slice(&h.last_usable_lba.to_le_bytes());
    b[56..72].copy_from_slice(&h.disk_guid);
    b[72..80].copy_from_slice(&h.entries_lba.to_le_bytes());
    b[80..84].copy_from_slice(&h.entries.to_le_bytes());
    b[84..88].copy_from_slice(&(ENTRY_SIZE as u32).to_le_bytes());
    b[88..92].copy_from_slice(&h.entries_crc.to_le_bytes());
    let crc = crc32(&b[..h.header_size as usize]);
    b[16..20].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Write a partition entry at `out[..128]`. `name`'s bytes become its
/// UTF-16LE units (as nbdkit does: ASCII names) when it has fewer than
/// 36; a longer name is left out.
pub(crate) fn entry(
    out: &mut [u8],
    type_guid: &[u8; 16],
    unique_guid: &[u8; 16],
    lbas: core::ops::RangeInclusive<u64>,
    attributes: u64,
    name: &[u8],
) {
    out[0..16].copy_from_slice(type_guid);
    out[16..32].copy_from_slice(unique_guid);
    out[32..40].copy_from_slice(&lbas.start().to_le_bytes());
    out[40..48].copy_from_slice(&lbas.end().to_le_bytes());
    out[48..56].copy_from_slice(&attributes.to_le_bytes());
    if name.len() < 36 {
        for (k, &c) in name.iter().enumerate() {
            out[56 + 2 * k] = c;
        }
    }
}

/// CRC-32 as UEFI uses it (IEEE 802.3, reflected): `crc32fast`.
pub(crate) fn crc32(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}

/// Parse a GUID as `XXXXXXXX-XXXX-XXXX-XXXX-XXXXXXXXXXXX` (optionally in
/// braces) into its on-disk form: the first three fields little endian,
/// the last two as written.
pub(crate) fn parse_guid(s: &str) -> Option<[u8; 16]> {
    let s = match s.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
        Some(t) => t,
        None => s,
    };
    let b = s.as_bytes();
    if b.len() != 36 {
        return None;
    }
    for (i, c) in b.iter().enumerate() {
        let ok = match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        };
        if !ok {
            return None;
        }
    }
    let byte = |i: usize| u8::from_str_radix(&s[i..i + 2], 16).ok();
    let order = [6, 4, 2, 0, 11, 9, 16, 14, 19, 21, 24, 26, 28, 30, 32, 34];
    let mut out = [0u8; 16];
    for (o, i) in out.iter_mut().zip(order) {
        *o = byte(i)?;
    }
    Some(out)
}

/// 16 random bytes from the kernel (for a unique GUID); without kernel
/// randomness, the clock and the process id, still unique enough for a
/// served image.
pub(crate) fn random_bytes() -> [u8; 16] {
    let mut g = [0u8; 16];
    if getrandom::getrandom(&mut g).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
            ^ u128::from(std::process::id());
        g = t.to_le_bytes();
    }
    g
}

/// A random (version 4, RFC 4122 variant) GUID.
pub(crate) fn random_guid_v4() -> [u8; 16] {
    let mut g = random_bytes();
    g[7] = (g[7] & 0x0f) | 0x40;
    g[8] = (g[8] & 0x3f) | 0x80;
    g
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn header_crc_covers_the_declared_size() {
        let mut h = Header {
            header_size: 92,
            current_lba: 1,
            backup_lba: 99,
            first_usable_lba: 34,
            last_usable_lba: 66,
            disk_guid: [3; 16],
            entries_lba: 2,
            entries: 128,
            entries_crc: 7,
        };
        for size in [92, 96] {
            h.header_size = size;
            let mut b = header(&h);
            assert_eq!(&b[..8], b"EFI PART");
            let crc = u32::from_le_bytes(b[16..20].try_into().unwrap());
            b[16..20].fill(0);
            assert_eq!(crc, crc32(&b[..size as usize]));
        }
    }

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }

    #[test]
    fn parse_guid_orders_bytes_as_on_disk() {
        let g = parse_guid("{0FC63DAF-8483-4772-8E79-3D69D8477DE4}").unwrap();
        assert_eq!(
            g,
            [
                0xaf, 0x3d, 0xc6, 0x0f, 0x83, 0x84, 0x72, 0x47, 0x8e, 0x79, 0x3d, 0x69, 0xd8, 0x47,
                0x7d, 0xe4
            ]
        );
        assert!(parse_guid("0FC63DAF-8483-4772-8E79-3D69D8477DEX").is_none());
        assert!(parse_guid("0FC63DAF-8483-4772-8E79").is_none());
    }

    #[test]
    fn random_guids_differ_and_carry_version_4() {
        let (a, b) = (random_guid_v4(), random_guid_v4());
        assert_ne!(a, b);
        assert_eq!(a[7] >> 4, 4);
        assert_eq!(a[8] >> 6, 0b10);
    }
}
