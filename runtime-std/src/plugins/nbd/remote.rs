//! One connection to the remote server, driven with blocking I/O.
//!
//! Negotiation runs on the caller's thread with a deadline on every read
//! and write ([`HANDSHAKE_TIMEOUT`]). Then requests are pipelined: a caller
//! registers its request and writes it (under a lock that only keeps
//! requests whole on the wire). Replies are read by one reader at a time:
//! a caller that finds nobody reading reads them itself (a lone request
//! thus costs no thread switch in the proxy: nbdkit's worker reads the
//! client's request, sends it on, reads the answer and replies, as a
//! synchronous proxy would) until its own reply is in; if requests are
//! still in flight then, it hands reading over to the connection's reader
//! thread, which reads until none is left. A caller that finds someone
//! reading sleeps until its reply is in. The reader of the moment checks
//! each reply with core's [`Reply`], puts READ data straight into the
//! caller's buffer and wakes the caller. When the connection dies for any
//! reason (the server closed it, a read failed, the server broke the
//! protocol, a write failed) the reader of the moment fails every request
//! in flight with `EIO` and every later one fails at once: no caller waits
//! on a dead connection.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

use nbdkit_core::backend::{BlockSize, Error, Result};
use nbdkit_core::client::handshake::{self as hs, Event, Goal, Handshake};
use nbdkit_core::client::reply::{self, Next, Reply, ReplySink, Sent};
use nbdkit_core::errno::Errno;
use nbdkit_core::handshake::{Negotiated, TlsMode};
use nbdkit_core::transmission::{Command, ReplyStyle};
use nbdkit_core::wire::consts::*;
use nbdkit_core::wire::transmission::RequestHeader;
use socket2::Socket;

use super::transport::{self, io_message, remaining, Child};
use super::Target;
use crate::log;
use crate::tls::TlsClient;

/// Longest time from connecting to the end of negotiation.
pub(super) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest time the DISC sent on close may take to write.
const DISC_TIMEOUT: Duration = Duration::from_secs(1);
/// Size of the reader's buffer: many small replies arrive in one read.
const READ_BUFFER: usize = 128 * 1024;
/// How much the reader reads ahead after a large data reply (the next one
/// is probably large too, and its data is read straight into its buffer).
const READ_AHEAD_SMALL: usize = 4096;
/// Data replies at least this long make the reader read ahead little.
const LARGE_DATA: usize = 32 * 1024;

/// How every connection to the remote is made.
#[derive(Debug)]
pub(super) struct Settings {
    /// Where the server is.
    pub(super) target: Target,
    /// TLS policy towards it.
    pub(super) tls_mode: TlsMode,
    /// TLS credentials (when the policy is not off).
    pub(super) tls: Option<TlsClient>,
    /// The name the server's certificate must carry.
    pub(super) tls_hostname: Option<String>,
    /// Extra attempts to connect, a second apart.
    pub(super) retry: u32,
}

/// A std lock, whatever a panicking holder left.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A finished negotiation.
struct Negotiation {
    sock: Socket,
    child: Option<Child>,
    hs: Box<Handshake>,
}

/// Connect and negotiate towards `goal`, retrying as configured;
/// `on_export` gets each entry of an export list.
fn negotiate(
    settings: &Settings,
    goal: Goal,
    export: &str,
    on_export: &mut dyn FnMut(&[u8], &[u8]),
) -> Result<Negotiation> {
    let mut attempt = 0;
    loop {
        match negotiate_once(settings, goal, export, on_export) {
            Ok(n) => return Ok(n),
            Err(e) if attempt < settings.retry => {
                attempt += 1;
                log::debug(
                    Some("nbd"),
                    format_args!("connect failed; will try again: {e}"),
                );
                std::thread::sleep(Duration::from_secs(1));
            }
            Err(e) => return Err(Error::msg(Errno::EIO, e)),
        }
    }
}

fn negotiate_once(
    settings: &Settings,
    goal: Goal,
    export: &str,
    on_export: &mut dyn FnMut(&[u8], &[u8]),
) -> std::result::Result<Negotiation, String> {
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    let config = hs::Config {
        tls: settings.tls_mode,
        goal,
        ..hs::Config::default()
    };
    let mut hs = Box::new(Handshake::new(config, export.as_bytes()).map_err(|e| e.to_string())?);
    let transport::Connected {
        mut sock,
        mut child,
    } = transport::connect(&settings.target, deadline)?;
    let r = drive(settings, &mut hs, &mut sock, deadline, on_export);
    match r {
        Ok(()) => {
            let _ = sock.set_read_timeout(None);
            let _ = sock.set_write_timeout(None);
            Ok(Negotiation { sock, child, hs })
        }
        Err(e) => {
            let mut e = format!("handshake with the remote server failed: {e}");
            if let Some(why) = child.as_mut().and_then(Child::exited) {
                e = format!("{e} ({why})");
            }
            Err(e)
        }
    }
}

/// Run the handshake state machine over `sock` until it is done.
fn drive(
    settings: &Settings,
    hs: &mut Handshake,
    sock: &mut Socket,
    deadline: Instant,
    on_export: &mut dyn FnMut(&[u8], &[u8]),
) -> std::result::Result<(), String> {
    let timed_out = |e: &io::Error| {
        matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        )
    };
    let mut input: Vec<u8> = Vec::new();
    loop {
        let out = hs.pending_output();
        if !out.is_empty() {
            sock.set_write_timeout(Some(remaining(deadline)))
                .map_err(|e| io_message(&e))?;
            let n = out.len();
            (&*sock).write_all(out).map_err(|e| {
                if timed_out(&e) {
                    "timed out".to_string()
                } else {
                    format!("send: {}", io_message(&e))
                }
            })?;
            hs.consume_output(n);
        }
        if hs.is_done() {
            return Ok(());
        }
        if let Some(e) = hs.error() {
            return Err(describe(hs, e));
        }
        let need = hs.needed_for(&input);
        if input.len() < need {
            // Read no more than the message needs: after STARTTLS the next
            // bytes are the TLS session's.
            let start = input.len();
            input.resize(need, 0);
            sock.set_read_timeout(Some(remaining(deadline)))
                .map_err(|e| io_message(&e))?;
            match (&*sock).read(&mut input[start..]) {
                Ok(0) => return Err("the server closed the connection".into()),
                Ok(n) => input.truncate(start + n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => input.truncate(start),
                Err(e) if timed_out(&e) => return Err("timed out".into()),
                Err(e) => return Err(format!("recv: {}", io_message(&e))),
            }
            continue;
        }
        let p = hs.handle_input(&input).map_err(|e| describe(hs, e))?;
        let consumed = p.consumed;
        match p.event {
            Some(Event::StartTls) => {
                input.drain(..consumed);
                let out = hs.pending_output();
                if !out.is_empty() || !input.is_empty() {
                    return Err("unexpected data before the TLS handshake".into());
                }
                let Some(tls) = &settings.tls else {
                    return Err("TLS credentials are missing".into());
                };
                let plain = sock.try_clone().map_err(|e| io_message(&e))?;
                *sock =
                    transport::start_tls(plain, tls, settings.tls_hostname.as_deref(), deadline)?;
                hs.tls_established().map_err(|e| e.to_string())?;
                continue;
            }
            Some(Event::Export { name, description }) => on_export(name, description),
            None => {}
        }
        input.drain(..consumed);
    }
}

fn describe(hs: &Handshake, e: hs::Error) -> String {
    match hs.server_message() {
        Some(m) => format!("{e}: {}", String::from_utf8_lossy(m)),
        None => e.to_string(),
    }
}

/// The exports the server lists.
pub(super) fn list(settings: &Settings) -> Result<Vec<(String, String)>> {
    let mut exports = Vec::new();
    let mut add = |n: &[u8], d: &[u8]| {
        exports.push((
            String::from_utf8_lossy(n).into_owned(),
            String::from_utf8_lossy(d).into_owned(),
        ))
    };
    let n = negotiate(settings, Goal::List, "", &mut add)?;
    finish_info(n);
    Ok(exports)
}

/// The server's canonical name of its default export, if it says.
pub(super) fn default_export(settings: &Settings) -> Option<String> {
    let n = negotiate(settings, Goal::Info, "", &mut |_, _| {}).ok()?;
    let name =
        n.hs.canonical_name()
            .map(|b| String::from_utf8_lossy(b).into_owned());
    finish_info(n);
    name
}

/// Send the pending ABORT and close.
fn finish_info(n: Negotiation) {
    let _ = n.sock.set_write_timeout(Some(DISC_TIMEOUT));
    let _ = (&n.sock).write_all(n.hs.pending_output());
    let _ = n.sock.shutdown(std::net::Shutdown::Both);
}

/// What the remote export is.
#[derive(Debug, Clone)]
pub(super) struct Info {
    /// Size, transmission flags, reply style, contexts.
    pub(super) negotiated: Negotiated,
    /// Block size constraints (usable ones only).
    pub(super) block_size: Option<BlockSize>,
    /// Description.
    pub(super) description: Option<String>,
}

/// The constraints nbdkit's server accepts from a plugin, else none.
fn usable_block_size(b: Option<(u32, u32, u32)>) -> Option<BlockSize> {
    let (minimum, preferred, maximum) = b?;
    let ok = minimum.is_power_of_two()
        && minimum <= 65536
        && preferred.is_power_of_two()
        && (512..=32 * 1024 * 1024).contains(&preferred)
        && minimum <= preferred
        && preferred <= maximum
        && (maximum == u32::MAX || maximum % minimum == 0);
    if !ok {
        log::debug(
            Some("nbd"),
            format_args!("ignoring the server's block sizes {minimum}/{preferred}/{maximum}"),
        );
    }
    ok.then_some(BlockSize {
        minimum,
        preferred,
        maximum,
    })
}

/// A buffer of a caller blocked in [`Remote::call`] that the reader of the
/// moment fills.
#[derive(Debug, Clone, Copy)]
struct RawBuf {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the buffer is only touched by the reader of the moment (the
// holder of `Inner::input`) while its owner waits in `Remote::call`, which
// does not return (nor touch the buffer) until its request is completed,
// which happens after the last write into the buffer.
unsafe impl Send for RawBuf {}

impl RawBuf {
    /// The part `at..at + len`, checked against the buffer's length.
    ///
    /// # Safety
    /// The owner of the buffer must be waiting for the request, and no
    /// other slice of it may be alive.
    unsafe fn slice<'a>(self, at: usize, len: usize) -> Option<&'a mut [u8]> {
        let end = at.checked_add(len)?;
        if end > self.len {
            return None;
        }
        // SAFETY: in bounds (checked above); exclusive by the contract.
        Some(unsafe { std::slice::from_raw_parts_mut(self.ptr.add(at), len) })
    }
}

/// How a request ended.
struct Outcome {
    result: Result<()>,
    extents: Vec<(u64, u64, u32)>,
}

/// Where a caller sleeps.
struct Waiter {
    thread: Thread,
    done: AtomicBool,
    outcome: Mutex<Option<Outcome>>,
}

impl Waiter {
    fn complete(&self, outcome: Outcome) {
        *lock(&self.outcome) = Some(outcome);
        self.done.store(true, Ordering::Release);
        self.thread.unpark();
    }

    fn is_done(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }

    fn wait(&self) -> Outcome {
        while !self.is_done() {
            std::thread::park();
        }
        lock(&self.outcome).take().unwrap_or(Outcome {
            result: Err(Error::new(Errno::EIO)),
            extents: Vec::new(),
        })
    }
}

/// A request in flight.
struct Pending {
    reply: Reply,
    buf: Option<RawBuf>,
    extents: Vec<(u64, u64, u32)>,
    message: Option<String>,
    waiter: Arc<Waiter>,
}

impl Pending {
    fn complete(self, result: Result<()>) {
        self.waiter.complete(Outcome {
            result,
            extents: self.extents,
        });
    }
}

/// Requests registered but not yet seen by a reader, who reads, and
/// whether the connection is dead.
#[derive(Default)]
struct Registry {
    dead: bool,
    inbox: Vec<(u64, Pending)>,
    /// Someone (a caller or the reader thread) reads the replies.
    owner: bool,
    /// The reader thread is to take over reading.
    handoff: bool,
}

/// What the callers and the reader thread share.
struct Inner {
    sock: Socket,
    write_lock: Mutex<()>,
    registry: Mutex<Registry>,
    /// Wakes the reader thread (handoff, death, close).
    wake: Condvar,
    /// The reading side, used by the owner of the moment. Lock order:
    /// `input` before `registry`.
    input: Mutex<Input>,
    next_cookie: AtomicU64,
    closing: AtomicBool,
    style: ReplyStyle,
    base_allocation: Option<u32>,
}

impl Inner {
    /// The connection is dead: fail every request, wake every writer.
    fn die(&self, why: &str, map: &mut HashMap<u64, Pending>) {
        let inbox = {
            let mut r = lock(&self.registry);
            r.dead = true;
            r.owner = false;
            r.handoff = false;
            self.wake.notify_all();
            std::mem::take(&mut r.inbox)
        };
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
        let in_flight = map.len() + inbox.len();
        if !self.closing.load(Ordering::Relaxed) || in_flight > 0 {
            log::error(
                None,
                &format!("nbd: lost the connection to the remote server: {why}"),
            );
        }
        for (_, p) in map.drain().chain(inbox) {
            p.complete(Err(Error::new(Errno::EIO)));
        }
    }

    /// Read one reply chunk; on failure the connection is dead (every
    /// request failed) and the result is `false`.
    fn step(&self, input: &mut Input) -> bool {
        let why = match read_chunk(self, input) {
            Ok(true) => return true,
            Ok(false) => "the server closed the connection".to_string(),
            Err(e) => e,
        };
        self.die(&why, &mut input.map);
        false
    }

    /// A caller's reading turn: read replies (for everyone) until the
    /// caller's own is in, then hand reading over to the reader thread if
    /// requests are still in flight.
    fn lead(&self, waiter: &Waiter) {
        let mut input = lock(&self.input);
        while !waiter.is_done() {
            if !self.step(&mut input) {
                return;
            }
        }
        let mut r = lock(&self.registry);
        if r.dead {
            return;
        }
        if input.map.is_empty() && r.inbox.is_empty() {
            r.owner = false;
        } else {
            r.handoff = true;
            self.wake.notify_one();
        }
    }
}

/// The reader thread: reads replies whenever a caller hands reading over
/// (requests in flight whose callers do not read), until none is left.
fn reader_thread(inner: &Inner) {
    loop {
        {
            let mut r = lock(&inner.registry);
            while !r.handoff && !r.dead && !inner.closing.load(Ordering::Relaxed) {
                r = inner.wake.wait(r).unwrap_or_else(|p| p.into_inner());
            }
            if !r.handoff {
                return;
            }
            r.handoff = false;
        }
        let mut input = lock(&inner.input);
        loop {
            {
                let mut r = lock(&inner.registry);
                let inbox = std::mem::take(&mut r.inbox);
                input.map.extend(inbox);
                if input.map.is_empty() {
                    r.owner = false;
                    break;
                }
            }
            if !inner.step(&mut input) {
                return;
            }
        }
    }
}

/// A connection in transmission.
pub(super) struct Remote {
    inner: Arc<Inner>,
    reader: Option<JoinHandle<()>>,
    child: Option<Child>,
    /// What the export is.
    pub(super) info: Info,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote").field("info", &self.info).finish()
    }
}

/// The wire value of a command.
fn wire(command: Command) -> u16 {
    match command {
        Command::Read => CMD_READ,
        Command::Write => CMD_WRITE,
        Command::Disc => CMD_DISC,
        Command::Flush => CMD_FLUSH,
        Command::Trim => CMD_TRIM,
        Command::Cache => CMD_CACHE,
        Command::WriteZeroes => CMD_WRITE_ZEROES,
        Command::BlockStatus => CMD_BLOCK_STATUS,
    }
}

/// Write all of `parts` (a header and maybe a payload), vectored.
fn write_all_vectored(mut w: impl Write, parts: &[&[u8]]) -> io::Result<()> {
    let mut idx = 0;
    let mut off = 0;
    while idx < parts.len() {
        let slices: Vec<io::IoSlice<'_>> = std::iter::once(&parts[idx][off..])
            .chain(parts[idx + 1..].iter().copied())
            .map(io::IoSlice::new)
            .collect();
        let mut n = match w.write_vectored(&slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        while idx < parts.len() && n >= parts[idx].len() - off {
            n -= parts[idx].len() - off;
            idx += 1;
            off = 0;
        }
        off += n;
    }
    Ok(())
}

impl Remote {
    /// Connect to the export (`export` is its name on the server).
    pub(super) fn open(settings: &Settings, export: &str) -> Result<Remote> {
        let n = negotiate(settings, Goal::Go, export, &mut |_, _| {})?;
        let negotiated = n.hs.negotiated();
        let info = Info {
            negotiated,
            block_size: usable_block_size(n.hs.block_size()),
            description: n
                .hs
                .description()
                .map(|d| String::from_utf8_lossy(d).into_owned()),
        };
        log::debug(
            Some("nbd"),
            format_args!(
                "connected: size {} flags {:#x} structured replies {} extended headers {} base:allocation {}",
                negotiated.size,
                negotiated.eflags,
                negotiated.structured_replies,
                negotiated.extended_headers,
                negotiated.base_allocation.is_some()
            ),
        );
        let inner = Arc::new(Inner {
            sock: n.sock,
            write_lock: Mutex::new(()),
            registry: Mutex::new(Registry::default()),
            wake: Condvar::new(),
            input: Mutex::new(Input::new()),
            next_cookie: AtomicU64::new(1),
            closing: AtomicBool::new(false),
            style: ReplyStyle::of(&negotiated),
            base_allocation: negotiated.base_allocation,
        });
        let r = inner.clone();
        let reader = std::thread::Builder::new()
            .name("nbd-reader".into())
            .spawn(move || reader_thread(&r))
            .map_err(|e| Error::msg(Errno::EIO, format!("cannot start the reader thread: {e}")))?;
        Ok(Remote {
            inner,
            reader: Some(reader),
            child: n.child,
            info,
        })
    }

    /// Whether requests are framed with extended headers.
    pub(super) fn extended(&self) -> bool {
        self.info.negotiated.extended_headers
    }

    /// Send one request and wait for its reply. `read` receives READ data;
    /// `write` is WRITE's payload. Returns the block status descriptors.
    ///
    /// The caller reads the replies itself while nobody else does (a lone
    /// request costs no thread switch beyond the remote server's); a caller
    /// that finds someone reading sleeps until its reply is in.
    pub(super) fn call(
        &self,
        command: Command,
        flags: u16,
        offset: u64,
        count: u64,
        write: Option<&[u8]>,
        read: Option<&mut [u8]>,
    ) -> Result<Vec<(u64, u64, u32)>> {
        let inner = &*self.inner;
        let cookie = inner.next_cookie.fetch_add(1, Ordering::Relaxed);
        let waiter = Arc::new(Waiter {
            thread: std::thread::current(),
            done: AtomicBool::new(false),
            outcome: Mutex::new(None),
        });
        let buf = read.map(|b| RawBuf {
            ptr: b.as_mut_ptr(),
            len: b.len(),
        });
        let pending = Pending {
            reply: Reply::new(
                Sent {
                    command,
                    offset,
                    count,
                },
                inner.style,
                inner.base_allocation,
            ),
            buf,
            extents: Vec::new(),
            message: None,
            waiter: waiter.clone(),
        };
        {
            let mut r = lock(&inner.registry);
            if r.dead {
                return Err(Error::new(Errno::EIO));
            }
            r.inbox.push((cookie, pending));
        }
        let header = RequestHeader {
            flags,
            command: wire(command),
            cookie,
            offset,
            length: count,
        };
        let mut h = [0u8; RequestHeader::EXTENDED_LEN];
        let n = if self.extended() {
            header.emit_extended(&mut h)
        } else {
            header.emit_compact(&mut h)
        };
        let sent = {
            let _w = lock(&inner.write_lock);
            match write {
                Some(p) => write_all_vectored(&inner.sock, &[&h[..n], p]),
                None => (&inner.sock).write_all(&h[..n]),
            }
        };
        if let Err(e) = sent {
            // Whoever reads next fails this request and every other.
            if !inner.closing.load(Ordering::Relaxed) {
                log::debug(Some("nbd"), format_args!("send: {}", io_message(&e)));
            }
            let _ = inner.sock.shutdown(std::net::Shutdown::Both);
        }
        // Read while nobody else does; sleep while someone does (the
        // reader of the moment completes this request or fails it).
        let lead = {
            let mut r = lock(&inner.registry);
            let lead = !r.owner && !r.dead && !waiter.is_done();
            r.owner |= lead;
            lead
        };
        if lead {
            inner.lead(&waiter);
        }
        let outcome = waiter.wait();
        outcome.result.map(|()| outcome.extents)
    }
}

impl Drop for Remote {
    fn drop(&mut self) {
        let inner = &*self.inner;
        inner.closing.store(true, Ordering::Relaxed);
        let dead = lock(&inner.registry).dead;
        if !dead {
            let header = RequestHeader {
                flags: 0,
                command: CMD_DISC,
                cookie: 0,
                offset: 0,
                length: 0,
            };
            let mut h = [0u8; RequestHeader::EXTENDED_LEN];
            let n = if self.extended() {
                header.emit_extended(&mut h)
            } else {
                header.emit_compact(&mut h)
            };
            let _w = lock(&inner.write_lock);
            let _ = inner.sock.set_write_timeout(Some(DISC_TIMEOUT));
            let _ = (&inner.sock).write_all(&h[..n]);
        }
        let _ = inner.sock.shutdown(std::net::Shutdown::Both);
        {
            let _r = lock(&inner.registry);
            inner.wake.notify_all();
        }
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        // Then the server command, if there is one, is stopped.
        self.child.take();
    }
}

/// The reader's sink for one request's chunk payloads.
struct Sink<'a> {
    buf: Option<RawBuf>,
    extents: &'a mut Vec<(u64, u64, u32)>,
    message: &'a mut Option<String>,
    bad: bool,
}

impl ReplySink for Sink<'_> {
    fn zero(&mut self, at: usize, len: usize) {
        // SAFETY: the buffer's owner waits in `Remote::call`.
        match self.buf.and_then(|b| unsafe { b.slice(at, len) }) {
            Some(s) => s.fill(0),
            None => self.bad = true,
        }
    }
    fn extent(&mut self, offset: u64, length: u64, flags: u32) {
        self.extents.push((offset, length, flags));
    }
    fn message(&mut self, _error: u32, message: &[u8]) {
        if !message.is_empty() && self.message.is_none() {
            *self.message = Some(String::from_utf8_lossy(message).into_owned());
        }
    }
}

/// The reading side of a connection: the requests a reader has seen, the
/// input buffer and room for small chunk payloads.
struct Input {
    map: HashMap<u64, Pending>,
    rx: Rx,
    scratch: Vec<u8>,
}

impl Input {
    fn new() -> Input {
        Input {
            map: HashMap::new(),
            rx: Rx {
                buf: Vec::new(),
                start: 0,
                end: 0,
                ahead: READ_BUFFER,
            },
            scratch: Vec::new(),
        }
    }
}

/// A buffer for headers and small replies, bypassed by READ data, which
/// goes from the socket straight into the caller's buffer once what was
/// read ahead is used up.
struct Rx {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    ahead: usize,
}

impl Rx {
    fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// Read once into the buffer; `Ok(0)` at the end of the stream.
    fn fill(&mut self, sock: &Socket) -> io::Result<usize> {
        if self.buf.is_empty() {
            // Allocated at the first reply: an idle connection holds none.
            self.buf = vec![0u8; READ_BUFFER];
        }
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let limit = (self.end + self.ahead).min(self.buf.len());
        loop {
            match (&*sock).read(&mut self.buf[self.end..limit]) {
                Ok(n) => {
                    self.end += n;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// The next `n` bytes (at most the buffer's size).
    fn take(&mut self, sock: &Socket, n: usize) -> io::Result<&[u8]> {
        while self.buffered() < n {
            if self.buf.len() - self.start < n {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            let want = n - self.buffered();
            self.ahead = self.ahead.max(want);
            if self.fill(sock)? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        let s = &self.buf[self.start..self.start + n];
        self.start += n;
        Ok(s)
    }

    /// Fill `dst`: what is buffered, then straight from the socket.
    fn read_into(&mut self, sock: &Socket, dst: &mut [u8]) -> io::Result<()> {
        let n = self.buffered().min(dst.len());
        dst[..n].copy_from_slice(&self.buf[self.start..self.start + n]);
        self.start += n;
        let mut rest = &mut dst[n..];
        while !rest.is_empty() {
            match (&*sock).read(rest) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(k) => rest = &mut rest[k..],
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Read one reply chunk (a simple reply, or one structured chunk) and
/// complete its request if it was the last. `Ok(false)`: the server closed
/// the connection between replies; an error says why the connection is
/// unusable.
fn read_chunk(inner: &Inner, input: &mut Input) -> std::result::Result<bool, String> {
    let sock = &inner.sock;
    let style = inner.style;
    let proto = |e: reply::ProtocolError| e.to_string();
    let short = |e: io::Error| match e.kind() {
        io::ErrorKind::UnexpectedEof => {
            "the server closed the connection in the middle of a reply".to_string()
        }
        _ => format!("recv: {}", io_message(&e)),
    };
    let Input { map, rx, scratch } = input;
    // A clean end is one between replies.
    if rx.buffered() == 0 && rx.fill(sock).map_err(short)? == 0 {
        return Ok(false);
    }
    let mut hdr = [0u8; reply::MAX_HEADER_LEN];
    hdr[..reply::MIN_HEADER_LEN]
        .copy_from_slice(rx.take(sock, reply::MIN_HEADER_LEN).map_err(short)?);
    let len = reply::header_len(&hdr, style).map_err(proto)?;
    hdr[reply::MIN_HEADER_LEN..len]
        .copy_from_slice(rx.take(sock, len - reply::MIN_HEADER_LEN).map_err(short)?);
    let h = reply::parse_header(&hdr[..len], style).map_err(proto)?;
    let cookie = h.cookie();
    if !map.contains_key(&cookie) {
        let inbox = std::mem::take(&mut lock(&inner.registry).inbox);
        map.extend(inbox);
    }
    let Some(p) = map.get_mut(&cookie) else {
        return Err(format!("reply with unknown cookie {cookie:#x}"));
    };
    let mut next = p.reply.header(&h).map_err(proto)?;
    let mut large = false;
    loop {
        match next {
            Next::Header => break,
            Next::Done => {
                if let Some(p) = map.remove(&cookie) {
                    finish(p);
                }
                break;
            }
            Next::Payload(n) => {
                // Bounded by the reply checker (at most a block status list
                // or an error message).
                scratch.resize(n, 0);
                rx.read_into(sock, scratch).map_err(short)?;
                let Pending {
                    reply,
                    buf,
                    extents,
                    message,
                    ..
                } = &mut *p;
                let mut sink = Sink {
                    buf: *buf,
                    extents,
                    message,
                    bad: false,
                };
                next = reply.payload(scratch, &mut sink).map_err(proto)?;
                if sink.bad {
                    return Err("hole chunk outside the read buffer".into());
                }
            }
            Next::Data { at, len, last } => {
                // SAFETY: the buffer's owner waits in `Remote::call` until
                // this request is completed below or by `die`.
                let dst = p.buf.and_then(|b| unsafe { b.slice(at, len) });
                let Some(dst) = dst else {
                    return Err("read data outside the read buffer".into());
                };
                rx.read_into(sock, dst).map_err(short)?;
                large |= len >= LARGE_DATA;
                next = if last { Next::Done } else { Next::Header };
            }
        }
    }
    // After a large READ the next reply is probably one too: read little
    // ahead, so that its data is not copied through the buffer.
    rx.ahead = if large { READ_AHEAD_SMALL } else { READ_BUFFER };
    Ok(true)
}

/// A request's reply is complete.
fn finish(p: Pending) {
    let result = p.reply.result().map_err(|e| {
        let errno = reply::errno_of(e);
        match p.message.as_deref() {
            Some(m) => Error::msg(errno, format!("the remote server said: {m}")),
            None => Error::new(errno),
        }
    });
    p.complete(result);
}
