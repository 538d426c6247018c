//! nbdkit on bare metal: a smoltcp poll loop that serves a block device
//! over NBD with the protocol core of nbdkit-rs, through core's plugin and
//! filter stack.
//!
//! - [`disk`]: the [`BlockDevice`] trait (a driver: no heap) and the
//!   devices it comes with: a RAM disk over a caller's buffer, a read-only
//!   flash image, and any seekable `embedded-io` storage.
//! - [`plugin`]: [`DevicePlugin`], a device as a core `Plugin`, so that
//!   core's filters (`partition`, `offset`, `protect`, `nozero`, ...) stack
//!   over it in a `nbdkit_core::backend::Stack`.
//! - [`server`]: the [`Server`] that listens on a TCP port, negotiates
//!   (fixed newstyle, structured replies, extended headers, `base:allocation`)
//!   through `nbdkit_core::handshake`, opens the stack for each connection
//!   and serves requests framed and validated by
//!   `nbdkit_core::transmission`.
//!
//! Buffers are the caller's (TCP socket buffers) or sized by const
//! generics (connections, negotiators, option buffer). The stack needs a
//! global allocator: firmware gives it a small static heap (the firmware
//! example uses `embedded-alloc`); the server's data path allocates
//! nothing of its own. Logging goes through the `log` or the `defmt`
//! feature (not both), or nowhere.
//!
//! ```ignore
//! let stack = Stack::new(Box::new(DevicePlugin::new(disk)), filters);
//! let mut server: Server<'_, 2> = Server::new(Config::new(), stack, [h0, h1]);
//! loop {
//!     iface.poll(now(), &mut device, &mut sockets);
//!     server.poll(now(), &mut sockets);
//! }
//! ```
#![no_std]

extern crate alloc;

#[macro_use]
mod fmt;

pub mod disk;
pub mod plugin;
pub mod server;

pub use disk::{BlockDevice, DiskError, Extent, FlashDisk, IoDisk, RamDisk};
pub use plugin::{DevicePlugin, SharedDevice};
pub use server::{tcp_socket, Config, Server};
