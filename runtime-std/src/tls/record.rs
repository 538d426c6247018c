//! The server side of an X.509 TLS connection: rustls runs the handshake
//! (its unbuffered API), then hands the traffic secrets over
//! (`dangerous_into_kernel_connection`, the interface rustls offers to
//! kernel TLS) and records are sealed and opened here, with ring's AEADs,
//! in place in the connection's own buffers.
//!
//! rustls's buffered connection copies every record: read from the socket
//! into its deframer buffer, decrypted there, copied into a fresh
//! allocation per record, then copied again to the reader; written
//! plaintext is copied into a fresh allocation per record as well. Here a
//! received record is read once from the socket, decrypted where it lies
//! and copied once to the caller; a sent one is copied once into the
//! output buffer and encrypted there. The two directions are independent
//! ([`ReadHalf`], [`WriteHalf`]), so a connection's reader and writer need
//! no lock between them.
//!
//! rustls keeps what it alone knows: the key schedule. A TLS 1.3 KeyUpdate
//! from the client asks it for the next receiving secret (and, when the
//! client requests it, the writer answers with its own KeyUpdate and takes
//! the next sending secret); the writer also renews its key itself before
//! the cipher's confidentiality limit. TLS 1.2 has no key update: a
//! connection that reaches the limit ends. Record framing follows RFC 8446
//! section 5 (TLS 1.3) and RFC 5246 section 6.2 with RFC 5288 and RFC 7905
//! (TLS 1.2 AES-GCM and ChaCha20-Poly1305).

use core::mem::MaybeUninit;
use core::ops::Range;
use core::pin::Pin;
use core::task::{ready, Context, Poll};
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use ring::aead;
use rustls::kernel::KernelConnection;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{ConnectionState, EncodeError, UnbufferedStatus};
use rustls::{ConnectionTrafficSecrets, ProtocolVersion, SupportedCipherSuite};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::readbuf::{self, Buf, CAPACITY};

/// The most plaintext a record carries.
const MAX_PLAIN: usize = 16 * 1024;
/// A record's header: content type, version, length.
const HEADER: usize = 5;
/// The AEAD tag.
const TAG: usize = 16;
/// The most ciphertext a record may carry (RFC 8446 5.2; RFC 5246 6.2.3
/// allows 2048 bytes of expansion).
const MAX_CIPHERTEXT_13: usize = MAX_PLAIN + 256;
const MAX_CIPHERTEXT_12: usize = MAX_PLAIN + 2048;
/// The most bytes the handshake may leave unprocessed (a ClientHello with
/// a certificate chain is far smaller).
const MAX_HANDSHAKE_BUFFER: usize = CAPACITY;

const CHANGE_CIPHER_SPEC: u8 = 20;
const ALERT: u8 = 21;
const HANDSHAKE: u8 = 22;
const APPLICATION_DATA: u8 = 23;
/// TLS 1.3 handshake message type of KeyUpdate.
const KEY_UPDATE: u8 = 24;

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("TLS: {what}"))
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// One direction's AEAD: key, IV and record sequence number.
struct Cipher {
    key: aead::LessSafeKey,
    iv: [u8; aead::NONCE_LEN],
    seq: u64,
    tls13: bool,
    /// TLS 1.2 AES-GCM: the nonce's last 8 bytes travel in each record.
    explicit: bool,
    /// Records this key may protect (the confidentiality limit).
    limit: u64,
}

impl Cipher {
    fn new(
        tls13: bool,
        limit: u64,
        (seq, secrets): (u64, ConnectionTrafficSecrets),
    ) -> io::Result<Cipher> {
        let (alg, key, iv, explicit) = match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => {
                (&aead::AES_128_GCM, key, iv, !tls13)
            }
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => {
                (&aead::AES_256_GCM, key, iv, !tls13)
            }
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (&aead::CHACHA20_POLY1305, key, iv, false)
            }
            _ => return Err(invalid("unsupported cipher")),
        };
        let key = aead::UnboundKey::new(alg, key.as_ref()).map_err(|_| invalid("bad key"))?;
        let iv: [u8; aead::NONCE_LEN] = iv
            .as_ref()
            .try_into()
            .map_err(|_| invalid("bad IV length"))?;
        Ok(Cipher {
            key: aead::LessSafeKey::new(key),
            iv,
            seq,
            tls13,
            explicit,
            limit,
        })
    }

    /// The IV with the sequence number xored into its last 8 bytes.
    fn nonce(&self) -> [u8; aead::NONCE_LEN] {
        let mut n = self.iv;
        for (b, s) in n[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *b ^= s;
        }
        n
    }

    /// Where a record's plaintext starts.
    fn payload_offset(&self) -> usize {
        HEADER + if self.explicit { 8 } else { 0 }
    }

    /// A record's size beyond its plaintext.
    fn overhead(&self) -> usize {
        self.payload_offset() + TAG + usize::from(self.tls13)
    }

    fn max_ciphertext(&self) -> usize {
        if self.tls13 {
            MAX_CIPHERTEXT_13
        } else {
            MAX_CIPHERTEXT_12
        }
    }

    /// Seal the `n` plaintext bytes at `rec[payload_offset()..]` as a
    /// record of content type `ty`; `rec` has room for `n + overhead()`.
    /// Returns the record's length.
    fn seal(&mut self, rec: &mut [u8], ty: u8, n: usize) -> io::Result<usize> {
        if self.seq >= self.limit {
            return Err(invalid("the key's record limit is reached"));
        }
        let off = self.payload_offset();
        let nonce = self.nonce();
        let (outer, inner) = if self.tls13 {
            rec[off + n] = ty;
            (APPLICATION_DATA, n + 1)
        } else {
            (ty, n)
        };
        let body = off - HEADER + inner + TAG;
        let header = [outer, 3, 3, (body >> 8) as u8, body as u8];
        rec[..HEADER].copy_from_slice(&header);
        if self.explicit {
            rec[HEADER..off].copy_from_slice(&nonce[4..]);
        }
        let aad12;
        let aad: &[u8] = if self.tls13 {
            &header
        } else {
            aad12 = self.aad12(ty, n);
            &aad12
        };
        let tag = self
            .key
            .seal_in_place_separate_tag(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(aad),
                &mut rec[off..off + inner],
            )
            .map_err(|_| invalid("encryption failed"))?;
        rec[off + inner..off + inner + TAG].copy_from_slice(tag.as_ref());
        self.seq += 1;
        Ok(HEADER + body)
    }

    /// TLS 1.2's additional data: sequence number, type, version, length.
    fn aad12(&self, ty: u8, n: usize) -> [u8; 13] {
        let mut aad = [0u8; 13];
        aad[..8].copy_from_slice(&self.seq.to_be_bytes());
        aad[8..].copy_from_slice(&[ty, 3, 3, (n >> 8) as u8, n as u8]);
        aad
    }

    /// Open the whole record `rec` (header included) in place: its content
    /// type and where its plaintext lies in `rec`.
    fn open(&mut self, rec: &mut [u8]) -> io::Result<(u8, Range<usize>)> {
        let header: [u8; HEADER] = rec[..HEADER].try_into().expect("a header");
        let bad = || invalid("decryption failed (bad record MAC)");
        if self.tls13 {
            if header[0] != APPLICATION_DATA {
                return Err(invalid("unexpected unencrypted record"));
            }
            let nonce = aead::Nonce::assume_unique_for_key(self.nonce());
            let plain = self
                .key
                .open_in_place(nonce, aead::Aad::from(header), &mut rec[HEADER..])
                .map_err(|_| bad())?;
            self.seq += 1;
            // The content type is the last byte that is not padding.
            let Some(end) = plain.iter().rposition(|&b| b != 0) else {
                return Err(invalid("record without a content type"));
            };
            let ty = plain[end];
            if end > MAX_PLAIN {
                return Err(invalid("record overflow"));
            }
            Ok((ty, HEADER..HEADER + end))
        } else {
            let ty = header[0];
            let off = self.payload_offset();
            if rec.len() < off + TAG {
                return Err(bad());
            }
            let n = rec.len() - off - TAG;
            if n > MAX_PLAIN {
                return Err(invalid("record overflow"));
            }
            let nonce = if self.explicit {
                let mut nonce = self.iv;
                nonce[4..].copy_from_slice(&rec[HEADER..off]);
                nonce
            } else {
                self.nonce()
            };
            let aad = self.aad12(ty, n);
            self.key
                .open_in_place(
                    aead::Nonce::assume_unique_for_key(nonce),
                    aead::Aad::from(aad),
                    &mut rec[off..],
                )
                .map_err(|_| bad())?;
            self.seq += 1;
            Ok((ty, off..off + n))
        }
    }
}

/// What both halves of a connection share: rustls's key schedule, used
/// only when keys change.
struct Shared {
    conn: Mutex<KernelConnection<ServerConnectionData>>,
    /// The client asked for a KeyUpdate: the writer sends one before its
    /// next record.
    update_tx: AtomicBool,
}

impl Shared {
    fn next_secret(&self, tx: bool) -> io::Result<(u64, ConnectionTrafficSecrets)> {
        let mut c = self
            .conn
            .lock()
            .map_err(|_| invalid("key schedule poisoned"))?;
        if tx {
            c.update_tx_secret()
        } else {
            c.update_rx_secret()
        }
        .map_err(tls_error)
    }
}

// The `poll_*` entry points of [`Reader`] and [`Writer`] are
// `#[inline(never)]`: inlined into the connection's generic I/O, which plain
// connections run too, they would spread its code over more pages.

/// The reading direction: records from the socket, opened in place.
pub(crate) struct Reader {
    rx: Cipher,
    shared: Arc<Shared>,
    /// Plaintext received during the handshake, served first.
    early: Vec<u8>,
    /// Taken when a read needs it, given back when the socket has nothing
    /// more (an idle connection holds none).
    buf: Option<Buf>,
    /// Opened plaintext not yet read.
    plain: Range<usize>,
    /// Received bytes `next..filled` not yet opened.
    next: usize,
    filled: usize,
    /// The client sent close_notify.
    closed: bool,
}

/// The writing direction: plaintext sealed into records in a buffer, then
/// written to the socket.
pub(crate) struct Writer {
    tx: Cipher,
    shared: Arc<Shared>,
    /// Held while it holds records not yet written.
    buf: Option<Buf>,
    /// Records `pos..end` are still to be written.
    pos: usize,
    end: usize,
    /// close_notify has been sealed.
    closed: bool,
}

/// `buf[range]`, which the caller has initialised, as bytes.
fn init_mut(buf: &mut [MaybeUninit<u8>], range: Range<usize>) -> &mut [u8] {
    let s = &mut buf[range];
    // SAFETY: callers pass only ranges they have written (received from
    // the socket, or copied in), and MaybeUninit<u8> has u8's layout.
    unsafe { &mut *(s as *mut [MaybeUninit<u8>] as *mut [u8]) }
}

/// Copy `src` to the start of `dst`.
fn copy_in(dst: &mut [MaybeUninit<u8>], src: &[u8]) {
    for (d, s) in dst.iter_mut().zip(src) {
        d.write(*s);
    }
}

impl Reader {
    /// Serve `dst` from opened plaintext, reading and opening records as
    /// needed. Ready with nothing at the end of the stream.
    #[inline(never)]
    fn poll_read<R: AsyncRead + Unpin>(
        &mut self,
        io: &mut R,
        cx: &mut Context<'_>,
        dst: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if dst.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if !self.early.is_empty() {
            let n = self.early.len().min(dst.remaining());
            dst.put_slice(&self.early[..n]);
            if n == self.early.len() {
                self.early = Vec::new();
            } else {
                self.early.drain(..n);
            }
            return Poll::Ready(Ok(()));
        }
        // Whether `dst` got something: then the records already received
        // are opened into it, but the socket is not read again.
        let mut given = false;
        loop {
            if !self.plain.is_empty() {
                let buf = self.buf.as_mut().expect("plaintext is in the buffer");
                let n = self.plain.len().min(dst.remaining());
                let start = self.plain.start;
                dst.put_slice(init_mut(buf, start..start + n));
                self.plain.start += n;
                if dst.remaining() == 0 {
                    return Poll::Ready(Ok(()));
                }
                given = true;
            }
            if self.closed {
                return Poll::Ready(Ok(()));
            }
            if let Some(len) = self.complete_record()? {
                self.open_next(len)?;
                continue;
            }
            if given {
                return Poll::Ready(Ok(()));
            }
            // More bytes are needed. The buffer is kept for them, and given
            // back when the socket has none yet (as `PooledBufReader` does).
            if self.next == self.filled {
                self.next = 0;
                self.filled = 0;
            } else if self.filled + self.rx.max_ciphertext() + HEADER > CAPACITY {
                let buf = self.buf.as_mut().expect("bytes are in the buffer");
                buf.copy_within(self.next..self.filled, 0);
                self.filled -= self.next;
                self.next = 0;
            }
            let buf = self.buf.get_or_insert_with(readbuf::take);
            let mut rb = ReadBuf::uninit(&mut buf[self.filled..]);
            match Pin::new(&mut *io).poll_read(cx, &mut rb) {
                Poll::Pending => {
                    if self.next == self.filled {
                        self.release();
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {
                    let n = rb.filled().len();
                    if n == 0 {
                        if self.next != self.filled {
                            return Poll::Ready(Err(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "TLS: the connection ended inside a record",
                            )));
                        }
                        // Ended without close_notify: the end of the stream
                        // all the same (NBD knows where its messages end).
                        self.release();
                        return Poll::Ready(Ok(()));
                    }
                    self.filled += n;
                }
            }
        }
    }

    fn release(&mut self) {
        if let Some(b) = self.buf.take() {
            readbuf::give(b);
        }
        self.plain = 0..0;
        self.next = 0;
        self.filled = 0;
    }

    /// The length of the whole record at `next`, if it has all arrived.
    fn complete_record(&mut self) -> io::Result<Option<usize>> {
        let have = self.filled - self.next;
        if have < HEADER {
            return Ok(None);
        }
        let buf = self.buf.as_mut().expect("bytes are in the buffer");
        let h = init_mut(buf, self.next..self.next + HEADER);
        if !(CHANGE_CIPHER_SPEC..=APPLICATION_DATA).contains(&h[0]) || h[1] != 3 {
            return Err(invalid("not a TLS record"));
        }
        let len = usize::from(u16::from_be_bytes([h[3], h[4]]));
        if len > self.rx.max_ciphertext() {
            return Err(invalid("record overflow"));
        }
        Ok((have >= HEADER + len).then_some(HEADER + len))
    }

    /// Open the record of `len` bytes at `next`.
    fn open_next(&mut self, len: usize) -> io::Result<()> {
        let start = self.next;
        let buf = self.buf.as_mut().expect("the record is in the buffer");
        let rec = init_mut(buf, start..start + len);
        let (ty, plain) = self.rx.open(rec)?;
        self.next += len;
        match ty {
            APPLICATION_DATA => {
                self.plain = start + plain.start..start + plain.end;
                Ok(())
            }
            ALERT => {
                let a = &rec[plain];
                match a {
                    // close_notify.
                    [_, 0] => {
                        self.closed = true;
                        Ok(())
                    }
                    // user_canceled, or any TLS 1.2 warning: ignored.
                    [_, 90] => Ok(()),
                    [1, _] if !self.rx.tls13 => Ok(()),
                    [_, d] => Err(invalid(&format!("the client sent alert {d}"))),
                    _ => Err(invalid("bad alert")),
                }
            }
            HANDSHAKE if self.rx.tls13 => {
                // Only KeyUpdate may follow the handshake on a server, and
                // a key change ends its record.
                match &rec[plain] {
                    [KEY_UPDATE, 0, 0, 1, request @ (0 | 1)] => {
                        let request = *request;
                        let limit = self.rx.limit;
                        self.rx = Cipher::new(true, limit, self.shared.next_secret(false)?)?;
                        if request == 1 {
                            self.shared.update_tx.store(true, Ordering::Release);
                        }
                        Ok(())
                    }
                    _ => Err(invalid("unexpected handshake message after the handshake")),
                }
            }
            HANDSHAKE => Err(invalid("renegotiation is not supported")),
            _ => Err(invalid("unexpected record type")),
        }
    }
}

/// Records the writer seals at most before writing some out.
const WRITE_BATCH: usize = CAPACITY;

impl Writer {
    /// Seal as much of `bufs` as fits into the output buffer; then write
    /// what is sealed. Ready with the number of plaintext bytes taken.
    #[inline(never)]
    fn poll_write<W: AsyncWrite + Unpin>(
        &mut self,
        io: &mut W,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if total == 0 {
            return Poll::Ready(Ok(0));
        }
        if self.closed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        // Room for a record, and a KeyUpdate before it.
        let overhead = self.tx.overhead();
        let room_needed = 2 * overhead + 5 + MAX_PLAIN.min(total);
        if WRITE_BATCH - self.end < room_needed {
            // Make room: write out what is sealed.
            ready!(self.poll_drain(io, cx))?;
        }
        if self.shared.update_tx.swap(false, Ordering::AcqRel) {
            self.seal_key_update()?;
        }
        let mut taken = 0;
        let (mut slice, mut at) = (0, 0);
        let off = self.tx.payload_offset();
        while taken < total {
            if WRITE_BATCH - self.end <= 2 * overhead + 5 {
                break;
            }
            // Renew the key while it can still seal the KeyUpdate.
            if self.tx.tls13 && self.tx.seq + 1 >= self.tx.limit {
                self.seal_key_update()?;
            }
            let room = WRITE_BATCH - self.end;
            let n = (total - taken).min(MAX_PLAIN).min(room - overhead);
            let buf = self.buf.get_or_insert_with(readbuf::take);
            // Gather n bytes of the slices into the record.
            let mut put = 0;
            while put < n {
                let s = &bufs[slice][at..];
                let k = s.len().min(n - put);
                copy_in(&mut buf[self.end + off + put..], &s[..k]);
                put += k;
                at += k;
                if at == bufs[slice].len() {
                    slice += 1;
                    at = 0;
                }
            }
            let end = self.end;
            let rec = init_mut(buf, end..end + n + overhead);
            self.end += self.tx.seal(rec, APPLICATION_DATA, n)?;
            taken += n;
        }
        // Start writing now; what the socket does not take yet goes with
        // the next write or the flush.
        if let Poll::Ready(Err(e)) = self.poll_drain(io, cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(taken))
    }

    /// Seal a KeyUpdate (not requesting one back) with the current key,
    /// then take the next one.
    fn seal_key_update(&mut self) -> io::Result<()> {
        if !self.tx.tls13 {
            return Err(invalid("the key's record limit is reached"));
        }
        self.seal_control(HANDSHAKE, &[KEY_UPDATE, 0, 0, 1, 0])?;
        let limit = self.tx.limit;
        self.tx = Cipher::new(true, limit, self.shared.next_secret(true)?)?;
        Ok(())
    }

    /// Seal a short record of type `ty` (the buffer has room: callers
    /// keep some).
    fn seal_control(&mut self, ty: u8, msg: &[u8]) -> io::Result<()> {
        let off = self.tx.payload_offset();
        let overhead = self.tx.overhead();
        let end = self.end;
        let buf = self.buf.get_or_insert_with(readbuf::take);
        if end + msg.len() + overhead > buf.len() {
            return Err(invalid("no room for a control record"));
        }
        copy_in(&mut buf[end + off..], msg);
        let rec = init_mut(buf, end..end + msg.len() + overhead);
        self.end += self.tx.seal(rec, ty, msg.len())?;
        Ok(())
    }

    /// Write out every sealed record.
    fn poll_drain<W: AsyncWrite + Unpin>(
        &mut self,
        io: &mut W,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        while self.pos < self.end {
            let buf = self.buf.as_mut().expect("records are in the buffer");
            let (pos, end) = (self.pos, self.end);
            match Pin::new(&mut *io).poll_write(cx, init_mut(buf, pos..end)) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => self.pos += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        if let Some(b) = self.buf.take() {
            readbuf::give(b);
        }
        self.pos = 0;
        self.end = 0;
        Poll::Ready(Ok(()))
    }

    #[inline(never)]
    fn poll_flush<W: AsyncWrite + Unpin>(
        &mut self,
        io: &mut W,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        match self.poll_drain(io, cx) {
            Poll::Ready(Ok(())) => Pin::new(io).poll_flush(cx),
            other => other,
        }
    }

    /// Send close_notify, then shut the socket's writing side.
    #[inline(never)]
    fn poll_shutdown<W: AsyncWrite + Unpin>(
        &mut self,
        io: &mut W,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.closed {
            // Room for the alert.
            ready!(self.poll_drain(io, cx))?;
            self.seal_control(ALERT, &[1, 0])?;
            self.closed = true;
        }
        match self.poll_drain(io, cx) {
            Poll::Ready(Ok(())) => Pin::new(io).poll_shutdown(cx),
            other => other,
        }
    }
}

/// A whole connection (before it is split).
pub(crate) struct Stream<S> {
    io: S,
    rd: Reader,
    wr: Writer,
}

/// The reading half of a split [`Stream`].
pub(crate) struct ReadHalf<R> {
    io: R,
    rd: Reader,
}

/// The writing half of a split [`Stream`].
pub(crate) struct WriteHalf<W> {
    io: W,
    wr: Writer,
}

impl<S> Stream<S> {
    /// Split into halves over the halves of the socket that `split`
    /// returns.
    pub(crate) fn split<R, W>(
        self,
        split: impl FnOnce(S) -> (R, W),
    ) -> (ReadHalf<R>, WriteHalf<W>) {
        let (r, w) = split(self.io);
        (
            ReadHalf { io: r, rd: self.rd },
            WriteHalf { io: w, wr: self.wr },
        )
    }
}

/// `AsyncRead` for a type with the socket (or its reading half) in `io`
/// and a [`Reader`] in `rd`.
macro_rules! async_read {
    ($t:ident, $p:ident) => {
        impl<$p: AsyncRead + Unpin> AsyncRead for $t<$p> {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                let s = self.get_mut();
                s.rd.poll_read(&mut s.io, cx, buf)
            }
        }
    };
}

async_read!(Stream, S);
async_read!(ReadHalf, R);

/// `AsyncWrite` for a type with the socket (or its writing half) in `io`
/// and a [`Writer`] in `wr`.
macro_rules! async_write {
    ($t:ident, $p:ident) => {
        impl<$p: AsyncWrite + Unpin> AsyncWrite for $t<$p> {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                let s = self.get_mut();
                s.wr.poll_write(&mut s.io, cx, &[io::IoSlice::new(buf)])
            }
            fn poll_write_vectored(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                bufs: &[io::IoSlice<'_>],
            ) -> Poll<io::Result<usize>> {
                let s = self.get_mut();
                s.wr.poll_write(&mut s.io, cx, bufs)
            }
            fn is_write_vectored(&self) -> bool {
                true
            }
            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                let s = self.get_mut();
                s.wr.poll_flush(&mut s.io, cx)
            }
            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                let s = self.get_mut();
                s.wr.poll_shutdown(&mut s.io, cx)
            }
        }
    };
}

async_write!(Stream, S);
async_write!(WriteHalf, W);

/// The next step of the handshake, decided while rustls's state borrows
/// the buffers and carried out after.
enum Step {
    /// Send what has been encoded.
    Transmit,
    /// Read more from the client.
    Receive,
    /// Process again.
    Again,
    /// The handshake is over.
    Done,
}

/// Run the server side of the handshake on `io` with rustls, calling
/// `inspect` with the session once it is established, then take the
/// records over.
pub(crate) async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    config: Arc<rustls::ServerConfig>,
    mut io: S,
    inspect: impl FnOnce(&rustls::CommonState),
) -> io::Result<Stream<S>> {
    let mut conn = UnbufferedServerConnection::new(config).map_err(tls_error)?;
    let mut input = vec![0u8; 16 * 1024];
    let mut have = 0;
    let mut output: Vec<u8> = vec![0u8; 16 * 1024];
    let mut out_len = 0;
    let mut early = Vec::new();
    loop {
        let UnbufferedStatus { discard, state } = conn.process_tls_records(&mut input[..have]);
        let step = match state {
            Err(e) => {
                // Send the alert rustls has queued, if it can.
                let UnbufferedStatus { state, .. } = conn.process_tls_records(&mut []);
                if let Ok(ConnectionState::EncodeTlsData(mut enc)) = state {
                    if let Ok(n) = enc.encode(&mut output[out_len..]) {
                        let _ = io.write_all(&output[..out_len + n]).await;
                        let _ = io.flush().await;
                    }
                }
                return Err(tls_error(e));
            }
            Ok(ConnectionState::EncodeTlsData(mut enc)) => loop {
                match enc.encode(&mut output[out_len..]) {
                    Ok(n) => {
                        out_len += n;
                        break Step::Again;
                    }
                    Err(EncodeError::InsufficientSize(s)) => {
                        output.resize(out_len + s.required_size, 0);
                    }
                    Err(e) => return Err(invalid(&e.to_string())),
                }
            },
            Ok(ConnectionState::TransmitTlsData(t)) => {
                t.done();
                Step::Transmit
            }
            Ok(ConnectionState::BlockedHandshake) => Step::Receive,
            Ok(ConnectionState::ReadTraffic(mut r)) => {
                while let Some(rec) = r.next_record() {
                    let rec = rec.map_err(tls_error)?;
                    early.extend_from_slice(rec.payload);
                }
                Step::Again
            }
            Ok(ConnectionState::WriteTraffic(_)) => Step::Done,
            Ok(ConnectionState::PeerClosed | ConnectionState::Closed) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "TLS: the client closed the connection during the handshake",
                ));
            }
            Ok(_) => return Err(invalid("unexpected handshake state")),
        };
        input.copy_within(discard..have, 0);
        have -= discard;
        match step {
            Step::Again => {}
            Step::Transmit => {
                io.write_all(&output[..out_len]).await?;
                io.flush().await?;
                out_len = 0;
            }
            Step::Receive => {
                if have == input.len() {
                    if input.len() >= MAX_HANDSHAKE_BUFFER {
                        return Err(invalid("handshake message too large"));
                    }
                    input.resize((input.len() * 2).min(MAX_HANDSHAKE_BUFFER), 0);
                }
                let n = io.read(&mut input[have..]).await?;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "TLS: the client closed the connection during the handshake",
                    ));
                }
                have += n;
            }
            Step::Done => break,
        }
    }
    inspect(&conn);
    let (secrets, kconn) = conn.dangerous_into_kernel_connection().map_err(tls_error)?;
    let tls13 = kconn.protocol_version() == ProtocolVersion::TLSv1_3;
    let limit = match kconn.negotiated_cipher_suite() {
        SupportedCipherSuite::Tls13(s) => s.common.confidentiality_limit,
        SupportedCipherSuite::Tls12(s) => s.common.confidentiality_limit,
    };
    let shared = Arc::new(Shared {
        conn: Mutex::new(kconn),
        update_tx: AtomicBool::new(false),
    });
    let mut rd = Reader {
        rx: Cipher::new(tls13, limit, secrets.rx)?,
        shared: shared.clone(),
        early,
        buf: None,
        plain: 0..0,
        next: 0,
        filled: 0,
        closed: false,
    };
    if have > 0 {
        // The start of the client's next records.
        let buf = rd.buf.insert(readbuf::take());
        copy_in(buf, &input[..have]);
        rd.filled = have;
    }
    let wr = Writer {
        tx: Cipher::new(tls13, limit, secrets.tx)?,
        shared,
        buf: None,
        pos: 0,
        end: 0,
        closed: false,
    };
    Ok(Stream { io, rd, wr })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::crypto::ring::cipher_suite as cs;

    const CERT: &str = include_str!("testdata/test-cert.pem");
    const KEY: &str = include_str!("testdata/test-key.pem");

    fn server_config() -> Arc<rustls::ServerConfig> {
        let dir = std::env::temp_dir().join(format!(
            "nbdkit-record-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("ca-cert.pem"), CERT).unwrap();
        std::fs::write(dir.join("server-cert.pem"), CERT).unwrap();
        std::fs::write(dir.join("server-key.pem"), KEY).unwrap();
        let config = super::super::x509_acceptor(&dir, false).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        config
    }

    /// A client offering only `suite`, checking nothing of the server's
    /// certificate.
    fn client_config(suite: SupportedCipherSuite) -> Arc<rustls::ClientConfig> {
        client_config_with(suite, false)
    }

    /// With `extract`, the client's traffic secrets can be taken (to send
    /// records of any kind with a [`Cipher`] of the test's own).
    fn client_config_with(suite: SupportedCipherSuite, extract: bool) -> Arc<rustls::ClientConfig> {
        let provider = Arc::new(rustls::crypto::CryptoProvider {
            cipher_suites: vec![suite],
            ..rustls::crypto::ring::default_provider()
        });
        let version: &'static rustls::SupportedProtocolVersion = match suite {
            SupportedCipherSuite::Tls13(_) => &rustls::version::TLS13,
            SupportedCipherSuite::Tls12(_) => &rustls::version::TLS12,
        };
        let config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[version])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(super::super::AnyName {
                chain: None,
                provider,
            }))
            .with_no_client_auth();
        let mut config = config;
        config.enable_secret_extraction = extract;
        Arc::new(config)
    }

    type Client = tokio_rustls::client::TlsStream<tokio::io::DuplexStream>;

    async fn connect(suite: SupportedCipherSuite) -> (Client, Stream<tokio::io::DuplexStream>) {
        let (c, s) = tokio::io::duplex(64 * 1024);
        let connector = tokio_rustls::TlsConnector::from(client_config(suite));
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let (client, server) = tokio::join!(
            connector.connect(name, c),
            accept(server_config(), s, |_| {})
        );
        (client.unwrap(), server.unwrap())
    }

    fn pattern(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    fn run<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    /// The client writes `up`, the server reads it; the server writes a
    /// 16-byte header and `down` in one vectored write, the client reads
    /// them.
    async fn exchange(client: &mut Client, server: &mut Stream<tokio::io::DuplexStream>, seed: u8) {
        let up = pattern(300_000, seed);
        let down = pattern(500_000, seed.wrapping_add(1));
        let head = [seed; 16];
        let (a, b) = tokio::join!(
            async {
                client.write_all(&up).await.unwrap();
                client.flush().await.unwrap();
                let mut got = vec![0u8; 16 + down.len()];
                client.read_exact(&mut got).await.unwrap();
                got
            },
            async {
                let mut got = vec![0u8; up.len()];
                server.read_exact(&mut got).await.unwrap();
                let mut bufs = [io::IoSlice::new(&head), io::IoSlice::new(&down)];
                let mut bufs = &mut bufs[..];
                while !bufs.is_empty() {
                    let n = server.write_vectored(bufs).await.unwrap();
                    io::IoSlice::advance_slices(&mut bufs, n);
                }
                server.flush().await.unwrap();
                got
            }
        );
        assert_eq!(&a[..16], &head);
        assert!(a[16..] == down[..], "server to client data differ");
        assert!(b == up, "client to server data differ");
    }

    const SUITES: [SupportedCipherSuite; 6] = [
        cs::TLS13_AES_128_GCM_SHA256,
        cs::TLS13_AES_256_GCM_SHA384,
        cs::TLS13_CHACHA20_POLY1305_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ];

    #[test]
    fn every_suite_carries_data_both_ways_and_closes_cleanly() {
        for suite in SUITES {
            run(async {
                let (mut client, mut server) = connect(suite).await;
                exchange(&mut client, &mut server, 1).await;
                exchange(&mut client, &mut server, 2).await;
                if let SupportedCipherSuite::Tls13(_) = suite {
                    // The client renews its keys and asks the server to
                    // renew its own.
                    client.get_mut().1.refresh_traffic_keys().unwrap();
                    exchange(&mut client, &mut server, 3).await;
                    assert!(
                        server.wr.tx.seq < 40,
                        "{suite:?}: the server did not renew its key"
                    );
                }
                // close_notify each way: a clean end of stream, not an
                // error.
                client.shutdown().await.unwrap();
                let mut rest = Vec::new();
                assert_eq!(server.read_to_end(&mut rest).await.unwrap(), 0);
                server.shutdown().await.unwrap();
                assert_eq!(client.read_to_end(&mut rest).await.unwrap(), 0, "{suite:?}");
            });
        }
    }

    #[test]
    fn data_that_comes_with_the_handshake_is_read_first() {
        run(async {
            let (c, s) = tokio::io::duplex(64 * 1024);
            let connector =
                tokio_rustls::TlsConnector::from(client_config(cs::TLS13_AES_128_GCM_SHA256));
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            // On one thread the client sends its Finished and its first
            // request before the server reads again: the server's
            // handshake sees both.
            let (client, server) = tokio::join!(
                async {
                    let mut c = connector.connect(name, c).await.unwrap();
                    c.write_all(b"first request").await.unwrap();
                    c.flush().await.unwrap();
                    c
                },
                accept(server_config(), s, |_| {})
            );
            let (mut client, mut server) = (client, server.unwrap());
            assert_eq!(server.rd.early, b"first request");
            let mut got = [0u8; 13];
            server.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"first request");
            exchange(&mut client, &mut server, 7).await;
        });
    }

    #[test]
    fn renews_its_key_before_the_limit() {
        run(async {
            let (mut client, mut server) = connect(cs::TLS13_AES_128_GCM_SHA256).await;
            server.wr.tx.limit = server.wr.tx.seq + 3;
            exchange(&mut client, &mut server, 4).await;
            // 500 KB took 31 records: a new key every 2.
            assert!(server.wr.tx.seq < 3);
            exchange(&mut client, &mut server, 5).await;
        });
    }

    /// Forge what the client sends: the server's read fails, and nothing
    /// panics.
    fn read_after_forged(bytes: &[u8]) -> io::Result<usize> {
        run(async {
            let (mut client, mut server) = connect(cs::TLS13_AES_256_GCM_SHA384).await;
            exchange(&mut client, &mut server, 6).await;
            client.get_mut().0.write_all(bytes).await.unwrap();
            drop(client);
            let mut got = vec![0u8; 100];
            server.read(&mut got).await
        })
    }

    #[test]
    fn forged_records_are_errors() {
        let mut rec = vec![APPLICATION_DATA, 3, 3, 0, 40];
        rec.extend(pattern(40, 9));
        let e = read_after_forged(&rec).unwrap_err();
        assert!(e.to_string().contains("bad record MAC"), "{e}");
        let e = read_after_forged(&[APPLICATION_DATA, 3, 3, 0xff, 0xff]).unwrap_err();
        assert!(e.to_string().contains("record overflow"), "{e}");
        let e = read_after_forged(b"GET / HTTP/1.0\r\n\r\n").unwrap_err();
        assert!(e.to_string().contains("not a TLS record"), "{e}");
        let e = read_after_forged(&[APPLICATION_DATA, 3, 3, 0, 40, 1, 2]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
        // A short record: too short for its tag.
        let e = read_after_forged(&[APPLICATION_DATA, 3, 3, 0, 3, 1, 2, 3]).unwrap_err();
        assert!(e.to_string().contains("bad record MAC"), "{e}");
    }

    /// A small deterministic generator (xorshift64*).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> usize {
            (self.next() % n) as usize
        }
    }

    /// Records of every kind, well sealed with the client's key (some
    /// damaged): the server reads without panicking, and all it returns is
    /// a prefix of the application data sent.
    #[test]
    fn records_of_any_kind_never_panic_and_yield_only_application_data() {
        let (mut received, mut failed) = (0, 0);
        for seed in 1..=40u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            run(async {
                let (c, s) = tokio::io::duplex(1 << 20);
                let connector = tokio_rustls::TlsConnector::from(client_config_with(
                    cs::TLS13_AES_128_GCM_SHA256,
                    true,
                ));
                let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
                let (client, server) = tokio::join!(
                    connector.connect(name, c),
                    accept(server_config(), s, |_| {})
                );
                let (mut io, conn) = client.unwrap().into_inner();
                let mut server = server.unwrap();
                let secrets = conn.dangerous_extract_secrets().unwrap();
                let mut tx = Cipher::new(true, u64::MAX, secrets.tx).unwrap();
                let mut wire = Vec::new();
                let mut app = Vec::new();
                for _ in 0..1 + rng.below(12) {
                    let ty = match rng.below(8) {
                        0 => ALERT,
                        1 => HANDSHAKE,
                        2 => CHANGE_CIPHER_SPEC,
                        3 => rng.below(256) as u8,
                        _ => APPLICATION_DATA,
                    };
                    let body: Vec<u8> = match (ty, rng.below(3)) {
                        (ALERT, _) => vec![1 + rng.below(2) as u8, [0, 90, 10, 40][rng.below(4)]],
                        (HANDSHAKE, 0) => vec![KEY_UPDATE, 0, 0, 1, rng.below(3) as u8],
                        _ => (0..rng.below(if ty == APPLICATION_DATA { 20000 } else { 40 }))
                            .map(|_| rng.next() as u8)
                            .collect(),
                    };
                    let n = body.len().min(MAX_PLAIN);
                    let mut rec = vec![0u8; n + tx.overhead()];
                    rec[HEADER..HEADER + n].copy_from_slice(&body[..n]);
                    let len = tx.seal(&mut rec, ty, n).unwrap();
                    rec.truncate(len);
                    if rng.below(10) == 0 {
                        let i = rng.below(len as u64);
                        rec[i] ^= 1 << rng.below(8);
                    }
                    if ty == APPLICATION_DATA {
                        app.extend_from_slice(&body[..n]);
                    }
                    wire.extend_from_slice(&rec);
                }
                if rng.below(4) == 0 {
                    wire.truncate(rng.below(wire.len() as u64 + 1));
                }
                io.write_all(&wire).await.unwrap();
                drop(io);
                let mut got = Vec::new();
                let mut buf = vec![0u8; 1 + rng.below(70000)];
                for _ in 0..200 {
                    match server.read(&mut buf).await {
                        Ok(0) => break,
                        Err(_) => {
                            failed += 1;
                            break;
                        }
                        Ok(k) => got.extend_from_slice(&buf[..k]),
                    }
                }
                assert!(app.starts_with(&got), "seed {seed}: data that was not sent");
                received += got.len();
            });
        }
        // The records exercised both paths.
        assert!(
            received > 0 && failed > 0,
            "{received} bytes, {failed} failures"
        );
    }

    #[test]
    fn a_failed_handshake_sends_rustls_alert() {
        run(async {
            let (mut c, s) = tokio::io::duplex(1024);
            // A ClientHello of two bytes: too short to decode.
            c.write_all(&[HANDSHAKE, 3, 1, 0, 6, 1, 0, 0, 2, 3, 3])
                .await
                .unwrap();
            assert!(accept(server_config(), s, |_| {}).await.is_err());
            let mut got = Vec::new();
            c.read_to_end(&mut got).await.unwrap();
            // An unencrypted fatal alert record.
            assert_eq!(&got[..3], &[ALERT, 3, 3], "{got:?}");
            assert_eq!(got[5], 2, "{got:?}");
        });
    }

    #[test]
    fn a_client_that_leaves_mid_handshake_is_an_error() {
        run(async {
            let (mut c, s) = tokio::io::duplex(1024);
            c.write_all(&[HANDSHAKE, 3, 1, 0, 50, 1, 0]).await.unwrap();
            drop(c);
            assert!(accept(server_config(), s, |_| {}).await.is_err());
        });
    }
}
