//! The pause filter: hold NBD requests while paused through a control
//! socket.
//!
//! Parameters:
//! - `pause-control=SOCKET` (required): a Unix socket that accepts one
//!   byte commands: `p` pauses (answered `P` once every request that was
//!   in flight has finished), `r` resumes (answered `R`), anything else is
//!   answered `X`.
//!
//! While paused, new requests wait before reaching the layer below. Waits
//! wake up at least every [`TICK`] to notice that the filter is unloading.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use nbdkit_core::backend::{
    Context, Error, Extents, Filter, FilterHandle, Flags, NextOpener, OpenArgs, Result,
};
use nbdkit_core::errno::Errno;

/// How long a waiting request or the control thread sleeps between checks
/// for unloading.
const TICK: Duration = Duration::from_millis(200);

#[derive(Debug, Default)]
struct State {
    paused: bool,
    in_flight: u64,
    stopping: bool,
}

#[derive(Debug, Default)]
struct Gate {
    state: Mutex<State>,
    changed: Condvar,
}

impl Gate {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wait while paused, then count a request in.
    fn enter(&self) -> Result<()> {
        let mut s = self.lock();
        while s.paused {
            if s.stopping || crate::server::stopping() {
                return Err(Error::msg(
                    Errno::ESHUTDOWN,
                    "pause: server is shutting down",
                ));
            }
            s = self
                .changed
                .wait_timeout(s, TICK)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        s.in_flight += 1;
        Ok(())
    }

    /// Count a request out.
    fn leave(&self) {
        let mut s = self.lock();
        s.in_flight -= 1;
        drop(s);
        self.changed.notify_all();
    }

    /// Pause, and wait for the requests in flight to finish.
    fn pause(&self) {
        let mut s = self.lock();
        s.paused = true;
        while s.in_flight > 0 && !s.stopping {
            s = self
                .changed
                .wait_timeout(s, TICK)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn resume(&self) {
        self.lock().paused = false;
        self.changed.notify_all();
    }

    /// Run `f` inside the gate.
    fn run<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        self.enter()?;
        let r = f();
        self.leave();
        r
    }
}

/// The pause filter.
#[derive(Debug, Default)]
pub struct Pause {
    socket: Option<PathBuf>,
    gate: Arc<Gate>,
    listener: Mutex<Option<UnixListener>>,
}

impl Filter for Pause {
    fn name(&self) -> &'static str {
        "pause"
    }

    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit pause filter")
    }

    fn config_help(&self) -> &'static str {
        "pause-control=SOCKET           Control socket."
    }

    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        if key != "pause-control" {
            return Ok(false);
        }
        self.socket = Some(super::util::absolute_path(value)?);
        Ok(true)
    }

    fn config_complete(&mut self) -> Result<()> {
        if self.socket.is_none() {
            return Err(Error::config("pause-control socket was not set"));
        }
        Ok(())
    }

    fn get_ready(&self, _tm: nbdkit_core::backend::ThreadModel) -> Result<()> {
        let Some(path) = &self.socket else {
            return Ok(());
        };
        // A stale socket from an earlier run is replaced, as nbdkit does.
        let _ = std::fs::remove_file(path);
        let l = UnixListener::bind(path)
            .map_err(|e| Error::config(format!("{}: {}", path.display(), io_msg(&e))))?;
        *self.listener.lock().unwrap_or_else(|p| p.into_inner()) = Some(l);
        Ok(())
    }

    fn after_fork(&self) -> Result<()> {
        let Some(l) = self
            .listener
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        else {
            return Ok(());
        };
        let gate = Arc::clone(&self.gate);
        std::thread::Builder::new()
            .name("pause-control".into())
            .spawn(move || control_loop(l, gate))
            .map_err(|e| Error::config(format!("pause: thread: {e}")))?;
        Ok(())
    }

    fn cleanup(&self) {
        self.gate.lock().stopping = true;
        self.gate.changed.notify_all();
        if let Some(p) = &self.socket {
            let _ = std::fs::remove_file(p);
        }
    }

    fn open(
        &self,
        next: &mut dyn NextOpener,
        args: &OpenArgs<'_>,
    ) -> Result<Box<dyn FilterHandle>> {
        next.open(args.readonly, args.export_name)?;
        Ok(Box::new(PauseHandle(Arc::clone(&self.gate))))
    }
}

/// strerror-like text of an I/O error, without Rust's "(os error N)".
fn io_msg(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => nix::errno::Errno::from_raw(n).desc().to_string(),
        None => e.to_string(),
    }
}

/// Serve control connections one at a time.
fn control_loop(l: UnixListener, gate: Arc<Gate>) {
    for conn in l.incoming() {
        if gate.lock().stopping {
            return;
        }
        match conn {
            Ok(c) => serve_control(c, &gate),
            Err(e) => {
                crate::log::error(None, &format!("pause: accept: {e}"));
                std::thread::sleep(TICK);
            }
        }
    }
}

fn serve_control(mut c: UnixStream, gate: &Gate) {
    let mut b = [0u8; 1];
    while let Ok(1) = c.read(&mut b) {
        let reply = match b[0] {
            b'p' => {
                gate.pause();
                b'P'
            }
            b'r' => {
                gate.resume();
                b'R'
            }
            _ => b'X',
        };
        if c.write_all(&[reply]).is_err() {
            return;
        }
    }
}

struct PauseHandle(Arc<Gate>);

impl FilterHandle for PauseHandle {
    fn pread(&self, next: &Context, buf: &mut [u8], offset: u64, flags: Flags) -> Result<()> {
        self.0.run(|| next.pread(buf, offset, flags))
    }

    fn pwrite(&self, next: &Context, buf: &[u8], offset: u64, flags: Flags) -> Result<()> {
        self.0.run(|| next.pwrite(buf, offset, flags))
    }

    fn flush(&self, next: &Context, flags: Flags) -> Result<()> {
        self.0.run(|| next.flush(flags))
    }

    fn trim(&self, next: &Context, count: u64, offset: u64, flags: Flags) -> Result<()> {
        self.0.run(|| next.trim(count, offset, flags))
    }

    fn zero(&self, next: &Context, count: u64, offset: u64, flags: Flags) -> Result<()> {
        self.0.run(|| next.zero(count, offset, flags))
    }

    fn extents(
        &self,
        next: &Context,
        count: u64,
        offset: u64,
        flags: Flags,
        extents: &mut Extents,
    ) -> Result<()> {
        self.0.run(|| next.extents(count, offset, flags, extents))
    }

    fn cache(&self, next: &Context, count: u64, offset: u64, flags: Flags) -> Result<()> {
        self.0.run(|| next.cache(count, offset, flags))
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn pause_waits_for_in_flight_and_holds_new_requests() {
        let gate = Arc::new(Gate::default());
        gate.enter().unwrap();
        let g2 = Arc::clone(&gate);
        let pauser = std::thread::spawn(move || g2.pause());
        std::thread::sleep(Duration::from_millis(50));
        assert!(!pauser.is_finished(), "pause must wait for in-flight");
        gate.leave();
        pauser.join().unwrap();
        let g3 = Arc::clone(&gate);
        let req = std::thread::spawn(move || g3.run(|| Ok(7)));
        std::thread::sleep(Duration::from_millis(50));
        assert!(!req.is_finished(), "new request must be held");
        gate.resume();
        assert_eq!(req.join().unwrap().unwrap(), 7);
    }

    #[test]
    fn missing_socket_is_an_error() {
        let mut p = Pause::default();
        assert_eq!(
            p.config_complete().unwrap_err().to_string(),
            "pause-control socket was not set"
        );
    }
}
