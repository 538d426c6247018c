//! `cacheextents`: remember the extents the layer below returned last and
//! answer later requests inside them from memory, which helps clients that
//! ask for one extent at a time. Writes forget the cache. No parameters.

use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;

use crate::backend::{
    Context, Extent, Extents, Filter, FilterHandle, Flags, NextOpener, OpenArgs, Result,
};
use crate::sync::{lock, Mutex};

/// The extents last returned, and the range they covered (kept when the
/// extents are forgotten, as nbdkit's `-D cacheextents.cache=1` shows).
#[derive(Debug, Default)]
struct Cached {
    extents: Vec<Extent>,
    start: u64,
    end: u64,
}

type Cache = Arc<Mutex<Cached>>;

/// The cacheextents filter.
#[derive(Debug, Default)]
pub struct CacheExtents {
    cache: Cache,
}

impl Filter for CacheExtents {
    fn name(&self) -> &'static str {
        "cacheextents"
    }
    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit cacheextents filter")
    }
    fn blocks(&self) -> bool {
        false
    }
    fn debug_flags(&self) -> &'static [&'static str] {
        &["cache"]
    }
    fn open(
        &self,
        next: &mut dyn NextOpener,
        args: &OpenArgs<'_>,
    ) -> Result<Box<dyn FilterHandle>> {
        next.open(args.readonly, args.export_name)?;
        Ok(Box::new(CacheExtentsHandle {
            cache: Arc::clone(&self.cache),
            debug: crate::debug::enabled("cacheextents", "cache"),
        }))
    }
}

struct CacheExtentsHandle {
    cache: Cache,
    /// `-D cacheextents.cache=1`.
    debug: bool,
}

impl CacheExtentsHandle {
    fn forget(&self) {
        lock(&self.cache).extents.clear();
    }

    /// Answer from the cache if it covers `offset`.
    fn answer_from_cache(&self, offset: u64, extents: &mut Extents) -> Result<bool> {
        let cache = lock(&self.cache);
        if self.debug {
            let c = &cache.extents;
            if c.is_empty() {
                crate::debug::debug(format_args!(
                    "cacheextents: cache_start={} cache_end={} cache_extents=(nil)",
                    cache.start, cache.end
                ));
            } else {
                crate::debug::debug(format_args!(
                    "cacheextents: cache_start={} cache_end={} cache_extents={:p}",
                    cache.start,
                    cache.end,
                    c.as_ptr()
                ));
            }
        }
        let hit = !cache.extents.is_empty() && offset >= cache.start && offset < cache.end;
        if self.debug {
            crate::debug::debug(format_args!(
                "cacheextents: {}",
                if hit {
                    "returning from cache"
                } else {
                    "cache miss"
                }
            ));
        }
        if !hit {
            return Ok(false);
        }
        for e in cache.extents.iter() {
            if e.offset + e.length <= offset {
                continue;
            }
            extents.add(e.offset, e.length, e.flags)?;
        }
        Ok(true)
    }
}

impl FilterHandle for CacheExtentsHandle {
    fn extents(
        &self,
        next: &Context,
        count: u64,
        offset: u64,
        flags: Flags,
        extents: &mut Extents,
    ) -> Result<()> {
        if self.answer_from_cache(offset, extents)? {
            return Ok(());
        }
        // Ask for as much as the layer below will say, not just one.
        let mut fresh = Extents::new(offset, next.get_size());
        next.extents(count, offset, flags.without(Flags::REQ_ONE), &mut fresh)?;
        for e in fresh.as_slice() {
            extents.add(e.offset, e.length, e.flags)?;
        }
        let mut cache = lock(&self.cache);
        cache.extents.clear();
        let got = fresh.as_slice();
        if let (Some(first), Some(last)) = (got.first(), got.last()) {
            cache.start = first.offset;
            cache.end = last.offset + last.length;
        }
        for e in got {
            if self.debug {
                crate::debug::debug(format_args!(
                    "cacheextents: updating cache with: offset={} length={} type={:x}",
                    e.offset, e.length, e.flags
                ));
            }
            cache.extents.push(*e);
        }
        Ok(())
    }
    fn pwrite(&self, next: &Context, buf: &[u8], offset: u64, flags: Flags) -> Result<()> {
        self.forget();
        next.pwrite(buf, offset, flags)
    }
    fn trim(&self, next: &Context, count: u64, offset: u64, flags: Flags) -> Result<()> {
        self.forget();
        next.trim(count, offset, flags)
    }
    fn zero(&self, next: &Context, count: u64, offset: u64, flags: Flags) -> Result<()> {
        self.forget();
        next.zero(count, offset, flags)
    }
}
