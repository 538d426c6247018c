//! `eval`: a script plugin whose methods are shell snippets given on the
//! command line.
//!
//! Parameters:
//!
//! - `METHOD=SCRIPT` for any method of the sh plugin except `load` and
//!   `magic_config_key`: `SCRIPT` is written to `$tmpdir/METHOD` after a
//!   `#!/bin/sh` line and run as the sh plugin runs its script. Each
//!   method may be given once.
//! - `missing=SCRIPT`: runs for every method not given (default `exit 2`).
//! - any other `KEY=VALUE`: passed to the `config` method (or `missing`)
//!   given so far; a key nothing handles is an error.
//!
//! Unlike sh, a `can_*` method that is not given answers as nbdkit does
//! for a C plugin: `can_write` is true when `pwrite` is given, and so on.

use std::sync::Arc;

use nbdkit_core::backend::{Error, Exports, Handle, OpenArgs, Plugin, Result, ThreadModel};

use super::{new_tmpdir, unexpected_false, write_executable, Code, Kind, Scripts};

/// The methods a parameter may define.
const METHODS: &[&str] = &[
    "after_fork",
    "block_size",
    "cache",
    "can_cache",
    "can_extents",
    "can_fast_zero",
    "can_flush",
    "can_fua",
    "can_multi_conn",
    "can_trim",
    "can_write",
    "can_zero",
    "close",
    "config",
    "config_complete",
    "default_export",
    "dump_plugin",
    "export_description",
    "extents",
    "flush",
    "get_ready",
    "get_size",
    "is_rotational",
    "list_exports",
    "open",
    "pread",
    "preconnect",
    "pwrite",
    "thread_model",
    "trim",
    "unload",
    "zero",
];

/// `can_*` methods written for the user when only the method is given,
/// with their answer.
const SYNTHESIZED: &[(&str, &str, &str)] = &[
    ("can_write", "pwrite", "exit 0"),
    ("can_flush", "flush", "exit 0"),
    ("can_trim", "trim", "exit 0"),
    ("can_zero", "zero", "exit 0"),
    ("can_extents", "extents", "exit 0"),
    ("can_cache", "cache", "echo native"),
];

/// The eval plugin.
#[derive(Debug, Default)]
pub struct Eval {
    scripts: Option<Arc<Scripts>>,
    /// Methods given so far.
    defined: Vec<&'static str>,
    /// `missing=` was given.
    missing_given: bool,
}

impl Eval {
    /// The temporary directory and the (default) `missing` script,
    /// created on first use.
    fn scripts(&mut self) -> Result<Arc<Scripts>> {
        if let Some(s) = &self.scripts {
            return Ok(s.clone());
        }
        let tmpdir = new_tmpdir()?;
        write_executable(&tmpdir.path().join("missing"), b"#!/bin/sh\nexit 2\n")?;
        let s = Arc::new(Scripts::new(tmpdir, Kind::Eval));
        self.scripts = Some(s.clone());
        Ok(s)
    }

    /// Write a method's script and mark it as given.
    fn define(&mut self, method: &'static str, code: &str) -> Result<()> {
        let scripts = self.scripts()?;
        let mut content = b"#!/bin/sh\n".to_vec();
        content.extend_from_slice(code.as_bytes());
        content.push(b'\n');
        write_executable(&scripts.tmpdir.path().join(method), &content)?;
        if method == "missing" {
            self.missing_given = true;
        } else {
            self.defined.push(method);
        }
        Ok(())
    }

    fn ready(&self) -> Result<&Arc<Scripts>> {
        self.scripts
            .as_ref()
            .ok_or_else(|| Error::config("eval: not configured"))
    }
}

impl Plugin for Eval {
    fn name(&self) -> &'static str {
        "eval"
    }
    fn config_help(&self) -> &'static str {
        "get_size=' SCRIPT '\n\
         pread=' SCRIPT '\n\
         [etc]"
    }
    fn callbacks(&self) -> nbdkit_core::backend::Callbacks {
        super::CALLBACKS
    }
    fn dump_plugin(&self) -> Vec<(String, String)> {
        match &self.scripts {
            Some(s) => {
                s.dump_plugin();
                // nbdkit unloads the plugin after --dump-plugin.
                s.unload_on_drop();
            }
            None => println!("max_known_status={}", super::MAX_KNOWN_STATUS),
        }
        Vec::new()
    }
    fn max_thread_model(&self) -> ThreadModel {
        ThreadModel::Parallel
    }
    fn thread_model(&self) -> ThreadModel {
        match &self.scripts {
            Some(s) => s.chosen_thread_model(),
            None => ThreadModel::SerializeAllRequests,
        }
    }

    fn config(&mut self, key: &str, value: &str) -> Result<()> {
        let method = METHODS
            .iter()
            .chain(&["missing"])
            .find(|m| **m == key)
            .copied();
        if let Some(m) = method {
            let again = if m == "missing" {
                self.missing_given
            } else {
                self.defined.contains(&m)
            };
            if again {
                return Err(Error::config(format!(
                    "method {m} defined more than once on the command line"
                )));
            }
            return self.define(m, value);
        }
        let scripts = self.scripts()?;
        let (path, r) = scripts.call("config", &[key.as_ref(), value.as_ref()]);
        match r.code {
            Code::Ok => Ok(()),
            Code::Missing => Err(Error::config(format!(
                "{}: callback '{key}' is unknown, and there is no 'config' callback to handle it",
                path.display()
            ))),
            Code::Error => Err(super::script_error(&path, &r)),
            Code::False => Err(unexpected_false(&path, "config")),
        }
    }

    fn config_complete(&mut self) -> Result<()> {
        let scripts = self.scripts()?;
        for (can, method, code) in SYNTHESIZED {
            if !self.defined.contains(can) && self.defined.contains(method) {
                let mut content = b"#!/bin/sh\n".to_vec();
                content.extend_from_slice(code.as_bytes());
                content.push(b'\n');
                write_executable(&scripts.tmpdir.path().join(can), &content)?;
                self.defined.push(can);
            }
        }
        scripts.call_void("config_complete", &[])?;
        scripts.thread_model()?;
        Ok(())
    }

    super::forward_to_scripts!(ready);
}

impl Drop for Eval {
    fn drop(&mut self) {
        if let Some(s) = &self.scripts {
            s.dropped();
        }
    }
}
