//! What the disk-image plugins (partitioning, linuxdisk) share for GPT:
//! its CRC-32, GUIDs parsed into their on-disk byte order, and random
//! GUIDs.

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
