//! A bound on every wait for the SSH server.
//!
//! libssh waits without limit for some answers in blocking mode (an SFTP
//! reply from a server that stopped answering but whose socket stays
//! open), so each connection has a watchdog thread: a request arms it
//! with a deadline before each call that waits for the server, and when
//! the deadline passes first the watchdog shuts the connection's socket
//! down. libssh's wait then ends with an error, the request fails with
//! EIO, and so does every later request on the dead connection.
//! `shutdown(2)` does not close the descriptor, so it can never hit a
//! descriptor reused by someone else; the thread is stopped before the
//! session (and its descriptor) is freed.

use core::time::Duration;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

#[derive(Default)]
struct State {
    deadline: Option<Instant>,
    fired: bool,
    quit: bool,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    cv: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub(crate) struct Watchdog {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    limit: Duration,
}

/// While alive, the watchdog is armed; dropping it disarms it.
pub(crate) struct Armed<'a>(&'a Watchdog);

impl Drop for Armed<'_> {
    fn drop(&mut self) {
        self.0.shared.lock().deadline = None;
    }
}

impl Watchdog {
    /// Watch socket `fd`, allowing `limit` for each wait.
    pub(crate) fn start(fd: libc::c_int, limit: Duration) -> std::io::Result<Watchdog> {
        let shared = Arc::new(Shared::default());
        let s = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("ssh watchdog".into())
            .spawn(move || run(&s, fd))?;
        Ok(Watchdog {
            shared,
            thread: Some(thread),
            limit,
        })
    }

    /// Arm for one wait of at most the limit.
    pub(crate) fn arm(&self) -> Armed<'_> {
        self.shared.lock().deadline = Some(Instant::now() + self.limit);
        self.shared.cv.notify_one();
        Armed(self)
    }

    /// Whether the watchdog ended the connection.
    pub(crate) fn fired(&self) -> bool {
        self.shared.lock().fired
    }

    pub(crate) fn limit(&self) -> Duration {
        self.limit
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.shared.lock().quit = true;
        self.shared.cv.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(s: &Shared, fd: libc::c_int) {
    let mut st = s.lock();
    loop {
        if st.quit {
            return;
        }
        match st.deadline {
            None => st = s.cv.wait(st).unwrap_or_else(|e| e.into_inner()),
            Some(d) => {
                let now = Instant::now();
                if now >= d {
                    // SAFETY: shutdown(2) on the session's socket, which
                    // stays open until this thread has been joined.
                    unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
                    st.fired = true;
                    st.deadline = None;
                } else {
                    st =
                        s.cv.wait_timeout(st, d - now)
                            .unwrap_or_else(|e| e.into_inner())
                            .0;
                }
            }
        }
    }
}
