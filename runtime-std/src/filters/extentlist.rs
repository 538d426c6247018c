//! The extentlist filter: replace the extents of the layer below with a
//! static list read from a file.
//!
//! Parameters:
//! - `extentlist=FILE` (required): one extent a line, `offset length
//!   [type]`, where offset and length are sizes (`1M`) and type is a
//!   number or a comma-separated list of `hole` and `zero` (default 0,
//!   data). Extents must not overlap; gaps, and everything past the last
//!   extent, are holes that read as zeroes.

use std::path::PathBuf;

use nbdkit_core::backend::{
    Context, Error, Extents, Filter, FilterHandle, Flags, NextOpener, OpenArgs, Result,
};
use nbdkit_core::errno::Errno;

use super::util::parse_size;

const HOLE: u32 = 1;
const ZERO: u32 = 2;

/// One extent of the list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    offset: u64,
    length: u64,
    kind: u32,
}

/// The extentlist filter.
#[derive(Debug, Default)]
pub struct ExtentList {
    file: Option<PathBuf>,
    /// Sorted, contiguous from 0, the last one running to `u64::MAX`.
    list: std::sync::Arc<Vec<Entry>>,
}

/// The type field: a C integer (`strtoul`, keeping the low bits) or words.
fn parse_type(s: &str) -> u32 {
    if s.starts_with(|c: char| c.is_ascii_digit() || c == '-' || c == '+') {
        let (neg, t) = match s.strip_prefix('-') {
            Some(t) => (true, t),
            None => (false, s.trim_start_matches('+')),
        };
        let (digits, radix) = if let Some(h) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X"))
        {
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
        let v = u64::from_str_radix(&digits[..n], radix).unwrap_or(u64::MAX);
        let v = if neg { v.wrapping_neg() } else { v };
        return (v as u32) & (HOLE | ZERO);
    }
    s.split(',').fold(0, |acc, w| match w {
        "hole" => acc | HOLE,
        "zero" => acc | ZERO,
        _ => acc,
    })
}

/// Parse the file's text into a sorted, gap-free list.
fn parse_list(name: &str, text: &str) -> Result<Vec<Entry>> {
    let mut list = Vec::new();
    for line in text.lines() {
        let mut f = line.split_ascii_whitespace();
        let (Some(o), Some(l)) = (f.next(), f.next()) else {
            return Err(Error::config(format!("{name}: cannot parse {line}")));
        };
        let offset = parse_size(o)?;
        let length = parse_size(l)?;
        let kind = f.next().map(parse_type).unwrap_or(0);
        if length > 0 {
            list.push(Entry {
                offset,
                length,
                kind,
            });
        }
    }
    list.sort_by_key(|e| e.offset);
    let mut out: Vec<Entry> = Vec::with_capacity(list.len() * 2 + 1);
    let mut pos = 0u64;
    for e in list {
        if e.offset < pos {
            return Err(Error::config("extents in the extent list are overlapping"));
        }
        if e.offset > pos {
            out.push(Entry {
                offset: pos,
                length: e.offset - pos,
                kind: HOLE | ZERO,
            });
        }
        out.push(e);
        pos = e.offset.saturating_add(e.length);
    }
    if pos < u64::MAX {
        out.push(Entry {
            offset: pos,
            length: u64::MAX - pos,
            kind: HOLE | ZERO,
        });
    }
    Ok(out)
}

impl Filter for ExtentList {
    fn name(&self) -> &'static str {
        "extentlist"
    }

    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit extentlist filter")
    }

    fn config_help(&self) -> &'static str {
        "extentlist=<FILENAME>  (required) File containing extents."
    }

    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        if key != "extentlist" {
            return Ok(false);
        }
        self.file = Some(PathBuf::from(value));
        Ok(true)
    }

    fn config_complete(&mut self) -> Result<()> {
        let Some(file) = &self.file else {
            return Err(Error::config(
                "you must supply the extentlist parameter on the command line",
            ));
        };
        let text = std::fs::read(file).map_err(|e| {
            Error::config(format!(
                "open: {}: {}",
                file.display(),
                nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(0)).desc()
            ))
        })?;
        let text = String::from_utf8_lossy(&text);
        let list = parse_list(&file.display().to_string(), &text)?;
        self.list = std::sync::Arc::new(list);
        Ok(())
    }

    fn blocks(&self) -> bool {
        false
    }

    fn debug_flags(&self) -> &'static [&'static str] {
        &["lookup"]
    }

    fn get_ready(&self, _thread_model: nbdkit_core::backend::ThreadModel) -> Result<()> {
        // nbdkit reads the list here, and shows it.
        for (i, e) in self.list.iter().enumerate() {
            crate::log::debug(
                None,
                format_args!(
                    "extentlist: extent[{i}] = {}-{} (length {}) type {}",
                    e.offset,
                    e.offset + (e.length - 1),
                    e.length,
                    e.kind
                ),
            );
        }
        Ok(())
    }

    fn open(
        &self,
        next: &mut dyn NextOpener,
        args: &OpenArgs<'_>,
    ) -> Result<Box<dyn FilterHandle>> {
        next.open(args.readonly, args.export_name)?;
        Ok(Box::new(Handle(
            std::sync::Arc::clone(&self.list),
            nbdkit_core::debug::enabled("extentlist", "lookup"),
        )))
    }
}

/// The list, and whether `-D extentlist.lookup=1` was given.
struct Handle(std::sync::Arc<Vec<Entry>>, bool);

impl FilterHandle for Handle {
    fn can_extents(&self, _next: &Context) -> Result<bool> {
        Ok(true)
    }

    fn extents(
        &self,
        _next: &Context,
        count: u64,
        offset: u64,
        _flags: Flags,
        extents: &mut Extents,
    ) -> Result<()> {
        let end = offset.saturating_add(count);
        // The entry containing `offset`: the last one starting at or before it.
        let first = self
            .0
            .partition_point(|e| e.offset <= offset)
            .saturating_sub(1);
        let (mut left, mut at) = (count, offset);
        for (i, e) in self.0[first..].iter().enumerate() {
            if e.offset >= end || extents.is_full() {
                break;
            }
            if self.1 {
                crate::log::debug(
                    None,
                    format_args!(
                        "extentlist lookup: loop i={} count={left} offset={at}",
                        first + i
                    ),
                );
                let e_end = e.offset.saturating_add(e.length);
                left -= left.min(e_end - at);
                at = e_end;
            }
            extents
                .add(e.offset, e.length, e.kind)
                .map_err(|e| Error::msg(Errno::EIO, format!("extentlist: {e}")))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn gaps_become_holes_and_order_does_not_matter() {
        let l = parse_list("f", "4M 1M 0\n0 1M zero\n  1M   1M   1\n").unwrap();
        let got: Vec<_> = l.iter().map(|e| (e.offset >> 20, e.kind)).collect();
        assert_eq!(got, [(0, 2), (1, 1), (2, 3), (4, 0), (5, 3)]);
        assert_eq!(
            l.last().unwrap().offset + l.last().unwrap().length,
            u64::MAX
        );
    }

    #[test]
    fn overlap_and_short_lines_are_errors() {
        assert_eq!(
            parse_list("f", "0 1M\n512K 1M hole\n")
                .unwrap_err()
                .to_string(),
            "extents in the extent list are overlapping"
        );
        assert_eq!(
            parse_list("f", "0 1M 5\n1M\n").unwrap_err().to_string(),
            "f: cannot parse 1M"
        );
    }

    #[test]
    fn type_field() {
        assert_eq!(parse_type("hole,zero"), 3);
        assert_eq!(parse_type("hole,foo"), 1);
        assert_eq!(parse_type("foo"), 0);
        assert_eq!(parse_type("5"), 1);
        assert_eq!(parse_type("-1"), 3);
    }
}
