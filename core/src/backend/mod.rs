//! The plugin and filter framework: nbdkit's plugin API v2 and filter API
//! in Rust, and the per-connection [`Context`] stack that implements the
//! server's defaults, caches and emulations between layers.
//!
//! A [`Plugin`] is loaded once; for each connection its `open` returns a
//! [`Handle`] whose methods serve that connection. A [`Filter`] sits above
//! the plugin (or another filter); its per-connection [`FilterHandle`] gets
//! the layer below as a [`Context`] on every call, like nbdkit's `next`.

mod callbacks;
mod context;
mod error;
mod extents;
mod filter;
mod lent;
mod plugin;
mod receive;
mod types;

pub use callbacks::Callbacks;
pub use context::{Caps, Context, DefaultExports, Stack, EMULATION_CHUNK};
pub use error::{Error, Result};
pub use extents::{Extent, Extents};
pub use filter::{Filter, FilterHandle, NextExports, NextOpener, PassThrough, Reopener};
pub use lent::{
    free_hook, set_free_hook, Lent, LentBytes, Segment, SharedBytes, ZERO_PAGE, ZERO_PAGE_LEN,
};
pub use plugin::{Handle, Plugin};
pub use receive::Receive;
pub use types::{BlockSize, Export, Exports, Flags, OpenArgs, Peer, Support, ThreadModel};
