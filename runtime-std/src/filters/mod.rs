//! Filters that need the operating system (files, clocks, processes).

pub mod cache;
mod core_filters;
pub mod cow;
pub mod ddrescue;
pub mod delay;
pub mod exitlast;
pub mod exitwhen;
pub mod ext2;
pub mod extentlist;
pub mod gzip;
pub mod ip;
pub mod limit;
pub mod log;
pub mod luks;
pub mod pause;
pub mod qcow2dec;
pub mod rate;
pub mod readahead;
pub mod scan;
pub mod stats;
pub mod tar;
pub mod tls_fallback;
mod util;
pub mod xz;

use nbdkit_core::backend::Filter;

/// A fresh, unconfigured filter of this folder, by name.
pub fn by_name(name: &str) -> Option<Box<dyn Filter>> {
    Some(match name {
        "cache" => Box::new(cache::Cache::default()),
        "cow" => Box::new(cow::Cow::default()),
        "error" => core_filters::error(),
        "evil" => core_filters::evil(),
        "exportname" => core_filters::exportname(),
        "retry" => core_filters::retry(),
        "retry-request" => core_filters::retry_request(),
        "delay" => Box::new(delay::Delay::default()),
        "ddrescue" => Box::new(ddrescue::Ddrescue::default()),
        "extentlist" => Box::new(extentlist::ExtentList::default()),
        "ext2" => Box::new(ext2::Ext2::default()),
        "pause" => Box::new(pause::Pause::default()),
        "rate" => Box::new(rate::Rate::default()),
        "readahead" => Box::new(readahead::Readahead::default()),
        "luks" => Box::new(luks::Luks::default()),
        "scan" => Box::new(scan::Scan::default()),
        "exitlast" => Box::new(exitlast::ExitLast::default()),
        "exitwhen" => Box::new(exitwhen::ExitWhen::default()),
        "gzip" => Box::new(gzip::Gzip::default()),
        "ip" => Box::new(ip::Ip::default()),
        "limit" => Box::new(limit::Limit::default()),
        "log" => Box::new(log::Log::default()),
        "qcow2dec" => Box::new(qcow2dec::Qcow2Dec),
        "stats" => Box::new(stats::Stats::default()),
        "tar" => Box::new(tar::Tar::default()),
        "tls-fallback" => Box::new(tls_fallback::TlsFallback::default()),
        "xz" => Box::new(xz::Xz::default()),
        _ => return None,
    })
}
