//! Reply framing for one connection, without state: what a request's
//! answer looks like on the wire, given the reply style and the
//! `base:allocation` context id that negotiation settled.
//!
//! The [`Engine`](super::Engine) frames its replies with it; a runtime that
//! answers requests on many threads at once keeps a copy per connection
//! (it is `Copy`) and frames there, keeping its own in-flight count.

use super::{Command, NbdError, Refused, ReplyStyle, Valid};
use crate::handshake::{Negotiated, BASE_ALLOCATION_ID};

/// How replies are framed on one connection. See the [module
/// documentation](self).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framer {
    style: ReplyStyle,
    base_allocation: u32,
}

impl Framer {
    /// Bytes a reply buffer needs for every method except
    /// [`block_status`](Self::block_status) (and except the message of an
    /// error, which is cut to fit).
    pub const REPLY_LEN: usize = ReplyStyle::MAX_HEADER;

    /// The framing negotiation settled.
    pub fn of(n: &Negotiated) -> Self {
        Self::new(
            ReplyStyle::of(n),
            n.base_allocation.unwrap_or(BASE_ALLOCATION_ID),
        )
    }

    /// Replies of `style`, with `base_allocation` as the id of the
    /// `base:allocation` context.
    pub const fn new(style: ReplyStyle, base_allocation: u32) -> Self {
        Framer {
            style,
            base_allocation,
        }
    }

    /// The reply style (simple, structured, extended).
    pub fn style(&self) -> ReplyStyle {
        self.style
    }

    /// The complete reply of a request that succeeded without data.
    #[inline]
    pub fn ok(&self, v: &Valid, buf: &mut [u8]) -> usize {
        self.style.ok(buf, v.cookie, v.offset)
    }

    /// The header of a successful READ's reply; exactly `v.count` bytes of
    /// data must follow it.
    #[inline]
    pub fn read(&self, v: &Valid, buf: &mut [u8]) -> usize {
        self.style.read_header(buf, v.cookie, v.offset, v.count)
    }

    /// The complete reply of a request that failed, with an optional
    /// message (sent in an error chunk when the reply style carries one).
    pub fn error(&self, v: &Valid, error: NbdError, message: &[u8], buf: &mut [u8]) -> usize {
        self.style
            .error(buf, Some(v.command), v.cookie, v.offset, error, message)
    }

    /// The complete reply of a request refused by validation.
    pub fn refused(&self, r: &Refused, buf: &mut [u8]) -> usize {
        self.style
            .error(buf, r.command, r.cookie, r.offset, r.error, b"")
    }

    /// Bytes [`block_status`](Self::block_status) needs for `n` extents.
    pub fn block_status_len(&self, n: usize) -> usize {
        self.style.block_status_len(n)
    }

    /// The complete reply of a BLOCK_STATUS request for `base:allocation`,
    /// from extents (offset, length, flags) starting at the request's
    /// offset (see [`ReplyStyle::block_status`] for the clipping rules).
    pub fn block_status<I>(&self, v: &Valid, extents: I, buf: &mut [u8]) -> usize
    where
        I: IntoIterator<Item = (u64, u64, u32)>,
    {
        debug_assert_eq!(v.command, Command::BlockStatus);
        self.style.block_status(
            buf,
            v.cookie,
            v.offset,
            v.count,
            v.cmd_flags().contains(super::CmdFlags::REQ_ONE),
            self.base_allocation,
            extents,
        )
    }
}
