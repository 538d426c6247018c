//! The worker pool of one connection served on blocking threads
//! (runtime-std's `blocking` module, nbdkit's own model).
//!
//! A worker takes the read lock, reads one request, lets go of the lock,
//! runs the request and answers it. The connection starts with one worker;
//! a worker that read a request to run while no other worker waits to read
//! starts another, up to `max` (`-t` under the parallel thread model, 1
//! otherwise, so that serialize_* models never run two requests of one
//! connection at once). Once the input ends (NBD_CMD_DISC, the client hung
//! up, a protocol error, server shutdown) every worker finishes the request
//! it holds and stops; the caller joins them, so every request read is
//! answered before the connection closes.

use super::{lock, AtomicUsize, Mutex, Ordering};

/// What one turn at the read lock gave.
#[derive(Debug)]
pub enum Next<R> {
    /// A request to run (another worker may be started for the next one).
    Run(R),
    /// A request answered at once (e.g. refused by validation).
    Answer(R),
    /// The end of the input.
    End,
}

/// What the pool's workers do: read a request, answer it.
pub trait Work {
    /// The reading side, owned by one worker at a time.
    type Input;
    /// One request.
    type Request;
    /// Each worker's own state (its name, its buffers).
    type Local;
    /// Read the next request (called under the read lock).
    fn read(&self, input: &mut Self::Input, local: &mut Self::Local) -> Next<Self::Request>;
    /// Run and answer `req`; false when the connection is gone.
    fn answer(&self, req: Self::Request, local: &mut Self::Local) -> bool;
}

#[derive(Debug)]
struct Input<I> {
    source: I,
    /// The input ended: every worker stops at its next turn.
    done: bool,
}

/// One connection's workers.
#[derive(Debug)]
pub struct Pool<I> {
    input: Mutex<Input<I>>,
    /// Workers waiting for (or holding) the read lock without a request.
    readers: AtomicUsize,
    /// Workers started (the caller's thread is the first).
    started: AtomicUsize,
    max: usize,
}

impl<I> Pool<I> {
    /// A pool reading from `source` with at most `max` workers (at least 1);
    /// the thread that calls [`Pool::serve`] first is worker 0.
    pub fn new(source: I, max: usize) -> Self {
        Pool {
            input: Mutex::new(Input {
                source,
                done: false,
            }),
            readers: AtomicUsize::new(0),
            started: AtomicUsize::new(1),
            max: max.max(1),
        }
    }

    /// The most workers.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Workers started so far.
    pub fn started(&self) -> usize {
        self.started.load(Ordering::Acquire)
    }

    /// Serve requests on this thread until the input ends or the client is
    /// gone. `spawn(index)` must start a thread that calls `serve` as
    /// worker `index` (and that the caller joins).
    pub fn serve<W: Work<Input = I>>(
        &self,
        work: &W,
        local: &mut W::Local,
        spawn: &mut dyn FnMut(usize),
    ) {
        loop {
            self.readers.fetch_add(1, Ordering::AcqRel);
            let next = {
                let mut input = lock(&self.input);
                if input.done {
                    Next::End
                } else {
                    let n = work.read(&mut input.source, local);
                    if matches!(n, Next::End) {
                        input.done = true;
                    }
                    n
                }
            };
            let others_reading = self.readers.fetch_sub(1, Ordering::AcqRel) > 1;
            let req = match next {
                Next::End => return,
                Next::Answer(req) => req,
                Next::Run(req) => {
                    // Nobody else is waiting for the next request: start
                    // another worker, so that a pipelining client keeps up
                    // to `max` requests running.
                    if !others_reading {
                        if let Some(index) = self.claim_worker() {
                            spawn(index);
                        }
                    }
                    req
                }
            };
            if !work.answer(req, local) {
                return;
            }
        }
    }

    /// The index of a new worker, if fewer than `max` were started.
    fn claim_worker(&self) -> Option<usize> {
        let mut n = self.started.load(Ordering::Acquire);
        while n < self.max {
            match self
                .started
                .compare_exchange_weak(n, n + 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Some(n),
                Err(now) => n = now,
            }
        }
        None
    }

    /// The reading side back, once every worker is done.
    pub fn into_source(self) -> I {
        match self.input.into_inner() {
            Ok(i) => i.source,
            Err(p) => p.into_inner().source,
        }
    }
}
