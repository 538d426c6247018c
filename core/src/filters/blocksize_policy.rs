//! `blocksize-policy`: advertise block size constraints and, optionally,
//! refuse requests that break them.
//!
//! Parameters: `blocksize-minimum=N`, `blocksize-preferred=N`,
//! `blocksize-maximum=N` (default: the layer below's, else 1, 4096 and
//! 0xffffffff), `blocksize-error-policy=allow|error` (default `allow`).

use alloc::boxed::Box;
use alloc::format;

use crate::backend::{
    BlockSize, Context, Error, Extents, Filter, FilterHandle, Flags, NextOpener, OpenArgs, Result,
};
use crate::errno::Errno;
use crate::plugins::size_param;

/// The blocksize-policy filter.
#[derive(Debug, Default)]
pub struct BlocksizePolicy {
    minimum: Option<u32>,
    preferred: Option<u32>,
    maximum: Option<u32>,
    error: bool,
}

impl Filter for BlocksizePolicy {
    fn name(&self) -> &'static str {
        "blocksize-policy"
    }
    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit blocksize policy filter")
    }
    fn config_help(&self) -> &'static str {
        "blocksize-error-policy=allow|error  What to do with a badly sized request.\n\
         blocksize-minimum=<N>               Minimum block size to advertise.\n\
         blocksize-preferred=<N>             Preferred block size to advertise.\n\
         blocksize-maximum=<N>               Maximum block size to advertise."
    }
    fn blocks(&self) -> bool {
        false
    }
    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        let size = |v: &str| -> Result<u32> {
            let n = size_param(v)?;
            u32::try_from(n).map_err(|_| Error::config(format!("{key}: could not parse {v}")))
        };
        match key {
            "blocksize-error-policy" => {
                self.error = match value {
                    "allow" => false,
                    "error" => true,
                    _ => {
                        return Err(Error::config(format!(
                            "unknown blocksize-error-policy: {value}"
                        )))
                    }
                }
            }
            "blocksize-minimum" => {
                let n = size(value)?;
                if !n.is_power_of_two() {
                    return Err(Error::config("blocksize-minimum must be a power of 2"));
                }
                if n > 65536 {
                    return Err(Error::config("blocksize-minimum must be <= 64K"));
                }
                self.minimum = Some(n);
            }
            "blocksize-preferred" => {
                let n = size(value)?;
                if !n.is_power_of_two() || !(512..=32 * 1024 * 1024).contains(&n) {
                    return Err(Error::config(
                        "blocksize-preferred must be between 512 and 32M",
                    ));
                }
                self.preferred = Some(n);
            }
            "blocksize-maximum" => self.maximum = Some(size(value)?),
            _ => return Ok(false),
        }
        Ok(true)
    }
    fn config_complete(&mut self) -> Result<()> {
        if let (Some(min), Some(pref)) = (self.minimum, self.preferred) {
            if min > pref {
                return Err(Error::config(
                    "blocksize-minimum must be <= blocksize-preferred",
                ));
            }
        }
        if let (Some(pref), Some(max)) = (self.preferred, self.maximum) {
            if pref > max {
                return Err(Error::config(
                    "blocksize-preferred must be <= blocksize-maximum",
                ));
            }
        }
        Ok(())
    }
    fn open(
        &self,
        next: &mut dyn NextOpener,
        args: &OpenArgs<'_>,
    ) -> Result<Box<dyn FilterHandle>> {
        next.open(args.readonly, args.export_name)?;
        Ok(Box::new(PolicyHandle {
            minimum: self.minimum,
            preferred: self.preferred,
            maximum: self.maximum,
            error: self.error,
        }))
    }
}

struct PolicyHandle {
    minimum: Option<u32>,
    preferred: Option<u32>,
    maximum: Option<u32>,
    error: bool,
}

impl PolicyHandle {
    fn sizes(&self, next: &Context) -> Result<BlockSize> {
        let below = next.block_size()?;
        let pick = |mine: Option<u32>, theirs: Option<u32>, default: u32| {
            mine.or(theirs.filter(|&v| v != 0)).unwrap_or(default)
        };
        let b = BlockSize {
            minimum: pick(self.minimum, below.map(|b| b.minimum), 1),
            preferred: pick(self.preferred, below.map(|b| b.preferred), 4096),
            maximum: pick(self.maximum, below.map(|b| b.maximum), u32::MAX),
        };
        if b.minimum > b.preferred || b.preferred > b.maximum {
            return Err(Error::msg(
                Errno::EINVAL,
                format!(
                    "computed block size values are invalid, minimum {} > preferred {} or preferred > maximum {}",
                    b.minimum, b.preferred, b.maximum
                ),
            ));
        }
        Ok(b)
    }

    /// Refuse a `kind` request that breaks the constraints, if asked to,
    /// with nbdkit's checks in nbdkit's order (the maximum only for data).
    fn check(&self, next: &Context, kind: &str, count: u64, offset: u64, data: bool) -> Result<()> {
        if !self.error {
            return Ok(());
        }
        let b = self.sizes(next)?;
        let (min, max) = (u64::from(b.minimum), u64::from(b.maximum));
        let why = if count < min {
            format!("count {count} is smaller than minimum size {min}")
        } else if data && count > max {
            format!("count {count} is larger than maximum size {max}")
        } else if count % min != 0 {
            format!("count {count} is not a multiple of minimum size {min}")
        } else if offset % min != 0 {
            format!("offset {offset} is not aligned to a multiple of minimum size {min}")
        } else {
            return Ok(());
        };
        Err(Error::msg(
            Errno::EINVAL,
            format!("client {kind} request rejected: {why}"),
        ))
    }
}

impl FilterHandle for PolicyHandle {
    fn prepare(&self, next: &Context, _readonly: bool) -> Result<()> {
        self.sizes(next).map(|_| ())
    }
    fn block_size(&self, next: &Context) -> Result<Option<BlockSize>> {
        self.sizes(next).map(Some)
    }
    fn pread(&self, next: &Context, buf: &mut [u8], offset: u64, flags: Flags) -> Result<()> {
        self.check(next, "pread", buf.len() as u64, offset, true)?;
        next.pread(buf, offset, flags)
    }
    fn pwrite(&self, next: &Context, buf: &[u8], offset: u64, flags: Flags) -> Result<()> {
        self.check(next, "pwrite", buf.len() as u64, offset, true)?;
        next.pwrite(buf, offset, flags)
    }
    fn trim(&self, next: &Context, count: u64, offset: u64, flags: Flags) -> Result<()> {
        self.check(next, "trim", count, offset, false)?;
        next.trim(count, offset, flags)
    }
    fn zero(&self, next: &Context, count: u64, offset: u64, flags: Flags) -> Result<()> {
        self.check(next, "zero", count, offset, false)?;
        next.zero(count, offset, flags)
    }
    fn cache(&self, next: &Context, count: u64, offset: u64, flags: Flags) -> Result<()> {
        self.check(next, "cache", count, offset, false)?;
        next.cache(count, offset, flags)
    }
    fn extents(
        &self,
        next: &Context,
        count: u64,
        offset: u64,
        flags: Flags,
        extents: &mut Extents,
    ) -> Result<()> {
        self.check(next, "extents", count, offset, false)?;
        next.extents(count, offset, flags, extents)
    }
}
