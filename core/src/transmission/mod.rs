//! transmission
