//! The plugins and filters built into this nbdkit, by name.

use nbdkit_core::backend::{Filter, Plugin};
use nbdkit_core::plugins;

/// The short name of a plugin or filter given as a name or as a path such
/// as `/usr/lib/nbdkit/plugins/nbdkit-file-plugin.so`.
pub(crate) fn short_name(arg: &str, kind: &str) -> String {
    let base = arg.rsplit('/').next().unwrap_or(arg);
    let prefix = "nbdkit-";
    let suffix = format!("-{kind}.so");
    match base
        .strip_prefix(prefix)
        .and_then(|b| b.strip_suffix(&suffix))
    {
        Some(n) if arg.contains('/') || base.ends_with(".so") => n.to_string(),
        _ => arg.to_string(),
    }
}

/// A fresh, unconfigured plugin.
pub(crate) fn plugin(name: &str) -> Option<Box<dyn Plugin>> {
    Some(match name {
        "memory" => Box::new(plugins::memory::Memory::default()),
        "null" => Box::new(plugins::null::Null::default()),
        "zero" => Box::new(plugins::zero::Zero),
        "full" => Box::new(plugins::full::Full::default()),
        _ => return runtime_plugin(name),
    })
}

fn runtime_plugin(name: &str) -> Option<Box<dyn Plugin>> {
    #[allow(clippy::match_single_binding)]
    match name {
        _ => nbdkit_runtime_std::plugins::by_name(name),
    }
}

/// A fresh, unconfigured filter.
pub(crate) fn filter(name: &str) -> Option<Box<dyn Filter>> {
    let _ = name;
    None
}
