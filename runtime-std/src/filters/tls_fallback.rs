//! The tls-fallback filter: plaintext clients get a 512-byte read-only
//! dummy export holding a message instead of the plugin's data.
//!
//! Parameter: `tlsreadme=MESSAGE` (default "This NBD server requires TLS
//! authentication before it will serve useful data.").
//!
//! For plaintext clients the layer below is not opened at all (as
//! nbdkit), so nothing a plaintext client asks for reaches the plugin,
//! and an `NBD_OPT_INFO` or `NBD_OPT_GO` for any name succeeds.

use nbdkit_core::backend::{
    BlockSize, Context, Error, Exports, Extents, Filter, FilterHandle, Flags, NextExports,
    NextOpener, OpenArgs, PassThrough, Result, Support, ThreadModel,
};
use nbdkit_core::errno::Errno;

const DEFAULT_README: &str =
    "This NBD server requires TLS authentication before it will serve useful data.\n";

/// The tls-fallback filter.
#[derive(Debug)]
pub struct TlsFallback {
    readme: Vec<u8>,
}

impl Default for TlsFallback {
    fn default() -> Self {
        TlsFallback {
            readme: DEFAULT_README.as_bytes().to_vec(),
        }
    }
}

impl Filter for TlsFallback {
    fn name(&self) -> &'static str {
        "tls-fallback"
    }

    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit tls-fallback filter")
    }

    fn config_help(&self) -> &'static str {
        "tlsreadme=<MESSAGE>  Alternative contents for the plaintext dummy export."
    }

    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        if key != "tlsreadme" {
            return Ok(false);
        }
        self.readme = value.as_bytes().to_vec();
        Ok(true)
    }

    fn get_ready(&self, thread_model: ThreadModel) -> Result<()> {
        if thread_model == ThreadModel::SerializeConnections {
            return Err(Error::config(
                "the tls-fallback filter requires parallel connection support",
            ));
        }
        Ok(())
    }

    fn blocks(&self) -> bool {
        false
    }

    fn list_exports(
        &self,
        next: &dyn NextExports,
        readonly: bool,
        is_tls: bool,
        exports: &mut Exports,
    ) -> Result<()> {
        if is_tls {
            next.list_exports(readonly, is_tls, exports)
        } else {
            exports.add("", None)
        }
    }

    fn default_export(
        &self,
        next: &dyn NextExports,
        readonly: bool,
        is_tls: bool,
    ) -> Result<Option<String>> {
        if is_tls {
            next.default_export(readonly, is_tls)
        } else {
            Ok(Some(String::new()))
        }
    }

    fn open(
        &self,
        next: &mut dyn NextOpener,
        args: &OpenArgs<'_>,
    ) -> Result<Box<dyn FilterHandle>> {
        if args.is_tls {
            next.open(args.readonly, args.export_name)?;
            return Ok(Box::new(PassThrough));
        }
        let mut data = self.readme.clone();
        data.truncate(512);
        data.resize(512, 0);
        Ok(Box::new(Dummy(data)))
    }
}

/// The plaintext view: 512 read-only bytes.
struct Dummy(Vec<u8>);

impl FilterHandle for Dummy {
    fn get_size(&self, _next: &Context) -> Result<u64> {
        Ok(self.0.len() as u64)
    }
    fn export_description(&self, _next: &Context) -> Result<Option<String>> {
        Ok(None)
    }
    fn block_size(&self, _next: &Context) -> Result<Option<BlockSize>> {
        Ok(None)
    }
    fn can_write(&self, _next: &Context) -> Result<bool> {
        Ok(false)
    }
    fn can_flush(&self, _next: &Context) -> Result<bool> {
        Ok(false)
    }
    fn is_rotational(&self, _next: &Context) -> Result<bool> {
        Ok(false)
    }
    fn can_trim(&self, _next: &Context) -> Result<bool> {
        Ok(false)
    }
    fn can_zero(&self, _next: &Context) -> Result<Support> {
        Ok(Support::None)
    }
    fn can_fast_zero(&self, _next: &Context) -> Result<bool> {
        Ok(false)
    }
    fn can_extents(&self, _next: &Context) -> Result<bool> {
        Ok(false)
    }
    fn can_fua(&self, _next: &Context) -> Result<Support> {
        Ok(Support::None)
    }
    fn can_multi_conn(&self, _next: &Context) -> Result<bool> {
        Ok(false)
    }
    fn can_cache(&self, _next: &Context) -> Result<Support> {
        Ok(Support::None)
    }
    fn pread(&self, _next: &Context, buf: &mut [u8], offset: u64, _flags: Flags) -> Result<()> {
        let start = usize::try_from(offset).map_err(|_| Error::new(Errno::EINVAL))?;
        let end = start
            .checked_add(buf.len())
            .filter(|e| *e <= self.0.len())
            .ok_or_else(|| Error::new(Errno::EINVAL))?;
        buf.copy_from_slice(&self.0[start..end]);
        Ok(())
    }
    fn pwrite(&self, _: &Context, _: &[u8], _: u64, _: Flags) -> Result<()> {
        Err(Error::new(Errno::EROFS))
    }
    fn extents(
        &self,
        _: &Context,
        count: u64,
        offset: u64,
        _: Flags,
        e: &mut Extents,
    ) -> Result<()> {
        e.add(offset, count, 0)
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn readme_param() {
        let mut f = TlsFallback::default();
        assert!(f.readme.starts_with(b"This NBD server requires TLS"));
        assert!(f.config("tlsreadme", "hello").unwrap());
        assert_eq!(f.readme, b"hello");
        assert!(!f.config("size", "1").unwrap());
    }
}
