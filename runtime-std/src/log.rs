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
    apply_backend_trace();
}

/// Tell the core which per-layer call lines to print, and where.
fn apply_backend_trace() {
    nbdkit_core::debug::set_sink(core_sink);
    nbdkit_core::debug::set_verbose(verbose());
    nbdkit_core::debug::set_backend_trace(controlpath(), datapath());
}

/// The core's messages, printed with the name of the thread's connection
/// or worker.
fn core_sink(level: nbdkit_core::debug::Level, args: std::fmt::Arguments<'_>) {
    match level {
        nbdkit_core::debug::Level::Debug => debug(None, args),
        nbdkit_core::debug::Level::Error => error(None, &args.to_string()),
    }
}

thread_local! {
    /// The name this thread's messages carry (`memory[1]` for a
    /// connection, `memory.3` for a worker), as nbdkit names its threads.
    static CONTEXT: std::cell::RefCell<Option<std::sync::Arc<str>>> =
        const { std::cell::RefCell::new(None) };
}

/// The name of this thread's connection or worker, if it has one.
fn current_context() -> Option<std::sync::Arc<str>> {
    CONTEXT.with(|c| c.borrow().clone())
}

/// Run `f` with this thread's messages carrying `name` (only with `-v`:
/// otherwise just run it).
pub fn with_context<R>(name: &std::sync::Arc<str>, f: impl FnOnce() -> R) -> R {
    let _guard = ContextGuard::set(name);
    f()
}

/// While it lives, this thread's messages carry a name (see
/// [`with_context`]); the previous name comes back when it is dropped.
pub struct ContextGuard(Option<Option<std::sync::Arc<str>>>);

impl ContextGuard {
    /// Name this thread's messages `name` (only with `-v`).
    pub fn set(name: &std::sync::Arc<str>) -> ContextGuard {
        if !verbose() {
            return ContextGuard(None);
        }
        ContextGuard(Some(CONTEXT.with(|c| c.replace(Some(name.clone())))))
    }
}

impl Drop for ContextGuard {
    fn drop(&mut self) {
        if let Some(old) = self.0.take() {
            CONTEXT.with(|c| *c.borrow_mut() = old);
        }
    }
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
    apply_backend_trace();
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

/// Print `nbdkit: [CONTEXT: ]error: MESSAGE` (without a context, the name
/// of this thread's connection or worker, if any, as nbdkit does).
pub fn error(context: Option<&str>, msg: &str) {
    if context.is_none() {
        if let Some(c) = current_context() {
            return error(Some(&c), msg);
        }
    }
    match context {
        Some(c) => emit(format_args!("nbdkit: {c}: error: {msg}\n")),
        None => emit(format_args!("nbdkit: error: {msg}\n")),
    }
}

/// Print `nbdkit: [CONTEXT: ]debug: MESSAGE` when verbose (without a
/// context, the name of this thread's connection or worker, if any).
pub fn debug(context: Option<&str>, msg: std::fmt::Arguments<'_>) {
    if !verbose() {
        return;
    }
    if context.is_none() {
        if let Some(c) = current_context() {
            return debug(Some(&c), msg);
        }
    }
    match context {
        Some(c) => emit(format_args!("nbdkit: {c}: debug: {msg}\n")),
        None => emit(format_args!("nbdkit: debug: {msg}\n")),
    }
}
