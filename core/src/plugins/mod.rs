//! Plugins that need nothing but memory. Each file is one plugin, with its
//! parameters documented at the top.

pub mod example1;
pub mod full;
pub mod memory;
pub mod null;
pub mod ones;
pub mod pattern;
pub mod random;
pub mod slab;
pub mod sparse_random;
pub mod zero;

use alloc::format;
use alloc::string::String;

use crate::backend::{Error, Result};
use crate::size::{parse_size, SizeError};

/// Parse a size parameter, with nbdkit's error messages.
pub fn size_param(value: &str) -> Result<u64> {
    parse_size(value).map_err(|e| {
        // The number itself out of range (strtoimax's ERANGE), whatever
        // follows it, is reported before any suffix or scaling problem.
        let t = crate::size::trim_c_space(value);
        let digits = t.strip_prefix('+').unwrap_or(t);
        let n = digits.len()
            - digits
                .trim_start_matches(|c: char| c.is_ascii_digit())
                .len();
        if n > 0 && digits[..n].parse::<i64>().is_err() {
            return Error::config(format!("size ({value}) exceeds maximum value"));
        }
        Error::config(match e {
            SizeError::Invalid => {
                let t = crate::size::trim_c_space(value);
                let digits = t.trim_start_matches('+');
                let n = digits.len()
                    - digits
                        .trim_start_matches(|c: char| c.is_ascii_digit())
                        .len();
                if n == 0 {
                    format!("could not parse size string ({value})")
                } else {
                    format!("could not parse size: unknown suffix '{}'", &digits[n..])
                }
            }
            SizeError::Negative => format!("size cannot be negative ({value})"),
            SizeError::TooLarge => format!("overflow computing size ({value})"),
        })
    })
}

/// The error for a parameter a plugin does not know.
pub fn unknown_param(key: &str) -> Error {
    Error::config(format!("unknown parameter '{key}'"))
}

/// Shorthand for `String::from`.
pub(crate) fn s(v: &str) -> String {
    String::from(v)
}

/// A fresh, unconfigured plugin of this folder, by name.
pub fn by_name(name: &str) -> Option<alloc::boxed::Box<dyn crate::backend::Plugin>> {
    use alloc::boxed::Box;
    Some(match name {
        "memory" => Box::new(memory::Memory::default()),
        "null" => Box::new(null::Null::default()),
        "zero" => Box::new(zero::Zero),
        "full" => Box::new(full::Full::default()),
        "pattern" => Box::new(pattern::Pattern::default()),
        "ones" => Box::new(ones::Ones::default()),
        "example1" => Box::new(example1::Example1),
        // random and sparse-random take their default seed from the clock:
        // the runtime registers them (`random::Random::with_seed`).
        _ => return None,
    })
}
