//! The poll loop: TCP sockets in a smoltcp `SocketSet`, one connection
//! per socket slot, negotiation by the core's sans-IO handshake and
//! requests framed and validated by the core's transmission codec.
//!
//! Memory is fixed at compile time. A connection slot holds a request
//! header and the state of one request (about 150 bytes); a negotiator
//! holds the core's handshake server and an option buffer (about 14 KiB)
//! and is lent to one connection at a time for the few round trips of
//! negotiation, so `N` connections need only `H` negotiators. Each
//! connection in transmission has its own context of the core stack
//! (plugin and filters), opened when the client picks the export. Read
//! data goes from the stack straight into the socket's transmit buffer
//! and write data from the receive buffer straight to the stack, in the
//! pieces the socket buffers hold: there is no data buffer, and no request
//! length is limited by one.

use nbdkit_core::backend::{
    BlockSize, Context, Error, Extents, Flags, OpenArgs, Peer, Stack, Support,
};
use nbdkit_core::handshake::{self, Event, ExportInfo, Negotiated, TlsMode};
use nbdkit_core::transmission::{decode, header_len, validate, Command, Export, ReplyStyle};
use nbdkit_core::wire::consts::*;
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

/// A reply that waits for room in the transmit buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reply {
    Ok {
        cookie: u64,
        offset: u64,
    },
    Error {
        command: Option<Command>,
        cookie: u64,
        offset: u64,
        errno: u32,
    },
    BlockStatus {
        cookie: u64,
        offset: u64,
        count: u64,
        req_one: bool,
    },
}

/// What a connection in transmission is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    /// Reading a request header.
    Header,
    /// Sending READ data (after its header).
    Read {
        cookie: u64,
        offset: u64,
        remaining: u64,
        header_sent: bool,
    },
    /// Receiving WRITE data into the stack.
    Write {
        cookie: u64,
        offset: u64,
        remaining: u64,
        fua: bool,
        error: Option<u32>,
    },
    /// Discarding the payload of a refused request, then replying.
    Drain { remaining: u64, then: Reply },
    /// Sending a reply.
    Reply(Reply),
}

#[derive(Debug, Clone, Copy)]
struct Transfer {
    negotiated: Negotiated,
    style: ReplyStyle,
    header: [u8; 32],
    have: usize,
    op: Op,
}

#[derive(Debug, Clone, Copy)]
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

#[derive(Debug, Clone, Copy)]
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
            Phase::Transmission(mut t) => {
                let Some(ctx) = self.contexts[i].as_ref() else {
                    self.connections[i].phase = Phase::Closing { since: now };
                    return true;
                };
                let (progress, next) = serve(ctx, &self.config, &mut t, socket);
                self.connections[i].phase = match next {
                    Next::Continue => Phase::Transmission(t),
                    Next::Close => Phase::Closing { since: now },
                };
                progress
            }
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
                let leftover = neg.len;
                let mut t = Transfer {
                    negotiated,
                    style: ReplyStyle::of(&negotiated),
                    header: [0; 32],
                    have: 0,
                    op: Op::Header,
                };
                neg.server = None;
                if leftover > t.header.len() {
                    // A client that pipelines more than a request header
                    // before the handshake answer is not one we serve.
                    self.connections[i].phase = Phase::Closing { since: now };
                    return true;
                }
                t.header[..leftover].copy_from_slice(&neg.input[..leftover]);
                t.have = leftover;
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
                    let close = match p.event {
                        None => false,
                        Some(Event::ListExports) => {
                            let ok = hs.list_export(config.export_name, config.description);
                            hs.list_done(ok.is_ok()).is_err()
                        }
                        Some(Event::OpenExport { name, info_only }) => {
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
                                        eflags: eflags(&ctx),
                                        description: config.description,
                                        block_size: Some(block_size(
                                            c.block_size,
                                            config.max_request,
                                        )),
                                    };
                                    let r = hs.export_ready(&info);
                                    if !info_only {
                                        *context = Some(ctx);
                                    }
                                    r.is_err()
                                }
                                None => hs.export_failed().is_err(),
                            }
                        }
                        // TLS is never offered, so STARTTLS is refused by
                        // the core and this cannot happen.
                        Some(Event::StartTls) => true,
                    };
                    if p.consumed > 0 || p.event.is_some() {
                        progress = true;
                    }
                    (p.consumed, close)
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

/// The transmission flags of an open export (without SEND_DF, which the
/// handshake adds when structured replies are on).
fn eflags(ctx: &Context) -> u16 {
    let c = ctx.caps();
    let mut f = FLAG_HAS_FLAGS;
    let flags = [
        (!c.can_write, FLAG_READ_ONLY),
        (c.can_flush, FLAG_SEND_FLUSH),
        (c.can_fua != Support::None, FLAG_SEND_FUA),
        (c.is_rotational, FLAG_ROTATIONAL),
        (c.can_trim, FLAG_SEND_TRIM),
        (c.can_zero != Support::None, FLAG_SEND_WRITE_ZEROES),
        (
            c.can_zero != Support::None && c.can_fast_zero,
            FLAG_SEND_FAST_ZERO,
        ),
        (c.can_multi_conn, FLAG_CAN_MULTI_CONN),
        (c.can_cache != Support::None, FLAG_SEND_CACHE),
    ];
    for (on, flag) in flags {
        if on {
            f |= flag;
        }
    }
    f
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

/// The NBD error for a failed call.
fn nbd_errno(e: &Error, v_flags: u16) -> u32 {
    e.errno.to_nbd(
        v_flags & CMD_FLAG_FAST_ZERO != 0,
        v_flags & CMD_FLAG_DF != 0,
    )
}

enum Next {
    Continue,
    Close,
}

/// Serve requests on one connection as far as its buffers allow.
fn serve(
    ctx: &Context,
    config: &Config<'_>,
    t: &mut Transfer,
    socket: &mut tcp::Socket<'_>,
) -> (bool, Next) {
    let mut progress = false;
    for _ in 0..TURNS {
        match step(ctx, config, t, socket) {
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

fn step(
    ctx: &Context,
    config: &Config<'_>,
    t: &mut Transfer,
    socket: &mut tcp::Socket<'_>,
) -> Step {
    match t.op {
        Op::Header => {
            // Take a request only when its reply is sure to fit.
            if free_space(socket) < SMALL_REPLY.min(socket.send_capacity()) {
                return Step::Blocked;
            }
            let hlen = header_len(t.negotiated.extended_headers);
            if t.have < hlen {
                match socket.recv_slice(&mut t.header[t.have..hlen]) {
                    Ok(n) => t.have += n,
                    Err(_) => return Step::Close,
                }
                if t.have < hlen {
                    return Step::Blocked;
                }
            }
            t.have = 0;
            let req = match decode(&t.header[..hlen], t.negotiated.extended_headers) {
                Ok(r) => r,
                Err(_) => {
                    warn!("nbd: lost framing (bad request magic or huge payload)");
                    return Step::Close;
                }
            };
            let h = req.header;
            trace!(
                "nbd: request {} offset {} length {}",
                h.command,
                h.offset,
                h.length
            );
            let refuse = |errno: u32| {
                let then = Reply::Error {
                    command: Command::from_wire(h.command),
                    cookie: h.cookie,
                    offset: h.offset,
                    errno,
                };
                if req.payload_len > 0 {
                    Op::Drain {
                        remaining: req.payload_len,
                        then,
                    }
                } else {
                    Op::Reply(then)
                }
            };
            let export = Export {
                negotiated: t.negotiated,
            };
            let v = match validate(&export, &req) {
                Ok(v) => v,
                Err(errno) => {
                    t.op = refuse(errno);
                    return Step::Progress;
                }
            };
            if matches!(v.command, Command::Read | Command::Write)
                && v.count > u64::from(config.max_request)
            {
                t.op = refuse(NBD_EINVAL);
                return Step::Progress;
            }
            let ok = Reply::Ok {
                cookie: v.cookie,
                offset: v.offset,
            };
            let result = |r: Result<(), Error>| match r {
                Ok(()) => Op::Reply(ok),
                Err(e) => Op::Reply(Reply::Error {
                    command: Some(v.command),
                    cookie: v.cookie,
                    offset: v.offset,
                    errno: nbd_errno(&e, v.flags),
                }),
            };
            let fua = if v.fua() { Flags::FUA } else { Flags::NONE };
            t.op = match v.command {
                Command::Disc => {
                    info!("nbd: client sent NBD_CMD_DISC");
                    return Step::Close;
                }
                Command::Read => Op::Read {
                    cookie: v.cookie,
                    offset: v.offset,
                    remaining: v.count,
                    header_sent: false,
                },
                Command::Write => Op::Write {
                    cookie: v.cookie,
                    offset: v.offset,
                    remaining: v.count,
                    fua: v.fua(),
                    error: None,
                },
                Command::Flush => result(ctx.flush(Flags::NONE)),
                Command::Trim => result(ctx.trim(v.count, v.offset, fua)),
                Command::WriteZeroes => {
                    let mut flags = fua;
                    if v.flags & CMD_FLAG_NO_HOLE == 0 {
                        flags = flags.with(Flags::MAY_TRIM);
                    }
                    if v.flags & CMD_FLAG_FAST_ZERO != 0 {
                        flags = flags.with(Flags::FAST_ZERO);
                    }
                    result(ctx.zero(v.count, v.offset, flags))
                }
                Command::Cache => result(ctx.cache(v.count, v.offset, Flags::NONE)),
                Command::BlockStatus => Op::Reply(Reply::BlockStatus {
                    cookie: v.cookie,
                    offset: v.offset,
                    count: v.count,
                    req_one: v.flags & CMD_FLAG_REQ_ONE != 0,
                }),
            };
            Step::Progress
        }
        Op::Read {
            cookie,
            offset,
            remaining,
            header_sent,
        } => {
            if !header_sent {
                let mut b = [0u8; ReplyStyle::MAX_HEADER];
                let n = t.style.read_header(&mut b, cookie, offset, remaining);
                if free_space(socket) < n {
                    return Step::Blocked;
                }
                if socket.send_slice(&b[..n]).is_err() {
                    return Step::Close;
                }
            }
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
                        Op::Header
                    } else {
                        Op::Read {
                            cookie,
                            offset: offset + n as u64,
                            remaining,
                            header_sent: true,
                        }
                    };
                    if n == 0 && header_sent {
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
        Op::Write {
            cookie,
            offset,
            remaining,
            fua,
            mut error,
        } => {
            // Data goes from the receive buffer straight to the stack.
            let r = socket.recv(|buf| {
                let n = (buf.len() as u64).min(remaining) as usize;
                if error.is_none() && n > 0 {
                    if let Err(e) = ctx.pwrite(&buf[..n], offset, Flags::NONE) {
                        error = Some(nbd_errno(&e, 0));
                    }
                }
                (n, n)
            });
            let n = match r {
                Ok(n) => n,
                Err(_) => return Step::Close,
            };
            let remaining = remaining - n as u64;
            if remaining > 0 {
                t.op = Op::Write {
                    cookie,
                    offset: offset + n as u64,
                    remaining,
                    fua,
                    error,
                };
                return if n == 0 {
                    Step::Blocked
                } else {
                    Step::Progress
                };
            }
            if error.is_none() && fua {
                // The pieces went down without FUA: one flush makes them
                // all durable.
                error = ctx.flush(Flags::NONE).err().map(|e| nbd_errno(&e, 0));
            }
            t.op = Op::Reply(match error {
                None => Reply::Ok { cookie, offset },
                Some(errno) => Reply::Error {
                    command: Some(Command::Write),
                    cookie,
                    offset,
                    errno,
                },
            });
            Step::Progress
        }
        Op::Drain { remaining, then } => {
            let r = socket.recv(|buf| {
                let n = (buf.len() as u64).min(remaining) as usize;
                (n, n)
            });
            let n = match r {
                Ok(n) => n as u64,
                Err(_) => return Step::Close,
            };
            let remaining = remaining - n;
            t.op = if remaining == 0 {
                Op::Reply(then)
            } else {
                Op::Drain { remaining, then }
            };
            if n == 0 {
                Step::Blocked
            } else {
                Step::Progress
            }
        }
        Op::Reply(reply) => {
            let mut b = [0u8; SMALL_REPLY];
            let n = build_reply(ctx, t, reply, &mut b);
            if free_space(socket) < n {
                return Step::Blocked;
            }
            if socket.send_slice(&b[..n]).is_err() {
                return Step::Close;
            }
            t.op = Op::Header;
            Step::Progress
        }
    }
}

fn build_reply(ctx: &Context, t: &Transfer, reply: Reply, b: &mut [u8; SMALL_REPLY]) -> usize {
    let style = t.style;
    match reply {
        Reply::Ok { cookie, offset } => style.ok(b, cookie, offset),
        Reply::Error {
            command,
            cookie,
            offset,
            errno,
        } => style.error(b, command, cookie, offset, errno, b""),
        Reply::BlockStatus {
            cookie,
            offset,
            count,
            req_one,
        } => {
            let end = offset.saturating_add(count);
            let limit = if req_one { 1 } else { MAX_EXTENTS };
            let mut list = Extents::with_limit(offset, end, limit);
            let flags = if req_one { Flags::REQ_ONE } else { Flags::NONE };
            if let Err(e) = ctx.extents(count, offset, flags, &mut list) {
                return style.error(
                    b,
                    Some(Command::BlockStatus),
                    cookie,
                    offset,
                    nbd_errno(&e, 0),
                    b"",
                );
            }
            let id = t
                .negotiated
                .base_allocation
                .unwrap_or(handshake::BASE_ALLOCATION_ID);
            style.block_status(
                b,
                cookie,
                offset,
                count,
                req_one,
                id,
                list.as_slice()
                    .iter()
                    .take(MAX_EXTENTS)
                    .map(|e| (e.offset, e.length, e.flags)),
            )
        }
    }
}
