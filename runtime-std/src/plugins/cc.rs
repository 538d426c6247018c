//! The `cc` plugin (`man nbdkit-cc-plugin`): `nbdkit cc plugin.c [CC=...]
//! [CFLAGS=...] [EXTRA_CFLAGS=...] [PARAMS...]` compiles a C (or C++, or
//! any language whose compiler writes a shared object with `-o`) plugin at
//! start-up into a temporary shared object, loads it through nbdkit's C
//! ABI ([`crate::cabi`]) and hands every later call to it.
//!
//! As nbdkit does: the source (or `-` for stdin) comes first (a bare word
//! is taken as `script=`); `CC`, `CFLAGS` and `EXTRA_CFLAGS` choose the
//! compiler and flags; every other parameter goes to the compiled plugin's
//! `.config` after it is loaded; compiling happens in `config_complete`,
//! because the server asks for the thread model right after; the command
//! is run by
//! `/bin/sh` (`CC CFLAGS EXTRA_CFLAGS SOURCE -o OBJECT`, the first three
//! unquoted); the compiled plugin must use API version 2.
//!
//! Added here: the project's headers are put on the include path
//! ([`include_dir`]), since they are not in `/usr/include`; `CC`, `CFLAGS`
//! and `EXTRA_CFLAGS` may also come before the source (the manual's
//! `nbdkit cc CC=g++ source.cpp`, which nbdkit itself refuses); and a source
//! whose first line is `#!` (a script run as `#!/usr/sbin/nbdkit cc`) is
//! compiled with that line replaced by a `#line` directive (nbdkit hands
//! it to the compiler as it is, which refuses it); `-D NAME.FLAG=N` flags
//! reach the compiled plugin ([`cabi::load_compiled_plugin`]).

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nbdkit_core::backend::{
    Callbacks, Error, Exports, Handle, OpenArgs, Peer, Plugin, Result, ThreadModel,
};
use nbdkit_core::errno::Errno;

use super::mkfs::{check_status, os_error, shell_quote, TempDir};
use crate::cabi;
use crate::plugins::realpath::realpath;

/// The compiler used without `CC=`.
pub const DEFAULT_CC: &str = "gcc";
/// The flags used without `CFLAGS=`.
pub const DEFAULT_CFLAGS: &str = "-g -O2 -fPIC -shared";

/// Where `nbdkit-plugin.h` is looked for, in order: `../include` beside
/// the binary's directory (an installed `PREFIX/bin/nbdkit` with
/// `scripts/install-dev.sh PREFIX`), `../../include` (the binary in a
/// source tree's `target/PROFILE/`), then the `include/` of the source tree
/// this binary was built from. The first directory holding the header is
/// used; with none, the compiler's own search path decides.
pub fn include_dir() -> Option<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        candidates.push(dir.join("../include"));
        candidates.push(dir.join("../../include"));
    }
    candidates.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../include"));
    candidates
        .into_iter()
        .find(|d| d.join("nbdkit-plugin.h").is_file())
        .map(|d| std::fs::canonicalize(&d).unwrap_or(d))
}

/// The cc plugin: before `config_complete` only its own settings, after it
/// the compiled plugin, which everything is forwarded to.
pub struct Cc {
    /// The source to compile (absolute), once given.
    script: Option<PathBuf>,
    /// Holds the copy of an inline or `#!` source and the object file
    /// until the compiled plugin is loaded.
    tmp: Option<TempDir>,
    cc: String,
    cflags: String,
    extra_cflags: Option<String>,
    /// Parameters for the compiled plugin, in order.
    params: Vec<(String, String)>,
    inner: Option<Box<dyn Plugin>>,
}

impl Default for Cc {
    fn default() -> Cc {
        Cc {
            script: None,
            tmp: None,
            cc: DEFAULT_CC.to_string(),
            cflags: DEFAULT_CFLAGS.to_string(),
            extra_cflags: None,
            params: Vec::new(),
            inner: None,
        }
    }
}

/// The callbacks nbdkit's cc plugin has: all but `version`,
/// `description` and `load` (it forwards every one).
const CALLBACKS: Callbacks = Callbacks::LISTED.difference(
    Callbacks::VERSION
        .union(Callbacks::DESCRIPTION)
        .union(Callbacks::LOAD),
);

impl Cc {
    fn tmp(&mut self) -> Result<&Path> {
        if self.tmp.is_none() {
            self.tmp = Some(TempDir::new_in(&std::env::temp_dir(), "nbdkit-cc")?);
        }
        Ok(self
            .tmp
            .as_ref()
            .map(TempDir::path)
            .unwrap_or(Path::new("")))
    }

    /// `nbdkit cc -`: the source from stdin, into a temporary `.c` file.
    fn inline_script(&mut self) -> Result<PathBuf> {
        if !cabi::stdio_safe() {
            return Err(Error::config("inline script is incompatible with -s"));
        }
        let mut text = Vec::new();
        std::io::stdin()
            .lock()
            .read_to_end(&mut text)
            .map_err(|e| os_error("cc: reading the C program from stdin", &e))?;
        let path = self.tmp()?.join("inline.c");
        std::fs::write(&path, text).map_err(|e| os_error(path.display(), &e))?;
        Ok(path)
    }

    /// The file handed to the compiler, and extra flags for it: a source
    /// starting with `#!` is copied with that line replaced by a `#line`
    /// directive (so the compiler's messages still name the original file
    /// and its lines), and `#include "..."` still searches its directory.
    fn source_for_compiler(&mut self, script: &Path) -> Result<(PathBuf, String)> {
        let text = std::fs::read(script).map_err(|e| os_error(script.display(), &e))?;
        if !text.starts_with(b"#!") {
            return Ok((script.to_path_buf(), String::new()));
        }
        let rest = match text.iter().position(|&b| b == b'\n') {
            Some(nl) => &text[nl + 1..],
            None => &[][..],
        };
        let quoted = script
            .display()
            .to_string()
            .replace('\\', "\\\\")
            .replace('"', "\\\"");
        let mut copy = format!("#line 2 \"{quoted}\"\n").into_bytes();
        copy.extend_from_slice(rest);
        let name = script.file_name().unwrap_or("script.c".as_ref());
        let path = self.tmp()?.join(name);
        std::fs::write(&path, copy).map_err(|e| os_error(path.display(), &e))?;
        let dir = script.parent().unwrap_or(Path::new("/"));
        let flags = format!("-iquote {}", shell_quote(&dir.display().to_string()));
        Ok((path, flags))
    }

    /// Compile the source into a temporary shared object and load it.
    fn compile_and_load(&mut self, script: &Path) -> Result<Box<dyn Plugin>> {
        let (source, extra) = self.source_for_compiler(script)?;
        let object = self.tmp()?.join("plugin.so");
        let mut command = format!("{} {} ", self.cc, self.cflags);
        if let Some(e) = &self.extra_cflags {
            command.push_str(e);
            command.push(' ');
        }
        if let Some(inc) = include_dir() {
            command.push_str(&format!("-I {} ", shell_quote(&inc.display().to_string())));
        }
        if !extra.is_empty() {
            command.push_str(&extra);
            command.push(' ');
        }
        command.push_str(&format!(
            "{} -o {}",
            shell_quote(&source.display().to_string()),
            shell_quote(&object.display().to_string())
        ));
        crate::log::debug(None, format_args!("cc: {command}"));
        let mut cmd = Command::new("/bin/sh");
        // argv[0] "sh", as system(3) runs it: the shell's own messages
        // ("sh: 1: ...: not found") read as under nbdkit.
        cmd.arg0("sh").arg("-c").arg(&command);
        // The compiler's messages go to stderr, never to an NBD socket on
        // stdout (-s); it reads nothing.
        super::mkfs::quiet_stdio(&mut cmd)?;
        cmd.stdin(Stdio::null());
        let status = cmd
            .status()
            .map_err(|e| os_error("cc: cannot run /bin/sh", &e))?;
        check_status(&self.cc, status)?;
        let loaded = cabi::load_compiled_plugin(&object);
        // Nothing in the directory is needed once the object is mapped.
        self.tmp = None;
        loaded.map_err(|e| Error::msg(Errno::EINVAL, e.message))
    }

    /// The compiled plugin (the server calls nothing else before
    /// `config_complete` has loaded it).
    fn inner(&self) -> Result<&dyn Plugin> {
        self.inner
            .as_deref()
            .ok_or_else(|| Error::config("cc: no C program name (or \"-\") given"))
    }
}

impl Plugin for Cc {
    fn name(&self) -> &'static str {
        "cc"
    }
    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit C compiler plugin")
    }
    fn config_help(&self) -> &'static str {
        // (sic: nbdkit's own text.)
        "[script=]<FILENAME>   (required) The shell script to run.\n\
         CC=<CC>                          C compiler.\n\
         CFLAGS=<CFLAGS>                  C compiler flags.\n\
         EXTRA_CFLAGS=<CFLAGS>            Extra C compiler flags.\n\
         [other arguments may be used by the plugin that you load]"
    }
    fn magic_config_key(&self) -> Option<&'static str> {
        // nbdkit's cc has none (a bare first word is `script` by nbdkit's
        // general rule), which refuses its manual's own
        // `nbdkit cc CC=g++ source.cpp`; with the key that works too.
        Some("script")
    }
    fn callbacks(&self) -> Callbacks {
        CALLBACKS
    }
    fn dump_plugin(&self) -> Vec<(String, String)> {
        vec![
            ("CC".into(), DEFAULT_CC.into()),
            ("CFLAGS".into(), DEFAULT_CFLAGS.into()),
        ]
    }
    fn max_thread_model(&self) -> ThreadModel {
        ThreadModel::Parallel
    }
    fn thread_model(&self) -> ThreadModel {
        // Before compiling, nbdkit's cc reports the zeroed subplugin's
        // model (serialize_connections), as `--dump-plugin` shows.
        self.inner
            .as_ref()
            .map_or(ThreadModel::SerializeConnections, |p| p.thread_model())
    }

    fn config(&mut self, key: &str, value: &str) -> Result<()> {
        if self.script.is_none() && !matches!(key, "CC" | "CFLAGS" | "EXTRA_CFLAGS") {
            if key != "script" {
                return Err(Error::config(
                    "cc: the first parameter must be the C file or \"-\"",
                ));
            }
            let path = if value == "-" {
                self.inline_script()?
            } else {
                realpath(value)?
            };
            self.script = Some(path);
            return Ok(());
        }
        match key {
            "script" => Err(Error::config("cc: script parameter must appear only once")),
            "CC" => {
                self.cc = value.to_string();
                Ok(())
            }
            "CFLAGS" => {
                self.cflags = value.to_string();
                Ok(())
            }
            "EXTRA_CFLAGS" => {
                self.extra_cflags = Some(value.to_string());
                Ok(())
            }
            _ => {
                self.params.push((key.to_string(), value.to_string()));
                Ok(())
            }
        }
    }

    fn config_complete(&mut self) -> Result<()> {
        let Some(script) = self.script.clone() else {
            return Err(Error::config("cc: no C program name (or \"-\") given"));
        };
        let mut inner = self.compile_and_load(&script)?;
        let params = std::mem::take(&mut self.params);
        if let Some((k, _)) = params.first() {
            if !inner.callbacks().contains(Callbacks::CONFIG) {
                return Err(Error::config(format!("unknown parameter: {k}")));
            }
        }
        for (k, v) in &params {
            inner.config(k, v)?;
        }
        inner.config_complete()?;
        self.inner = Some(inner);
        Ok(())
    }

    fn get_ready(&self) -> Result<()> {
        self.inner()?.get_ready()
    }
    fn after_fork(&self) -> Result<()> {
        self.inner()?.after_fork()
    }
    fn cleanup(&self) {
        if let Some(p) = &self.inner {
            p.cleanup();
        }
    }
    fn preconnect(&self, readonly: bool, peer: &Peer) -> Result<()> {
        self.inner()?.preconnect(readonly, peer)
    }
    fn list_exports(&self, readonly: bool, is_tls: bool, exports: &mut Exports) -> Result<()> {
        self.inner()?.list_exports(readonly, is_tls, exports)
    }
    fn default_export(&self, readonly: bool, is_tls: bool) -> Result<Option<String>> {
        self.inner()?.default_export(readonly, is_tls)
    }
    fn open(&self, args: &OpenArgs<'_>) -> Result<Box<dyn Handle>> {
        self.inner()?.open(args)
    }
}
