//! The cache filter: a block cache in a sparse, unlinked temporary file in
//! `$TMPDIR` (default /var/tmp), shared by every connection.
//!
//! Parameters:
//! - `cache=writeback|writethrough|unsafe` (also `cache-mode=`): writeback
//!   keeps writes in the cache until a flush (or a FUA write); writethrough
//!   writes to the plugin at once; unsafe ignores flushes;
//! - `cache-min-block-size=SIZE`: power of 2, >= 4096 (default 64K, or
//!   the temporary file system's block size if larger);
//! - `cache-max-size=SIZE` with `cache-high-threshold=N` (default 95) and
//!   `cache-low-threshold=N` (default 80): past N% of SIZE, least recently
//!   used blocks are dropped (dirty ones written back first) until the
//!   cache is under the low threshold;
//! - `cache-on-read=BOOL|/PATH`: keep what is read from the plugin.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use nbdkit_core::backend::{
    BlockSize, Context, Error, Extents, Filter, FilterHandle, Flags, NextOpener, OpenArgs, Result,
    Support, ThreadModel,
};
use nbdkit_core::errno::Errno;

use super::util::{
    io_error, parse_bool, parse_size, parse_unsigned, pieces, punch_hole, tmpdir, unlinked_tmpfile,
    BlockMap,
};

const NOT_CACHED: u8 = 0;
const CLEAN: u8 = 1;
const DIRTY: u8 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Writeback,
    Writethrough,
    Unsafe,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum OnRead {
    Never,
    Always,
    WhilePathExists(PathBuf),
}

/// The cache filter.
#[derive(Debug)]
pub struct Cache {
    mode: Mode,
    min_block_size: Option<u64>,
    max_size: Option<u64>,
    high: u64,
    low: u64,
    on_read: OnRead,
    cache: OnceLock<Arc<Shared>>,
}

impl Default for Cache {
    fn default() -> Self {
        Cache {
            mode: Mode::Writeback,
            min_block_size: None,
            max_size: None,
            high: 95,
            low: 80,
            on_read: OnRead::Never,
            cache: OnceLock::new(),
        }
    }
}

/// What every connection shares.
#[derive(Debug)]
struct Shared {
    block_size: u64,
    mode: Mode,
    on_read: OnRead,
    /// (max size, high, low) when the size is limited.
    limit: Option<(u64, u64, u64)>,
    inner: Mutex<Inner>,
    /// `-D cache.verbose=1`.
    verbose: bool,
}

/// nbdkit's name of a block state, for `-D cache.verbose=1`.
fn state_name(s: u8) -> &'static str {
    match s {
        CLEAN => "clean",
        DIRTY => "dirty",
        _ => "not cached",
    }
}

/// The cache proper, under one lock: block operations are serialized.
#[derive(Debug)]
struct Inner {
    file: File,
    map: BlockMap,
    cached: u64,
    /// Least recently used order (only with a size limit).
    tick: u64,
    lru: BTreeMap<u64, u64>,
    last_use: HashMap<u64, u64>,
    reclaiming: bool,
}

impl Filter for Cache {
    fn debug_flags(&self) -> &'static [&'static str] {
        &["verbose"]
    }
    fn name(&self) -> &'static str {
        "cache"
    }

    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit caching filter")
    }

    fn config_help(&self) -> &'static str {
        "cache=MODE                Set cache MODE, one of writeback (default),\n\
         \x20                         writethrough, or unsafe.\n\
         cache-on-read=BOOL|/PATH  Set to true to cache on reads (default false).\n\
         cache-min-block-size=SIZE Set minimum block size of the cache (default 64K).\n\
         cache-max-size=SIZE       Set maximum space used by cache.\n\
         cache-high-threshold=PCT  Percentage of max size where reclaim begins.\n\
         cache-low-threshold=PCT   Percentage of max size where reclaim ends."
    }

    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            "cache" | "cache-mode" => {
                self.mode = match value {
                    "writeback" => Mode::Writeback,
                    "writethrough" => Mode::Writethrough,
                    "unsafe" => Mode::Unsafe,
                    _ => {
                        return Err(Error::config(
                            "invalid cache parameter, should be writeback|writethrough|unsafe",
                        ))
                    }
                }
            }
            "cache-min-block-size" => {
                let n = parse_size(value)?;
                if n < 4096 || !n.is_power_of_two() || n > (1 << 30) {
                    return Err(Error::config(
                        "cache-min-block-size is not a power of 2, or is too small or too large",
                    ));
                }
                self.min_block_size = Some(n);
            }
            "cache-max-size" => {
                let n = parse_size(value)?;
                if n < 1024 * 1024 {
                    return Err(Error::config("cache-max-size is too small"));
                }
                self.max_size = Some(n);
            }
            "cache-high-threshold" => {
                let n = parse_unsigned(key, value)?;
                if n == 0 {
                    return Err(Error::config(
                        "cache-high-threshold must be greater than zero",
                    ));
                }
                self.high = u64::from(n);
            }
            "cache-low-threshold" => {
                let n = parse_unsigned(key, value)?;
                if n == 0 {
                    return Err(Error::config(
                        "cache-low-threshold must be greater than zero",
                    ));
                }
                self.low = u64::from(n);
            }
            "cache-on-read" => {
                self.on_read = if value.starts_with('/') {
                    OnRead::WhilePathExists(PathBuf::from(value))
                } else if parse_bool(value)? {
                    OnRead::Always
                } else {
                    OnRead::Never
                }
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn config_complete(&mut self) -> Result<()> {
        if self.low >= self.high {
            return Err(Error::config(
                "cache-low-threshold must be less than cache-high-threshold",
            ));
        }
        Ok(())
    }

    fn get_ready(&self, _thread_model: ThreadModel) -> Result<()> {
        self.shared()?;
        Ok(())
    }

    fn open(
        &self,
        next: &mut dyn NextOpener,
        args: &OpenArgs<'_>,
    ) -> Result<Box<dyn FilterHandle>> {
        next.open(args.readonly, args.export_name)?;
        Ok(Box::new(CacheHandle(self.shared()?)))
    }
}

impl Cache {
    fn shared(&self) -> Result<Arc<Shared>> {
        if let Some(s) = self.cache.get() {
            return Ok(s.clone());
        }
        let dir = tmpdir("/var/tmp");
        let fs_block = nix::sys::statvfs::statvfs(&dir)
            .map(|s| s.block_size())
            .unwrap_or(4096);
        let block_size = self
            .min_block_size
            .unwrap_or(65536)
            .max(fs_block.next_power_of_two());
        let file = unlinked_tmpfile("/var/tmp", "cache")?;
        crate::log::debug(None, format_args!("cache: block size: {block_size}"));
        let s = Arc::new(Shared {
            block_size,
            mode: self.mode,
            on_read: self.on_read.clone(),
            limit: self.max_size.map(|m| (m, self.high, self.low)),
            verbose: nbdkit_core::debug::enabled("cache", "verbose"),
            inner: Mutex::new(Inner {
                file,
                map: BlockMap::default(),
                cached: 0,
                tick: 0,
                lru: BTreeMap::new(),
                last_use: HashMap::new(),
                reclaiming: false,
            }),
        });
        Ok(self.cache.get_or_init(|| s).clone())
    }
}

struct CacheHandle(Arc<Shared>);

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The run of blocks at `pos` that are all dirty or all not dirty:
    /// whether they are dirty, and where the run ends. A dirty run stops
    /// at `end` (rounded up to a block); a clean one may go on past it
    /// (a little: block status may report past the request) up to
    /// `limit` (which is past `pos`).
    fn run_at(&self, pos: u64, end: u64, limit: u64) -> (bool, u64) {
        /// How many blocks past the request a clean run may look.
        const LOOKAHEAD: u64 = 1024;
        let bs = self.block_size;
        let inner = self.lock();
        let dirty = |b: u64| inner.map.get(b) == DIRTY;
        let first = dirty(pos / bs);
        let stop = if first {
            end
        } else {
            end.div_ceil(bs)
                .saturating_add(LOOKAHEAD)
                .saturating_mul(bs)
        }
        .min(limit);
        let mut run_end = (pos / bs + 1) * bs;
        while run_end < stop && dirty(run_end / bs) == first {
            run_end += bs;
        }
        (first, run_end.min(limit))
    }

    /// A `-D cache.verbose=1` message.
    fn say(&self, args: std::fmt::Arguments<'_>) {
        if self.verbose {
            crate::log::debug(None, format_args!("cache: {args}"));
        }
    }

    fn cache_on_read(&self) -> bool {
        match &self.on_read {
            OnRead::Never => false,
            OnRead::Always => true,
            OnRead::WhilePathExists(p) => p.exists(),
        }
    }

    /// The plugin's bytes of block `b`: `start` and length (the last block
    /// may be short).
    fn span(&self, next: &Context, b: u64) -> (u64, usize) {
        let start = b * self.block_size;
        let n = next.get_size().saturating_sub(start).min(self.block_size) as usize;
        (start, n)
    }

    /// Read block `b` as the client sees it into `buf` (one block long).
    fn read_block(&self, inner: &mut Inner, next: &Context, b: u64, buf: &mut [u8]) -> Result<()> {
        let cached = inner.map.get(b) != NOT_CACHED;
        self.say(format_args!(
            "blk_read_multiple block {b} (offset {}) is {}",
            b * self.block_size,
            if cached { "cached" } else { "not cached" }
        ));
        if cached {
            inner
                .file
                .read_exact_at(buf, b * self.block_size)
                .map_err(|e| io_error("pread", e))?;
            self.touch(inner, b);
            return Ok(());
        }
        let (start, n) = self.span(next, b);
        buf[n..].fill(0);
        if n > 0 {
            next.pread(&mut buf[..n], start, Flags::NONE)?;
        }
        if self.cache_on_read() {
            self.say(format_args!("cache-on-read block {b} (offset {start})"));
            self.store(inner, next, b, buf, CLEAN)?;
        }
        Ok(())
    }

    /// Put block `b` in the cache file with `state`.
    fn store(
        &self,
        inner: &mut Inner,
        next: &Context,
        b: u64,
        buf: &[u8],
        state: u8,
    ) -> Result<()> {
        inner
            .file
            .write_all_at(buf, b * self.block_size)
            .map_err(|e| io_error("pwrite", e))?;
        if inner.map.get(b) == NOT_CACHED {
            inner.cached += 1;
        }
        inner.map.set(b, state);
        self.touch(inner, b);
        self.reclaim(inner, next)
    }

    /// Write block `b` (already merged) as the mode says.
    fn write_block(
        &self,
        inner: &mut Inner,
        next: &Context,
        b: u64,
        buf: &[u8],
        flags: Flags,
    ) -> Result<()> {
        let through = match self.mode {
            Mode::Writethrough => true,
            Mode::Writeback => flags.contains(Flags::FUA),
            Mode::Unsafe => false,
        };
        self.say(format_args!(
            "{} block {b} (offset {})",
            if through { "writethrough" } else { "writeback" },
            b * self.block_size
        ));
        if through {
            let (start, n) = self.span(next, b);
            if n > 0 {
                next.pwrite(&buf[..n], start, flags)?;
            }
            self.store(inner, next, b, buf, CLEAN)
        } else {
            self.store(inner, next, b, buf, DIRTY)
        }
    }

    /// Write dirty block `b` back to the plugin.
    fn write_back(&self, inner: &mut Inner, next: &Context, b: u64, tmp: &mut [u8]) -> Result<()> {
        self.say(format_args!(
            "blk_read_multiple block {b} (offset {}) is cached",
            b * self.block_size
        ));
        self.say(format_args!(
            "writethrough block {b} (offset {})",
            b * self.block_size
        ));
        inner
            .file
            .read_exact_at(tmp, b * self.block_size)
            .map_err(|e| io_error("pread", e))?;
        let (start, n) = self.span(next, b);
        if n > 0 {
            next.pwrite(&tmp[..n], start, Flags::NONE)?;
        }
        inner.map.set(b, CLEAN);
        Ok(())
    }

    /// Drop block `b` from the cache.
    fn evict(&self, inner: &mut Inner, b: u64) {
        if inner.map.get(b) != NOT_CACHED {
            inner.map.set(b, NOT_CACHED);
            inner.cached = inner.cached.saturating_sub(1);
            punch_hole(&inner.file, b * self.block_size, self.block_size);
        }
        if let Some(t) = inner.last_use.remove(&b) {
            inner.lru.remove(&t);
        }
    }

    fn touch(&self, inner: &mut Inner, b: u64) {
        if self.limit.is_none() {
            return;
        }
        inner.tick += 1;
        let t = inner.tick;
        if let Some(old) = inner.last_use.insert(b, t) {
            inner.lru.remove(&old);
        }
        inner.lru.insert(t, b);
    }

    /// Above the high threshold, drop least recently used blocks until
    /// under the low threshold.
    fn reclaim(&self, inner: &mut Inner, next: &Context) -> Result<()> {
        let Some((max, high, low)) = self.limit else {
            return Ok(());
        };
        if inner.reclaiming {
            return Ok(());
        }
        let used = |i: &Inner| i.cached.saturating_mul(self.block_size);
        if used(inner) as u128 * 100 <= max as u128 * high as u128 {
            return Ok(());
        }
        inner.reclaiming = true;
        let mut tmp = vec![0u8; self.block_size as usize];
        let mut r = Ok(());
        while used(inner) as u128 * 100 > max as u128 * low as u128 {
            let Some((_, b)) = inner.lru.pop_first() else {
                break;
            };
            inner.last_use.remove(&b);
            if inner.map.get(b) == DIRTY {
                if let Err(e) = self.write_back(inner, next, b, &mut tmp) {
                    r = Err(e);
                    break;
                }
            }
            self.evict(inner, b);
        }
        inner.reclaiming = false;
        r
    }

    /// Write every dirty block back.
    fn flush_dirty(&self, inner: &mut Inner, next: &Context) -> Result<()> {
        let mut tmp = vec![0u8; self.block_size as usize];
        let blocks = next.get_size().div_ceil(self.block_size);
        for b in 0..blocks.min(inner.map.len()) {
            if inner.map.get(b) == DIRTY {
                self.write_back(inner, next, b, &mut tmp)?;
            }
        }
        Ok(())
    }
}

impl CacheHandle {
    /// Write `data` (or zeroes) over `count` bytes at `offset`.
    fn write(
        &self,
        next: &Context,
        data: Option<&[u8]>,
        count: u64,
        offset: u64,
        flags: Flags,
    ) -> Result<()> {
        let s = &self.0;
        let bs = s.block_size as usize;
        let mut tmp = vec![0u8; bs];
        for (b, off, len, at) in pieces(offset, count, s.block_size) {
            let mut inner = s.lock();
            if off != 0 || len != bs {
                s.read_block(&mut inner, next, b, &mut tmp)?;
            }
            match data {
                Some(d) => tmp[off..off + len].copy_from_slice(&d[at..at + len]),
                None => tmp[off..off + len].fill(0),
            }
            s.write_block(&mut inner, next, b, &tmp, flags)?;
        }
        Ok(())
    }
}

impl FilterHandle for CacheHandle {
    fn prepare(&self, next: &Context, _readonly: bool) -> Result<()> {
        let size = next.size()?;
        crate::log::debug(None, format_args!("cache: underlying file size: {size}"));
        let blocks = size.div_ceil(self.0.block_size);
        self.0.lock().map.grow(blocks)
    }

    fn block_size(&self, next: &Context) -> Result<Option<BlockSize>> {
        let bs = self.0.block_size.min(32 * 1024 * 1024) as u32;
        Ok(Some(match next.block_size()? {
            Some(b) => BlockSize {
                minimum: b.minimum.max(1),
                preferred: b.preferred.max(bs),
                maximum: b.maximum,
            },
            None => BlockSize {
                minimum: 1,
                preferred: bs,
                maximum: u32::MAX,
            },
        }))
    }

    fn can_fua(&self, next: &Context) -> Result<Support> {
        // FUA writes go through to the plugin, which gets the flag (or a
        // flush in its place).
        Ok(if next.can_fua()? == Support::None && !next.can_flush()? {
            Support::None
        } else {
            Support::Native
        })
    }

    fn can_fast_zero(&self, _next: &Context) -> Result<bool> {
        // Fast zero requests fail at once: zeroing the cache is a write.
        Ok(true)
    }

    fn can_cache(&self, _next: &Context) -> Result<Support> {
        Ok(Support::Native)
    }

    fn can_multi_conn(&self, _next: &Context) -> Result<bool> {
        Ok(true)
    }

    fn pread(&self, next: &Context, buf: &mut [u8], offset: u64, _flags: Flags) -> Result<()> {
        let s = &self.0;
        let bs = s.block_size as usize;
        let mut tmp = vec![0u8; bs];
        for (b, off, len, at) in pieces(offset, buf.len() as u64, s.block_size) {
            let mut inner = s.lock();
            if off == 0 && len == bs {
                s.read_block(&mut inner, next, b, &mut buf[at..at + len])?;
            } else {
                s.read_block(&mut inner, next, b, &mut tmp)?;
                buf[at..at + len].copy_from_slice(&tmp[off..off + len]);
            }
        }
        Ok(())
    }

    fn pwrite(&self, next: &Context, buf: &[u8], offset: u64, flags: Flags) -> Result<()> {
        self.write(next, Some(buf), buf.len() as u64, offset, flags)
    }

    fn zero(&self, next: &Context, count: u64, offset: u64, flags: Flags) -> Result<()> {
        if flags.contains(Flags::FAST_ZERO) {
            return Err(Error::new(Errno::ENOTSUP));
        }
        self.write(next, None, count, offset, flags.without(Flags::MAY_TRIM))
    }

    fn trim(&self, next: &Context, count: u64, offset: u64, flags: Flags) -> Result<()> {
        let s = &self.0;
        {
            // Whole blocks leave the cache (their contents no longer
            // matter); partial ones keep theirs.
            let mut inner = s.lock();
            for (b, off, len, _) in pieces(offset, count, s.block_size) {
                if off == 0 && len == s.block_size as usize {
                    s.evict(&mut inner, b);
                }
            }
        }
        next.trim(count, offset, flags)
    }

    fn flush(&self, next: &Context, flags: Flags) -> Result<()> {
        let s = &self.0;
        match s.mode {
            Mode::Unsafe => Ok(()),
            Mode::Writethrough => next.flush(flags),
            Mode::Writeback => {
                {
                    let mut inner = s.lock();
                    s.flush_dirty(&mut inner, next)?;
                }
                next.flush(flags)
            }
        }
    }

    fn cache(&self, next: &Context, count: u64, offset: u64, _flags: Flags) -> Result<()> {
        let s = &self.0;
        let bs = s.block_size;
        let mut tmp = vec![0u8; bs as usize];
        for (b, _, _, _) in pieces(offset - offset % bs, count + offset % bs, bs) {
            let mut inner = s.lock();
            let state = inner.map.get(b);
            s.say(format_args!(
                "blk_cache block {b} (offset {}) is {}",
                b * bs,
                state_name(state)
            ));
            if state != NOT_CACHED {
                s.touch(&mut inner, b);
                continue;
            }
            let (start, n) = s.span(next, b);
            tmp[n..].fill(0);
            if n > 0 {
                next.pread(&mut tmp[..n], start, Flags::NONE)?;
            }
            s.say(format_args!("cache block {b} (offset {start})"));
            s.store(&mut inner, next, b, &tmp, CLEAN)?;
        }
        Ok(())
    }

    fn extents(
        &self,
        next: &Context,
        count: u64,
        offset: u64,
        flags: Flags,
        extents: &mut Extents,
    ) -> Result<()> {
        // As nbdkit, what the layer below reports may run past the
        // request. Unlike nbdkit (which passes block status straight to
        // the plugin, so that data written in writeback mode and not yet
        // flushed can be reported as a hole), dirty blocks are data.
        let s = &self.0;
        let end = offset + count;
        let mut pos = offset;
        while pos < end && !extents.is_full() {
            let (dirty, run_end) = s.run_at(pos, end, extents.end());
            if dirty {
                extents.add(pos, run_end - pos, 0)?;
            } else {
                let mut sub = Extents::new(pos, run_end);
                let asked = run_end.min(end);
                next.extents(asked - pos, pos, flags, &mut sub)?;
                for e in sub.as_slice() {
                    extents.add(e.offset, e.length, e.flags)?;
                }
                if sub.next_offset() < asked {
                    // The layer below said less than asked: enough.
                    break;
                }
            }
            if flags.contains(Flags::REQ_ONE) {
                break;
            }
            if extents.next_offset() <= pos {
                break;
            }
            pos = extents.next_offset();
        }
        Ok(())
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn params() {
        let mut c = Cache::default();
        assert!(c.config("cache", "unsafe").unwrap());
        assert_eq!(c.mode, Mode::Unsafe);
        assert_eq!(
            c.config("cache", "foo").unwrap_err().to_string(),
            "invalid cache parameter, should be writeback|writethrough|unsafe"
        );
        assert!(c.config("cache-min-block-size", "1000").is_err());
        assert!(c.config("cache-max-size", "1000K").is_err());
        assert!(c.config("cache-max-size", "1M").unwrap());
        assert!(c.config("cache-low-threshold", "99").unwrap());
        assert!(c.config_complete().is_err());
        assert!(!c.config("file", "x").unwrap());
    }
}
