//! Parameter parsers shared by the filters, with nbdkit's error wording
//! (`nbdkit_parse_int`, `nbdkit_parse_unsigned`, `nbdkit_parse_bool`, ...).

use alloc::format;
use alloc::string::String;

use crate::backend::{Error, Result};
use crate::size::parse_bool;

/// Parse an integer as C's `strtoll(s, &end, 0)` does: leading white
/// space, an optional sign, then a decimal, `0x` hexadecimal or `0` octal
/// number. Returns the magnitude, whether it was negative and the unparsed
/// rest; `None` when no digit was found.
fn strtol(s: &str) -> Option<(u128, bool, &str)> {
    let t = crate::size::trim_c_space(s);
    let (neg, t) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let (radix, digits) = if (t.starts_with("0x") || t.starts_with("0X"))
        && t[2..].starts_with(|c: char| c.is_ascii_hexdigit())
    {
        (16, &t[2..])
    } else if t.starts_with('0') {
        (8, t)
    } else {
        (10, t)
    };
    let n = digits
        .find(|c: char| !c.is_digit(radix))
        .unwrap_or(digits.len());
    if n == 0 {
        return None;
    }
    let mut v: u128 = 0;
    for c in digits[..n].chars() {
        // Saturate: anything this large is out of range for every caller.
        v = v
            .saturating_mul(radix as u128)
            .saturating_add(c.to_digit(radix).unwrap_or(0) as u128);
    }
    Some((v, neg, &digits[n..]))
}

/// `nbdkit_parse_unsigned` and friends: an unsigned number no larger than
/// `max`, with `what` (usually the key) naming it in errors.
pub fn parse_unsigned(what: &str, value: &str, max: u64) -> Result<u64> {
    let Some((v, neg, rest)) = strtol(value) else {
        return Err(Error::config(format!(
            "{what}: empty string where we expected a number"
        )));
    };
    if !rest.is_empty() {
        return Err(Error::config(format!(
            "{what}: could not parse number: \"{value}\": trailing garbage"
        )));
    }
    if neg {
        return Err(Error::config(format!(
            "{what}: negative numbers are not allowed"
        )));
    }
    if v > max as u128 {
        return Err(Error::config(format!(
            "{what}: could not parse number: \"{value}\": Numerical result out of range"
        )));
    }
    Ok(v as u64)
}

/// `nbdkit_parse_int` and friends: a signed number in `min..=max`.
pub fn parse_signed(what: &str, value: &str, min: i64, max: i64) -> Result<i64> {
    let Some((v, neg, rest)) = strtol(value) else {
        return Err(Error::config(format!(
            "{what}: empty string where we expected a number"
        )));
    };
    if !rest.is_empty() {
        return Err(Error::config(format!(
            "{what}: could not parse number: \"{value}\": trailing garbage"
        )));
    }
    let v = if neg {
        -(v.min(1 << 100) as i128)
    } else {
        v.min(1 << 100) as i128
    };
    if v < min as i128 || v > max as i128 {
        return Err(Error::config(format!(
            "{what}: could not parse number: \"{value}\": Numerical result out of range"
        )));
    }
    Ok(v as i64)
}

/// `nbdkit_parse_bool` with its error message.
pub fn bool_param(value: &str) -> Result<bool> {
    parse_bool(value).ok_or_else(|| Error::config(format!("could not decipher boolean ({value})")))
}

/// A probability written as `N%` or as a number from 0 to 1 (C's `%lg`:
/// decimal with optional fraction and exponent). `None` if it does not
/// parse; the range is the caller's to check.
pub fn parse_probability(value: &str) -> Option<f64> {
    let t = value.trim_start();
    let (num, percent) = match t.strip_suffix('%') {
        Some(n) => (n, true),
        None => (t, false),
    };
    let v: f64 = num.parse().ok()?;
    if v.is_nan() {
        return None;
    }
    Some(if percent { v / 100.0 } else { v })
}

/// Display a float as C's `%g` does for the values a probability takes.
pub fn fmt_g(v: f64) -> String {
    let s = format!("{v}");
    s
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn unsigned_like_strtoul() {
        assert_eq!(parse_unsigned("n", "10", 100), Ok(10));
        assert_eq!(parse_unsigned("n", " +0x10", 100), Ok(16));
        assert_eq!(parse_unsigned("n", "010", 100), Ok(8));
        assert_eq!(parse_unsigned("n", "0", 100), Ok(0));
        assert!(parse_unsigned("n", "", 100).is_err());
        assert!(parse_unsigned("n", "1x", 100).is_err());
        assert!(parse_unsigned("n", "-1", 100).is_err());
        assert!(parse_unsigned("n", "101", 100).is_err());
        assert!(parse_unsigned("n", "99999999999999999999999999999999999999999", 100).is_err());
    }

    #[test]
    fn signed_range() {
        assert_eq!(parse_signed("n", "-5", -10, 10), Ok(-5));
        assert!(parse_signed("n", "-11", -10, 10).is_err());
    }

    #[test]
    fn probabilities() {
        assert_eq!(parse_probability("50%"), Some(0.5));
        assert_eq!(parse_probability("1"), Some(1.0));
        assert_eq!(parse_probability("1e-1"), Some(0.1));
        assert_eq!(parse_probability("x"), None);
    }
}
