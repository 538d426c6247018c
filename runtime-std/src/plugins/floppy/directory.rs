//! The host directory tree and the FAT directory tables made from it:
//! 8.3 short names, VFAT long file name (LFN) entries and timestamps.

use std::ffi::OsString;
use std::fs::Metadata;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nbdkit_core::backend::{Error, Result};

use super::io_error;

/// Directory entry attributes.
pub(super) const ATTR_VOLUME_LABEL: u8 = 0x08;
pub(super) const ATTR_SUBDIRECTORY: u8 = 0x10;
pub(super) const ATTR_ARCHIVE: u8 = 0x20;
/// The attribute byte that marks an LFN entry.
const ATTR_LFN: u8 = 0x0f;
/// Size of one directory entry.
pub(super) const ENTRY_SIZE: usize = 32;
/// The longest long name, in UTF-16 units (63 entries of 13).
const MAX_LFN_UNITS: usize = 819;

/// The times of a file or directory, as `stat` reports them.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Times {
    ctime: i64,
    mtime: i64,
    atime: i64,
}

impl Times {
    fn of(meta: &Metadata) -> Times {
        Times {
            ctime: meta.ctime(),
            mtime: meta.mtime(),
            atime: meta.atime(),
        }
    }
}

/// A regular file to serve.
#[derive(Debug)]
pub(super) struct FileNode {
    pub(super) name: OsString,
    pub(super) host_path: PathBuf,
    pub(super) size: u64,
    pub(super) times: Times,
    pub(super) first_cluster: u32,
    pub(super) nr_clusters: u32,
}

/// A directory: `dirs[0]` is the root.
#[derive(Debug, Default)]
pub(super) struct DirNode {
    pub(super) name: OsString,
    /// The parent's index (the root's is 0).
    pub(super) parent: usize,
    /// The root's times are all zero.
    pub(super) times: Times,
    pub(super) subdirs: Vec<usize>,
    pub(super) files: Vec<usize>,
    pub(super) first_cluster: u32,
    pub(super) nr_clusters: u32,
    /// The directory table, as written on disk.
    pub(super) table: Vec<[u8; ENTRY_SIZE]>,
}

/// Every directory and regular file under the root, in the order nbdkit
/// finds them: directories depth first (each numbered when it is entered),
/// files as they are met.
#[derive(Debug, Default)]
pub(super) struct Tree {
    pub(super) dirs: Vec<DirNode>,
    pub(super) files: Vec<FileNode>,
}

impl Tree {
    /// Read the tree under `root`. Symbolic links and other special files
    /// are ignored.
    pub(super) fn scan(root: &Path) -> Result<Tree> {
        let mut tree = Tree::default();
        tree.visit(root, 0)?;
        Ok(tree)
    }

    /// Add `dir` as a new directory (its name and times are set by the
    /// caller) and visit what it holds. Returns its index. Recursion depth
    /// is bounded by the host file system's own path length limit.
    fn visit(&mut self, dir: &Path, parent: usize) -> Result<usize> {
        let di = self.dirs.len();
        self.dirs.push(DirNode {
            parent,
            ..DirNode::default()
        });
        let shown = dir.display();
        let md = std::fs::metadata(dir).map_err(|e| io_error(&format!("chdir: {shown}"), &e))?;
        if !md.is_dir() {
            return Err(io_error(
                &format!("chdir: {shown}"),
                &std::io::Error::from_raw_os_error(libc::ENOTDIR),
            ));
        }
        let entries =
            std::fs::read_dir(dir).map_err(|e| io_error(&format!("opendir: {shown}"), &e))?;
        for entry in entries {
            let entry = entry.map_err(|e| io_error(&format!("readdir: {shown}"), &e))?;
            let name = entry.file_name();
            let path = dir.join(&name);
            let meta = std::fs::symlink_metadata(&path).map_err(|e| {
                io_error(&format!("stat: {shown}/{}", Path::new(&name).display()), &e)
            })?;
            if meta.is_dir() {
                let sdi = self.visit(&path, di)?;
                let sub = &mut self.dirs[sdi];
                sub.name = name;
                sub.times = Times::of(&meta);
                self.dirs[di].subdirs.push(sdi);
            } else if meta.is_file() {
                if meta.len() >= u64::from(u32::MAX) {
                    return Err(Error::config(format!(
                        "{}: file is larger than maximum supported by VFAT",
                        path.display()
                    )));
                }
                self.dirs[di].files.push(self.files.len());
                self.files.push(FileNode {
                    name,
                    host_path: path,
                    size: meta.len(),
                    times: Times::of(&meta),
                    first_cluster: 0,
                    nr_clusters: 0,
                });
            }
        }
        Ok(di)
    }

    /// Build the table of directory `di` (cluster numbers are filled in
    /// later by [`Tree::set_clusters`]).
    pub(super) fn build_table(&mut self, di: usize, label: &[u8]) -> Result<()> {
        let mut table = Vec::new();
        let node = &self.dirs[di];
        if di == 0 {
            let mut e = [0u8; ENTRY_SIZE];
            pad(label, &mut e[..11]);
            e[11] = ATTR_VOLUME_LABEL;
            table.push(e);
        } else {
            for (name, times) in [
                (&b"."[..], node.times),
                (b"..", self.dirs[node.parent].times),
            ] {
                let mut e = [0u8; ENTRY_SIZE];
                pad(name, &mut e[..11]);
                e[11] = ATTR_SUBDIRECTORY;
                set_times(&mut e, &times);
                table.push(e);
            }
        }
        let names: Vec<&[u8]> = node
            .subdirs
            .iter()
            .map(|&s| self.dirs[s].name.as_bytes())
            .chain(node.files.iter().map(|&f| self.files[f].name.as_bytes()))
            .collect();
        let shorts = short_names(&names);
        let kinds = node
            .subdirs
            .iter()
            .map(|&s| (ATTR_SUBDIRECTORY, 0u32, self.dirs[s].times))
            .chain(
                node.files
                    .iter()
                    .map(|&f| (ATTR_ARCHIVE, self.files[f].size as u32, self.files[f].times)),
            );
        for ((name, short), (attr, size, times)) in names.iter().zip(&shorts).zip(kinds) {
            let units = utf16_name(name)?;
            push_lfn(&mut table, &units, checksum(short));
            let mut e = [0u8; ENTRY_SIZE];
            e[..11].copy_from_slice(short);
            e[11] = attr;
            set_times(&mut e, &times);
            e[28..32].copy_from_slice(&size.to_le_bytes());
            table.push(e);
        }
        self.dirs[di].table = table;
        Ok(())
    }

    /// Write first cluster numbers into the short entries of directory
    /// `di`: `.` is the directory itself, `..` its parent (0 for the root,
    /// as FAT says), then its subdirectories and files in order.
    pub(super) fn set_clusters(&mut self, di: usize) {
        let node = &self.dirs[di];
        let parent = if node.parent == 0 {
            0
        } else {
            self.dirs[node.parent].first_cluster
        };
        let mut targets = node
            .subdirs
            .iter()
            .map(|&s| self.dirs[s].first_cluster)
            .chain(node.files.iter().map(|&f| self.files[f].first_cluster));
        let own = node.first_cluster;
        let mut clusters = Vec::with_capacity(node.table.len());
        for e in &node.table {
            let c = match (e[11], &e[..11]) {
                (ATTR_LFN | ATTR_VOLUME_LABEL, _) => None,
                (ATTR_SUBDIRECTORY, b".          ") if di != 0 => Some(own),
                (ATTR_SUBDIRECTORY, b"..         ") if di != 0 => Some(parent),
                _ => Some(targets.next().unwrap_or(0)),
            };
            clusters.push(c);
        }
        for (e, c) in self.dirs[di].table.iter_mut().zip(clusters) {
            if let Some(c) = c {
                e[20..22].copy_from_slice(&((c >> 16) as u16).to_le_bytes());
                e[26..28].copy_from_slice(&((c & 0xffff) as u16).to_le_bytes());
            }
        }
    }
}

/// Copy `s` into `out`, truncated or padded with spaces.
pub(super) fn pad(s: &[u8], out: &mut [u8]) {
    let n = s.len().min(out.len());
    out[..n].copy_from_slice(&s[..n]);
    out[n..].fill(b' ');
}

/// Whether a byte may appear in a short name as nbdkit builds them (lower
/// case is upper-cased afterwards; `~` is kept for renaming duplicates).
fn short_ok(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'()-@^_`{}".contains(&c)
}

/// The 8.3 names of the entries of one directory, in order: the leading
/// valid characters of the name (at most 8) and of what follows its last
/// dot (at most 3), upper-cased; `_` when no character of the base is
/// valid. A name equal to an earlier one gets
/// `~N` (N its position in the directory) over its end.
fn short_names(names: &[&[u8]]) -> Vec<[u8; 11]> {
    let mut out: Vec<[u8; 11]> = names
        .iter()
        .map(|name| {
            let mut s = [b' '; 11];
            let mut base: Vec<u8> = name.iter().copied().take_while(|c| short_ok(*c)).collect();
            if base.is_empty() {
                // nbdkit leaves the base blank here (for dot files and
                // names starting with other characters), which fsck
                // rejects: use `_`.
                base.push(b'_');
            }
            pad(&base[..base.len().min(8)], &mut s[..8]);
            if let Some(dot) = name.iter().rposition(|c| *c == b'.') {
                let ext: Vec<u8> = name[dot + 1..]
                    .iter()
                    .copied()
                    .take_while(|c| short_ok(*c))
                    .collect();
                pad(&ext[..ext.len().min(3)], &mut s[8..]);
            }
            s.make_ascii_uppercase();
            s
        })
        .collect();
    for i in 1..out.len() {
        for j in 0..i {
            if out[i] == out[j] {
                let tail = format!("~{i}");
                let tail = tail.as_bytes();
                let len = tail.len().min(8);
                // Back over trailing spaces, but keep at least the tail's
                // length before the end of the base.
                let mut k = 8 - len;
                while k > 0 && out[i][k] == b' ' {
                    k -= 1;
                }
                out[i][k..k + len].copy_from_slice(&tail[..len]);
            }
        }
    }
    out
}

/// The VFAT checksum of a short name, stored in its LFN entries.
fn checksum(short: &[u8; 11]) -> u8 {
    short
        .iter()
        .fold(0u8, |sum, &c| sum.rotate_right(1).wrapping_add(c))
}

/// A host file name (UTF-8) as UTF-16 units.
fn utf16_name(name: &[u8]) -> Result<Vec<u16>> {
    let shown = String::from_utf8_lossy(name);
    let s = std::str::from_utf8(name).map_err(|_| {
        Error::config(format!(
            "iconv: {shown}: Invalid or incomplete multibyte or wide character"
        ))
    })?;
    let units: Vec<u16> = s.encode_utf16().collect();
    if units.len() > MAX_LFN_UNITS {
        return Err(Error::config(format!("{shown}: filename is too long")));
    }
    Ok(units)
}

/// Append the LFN entries for a long name, last part first. As nbdkit
/// does, the name is padded with zero units (and a name whose length is a
/// multiple of 13 gets a final entry of zeroes).
fn push_lfn(table: &mut Vec<[u8; ENTRY_SIZE]>, units: &[u16], sum: u8) {
    let count = 1 + units.len() / 13;
    for seq in (1..=count).rev() {
        let mut part = [0u16; 13];
        let from = (seq - 1) * 13;
        for (k, p) in part.iter_mut().enumerate() {
            *p = units.get(from + k).copied().unwrap_or(0);
        }
        let mut e = [0u8; ENTRY_SIZE];
        e[0] = seq as u8 | if seq == count { 0x40 } else { 0 };
        e[11] = ATTR_LFN;
        e[13] = sum;
        let offsets = (0..5)
            .map(|k| 1 + 2 * k)
            .chain((0..6).map(|k| 14 + 2 * k))
            .chain((0..2).map(|k| 28 + 2 * k));
        for (unit, off) in part.iter().zip(offsets) {
            e[off..off + 2].copy_from_slice(&unit.to_le_bytes());
        }
        table.push(e);
    }
}

/// Local broken-down time of `t` as `(year - 1900, month 0-11, day,
/// hour, minute, second)`.
fn localtime(t: i64) -> (i32, i32, i32, i32, i32, i32) {
    match crate::os::localtime::localtime(t) {
        Some(tm) => (
            tm.tm_year, tm.tm_mon, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
        ),
        None => (80, 0, 1, 0, 0, 0),
    }
}

/// FAT time and date words (dates before 1980 wrap as nbdkit's do).
fn fat_time_date(t: i64) -> (u16, u16, u8) {
    let (year, mon, mday, hour, min, sec) = localtime(t);
    let time = ((hour << 11) | (min << 5) | (sec / 2)) as u16;
    let date = (((year - 80) << 9) | ((mon + 1) << 5) | mday) as u16;
    (time, date, (100 * (sec % 2)) as u8)
}

/// Fill the creation, modification and access fields of a short entry.
fn set_times(e: &mut [u8; ENTRY_SIZE], times: &Times) {
    let (ctime, cdate, c10ms) = fat_time_date(times.ctime);
    e[13] = c10ms;
    e[14..16].copy_from_slice(&ctime.to_le_bytes());
    e[16..18].copy_from_slice(&cdate.to_le_bytes());
    let (_, adate, _) = fat_time_date(times.atime);
    e[18..20].copy_from_slice(&adate.to_le_bytes());
    let (mtime, mdate, _) = fat_time_date(times.mtime);
    e[22..24].copy_from_slice(&mtime.to_le_bytes());
    e[24..26].copy_from_slice(&mdate.to_le_bytes());
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn short_names_follow_nbdkit() {
        let names: [&[u8]; 6] = [
            b"hello.txt",
            b"A_Very_Long_File_Name.bin",
            b"README",
            b"readme",
            b"a.b.tar.gz",
            b".bashrc",
        ];
        let s = short_names(&names);
        assert_eq!(&s[0], b"HELLO   TXT");
        assert_eq!(&s[1], b"A_VERY_LBIN");
        assert_eq!(&s[2], b"README     ");
        // A duplicate gets ~N over the end of its base.
        assert_eq!(&s[3], b"READM~3    ");
        assert_eq!(&s[4], b"A       GZ ");
        assert_eq!(&s[5], b"_       BAS");
    }

    #[test]
    fn lfn_entries_hold_the_name_last_part_first() {
        let units: Vec<u16> = "abcdefghijklmnop".encode_utf16().collect();
        let mut t = Vec::new();
        push_lfn(&mut t, &units, 0x5a);
        assert_eq!(t.len(), 2);
        assert_eq!(t[0][0], 0x42);
        assert_eq!(t[1][0], 0x01);
        assert_eq!(t[0][11], ATTR_LFN);
        assert_eq!(t[0][13], 0x5a);
        assert_eq!(&t[0][1..9], &[b'n', 0, b'o', 0, b'p', 0, 0, 0]);
        assert_eq!(&t[1][28..32], &[b'l', 0, b'm', 0]);
    }

    #[test]
    fn checksum_matches_the_vfat_definition() {
        // Reference value from the Microsoft FAT specification algorithm.
        let mut sum = 0u8;
        for &c in b"HELLO   TXT" {
            sum = ((sum & 1) << 7).wrapping_add(sum >> 1).wrapping_add(c);
        }
        assert_eq!(checksum(b"HELLO   TXT"), sum);
    }
}
