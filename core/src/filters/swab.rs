//! `swab`: swap the bytes of each 16, 32 or 64 bit word.
//!
//! Parameter: `swab-bits=8|16|32|64` (default 16; 8 does nothing). The
//! size is rounded down to a whole word; requests must be word aligned.

use alloc::boxed::Box;
use alloc::vec::Vec;

use super::params::parse_unsigned;
use crate::backend::{
    BlockSize, Context, Error, Extents, Filter, FilterHandle, Flags, NextOpener, OpenArgs, Result,
};
use crate::errno::Errno;

/// The swab filter.
#[derive(Debug)]
pub struct Swab {
    bits: u32,
}

impl Default for Swab {
    fn default() -> Self {
        Swab { bits: 16 }
    }
}

impl Filter for Swab {
    fn name(&self) -> &'static str {
        "swab"
    }
    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit byte-swapping filter")
    }
    fn config_help(&self) -> &'static str {
        "swab-bits=8|16|32|64       Size of byte swap (default 16)."
    }
    fn blocks(&self) -> bool {
        false
    }
    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        if key != "swab-bits" {
            return Ok(false);
        }
        let b = parse_unsigned(key, value, u64::from(u32::MAX))? as u32;
        if ![8, 16, 32, 64].contains(&b) {
            return Err(Error::config("invalid swab-bits, must be 8, 16, 32 or 64"));
        }
        self.bits = b;
        Ok(true)
    }
    fn open(
        &self,
        next: &mut dyn NextOpener,
        args: &OpenArgs<'_>,
    ) -> Result<Box<dyn FilterHandle>> {
        next.open(args.readonly, args.export_name)?;
        Ok(Box::new(SwabHandle {
            word: (self.bits / 8) as usize,
        }))
    }
}

struct SwabHandle {
    word: usize,
}

impl SwabHandle {
    fn check(&self, count: u64, offset: u64) -> Result<()> {
        let w = self.word as u64;
        if count % w != 0 || offset % w != 0 {
            return Err(Error::msg(
                Errno::EINVAL,
                "swab: requests to this filter must be aligned",
            ));
        }
        Ok(())
    }
    fn swap(&self, buf: &mut [u8]) {
        if self.word > 1 {
            for w in buf.chunks_exact_mut(self.word) {
                w.reverse();
            }
        }
    }
}

impl FilterHandle for SwabHandle {
    fn get_size(&self, next: &Context) -> Result<u64> {
        let w = self.word as u64;
        Ok(next.get_size() / w * w)
    }
    fn block_size(&self, next: &Context) -> Result<Option<BlockSize>> {
        let w = self.word as u32;
        Ok(Some(match next.block_size()? {
            None => BlockSize {
                minimum: w,
                preferred: 512,
                maximum: u32::MAX,
            },
            Some(b) => BlockSize {
                minimum: b.minimum.max(w),
                preferred: b.preferred.max(w),
                maximum: if b.maximum == u32::MAX {
                    b.maximum
                } else {
                    b.maximum / w * w
                },
            },
        }))
    }
    fn pread(&self, next: &Context, buf: &mut [u8], offset: u64, flags: Flags) -> Result<()> {
        self.check(buf.len() as u64, offset)?;
        next.pread(buf, offset, flags)?;
        self.swap(buf);
        Ok(())
    }
    fn pwrite(&self, next: &Context, buf: &[u8], offset: u64, flags: Flags) -> Result<()> {
        self.check(buf.len() as u64, offset)?;
        if self.word == 1 {
            return next.pwrite(buf, offset, flags);
        }
        let mut copy = Vec::new();
        copy.try_reserve_exact(buf.len())
            .map_err(|_| Error::new(Errno::ENOMEM))?;
        copy.extend_from_slice(buf);
        self.swap(&mut copy);
        next.pwrite(&copy, offset, flags)
    }
    fn trim(&self, next: &Context, count: u64, offset: u64, flags: Flags) -> Result<()> {
        self.check(count, offset)?;
        next.trim(count, offset, flags)
    }
    fn zero(&self, next: &Context, count: u64, offset: u64, flags: Flags) -> Result<()> {
        self.check(count, offset)?;
        next.zero(count, offset, flags)
    }
    fn extents(
        &self,
        next: &Context,
        count: u64,
        offset: u64,
        flags: Flags,
        extents: &mut Extents,
    ) -> Result<()> {
        self.check(count, offset)?;
        next.extents(count, offset, flags, extents)
    }
    fn cache(&self, next: &Context, count: u64, offset: u64, flags: Flags) -> Result<()> {
        self.check(count, offset)?;
        next.cache(count, offset, flags)
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn swaps_words() {
        let h = SwabHandle { word: 4 };
        let mut b = [0, 1, 2, 3, 4, 5, 6, 7];
        h.swap(&mut b);
        assert_eq!(b, [3, 2, 1, 0, 7, 6, 5, 4]);
        assert!(h.check(3, 0).is_err());
        assert!(Swab::default().config("swab-bits", "12").is_err());
    }
}
