//! `ones`: a disk that reads as repeated 0xff bytes (or `byte=N`) and
//! discards writes (nbdkit 1.36).
//!
//! Parameters: `[size=]SIZE` (default 0), `byte=N` (0..=255, C number
//! syntax, default 0xff).

use alloc::boxed::Box;

use super::random::parse_unsigned;
use crate::backend::{Extents, Flags, Handle, OpenArgs, Plugin, Result, Support};

/// The ones plugin.
#[derive(Debug)]
pub struct Ones {
    size: u64,
    byte: u8,
}

impl Default for Ones {
    fn default() -> Self {
        Ones {
            size: 0,
            byte: 0xff,
        }
    }
}

impl Plugin for Ones {
    fn name(&self) -> &'static str {
        "ones"
    }
    fn config_help(&self) -> &'static str {
        "byte=<BYTE>             Repeating byte to use (default: 0xff).\nsize=<SIZE>             Size of the backing disk."
    }
    fn magic_config_key(&self) -> Option<&'static str> {
        Some("size")
    }
    fn callbacks(&self) -> &'static [&'static str] {
        &[
            "config",
            "config_help",
            "open",
            "get_size",
            "can_fast_zero",
            "can_fua",
            "can_multi_conn",
            "can_cache",
            "pread",
            "pwrite",
            "flush",
            "trim",
            "zero",
            "extents",
        ]
    }
    fn blocks(&self) -> bool {
        false
    }
    fn config(&mut self, key: &str, value: &str) -> Result<()> {
        match key {
            "size" => self.size = super::size_param(value)?,
            "byte" => self.byte = parse_unsigned("byte", value, 255)? as u8,
            _ => return Err(super::unknown_param(key)),
        }
        Ok(())
    }
    fn open(&self, _args: &OpenArgs<'_>) -> Result<Box<dyn Handle>> {
        Ok(Box::new(OnesHandle {
            size: self.size,
            byte: self.byte,
        }))
    }
}

struct OnesHandle {
    size: u64,
    byte: u8,
}

impl Handle for OnesHandle {
    fn get_size(&self) -> Result<u64> {
        Ok(self.size)
    }
    fn can_write(&self) -> Result<bool> {
        Ok(true)
    }
    fn can_flush(&self) -> Result<bool> {
        Ok(true)
    }
    fn can_trim(&self) -> Result<bool> {
        Ok(true)
    }
    fn can_zero(&self) -> Result<Support> {
        Ok(Support::Native)
    }
    fn can_fast_zero(&self) -> Result<bool> {
        Ok(true)
    }
    fn can_extents(&self) -> Result<bool> {
        Ok(true)
    }
    fn can_fua(&self) -> Result<Support> {
        Ok(Support::Native)
    }
    fn can_multi_conn(&self) -> Result<bool> {
        Ok(true)
    }
    fn can_cache(&self) -> Result<Support> {
        Ok(Support::Native)
    }
    fn pread(&self, buf: &mut [u8], _offset: u64, _flags: Flags) -> Result<()> {
        buf.fill(self.byte);
        Ok(())
    }
    fn pwrite(&self, _buf: &[u8], _offset: u64, _flags: Flags) -> Result<()> {
        Ok(())
    }
    fn flush(&self, _flags: Flags) -> Result<()> {
        Ok(())
    }
    fn trim(&self, _count: u64, _offset: u64, _flags: Flags) -> Result<()> {
        Ok(())
    }
    fn zero(&self, _count: u64, _offset: u64, _flags: Flags) -> Result<()> {
        Ok(())
    }
    fn extents(
        &self,
        _count: u64,
        _offset: u64,
        _flags: Flags,
        extents: &mut Extents,
    ) -> Result<()> {
        // One data extent over the whole disk, clipped to the request.
        extents.add(0, self.size, 0)
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn byte_parameter() {
        let mut p = Ones::default();
        p.config("byte", "0x55").unwrap();
        assert_eq!(p.byte, 0x55);
        assert!(p.config("byte", "256").is_err());
    }
}
