//! `full`: a disk that reads as zeroes and fails every write with ENOSPC,
//! like `/dev/full`.
//!
//! Parameters: `[size=]SIZE` (required).

use alloc::boxed::Box;

use crate::backend::{Callbacks, Error, Extents, Flags, Handle, OpenArgs, Plugin, Result, Support};
use crate::errno::Errno;
use crate::wire::consts::{STATE_HOLE, STATE_ZERO};

/// The full plugin.
#[derive(Debug, Default)]
pub struct Full {
    size: Option<u64>,
}

impl Plugin for Full {
    fn name(&self) -> &'static str {
        "full"
    }
    fn config_help(&self) -> &'static str {
        "size=<SIZE>  (required) Size of the backing disk"
    }
    fn magic_config_key(&self) -> Option<&'static str> {
        Some("size")
    }
    fn callbacks(&self) -> Callbacks {
        Callbacks::CONFIG
            | Callbacks::CONFIG_COMPLETE
            | Callbacks::CONFIG_HELP
            | Callbacks::OPEN
            | Callbacks::GET_SIZE
            | Callbacks::CAN_MULTI_CONN
            | Callbacks::CAN_CACHE
            | Callbacks::PREAD
            | Callbacks::PWRITE
            | Callbacks::TRIM
            | Callbacks::EXTENTS
    }
    fn blocks(&self) -> bool {
        false
    }
    fn config(&mut self, key: &str, value: &str) -> Result<()> {
        match key {
            "size" => self.size = Some(super::size_param(value)?),
            _ => return Err(super::unknown_param(key)),
        }
        Ok(())
    }
    fn config_complete(&mut self) -> Result<()> {
        if self.size.is_none() {
            return Err(Error::config("size parameter is required"));
        }
        Ok(())
    }
    fn open(&self, _args: &OpenArgs<'_>) -> Result<Box<dyn Handle>> {
        Ok(Box::new(FullHandle {
            size: self.size.unwrap_or(0),
        }))
    }
}

struct FullHandle {
    size: u64,
}

impl Handle for FullHandle {
    fn get_size(&self) -> Result<u64> {
        Ok(self.size)
    }
    fn can_multi_conn(&self) -> Result<bool> {
        Ok(true)
    }
    fn can_cache(&self) -> Result<Support> {
        Ok(Support::Native)
    }
    fn pread(&self, buf: &mut [u8], _offset: u64, _flags: Flags) -> Result<()> {
        buf.fill(0);
        Ok(())
    }
    fn pwrite(&self, _buf: &[u8], _offset: u64, _flags: Flags) -> Result<()> {
        Err(Error::new(Errno::ENOSPC))
    }
    fn trim(&self, _count: u64, _offset: u64, _flags: Flags) -> Result<()> {
        Err(Error::new(Errno::ENOSPC))
    }
    fn extents(&self, count: u64, offset: u64, _flags: Flags, extents: &mut Extents) -> Result<()> {
        extents.add(offset, count, STATE_HOLE | STATE_ZERO)
    }
    fn cache(&self, _count: u64, _offset: u64, _flags: Flags) -> Result<()> {
        Ok(())
    }
}
