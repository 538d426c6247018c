//! `checkwrite`: turn writes into checks that the data written matches
//! what the layer below already holds (EIO if not). The layer below is
//! opened read-only and never written. No parameters.

use alloc::boxed::Box;
use alloc::vec;

use crate::backend::{
    Context, Error, Filter, FilterHandle, Flags, NextOpener, OpenArgs, Result, Support,
};
use crate::errno::Errno;

/// Largest piece compared at once.
const CHUNK: u64 = 1 << 20;

/// The checkwrite filter.
#[derive(Debug, Default)]
pub struct CheckWrite;

impl Filter for CheckWrite {
    fn name(&self) -> &'static str {
        "checkwrite"
    }
    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit checkwrite filter")
    }
    fn blocks(&self) -> bool {
        false
    }
    fn open(
        &self,
        next: &mut dyn NextOpener,
        args: &OpenArgs<'_>,
    ) -> Result<Box<dyn FilterHandle>> {
        next.open(true, args.export_name)?;
        Ok(Box::new(CheckWriteHandle))
    }
}

struct CheckWriteHandle;

fn mismatch() -> Error {
    Error::msg(Errno::EIO, "data written does not match expected")
}

/// Check that `count` bytes at `offset` match `data` (zeroes if `None`).
fn compare(next: &Context, count: u64, offset: u64, data: Option<&[u8]>) -> Result<()> {
    let mut buf = vec![0u8; count.min(CHUNK) as usize];
    let mut done = 0u64;
    while done < count {
        let n = (count - done).min(CHUNK) as usize;
        next.pread(&mut buf[..n], offset + done, Flags::NONE)?;
        let ok = match data {
            Some(d) => buf[..n] == d[done as usize..done as usize + n],
            None => buf[..n].iter().all(|&b| b == 0),
        };
        if !ok {
            return Err(mismatch());
        }
        done += n as u64;
    }
    Ok(())
}

impl FilterHandle for CheckWriteHandle {
    fn can_write(&self, _next: &Context) -> Result<bool> {
        Ok(true)
    }
    fn can_flush(&self, _next: &Context) -> Result<bool> {
        Ok(true)
    }
    fn can_trim(&self, _next: &Context) -> Result<bool> {
        Ok(true)
    }
    fn can_zero(&self, _next: &Context) -> Result<Support> {
        Ok(Support::Native)
    }
    fn can_fast_zero(&self, _next: &Context) -> Result<bool> {
        Ok(true)
    }
    fn can_fua(&self, _next: &Context) -> Result<Support> {
        Ok(Support::Native)
    }
    fn can_multi_conn(&self, _next: &Context) -> Result<bool> {
        Ok(true)
    }
    fn pwrite(&self, next: &Context, buf: &[u8], offset: u64, _flags: Flags) -> Result<()> {
        compare(next, buf.len() as u64, offset, Some(buf))
    }
    fn flush(&self, _next: &Context, _flags: Flags) -> Result<()> {
        Ok(())
    }
    fn trim(&self, next: &Context, count: u64, offset: u64, _flags: Flags) -> Result<()> {
        compare(next, count, offset, None)
    }
    fn zero(&self, next: &Context, count: u64, offset: u64, _flags: Flags) -> Result<()> {
        compare(next, count, offset, None)
    }
}
