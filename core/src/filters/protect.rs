//! `protect`: refuse writes that would change protected ranges.
//!
//! Parameter: `protect=START-END` (inclusive; either end may be omitted)
//! or `protect=~START-END` (everything outside the range), repeatable.
//! Writes over a protected range succeed only if they do not change its
//! content; otherwise they fail with EPERM.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;

use super::params::parse_unsigned;
use crate::backend::{
    Context, Error, Filter, FilterHandle, Flags, NextOpener, OpenArgs, Result, EMULATION_CHUNK,
};
use crate::errno::Errno;

/// Bound on the number of ranges.
const MAX_RANGES: usize = 10_000;

#[derive(Debug, Clone)]
struct Range {
    /// Protected `start..=end`.
    start: u64,
    end: u64,
    /// As given, for messages.
    text: String,
}

/// The protect filter.
#[derive(Debug, Default)]
pub struct Protect {
    ranges: Arc<Vec<Range>>,
}

fn bound(what: &str, s: &str, default: u64) -> Result<u64> {
    if s.is_empty() {
        Ok(default)
    } else {
        parse_unsigned(what, s, u64::MAX)
    }
}

impl Filter for Protect {
    fn name(&self) -> &'static str {
        "protect"
    }
    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit protect filter")
    }
    fn config_help(&self) -> &'static str {
        "protect=<START>-<END>      Protect range of bytes START-END (inclusive)."
    }
    fn blocks(&self) -> bool {
        false
    }
    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        if key != "protect" {
            return Ok(false);
        }
        let (complement, r) = match value.strip_prefix('~') {
            Some(r) => (true, r),
            None => (false, value),
        };
        let Some((a, b)) = r.split_once('-') else {
            return Err(Error::config(format!(
                "cannot parse range, missing '-': {value}"
            )));
        };
        let start = bound("protect", a, 0)?;
        let end = bound("protect", b, u64::MAX)?;
        if end < start {
            return Err(Error::config(format!(
                "invalid range, end < start: {value}"
            )));
        }
        let ranges = Arc::make_mut(&mut self.ranges);
        if ranges.len() + 2 > MAX_RANGES {
            return Err(Error::config("too many protect ranges"));
        }
        let text = String::from(value);
        if complement {
            if start > 0 {
                ranges.push(Range {
                    start: 0,
                    end: start - 1,
                    text: text.clone(),
                });
            }
            if end < u64::MAX {
                ranges.push(Range {
                    start: end + 1,
                    end: u64::MAX,
                    text,
                });
            }
        } else {
            ranges.push(Range { start, end, text });
        }
        Ok(true)
    }
    fn open(
        &self,
        next: &mut dyn NextOpener,
        args: &OpenArgs<'_>,
    ) -> Result<Box<dyn FilterHandle>> {
        next.open(args.readonly, args.export_name)?;
        Ok(Box::new(ProtectHandle {
            ranges: Arc::new(merged(&self.ranges)),
            debug: crate::debug::enabled("protect", "write"),
        }))
    }
    fn debug_flags(&self) -> &'static [&'static str] {
        &["write"]
    }
}

/// The ranges in order, overlapping and adjacent ones run together (each
/// keeping the text of its first), as nbdkit lays them out.
fn merged(ranges: &[Range]) -> Vec<Range> {
    let mut sorted = ranges.to_vec();
    sort_by_start(&mut sorted);
    let mut out: Vec<Range> = Vec::with_capacity(sorted.len());
    for r in sorted {
        match out.last_mut() {
            Some(last) if last.end.saturating_add(1) >= r.start => {
                last.end = last.end.max(r.end);
            }
            _ => out.push(r),
        }
    }
    out
}

/// Sort by start, stably (a range keeps its place among those that start
/// at the same byte).
#[cfg(feature = "std")]
fn sort_by_start(ranges: &mut [Range]) {
    ranges.sort_by_key(|r| r.start);
}

/// Sort by start, stably, with an insertion sort: a device has few ranges,
/// and its flash keeps no general sort routine (some 3 KiB).
#[cfg(not(feature = "std"))]
fn sort_by_start(ranges: &mut [Range]) {
    for i in 1..ranges.len() {
        let at = ranges[..i].partition_point(|r| r.start <= ranges[i].start);
        ranges[at..=i].rotate_right(1);
    }
}

struct ProtectHandle {
    /// Sorted, not overlapping, not adjacent.
    ranges: Arc<Vec<Range>>,
    /// `-D protect.write=1`: say which regions a write checks.
    debug: bool,
}

impl ProtectHandle {
    /// Check that writing `data` (zeroes when `None`) over `count` bytes
    /// at `offset` changes no protected byte.
    fn check(&self, next: &Context, count: u64, offset: u64, data: Option<&[u8]>) -> Result<()> {
        if count == 0 {
            return Ok(());
        }
        let last = offset + count - 1;
        // Walk the write region by region (protected ranges and the gaps
        // between them), as nbdkit does.
        // The first byte not yet walked (none past the end of the space).
        let mut at = Some(offset);
        let first = self.ranges.partition_point(|r| r.end < offset);
        for r in self.ranges[first..].iter() {
            if r.start > last {
                break;
            }
            let from = r.start.max(offset);
            if let Some(a) = at.filter(|&a| a < from) {
                self.say("skipping unprotected region", a, from - a);
            }
            let to = r.end.min(last);
            self.say("checking protected region", from, to - from + 1);
            at = to.checked_add(1);
            // Compare in pieces, so that a large zero request does not
            // allocate a large buffer.
            let mut pos = from;
            let mut buf = vec![0u8; (to - from + 1).min(EMULATION_CHUNK) as usize];
            while pos <= to {
                let n = ((to - pos + 1) as usize).min(buf.len());
                next.pread(&mut buf[..n], pos, Flags::NONE)?;
                let same = match data {
                    Some(d) => {
                        let i = (pos - offset) as usize;
                        buf[..n] == d[i..i + n]
                    }
                    None => buf[..n].iter().all(|&b| b == 0),
                };
                if !same {
                    return Err(Error::msg(
                        Errno::EPERM,
                        format!(
                            "protect filter prevented write to protected range {}",
                            r.text
                        ),
                    ));
                }
                pos += n as u64;
            }
        }
        if let Some(a) = at.filter(|&a| a <= last) {
            self.say("skipping unprotected region", a, last - a + 1);
        }
        Ok(())
    }

    fn say(&self, what: &str, offset: u64, len: u64) {
        if self.debug {
            crate::debug::debug(format_args!("protect: {what} offset {offset} length {len}"));
        }
    }
}

impl FilterHandle for ProtectHandle {
    fn pwrite(&self, next: &Context, buf: &[u8], offset: u64, flags: Flags) -> Result<()> {
        self.check(next, buf.len() as u64, offset, Some(buf))?;
        next.pwrite(buf, offset, flags)
    }
    fn zero(&self, next: &Context, count: u64, offset: u64, flags: Flags) -> Result<()> {
        self.check(next, count, offset, None)?;
        next.zero(count, offset, flags)
    }
    fn trim(&self, next: &Context, count: u64, offset: u64, flags: Flags) -> Result<()> {
        // A trim may change the content: it is refused over any protected
        // range (that is not already zero).
        self.check(next, count, offset, None)?;
        next.trim(count, offset, flags)
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn ranges() {
        let mut f = Protect::default();
        assert!(f.config("protect", "5-2").is_err());
        assert!(f.config("protect", "5").is_err());
        assert!(f.config("protect", "-100").unwrap());
        assert!(f.config("protect", "~0x1000-").unwrap());
        assert_eq!(f.ranges.len(), 2);
        assert_eq!((f.ranges[1].start, f.ranges[1].end), (0, 0xfff));
    }
}
