//! `blkio`: disks through libblkio's drivers (`io_uring`,
//! `nvme-io_uring`, `virtio-blk-vhost-user`, `virtio-blk-vhost-vdpa`,
//! `virtio-blk-vfio-pci`), as nbdkit-blkio-plugin(1).
//!
//! libblkio is itself written in Rust: its crate (`blkio` on crates.io)
//! is the library that Fedora's `libblkio.so` wraps, and it builds from
//! crates.io alone, so the plugin is built in (no C library is linked).
//! Linux only: elsewhere every driver is a clear error.
//!
//! Parameters: `[driver=]DRIVER` (required), `get=PROPERTY` (print a
//! property in the debug output after connecting) and any other
//! `PROPERTY=VALUE`, handed to libblkio as a string. A property that can
//! only be set once connected (`num-queues`, `num-entries`, ...) is set
//! after `connect`, the others (`path`, `fd`, `direct`, ...) before it.
//! `read-only` is refused as nbdkit does: `-r` sets it.

use nbdkit_core::backend::{Callbacks, Error, Handle, OpenArgs, Plugin, Result, ThreadModel};

/// The blkio plugin.
#[derive(Debug, Default)]
pub struct Blkio {
    driver: Option<String>,
    /// `PROPERTY=VALUE` parameters, in order.
    props: Vec<(String, String)>,
    /// `get=` parameters.
    gets: Vec<String>,
}

impl Plugin for Blkio {
    fn name(&self) -> &'static str {
        "blkio"
    }
    fn config_help(&self) -> &'static str {
        "driver=<DRIVER> (required) Driver name (eg. \"nvme-io_uring\").\n\
         PROPERTY=VALUE             Set arbitrary libblkio property.\n\
         get=PROPERTY               Print property name after connection."
    }
    fn magic_config_key(&self) -> Option<&'static str> {
        Some("driver")
    }
    fn callbacks(&self) -> Callbacks {
        Callbacks::UNLOAD
            | Callbacks::CONFIG
            | Callbacks::CONFIG_COMPLETE
            | Callbacks::CONFIG_HELP
            | Callbacks::OPEN
            | Callbacks::CLOSE
            | Callbacks::GET_SIZE
            | Callbacks::BLOCK_SIZE
            | Callbacks::CAN_WRITE
            | Callbacks::CAN_FLUSH
            | Callbacks::CAN_TRIM
            | Callbacks::CAN_ZERO
            | Callbacks::CAN_FUA
            | Callbacks::PREAD
            | Callbacks::PWRITE
            | Callbacks::FLUSH
            | Callbacks::TRIM
            | Callbacks::ZERO
    }
    fn max_thread_model(&self) -> ThreadModel {
        ThreadModel::SerializeRequests
    }
    fn config(&mut self, key: &str, value: &str) -> Result<()> {
        match key {
            "driver" => {
                if self.driver.is_some() {
                    return Err(Error::config("'driver' property set more than once"));
                }
                self.driver = Some(value.to_string());
            }
            "get" => self.gets.push(value.to_string()),
            "read-only" => {
                return Err(Error::config(
                    "do not set the libblkio \"read-only\" parameter, \
                     use the nbdkit -r flag if read-only is required",
                ))
            }
            "path" => {
                let p = crate::process::absolute_path(value).map_err(Error::config)?;
                self.props
                    .push((key.to_string(), p.to_string_lossy().into_owned()));
            }
            _ => self.props.push((key.to_string(), value.to_string())),
        }
        Ok(())
    }
    fn config_complete(&mut self) -> Result<()> {
        if self.driver.is_none() {
            return Err(Error::config(
                "you must supply the driver=<DRIVER> parameter after the plugin name on the command line",
            ));
        }
        if cfg!(not(target_os = "linux")) {
            return Err(Error::config(
                "blkio: libblkio's drivers (io_uring, vhost-user, vDPA, VFIO) need Linux",
            ));
        }
        Ok(())
    }
    fn open(&self, args: &OpenArgs<'_>) -> Result<Box<dyn Handle>> {
        let driver = self.driver.as_deref().unwrap_or_default();
        #[cfg(target_os = "linux")]
        {
            Ok(Box::new(linux::open(
                driver,
                &self.props,
                &self.gets,
                args.readonly,
            )?))
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = args;
            Err(Error::msg(
                nbdkit_core::errno::Errno::ENOTSUP,
                format!("blkio: driver {driver}: libblkio needs Linux"),
            ))
        }
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use std::mem::MaybeUninit;
    use std::sync::{Mutex, MutexGuard};

    use blkio::{Blkio, Blkioq, Completion, MemoryRegion, ReqFlags};
    use nbdkit_core::backend::{BlockSize, Error, Flags, Handle, Result, Support};
    use nbdkit_core::errno::Errno;

    use crate::log;

    /// The largest request the bounce buffer holds (nbdkit's 64 MiB).
    const MAX_BOUNCE_BUFFER: usize = 64 * 1024 * 1024;

    /// A libblkio error as an nbdkit error: `what: message`.
    fn err(what: &str, e: &blkio::Error) -> Error {
        let errno = crate::os::errno::from_os(e.errno().raw_os_error());
        Error::msg(errno, format!("{what}: {}", e.message()))
    }

    /// One connection's libblkio instance and its queue.
    pub(super) struct BlkioHandle {
        inner: Mutex<Inner>,
    }

    struct Inner {
        // The queue is dropped before the instance (field order).
        q: Blkioq,
        b: Blkio,
        /// Requests are copied through this region when the driver needs
        /// its buffers registered (vhost-user, vDPA, VFIO) or aligned
        /// (`direct=true`).
        bounce: Option<MemoryRegion>,
        /// Every buffer must lie in a registered region.
        needs_regions: bool,
        /// Buffer alignment the driver needs (1 if none).
        buf_align: usize,
    }

    /// Set one property; `Ok(false)` when it can only be set once the
    /// device is connected.
    fn set_before_connect(b: &mut Blkio, key: &str, value: &str) -> Result<bool> {
        match b.set_str(key, value) {
            Ok(()) => Ok(true),
            Err(e) if e.errno() == blkio::Errno::NODEV => Ok(false),
            Err(e) => Err(err(&format!("error setting property: {key}={value}"), &e)),
        }
    }

    pub(super) fn open(
        driver: &str,
        props: &[(String, String)],
        gets: &[String],
        readonly: bool,
    ) -> Result<BlkioHandle> {
        let mut b = Blkio::new(driver)
            .map_err(|e| err(&format!("blkio_create: error opening driver: {driver}"), &e))?;
        if readonly {
            b.set_bool("read-only", true)
                .map_err(|e| err("error setting property: read-only=true", &e))?;
        }
        let mut later = Vec::new();
        for (k, v) in props {
            if !set_before_connect(&mut b, k, v)? {
                later.push((k, v));
            }
        }
        b.connect()
            .map_err(|e| err("blkio_connect: failed to connect to device", &e))?;
        for (k, v) in later {
            b.set_str(k, v)
                .map_err(|e| err(&format!("error setting property: {k}={v}"), &e))?;
        }
        let mut started = b
            .start()
            .map_err(|e| err("blkio_start: failed to start device", &e))?;
        for name in gets {
            match b.get_str(name) {
                Ok(v) => log::debug(None, format_args!("get {name} = {v}")),
                Err(e) => log::debug(
                    None,
                    format_args!("could not get property {name}: {}", e.message()),
                ),
            }
        }
        if started.queues.is_empty() {
            return Err(Error::msg(
                Errno::EIO,
                "blkio_start: the driver started no queue (num-queues=0?)",
            ));
        }
        let q = started.queues.swap_remove(0);
        let needs_regions = b
            .get_bool("needs-mem-regions")
            .map_err(|e| err("error reading 'needs-mem-regions' property", &e))?;
        let buf_align = b.get_i32("buf-alignment").unwrap_or(1).max(1) as usize;
        let bounce = if needs_regions || buf_align > 1 {
            log::debug(
                None,
                format_args!("driver {driver} requires a bounce buffer"),
            );
            let r = b
                .alloc_mem_region(MAX_BOUNCE_BUFFER)
                .map_err(|e| err("blkio_alloc_mem_region", &e))?;
            b.map_mem_region(&r)
                .map_err(|e| err("blkio_map_mem_region", &e))?;
            Some(r)
        } else {
            None
        };
        Ok(BlkioHandle {
            inner: Mutex::new(Inner {
                q,
                b,
                bounce,
                needs_regions,
                buf_align,
            }),
        })
    }

    impl Inner {
        /// Wait for the one request just queued; `what` names it.
        fn complete(&mut self, what: &str) -> Result<()> {
            let mut c = [MaybeUninit::<Completion>::uninit()];
            let n = self
                .q
                .do_io(&mut c, 1, None, None)
                .map_err(|e| err("blkioq_do_io", &e))?;
            if n != 1 {
                return Err(Error::msg(Errno::EIO, "blkioq_do_io: no completion"));
            }
            // SAFETY: do_io filled the first `n` (= 1) completions.
            let c = unsafe { c[0].assume_init_read() };
            if c.ret != 0 {
                let errno = crate::os::errno::from_os(-c.ret);
                let msg = if c.error_msg.is_null() {
                    std::io::Error::from_raw_os_error(-c.ret).to_string()
                } else {
                    // SAFETY: libblkio's completion messages are static
                    // NUL-terminated strings.
                    unsafe { std::ffi::CStr::from_ptr(c.error_msg) }
                        .to_string_lossy()
                        .into_owned()
                };
                return Err(Error::msg(errno, format!("blkio {what}: {msg}")));
            }
            Ok(())
        }

        /// The bounce buffer if `buf` cannot be handed to the driver.
        fn bounce_for(&self, addr: usize, len: usize) -> Result<Option<*mut u8>> {
            let Some(r) = &self.bounce else {
                return Ok(None);
            };
            if !self.needs_regions && addr % self.buf_align == 0 {
                return Ok(None);
            }
            if len > r.len {
                return Err(Error::msg(
                    Errno::EINVAL,
                    "request too large for bounce buffer",
                ));
            }
            Ok(Some(r.addr as *mut u8))
        }

        fn bool_prop(&self, name: &str) -> Result<bool> {
            self.b
                .get_bool(name)
                .map_err(|e| err(&format!("blkio_get_bool: {name}"), &e))
        }
    }

    fn fua(flags: Flags) -> ReqFlags {
        if flags.contains(Flags::FUA) {
            ReqFlags::FUA
        } else {
            ReqFlags::empty()
        }
    }

    impl BlkioHandle {
        fn lock(&self) -> MutexGuard<'_, Inner> {
            self.inner.lock().unwrap_or_else(|e| e.into_inner())
        }
    }

    impl Handle for BlkioHandle {
        fn get_size(&self) -> Result<u64> {
            self.lock()
                .b
                .get_u64("capacity")
                .map_err(|e| err("error reading device capacity", &e))
        }
        fn block_size(&self) -> Result<Option<BlockSize>> {
            let g = self.lock();
            let min = g.b.get_i32("request-alignment").unwrap_or(0);
            let pref = g.b.get_i32("optimal-io-alignment").unwrap_or(0);
            const MIB: i32 = 1024 * 1024;
            if min <= 0 || min > MIB || !(0..=MIB).contains(&pref) {
                return Ok(None);
            }
            Ok(Some(BlockSize {
                minimum: min as u32,
                preferred: pref as u32,
                maximum: u32::MAX,
            }))
        }
        fn can_write(&self) -> Result<bool> {
            Ok(!self.lock().bool_prop("read-only")?)
        }
        fn can_flush(&self) -> Result<bool> {
            self.can_write()
        }
        fn can_trim(&self) -> Result<bool> {
            self.can_write()
        }
        fn can_zero(&self) -> Result<Support> {
            Ok(if self.can_write()? {
                Support::Native
            } else {
                Support::None
            })
        }
        fn can_fua(&self) -> Result<Support> {
            Ok(Support::Native)
        }
        fn pread(&self, buf: &mut [u8], offset: u64, _flags: Flags) -> Result<()> {
            let mut g = self.lock();
            let bounce = g.bounce_for(buf.as_ptr() as usize, buf.len())?;
            let p = bounce.unwrap_or(buf.as_mut_ptr());
            g.q.read(offset, p, buf.len(), 0, ReqFlags::empty());
            g.complete("read")?;
            if let Some(src) = bounce {
                // SAFETY: the region holds at least buf.len() bytes
                // (checked by bounce_for) and does not overlap buf.
                unsafe { std::ptr::copy_nonoverlapping(src, buf.as_mut_ptr(), buf.len()) };
            }
            Ok(())
        }
        fn pwrite(&self, buf: &[u8], offset: u64, flags: Flags) -> Result<()> {
            let mut g = self.lock();
            let bounce = g.bounce_for(buf.as_ptr() as usize, buf.len())?;
            if let Some(dst) = bounce {
                // SAFETY: as in pread.
                unsafe { std::ptr::copy_nonoverlapping(buf.as_ptr(), dst, buf.len()) };
            }
            let p = bounce.map_or(buf.as_ptr(), |p| p as *const u8);
            g.q.write(offset, p, buf.len(), 0, fua(flags));
            g.complete("write")
        }
        fn flush(&self, _flags: Flags) -> Result<()> {
            let mut g = self.lock();
            g.q.flush(0, ReqFlags::empty());
            g.complete("flush")
        }
        fn zero(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
            let mut f = fua(flags);
            if !flags.contains(Flags::MAY_TRIM) {
                f |= ReqFlags::NO_UNMAP;
            }
            let mut g = self.lock();
            g.q.write_zeroes(offset, count, 0, f);
            g.complete("write zeroes")
        }
        fn trim(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
            let mut g = self.lock();
            g.q.discard(offset, count, 0, ReqFlags::empty());
            match g.complete("discard") {
                // Trim is a hint: a device that cannot discard (the
                // io_uring driver on a regular file asks for
                // FALLOC_FL_NO_HIDE_STALE, which only block devices have)
                // keeps the data instead of failing the client.
                Err(e) if e.errno == Errno::EINVAL || e.errno == Errno::ENOTSUP => {
                    log::debug(None, format_args!("{e}: trim ignored"));
                }
                r => r?,
            }
            if flags.contains(Flags::FUA) {
                g.q.flush(0, ReqFlags::empty());
                g.complete("flush")?;
            }
            Ok(())
        }
    }
}
