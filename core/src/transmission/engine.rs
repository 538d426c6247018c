//! The connection engine of the transmission phase, without I/O.
//!
//! After the handshake a runtime owns one [`Engine`] per connection. It
//! feeds it the bytes it reads ([`Engine::handle_input`]) and gets back how
//! many it used and at most one [`Event`]: a validated request to run, a
//! piece of a WRITE's payload (a slice of the runtime's own input, so data
//! is never copied), a refused request to answer, or the end of the
//! connection. Replies are framed by the engine into the runtime's buffers
//! (`reply_*`), which also keeps the count of requests in flight: while it
//! is at [`Limits::max_in_flight`] the engine takes no new request header
//! ([`Want::Busy`]). The runtime moves bytes and runs requests; the engine
//! decides what the bytes mean (rustls' unbuffered API and quinn-proto are
//! the models).
//!
//! Validation follows nbdkit's order ([`check`]), then the runtime's
//! [`Limits`]; a refused request's payload is read and discarded before
//! its error reply is due, so framing is kept.

use super::{
    check, decode, header_len, Command, Export, Framer, FramingError, NbdError, ReplyStyle, Valid,
    MAX_REQUEST_SIZE,
};
use crate::handshake::Negotiated;
use crate::wire::transmission::RequestHeader;

/// What the runtime allows on a connection, besides what negotiation
/// settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest READ or WRITE the runtime serves (its advertised maximum
    /// block size). Larger ones, up to nbdkit's [`MAX_REQUEST_SIZE`], get
    /// EINVAL; beyond that they get ENOMEM as in nbdkit.
    pub max_request: u64,
    /// Requests handed out (or refused) and not answered yet, at most.
    /// 0: the engine does not count them (a runtime that answers on other
    /// threads bounds its concurrency itself, e.g. with a semaphore).
    pub max_in_flight: u32,
}

impl Limits {
    /// Up to nbdkit's largest request, requests in flight not counted.
    pub const UNCOUNTED: Limits = Limits {
        max_request: MAX_REQUEST_SIZE,
        max_in_flight: 0,
    };

    /// One request at a time, up to nbdkit's largest request.
    pub const fn new() -> Self {
        Limits {
            max_request: MAX_REQUEST_SIZE,
            max_in_flight: 1,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self::new()
    }
}

/// Why the connection ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    /// The client sent NBD_CMD_DISC: answer what is in flight, then close.
    Disconnect,
    /// A request header without the negotiated magic: framing is lost.
    BadMagic,
    /// A payload too large to read and discard.
    PayloadTooLarge,
}

impl From<FramingError> for Close {
    fn from(e: FramingError) -> Self {
        match e {
            FramingError::BadMagic => Close::BadMagic,
            FramingError::PayloadTooLarge => Close::PayloadTooLarge,
        }
    }
}

/// A request that failed validation; answer it with
/// [`Engine::reply_refused`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// The command, when it is one the server knows.
    pub command: Option<Command>,
    /// Cookie to echo.
    pub cookie: u64,
    /// The request's offset (echoed by extended replies).
    pub offset: u64,
    /// Why it was refused.
    pub error: NbdError,
}

/// What the input meant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    /// Run this request against the backend and answer it with one of the
    /// `reply_*` methods. A WRITE's payload follows as [`Event::Payload`]s.
    Request(Valid),
    /// Bytes of the current WRITE's payload, to be written at `offset`
    /// (a slice of the input); `last` on the final piece.
    Payload {
        /// Where these bytes go in the export.
        offset: u64,
        /// The bytes.
        data: &'a [u8],
        /// This piece ends the payload.
        last: bool,
    },
    /// A request that failed validation (its payload, if any, has been
    /// discarded).
    Refused(Refused),
    /// The connection is over: read no more. Replies for requests still
    /// in flight may be sent first. Reported again on every later call.
    Close(Close),
}

/// The result of one call to [`Engine::handle_input`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress<'a> {
    /// Bytes of the input used; the runtime drops them.
    pub consumed: usize,
    /// What they completed, if anything.
    pub event: Option<Event<'a>>,
}

/// What the engine expects next, so a runtime can size its reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// Bytes still missing from the next request header.
    Header(usize),
    /// Bytes of the current WRITE's payload still to come.
    Payload(u64),
    /// Bytes of a refused request's payload still to discard.
    Skip(u64),
    /// Nothing until a reply is sent: the in-flight limit is reached.
    Busy,
    /// Nothing ever again.
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Header,
    Payload { offset: u64, remaining: u64 },
    Skip { remaining: u64, refused: Refused },
    Closed(Close),
}

/// The transmission phase of one connection. See the [module
/// documentation](self).
#[derive(Debug, Clone)]
pub struct Engine {
    export: Export,
    framer: Framer,
    limits: Limits,
    header: [u8; RequestHeader::EXTENDED_LEN],
    have: usize,
    state: State,
    in_flight: u32,
}

impl Engine {
    /// Bytes a reply buffer needs for every `reply_*` call except
    /// [`reply_block_status`](Self::reply_block_status) (and except the
    /// message of an error, which is cut to fit).
    pub const REPLY_LEN: usize = Framer::REPLY_LEN;

    /// The engine for a connection whose negotiation settled `negotiated`.
    pub fn new(negotiated: Negotiated, limits: Limits) -> Self {
        Engine {
            export: Export { negotiated },
            framer: Framer::of(&negotiated),
            limits,
            header: [0; RequestHeader::EXTENDED_LEN],
            have: 0,
            state: State::Header,
            in_flight: 0,
        }
    }

    /// What negotiation settled.
    pub fn negotiated(&self) -> &Negotiated {
        &self.export.negotiated
    }

    /// How replies are framed.
    pub fn style(&self) -> ReplyStyle {
        self.framer.style()
    }

    /// The framing of this connection's replies, for runtimes that frame
    /// a reply away from the engine (e.g. on a worker thread); they call
    /// [`completed`](Self::completed) once it is sent, unless they count
    /// requests in flight themselves.
    pub fn framer(&self) -> Framer {
        self.framer
    }

    /// Requests handed out or refused and not answered yet.
    pub fn in_flight(&self) -> u32 {
        self.in_flight
    }

    /// What the engine expects next.
    pub fn wants(&self) -> Want {
        match self.state {
            State::Closed(_) => Want::Closed,
            State::Payload { remaining, .. } => Want::Payload(remaining),
            State::Skip { remaining, .. } => Want::Skip(remaining),
            State::Header if self.busy() => Want::Busy,
            State::Header => Want::Header(self.header_len() - self.have),
        }
    }

    /// Why the connection ended, once it has.
    pub fn close_reason(&self) -> Option<Close> {
        match self.state {
            State::Closed(c) => Some(c),
            _ => None,
        }
    }

    fn header_len(&self) -> usize {
        header_len(self.export.negotiated.extended_headers)
    }

    /// Feed bytes read from the client. Uses what it can up to the first
    /// event; call again with the rest. Never panics on any input.
    pub fn handle_input<'a>(&mut self, input: &'a [u8]) -> Progress<'a> {
        let nothing = |consumed| Progress {
            consumed,
            event: None,
        };
        match self.state {
            State::Closed(c) => Progress {
                consumed: 0,
                event: Some(Event::Close(c)),
            },
            _ if input.is_empty() => nothing(0),
            State::Payload { offset, remaining } => {
                let n = clamp(remaining, input.len());
                let left = remaining - n as u64;
                self.state = if left == 0 {
                    State::Header
                } else {
                    State::Payload {
                        offset: offset + n as u64,
                        remaining: left,
                    }
                };
                Progress {
                    consumed: n,
                    event: Some(Event::Payload {
                        offset,
                        data: &input[..n],
                        last: left == 0,
                    }),
                }
            }
            State::Skip { remaining, refused } => {
                let n = clamp(remaining, input.len());
                let left = remaining - n as u64;
                if left > 0 {
                    self.state = State::Skip {
                        remaining: left,
                        refused,
                    };
                    return nothing(n);
                }
                self.state = State::Header;
                self.handed_out();
                Progress {
                    consumed: n,
                    event: Some(Event::Refused(refused)),
                }
            }
            State::Header => {
                if self.busy() {
                    return nothing(0);
                }
                let hlen = self.header_len();
                let n = (hlen - self.have).min(input.len());
                self.header[self.have..self.have + n].copy_from_slice(&input[..n]);
                self.have += n;
                if self.have < hlen {
                    return nothing(n);
                }
                self.have = 0;
                Progress {
                    consumed: n,
                    event: self.on_header(),
                }
            }
        }
    }

    fn busy(&self) -> bool {
        self.limits.max_in_flight != 0 && self.in_flight >= self.limits.max_in_flight
    }

    fn handed_out(&mut self) {
        if self.limits.max_in_flight != 0 {
            self.in_flight += 1;
        }
    }

    /// The runtime moved `n` bytes of the current payload itself (read a
    /// WRITE's payload into its own buffer, or discarded a refused
    /// request's) instead of passing them to
    /// [`handle_input`](Self::handle_input). Returns the refusal to answer
    /// once a refused request's payload is all gone. `n` is clamped to
    /// what the payload has left; outside a payload this does nothing.
    pub fn take_payload(&mut self, n: u64) -> Option<Refused> {
        match self.state {
            State::Payload { offset, remaining } => {
                let n = n.min(remaining);
                self.state = if n == remaining {
                    State::Header
                } else {
                    State::Payload {
                        offset: offset + n,
                        remaining: remaining - n,
                    }
                };
                None
            }
            State::Skip { remaining, refused } => {
                if n < remaining {
                    self.state = State::Skip {
                        remaining: remaining - n,
                        refused,
                    };
                    return None;
                }
                self.state = State::Header;
                self.handed_out();
                Some(refused)
            }
            State::Header | State::Closed(_) => None,
        }
    }

    /// A complete header is in `self.header`: decode, validate, and decide.
    fn on_header(&mut self) -> Option<Event<'static>> {
        let hlen = self.header_len();
        let req = match decode(
            &self.header[..hlen],
            self.export.negotiated.extended_headers,
        ) {
            Ok(r) => r,
            Err(e) => {
                let c = Close::from(e);
                self.state = State::Closed(c);
                return Some(Event::Close(c));
            }
        };
        let checked = check(&self.export, &req).and_then(|v| {
            let big = matches!(v.command, Command::Read | Command::Write)
                && v.count > self.limits.max_request;
            if big {
                Err(NbdError::Inval)
            } else {
                Ok(v)
            }
        });
        match checked {
            Ok(v) if v.command == Command::Disc => {
                self.state = State::Closed(Close::Disconnect);
                Some(Event::Close(Close::Disconnect))
            }
            Ok(v) => {
                self.handed_out();
                if req.payload_len > 0 {
                    // Only a WRITE passes validation with a payload.
                    self.state = State::Payload {
                        offset: v.offset,
                        remaining: req.payload_len,
                    };
                }
                Some(Event::Request(v))
            }
            Err(error) => {
                let refused = Refused {
                    command: Command::from_wire(req.header.command),
                    cookie: req.header.cookie,
                    offset: req.header.offset,
                    error,
                };
                if req.payload_len > 0 {
                    self.state = State::Skip {
                        remaining: req.payload_len,
                        refused,
                    };
                    None
                } else {
                    self.handed_out();
                    Some(Event::Refused(refused))
                }
            }
        }
    }

    /// One request handed out has been answered (by a reply framed with
    /// [`style`](Self::style)); the `reply_*` methods call it themselves.
    pub fn completed(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    /// The complete reply of a request that succeeded without data.
    pub fn reply_ok(&mut self, v: &Valid, buf: &mut [u8]) -> usize {
        self.completed();
        self.framer.ok(v, buf)
    }

    /// The header of a successful READ's reply; exactly `v.count` bytes of
    /// data must follow it.
    pub fn reply_read(&mut self, v: &Valid, buf: &mut [u8]) -> usize {
        self.completed();
        self.framer.read(v, buf)
    }

    /// The complete reply of a request that failed, with an optional
    /// message (sent in an error chunk when the reply style carries one).
    pub fn reply_error(
        &mut self,
        v: &Valid,
        error: NbdError,
        message: &[u8],
        buf: &mut [u8],
    ) -> usize {
        self.completed();
        self.framer.error(v, error, message, buf)
    }

    /// The complete reply of a request refused by validation.
    pub fn reply_refused(&mut self, r: &Refused, buf: &mut [u8]) -> usize {
        self.completed();
        self.framer.refused(r, buf)
    }

    /// Bytes [`reply_block_status`](Self::reply_block_status) needs for
    /// `n` extents.
    pub fn block_status_len(&self, n: usize) -> usize {
        self.framer.block_status_len(n)
    }

    /// The complete reply of a BLOCK_STATUS request for `base:allocation`,
    /// from extents (offset, length, flags) starting at the request's
    /// offset (see [`ReplyStyle::block_status`] for the clipping rules).
    pub fn reply_block_status<I>(&mut self, v: &Valid, extents: I, buf: &mut [u8]) -> usize
    where
        I: IntoIterator<Item = (u64, u64, u32)>,
    {
        self.completed();
        self.framer.block_status(v, extents, buf)
    }
}

/// `min(remaining, len)` as a slice length.
fn clamp(remaining: u64, len: usize) -> usize {
    usize::try_from(remaining).map_or(len, |r| r.min(len))
}

#[cfg(test)]
mod test;
