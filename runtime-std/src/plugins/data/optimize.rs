//! The optimizer nbdkit runs before evaluating (its result decides which
//! parts are written, copied or zeroed, which block status shows), and
//! `-D data.AST=1`'s printer.

use super::*;

/// Whether `e` may be moved into the enclosing list (offsets and names are
/// scoped to their list).
pub(super) fn safe_to_inline(e: &Expr) -> bool {
    !matches!(
        e,
        Expr::Assign(..) | Expr::Name(_) | Expr::AbsOffset(_) | Expr::RelOffset(_) | Expr::Align(_)
    )
}

/// The byte, if `e` is one byte.
pub(super) fn single_byte(e: &Expr) -> Option<u8> {
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
pub(super) fn combine(last: &mut Expr, next: &Expr) -> bool {
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
pub(super) fn optimize(e: Expr) -> Expr {
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
pub(super) fn print_ast(e: &Expr, level: usize) {
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
pub(super) fn push_combined(list: &mut Vec<Expr>, e: Expr) {
    if let Some(last) = list.last_mut() {
        if combine(last, &e) {
            return;
        }
    }
    list.push(e);
}
