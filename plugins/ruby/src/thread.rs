//! The Ruby thread: Ruby can only be called from the thread that started
//! it (or threads Ruby itself created), so one thread of ours starts the
//! interpreter and runs every piece of Ruby work; the server's threads
//! hand it jobs and wait.
//!
//! While a job runs, what it asks of the server (`nbdkit_set_error`,
//! `nbdkit_export_name`, `nbdkit_debug`, ... which belong to the calling
//! connection's thread) is sent back to the waiting caller and run there
//! ([`on_caller`]).

use core::any::Any;
use core::cell::RefCell;
use core::panic::AssertUnwindSafe;
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

type Work = Box<dyn FnOnce() + Send>;

/// What the Ruby thread sends the caller of a job.
enum Msg {
    /// Run this on the caller's thread.
    Run(Work),
    /// The job's result (`None` if it panicked).
    Done(Option<Box<dyn Any + Send>>),
}

struct Job {
    work: Box<dyn FnOnce() -> Box<dyn Any + Send> + Send>,
    caller: mpsc::Sender<Msg>,
}

struct Runner {
    jobs: Mutex<mpsc::Sender<Job>>,
    /// The process that started the thread (a forked child has no thread).
    pid: u32,
}

static RUNNER: OnceLock<Runner> = OnceLock::new();

thread_local! {
    /// On the Ruby thread: the caller of the job that runs.
    static CALLER: RefCell<Option<mpsc::Sender<Msg>>> = const { RefCell::new(None) };
}

/// Start the Ruby thread (once), running `init` first on it.
pub(crate) fn start(init: impl FnOnce() + Send + 'static) -> Result<(), String> {
    if RUNNER.get().is_some() {
        return Ok(());
    }
    let (tx, rx) = mpsc::channel::<Job>();
    std::thread::Builder::new()
        .name("ruby".into())
        // Ruby measures and uses the stack of the thread it runs on.
        .stack_size(64 << 20)
        .spawn(move || {
            init();
            for job in rx {
                CALLER.with(|c| *c.borrow_mut() = Some(job.caller.clone()));
                let r = std::panic::catch_unwind(AssertUnwindSafe(job.work)).ok();
                CALLER.with(|c| *c.borrow_mut() = None);
                let _ = job.caller.send(Msg::Done(r));
            }
        })
        .map_err(|e| format!("cannot start the Ruby thread: {e}"))?;
    let _ = RUNNER.set(Runner {
        jobs: Mutex::new(tx),
        pid: std::process::id(),
    });
    Ok(())
}

/// Whether the Ruby thread runs in this process.
pub(crate) fn running() -> bool {
    RUNNER.get().is_some_and(|r| r.pid == std::process::id())
}

/// Run `f` on the Ruby thread and wait for it, meanwhile running what it
/// sends back. `None` if the thread is not running or `f` panicked.
pub(crate) fn on_ruby<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> Option<R> {
    let r = RUNNER.get().filter(|r| r.pid == std::process::id())?;
    let (tx, rx) = mpsc::channel();
    let job = Job {
        work: Box::new(move || Box::new(f()) as Box<dyn Any + Send>),
        caller: tx,
    };
    r.jobs
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send(job)
        .ok()?;
    loop {
        match rx.recv().ok()? {
            Msg::Run(w) => w(),
            Msg::Done(r) => return r.and_then(|b| b.downcast::<R>().ok()).map(|b| *b),
        }
    }
}

/// From the Ruby thread, run `f` on the thread of the job's caller (or
/// here, outside a job) and return its result.
pub(crate) fn on_caller<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    let caller = CALLER.with(|c| c.borrow().clone());
    let Some(caller) = caller else { return f() };
    let (tx, rx) = mpsc::sync_channel(1);
    let work: Work = Box::new(move || {
        let _ = tx.send(f());
    });
    // The caller waits for this job, so it is there to run `work`.
    if caller.send(Msg::Run(work)).is_err() {
        unreachable_caller()
    }
    rx.recv().unwrap_or_else(|_| unreachable_caller())
}

fn unreachable_caller() -> ! {
    nbdkit_plugin_abi::error("ruby: internal error: the caller of a Ruby job went away");
    std::process::abort()
}
