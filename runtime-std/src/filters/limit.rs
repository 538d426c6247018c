//! The limit filter: refuse clients beyond `limit=N` concurrent
//! connections (default 1; 0 means unlimited).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use nbdkit_core::backend::{
    Error, Filter, FilterHandle, NextOpener, OpenArgs, PassThrough, Peer, Result,
};
use nbdkit_core::errno::Errno;

use super::util::parse_unsigned;

/// The limit filter.
#[derive(Debug)]
pub struct Limit {
    limit: u64,
    open: Arc<AtomicU64>,
}

impl Default for Limit {
    fn default() -> Self {
        Limit {
            limit: 1,
            open: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl Limit {
    fn too_many(&self) -> Result<()> {
        if self.limit > 0 && self.open.load(Ordering::SeqCst) >= self.limit {
            return Err(Error::msg(
                Errno::EINVAL,
                "limit: too many clients connected, connection rejected",
            ));
        }
        Ok(())
    }
}

/// Counts one open connection until dropped.
struct Counted(Arc<AtomicU64>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl FilterHandle for Counted {}

impl Filter for Limit {
    fn name(&self) -> &'static str {
        "limit"
    }

    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit limit filter")
    }

    fn config_help(&self) -> &'static str {
        "limit=<N>                      Limit number of clients (default 1)."
    }

    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        if key != "limit" {
            return Ok(false);
        }
        self.limit = u64::from(parse_unsigned(key, value)?);
        Ok(true)
    }

    fn preconnect(&self, _readonly: bool, _peer: &Peer) -> Result<()> {
        self.too_many()
    }

    fn open(
        &self,
        next: &mut dyn NextOpener,
        args: &OpenArgs<'_>,
    ) -> Result<Box<dyn FilterHandle>> {
        if self.limit == 0 {
            next.open(args.readonly, args.export_name)?;
            return Ok(Box::new(PassThrough));
        }
        // Count first, so that two racing clients cannot both get in.
        let n = self.open.fetch_add(1, Ordering::SeqCst);
        let counted = Counted(self.open.clone());
        if n >= self.limit {
            return Err(Error::msg(
                Errno::EINVAL,
                "limit: too many clients connected, connection rejected",
            ));
        }
        next.open(args.readonly, args.export_name)?;
        Ok(Box::new(counted))
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn limit_param() {
        let mut l = Limit::default();
        assert!(l.config("limit", "3").unwrap());
        assert_eq!(l.limit, 3);
        assert!(l.config("limit", "-1").is_err());
        assert!(!l.config("other", "1").unwrap());
    }

    #[test]
    fn refuses_beyond_limit() {
        let l = Limit::default();
        l.too_many().unwrap();
        let c = Counted(l.open.clone());
        l.open.fetch_add(1, Ordering::SeqCst);
        assert!(l.too_many().is_err());
        drop(c);
        l.too_many().unwrap();
    }
}
