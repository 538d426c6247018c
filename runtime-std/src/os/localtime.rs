//! The local time zone's broken-down time (`localtime_r(3)`, which neither
//! nix nor the standard library wraps): the one `unsafe` call for it.

/// Local broken-down time of `secs` since the epoch, or `None` when the C
/// library cannot represent it.
pub(crate) fn localtime(secs: i64) -> Option<libc::tm> {
    let t = secs as libc::time_t;
    // SAFETY: an all-zero `tm` is a valid value (integers and a null zone
    // name pointer), and localtime_r writes only into it.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are to live values owned here; localtime_r is
    // the thread-safe variant.
    let r = unsafe { libc::localtime_r(&t, &mut tm) };
    (!r.is_null()).then_some(tm)
}

#[cfg(test)]
mod tests {
    #[test]
    fn epoch_is_1970_or_1969() {
        let tm = super::localtime(0).unwrap();
        assert!(tm.tm_year == 70 || tm.tm_year == 69);
        assert!((0..60).contains(&tm.tm_sec));
    }
}
