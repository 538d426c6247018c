//! Plugins that need the operating system.

pub mod blkio;
pub mod cc;
pub mod cdi;
pub mod data;
pub mod example2;
pub mod example3;
pub mod file;
pub mod floppy;
pub mod info;
pub mod iso;
pub mod linuxdisk;
mod mkfs;
pub mod nbd;
pub mod ondemand;
pub mod partitioning;
mod ptable;
mod realpath;
pub mod sh;
pub mod split;
pub mod tmpdisk;
pub mod vddk;

use nbdkit_core::backend::Plugin;

/// A fresh, unconfigured plugin that needs the operating system.
pub fn by_name(name: &str) -> Option<Box<dyn Plugin>> {
    Some(match name {
        "file" => Box::new(file::File::default()),
        "cc" => Box::new(cc::Cc::default()),
        "cdi" => Box::new(cdi::Cdi::default()),
        "blkio" => Box::new(blkio::Blkio::default()),
        "sh" => Box::new(sh::sh::Sh::default()),
        "eval" => Box::new(sh::eval::Eval::default()),
        "split" => Box::new(split::Split::default()),
        "partitioning" => Box::new(partitioning::Partitioning::default()),
        "floppy" => Box::new(floppy::Floppy::default()),
        "info" => Box::new(info::Info::default()),
        "linuxdisk" => Box::new(linuxdisk::LinuxDisk::default()),
        "iso" => Box::new(iso::Iso::default()),
        "nbd" => Box::new(nbd::Nbd::default()),
        "tmpdisk" => Box::new(tmpdisk::TmpDisk::default()),
        "vddk" => Box::new(vddk::Vddk::default()),
        "ondemand" => Box::new(ondemand::OnDemand::default()),
        "data" => Box::new(data::Data::default()),
        "example2" => Box::new(example2::Example2::default()),
        "example3" => Box::new(example3::Example3::default()),
        // Without seed=, nbdkit seeds these with the time it was loaded.
        "random" => Box::new(nbdkit_core::plugins::random::Random::with_seed(time_seed())),
        "sparse-random" => {
            Box::new(nbdkit_core::plugins::sparse_random::SparseRandom::with_seed(time_seed()))
        }
        _ => return None,
    })
}

/// The current time in seconds, truncated to 32 bits (nbdkit's
/// `seed = time (NULL)`).
fn time_seed() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(0)
}

/// What the plugins' unit tests share.
#[cfg(test)]
pub(crate) mod testing {
    use nbdkit_core::backend::{Handle, OpenArgs, Peer, Plugin};

    pub(crate) use crate::os::tmpfile::TempDir;

    /// A fresh temporary directory for a test's files.
    pub(crate) fn dir(prefix: &str) -> TempDir {
        TempDir::new_in(&std::env::temp_dir(), prefix).unwrap()
    }

    /// Open the default export of a configured plugin, as a local client.
    pub(crate) fn open(p: &dyn Plugin, readonly: bool) -> Box<dyn Handle> {
        p.open(&OpenArgs {
            readonly,
            export_name: "",
            is_tls: false,
            peer: &Peer::Unknown,
        })
        .unwrap()
    }
}
