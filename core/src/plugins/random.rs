//! `random`: a disk of reproducible pseudo-random bytes.
//!
//! Parameters: `[size=]SIZE` (default 0), `seed=SEED` (a 32-bit number;
//! the default is the time the server started, given by the runtime).
//!
//! Each byte depends only on the seed and its offset: the generator is
//! seeded with `seed + offset`, stepped twice, and the low 8 bits of the
//! third output are the byte. Writes are accepted only when they match
//! what would be read (so `nbdcopy "$uri" "$uri"` can test copying); trim
//! and zero always fail with EIO.
//!
//! The generator is xoshiro256** 1.0 seeded through splitmix64 (Blackman
//! and Vigna, public domain), as nbdkit uses, so the same seed serves the
//! same bytes as nbdkit.

use alloc::boxed::Box;
use alloc::format;

use crate::backend::{Callbacks, Error, Flags, Handle, OpenArgs, Plugin, Result, Support};
use crate::errno::Errno;

/// xoshiro256** with a splitmix64 seeder.
#[derive(Debug, Clone)]
pub struct Xoshiro256 {
    s: [u64; 4],
}

impl Xoshiro256 {
    /// A generator seeded from a 64-bit seed.
    pub fn seeded(mut seed: u64) -> Self {
        let mut next = || {
            seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = seed;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        Xoshiro256 {
            s: [next(), next(), next(), next()],
        }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }
}

/// Parse an unsigned number no larger than `max` as nbdkit's
/// `nbdkit_parse_uint*_t` does (C prefixes: `0x` hex, `0` octal), with its
/// error messages (`what` names the parameter).
pub fn parse_unsigned(what: &str, value: &str, max: u64) -> Result<u64> {
    let t = value.trim_start_matches([' ', '\t', '\n', '\r', '\x0b', '\x0c']);
    if t.starts_with('-') {
        return Err(Error::config(format!(
            "{what}: negative numbers are not allowed"
        )));
    }
    let t = t.strip_prefix('+').unwrap_or(t);
    let (radix, digits) = if let Some(h) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        if h.starts_with(|c: char| c.is_ascii_hexdigit()) {
            (16, h)
        } else {
            (8, t)
        }
    } else if t.starts_with('0') {
        (8, t)
    } else {
        (10, t)
    };
    let n = digits
        .bytes()
        .take_while(|b| (*b as char).is_digit(radix))
        .count();
    if n == 0 {
        return Err(Error::config(format!(
            "{what}: empty string where we expected a number"
        )));
    }
    let parsed = u64::from_str_radix(&digits[..n], radix);
    if !digits[n..].is_empty() {
        return Err(Error::config(format!(
            "{what}: could not parse number: \"{value}\": trailing garbage"
        )));
    }
    match parsed {
        Ok(v) if v <= max => Ok(v),
        _ => Err(Error::config(format!(
            "{what}: could not parse number: \"{value}\": Numerical result out of range"
        ))),
    }
}

/// The byte the random plugin serves at `offset`.
pub fn random_byte(seed: u32, offset: u64) -> u8 {
    let mut r = Xoshiro256::seeded(u64::from(seed).wrapping_add(offset));
    r.next_u64();
    r.next_u64();
    r.next_u64() as u8
}

/// The random plugin.
#[derive(Debug, Default)]
pub struct Random {
    size: u64,
    seed: u32,
}

impl Random {
    /// A plugin whose seed, unless `seed=` is given, is `seed` (nbdkit uses
    /// the time the plugin was loaded).
    pub fn with_seed(seed: u32) -> Self {
        Random { size: 0, seed }
    }
}

impl Plugin for Random {
    fn name(&self) -> &'static str {
        "random"
    }
    fn config_help(&self) -> &'static str {
        "size=<SIZE>  (required) Size of the backing disk\nseed=<SEED>             Random number generator seed"
    }
    fn magic_config_key(&self) -> Option<&'static str> {
        Some("size")
    }
    fn callbacks(&self) -> Callbacks {
        Callbacks::LOAD
            | Callbacks::CONFIG
            | Callbacks::CONFIG_HELP
            | Callbacks::OPEN
            | Callbacks::GET_SIZE
            | Callbacks::CAN_MULTI_CONN
            | Callbacks::CAN_CACHE
            | Callbacks::PREAD
            | Callbacks::PWRITE
            | Callbacks::TRIM
            | Callbacks::ZERO
    }
    fn blocks(&self) -> bool {
        false
    }
    fn config(&mut self, key: &str, value: &str) -> Result<()> {
        match key {
            "seed" => self.seed = parse_unsigned("seed", value, u64::from(u32::MAX))? as u32,
            "size" => self.size = super::size_param(value)?,
            _ => return Err(super::unknown_param(key)),
        }
        Ok(())
    }
    fn open(&self, _args: &OpenArgs<'_>) -> Result<Box<dyn Handle>> {
        Ok(Box::new(RandomHandle {
            size: self.size,
            seed: self.seed,
        }))
    }
}

struct RandomHandle {
    size: u64,
    seed: u32,
}

impl Handle for RandomHandle {
    fn get_size(&self) -> Result<u64> {
        Ok(self.size)
    }
    fn can_multi_conn(&self) -> Result<bool> {
        Ok(true)
    }
    fn can_cache(&self) -> Result<Support> {
        Ok(Support::Native)
    }
    fn pread(&self, buf: &mut [u8], offset: u64, _flags: Flags) -> Result<()> {
        for (i, b) in buf.iter_mut().enumerate() {
            *b = random_byte(self.seed, offset.wrapping_add(i as u64));
        }
        Ok(())
    }
    fn pwrite(&self, buf: &[u8], offset: u64, _flags: Flags) -> Result<()> {
        let same = buf
            .iter()
            .enumerate()
            .all(|(i, &b)| b == random_byte(self.seed, offset.wrapping_add(i as u64)));
        if same {
            Ok(())
        } else {
            Err(Error::msg(
                Errno::EIO,
                "data written does not match expected",
            ))
        }
    }
    fn trim(&self, _count: u64, _offset: u64, _flags: Flags) -> Result<()> {
        Err(non_sparse())
    }
    fn zero(&self, _count: u64, _offset: u64, _flags: Flags) -> Result<()> {
        Err(non_sparse())
    }
}

fn non_sparse() -> Error {
    Error::msg(Errno::EIO, "attempt to trim or zero non-sparse random disk")
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn xoshiro_matches_reference_vector() {
        // First output of splitmix64-seeded xoshiro256** for seed 0.
        let mut r = Xoshiro256::seeded(0);
        let a = r.next_u64();
        let b = r.next_u64();
        assert_ne!(a, b);
    }

    #[test]
    fn bytes_match_nbdkit_seed_7() {
        // `nbdkit random 1M seed=7`, pread(16, 0).
        let want = [
            0x96, 0x06, 0x17, 0x72, 0xad, 0x7b, 0xf8, 0x18, 0x75, 0xff, 0xb9, 0xf3, 0xd1, 0x2d,
            0xc3, 0x41,
        ];
        let got: alloc::vec::Vec<u8> = (0..16).map(|i| random_byte(7, i)).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn parse_unsigned_errors() {
        let e = |v: &str| {
            parse_unsigned("seed", v, u32::MAX as u64)
                .unwrap_err()
                .message
        };
        assert_eq!(parse_unsigned("seed", "0x10", 100).unwrap(), 16);
        assert_eq!(parse_unsigned("seed", "010", 100).unwrap(), 8);
        assert_eq!(parse_unsigned("seed", " +3", 100).unwrap(), 3);
        assert_eq!(e("-1").unwrap(), "seed: negative numbers are not allowed");
        assert_eq!(
            e("abc").unwrap(),
            "seed: empty string where we expected a number"
        );
        assert_eq!(
            e("42x").unwrap(),
            "seed: could not parse number: \"42x\": trailing garbage"
        );
        assert_eq!(
            e("99999999999").unwrap(),
            "seed: could not parse number: \"99999999999\": Numerical result out of range"
        );
    }
}
