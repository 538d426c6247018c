//! One request of the transmission phase, after the engine validated it:
//! run it against the open [`Context`] and frame its complete reply with
//! core's [`Framer`] (both request loops, tokio's in
//! [`crate::connection`] and the worker threads' in [`crate::blocking`],
//! answer through here).

use std::sync::Arc;

use nbdkit_core::backend::{Context, Error, Extents, Lent, Receive};
use nbdkit_core::errno::Errno;
use nbdkit_core::transmission::{
    Close, Command, Engine, Event, Framer, NbdError, Refused, Valid, Want,
};

use crate::log;

/// Read buffers kept for reuse on one connection, so that a read does not
/// allocate and zero-fill a fresh buffer each time (nbdkit keeps a
/// grow-only buffer per thread for the same reason).
#[derive(Default)]
pub(crate) struct BufPool {
    bufs: std::sync::Mutex<Vec<Vec<u8>>>,
}

impl BufPool {
    /// Largest buffer kept for reuse.
    const MAX_KEPT: usize = 8 * 1024 * 1024;
    /// Most buffers kept.
    const MAX_COUNT: usize = 32;
    /// Most bytes kept per connection, so that a burst of large reads does
    /// not pin memory for the connection's whole life.
    const MAX_TOTAL: usize = 32 * 1024 * 1024;

    /// A buffer of at least `len` bytes (its contents are stale): the most
    /// recently returned one that is large enough, else the most recent
    /// one, grown.
    pub(crate) fn get(&self, len: usize) -> Vec<u8> {
        let b = {
            let mut v = self.bufs.lock().unwrap_or_else(|p| p.into_inner());
            match v.iter().rposition(|b| b.len() >= len) {
                Some(i) => Some(v.swap_remove(i)),
                None => v.pop(),
            }
        };
        let mut b = b.unwrap_or_default();
        if b.len() < len {
            b.resize(len, 0);
        }
        b
    }

    /// An empty buffer with room for `len` bytes, to read a payload into
    /// (no zero-filling): a kept one if one is large enough.
    pub(crate) fn get_empty(&self, len: usize) -> Vec<u8> {
        let b = {
            let mut v = self.bufs.lock().unwrap_or_else(|p| p.into_inner());
            v.iter()
                .rposition(|b| b.capacity() >= len)
                .map(|i| v.swap_remove(i))
        };
        match b {
            Some(mut b) => {
                b.clear();
                b
            }
            None => Vec::with_capacity(len),
        }
    }

    /// Give a buffer back (an empty one is not kept).
    pub(crate) fn put(&self, b: Vec<u8>) {
        if b.is_empty() || b.len() > Self::MAX_KEPT {
            return;
        }
        let mut v = self.bufs.lock().unwrap_or_else(|p| p.into_inner());
        let kept: usize = v.iter().map(Vec::len).sum();
        if v.len() < Self::MAX_COUNT && kept + b.len() <= Self::MAX_TOTAL {
            v.push(b);
        }
    }
}

/// A complete reply: a short one held inline (no allocation), the
/// first `len` bytes of a (pooled) buffer, or a READ's reply header with
/// the data the plugin lent (written from the plugin's pages, not copied).
pub(crate) enum Reply {
    /// At most [`Framer::REPLY_LEN`] bytes.
    Small {
        buf: [u8; Framer::REPLY_LEN],
        len: usize,
    },
    /// A READ's reply, or a long BLOCK_STATUS one: the first `len` bytes.
    Buf { buf: Vec<u8>, len: usize },
    /// A READ's reply: the first `len` bytes of `head`, then `data`.
    Lent {
        head: [u8; Framer::REPLY_LEN],
        len: usize,
        data: Lent,
    },
    /// A READ's reply: the first `len` bytes of `head`, then the `count`
    /// bytes at `offset` of the plugin's descriptor `fd` (sent with
    /// `sendfile(2)` by [`crate::blocking`], the only path that asks for
    /// it: see [`execute`]'s `fds`).
    File {
        head: [u8; Framer::REPLY_LEN],
        len: usize,
        fd: i32,
        offset: u64,
        count: usize,
    },
}

impl Reply {
    /// The reply's bytes when they are in one piece (not [`Reply::Lent`]).
    pub(crate) fn whole(&self) -> Option<&[u8]> {
        match self {
            Reply::Small { buf, len } => Some(&buf[..*len]),
            Reply::Buf { buf, len } => Some(&buf[..*len]),
            Reply::Lent { .. } | Reply::File { .. } => None,
        }
    }

    /// The reply's bytes, in order, as one or more slices (none empty).
    pub(crate) fn parts(&self) -> impl Iterator<Item = &[u8]> + Send + '_ {
        let (first, data) = match self {
            Reply::Small { buf, len } => (&buf[..*len], None),
            Reply::Buf { buf, len } => (&buf[..*len], None),
            Reply::Lent { head, len, data } => (&head[..*len], Some(data)),
            Reply::File { .. } => unreachable!("a file reply is sent by its own path"),
        };
        std::iter::once(first)
            .chain(data.into_iter().flat_map(Lent::slices))
            .filter(|p| !p.is_empty())
    }

    /// Length in bytes.
    pub(crate) fn len(&self) -> usize {
        match self {
            Reply::Small { len, .. } | Reply::Buf { len, .. } => *len,
            Reply::Lent { len, data, .. } => len + data.len(),
            Reply::File { len, count, .. } => len + count,
        }
    }

    /// The buffer, for reuse (empty for a short or lent reply).
    pub(crate) fn into_buf(self) -> Vec<u8> {
        match self {
            Reply::Small { .. } | Reply::Lent { .. } | Reply::File { .. } => Vec::new(),
            Reply::Buf { buf, .. } => buf,
        }
    }
}

impl From<Vec<u8>> for Reply {
    fn from(buf: Vec<u8>) -> Self {
        let len = buf.len();
        Reply::Buf { buf, len }
    }
}

/// Run one validated request and build its complete reply. A panic in
/// the plugin or a filter becomes an EIO reply, logged, so that the client
/// gets its answer and the connection goes on. With `fds`, a READ of a
/// plugin that has a descriptor to read from ([`Context::pread_fd`]) is
/// not read here: its reply is a [`Reply::File`], whose sender reads it.
// The request, its payload (read, or received in place) and where the reply
// may be sent from: each caller has them apart.
#[allow(clippy::too_many_arguments)]
pub(crate) fn execute(
    ctx: &Context,
    pool: &BufPool,
    name: &Arc<str>,
    framer: Framer,
    v: &Valid,
    payload: &[u8],
    received: Option<Box<dyn Receive>>,
    fds: bool,
) -> Reply {
    guarded(name, framer, v, || {
        execute_as(ctx, pool, name, framer, v, payload, received, fds)
    })
    .unwrap_or_else(|panicked| panicked)
}

/// A READ or WRITE answered at once, if the plugin can serve it without
/// blocking ([`Context::pread_now`], [`Context::pwrite_now`]); `None` for
/// anything else, which the caller runs with [`execute`] where it may
/// block. With `fds` (as for [`execute`]), a READ long enough to be sent
/// from the plugin's descriptor is left to `execute` too: it may wait for
/// the disk, and its copy is the one `sendfile` saves.
pub(crate) fn execute_now(
    ctx: &Context,
    pool: &BufPool,
    name: &Arc<str>,
    framer: Framer,
    v: &Valid,
    payload: &[u8],
    fds: bool,
) -> Option<Reply> {
    // Decided before anything is set up: most stacks never answer at once.
    if !ctx.can_now() {
        return None;
    }
    match v.command {
        Command::Write => {
            let write = || {
                let written = ctx.pwrite_now(payload, v.offset, v.call_flags())?;
                Some(result_reply(name, framer, v, written))
            };
            guarded(name, framer, v, write).unwrap_or_else(Some)
        }
        Command::Read if !(fds && v.count as usize >= crate::zerocopy::MIN_LEN) => {
            let read = || {
                let mut hdr = [0u8; Framer::REPLY_LEN];
                let n = framer.read(v, &mut hdr);
                let flags = v.call_flags();
                Some(
                    match buffered_read(pool, &hdr[..n], v.count as usize, |buf| {
                        ctx.pread_now(buf, v.offset, flags)
                    })? {
                        Ok(reply) => reply,
                        Err(e) => error_reply(name, framer, v, e),
                    },
                )
            };
            guarded(name, framer, v, read).unwrap_or_else(Some)
        }
        _ => None,
    }
}

/// A READ's reply in one pooled buffer: `head` (the framed reply header),
/// then the `count` bytes `read` fills in. `read`'s `None` (it declined)
/// or error is passed on, and the buffer goes back to the pool.
fn buffered_read(
    pool: &BufPool,
    head: &[u8],
    count: usize,
    read: impl FnOnce(&mut [u8]) -> Option<Result<(), Error>>,
) -> Option<Result<Reply, Error>> {
    let n = head.len();
    let len = n + count;
    let mut buf = pool.get(len);
    match read(&mut buf[n..len]) {
        Some(Ok(())) => {
            buf[..n].copy_from_slice(head);
            Some(Ok(Reply::Buf { buf, len }))
        }
        Some(Err(e)) => {
            pool.put(buf);
            Some(Err(e))
        }
        None => {
            pool.put(buf);
            None
        }
    }
}

/// Run `f` (one request's calls into the stack) with this thread's
/// messages carrying `name`; a panic in the stack is logged and gives
/// `Err` with `v`'s EIO reply.
fn guarded<T>(
    name: &Arc<str>,
    framer: Framer,
    v: &Valid,
    f: impl FnOnce() -> T,
) -> core::result::Result<T, Reply> {
    let run = || log::with_context(name, f);
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)).map_err(|_| {
        log::error(
            Some(name),
            &format!(
                "{} count={} offset={}: the plugin or a filter panicked: {}",
                v.command.name(),
                v.count,
                v.offset,
                nbdkit_core::errno::Errno::EIO
            ),
        );
        small(|buf| framer.error(v, NbdError::Io, b"", buf))
    })
}

/// A reply of at most [`Framer::REPLY_LEN`] bytes, framed by `f`.
#[inline]
fn small(f: impl FnOnce(&mut [u8]) -> usize) -> Reply {
    let mut buf = [0u8; Framer::REPLY_LEN];
    let len = f(&mut buf);
    Reply::Small { buf, len }
}

/// [`execute`], with this thread's messages carrying `name`.
#[allow(clippy::too_many_arguments)]
fn execute_as(
    ctx: &Context,
    pool: &BufPool,
    name: &str,
    framer: Framer,
    v: &Valid,
    payload: &[u8],
    received: Option<Box<dyn Receive>>,
    fds: bool,
) -> Reply {
    let flags = v.call_flags();
    let result = match v.command {
        Command::Read => {
            let mut hdr = [0u8; Framer::REPLY_LEN];
            let n = framer.read(v, &mut hdr);
            let count = v.count as usize;
            // A plugin with a descriptor: the sender reads it (not for a
            // short read, which one pread and one write serve faster).
            if fds && count >= crate::zerocopy::MIN_LEN {
                if let Some(fd) = ctx.pread_fd(count, v.offset) {
                    return Reply::File {
                        head: hdr,
                        len: n,
                        fd,
                        offset: v.offset,
                        count,
                    };
                }
            }
            // A plugin that lends its pages: no copy here, the reply is
            // written from them.
            match ctx.pread_lent(count, v.offset, flags) {
                Some(Ok(data)) if data.len() == count => {
                    return Reply::Lent {
                        head: hdr,
                        len: n,
                        data,
                    }
                }
                Some(Ok(data)) => {
                    return error_reply(
                        name,
                        framer,
                        v,
                        Error::msg(
                            Errno::EIO,
                            format!("pread: the plugin lent {} bytes, not {count}", data.len()),
                        ),
                    )
                }
                Some(Err(e)) => return error_reply(name, framer, v, e),
                None => {}
            }
            match buffered_read(pool, &hdr[..n], count, |buf| {
                Some(ctx.pread(buf, v.offset, flags))
            }) {
                Some(Ok(reply)) => return reply,
                Some(Err(e)) => Err(e),
                None => unreachable!("pread always answers"),
            }
        }
        Command::Write => match received {
            // Received in place: the payload is already in the plugin's
            // buffers.
            Some(r) => ctx.commit_write(r, v.offset, flags),
            None => ctx.pwrite(payload, v.offset, flags),
        },
        Command::Flush => ctx.flush(flags),
        Command::Trim => ctx.trim(v.count, v.offset, flags),
        Command::Cache => ctx.cache(v.count, v.offset, flags),
        Command::WriteZeroes => ctx.zero(v.count, v.offset, flags),
        Command::BlockStatus => {
            // As nbdkit: extents may run past the request, never past the
            // end of the export.
            let mut ext = Extents::new(v.offset, ctx.caps().size);
            match ctx.extents(v.count, v.offset, flags, &mut ext) {
                Ok(()) => {
                    let mut buf = vec![0u8; framer.block_status_len(ext.len().max(1))];
                    let extents = ext.as_slice().iter();
                    let n = framer.block_status(
                        v,
                        extents.map(|e| (e.offset, e.length, e.flags)),
                        &mut buf,
                    );
                    buf.truncate(n);
                    return buf.into();
                }
                Err(e) => Err(e),
            }
        }
        Command::Disc => Ok(()),
    };
    result_reply(name, framer, v, result)
}

/// The reply of `v`, a request with no data to send back, done with
/// `result`.
pub(crate) fn result_reply(
    name: &str,
    framer: Framer,
    v: &Valid,
    result: Result<(), Error>,
) -> Reply {
    match result {
        Ok(()) => small(|buf| framer.ok(v, buf)),
        Err(e) => error_reply(name, framer, v, e),
    }
}

/// The error reply of `v` that failed with `e` (its message logged).
fn error_reply(name: &str, framer: Framer, v: &Valid, e: Error) -> Reply {
    if let Some(m) = &e.message {
        log::error(Some(name), m);
    }
    let err = NbdError::from_errno(e.errno, v.flags);
    small(|buf| framer.error(v, err, b"", buf))
}

/// The error reply of a request refused by validation (logged with
/// `--debug`'s control path messages).
pub(crate) fn refuse(name: &str, framer: Framer, r: &Refused) -> Vec<u8> {
    if log::controlpath() {
        log::debug(
            Some(name),
            format_args!(
                "invalid request {:?}: error {}",
                r.command,
                r.error.to_wire()
            ),
        );
    }
    let mut buf = [0u8; Framer::REPLY_LEN];
    let len = framer.refused(r, &mut buf);
    buf[..len].to_vec()
}

/// What a request header meant to the engine, for a request loop.
pub(crate) enum Header {
    /// Run this request (after reading its payload, if the engine wants one).
    Run(Valid),
    /// Answer this refused request with [`refuse`].
    Refuse(Refused),
    /// Read and discard this many payload bytes of a refused request, then
    /// tell the engine ([`Engine::take_payload`]), which hands back the
    /// refusal to answer.
    Discard(u64),
    /// The connection is over (logged); `graceful` when the client sent
    /// NBD_CMD_DISC.
    End {
        /// The client said goodbye.
        graceful: bool,
    },
}

/// Feed a complete request header to the engine and say what to do next.
pub(crate) fn header(engine: &mut Engine, name: &str, hdr: &[u8]) -> Header {
    match engine.handle_input(hdr).event {
        Some(Event::Request(v)) => Header::Run(v),
        Some(Event::Refused(r)) => Header::Refuse(r),
        Some(Event::Close(Close::Disconnect)) => {
            log::debug(
                Some(name),
                format_args!("client sent NBD_CMD_DISC, closing connection"),
            );
            Header::End { graceful: true }
        }
        Some(Event::Close(e)) => {
            log::error(
                Some(name),
                &format!("invalid request: {e:?}: closing the connection"),
            );
            Header::End { graceful: false }
        }
        None | Some(Event::Payload { .. }) => match engine.wants() {
            Want::Skip(len) => Header::Discard(len),
            _ => Header::End { graceful: false },
        },
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use nbdkit_core::backend::{Callbacks, Flags, Handle, OpenArgs, Peer, Plugin, Result, Stack};
    use nbdkit_core::transmission::{CmdFlags, ReplyStyle};
    use nbdkit_core::wire::consts::NBD_EIO;

    /// A reply's bytes, in one piece.
    fn bytes(r: &Reply) -> Vec<u8> {
        r.parts().collect::<Vec<_>>().concat()
    }

    /// A read-only connection's context on `plugin` alone.
    fn open(plugin: Box<dyn Plugin>) -> Context {
        let stack = Stack::new(plugin, Vec::new());
        stack
            .open(&OpenArgs {
                readonly: true,
                export_name: "",
                is_tls: false,
                peer: &Peer::Unknown,
            })
            .expect("open")
    }

    /// A plugin with a bug: reading at offset 4096 panics.
    struct Panicky;
    struct PanickyHandle;

    impl Plugin for Panicky {
        fn name(&self) -> &'static str {
            "panicky"
        }
        fn callbacks(&self) -> Callbacks {
            Callbacks::OPEN | Callbacks::GET_SIZE | Callbacks::PREAD
        }
        fn open(&self, _args: &OpenArgs<'_>) -> Result<Box<dyn Handle>> {
            Ok(Box::new(PanickyHandle))
        }
    }

    impl Handle for PanickyHandle {
        fn get_size(&self) -> Result<u64> {
            Ok(1 << 20)
        }
        fn pread(&self, buf: &mut [u8], offset: u64, _flags: Flags) -> Result<()> {
            assert_ne!(offset, 4096, "a plugin bug at offset 4096");
            buf.fill(0);
            Ok(())
        }
    }

    #[test]
    fn pooled_buffers_are_reused_without_zero_filling_payloads() {
        let pool = BufPool::default();
        let mut b = pool.get(4096);
        assert_eq!(b.len(), 4096);
        b[0] = 7;
        let ptr = b.as_ptr();
        pool.put(b);
        // An empty buffer for a payload, with the room of the kept one.
        let p = pool.get_empty(1000);
        assert!(p.is_empty() && p.capacity() >= 4096 && p.as_ptr() == ptr);
        pool.put(p);
        // Empty buffers (short replies' and unfilled payloads') are not kept.
        assert!(pool.get_empty(1).capacity() < 4096);
        pool.put(vec![1; 100]);
        pool.put(vec![2; 8192]);
        // The largest enough, not just the last.
        assert_eq!(pool.get(5000)[0], 2);
        assert_eq!(pool.get(10).len(), 100);
    }

    #[test]
    fn a_panicking_plugin_call_is_an_eio_reply_and_the_next_request_works() {
        let ctx = open(Box::new(Panicky));
        let pool = BufPool::default();
        let name: Arc<str> = "panicky[1]".into();
        let framer = Framer::new(
            ReplyStyle {
                structured: false,
                extended: false,
            },
            0,
        );
        let read = |offset| Valid {
            command: Command::Read,
            cookie: 7,
            offset,
            count: 512,
            flags: CmdFlags::NONE,
        };
        // A simple reply: magic, error, cookie (then the data on success).
        let r = execute(&ctx, &pool, &name, framer, &read(4096), &[], None, false);
        assert_eq!(bytes(&r).len(), 16);
        assert_eq!(bytes(&r)[4..8], NBD_EIO.to_be_bytes());
        assert_eq!(bytes(&r)[8..16], 7u64.to_be_bytes());
        let r = execute(&ctx, &pool, &name, framer, &read(0), &[], None, false);
        assert_eq!(bytes(&r)[4..8], [0; 4]);
        assert_eq!(bytes(&r).len(), 16 + 512);
    }

    /// A plugin that records the flags its extents call gets.
    struct Recorder(Arc<std::sync::Mutex<Vec<Flags>>>);
    struct RecorderHandle(Arc<std::sync::Mutex<Vec<Flags>>>);

    impl Plugin for Recorder {
        fn name(&self) -> &'static str {
            "recorder"
        }
        fn callbacks(&self) -> Callbacks {
            Callbacks::OPEN | Callbacks::GET_SIZE | Callbacks::PREAD | Callbacks::EXTENTS
        }
        fn open(&self, _args: &OpenArgs<'_>) -> Result<Box<dyn Handle>> {
            Ok(Box::new(RecorderHandle(self.0.clone())))
        }
    }

    impl Handle for RecorderHandle {
        fn get_size(&self) -> Result<u64> {
            Ok(1 << 20)
        }
        fn pread(&self, buf: &mut [u8], _offset: u64, _flags: Flags) -> Result<()> {
            buf.fill(0);
            Ok(())
        }
        fn extents(
            &self,
            count: u64,
            offset: u64,
            flags: Flags,
            extents: &mut nbdkit_core::backend::Extents,
        ) -> Result<()> {
            self.0.lock().unwrap().push(flags);
            extents.add(offset, count, 0)
        }
    }

    #[test]
    fn block_status_passes_req_one_and_never_fua_to_the_stack() {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let ctx = open(Box::new(Recorder(seen.clone())));
        let pool = BufPool::default();
        let name: Arc<str> = "recorder[1]".into();
        let framer = Framer::new(
            ReplyStyle {
                structured: true,
                extended: false,
            },
            1,
        );
        let status = |flags| Valid {
            command: Command::BlockStatus,
            cookie: 9,
            offset: 0,
            count: 4096,
            flags,
        };
        // nbdkit passes only REQ_ONE to extents, as sent; FUA is not for it.
        for flags in [CmdFlags::FUA | CmdFlags::REQ_ONE, CmdFlags::FUA] {
            let r = execute(&ctx, &pool, &name, framer, &status(flags), &[], None, false);
            // One structured BLOCK_STATUS chunk: context id 1, one extent.
            assert_eq!(bytes(&r).len(), 20 + 4 + 8);
            assert_eq!(bytes(&r)[20..24], 1u32.to_be_bytes());
        }
        assert_eq!(*seen.lock().unwrap(), [Flags::REQ_ONE, Flags::NONE]);
    }

    #[test]
    fn memory_reads_are_lent_and_a_filter_stack_copies() {
        let name: Arc<str> = "memory[1]".into();
        let framer = Framer::new(
            ReplyStyle {
                structured: true,
                extended: false,
            },
            0,
        );
        let pool = BufPool::default();
        let mut want = Vec::new();
        for filters in [Vec::new(), vec!["nofilter"]] {
            let mut plugin = nbdkit_core::plugins::by_name("memory").expect("memory");
            plugin.config("size", "1M").unwrap();
            plugin.config_complete().unwrap();
            let filters = filters
                .into_iter()
                .map(|f| nbdkit_core::filters::by_name(f).expect("filter"))
                .collect();
            let ctx = Stack::new(plugin, filters)
                .open(&OpenArgs {
                    readonly: false,
                    export_name: "",
                    is_tls: false,
                    peer: &Peer::Unknown,
                })
                .expect("open");
            let data: Vec<u8> = (0..100_000u32).map(|i| (i % 241) as u8).collect();
            ctx.pwrite(&data, 1000, Flags::NONE).unwrap();
            let read = Valid {
                command: Command::Read,
                cookie: 3,
                offset: 500,
                count: 200_000,
                flags: CmdFlags::NONE,
            };
            let r = execute(&ctx, &pool, &name, framer, &read, &[], None, false);
            // Without a filter the plugin lends its pages; a filter gets a
            // copy, as before.
            assert_eq!(matches!(r, Reply::Lent { .. }), want.is_empty());
            assert!(r.whole().is_some() != want.is_empty());
            let got = bytes(&r);
            assert_eq!(got.len(), r.len());
            // One structured OFFSET_DATA chunk: 20 + 8 bytes of header.
            assert_eq!(got.len(), 28 + 200_000);
            assert_eq!(got[528..528 + data.len()], data[..]);
            assert!(got[28..528].iter().all(|&b| b == 0));
            // A short read too.
            let short = Valid { count: 512, ..read };
            let s = execute(&ctx, &pool, &name, framer, &short, &[], None, false);
            assert_eq!(matches!(s, Reply::Lent { .. }), want.is_empty());
            assert_eq!(bytes(&s)[28..], got[28..540]);
            if want.is_empty() {
                want = got;
                // A write after the read leaves the lent reply as it was.
                ctx.pwrite(&[9; 4096], 1000, Flags::NONE).unwrap();
                assert_eq!(bytes(&r), want);
            } else {
                assert_eq!(got, want);
            }
        }
    }
}
