//! `fua`: change how Force Unit Access is advertised and handled.
//!
//! Parameter: `fuamode=none|emulate|native|force|pass|discard` (default
//! `none`).

use alloc::boxed::Box;
use alloc::format;

use crate::backend::{
    Context, Error, Filter, FilterHandle, Flags, NextOpener, OpenArgs, Result, Support,
};
use crate::errno::Errno;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum FuaMode {
    #[default]
    None,
    Emulate,
    Native,
    Force,
    Pass,
    Discard,
}

/// The fua filter.
#[derive(Debug, Default)]
pub struct Fua {
    mode: FuaMode,
}

impl Filter for Fua {
    fn name(&self) -> &'static str {
        "fua"
    }
    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit fua filter")
    }
    fn config_help(&self) -> &'static str {
        "fuamode=<MODE>       One of 'none' (default), 'emulate', 'native',\n\
         \x20                      'force', 'pass'."
    }
    fn blocks(&self) -> bool {
        false
    }
    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        if key != "fuamode" {
            return Ok(false);
        }
        self.mode = match value {
            "none" => FuaMode::None,
            "emulate" => FuaMode::Emulate,
            "native" => FuaMode::Native,
            "force" => FuaMode::Force,
            "pass" => FuaMode::Pass,
            "discard" => FuaMode::Discard,
            _ => return Err(Error::config(format!("unknown fuamode '{value}'"))),
        };
        Ok(true)
    }
    fn open(
        &self,
        next: &mut dyn NextOpener,
        args: &OpenArgs<'_>,
    ) -> Result<Box<dyn FilterHandle>> {
        next.open(args.readonly, args.export_name)?;
        Ok(Box::new(FuaHandle(self.mode)))
    }
}

struct FuaHandle(FuaMode);

impl FuaHandle {
    /// The flags to pass down for a write-like call.
    fn flags(&self, flags: Flags) -> Flags {
        match self.0 {
            FuaMode::Force => flags.with(Flags::FUA),
            FuaMode::Discard => flags.without(Flags::FUA),
            _ => flags,
        }
    }
}

impl FilterHandle for FuaHandle {
    fn prepare(&self, next: &Context, _readonly: bool) -> Result<()> {
        match self.0 {
            FuaMode::Emulate if !next.can_flush()? => Err(Error::msg(
                Errno::EINVAL,
                "fuamode 'emulate' requires plugin flush support",
            )),
            // nbdkit names 'force' for both modes.
            FuaMode::Native | FuaMode::Force if next.can_fua()? == Support::None => Err(
                Error::msg(Errno::EINVAL, "fuamode 'force' requires plugin fua support"),
            ),
            _ => Ok(()),
        }
    }
    fn can_flush(&self, next: &Context) -> Result<bool> {
        Ok(match self.0 {
            FuaMode::Force | FuaMode::Discard => true,
            _ => next.can_flush()?,
        })
    }
    fn can_fua(&self, next: &Context) -> Result<Support> {
        Ok(match self.0 {
            FuaMode::None => Support::None,
            FuaMode::Emulate => Support::Emulate,
            FuaMode::Native | FuaMode::Force | FuaMode::Discard => Support::Native,
            FuaMode::Pass if next.can_fua()? == Support::None => Support::None,
            FuaMode::Pass => Support::Native,
        })
    }
    fn pwrite(&self, next: &Context, buf: &[u8], offset: u64, flags: Flags) -> Result<()> {
        next.pwrite(buf, offset, self.flags(flags))
    }
    fn trim(&self, next: &Context, count: u64, offset: u64, flags: Flags) -> Result<()> {
        next.trim(count, offset, self.flags(flags))
    }
    fn zero(&self, next: &Context, count: u64, offset: u64, flags: Flags) -> Result<()> {
        next.zero(count, offset, self.flags(flags))
    }
    fn flush(&self, next: &Context, flags: Flags) -> Result<()> {
        match self.0 {
            FuaMode::Force | FuaMode::Discard => Ok(()),
            _ => next.flush(flags),
        }
    }
}
