//! `nocache`: hide or change the cache support of the layer below.
//!
//! Parameter: `cachemode=none|emulate|nop` (default `none`).

use alloc::boxed::Box;
use alloc::format;

use crate::backend::{
    Context, Error, Filter, FilterHandle, Flags, NextOpener, OpenArgs, Result, Support,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum CacheMode {
    #[default]
    None,
    Emulate,
    Nop,
}

/// The nocache filter.
#[derive(Debug, Default)]
pub struct NoCache {
    mode: CacheMode,
}

impl Filter for NoCache {
    fn name(&self) -> &'static str {
        "nocache"
    }
    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit nocache filter")
    }
    fn config_help(&self) -> &'static str {
        "cachemode=<MODE>     Either 'none' (default), 'emulate', or 'nop'."
    }
    fn blocks(&self) -> bool {
        false
    }
    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        if key != "cachemode" {
            return Ok(false);
        }
        self.mode = match value {
            "none" => CacheMode::None,
            "emulate" => CacheMode::Emulate,
            "nop" => CacheMode::Nop,
            _ => return Err(Error::config(format!("unknown cachemode '{value}'"))),
        };
        Ok(true)
    }
    fn open(
        &self,
        next: &mut dyn NextOpener,
        args: &OpenArgs<'_>,
    ) -> Result<Box<dyn FilterHandle>> {
        next.open(args.readonly, args.export_name)?;
        Ok(Box::new(NoCacheHandle(self.mode)))
    }
}

struct NoCacheHandle(CacheMode);

impl FilterHandle for NoCacheHandle {
    fn can_cache(&self, _next: &Context) -> Result<Support> {
        Ok(match self.0 {
            CacheMode::None => Support::None,
            CacheMode::Emulate => Support::Emulate,
            CacheMode::Nop => Support::Native,
        })
    }
    fn cache(&self, _next: &Context, _count: u64, _offset: u64, _flags: Flags) -> Result<()> {
        Ok(())
    }
}
