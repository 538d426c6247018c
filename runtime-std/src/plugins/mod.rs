//! Plugins that need the operating system.
