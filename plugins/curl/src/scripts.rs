//! `header-script=` and `cookie-script=` (with their `-renew=`): shell
//! fragments run before a request when they have never run, or when
//! their renewal time has passed since they last ran. Their output is
//! shared by every handle of the pool; a handle picks it up when the
//! generation it last applied is older.

use core::sync::atomic::Ordering;
use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Instant;

use nbdkit_plugin_abi as abi;

use crate::config::Config;

/// What the scripts produced last.
#[derive(Default)]
pub(crate) struct Output {
    /// The header script's lines (CURLOPT_HTTPHEADER).
    pub(crate) headers: Vec<String>,
    /// The cookie script's first line (CURLOPT_COOKIE).
    pub(crate) cookie: Option<String>,
    /// Bumped each time either script runs.
    pub(crate) generation: u64,
}

/// When one script last ran, and how often.
#[derive(Default)]
struct Runs {
    last: Option<Instant>,
    iteration: u32,
}

impl Runs {
    /// Run the script `what` (header-script or cookie-script) when it is
    /// configured and due: its output.
    fn run_if_due(
        &mut self,
        cfg: &Config,
        what: &str,
        now: Instant,
    ) -> Result<Option<String>, String> {
        let (script, renew) = if what == "header-script" {
            (&cfg.header_script, cfg.header_script_renew)
        } else {
            (&cfg.cookie_script, cfg.cookie_script_renew)
        };
        let Some(script) = script else {
            return Ok(None);
        };
        if !due(self.last, renew, now) {
            return Ok(None);
        }
        let it = self.iteration;
        self.iteration += 1;
        let out = run(what, script, cfg.url(), it)?;
        self.last = Some(now);
        Ok(Some(out))
    }
}

#[derive(Default)]
struct State {
    out: Output,
    header: Runs,
    cookie: Runs,
}

static STATE: Mutex<Option<State>> = Mutex::new(None);

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Run one script with `$url` and `$iteration` set: its standard output,
/// or the first line of its standard error as the error.
fn run(what: &str, script: &str, url: &str, iteration: u32) -> Result<String, String> {
    let cmd = format!(
        "url={}\niteration={iteration}\n\n{script}",
        shell_quote(url)
    );
    abi::debug(&format!("curl: running {what}"));
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(&cmd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{what}: /bin/sh: {e}"))?;
    // Read standard error beside standard output so neither pipe fills.
    let mut err_pipe = child.stderr.take();
    let err_reader = std::thread::spawn(move || {
        let mut e = Vec::new();
        if let Some(p) = err_pipe.as_mut() {
            let _ = p.read_to_end(&mut e);
        }
        e
    });
    let mut out = Vec::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_end(&mut out);
    }
    let status = child.wait().map_err(|e| format!("{what}: wait: {e}"))?;
    let err = err_reader.join().unwrap_or_default();
    if !status.success() {
        let err = String::from_utf8_lossy(&err);
        return Err(match err.lines().next() {
            Some(l) => format!("{what} failed: {l}"),
            None => format!("{what} failed"),
        });
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

fn due(last: Option<Instant>, renew: u32, now: Instant) -> bool {
    match last {
        None => true,
        Some(t) => renew > 0 && now.duration_since(t).as_secs() >= u64::from(renew),
    }
}

/// Run the scripts that are due, then hand `apply` the current output when
/// its generation differs from `have` (the generation the handle has).
/// Returns the generation now current.
pub(crate) fn update(
    cfg: &Config,
    have: u64,
    apply: impl FnOnce(&Output) -> Result<(), String>,
) -> Result<u64, String> {
    if cfg.header_script.is_none() && cfg.cookie_script.is_none() {
        return Ok(have);
    }
    let mut guard = STATE.lock().unwrap_or_else(|e| e.into_inner());
    let st = guard.get_or_insert_with(State::default);
    let now = Instant::now();
    let verbose = crate::DEBUG_SCRIPTS.load(Ordering::Relaxed) != 0;
    if let Some(out) = st.header.run_if_due(cfg, "header-script", now)? {
        st.out.headers = out
            .lines()
            .map(str::trim_end)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect();
        abi::debug(&format!(
            "header-script returned {} header(s)",
            st.out.headers.len()
        ));
        st.out.generation += 1;
    }
    if let Some(out) = st.cookie.run_if_due(cfg, "cookie-script", now)? {
        st.out.cookie = out
            .lines()
            .next()
            .map(str::trim_end)
            .filter(|l| !l.is_empty())
            .map(str::to_string);
        abi::debug(&format!(
            "cookie-script returned {}cookies",
            if st.out.cookie.is_some() { "" } else { "no " }
        ));
        st.out.generation += 1;
    }
    if st.out.generation != have {
        if verbose {
            for h in &st.out.headers {
                abi::debug(&format!("header-script: setting header {h}"));
            }
            if let Some(c) = &st.out.cookie {
                abi::debug(&format!("cookie-script: setting cookie {c}"));
            }
        }
        apply(&st.out)?;
    }
    Ok(st.out.generation)
}

/// The header script's current lines (for a request that sets its own
/// header list).
pub(crate) fn current_headers() -> Vec<String> {
    let guard = STATE.lock().unwrap_or_else(|e| e.into_inner());
    guard
        .as_ref()
        .map(|s| s.out.headers.clone())
        .unwrap_or_default()
}
