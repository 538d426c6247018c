//! nbdkit's messages: `nbdkit: error: ...` for errors, `nbdkit: debug: ...`
//! for debug messages (only with `-v`), to stderr or nowhere (`--log`).

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

static VERBOSE: AtomicBool = AtomicBool::new(false);
static DATAPATH: AtomicBool = AtomicBool::new(true);
static CONTROLPATH: AtomicBool = AtomicBool::new(true);

/// Where messages go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogTo {
    /// Standard error (the default in the foreground).
    Stderr,
    /// Nowhere.
    Null,
    /// The system log.
    Syslog,
}

static DEST: AtomicU8 = AtomicU8::new(0);

/// Set `-v`.
pub fn set_verbose(v: bool) {
    VERBOSE.store(v, Ordering::Relaxed);
}

/// Whether `-v` was given.
pub fn verbose() -> bool {
    VERBOSE.load(Ordering::Relaxed)
}

/// `-D nbdkit.backend.datapath=N` / `controlpath=N`.
pub fn set_backend_debug(datapath: Option<bool>, controlpath: Option<bool>) {
    if let Some(d) = datapath {
        DATAPATH.store(d, Ordering::Relaxed);
    }
    if let Some(c) = controlpath {
        CONTROLPATH.store(c, Ordering::Relaxed);
    }
}

/// Whether per-request debug messages are printed.
pub fn datapath() -> bool {
    verbose() && DATAPATH.load(Ordering::Relaxed)
}

/// Whether control-path debug messages are printed.
pub fn controlpath() -> bool {
    verbose() && CONTROLPATH.load(Ordering::Relaxed)
}

/// Set `--log`.
pub fn set_destination(to: LogTo) {
    DEST.store(
        match to {
            LogTo::Stderr => 0,
            LogTo::Null => 1,
            LogTo::Syslog => 2,
        },
        Ordering::Relaxed,
    );
}

fn emit(line: std::fmt::Arguments<'_>) {
    match DEST.load(Ordering::Relaxed) {
        1 => return,
        2 => {
            let text = line.to_string();
            let text = text.trim_end().trim_start_matches("nbdkit: ");
            crate::process::syslog(libc::LOG_ERR, text);
            return;
        }
        _ => {}
    }
    let mut e = std::io::stderr().lock();
    let _ = e.write_fmt(line);
}

/// Print `nbdkit: [CONTEXT: ]error: MESSAGE`.
pub fn error(context: Option<&str>, msg: &str) {
    match context {
        Some(c) => emit(format_args!("nbdkit: {c}: error: {msg}\n")),
        None => emit(format_args!("nbdkit: error: {msg}\n")),
    }
}

/// Print `nbdkit: [CONTEXT: ]debug: MESSAGE` when verbose.
pub fn debug(context: Option<&str>, msg: std::fmt::Arguments<'_>) {
    if !verbose() {
        return;
    }
    match context {
        Some(c) => emit(format_args!("nbdkit: {c}: debug: {msg}\n")),
        None => emit(format_args!("nbdkit: debug: {msg}\n")),
    }
}
