//! The core's filters that need a little of the operating system (a clock
//! to sleep on, the file system to test for a trigger file, a random
//! seed, a shell to run scripts), given it here.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nbdkit_core::backend::Filter;
use nbdkit_core::filters::{
    error::ErrorFilter, evil::Evil, exportname::ExportName, retry::Retry,
    retry_request::RetryRequest,
};

/// Whether an `error-file` trigger exists. A relative name is taken from
/// the directory nbdkit started in (nbdkit makes it absolute when it reads
/// the parameter), so it still works once the server is in the background.
fn exists(path: &str) -> bool {
    std::fs::symlink_metadata(crate::process::from_startup_dir(path)).is_ok()
}

fn sleep(d: Duration) {
    std::thread::sleep(d);
}

fn debug(msg: std::fmt::Arguments<'_>) {
    crate::log::debug(None, msg);
}

/// A seed that differs between runs (nbdkit seeds from the time).
fn seed() -> u64 {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    t.as_secs() ^ u64::from(t.subsec_nanos()) << 32 ^ u64::from(std::process::id())
}

/// `error`, with `error-file` support.
pub(crate) fn error() -> Box<dyn Filter> {
    Box::new(ErrorFilter::new(Some(exists), seed()))
}

/// `retry`, sleeping on the system clock.
pub(crate) fn retry() -> Box<dyn Filter> {
    Box::new(Retry::new(sleep).with_debug(debug))
}

/// `retry-request`, sleeping on the system clock.
pub(crate) fn retry_request() -> Box<dyn Filter> {
    Box::new(RetryRequest::new(sleep).with_debug(debug))
}

/// `evil`, seeded from the time unless `evil-seed` is given.
pub(crate) fn evil() -> Box<dyn Filter> {
    Box::new(Evil::new(seed()))
}

/// Longest description read from an `exportdesc=script:` script (the NBD
/// limit on strings).
const MAX_DESCRIPTION: u64 = 4096;

/// Run an `exportdesc=script:` script with `sh -c`, `$name` set to the
/// export name in its environment. Its output, less one trailing newline,
/// is the description (empty when it printed nothing); a script that cannot
/// be started gives none. The exit status is not looked at, and the
/// script's standard error goes to ours (as nbdkit does).
fn run_desc_script(script: &str, name: &str) -> Option<String> {
    use std::io::Read;
    use std::process::{Command, Stdio};
    let mut child = match Command::new("/bin/sh")
        .arg("-c")
        .arg(script)
        .env("name", name)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            crate::log::error(None, &format!("exportname: cannot run script: {e}"));
            return None;
        }
    };
    let mut out = Vec::new();
    if let Some(stdout) = child.stdout.take() {
        let _ = stdout.take(MAX_DESCRIPTION).read_to_end(&mut out);
    }
    // Closing our end of the pipe first lets a script with more to say end.
    let _ = child.wait();
    if out.last() == Some(&b'\n') {
        out.pop();
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

/// `exportname`, with `exportdesc=script:` support.
pub(crate) fn exportname() -> Box<dyn Filter> {
    Box::new(ExportName::with_script_runner(run_desc_script))
}
