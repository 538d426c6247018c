//! `example3`: nbdkit's third example plugin: every connection gets its
//! own temporary writable disk, thrown away when the client disconnects.
//!
//! Parameter: `size=SIZE` (default 100M). The disk is an unlinked file in
//! `$TMPDIR` (default `/var/tmp`).

use std::fs::File;
use std::os::unix::fs::FileExt;

use nbdkit_core::backend::{
    Callbacks, Error, Flags, Handle, OpenArgs, Plugin, Result, ThreadModel,
};
use nbdkit_core::plugins::{size_param, unknown_param};

use super::example2::io_error;

/// The example3 plugin.
#[derive(Debug)]
pub struct Example3 {
    size: u64,
}

impl Default for Example3 {
    fn default() -> Self {
        Example3 {
            size: 100 * 1024 * 1024,
        }
    }
}

impl Plugin for Example3 {
    fn name(&self) -> &'static str {
        "example3"
    }
    fn config_help(&self) -> &'static str {
        "size=<SIZE>  (optional) Size of the backing disk (default: 100M)"
    }
    fn callbacks(&self) -> Callbacks {
        Callbacks::DUMP_PLUGIN
            | Callbacks::CONFIG
            | Callbacks::CONFIG_HELP
            | Callbacks::OPEN
            | Callbacks::CLOSE
            | Callbacks::GET_SIZE
            | Callbacks::PREAD
            | Callbacks::PWRITE
            | Callbacks::FLUSH
    }
    fn dump_plugin(&self) -> Vec<(String, String)> {
        vec![("example3_extra".into(), "hello".into())]
    }
    fn max_thread_model(&self) -> ThreadModel {
        ThreadModel::SerializeAllRequests
    }
    fn config(&mut self, key: &str, value: &str) -> Result<()> {
        match key {
            "size" => {
                self.size = size_param(value)?;
                Ok(())
            }
            _ => Err(unknown_param(key)),
        }
    }
    fn open(&self, _args: &OpenArgs<'_>) -> Result<Box<dyn Handle>> {
        let template = crate::os::tmpfile::dir("/var/tmp").join("diskXXXXXX");
        let file = crate::os::tmpfile::unlinked(&template).map_err(|e| {
            Error::msg(
                crate::os::errno::from_os(e as i32),
                format!("mkstemp: {}: {}", template.display(), e.desc()),
            )
        })?;
        file.set_len(self.size)
            .map_err(|e| io_error("ftruncate", &e))?;
        Ok(Box::new(Example3Handle {
            file,
            size: self.size,
        }))
    }
}

struct Example3Handle {
    file: File,
    size: u64,
}

impl Handle for Example3Handle {
    fn get_size(&self) -> Result<u64> {
        Ok(self.size)
    }
    fn pread(&self, buf: &mut [u8], offset: u64, _flags: Flags) -> Result<()> {
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| io_error("pread", &e))
    }
    fn pwrite(&self, buf: &[u8], offset: u64, _flags: Flags) -> Result<()> {
        self.file
            .write_all_at(buf, offset)
            .map_err(|e| io_error("pwrite", &e))
    }
    fn flush(&self, _flags: Flags) -> Result<()> {
        self.file.sync_data().map_err(|e| io_error("fdatasync", &e))
    }
}
