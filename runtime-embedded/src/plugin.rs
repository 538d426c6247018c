//! A block device as a core [`Plugin`], so that the server serves it
//! through core's stack: `Stack::new(Box::new(DevicePlugin::new(disk)),
//! filters)` puts any of core's filters (`partition`, `offset`, `protect`,
//! `nozero`, ...) between the clients and the device.
//!
//! The device stays a [`BlockDevice`] (a driver: `&mut self`, no heap);
//! the plugin shares it between connections behind core's lock (a spin
//! lock without `std`, never contended in a one-thread poll loop).

use alloc::boxed::Box;

use nbdkit_core::backend::{Callbacks, Error, Extents, Flags, Handle, OpenArgs, Plugin, Result};
use nbdkit_core::errno::Errno;
use nbdkit_core::sync::{lock, Arc, Mutex};

use crate::disk::{BlockDevice, DiskError};

/// A device shared by the plugin and the per-connection handles.
pub type SharedDevice<D> = Arc<Mutex<D>>;

/// The plugin over a device: every connection opens the same device.
#[derive(Debug)]
pub struct DevicePlugin<D> {
    name: &'static str,
    device: SharedDevice<D>,
}

impl<D: BlockDevice + Send + 'static> DevicePlugin<D> {
    /// A plugin named `device` over `device`.
    pub fn new(device: D) -> Self {
        Self::named("device", device)
    }

    /// A plugin with a name of its own (what the logs call it).
    pub fn named(name: &'static str, device: D) -> Self {
        DevicePlugin {
            name,
            device: Arc::new(Mutex::new(device)),
        }
    }

    /// The device, shared (to look at it between polls, e.g. in tests).
    pub fn device(&self) -> SharedDevice<D> {
        Arc::clone(&self.device)
    }
}

fn errno(e: DiskError) -> Error {
    Error::new(match e {
        DiskError::Io => Errno::EIO,
        // EROFS: the server answers NBD_EPERM, as nbdkit does.
        DiskError::ReadOnly => Errno::EROFS,
        DiskError::OutOfRange => Errno::ENOSPC,
        // ENOTSUP from zero makes the stack fall back to writing zeroes.
        DiskError::Unsupported => Errno::ENOTSUP,
    })
}

impl<D: BlockDevice + Send + 'static> Plugin for DevicePlugin<D> {
    fn name(&self) -> &'static str {
        self.name
    }
    fn callbacks(&self) -> Callbacks {
        // can_flush, can_trim, can_zero (native), can_extents and can_cache
        // (native) follow from the data callbacks the device has.
        Callbacks::OPEN
            .union(Callbacks::GET_SIZE)
            .union(Callbacks::CAN_WRITE)
            .union(Callbacks::CAN_MULTI_CONN)
            .union(Callbacks::PREAD)
            .union(Callbacks::PWRITE)
            .union(Callbacks::FLUSH)
            .union(Callbacks::TRIM)
            .union(Callbacks::ZERO)
            .union(Callbacks::EXTENTS)
            .union(Callbacks::CACHE)
    }
    fn blocks(&self) -> bool {
        false
    }
    fn open(&self, _args: &OpenArgs<'_>) -> Result<Box<dyn Handle>> {
        Ok(Box::new(DeviceHandle {
            device: Arc::clone(&self.device),
        }))
    }
}

/// A connection's handle: the shared device.
struct DeviceHandle<D> {
    device: SharedDevice<D>,
}

impl<D: BlockDevice + Send + 'static> Handle for DeviceHandle<D> {
    fn get_size(&self) -> Result<u64> {
        Ok(lock(&self.device).size())
    }
    fn can_write(&self) -> Result<bool> {
        Ok(!lock(&self.device).is_read_only())
    }
    fn can_multi_conn(&self) -> Result<bool> {
        // One device behind one lock: every connection sees every write.
        Ok(true)
    }
    fn pread(&self, buf: &mut [u8], offset: u64, _flags: Flags) -> Result<()> {
        lock(&self.device).read(offset, buf).map_err(errno)
    }
    fn pwrite(&self, buf: &[u8], offset: u64, _flags: Flags) -> Result<()> {
        lock(&self.device).write(offset, buf).map_err(errno)
    }
    fn flush(&self, _flags: Flags) -> Result<()> {
        lock(&self.device).flush().map_err(errno)
    }
    fn trim(&self, count: u64, offset: u64, _flags: Flags) -> Result<()> {
        lock(&self.device).trim(offset, count).map_err(errno)
    }
    fn zero(&self, count: u64, offset: u64, _flags: Flags) -> Result<()> {
        lock(&self.device)
            .write_zeroes(offset, count)
            .map_err(errno)
    }
    fn extents(&self, count: u64, offset: u64, _flags: Flags, extents: &mut Extents) -> Result<()> {
        let mut d = lock(&self.device);
        let end = offset.saturating_add(count);
        let mut pos = offset;
        // Until the range or the list (which the server keeps short) is
        // full; each turn moves forward.
        while pos < end && !extents.is_full() {
            let e = d.extent(pos, end - pos).map_err(errno)?;
            if e.len == 0 {
                break;
            }
            let len = e.len.min(end - pos);
            extents.add(pos, len, e.flags)?;
            pos += len;
        }
        Ok(())
    }
}

#[cfg(test)]
mod test {
    extern crate std;

    use alloc::vec;
    use alloc::vec::Vec;

    use nbdkit_core::backend::{Filter, Peer, Stack};
    use nbdkit_core::filters::{offset::Offset, protect::Protect};

    use super::*;
    use crate::disk::RamDisk;

    fn open(stack: &Stack) -> nbdkit_core::backend::Context {
        stack
            .open(&OpenArgs {
                readonly: false,
                export_name: "",
                is_tls: false,
                peer: &Peer::Unknown,
            })
            .unwrap()
    }

    #[test]
    fn filters_run_over_a_device() {
        let buf: &'static mut [u8] = Box::leak(vec![0u8; 8192].into_boxed_slice());
        let plugin = DevicePlugin::new(RamDisk::new(buf));
        let device = plugin.device();
        let mut offset: Box<dyn Filter> = Box::new(Offset::default());
        offset.config("offset", "4096").unwrap();
        let mut protect: Box<dyn Filter> = Box::new(Protect::default());
        protect.config("protect", "0-511").unwrap();
        let mut stack = Stack::new(Box::new(plugin), vec![protect, offset]);
        stack.config_complete().unwrap();
        let ctx = open(&stack);
        assert_eq!(ctx.caps().size, 4096);
        ctx.pwrite(b"abc", 1000, Flags::NONE).unwrap();
        assert_eq!(&lock(&device).as_slice()[5096..5099], b"abc");
        let e = ctx.pwrite(b"x", 10, Flags::NONE).unwrap_err();
        assert_eq!(e.errno, Errno::EPERM);
        let mut ext = Extents::with_limit(0, 4096, 4);
        ctx.extents(4096, 0, Flags::NONE, &mut ext).unwrap();
        let got: Vec<(u64, u64, u32)> = ext
            .as_slice()
            .iter()
            .map(|e| (e.offset, e.length, e.flags))
            .collect();
        assert_eq!(got, vec![(0, 4096, 0)]);
    }
}
