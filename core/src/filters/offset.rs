//! `offset`: serve part of the layer below.
//!
//! Parameters: `offset=OFFSET` (default 0), `range=LENGTH` (default: to the
//! end of the layer below). The range must lie inside the layer below.

use alloc::boxed::Box;
use alloc::format;

use crate::backend::{
    Context, Error, Extents, Filter, FilterHandle, Flags, NextOpener, OpenArgs, Result,
};
use crate::errno::Errno;
use crate::plugins::size_param;
use crate::sync::{read, write, RwLock};

/// The offset filter.
#[derive(Debug, Default)]
pub struct Offset {
    offset: u64,
    range: Option<u64>,
}

impl Filter for Offset {
    fn name(&self) -> &'static str {
        "offset"
    }
    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit offset filter")
    }
    fn config_help(&self) -> &'static str {
        "offset=<OFFSET>            The start offset to serve (default 0).\n\
         range=<LENGTH>             The total size to serve (default rest of file)."
    }
    fn blocks(&self) -> bool {
        false
    }
    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            "offset" => self.offset = size_param(value)?,
            "range" => self.range = Some(size_param(value)?),
            _ => return Ok(false),
        }
        Ok(true)
    }
    fn open(
        &self,
        next: &mut dyn NextOpener,
        args: &OpenArgs<'_>,
    ) -> Result<Box<dyn FilterHandle>> {
        next.open(args.readonly, args.export_name)?;
        Ok(Box::new(Window::new(self.offset, self.range)))
    }
}

/// A window `offset..offset+range` of the layer below; shared with the
/// partition filter, which sets it when the connection is prepared.
#[derive(Debug)]
pub(crate) struct Window {
    /// Offset and range; a range of `u64::MAX` runs to the end of the
    /// layer below.
    spot: RwLock<(u64, u64)>,
}

impl Window {
    pub(crate) fn new(offset: u64, range: Option<u64>) -> Self {
        Window {
            spot: RwLock::new((offset, range.unwrap_or(u64::MAX))),
        }
    }

    pub(crate) fn set(&self, offset: u64, range: u64) {
        *write(&self.spot) = (offset, range);
    }

    fn start(&self) -> u64 {
        read(&self.spot).0
    }

    fn size(&self, next: &Context) -> Result<u64> {
        let real = next.get_size();
        let (offset, range) = *read(&self.spot);
        let range = match range {
            u64::MAX => None,
            r => Some(r),
        };
        match range {
            Some(r) => match offset.checked_add(r) {
                Some(end) if end <= real => Ok(r),
                _ => Err(Error::msg(
                    Errno::EINVAL,
                    format!(
                        "offset+range ({offset}+{r}) is larger than the real size ({real}) of the underlying file or device"
                    ),
                )),
            },
            None if offset <= real => Ok(real - offset),
            None => Err(Error::msg(
                Errno::EINVAL,
                format!(
                    "offset ({offset}) is larger than the real size ({real}) of the underlying file or device"
                ),
            )),
        }
    }
}

impl FilterHandle for Window {
    fn get_size(&self, next: &Context) -> Result<u64> {
        self.size(next)
    }
    fn pread(&self, next: &Context, buf: &mut [u8], offset: u64, flags: Flags) -> Result<()> {
        next.pread(buf, offset + self.start(), flags)
    }
    fn pwrite(&self, next: &Context, buf: &[u8], offset: u64, flags: Flags) -> Result<()> {
        next.pwrite(buf, offset + self.start(), flags)
    }
    fn trim(&self, next: &Context, count: u64, offset: u64, flags: Flags) -> Result<()> {
        next.trim(count, offset + self.start(), flags)
    }
    fn zero(&self, next: &Context, count: u64, offset: u64, flags: Flags) -> Result<()> {
        next.zero(count, offset + self.start(), flags)
    }
    fn cache(&self, next: &Context, count: u64, offset: u64, flags: Flags) -> Result<()> {
        next.cache(count, offset + self.start(), flags)
    }
    fn extents(
        &self,
        next: &Context,
        count: u64,
        offset: u64,
        flags: Flags,
        extents: &mut Extents,
    ) -> Result<()> {
        let size = self.size(next)?;
        // Ask the layer below for the window's part, then shift back.
        let base = self.start();
        let start = offset + base;
        let end = base + size;
        let mut below = Extents::new(start, end);
        next.extents(count.min(end - start), start, flags, &mut below)?;
        for e in below.as_slice() {
            extents.add(e.offset - base, e.length, e.flags)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn parses_parameters() {
        let mut f = Offset::default();
        assert!(f.config("offset", "1M").unwrap());
        assert!(f.config("range", "2M").unwrap());
        assert!(!f.config("size", "1").unwrap());
        assert_eq!((f.offset, f.range), (1 << 20, Some(2 << 20)));
        assert!(f.config("offset", "-1").is_err());
    }
}
