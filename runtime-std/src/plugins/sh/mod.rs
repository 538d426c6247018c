//! The script protocol shared by the `sh` and `eval` plugins.
//!
//! Every plugin method runs an executable as `SCRIPT METHOD ARGS...`, with
//! `$tmpdir` in its environment (a private directory removed when nbdkit
//! exits). Its exit status says what happened:
//!
//! - 0: success; the method's result, if any, is on stdout;
//! - 1 and 4..: failure; stderr may start with an errno name (`ENOSPC`,
//!   `EIO`, ...; case-insensitive) followed by whitespace and a message;
//! - 2: the script does not implement the method (nbdkit's default applies);
//! - 3: false, for the boolean `can_*` methods.
//!
//! `pwrite` data goes to the script's stdin and `pread` data comes from
//! its stdout. Arguments are passed as an argument vector, never through a
//! shell command line. The methods, their arguments and the way their
//! output is parsed are nbdkit's (see nbdkit-sh-plugin(3)).
//!
//! One idea per file: [`process`] runs a script (child, `$tmpdir`, pump),
//! [`errors`] turns a failure into an errno and message, [`output`] formats
//! arguments and parses what scripts print, [`scripts`] is the configured
//! plugin and its plugin-wide methods, [`handle`] a connection's methods.

pub mod eval;
#[allow(clippy::module_inception)] // the sh plugin inside the script-plugin folder
pub mod sh;

/// The Plugin callbacks that the sh and eval plugins pass straight to their
/// scripts; `$get` is the method that returns the configured `Scripts`.
macro_rules! forward_to_scripts {
    ($get:ident) => {
        fn get_ready(&self) -> Result<()> {
            self.$get()?.call_void("get_ready", &[])
        }

        fn after_fork(&self) -> Result<()> {
            self.$get()?.call_void("after_fork", &[])
        }

        fn cleanup(&self) {
            if let Some(s) = &self.scripts {
                s.unload();
            }
        }

        fn preconnect(&self, readonly: bool, _peer: &nbdkit_core::backend::Peer) -> Result<()> {
            self.$get()?.preconnect(readonly)
        }

        fn list_exports(&self, readonly: bool, is_tls: bool, exports: &mut Exports) -> Result<()> {
            self.$get()?.list_exports(readonly, is_tls, exports)
        }

        fn default_export(&self, readonly: bool, is_tls: bool) -> Result<Option<String>> {
            self.$get()?.default_export(readonly, is_tls)
        }

        fn open(&self, args: &OpenArgs<'_>) -> Result<Box<dyn Handle>> {
            self.$get()?.open(args)
        }
    };
}
pub(crate) use forward_to_scripts;

/// The callbacks of both plugins (`has_*` in `--dump-plugin`): all but
/// `longname`, `version`, `description` and `cleanup`.
pub(crate) const CALLBACKS: Callbacks = Callbacks::LISTED.difference(
    Callbacks::LONGNAME
        .union(Callbacks::VERSION)
        .union(Callbacks::DESCRIPTION)
        .union(Callbacks::CLEANUP),
);

/// The highest exit status with a meaning (`max_known_status` in
/// `--dump-plugin`).
const MAX_KNOWN_STATUS: u8 = 3;

/// Most output kept from a method other than `pread` (export lists,
/// extents, ...): more is an error rather than unbounded memory.
const MAX_OUTPUT: usize = 64 << 20;

/// Most of stderr kept for the error message.
const MAX_STDERR: usize = 64 << 10;

/// Largest inline script read from stdin (`nbdkit sh -`).
const MAX_INLINE_SCRIPT: u64 = 64 << 20;

mod errors;
mod handle;
mod output;
mod process;
mod scripts;
#[cfg(test)]
mod tests;

pub(crate) use errors::*;
use handle::*;
use nbdkit_core::backend::Callbacks;
pub(crate) use output::*;
pub(crate) use process::*;
pub(crate) use scripts::*;
