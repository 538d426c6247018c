//! The arguments scripts are given and the parsers of what they print.

use super::*;
use std::ffi::{OsStr, OsString};
use std::path::Path;

use nbdkit_core::backend::{Error, Extents, Flags, Result, Support};
use nbdkit_core::errno::Errno;
use nbdkit_core::plugins::size_param;

use crate::log;

/// `true`/`false` as scripts see booleans.
pub(super) fn tf(b: bool) -> &'static OsStr {
    OsStr::new(if b { "true" } else { "false" })
}

/// The flags argument: a comma-separated list, possibly empty.
pub(super) fn flags_arg(flags: Flags) -> OsString {
    let mut words = Vec::new();
    if flags.contains(Flags::FUA) {
        words.push("fua");
    }
    if flags.contains(Flags::MAY_TRIM) {
        words.push("may_trim");
    }
    if flags.contains(Flags::REQ_ONE) {
        words.push("req_one");
    }
    if flags.contains(Flags::FAST_ZERO) {
        words.push("fast");
    }
    OsString::from(words.join(","))
}

/// Parse a size that a script printed, logging nbdkit's parse error.
pub(super) fn parse_script_size(s: &str) -> Option<u64> {
    match size_param(s) {
        Ok(n) => Some(n),
        Err(e) => {
            log::error(None, &e.to_string());
            None
        }
    }
}

/// The complete lines of `out` (an unterminated last line is ignored,
/// as nbdkit does for export lists).
pub(super) fn complete_lines(out: &[u8]) -> Vec<&[u8]> {
    let mut lines: Vec<&[u8]> = out.split(|c| *c == b'\n').collect();
    lines.pop(); // what follows the last newline
    lines
}

/// How an export list is laid out (its optional first line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ListMode {
    Names,
    Interleaved,
    NamesDescriptions,
}

/// The mode named by the first line, and the rest of the output.
pub(super) fn list_mode(out: &[u8]) -> (ListMode, &[u8]) {
    for (head, mode) in [
        (&b"INTERLEAVED\n"[..], ListMode::Interleaved),
        (&b"NAMES+DESCRIPTIONS\n"[..], ListMode::NamesDescriptions),
        (&b"NAMES\n"[..], ListMode::Names),
    ] {
        if let Some(rest) = out.strip_prefix(head) {
            return (mode, rest);
        }
    }
    (ListMode::Names, out)
}

/// Parse `list_exports` output into names and descriptions.
pub(crate) fn parse_exports(out: &[u8]) -> Vec<(String, Option<String>)> {
    let (mode, rest) = list_mode(out);
    let lines = complete_lines(rest);
    let text = |l: &[u8]| String::from_utf8_lossy(l).into_owned();
    match mode {
        ListMode::Names => lines.iter().map(|l| (text(l), None)).collect(),
        ListMode::Interleaved => lines
            .chunks(2)
            .map(|p| (text(p[0]), p.get(1).map(|d| text(d))))
            .collect(),
        ListMode::NamesDescriptions => {
            let names = lines.len().div_ceil(2);
            (0..names)
                .map(|i| (text(lines[i]), lines.get(names + i).map(|d| text(d))))
                .collect()
        }
    }
}

/// Parse `default_export` output: the first name listed, or `""`.
pub(crate) fn parse_default_export(out: &[u8]) -> String {
    let (_, rest) = list_mode(out);
    let first = rest.split(|c| *c == b'\n').next().unwrap_or_default();
    String::from_utf8_lossy(first).into_owned()
}

/// Parse `extents` output: `offset length [type]` lines, where type is a
/// number or a comma-separated list of `hole` and `zero`.
pub(crate) fn parse_extents(argv0: &Path, out: &[u8]) -> Result<Vec<(u64, u64, u32)>> {
    let mut lines: Vec<&[u8]> = out.split(|c| *c == b'\n').collect();
    if lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    let mut list = Vec::with_capacity(lines.len().min(Extents::MAX));
    for line in lines {
        let text = String::from_utf8_lossy(line);
        let cannot = || protocol_error(argv0, format_args!("extents: cannot parse {text}"));
        let mut words = text.split([' ', '\t']).filter(|w| !w.is_empty());
        let (Some(off), Some(len)) = (words.next(), words.next()) else {
            return Err(cannot());
        };
        // A bad size is reported by the size parser alone, as in nbdkit.
        let size = |w: &str| {
            size_param(w).map_err(|e| Error {
                errno: Errno::EIO,
                ..e
            })
        };
        let offset = size(off)?;
        let length = size(len)?;
        let flags = match words.next() {
            None => 0,
            Some(t) if t.bytes().all(|c| c.is_ascii_digit()) => {
                (t.parse::<u64>().unwrap_or(0) & 3) as u32
            }
            Some(t) => t.split(',').fold(0, |f, w| match w {
                "hole" => f | 1,
                "zero" => f | 2,
                _ => f,
            }),
        };
        if list.len() >= Extents::MAX {
            break;
        }
        list.push((offset, length, flags));
    }
    Ok(list)
}

/// Parse a `can_fua`/`can_cache` answer.
pub(super) fn parse_support(s: &str) -> Option<Support> {
    Some(match s.to_ascii_lowercase().as_str() {
        "none" => Support::None,
        "emulate" => Support::Emulate,
        "native" => Support::Native,
        _ => return None,
    })
}
