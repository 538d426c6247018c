//! `zero`: a read-only, zero-sized disk (deprecated in nbdkit in favour of
//! `null`). It takes no parameters.

use alloc::boxed::Box;

use crate::backend::{Callbacks, Flags, Handle, OpenArgs, Plugin, Result, Support};

/// The zero plugin.
#[derive(Debug, Default)]
pub struct Zero;

impl Plugin for Zero {
    fn name(&self) -> &'static str {
        "zero"
    }
    fn callbacks(&self) -> Callbacks {
        Callbacks::OPEN
            | Callbacks::GET_SIZE
            | Callbacks::CAN_MULTI_CONN
            | Callbacks::CAN_CACHE
            | Callbacks::PREAD
    }
    fn blocks(&self) -> bool {
        false
    }
    fn open(&self, _args: &OpenArgs<'_>) -> Result<Box<dyn Handle>> {
        Ok(Box::new(ZeroHandle))
    }
}

struct ZeroHandle;

impl Handle for ZeroHandle {
    fn get_size(&self) -> Result<u64> {
        Ok(0)
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
}
