//! The disk as regions (table bytes, zero padding, files) and the
//! connections that read and write through them: writes reach the files;
//! writing the tables or the padding fails with EIO unless the bytes do
//! not change.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::sync::{Arc, Mutex};

use nbdkit_core::backend::{Error, Flags, Handle, Result, Support};
use nbdkit_core::errno::Errno;

use super::PartFile;
use crate::os::errno::io_error;

/// What a range of the virtual disk holds.
#[derive(Debug)]
pub(super) enum Content {
    /// Table bytes (MBR, EBR, GPT primary or backup).
    Data(Box<[u8]>),
    /// Zero padding.
    Zero,
    /// The i'th file.
    File(usize),
}

/// A range of the disk.
#[derive(Debug)]
pub(super) struct Region {
    pub(super) start: u64,
    pub(super) len: u64,
    pub(super) content: Content,
}

impl Region {
    pub(super) fn end(&self) -> u64 {
        self.start + self.len
    }
}

/// The disk: shared by all connections.
#[derive(Debug)]
pub(super) struct Disk {
    pub(super) files: Vec<PartFile>,
    pub(super) regions: Vec<Region>,
    pub(super) size: u64,
    /// Read-write descriptors, in file order, once a writable connection
    /// has opened them.
    pub(super) writable: Mutex<Option<Arc<Vec<File>>>>,
}

impl Disk {
    /// The read-write descriptors, opening them on first use.
    pub(super) fn open_writable(&self) -> Result<Arc<Vec<File>>> {
        let mut slot = self
            .writable
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(files) = &*slot {
            return Ok(files.clone());
        }
        let mut out = Vec::with_capacity(self.files.len());
        for f in &self.files {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
                .open(&f.path)
                .map_err(|e| io_error(&f.name, &e))?;
            let meta = file
                .metadata()
                .map_err(|e| io_error(&format!("{}: stat", f.name), &e))?;
            if meta.dev() != f.dev || meta.ino() != f.ino {
                return Err(Error::msg(
                    Errno::EIO,
                    format!("{}: file was replaced while nbdkit was running", f.name),
                ));
            }
            out.push(file);
        }
        let files = Arc::new(out);
        *slot = Some(files.clone());
        Ok(files)
    }

    /// The index of the region holding `offset` (which is below the size).
    fn region_at(&self, offset: u64) -> usize {
        self.regions.partition_point(|r| r.end() <= offset)
    }

    /// Call `f(region, offset_in_region, range_in_request)` for each region
    /// that `offset..offset+count` touches, in order.
    fn for_each(
        &self,
        offset: u64,
        count: u64,
        mut f: impl FnMut(&Region, u64, core::ops::Range<usize>) -> Result<()>,
    ) -> Result<()> {
        let end = offset
            .checked_add(count)
            .filter(|e| *e <= self.size)
            .ok_or_else(|| {
                Error::msg(
                    Errno::EIO,
                    "partitioning: request beyond the end of the disk",
                )
            })?;
        let mut pos = offset;
        let mut i = self.region_at(offset);
        while pos < end && i < self.regions.len() {
            let r = &self.regions[i];
            let n = r.end().min(end) - pos;
            let start = (pos - offset) as usize;
            f(r, pos - r.start, start..start + n as usize)?;
            pos += n;
            i += 1;
        }
        Ok(())
    }
}

/// A connection: reads through the read-only descriptors unless it may
/// write.
#[derive(Debug)]
pub(super) struct PartitioningHandle {
    pub(super) disk: Arc<Disk>,
    pub(super) writable: Option<Arc<Vec<File>>>,
}

impl PartitioningHandle {
    fn file(&self, i: usize) -> &File {
        match &self.writable {
            Some(w) => &w[i],
            None => &self.disk.files[i].file,
        }
    }
}

impl Handle for PartitioningHandle {
    fn get_size(&self) -> Result<u64> {
        Ok(self.disk.size)
    }

    fn can_multi_conn(&self) -> Result<bool> {
        Ok(true)
    }

    fn can_cache(&self) -> Result<Support> {
        Ok(Support::Emulate)
    }

    fn pread(&self, buf: &mut [u8], offset: u64, _flags: Flags) -> Result<()> {
        self.disk
            .for_each(offset, buf.len() as u64, |r, off, range| {
                let part = &mut buf[range];
                match &r.content {
                    Content::Data(d) => {
                        part.copy_from_slice(&d[off as usize..off as usize + part.len()])
                    }
                    Content::Zero => part.fill(0),
                    Content::File(i) => {
                        let name = &self.disk.files[*i].name;
                        let file = self.file(*i);
                        let mut done = 0;
                        while done < part.len() {
                            match file.read_at(&mut part[done..], off + done as u64) {
                                Ok(0) => {
                                    return Err(Error::msg(
                                        Errno::EIO,
                                        format!("pread: {name}: unexpected end of file"),
                                    ))
                                }
                                Ok(n) => done += n,
                                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                                Err(e) => return Err(io_error(&format!("pread: {name}"), &e)),
                            }
                        }
                    }
                }
                Ok(())
            })
    }

    fn pwrite(&self, buf: &[u8], offset: u64, _flags: Flags) -> Result<()> {
        let Some(files) = &self.writable else {
            return Err(Error::new(Errno::EROFS));
        };
        self.disk
            .for_each(offset, buf.len() as u64, |r, off, range| {
                let part = &buf[range];
                match &r.content {
                    Content::Data(d) => {
                        if d[off as usize..off as usize + part.len()] != *part {
                            return Err(Error::msg(
                                Errno::EIO,
                                "attempt to change partition table of virtual disk",
                            ));
                        }
                    }
                    Content::Zero => {
                        if part.iter().any(|b| *b != 0) {
                            return Err(Error::msg(
                                Errno::EIO,
                                "write non-zeroes to padding region",
                            ));
                        }
                    }
                    Content::File(i) => {
                        let name = &self.disk.files[*i].name;
                        let mut done = 0;
                        while done < part.len() {
                            match files[*i].write_at(&part[done..], off + done as u64) {
                                Ok(0) => {
                                    return Err(Error::msg(
                                        Errno::EIO,
                                        format!("pwrite: {name}: wrote nothing"),
                                    ))
                                }
                                Ok(n) => done += n,
                                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                                Err(e) => return Err(io_error(&format!("pwrite: {name}"), &e)),
                            }
                        }
                    }
                }
                Ok(())
            })
    }

    fn flush(&self, _flags: Flags) -> Result<()> {
        for i in 0..self.disk.files.len() {
            self.file(i)
                .sync_data()
                .map_err(|e| io_error("fdatasync", &e))?;
        }
        Ok(())
    }
}
