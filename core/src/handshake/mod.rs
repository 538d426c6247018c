//! The sans-IO server side of NBD negotiation.
//!
//! The runtime feeds the bytes it read to [`Server::handle_input`], which
//! says how many it consumed and whether it needs the runtime to act
//! ([`Event`]); the bytes to send are read in place with
//! [`Server::pending_output`] and released with [`Server::consume_output`]
//! (the one output API).
//!
//! The handshake is a set of typestates: an event that asks a question
//! carries a token ([`AwaitingList`], [`AwaitingExport`], [`AwaitingTls`])
//! whose methods are the only legal answers; each consumes the token and
//! says what comes next ([`Next`]), so a runtime can neither forget to
//! answer (`#[must_use]`; input fed to an unanswered server closes the
//! connection) nor answer twice.
//! The server never reads a socket, never blocks, never allocates and never
//! panics on peer input: every length is checked before it is used.

use crate::wire::consts::*;

/// A debug line with `-v`, in nbdkit's words (`newstyle negotiation: ...`).
/// Without `alloc` there is nowhere to print it.
macro_rules! say {
    ($($t:tt)*) => {
        #[cfg(feature = "alloc")]
        {
            if crate::debug::verbose() {
                crate::debug::debug(format_args!($($t)*));
            }
        }
        #[cfg(not(feature = "alloc"))]
        {
            let _ = format_args!($($t)*);
        }
    };
}

/// nbdkit's name of an option or reply, for `-v` (`unknown (0xb)` when
/// it has none).
struct Named(u32, &'static str);

impl core::fmt::Display for Named {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.1 {
            "" => write!(f, "unknown ({:#x})", self.0),
            name => f.write_str(name),
        }
    }
}

/// nbdkit's name of an option, for `-v`.
fn opt_name(option: u32) -> Named {
    Named(
        option,
        match option {
            OPT_EXPORT_NAME => "NBD_OPT_EXPORT_NAME",
            OPT_ABORT => "NBD_OPT_ABORT",
            OPT_LIST => "NBD_OPT_LIST",
            OPT_PEEK_EXPORT => "NBD_OPT_PEEK_EXPORT",
            OPT_STARTTLS => "NBD_OPT_STARTTLS",
            OPT_INFO => "NBD_OPT_INFO",
            OPT_GO => "NBD_OPT_GO",
            OPT_STRUCTURED_REPLY => "NBD_OPT_STRUCTURED_REPLY",
            OPT_LIST_META_CONTEXT => "NBD_OPT_LIST_META_CONTEXT",
            OPT_SET_META_CONTEXT => "NBD_OPT_SET_META_CONTEXT",
            OPT_EXTENDED_HEADERS => "NBD_OPT_EXTENDED_HEADERS",
            _ => "",
        },
    )
}

/// nbdkit's name of an option reply, for `-v`.
fn rep_name(reply: u32) -> Named {
    Named(
        reply,
        match reply {
            REP_ACK => "NBD_REP_ACK",
            REP_SERVER => "NBD_REP_SERVER",
            REP_INFO => "NBD_REP_INFO",
            REP_META_CONTEXT => "NBD_REP_META_CONTEXT",
            REP_ERR_UNSUP => "NBD_REP_ERR_UNSUP",
            REP_ERR_POLICY => "NBD_REP_ERR_POLICY",
            REP_ERR_INVALID => "NBD_REP_ERR_INVALID",
            REP_ERR_PLATFORM => "NBD_REP_ERR_PLATFORM",
            REP_ERR_TLS_REQD => "NBD_REP_ERR_TLS_REQD",
            REP_ERR_UNKNOWN => "NBD_REP_ERR_UNKNOWN",
            REP_ERR_SHUTDOWN => "NBD_REP_ERR_SHUTDOWN",
            REP_ERR_BLOCK_SIZE_REQD => "NBD_REP_ERR_BLOCK_SIZE_REQD",
            REP_ERR_TOO_BIG => "NBD_REP_ERR_TOO_BIG",
            REP_ERR_EXT_HEADER_REQD => "NBD_REP_ERR_EXT_HEADER_REQD",
            _ => "",
        },
    )
}

/// A client-supplied name for a debug line (invalid UTF-8 shown lossily
/// would need allocation: it is shown as `?`).
fn shown(b: &[u8]) -> &str {
    core::str::from_utf8(b).unwrap_or("?")
}
use crate::wire::handshake::{
    ExportNameReply, InfoRequest, MetaContextRequest, NewstyleGreeting, OldstyleGreeting,
    OptionHeader, OptionReplyHeader,
};
use crate::wire::WireError;

mod outbox;
#[cfg(test)]
mod tests;

pub(crate) use outbox::Outbox;

/// The TLS policy of the server (`--tls`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// No TLS: STARTTLS is refused by policy.
    Off,
    /// TLS offered, not required.
    On,
    /// TLS required before anything else.
    Require,
}

/// How the server negotiates.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// Oldstyle handshake (`-o`).
    pub oldstyle: bool,
    /// Handshake flags to advertise (`--mask-handshake`, default all).
    pub handshake_flags: u16,
    /// Offer structured replies (off with `--no-sr`).
    pub structured_replies: bool,
    /// Offer extended headers.
    pub extended_headers: bool,
    /// TLS policy.
    pub tls: TlsMode,
    /// Most options accepted before the export is chosen (nbdkit: 32).
    pub max_options: u32,
    /// Longest option payload the runtime will buffer; longer options (up
    /// to [`MAX_OPTION_LEN`]) are skipped without being stored and answered
    /// with an error.
    pub max_buffered_option: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            oldstyle: false,
            handshake_flags: FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES,
            structured_replies: true,
            extended_headers: true,
            tls: TlsMode::Off,
            max_options: 32,
            max_buffered_option: 64 * 1024,
        }
    }
}

/// Options longer than this end the connection (nbdkit's limit).
pub const MAX_OPTION_LEN: u32 = 64 * 1024 * 1024;

/// Size of the output buffer: enough for every reply to one option.
pub const OUT_CAP: usize = 9 * 1024;

/// Why the handshake ended the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disconnect {
    /// The client sent ABORT (after the ACK was queued).
    Abort,
    /// The client set unknown flags.
    BadClientFlags,
    /// An option header without the IHAVEOPT magic.
    BadOptionMagic,
    /// An option longer than [`MAX_OPTION_LEN`].
    OptionTooLong,
    /// Too many options.
    TooManyOptions,
    /// EXPORT_NAME could not be satisfied (it has no error reply).
    ExportNameFailed,
    /// EXPORT_NAME before TLS in `--tls=require` mode.
    TlsRequired,
    /// The runtime fed input before answering an event, or answered with
    /// a token from another server.
    Protocol,
}

/// What the runtime must do. Each question carries the token that answers
/// it: the token's methods are the only legal answers, each consumes it,
/// and the server takes no further input until it is answered.
#[derive(Debug)]
pub enum Event<'a> {
    /// The client asked for the list of exports: add each with
    /// [`AwaitingList::add`], then finish with [`AwaitingList::done`] or
    /// [`AwaitingList::refuse`].
    ListExports(AwaitingList),
    /// Open an export and answer with [`AwaitingExport::ready`] or
    /// [`AwaitingExport::refuse`]. `info_only` is NBD_OPT_INFO: the
    /// runtime closes the export again after answering.
    OpenExport {
        /// The export name the client asked for ("" = default).
        name: &'a str,
        /// True for NBD_OPT_INFO.
        info_only: bool,
        /// The answer.
        reply: AwaitingExport,
    },
    /// The ACK for STARTTLS is queued: send it, upgrade the connection,
    /// then call [`AwaitingTls::established`].
    StartTls(AwaitingTls),
}

/// What the handshake does after an answer.
#[must_use = "the connection must close or go on as this says"]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// More options: keep feeding input.
    Options,
    /// Negotiation is over: transmission starts (take
    /// [`Server::negotiated`] after sending the pending output).
    Transmission,
    /// The connection must be closed after sending the pending output.
    Close(Disconnect),
}

/// NBD_OPT_LIST is waiting for its answer.
///
/// Only the server makes tokens, so there is no answer without a question:
///
/// ```compile_fail,E0423
/// let forged = nbdkit_core::handshake::AwaitingList(());
/// ```
#[must_use = "NBD_OPT_LIST must be answered with done() or refuse()"]
#[derive(Debug)]
pub struct AwaitingList(());

/// The output buffer has no room for this export's entry: send the pending
/// output, then add it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputFull;

impl AwaitingList {
    /// Add one export to the answer. Long names and descriptions are cut
    /// to the protocol's 4096 bytes.
    pub fn add(
        &mut self,
        server: &mut Server,
        name: &str,
        description: Option<&str>,
    ) -> Result<(), OutputFull> {
        let name = utf8_prefix(name, MAX_STRING);
        let desc = utf8_prefix(description.unwrap_or(""), MAX_STRING);
        // Room is kept for the header of the final ACK.
        let len = OptionReplyHeader::LEN * 2 + 4 + name.len() + desc.len();
        if server.state != State::Waiting(Pending::List) || server.space() < len {
            return Err(OutputFull);
        }
        let n = (name.len() as u32).to_be_bytes();
        server.reply(
            OPT_LIST,
            REP_SERVER,
            &[&n, name.as_bytes(), desc.as_bytes()],
        );
        Ok(())
    }

    /// The list is complete.
    pub fn done(self, server: &mut Server) -> Next {
        server.answer_list(REP_ACK)
    }

    /// The exports could not be listed.
    pub fn refuse(self, server: &mut Server, err: OptionError) -> Next {
        server.answer_list(err.to_wire())
    }
}

/// NBD_OPT_GO, NBD_OPT_INFO, NBD_OPT_EXPORT_NAME (or the oldstyle
/// handshake) is waiting for the export to be opened.
///
/// Answering consumes the token:
///
/// ```
/// use nbdkit_core::handshake::{AwaitingExport, Next, OptionError, Server};
/// fn answer(reply: AwaitingExport, server: &mut Server) -> Next {
///     reply.refuse(server, OptionError::Unknown)
/// }
/// ```
///
/// so a second answer does not compile:
///
/// ```compile_fail,E0382
/// use nbdkit_core::handshake::{AwaitingExport, Next, OptionError, Server};
/// fn answer(reply: AwaitingExport, server: &mut Server) -> Next {
///     let first = reply.refuse(server, OptionError::Unknown);
///     reply.refuse(server, OptionError::Unknown)
/// }
/// ```
#[must_use = "an export request must be answered with ready() or refuse()"]
#[derive(Debug)]
pub struct AwaitingExport {
    wants_description: bool,
}

impl AwaitingExport {
    /// Whether the client asked for the export's description
    /// (NBD_INFO_DESCRIPTION). nbdkit asks the plugin for a description
    /// only then.
    pub fn wants_description(&self) -> bool {
        self.wants_description
    }

    /// The export is open: queues the replies. [`Next::Transmission`] for
    /// GO, EXPORT_NAME and oldstyle; [`Next::Options`] for INFO.
    pub fn ready(self, server: &mut Server, info: &ExportInfo<'_>) -> Next {
        server.export_ready(info)
    }

    /// The export could not be opened. For INFO/GO the client gets `err`
    /// and may try again; EXPORT_NAME (and oldstyle), which have no error
    /// reply, end the connection.
    pub fn refuse(self, server: &mut Server, err: OptionError) -> Next {
        server.export_refused(err)
    }
}

/// STARTTLS was acknowledged; the runtime upgrades the connection.
#[must_use = "STARTTLS must be answered with established() (or the connection closed)"]
#[derive(Debug)]
pub struct AwaitingTls(());

impl AwaitingTls {
    /// The TLS handshake is done: every piece of negotiated state is
    /// forgotten (CVE-2021-3716).
    pub fn established(self, server: &mut Server) -> Next {
        server.tls_established()
    }
}

/// Why an option is refused (the `NBD_REP_ERR_*` replies).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptionError {
    /// `NBD_REP_ERR_UNSUP`: the option is unknown or not supported.
    Unsup,
    /// `NBD_REP_ERR_POLICY`: forbidden by the server's policy.
    Policy,
    /// `NBD_REP_ERR_INVALID`: syntactically or semantically invalid.
    Invalid,
    /// `NBD_REP_ERR_PLATFORM`: not supported on this platform.
    Platform,
    /// `NBD_REP_ERR_TLS_REQD`: TLS must come first.
    TlsReqd,
    /// `NBD_REP_ERR_UNKNOWN`: no such export.
    Unknown,
    /// `NBD_REP_ERR_SHUTDOWN`: the server is shutting down.
    Shutdown,
    /// `NBD_REP_ERR_BLOCK_SIZE_REQD`: the client must honour block sizes.
    BlockSizeReqd,
    /// `NBD_REP_ERR_TOO_BIG`: the option's payload is too long.
    TooBig,
    /// `NBD_REP_ERR_EXT_HEADER_REQD`: extended headers are on.
    ExtHeaderReqd,
}

impl OptionError {
    /// The reply type on the wire.
    pub const fn to_wire(self) -> u32 {
        match self {
            OptionError::Unsup => REP_ERR_UNSUP,
            OptionError::Policy => REP_ERR_POLICY,
            OptionError::Invalid => REP_ERR_INVALID,
            OptionError::Platform => REP_ERR_PLATFORM,
            OptionError::TlsReqd => REP_ERR_TLS_REQD,
            OptionError::Unknown => REP_ERR_UNKNOWN,
            OptionError::Shutdown => REP_ERR_SHUTDOWN,
            OptionError::BlockSizeReqd => REP_ERR_BLOCK_SIZE_REQD,
            OptionError::TooBig => REP_ERR_TOO_BIG,
            OptionError::ExtHeaderReqd => REP_ERR_EXT_HEADER_REQD,
        }
    }
}

/// The result of one call to [`Server::handle_input`].
#[derive(Debug)]
pub struct Progress<'a> {
    /// Bytes of the input that were used; the runtime drops them.
    pub consumed: usize,
    /// Something for the runtime to do, if any.
    pub event: Option<Event<'a>>,
}

/// What an export looks like, given by the runtime after it opened it.
#[derive(Debug, Clone, Copy)]
pub struct ExportInfo<'a> {
    /// Canonical name (the default export resolved).
    pub name: &'a str,
    /// Size in bytes.
    pub size: u64,
    /// Transmission flags without SEND_DF (the server adds it when
    /// structured replies are on).
    pub eflags: u16,
    /// Description, if any.
    pub description: Option<&'a str>,
    /// Block size constraints (minimum, preferred, maximum), if any.
    pub block_size: Option<(u32, u32, u32)>,
}

/// What negotiation settled, for the transmission phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Negotiated {
    /// Structured replies are on.
    pub structured_replies: bool,
    /// Extended headers are on.
    pub extended_headers: bool,
    /// The id of `base:allocation` when it was selected for this export.
    pub base_allocation: Option<u32>,
    /// Transmission flags sent to the client.
    pub eflags: u16,
    /// Export size.
    pub size: u64,
    /// The oldstyle handshake was used.
    pub oldstyle: bool,
}

/// The context id nbdkit gives `base:allocation`.
pub const BASE_ALLOCATION_ID: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Oldstyle: waiting for the runtime to open the default export.
    OldstyleOpen,
    /// Waiting for the 4 bytes of client flags.
    ClientFlags,
    /// Waiting for an option header (and its payload).
    Options,
    /// Skipping the payload of an option too long to buffer.
    Skipping { option: u32, remaining: u32 },
    /// Waiting for the runtime to answer an event.
    Waiting(Pending),
    /// Negotiation is over; transmission starts.
    Done,
    /// The connection must be closed.
    Closed(Disconnect),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    List,
    Open {
        option: u32,
        wants: Wants,
        meta_matches: bool,
    },
    Tls,
}

/// The info types a client asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Wants {
    name: bool,
    description: bool,
    block_size: bool,
}

/// A name of up to [`MAX_STRING`] bytes kept inside the server (the export
/// that SET_META_CONTEXT selected contexts for).
#[derive(Clone, Copy)]
struct Name {
    len: usize,
    bytes: [u8; MAX_STRING],
}

impl Name {
    fn set(&mut self, b: &[u8]) {
        let n = b.len().min(MAX_STRING);
        self.bytes[..n].copy_from_slice(&b[..n]);
        self.len = n;
    }
    fn get(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// The server side of a handshake.
pub struct Server {
    config: Config,
    state: State,
    gflags: u16,
    cflags: u32,
    options_seen: u32,
    list_done: bool,
    tls_active: bool,
    structured: bool,
    extended: bool,
    meta_base_allocation: bool,
    meta_export: Name,
    negotiated: Negotiated,
    out: Outbox<OUT_CAP>,
}

impl core::fmt::Debug for Server {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Server")
            .field("state", &self.state)
            .field("pending_output", &self.out.pending().len())
            .finish()
    }
}

fn utf8_prefix(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut n = max;
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    &s[..n]
}

impl Server {
    /// A server that has queued its greeting (newstyle), or that will ask
    /// for the default export first (oldstyle).
    pub fn new(config: Config) -> Self {
        let gflags = config.handshake_flags & (FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
        let mut s = Server {
            config,
            state: if config.oldstyle {
                State::OldstyleOpen
            } else {
                State::ClientFlags
            },
            gflags,
            cflags: 0,
            options_seen: 0,
            list_done: false,
            tls_active: false,
            structured: false,
            extended: false,
            meta_base_allocation: false,
            meta_export: Name {
                len: 0,
                bytes: [0; MAX_STRING],
            },
            negotiated: Negotiated::default(),
            out: Outbox::new(),
        };
        if !config.oldstyle {
            say!("newstyle negotiation: flags: global {gflags:#x}");
            let mut b = [0u8; NewstyleGreeting::LEN];
            NewstyleGreeting { flags: gflags }.emit(&mut b);
            s.push(&b);
        }
        s
    }

    /// The output not yet taken.
    pub fn pending_output(&self) -> &[u8] {
        self.out.pending()
    }

    /// Mark `n` bytes of [`pending_output`](Self::pending_output) as sent.
    pub fn consume_output(&mut self, n: usize) {
        self.out.consume(n);
    }

    /// True once negotiation is over and transmission starts.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Why the connection must close, if it must.
    pub fn disconnect_reason(&self) -> Option<Disconnect> {
        match self.state {
            State::Closed(d) => Some(d),
            _ => None,
        }
    }

    /// What was negotiated (meaningful once [`is_done`](Self::is_done)).
    pub fn negotiated(&self) -> Negotiated {
        self.negotiated
    }

    /// Whether TLS is up.
    pub fn is_tls(&self) -> bool {
        self.tls_active
    }

    /// How many bytes of input the server needs before it can make
    /// progress (the runtime's buffer must hold at least this many).
    pub fn needed(&self) -> usize {
        match self.state {
            State::ClientFlags => 4,
            State::Options => OptionHeader::LEN,
            State::Skipping { .. } => 1,
            _ => 0,
        }
    }

    fn push(&mut self, b: &[u8]) -> bool {
        self.out.push(b)
    }

    fn space(&self) -> usize {
        self.out.space()
    }

    fn reply(&mut self, option: u32, reply_type: u32, payload: &[&[u8]]) -> bool {
        let len: usize = payload.iter().map(|p| p.len()).sum();
        if self.space() < OptionReplyHeader::LEN + len {
            return false;
        }
        // nbdkit names the replies without a payload (ACK and errors).
        if len == 0 {
            say!(
                "replying to {} with {}",
                opt_name(option),
                rep_name(reply_type)
            );
        }
        let mut h = [0u8; OptionReplyHeader::LEN];
        OptionReplyHeader {
            option,
            reply_type,
            length: len as u32,
        }
        .emit(&mut h);
        self.push(&h);
        for p in payload {
            self.push(p);
        }
        true
    }

    /// Refuse `option` with `err`.
    fn refuse(&mut self, option: u32, err: OptionError) {
        self.reply(option, err.to_wire(), &[]);
    }

    fn ack_or_refuse(&mut self, option: u32, r: Result<(), OptionError>) {
        match r {
            Ok(()) => self.reply(option, REP_ACK, &[]),
            Err(e) => self.reply(option, e.to_wire(), &[]),
        };
    }

    fn close(&mut self, d: Disconnect) -> Disconnect {
        self.state = State::Closed(d);
        d
    }

    /// Feed input. Returns how much was consumed and any event; a
    /// `Disconnect` means the connection must be closed (after sending any
    /// pending output, which only ABORT leaves).
    pub fn handle_input<'a>(&mut self, input: &'a [u8]) -> Result<Progress<'a>, Disconnect> {
        let none = |consumed| {
            Ok(Progress {
                consumed,
                event: None,
            })
        };
        match self.state {
            State::Closed(d) => Err(d),
            State::Done => none(0),
            // An event went unanswered (its token was dropped).
            State::Waiting(_) => Err(self.close(Disconnect::Protocol)),
            State::OldstyleOpen => {
                self.state = State::Waiting(Pending::Open {
                    option: OPT_EXPORT_NAME,
                    wants: Wants::default(),
                    meta_matches: false,
                });
                Ok(Progress {
                    consumed: 0,
                    event: Some(Event::OpenExport {
                        name: "",
                        info_only: false,
                        reply: AwaitingExport {
                            wants_description: false,
                        },
                    }),
                })
            }
            State::ClientFlags => {
                if input.len() < 4 {
                    return none(0);
                }
                let cflags = u32::from_be_bytes([input[0], input[1], input[2], input[3]]);
                if cflags & !u32::from(self.gflags) != 0 {
                    return Err(self.close(Disconnect::BadClientFlags));
                }
                self.cflags = cflags;
                say!("newstyle negotiation: client flags: {cflags:#x}");
                self.state = State::Options;
                none(4)
            }
            State::Skipping { option, remaining } => {
                let n = (remaining as usize).min(input.len());
                let left = remaining - n as u32;
                if left > 0 {
                    self.state = State::Skipping {
                        option,
                        remaining: left,
                    };
                    return none(n);
                }
                self.state = State::Options;
                let ty = if self.is_known(option) {
                    OptionError::TooBig
                } else {
                    OptionError::Unsup
                };
                if option == OPT_EXPORT_NAME {
                    return Err(self.close(Disconnect::ExportNameFailed));
                }
                self.refuse(option, ty);
                none(n)
            }
            // Every answer to the next option must fit: the output is
            // sent before more input is taken.
            State::Options if !self.out.pending().is_empty() => none(0),
            State::Options => self.option(input),
        }
    }

    fn is_known(&self, option: u32) -> bool {
        matches!(option, OPT_EXPORT_NAME..=OPT_EXTENDED_HEADERS) && option != OPT_PEEK_EXPORT
    }

    fn option<'a>(&mut self, input: &'a [u8]) -> Result<Progress<'a>, Disconnect> {
        let header = match OptionHeader::parse(input) {
            Ok(h) => h,
            Err(WireError::Truncated) => {
                return Ok(Progress {
                    consumed: 0,
                    event: None,
                })
            }
            Err(_) => return Err(self.close(Disconnect::BadOptionMagic)),
        };
        if header.length > MAX_OPTION_LEN {
            return Err(self.close(Disconnect::OptionTooLong));
        }
        let option = header.option;
        let count_it = |s: &mut Self| {
            s.options_seen += 1;
            s.options_seen > s.config.max_options
        };
        if header.length > self.config.max_buffered_option {
            if count_it(self) {
                return Err(self.close(Disconnect::TooManyOptions));
            }
            self.state = State::Skipping {
                option,
                remaining: header.length,
            };
            return Ok(Progress {
                consumed: OptionHeader::LEN,
                event: None,
            });
        }
        let total = OptionHeader::LEN + header.length as usize;
        if input.len() < total {
            return Ok(Progress {
                consumed: 0,
                event: None,
            });
        }
        if count_it(self) {
            return Err(self.close(Disconnect::TooManyOptions));
        }
        let payload = &input[OptionHeader::LEN..total];
        let event = self.dispatch(option, payload)?;
        Ok(Progress {
            consumed: total,
            event,
        })
    }

    /// How many bytes the runtime must buffer to complete the current
    /// option: the header, plus its payload once the header is known.
    pub fn needed_for(&self, input: &[u8]) -> usize {
        match self.state {
            State::Options => match OptionHeader::parse(input) {
                Ok(h) if h.length <= self.config.max_buffered_option => {
                    OptionHeader::LEN + h.length as usize
                }
                _ => OptionHeader::LEN,
            },
            _ => self.needed(),
        }
    }

    fn dispatch<'a>(
        &mut self,
        option: u32,
        payload: &'a [u8],
    ) -> Result<Option<Event<'a>>, Disconnect> {
        let fixed = self.cflags & FLAG_C_FIXED_NEWSTYLE != 0;
        if !fixed && option != OPT_EXPORT_NAME {
            // Only EXPORT_NAME is legal for a client that is not fixed
            // newstyle.
            self.refuse(option, OptionError::Invalid);
            return Ok(None);
        }
        if self.config.tls == TlsMode::Require && !self.tls_active {
            match option {
                OPT_EXPORT_NAME => return Err(self.close(Disconnect::TlsRequired)),
                OPT_STARTTLS | OPT_ABORT => {}
                _ => {
                    self.refuse(option, OptionError::TlsReqd);
                    return Ok(None);
                }
            }
        }
        match option {
            OPT_EXPORT_NAME => {
                let Ok(name) = core::str::from_utf8(payload) else {
                    return Err(self.close(Disconnect::ExportNameFailed));
                };
                if name.len() > MAX_STRING || name.contains('\0') {
                    return Err(self.close(Disconnect::ExportNameFailed));
                }
                let meta_matches = self.meta_export.get() == payload;
                self.state = State::Waiting(Pending::Open {
                    option,
                    wants: Wants::default(),
                    meta_matches,
                });
                Ok(Some(Event::OpenExport {
                    name,
                    info_only: false,
                    reply: AwaitingExport {
                        wants_description: false,
                    },
                }))
            }
            OPT_ABORT => {
                self.reply(option, REP_ACK, &[]);
                Err(self.close(Disconnect::Abort))
            }
            OPT_LIST => {
                say!("newstyle negotiation: NBD_OPT_LIST: advertising exports");
                if !payload.is_empty() || self.list_done {
                    self.refuse(option, OptionError::Invalid);
                    return Ok(None);
                }
                self.list_done = true;
                self.state = State::Waiting(Pending::List);
                Ok(Some(Event::ListExports(AwaitingList(()))))
            }
            OPT_STARTTLS => {
                if !payload.is_empty() || self.tls_active {
                    self.refuse(option, OptionError::Invalid);
                } else if self.config.tls == TlsMode::Off {
                    self.refuse(option, OptionError::Policy);
                } else {
                    self.reply(option, REP_ACK, &[]);
                    self.state = State::Waiting(Pending::Tls);
                    return Ok(Some(Event::StartTls(AwaitingTls(()))));
                }
                Ok(None)
            }
            OPT_INFO | OPT_GO => {
                let Ok(req) = InfoRequest::parse(payload) else {
                    self.refuse(option, OptionError::Invalid);
                    return Ok(None);
                };
                let name = match core::str::from_utf8(req.name) {
                    Ok(n) if n.len() <= MAX_STRING && !n.contains('\0') => n,
                    _ => {
                        self.refuse(option, OptionError::Invalid);
                        return Ok(None);
                    }
                };
                say!(
                    "newstyle negotiation: {}: client requested export '{name}'",
                    opt_name(option)
                );
                let mut wants = Wants::default();
                for t in req.info_types() {
                    match t {
                        INFO_NAME => wants.name = true,
                        INFO_DESCRIPTION => wants.description = true,
                        INFO_BLOCK_SIZE => wants.block_size = true,
                        _ => {}
                    }
                }
                let meta_matches = self.meta_export.get() == req.name;
                self.state = State::Waiting(Pending::Open {
                    option,
                    wants,
                    meta_matches,
                });
                Ok(Some(Event::OpenExport {
                    name,
                    info_only: option == OPT_INFO,
                    reply: AwaitingExport {
                        wants_description: wants.description,
                    },
                }))
            }
            OPT_STRUCTURED_REPLY => {
                say!(
                    "newstyle negotiation: NBD_OPT_STRUCTURED_REPLY: \
                     client requested structured replies"
                );
                let r = if !payload.is_empty() {
                    Err(OptionError::Invalid)
                } else if !self.config.structured_replies {
                    Err(OptionError::Unsup)
                } else if self.extended {
                    Err(OptionError::ExtHeaderReqd)
                } else if self.structured {
                    Err(OptionError::Invalid)
                } else {
                    self.structured = true;
                    Ok(())
                };
                self.ack_or_refuse(option, r);
                Ok(None)
            }
            OPT_EXTENDED_HEADERS => {
                say!(
                    "newstyle negotiation: NBD_OPT_EXTENDED_HEADERS: \
                     client requested extended headers"
                );
                let r = if !payload.is_empty() {
                    Err(OptionError::Invalid)
                } else if !self.config.extended_headers || !self.config.structured_replies {
                    Err(OptionError::Unsup)
                } else if self.extended {
                    Err(OptionError::Invalid)
                } else {
                    self.extended = true;
                    self.structured = true;
                    Ok(())
                };
                self.ack_or_refuse(option, r);
                Ok(None)
            }
            OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
                self.meta_context(option, payload);
                Ok(None)
            }
            _ => {
                self.refuse(option, OptionError::Unsup);
                Ok(None)
            }
        }
    }

    fn meta_context(&mut self, option: u32, payload: &[u8]) {
        let set = option == OPT_SET_META_CONTEXT;
        if set {
            // A SET replaces the selection even when it fails.
            self.meta_base_allocation = false;
            self.meta_export.set(&[]);
        }
        if !self.structured {
            self.refuse(option, OptionError::Invalid);
            return;
        }
        let Ok(req) = MetaContextRequest::parse(payload) else {
            self.refuse(option, OptionError::Invalid);
            return;
        };
        if req.export.len() > MAX_STRING {
            self.refuse(option, OptionError::Invalid);
            return;
        }
        let what = opt_name(option);
        say!(
            "newstyle negotiation: {what}: client requested export '{}'",
            shown(req.export)
        );
        say!(
            "newstyle negotiation: {what}: {} count: {}",
            if set { "set" } else { "query" },
            req.count
        );
        const NAME: &[u8] = b"base:allocation";
        let mut matched = if req.count == 0 {
            // LIST with no queries lists everything; SET selects nothing.
            !set
        } else {
            false
        };
        for q in req.iter() {
            if q.len() > MAX_STRING {
                self.refuse(option, OptionError::Invalid);
                return;
            }
            say!(
                "newstyle negotiation: {what}: {} {}",
                if set { "set" } else { "query" },
                shown(q)
            );
            if q == NAME || (!set && q == b"base:") {
                if !matched {
                    say!(
                        "newstyle negotiation: {what}: replying with base:allocation id {}",
                        if set { BASE_ALLOCATION_ID } else { 0 }
                    );
                }
                matched = true;
            }
        }
        if matched && req.count == 0 {
            say!("newstyle negotiation: {what}: replying with base:allocation id 0");
        }
        if matched {
            let id = if set { BASE_ALLOCATION_ID } else { 0 };
            self.reply(option, REP_META_CONTEXT, &[&id.to_be_bytes(), NAME]);
            if set {
                self.meta_base_allocation = true;
                self.meta_export.set(req.export);
            }
        }
        self.reply(option, REP_ACK, &[]);
        say!("newstyle negotiation: {what}: reply complete");
    }

    /// Finish the answer to NBD_OPT_LIST with `reply_type`.
    fn answer_list(&mut self, reply_type: u32) -> Next {
        if self.state != State::Waiting(Pending::List) {
            return Next::Close(self.close(Disconnect::Protocol));
        }
        // `AwaitingList::add` kept room for this header.
        self.reply(OPT_LIST, reply_type, &[]);
        self.state = State::Options;
        Next::Options
    }

    fn tls_established(&mut self) -> Next {
        if self.state != State::Waiting(Pending::Tls) {
            return Next::Close(self.close(Disconnect::Protocol));
        }
        self.tls_active = true;
        self.structured = false;
        self.extended = false;
        self.meta_base_allocation = false;
        self.meta_export.set(&[]);
        self.list_done = false;
        self.state = State::Options;
        Next::Options
    }

    fn export_refused(&mut self, err: OptionError) -> Next {
        let State::Waiting(Pending::Open { option, .. }) = self.state else {
            return Next::Close(self.close(Disconnect::Protocol));
        };
        if option == OPT_EXPORT_NAME {
            return Next::Close(self.close(Disconnect::ExportNameFailed));
        }
        self.state = State::Options;
        self.refuse(option, err);
        Next::Options
    }

    /// The export asked for by [`Event::OpenExport`] is open: queue the
    /// replies (room for them is certain: input is taken only with the
    /// output drained, and the longest answer fits in [`OUT_CAP`]).
    fn export_ready(&mut self, info: &ExportInfo<'_>) -> Next {
        let State::Waiting(Pending::Open {
            option,
            wants,
            meta_matches,
        }) = self.state
        else {
            return Next::Close(self.close(Disconnect::Protocol));
        };
        let mut eflags = info.eflags | FLAG_HAS_FLAGS;
        eflags &= !(FLAG_SEND_DF | FLAG_BLOCK_STATUS_PAYLOAD | FLAG_SEND_RESIZE);
        if self.structured {
            eflags |= FLAG_SEND_DF;
        }
        if eflags & FLAG_SEND_WRITE_ZEROES == 0 {
            eflags &= !FLAG_SEND_FAST_ZERO;
        }
        if !self.config.oldstyle {
            say!("newstyle negotiation: flags: export {eflags:#x}");
        }
        self.negotiated = Negotiated {
            structured_replies: self.structured,
            extended_headers: self.extended,
            base_allocation: (self.meta_base_allocation && meta_matches)
                .then_some(BASE_ALLOCATION_ID),
            eflags,
            size: info.size,
            oldstyle: self.config.oldstyle,
        };
        if self.config.oldstyle {
            let mut b = [0u8; OldstyleGreeting::LEN];
            OldstyleGreeting {
                size: info.size,
                eflags,
            }
            .emit(&mut b);
            self.push(&b);
            self.state = State::Done;
            return Next::Transmission;
        }
        if option == OPT_EXPORT_NAME {
            let r = ExportNameReply {
                size: info.size,
                eflags,
                no_zeroes: self.gflags & FLAG_NO_ZEROES != 0 && self.cflags & FLAG_C_NO_ZEROES != 0,
            };
            let mut b = [0u8; 134];
            let n = r.emit(&mut b);
            self.push(&b[..n]);
            self.state = State::Done;
            return Next::Transmission;
        }
        let mut b = [0u8; 12];
        b[2..10].copy_from_slice(&info.size.to_be_bytes());
        b[10..12].copy_from_slice(&eflags.to_be_bytes());
        self.reply(option, REP_INFO, &[&b]);
        if wants.name {
            let name = utf8_prefix(info.name, MAX_STRING);
            self.reply(
                option,
                REP_INFO,
                &[&INFO_NAME.to_be_bytes(), name.as_bytes()],
            );
        }
        if wants.block_size && info.block_size.is_none() {
            say!(
                "newstyle negotiation: {}: NBD_INFO_BLOCK_SIZE: client requested but no \
                 plugin or filter provided block size information, ignoring client request",
                opt_name(option)
            );
        }
        if wants.description && info.description.is_none() {
            say!(
                "newstyle negotiation: {}: NBD_INFO_DESCRIPTION: no description to send",
                opt_name(option)
            );
        }
        if wants.description {
            if let Some(d) = info.description {
                let d = utf8_prefix(d, MAX_STRING);
                self.reply(
                    option,
                    REP_INFO,
                    &[&INFO_DESCRIPTION.to_be_bytes(), d.as_bytes()],
                );
            }
        }
        if let Some((min, pref, max)) = info.block_size {
            let mut b = [0u8; 14];
            b[0..2].copy_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
            b[2..6].copy_from_slice(&min.to_be_bytes());
            b[6..10].copy_from_slice(&pref.to_be_bytes());
            b[10..14].copy_from_slice(&max.to_be_bytes());
            self.reply(option, REP_INFO, &[&b]);
        }
        self.reply(option, REP_ACK, &[]);
        if option == OPT_GO {
            self.state = State::Done;
            Next::Transmission
        } else {
            self.state = State::Options;
            Next::Options
        }
    }
}
