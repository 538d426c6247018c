//! `ones`: a disk that reads as repeated 0xff bytes (or `byte=N`) and
//! discards writes (nbdkit 1.36).
//!
//! Parameters: `[size=]SIZE` (default 0), `byte=N` (0..=255, C number
//! syntax, default 0xff).

use alloc::boxed::Box;

use super::random::parse_unsigned;
use crate::backend::{Callbacks, Handle, OpenArgs, Plugin, Result};

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
    fn callbacks(&self) -> Callbacks {
        Callbacks::CONFIG | Callbacks::CONFIG_HELP | super::memory::DISK_CALLBACKS
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
        Ok(Box::new(super::null::FilledHandle {
            size: self.size,
            byte: self.byte,
            holes: false,
        }))
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
