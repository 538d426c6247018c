//! The cow filter: a copy-on-write overlay. Writes go to a sparse,
//! unlinked temporary file in `$TMPDIR` (default /var/tmp), shared by
//! every connection; the plugin is opened read-only and never written.
//!
//! Parameters:
//! - `cow-block-size=N`: the overlay's block size (power of 2, 4K..2G,
//!   default 64K);
//! - `cow-on-cache=BOOL`: cache requests copy data into the overlay;
//! - `cow-on-read=BOOL|/PATH`: reads copy data into the overlay (with a
//!   path: while that path exists).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use nbdkit_core::backend::{
    BlockSize, Context, Error, Extents, Filter, FilterHandle, Flags, NextOpener, OpenArgs, Result,
    Support, ThreadModel,
};

use super::util::{
    extents_from_below, io_error, parse_bool, parse_size, pieces, punch_hole, unlinked_tmpfile,
    BlockMap,
};

const NOT_ALLOCATED: u8 = 0;
const ALLOCATED: u8 = 1;
const TRIMMED: u8 = 2;

#[derive(Debug, Clone, PartialEq, Eq)]
enum OnRead {
    Never,
    Always,
    WhilePathExists(PathBuf),
}

/// The cow filter.
#[derive(Debug)]
pub struct Cow {
    block_size: u64,
    on_cache: bool,
    on_read: OnRead,
    overlay: OnceLock<Arc<Overlay>>,
}

impl Default for Cow {
    fn default() -> Self {
        Cow {
            block_size: 65536,
            on_cache: false,
            on_read: OnRead::Never,
            overlay: OnceLock::new(),
        }
    }
}

/// The overlay shared by all connections.
#[derive(Debug)]
struct Overlay {
    file: File,
    block_size: u64,
    map: Mutex<BlockMap>,
    /// Held while a block is read, modified and written back.
    rmw: Mutex<()>,
    on_read: OnRead,
    on_cache: bool,
    /// `-D cow.verbose=1`.
    verbose: bool,
}

/// nbdkit's name of a block state, for `-D cow.verbose=1`.
fn state_name(s: u8) -> &'static str {
    match s {
        ALLOCATED => "allocated",
        TRIMMED => "trimmed",
        _ => "not allocated",
    }
}

impl Filter for Cow {
    fn debug_flags(&self) -> &'static [&'static str] {
        &["verbose"]
    }
    fn name(&self) -> &'static str {
        "cow"
    }

    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit copy-on-write (COW) filter")
    }

    fn config_help(&self) -> &'static str {
        "cow-block-size=<N>       Set COW block size.\n\
         cow-on-cache=<BOOL>      Copy cache (prefetch) requests to the overlay.\n\
         cow-on-read=<BOOL>|/PATH Copy read requests to the overlay."
    }

    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            "cow-block-size" => {
                let n = parse_size(value)?;
                if !(4096..=(2u64 << 30)).contains(&n) || !n.is_power_of_two() {
                    return Err(Error::config(
                        "cow-block-size is out of range (4096..2G) or not a power of 2",
                    ));
                }
                self.block_size = n;
            }
            "cow-on-cache" => self.on_cache = parse_bool(value)?,
            "cow-on-read" => {
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

    fn thread_model(&self) -> ThreadModel {
        ThreadModel::Parallel
    }

    fn get_ready(&self, _thread_model: ThreadModel) -> Result<()> {
        self.overlay()?;
        Ok(())
    }

    fn open(
        &self,
        next: &mut dyn NextOpener,
        args: &OpenArgs<'_>,
    ) -> Result<Box<dyn FilterHandle>> {
        // The plugin is never written.
        next.open(true, args.export_name)?;
        Ok(Box::new(CowHandle(self.overlay()?)))
    }
}

impl Cow {
    fn overlay(&self) -> Result<Arc<Overlay>> {
        if let Some(o) = self.overlay.get() {
            return Ok(o.clone());
        }
        let file = unlinked_tmpfile("/var/tmp", "cow")?;
        let o = Arc::new(Overlay {
            file,
            block_size: self.block_size,
            map: Mutex::new(BlockMap::default()),
            rmw: Mutex::new(()),
            on_read: self.on_read.clone(),
            on_cache: self.on_cache,
            verbose: nbdkit_core::debug::enabled("cow", "verbose"),
        });
        Ok(self.overlay.get_or_init(|| o).clone())
    }
}

struct CowHandle(Arc<Overlay>);

impl Overlay {
    fn state(&self, b: u64) -> u8 {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).get(b)
    }

    fn set_state(&self, b: u64, v: u8) {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).set(b, v)
    }

    /// A `-D cow.verbose=1` message.
    fn say(&self, args: std::fmt::Arguments<'_>) {
        if self.verbose {
            crate::log::debug(None, format_args!("cow: {args}"));
        }
    }

    fn copy_on_read(&self) -> bool {
        match &self.on_read {
            OnRead::Never => false,
            OnRead::Always => true,
            OnRead::WhilePathExists(p) => p.exists(),
        }
    }

    /// Read the whole of block `b` as the client sees it into `buf` (which
    /// is one block long); bytes past the end of the plugin read as zero.
    fn read_block(&self, next: &Context, b: u64, buf: &mut [u8]) -> Result<()> {
        let start = b * self.block_size;
        let state = self.state(b);
        // Blocks are read one at a time: each is a run of one.
        self.say(format_args!(
            "blk_read_multiple block {b} (offset {start}) run of length 1 is {}",
            state_name(state)
        ));
        match state {
            ALLOCATED => self
                .file
                .read_exact_at(buf, start)
                .map_err(|e| io_error("pread", e)),
            TRIMMED => {
                buf.fill(0);
                Ok(())
            }
            _ => {
                let size = next.get_size();
                let n = size.saturating_sub(start).min(buf.len() as u64) as usize;
                buf[n..].fill(0);
                if n > 0 {
                    next.pread(&mut buf[..n], start, Flags::NONE)?;
                }
                Ok(())
            }
        }
    }

    /// Store a whole block in the overlay.
    fn write_block(&self, b: u64, buf: &[u8]) -> Result<()> {
        self.say(format_args!(
            "blk_write block {b} (offset {})",
            b * self.block_size
        ));
        self.file
            .write_all_at(buf, b * self.block_size)
            .map_err(|e| io_error("pwrite", e))?;
        self.set_state(b, ALLOCATED);
        Ok(())
    }

    /// Copy block `b` from the plugin into the overlay if it is not there.
    fn copy_up(&self, next: &Context, b: u64, tmp: &mut [u8]) -> Result<()> {
        let _g = self.rmw.lock().unwrap_or_else(|p| p.into_inner());
        if self.state(b) != NOT_ALLOCATED {
            return Ok(());
        }
        self.read_block(next, b, tmp)?;
        self.write_block(b, tmp)
    }

    /// Change `len` bytes at `off` within block `b`: `data` is the new
    /// content, or `None` for zeroes.
    fn modify(
        &self,
        next: &Context,
        b: u64,
        off: usize,
        data: Option<&[u8]>,
        len: usize,
    ) -> Result<()> {
        let bs = self.block_size as usize;
        let _g = self.rmw.lock().unwrap_or_else(|p| p.into_inner());
        let mut tmp = vec![0u8; bs];
        if off != 0 || len != bs {
            self.read_block(next, b, &mut tmp)?;
        }
        match data {
            Some(d) => tmp[off..off + len].copy_from_slice(d),
            None => tmp[off..off + len].fill(0),
        }
        self.write_block(b, &tmp)
    }
}

impl FilterHandle for CowHandle {
    fn prepare(&self, next: &Context, _readonly: bool) -> Result<()> {
        let size = next.size()?;
        crate::log::debug(None, format_args!("cow: underlying file size: {size}"));
        let blocks = size.div_ceil(self.0.block_size);
        self.0
            .map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .grow(blocks)
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

    fn can_write(&self, _next: &Context) -> Result<bool> {
        Ok(true)
    }
    fn can_flush(&self, _next: &Context) -> Result<bool> {
        Ok(true)
    }
    fn can_trim(&self, _next: &Context) -> Result<bool> {
        Ok(true)
    }
    fn can_extents(&self, _next: &Context) -> Result<bool> {
        Ok(true)
    }
    fn can_fua(&self, _next: &Context) -> Result<Support> {
        Ok(Support::Native)
    }
    fn can_fast_zero(&self, _next: &Context) -> Result<bool> {
        Ok(false)
    }
    fn can_multi_conn(&self, _next: &Context) -> Result<bool> {
        Ok(true)
    }
    fn can_cache(&self, _next: &Context) -> Result<Support> {
        Ok(Support::Native)
    }

    fn pread(&self, next: &Context, buf: &mut [u8], offset: u64, _flags: Flags) -> Result<()> {
        let o = &self.0;
        let bs = o.block_size as usize;
        let copy = o.copy_on_read();
        let mut tmp: Vec<u8> = Vec::new();
        for (b, off, len, at) in pieces(offset, buf.len() as u64, o.block_size) {
            let dst = &mut buf[at..at + len];
            if copy && o.state(b) == NOT_ALLOCATED {
                o.say(format_args!(
                    "cow-on-read saving 1 blocks at offset {} into the cache",
                    b * o.block_size
                ));
                tmp.resize(bs, 0);
                o.copy_up(next, b, &mut tmp)?;
            }
            if off == 0 && len == bs {
                o.read_block(next, b, dst)?;
            } else {
                tmp.resize(bs, 0);
                o.read_block(next, b, &mut tmp)?;
                dst.copy_from_slice(&tmp[off..off + len]);
            }
        }
        Ok(())
    }

    fn pwrite(&self, next: &Context, buf: &[u8], offset: u64, _flags: Flags) -> Result<()> {
        let o = &self.0;
        for (b, off, len, at) in pieces(offset, buf.len() as u64, o.block_size) {
            let src = &buf[at..at + len];
            if off == 0 && len == o.block_size as usize {
                let _g = o.rmw.lock().unwrap_or_else(|p| p.into_inner());
                o.write_block(b, src)?;
            } else {
                o.modify(next, b, off, Some(src), len)?;
            }
        }
        Ok(())
    }

    fn zero(&self, next: &Context, count: u64, offset: u64, _flags: Flags) -> Result<()> {
        self.discard(next, count, offset)
    }

    fn trim(&self, next: &Context, count: u64, offset: u64, _flags: Flags) -> Result<()> {
        self.discard(next, count, offset)
    }

    fn flush(&self, _next: &Context, _flags: Flags) -> Result<()> {
        // The overlay is thrown away at exit: nothing to make durable.
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
        let o = &self.0;
        let bs = o.block_size;
        // As nbdkit: the request is taken in whole blocks, so what is
        // reported may run past it to the end of its last block.
        let end = offset
            .saturating_add(count)
            .div_ceil(bs)
            .saturating_mul(bs)
            .min(next.get_size());
        let mut pos = offset;
        while pos < end && !extents.is_full() {
            let b = pos / bs;
            let state = o.state(b);
            // The run of blocks with the same state (as nbdkit, one
            // overlay block when one extent is enough).
            let one = flags.contains(Flags::REQ_ONE) && state != NOT_ALLOCATED;
            let mut run_end = (b + 1) * bs;
            while !one && run_end < end && o.state(run_end / bs) == state {
                run_end += bs;
            }
            let run_end = run_end.min(end);
            match state {
                ALLOCATED => extents.add(pos, run_end - pos, 0)?,
                TRIMMED => extents.add(pos, run_end - pos, 3)?,
                _ => extents_from_below(next, pos, run_end, flags, extents)?,
            }
            if flags.contains(Flags::REQ_ONE) {
                break;
            }
            pos = run_end;
        }
        Ok(())
    }

    fn cache(&self, next: &Context, count: u64, offset: u64, flags: Flags) -> Result<()> {
        let o = &self.0;
        let bs = o.block_size as usize;
        let mut tmp = vec![0u8; if o.on_cache { bs } else { 0 }];
        for (b, _off, _len, _at) in pieces(
            offset - offset % o.block_size,
            count + offset % o.block_size,
            o.block_size,
        ) {
            let state = o.state(b);
            o.say(format_args!(
                "blk_cache block {b} (offset {}) is {}",
                b * o.block_size,
                state_name(state)
            ));
            if state != NOT_ALLOCATED {
                continue;
            }
            if o.on_cache {
                o.copy_up(next, b, &mut tmp)?;
            } else {
                let start = b * o.block_size;
                let len = o.block_size.min(next.get_size().saturating_sub(start));
                if len > 0 {
                    next.cache(len, start, flags)?;
                }
            }
        }
        Ok(())
    }
}

impl CowHandle {
    /// Trim and zero: whole blocks become "trimmed" (read as zeroes, their
    /// space given back); partial blocks are zeroed in the overlay.
    fn discard(&self, next: &Context, count: u64, offset: u64) -> Result<()> {
        let o = &self.0;
        for (b, off, len, _at) in pieces(offset, count, o.block_size) {
            if off == 0 && len == o.block_size as usize {
                let _g = o.rmw.lock().unwrap_or_else(|p| p.into_inner());
                o.say(format_args!(
                    "blk_trim block {b} (offset {})",
                    b * o.block_size
                ));
                o.set_state(b, TRIMMED);
                punch_hole(&o.file, b * o.block_size, o.block_size);
            } else {
                o.modify(next, b, off, None, len)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn pieces_split_on_blocks() {
        let v: Vec<_> = pieces(100, 9000, 4096).collect();
        assert_eq!(
            v,
            vec![(0, 100, 3996, 0), (1, 0, 4096, 3996), (2, 0, 908, 8092)]
        );
        assert_eq!(pieces(0, 0, 4096).count(), 0);
    }

    #[test]
    fn block_size_param() {
        let mut c = Cow::default();
        assert!(c.config("cow-block-size", "1000").is_err());
        assert!(c.config("cow-block-size", "1024").is_err());
        assert!(c.config("cow-block-size", "256K").unwrap());
        assert_eq!(c.block_size, 256 * 1024);
        assert!(c.config("cow-on-read", "/tmp/x").unwrap());
        assert_eq!(c.on_read, OnRead::WhilePathExists("/tmp/x".into()));
        assert!(c.config("cow-on-cache", "maybe").is_err());
    }
}
