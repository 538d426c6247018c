//! The tar filter: serve one member of a tar file, in place (reads and
//! writes go to the member's bytes inside the archive).
//!
//! Parameters: `tar-entry=PATH` (required: the member's name exactly as
//! stored), `tar=PROGRAM` (accepted for compatibility; the archive is
//! read directly, no tar program is run).

use std::sync::{Arc, Mutex};

use nbdkit_core::backend::{
    Context, Error, Extents, Filter, FilterHandle, Flags, NextOpener, OpenArgs, Result,
};
use nbdkit_core::errno::Errno;

use super::util::NextReader;

/// The tar filter.
#[derive(Debug, Default)]
pub struct Tar {
    entry: Option<String>,
    /// (offset, size) of the member once found.
    found: Arc<Mutex<Option<(u64, u64)>>>,
}

fn not_found() -> Error {
    Error::msg(
        Errno::ENOENT,
        "tar subcommand failed, check that the file really exists in the tarball",
    )
}

/// Find `name` in the archive below: its data offset and size.
fn find(next: &Context, name: &str) -> Result<(u64, u64)> {
    let reader = std::io::BufReader::with_capacity(64 * 1024, NextReader::new(next));
    let mut ar = tar::Archive::new(reader);
    let entries = ar
        .entries_with_seek()
        .map_err(|e| Error::msg(Errno::EIO, format!("tar: {e}")))?;
    // Each entry costs at least one 512-byte header, so the archive's size
    // bounds this loop.
    for entry in entries {
        let entry = entry.map_err(|e| Error::msg(Errno::EIO, format!("tar: {e}")))?;
        let path = entry.path_bytes();
        if path.as_ref() != name.as_bytes() {
            continue;
        }
        let kind = entry.header().entry_type();
        if kind.is_gnu_sparse() {
            return Err(Error::msg(
                Errno::EINVAL,
                "tar: sparse members are not supported yet",
            ));
        }
        let offset = entry.raw_file_position();
        let size = entry.size();
        if offset
            .checked_add(size)
            .map_or(true, |end| end > next.get_size())
        {
            return Err(Error::msg(
                Errno::EINVAL,
                "tar: member extends past the end of the archive",
            ));
        }
        return Ok((offset, size));
    }
    Err(not_found())
}

impl Filter for Tar {
    fn name(&self) -> &'static str {
        "tar"
    }

    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit tar filter")
    }

    fn config_help(&self) -> &'static str {
        "tar-entry=<FILENAME> (required) The path inside the tar file to serve.\n\
         tar=<PATH>           Path of the tar binary (unused)."
    }

    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            "tar-entry" => self.entry = Some(value.to_string()),
            "tar" => {}
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn config_complete(&mut self) -> Result<()> {
        if self.entry.is_none() {
            return Err(Error::config(
                "you must supply the tar-entry=<FILENAME> parameter",
            ));
        }
        Ok(())
    }

    fn open(
        &self,
        next: &mut dyn NextOpener,
        args: &OpenArgs<'_>,
    ) -> Result<Box<dyn FilterHandle>> {
        next.open(args.readonly, args.export_name)?;
        Ok(Box::new(TarHandle {
            name: self.entry.clone().unwrap_or_default(),
            found: self.found.clone(),
            at: Mutex::new((0, 0)),
        }))
    }
}

struct TarHandle {
    name: String,
    found: Arc<Mutex<Option<(u64, u64)>>>,
    at: Mutex<(u64, u64)>,
}

impl TarHandle {
    fn offset(&self) -> u64 {
        self.at.lock().unwrap_or_else(|p| p.into_inner()).0
    }
}

impl FilterHandle for TarHandle {
    fn prepare(&self, next: &Context, _readonly: bool) -> Result<()> {
        let mut found = self.found.lock().unwrap_or_else(|p| p.into_inner());
        let at = match *found {
            Some(at) => at,
            None => {
                let at = find(next, &self.name)?;
                *found = Some(at);
                at
            }
        };
        *self.at.lock().unwrap_or_else(|p| p.into_inner()) = at;
        Ok(())
    }

    fn get_size(&self, _next: &Context) -> Result<u64> {
        Ok(self.at.lock().unwrap_or_else(|p| p.into_inner()).1)
    }

    fn pread(&self, next: &Context, buf: &mut [u8], offset: u64, flags: Flags) -> Result<()> {
        next.pread(buf, offset + self.offset(), flags)
    }

    fn pwrite(&self, next: &Context, buf: &[u8], offset: u64, flags: Flags) -> Result<()> {
        next.pwrite(buf, offset + self.offset(), flags)
    }

    fn trim(&self, next: &Context, count: u64, offset: u64, flags: Flags) -> Result<()> {
        next.trim(count, offset + self.offset(), flags)
    }

    fn zero(&self, next: &Context, count: u64, offset: u64, flags: Flags) -> Result<()> {
        next.zero(count, offset + self.offset(), flags)
    }

    fn cache(&self, next: &Context, count: u64, offset: u64, flags: Flags) -> Result<()> {
        next.cache(count, offset + self.offset(), flags)
    }

    fn extents(
        &self,
        next: &Context,
        count: u64,
        offset: u64,
        flags: Flags,
        extents: &mut Extents,
    ) -> Result<()> {
        // As nbdkit: what the layer below says may run past the request,
        // up to the end of the entry.
        let (base, size) = *self.at.lock().unwrap_or_else(|p| p.into_inner());
        let mut sub = Extents::new(base + offset, base + size);
        next.extents(count, base + offset, flags, &mut sub)?;
        for e in sub.as_slice() {
            extents.add(e.offset - base, e.length, e.flags)?;
        }
        Ok(())
    }
}
