//! A RAM disk plugin written with the crates.io `nbdkit` crate: `size=`
//! (default 16M, any size `nbdkit_parse_size` takes) bytes, readable and
//! writable, with flush, trim, zero and extents. Blocks of 4 KiB that hold
//! only zeroes are reported as holes.
//!
//! ```sh
//! cargo build --release --manifest-path plugins/rust/Cargo.toml
//! nbdkit plugins/rust/target/release/libnbdkit_rust_ramdisk.so size=64M
//! ```

use std::sync::{Mutex, MutexGuard, PoisonError};

use nbdkit::*;

const BLOCK: u64 = 4096;

static SIZE: Mutex<u64> = Mutex::new(16 * 1024 * 1024);
static DISK: Mutex<Vec<u8>> = Mutex::new(Vec::new());

fn disk() -> MutexGuard<'static, Vec<u8>> {
    DISK.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The byte range `[offset, offset + count)` of the disk, or EINVAL.
fn range(len: usize, count: u64, offset: u64) -> Result<std::ops::Range<usize>> {
    let end = offset
        .checked_add(count)
        .filter(|&e| e <= len as u64)
        .ok_or_else(|| Error::new(libc::EINVAL, "request beyond the end of the disk"))?;
    Ok(offset as usize..end as usize)
}

/// One connection (the disk itself is shared by all).
struct RamDisk;

impl Server for RamDisk {
    fn name() -> &'static str {
        "rust-ramdisk"
    }

    fn description() -> Option<&'static str> {
        Some("A RAM disk written with the nbdkit crate.")
    }

    fn config_help() -> Option<&'static str> {
        Some("size=<SIZE>                 Size of the disk (default 16M).")
    }

    fn config(key: &str, value: &str) -> Result<()> {
        match key {
            "size" => {
                *SIZE.lock().unwrap_or_else(PoisonError::into_inner) = parse_size(value)? as u64;
                Ok(())
            }
            _ => Err(Error::new(
                libc::EINVAL,
                format!("unknown parameter '{key}'"),
            )),
        }
    }

    fn get_ready() -> Result<()> {
        let size = *SIZE.lock().unwrap_or_else(PoisonError::into_inner);
        let size =
            usize::try_from(size).map_err(|_| Error::new(libc::EINVAL, "size= is too large"))?;
        *disk() = vec![0; size];
        Ok(())
    }

    fn thread_model() -> Result<ThreadModel> {
        Ok(ThreadModel::Parallel)
    }

    fn open(readonly: bool) -> Result<Box<dyn Server>> {
        debug!("open: readonly={readonly} export={:?}", export_name().ok());
        Ok(Box::new(RamDisk))
    }

    fn get_size(&self) -> Result<i64> {
        Ok(disk().len() as i64)
    }

    fn can_multi_conn(&self) -> Result<bool> {
        Ok(true)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let d = disk();
        let r = range(d.len(), buf.len() as u64, offset)?;
        buf.copy_from_slice(&d[r]);
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64, _flags: Flags) -> Result<()> {
        let mut d = disk();
        let r = range(d.len(), buf.len() as u64, offset)?;
        d[r].copy_from_slice(buf);
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }

    fn trim(&self, count: u32, offset: u64, _flags: Flags) -> Result<()> {
        self.zero(count, offset, Flags::empty())
    }

    fn zero(&self, count: u32, offset: u64, _flags: Flags) -> Result<()> {
        let mut d = disk();
        let r = range(d.len(), u64::from(count), offset)?;
        d[r].fill(0);
        Ok(())
    }

    fn can_extents(&self) -> Result<bool> {
        Ok(true)
    }

    fn extents(&self, count: u32, offset: u64, flags: Flags, h: &mut ExtentHandle) -> Result<()> {
        let d = disk();
        let len = d.len() as u64;
        let end = offset.saturating_add(u64::from(count)).min(len);
        let mut start = offset - offset % BLOCK;
        while start < end {
            let stop = (start + BLOCK).min(len);
            let zero = d[start as usize..stop as usize].iter().all(|&b| b == 0);
            let kind = if zero {
                ExtentType::HoleZero
            } else {
                ExtentType::Allocated
            };
            h.add(start, stop - start, kind)?;
            if flags.contains(Flags::REQ_ONE) {
                break;
            }
            start = stop;
        }
        Ok(())
    }
}

plugin!(RamDisk {
    config_help,
    config,
    get_ready,
    thread_model,
    can_multi_conn,
    write_at,
    flush,
    trim,
    zero,
    can_extents,
    extents
});
