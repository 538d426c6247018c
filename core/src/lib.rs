//! The protocol core of nbdkit-rs.
//!
//! This crate never touches a socket, a clock or a file. It is organised in
//! layers, each a folder:
//!
//! - [`wire`]: the byte layout of every NBD message, with no state.
//! - [`handshake`]: the sans-IO server side of negotiation.
//! - [`transmission`]: request framing and validation, reply framing.
//! - [`client`]: the client side of both phases, for proxying.
//! - [`backend`] (with `alloc`): the `Plugin` and `Filter` traits and the
//!   per-connection stack of contexts that implements nbdkit's defaults and
//!   emulations.
//! - [`plugins`] (with `alloc`): plugins that need nothing but memory.
#![no_std]

#[cfg(feature = "alloc")]
extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod client;
pub mod errno;
pub mod handshake;
pub mod transmission;
pub mod wire;

#[cfg(feature = "alloc")]
pub mod backend;
#[cfg(feature = "alloc")]
pub mod debug;
#[cfg(feature = "alloc")]
pub mod filters;
#[cfg(feature = "alloc")]
pub mod plugins;
pub mod size;
#[cfg(feature = "alloc")]
pub mod sync;

/// The nbdkit version whose behaviour this implementation follows.
pub const NBDKIT_VERSION: &str = "1.36.2";
/// Major part of [`NBDKIT_VERSION`].
pub const NBDKIT_VERSION_MAJOR: u32 = 1;
/// Minor part of [`NBDKIT_VERSION`].
pub const NBDKIT_VERSION_MINOR: u32 = 36;
/// What we are, reported in nbdkit's `version_extra` field.
pub const VERSION_EXTRA: &str = concat!("nbdkit-rs ", env!("CARGO_PKG_VERSION"));
