//! The xz filter: serve the uncompressed contents of an xz file, read-only,
//! with random access on block boundaries.
//!
//! Parameters: `xz-max-block=SIZE` (default 512M: refuse files with a
//! larger block), `xz-max-depth=N` (default 8: blocks kept in each
//! connection's LRU cache of uncompressed blocks).
//!
//! Each connection reads the streams' footers and indexes (walking back
//! from the end of the file, as `xz --list` does), then decompresses only
//! the blocks that a read touches. A block is decoded by liblzma's stream
//! decoder fed a synthetic stream header, the block exactly as stored and
//! the index indicator: liblzma then reads the block header's filter chain
//! and verifies the block's check itself.

use std::sync::{Arc, Mutex};

use nbdkit_core::backend::{
    BlockSize, Context, Error, Filter, FilterHandle, Flags, NextOpener, OpenArgs, Result, Support,
    ThreadModel,
};
use nbdkit_core::errno::Errno;

use super::util::{parse_size, parse_unsigned};

const HEADER_MAGIC: [u8; 6] = [0xfd, b'7', b'z', b'X', b'Z', 0];
const FOOTER_MAGIC: [u8; 2] = [b'Y', b'Z'];
/// Stream header and stream footer are both 12 bytes.
const STREAM_HEADER_LEN: u64 = 12;
/// The largest index this filter reads into memory (2 bytes a block at
/// least: over a million blocks).
const MAX_INDEX_LEN: u64 = 16 << 20;
/// The largest value of an xz variable-length integer.
const VLI_MAX: u64 = u64::MAX / 2;

// liblzma's lzma_ret numbers, which nbdkit prints in its messages.
const LZMA_MEM_ERROR: u32 = 5;
const LZMA_MEMLIMIT_ERROR: u32 = 6;
const LZMA_FORMAT_ERROR: u32 = 7;
const LZMA_OPTIONS_ERROR: u32 = 8;
const LZMA_DATA_ERROR: u32 = 9;
const LZMA_BUF_ERROR: u32 = 10;
const LZMA_PROG_ERROR: u32 = 11;

/// One block of the file, from the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Block {
    /// Offset of the uncompressed data.
    uoffset: u64,
    /// Uncompressed size.
    usize: u64,
    /// Offset of the block header in the file.
    coffset: u64,
    /// Size in the file: header, compressed data and check (no padding).
    unpadded: u64,
    /// Flags of the stream the block belongs to (they name the check).
    stream_flags: [u8; 2],
}

/// The blocks of every stream, in file order.
#[derive(Debug, Default, PartialEq, Eq)]
struct Index {
    blocks: Vec<Block>,
    size: u64,
}

impl Index {
    /// Number of the block holding uncompressed byte `offset`.
    fn find(&self, offset: u64) -> Option<usize> {
        let i = self
            .blocks
            .partition_point(|b| b.uoffset + b.usize <= offset);
        (i < self.blocks.len()).then_some(i)
    }

    fn largest_block(&self) -> u64 {
        self.blocks.iter().map(|b| b.usize).max().unwrap_or(0)
    }
}

fn lzma_err(what: &str, code: u32) -> Error {
    Error::msg(Errno::EIO, format!("{what} (error {code})"))
}

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// Stream flags are valid when the first byte and the top nibble of the
/// second are zero.
fn flags_valid(f: [u8; 2]) -> bool {
    f[0] == 0 && f[1] & 0xf0 == 0
}

/// Decode a stream footer: (backward size, stream flags).
fn parse_footer(f: &[u8; 12]) -> Result<(u64, [u8; 2])> {
    const WHAT: &str = "xz: invalid stream footer";
    if f[10..12] != FOOTER_MAGIC {
        return Err(lzma_err(WHAT, LZMA_FORMAT_ERROR));
    }
    if crc32fast::hash(&f[4..10]) != le32(&f[0..4]) {
        return Err(lzma_err(WHAT, LZMA_DATA_ERROR));
    }
    let flags = [f[8], f[9]];
    if !flags_valid(flags) {
        return Err(lzma_err(WHAT, LZMA_OPTIONS_ERROR));
    }
    Ok(((u64::from(le32(&f[4..8])) + 1) * 4, flags))
}

/// Decode a stream header: its stream flags.
fn parse_header(h: &[u8; 12]) -> Result<[u8; 2]> {
    const WHAT: &str = "xz: invalid stream header";
    if h[0..6] != HEADER_MAGIC {
        return Err(lzma_err(WHAT, LZMA_FORMAT_ERROR));
    }
    if crc32fast::hash(&h[6..8]) != le32(&h[8..12]) {
        return Err(lzma_err(WHAT, LZMA_DATA_ERROR));
    }
    let flags = [h[6], h[7]];
    if !flags_valid(flags) {
        return Err(lzma_err(WHAT, LZMA_OPTIONS_ERROR));
    }
    Ok(flags)
}

/// A cursor over an index, reading xz variable-length integers.
struct IndexReader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl IndexReader<'_> {
    fn byte(&mut self) -> Option<u8> {
        let b = *self.buf.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }

    fn vli(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for i in 0..9 {
            let b = self.byte()?;
            // A zero continuation byte past the first is a non-minimal
            // encoding, which xz forbids.
            if i > 0 && b == 0 {
                return None;
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return (v <= VLI_MAX).then_some(v);
            }
        }
        None
    }
}

/// Decode an index: (unpadded size, uncompressed size) of each block.
fn parse_index(buf: &[u8]) -> Result<Vec<(u64, u64)>> {
    let bad = || lzma_err("xz: could not parse index", LZMA_DATA_ERROR);
    if buf.len() < 8 || buf.len() % 4 != 0 {
        return Err(bad());
    }
    let (body, crc) = buf.split_at(buf.len() - 4);
    if crc32fast::hash(body) != le32(crc) {
        return Err(bad());
    }
    let mut r = IndexReader { buf: body, pos: 0 };
    if r.byte() != Some(0) {
        return Err(bad());
    }
    let count = r.vli().ok_or_else(bad)?;
    // Every record takes two bytes at least: this bounds the allocation.
    if count > body.len() as u64 / 2 {
        return Err(bad());
    }
    let mut records = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let unpadded = r.vli().ok_or_else(bad)?;
        let usize = r.vli().ok_or_else(bad)?;
        // A block has at least a header size byte, flags and a CRC32.
        if !(5..=VLI_MAX - 3).contains(&unpadded) {
            return Err(bad());
        }
        records.push((unpadded, usize));
    }
    // Index padding: zeros up to a multiple of four.
    if body.len() - r.pos >= 4 || body[r.pos..].iter().any(|&b| b != 0) {
        return Err(bad());
    }
    Ok(records)
}

/// Read the whole index of an xz file of `size` bytes through `read`
/// (which fills a buffer from an offset).
fn read_index(size: u64, read: &mut dyn FnMut(&mut [u8], u64) -> Result<()>) -> Result<Index> {
    let mut magic = [0u8; 6];
    if size < 6 || {
        read(&mut magic, 0)?;
        magic != HEADER_MAGIC
    } {
        return Err(Error::msg(Errno::EINVAL, "xz: not an xz file"));
    }
    if size % 4 != 0 {
        return Err(Error::msg(
            Errno::EINVAL,
            "xz: not an xz file: size is not a multiple of 4 bytes",
        ));
    }

    // Streams from the last to the first, each as (flags, blocks' start,
    // records).
    let mut streams = Vec::new();
    let mut pos = size;
    while pos > 0 {
        // Stream padding: zero words between and after streams, skipped a
        // chunk at a time.
        let mut chunk = vec![0u8; 64 * 1024];
        while pos > 0 {
            let n = pos.min(chunk.len() as u64) as usize;
            read(&mut chunk[..n], pos - n as u64)?;
            match chunk[..n].iter().rposition(|&b| b != 0) {
                Some(last) => {
                    // Keep the word holding the last non-zero byte.
                    pos -= (n - (last / 4 + 1) * 4) as u64;
                    break;
                }
                None => pos -= n as u64,
            }
        }
        if pos == 0 {
            break;
        }
        if pos < 2 * STREAM_HEADER_LEN {
            return Err(lzma_err("xz: invalid stream footer", LZMA_DATA_ERROR));
        }
        let mut footer = [0u8; 12];
        read(&mut footer, pos - STREAM_HEADER_LEN)?;
        let (index_len, flags) = parse_footer(&footer)?;
        if index_len > pos - 2 * STREAM_HEADER_LEN {
            return Err(lzma_err("xz: invalid stream footer", LZMA_DATA_ERROR));
        }
        if index_len > MAX_INDEX_LEN {
            return Err(Error::msg(Errno::ENOMEM, "xz: index is too large"));
        }
        let index_at = pos - STREAM_HEADER_LEN - index_len;
        let mut index = vec![0u8; index_len as usize];
        read(&mut index, index_at)?;
        let records = parse_index(&index)?;
        let mut blocks_len = 0u64;
        for &(unpadded, _) in &records {
            blocks_len = blocks_len
                .checked_add(unpadded.next_multiple_of(4))
                .filter(|&n| n <= index_at - STREAM_HEADER_LEN)
                .ok_or_else(|| lzma_err("xz: could not parse index", LZMA_DATA_ERROR))?;
        }
        let start = index_at - blocks_len - STREAM_HEADER_LEN;
        let mut header = [0u8; 12];
        read(&mut header, start)?;
        if parse_header(&header)? != flags {
            return Err(lzma_err("xz: invalid stream header", LZMA_DATA_ERROR));
        }
        streams.push((flags, start + STREAM_HEADER_LEN, records));
        pos = start;
    }
    if streams.is_empty() {
        return Err(Error::msg(Errno::EINVAL, "xz: not an xz file"));
    }

    let mut index = Index::default();
    let total: usize = streams.iter().map(|s| s.2.len()).sum();
    index.blocks.reserve_exact(total);
    for (flags, mut coffset, records) in streams.into_iter().rev() {
        for (unpadded, usize) in records {
            index.blocks.push(Block {
                uoffset: index.size,
                usize,
                coffset,
                unpadded,
                stream_flags: flags,
            });
            index.size = index
                .size
                .checked_add(usize)
                .filter(|&n| n <= i64::MAX as u64)
                .ok_or_else(|| Error::msg(Errno::EFBIG, "xz: uncompressed size is too large"))?;
            coffset += unpadded.next_multiple_of(4);
        }
    }
    Ok(index)
}

fn xz_error_code(e: xz2::stream::Error) -> u32 {
    use xz2::stream::Error as E;
    match e {
        E::Data => LZMA_DATA_ERROR,
        E::Options => LZMA_OPTIONS_ERROR,
        E::Format => LZMA_FORMAT_ERROR,
        E::MemLimit => LZMA_MEMLIMIT_ERROR,
        E::Mem => LZMA_MEM_ERROR,
        E::Program => LZMA_PROG_ERROR,
        // No other error is possible for a decoder that does not ask to be
        // told about the check.
        _ => LZMA_PROG_ERROR,
    }
}

/// Decompress one block. `stored` is the block as stored in the file
/// (header, data, padding, check); `usize` its size from the index.
fn decode_block(
    stored: &[u8],
    stream_flags: [u8; 2],
    usize: u64,
    memlimit: u64,
) -> Result<Vec<u8>> {
    const WHAT: &str = "could not parse block data";
    let mut input = Vec::new();
    input
        .try_reserve_exact(stored.len() + 13)
        .map_err(|_| Error::msg(Errno::ENOMEM, "xz: out of memory"))?;
    input.extend_from_slice(&HEADER_MAGIC);
    input.extend_from_slice(&stream_flags);
    input.extend_from_slice(&crc32fast::hash(&stream_flags).to_le_bytes());
    input.extend_from_slice(stored);
    // The index indicator: after it the decoder has checked the block.
    input.push(0);

    // One spare byte catches a block longer than the index says.
    let out_len = usize as usize + 1;
    let mut out = Vec::new();
    out.try_reserve_exact(out_len)
        .map_err(|_| Error::msg(Errno::ENOMEM, "xz: out of memory"))?;
    out.resize(out_len, 0);

    let mut stream = xz2::stream::Stream::new_stream_decoder(memlimit, 0)
        .map_err(|e| lzma_err(WHAT, xz_error_code(e)))?;
    loop {
        let (i, o) = (stream.total_in() as usize, stream.total_out() as usize);
        if i >= input.len() || o >= out.len() {
            break;
        }
        stream
            .process(&input[i..], &mut out[o..], xz2::stream::Action::Run)
            .map_err(|e| lzma_err(WHAT, xz_error_code(e)))?;
        if stream.total_in() as usize == i && stream.total_out() as usize == o {
            return Err(lzma_err(WHAT, LZMA_BUF_ERROR));
        }
    }
    if stream.total_in() as usize != input.len() || stream.total_out() != usize {
        return Err(lzma_err(WHAT, LZMA_DATA_ERROR));
    }
    out.truncate(usize as usize);
    Ok(out)
}

/// The xz filter.
#[derive(Debug)]
pub struct Xz {
    max_block: u64,
    max_depth: usize,
}

impl Default for Xz {
    fn default() -> Self {
        Xz {
            max_block: 512 << 20,
            max_depth: 8,
        }
    }
}

impl Filter for Xz {
    fn name(&self) -> &'static str {
        "xz"
    }

    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit XZ filter")
    }

    fn config_help(&self) -> &'static str {
        "xz-max-block=<SIZE> (optional) Maximum block size allowed (default: 512M)\n\
         xz-max-depth=<N>    (optional) Maximum blocks in cache (default: 8)"
    }

    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            "xz-max-block" => {
                let v = parse_size(value)?;
                if v == 0 {
                    return Err(Error::config("'xz-max-block' parameter must be >= 1"));
                }
                // The block is held in memory.
                if v > isize::MAX as u64 / 2 {
                    return Err(Error::config("'xz-max-block' parameter is too large"));
                }
                self.max_block = v;
            }
            "xz-max-depth" => {
                let v = parse_unsigned("xz-max-depth", value)?;
                if v == 0 {
                    return Err(Error::config("'xz-max-depth' parameter must be >= 1"));
                }
                self.max_depth = v as usize;
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn thread_model(&self) -> ThreadModel {
        ThreadModel::SerializeRequests
    }

    fn open(
        &self,
        next: &mut dyn NextOpener,
        args: &OpenArgs<'_>,
    ) -> Result<Box<dyn FilterHandle>> {
        next.open(true, args.export_name)?;
        Ok(Box::new(XzHandle {
            max_block: self.max_block,
            max_depth: self.max_depth,
            state: Mutex::new(State::default()),
        }))
    }
}

/// A connection's index and cache.
#[derive(Default)]
struct State {
    index: Arc<Index>,
    /// Most recently used first: (block number, uncompressed data).
    cache: Vec<(usize, Arc<Vec<u8>>)>,
}

struct XzHandle {
    max_block: u64,
    max_depth: usize,
    state: Mutex<State>,
}

impl XzHandle {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The uncompressed data of block `n`, from the cache or the file.
    fn block(&self, next: &Context, state: &mut State, n: usize) -> Result<Arc<Vec<u8>>> {
        if let Some(i) = state.cache.iter().position(|(b, _)| *b == n) {
            let hit = state.cache.remove(i);
            let data = hit.1.clone();
            state.cache.insert(0, hit);
            return Ok(data);
        }
        let b = state.index.blocks[n];
        // LZMA2 expands incompressible data by a few bytes per 64K chunk;
        // anything much larger than the uncompressed size is corrupt, and
        // must not make us read a huge buffer.
        let stored_len = b.unpadded.next_multiple_of(4);
        if stored_len > b.usize + b.usize / 8 + (1 << 16) + 2048 {
            return Err(lzma_err("could not parse block data", LZMA_DATA_ERROR));
        }
        let mut stored = Vec::new();
        stored
            .try_reserve_exact(stored_len as usize)
            .map_err(|_| Error::msg(Errno::ENOMEM, "xz: out of memory"))?;
        stored.resize(stored_len as usize, 0);
        next.pread(&mut stored, b.coffset, Flags::NONE)?;
        // Room for the dictionary of any sane encoder of such blocks.
        let memlimit = self.max_block.max(64 << 20) * 2 + (16 << 20);
        let data = Arc::new(decode_block(&stored, b.stream_flags, b.usize, memlimit)?);
        state.cache.insert(0, (n, data.clone()));
        state.cache.truncate(self.max_depth);
        Ok(data)
    }
}

impl FilterHandle for XzHandle {
    fn prepare(&self, next: &Context, _readonly: bool) -> Result<()> {
        let size = next.get_size();
        let index = read_index(size, &mut |buf, offset| {
            next.pread(buf, offset, Flags::NONE)
        })?;
        let largest = index.largest_block();
        if largest > self.max_block {
            return Err(Error::msg(
                Errno::EINVAL,
                format!(
                    "xz file largest block is bigger than maxblock\n\
                     Either recompress the xz file with smaller blocks (see nbdkit-xz-filter(1))\n\
                     or make maxblock parameter bigger.\n\
                     maxblock = {} (bytes)\n\
                     largest block in xz file = {} (bytes)",
                    self.max_block, largest
                ),
            ));
        }
        let mut state = self.state();
        state.index = Arc::new(index);
        state.cache.clear();
        Ok(())
    }

    fn get_size(&self, _next: &Context) -> Result<u64> {
        Ok(self.state().index.size)
    }
    fn block_size(&self, _next: &Context) -> Result<Option<BlockSize>> {
        Ok(None)
    }
    fn can_write(&self, _next: &Context) -> Result<bool> {
        Ok(false)
    }
    fn can_extents(&self, _next: &Context) -> Result<bool> {
        Ok(false)
    }
    fn can_cache(&self, _next: &Context) -> Result<Support> {
        Ok(Support::Emulate)
    }
    fn can_multi_conn(&self, _next: &Context) -> Result<bool> {
        Ok(true)
    }

    fn pread(&self, next: &Context, buf: &mut [u8], offset: u64, _flags: Flags) -> Result<()> {
        let mut state = self.state();
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let n = state
                .index
                .find(pos)
                .ok_or_else(|| Error::msg(Errno::EIO, "xz: read beyond the end of the file"))?;
            let b = state.index.blocks[n];
            let data = self.block(next, &mut state, n)?;
            let from = (pos - b.uoffset) as usize;
            let len = (data.len() - from).min(buf.len() - done);
            buf[done..done + len].copy_from_slice(&data[from..from + len]);
            done += len;
        }
        Ok(())
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use std::io::Write;

    /// An xz file of `data`, `block` bytes a block, made by liblzma.
    fn compress(data: &[u8], block: u64) -> Vec<u8> {
        let stream = xz2::stream::MtStreamBuilder::new()
            .threads(1)
            .block_size(block)
            .preset(1)
            .encoder()
            .unwrap();
        let mut w = xz2::write::XzEncoder::new_stream(Vec::new(), stream);
        w.write_all(data).unwrap();
        w.finish().unwrap()
    }

    fn sample() -> Vec<u8> {
        (0..300_000u32).map(|i| (i * 7 / 13) as u8).collect()
    }

    fn index_of(file: &[u8]) -> Result<Index> {
        read_index(file.len() as u64, &mut |buf, off| {
            let off = off as usize;
            buf.copy_from_slice(&file[off..off + buf.len()]);
            Ok(())
        })
    }

    fn read_all(file: &[u8], index: &Index) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        for b in &index.blocks {
            let stored = &file[b.coffset as usize..][..b.unpadded.next_multiple_of(4) as usize];
            out.extend(decode_block(stored, b.stream_flags, b.usize, 1 << 30)?);
        }
        Ok(out)
    }

    #[test]
    fn blocks_decode_to_the_original() {
        let data = sample();
        let file = compress(&data, 65536);
        let index = index_of(&file).unwrap();
        assert_eq!(index.blocks.len(), 5);
        assert_eq!(index.size, data.len() as u64);
        assert_eq!(index.find(65536), Some(1));
        assert_eq!(index.find(data.len() as u64), None);
        assert_eq!(read_all(&file, &index).unwrap(), data);
    }

    #[test]
    fn concatenated_streams_and_padding() {
        let data = sample();
        let mut file = compress(&data[..100_000], 40_000);
        // More padding than one chunk of the backwards scan.
        file.extend(vec![0u8; 70_004]);
        file.extend(compress(&data[100_000..], 1 << 20));
        file.extend([0u8; 4]);
        let index = index_of(&file).unwrap();
        assert_eq!(index.blocks.len(), 4);
        assert_eq!(read_all(&file, &index).unwrap(), data);
    }

    #[test]
    fn not_xz_and_bad_sizes() {
        let msg = |f: &[u8]| index_of(f).unwrap_err().to_string();
        assert_eq!(msg(b"hello\n"), "xz: not an xz file");
        let mut f = compress(b"abc", 1024);
        f.push(0);
        assert_eq!(
            msg(&f),
            "xz: not an xz file: size is not a multiple of 4 bytes"
        );
        assert_eq!(
            msg(&[&HEADER_MAGIC[..], b"abcd"].concat()),
            "xz: not an xz file: size is not a multiple of 4 bytes"
        );
        let mut g = HEADER_MAGIC.to_vec();
        g.extend([0, 0]);
        assert_eq!(msg(&g), "xz: invalid stream footer (error 9)");
    }

    #[test]
    fn corrupt_footer_index_and_header_are_refused() {
        let file = compress(&sample(), 65536);
        let n = file.len();
        let corrupt = |at: usize| {
            let mut f = file.clone();
            f[at] ^= 1;
            index_of(&f).unwrap_err().to_string()
        };
        assert_eq!(corrupt(n - 12), "xz: invalid stream footer (error 9)");
        assert_eq!(corrupt(n - 1), "xz: invalid stream footer (error 7)");
        assert_eq!(corrupt(n - 8), "xz: invalid stream footer (error 9)");
        let index_len = (le32(&file[n - 8..n - 4]) as usize + 1) * 4;
        let at = n - 12 - index_len;
        for i in 0..index_len {
            assert!(corrupt(at + i).starts_with("xz: "), "index byte {i}");
        }
        assert_eq!(corrupt(7), "xz: invalid stream header (error 9)");
        // Every truncation fails cleanly.
        for len in (0..n).step_by(4) {
            assert!(index_of(&file[..len]).is_err(), "length {len}");
        }
    }

    #[test]
    fn random_corruption_never_panics() {
        let data = sample();
        let file = compress(&data, 50_000);
        let mut seed = 0x1234_5678_u64;
        for _ in 0..2000 {
            let mut f = file.clone();
            for _ in 0..3 {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let at = (seed >> 33) as usize % f.len();
                f[at] = (seed >> 13) as u8;
            }
            if let Ok(index) = index_of(&f) {
                let _ = read_all(&f, &index);
            }
        }
    }

    #[test]
    fn index_with_absurd_counts_is_refused() {
        // count = 2^62 in a 12-byte index
        let mut idx = vec![0u8];
        idx.extend([0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x40]);
        idx.extend([0, 0]);
        let crc = crc32fast::hash(&idx);
        idx.extend(crc.to_le_bytes());
        assert!(parse_index(&idx).is_err());
        // Non-minimal VLI.
        let mut r = IndexReader {
            buf: &[0x80, 0x00],
            pos: 0,
        };
        assert_eq!(r.vli(), None);
    }

    #[test]
    fn corrupt_block_data_is_an_error() {
        let data = sample();
        let file = compress(&data, 65536);
        let index = index_of(&file).unwrap();
        let b = index.blocks[1];
        let mut stored =
            file[b.coffset as usize..][..b.unpadded.next_multiple_of(4) as usize].to_vec();
        let mid = stored.len() / 2;
        stored[mid] ^= 0xff;
        let e = decode_block(&stored, b.stream_flags, b.usize, 1 << 30).unwrap_err();
        assert!(
            e.to_string().starts_with("could not parse block data"),
            "{e}"
        );
        // A size in the index that disagrees with the block.
        let good = &file[b.coffset as usize..][..b.unpadded.next_multiple_of(4) as usize];
        assert!(decode_block(good, b.stream_flags, b.usize - 1, 1 << 30).is_err());
        assert!(decode_block(good, b.stream_flags, b.usize + 1, 1 << 30).is_err());
        assert!(decode_block(&good[..good.len() - 4], b.stream_flags, b.usize, 1 << 30).is_err());
    }
}
