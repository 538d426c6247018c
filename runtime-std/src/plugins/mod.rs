//! Plugins that need the operating system.

pub mod file;

use nbdkit_core::backend::Plugin;

/// A fresh, unconfigured plugin that needs the operating system.
pub fn by_name(name: &str) -> Option<Box<dyn Plugin>> {
    Some(match name {
        "file" => Box::new(file::File::default()),
        _ => return None,
    })
}
