//! `null`: a disk that discards writes and reads as zeroes.
//!
//! Parameters: `[size=]SIZE` (default 0).

use alloc::boxed::Box;

use crate::backend::{Callbacks, Extents, Flags, Handle, OpenArgs, Plugin, Result, Support};
use crate::wire::consts::{STATE_HOLE, STATE_ZERO};

/// The null plugin.
#[derive(Debug, Default)]
pub struct Null {
    size: u64,
}

impl Plugin for Null {
    fn name(&self) -> &'static str {
        "null"
    }
    fn config_help(&self) -> &'static str {
        "size=<SIZE>             Size of the backing disk"
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
            _ => return Err(super::unknown_param(key)),
        }
        Ok(())
    }
    fn open(&self, _args: &OpenArgs<'_>) -> Result<Box<dyn Handle>> {
        Ok(Box::new(FilledHandle {
            size: self.size,
            byte: 0,
            holes: true,
        }))
    }
}

/// A writable disk that discards writes and reads as one repeated byte:
/// zeroes for `null`, 0xff (or `byte=`) for `ones`.
pub(crate) struct FilledHandle {
    pub(crate) size: u64,
    pub(crate) byte: u8,
    /// Report the disk as a hole (null) rather than as data (ones).
    pub(crate) holes: bool,
}

impl Handle for FilledHandle {
    fn get_size(&self) -> Result<u64> {
        Ok(self.size)
    }
    fn can_fast_zero(&self) -> Result<bool> {
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
    fn extents(&self, count: u64, offset: u64, _flags: Flags, extents: &mut Extents) -> Result<()> {
        if self.holes {
            extents.add(offset, count, STATE_HOLE | STATE_ZERO)
        } else {
            // One data extent over the whole disk, clipped to the request.
            extents.add(0, self.size, 0)
        }
    }
    fn cache(&self, _count: u64, _offset: u64, _flags: Flags) -> Result<()> {
        Ok(())
    }
}
