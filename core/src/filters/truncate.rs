//! `truncate`: change the size of the layer below.
//!
//! Parameters: `truncate=SIZE` (absolute size), `round-up=N`,
//! `round-down=N` (powers of 2 up to 2^31). Past the real end, reads see
//! zeroes, writes of zeroes succeed, other writes fail with ENOSPC, and
//! trim, zero and cache are ignored.

use alloc::boxed::Box;
use alloc::format;

use crate::backend::{
    Context, Error, Extents, Filter, FilterHandle, Flags, NextOpener, OpenArgs, Result,
};
use crate::errno::Errno;
use crate::plugins::size_param;
use crate::wire::consts::{STATE_HOLE, STATE_ZERO};

/// The truncate filter.
#[derive(Debug, Default)]
pub struct Truncate {
    truncate: Option<u64>,
    round_up: u64,
    round_down: u64,
}

fn rounding(key: &str, value: &str) -> Result<u64> {
    let n = size_param(value)?;
    if n == 0 {
        return Err(Error::config(format!(
            "if set, the {key} parameter must be > 0"
        )));
    }
    if n > u64::from(u32::MAX) {
        return Err(Error::config(format!("the {key} parameter is too large")));
    }
    if !n.is_power_of_two() {
        return Err(Error::config(format!(
            "the {key} parameter must be a power of 2"
        )));
    }
    Ok(n)
}

impl Filter for Truncate {
    fn name(&self) -> &'static str {
        "truncate"
    }
    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit truncate filter")
    }
    fn config_help(&self) -> &'static str {
        "truncate=<SIZE>                The new size.\n\
         round-up=<N>                   Round up to next multiple of N.\n\
         round-down=<N>                 Round down to multiple of N."
    }
    fn blocks(&self) -> bool {
        false
    }
    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            "truncate" => self.truncate = Some(size_param(value)?),
            "round-up" => self.round_up = rounding(key, value)?,
            "round-down" => self.round_down = rounding(key, value)?,
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
        Ok(Box::new(TruncateHandle {
            truncate: self.truncate,
            round_up: self.round_up,
            round_down: self.round_down,
        }))
    }
}

struct TruncateHandle {
    truncate: Option<u64>,
    round_up: u64,
    round_down: u64,
}

impl TruncateHandle {
    fn size(&self, next: &Context) -> Result<u64> {
        let mut size = self.truncate.unwrap_or(next.get_size());
        if self.round_up > 0 {
            let up = size
                .checked_add(self.round_up - 1)
                .map(|s| s & !(self.round_up - 1))
                .filter(|&s| s <= i64::MAX as u64);
            size = up.ok_or_else(|| {
                Error::msg(
                    Errno::EINVAL,
                    format!(
                        "cannot round size {size} up to next boundary of {}",
                        self.round_up
                    ),
                )
            })?;
        }
        if self.round_down > 0 {
            size &= !(self.round_down - 1);
        }
        Ok(size)
    }

    /// The part of `count` bytes at `offset` that lies inside the real
    /// layer below.
    fn inside(next: &Context, count: u64, offset: u64) -> u64 {
        next.get_size().saturating_sub(offset).min(count)
    }
}

impl FilterHandle for TruncateHandle {
    fn get_size(&self, next: &Context) -> Result<u64> {
        self.size(next)
    }
    // Zeroing the tail is always fast, and the tail always has extents;
    // requests inside the real size ask the layer below.
    fn can_fast_zero(&self, _next: &Context) -> Result<bool> {
        Ok(true)
    }
    fn can_extents(&self, _next: &Context) -> Result<bool> {
        Ok(true)
    }
    fn pread(&self, next: &Context, buf: &mut [u8], offset: u64, flags: Flags) -> Result<()> {
        let n = Self::inside(next, buf.len() as u64, offset) as usize;
        let (head, tail) = buf.split_at_mut(n);
        if !head.is_empty() {
            next.pread(head, offset, flags)?;
        }
        tail.fill(0);
        Ok(())
    }
    fn pwrite(&self, next: &Context, buf: &[u8], offset: u64, flags: Flags) -> Result<()> {
        let n = Self::inside(next, buf.len() as u64, offset) as usize;
        let (head, tail) = buf.split_at(n);
        if tail.iter().any(|&b| b != 0) {
            return Err(Error::msg(
                Errno::ENOSPC,
                "truncate: write beyond end of underlying device",
            ));
        }
        if !head.is_empty() {
            next.pwrite(head, offset, flags)?;
        }
        Ok(())
    }
    fn trim(&self, next: &Context, count: u64, offset: u64, flags: Flags) -> Result<()> {
        match Self::inside(next, count, offset) {
            0 => Ok(()),
            n => next.trim(n, offset, flags),
        }
    }
    fn zero(&self, next: &Context, count: u64, offset: u64, flags: Flags) -> Result<()> {
        match Self::inside(next, count, offset) {
            0 => Ok(()),
            _ if flags.contains(Flags::FAST_ZERO) && !next.caps().can_fast_zero => {
                Err(Error::new(Errno::ENOTSUP))
            }
            n => next.zero(n, offset, flags),
        }
    }
    fn cache(&self, next: &Context, count: u64, offset: u64, flags: Flags) -> Result<()> {
        match Self::inside(next, count, offset) {
            0 => Ok(()),
            n => next.cache(n, offset, flags),
        }
    }
    fn extents(
        &self,
        next: &Context,
        count: u64,
        offset: u64,
        flags: Flags,
        extents: &mut Extents,
    ) -> Result<()> {
        let real = next.get_size();
        if offset >= real {
            return extents.add(offset, count, STATE_HOLE | STATE_ZERO);
        }
        let n = Self::inside(next, count, offset);
        let mut below = Extents::new(offset, real);
        next.extents(n, offset, flags, &mut below)?;
        for e in below.as_slice() {
            extents.add(e.offset, e.length, e.flags)?;
        }
        // The rest, past the real end, reads as zeroes.
        let size = self.size(next)?;
        if size > real && extents.next_offset() == real {
            extents.add(real, size - real, STATE_HOLE | STATE_ZERO)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn rounding_parameters() {
        let mut f = Truncate::default();
        assert!(f.config("round-up", "4096").unwrap());
        assert!(f.config("round-up", "3").is_err());
        assert!(f.config("round-up", "0").is_err());
        assert!(f.config("round-up", "4G").is_err());
        assert!(f.config("round-down", "2G").unwrap());
        assert!(!f.config("size", "1").unwrap());
    }
}
