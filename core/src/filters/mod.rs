//! Filters that need nothing but memory. Each file is one filter, with its
//! parameters documented at the top.

pub mod blocksize;
pub mod blocksize_policy;
pub mod cacheextents;
pub mod checkwrite;
pub mod error;
pub mod evil;
pub mod exportname;
pub mod fua;
pub mod multi_conn;
pub mod nocache;
pub mod noextents;
pub mod nofilter;
pub mod noparallel;
pub mod nozero;
pub mod offset;
pub mod params;
pub mod partition;
pub mod protect;
pub mod random;
pub mod retry;
pub mod retry_request;
pub mod swab;
pub mod truncate;

/// A fresh, unconfigured filter of this folder, by name. Filters that need
/// a hook from the runtime (`error`, `retry`, `exportname`, ...) are not
/// listed: the runtime builds them.
pub fn by_name(name: &str) -> Option<alloc::boxed::Box<dyn crate::backend::Filter>> {
    use alloc::boxed::Box;
    #[allow(clippy::match_single_binding)]
    Some(match name {
        "blocksize" => Box::new(blocksize::Blocksize::default()),
        "blocksize-policy" => Box::new(blocksize_policy::BlocksizePolicy::default()),
        "cacheextents" => Box::new(cacheextents::CacheExtents::default()),
        "checkwrite" => Box::new(checkwrite::CheckWrite),
        "fua" => Box::new(fua::Fua::default()),
        "multi-conn" => Box::new(multi_conn::MultiConn::default()),
        "nocache" => Box::new(nocache::NoCache::default()),
        "noextents" => Box::new(noextents::NoExtents),
        "nofilter" => Box::new(nofilter::NoFilter),
        "noparallel" => Box::new(noparallel::NoParallel::default()),
        "nozero" => Box::new(nozero::NoZero::default()),
        "offset" => Box::new(offset::Offset::default()),
        "partition" => Box::new(partition::Partition::default()),
        "protect" => Box::new(protect::Protect::default()),
        "swab" => Box::new(swab::Swab::default()),
        "truncate" => Box::new(truncate::Truncate::default()),
        _ => return None,
    })
}
