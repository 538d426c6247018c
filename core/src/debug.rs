//! Debug output shared by every layer.
//!
//! Two things live here:
//!
//! - The debug flags of `-D NAME.FLAG=N` (nbdkit-plugin(3), "Debug
//!   Flags"): parsed with nbdkit's rules, kept in command-line order, and
//!   queried by the plugins and filters that document them
//!   ([`value`], [`enabled`]). The parsed list stays available
//!   ([`flags`]) for loaders of C plugins, which set their
//!   `NAME_debug_FLAG` variables from it.
//! - The switches of the server's per-layer call lines (`-v`, `-D
//!   nbdkit.backend.controlpath=N`, `-D nbdkit.backend.datapath=N`) and
//!   the sink the runtime installs to print debug messages. Each switch is
//!   one relaxed atomic load, so that a server without `-v` pays nothing
//!   else on the data path.
//!
//! The switches and the flag list are process-wide settings written once
//! at start-up, not state threads coordinate through, so they use plain
//! atomics and a spin lock rather than the `sync` facade.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Arguments;
use core::sync::atomic::{AtomicBool, Ordering};

use spin::RwLock;

/// One `-D NAME.FLAG=N`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebugFlag {
    /// The plugin or filter name (`data`), or `nbdkit` for the server.
    pub name: String,
    /// The flag (`AST`); may contain dots (`backend.datapath`).
    pub flag: String,
    /// The value.
    pub value: i32,
}

/// Why a `-D` argument was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebugFlagError {
    /// nbdkit's number parser's message (`flag: could not parse number:
    /// ...`), printed as an error before [`DebugFlagError::FORMAT`], when
    /// the value was the problem.
    pub number: Option<String>,
}

impl DebugFlagError {
    /// The line nbdkit prints (after `nbdkit: `) for every bad `-D`.
    pub const FORMAT: &'static str = "-D (Debug Flag) must have the format NAME.FLAG=N";
}

impl DebugFlag {
    /// Parse `NAME.FLAG=N` as nbdkit does: NAME runs to the first `.`,
    /// FLAG from there to the first `=`, both non-empty, and N is an `int`
    /// in C notation (`0x10`, `010`, `-1`).
    pub fn parse(arg: &str) -> Result<DebugFlag, DebugFlagError> {
        let bad = DebugFlagError { number: None };
        let (Some(dot), Some(eq)) = (arg.find('.'), arg.find('=')) else {
            return Err(bad);
        };
        if dot == 0 || dot > eq || eq - dot <= 1 || eq + 1 == arg.len() {
            return Err(bad);
        }
        let value = crate::filters::params::parse_signed(
            "flag",
            &arg[eq + 1..],
            i32::MIN as i64,
            i32::MAX as i64,
        )
        .map_err(|e| DebugFlagError {
            number: Some(format!("{e}")),
        })?;
        Ok(DebugFlag {
            name: arg[..dot].into(),
            flag: arg[dot + 1..eq].into(),
            value: value as i32,
        })
    }

    /// The C variable nbdkit sets for this flag: `NAME_debug_FLAG`, with
    /// every `.` made `_`.
    pub fn symbol(&self) -> String {
        format!("{}_debug_{}", self.name, self.flag).replace('.', "_")
    }

    /// Whether this is one of `flags` of its plugin or filter (a dot and
    /// an underscore match each other).
    pub fn is_one_of(&self, flags: &[&str]) -> bool {
        flags.iter().any(|f| same_flag(f, &self.flag))
    }
}

struct Entry {
    flag: DebugFlag,
    used: bool,
}

static FLAGS: RwLock<Vec<Entry>> = RwLock::new(Vec::new());

/// Set the flags given on the command line, in their order (replacing any
/// set before).
pub fn set_flags(flags: Vec<DebugFlag>) {
    *FLAGS.write() = flags
        .into_iter()
        .map(|flag| Entry { flag, used: false })
        .collect();
}

/// The flags given on the command line, in their order.
pub fn flags() -> Vec<DebugFlag> {
    FLAGS.read().iter().map(|e| e.flag.clone()).collect()
}

/// The value of `-D NAME.FLAG=N` for `name` and `flag` (a dot in `flag`
/// and an underscore match each other, as in nbdkit). When a flag is
/// given more than once the first wins, as in nbdkit.
pub fn value(name: &str, flag: &str) -> Option<i32> {
    FLAGS
        .read()
        .iter()
        .find(|e| e.flag.name == name && same_flag(&e.flag.flag, flag))
        .map(|e| e.flag.value)
}

/// Whether two flags name the same C variable: equal, with a dot and an
/// underscore matching each other (compared in place, without building
/// the `NAME_debug_FLAG` strings).
fn same_flag(a: &str, b: &str) -> bool {
    let norm = |c: u8| if c == b'.' { b'_' } else { c };
    a.len() == b.len() && a.bytes().zip(b.bytes()).all(|(x, y)| norm(x) == norm(y))
}

/// Whether `-D NAME.FLAG=N` was given with N other than 0.
pub fn enabled(name: &str, flag: &str) -> bool {
    value(name, flag).is_some_and(|v| v != 0)
}

/// A plugin or filter called `name` was loaded: mark the flags addressed
/// to it used, and return the warning nbdkit prints (after `nbdkit: `)
/// for each of them that it does not have (`has` says false).
pub fn load(name: &str, has: impl Fn(&DebugFlag) -> bool) -> Vec<String> {
    let mut warnings = Vec::new();
    for e in FLAGS.write().iter_mut() {
        if e.used || e.flag.name != name {
            continue;
        }
        e.used = true;
        if !has(&e.flag) {
            warnings.push(format!(
                "warning: -D {name}.{}: {name} does not contain a global variable called {}",
                e.flag.flag,
                e.flag.symbol()
            ));
        }
    }
    warnings
}

/// The warnings nbdkit prints (after `nbdkit: `) at exit for flags that
/// named no plugin, filter or `nbdkit`.
pub fn unused() -> Vec<String> {
    FLAGS
        .read()
        .iter()
        .filter(|e| !e.used)
        .map(|e| {
            format!(
                "warning: debug flag -D {}.{} was not used",
                e.flag.name, e.flag.flag
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------
// The server's per-layer call lines

static VERBOSE: AtomicBool = AtomicBool::new(false);
static CONTROLPATH: AtomicBool = AtomicBool::new(false);
static DATAPATH: AtomicBool = AtomicBool::new(false);

/// How a message is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// `nbdkit: ...: debug: MESSAGE`, only with `-v`.
    Debug,
    /// `nbdkit: ...: error: MESSAGE`.
    Error,
}

/// Prints one message; installed by the runtime.
pub type Sink = fn(Level, Arguments<'_>);

static SINK: RwLock<Option<Sink>> = RwLock::new(None);

/// Install the function that prints messages (the runtime's log).
pub fn set_sink(sink: Sink) {
    *SINK.write() = Some(sink);
}

/// Set `-v`: without it, [`debug`] prints nothing (and costs one relaxed
/// load).
pub fn set_verbose(on: bool) {
    VERBOSE.store(on, Ordering::Relaxed);
}

/// Whether `-v` was given.
#[inline]
pub fn verbose() -> bool {
    VERBOSE.load(Ordering::Relaxed)
}

/// Turn the per-layer call lines on or off: `controlpath` for open,
/// prepare, the capability queries, finalize, close and the global calls;
/// `datapath` for pread, pwrite, flush, trim, zero, extents and cache.
/// Both are off unless the runtime turns them on (with `-v`).
pub fn set_backend_trace(controlpath: bool, datapath: bool) {
    CONTROLPATH.store(controlpath, Ordering::Relaxed);
    DATAPATH.store(datapath, Ordering::Relaxed);
}

/// Whether control-path calls are logged.
#[inline]
pub fn controlpath() -> bool {
    CONTROLPATH.load(Ordering::Relaxed)
}

/// Whether data-path calls are logged.
#[inline]
pub fn datapath() -> bool {
    DATAPATH.load(Ordering::Relaxed)
}

/// Print a debug message through the installed sink (nothing without one,
/// or without `-v`).
pub fn debug(args: Arguments<'_>) {
    if !verbose() {
        return;
    }
    if let Some(sink) = *SINK.read() {
        sink(Level::Debug, args);
    }
}

/// Print an error message through the installed sink.
pub fn error(args: Arguments<'_>) {
    if let Some(sink) = *SINK.read() {
        sink(Level::Error, args);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<(String, String, i32), Option<String>> {
        DebugFlag::parse(s)
            .map(|f| (f.name, f.flag, f.value))
            .map_err(|e| e.number)
    }

    #[test]
    fn a_dot_and_an_underscore_match() {
        assert!(same_flag("backend.datapath", "backend_datapath"));
        assert!(same_flag("a_b", "a.b"));
        assert!(!same_flag("ab", "a.b"));
        assert!(!same_flag("a.b", "a.c"));
    }

    #[test]
    fn parse_follows_nbdkit() {
        assert_eq!(parse("data.AST=1"), Ok(("data".into(), "AST".into(), 1)));
        assert_eq!(
            parse("nbdkit.backend.datapath=0"),
            Ok(("nbdkit".into(), "backend.datapath".into(), 0))
        );
        assert_eq!(
            parse("foo.b ar=0x10"),
            Ok(("foo".into(), "b ar".into(), 16))
        );
        assert_eq!(parse("foo.bar=-1"), Ok(("foo".into(), "bar".into(), -1)));
        assert_eq!(parse("foo.bar= +1"), Ok(("foo".into(), "bar".into(), 1)));
        for bad in [
            "foo",
            "foo=1",
            ".bar=1",
            "foo.=1",
            "foo.bar=",
            "foo=bar.x=1",
        ] {
            assert_eq!(parse(bad), Err(None), "{bad}");
        }
        assert_eq!(
            parse("foo.bar=x"),
            Err(Some("flag: empty string where we expected a number".into()))
        );
        assert_eq!(
            parse("a.b=1=2"),
            Err(Some(
                "flag: could not parse number: \"1=2\": trailing garbage".into()
            ))
        );
        assert_eq!(
            parse("foo.bar=2147483648"),
            Err(Some(
                "flag: could not parse number: \"2147483648\": Numerical result out of range"
                    .into()
            ))
        );
    }

    #[test]
    fn symbols_lookup_and_warnings() {
        let f = |s: &str| DebugFlag::parse(s).unwrap();
        assert_eq!(
            f("nbdkit.backend.datapath=0").symbol(),
            "nbdkit_debug_backend_datapath"
        );
        set_flags(alloc::vec![
            f("data.AST=1"),
            f("data.AST=0"),
            f("data.nope=1"),
            f("nbdkit.backend_datapath=0"),
            f("foo.bar=1"),
        ]);
        // The first of two wins, as in nbdkit.
        assert_eq!(value("data", "AST"), Some(1));
        assert!(enabled("data", "AST"));
        assert!(!enabled("data", "dir"));
        assert_eq!(value("nbdkit", "backend.datapath"), Some(0));
        assert_eq!(
            load("data", |f| f.is_one_of(&["AST", "dir"])),
            alloc::vec![String::from(
                "warning: -D data.nope: data does not contain a global variable called data_debug_nope"
            )]
        );
        assert!(load("nbdkit", |f| f.is_one_of(&["backend.datapath"])).is_empty());
        assert_eq!(
            unused(),
            alloc::vec![String::from("warning: debug flag -D foo.bar was not used")]
        );
        assert_eq!(flags().len(), 5);
        set_flags(Vec::new());
    }
}
