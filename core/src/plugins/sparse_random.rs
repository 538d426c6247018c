//! `sparse-random`: a sparse disk of reproducible random data, for testing
//! copying tools.
//!
//! Parameters: `[size=]SIZE` (default 0), `seed=SEED` (32-bit; default
//! the time the server started, given by the runtime), `percent=P`
//! (0..=100, default 10: the share of data blocks), `runlength=BYTES`
//! (default 16M: the mean length of a run of data) and
//! `random-content=BOOL` (default false: every data block is one repeated
//! non-zero byte; true: every byte is random).
//!
//! The disk is cut in 4 KiB blocks, each data or hole. `get_ready` walks
//! the blocks with a two-state chain seeded by `seed` (hole→data with
//! probability P_hd, data→hole with P_dh = 4096/runlength) and keeps one
//! bit per block. Reads of data blocks are generated from `seed + offset`;
//! as in nbdkit, the offset is the one the request starts at for the first
//! block of an unaligned request, so unaligned reads see other bytes.
//! Writes must match what would be read, trim and zero only succeed on
//! holes (EIO otherwise), and block status reports the holes.

use alloc::boxed::Box;
use alloc::format;
use alloc::sync::Arc;
use alloc::vec::Vec;

use super::random::{parse_unsigned, Xoshiro256};
use crate::backend::{Callbacks, Error, Extents, Flags, Handle, OpenArgs, Plugin, Result, Support};
use crate::errno::Errno;
use crate::size::parse_bool;
use crate::wire::consts::{STATE_HOLE, STATE_ZERO};

/// The size of a block: one bit of the map each.
const BLOCK: u64 = 4096;

/// The sparse-random plugin.
#[derive(Debug)]
pub struct SparseRandom {
    size: u64,
    seed: u32,
    percent: f64,
    runlength: u64,
    random_content: bool,
    map: Option<Arc<Vec<u8>>>,
}

impl Default for SparseRandom {
    fn default() -> Self {
        Self::with_seed(0)
    }
}

impl SparseRandom {
    /// A plugin whose seed, unless `seed=` is given, is `seed`.
    pub fn with_seed(seed: u32) -> Self {
        SparseRandom {
            size: 0,
            seed,
            percent: 10.0,
            runlength: 16 * 1024 * 1024,
            random_content: false,
            map: None,
        }
    }

    /// Build the map of data blocks.
    fn build_map(&self) -> Result<Vec<u8>> {
        let blocks = self.size.div_ceil(BLOCK);
        let bytes = usize::try_from(blocks.div_ceil(8))
            .map_err(|_| Error::msg(Errno::ENOMEM, "realloc: Cannot allocate memory"))?;
        let mut map = Vec::new();
        map.try_reserve_exact(bytes)
            .map_err(|_| Error::msg(Errno::ENOMEM, "realloc: Cannot allocate memory"))?;
        map.resize(bytes, 0u8);
        if self.percent == 0.0 {
            return Ok(map);
        }
        if self.percent == 100.0 {
            map.fill(0xff);
            return Ok(map);
        }
        let p_dh = 1.0 / (self.runlength as f64 / BLOCK as f64);
        let p_hd = (self.percent / 100.0) * p_dh / (1.0 - self.percent / 100.0);
        let mut rng = Xoshiro256::seeded(u64::from(self.seed));
        let mut data = false;
        for i in 0..blocks {
            if data {
                map[(i / 8) as usize] |= 1 << (i % 8);
            }
            let p = if data { p_dh } else { p_hd };
            if (rng.next_u64() as f64) <= p * (u64::MAX as f64) {
                data = !data;
            }
        }
        Ok(map)
    }
}

/// Parse a floating point prefix as C's `sscanf("%lf")` does.
fn scan_double(s: &str) -> Option<f64> {
    let t = s.trim_start();
    let end = t
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(t.len());
    let mut cand = &t[..end];
    while !cand.is_empty() {
        if let Ok(v) = cand.parse::<f64>() {
            return Some(v);
        }
        cand = &cand[..cand.len() - 1];
    }
    None
}

impl Plugin for SparseRandom {
    fn name(&self) -> &'static str {
        "sparse-random"
    }
    fn config_help(&self) -> &'static str {
        "size=<SIZE>  (required) Size of the backing disk\n\
         seed=<SEED>             Random number generator seed\n\
         percent=<PERCENT>       Percentage of data\n\
         runlength=<BYTES>       Expected average run length of data\n\
         random-content=true     Fully random content in each block"
    }
    fn magic_config_key(&self) -> Option<&'static str> {
        Some("size")
    }
    fn callbacks(&self) -> Callbacks {
        Callbacks::LOAD
            | Callbacks::UNLOAD
            | Callbacks::CONFIG
            | Callbacks::CONFIG_HELP
            | Callbacks::GET_READY
            | Callbacks::OPEN
            | Callbacks::GET_SIZE
            | Callbacks::CAN_MULTI_CONN
            | Callbacks::CAN_CACHE
            | Callbacks::PREAD
            | Callbacks::PWRITE
            | Callbacks::FLUSH
            | Callbacks::TRIM
            | Callbacks::ZERO
            | Callbacks::EXTENTS
    }
    fn blocks(&self) -> bool {
        false
    }
    fn config(&mut self, key: &str, value: &str) -> Result<()> {
        match key {
            "seed" => self.seed = parse_unsigned("seed", value, u64::from(u32::MAX))? as u32,
            "size" => self.size = super::size_param(value)?,
            "percent" => match scan_double(value) {
                Some(p) if (0.0..=100.0).contains(&p) => self.percent = p,
                _ => {
                    return Err(Error::config(format!(
                        "cannot parse percent parameter: {value}"
                    )))
                }
            },
            "runlength" => {
                let r = parse_unsigned("runlength", value, u64::MAX)?;
                if r == 0 {
                    return Err(Error::config("runlength parameter must be > 0"));
                }
                self.runlength = r;
            }
            "random-content" => {
                self.random_content = parse_bool(value)
                    .ok_or_else(|| Error::config(format!("could not decipher boolean ({value})")))?
            }
            _ => return Err(super::unknown_param(key)),
        }
        Ok(())
    }
    fn config_complete(&mut self) -> Result<()> {
        // nbdkit builds the map in get_ready; it is built here because
        // get_ready cannot store it, and it happens at the same point of
        // start-up for the user (before serving).
        self.map = Some(Arc::new(self.build_map()?));
        Ok(())
    }
    fn open(&self, _args: &OpenArgs<'_>) -> Result<Box<dyn Handle>> {
        let map = self
            .map
            .clone()
            .ok_or_else(|| Error::msg(Errno::EIO, "sparse-random: not configured"))?;
        Ok(Box::new(SparseRandomHandle {
            size: self.size,
            seed: self.seed,
            random_content: self.random_content,
            map,
        }))
    }
}

struct SparseRandomHandle {
    size: u64,
    seed: u32,
    random_content: bool,
    map: Arc<Vec<u8>>,
}

impl SparseRandomHandle {
    fn is_data(&self, block: u64) -> bool {
        usize::try_from(block / 8)
            .ok()
            .and_then(|i| self.map.get(i))
            .is_some_and(|b| b & (1 << (block % 8)) != 0)
    }

    /// The contents of `block`, generated from `seed + offset`.
    fn read_block(&self, block: u64, offset: u64, out: &mut [u8; BLOCK as usize]) {
        if !self.is_data(block) {
            out.fill(0);
            return;
        }
        let mut rng = Xoshiro256::seeded(u64::from(self.seed).wrapping_add(offset));
        if self.random_content {
            for b in out.iter_mut() {
                *b = rng.next_u64() as u8;
            }
        } else {
            let b = rng.next_u64() as u8;
            out.fill(if b == 0 { 1 } else { b });
        }
    }

    /// Visit `count` bytes at `offset` block by block: (block, offset
    /// passed to read_block, range within the block).
    fn each_block(
        count: u64,
        offset: u64,
        mut f: impl FnMut(u64, u64, core::ops::Range<usize>) -> Result<()>,
    ) -> Result<()> {
        let mut pos = offset;
        let end = offset + count;
        while pos < end {
            let block = pos / BLOCK;
            let start = (pos % BLOCK) as usize;
            let n = (BLOCK - start as u64).min(end - pos) as usize;
            f(block, pos, start..start + n)?;
            pos += n as u64;
        }
        Ok(())
    }
}

impl Handle for SparseRandomHandle {
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
        let mut block_buf = [0u8; BLOCK as usize];
        let mut done = 0;
        Self::each_block(buf.len() as u64, offset, |block, at, r| {
            let n = r.len();
            self.read_block(block, at, &mut block_buf);
            buf[done..done + n].copy_from_slice(&block_buf[r]);
            done += n;
            Ok(())
        })
    }
    fn pwrite(&self, buf: &[u8], offset: u64, _flags: Flags) -> Result<()> {
        let mut block_buf = [0u8; BLOCK as usize];
        let mut done = 0;
        Self::each_block(buf.len() as u64, offset, |block, at, r| {
            let n = r.len();
            let src = &buf[done..done + n];
            done += n;
            let same = if self.is_data(block) {
                self.read_block(block, at, &mut block_buf);
                src == &block_buf[r]
            } else {
                src.iter().all(|&b| b == 0)
            };
            if same {
                Ok(())
            } else {
                Err(Error::msg(
                    Errno::EIO,
                    "data written does not match expected",
                ))
            }
        })
    }
    fn flush(&self, _flags: Flags) -> Result<()> {
        Ok(())
    }
    fn trim(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        self.zero(count, offset, flags)
    }
    fn zero(&self, count: u64, offset: u64, _flags: Flags) -> Result<()> {
        Self::each_block(count, offset, |block, _, _| {
            if self.is_data(block) {
                Err(Error::msg(
                    Errno::EIO,
                    "trying to trim or zero non-hole in disk",
                ))
            } else {
                Ok(())
            }
        })
    }
    fn extents(&self, count: u64, offset: u64, _flags: Flags, extents: &mut Extents) -> Result<()> {
        Self::each_block(count, offset, |block, at, r| {
            if extents.is_full() {
                return Ok(());
            }
            let flags = if self.is_data(block) {
                0
            } else {
                STATE_HOLE | STATE_ZERO
            };
            extents.add(at, r.len() as u64, flags)
        })
    }
}

#[cfg(test)]
mod test {
    use super::*;

    fn configured(args: &[(&str, &str)]) -> SparseRandom {
        let mut p = SparseRandom::with_seed(1);
        for (k, v) in args {
            p.config(k, v).unwrap();
        }
        p.config_complete().unwrap();
        p
    }

    #[test]
    fn percent_zero_and_hundred() {
        let p = configured(&[("size", "1M"), ("percent", "0")]);
        assert!(p.map.as_ref().unwrap().iter().all(|&b| b == 0));
        let p = configured(&[("size", "1M"), ("percent", "100")]);
        assert!(p.map.as_ref().unwrap().iter().all(|&b| b == 0xff));
    }

    #[test]
    fn data_share_is_roughly_percent() {
        let p = configured(&[
            ("size", "256M"),
            ("percent", "50"),
            ("runlength", "1048576"),
        ]);
        let ones: u32 = p.map.as_ref().unwrap().iter().map(|b| b.count_ones()).sum();
        let share = f64::from(ones) / (256.0 * 256.0);
        assert!((0.3..0.7).contains(&share), "{share}");
    }

    #[test]
    fn bad_percent_is_refused() {
        let mut p = SparseRandom::default();
        assert!(p.config("percent", "101").is_err());
        assert!(p.config("percent", "x").is_err());
        assert!(p.config("percent", "12.5abc").is_ok());
        assert!(p.config("runlength", "0").is_err());
    }
}
