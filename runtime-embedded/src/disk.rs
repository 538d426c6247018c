//! The disk a server exports: a small trait with no allocation, and three
//! devices (a RAM disk over a caller's buffer, a read-only flash image, and
//! any `embedded-io` storage that can seek).
//!
//! The server checks every request against [`BlockDevice::size`] before it
//! calls the device, so `offset + len <= size` holds in every call.

use nbdkit_core::wire::consts::{NBD_EIO, NBD_ENOSPC, NBD_ENOTSUP, NBD_EPERM, STATE_ZERO};

/// Why a disk operation failed; each maps to an NBD error number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum DiskError {
    /// The medium failed (NBD_EIO).
    Io,
    /// The disk cannot be written (NBD_EPERM).
    ReadOnly,
    /// The range is outside the disk (NBD_ENOSPC).
    OutOfRange,
    /// The operation is not supported (NBD_ENOTSUP).
    Unsupported,
}

impl DiskError {
    /// The NBD error number sent to the client.
    pub fn nbd_errno(self) -> u32 {
        match self {
            DiskError::Io => NBD_EIO,
            DiskError::ReadOnly => NBD_EPERM,
            DiskError::OutOfRange => NBD_ENOSPC,
            DiskError::Unsupported => NBD_ENOTSUP,
        }
    }
}

/// One run of blocks with the same allocation state, as NBD_CMD_BLOCK_STATUS
/// reports it for `base:allocation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Extent {
    /// Length in bytes (at least 1).
    pub len: u64,
    /// `STATE_HOLE` and/or `STATE_ZERO`, or 0 for allocated data.
    pub flags: u32,
}

/// A disk served over NBD. Calls never overlap: the poll loop is one thread.
pub trait BlockDevice {
    /// Size in bytes.
    fn size(&self) -> u64;

    /// True when writes, trims and zeroing are refused.
    fn is_read_only(&self) -> bool {
        false
    }

    /// Fill `buf` from `offset`.
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError>;

    /// Store `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), DiskError>;

    /// Make every completed write durable.
    fn flush(&mut self) -> Result<(), DiskError> {
        Ok(())
    }

    /// Discard a range (advisory: the default keeps the data).
    fn trim(&mut self, _offset: u64, _len: u64) -> Result<(), DiskError> {
        Ok(())
    }

    /// Write `len` zero bytes at `offset` (default: by writes of zeroes).
    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<(), DiskError> {
        static ZEROES: [u8; 256] = [0; 256];
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(ZEROES.len() as u64) as usize;
            self.write(offset + done, &ZEROES[..n])?;
            done += n as u64;
        }
        Ok(())
    }

    /// The extent that starts at `offset`, at most `len` bytes long
    /// (default: all allocated data).
    fn extent(&mut self, _offset: u64, len: u64) -> Result<Extent, DiskError> {
        Ok(Extent { len, flags: 0 })
    }
}

impl<D: BlockDevice + ?Sized> BlockDevice for &mut D {
    fn size(&self) -> u64 {
        (**self).size()
    }
    fn is_read_only(&self) -> bool {
        (**self).is_read_only()
    }
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        (**self).read(offset, buf)
    }
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), DiskError> {
        (**self).write(offset, data)
    }
    fn flush(&mut self) -> Result<(), DiskError> {
        (**self).flush()
    }
    fn trim(&mut self, offset: u64, len: u64) -> Result<(), DiskError> {
        (**self).trim(offset, len)
    }
    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<(), DiskError> {
        (**self).write_zeroes(offset, len)
    }
    fn extent(&mut self, offset: u64, len: u64) -> Result<Extent, DiskError> {
        (**self).extent(offset, len)
    }
}

/// Granule of the zero scan that RAM and flash disks report extents with.
pub const EXTENT_GRANULE: u64 = 4096;

/// The slice of `data` for `offset..offset+len`, or `OutOfRange`.
fn range(size: usize, offset: u64, len: usize) -> Result<core::ops::Range<usize>, DiskError> {
    let start = usize::try_from(offset).map_err(|_| DiskError::OutOfRange)?;
    let end = start.checked_add(len).ok_or(DiskError::OutOfRange)?;
    if end > size {
        return Err(DiskError::OutOfRange);
    }
    Ok(start..end)
}

/// Extents of an in-memory image: runs of all-zero granules are reported
/// as `STATE_ZERO` (so copying tools can skip them), the rest as data.
fn scan_extent(data: &[u8], offset: u64, len: u64) -> Result<Extent, DiskError> {
    let size = data.len() as u64;
    if len == 0 || offset >= size {
        return Err(DiskError::OutOfRange);
    }
    let end = offset.saturating_add(len).min(size);
    let granule_end = |o: u64| ((o / EXTENT_GRANULE) + 1) * EXTENT_GRANULE;
    let is_zero = |a: u64, b: u64| data[a as usize..b as usize].iter().all(|&x| x == 0);
    let first_end = granule_end(offset).min(end);
    let zero = is_zero(offset, first_end);
    let mut pos = first_end;
    while pos < end {
        let next = granule_end(pos).min(end);
        if is_zero(pos, next) != zero {
            break;
        }
        pos = next;
    }
    Ok(Extent {
        len: pos - offset,
        flags: if zero { STATE_ZERO } else { 0 },
    })
}

/// A writable disk in a caller's buffer (a `static mut` array on firmware).
#[derive(Debug)]
pub struct RamDisk<'a> {
    data: &'a mut [u8],
}

impl<'a> RamDisk<'a> {
    /// A disk whose contents are `data`.
    pub fn new(data: &'a mut [u8]) -> Self {
        RamDisk { data }
    }

    /// The contents.
    pub fn as_slice(&self) -> &[u8] {
        self.data
    }
}

impl BlockDevice for RamDisk<'_> {
    fn size(&self) -> u64 {
        self.data.len() as u64
    }
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        let r = range(self.data.len(), offset, buf.len())?;
        buf.copy_from_slice(&self.data[r]);
        Ok(())
    }
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), DiskError> {
        let r = range(self.data.len(), offset, data.len())?;
        self.data[r].copy_from_slice(data);
        Ok(())
    }
    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<(), DiskError> {
        let len = usize::try_from(len).map_err(|_| DiskError::OutOfRange)?;
        let r = range(self.data.len(), offset, len)?;
        self.data[r].fill(0);
        Ok(())
    }
    fn trim(&mut self, offset: u64, len: u64) -> Result<(), DiskError> {
        // Trimmed blocks read back as zeroes, as the memory plugin does.
        self.write_zeroes(offset, len)
    }
    fn extent(&mut self, offset: u64, len: u64) -> Result<Extent, DiskError> {
        scan_extent(self.data, offset, len)
    }
}

/// A read-only disk over an image in flash (or any `&'static [u8]`).
#[derive(Debug, Clone, Copy)]
pub struct FlashDisk<'a> {
    data: &'a [u8],
}

impl<'a> FlashDisk<'a> {
    /// A read-only disk whose contents are `data`.
    pub fn new(data: &'a [u8]) -> Self {
        FlashDisk { data }
    }
}

impl BlockDevice for FlashDisk<'_> {
    fn size(&self) -> u64 {
        self.data.len() as u64
    }
    fn is_read_only(&self) -> bool {
        true
    }
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        let r = range(self.data.len(), offset, buf.len())?;
        buf.copy_from_slice(&self.data[r]);
        Ok(())
    }
    fn write(&mut self, _offset: u64, _data: &[u8]) -> Result<(), DiskError> {
        Err(DiskError::ReadOnly)
    }
    fn write_zeroes(&mut self, _offset: u64, _len: u64) -> Result<(), DiskError> {
        Err(DiskError::ReadOnly)
    }
    fn trim(&mut self, _offset: u64, _len: u64) -> Result<(), DiskError> {
        Err(DiskError::ReadOnly)
    }
    fn extent(&mut self, offset: u64, len: u64) -> Result<Extent, DiskError> {
        scan_extent(self.data, offset, len)
    }
}

/// A disk over any `embedded-io` storage that can seek (an SD card driver,
/// a file system's file, a SPI flash with a seek cursor).
#[derive(Debug)]
pub struct IoDisk<T> {
    io: T,
    size: u64,
    read_only: bool,
}

impl<T> IoDisk<T> {
    /// A disk of `size` bytes over `io`.
    pub fn new(io: T, size: u64, read_only: bool) -> Self {
        IoDisk {
            io,
            size,
            read_only,
        }
    }

    /// The storage back.
    pub fn into_inner(self) -> T {
        self.io
    }
}

impl<T> BlockDevice for IoDisk<T>
where
    T: embedded_io::Read + embedded_io::Write + embedded_io::Seek,
{
    fn size(&self) -> u64 {
        self.size
    }
    fn is_read_only(&self) -> bool {
        self.read_only
    }
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        self.io
            .seek(embedded_io::SeekFrom::Start(offset))
            .map_err(|_| DiskError::Io)?;
        self.io.read_exact(buf).map_err(|_| DiskError::Io)
    }
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), DiskError> {
        if self.read_only {
            return Err(DiskError::ReadOnly);
        }
        self.io
            .seek(embedded_io::SeekFrom::Start(offset))
            .map_err(|_| DiskError::Io)?;
        self.io.write_all(data).map_err(|_| DiskError::Io)
    }
    fn flush(&mut self) -> Result<(), DiskError> {
        self.io.flush().map_err(|_| DiskError::Io)
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn ram_disk_reports_zero_runs_by_granule() {
        let mut buf = [0u8; 4 * 4096];
        buf[4096 + 7] = 1;
        let mut d = RamDisk::new(&mut buf);
        assert_eq!(
            d.extent(0, 4 * 4096),
            Ok(Extent {
                len: 4096,
                flags: STATE_ZERO
            })
        );
        assert_eq!(
            d.extent(4096, 3 * 4096),
            Ok(Extent {
                len: 4096,
                flags: 0
            })
        );
        assert_eq!(
            d.extent(8192, 100),
            Ok(Extent {
                len: 100,
                flags: STATE_ZERO
            })
        );
    }

    #[test]
    fn ram_disk_refuses_out_of_range() {
        let mut buf = [0u8; 16];
        let mut d = RamDisk::new(&mut buf);
        assert_eq!(d.write(10, &[0; 7]), Err(DiskError::OutOfRange));
        assert_eq!(d.read(u64::MAX, &mut [0; 1]), Err(DiskError::OutOfRange));
    }

    #[test]
    fn flash_disk_is_read_only() {
        static IMAGE: [u8; 8] = *b"firmware";
        let mut d = FlashDisk::new(&IMAGE);
        let mut b = [0u8; 4];
        d.read(4, &mut b).unwrap();
        assert_eq!(&b, b"ware");
        assert_eq!(d.write(0, b"x"), Err(DiskError::ReadOnly));
    }
}
