//! `data`: serve data given on the command line, as a writable RAM disk.
//!
//! Parameters: exactly one of `[data=]EXPR` (the format language below),
//! `raw=BYTES` or `base64=TEXT`; `size=SIZE` (truncate or zero-extend the
//! data; default the size of the data); `allocator=sparse` (default) or
//! `allocator=malloc`. Any other `KEY=VALUE` defines a variable for
//! `$KEY` in the expression (it is an error without `data=`).
//!
//! The language (nbdkit-data-plugin(1), "DATA FORMAT"): bytes in C
//! notation (`0x55`, `010`, `17`), `"strings"` with C escapes,
//! `le16:`/`be16:`/`le32:`/`be32:`/`le64:`/`be64:` words, `@OFFSET`,
//! `@+N`, `@-N`, `@^ALIGNMENT`, `<FILE`, `<(SHELL SCRIPT)`, `( ... )`
//! groups, `EXPR*N` repeats, `EXPR[N:M]` slices, `EXPR -> \NAME`
//! assignments and `\NAME` references (scoped to the enclosing group),
//! `$VAR` (a parameter or environment variable, parsed as a group), and
//! `#` comments. Writes past the current size extend it, later writes
//! overwrite earlier ones, and a group overwrites its whole extent
//! (including its zeroes) where it lands.
//!
//! Evaluation is bounded: bytes past `size=` are never stored, repeats
//! stop once they pass it, and the total work (bytes copied plus steps
//! taken) is capped at [`MAX_WORK`], beyond which the expression is
//! refused rather than exhausting memory.
//!
//! Files: [`syntax`] (the tree and parser), [`optimize`] (nbdkit's
//! simplifications and `-D data.AST=1`), [`eval`] (evaluation into an
//! [`image::Image`]), `image` (the sparse image served), this file the
//! plugin.

use std::sync::{Arc, RwLock};

use nbdkit_core::backend::{Callbacks, Error, Handle, OpenArgs, Plugin, Result};
use nbdkit_core::errno::Errno;
use nbdkit_core::plugins::memory::{MemoryHandle, Store};
use nbdkit_core::plugins::size_param;

use super::info::decode_base64;

mod image;
use image::Image;

/// The most work (bytes stored or copied, plus evaluation steps) an
/// expression may take.
pub const MAX_WORK: u64 = 1 << 30;

/// How deeply groups and variables may nest.
const MAX_DEPTH: usize = 100;

/// The largest size nbdkit serves.
const MAX_SIZE: u64 = i64::MAX as u64;

mod eval;
mod optimize;
mod syntax;
#[cfg(test)]
mod tests;

use eval::*;
use optimize::*;
use syntax::*;

/// Which of `data=`, `raw=`, `base64=` was given.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    Data(String),
    Raw(String),
    Base64(String),
}

/// The data plugin.
#[derive(Default)]
pub struct Data {
    source: Option<Source>,
    size: Option<u64>,
    malloc: bool,
    params: Vec<(String, String)>,
    store: Option<(Arc<Store>, u64)>,
}

impl std::fmt::Debug for Data {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Data")
            .field("source", &self.source)
            .field("size", &self.size)
            .finish()
    }
}

struct ParamsAndEnv<'a>(&'a [(String, String)]);

impl Vars for ParamsAndEnv<'_> {
    fn get(&self, name: &str) -> Option<String> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .or_else(|| std::env::var(name).ok())
    }
}

impl Plugin for Data {
    // data.dir (nbdkit's sparse array directory) has no counterpart: this
    // plugin keeps its own image, and -D data.dir=1 gets nbdkit's warning.
    fn debug_flags(&self) -> &'static [&'static str] {
        &["AST"]
    }
    fn name(&self) -> &'static str {
        "data"
    }
    fn config_help(&self) -> &'static str {
        "data|raw|base64=...     Specify disk data on the command line\n\
         size=<SIZE>             Size of the backing disk\n\
         allocator=sparse|...    Backend allocation strategy"
    }
    fn magic_config_key(&self) -> Option<&'static str> {
        Some("data")
    }
    fn callbacks(&self) -> Callbacks {
        Callbacks::UNLOAD
            | Callbacks::DUMP_PLUGIN
            | Callbacks::CONFIG
            | Callbacks::CONFIG_COMPLETE
            | Callbacks::CONFIG_HELP
            | Callbacks::GET_READY
            | nbdkit_core::plugins::memory::DISK_CALLBACKS
    }
    fn dump_plugin(&self) -> Vec<(String, String)> {
        vec![
            ("data_base64".into(), "yes".into()),
            ("mlock".into(), "no".into()),
            ("zstd".into(), "no".into()),
        ]
    }
    fn blocks(&self) -> bool {
        false
    }
    fn config(&mut self, key: &str, value: &str) -> Result<()> {
        let source = match key {
            "size" => {
                self.size = Some(size_param(value)?);
                return Ok(());
            }
            "allocator" => {
                let name = value.split(',').next().unwrap_or("");
                match name {
                    "sparse" | "malloc" => {}
                    "zstd" => return Err(err(
                        "allocator=zstd is not supported by this nbdkit (no zstd support built in)",
                    )),
                    _ => return Err(err(format!("unknown allocator \"{value}\""))),
                }
                if value.contains(',') {
                    return Err(err(format!(
                        "allocator parameters are not supported yet: \"{value}\""
                    )));
                }
                self.malloc = name == "malloc";
                return Ok(());
            }
            "raw" => Source::Raw(value.into()),
            "base64" => Source::Base64(value.into()),
            "data" => Source::Data(value.into()),
            _ => {
                self.params.push((key.into(), value.into()));
                return Ok(());
            }
        };
        if self.source.is_some() {
            return Err(err(
                "raw|base64|data parameter must be specified exactly once",
            ));
        }
        self.source = Some(source);
        Ok(())
    }
    fn config_complete(&mut self) -> Result<()> {
        let Some(source) = &self.source else {
            return Err(err("raw|base64|data parameter was not specified"));
        };
        if !matches!(source, Source::Data(_)) && !self.params.is_empty() {
            return Err(err("extra parameters passed and not using data='...'"));
        }
        // nbdkit evaluates the data in get_ready; it happens here so the
        // result can be kept, at the same point of start-up. Pages are
        // kept whole, so that block status sees the last one as nbdkit
        // does.
        crate::log::debug(
            None,
            format_args!(
                "allocator: {}",
                if self.malloc { "malloc" } else { "sparse" }
            ),
        );
        let limit = match self.size {
            Some(s) => s.div_ceil(image::PAGE).saturating_mul(image::PAGE),
            None => MAX_SIZE,
        };
        let (img, data_size) = match source {
            Source::Raw(r) => {
                let mut img = Image::default();
                img.write(0, r.as_bytes(), limit);
                (img, r.len() as u64)
            }
            Source::Base64(t) => {
                let bytes =
                    decode_base64(t).ok_or_else(|| err("base64: Base64 decoding error."))?;
                let mut img = Image::default();
                img.write(0, &bytes, limit);
                (img, bytes.len() as u64)
            }
            Source::Data(d) => evaluate(d, &ParamsAndEnv(&self.params), limit)?,
        };
        crate::log::debug(None, format_args!("implicit data size: {data_size}"));
        let size = self.size.unwrap_or(data_size);
        crate::log::debug(None, format_args!("final size: {size}"));
        let store = if self.malloc {
            let store = Store::flat(size)?;
            let mut buf = vec![0u8; (1 << 20).min(size) as usize];
            let mut pos = 0u64;
            while pos < size {
                let n = (size - pos).min(buf.len() as u64) as usize;
                img.read(&mut buf[..n], pos);
                store.write(&buf[..n], pos);
                pos += n as u64;
            }
            store
        } else {
            Store::Other(Box::new(Served(RwLock::new(img))))
        };
        self.store = Some((Arc::new(store), size));
        Ok(())
    }
    fn open(&self, _args: &OpenArgs<'_>) -> Result<Box<dyn Handle>> {
        let (store, size) = self
            .store
            .clone()
            .ok_or_else(|| Error::msg(Errno::EIO, "data: not configured"))?;
        Ok(Box::new(MemoryHandle::new(store, size)))
    }
}
