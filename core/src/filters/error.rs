//! `error`: inject errors into requests, for testing clients.
//!
//! Parameters: `error=EPERM|EIO|ENOMEM|EINVAL|ENOSPC|ESHUTDOWN` (default
//! EIO), `error-rate=N%|0..1` (default 0), `error-file=FILENAME` (errors
//! only while the file exists), and the same three with `error-pread`,
//! `error-pwrite`, `error-trim`, `error-zero`, `error-extents` or
//! `error-cache` instead of `error` for one kind of request.
//!
//! The filter needs no operating system except for `error-file`: the
//! runtime gives it a way to test whether a file exists
//! ([`ErrorFilter::new`]); without one, `error-file` is refused.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;

use super::params::parse_probability;
use super::random::Xoshiro;
use crate::backend::{
    Context, Error, Extents, Filter, FilterHandle, Flags, NextOpener, OpenArgs, Result,
};
use crate::errno::Errno;
use crate::sync::{lock, Arc, Mutex};

/// Tests whether a file exists.
pub type FileExists = fn(&str) -> bool;

#[derive(Debug, Clone)]
struct Setting {
    errno: Errno,
    name: &'static str,
    rate: f64,
    file: Option<String>,
}

impl Default for Setting {
    fn default() -> Self {
        Setting {
            errno: Errno::EIO,
            name: "EIO",
            rate: 0.0,
            file: None,
        }
    }
}

const OPS: [&str; 6] = ["pread", "pwrite", "trim", "zero", "extents", "cache"];

/// The error filter.
#[derive(Debug)]
pub struct ErrorFilter {
    settings: [Setting; 6],
    exists: Option<FileExists>,
    random: Arc<Mutex<Xoshiro>>,
}

impl ErrorFilter {
    /// An error filter that tests for trigger files with `exists` (none:
    /// `error-file` is not supported) and draws errors from a generator
    /// seeded with `seed`.
    pub fn new(exists: Option<FileExists>, seed: u64) -> Self {
        ErrorFilter {
            settings: Default::default(),
            exists,
            random: Arc::new(Mutex::new(Xoshiro::new(seed))),
        }
    }
}

fn errno_by_name(key: &str, v: &str) -> Result<(Errno, &'static str)> {
    Ok(match v {
        "EPERM" => (Errno::EPERM, "EPERM"),
        "EIO" => (Errno::EIO, "EIO"),
        "ENOMEM" => (Errno::ENOMEM, "ENOMEM"),
        "EINVAL" => (Errno::EINVAL, "EINVAL"),
        "ENOSPC" => (Errno::ENOSPC, "ENOSPC"),
        "ESHUTDOWN" => (Errno::ESHUTDOWN, "ESHUTDOWN"),
        _ => return Err(Error::config(format!("{key}: unknown error name '{v}'"))),
    })
}

fn rate(key: &str, v: &str) -> Result<f64> {
    let r = parse_probability(v)
        .ok_or_else(|| Error::config(format!("{key}: could not parse rate '{v}'")))?;
    if !(0.0..=1.0).contains(&r) {
        return Err(Error::config(format!(
            "{key}: rate out of range: '{v}' parsed as {r}"
        )));
    }
    Ok(r)
}

impl Filter for ErrorFilter {
    fn name(&self) -> &'static str {
        "error-inject"
    }
    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit error injection filter")
    }
    fn config_help(&self) -> &'static str {
        "error=EPERM|EIO|ENOMEM|EINVAL|ENOSPC|ESHUTDOWN\n\
         \x20                              The error indication to return.\n\
         error-rate=0%..100%|0..1       Rate of errors to generate.\n\
         error-file=TRIGGER             Set trigger filename.\n\
         error-pread*, error-pwrite*, error-trim*, error-zero*, error-extents*\n\
         \x20                              Apply settings only to read/write/etc"
    }
    fn blocks(&self) -> bool {
        false
    }
    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        let Some(rest) = key.strip_prefix("error") else {
            return Ok(false);
        };
        // `error`, `error-rate`, `error-file`, or `error-OP[-rate|-file]`.
        let (ops, what): (&[usize], &str) = match rest {
            "" => (&[0, 1, 2, 3, 4, 5], ""),
            "-rate" => (&[0, 1, 2, 3, 4, 5], "rate"),
            "-file" => (&[0, 1, 2, 3, 4, 5], "file"),
            _ => {
                let r = &rest[1.min(rest.len())..];
                let (op, what) = match r.split_once('-') {
                    Some((op, w)) if w == "rate" || w == "file" => (op, w),
                    Some(_) => return Ok(false),
                    None => (r, ""),
                };
                match OPS.iter().position(|o| *o == op) {
                    Some(i) if rest.starts_with('-') => (&[0, 1, 2, 3, 4, 5][i..=i], what),
                    _ => return Ok(false),
                }
            }
        };
        match what {
            "" => {
                let (e, name) = errno_by_name(key, value)?;
                for &i in ops {
                    self.settings[i].errno = e;
                    self.settings[i].name = name;
                }
            }
            "rate" => {
                let r = rate(key, value)?;
                for &i in ops {
                    self.settings[i].rate = r;
                }
            }
            _ => {
                if self.exists.is_none() {
                    return Err(Error::config(format!("{key} is not supported yet")));
                }
                for &i in ops {
                    self.settings[i].file = Some(value.into());
                }
            }
        }
        Ok(true)
    }
    fn open(
        &self,
        next: &mut dyn NextOpener,
        args: &OpenArgs<'_>,
    ) -> Result<Box<dyn FilterHandle>> {
        next.open(args.readonly, args.export_name)?;
        Ok(Box::new(ErrorHandle {
            settings: self.settings.clone(),
            exists: self.exists,
            random: Arc::clone(&self.random),
        }))
    }
}

struct ErrorHandle {
    settings: [Setting; 6],
    exists: Option<FileExists>,
    random: Arc<Mutex<Xoshiro>>,
}

impl ErrorHandle {
    /// Decide whether request kind `op` fails.
    fn inject(&self, op: usize) -> Result<()> {
        let s = &self.settings[op];
        if s.rate <= 0.0 {
            return Ok(());
        }
        if let (Some(file), Some(exists)) = (&s.file, self.exists) {
            if !exists(file) {
                return Ok(());
            }
        }
        if s.rate < 1.0 && lock(&self.random).next_f64() >= s.rate {
            return Ok(());
        }
        Err(Error::msg(
            s.errno,
            format!("injecting {} error into {}", s.name, OPS[op]),
        ))
    }
}

impl FilterHandle for ErrorHandle {
    fn pread(&self, next: &Context, buf: &mut [u8], offset: u64, flags: Flags) -> Result<()> {
        self.inject(0)?;
        next.pread(buf, offset, flags)
    }
    fn pwrite(&self, next: &Context, buf: &[u8], offset: u64, flags: Flags) -> Result<()> {
        self.inject(1)?;
        next.pwrite(buf, offset, flags)
    }
    fn trim(&self, next: &Context, count: u64, offset: u64, flags: Flags) -> Result<()> {
        self.inject(2)?;
        next.trim(count, offset, flags)
    }
    fn zero(&self, next: &Context, count: u64, offset: u64, flags: Flags) -> Result<()> {
        self.inject(3)?;
        next.zero(count, offset, flags)
    }
    fn extents(
        &self,
        next: &Context,
        count: u64,
        offset: u64,
        flags: Flags,
        extents: &mut Extents,
    ) -> Result<()> {
        self.inject(4)?;
        next.extents(count, offset, flags, extents)
    }
    fn cache(&self, next: &Context, count: u64, offset: u64, flags: Flags) -> Result<()> {
        self.inject(5)?;
        next.cache(count, offset, flags)
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn keys() {
        let mut f = ErrorFilter::new(None, 1);
        assert!(f.config("error", "ENOSPC").unwrap());
        assert!(f.config("error-pread-rate", "50%").unwrap());
        assert!(f.config("error-cache", "EPERM").unwrap());
        assert!(!f.config("errors", "1").unwrap());
        assert!(!f.config("error-foo", "1").unwrap());
        assert!(!f.config("error-pread-x", "1").unwrap());
        assert!(f.config("error-file", "/x").is_err());
        assert!(f.config("error-rate", "2").is_err());
        assert!(f.config("error", "EFOO").is_err());
        assert_eq!(f.settings[0].rate, 0.5);
        assert_eq!(f.settings[1].errno, Errno::ENOSPC);
        assert_eq!(f.settings[5].errno, Errno::EPERM);
    }
}
