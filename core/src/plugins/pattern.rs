//! `pattern`: a read-only disk where every 8-byte big-endian word holds
//! its own offset.
//!
//! Parameters: `[size=]SIZE` (default 0). When the size is not a multiple
//! of 8 the last word is cut short.

use alloc::boxed::Box;

use crate::backend::{Callbacks, Flags, Handle, OpenArgs, Plugin, Result, Support};

/// The pattern plugin.
#[derive(Debug, Default)]
pub struct Pattern {
    size: u64,
}

/// Fill `buf` with the pattern as it appears at `offset`.
pub fn fill_pattern(buf: &mut [u8], offset: u64) {
    let mut pos = offset;
    let mut done = 0;
    while done < buf.len() {
        let word = (pos & !7).to_be_bytes();
        let start = (pos & 7) as usize;
        let n = (8 - start).min(buf.len() - done);
        buf[done..done + n].copy_from_slice(&word[start..start + n]);
        done += n;
        pos = pos.wrapping_add(n as u64);
    }
}

impl Plugin for Pattern {
    fn name(&self) -> &'static str {
        "pattern"
    }
    fn config_help(&self) -> &'static str {
        "size=<SIZE>  (required) Size of the backing disk"
    }
    fn magic_config_key(&self) -> Option<&'static str> {
        Some("size")
    }
    fn callbacks(&self) -> Callbacks {
        Callbacks::CONFIG
            | Callbacks::CONFIG_HELP
            | Callbacks::OPEN
            | Callbacks::GET_SIZE
            | Callbacks::CAN_MULTI_CONN
            | Callbacks::CAN_CACHE
            | Callbacks::PREAD
    }
    fn blocks(&self) -> bool {
        false
    }
    fn config(&mut self, key: &str, value: &str) -> Result<()> {
        match key {
            "size" => self.size = super::size_param(value)?,
            _ => return Err(super::unknown_param(key)),
        }
        Ok(())
    }
    fn open(&self, _args: &OpenArgs<'_>) -> Result<Box<dyn Handle>> {
        Ok(Box::new(PatternHandle { size: self.size }))
    }
}

struct PatternHandle {
    size: u64,
}

impl Handle for PatternHandle {
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
        fill_pattern(buf, offset);
        Ok(())
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn words_hold_their_offset() {
        let mut b = [0u8; 16];
        fill_pattern(&mut b, 0);
        assert_eq!(b, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 8]);
    }

    #[test]
    fn unaligned_reads_match_aligned() {
        let mut whole = [0u8; 64];
        fill_pattern(&mut whole, 0x1000);
        let mut part = [0u8; 13];
        fill_pattern(&mut part, 0x1000 + 3);
        assert_eq!(&part[..], &whole[3..16]);
    }

    #[test]
    fn top_of_range_does_not_overflow() {
        let mut b = [0u8; 16];
        fill_pattern(&mut b, u64::MAX - 15);
        assert_eq!(&b[8..], &(!7u64).to_be_bytes());
    }
}
