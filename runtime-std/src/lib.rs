//! The nbdkit-rs server on Linux: listeners, the per-connection driver of
//! the sans-IO core, request dispatch by thread model, process control,
//! and the plugins that need the operating system.

pub mod plugins;
