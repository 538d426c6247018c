//! The qcow2dec filter: serve a qcow2 image from the layer below as raw
//! data, read-only. No parameters.
//!
//! Supported: qcow2 versions 2 and 3, cluster sizes 512 bytes to 2 MiB,
//! zero clusters, extended L2 entries (subclusters), compressed clusters
//! (zlib, and zstd when the v3 header says so). Unallocated clusters read
//! as zeroes and are reported as holes. Snapshots are ignored (the active
//! image is served). Refused with an error: backing files, encryption,
//! external data files, images marked corrupt, unknown incompatible
//! features.
//!
//! Every table is bounded by the size of the layer below before it is
//! read, and each request reads only the L2 entries it needs.

use std::sync::Mutex;

use nbdkit_core::backend::{
    BlockSize, Context, Error, Extents, Filter, FilterHandle, Flags, NextOpener, OpenArgs, Result,
    Support,
};
use nbdkit_core::errno::Errno;
use nbdkit_core::wire::consts::{STATE_HOLE, STATE_ZERO};

const MAGIC: [u8; 4] = *b"QFI\xfb";
/// The v2 header; v3 headers are at least 104 bytes.
const V2_HEADER_LEN: usize = 72;
const V3_HEADER_LEN: usize = 104;
/// The largest L1 table accepted (qemu's limit too).
const MAX_L1_BYTES: u64 = 32 << 20;
/// Bits 9..55 of L1 and L2 entries hold host offsets.
const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const L2_COMPRESSED: u64 = 1 << 62;
const L2_ZERO: u64 = 1;

const INCOMPAT_DIRTY: u64 = 1 << 0;
const INCOMPAT_CORRUPT: u64 = 1 << 1;
const INCOMPAT_DATA_FILE: u64 = 1 << 2;
const INCOMPAT_COMPRESSION: u64 = 1 << 3;
const INCOMPAT_EXTL2: u64 = 1 << 4;

fn invalid(msg: impl Into<String>) -> Error {
    Error::msg(Errno::EINVAL, format!("qcow2dec: {}", msg.into()))
}

fn corrupt(msg: impl Into<String>) -> Error {
    Error::msg(Errno::EIO, format!("qcow2dec: {}", msg.into()))
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

/// How compressed clusters are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    Zlib,
    Zstd,
}

/// What the filter needs of a qcow2 header.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Header {
    cluster_bits: u32,
    size: u64,
    l1_size: u32,
    l1_table_offset: u64,
    compression: Compression,
    extended_l2: bool,
}

impl Header {
    /// Bytes to read for any header (a v3 header with a compression type
    /// byte and padding).
    const READ_LEN: usize = 112;

    /// Parse and check the header; `head` is the start of the file (up to
    /// [`Header::READ_LEN`] bytes, fewer if the file is smaller).
    fn parse(head: &[u8]) -> Result<Header> {
        if head.len() < 4 || head[..4] != MAGIC {
            return Err(invalid("not a qcow2 file"));
        }
        if head.len() < V2_HEADER_LEN {
            return Err(invalid("file is too small for a qcow2 header"));
        }
        let version = be32(head, 4);
        if version != 2 && version != 3 {
            return Err(invalid(format!("unsupported qcow2 version {version}")));
        }
        let backing_file_offset = be64(head, 8);
        let cluster_bits = be32(head, 20);
        let size = be64(head, 24);
        let crypt_method = be32(head, 32);
        let l1_size = be32(head, 36);
        let l1_table_offset = be64(head, 40);
        if backing_file_offset != 0 {
            return Err(invalid(
                "qcow2 images with a backing file are not supported",
            ));
        }
        if crypt_method != 0 {
            return Err(invalid("encrypted qcow2 images are not supported"));
        }
        if !(9..=21).contains(&cluster_bits) {
            return Err(invalid(format!(
                "unsupported cluster size (cluster_bits = {cluster_bits})"
            )));
        }
        if size > i64::MAX as u64 {
            return Err(invalid("virtual size is too large"));
        }
        let mut compression = Compression::Zlib;
        let mut extended_l2 = false;
        if version == 3 {
            if head.len() < V3_HEADER_LEN {
                return Err(invalid("file is too small for a qcow2 v3 header"));
            }
            let incompatible = be64(head, 72);
            let header_length = be32(head, 100) as usize;
            if header_length < V3_HEADER_LEN || header_length > 1 << cluster_bits {
                return Err(invalid(format!("invalid header length {header_length}")));
            }
            if incompatible & INCOMPAT_CORRUPT != 0 {
                return Err(invalid(
                    "image is marked corrupt (repair it with qemu-img check -r all)",
                ));
            }
            if incompatible & INCOMPAT_DATA_FILE != 0 {
                return Err(invalid(
                    "qcow2 images with an external data file are not supported",
                ));
            }
            let unknown = incompatible
                & !(INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2);
            if unknown != 0 {
                return Err(invalid(format!(
                    "unsupported incompatible features 0x{unknown:x}"
                )));
            }
            if incompatible & INCOMPAT_EXTL2 != 0 {
                // Subclusters are a 32nd of a cluster, at least 512 bytes.
                if cluster_bits < 14 {
                    return Err(invalid("extended L2 entries need clusters of 16K or more"));
                }
                extended_l2 = true;
            }
            if header_length > 104 && head.len() > 104 {
                compression = match head[104] {
                    0 => Compression::Zlib,
                    1 => Compression::Zstd,
                    t => return Err(invalid(format!("unsupported compression type {t}"))),
                };
            }
            if (incompatible & INCOMPAT_COMPRESSION != 0) != (compression != Compression::Zlib) {
                return Err(invalid(
                    "compression type does not match the header's features",
                ));
            }
        }
        Ok(Header {
            cluster_bits,
            size,
            l1_size,
            l1_table_offset,
            compression,
            extended_l2,
        })
    }

    fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Size of one L2 entry in bytes.
    fn l2_entry_len(&self) -> u64 {
        if self.extended_l2 {
            16
        } else {
            8
        }
    }

    /// Number of entries in one L2 table.
    fn l2_entries(&self) -> u64 {
        self.cluster_size() / self.l2_entry_len()
    }

    /// L1 entries the virtual size needs.
    fn l1_needed(&self) -> u64 {
        self.size
            .div_ceil(self.cluster_size())
            .div_ceil(self.l2_entries())
    }

    /// Check the L1 table's place against a file of `file_size` bytes.
    fn check_l1(&self, file_size: u64) -> Result<()> {
        let bytes = u64::from(self.l1_size) * 8;
        if bytes > MAX_L1_BYTES {
            return Err(invalid(format!("L1 table is too large ({bytes} bytes)")));
        }
        if u64::from(self.l1_size) < self.l1_needed() {
            return Err(invalid("L1 table is too small for the virtual size"));
        }
        if self.l1_table_offset % self.cluster_size() != 0
            || self
                .l1_table_offset
                .checked_add(bytes)
                .map_or(true, |end| end > file_size)
        {
            return Err(invalid("L1 table is outside the file"));
        }
        Ok(())
    }
}

/// Where a guest cluster's data is, from its L2 entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cluster {
    /// Not allocated: zeroes, a hole.
    Unallocated,
    /// Reads as zeroes; `allocated` when host space is reserved.
    Zero { allocated: bool },
    /// Data at this host offset.
    Data(u64),
    /// Compressed data: host offset and the most bytes it may take.
    Compressed { offset: u64, len: u64 },
}

impl Cluster {
    /// Decode a standard L2 entry of an image with clusters of
    /// 2^`cluster_bits` bytes.
    fn from_l2(entry: u64, cluster_bits: u32) -> Cluster {
        if entry & L2_COMPRESSED != 0 {
            let shift = 62 - (cluster_bits - 8);
            let sectors = ((entry & ((1 << 62) - 1)) >> shift) + 1;
            let offset = entry & ((1 << shift) - 1);
            return Cluster::Compressed {
                offset,
                len: sectors * 512 - (offset & 511),
            };
        }
        let offset = entry & OFFSET_MASK;
        if entry & L2_ZERO != 0 {
            Cluster::Zero {
                allocated: offset != 0,
            }
        } else if offset == 0 {
            Cluster::Unallocated
        } else {
            Cluster::Data(offset)
        }
    }

    /// The state of one subcluster of an extended L2 entry.
    fn subcluster(entry: u64, bitmap: u64, cluster_bits: u32, sub: u32) -> Cluster {
        let c = Cluster::from_l2(entry, cluster_bits);
        if let Cluster::Compressed { .. } = c {
            return c;
        }
        if bitmap >> (32 + sub) & 1 != 0 {
            return Cluster::Zero {
                allocated: bitmap >> sub & 1 != 0,
            };
        }
        match c {
            Cluster::Data(off) if bitmap >> sub & 1 != 0 => {
                Cluster::Data(off + (u64::from(sub) << (cluster_bits - 5)))
            }
            _ => Cluster::Unallocated,
        }
    }
}

/// Inflate one zlib cluster (raw deflate, as qemu writes it) into `out`.
fn inflate_cluster(input: &[u8], out: &mut [u8]) -> Result<()> {
    let mut z = flate2::Decompress::new(false);
    match z.decompress(input, out, flate2::FlushDecompress::Finish) {
        Ok(_) if z.total_out() == out.len() as u64 => Ok(()),
        Ok(_) => Err(corrupt("compressed cluster is too short")),
        Err(e) => Err(corrupt(format!("inflate: {e}"))),
    }
}

/// Decompress one zstd cluster into `out`: qemu's stream may be followed
/// by padding up to the next sector, so stop when `out` is full.
fn unzstd_cluster(input: &[u8], out: &mut [u8]) -> Result<()> {
    use zstd::stream::raw::{DParameter, Decoder, Operation};
    let err = |e: std::io::Error| corrupt(format!("zstd: {e}"));
    let mut d = Decoder::new().map_err(err)?;
    // Clusters are at most 2M: a window larger than that is corrupt.
    d.set_parameter(DParameter::WindowLogMax(22)).map_err(err)?;
    let (mut i, mut o) = (0, 0);
    while o < out.len() {
        let s = d.run_on_buffers(&input[i..], &mut out[o..]).map_err(err)?;
        if s.bytes_read == 0 && s.bytes_written == 0 {
            return Err(corrupt("compressed cluster is too short"));
        }
        i += s.bytes_read;
        o += s.bytes_written;
    }
    Ok(())
}

/// The qcow2dec filter.
#[derive(Debug, Default)]
pub struct Qcow2Dec;

impl Filter for Qcow2Dec {
    fn name(&self) -> &'static str {
        "qcow2dec"
    }

    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit qcow2dec filter")
    }

    fn open(
        &self,
        next: &mut dyn NextOpener,
        args: &OpenArgs<'_>,
    ) -> Result<Box<dyn FilterHandle>> {
        next.open(true, args.export_name)?;
        Ok(Box::new(Qcow2Handle {
            image: Mutex::new(None),
            last: Mutex::new(None),
        }))
    }
}

/// A parsed image: its header and L1 table.
#[derive(Debug)]
struct Image {
    header: Header,
    l1: Vec<u64>,
    file_size: u64,
}

impl Image {
    fn open(next: &Context) -> Result<Image> {
        let file_size = next.get_size();
        let mut head = vec![0u8; (Header::READ_LEN as u64).min(file_size) as usize];
        next.pread(&mut head, 0, Flags::NONE)?;
        let header = Header::parse(&head)?;
        header.check_l1(file_size)?;
        let n = header.l1_needed() as usize;
        let mut raw = vec![0u8; n * 8];
        next.pread(&mut raw, header.l1_table_offset, Flags::NONE)?;
        let l1 = raw.chunks_exact(8).map(|c| be64(c, 0)).collect();
        Ok(Image {
            header,
            l1,
            file_size,
        })
    }

    /// Check that `len` bytes at host `offset` are inside the file.
    fn check_host(&self, offset: u64, len: u64, what: &str) -> Result<()> {
        if offset.checked_add(len).map_or(true, |e| e > self.file_size) {
            return Err(corrupt(format!(
                "{what} at 0x{offset:x} is beyond the end of the file"
            )));
        }
        Ok(())
    }

    /// The states of the guest clusters `first..first + count` (all in one
    /// L2 table), as (entry, bitmap) pairs.
    fn l2_entries(&self, next: &Context, first: u64, count: u64) -> Result<Vec<(u64, u64)>> {
        let per = self.header.l2_entries();
        let l1_entry = self.l1[(first / per) as usize];
        let l2_offset = l1_entry & OFFSET_MASK;
        if l2_offset == 0 {
            return Ok(vec![(0, 0); count as usize]);
        }
        let cs = self.header.cluster_size();
        if l2_offset % cs != 0 {
            return Err(corrupt(format!(
                "L2 table offset 0x{l2_offset:x} is not aligned"
            )));
        }
        self.check_host(l2_offset, cs, "L2 table")?;
        let elen = self.header.l2_entry_len();
        let mut raw = vec![0u8; (count * elen) as usize];
        next.pread(&mut raw, l2_offset + (first % per) * elen, Flags::NONE)?;
        Ok(raw
            .chunks_exact(elen as usize)
            .map(|c| (be64(c, 0), if elen == 16 { be64(c, 8) } else { 0 }))
            .collect())
    }

    /// Call `f(guest offset, length, state)` for the runs of `count` bytes
    /// at `offset` (clusters, or subclusters of extended L2 entries).
    fn walk(
        &self,
        next: &Context,
        offset: u64,
        count: u64,
        f: &mut dyn FnMut(u64, u64, Cluster) -> Result<bool>,
    ) -> Result<()> {
        let h = &self.header;
        let cs = h.cluster_size();
        let per = h.l2_entries();
        let end = offset + count;
        let mut pos = offset;
        while pos < end {
            let first = pos / cs;
            let last = (end - 1) / cs;
            let table_end = (first / per + 1) * per;
            let n = (last + 1).min(table_end) - first;
            let entries = self.l2_entries(next, first, n)?;
            for (i, (entry, bitmap)) in entries.into_iter().enumerate() {
                let cstart = (first + i as u64) * cs;
                let (unit, parts) = if h.extended_l2 {
                    (cs / 32, 32)
                } else {
                    (cs, 1)
                };
                for sub in 0..parts {
                    let ustart = cstart + u64::from(sub) * unit;
                    let (from, to) = (ustart.max(pos), (ustart + unit).min(end));
                    if from >= to {
                        continue;
                    }
                    let state = if h.extended_l2 {
                        Cluster::subcluster(entry, bitmap, h.cluster_bits, sub)
                    } else {
                        Cluster::from_l2(entry, h.cluster_bits)
                    };
                    if !f(from, to - from, state)? {
                        return Ok(());
                    }
                }
            }
            pos = table_end * cs;
        }
        Ok(())
    }
}

struct Qcow2Handle {
    image: Mutex<Option<std::sync::Arc<Image>>>,
    /// The last decompressed cluster: (host offset, data).
    last: Mutex<Option<(u64, Vec<u8>)>>,
}

impl Qcow2Handle {
    fn image(&self) -> Result<std::sync::Arc<Image>> {
        self.image
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| Error::new(Errno::EIO))
    }

    /// Copy `out.len()` bytes at `within` of the compressed cluster at host
    /// `offset`.
    fn read_compressed(
        &self,
        next: &Context,
        img: &Image,
        offset: u64,
        len: u64,
        within: u64,
        out: &mut [u8],
    ) -> Result<()> {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, data)) = last.as_ref() {
            if *at == offset {
                out.copy_from_slice(&data[within as usize..within as usize + out.len()]);
                return Ok(());
            }
        }
        if offset >= img.file_size {
            return Err(corrupt(format!(
                "compressed cluster at 0x{offset:x} is beyond the end of the file"
            )));
        }
        // The last sectors of the file may be shorter than the entry says.
        let len = len.min(img.file_size - offset);
        let mut input = vec![0u8; len as usize];
        next.pread(&mut input, offset, Flags::NONE)?;
        let mut data = vec![0u8; img.header.cluster_size() as usize];
        match img.header.compression {
            Compression::Zlib => inflate_cluster(&input, &mut data)?,
            Compression::Zstd => unzstd_cluster(&input, &mut data)?,
        }
        out.copy_from_slice(&data[within as usize..within as usize + out.len()]);
        *last = Some((offset, data));
        Ok(())
    }
}

impl FilterHandle for Qcow2Handle {
    fn prepare(&self, next: &Context, _readonly: bool) -> Result<()> {
        let img = Image::open(next)?;
        *self.image.lock().unwrap_or_else(|p| p.into_inner()) = Some(std::sync::Arc::new(img));
        Ok(())
    }

    fn get_size(&self, _next: &Context) -> Result<u64> {
        Ok(self.image()?.header.size)
    }
    fn block_size(&self, _next: &Context) -> Result<Option<BlockSize>> {
        Ok(None)
    }
    fn can_write(&self, _next: &Context) -> Result<bool> {
        Ok(false)
    }
    fn can_extents(&self, _next: &Context) -> Result<bool> {
        Ok(true)
    }
    fn can_cache(&self, _next: &Context) -> Result<Support> {
        Ok(Support::Emulate)
    }
    fn can_multi_conn(&self, _next: &Context) -> Result<bool> {
        Ok(true)
    }

    fn pread(&self, next: &Context, buf: &mut [u8], offset: u64, _flags: Flags) -> Result<()> {
        let img = self.image()?;
        let cs = img.header.cluster_size();
        img.walk(next, offset, buf.len() as u64, &mut |pos, len, state| {
            let out = &mut buf[(pos - offset) as usize..(pos - offset + len) as usize];
            match state {
                Cluster::Unallocated | Cluster::Zero { .. } => out.fill(0),
                Cluster::Data(host) => {
                    if host % cs != 0 && !img.header.extended_l2 {
                        return Err(corrupt(format!(
                            "data cluster offset 0x{host:x} is not aligned"
                        )));
                    }
                    let unit = if img.header.extended_l2 { cs / 32 } else { cs };
                    let at = host + pos % unit;
                    img.check_host(at, len, "data cluster")?;
                    next.pread(out, at, Flags::NONE)?;
                }
                Cluster::Compressed {
                    offset: host,
                    len: clen,
                } => {
                    self.read_compressed(next, &img, host, clen, pos % cs, out)?;
                }
            }
            Ok(true)
        })
    }

    fn extents(
        &self,
        next: &Context,
        count: u64,
        offset: u64,
        flags: Flags,
        extents: &mut Extents,
    ) -> Result<()> {
        let img = self.image()?;
        // Without REQ_ONE, look at no more than 64M of the guest at once:
        // the client asks again for the rest.
        let count = if flags.contains(Flags::REQ_ONE) {
            count.min(img.header.cluster_size())
        } else {
            count.min(64 << 20)
        };
        img.walk(next, offset, count, &mut |pos, len, state| {
            let f = match state {
                Cluster::Unallocated | Cluster::Zero { allocated: false } => {
                    STATE_HOLE | STATE_ZERO
                }
                Cluster::Zero { allocated: true } => STATE_ZERO,
                Cluster::Data(_) | Cluster::Compressed { .. } => 0,
            };
            extents.add(pos, len, f)?;
            Ok(!extents.is_full())
        })
    }
}

#[cfg(test)]
mod test {
    use super::*;

    /// A v3 header for a 1M image with 64K clusters.
    fn header_v3() -> Vec<u8> {
        let mut h = vec![0u8; Header::READ_LEN];
        h[..4].copy_from_slice(&MAGIC);
        h[4..8].copy_from_slice(&3u32.to_be_bytes());
        h[20..24].copy_from_slice(&16u32.to_be_bytes());
        h[24..32].copy_from_slice(&(1u64 << 20).to_be_bytes());
        h[36..40].copy_from_slice(&1u32.to_be_bytes());
        h[40..48].copy_from_slice(&0x30000u64.to_be_bytes());
        h[100..104].copy_from_slice(&112u32.to_be_bytes());
        h
    }

    fn err(h: &[u8]) -> String {
        Header::parse(h).unwrap_err().to_string()
    }

    #[test]
    fn parses_a_v3_header() {
        let h = Header::parse(&header_v3()).unwrap();
        assert_eq!(h.cluster_size(), 65536);
        assert_eq!(h.l1_needed(), 1);
        assert_eq!(h.compression, Compression::Zlib);
        h.check_l1(0x40000).unwrap();
        assert!(h.check_l1(0x30004).is_err());
    }

    #[test]
    fn refuses_bad_headers() {
        assert_eq!(err(b"QFI"), "qcow2dec: not a qcow2 file");
        assert_eq!(err(b"hello world"), "qcow2dec: not a qcow2 file");
        // Every truncation of the header fails cleanly.
        let h = header_v3();
        for n in 0..V3_HEADER_LEN {
            assert!(Header::parse(&h[..n]).is_err(), "length {n}");
        }
        let set = |at: usize, bytes: &[u8]| {
            let mut h = header_v3();
            h[at..at + bytes.len()].copy_from_slice(bytes);
            err(&h)
        };
        assert!(set(4, &4u32.to_be_bytes()).contains("unsupported qcow2 version 4"));
        assert!(set(8, &512u64.to_be_bytes()).contains("backing file"));
        assert!(set(32, &1u32.to_be_bytes()).contains("encrypted"));
        assert!(set(20, &8u32.to_be_bytes()).contains("cluster size"));
        assert!(set(20, &22u32.to_be_bytes()).contains("cluster size"));
        assert!(set(72, &2u64.to_be_bytes()).contains("corrupt"));
        assert!(set(72, &4u64.to_be_bytes()).contains("external data file"));
        assert!(set(72, &0x20u64.to_be_bytes()).contains("incompatible features 0x20"));
        assert!(set(104, &[7]).contains("unsupported compression type 7"));
        assert!(set(104, &[1]).contains("compression type does not match"));
        assert!(set(100, &50u32.to_be_bytes()).contains("header length"));
        assert!(set(24, &u64::MAX.to_be_bytes()).contains("too large"));
    }

    #[test]
    fn l1_table_is_bounded() {
        let mut h = Header::parse(&header_v3()).unwrap();
        h.l1_size = u32::MAX;
        assert!(h
            .check_l1(u64::MAX)
            .unwrap_err()
            .to_string()
            .contains("too large"));
        h.l1_size = 0;
        assert!(h
            .check_l1(u64::MAX)
            .unwrap_err()
            .to_string()
            .contains("too small"));
        h.l1_size = 1;
        h.l1_table_offset = u64::MAX - 65535;
        assert!(h.check_l1(1 << 40).is_err());
        h.l1_table_offset = 0x30001;
        assert!(h.check_l1(u64::MAX).is_err());
    }

    #[test]
    fn l2_entries_decode() {
        assert_eq!(Cluster::from_l2(0, 16), Cluster::Unallocated);
        assert_eq!(
            Cluster::from_l2((1 << 63) | 0x50000, 16),
            Cluster::Data(0x50000)
        );
        assert_eq!(Cluster::from_l2(1, 16), Cluster::Zero { allocated: false });
        assert_eq!(
            Cluster::from_l2(0x50001, 16),
            Cluster::Zero { allocated: true }
        );
        // 64K clusters: 8 bits of sector count above a 54-bit offset.
        let e = L2_COMPRESSED | (3 << 54) | 0x12345;
        assert_eq!(
            Cluster::from_l2(e, 16),
            Cluster::Compressed {
                offset: 0x12345,
                len: 4 * 512 - 0x145
            }
        );
        // Subclusters: 0 allocated, 1 zero, 2 unallocated.
        let bm = 1 | (1 << 33);
        assert_eq!(
            Cluster::subcluster(0x50000, bm, 16, 0),
            Cluster::Data(0x50000)
        );
        assert_eq!(
            Cluster::subcluster(0x50000, bm, 16, 1),
            Cluster::Zero { allocated: false }
        );
        assert_eq!(
            Cluster::subcluster(0x50000, bm, 16, 2),
            Cluster::Unallocated
        );
    }

    #[test]
    fn corrupt_compressed_clusters_are_errors() {
        let mut out = vec![0u8; 4096];
        assert!(inflate_cluster(&[0xff; 64], &mut out).is_err());
        assert!(inflate_cluster(&[], &mut out).is_err());
        assert!(unzstd_cluster(&[0x28, 0xb5, 0x2f, 0xfd, 0xff], &mut out).is_err());
        assert!(unzstd_cluster(&[], &mut out).is_err());
        // A valid stream that is too short for the cluster.
        let z = zstd::bulk::compress(&[5u8; 100], 1).unwrap();
        assert!(unzstd_cluster(&z, &mut out).is_err());
        let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut e, &[5u8; 4096]).unwrap();
        let d = e.finish().unwrap();
        inflate_cluster(&d, &mut out).unwrap();
        assert!(out.iter().all(|&b| b == 5));
    }
}
