//! A connection's handle: the per-connection methods and the data path.

use super::*;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use nbdkit_core::backend::{BlockSize, Error, Extents, Flags, Handle, Result, Support};
use nbdkit_core::errno::Errno;

use crate::log;

/// A connection's handle: the string the script's `open` printed.
pub(super) struct ScriptHandle {
    pub(super) scripts: Arc<Scripts>,
    pub(super) handle: OsString,
    pub(super) can_flush: OnceLock<bool>,
    pub(super) can_zero: OnceLock<bool>,
}

impl ScriptHandle {
    pub(super) fn h(&self) -> &OsStr {
        &self.handle
    }

    /// A boolean method: 0 true, 3 false, missing false.
    pub(super) fn boolean(&self, method: &str) -> Result<bool> {
        let (path, r) = self.scripts.call(method, &[self.h()]);
        match r.code {
            Code::Ok => Ok(true),
            Code::False | Code::Missing => Ok(false),
            Code::Error => Err(script_error(&path, &r)),
        }
    }

    /// A boolean method asked at most once per connection.
    pub(super) fn cached(&self, cell: &OnceLock<bool>, method: &str) -> Result<bool> {
        if let Some(b) = cell.get() {
            return Ok(*b);
        }
        let b = self.boolean(method)?;
        Ok(*cell.get_or_init(|| b))
    }

    /// `can_fua`/`can_cache`: `none`, `emulate` or `native`.
    pub(super) fn support(&self, method: &str) -> Result<Option<Support>> {
        match self.scripts.call_text(method, &[self.h()])? {
            None => Ok(None),
            Some((path, t)) => parse_support(&t).map(Some).ok_or_else(|| {
                protocol_error(
                    &path,
                    format_args!("could not parse output from {method} method: {t}"),
                )
            }),
        }
    }

    /// A data method with no output; `missing` is what exit status 2 means.
    pub(super) fn data_call(
        &self,
        method: &str,
        args: &[&OsStr],
        input: &[u8],
        missing: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<()> {
        let mut argv = vec![self.h()];
        argv.extend_from_slice(args);
        let (path, r) = self.scripts.call_with(method, &argv, input, None);
        match r.code {
            Code::Ok => Ok(()),
            Code::Missing => missing(&path),
            Code::Error => Err(script_error(&path, &r)),
            Code::False => Err(unexpected_false(&path, method)),
        }
    }
}

impl Handle for ScriptHandle {
    fn get_size(&self) -> Result<u64> {
        let (path, r) = self.scripts.call("get_size", &[self.h()]);
        match r.code {
            Code::Ok => {
                let t = r.text();
                parse_script_size(&t).ok_or_else(|| {
                    protocol_error(
                        &path,
                        format_args!("could not parse output from get_size method: {t}"),
                    )
                })
            }
            Code::Missing => Err(protocol_error(&path, "the get_size method is required")),
            Code::Error => Err(script_error(&path, &r)),
            Code::False => Err(unexpected_false(&path, "get_size")),
        }
    }

    fn export_description(&self) -> Result<Option<String>> {
        Ok(self
            .scripts
            .call_text("export_description", &[self.h()])?
            .map(|(_, t)| t))
    }

    fn block_size(&self) -> Result<Option<BlockSize>> {
        let (path, r) = self.scripts.call("block_size", &[self.h()]);
        match r.code {
            Code::Ok => {
                let text = String::from_utf8_lossy(&r.out).into_owned();
                let cannot = || protocol_error(&path, "block_size method cannot be parsed");
                let mut words = text.split_ascii_whitespace();
                let mut v = [0u32; 3];
                for slot in &mut v {
                    let w = words.next().ok_or_else(cannot)?;
                    let n = parse_script_size(w).ok_or_else(cannot)?;
                    *slot = u32::try_from(n).map_err(|_| cannot())?;
                }
                if v == [0, 0, 0] {
                    return Ok(None);
                }
                Ok(Some(BlockSize {
                    minimum: v[0],
                    preferred: v[1],
                    maximum: v[2],
                }))
            }
            Code::Missing => Ok(None),
            Code::Error => Err(script_error(&path, &r)),
            Code::False => Err(unexpected_false(&path, "block_size")),
        }
    }

    fn can_write(&self) -> Result<bool> {
        self.boolean("can_write")
    }

    fn can_flush(&self) -> Result<bool> {
        self.cached(&self.can_flush, "can_flush")
    }

    fn is_rotational(&self) -> Result<bool> {
        self.boolean("is_rotational")
    }

    fn can_trim(&self) -> Result<bool> {
        self.boolean("can_trim")
    }

    fn can_zero(&self) -> Result<Support> {
        Ok(if self.cached(&self.can_zero, "can_zero")? {
            Support::Native
        } else {
            Support::Emulate
        })
    }

    fn can_fast_zero(&self) -> Result<bool> {
        let (path, r) = self.scripts.call("can_fast_zero", &[self.h()]);
        match r.code {
            Code::Ok => Ok(true),
            Code::False => Ok(false),
            // nbdkit's default: fast when zeroing is emulated (it can fail
            // fast instead of writing).
            Code::Missing => Ok(self.can_zero()? == Support::Emulate),
            Code::Error => Err(script_error(&path, &r)),
        }
    }

    fn can_extents(&self) -> Result<bool> {
        self.boolean("can_extents")
    }

    fn can_fua(&self) -> Result<Support> {
        match self.support("can_fua")? {
            Some(s) => Ok(s),
            None => Ok(if self.can_flush()? {
                Support::Emulate
            } else {
                Support::None
            }),
        }
    }

    fn can_multi_conn(&self) -> Result<bool> {
        self.boolean("can_multi_conn")
    }

    fn can_cache(&self) -> Result<Support> {
        Ok(self.support("can_cache")?.unwrap_or(Support::None))
    }

    fn pread(&self, buf: &mut [u8], offset: u64, _flags: Flags) -> Result<()> {
        let count = OsString::from(buf.len().to_string());
        let off = OsString::from(offset.to_string());
        let want = buf.len() as u64;
        let (path, r) = self
            .scripts
            .call_with("pread", &[self.h(), &count, &off], &[], Some(buf));
        match r.code {
            Code::Ok if r.out_len == want => Ok(()),
            Code::Ok => Err(protocol_error(
                &path,
                format_args!(
                    "incorrect amount of data read: expecting {want} bytes but received {} \
                     bytes from the script",
                    r.out_len
                ),
            )),
            Code::Missing => Err(protocol_error(&path, "the pread method is required")),
            Code::Error => Err(script_error(&path, &r)),
            Code::False => Err(unexpected_false(&path, "pread")),
        }
    }

    fn pwrite(&self, buf: &[u8], offset: u64, flags: Flags) -> Result<()> {
        let count = OsString::from(buf.len().to_string());
        let off = OsString::from(offset.to_string());
        let fl = flags_arg(flags);
        self.data_call("pwrite", &[&count, &off, &fl], buf, |_| {
            Err(Error::msg(Errno::EIO, "pwrite not implemented"))
        })
    }

    fn flush(&self, _flags: Flags) -> Result<()> {
        // nbdkit treats a missing flush, trim or cache as success.
        self.data_call("flush", &[], &[], |_| Ok(()))
    }

    fn trim(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        let c = OsString::from(count.to_string());
        let o = OsString::from(offset.to_string());
        let fl = flags_arg(flags);
        self.data_call("trim", &[&c, &o, &fl], &[], |_| Ok(()))
    }

    fn zero(&self, count: u64, offset: u64, flags: Flags) -> Result<()> {
        let c = OsString::from(count.to_string());
        let o = OsString::from(offset.to_string());
        let fl = flags_arg(flags);
        // Missing: let the server write zeroes instead.
        self.data_call("zero", &[&c, &o, &fl], &[], |_| {
            Err(Error::new(Errno::ENOTSUP))
        })
    }

    fn extents(&self, count: u64, offset: u64, flags: Flags, extents: &mut Extents) -> Result<()> {
        let c = OsString::from(count.to_string());
        let o = OsString::from(offset.to_string());
        let fl = flags_arg(flags);
        let (path, r) = self.scripts.call("extents", &[self.h(), &c, &o, &fl]);
        match r.code {
            Code::Ok => {
                for (off, len, typ) in parse_extents(&path, &r.out)? {
                    extents.add(off, len, typ)?;
                }
                Ok(())
            }
            Code::Missing => Err(protocol_error(
                &path,
                "can_extents returned true, but extents method is not defined",
            )),
            Code::Error => Err(script_error(&path, &r)),
            Code::False => Err(unexpected_false(&path, "extents")),
        }
    }

    fn cache(&self, count: u64, offset: u64, _flags: Flags) -> Result<()> {
        let c = OsString::from(count.to_string());
        let o = OsString::from(offset.to_string());
        self.data_call("cache", &[&c, &o], &[], |_| Ok(()))
    }
}

impl Drop for ScriptHandle {
    fn drop(&mut self) {
        if let Err(e) = self
            .scripts
            .call_void("close", &[OsStr::from_bytes(self.handle.as_bytes())])
        {
            log::error(None, &e.to_string());
        }
    }
}
