//! The sans-IO client side of NBD negotiation.
//!
//! [`Handshake::new`] queues nothing until the server's greeting arrives.
//! The runtime buffers what it reads until it holds
//! [`Handshake::needed_for`] bytes, feeds them to
//! [`Handshake::handle_input`], which says how many it consumed and whether
//! the runtime must act ([`Event`]), and sends
//! [`Handshake::pending_output`]. Negotiation goes in this order, each step
//! only when configured and possible:
//!
//! 1. `NBD_OPT_STARTTLS` (the runtime upgrades the stream on
//!    [`Event::StartTls`] and calls [`Handshake::tls_established`]);
//! 2. `NBD_OPT_EXTENDED_HEADERS`, else `NBD_OPT_STRUCTURED_REPLY`;
//! 3. `NBD_OPT_SET_META_CONTEXT` with `base:allocation`;
//! 4. the goal: `NBD_OPT_GO` (falling back to `NBD_OPT_EXPORT_NAME` on a
//!    server without it), `NBD_OPT_INFO` or `NBD_OPT_LIST` (the last two end
//!    with `NBD_OPT_ABORT`).
//!
//! Oldstyle servers and newstyle servers that are not "fixed" get no
//! options but the export name. Every reply is checked: its magic, the
//! option it answers, and its length (at most [`MAX_OPTION_REPLY`] bytes)
//! before anything waits for its payload.

use core::fmt;

use crate::handshake::{Negotiated, Outbox, TlsMode};
use crate::wire::consts::*;
use crate::wire::handshake::{OldstyleGreeting, OptionHeader, OptionReplyHeader};
use crate::wire::{Reader, WireError};

/// The longest option reply payload accepted; a longer one is a protocol
/// error (a REP_SERVER holds at most two 4096-byte strings).
pub const MAX_OPTION_REPLY: u32 = 64 * 1024;

/// Size of the output buffer: the longest option the client sends (GO or
/// SET_META_CONTEXT with a 4096-byte name) and an ABORT after it.
pub const OUT_CAP: usize = 8 * 1024;

/// How much of a server's error message is kept.
pub const MESSAGE_CAP: usize = 1024;

/// The meta context the client asks for.
pub const BASE_ALLOCATION: &[u8] = b"base:allocation";

/// What negotiation is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Goal {
    /// Enter transmission on the export (`NBD_OPT_GO`).
    Go,
    /// Learn about the export, then abort (`NBD_OPT_INFO`).
    Info,
    /// List the server's exports, then abort (`NBD_OPT_LIST`).
    List,
}

/// How the client negotiates.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// TLS policy: off, opportunistic, or required.
    pub tls: TlsMode,
    /// Ask for structured replies.
    pub structured_replies: bool,
    /// Ask for extended headers (they imply structured replies).
    pub extended_headers: bool,
    /// Ask for the `base:allocation` meta context.
    pub base_allocation: bool,
    /// What the negotiation is for.
    pub goal: Goal,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            tls: TlsMode::Off,
            structured_replies: true,
            extended_headers: true,
            base_allocation: true,
            goal: Goal::Go,
        }
    }
}

/// Why negotiation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// The export name is longer than the protocol allows.
    NameTooLong,
    /// The peer did not greet with the NBD magic.
    NotNbd,
    /// TLS is required but the server cannot or will not start it.
    TlsNotSupported,
    /// The server requires TLS and the client does not use it.
    TlsRequired,
    /// The server cannot do what the goal needs (an oldstyle server has no
    /// export list, for example).
    Unsupported {
        /// The option that would be needed.
        option: u32,
    },
    /// The server refused an option with an error reply
    /// ([`Handshake::server_message`] holds its message, if any).
    Refused {
        /// The option.
        option: u32,
        /// The `NBD_REP_ERR_*` reply.
        reply: u32,
    },
    /// The server broke the protocol.
    Protocol(&'static str),
    /// The runtime called a method that does not fit the state.
    Usage,
}

/// nbdkit's name for an option.
pub fn option_name(option: u32) -> &'static str {
    match option {
        OPT_EXPORT_NAME => "NBD_OPT_EXPORT_NAME",
        OPT_ABORT => "NBD_OPT_ABORT",
        OPT_LIST => "NBD_OPT_LIST",
        OPT_STARTTLS => "NBD_OPT_STARTTLS",
        OPT_INFO => "NBD_OPT_INFO",
        OPT_GO => "NBD_OPT_GO",
        OPT_STRUCTURED_REPLY => "NBD_OPT_STRUCTURED_REPLY",
        OPT_LIST_META_CONTEXT => "NBD_OPT_LIST_META_CONTEXT",
        OPT_SET_META_CONTEXT => "NBD_OPT_SET_META_CONTEXT",
        OPT_EXTENDED_HEADERS => "NBD_OPT_EXTENDED_HEADERS",
        _ => "unknown option",
    }
}

/// The name of an error reply.
pub fn reply_name(reply: u32) -> &'static str {
    match reply {
        REP_ERR_UNSUP => "NBD_REP_ERR_UNSUP (not supported)",
        REP_ERR_POLICY => "NBD_REP_ERR_POLICY (forbidden by policy)",
        REP_ERR_INVALID => "NBD_REP_ERR_INVALID (invalid)",
        REP_ERR_PLATFORM => "NBD_REP_ERR_PLATFORM (not supported on this platform)",
        REP_ERR_TLS_REQD => "NBD_REP_ERR_TLS_REQD (TLS required)",
        REP_ERR_UNKNOWN => "NBD_REP_ERR_UNKNOWN (no such export)",
        REP_ERR_SHUTDOWN => "NBD_REP_ERR_SHUTDOWN (server shutting down)",
        REP_ERR_BLOCK_SIZE_REQD => "NBD_REP_ERR_BLOCK_SIZE_REQD (block size required)",
        REP_ERR_TOO_BIG => "NBD_REP_ERR_TOO_BIG (too big)",
        REP_ERR_EXT_HEADER_REQD => "NBD_REP_ERR_EXT_HEADER_REQD (extended headers required)",
        _ => "unknown error reply",
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NameTooLong => write!(f, "export name longer than {MAX_STRING} bytes"),
            Error::NotNbd => f.write_str("the server is not an NBD server (no NBD greeting)"),
            Error::TlsNotSupported => {
                f.write_str("TLS is required but the server does not support it")
            }
            Error::TlsRequired => {
                f.write_str("the server requires TLS (use tls=on or tls=require, or a nbds:// URI)")
            }
            Error::Unsupported { option } => write!(
                f,
                "the server does not support {} (it is oldstyle or not fixed newstyle)",
                option_name(*option)
            ),
            Error::Refused { option, reply } => write!(
                f,
                "the server refused {}: {}",
                option_name(*option),
                reply_name(*reply)
            ),
            Error::Protocol(what) => write!(f, "protocol error from the server: {what}"),
            Error::Usage => f.write_str("handshake used out of order"),
        }
    }
}

/// What the runtime must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    /// The server accepted STARTTLS: send the pending output (if any),
    /// run the TLS handshake on the stream, then call
    /// [`Handshake::tls_established`]. Nothing more may be read in
    /// plaintext.
    StartTls,
    /// One entry of the export list (goal [`Goal::List`]).
    Export {
        /// The export name.
        name: &'a [u8],
        /// Its description (may be empty).
        description: &'a [u8],
    },
}

/// The result of one call to [`Handshake::handle_input`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress<'a> {
    /// Bytes of the input that were used; the runtime drops them.
    pub consumed: usize,
    /// Something for the runtime to do, if any.
    pub event: Option<Event<'a>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for the first 16 bytes.
    Greeting,
    /// Oldstyle: waiting for the rest of the 152-byte greeting.
    Oldstyle,
    /// Newstyle: waiting for the 2 bytes of handshake flags.
    GlobalFlags,
    /// Waiting for a reply to this option.
    Reply(u32),
    /// Waiting for the reply to NBD_OPT_EXPORT_NAME.
    ExportName,
    /// Waiting for the runtime to set up TLS.
    StartTls,
    /// Negotiation succeeded.
    Done,
    /// Negotiation failed.
    Failed(Error),
}

/// The steps of negotiation, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    StartTls,
    ExtendedHeaders,
    StructuredReply,
    MetaContext,
    Goal,
}

/// A string of up to [`MAX_STRING`] bytes kept inside the handshake, once
/// it was given.
#[derive(Clone)]
struct Name<const N: usize>(Option<heapless::Vec<u8, N>>);

impl<const N: usize> Name<N> {
    const EMPTY: Self = Name(None);

    /// Keep `b`, truncated to the capacity.
    fn keep(&mut self, b: &[u8]) {
        self.0 = heapless::Vec::from_slice(&b[..b.len().min(N)]).ok();
    }

    fn get(&self) -> Option<&[u8]> {
        self.0.as_deref()
    }
}

/// The client side of a handshake.
pub struct Handshake {
    config: Config,
    state: State,
    export: Name<MAX_STRING>,
    fixed: bool,
    no_zeroes: bool,
    tls_active: bool,
    structured: bool,
    extended: bool,
    base_allocation: Option<u32>,
    got_export: bool,
    size: u64,
    eflags: u16,
    oldstyle: bool,
    block_size: Option<(u32, u32, u32)>,
    canonical: Name<MAX_STRING>,
    description: Name<MAX_STRING>,
    message: Name<MESSAGE_CAP>,
    out: Outbox<OUT_CAP>,
}

impl fmt::Debug for Handshake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handshake")
            .field("state", &self.state)
            .field("pending_output", &self.out.pending().len())
            .finish()
    }
}

fn none<'a>(consumed: usize) -> Result<Progress<'a>, Error> {
    Ok(Progress {
        consumed,
        event: None,
    })
}

impl Handshake {
    /// A client that will negotiate for `export` (the empty name is the
    /// default export; it is ignored by [`Goal::List`]).
    pub fn new(config: Config, export: &[u8]) -> Result<Self, Error> {
        if export.len() > MAX_STRING {
            return Err(Error::NameTooLong);
        }
        let mut name = Name::EMPTY;
        name.keep(export);
        Ok(Handshake {
            config,
            state: State::Greeting,
            export: name,
            fixed: false,
            no_zeroes: false,
            tls_active: false,
            structured: false,
            extended: false,
            base_allocation: None,
            got_export: false,
            size: 0,
            eflags: 0,
            oldstyle: false,
            block_size: None,
            canonical: Name::EMPTY,
            description: Name::EMPTY,
            message: Name::EMPTY,
            out: Outbox::new(),
        })
    }

    /// The output not yet sent.
    pub fn pending_output(&self) -> &[u8] {
        self.out.pending()
    }

    /// Mark `n` bytes of [`pending_output`](Self::pending_output) as sent.
    pub fn consume_output(&mut self, n: usize) {
        self.out.consume(n);
    }

    /// True once negotiation succeeded. With [`Goal::Go`] transmission
    /// starts; otherwise the runtime sends the pending ABORT and closes.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Why negotiation failed, if it did.
    pub fn error(&self) -> Option<Error> {
        match self.state {
            State::Failed(e) => Some(e),
            _ => None,
        }
    }

    /// Whether TLS is up.
    pub fn is_tls(&self) -> bool {
        self.tls_active
    }

    /// What negotiation settled (meaningful once [`is_done`](Self::is_done)
    /// with [`Goal::Go`] or [`Goal::Info`]).
    pub fn negotiated(&self) -> Negotiated {
        Negotiated {
            structured_replies: self.structured,
            extended_headers: self.extended,
            base_allocation: if self.structured {
                self.base_allocation
            } else {
                None
            },
            eflags: self.eflags,
            size: self.size,
            oldstyle: self.oldstyle,
        }
    }

    /// The block size constraints the server sent (minimum, preferred,
    /// maximum), as sent: the runtime decides whether they are usable.
    pub fn block_size(&self) -> Option<(u32, u32, u32)> {
        self.block_size
    }

    /// The canonical export name the server sent (NBD_INFO_NAME).
    pub fn canonical_name(&self) -> Option<&[u8]> {
        self.canonical.get()
    }

    /// The export description the server sent (NBD_INFO_DESCRIPTION).
    pub fn description(&self) -> Option<&[u8]> {
        self.description.get()
    }

    /// The message of the server's last error reply (possibly truncated).
    pub fn server_message(&self) -> Option<&[u8]> {
        self.message.get().filter(|m| !m.is_empty())
    }

    /// How many bytes of input must be buffered before
    /// [`handle_input`](Self::handle_input) can make progress: the whole
    /// next message, once its header says how long it is. Never more than
    /// [`OptionReplyHeader::LEN`] + [`MAX_OPTION_REPLY`].
    pub fn needed_for(&self, input: &[u8]) -> usize {
        match self.state {
            State::Greeting => 16,
            State::Oldstyle => OldstyleGreeting::LEN - 16,
            State::GlobalFlags => 2,
            State::ExportName => {
                if self.no_zeroes {
                    10
                } else {
                    134
                }
            }
            State::Reply(_) => match OptionReplyHeader::parse(input) {
                Ok(h) if h.length <= MAX_OPTION_REPLY => OptionReplyHeader::LEN + h.length as usize,
                _ => OptionReplyHeader::LEN,
            },
            State::StartTls | State::Done | State::Failed(_) => 0,
        }
    }

    /// The server's stream is up again after STARTTLS, encrypted.
    pub fn tls_established(&mut self) -> Result<(), Error> {
        if self.state != State::StartTls {
            return Err(Error::Usage);
        }
        self.tls_active = true;
        self.advance(Step::ExtendedHeaders);
        Ok(())
    }

    /// Feed input. Returns how much was consumed and any event; an error
    /// ends negotiation (the runtime closes the connection).
    pub fn handle_input<'a>(&mut self, input: &'a [u8]) -> Result<Progress<'a>, Error> {
        match self.state {
            State::Failed(e) => Err(e),
            State::Done | State::StartTls => none(0),
            State::Greeting => {
                if input.len() < 16 {
                    return none(0);
                }
                let mut r = Reader::new(input);
                let magic = r.u64().unwrap_or(0);
                let version = r.u64().unwrap_or(0);
                if magic != NBDMAGIC {
                    return Err(self.fail(Error::NotNbd));
                }
                match version {
                    IHAVEOPT => self.state = State::GlobalFlags,
                    OLDSTYLE_MAGIC => self.state = State::Oldstyle,
                    _ => return Err(self.fail(Error::NotNbd)),
                }
                none(16)
            }
            State::Oldstyle => {
                let need = OldstyleGreeting::LEN - 16;
                if input.len() < need {
                    return none(0);
                }
                // Parse the whole greeting with its magic put back.
                let mut whole = [0u8; OldstyleGreeting::LEN];
                whole[..8].copy_from_slice(&NBDMAGIC.to_be_bytes());
                whole[8..16].copy_from_slice(&OLDSTYLE_MAGIC.to_be_bytes());
                whole[16..].copy_from_slice(&input[..need]);
                let g = match OldstyleGreeting::parse(&whole) {
                    Ok(g) => g,
                    Err(_) => return Err(self.fail(Error::Protocol("malformed oldstyle greeting"))),
                };
                if self.config.tls == TlsMode::Require {
                    return Err(self.fail(Error::TlsNotSupported));
                }
                match self.config.goal {
                    Goal::Go => {}
                    Goal::Info => {
                        return Err(self.fail(Error::Unsupported { option: OPT_INFO }));
                    }
                    Goal::List => return Err(self.fail(Error::Unsupported { option: OPT_LIST })),
                }
                self.oldstyle = true;
                self.set_export(g.size, g.eflags);
                self.state = State::Done;
                none(need)
            }
            State::GlobalFlags => {
                if input.len() < 2 {
                    return none(0);
                }
                let gflags = u16::from_be_bytes([input[0], input[1]]);
                self.fixed = gflags & FLAG_FIXED_NEWSTYLE != 0;
                self.no_zeroes = gflags & FLAG_NO_ZEROES != 0;
                let mut cflags = 0u32;
                if self.fixed {
                    cflags |= FLAG_C_FIXED_NEWSTYLE;
                }
                if self.no_zeroes {
                    cflags |= FLAG_C_NO_ZEROES;
                }
                self.push(&cflags.to_be_bytes());
                self.advance(Step::StartTls);
                match self.state {
                    State::Failed(e) => Err(e),
                    _ => none(2),
                }
            }
            State::ExportName => {
                let need = self.needed_for(input);
                if input.len() < need {
                    return none(0);
                }
                let mut r = Reader::new(input);
                let size = r.u64().unwrap_or(0);
                let eflags = r.u16().unwrap_or(0);
                self.set_export(size, eflags);
                self.state = State::Done;
                none(need)
            }
            State::Reply(option) => self.option_reply(option, input),
        }
    }

    fn fail(&mut self, e: Error) -> Error {
        self.state = State::Failed(e);
        e
    }

    fn set_export(&mut self, size: u64, eflags: u16) {
        self.size = size;
        // Without HAS_FLAGS the other bits mean nothing.
        self.eflags = if eflags & FLAG_HAS_FLAGS != 0 {
            eflags
        } else {
            FLAG_HAS_FLAGS
        };
        self.got_export = true;
    }

    fn push(&mut self, b: &[u8]) {
        // Every option fits: the largest is 16 + 4 + 4096 + 27 bytes and
        // the buffer is drained before each reply is awaited.
        let queued = self.out.push(b);
        debug_assert!(queued, "option larger than the output buffer");
    }

    /// Queue an option request whose payload is the concatenation of `parts`.
    fn send_option(&mut self, option: u32, parts: &[&[u8]]) {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let mut h = [0u8; OptionHeader::LEN];
        OptionHeader {
            option,
            length: len as u32,
        }
        .emit(&mut h);
        self.push(&h);
        for p in parts {
            self.push(p);
        }
    }

    /// Send the first applicable step from `step` on.
    fn advance(&mut self, mut step: Step) {
        loop {
            match step {
                Step::StartTls => {
                    if self.config.tls != TlsMode::Off && !self.tls_active {
                        if self.fixed {
                            self.send_option(OPT_STARTTLS, &[]);
                            self.state = State::Reply(OPT_STARTTLS);
                            return;
                        }
                        if self.config.tls == TlsMode::Require {
                            self.state = State::Failed(Error::TlsNotSupported);
                            return;
                        }
                    }
                    step = Step::ExtendedHeaders;
                }
                Step::ExtendedHeaders => {
                    if self.fixed && self.config.extended_headers {
                        self.send_option(OPT_EXTENDED_HEADERS, &[]);
                        self.state = State::Reply(OPT_EXTENDED_HEADERS);
                        return;
                    }
                    step = Step::StructuredReply;
                }
                Step::StructuredReply => {
                    if self.fixed && self.config.structured_replies && !self.extended {
                        self.send_option(OPT_STRUCTURED_REPLY, &[]);
                        self.state = State::Reply(OPT_STRUCTURED_REPLY);
                        return;
                    }
                    step = Step::MetaContext;
                }
                Step::MetaContext => {
                    if self.structured
                        && self.config.base_allocation
                        && self.config.goal != Goal::List
                    {
                        let name = self.export.clone();
                        let name = name.get().unwrap_or(b"");
                        self.send_option(
                            OPT_SET_META_CONTEXT,
                            &[
                                &(name.len() as u32).to_be_bytes(),
                                name,
                                &1u32.to_be_bytes(),
                                &(BASE_ALLOCATION.len() as u32).to_be_bytes(),
                                BASE_ALLOCATION,
                            ],
                        );
                        self.state = State::Reply(OPT_SET_META_CONTEXT);
                        return;
                    }
                    step = Step::Goal;
                }
                Step::Goal => {
                    self.send_goal();
                    return;
                }
            }
        }
    }

    fn send_goal(&mut self) {
        let name = self.export.clone();
        let name = name.get().unwrap_or(b"");
        match self.config.goal {
            Goal::Go | Goal::Info if self.fixed => {
                let option = if self.config.goal == Goal::Go {
                    OPT_GO
                } else {
                    OPT_INFO
                };
                let mut infos = [0u8; 6];
                infos[0..2].copy_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
                infos[2..4].copy_from_slice(&INFO_NAME.to_be_bytes());
                infos[4..6].copy_from_slice(&INFO_DESCRIPTION.to_be_bytes());
                self.send_option(
                    option,
                    &[
                        &(name.len() as u32).to_be_bytes(),
                        name,
                        &3u16.to_be_bytes(),
                        &infos,
                    ],
                );
                self.state = State::Reply(option);
            }
            Goal::Go => self.send_export_name(),
            Goal::Info => self.state = State::Failed(Error::Unsupported { option: OPT_INFO }),
            Goal::List if self.fixed => {
                self.send_option(OPT_LIST, &[]);
                self.state = State::Reply(OPT_LIST);
            }
            Goal::List => self.state = State::Failed(Error::Unsupported { option: OPT_LIST }),
        }
    }

    fn send_export_name(&mut self) {
        let name = self.export.clone();
        self.send_option(OPT_EXPORT_NAME, &[name.get().unwrap_or(b"")]);
        self.state = State::ExportName;
    }

    /// End with NBD_OPT_ABORT (the runtime sends it and closes).
    fn finish_with_abort(&mut self) {
        self.send_option(OPT_ABORT, &[]);
        self.state = State::Done;
    }

    fn option_reply<'a>(&mut self, option: u32, input: &'a [u8]) -> Result<Progress<'a>, Error> {
        let h = match OptionReplyHeader::parse(input) {
            Ok(h) => h,
            Err(WireError::Truncated) => return none(0),
            Err(_) => return Err(self.fail(Error::Protocol("bad option reply magic"))),
        };
        if h.option != option {
            return Err(self.fail(Error::Protocol("option reply for another option")));
        }
        if h.length > MAX_OPTION_REPLY {
            return Err(self.fail(Error::Protocol("option reply too long")));
        }
        let total = OptionReplyHeader::LEN + h.length as usize;
        if input.len() < total {
            return none(0);
        }
        let payload = &input[OptionReplyHeader::LEN..total];
        let event = self.dispatch(option, h.reply_type, payload)?;
        Ok(Progress {
            consumed: total,
            event,
        })
    }

    fn dispatch<'a>(
        &mut self,
        option: u32,
        reply: u32,
        payload: &'a [u8],
    ) -> Result<Option<Event<'a>>, Error> {
        if reply & 0x8000_0000 != 0 {
            self.message.keep(payload);
            self.refused(option, reply);
            return match self.state {
                State::Failed(e) => Err(e),
                _ => Ok(None),
            };
        }
        if reply == REP_ACK && !payload.is_empty() {
            return Err(self.fail(Error::Protocol("NBD_REP_ACK with a payload")));
        }
        match (option, reply) {
            (OPT_STARTTLS, REP_ACK) => {
                self.state = State::StartTls;
                return Ok(Some(Event::StartTls));
            }
            (OPT_EXTENDED_HEADERS, REP_ACK) => {
                self.extended = true;
                self.structured = true;
                self.advance(Step::MetaContext);
            }
            (OPT_STRUCTURED_REPLY, REP_ACK) => {
                self.structured = true;
                self.advance(Step::MetaContext);
            }
            (OPT_SET_META_CONTEXT, REP_META_CONTEXT) => {
                let mut r = Reader::new(payload);
                let id = r
                    .u32()
                    .map_err(|_| self.fail(Error::Protocol("short NBD_REP_META_CONTEXT")))?;
                if r.rest() == BASE_ALLOCATION {
                    self.base_allocation = Some(id);
                }
            }
            (OPT_SET_META_CONTEXT, REP_ACK) => self.advance(Step::Goal),
            (OPT_GO | OPT_INFO, REP_INFO) => self.info(payload)?,
            (OPT_GO | OPT_INFO, REP_ACK) => {
                if !self.got_export {
                    return Err(
                        self.fail(Error::Protocol("NBD_OPT_GO ended without NBD_INFO_EXPORT"))
                    );
                }
                if option == OPT_GO {
                    self.state = State::Done;
                } else {
                    self.finish_with_abort();
                }
            }
            (OPT_LIST, REP_SERVER) => {
                let mut r = Reader::new(payload);
                let len = r.u32().unwrap_or(u32::MAX) as usize;
                let Ok(name) = r.take(len) else {
                    return Err(self.fail(Error::Protocol("malformed NBD_REP_SERVER")));
                };
                return Ok(Some(Event::Export {
                    name,
                    description: r.rest(),
                }));
            }
            (OPT_LIST, REP_ACK) => self.finish_with_abort(),
            // Unknown informational replies are ignored.
            (_, r) if r != REP_ACK => {}
            _ => return Err(self.fail(Error::Protocol("unexpected option reply"))),
        }
        Ok(None)
    }

    /// An error reply to `option`.
    fn refused(&mut self, option: u32, reply: u32) {
        match option {
            OPT_STARTTLS => {
                if self.config.tls == TlsMode::Require {
                    self.state = State::Failed(Error::TlsNotSupported);
                } else {
                    self.advance(Step::ExtendedHeaders);
                }
            }
            OPT_EXTENDED_HEADERS => self.advance(Step::StructuredReply),
            OPT_STRUCTURED_REPLY => self.advance(Step::MetaContext),
            OPT_SET_META_CONTEXT => {
                self.base_allocation = None;
                self.advance(Step::Goal);
            }
            OPT_GO if reply == REP_ERR_UNSUP => self.send_export_name(),
            _ if reply == REP_ERR_TLS_REQD && !self.tls_active => {
                self.state = State::Failed(Error::TlsRequired);
            }
            _ => self.state = State::Failed(Error::Refused { option, reply }),
        }
    }

    /// One NBD_REP_INFO.
    fn info(&mut self, payload: &[u8]) -> Result<(), Error> {
        let mut r = Reader::new(payload);
        let Ok(kind) = r.u16() else {
            return Err(self.fail(Error::Protocol("short NBD_REP_INFO")));
        };
        let rest = r.rest();
        let mut r = Reader::new(rest);
        match kind {
            INFO_EXPORT => {
                if rest.len() != 10 {
                    return Err(self.fail(Error::Protocol("malformed NBD_INFO_EXPORT")));
                }
                let size = r.u64().unwrap_or(0);
                let eflags = r.u16().unwrap_or(0);
                self.set_export(size, eflags);
            }
            INFO_BLOCK_SIZE => {
                if rest.len() != 12 {
                    return Err(self.fail(Error::Protocol("malformed NBD_INFO_BLOCK_SIZE")));
                }
                let min = r.u32().unwrap_or(0);
                let pref = r.u32().unwrap_or(0);
                let max = r.u32().unwrap_or(0);
                self.block_size = Some((min, pref, max));
            }
            INFO_NAME if rest.len() <= MAX_STRING => self.canonical.keep(rest),
            INFO_DESCRIPTION if rest.len() <= MAX_STRING => self.description.keep(rest),
            // Unknown or oversized information is ignored.
            _ => {}
        }
        Ok(())
    }
}
