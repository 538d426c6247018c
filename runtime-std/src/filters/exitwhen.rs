//! The exitwhen filter: exit gracefully when an external event happens.
//! After the event new clients are refused, and the server exits once the
//! last client has disconnected.
//!
//! Parameters (each repeatable; any event triggers):
//! - `exit-when-file-created=FILE`, `exit-when-file-deleted=FILE`;
//! - `exit-when-pipe-closed=FD`: the read end of a pipe;
//! - `exit-when-process-exits=PID`;
//! - `exit-when-script=SCRIPT`: the event happened when it exits with 88;
//! - `exit-when-poll=SECS`: how often to check while idle (default 60).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nbdkit_core::backend::{
    Error, Filter, FilterHandle, NextOpener, OpenArgs, Peer, Result, ThreadModel,
};
use nbdkit_core::errno::Errno;

use super::util::{absolute_path, parse_unsigned};

#[derive(Debug, Clone)]
enum Event {
    FileCreated(PathBuf),
    FileDeleted(PathBuf),
    PipeClosed(i32),
    ProcessExits(i32),
    Script(String),
}

impl Event {
    fn happened(&self) -> bool {
        match self {
            Event::FileCreated(p) => p.exists(),
            Event::FileDeleted(p) => !p.exists(),
            Event::PipeClosed(fd) => {
                let mut pfd = libc::pollfd {
                    fd: *fd,
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: poll reads and writes only `pfd`, which we own.
                let r = unsafe { libc::poll(&mut pfd, 1, 0) };
                r > 0 && pfd.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0
            }
            Event::ProcessExits(pid) => {
                // No signal: only checks that the process exists.
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), None)
                    == Err(nix::errno::Errno::ESRCH)
            }
            Event::Script(s) => {
                match std::process::Command::new("/bin/sh")
                    .arg("-c")
                    .arg(s)
                    .stdin(std::process::Stdio::null())
                    .status()
                {
                    Ok(st) => match st.code() {
                        Some(88) => true,
                        Some(0) => false,
                        Some(c) => {
                            crate::log::error(
                                None,
                                &format!("exitwhen: exit-when-script: script exited with code {c}"),
                            );
                            false
                        }
                        None => false,
                    },
                    Err(e) => {
                        crate::log::error(None, &format!("exitwhen: exit-when-script: {e}"));
                        false
                    }
                }
            }
        }
    }
}

/// The exitwhen filter.
#[derive(Debug)]
pub struct ExitWhen {
    events: Vec<Event>,
    poll: Duration,
    state: Arc<State>,
}

#[derive(Debug, Default)]
struct State {
    events: std::sync::Mutex<Vec<Event>>,
    exiting: AtomicBool,
    open: AtomicU64,
}

impl Default for ExitWhen {
    fn default() -> Self {
        ExitWhen {
            events: Vec::new(),
            poll: Duration::from_secs(60),
            state: Arc::new(State::default()),
        }
    }
}

impl State {
    /// Check the events; once one happened, stop the server when idle.
    fn check(&self) {
        if !self.exiting.load(Ordering::SeqCst) {
            let events = self
                .events
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            if events.iter().any(Event::happened) {
                self.exiting.store(true, Ordering::SeqCst);
            }
        }
        if self.exiting.load(Ordering::SeqCst) && self.open.load(Ordering::SeqCst) == 0 {
            crate::server::request_shutdown();
        }
    }

    fn refuse(&self) -> Result<()> {
        self.check();
        if self.exiting.load(Ordering::SeqCst) {
            return Err(Error::msg(
                Errno::ESHUTDOWN,
                "exitwhen: nbdkit is exiting: rejecting new connection",
            ));
        }
        Ok(())
    }
}

struct Conn(Arc<State>);

impl Drop for Conn {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
        self.0.check();
    }
}

impl FilterHandle for Conn {}

impl Filter for ExitWhen {
    fn name(&self) -> &'static str {
        "exitwhen"
    }

    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit exitwhen filter")
    }

    fn config_help(&self) -> &'static str {
        "exit-when-file-created=FILENAME  Exit when file is created.\n\
         exit-when-file-deleted=FILENAME  Exit when file is deleted.\n\
         exit-when-pipe-closed=FD         Exit when pipe closed.\n\
         exit-when-process-exits=PID      Exit when process exits.\n\
         exit-when-script=\"SCRIPT\"        Exit when script exits with code 88.\n\
         exit-when-poll=SECS              Set the poll interval."
    }

    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        let ev = match key {
            "exit-when-file-created" => Event::FileCreated(absolute_path(value)?),
            "exit-when-file-deleted" => Event::FileDeleted(absolute_path(value)?),
            "exit-when-pipe-closed" | "exit-when-pipe-closes" => {
                Event::PipeClosed(parse_unsigned(key, value)? as i32)
            }
            "exit-when-process-exits" | "exit-when-pid-exits" => {
                Event::ProcessExits(parse_unsigned(key, value)? as i32)
            }
            "exit-when-script" => Event::Script(value.to_string()),
            "exit-when-poll" => {
                let secs = parse_unsigned(key, value)?;
                if secs == 0 {
                    return Err(Error::config("exit-when-poll cannot be zero"));
                }
                self.poll = Duration::from_secs(u64::from(secs));
                return Ok(true);
            }
            _ => return Ok(false),
        };
        self.events.push(ev);
        Ok(true)
    }

    fn config_complete(&mut self) -> Result<()> {
        *self.state.events.lock().unwrap_or_else(|p| p.into_inner()) = self.events.clone();
        Ok(())
    }

    // An event that happened before nbdkit started: exit at once, without
    // serving or running --run's command (nbdkit does the same).
    fn get_ready(&self, _thread_model: ThreadModel) -> Result<()> {
        if self.events.iter().any(Event::happened) {
            crate::server::exit_before_serving(0);
        }
        Ok(())
    }

    fn after_fork(&self) -> Result<()> {
        if self.events.is_empty() {
            return Ok(());
        }
        let state = self.state.clone();
        let poll = self.poll;
        std::thread::Builder::new()
            .name("exitwhen".into())
            .spawn(move || loop {
                state.check();
                std::thread::sleep(poll);
            })
            .map_err(|e| Error::config(format!("exitwhen: cannot start thread: {e}")))?;
        Ok(())
    }

    fn preconnect(&self, _readonly: bool, _peer: &Peer) -> Result<()> {
        self.state.refuse()
    }

    fn open(
        &self,
        next: &mut dyn NextOpener,
        args: &OpenArgs<'_>,
    ) -> Result<Box<dyn FilterHandle>> {
        self.state.open.fetch_add(1, Ordering::SeqCst);
        let conn = Conn(self.state.clone());
        next.open(args.readonly, args.export_name)?;
        Ok(Box::new(conn))
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn events_fire() {
        assert!(Event::FileDeleted("/nonexistent/x".into()).happened());
        assert!(!Event::FileCreated("/nonexistent/x".into()).happened());
        assert!(Event::Script("exit 88".into()).happened());
        assert!(!Event::Script("exit 0".into()).happened());
        assert!(!Event::ProcessExits(std::process::id() as i32).happened());
    }

    #[test]
    fn poll_param() {
        let mut f = ExitWhen::default();
        assert!(f.config("exit-when-poll", "0").is_err());
        assert!(f.config("exit-when-poll", "2").unwrap());
        assert!(!f.config("size", "1").unwrap());
    }
}
