//! nbdkit's parsers for sizes and booleans (`nbdkit_parse_size`,
//! `nbdkit_parse_bool`), used by every plugin and filter parameter.

/// Why a size did not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeError {
    /// Empty, not a number, or an unknown suffix.
    Invalid,
    /// Negative.
    Negative,
    /// Does not fit in an `i64` (nbdkit's limit).
    TooLarge,
}

/// `s` without the white space C's `isspace` skips at its start (what
/// `strtoll` skips; not Unicode's other spaces, which nbdkit refuses).
pub(crate) fn trim_c_space(s: &str) -> &str {
    s.trim_start_matches([' ', '\t', '\n', '\r', '\x0b', '\x0c'])
}

/// Parse a size the way `nbdkit_parse_size` does: a decimal number with an
/// optional scale suffix (`b`, `s` = 512, `k`/`K`, `M`, `G`, `T`, `P`, `E`,
/// powers of 1024, each optionally followed by `B`/`iB`), result `<= i64::MAX`.
pub fn parse_size(s: &str) -> Result<u64, SizeError> {
    let t = trim_c_space(s);
    if t.starts_with('-') {
        return Err(SizeError::Negative);
    }
    let t = t.strip_prefix('+').unwrap_or(t);
    let digits_end = t.find(|ch: char| !ch.is_ascii_digit()).unwrap_or(t.len());
    if digits_end == 0 {
        return Err(SizeError::Invalid);
    }
    let (num, suffix) = t.split_at(digits_end);
    let mut value: u64 = num.parse().map_err(|_| SizeError::TooLarge)?;
    let shift: u32 = match suffix {
        "" => 0,
        "b" | "B" => 0,
        "s" | "S" => {
            value = value.checked_mul(512).ok_or(SizeError::TooLarge)?;
            0
        }
        _ => {
            let mut it = suffix.chars();
            let unit = it.next().unwrap_or(' ');
            let rest = it.as_str();
            if !matches!(rest, "" | "B" | "iB") {
                return Err(SizeError::Invalid);
            }
            match unit {
                'k' | 'K' => 10,
                'm' | 'M' => 20,
                'g' | 'G' => 30,
                't' | 'T' => 40,
                'p' | 'P' => 50,
                'e' | 'E' => 60,
                _ => return Err(SizeError::Invalid),
            }
        }
    };
    let scaled = value
        .checked_mul(1u64 << shift)
        .ok_or(SizeError::TooLarge)?;
    if scaled > i64::MAX as u64 {
        return Err(SizeError::TooLarge);
    }
    Ok(scaled)
}

/// Parse a boolean the way `nbdkit_parse_bool` does.
pub fn parse_bool(s: &str) -> Option<bool> {
    const TRUE: [&str; 6] = ["1", "true", "t", "yes", "y", "on"];
    const FALSE: [&str; 6] = ["0", "false", "f", "no", "n", "off"];
    if TRUE.iter().any(|w| w.eq_ignore_ascii_case(s)) {
        Some(true)
    } else if FALSE.iter().any(|w| w.eq_ignore_ascii_case(s)) {
        Some(false)
    } else {
        None
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("2k"), Ok(2048));
        assert_eq!(parse_size("1s"), Ok(512));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("7E"), Ok(7 << 60));
        assert_eq!(parse_size("8E"), Err(SizeError::TooLarge));
        assert_eq!(parse_size("9223372036854775807"), Ok(i64::MAX as u64));
        assert_eq!(parse_size("abc"), Err(SizeError::Invalid));
        assert_eq!(parse_size(""), Err(SizeError::Invalid));
        assert_eq!(parse_size("-1"), Err(SizeError::Negative));
        assert_eq!(parse_size("1X"), Err(SizeError::Invalid));
    }

    #[test]
    fn only_c_white_space_is_skipped() {
        // nbdkit (strtoll) skips isspace's ASCII characters, not Unicode's.
        assert_eq!(parse_size(" \t\n\x0b\x0c\r1M"), Ok(1 << 20));
        assert_eq!(parse_size("\u{a0}1M"), Err(SizeError::Invalid));
    }

    #[test]
    fn bools() {
        assert_eq!(parse_bool("on"), Some(true));
        assert_eq!(parse_bool("No"), Some(false));
        assert_eq!(parse_bool("maybe"), None);
    }
}
