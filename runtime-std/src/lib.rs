//! The nbdkit-rs server on Linux and FreeBSD: listeners, the
//! per-connection driver of the sans-IO core, request dispatch by thread
//! model, process control, and the plugins that need the operating system.
//! What differs between the two systems is all in the `os` module.
#![allow(clippy::std_instead_of_core, clippy::alloc_instead_of_core)] // an std crate

#[cfg(target_os = "linux")]
mod accept;
mod blocking;
pub mod cabi;
mod connection;
mod cores;
mod eintr;
pub mod filters;
pub mod log;
mod os;
pub mod plugins;
mod poll;
#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod pow;
pub mod process;
mod readbuf;
mod request;
pub mod server;
mod splice_write;
pub mod tls;
mod zerocopy;

pub use os::services::tcp_service_port;
pub use server::{serve, Family, Listen, ServeConfig};
