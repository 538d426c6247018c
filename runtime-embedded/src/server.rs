//! The poll loop: TCP sockets in a smoltcp `SocketSet`, one connection
//! per socket slot, negotiation by the core's sans-IO handshake and the
//! transmission phase by the core's connection engine. This file only
//! moves bytes between sockets, the engine and the stack: the engine
//! decodes and validates requests and frames every reply.
//!
//! Memory is fixed at compile time. A connection slot holds the engine
//! (with a request header), the state of one request and one small reply
//! waiting for room (about 350 bytes); a negotiator
//! holds the core's handshake server and an option buffer (about 14 KiB)
//! and is lent to one connection at a time for the few round trips of
//! negotiation, so `N` connections need only `H` negotiators. Read data
//! goes from the stack straight into the socket's transmit buffer and
//! write data from the receive buffer straight to the stack, in the
//! pieces the socket buffers hold: there is no data buffer, and no request
//! length is limited by one. Each connection in transmission has its own
//! context of the core stack (plugin and filters), opened when the client
//! picks the export.

use nbdkit_core::backend::{BlockSize, Context, Error, Extents, Flags, OpenArgs, Peer, Stack};
use nbdkit_core::handshake::{self, Event, ExportInfo, OptionError, TlsMode};
use nbdkit_core::transmission::{self, eflags, CmdFlags, Command, Engine, Limits, NbdError, Valid};
use nbdkit_core::wire::consts::DEFAULT_PORT;
use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::time::{Duration, Instant};

/// How the server serves its one export.
#[derive(Debug, Clone, Copy)]
pub struct Config<'a> {
    /// TCP port to listen on (10809 by default).
    pub port: u16,
    /// The export's name; "" and this name open it.
    pub export_name: &'a str,
    /// Description for NBD_INFO_DESCRIPTION.
    pub description: Option<&'a str>,
    /// Largest READ or WRITE accepted; advertised as the maximum block
    /// size. Larger requests get EINVAL (a write's payload is drained).
    pub max_request: u32,
    /// How long a connection may take to negotiate (or wait for a
    /// negotiator) before it is reset.
    pub handshake_timeout: Duration,
    /// Offer extended headers.
    pub extended_headers: bool,
    /// Offer structured replies (and so block status).
    pub structured_replies: bool,
}

impl Config<'_> {
    /// Defaults: port 10809, export "", 32 MiB requests, 10 s to negotiate.
    pub const fn new() -> Self {
        Config {
            port: DEFAULT_PORT,
            export_name: "",
            description: None,
            max_request: 32 * 1024 * 1024,
            handshake_timeout: Duration::from_secs(10),
            extended_headers: true,
            structured_replies: true,
        }
    }
}

impl Default for Config<'_> {
    fn default() -> Self {
        Self::new()
    }
}

/// Most extents in one BLOCK_STATUS reply.
const MAX_EXTENTS: usize = 8;
/// Bytes of the largest reply that is built on the stack (block status
/// with extended headers; errors and headers are smaller).
const SMALL_REPLY: usize = 32 + 8 + 16 * MAX_EXTENTS;
/// Most loop turns a connection gets per poll, so one busy client cannot
/// starve the others.
const TURNS: usize = 16;

/// What a connection in transmission does besides feeding the engine.
#[derive(Debug, Clone, Copy)]
enum Op {
    /// Feeding the engine: request headers, payloads it discards.
    Idle,
    /// Sending READ data (after its header).
    Read { offset: u64, remaining: u64 },
    /// Receiving a WRITE's payload into the stack; the first error is
    /// kept for the reply.
    Write {
        v: Valid,
        result: Result<(), NbdError>,
    },
}

#[derive(Debug, Clone)]
struct Transfer {
    engine: Engine,
    op: Op,
    /// A reply (or READ header) framed by the engine, waiting for room in
    /// the transmit buffer; `out_len == 0` when there is none.
    out: [u8; SMALL_REPLY],
    out_len: usize,
}

// Every slot must be able to hold a connection in transmission, and there
// is no heap to box it in: the size difference is the point.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
enum Phase {
    /// The socket listens (or must be told to).
    Listen,
    /// Connected; waiting for a free negotiator.
    Queued { since: Instant },
    /// Negotiating with negotiator `slot`.
    Negotiating { slot: usize, since: Instant },
    /// Serving requests.
    Transmission(Transfer),
    /// Closing: pending output is sent, then the socket closes; a peer
    /// that does not close its side by the timeout is reset.
    Closing { since: Instant },
}

#[derive(Debug, Clone)]
struct Connection {
    handle: SocketHandle,
    phase: Phase,
}

/// A handshake server and its option buffer, lent to one connection at a
/// time.
struct Negotiator<const OPT: usize> {
    server: Option<handshake::Server>,
    input: [u8; OPT],
    len: usize,
}

/// An NBD server over smoltcp TCP sockets, serving one export through a
/// core [`Stack`] (a plugin, e.g. [`DevicePlugin`](crate::DevicePlugin),
/// under any filters).
///
/// `N` connections at once (one socket each), `H` of them negotiating at
/// once, and options up to `OPT` bytes buffered (longer ones are answered
/// with NBD_REP_ERR_TOO_BIG, as the core does).
pub struct Server<'a, const N: usize, const H: usize = 1, const OPT: usize = 1024> {
    config: Config<'a>,
    stack: Stack,
    /// Each connection's open stack (from its NBD_OPT_GO to its end).
    contexts: [Option<Context>; N],
    connections: [Connection; N],
    negotiators: [Negotiator<OPT>; H],
}

impl<const N: usize, const H: usize, const OPT: usize> core::fmt::Debug for Server<'_, N, H, OPT> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Server")
            .field("config", &self.config)
            .field("stack", &self.stack)
            .field("connections", &self.connections)
            .finish()
    }
}

/// A TCP socket over caller buffers, ready to give to [`Server::new`].
pub fn tcp_socket<'b>(rx: &'b mut [u8], tx: &'b mut [u8]) -> tcp::Socket<'b> {
    let mut s = tcp::Socket::new(tcp::SocketBuffer::new(rx), tcp::SocketBuffer::new(tx));
    s.set_nagle_enabled(false);
    s
}

fn free_space(s: &tcp::Socket<'_>) -> usize {
    s.send_capacity() - s.send_queue()
}

impl<'a, const N: usize, const H: usize, const OPT: usize> Server<'a, N, H, OPT> {
    /// A server of `stack` (configured: `config_complete` done) on the
    /// sockets `handles` (TCP sockets in the caller's `SocketSet`, e.g.
    /// from [`tcp_socket`]).
    pub fn new(config: Config<'a>, stack: Stack, handles: [SocketHandle; N]) -> Self {
        const { assert!(OPT >= 64, "the option buffer must hold small options") };
        Server {
            config,
            stack,
            contexts: core::array::from_fn(|_| None),
            connections: handles.map(|handle| Connection {
                handle,
                phase: Phase::Listen,
            }),
            negotiators: core::array::from_fn(|_| Negotiator {
                server: None,
                input: [0; OPT],
                len: 0,
            }),
        }
    }

    /// The stack the server serves.
    pub fn stack(&self) -> &Stack {
        &self.stack
    }

    /// Connections that are past the TCP handshake.
    pub fn active_connections(&self) -> usize {
        self.connections
            .iter()
            .filter(|c| !matches!(c.phase, Phase::Listen))
            .count()
    }

    /// Connections in the transmission phase.
    pub fn transmitting(&self) -> usize {
        self.connections
            .iter()
            .filter(|c| matches!(c.phase, Phase::Transmission(_)))
            .count()
    }

    /// Serve every connection as far as its socket buffers allow. Call it
    /// after each `Interface::poll`; returns true when something moved
    /// (poll the interface again soon to send it).
    pub fn poll(&mut self, now: Instant, sockets: &mut SocketSet<'_>) -> bool {
        let mut progress = false;
        for i in 0..N {
            progress |= self.poll_connection(i, now, sockets);
            if !matches!(
                self.connections[i].phase,
                Phase::Negotiating { .. } | Phase::Transmission(_)
            ) {
                close_export(&mut self.contexts[i]);
            }
        }
        progress
    }

    fn release(&mut self, i: usize) {
        if let Phase::Negotiating { slot, .. } = self.connections[i].phase {
            if let Some(n) = self.negotiators.get_mut(slot) {
                n.server = None;
                n.len = 0;
            }
        }
    }

    fn poll_connection(&mut self, i: usize, now: Instant, sockets: &mut SocketSet<'_>) -> bool {
        let handle = self.connections[i].handle;
        let socket = sockets.get_mut::<tcp::Socket>(handle);
        if !socket.is_open() {
            // Closed (or TIME-WAIT): listen again.
            if !matches!(self.connections[i].phase, Phase::Listen) {
                debug!("nbd: slot {} closed", i);
                self.release(i);
                self.connections[i].phase = Phase::Listen;
            }
            if socket.listen(self.config.port).is_err() {
                warn!("nbd: slot {} cannot listen on {}", i, self.config.port);
            }
            return false;
        }
        if matches!(self.connections[i].phase, Phase::Listen) {
            if !socket.may_send() {
                return false;
            }
            info!("nbd: slot {} connected", i);
            self.connections[i].phase = Phase::Queued { since: now };
        }
        let gone = !socket.may_send() || !socket.may_recv();
        if gone && !matches!(self.connections[i].phase, Phase::Closing { .. }) {
            // The peer is gone (or half-closed with nothing left to read).
            self.release(i);
            self.connections[i].phase = Phase::Closing { since: now };
        }
        if let Phase::Transmission(t) = &mut self.connections[i].phase {
            let Some(ctx) = self.contexts[i].as_ref() else {
                self.connections[i].phase = Phase::Closing { since: now };
                return true;
            };
            let (progress, next) = serve(ctx, t, socket);
            if let Next::Close = next {
                self.connections[i].phase = Phase::Closing { since: now };
            }
            return progress;
        }
        match self.connections[i].phase {
            Phase::Listen => false,
            Phase::Closing { since } => {
                if now - since > self.config.handshake_timeout {
                    socket.abort();
                    return true;
                }
                // The FIN follows whatever is still queued.
                socket.close();
                if socket.may_recv() {
                    // Discard what the peer still sends so it sees our FIN.
                    let _ = socket.recv(|b| (b.len(), ()));
                }
                false
            }
            Phase::Queued { since } => {
                if now - since > self.config.handshake_timeout {
                    warn!("nbd: slot {} waited too long for a negotiator", i);
                    socket.abort();
                    self.connections[i].phase = Phase::Listen;
                    return true;
                }
                let Some(slot) = self.negotiators.iter().position(|n| n.server.is_none()) else {
                    return false;
                };
                let hs_config = self.handshake_config();
                let neg = &mut self.negotiators[slot];
                neg.server = Some(handshake::Server::new(hs_config));
                neg.len = 0;
                self.connections[i].phase = Phase::Negotiating { slot, since: now };
                self.negotiate(i, slot, now, socket);
                true
            }
            Phase::Negotiating { slot, since } => {
                if now - since > self.config.handshake_timeout {
                    warn!("nbd: slot {} negotiation timed out", i);
                    self.release(i);
                    socket.abort();
                    self.connections[i].phase = Phase::Listen;
                    return true;
                }
                self.negotiate(i, slot, now, socket)
            }
            // Served above.
            Phase::Transmission(_) => false,
        }
    }

    fn handshake_config(&self) -> handshake::Config {
        handshake::Config {
            structured_replies: self.config.structured_replies,
            extended_headers: self.config.extended_headers,
            tls: TlsMode::Off,
            max_buffered_option: (OPT - 16) as u32,
            ..handshake::Config::default()
        }
    }

    /// Drive negotiator `slot` for connection `i`.
    fn negotiate(
        &mut self,
        i: usize,
        slot: usize,
        now: Instant,
        socket: &mut tcp::Socket<'_>,
    ) -> bool {
        let config = self.config;
        let stack = &self.stack;
        let context = &mut self.contexts[i];
        let Some(neg) = self.negotiators.get_mut(slot) else {
            return false;
        };
        let Some(hs) = neg.server.as_mut() else {
            return false;
        };
        let mut progress = false;
        for _ in 0..TURNS {
            // Send what the handshake queued; feed it nothing more until
            // it is all out, so that its output buffer never overflows.
            let out = hs.pending_output();
            if !out.is_empty() {
                match socket.send_slice(out) {
                    Ok(0) => return progress,
                    Ok(n) => {
                        hs.consume_output(n);
                        progress = true;
                    }
                    Err(_) => {
                        self.connections[i].phase = Phase::Closing { since: now };
                        neg.server = None;
                        return true;
                    }
                }
                if !hs.pending_output().is_empty() {
                    return progress;
                }
            }
            if let Some(why) = hs.disconnect_reason() {
                debug!("nbd: slot {} handshake ended ({})", i, why as u8);
                neg.server = None;
                self.connections[i].phase = Phase::Closing { since: now };
                return true;
            }
            if hs.is_done() {
                let negotiated = hs.negotiated();
                let limits = Limits {
                    max_request: u64::from(config.max_request),
                    max_in_flight: 1,
                };
                let mut t = Transfer {
                    engine: Engine::new(negotiated, limits),
                    op: Op::Idle,
                    out: [0; SMALL_REPLY],
                    out_len: 0,
                };
                neg.server = None;
                // Bytes the client sent past its last option: requests,
                // served up to the first that needs the socket.
                let Some(ctx) = context.as_ref() else {
                    self.connections[i].phase = Phase::Closing { since: now };
                    return true;
                };
                let mut rest = &neg.input[..neg.len];
                while !rest.is_empty() {
                    let (used, fed) = feed(ctx, &mut t, rest);
                    rest = &rest[used..];
                    let stuck = used == 0 && matches!(fed, Fed::Nothing);
                    if matches!(after(ctx, &mut t, fed), Step::Close) || stuck {
                        break;
                    }
                }
                if !rest.is_empty() || t.engine.close_reason().is_some() {
                    // A client that pipelines further than that before
                    // the handshake's answer is not one we serve.
                    self.connections[i].phase = Phase::Closing { since: now };
                    return true;
                }
                info!(
                    "nbd: slot {} serving (structured {}, extended {})",
                    i, negotiated.structured_replies, negotiated.extended_headers
                );
                self.connections[i].phase = Phase::Transmission(t);
                return true;
            }
            // Read no further than the current option, so transmission
            // bytes are never swallowed by the handshake.
            let mut want = hs.needed_for(&neg.input[..neg.len]).min(OPT);
            if want <= 1 {
                // Skipping an oversized option: take what is there.
                want = OPT;
            }
            if neg.len < want {
                match socket.recv_slice(&mut neg.input[neg.len..want]) {
                    Ok(n) => {
                        neg.len += n;
                        progress |= n > 0;
                    }
                    Err(_) => {
                        neg.server = None;
                        self.connections[i].phase = Phase::Closing { since: now };
                        return true;
                    }
                }
            }
            let (consumed, close) = match hs.handle_input(&neg.input[..neg.len]) {
                Err(_) => (0, false),
                Ok(p) => {
                    if p.consumed > 0 || p.event.is_some() {
                        progress = true;
                    }
                    let next = match p.event {
                        None => handshake::Next::Options,
                        Some(Event::ListExports(mut list)) => {
                            // One entry always fits in the drained output.
                            match list.add(hs, config.export_name, config.description) {
                                Ok(()) => list.done(hs),
                                Err(_) => list.refuse(hs, OptionError::Invalid),
                            }
                        }
                        Some(Event::OpenExport {
                            name,
                            info_only,
                            reply,
                        }) => {
                            // A fresh open for every GO or INFO; INFO's
                            // context is closed again at once.
                            close_export(context);
                            let opened = (name.is_empty() || name == config.export_name)
                                .then(|| open_export(stack, name))
                                .and_then(|r| {
                                    r.map_err(|e| warn!("nbd: cannot open the export: {}", why(&e)))
                                        .ok()
                                });
                            match opened {
                                Some(ctx) => {
                                    let c = ctx.caps();
                                    let info = ExportInfo {
                                        name: config.export_name,
                                        size: c.size,
                                        eflags: export_flags(&ctx),
                                        description: config.description,
                                        block_size: Some(block_size(
                                            c.block_size,
                                            config.max_request,
                                        )),
                                    };
                                    let next = reply.ready(hs, &info);
                                    if !info_only {
                                        *context = Some(ctx);
                                    }
                                    next
                                }
                                None => reply.refuse(hs, OptionError::Unknown),
                            }
                        }
                        // TLS is never offered, so STARTTLS is refused by
                        // the core and this cannot happen.
                        Some(Event::StartTls(_)) => {
                            handshake::Next::Close(handshake::Disconnect::Protocol)
                        }
                    };
                    (p.consumed, matches!(next, handshake::Next::Close(_)))
                }
            };
            if close {
                neg.server = None;
                self.connections[i].phase = Phase::Closing { since: now };
                return true;
            }
            let consumed = consumed.min(neg.len);
            neg.input.copy_within(consumed..neg.len, 0);
            neg.len -= consumed;
            if consumed == 0
                && hs.pending_output().is_empty()
                && hs.disconnect_reason().is_none()
                && !hs.is_done()
                && socket.recv_queue() == 0
            {
                break;
            }
        }
        progress
    }
}

/// Open the stack for a connection.
fn open_export(stack: &Stack, name: &str) -> Result<Context, Error> {
    stack.open(&OpenArgs {
        readonly: false,
        export_name: name,
        is_tls: false,
        peer: &Peer::Unknown,
    })
}

/// Close a connection's stack, if open (finalize, then close).
fn close_export(context: &mut Option<Context>) {
    if let Some(ctx) = context.take() {
        if let Err(e) = ctx.finalize() {
            warn!("nbd: finalize failed: {}", why(&e));
        }
    }
}

/// The transmission flags of an open export, by core's one rule.
fn export_flags(ctx: &Context) -> u16 {
    eflags(&ctx.caps().features())
}

/// What went wrong, as a plain string for the log.
fn why(e: &Error) -> &str {
    e.message.as_deref().unwrap_or(e.errno.description())
}

/// The block size constraints to advertise: the stack's if it has any,
/// with the maximum (and the preferred size) no larger than `max_request`.
fn block_size(b: Option<BlockSize>, max_request: u32) -> (u32, u32, u32) {
    match b {
        None => (1, 4096, max_request),
        Some(b) => {
            let max = b.maximum.min(max_request).max(b.minimum);
            (b.minimum, b.preferred.min(max), max)
        }
    }
}

enum Next {
    Continue,
    Close,
}

/// Serve requests on one connection as far as its buffers allow.
fn serve(ctx: &Context, t: &mut Transfer, socket: &mut tcp::Socket<'_>) -> (bool, Next) {
    let mut progress = false;
    for _ in 0..TURNS {
        match step(ctx, t, socket) {
            Step::Progress => progress = true,
            Step::Blocked => return (progress, Next::Continue),
            Step::Close => return (true, Next::Close),
        }
    }
    (progress, Next::Continue)
}

enum Step {
    Progress,
    Blocked,
    Close,
}

fn step(ctx: &Context, t: &mut Transfer, socket: &mut tcp::Socket<'_>) -> Step {
    // A framed reply goes out before anything else.
    if t.out_len > 0 {
        if free_space(socket) < t.out_len {
            return Step::Blocked;
        }
        if socket.send_slice(&t.out[..t.out_len]).is_err() {
            return Step::Close;
        }
        t.out_len = 0;
        return Step::Progress;
    }
    match t.op {
        Op::Read { offset, remaining } => {
            // Data goes from the stack straight into the transmit buffer.
            let r = socket.send(|buf| {
                let n = (buf.len() as u64).min(remaining) as usize;
                match ctx.pread(&mut buf[..n], offset, Flags::NONE) {
                    Ok(()) => (n, Ok(n)),
                    Err(e) => (0, Err(e)),
                }
            });
            match r {
                Ok(Ok(n)) => {
                    let remaining = remaining - n as u64;
                    t.op = if remaining == 0 {
                        Op::Idle
                    } else {
                        Op::Read {
                            offset: offset + n as u64,
                            remaining,
                        }
                    };
                    if n == 0 {
                        Step::Blocked
                    } else {
                        Step::Progress
                    }
                }
                // The reply header is out: framing cannot be kept.
                Ok(Err(_)) | Err(_) => {
                    warn!("nbd: read failed after its reply started");
                    Step::Close
                }
            }
        }
        // Take a request only when its reply is sure to fit.
        Op::Idle if free_space(socket) < SMALL_REPLY.min(socket.send_capacity()) => Step::Blocked,
        Op::Idle | Op::Write { .. } => {
            // Input goes through the engine; a WRITE's payload from the
            // receive buffer straight to the stack.
            let r = socket.recv(|buf| {
                let (n, fed) = feed(ctx, t, buf);
                (n, (n, fed))
            });
            match r {
                Ok((0, Fed::Nothing)) => Step::Blocked,
                Ok((_, fed)) => after(ctx, t, fed),
                Err(_) => Step::Close,
            }
        }
    }
}

/// What feeding the engine gave, with the input no longer borrowed.
enum Fed {
    Nothing,
    Request(Valid),
    Refused(transmission::Refused),
    WriteDone,
    Close(transmission::Close),
}

/// Give `input` to the engine; a WRITE's payload is written to the stack
/// here, while the input is at hand.
fn feed(ctx: &Context, t: &mut Transfer, input: &[u8]) -> (usize, Fed) {
    let p = t.engine.handle_input(input);
    let fed = match p.event {
        None => Fed::Nothing,
        Some(transmission::Event::Request(v)) => Fed::Request(v),
        Some(transmission::Event::Refused(r)) => Fed::Refused(r),
        Some(transmission::Event::Close(c)) => Fed::Close(c),
        Some(transmission::Event::Payload { offset, data, last }) => {
            if let Op::Write {
                result: r @ Ok(()), ..
            } = &mut t.op
            {
                // The pieces go down without FUA: one flush at the end
                // makes them all durable.
                *r = ctx
                    .pwrite(data, offset, Flags::NONE)
                    .map_err(|e| nbd_error(&e, CmdFlags::default()));
            }
            if last {
                Fed::WriteDone
            } else {
                Fed::Nothing
            }
        }
    };
    (p.consumed, fed)
}

/// Act on what the engine said: run a request, queue a reply, or close.
fn after(ctx: &Context, t: &mut Transfer, fed: Fed) -> Step {
    match fed {
        Fed::Nothing => {}
        Fed::Close(why) => {
            info!("nbd: connection ends ({})", why as u8);
            return Step::Close;
        }
        Fed::Refused(r) => {
            trace!(
                "nbd: refused request {} (error {})",
                r.cookie,
                r.error as u8
            );
            t.out_len = t.engine.reply_refused(&r, &mut t.out);
        }
        Fed::Request(v) => run(ctx, t, v),
        Fed::WriteDone => {
            if let Op::Write { v, result } = t.op {
                let r = result.and_then(|()| {
                    if v.fua() {
                        ctx.flush(Flags::NONE)
                            .map_err(|e| nbd_error(&e, CmdFlags::default()))
                    } else {
                        Ok(())
                    }
                });
                t.out_len = reply(&mut t.engine, &v, r, &mut t.out);
            }
            t.op = Op::Idle;
        }
    }
    Step::Progress
}

/// The NBD error for a failed call (FAST_ZERO and DF decide how ENOTSUP
/// and EOVERFLOW are told).
fn nbd_error(e: &Error, flags: CmdFlags) -> NbdError {
    NbdError::from_errno(e.errno, flags)
}

fn reply(engine: &mut Engine, v: &Valid, r: Result<(), NbdError>, out: &mut [u8]) -> usize {
    match r {
        Ok(()) => engine.reply_ok(v, out),
        Err(e) => engine.reply_error(v, e, b"", out),
    }
}

/// Run a validated request against the stack (READ and WRITE start their
/// transfers) and queue its reply.
fn run(ctx: &Context, t: &mut Transfer, v: Valid) {
    trace!(
        "nbd: {} offset {} length {}",
        v.command.name(),
        v.offset,
        v.count
    );
    let flags = v.call_flags();
    let r = match v.command {
        Command::Read => {
            t.out_len = t.engine.reply_read(&v, &mut t.out);
            t.op = Op::Read {
                offset: v.offset,
                remaining: v.count,
            };
            return;
        }
        Command::Write => {
            t.op = Op::Write { v, result: Ok(()) };
            return;
        }
        Command::BlockStatus => {
            t.out_len = block_status(ctx, &mut t.engine, &v, &mut t.out);
            return;
        }
        Command::Flush => ctx.flush(flags),
        Command::Trim => ctx.trim(v.count, v.offset, flags),
        Command::WriteZeroes => ctx.zero(v.count, v.offset, flags),
        Command::Cache => ctx.cache(v.count, v.offset, flags),
        // The engine ends the connection on DISC instead of handing it out.
        Command::Disc => Ok(()),
    };
    let r = r.map_err(|e| nbd_error(&e, v.flags));
    t.out_len = reply(&mut t.engine, &v, r, &mut t.out);
}

/// The `base:allocation` extents of the request's range, from the stack,
/// framed by the engine.
fn block_status(ctx: &Context, engine: &mut Engine, v: &Valid, out: &mut [u8]) -> usize {
    let req_one = v.cmd_flags().contains(CmdFlags::REQ_ONE);
    let end = v.offset.saturating_add(v.count);
    let limit = if req_one { 1 } else { MAX_EXTENTS };
    let mut list = Extents::with_limit(v.offset, end, limit);
    let flags = if req_one { Flags::REQ_ONE } else { Flags::NONE };
    if let Err(e) = ctx.extents(v.count, v.offset, flags, &mut list) {
        return engine.reply_error(v, nbd_error(&e, v.flags), b"", out);
    }
    engine.reply_block_status(
        v,
        list.as_slice()
            .iter()
            .take(MAX_EXTENTS)
            .map(|e| (e.offset, e.length, e.flags)),
        out,
    )
}
