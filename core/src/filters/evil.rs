//! `evil` (nbdkit 1.36): corrupt data as it is read, for testing checksums.
//! Writes are untouched, so the layer below keeps the correct data.
//!
//! Parameters: `evil=cosmic-rays|stuck-bits|stuck-wires` (default
//! `stuck-bits`), `evil-probability=PROB` (chance that a bit is affected:
//! default 1e-8, or 1e-6 for stuck-wires), `evil-stuck-probability=PROB`
//! (chance that a stuck bit reads as stuck, default 1), `evil-seed=N`.
//!
//! - cosmic-rays: each bit read flips with the given probability.
//! - stuck-bits: the same bits of the disk (chosen from the seed) always
//!   read high or low.
//! - stuck-wires: the same bit positions of every read buffer read high or
//!   low, wherever the read is from.
//!
//! With the same seed the same bits are stuck in every run.

use alloc::boxed::Box;
use alloc::format;

use super::params::{parse_probability, parse_unsigned};
use super::random::Xoshiro;
use crate::backend::{Context, Error, Filter, FilterHandle, Flags, NextOpener, OpenArgs, Result};
use crate::sync::{lock, Arc, Mutex};

/// Stuck bits are drawn per block of this many bytes, so that a read
/// regenerates only the blocks it touches.
const BLOCK: u64 = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Mode {
    CosmicRays,
    #[default]
    StuckBits,
    StuckWires,
}

/// The evil filter.
#[derive(Debug)]
pub struct Evil {
    mode: Mode,
    probability: Option<f64>,
    stuck_probability: f64,
    seed: u64,
    random: Arc<Mutex<Xoshiro>>,
}

impl Evil {
    /// An evil filter whose default seed is `seed` (`evil-seed` overrides).
    pub fn new(seed: u64) -> Self {
        Evil {
            mode: Mode::default(),
            probability: None,
            stuck_probability: 1.0,
            seed,
            random: Arc::new(Mutex::new(Xoshiro::new(seed))),
        }
    }
}

fn probability(key: &str, v: &str) -> Result<f64> {
    match parse_probability(v) {
        Some(p) if (0.0..=1.0).contains(&p) => Ok(p),
        Some(p) => Err(Error::config(format!(
            "{key}: probability out of range: '{v}' parsed as {p}"
        ))),
        None => Err(Error::config(format!(
            "{key}: could not parse probability '{v}'"
        ))),
    }
}

/// Natural logarithm for `x` in (0, 1] (no libm in `core`): split off the
/// binary exponent, then the atanh series on the mantissa.
fn ln(x: f64) -> f64 {
    if x <= 0.0 {
        return f64::NEG_INFINITY;
    }
    let bits = x.to_bits();
    let exp = ((bits >> 52) & 0x7ff) as i64 - 1023;
    let m = f64::from_bits((bits & !(0x7ff << 52)) | (1023 << 52)); // [1, 2)
    let t = (m - 1.0) / (m + 1.0);
    let t2 = t * t;
    let mut term = t;
    let mut sum = 0.0;
    let mut k = 1.0;
    for _ in 0..20 {
        sum += term / k;
        term *= t2;
        k += 2.0;
    }
    exp as f64 * core::f64::consts::LN_2 + 2.0 * sum
}

/// How many bits to skip before the next affected one, for a per-bit
/// probability `p` (a geometric variate).
fn gap(rng: &mut Xoshiro, p: f64) -> u64 {
    if p >= 1.0 {
        return 0;
    }
    let u = 1.0 - rng.next_f64(); // (0, 1]
    let g = ln(u) / ln(1.0 - p);
    if g >= 1e18 {
        u64::MAX / 2
    } else {
        g as u64
    }
}

impl Filter for Evil {
    fn name(&self) -> &'static str {
        "evil"
    }
    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit evil filter")
    }
    fn config_help(&self) -> &'static str {
        "evil=cosmic-rays|stuck-bits|stuck-wires\n\
         \x20                            Set the mode (default: stuck-bits).\n\
         evil-probability=PROB        Probability of flipped or stuck bit.\n\
         evil-seed=SEED               Random number seed.\n\
         evil-stuck-probability=PROB  Probability of stuck bit being stuck."
    }
    fn blocks(&self) -> bool {
        false
    }
    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            "evil" | "evil-mode" => {
                self.mode = match value {
                    "cosmic-rays" | "cosmic" => Mode::CosmicRays,
                    "stuck-bits" | "stuck-bit" | "stuck" => Mode::StuckBits,
                    "stuck-wires" | "stuck-wire" => Mode::StuckWires,
                    _ => return Err(Error::config(format!("evil: unknown mode: {value}"))),
                }
            }
            "evil-probability" => self.probability = Some(probability(key, value)?),
            "evil-stuck-probability" => self.stuck_probability = probability(key, value)?,
            "evil-seed" => {
                self.seed = parse_unsigned(key, value, u64::from(u32::MAX))?;
                self.random = Arc::new(Mutex::new(Xoshiro::new(self.seed)));
            }
            _ => return Ok(false),
        }
        Ok(true)
    }
    fn open(
        &self,
        next: &mut dyn NextOpener,
        args: &OpenArgs<'_>,
    ) -> Result<Box<dyn FilterHandle>> {
        next.open(args.readonly, args.export_name)?;
        let p = self.probability.unwrap_or(match self.mode {
            Mode::StuckWires => 1e-6,
            _ => 1e-8,
        });
        Ok(Box::new(EvilHandle {
            mode: self.mode,
            p,
            stuck_p: self.stuck_probability,
            seed: self.seed,
            random: Arc::clone(&self.random),
        }))
    }
}

struct EvilHandle {
    mode: Mode,
    p: f64,
    stuck_p: f64,
    seed: u64,
    random: Arc<Mutex<Xoshiro>>,
}

impl EvilHandle {
    /// Flip bits of `buf` at random.
    fn cosmic_rays(&self, buf: &mut [u8]) {
        let bits = buf.len() as u64 * 8;
        let mut rng = lock(&self.random);
        let mut at = gap(&mut rng, self.p);
        while at < bits {
            buf[(at / 8) as usize] ^= 1 << (at % 8);
            at = at.saturating_add(1 + gap(&mut rng, self.p));
        }
    }

    /// Apply the stuck bits to `buf`, which holds bytes `start..` of the
    /// space the bits are stuck in (the disk, or the read buffer).
    fn stuck(&self, buf: &mut [u8], start: u64) {
        let end = start + buf.len() as u64;
        let mut block = start / BLOCK;
        let mut shared = (self.stuck_p < 1.0).then(|| lock(&self.random));
        while block * BLOCK < end {
            // Each block's stuck bits come from its own generator, so they
            // do not depend on which reads came before.
            let mut rng = Xoshiro::new(self.seed ^ block.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let base = block * BLOCK * 8;
            let mut at = gap(&mut rng, self.p);
            while at < BLOCK * 8 {
                let high = rng.next_u64() & 1 == 1;
                let byte = (base + at) / 8;
                if byte >= start && byte < end {
                    let apply = shared
                        .as_mut()
                        .map_or(true, |r| r.next_f64() < self.stuck_p);
                    if apply {
                        let b = &mut buf[(byte - start) as usize];
                        let mask = 1u8 << (at % 8);
                        if high {
                            *b |= mask;
                        } else {
                            *b &= !mask;
                        }
                    }
                }
                at = at.saturating_add(1 + gap(&mut rng, self.p));
            }
            block += 1;
        }
    }
}

impl FilterHandle for EvilHandle {
    fn pread(&self, next: &Context, buf: &mut [u8], offset: u64, flags: Flags) -> Result<()> {
        next.pread(buf, offset, flags)?;
        if self.p <= 0.0 {
            return Ok(());
        }
        match self.mode {
            Mode::CosmicRays => self.cosmic_rays(buf),
            Mode::StuckBits => self.stuck(buf, offset),
            Mode::StuckWires => self.stuck(buf, 0),
        }
        Ok(())
    }
}

#[cfg(test)]
mod test {
    use super::*;

    fn handle(mode: Mode, p: f64, seed: u64) -> EvilHandle {
        EvilHandle {
            mode,
            p,
            stuck_p: 1.0,
            seed,
            random: Arc::new(Mutex::new(Xoshiro::new(seed))),
        }
    }

    #[test]
    fn ln_is_accurate() {
        let cases = [
            (1.0, 0.0),
            (0.5, -core::f64::consts::LN_2),
            (0.1, -core::f64::consts::LN_10),
            (1e-8, -18.420_680_743_952_367),
        ];
        for (x, expect) in cases {
            assert!((ln(x) - expect).abs() < 1e-9, "{x}");
        }
    }

    #[test]
    fn stuck_bits_are_reproducible_and_positional() {
        let h = handle(Mode::StuckBits, 0.01, 7);
        let mut a = [0u8; 4096];
        let mut b = [0u8; 4096];
        h.stuck(&mut a, 8192);
        h.stuck(&mut b, 8192);
        assert_eq!(a, b);
        assert!(a.iter().any(|&x| x != 0));
        // A read of the second half sees the same stuck bits.
        let mut c = [0u8; 2048];
        h.stuck(&mut c, 8192 + 2048);
        assert_eq!(&a[2048..], &c[..]);
    }

    #[test]
    fn cosmic_rays_flip_about_p() {
        let h = handle(Mode::CosmicRays, 0.001, 3);
        let mut buf = [0u8; 65536];
        h.cosmic_rays(&mut buf);
        let flipped: u32 = buf.iter().map(|b| b.count_ones()).sum();
        assert!((300..800).contains(&flipped), "{flipped}");
    }
}
