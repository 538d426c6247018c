//! nbdkit on bare metal: a smoltcp poll loop that serves a block device
//! over NBD with the protocol core of nbdkit-rs, without a heap.
//!
//! - [`disk`]: the [`BlockDevice`] trait and the devices it comes with: a
//!   RAM disk over a caller's buffer, a read-only flash image, and any
//!   seekable `embedded-io` storage.
//! - [`server`]: the [`Server`] that listens on a TCP port, negotiates
//!   (fixed newstyle, structured replies, extended headers, `base:allocation`)
//!   through `nbdkit_core::handshake`, and serves requests framed and
//!   validated by `nbdkit_core::transmission`.
//!
//! Every buffer is the caller's (TCP socket buffers) or sized by const
//! generics (connections, negotiators, option buffer). Logging goes through
//! the `log` or the `defmt` feature (not both), or nowhere.
//!
//! ```ignore
//! let mut server: Server<'_, RamDisk<'_>, 2> = Server::new(Config::new(), disk, [h0, h1]);
//! loop {
//!     iface.poll(now(), &mut device, &mut sockets);
//!     server.poll(now(), &mut sockets);
//! }
//! ```
#![no_std]

#[macro_use]
mod fmt;

pub mod disk;
pub mod server;

pub use disk::{BlockDevice, DiskError, Extent, FlashDisk, IoDisk, RamDisk};
pub use server::{tcp_socket, Config, Server};
