//! A configured script plugin: which executable runs each method, the
//! plugin-wide methods, and inline scripts.

use super::*;
use std::ffi::{OsStr, OsString};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use nbdkit_core::backend::{Error, Exports, Handle, OpenArgs, Result, ThreadModel};
use nbdkit_core::errno::Errno;

use crate::log;

/// Which executable serves a method.
#[derive(Debug)]
pub(crate) enum Kind {
    /// `sh`: one script for every method.
    Sh(PathBuf),
    /// `eval`: `$tmpdir/METHOD` for each method given (its file exists),
    /// `$tmpdir/missing` for the others.
    Eval,
}

/// A configured script plugin: what runs each method, and `$tmpdir`.
#[derive(Debug)]
pub(crate) struct Scripts {
    pub(crate) tmpdir: TmpDir,
    pub(crate) kind: Kind,
    pub(super) thread_model: OnceLock<ThreadModel>,
    /// The sh script names nbdkit as its interpreter: run it with /bin/sh.
    pub(super) via_shell: OnceLock<bool>,
    pub(super) unloaded: AtomicBool,
    pub(super) unload_on_drop: AtomicBool,
}

impl Scripts {
    pub(crate) fn new(tmpdir: TmpDir, kind: Kind) -> Scripts {
        Scripts {
            tmpdir,
            kind,
            thread_model: OnceLock::new(),
            via_shell: OnceLock::new(),
            unloaded: AtomicBool::new(false),
            unload_on_drop: AtomicBool::new(false),
        }
    }

    /// The executable for `method`.
    pub(crate) fn path(&self, method: &str) -> PathBuf {
        match &self.kind {
            Kind::Sh(p) => p.clone(),
            Kind::Eval => {
                let p = self.tmpdir.path().join(method);
                if p.is_file() {
                    p
                } else {
                    self.tmpdir.path().join("missing")
                }
            }
        }
    }

    /// Run `method` with `args`; returns the executable's path (for
    /// messages) and what it did.
    pub(super) fn call_with(
        &self,
        method: &str,
        args: &[&OsStr],
        input: &[u8],
        buf: Option<&mut [u8]>,
    ) -> (PathBuf, Reply) {
        let path = self.path(method);
        let mut argv: Vec<&OsStr> = Vec::with_capacity(args.len() + 1);
        argv.push(OsStr::new(method));
        argv.extend_from_slice(args);
        let via_shell = match &self.kind {
            Kind::Sh(p) => *self.via_shell.get_or_init(|| shebang_is_nbdkit(p)),
            Kind::Eval => false,
        };
        let reply = run(&path, via_shell, &argv, self.tmpdir.path(), input, buf);
        (path, reply)
    }

    pub(crate) fn call(&self, method: &str, args: &[&OsStr]) -> (PathBuf, Reply) {
        self.call_with(method, args, &[], None)
    }

    /// A method whose only result is success: missing is success too.
    pub(crate) fn call_void(&self, method: &str, args: &[&OsStr]) -> Result<()> {
        let (path, r) = self.call(method, args);
        match r.code {
            Code::Ok | Code::Missing => Ok(()),
            Code::Error => Err(script_error(&path, &r)),
            Code::False => Err(unexpected_false(&path, method)),
        }
    }

    /// A method that prints a line of text; `None` when missing.
    pub(super) fn call_text(
        &self,
        method: &str,
        args: &[&OsStr],
    ) -> Result<Option<(PathBuf, String)>> {
        let (path, r) = self.call(method, args);
        match r.code {
            Code::Ok => {
                let t = r.text();
                Ok(Some((path, t)))
            }
            Code::Missing => Ok(None),
            Code::Error => Err(script_error(&path, &r)),
            Code::False => Err(unexpected_false(&path, method)),
        }
    }

    /// `thread_model`: the script's choice, asked once. Unrecognised
    /// output and a missing method give `serialize_all_requests`.
    pub(crate) fn thread_model(&self) -> Result<ThreadModel> {
        if let Some(m) = self.thread_model.get() {
            return Ok(*m);
        }
        let model = match self.call_text("thread_model", &[])? {
            Some((path, t)) => ThreadModel::from_name(&t).unwrap_or_else(|| {
                log::debug(
                    None,
                    format_args!(
                        "{}: unrecognized thread model: {t}, using serialize_all_requests",
                        path.display()
                    ),
                );
                ThreadModel::SerializeAllRequests
            }),
            None => ThreadModel::SerializeAllRequests,
        };
        Ok(*self.thread_model.get_or_init(|| model))
    }

    /// The chosen thread model, for `Plugin::thread_model` (errors were
    /// already reported by `config_complete`).
    pub(crate) fn chosen_thread_model(&self) -> ThreadModel {
        self.thread_model().unwrap_or_else(|e| {
            log::error(None, &e.to_string());
            ThreadModel::SerializeAllRequests
        })
    }

    /// `dump_plugin`: `max_known_status=` and whatever the script prints,
    /// straight to stdout.
    pub(crate) fn dump_plugin(&self) {
        let (path, r) = self.call("dump_plugin", &[]);
        let mut o = io::stdout().lock();
        let _ = writeln!(o, "max_known_status={MAX_KNOWN_STATUS}");
        match r.code {
            Code::Ok => {
                let _ = o.write_all(&r.out);
            }
            Code::Missing => {}
            Code::Error => log::error(None, &script_error(&path, &r).to_string()),
            Code::False => log::error(None, &unexpected_false(&path, "dump_plugin").to_string()),
        }
        let _ = o.flush();
    }

    pub(crate) fn preconnect(&self, readonly: bool) -> Result<()> {
        self.call_void("preconnect", &[tf(readonly)])
    }

    pub(crate) fn list_exports(
        &self,
        readonly: bool,
        is_tls: bool,
        exports: &mut Exports,
    ) -> Result<()> {
        let (path, r) = self.call("list_exports", &[tf(readonly), tf(is_tls)]);
        match r.code {
            Code::Ok => {
                for (name, desc) in parse_exports(&r.out) {
                    exports.add(&name, desc.as_deref())?;
                }
                Ok(())
            }
            Code::Missing => {
                exports.use_default = true;
                Ok(())
            }
            Code::Error => Err(script_error(&path, &r)),
            Code::False => Err(unexpected_false(&path, "list_exports")),
        }
    }

    pub(crate) fn default_export(&self, readonly: bool, is_tls: bool) -> Result<Option<String>> {
        let (path, r) = self.call("default_export", &[tf(readonly), tf(is_tls)]);
        match r.code {
            Code::Ok => Ok(Some(parse_default_export(&r.out))),
            Code::Missing => Ok(Some(String::new())),
            Code::Error => Err(script_error(&path, &r)),
            Code::False => Err(unexpected_false(&path, "default_export")),
        }
    }

    /// `open`: the handle the script prints (`""` when it has no open).
    pub(crate) fn open(self: &Arc<Self>, args: &OpenArgs<'_>) -> Result<Box<dyn Handle>> {
        let (path, r) = self.call(
            "open",
            &[
                tf(args.readonly),
                OsStr::new(args.export_name),
                tf(args.is_tls),
            ],
        );
        let handle = match r.code {
            Code::Ok => {
                let out = r.out.strip_suffix(b"\n").unwrap_or(&r.out);
                OsString::from_vec(out.to_vec())
            }
            Code::Missing => OsString::new(),
            Code::Error => return Err(script_error(&path, &r)),
            Code::False => return Err(unexpected_false(&path, "open")),
        };
        Ok(Box::new(ScriptHandle {
            scripts: self.clone(),
            handle,
            can_flush: OnceLock::new(),
            can_zero: OnceLock::new(),
        }))
    }

    /// Run `unload` when the plugin is dropped without `cleanup` (after
    /// `--dump-plugin`). A configuration error exits without it, as in
    /// nbdkit.
    pub(crate) fn unload_on_drop(&self) {
        self.unload_on_drop.store(true, Ordering::Release);
    }

    /// The plugin is being dropped.
    pub(crate) fn dropped(&self) {
        if self.unload_on_drop.load(Ordering::Acquire) {
            self.unload();
        }
    }

    /// `unload`, once; its errors are ignored.
    pub(crate) fn unload(&self) {
        if !self.unloaded.swap(true, Ordering::AcqRel) {
            let _ = self.call("unload", &[]);
            // As nbdkit, remove $tmpdir now: the process may exit without
            // dropping the plugin.
            let _ = std::fs::remove_dir_all(self.tmpdir.path());
        }
    }
}

/// Read an inline script from stdin into `dir/inline-script.sh`.
pub(crate) fn save_inline_script(dir: &Path) -> Result<PathBuf> {
    let path = dir.join("inline-script.sh");
    let mut script = Vec::new();
    io::stdin()
        .lock()
        .take(MAX_INLINE_SCRIPT + 1)
        .read_to_end(&mut script)
        .map_err(|e| Error::msg(Errno::EIO, format!("reading script from stdin: {e}")))?;
    if script.len() as u64 > MAX_INLINE_SCRIPT {
        return Err(Error::config("script on stdin is too large"));
    }
    write_executable(&path, &script)?;
    Ok(path)
}

/// Create `path` with mode 0700 holding `content`.
pub(crate) fn write_executable(path: &Path, content: &[u8]) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o700)
        .open(path)
        .map_err(|e| Error::msg(Errno::EIO, format!("{}: {e}", path.display())))?;
    f.write_all(content)
        .map_err(|e| Error::msg(Errno::EIO, format!("{}: {e}", path.display())))
}
