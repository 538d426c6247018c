//! The disk: MBR, then at sector 2048 one FAT32 partition (boot sector,
//! FSInfo, backup boot sector at 6, two FATs from sector 32, then the
//! directory tables and the files, each in whole 16 KiB clusters).

use std::sync::Arc;

use nbdkit_core::backend::{Error, Result};

use super::directory::{pad, Tree, ENTRY_SIZE};
use crate::plugins::ptable;

pub(super) const SECTOR: u64 = 512;
pub(super) const SECTORS_PER_CLUSTER: u64 = 32;
pub(super) const CLUSTER: u64 = SECTOR * SECTORS_PER_CLUSTER;
/// Where the partition starts.
const PARTITION_START: u64 = 2048;
/// Where the first FAT starts (the partition's 32 reserved sectors).
const FAT_START: u64 = PARTITION_START + 32;
/// FAT32 cluster numbers have 28 bits.
const MAX_CLUSTERS: u64 = 0x1000_0000;
/// The Windows 98 OEM name, the most compatible.
const OEM_NAME: &[u8; 8] = b"MSWIN4.1";

/// What a range of the disk holds.
#[derive(Debug)]
pub(super) enum Content {
    /// Bytes built here (tables, FAT, directories); shorter than the
    /// region when the rest is zero padding.
    Data(Arc<[u8]>),
    /// Zeroes.
    Zero,
    /// The `index`'th file of the tree, `len` bytes, then padding.
    File { index: usize, len: u64 },
}

/// A range of the disk.
#[derive(Debug)]
pub(super) struct Region {
    pub(super) start: u64,
    pub(super) len: u64,
    pub(super) content: Content,
}

/// The finished disk layout.
#[derive(Debug)]
pub(super) struct Layout {
    pub(super) regions: Vec<Region>,
    pub(super) size: u64,
}

/// Regions appended one after another.
#[derive(Debug, Default)]
struct Builder {
    regions: Vec<Region>,
    end: u64,
}

impl Builder {
    /// Append `len` bytes of `content`, then zeroes up to a multiple of
    /// `align` (data shorter than its region reads as zeroes).
    fn push(&mut self, len: u64, align: u64, content: Content) {
        let padded = len.next_multiple_of(align.max(1));
        self.regions.push(Region {
            start: self.end,
            len: padded,
            content,
        });
        self.end += padded;
    }
}

fn too_big_for_fat32() -> Error {
    Error::config("disk image is too large for the FAT32 disk format")
}

/// Lay out the disk for `tree`, whose directory tables are built.
/// `size` 0 means just large enough.
pub(super) fn build(tree: &mut Tree, label: &[u8], size: u64) -> Result<Layout> {
    // Clusters from 2: directories first (the root at 2), then files;
    // empty files get none (and first cluster 0).
    let mut cluster: u64 = 2;
    let mut used_bytes: u64 = 0;
    for d in tree.dirs.iter_mut() {
        let bytes = (d.table.len() * ENTRY_SIZE) as u64;
        let n = bytes.div_ceil(CLUSTER);
        if cluster + n > u64::from(u32::MAX) {
            return Err(too_big_for_fat32());
        }
        d.first_cluster = cluster as u32;
        d.nr_clusters = n as u32;
        cluster += n;
        used_bytes += n * CLUSTER;
    }
    for f in tree.files.iter_mut() {
        let n = f.size.div_ceil(CLUSTER);
        if cluster + n > u64::from(u32::MAX) {
            return Err(too_big_for_fat32());
        }
        f.first_cluster = if n == 0 { 0 } else { cluster as u32 };
        f.nr_clusters = n as u32;
        cluster += n;
        used_bytes += n * CLUSTER;
    }

    let data_size = if size > 0 {
        // What is left after the fixed sectors and two FATs (nbdkit's
        // arithmetic, which wraps for sizes too small to hold anything).
        let d = size.wrapping_sub(FAT_START * SECTOR);
        let fat = (d / CLUSTER + 2).wrapping_mul(4).div_ceil(CLUSTER) * CLUSTER;
        let d = d.wrapping_sub(fat.wrapping_mul(2));
        if d / CLUSTER >= MAX_CLUSTERS {
            return Err(too_big_for_fat32());
        }
        if used_bytes > d {
            return Err(Error::config("filesystem is larger than \"size\" bytes"));
        }
        d
    } else {
        used_bytes
    };
    let data_clusters = data_size / CLUSTER;
    let used_clusters = used_bytes / CLUSTER;
    if data_clusters >= MAX_CLUSTERS {
        return Err(too_big_for_fat32());
    }
    let fat_entries = data_clusters + 2;
    let fat_clusters = (fat_entries * 4).div_ceil(CLUSTER);
    let data_start = FAT_START + 2 * fat_clusters * SECTORS_PER_CLUSTER;
    let last_sector = data_start + data_clusters * SECTORS_PER_CLUSTER - 1;
    if last_sector >= u64::from(u32::MAX) {
        return Err(Error::config(
            "disk image is too large for the MBR disk format",
        ));
    }
    let partition_sectors = (last_sector - PARTITION_START + 1) as u32;

    for di in 0..tree.dirs.len() {
        tree.set_clusters(di);
    }

    // MBR: one partition of type 0x0C (FAT32, LBA), CHS "too large".
    let mut mbr = vec![0u8; SECTOR as usize];
    mbr[3..11].copy_from_slice(OEM_NAME);
    ptable::mbr::entry(
        &mut mbr[ptable::mbr::ENTRIES..],
        false,
        0x0c,
        PARTITION_START as u32,
        partition_sectors,
    );
    ptable::mbr::sign(&mut mbr);

    let boot = boot_sector(label, partition_sectors, fat_clusters);

    let mut fsinfo = vec![0u8; SECTOR as usize];
    fsinfo[0..4].copy_from_slice(b"RRaA");
    fsinfo[484..488].copy_from_slice(b"rrAa");
    fsinfo[488..492].copy_from_slice(&((data_clusters - used_clusters) as u32).to_le_bytes());
    fsinfo[492..496].copy_from_slice(&((2 + used_clusters) as u32).to_le_bytes());
    fsinfo[508..512].copy_from_slice(&[0, 0, 0x55, 0xaa]);

    // The FAT: every chain is contiguous.
    let mut fat = vec![0u8; (fat_entries * 4) as usize];
    let mut set = |i: u64, v: u32| {
        let i = i as usize * 4;
        fat[i..i + 4].copy_from_slice(&v.to_le_bytes());
    };
    set(0, 0x0fff_fff8);
    set(1, 0x0fff_ffff);
    let chains = tree
        .dirs
        .iter()
        .map(|d| (d.first_cluster, d.nr_clusters))
        .chain(tree.files.iter().map(|f| (f.first_cluster, f.nr_clusters)));
    for (first, n) in chains {
        let (first, n) = (u64::from(first), u64::from(n));
        for c in first..first + n {
            set(
                c,
                if c + 1 == first + n {
                    0x0fff_ffff
                } else {
                    c as u32 + 1
                },
            );
        }
    }
    let fat: Arc<[u8]> = fat.into();
    let boot: Arc<[u8]> = boot.into();

    let mut b = Builder::default();
    b.push(SECTOR, PARTITION_START * SECTOR, Content::Data(mbr.into()));
    b.push(SECTOR, 0, Content::Data(boot.clone()));
    b.push(SECTOR, 0, Content::Data(fsinfo.into()));
    b.push(4 * SECTOR, 0, Content::Zero);
    b.push(SECTOR, 0, Content::Data(boot));
    b.push(25 * SECTOR, 0, Content::Zero);
    b.push(fat_entries * 4, CLUSTER, Content::Data(fat.clone()));
    b.push(fat_entries * 4, CLUSTER, Content::Data(fat));
    debug_assert_eq!(b.end, data_start * SECTOR);
    for d in tree.dirs.iter_mut() {
        let bytes: Vec<u8> = d.table.iter().flatten().copied().collect();
        b.push(bytes.len() as u64, CLUSTER, Content::Data(bytes.into()));
        d.table = Vec::new();
    }
    for (i, f) in tree.files.iter().enumerate() {
        if f.size > 0 {
            b.push(
                f.size,
                CLUSTER,
                Content::File {
                    index: i,
                    len: f.size,
                },
            );
        }
    }
    if data_clusters > used_clusters {
        b.push(
            (data_clusters - used_clusters) * CLUSTER,
            CLUSTER,
            Content::Zero,
        );
    }
    // A size that is not exactly what the file system fills (nbdkit
    // aborts there) gets zeroes after the partition.
    if size > b.end {
        b.push(size - b.end, 0, Content::Zero);
    }
    Ok(Layout {
        size: b.end,
        regions: b.regions,
    })
}

/// The partition's boot sector (also its backup).
fn boot_sector(label: &[u8], partition_sectors: u32, fat_clusters: u64) -> Vec<u8> {
    let mut s = vec![0u8; SECTOR as usize];
    s[3..11].copy_from_slice(OEM_NAME);
    s[11..13].copy_from_slice(&(SECTOR as u16).to_le_bytes());
    s[13] = SECTORS_PER_CLUSTER as u8;
    s[14..16].copy_from_slice(&32u16.to_le_bytes()); // reserved sectors
    s[16] = 2; // FATs
    s[21] = 0xf8; // fixed disk
    s[32..36].copy_from_slice(&partition_sectors.to_le_bytes());
    s[36..40].copy_from_slice(&((fat_clusters * SECTORS_PER_CLUSTER) as u32).to_le_bytes());
    s[44..48].copy_from_slice(&2u32.to_le_bytes()); // root directory cluster
    s[48..50].copy_from_slice(&1u16.to_le_bytes()); // FSInfo sector
    s[50..52].copy_from_slice(&6u16.to_le_bytes()); // backup boot sector
    s[66] = 0x29; // extended boot signature
    s[67..71].copy_from_slice(&0x0102_0304u32.to_le_bytes()); // volume id
    pad(label, &mut s[71..82]);
    s[82..90].copy_from_slice(b"FAT32   ");
    s[510] = 0x55;
    s[511] = 0xaa;
    s
}
