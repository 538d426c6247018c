//! `nozero`: hide or change the zero support of the layer below.
//!
//! Parameters: `zeromode=none|emulate|notrim|plugin` (default `none`),
//! `fastzeromode=default|none|slow|ignore` (default `default`).

use alloc::boxed::Box;
use alloc::format;

use crate::backend::{
    Context, Error, Filter, FilterHandle, Flags, NextOpener, OpenArgs, Result, Support,
};
use crate::errno::Errno;

/// A page of zeroes for writing zeroes without allocating.
#[cfg(feature = "std")]
static ZEROES: [u8; 65536] = [0; 65536];

/// Zeroes to write `count` bytes from: a static page.
#[cfg(feature = "std")]
fn zeroes(_count: u64) -> &'static [u8] {
    &ZEROES
}

/// Zeroes to write `count` bytes from: a short buffer on the heap, so that
/// a device's flash holds no page of zeroes.
#[cfg(not(feature = "std"))]
fn zeroes(count: u64) -> alloc::vec::Vec<u8> {
    alloc::vec![0; count.min(crate::backend::EMULATION_CHUNK) as usize]
}

/// Zero `count` bytes at `offset` by writing zeroes to `next`.
pub(crate) fn write_zeroes(next: &Context, count: u64, offset: u64, flags: Flags) -> Result<()> {
    let flags = flags.without(Flags::MAY_TRIM).without(Flags::FAST_ZERO);
    let zeroes = zeroes(count);
    let mut done = 0;
    while done < count {
        let n = (count - done).min(zeroes.len() as u64);
        // FUA only on the last piece.
        let f = if done + n < count {
            flags.without(Flags::FUA)
        } else {
            flags
        };
        next.pwrite(&zeroes[..n as usize], offset + done, f)?;
        done += n;
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum ZeroMode {
    #[default]
    None,
    Emulate,
    NoTrim,
    Plugin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum FastZeroMode {
    #[default]
    Default,
    None,
    Slow,
    Ignore,
}

/// The nozero filter.
#[derive(Debug, Default)]
pub struct NoZero {
    zeromode: ZeroMode,
    fastzeromode: FastZeroMode,
}

impl Filter for NoZero {
    fn name(&self) -> &'static str {
        "nozero"
    }
    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit nozero filter")
    }
    fn config_help(&self) -> &'static str {
        "zeromode=<MODE>      One of 'none' (default), 'emulate', 'notrim', 'plugin'.\n\
         fastzeromode=<MODE>  One of 'default', 'none', 'slow', 'ignore'."
    }
    fn blocks(&self) -> bool {
        false
    }
    fn config(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            "zeromode" => {
                self.zeromode = match value {
                    "none" => ZeroMode::None,
                    "emulate" => ZeroMode::Emulate,
                    "notrim" => ZeroMode::NoTrim,
                    "plugin" => ZeroMode::Plugin,
                    _ => return Err(Error::config(format!("unknown zeromode '{value}'"))),
                }
            }
            "fastzeromode" => {
                self.fastzeromode = match value {
                    "default" => FastZeroMode::Default,
                    "none" => FastZeroMode::None,
                    "slow" => FastZeroMode::Slow,
                    "ignore" => FastZeroMode::Ignore,
                    _ => return Err(Error::config(format!("unknown fastzeromode '{value}'"))),
                }
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
        Ok(Box::new(NoZeroHandle {
            zeromode: self.zeromode,
            fastzeromode: self.fastzeromode,
        }))
    }
}

struct NoZeroHandle {
    zeromode: ZeroMode,
    fastzeromode: FastZeroMode,
}

impl FilterHandle for NoZeroHandle {
    fn prepare(&self, next: &Context, readonly: bool) -> Result<()> {
        // notrim and plugin pass zero requests on: the layer below must
        // have them.
        if !readonly
            && matches!(self.zeromode, ZeroMode::NoTrim | ZeroMode::Plugin)
            && next.can_zero()? == Support::None
        {
            return Err(Error::msg(
                Errno::EINVAL,
                "zeromode requires plugin zero support",
            ));
        }
        Ok(())
    }
    fn can_zero(&self, next: &Context) -> Result<Support> {
        Ok(match self.zeromode {
            ZeroMode::None => Support::None,
            // Done here, so that fastzeromode=ignore can write zeroes
            // even for a fast zero request.
            ZeroMode::Emulate => Support::Native,
            _ if next.can_zero()? == Support::None => Support::None,
            _ => Support::Native,
        })
    }
    fn can_fast_zero(&self, next: &Context) -> Result<bool> {
        Ok(match (self.zeromode, self.fastzeromode) {
            (ZeroMode::None, _) => false,
            (_, FastZeroMode::None) => false,
            (_, FastZeroMode::Slow | FastZeroMode::Ignore) => true,
            (ZeroMode::Emulate, FastZeroMode::Default) => true,
            (_, FastZeroMode::Default) => next.can_fast_zero()?,
        })
    }
    fn zero(&self, next: &Context, count: u64, offset: u64, flags: Flags) -> Result<()> {
        let mut flags = flags;
        if flags.contains(Flags::FAST_ZERO) {
            match self.fastzeromode {
                FastZeroMode::Ignore => flags = flags.without(Flags::FAST_ZERO),
                FastZeroMode::Slow => return Err(Error::new(Errno::ENOTSUP)),
                FastZeroMode::Default if self.zeromode == ZeroMode::Emulate => {
                    return Err(Error::new(Errno::ENOTSUP))
                }
                _ => {}
            }
        }
        match self.zeromode {
            ZeroMode::Emulate | ZeroMode::None => write_zeroes(next, count, offset, flags),
            ZeroMode::NoTrim => next.zero(count, offset, flags.without(Flags::MAY_TRIM)),
            ZeroMode::Plugin => next.zero(count, offset, flags),
        }
    }
}
