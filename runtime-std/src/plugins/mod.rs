//! Plugins that need the operating system.

pub mod file;
pub mod sh;
pub mod split;

use nbdkit_core::backend::Plugin;

/// A fresh, unconfigured plugin that needs the operating system.
pub fn by_name(name: &str) -> Option<Box<dyn Plugin>> {
    Some(match name {
        "file" => Box::new(file::File::default()),
        "sh" => Box::new(sh::sh::Sh::default()),
        "eval" => Box::new(sh::eval::Eval::default()),
        "split" => Box::new(split::Split::default()),
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
