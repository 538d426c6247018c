//! The nbdkit-rs server on Linux: listeners, the per-connection driver of
//! the sans-IO core, request dispatch by thread model, process control,
//! and the plugins that need the operating system.
#![allow(clippy::std_instead_of_core, clippy::alloc_instead_of_core)] // an std crate

mod blocking;
pub mod cabi;
mod connection;
pub mod filters;
pub mod log;
pub mod plugins;
pub mod process;
pub mod server;
pub mod tls;

pub use server::{serve, Family, Listen, ServeConfig};
