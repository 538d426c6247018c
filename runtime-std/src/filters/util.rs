//! Small helpers shared by the filters of this folder: nbdkit's number and
//! boolean parsers (with its error wording), shell quoting, timestamps and
//! unlinked temporary files.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::PathBuf;

use nbdkit_core::backend::{Context, Error, Extents, Flags, Result};
use nbdkit_core::errno::Errno;

/// `nbdkit_parse_unsigned`: a decimal (or 0x hex, 0 octal) number that
/// fits in 32 bits, with nbdkit's messages.
pub(crate) fn parse_unsigned(what: &str, value: &str) -> Result<u32> {
    let v = parse_u64(what, value)?;
    u32::try_from(v).map_err(|_| range_error(what, value))
}

/// `nbdkit_parse_uint64_t`.
pub(crate) fn parse_u64(what: &str, value: &str) -> Result<u64> {
    let t = value.trim_start();
    if let Some(rest) = t.strip_prefix('-') {
        // strtoul accepts "-0"; nbdkit refuses every minus sign.
        if rest.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(Error::config(format!(
                "{what}: negative numbers are not allowed"
            )));
        }
        return Err(Error::config(format!(
            "{what}: empty string where we expected a number"
        )));
    }
    let t = t.strip_prefix('+').unwrap_or(t);
    let (digits, radix) = if let Some(h) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        (h, 16)
    } else if t.len() > 1 && t.starts_with('0') {
        (&t[1..], 8)
    } else {
        (t, 10)
    };
    let n = digits
        .bytes()
        .take_while(|b| (*b as char).is_digit(radix))
        .count();
    if n == 0 {
        if radix == 8 || (radix == 16 && !digits.is_empty()) {
            // "0" followed by garbage, or "0x" with no digits: strtoul
            // consumed the leading 0.
            return Err(garbage(what, value));
        }
        return Err(Error::config(format!(
            "{what}: empty string where we expected a number"
        )));
    }
    let v = u64::from_str_radix(&digits[..n], radix).map_err(|_| range_error(what, value))?;
    if n != digits.len() {
        return Err(garbage(what, value));
    }
    Ok(v)
}

fn garbage(what: &str, value: &str) -> Error {
    Error::config(format!(
        "{what}: could not parse number: \"{value}\": trailing garbage"
    ))
}

fn range_error(what: &str, value: &str) -> Error {
    Error::config(format!(
        "{what}: could not parse number: \"{value}\": Numerical result out of range"
    ))
}

/// `nbdkit_absolute_path` for a parameter that names a file the filter
/// opens later, after the server may have moved to `/` in the background.
pub(crate) fn absolute_path(value: &str) -> Result<PathBuf> {
    crate::process::absolute_path(value).map_err(Error::config)
}

/// `nbdkit_parse_bool`, with its message.
pub(crate) fn parse_bool(value: &str) -> Result<bool> {
    nbdkit_core::size::parse_bool(value)
        .ok_or_else(|| Error::config(format!("could not decipher boolean ({value})")))
}

/// A size parameter with nbdkit's messages.
pub(crate) fn parse_size(value: &str) -> Result<u64> {
    nbdkit_core::plugins::size_param(value)
}

/// Quote a string for the shell the way nbdkit's log filter does: always
/// in double quotes, with `$`, backquote, backslash and `"` escaped.
pub(crate) fn shell_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if matches!(c, '$' | '`' | '\\' | '"') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// The local time now as `YYYY-MM-DD HH:MM:SS.uuuuuu`.
pub(crate) fn timestamp() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let Some(tm) = crate::os::localtime::localtime(now.as_secs() as i64) else {
        return format!("{}.{:06}", now.as_secs(), now.subsec_micros());
    };
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:06}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec,
        now.subsec_micros()
    )
}

/// The directory for large temporary files: `$TMPDIR`, else `default`.
pub(crate) fn tmpdir(default: &str) -> PathBuf {
    crate::os::tmpfile::dir(default)
}

/// Create a temporary file in `tmpdir(default)` and unlink it at once, so
/// that it disappears with the process.
pub(crate) fn unlinked_tmpfile(default: &str, prefix: &str) -> Result<File> {
    let tmpl = tmpdir(default).join(format!("{prefix}XXXXXX"));
    crate::os::tmpfile::unlinked(&tmpl).map_err(|e| {
        Error::msg(
            crate::os::errno::from_os(e as i32),
            format!("mkostemp: {}: {}", tmpl.display(), e.desc()),
        )
    })
}

/// An I/O error as a filter error, with a message `what: error`.
pub(crate) fn io_error(what: &str, e: std::io::Error) -> Error {
    Error::msg(
        e.raw_os_error()
            .map(crate::os::errno::from_os)
            .unwrap_or(Errno::EIO),
        format!("{what}: {e}"),
    )
}

/// Punch a hole in `file` (best effort; returns whether it worked).
pub(crate) fn punch_hole(file: &File, offset: u64, len: u64) -> bool {
    use std::os::fd::AsFd;
    crate::os::fspace::punch_hole(file.as_fd(), offset as i64, len as i64).is_ok()
}

/// The most blocks a [`BlockMap`] may track (2 bits each: 1 GiB of map).
pub(crate) const MAX_BLOCKS: u64 = 1 << 32;

/// A map of 2-bit block states (0..=3), growable, all 0 at first.
#[derive(Debug, Default)]
pub(crate) struct BlockMap {
    bits: Vec<u8>,
    blocks: u64,
}

impl BlockMap {
    /// Make sure `blocks` blocks are tracked; fails with ENOMEM past
    /// [`MAX_BLOCKS`] or when memory runs out.
    pub(crate) fn grow(&mut self, blocks: u64) -> Result<()> {
        if blocks <= self.blocks {
            return Ok(());
        }
        if blocks > MAX_BLOCKS {
            return Err(Error::msg(Errno::ENOMEM, "block map: disk too large"));
        }
        let bytes = blocks.div_ceil(4) as usize;
        self.bits
            .try_reserve(bytes.saturating_sub(self.bits.len()))
            .map_err(|_| Error::msg(Errno::ENOMEM, "block map: out of memory"))?;
        self.bits.resize(bytes, 0);
        self.blocks = blocks;
        Ok(())
    }

    /// Number of blocks tracked.
    pub(crate) fn len(&self) -> u64 {
        self.blocks
    }

    /// The state of block `b` (0 past the end).
    pub(crate) fn get(&self, b: u64) -> u8 {
        if b >= self.blocks {
            return 0;
        }
        (self.bits[(b / 4) as usize] >> ((b % 4) * 2)) & 3
    }

    /// Set the state of block `b` (ignored past the end).
    pub(crate) fn set(&mut self, b: u64, v: u8) {
        if b >= self.blocks {
            return;
        }
        let byte = &mut self.bits[(b / 4) as usize];
        let shift = (b % 4) * 2;
        *byte = (*byte & !(3 << shift)) | ((v & 3) << shift);
    }
}

/// Split `count` bytes at `offset` into per-block pieces:
/// (block, offset within block, length, offset within the request).
pub(crate) fn pieces(
    offset: u64,
    count: u64,
    bs: u64,
) -> impl Iterator<Item = (u64, usize, usize, usize)> {
    let end = offset + count;
    let mut pos = offset;
    std::iter::from_fn(move || {
        if pos >= end {
            return None;
        }
        let b = pos / bs;
        let off = pos % bs;
        let len = (bs - off).min(end - pos);
        let item = (b, off as usize, len as usize, (pos - offset) as usize);
        pos += len;
        Some(item)
    })
}

/// Add the layer below's extents for `pos..end` to `extents`, clipped to
/// that range, with any part the layer below left out reported as data
/// (for filters that answer some ranges themselves: cow, cache).
pub(crate) fn extents_from_below(
    next: &Context,
    pos: u64,
    end: u64,
    flags: Flags,
    extents: &mut Extents,
) -> Result<()> {
    let mut sub = Extents::new(pos, end);
    next.extents(end - pos, pos, flags.without(Flags::REQ_ONE), &mut sub)?;
    let mut at = pos;
    for e in sub.as_slice() {
        let start = e.offset.max(at);
        let stop = (e.offset + e.length).min(end);
        if stop > start {
            extents.add(start, stop - start, e.flags)?;
            at = stop;
        }
    }
    if at < end {
        extents.add(at, end - at, 0)?;
    }
    Ok(())
}

/// Reads the layer below a filter as a seekable byte stream (for the
/// filters that decode a format: gzip, tar).
pub(crate) struct NextReader<'a> {
    next: &'a Context,
    pos: u64,
}

impl<'a> NextReader<'a> {
    /// A reader at the start of `next`.
    pub(crate) fn new(next: &'a Context) -> Self {
        NextReader { next, pos: 0 }
    }
}

impl Read for NextReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let size = self.next.get_size();
        let n = (size.saturating_sub(self.pos)).min(buf.len() as u64) as usize;
        if n == 0 {
            return Ok(0);
        }
        self.next
            .pread(&mut buf[..n], self.pos, Flags::NONE)
            .map_err(|e| io::Error::from_raw_os_error(crate::os::errno::to_os(e.errno)))?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for NextReader<'_> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let size = self.next.get_size() as i128;
        let p = match pos {
            SeekFrom::Start(p) => p as i128,
            SeekFrom::End(d) => size + d as i128,
            SeekFrom::Current(d) => self.pos as i128 + d as i128,
        };
        if p < 0 {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        self.pos = p.min(u64::MAX as i128) as u64;
        Ok(self.pos)
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn unsigned_messages() {
        assert_eq!(parse_unsigned("x", "12").unwrap(), 12);
        assert_eq!(parse_unsigned("x", "0x10").unwrap(), 16);
        let e = |v| parse_unsigned("limit", v).unwrap_err().to_string();
        assert_eq!(e("-1"), "limit: negative numbers are not allowed");
        assert_eq!(e("abc"), "limit: empty string where we expected a number");
        assert_eq!(e(""), "limit: empty string where we expected a number");
        assert_eq!(
            e("1.5"),
            "limit: could not parse number: \"1.5\": trailing garbage"
        );
        assert_eq!(
            e("99999999999"),
            "limit: could not parse number: \"99999999999\": Numerical result out of range"
        );
    }

    #[test]
    fn block_map() {
        let mut m = BlockMap::default();
        m.grow(10).unwrap();
        m.set(5, 2);
        m.set(6, 3);
        assert_eq!((m.get(4), m.get(5), m.get(6), m.get(99)), (0, 2, 3, 0));
        m.grow(100).unwrap();
        assert_eq!(m.get(6), 3);
        assert!(m.grow(MAX_BLOCKS + 1).is_err());
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote(""), "\"\"");
        assert_eq!(shell_quote("a$b\"c"), "\"a\\$b\\\"c\"");
    }

    #[test]
    fn timestamp_shape() {
        let t = timestamp();
        assert_eq!(t.len(), 26, "{t}");
        assert_eq!(&t[4..5], "-");
        assert_eq!(&t[19..20], ".");
    }
}
