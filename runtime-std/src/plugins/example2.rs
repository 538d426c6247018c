//! `example2`: nbdkit's second example plugin: serve a file read-only.
//!
//! Parameter: `file=FILENAME` (required; resolved with `realpath` when it
//! is read).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use nbdkit_core::backend::{
    Callbacks, Error, Flags, Handle, OpenArgs, Plugin, Result, ThreadModel,
};
use nbdkit_core::errno::Errno;
use nbdkit_core::plugins::unknown_param;

/// The example2 plugin.
#[derive(Debug, Default)]
pub struct Example2 {
    file: Option<PathBuf>,
}

/// An I/O error as an nbdkit error: `what: message`.
pub(crate) fn io_error(what: &str, e: &std::io::Error) -> Error {
    let errno = crate::os::errno::from_os(e.raw_os_error().unwrap_or(libc::EIO));
    let text = e.to_string();
    let text = text.split(" (os error").next().unwrap_or(&text);
    Error::msg(errno, format!("{what}: {text}"))
}

impl Plugin for Example2 {
    fn debug_flags(&self) -> &'static [&'static str] {
        &["extra"]
    }
    fn name(&self) -> &'static str {
        "example2"
    }
    fn config_help(&self) -> &'static str {
        "file=<FILENAME>     (required) The filename to serve."
    }
    fn callbacks(&self) -> Callbacks {
        Callbacks::UNLOAD
            | Callbacks::DUMP_PLUGIN
            | Callbacks::CONFIG
            | Callbacks::CONFIG_COMPLETE
            | Callbacks::CONFIG_HELP
            | Callbacks::OPEN
            | Callbacks::CLOSE
            | Callbacks::GET_SIZE
            | Callbacks::PREAD
    }
    fn dump_plugin(&self) -> Vec<(String, String)> {
        vec![("example2_extra".into(), "hello".into())]
    }
    fn max_thread_model(&self) -> ThreadModel {
        ThreadModel::SerializeAllRequests
    }
    fn config(&mut self, key: &str, value: &str) -> Result<()> {
        match key {
            "file" => {
                let p = std::fs::canonicalize(value)
                    .map_err(|e| io_error(&format!("realpath: {value}"), &e))?;
                self.file = Some(p);
                Ok(())
            }
            _ => Err(unknown_param(key)),
        }
    }
    fn config_complete(&mut self) -> Result<()> {
        if self.file.is_none() {
            return Err(Error::config(
                "you must supply the file=<FILENAME> parameter after the plugin name on the command line",
            ));
        }
        Ok(())
    }
    fn open(&self, _args: &OpenArgs<'_>) -> Result<Box<dyn Handle>> {
        let path = self.file.as_ref().ok_or_else(|| Error::new(Errno::EIO))?;
        let file = File::open(path).map_err(|e| io_error(&path.display().to_string(), &e))?;
        Ok(Box::new(Example2Handle { file }))
    }
}

struct Example2Handle {
    file: File,
}

impl Handle for Example2Handle {
    fn get_size(&self) -> Result<u64> {
        let size = self
            .file
            .metadata()
            .map(|m| m.len())
            .map_err(|e| io_error("stat", &e))?;
        // -D example2.extra=1: the developers' extra debugging.
        if nbdkit_core::debug::enabled("example2", "extra") {
            crate::log::debug(
                None,
                format_args!("extra debugging: statbuf.st_size = {size}"),
            );
        }
        Ok(size)
    }
    fn pread(&self, buf: &mut [u8], offset: u64, _flags: Flags) -> Result<()> {
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| io_error("pread", &e))
    }
}
