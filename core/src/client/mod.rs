//! The sans-IO client side of NBD, beside the server side: what the `nbd`
//! plugin (the proxy) speaks to another NBD server, and what an embedded
//! runtime could speak too.
//!
//! - [`handshake`]: negotiation as a client, from the greeting to
//!   `NBD_OPT_GO` (or the export list, or `NBD_OPT_INFO`): TLS, extended
//!   headers or structured replies, the `base:allocation` meta context and
//!   the export's size, flags, block sizes, name and description.
//! - [`reply`]: the transmission phase: reply headers are decoded and every
//!   chunk is checked against the request it answers before the runtime
//!   reads a byte of its payload.
//!
//! Like the server side, nothing here reads a socket, allocates or panics
//! on peer input: every length from the server is bounded first, and a
//! server that breaks the protocol gets a typed error.

pub mod handshake;
pub mod reply;

#[cfg(test)]
mod tests;
