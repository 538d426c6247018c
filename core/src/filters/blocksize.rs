//! `blocksize`: meet the block size limits of the layer below, whatever
//! the client sends.
//!
//! Parameters: `minblock=SIZE` (power of 2 up to 64K; default the layer
//! below's minimum or 1), `maxdata=SIZE` (largest read or write; default
//! 64M or the layer below's maximum), `maxlen=SIZE` (largest trim, zero,
//! cache or extents request; default 4G - minblock). Unaligned heads and
//! tails are read, or read-modify-written through a bounce buffer; an
//! unaligned trim is shrunk to its aligned part; large requests are split.

use alloc::boxed::Box;
use alloc::format;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;

use crate::backend::{
    BlockSize, Context, Error, Extent, Extents, Filter, FilterHandle, Flags, NextOpener, OpenArgs,
    Result,
};
use crate::plugins::size_param;
use crate::sync::{read, write, RwLock};

/// nbdkit's largest read or write.
const MAX_REQUEST: u64 = 64 * 1024 * 1024;

/// The blocksize filter.
#[derive(Debug, Default)]
pub struct Blocksize {
    minblock: Option<u64>,
    maxdata: Option<u64>,
    maxlen: Option<u64>,
    /// Read-modify-write cycles exclude every other request, across
    /// connections, so that they cannot lose a concurrent write.
    lock: Arc<RwLock<()>>,
}

impl Filter for Blocksize {
    fn name(&self) -> &'static str {
        "blocksize"
    }
    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit blocksize filter")
    }
    fn config_help(&self) -> &'static str {
        "minblock=<SIZE>      Minimum block size, power of 2 <= 64k (default 1).\n\
         maxdata=<SIZE>       Maximum size for read/write (default 64M).\n\
         maxlen=<SIZE>        Maximum size for trim/zero (default 4G-minblock)."
    }
    fn blocks(&self) -> bool {
        false
    }
    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            "minblock" => {
                let n = size_param(value)?;
                if !n.is_power_of_two() {
                    return Err(Error::config("minblock must be a power of 2"));
                }
                if n > 65536 {
                    return Err(Error::config("minblock must not exceed 65536"));
                }
                self.minblock = Some(n);
            }
            "maxdata" | "maxlen" => {
                let n = size_param(value)?;
                if n == 0 {
                    return Err(Error::config(format!(
                        "parameter '{key}' must be non-zero if specified"
                    )));
                }
                if n > u64::from(u32::MAX) {
                    return Err(Error::config(format!("parameter '{key}' too large")));
                }
                if key == "maxdata" {
                    self.maxdata = Some(n);
                } else {
                    self.maxlen = Some(n);
                }
            }
            _ => return Ok(false),
        }
        Ok(true)
    }
    fn config_complete(&mut self) -> Result<()> {
        let min = self.minblock.unwrap_or(1);
        for (key, v) in [("maxdata", self.maxdata), ("maxlen", self.maxlen)] {
            if v.is_some_and(|v| v % min != 0) {
                return Err(Error::config(format!("{key} must be a multiple of {min}")));
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
        Ok(Box::new(BlocksizeHandle {
            minblock: self.minblock,
            maxdata: self.maxdata,
            maxlen: self.maxlen,
            lock: Arc::clone(&self.lock),
            limits: RwLock::new(Limits {
                min: 1,
                maxdata: MAX_REQUEST,
                maxlen: u64::from(u32::MAX),
            }),
        }))
    }
}

#[derive(Debug, Clone, Copy)]
struct Limits {
    min: u64,
    maxdata: u64,
    maxlen: u64,
}

struct BlocksizeHandle {
    minblock: Option<u64>,
    maxdata: Option<u64>,
    maxlen: Option<u64>,
    lock: Arc<RwLock<()>>,
    limits: RwLock<Limits>,
}

fn round_down(v: u64, align: u64) -> u64 {
    v & !(align - 1)
}

impl BlocksizeHandle {
    fn limits(&self) -> Limits {
        *read(&self.limits)
    }

    /// Read-modify-write `data` (or zeroes when `None`) into the block at
    /// `block`, `at` bytes into it.
    fn rmw(
        &self,
        next: &Context,
        block: u64,
        at: usize,
        len: usize,
        data: Option<&[u8]>,
        flags: Flags,
    ) -> Result<()> {
        let min = self.limits().min as usize;
        let mut bounce = vec![0u8; min];
        next.pread(&mut bounce, block, Flags::NONE)?;
        match data {
            Some(d) => bounce[at..at + len].copy_from_slice(d),
            None => bounce[at..at + len].fill(0),
        }
        next.pwrite(&bounce, block, flags)
    }

    /// Write `data` (or zeroes) at `offset`: unaligned ends by
    /// read-modify-write, the aligned middle with `middle`.
    fn write_like(
        &self,
        next: &Context,
        count: u64,
        offset: u64,
        data: Option<&[u8]>,
        flags: Flags,
        middle: &dyn Fn(u64, u64, usize) -> Result<()>,
    ) -> Result<()> {
        let l = self.limits();
        let aligned = offset % l.min == 0 && count % l.min == 0;
        let _guard;
        let _read_guard;
        if aligned {
            _read_guard = read(&self.lock);
        } else {
            _guard = write(&self.lock);
        }
        let mut offset = offset;
        let mut count = count;
        let mut pos = 0usize; // position in `data`
        let slice = |pos: usize, n: usize| data.map(|d| &d[pos..pos + n]);
        let head = offset % l.min;
        if head != 0 {
            let n = (l.min - head).min(count);
            self.rmw(
                next,
                offset - head,
                head as usize,
                n as usize,
                slice(pos, n as usize),
                flags,
            )?;
            offset += n;
            count -= n;
            pos += n as usize;
        }
        let body = round_down(count, l.min);
        if body > 0 {
            middle(body, offset, pos)?;
            offset += body;
            count -= body;
            pos += body as usize;
        }
        if count > 0 {
            self.rmw(
                next,
                offset,
                0,
                count as usize,
                slice(pos, count as usize),
                flags,
            )?;
        }
        Ok(())
    }
}

impl FilterHandle for BlocksizeHandle {
    fn prepare(&self, next: &Context, _readonly: bool) -> Result<()> {
        let below = next.block_size()?;
        let min = self
            .minblock
            .or_else(|| below.map(|b| u64::from(b.minimum)))
            .unwrap_or(1)
            .max(1);
        let maxdata = self.maxdata.unwrap_or_else(|| {
            let m = below.map_or(MAX_REQUEST, |b| u64::from(b.maximum).min(MAX_REQUEST));
            round_down(m, min).max(min)
        });
        let maxlen = self
            .maxlen
            .unwrap_or_else(|| round_down(u64::from(u32::MAX), min));
        *write(&self.limits) = Limits {
            min,
            maxdata,
            maxlen,
        };
        Ok(())
    }
    fn get_size(&self, next: &Context) -> Result<u64> {
        Ok(round_down(next.get_size(), self.limits().min))
    }
    fn block_size(&self, next: &Context) -> Result<Option<BlockSize>> {
        let min = self.limits().min as u32;
        let preferred = next.block_size()?.map_or(4096, |b| b.preferred).max(min);
        Ok(Some(BlockSize {
            minimum: 1,
            preferred,
            maximum: u32::MAX,
        }))
    }
    fn pread(&self, next: &Context, buf: &mut [u8], offset: u64, flags: Flags) -> Result<()> {
        let l = self.limits();
        let _guard = read(&self.lock);
        let mut offset = offset;
        let mut buf = buf;
        let head = offset % l.min;
        if head != 0 {
            let mut bounce = vec![0u8; l.min as usize];
            next.pread(&mut bounce, offset - head, flags)?;
            let n = ((l.min - head) as usize).min(buf.len());
            buf[..n].copy_from_slice(&bounce[head as usize..head as usize + n]);
            buf = &mut buf[n..];
            offset += n as u64;
        }
        let body = round_down(buf.len() as u64, l.min) as usize;
        let (mid, tail) = buf.split_at_mut(body);
        for (i, chunk) in mid.chunks_mut(l.maxdata as usize).enumerate() {
            next.pread(chunk, offset + i as u64 * l.maxdata, flags)?;
        }
        offset += body as u64;
        if !tail.is_empty() {
            let mut bounce = vec![0u8; l.min as usize];
            next.pread(&mut bounce, offset, flags)?;
            let n = tail.len();
            tail.copy_from_slice(&bounce[..n]);
        }
        Ok(())
    }
    fn pwrite(&self, next: &Context, buf: &[u8], offset: u64, flags: Flags) -> Result<()> {
        let maxdata = self.limits().maxdata as usize;
        self.write_like(
            next,
            buf.len() as u64,
            offset,
            Some(buf),
            flags,
            &|count, offset, pos| {
                let mid = &buf[pos..pos + count as usize];
                for (i, chunk) in mid.chunks(maxdata).enumerate() {
                    next.pwrite(chunk, offset + (i * maxdata) as u64, flags)?;
                }
                Ok(())
            },
        )
    }
    fn zero(&self, next: &Context, count: u64, offset: u64, flags: Flags) -> Result<()> {
        let l = self.limits();
        let rmw_flags = flags.without(Flags::MAY_TRIM).without(Flags::FAST_ZERO);
        if flags.contains(Flags::FAST_ZERO) && (offset % l.min != 0 || count % l.min != 0) {
            // A read-modify-write is not fast.
            return Err(Error::new(crate::errno::Errno::ENOTSUP));
        }
        self.write_like(next, count, offset, None, rmw_flags, &|count, offset, _| {
            let mut done = 0;
            while done < count {
                let n = (count - done).min(l.maxlen);
                next.zero(n, offset + done, flags)?;
                done += n;
            }
            Ok(())
        })
    }
    fn trim(&self, next: &Context, count: u64, offset: u64, flags: Flags) -> Result<()> {
        let l = self.limits();
        let _guard = read(&self.lock);
        let start = offset.div_ceil(l.min) * l.min;
        let end = round_down(offset + count, l.min);
        let mut at = start;
        while at < end {
            let n = (end - at).min(l.maxlen);
            next.trim(n, at, flags)?;
            at += n;
        }
        Ok(())
    }
    fn cache(&self, next: &Context, count: u64, offset: u64, flags: Flags) -> Result<()> {
        let l = self.limits();
        let _guard = read(&self.lock);
        let start = round_down(offset, l.min);
        let end = (offset + count).div_ceil(l.min) * l.min;
        let mut at = start;
        while at < end {
            let n = (end - at).min(l.maxlen);
            next.cache(n, at, flags)?;
            at += n;
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
        // As nbdkit: ask the layer below for whole blocks (at most maxlen
        // bytes) and report them in whole blocks; extents may run past
        // the request, up to its end rounded up to a block.
        let l = self.limits();
        let _guard = read(&self.lock);
        let start = round_down(offset, l.min);
        let end = (offset + count).div_ceil(l.min) * l.min;
        let n = (count.div_ceil(l.min) * l.min).min(l.maxlen);
        for e in aligned_extents(next, n, start, end, flags, l.min)? {
            extents.add(e.offset, e.length, e.flags)?;
        }
        Ok(())
    }
}

/// The extents of the layer below for `count` bytes at `offset` (aligned),
/// with every boundary a multiple of `align` (nbdkit's
/// `nbdkit_extents_aligned`): the list stops before the first unaligned
/// boundary past the first block, and a first block made of several
/// extents becomes one extent whose status is what they all share.
fn aligned_extents(
    next: &Context,
    count: u64,
    offset: u64,
    end: u64,
    flags: Flags,
    align: u64,
) -> Result<Vec<Extent>> {
    let query = |count: u64, offset: u64, flags: Flags| -> Result<Vec<Extent>> {
        let mut below = Extents::new(offset, end);
        next.extents(count, offset, flags, &mut below)?;
        Ok(below.as_slice().to_vec())
    };
    let list = query(count, offset, flags)?;
    let mut out = Vec::with_capacity(list.len());
    let mut rest = list.into_iter();
    while let Some(e) = rest.next() {
        if e.length % align == 0 {
            out.push(e);
            continue;
        }
        if e.offset + e.length > offset + align {
            // Keep the aligned part and leave the rest for the next call.
            let length = round_down(e.length, align);
            if length > 0 {
                out.push(Extent { length, ..e });
            }
            break;
        }
        // The first block is split: merge what covers it, asking the
        // layer below for more when the list runs out.
        let mut block = e;
        let mut more: Vec<Extent> = rest.collect();
        let mut queries = 0;
        while block.length < align {
            if more.is_empty() {
                let at = block.offset + block.length;
                more = query(align - block.length, at, flags.without(Flags::REQ_ONE))?;
                queries += 1;
                if more.is_empty() || queries > align {
                    // Nothing more to learn: treat the rest as data.
                    block.flags = 0;
                    break;
                }
            }
            let n = more.remove(0);
            block.length += n.length;
            block.flags &= n.flags;
        }
        block.length = align;
        out.push(block);
        break;
    }
    Ok(out)
}
