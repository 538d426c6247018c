//! `multi-conn`: change whether multi-conn is advertised.
//!
//! Parameters: `multi-conn-mode=auto|emulate|plugin|disable|unsafe`
//! (default `auto`), `multi-conn-track-dirty=conn|fast|off`,
//! `multi-conn-exportname=BOOL`.
//!
//! `emulate` (replicating a flush to every connection) is not supported
//! yet: a connection's layers below cannot be reached from another
//! connection. `auto` therefore advertises multi-conn only when the plugin
//! does (nbdkit would emulate it otherwise).

use alloc::boxed::Box;
use alloc::format;

use super::params::bool_param;
use crate::backend::{Context, Error, Filter, FilterHandle, NextOpener, OpenArgs, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Mode {
    #[default]
    Auto,
    Plugin,
    Disable,
    Unsafe,
}

/// The multi-conn filter.
#[derive(Debug, Default)]
pub struct MultiConn {
    mode: Mode,
}

impl Filter for MultiConn {
    fn name(&self) -> &'static str {
        "multi-conn"
    }
    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit multi-conn filter")
    }
    fn config_help(&self) -> &'static str {
        "multi-conn-mode=<MODE>          'auto' (default), 'emulate', 'plugin',\n\
         \x20                               'disable', or 'unsafe'.\n\
         multi-conn-track-dirty=<LEVEL>  'conn' (default), 'fast', or 'off'.\n\
         multi-conn-exportname=<BOOL>    true to limit emulation by export name."
    }
    fn blocks(&self) -> bool {
        false
    }
    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            "multi-conn-mode" => {
                self.mode = match value {
                    "auto" => Mode::Auto,
                    "plugin" => Mode::Plugin,
                    "disable" => Mode::Disable,
                    "unsafe" => Mode::Unsafe,
                    "emulate" => {
                        return Err(Error::config(
                            "multi-conn-mode=emulate is not supported yet",
                        ))
                    }
                    _ => return Err(Error::config(format!("unknown multi-conn mode '{value}'"))),
                }
            }
            "multi-conn-track-dirty" => match value {
                "conn" | "connection" | "fast" | "off" => {}
                _ => {
                    return Err(Error::config(format!(
                        "unknown multi-conn track-dirty setting '{value}'"
                    )))
                }
            },
            "multi-conn-exportname" | "multi-conn-export-name" => {
                bool_param(value)?;
            }
            _ => return Ok(false),
        }
        Ok(true)
    }
    fn open(
        &self,
        next: &mut dyn NextOpener,
        args: &OpenArgs<'_>,
    ) -> Result<Box<dyn FilterHandle>> {
        next.open(args.readonly, args.export_name)?;
        Ok(Box::new(MultiConnHandle { mode: self.mode }))
    }
}

struct MultiConnHandle {
    mode: Mode,
}

impl FilterHandle for MultiConnHandle {
    fn can_multi_conn(&self, next: &Context) -> Result<bool> {
        Ok(match self.mode {
            // The server never advertises multi-conn when connections
            // are serialized, so auto is plugin here.
            Mode::Auto | Mode::Plugin => next.caps().can_multi_conn,
            Mode::Disable => false,
            Mode::Unsafe => true,
        })
    }
}
