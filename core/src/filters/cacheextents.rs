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

type Cache = Arc<Mutex<Vec<Extent>>>;

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
    fn open(
        &self,
        next: &mut dyn NextOpener,
        args: &OpenArgs<'_>,
    ) -> Result<Box<dyn FilterHandle>> {
        next.open(args.readonly, args.export_name)?;
        Ok(Box::new(CacheExtentsHandle {
            cache: Arc::clone(&self.cache),
        }))
    }
}

struct CacheExtentsHandle {
    cache: Cache,
}

impl CacheExtentsHandle {
    fn forget(&self) {
        lock(&self.cache).clear();
    }

    /// Answer from the cache if it covers `offset`.
    fn answer_from_cache(&self, offset: u64, extents: &mut Extents) -> Result<bool> {
        let cache = lock(&self.cache);
        let (Some(first), Some(last)) = (cache.first(), cache.last()) else {
            return Ok(false);
        };
        if offset < first.offset || offset >= last.offset + last.length {
            return Ok(false);
        }
        for e in cache.iter() {
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
        cache.clear();
        cache.extend_from_slice(fresh.as_slice());
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
