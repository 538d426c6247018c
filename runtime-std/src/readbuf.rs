//! A buffered reader for a connection's requests whose buffer is held only
//! while there is input: an idle connection holds none.
//!
//! A connection reads its requests through a 128 KiB buffer, so that one
//! system call takes in many pipelined request headers. Held by every
//! connection, such buffers made each idle connection cost ~17 KiB of
//! resident memory (the pages its reads touched). Here the buffer goes back
//! to a small process-wide pool as soon as it is empty and the socket has
//! nothing more (the read would wait), and is taken again when input
//! arrives; a busy connection cycles a pooled buffer (a lock and a pointer
//! move, no allocation), an idle one owns nothing.

use core::mem::MaybeUninit;
use core::pin::Pin;
use core::task::{Context, Poll};
use std::io;
use std::sync::Mutex;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The size of a read buffer.
pub(crate) const CAPACITY: usize = 128 * 1024;
/// Buffers kept for reuse (more are freed): bounds what idle memory the
/// pool itself holds.
const POOL_MAX: usize = 16;

pub(crate) type Buf = Box<[MaybeUninit<u8>]>;

static POOL: Mutex<Vec<Buf>> = Mutex::new(Vec::new());

pub(crate) fn take() -> Buf {
    let pooled = POOL.lock().ok().and_then(|mut p| p.pop());
    // Uninitialised: nothing is written (nor made resident) but what reads
    // fill.
    pooled.unwrap_or_else(|| {
        let mut v: Vec<MaybeUninit<u8>> = Vec::with_capacity(CAPACITY);
        // SAFETY: MaybeUninit elements need no initialisation.
        unsafe { v.set_len(CAPACITY) };
        v.into_boxed_slice()
    })
}

pub(crate) fn give(buf: Buf) {
    if let Ok(mut p) = POOL.lock() {
        if p.len() < POOL_MAX {
            p.push(buf);
        }
    }
}

/// Like `tokio::io::BufReader` with [`CAPACITY`], but the buffer is only
/// held while it has unread bytes or a read is being filled.
pub(crate) struct PooledBufReader<R> {
    inner: R,
    buf: Option<Buf>,
    pos: usize,
    filled: usize,
    /// The most the next fill of the buffer reads.
    limit: usize,
}

impl<R> PooledBufReader<R> {
    pub(crate) fn new(inner: R) -> Self {
        PooledBufReader {
            inner,
            buf: None,
            pos: 0,
            filled: 0,
            limit: CAPACITY,
        }
    }

    /// Make the next fill of the buffer (when it is empty) read at most
    /// `n` bytes: for a caller that wants the rest of the input to go
    /// straight to its own buffers.
    pub(crate) fn limit_next_fill(&mut self, n: usize) {
        self.limit = n.clamp(1, CAPACITY);
    }

    /// Bytes already read from the stream and not yet consumed: a read of
    /// at most this many is answered without touching the stream.
    pub(crate) fn buffered(&self) -> usize {
        self.filled - self.pos
    }

    fn release(&mut self) {
        if let Some(b) = self.buf.take() {
            give(b);
        }
        self.pos = 0;
        self.filled = 0;
    }
}

impl<R: AsyncRead> PooledBufReader<tokio::io::Chain<io::Cursor<Vec<u8>>, R>> {
    /// Whether bytes read before the stream (the handshake's leftover) are
    /// still to come.
    pub(crate) fn holds_leftover(&self) -> bool {
        let (c, _) = self.inner.get_ref();
        c.position() < c.get_ref().len() as u64
    }
}

impl<R: AsyncRead + Unpin> PooledBufReader<R> {
    /// Read into `dst`: from the buffer if it holds bytes, else straight
    /// from the stream whatever `dst`'s size (no copy through the buffer).
    /// Ready with 0 at the end of the stream.
    pub(crate) fn poll_read_direct(
        &mut self,
        cx: &mut Context<'_>,
        dst: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        if self.pos == self.filled {
            self.release();
            let mut rb = ReadBuf::new(dst);
            return match Pin::new(&mut self.inner).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => Poll::Ready(Ok(rb.filled().len())),
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            };
        }
        let mut rb = ReadBuf::new(dst);
        match Pin::new(&mut *self).poll_read(cx, &mut rb) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(rb.filled().len())),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    /// [`PooledBufReader::poll_read_direct`] as a future.
    pub(crate) async fn read_direct(&mut self, dst: &mut [u8]) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_read_direct(cx, dst)).await
    }
}

impl<R> Drop for PooledBufReader<R> {
    fn drop(&mut self) {
        self.release();
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for PooledBufReader<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        dst: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pos == this.filled {
            // Empty: a read as large as the buffer goes straight to the
            // caller; anything smaller is read into the buffer.
            if dst.remaining() >= CAPACITY {
                this.release();
                return Pin::new(&mut this.inner).poll_read(cx, dst);
            }
            let buf = this.buf.get_or_insert_with(take);
            let mut rb = ReadBuf::uninit(&mut buf[..this.limit]);
            match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                Poll::Pending => {
                    // Nothing to read: do not hold a buffer while waiting.
                    this.release();
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => {
                    this.release();
                    return Poll::Ready(Err(e));
                }
                Poll::Ready(Ok(())) => {}
            }
            this.limit = CAPACITY;
            this.filled = rb.filled().len();
            this.pos = 0;
            if this.filled == 0 {
                // End of file.
                this.release();
                return Poll::Ready(Ok(()));
            }
        }
        let Some(buf) = &this.buf else {
            return Poll::Ready(Ok(()));
        };
        let n = dst.remaining().min(this.filled - this.pos);
        // SAFETY: bytes pos..filled were initialised by the inner read.
        let bytes =
            unsafe { core::slice::from_raw_parts(buf[this.pos..].as_ptr() as *const u8, n) };
        dst.put_slice(bytes);
        this.pos += n;
        if this.pos == this.filled {
            this.pos = 0;
            this.filled = 0;
        }
        Poll::Ready(Ok(()))
    }
}

/// Writes go straight to the stream (for a stream read through the buffer
/// and written too, as the socket under a TLS session).
impl<R: AsyncWrite + Unpin> AsyncWrite for PooledBufReader<R> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn reads_everything_and_holds_no_buffer_when_idle() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (mut w, r) = tokio::io::duplex(1 << 20);
            let mut r = PooledBufReader::new(r);
            let data: Vec<u8> = (0..(3 * CAPACITY as u32 + 77)).map(|i| i as u8).collect();
            w.write_all(&data[..1000]).await.unwrap();
            let mut small = [0u8; 28];
            r.read_exact(&mut small).await.unwrap();
            assert_eq!(&small[..], &data[..28]);
            assert!(r.buf.is_some(), "unread input is buffered");
            let mut rest = vec![0u8; 972];
            r.read_exact(&mut rest).await.unwrap();
            assert_eq!(&rest[..], &data[28..1000]);
            // Drained, and the next read waits: the buffer goes back.
            let pending = tokio::time::timeout(
                std::time::Duration::from_millis(20),
                r.read_exact(&mut small),
            )
            .await;
            assert!(pending.is_err());
            assert!(r.buf.is_none(), "an idle reader holds a buffer");
            // The read that timed out consumed nothing.
            w.write_all(&data[1000..]).await.unwrap();
            drop(w);
            let mut got = Vec::new();
            r.read_to_end(&mut got).await.unwrap();
            assert!(got == data[1000..], "data differs");
        });
    }
}
