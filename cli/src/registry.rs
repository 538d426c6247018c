//! The plugins and filters built into this nbdkit, by name: those of the
//! core (memory only) first, then those that need the operating system.

use nbdkit_core::backend::{Filter, Plugin};

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
    nbdkit_core::plugins::by_name(name).or_else(|| nbdkit_runtime_std::plugins::by_name(name))
}

/// A fresh, unconfigured filter.
pub(crate) fn filter(name: &str) -> Option<Box<dyn Filter>> {
    nbdkit_core::filters::by_name(name).or_else(|| nbdkit_runtime_std::filters::by_name(name))
}
