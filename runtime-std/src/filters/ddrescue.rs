//! The ddrescue filter: fail reads of the areas a GNU ddrescue mapfile
//! does not mark as rescued.
//!
//! Parameters:
//! - `ddrescue-mapfile=FILE`: the mapfile. Its block lines are `pos size
//!   status` (C integers, usually hex); only blocks with status `+` are
//!   good. A read touching any other byte fails with EIO. The export is
//!   read-only.

use std::path::PathBuf;
use std::sync::Arc;

use nbdkit_core::backend::{
    Context, Error, Filter, FilterHandle, Flags, NextOpener, OpenArgs, Result,
};
use nbdkit_core::errno::Errno;

/// The ddrescue filter.
#[derive(Debug, Default)]
pub struct Ddrescue {
    mapfile: Option<PathBuf>,
    /// Good ranges `(start, end)`, sorted and merged.
    good: Arc<Vec<(u64, u64)>>,
}

/// A C `%i` integer: optional sign, then decimal, `0x` hex or `0` octal.
fn parse_c_int(s: &str) -> Option<i64> {
    let (neg, t) = match s.strip_prefix('-') {
        Some(t) => (true, t),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let v = if let Some(h) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        i64::from_str_radix(h, 16).ok()?
    } else if t.len() > 1 && t.starts_with('0') {
        i64::from_str_radix(&t[1..], 8).ok()?
    } else {
        t.parse::<i64>().ok()?
    };
    Some(if neg { -v } else { v })
}

/// The good ranges of a mapfile, sorted and merged.
fn parse_map(text: &str) -> Result<Vec<(u64, u64)>> {
    let mut good = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let mut f = line.split_ascii_whitespace();
        let (Some(p), Some(s), Some(st)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        // The status line (`pos status [pass]`) fails here and is skipped.
        let (Some(pos), Some(size)) = (parse_c_int(p), parse_c_int(s)) else {
            continue;
        };
        if pos < 0 {
            return Err(Error::config("block offset must not be negative"));
        }
        if st.starts_with('+') && size > 0 {
            let start = pos as u64;
            good.push((start, start.saturating_add(size as u64)));
        }
    }
    good.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(good.len());
    for (s, e) in good {
        match merged.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    Ok(merged)
}

/// Whether `offset..offset+count` lies wholly inside one good range.
fn is_good(good: &[(u64, u64)], offset: u64, count: u64) -> bool {
    let i = good.partition_point(|r| r.0 <= offset);
    i > 0 && offset.saturating_add(count) <= good[i - 1].1
}

impl Filter for Ddrescue {
    fn name(&self) -> &'static str {
        "ddrescue"
    }

    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit ddrescue mapfile filter")
    }

    fn config_help(&self) -> &'static str {
        "ddrescue-mapfile=...     Specify ddrescue mapfile to use"
    }

    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        if key != "ddrescue-mapfile" {
            return Ok(false);
        }
        self.mapfile = Some(PathBuf::from(value));
        Ok(true)
    }

    fn config_complete(&mut self) -> Result<()> {
        let Some(file) = &self.mapfile else {
            return Ok(());
        };
        let text = std::fs::read(file).map_err(|e| {
            Error::config(format!(
                "{}: ddrescue: fopen: {}",
                file.display(),
                nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(0)).desc()
            ))
        })?;
        self.good = Arc::new(parse_map(&String::from_utf8_lossy(&text))?);
        Ok(())
    }

    fn blocks(&self) -> bool {
        false
    }

    fn open(
        &self,
        next: &mut dyn NextOpener,
        args: &OpenArgs<'_>,
    ) -> Result<Box<dyn FilterHandle>> {
        next.open(true, args.export_name)?;
        Ok(Box::new(Handle(Arc::clone(&self.good))))
    }
}

struct Handle(Arc<Vec<(u64, u64)>>);

impl FilterHandle for Handle {
    fn can_write(&self, _next: &Context) -> Result<bool> {
        Ok(false)
    }

    fn pread(&self, next: &Context, buf: &mut [u8], offset: u64, flags: Flags) -> Result<()> {
        if !is_good(&self.0, offset, buf.len() as u64) {
            return Err(Error::new(Errno::EIO));
        }
        next.pread(buf, offset, flags)
    }
}

#[cfg(test)]
mod test {
    use super::*;

    const MAP: &str = "# Mapfile. Created by GNU ddrescue\n\
        # current_pos  current_status  current_pass\n\
        0x00100000     +               1\n\
        #      pos        size  status\n\
        0x00000000  0x00100000  +\n\
        0x00100000  0x00001000  -\n\
        0x00101000  0x00eff000  +\n";

    #[test]
    fn reads_must_stay_in_good_blocks() {
        let g = parse_map(MAP).unwrap();
        assert_eq!(g, [(0, 0x100000), (0x101000, 0x1000000)]);
        assert!(is_good(&g, 0, 512));
        assert!(!is_good(&g, 0x100000, 512));
        assert!(!is_good(&g, 0xff000, 8192));
        assert!(is_good(&g, 0x101000, 512));
        assert!(!is_good(&g, 0xfffe00, 1024));
    }

    #[test]
    fn adjacent_good_blocks_merge() {
        let g = parse_map("0 0x10 +\n0x10 020 +\n").unwrap();
        assert_eq!(g, [(0, 0x20)]);
    }

    #[test]
    fn negative_offset_is_an_error() {
        assert_eq!(
            parse_map("-5 0x10 +\n").unwrap_err().to_string(),
            "block offset must not be negative"
        );
    }
}
