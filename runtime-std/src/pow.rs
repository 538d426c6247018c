//! `pow`, defined here so that the binary does not need libm.
//!
//! The only call to libm in nbdkit is `pow`, from tokio's worker
//! statistics (`f64::powf`). Linking libm.so.6 for it mapped about half a
//! megabyte into every process (the dynamic loader walks its symbol
//! tables at start-up). This definition (musl's, through the `libm`
//! crate) satisfies the call at link time, so the linker (`--as-needed`)
//! drops libm. It is not exported (the binary exports only `nbdkit_*`),
//! so plugins loaded later still get the C library's own `pow`.

/// C's `double pow(double, double)`.
#[no_mangle]
pub(crate) extern "C" fn pow(x: f64, y: f64) -> f64 {
    libm::pow(x, y)
}

#[cfg(test)]
mod tests {
    // Not against f64::powf: in this crate's binaries that is this pow.
    #[test]
    fn pow_values() {
        assert_eq!(super::pow(2.0, 10.0), 1024.0);
        assert_eq!(super::pow(10.0, -2.0), 0.01);
        // Within one unit in the last place (musl's bound).
        let (a, b) = (super::pow(0.5, 3.5), 2f64.sqrt() / 16.0);
        assert!((a - b).abs() <= b * f64::EPSILON, "{a} vs {b}");
        assert_eq!(super::pow(0.9, 2.0), 0.81);
        assert!(super::pow(-1.0, 0.5).is_nan());
        assert_eq!(super::pow(0.0, 0.0), 1.0);
    }
}
