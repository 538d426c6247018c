//! The data format's syntax: the expression tree and its parser.

use super::*;

use nbdkit_core::backend::{Error, Result};
use nbdkit_core::plugins::random::parse_unsigned;

/// One element of an expression (nbdkit's AST, before and after
/// [`optimize`]).
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Expr {
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
    pub(super) fn is_data(&self) -> bool {
        !matches!(
            self,
            Expr::AbsOffset(_) | Expr::RelOffset(_) | Expr::Align(_)
        )
    }
}

pub(super) fn err(msg: impl Into<String>) -> Error {
    Error::config(msg)
}

pub(super) fn parse_error(i: usize) -> Error {
    err(format!("data parameter: parsing error at offset {i}"))
}

/// C's `strtol`/`scanf("%i")`: optional whitespace and sign, then a hex
/// (`0x`), octal (`0`) or decimal number. Returns the value (saturated)
/// and the bytes consumed, or `None` when there are no digits.
pub(super) fn scan_int(s: &[u8]) -> Option<(i128, usize)> {
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
pub(super) fn sat64(v: i128) -> i64 {
    v.clamp(i64::MIN.into(), i64::MAX.into()) as i64
}

/// Where the parser looks up `$VAR`.
pub(super) trait Vars {
    fn get(&self, name: &str) -> Option<String>;
}

pub(super) struct Parser<'v> {
    pub(super) vars: &'v dyn Vars,
}

impl Parser<'_> {
    /// Parse `s` from `*pos` to the end, or, `in_group`, to the `)` that
    /// closes the group.
    pub(super) fn list(
        &self,
        s: &[u8],
        pos: &mut usize,
        depth: usize,
        in_group: bool,
    ) -> Result<Vec<Expr>> {
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

/// `N:M]`, `:M]`, `N:]` or `:]` (after `[`): (start, end or -1, length).
pub(super) fn scan_slice(s: &[u8]) -> Option<(i64, i64, usize)> {
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
pub(super) fn get_name(s: &[u8], mut i: usize) -> (usize, usize) {
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
pub(super) fn get_var(s: &[u8], i: usize) -> (usize, usize) {
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
pub(super) fn parse_string(s: &[u8], pos: &mut usize) -> Result<Vec<u8>> {
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
pub(super) fn parse_word(tok: &[u8], end: usize) -> Result<Vec<u8>> {
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
