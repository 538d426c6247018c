//! `data`: serve data given on the command line, as a writable RAM disk.
//!
//! Parameters: exactly one of `[data=]EXPR` (the format language below),
//! `raw=BYTES` or `base64=TEXT`; `size=SIZE` (truncate or zero-extend the
//! data; default the size of the data); `allocator=sparse` (default) or
//! `allocator=malloc`. Any other `KEY=VALUE` defines a variable for
//! `$KEY` in the expression (it is an error without `data=`).
//!
//! The language (nbdkit-data-plugin(1), "DATA FORMAT"): bytes in C
//! notation (`0x55`, `010`, `17`), `"strings"` with C escapes,
//! `le16:`/`be16:`/`le32:`/`be32:`/`le64:`/`be64:` words, `@OFFSET`,
//! `@+N`, `@-N`, `@^ALIGNMENT`, `<FILE`, `<(SHELL SCRIPT)`, `( ... )`
//! groups, `EXPR*N` repeats, `EXPR[N:M]` slices, `EXPR -> \NAME`
//! assignments and `\NAME` references (scoped to the enclosing group),
//! `$VAR` (a parameter or environment variable, parsed as a group), and
//! `#` comments. Writes past the current size extend it, later writes
//! overwrite earlier ones, and a group overwrites its whole extent
//! (including its zeroes) where it lands.
//!
//! Evaluation is bounded: bytes past `size=` are never stored, repeats
//! stop once they pass it, and the total work (bytes copied plus steps
//! taken) is capped at [`MAX_WORK`], beyond which the expression is
//! refused rather than exhausting memory.

use std::io::Read;
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::sync::{Arc, PoisonError, RwLock};

use nbdkit_core::backend::{Error, Extents, Handle, OpenArgs, Plugin, Result};
use nbdkit_core::errno::Errno;
use nbdkit_core::plugins::memory::{Backing, MemoryHandle, Store};
use nbdkit_core::plugins::random::parse_unsigned;
use nbdkit_core::plugins::size_param;

use super::info::decode_base64;

mod image;
use image::Image;

/// The most work (bytes stored or copied, plus evaluation steps) an
/// expression may take.
pub const MAX_WORK: u64 = 1 << 30;

/// How deeply groups and variables may nest.
const MAX_DEPTH: usize = 100;

/// The largest size nbdkit serves.
const MAX_SIZE: u64 = i64::MAX as u64;

// ---------------------------------------------------------------------------
// Syntax

/// One element of an expression (nbdkit's AST, before and after
/// [`optimize`]).
#[derive(Debug, Clone, PartialEq)]
enum Expr {
    /// Nothing (a repeat by 0, an empty slice).
    Null,
    /// A number: one byte.
    Byte(u8),
    /// A `"string"` or a `le32:`-style word.
    Str(Vec<u8>),
    /// One byte repeated (made by the optimizer).
    Fill(u8, u64),
    /// `@N`.
    AbsOffset(u64),
    /// `@+N`, `@-N`.
    RelOffset(i64),
    /// `@^N`.
    Align(u64),
    /// `<FILE`.
    File(String),
    /// `<(SCRIPT)`.
    Script(String),
    /// `( ... )` or `$VAR`.
    List(Vec<Expr>),
    /// `\NAME`.
    Name(String),
    /// `EXPR -> \NAME`.
    Assign(String, Box<Expr>),
    /// `EXPR*N`.
    Repeat(Box<Expr>, u64),
    /// `EXPR[N:M]`; a negative end means the end of the expression.
    Slice(Box<Expr>, u64, i64),
}

impl Expr {
    fn is_data(&self) -> bool {
        !matches!(
            self,
            Expr::AbsOffset(_) | Expr::RelOffset(_) | Expr::Align(_)
        )
    }
}

fn err(msg: impl Into<String>) -> Error {
    Error::config(msg)
}

fn parse_error(i: usize) -> Error {
    err(format!("data parameter: parsing error at offset {i}"))
}

/// C's `strtol`/`scanf("%i")`: optional whitespace and sign, then a hex
/// (`0x`), octal (`0`) or decimal number. Returns the value (saturated)
/// and the bytes consumed, or `None` when there are no digits.
fn scan_int(s: &[u8]) -> Option<(i128, usize)> {
    let mut i = 0;
    while i < s.len() && s[i].is_ascii_whitespace() {
        i += 1;
    }
    let mut neg = false;
    if i < s.len() && (s[i] == b'+' || s[i] == b'-') {
        neg = s[i] == b'-';
        i += 1;
    }
    let mut radix = 10;
    let start = i;
    if s.get(i) == Some(&b'0') {
        if matches!(s.get(i + 1), Some(b'x' | b'X')) {
            // glibc's scanf takes "0x" even when no hex digit follows
            // (the value is then 0).
            radix = 16;
            i += 2;
        } else {
            radix = 8;
        }
    }
    let mut v: i128 = 0;
    while let Some(d) = s.get(i).and_then(|&c| (c as char).to_digit(radix)) {
        v = (v * i128::from(radix) + i128::from(d)).min(1 << 100);
        i += 1;
    }
    if i == start {
        return None;
    }
    Some((if neg { -v } else { v }, i))
}

/// Saturate to i64, as `SCNi64` does.
fn sat64(v: i128) -> i64 {
    v.clamp(i64::MIN.into(), i64::MAX.into()) as i64
}

/// Where the parser looks up `$VAR`.
trait Vars {
    fn get(&self, name: &str) -> Option<String>;
}

struct Parser<'v> {
    vars: &'v dyn Vars,
}

impl Parser<'_> {
    /// Parse `s` from `*pos` to the end, or, `in_group`, to the `)` that
    /// closes the group.
    fn list(&self, s: &[u8], pos: &mut usize, depth: usize, in_group: bool) -> Result<Vec<Expr>> {
        if depth > MAX_DEPTH {
            return Err(err("data parameter: expression is nested too deeply"));
        }
        let len = s.len();
        let mut list: Vec<Expr> = Vec::new();
        let mut i = *pos;
        // Take the last element for a postfix operator.
        fn last(list: &mut Vec<Expr>, what: &str) -> Result<Expr> {
            match list.pop() {
                None => Err(err(format!("{what} must follow an expression"))),
                Some(e) if !e.is_data() => Err(err(format!(
                    "{what} cannot be applied to this type of expression"
                ))),
                Some(e) => Ok(e),
            }
        }
        while i < len {
            match s[i] {
                b'#' => {
                    while i < len && s[i] != b'\n' {
                        i += 1;
                    }
                }
                b'@' => {
                    i += 1;
                    if i == len {
                        return Err(parse_error(i));
                    }
                    let c = s[i];
                    let kind = match c {
                        b'+' | b'-' | b'^' => {
                            i += 1;
                            if i == len {
                                return Err(parse_error(i));
                            }
                            c
                        }
                        b'0'..=b'9' => b'=',
                        _ => return Err(parse_error(i)),
                    };
                    let (v, n) = scan_int(&s[i..]).ok_or_else(|| parse_error(i))?;
                    let v = sat64(v);
                    if v < 0 {
                        return Err(err(match kind {
                            b'+' => "data parameter after @+ must not be negative".into(),
                            b'-' => "data parameter after @- must not be negative".into(),
                            b'^' => "data parameter after @^ must not be negative".into(),
                            _ => String::from("data parameter @OFFSET must not be negative"),
                        }));
                    }
                    i += n;
                    list.push(match kind {
                        b'+' => Expr::RelOffset(v),
                        b'-' => Expr::RelOffset(-v),
                        b'^' => {
                            if !(v as u64).is_power_of_two() {
                                return Err(err(format!(
                                    "data parameter @^{v} must be a power of 2"
                                )));
                            }
                            Expr::Align(v as u64)
                        }
                        _ => Expr::AbsOffset(v as u64),
                    });
                }
                b'(' => {
                    i += 1;
                    let inner = self.list(s, &mut i, depth + 1, true)?;
                    list.push(Expr::List(inner));
                }
                b')' => {
                    if !in_group {
                        return Err(err("unmatched ')' in data string"));
                    }
                    *pos = i + 1;
                    return Ok(list);
                }
                b'*' => {
                    i += 1;
                    let e = last(&mut list, "*N")?;
                    let (v, n) = scan_int(&s[i..]).ok_or_else(|| err("*N not numeric"))?;
                    let v = sat64(v);
                    if v < 0 {
                        return Err(err("data parameter @OFFSET must not be negative"));
                    }
                    i += n;
                    list.push(Expr::Repeat(Box::new(e), v as u64));
                }
                b'[' => {
                    i += 1;
                    let e = last(&mut list, "[N:M]")?;
                    let (n, m, used) = scan_slice(&s[i..])
                        .ok_or_else(|| err("enclosed pattern (...)[N:M] not numeric"))?;
                    i += used;
                    list.push(Expr::Slice(Box::new(e), n as u64, m));
                }
                b'<' => {
                    if s.get(i + 1) == Some(&b'(') {
                        i += 2;
                        let mut lvl = 0usize;
                        let mut j = i;
                        while j < len {
                            match s[j] {
                                b'(' => lvl += 1,
                                b')' if lvl > 0 => lvl -= 1,
                                b')' => break,
                                _ => {}
                            }
                            j += 1;
                        }
                        if j >= len || j == i {
                            return Err(parse_error(i));
                        }
                        list.push(Expr::Script(String::from_utf8_lossy(&s[i..j]).into_owned()));
                        i = j + 1;
                    } else {
                        i += 1;
                        let n = s[i..]
                            .iter()
                            .position(|c| b"*[) \t\n".contains(c))
                            .unwrap_or(len - i);
                        if n == 0 {
                            return Err(err("data parameter <FILE not a filename"));
                        }
                        list.push(Expr::File(
                            String::from_utf8_lossy(&s[i..i + n]).into_owned(),
                        ));
                        i += n;
                    }
                }
                b'"' => {
                    i += 1;
                    let bytes = parse_string(s, &mut i)?;
                    list.push(Expr::Str(bytes));
                }
                b'\\' => {
                    let (start, n) = get_name(s, i);
                    if n == 0 {
                        return Err(parse_error(start));
                    }
                    list.push(Expr::Name(
                        String::from_utf8_lossy(&s[start..start + n]).into_owned(),
                    ));
                    i = start + n;
                }
                b'-' => {
                    i += 1;
                    if s.get(i) != Some(&b'>') {
                        return Err(parse_error(i));
                    }
                    i += 1;
                    let e = last(&mut list, "->")?;
                    let (start, n) = get_name(s, i);
                    if n == 0 {
                        return Err(parse_error(start));
                    }
                    let name = String::from_utf8_lossy(&s[start..start + n]).into_owned();
                    list.push(Expr::Assign(name, Box::new(e)));
                    i = start + n;
                }
                b'$' => {
                    let (start, n) = get_var(s, i);
                    if n == 0 {
                        return Err(parse_error(start));
                    }
                    let name = String::from_utf8_lossy(&s[start..start + n]).into_owned();
                    i = start + n;
                    let content = self
                        .vars
                        .get(&name)
                        .ok_or_else(|| err(format!("${name}: variable not found")))?;
                    let mut ci = 0;
                    // A variable is parsed on its own, as a top-level list.
                    let inner = self.list(content.as_bytes(), &mut ci, depth + 1, false)?;
                    list.push(Expr::List(inner));
                }
                b'0'..=b'9' => {
                    let (v, n) = scan_int(&s[i..]).ok_or_else(|| parse_error(i))?;
                    // scanf("%i") into an int: out of range values wrap
                    // negative or stay large; both are refused.
                    if !(0..=255).contains(&v) {
                        return Err(err("data parameter BYTE must be in the range 0..255"));
                    }
                    i += n;
                    list.push(Expr::Byte(v as u8));
                }
                b'l' | b'b' => {
                    let start = i;
                    while i < len && !s[i].is_ascii_whitespace() {
                        i += 1;
                    }
                    list.push(Expr::Str(parse_word(&s[start..i], i)?));
                }
                b' ' | b'\t' | b'\n' | b'\x0c' | b'\r' | b'\x0b' => i += 1,
                _ => return Err(parse_error(i)),
            }
        }
        if in_group {
            return Err(err("unmatched '(' in data string"));
        }
        *pos = i;
        Ok(list)
    }
}

// ---------------------------------------------------------------------------
// Optimization: nbdkit simplifies the expression before evaluating it, and
// the result decides which parts are written (allocating their pages) and
// which are copied or zeroed, which block status shows. The same rules are
// applied here.

/// Whether `e` may be moved into the enclosing list (offsets and names are
/// scoped to their list).
fn safe_to_inline(e: &Expr) -> bool {
    !matches!(
        e,
        Expr::Assign(..) | Expr::Name(_) | Expr::AbsOffset(_) | Expr::RelOffset(_) | Expr::Align(_)
    )
}

/// The byte, if `e` is one byte.
fn single_byte(e: &Expr) -> Option<u8> {
    match e {
        Expr::Byte(b) => Some(*b),
        Expr::List(l) if l.len() == 1 => single_byte(&l[0]),
        Expr::Str(s) if s.len() == 1 => Some(s[0]),
        Expr::Fill(b, 1) => Some(*b),
        Expr::Repeat(e, 1) => single_byte(e),
        _ => None,
    }
}

/// Merge `next` into `last` when two neighbours make one string or fill.
fn combine(last: &mut Expr, next: &Expr) -> bool {
    let merged = match (&mut *last, next) {
        (Expr::Byte(a), Expr::Byte(b)) if a == b => Expr::Fill(*a, 2),
        (Expr::Byte(a), Expr::Byte(b)) => Expr::Str(vec![*a, *b]),
        (Expr::Byte(a), Expr::Str(t)) => {
            let mut v = Vec::with_capacity(t.len() + 1);
            v.push(*a);
            v.extend_from_slice(t);
            Expr::Str(v)
        }
        (Expr::Byte(a), Expr::Fill(b, n)) if a == b => Expr::Fill(*b, n.saturating_add(1)),
        (Expr::Str(v), Expr::Byte(b)) => {
            v.push(*b);
            return true;
        }
        (Expr::Str(v), Expr::Str(t)) => {
            v.extend_from_slice(t);
            return true;
        }
        (Expr::Fill(a, n), Expr::Byte(b)) if a == b => {
            *n = n.saturating_add(1);
            return true;
        }
        (Expr::Fill(a, n), Expr::Fill(b, m)) if a == b => {
            *n = n.saturating_add(*m);
            return true;
        }
        _ => return false,
    };
    *last = merged;
    true
}

/// nbdkit's simplifications of the expression tree.
fn optimize(e: Expr) -> Expr {
    match e {
        Expr::List(items) => {
            let mut list: Vec<Expr> = Vec::with_capacity(items.len());
            for item in items {
                match optimize(item) {
                    Expr::Null => {}
                    Expr::List(inner) if inner.iter().all(safe_to_inline) => {
                        for e in inner {
                            push_combined(&mut list, e);
                        }
                    }
                    other => push_combined(&mut list, other),
                }
            }
            match list.len() {
                0 => Expr::Null,
                1 if safe_to_inline(&list[0]) => list.pop().expect("one element"),
                _ => Expr::List(list),
            }
        }
        Expr::Assign(name, e) => Expr::Assign(name, Box::new(optimize(*e))),
        Expr::Repeat(_, 0) => Expr::Null,
        Expr::Repeat(e, n) => {
            let inner = optimize(*e);
            match inner {
                inner if n == 1 || inner == Expr::Null => inner,
                Expr::Repeat(e, m) => Expr::Repeat(e, n.saturating_mul(m)),
                Expr::Fill(b, m) => Expr::Fill(b, n.saturating_mul(m)),
                Expr::Str(s) if n <= 4 && s.len() <= 512 => Expr::Str(s.repeat(n as usize)),
                inner => match single_byte(&inner) {
                    Some(b) => Expr::Fill(b, n),
                    None => Expr::Repeat(Box::new(inner), n),
                },
            }
        }
        // nbdkit compares the unsigned start with the signed end.
        Expr::Slice(_, n, m) if n == m as u64 => Expr::Null,
        Expr::Slice(e, n, m) => {
            let inner = optimize(*e);
            let whole = n == 0 && m == -1;
            // A slice of a constant, when valid, is a shorter constant.
            let sub = |len: u64| -> Option<(u64, u64)> {
                if m >= 0 && n <= m as u64 && m as u64 <= len {
                    Some((n, m as u64))
                } else if m == -1 && n <= len {
                    Some((n, len))
                } else {
                    None
                }
            };
            match &inner {
                Expr::Null if m == 0 || whole => return Expr::Null,
                Expr::Byte(b) if m == 1 || whole => return Expr::Byte(*b),
                Expr::Str(s) => {
                    if let Some((a, z)) = sub(s.len() as u64) {
                        return if z - a == 1 {
                            Expr::Byte(s[a as usize])
                        } else {
                            Expr::Str(s[a as usize..z as usize].to_vec())
                        };
                    }
                }
                Expr::Fill(b, len) => {
                    if let Some((a, z)) = sub(*len) {
                        return if z - a == 1 {
                            Expr::Byte(*b)
                        } else {
                            Expr::Fill(*b, z - a)
                        };
                    }
                }
                _ => {}
            }
            Expr::Slice(Box::new(inner), n, m)
        }
        Expr::Str(s) if s.is_empty() => Expr::Null,
        Expr::Str(s) if s.len() > 1 && s.iter().all(|&b| b == s[0]) => {
            Expr::Fill(s[0], s.len() as u64)
        }
        Expr::Fill(_, 0) => Expr::Null,
        e => e,
    }
}

/// Print the tree as nbdkit's `-D data.AST=1` does, one debug line per
/// node, indented four spaces a level (at most forty).
fn print_ast(e: &Expr, level: usize) {
    let ind = " ".repeat(4 * level.min(10));
    let line = |args: std::fmt::Arguments<'_>| crate::log::debug(None, args);
    let nested = |inner: &Expr, close: std::fmt::Arguments<'_>| {
        line(format_args!("{ind}("));
        print_ast(inner, level + 1);
        line(format_args!("{ind}{close}"));
    };
    match e {
        Expr::Null => line(format_args!("{ind}null")),
        Expr::List(l) => {
            line(format_args!("{ind}("));
            for x in l {
                print_ast(x, level + 1);
            }
            line(format_args!("{ind})"));
        }
        Expr::Byte(b) => line(format_args!("{ind}{b}")),
        Expr::AbsOffset(o) => line(format_args!("{ind}@{o}")),
        Expr::RelOffset(o) => line(format_args!("{ind}@{o}")),
        Expr::Align(a) => line(format_args!("{ind}@^{a}")),
        Expr::File(f) => line(format_args!("{ind}<{f}")),
        Expr::Script(s) => line(format_args!("{ind}<({s})")),
        Expr::Str(s) => {
            let mut text = String::with_capacity(s.len());
            for &c in s {
                if (0x20..0x7f).contains(&c) {
                    text.push(c as char);
                } else {
                    text.push_str(&format!("\\x{c:02x}"));
                }
            }
            line(format_args!("{ind}\"{text}\""))
        }
        Expr::Fill(b, n) => line(format_args!("{ind}fill({b}*{n})")),
        Expr::Name(n) => line(format_args!("{ind}\\{n}")),
        Expr::Assign(name, e) => nested(e, format_args!(") -> \\{name}")),
        Expr::Repeat(e, n) => nested(e, format_args!(") *{n}")),
        Expr::Slice(e, n, m) => nested(e, format_args!(")[{n}:{m}]")),
    }
}

/// Append `e` to an optimized list, merging it with the last element when
/// they combine.
fn push_combined(list: &mut Vec<Expr>, e: Expr) {
    if let Some(last) = list.last_mut() {
        if combine(last, &e) {
            return;
        }
    }
    list.push(e);
}

/// `N:M]`, `:M]`, `N:]` or `:]` (after `[`): (start, end or -1, length).
fn scan_slice(s: &[u8]) -> Option<(i64, i64, usize)> {
    let close =
        |s: &[u8], at: usize| -> Option<usize> { (s.get(at) == Some(&b']')).then_some(at + 1) };
    if let Some((n, a)) = scan_int(s) {
        if s.get(a) == Some(&b':') {
            if let Some((m, b)) = scan_int(&s[a + 1..]) {
                if let Some(end) = close(s, a + 1 + b) {
                    return Some((sat64(n), sat64(m), end));
                }
                return None;
            }
            return close(s, a + 1).map(|end| (sat64(n), -1, end));
        }
        return None;
    }
    if s.first() == Some(&b':') {
        if let Some((m, b)) = scan_int(&s[1..]) {
            return close(s, 1 + b).map(|end| (0, sat64(m), end));
        }
        return close(s, 1).map(|end| (0, -1, end));
    }
    None
}

/// `\NAME` after optional whitespace: (start of NAME, its length).
fn get_name(s: &[u8], mut i: usize) -> (usize, usize) {
    while i < s.len() && s[i].is_ascii_whitespace() {
        i += 1;
    }
    if i >= s.len() || s[i] != b'\\' {
        return (i, 0);
    }
    i += 1;
    let start = i;
    while i < s.len() && (s[i].is_ascii_alphanumeric() || s[i] == b'_' || s[i] == b'-') {
        i += 1;
    }
    (start, i - start)
}

/// `$VAR`: (start of VAR, its length); VAR is `[A-Za-z_][A-Za-z0-9_]*`.
fn get_var(s: &[u8], i: usize) -> (usize, usize) {
    let start = i + 1;
    if start >= s.len() || !(s[start].is_ascii_alphabetic() || s[start] == b'_') {
        return (start.min(s.len()), 0);
    }
    let mut j = start;
    while j < s.len() && (s[j].is_ascii_alphanumeric() || s[j] == b'_') {
        j += 1;
    }
    (start, j - start)
}

/// The body of a `"string"` after the opening quote.
fn parse_string(s: &[u8], pos: &mut usize) -> Result<Vec<u8>> {
    let unterminated = || err("data parameter: unterminated string");
    let mut out = Vec::new();
    let mut i = *pos;
    while i < s.len() {
        let mut c = s[i];
        match c {
            b'"' => {
                *pos = i + 1;
                return Ok(out);
            }
            b'\\' => {
                i += 1;
                c = *s.get(i).ok_or_else(unterminated)?;
                c = match c {
                    b'a' => 7,
                    b'b' => 8,
                    b'f' => 0xc,
                    b'n' => 0xa,
                    b'r' => 0xd,
                    b't' => 9,
                    b'v' => 0xb,
                    b'x' => {
                        let x0 = *s.get(i + 1).ok_or_else(unterminated)?;
                        let x1 = *s.get(i + 2).ok_or_else(unterminated)?;
                        i += 2;
                        let h = |x: u8| (x as char).to_digit(16);
                        match (h(x0), h(x1)) {
                            (Some(a), Some(b)) => (a * 16 + b) as u8,
                            _ => {
                                return Err(err(
                                    "data: \\xNN must be followed by exactly two hexadecimal characters",
                                ))
                            }
                        }
                    }
                    b'0'..=b'9' | b'u' => {
                        return Err(err(
                            "data: string numeric and unicode sequences are not yet implemented",
                        ))
                    }
                    other => other,
                };
                out.push(c);
            }
            _ => out.push(c),
        }
        i += 1;
    }
    Err(unterminated())
}

/// `le16:WORD` and friends (the whole token up to whitespace).
fn parse_word(tok: &[u8], end: usize) -> Result<Vec<u8>> {
    let t = String::from_utf8_lossy(tok);
    let (little, bytes) = match t.get(..5) {
        Some("le16:") => (true, 2),
        Some("le32:") => (true, 4),
        Some("le64:") => (true, 8),
        Some("be16:") => (false, 2),
        Some("be32:") => (false, 4),
        Some("be64:") => (false, 8),
        _ => {
            return Err(err(format!(
                "data parameter: expected \"le16/32/64:\" or \"be16/32/64:\" at offset {end}"
            )))
        }
    };
    let max = if bytes == 8 {
        u64::MAX
    } else {
        (1u64 << (bytes * 8)) - 1
    };
    let v = parse_unsigned("data", &t[5..], max)?;
    let all = if little {
        v.to_le_bytes()
    } else {
        v.to_be_bytes()
    };
    Ok(if little {
        all[..bytes].to_vec()
    } else {
        all[8 - bytes..].to_vec()
    })
}

// ---------------------------------------------------------------------------
// Evaluation

/// Counts work against [`MAX_WORK`], and evaluation steps against
/// [`MAX_STEPS`].
#[derive(Default)]
struct Budget {
    used: u64,
    steps: u64,
}

/// The most expressions an evaluation may visit (names can double the
/// work at each definition).
const MAX_STEPS: u64 = 1 << 22;

/// What one operation on an image is charged: the memory of the chunks
/// it may add.
const OP_COST: u64 = 64 * 17;

impl Budget {
    fn step(&mut self) -> Result<()> {
        self.steps += 1;
        if self.steps > MAX_STEPS {
            return Err(Error::msg(
                Errno::ENOMEM,
                "data: the expression takes too many steps to evaluate, which is not supported",
            ));
        }
        self.spend(OP_COST)
    }

    fn spend(&mut self, n: u64) -> Result<()> {
        self.used = self.used.saturating_add(n);
        if self.used > MAX_WORK {
            return Err(Error::msg(
                Errno::ENOMEM,
                format!(
                    "data: the expression needs more than {} MiB of memory, which is not supported",
                    MAX_WORK >> 20
                ),
            ));
        }
        Ok(())
    }
}

/// Names defined so far, innermost first.
struct Env<'a> {
    name: &'a str,
    expr: &'a Expr,
    next: Option<Rc<Env<'a>>>,
}

struct Evaluator {
    budget: Budget,
}

fn add(a: u64, b: u64) -> Result<u64> {
    a.checked_add(b)
        .filter(|&v| v <= MAX_SIZE)
        .ok_or_else(|| err("data parameter: offset is larger than 2^63-1"))
}

/// Where an evaluation writes, and how far it got.
struct Cursor<'i> {
    img: &'i mut Image,
    offset: u64,
    size: u64,
    /// Nothing at or past this is kept.
    limit: u64,
}

impl Evaluator {
    /// Evaluate `e` (each element, when it is a list) into `cur`, as
    /// nbdkit does.
    fn eval<'a>(
        &mut self,
        e: &'a Expr,
        env: Option<Rc<Env<'a>>>,
        cur: &mut Cursor<'_>,
        depth: usize,
    ) -> Result<()> {
        if depth > MAX_DEPTH * 10 {
            return Err(err("data parameter: expression is nested too deeply"));
        }
        let items = match e {
            Expr::List(l) => l.as_slice(),
            e => std::slice::from_ref(e),
        };
        let mut env = env;
        for e in items {
            self.budget.step()?;
            let limit = cur.limit;
            let at = cur.offset;
            match e {
                Expr::Null => {}
                Expr::Byte(b) => {
                    cur.img.write(at, &[*b], limit);
                    cur.offset = add(at, 1)?;
                }
                Expr::Str(b) => {
                    cur.img.write(at, b, limit);
                    cur.offset = add(at, b.len() as u64)?;
                }
                Expr::Fill(b, n) => {
                    cur.offset = add(at, *n)?;
                    cur.img.fill(at, *b, *n, limit);
                }
                Expr::AbsOffset(o) => cur.offset = add(*o, 0)?,
                Expr::RelOffset(d) => {
                    if *d < 0 {
                        let back = d.unsigned_abs();
                        if back > at {
                            return Err(err(format!(
                                "data parameter @-{back} must not be larger than the current offset {at}"
                            )));
                        }
                        cur.offset = at - back;
                    } else {
                        cur.offset = add(at, *d as u64)?;
                    }
                }
                Expr::Align(a) => cur.offset = add(at, (a - at % a) % a)?,
                Expr::File(name) => {
                    let data = read_file(name, 0, None, &mut self.budget)?;
                    self.store(cur, &data)?;
                }
                Expr::Script(script) => {
                    let data = run_script(script, None, &mut self.budget)?;
                    self.store(cur, &data)?;
                }
                Expr::Assign(name, value) => {
                    env = Some(Rc::new(Env {
                        name,
                        expr: value,
                        next: env.take(),
                    }));
                }
                Expr::Name(name) => {
                    let mut t = env.as_ref();
                    let def = loop {
                        match t {
                            None => return Err(err(format!("\\{name} not defined"))),
                            Some(d) if d.name == name => break d,
                            Some(d) => t = d.next.as_ref(),
                        }
                    };
                    // The definition sees the names defined before it.
                    let (sub, n) =
                        self.sub(def.expr, def.next.clone(), limit.saturating_sub(at), depth)?;
                    cur.img.blit(&sub, 0, n, at, limit);
                    cur.offset = add(at, n)?;
                }
                Expr::Slice(inner, n, m) if matches!(**inner, Expr::File(_)) => {
                    let Expr::File(name) = &**inner else {
                        unreachable!()
                    };
                    if (*m >= 0 && *n > *m as u64) || *m < -2 {
                        return Err(err("<FILE[N:M] does not describe a valid slice"));
                    }
                    let len = (*m >= 0).then(|| *m as u64 - n);
                    let len = if *m == -2 { Some(0) } else { len };
                    let data = read_file(name, *n, len, &mut self.budget)?;
                    self.store(cur, &data)?;
                }
                Expr::Slice(inner, 0, m) if matches!(**inner, Expr::Script(_)) => {
                    let Expr::Script(script) = &**inner else {
                        unreachable!()
                    };
                    let data = run_script(script, Some((*m).max(0) as u64), &mut self.budget)?;
                    self.store(cur, &data)?;
                }
                Expr::List(_) => {
                    let (sub, n) = self.sub(e, env.clone(), limit.saturating_sub(at), depth)?;
                    cur.img.blit(&sub, 0, n, at, limit);
                    cur.offset = add(at, n)?;
                }
                Expr::Repeat(inner, count) => {
                    let (sub, n) = self.sub(inner, env.clone(), limit.saturating_sub(at), depth)?;
                    let total = n
                        .checked_mul(*count)
                        .ok_or_else(|| err("data parameter: offset is larger than 2^63-1"))?;
                    cur.offset = add(at, total)?;
                    if n < 64 * 1024 {
                        // A short period is expanded into a pattern.
                        self.budget.spend(128 * 1024)?;
                    }
                    cur.img.repeat(&sub, n, *count, at, limit);
                }
                Expr::Slice(inner, from, to) => {
                    let room = limit.saturating_sub(at);
                    let sub_limit = from.saturating_add(room);
                    let sub_limit = if *to >= 0 {
                        sub_limit.min(*to as u64)
                    } else {
                        sub_limit
                    };
                    let (sub, n) = self.sub(inner, env.clone(), sub_limit, depth)?;
                    let m = if *to < 0 { n } else { *to as u64 };
                    if *from > n || m > n || *from > m {
                        return Err(err("[N:M] does not describe a valid slice"));
                    }
                    cur.img.blit(&sub, *from, m - from, at, limit);
                    cur.offset = add(at, m - from)?;
                }
            }
            cur.size = cur.size.max(cur.offset);
        }
        Ok(())
    }

    /// Evaluate `e` into a new image kept up to `limit`; returns it and
    /// the expression's size.
    fn sub<'a>(
        &mut self,
        e: &'a Expr,
        env: Option<Rc<Env<'a>>>,
        limit: u64,
        depth: usize,
    ) -> Result<(Arc<Image>, u64)> {
        let (img, size) = self.image(e, env, limit, depth + 1)?;
        Ok((Arc::new(img), size))
    }

    /// Evaluate `e` into a new image kept up to `limit`, at `depth`.
    fn image<'a>(
        &mut self,
        e: &'a Expr,
        env: Option<Rc<Env<'a>>>,
        limit: u64,
        depth: usize,
    ) -> Result<(Image, u64)> {
        let mut img = Image::default();
        let mut cur = Cursor {
            img: &mut img,
            offset: 0,
            size: 0,
            limit,
        };
        self.eval(e, env, &mut cur, depth)?;
        let size = cur.size;
        Ok((img, size))
    }

    /// Write bytes read from a file or a script at the cursor.
    fn store(&mut self, cur: &mut Cursor<'_>, data: &[u8]) -> Result<()> {
        cur.img.write(cur.offset, data, cur.limit);
        cur.offset = add(cur.offset, data.len() as u64)?;
        Ok(())
    }
}

/// Read a file, or `len` bytes of it from `skip`.
fn read_file(name: &str, skip: u64, len: Option<u64>, budget: &mut Budget) -> Result<Vec<u8>> {
    use std::io::{Seek, SeekFrom};
    let mut f = std::fs::File::open(name).map_err(|e| io_err(name, &e))?;
    if skip > 0 {
        f.seek(SeekFrom::Start(skip))
            .map_err(|e| io_err(&format!("{name}: fseek"), &e))?;
    }
    read_bounded(&mut f, len, budget).map_err(|e| match e {
        Bounded::Io(e) => io_err(&format!("fread: {name}"), &e),
        Bounded::Budget(e) => e,
    })
}

enum Bounded {
    Io(std::io::Error),
    Budget(Error),
}

/// Read to the end, or `len` bytes, spending the budget as it goes.
fn read_bounded(
    r: &mut dyn Read,
    len: Option<u64>,
    budget: &mut Budget,
) -> std::result::Result<Vec<u8>, Bounded> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let want = match len {
            Some(l) => (l - out.len() as u64).min(buf.len() as u64) as usize,
            None => buf.len(),
        };
        if want == 0 {
            break;
        }
        let n = match r.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Bounded::Io(e)),
        };
        budget.spend(n as u64).map_err(Bounded::Budget)?;
        out.extend_from_slice(&buf[..n]);
    }
    Ok(out)
}

fn io_err(what: &str, e: &std::io::Error) -> Error {
    let errno = crate::os::errno::from_os(e.raw_os_error().unwrap_or(libc::EIO));
    let text = e.to_string();
    let text = text.split(" (os error").next().unwrap_or(&text).to_string();
    Error::msg(errno, format!("{what}: {text}"))
}

/// Run `/bin/sh -c script` and take its output (the first `len` bytes,
/// if given; then the script's exit status does not matter).
fn run_script(script: &str, len: Option<u64>, budget: &mut Budget) -> Result<Vec<u8>> {
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| io_err("popen", &e))?;
    let mut out = child.stdout.take().expect("stdout is piped");
    let got = read_bounded(&mut out, len, budget);
    drop(out);
    if got.is_err() {
        let _ = child.kill();
    }
    let status = child.wait().map_err(|e| io_err("pclose", &e))?;
    let data = got.map_err(|e| match e {
        Bounded::Io(e) => io_err("fread", &e),
        Bounded::Budget(e) => e,
    })?;
    if len.is_none() && !status.success() {
        return Err(err("pclose: external command failed"));
    }
    Ok(data)
}

/// Parse, optimize and evaluate a data expression; only bytes below
/// `limit` are kept. Returns the image and the size of the expression.
fn evaluate(expr: &str, vars: &dyn Vars, limit: u64) -> Result<(Image, u64)> {
    let parser = Parser { vars };
    let mut pos = 0;
    let list = parser.list(expr.as_bytes(), &mut pos, 0, false)?;
    let root = optimize(Expr::List(list));
    if nbdkit_core::debug::enabled("data", "AST") {
        crate::log::debug(None, format_args!("BEGIN AST (-D data.AST=1)"));
        print_ast(&root, 0);
        crate::log::debug(None, format_args!("END AST"));
    }
    let mut ev = Evaluator {
        budget: Budget::default(),
    };
    ev.image(&root, None, limit, 0)
}

/// The image a connection reads and writes (`allocator=sparse`).
struct Served(RwLock<Image>);

impl Backing for Served {
    fn read(&self, buf: &mut [u8], offset: u64) {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .read(buf, offset);
    }
    fn write(&self, buf: &[u8], offset: u64) {
        self.0
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .write(offset, buf, u64::MAX);
    }
    fn zero(&self, count: u64, offset: u64) {
        self.0
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .zero(offset, count, u64::MAX);
    }
    fn extents(&self, count: u64, offset: u64, extents: &mut Extents) -> Result<()> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .extents(count, offset, extents)
    }
}

// ---------------------------------------------------------------------------
// The plugin

/// Which of `data=`, `raw=`, `base64=` was given.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    Data(String),
    Raw(String),
    Base64(String),
}

/// The data plugin.
#[derive(Default)]
pub struct Data {
    source: Option<Source>,
    size: Option<u64>,
    malloc: bool,
    params: Vec<(String, String)>,
    store: Option<(Arc<Store>, u64)>,
}

impl std::fmt::Debug for Data {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Data")
            .field("source", &self.source)
            .field("size", &self.size)
            .finish()
    }
}

struct ParamsAndEnv<'a>(&'a [(String, String)]);

impl Vars for ParamsAndEnv<'_> {
    fn get(&self, name: &str) -> Option<String> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .or_else(|| std::env::var(name).ok())
    }
}

impl Plugin for Data {
    // data.dir (nbdkit's sparse array directory) has no counterpart: this
    // plugin keeps its own image, and -D data.dir=1 gets nbdkit's warning.
    fn debug_flags(&self) -> &'static [&'static str] {
        &["AST"]
    }
    fn name(&self) -> &'static str {
        "data"
    }
    fn config_help(&self) -> &'static str {
        "data|raw|base64=...     Specify disk data on the command line\n\
         size=<SIZE>             Size of the backing disk\n\
         allocator=sparse|...    Backend allocation strategy"
    }
    fn magic_config_key(&self) -> Option<&'static str> {
        Some("data")
    }
    fn callbacks(&self) -> &'static [&'static str] {
        &[
            "unload",
            "dump_plugin",
            "config",
            "config_complete",
            "config_help",
            "get_ready",
            "open",
            "get_size",
            "can_fast_zero",
            "can_fua",
            "can_multi_conn",
            "can_cache",
            "pread",
            "pwrite",
            "flush",
            "trim",
            "zero",
            "extents",
        ]
    }
    fn dump_plugin(&self) -> Vec<(String, String)> {
        vec![
            ("data_base64".into(), "yes".into()),
            ("mlock".into(), "no".into()),
            ("zstd".into(), "no".into()),
        ]
    }
    fn blocks(&self) -> bool {
        false
    }
    fn config(&mut self, key: &str, value: &str) -> Result<()> {
        let source = match key {
            "size" => {
                self.size = Some(size_param(value)?);
                return Ok(());
            }
            "allocator" => {
                let name = value.split(',').next().unwrap_or("");
                match name {
                    "sparse" | "malloc" => {}
                    "zstd" => return Err(err(
                        "allocator=zstd is not supported by this nbdkit (no zstd support built in)",
                    )),
                    _ => return Err(err(format!("unknown allocator \"{value}\""))),
                }
                if value.contains(',') {
                    return Err(err(format!(
                        "allocator parameters are not supported yet: \"{value}\""
                    )));
                }
                self.malloc = name == "malloc";
                return Ok(());
            }
            "raw" => Source::Raw(value.into()),
            "base64" => Source::Base64(value.into()),
            "data" => Source::Data(value.into()),
            _ => {
                self.params.push((key.into(), value.into()));
                return Ok(());
            }
        };
        if self.source.is_some() {
            return Err(err(
                "raw|base64|data parameter must be specified exactly once",
            ));
        }
        self.source = Some(source);
        Ok(())
    }
    fn config_complete(&mut self) -> Result<()> {
        let Some(source) = &self.source else {
            return Err(err("raw|base64|data parameter was not specified"));
        };
        if !matches!(source, Source::Data(_)) && !self.params.is_empty() {
            return Err(err("extra parameters passed and not using data='...'"));
        }
        // nbdkit evaluates the data in get_ready; it happens here so the
        // result can be kept, at the same point of start-up. Pages are
        // kept whole, so that block status sees the last one as nbdkit
        // does.
        crate::log::debug(
            None,
            format_args!(
                "allocator: {}",
                if self.malloc { "malloc" } else { "sparse" }
            ),
        );
        let limit = match self.size {
            Some(s) => s.div_ceil(image::PAGE).saturating_mul(image::PAGE),
            None => MAX_SIZE,
        };
        let (img, data_size) = match source {
            Source::Raw(r) => {
                let mut img = Image::default();
                img.write(0, r.as_bytes(), limit);
                (img, r.len() as u64)
            }
            Source::Base64(t) => {
                let bytes =
                    decode_base64(t).ok_or_else(|| err("base64: Base64 decoding error."))?;
                let mut img = Image::default();
                img.write(0, &bytes, limit);
                (img, bytes.len() as u64)
            }
            Source::Data(d) => evaluate(d, &ParamsAndEnv(&self.params), limit)?,
        };
        crate::log::debug(None, format_args!("implicit data size: {data_size}"));
        let size = self.size.unwrap_or(data_size);
        crate::log::debug(None, format_args!("final size: {size}"));
        let store = if self.malloc {
            let store = Store::flat(size)?;
            let mut buf = vec![0u8; (1 << 20).min(size) as usize];
            let mut pos = 0u64;
            while pos < size {
                let n = (size - pos).min(buf.len() as u64) as usize;
                img.read(&mut buf[..n], pos);
                store.write(&buf[..n], pos);
                pos += n as u64;
            }
            store
        } else {
            Store::Other(Box::new(Served(RwLock::new(img))))
        };
        self.store = Some((Arc::new(store), size));
        Ok(())
    }
    fn open(&self, _args: &OpenArgs<'_>) -> Result<Box<dyn Handle>> {
        let (store, size) = self
            .store
            .clone()
            .ok_or_else(|| Error::msg(Errno::EIO, "data: not configured"))?;
        Ok(Box::new(MemoryHandle::new(store, size)))
    }
}

#[cfg(test)]
mod test {
    use super::*;

    struct NoVars;
    impl Vars for NoVars {
        fn get(&self, name: &str) -> Option<String> {
            (name == "pat").then(|| "0x41 0x42".into())
        }
    }

    /// Evaluate and flatten to bytes.
    fn eval(expr: &str) -> Result<Vec<u8>> {
        let (img, size) = evaluate(expr, &NoVars, MAX_SIZE)?;
        let mut out = vec![0u8; size as usize];
        img.read(&mut out, 0);
        Ok(out)
    }

    fn msg(expr: &str) -> String {
        eval(expr).unwrap_err().message.unwrap()
    }

    #[test]
    fn bytes_and_offsets() {
        let mut want = vec![1, 2, 3];
        want.resize(0x1fe, 0);
        want.extend([0x55, 0xaa]);
        assert_eq!(eval("1 2 3 @0x1fe 0x55 0xaa").unwrap(), want);
        assert_eq!(eval("010 0x10 10").unwrap(), [8, 0x10, 10]);
        assert_eq!(
            eval("0xff*3 @+2 1 @-4 2").unwrap(),
            [0xff, 0xff, 2, 0, 0, 1]
        );
        assert_eq!(eval("1 @10 @5").unwrap().len(), 10);
        assert_eq!(eval("1 @^8").unwrap().len(), 8);
    }

    #[test]
    fn groups_overwrite_with_their_zeroes() {
        assert_eq!(eval("0xff*4 @0 ( @2 )").unwrap(), [0, 0, 0xff, 0xff]);
        assert_eq!(
            eval("( 1 @+5 )*2").unwrap(),
            [1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0]
        );
    }

    #[test]
    fn repeats_slices_names_vars() {
        assert_eq!(eval("( 0x55 0xAA ) * 4").unwrap(), b"\x55\xaa".repeat(4));
        assert_eq!(eval("( 1 2 3 4 5 6 7 8 )[2:5]").unwrap(), [3, 4, 5]);
        assert_eq!(eval("\"abc\"*2[1:]").unwrap(), b"bcabc");
        assert_eq!(
            eval("( 9 8 ) -> \\pair\n \\pair \\pair \\pair").unwrap(),
            b"\x09\x08".repeat(3)
        );
        assert_eq!(eval("$pat*2").unwrap(), b"ABAB");
        assert_eq!(eval("# a comment\n 7 8").unwrap(), [7, 8]);
        assert_eq!(eval("( 1 2 3 )[5:5]").unwrap(), b"");
    }

    #[test]
    fn strings_and_words() {
        assert_eq!(
            eval("\"hello\" @^16 le32:0x01020304 be16:0x0506").unwrap(),
            b"hello\0\0\0\0\0\0\0\0\0\0\0\x04\x03\x02\x01\x05\x06"
        );
        assert_eq!(eval("\"a\\x41\\n\\\"\"").unwrap(), b"aA\n\"");
        assert_eq!(eval("be64:1").unwrap(), [0, 0, 0, 0, 0, 0, 0, 1]);
    }

    #[test]
    fn errors_match_nbdkit() {
        assert_eq!(msg("( 1 2"), "unmatched '(' in data string");
        assert_eq!(msg("1 )"), "unmatched ')' in data string");
        assert_eq!(
            msg("0x100"),
            "data parameter BYTE must be in the range 0..255"
        );
        assert_eq!(
            msg("1 2 3 @-5 4"),
            "data parameter @-5 must not be larger than the current offset 3"
        );
        assert_eq!(
            msg("( 1 2 3 )[:10]"),
            "[N:M] does not describe a valid slice"
        );
        assert_eq!(
            msg("le16:0x12345"),
            "data: could not parse number: \"0x12345\": Numerical result out of range"
        );
        assert_eq!(msg("le16:-1"), "data: negative numbers are not allowed");
        assert_eq!(msg("\\x"), "\\x not defined");
        assert_eq!(msg("$nope"), "$nope: variable not found");
        assert_eq!(
            msg("@3 * 2"),
            "*N cannot be applied to this type of expression"
        );
        assert_eq!(msg("1 ?"), "data parameter: parsing error at offset 2");
        assert_eq!(msg("\"abc"), "data parameter: unterminated string");
    }

    #[test]
    fn huge_expressions_stay_small() {
        // A fill is cheap however long.
        let (_, size) = evaluate("0x55*1000000000000", &NoVars, 4096).unwrap();
        assert_eq!(size, 1_000_000_000_000);
        // A group repeated is kept as a pattern, however far it reaches.
        let (img, size) = evaluate("( 1 2 )*1000000000000", &NoVars, MAX_SIZE).unwrap();
        assert_eq!(size, 2_000_000_000_000);
        assert_eq!(img.chunk_count(), 1);
        let mut b = [0u8; 4];
        img.read(&mut b, 1_999_999_999_998);
        assert_eq!(b, [1, 2, 0, 0]);
        // Large blocks repeated, and repeated again.
        let e = "( ( \"abc\" @^1048576 )*4096 )*4 @0x7ffffffffffffffe 9";
        let (img, size) = evaluate(e, &NoVars, MAX_SIZE).unwrap();
        assert_eq!(size, i64::MAX as u64);
        img.read(&mut b, 3 << 32);
        assert_eq!(&b[..3], b"abc");
        assert!(img.chunk_count() < 10, "{}", img.chunk_count());
        // Doubling names cost steps, and are refused.
        let mut e = String::from("( @1 ) -> \\a0 ");
        for i in 1..64 {
            e += &format!("( \\a{} \\a{} ) -> \\a{} ", i - 1, i - 1, i);
        }
        e += "\\a63";
        assert!(evaluate(&e, &NoVars, MAX_SIZE).is_err());
        // Offsets past 2^63-1 are refused.
        assert!(evaluate("@0x7fffffffffffffff 1", &NoVars, MAX_SIZE).is_err());
    }

    #[test]
    fn deep_nesting_is_refused() {
        let e = "(".repeat(5000);
        assert!(evaluate(&e, &NoVars, MAX_SIZE).is_err());
    }
}
