//! nbdkit's `ruby` plugin: plugins written in Ruby, run by the system
//! libruby (embedded through its C API, declared in [`rb`]).
//!
//! A shared object that nbdkit loads through its C plugin ABI, so that the
//! `nbdkit` executable never links libruby: the interpreter is only loaded
//! when `nbdkit ruby SCRIPT` asks for it.
//!
//! Ruby may only be called from the thread that started it, so the
//! interpreter lives on a thread of its own ([`thread`]) and every callback
//! is a job for it; requests are serialized as in nbdkit
//! (`serialize_all_requests`). nbdkit forks into the background after
//! configuration, and a thread does not survive a fork: so the script is
//! run, and the `config` parameters handed to it, when the server is ready
//! to serve (`after_fork`, also called in the foreground) or when
//! `--dump-plugin` asks for it. Errors of the script then end the server
//! there, with status 1.
//!
//! The script's top-level methods are the callbacks of nbdkit's manual
//! (`nbdkit-ruby-plugin(3)`); an exception in one fails it: one `nbdkit:
//! error: CALLBACK: SCRIPT:LINE:in `METHOD': MESSAGE (CLASS)` line (the
//! backtrace is a debug message, `-v`), and the client gets the errno
//! given to `Nbdkit.set_error`, else EIO.
//!
//! Beyond the manual (nbdkit 1.32's Ruby plugin has only the callbacks it
//! lists): the `Nbdkit` module also has `debug`, `export_name`, `is_tls`,
//! `peer_pid`/`peer_uid`/`peer_gid`, `shutdown`, `disconnect`,
//! `parse_size` and the `FLAG_*`, `FUA_*`, `CACHE_*`, `EXTENT_*`
//! constants; the optional callbacks `can_zero`, `can_fast_zero`,
//! `can_multi_conn`, `can_extents` (booleans), `can_fua`, `can_cache` (a
//! boolean or an `Nbdkit::FUA_*`/`CACHE_*` number), `cache(h, count,
//! offset)`, `extents(h, count, offset, flags)` returning `[[offset,
//! length, type], ...]`, `list_exports(readonly, is_tls)` returning names
//! or `[name, description]` pairs, `default_export(readonly, is_tls)`,
//! `export_description(h)`, `block_size(h)` (three numbers),
//! `preconnect(readonly)`, `get_ready`, `after_fork`, `cleanup`. The data
//! callbacks get the request's flags as one more, last argument when the
//! method takes it (`pwrite(h, buf, offset, flags)`, `flush(h, flags)`,
//! `trim(h, count, offset, flags)`, `zero(h, count, offset, may_trim,
//! flags)`, `cache(h, count, offset, flags)`).

use nbdkit_plugin_abi as abi;

mod rb;
mod thread;

use core::ffi::{c_char, c_int, c_void};
use std::ffi::{CStr, CString};
use std::sync::{Mutex, OnceLock};

use abi::script::{zero_falls_back, ExportList, ExtentList, Flags, ScriptError, ScriptPlugin};
use rb::{Exception, Value, QNIL};

/// What the server configured before Ruby starts.
#[derive(Default)]
struct Config {
    /// The script (absolute: the server may change directory).
    script: Option<String>,
    /// The script as given, for messages.
    shown: String,
    /// The other parameters, in order.
    params: Vec<(String, String)>,
    config_complete: bool,
    get_ready: bool,
}

static CONFIG: Mutex<Option<Config>> = Mutex::new(None);

/// The script as given on the command line, for messages.
static SHOWN: OnceLock<String> = OnceLock::new();

/// Whether Ruby started and ran the script: `Err` holds why not.
static STARTED: OnceLock<Result<(), ()>> = OnceLock::new();

fn shown() -> &'static str {
    SHOWN.get().map_or("ruby", String::as_str)
}

/// How a callback failed.
enum Fail {
    /// A Ruby exception: its one-line description and its backtrace.
    Ruby(String, String),
    /// Something else wrong: this message (after `SCRIPT: CALLBACK: `).
    Msg(String),
    /// Already reported.
    Quiet,
}

type Res<T> = Result<T, Fail>;

/// The failure for a Ruby exception.
fn exception(e: Exception) -> Fail {
    let line = rb::call(module(), "__describe", &[e.0])
        .ok()
        .and_then(rb::str_bytes)
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_else(|| "an exception (which cannot be described)".into());
    let bt = rb::call(module(), "__backtrace", &[e.0])
        .ok()
        .and_then(rb::str_bytes)
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_default();
    Fail::Ruby(line, bt)
}

impl From<Exception> for Fail {
    fn from(e: Exception) -> Fail {
        exception(e)
    }
}

/// A failure of `callback` for the server: a Ruby exception is reported
/// here (its one line, then the backtrace as a debug message); `errno`,
/// when not 0, is the one the script chose.
fn report(callback: &str, f: Fail, errno: c_int) -> ScriptError {
    match f {
        Fail::Ruby(line, bt) => {
            abi::error(&format!("{callback}: {line}"));
            if !bt.is_empty() {
                abi::debug(&format!("{callback}: backtrace:\n{bt}"));
            }
            ScriptError::errno(errno)
        }
        Fail::Msg(m) => ScriptError::new(errno, format!("{}: {callback}: {m}", shown())),
        Fail::Quiet => ScriptError::errno(errno),
    }
}

/// The `Nbdkit` module.
fn module() -> Value {
    static M: OnceLock<Value> = OnceLock::new();
    // SAFETY: on the Ruby thread; a module constant is never collected.
    *M.get_or_init(|| unsafe { rb::rb_define_module(c"Nbdkit".as_ptr()) })
}

/// Run `f` on the Ruby thread once the script runs; a failure is an
/// error of `callback` (with the errno the script chose).
fn run<R: Send + 'static>(
    callback: &'static str,
    f: impl FnOnce() -> Res<R> + Send + 'static,
) -> Result<R, ScriptError> {
    if !ensure_started() {
        return Err(ScriptError::reported());
    }
    let r = thread::on_ruby(move || {
        abi::script::clear_script_errno();
        let r = f();
        (r, abi::script::script_errno())
    });
    match r {
        Some((Ok(v), _)) => Ok(v),
        Some((Err(e), errno)) => Err(report(callback, e, errno)),
        None => Err(ScriptError::msg(format!(
            "ruby: {callback}: internal error"
        ))),
    }
}

/// Whether the script defines the method `name` (at the top level).
fn defined(name: &str) -> bool {
    rb::call(module(), "__defined", &[rb::string(name)]).is_ok_and(rb::truthy)
}

/// Call the script's `name` with `args`; `None` when it is not defined.
fn call(name: &str, args: &[Value]) -> Res<Option<Value>> {
    if !defined(name) {
        return Ok(None);
    }
    Ok(Some(rb::call(QNIL, name, args)?))
}

/// Like [`call`], adding `flags` as a last argument when the method takes
/// exactly one more than `args`.
fn call_flags(name: &str, args: &[Value], flags: u32) -> Res<Option<Value>> {
    if !defined(name) {
        return Ok(None);
    }
    let id = rb::intern(name);
    // SAFETY: a plain call on the Ruby thread for a defined method.
    let arity = rb::protect(|| unsafe { rb::rb_obj_method_arity(QNIL, id) } as Value)
        .map(|a| a as c_int)
        .unwrap_or(0);
    let mut v = args.to_vec();
    // Only a method with exactly one more parameter (a fixed arity) gets
    // the flags: optional parameters may not take one more.
    if arity == args.len() as c_int + 1 {
        // SAFETY: plain value constructor.
        v.push(unsafe { rb::rb_ull2inum(flags.into()) });
    }
    Ok(Some(rb::call(QNIL, name, &v)?))
}

// ---------------------------------------------------------------------------
// Starting Ruby

/// The `Nbdkit` module's Ruby side (its primitives are below).
const PRELUDE: &str = r##"
module Nbdkit
  def set_error(err)
    n = if err.is_a?(Module) then err.const_get(:Errno)
        elsif err.respond_to?(:errno) then err.errno
        else Integer(err)
        end
    Nbdkit.__set_errno(Integer(n))
    nil
  end
  def debug(msg)
    Nbdkit.__debug(msg.to_s.b.delete("\0"))
    nil
  end
  def export_name
    Nbdkit.__export_name or raise "Nbdkit.export_name failed"
  end
  def is_tls
    r = Nbdkit.__is_tls
    raise "Nbdkit.is_tls failed" if r.nil?
    r
  end
  def peer_pid; Nbdkit.__peer(0) or raise "Nbdkit.peer_pid failed"; end
  def peer_uid; Nbdkit.__peer(1) or raise "Nbdkit.peer_uid failed"; end
  def peer_gid; Nbdkit.__peer(2) or raise "Nbdkit.peer_gid failed"; end
  def shutdown; Nbdkit.__shutdown; nil; end
  def disconnect(force = false); Nbdkit.__disconnect(force ? true : false); nil; end
  def parse_size(s)
    Nbdkit.__parse_size(s.to_s.b.delete("\0")) or
      raise ArgumentError, "Nbdkit.parse_size: cannot parse size: #{s}"
  end
  module_function :set_error, :debug, :export_name, :is_tls, :peer_pid,
                  :peer_uid, :peer_gid, :shutdown, :disconnect, :parse_size

  def self.__defined(name)
    Object.private_method_defined?(name, false) || Object.method_defined?(name, false)
  end
  def self.__describe(e)
    where = (e.backtrace || []).first
    msg = e.message.to_s.lines.first.to_s.chomp
    if e.is_a?(SyntaxError) then msg
    elsif where then "#{where}: #{msg} (#{e.class})"
    else "#{msg} (#{e.class})"
    end
  end
  def self.__backtrace(e)
    ([e.message.to_s] + (e.backtrace || [])).join("\n")
  end
end
"##;

/// The primitives of the `Nbdkit` module, run on the caller's thread.
mod prim {
    use super::*;

    fn c_string(v: Value) -> CString {
        let b = rb::str_bytes(v).unwrap_or_default();
        CString::new(b.to_vec()).unwrap_or_default()
    }

    fn text(p: *const c_char) -> Value {
        if p.is_null() {
            return QNIL;
        }
        // SAFETY: a NUL-terminated string from the server.
        let s = unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned();
        rb::string(&s)
    }

    pub(super) unsafe extern "C" fn set_errno(_: Value, n: Value) -> Value {
        let e = if rb::is_fixnum(n) {
            rb::fixnum(n) as c_int
        } else {
            libc::EIO
        };
        abi::script::record_script_errno(e);
        QNIL
    }

    pub(super) unsafe extern "C" fn debug(_: Value, msg: Value) -> Value {
        let m = c_string(msg);
        thread::on_caller(move || abi::debug(&m.to_string_lossy()));
        QNIL
    }

    pub(super) unsafe extern "C" fn export_name(_: Value) -> Value {
        // SAFETY (closure): no arguments; NULL or a string the server keeps.
        let s = thread::on_caller(|| {
            let p = unsafe { abi::nbdkit_export_name() };
            (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_owned())
        });
        s.map_or(QNIL, |s| text(s.as_ptr()))
    }

    pub(super) unsafe extern "C" fn is_tls(_: Value) -> Value {
        // SAFETY (closure): no arguments.
        match thread::on_caller(|| unsafe { abi::nbdkit_is_tls() }) {
            -1 => QNIL,
            r => rb::boolean(r != 0),
        }
    }

    pub(super) unsafe extern "C" fn peer(_: Value, which: Value) -> Value {
        let w = rb::fixnum(which);
        // SAFETY (closure): no arguments.
        let r = thread::on_caller(move || unsafe {
            match w {
                0 => abi::nbdkit_peer_pid(),
                1 => abi::nbdkit_peer_uid(),
                _ => abi::nbdkit_peer_gid(),
            }
        });
        if r == -1 {
            QNIL
        } else {
            // SAFETY: plain value constructor.
            unsafe { rb::rb_ll2inum(r) }
        }
    }

    pub(super) unsafe extern "C" fn shutdown(_: Value) -> Value {
        // SAFETY (closure): no arguments.
        thread::on_caller(|| unsafe { abi::nbdkit_shutdown() });
        QNIL
    }

    pub(super) unsafe extern "C" fn disconnect(_: Value, force: Value) -> Value {
        let f = c_int::from(rb::truthy(force));
        // SAFETY (closure): a plain int.
        thread::on_caller(move || unsafe { abi::nbdkit_disconnect(f) });
        QNIL
    }

    pub(super) unsafe extern "C" fn parse_size(_: Value, s: Value) -> Value {
        let c = c_string(s);
        // SAFETY (closure): a NUL-terminated string.
        match thread::on_caller(move || unsafe { abi::nbdkit_parse_size(c.as_ptr()) }) {
            -1 => QNIL,
            // SAFETY: plain value constructor.
            n => unsafe { rb::rb_ll2inum(n) },
        }
    }
}

/// Define the `Nbdkit` module.
fn install() -> Result<(), Fail> {
    let m = module();
    let defs: [(&CStr, *const c_void, c_int); 8] = [
        (c"__set_errno", prim::set_errno as *const c_void, 1),
        (c"__debug", prim::debug as *const c_void, 1),
        (c"__export_name", prim::export_name as *const c_void, 0),
        (c"__is_tls", prim::is_tls as *const c_void, 0),
        (c"__peer", prim::peer as *const c_void, 1),
        (c"__shutdown", prim::shutdown as *const c_void, 0),
        (c"__disconnect", prim::disconnect as *const c_void, 1),
        (c"__parse_size", prim::parse_size as *const c_void, 1),
    ];
    for (name, f, argc) in defs {
        // SAFETY: a C function taking `argc` VALUEs after self.
        unsafe { rb::rb_define_singleton_method(m, name.as_ptr(), f, argc) };
    }
    let mut src = String::from(PRELUDE);
    src.push_str("module Nbdkit\n");
    for (n, v) in abi::SCRIPT_CONSTANTS {
        src.push_str(&format!("  {n} = {v}\n"));
    }
    src.push_str("end\n");
    let c = CString::new(src).map_err(|_| Fail::Msg("internal error".into()))?;
    let mut state = 0;
    // SAFETY: a NUL-terminated Ruby program.
    unsafe { rb::rb_eval_string_protect(c.as_ptr(), &mut state) };
    if state != 0 {
        // SAFETY: plain calls on the Ruby thread.
        let e = unsafe { rb::rb_errinfo() };
        unsafe { rb::rb_set_errinfo(QNIL) };
        return Err(exception(Exception(e)));
    }
    Ok(())
}

/// The signals whose handlers Ruby may set at start-up. Ruby leaves a
/// handler the server installed in place for most (it only takes over
/// signals left at their default), but its own SIGSEGV/SIGBUS reporting,
/// SIGPIPE and SIGCHLD dispositions are not the server's business: every
/// one of these is put back as it was.
const SIGNALS: [c_int; 11] = [
    libc::SIGHUP,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGPIPE,
    libc::SIGALRM,
    libc::SIGTERM,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGCHLD,
    libc::SIGSEGV,
    libc::SIGBUS,
];

/// Start the interpreter on this (the Ruby) thread, keeping the server's
/// signal handlers.
fn start_interpreter() -> Result<(), String> {
    // SAFETY: all-zero sigactions are valid to be overwritten.
    let mut saved: [libc::sigaction; SIGNALS.len()] = unsafe { core::mem::zeroed() };
    for (i, s) in SIGNALS.iter().enumerate() {
        // SAFETY: reading the current action into our array.
        unsafe { libc::sigaction(*s, core::ptr::null(), &mut saved[i]) };
    }
    let mut stack_top: Value = 0;
    // SAFETY: the address of a local at the top of this thread's stack,
    // as RUBY_INIT_STACK does.
    unsafe { rb::ruby_init_stack(&mut stack_top) };
    // SAFETY: the documented embedding sequence, once, on this thread.
    let r = unsafe { rb::ruby_setup() };
    if r == 0 {
        // Command line processing sets up the encodings and rubygems, as
        // for `ruby -e ''`.
        let args = [c"ruby", c"-e", c""].map(|a| a.as_ptr().cast_mut());
        let mut argv = args;
        // SAFETY: three NUL-terminated arguments that outlive the call.
        unsafe { rb::ruby_options(argv.len() as c_int, argv.as_mut_ptr()) };
    }
    for (i, s) in SIGNALS.iter().enumerate() {
        // SAFETY: restoring the action read above.
        unsafe { libc::sigaction(*s, &saved[i], core::ptr::null_mut()) };
    }
    if r != 0 {
        return Err(format!(
            "ruby: the Ruby interpreter could not start (state {r})"
        ));
    }
    Ok(())
}

/// Run the script and hand it the configuration; on the Ruby thread.
fn load_script(cfg: &Config) -> Res<()> {
    let Some(script) = &cfg.script else {
        return Err(Fail::Msg("no script".into()));
    };
    install()?;
    let c = CString::new(script.as_str()).unwrap_or_default();
    // SAFETY: a NUL-terminated string.
    unsafe { rb::ruby_script(c.as_ptr()) };
    let path = rb::string(script);
    let mut state = 0;
    // SAFETY: a String VALUE on this stack.
    unsafe { rb::rb_load_protect(path, 0, &mut state) };
    if state != 0 {
        // SAFETY: plain calls on the Ruby thread.
        let e = unsafe { rb::rb_errinfo() };
        unsafe { rb::rb_set_errinfo(QNIL) };
        let Fail::Ruby(line, bt) = exception(Exception(e)) else {
            return Err(Fail::Quiet);
        };
        return Err(Fail::Msg(format!(
            "could not load ruby script: {line}\n{bt}"
        )));
    }
    if !defined("open") || !defined("get_size") || !defined("pread") {
        return Err(Fail::Msg(
            "one of the required callbacks 'open', 'get_size' or 'pread' is not defined by \
             this Ruby script.  nbdkit requires these callbacks."
                .into(),
        ));
    }
    for (k, v) in &cfg.params {
        if !defined("config") {
            return Err(Fail::Msg(
                "this plugin does not need command line configuration".into(),
            ));
        }
        rb::call(QNIL, "config", &[rb::string(k), rb::string(v)])
            .map_err(|e| with_callback("config", e))?;
    }
    if cfg.config_complete {
        call("config_complete", &[]).map_err(|e| named("config_complete", e))?;
    }
    if cfg.get_ready {
        call("get_ready", &[]).map_err(|e| named("get_ready", e))?;
    }
    Ok(())
}

/// An exception of the script's `callback` during start-up.
fn with_callback(callback: &str, e: Exception) -> Fail {
    named(callback, exception(e))
}

fn named(callback: &str, f: Fail) -> Fail {
    match f {
        Fail::Ruby(line, bt) => Fail::Ruby(format!("{callback}: {line}"), bt),
        f => f,
    }
}

/// Start Ruby and run the script, once; reports a failure. Whether the
/// script runs.
fn ensure_started() -> bool {
    static ONE: Mutex<()> = Mutex::new(());
    let _one = STARTED
        .get()
        .is_none()
        .then(|| ONE.lock().unwrap_or_else(|e| e.into_inner()));
    if let Some(r) = STARTED.get() {
        if r.is_ok() && !thread::running() {
            abi::error(
                "ruby: the Ruby interpreter does not run in this process (it started before \
                 the server forked)",
            );
            return false;
        }
        return r.is_ok();
    }
    let cfg = CONFIG.lock().unwrap_or_else(|e| e.into_inner()).take();
    let Some(cfg) = cfg.filter(|c| c.script.is_some()) else {
        abi::error("a Ruby script is required: nbdkit ruby /path/to/plugin.rb [key=value ...]");
        let _ = STARTED.set(Err(()));
        return false;
    };
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let started = thread::start(move || {
        let _ = tx.send(start_interpreter());
    })
    .and_then(|()| rx.recv().map_err(|e| e.to_string())?);
    if let Err(m) = started {
        abi::error(&m);
        let _ = STARTED.set(Err(()));
        return false;
    }
    let r = thread::on_ruby(move || {
        abi::script::clear_script_errno();
        load_script(&cfg)
    });
    let ok = match r {
        Some(Ok(())) => true,
        Some(Err(Fail::Msg(m))) => {
            let (line, bt) = m.split_once('\n').unwrap_or((&m, ""));
            abi::error(&format!("{}: {line}", shown()));
            if !bt.is_empty() {
                abi::debug(&format!("backtrace:\n{bt}"));
            }
            false
        }
        Some(Err(f)) => {
            report("ruby", f, 0).report();
            false
        }
        None => {
            abi::error("ruby: internal error");
            false
        }
    };
    let _ = STARTED.set(if ok { Ok(()) } else { Err(()) });
    ok
}

// ---------------------------------------------------------------------------
// Configuration (before Ruby starts)

/// A handle: the value the script's `open` returned, kept from the GC.
struct Handle {
    value: Box<Value>,
}

impl Handle {
    /// Where the handle's value is, for a job on the Ruby thread.
    fn at(&self) -> usize {
        &*self.value as *const Value as usize
    }
}

/// The handle's value (on the Ruby thread).
///
/// # Safety
/// `at` came from [`Handle::at`] of a handle not yet closed.
unsafe fn hv(at: usize) -> Value {
    // SAFETY: the caller's contract.
    unsafe { *(at as *const Value) }
}

fn size_of(callback: &str, v: Value) -> Res<i64> {
    match rb::int(v) {
        Some(n) if n >= 0 => Ok(n),
        Some(n) => Err(Fail::Msg(format!(
            "{callback} returned a negative value ({n})"
        ))),
        None => Err(Fail::Msg(format!(
            "{callback} did not return an Integer ({})",
            class_of(v)
        ))),
    }
}

/// The class name of `v`, for messages.
fn class_of(v: Value) -> String {
    rb::call(v, "class", &[])
        .and_then(|c| rb::call(c, "to_s", &[]))
        .ok()
        .and_then(rb::str_bytes)
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_default()
}

/// `can_fua`/`can_cache`: true (native), false/nil, or a level number.
fn level(
    h: &Handle,
    name: &'static str,
    native: c_int,
    fallback: &'static str,
    plain: c_int,
) -> Result<c_int, ScriptError> {
    let at = h.at();
    run(name, move || {
        // SAFETY: a live handle.
        match call(name, &[unsafe { hv(at) }])? {
            Some(v) if v == rb::QTRUE => Ok(native),
            Some(v) if !rb::truthy(v) => Ok(0),
            Some(v) => match rb::int(v) {
                Some(n @ 0..=2) => Ok(n as c_int),
                _ => Err(Fail::Msg(format!(
                    "{name} did not return true, false or 0, 1, 2 ({})",
                    class_of(v)
                ))),
            },
            None => Ok(if defined(fallback) { plain } else { 0 }),
        }
    })
}

fn bytes_of(v: Value) -> Option<String> {
    rb::str_bytes(v).map(|b| String::from_utf8_lossy(b).into_owned())
}

fn uint(n: u64) -> Value {
    // SAFETY: plain value constructor.
    unsafe { rb::rb_ull2inum(n) }
}

/// A data callback with the handle and `args`; missing is "not implemented".
fn data(
    h: &Handle,
    name: &'static str,
    args: [u64; 2],
    n: usize,
    flags: Flags,
) -> Result<(), ScriptError> {
    let at = h.at();
    run(name, move || {
        // SAFETY: a live handle.
        let mut a = vec![unsafe { hv(at) }];
        a.extend(args[..n].iter().map(|&x| uint(x)));
        match call_flags(name, &a, flags.bits())? {
            Some(_) => Ok(()),
            None => Err(Fail::Msg(format!("not implemented: {name}"))),
        }
    })
}

// ---------------------------------------------------------------------------
// The plugin

struct RubyPlugin;

impl ScriptPlugin for RubyPlugin {
    type Handle = Handle;
    const ZERO_WITHOUT_CAN_ZERO: bool = true;

    const NAME: &'static CStr = c"ruby";
    const CONFIG_HELP: &'static CStr = abi::script_config_help!("Ruby plugin");

    fn loaded() -> bool {
        STARTED.get() == Some(&Ok(()))
    }

    fn global(name: &'static str, args: &[bool]) -> Result<(), ScriptError> {
        let args = args.to_vec();
        run(name, move || {
            let a: Vec<Value> = args.iter().map(|&b| rb::boolean(b)).collect();
            call(name, &a)?;
            Ok(())
        })
    }

    fn boolean(
        h: &Handle,
        name: &'static str,
        plain: Option<&'static str>,
        default: bool,
    ) -> Result<bool, ScriptError> {
        let at = h.at();
        run(name, move || {
            // SAFETY: a live handle.
            match call(name, &[unsafe { hv(at) }])? {
                Some(v) => Ok(rb::truthy(v)),
                None => Ok(plain.map_or(default, defined)),
            }
        })
    }

    // Configuration happens before Ruby starts.

    fn load() {
        *CONFIG.lock().unwrap_or_else(|e| e.into_inner()) = Some(Config::default());
    }

    fn unload() {
        if STARTED.get() == Some(&Ok(())) && thread::running() {
            // at_exit handlers and finalizers of the script.
            // SAFETY: on the Ruby thread, once, at the end.
            thread::on_ruby(|| unsafe { rb::ruby_cleanup(0) });
        }
    }

    fn config(key: &str, value: &str) -> Result<(), ScriptError> {
        let mut g = CONFIG.lock().unwrap_or_else(|e| e.into_inner());
        let Some(cfg) = g.as_mut() else {
            return Err(ScriptError::reported());
        };
        if cfg.script.is_some() {
            cfg.params.push((key.to_string(), value.to_string()));
            return Ok(());
        }
        if key != "script" {
            return Err(ScriptError::msg(
                "the first parameter must be script=/path/to/ruby/script.rb",
            ));
        }
        let _ = SHOWN.set(value.to_string());
        match std::fs::canonicalize(value).and_then(|p| {
            std::fs::File::open(&p)?;
            Ok(p)
        }) {
            Ok(p) => {
                cfg.script = Some(p.to_string_lossy().into_owned());
                cfg.shown = value.to_string();
                Ok(())
            }
            Err(e) => Err(ScriptError::msg(format!(
                "{value}: cannot open the ruby script: {e}"
            ))),
        }
    }

    fn config_complete() -> Result<(), ScriptError> {
        let mut g = CONFIG.lock().unwrap_or_else(|e| e.into_inner());
        match g.as_mut() {
            Some(c) if c.script.is_some() => {
                c.config_complete = true;
                Ok(())
            }
            _ => Err(ScriptError::msg(
                "the first parameter must be script=/path/to/ruby/script.rb",
            )),
        }
    }

    fn get_ready() -> Result<(), ScriptError> {
        if let Some(c) = CONFIG.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            c.get_ready = true;
        }
        Ok(())
    }

    fn dump_plugin() -> Result<(), ScriptError> {
        println!("ruby_api_version={}", env!("NBDKIT_RUBY_API_VERSION"));
        use std::io::Write;
        let _ = std::io::stdout().flush();
        let has_script = CONFIG
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|c| c.script.is_some());
        if !has_script {
            return Ok(());
        }
        run("dump_plugin", || {
            let r = call("dump_plugin", &[]);
            let _ = rb::call(QNIL, "eval", &[rb::string("$stdout.flush")]);
            r.map(|_| ())
        })
    }

    fn list_exports(
        readonly: bool,
        is_tls: bool,
        exports: &mut ExportList,
    ) -> Result<(), ScriptError> {
        let list = run("list_exports", move || {
            let args = [rb::boolean(readonly), rb::boolean(is_tls)];
            let Some(v) = call("list_exports", &args)? else {
                return Ok(None);
            };
            let bad = || {
                Fail::Msg(
                    "list_exports did not return an Array of names or [name, description]".into(),
                )
            };
            let mut out = Vec::new();
            for item in rb::array(v).ok_or_else(bad)? {
                if let Some(n) = bytes_of(item) {
                    out.push((n, None));
                    continue;
                }
                let pair = rb::array(item).filter(|p| p.len() == 2).ok_or_else(bad)?;
                let n = bytes_of(pair[0]).ok_or_else(bad)?;
                let d = if pair[1] == QNIL {
                    None
                } else {
                    Some(bytes_of(pair[1]).ok_or_else(bad)?)
                };
                out.push((n, d));
            }
            Ok(Some(out))
        })?;
        let Some(list) = list else {
            return exports.use_default();
        };
        for (n, d) in list {
            exports.add(&n, d.as_deref())?;
        }
        Ok(())
    }

    fn default_export(readonly: bool, is_tls: bool) -> Result<Option<String>, ScriptError> {
        run("default_export", move || {
            let args = [rb::boolean(readonly), rb::boolean(is_tls)];
            match call("default_export", &args)? {
                None => Ok(None),
                Some(v) => bytes_of(v)
                    .map(Some)
                    .ok_or_else(|| Fail::Msg("default_export did not return a String".into())),
            }
        })
    }

    fn open(readonly: bool) -> Result<Handle, ScriptError> {
        run("open", move || {
            let Some(v) = call("open", &[rb::boolean(readonly)])? else {
                return Err(Fail::Msg("missing callback: open".into()));
            };
            let mut value = Box::new(v);
            // SAFETY: a stable address, unregistered in close.
            unsafe { rb::rb_gc_register_address(&mut *value) };
            Ok(Handle { value })
        })
    }

    fn close(h: Handle) -> Result<(), ScriptError> {
        let internal = || ScriptError::msg("ruby: close: internal error");
        if !thread::running() {
            // Still registered with Ruby's GC: left alone.
            core::mem::forget(h);
            return Err(internal());
        }
        let r = thread::on_ruby(move || {
            let mut hd = h;
            let r = call("close", &[*hd.value]);
            // SAFETY: registered in open.
            unsafe { rb::rb_gc_unregister_address(&mut *hd.value) };
            r.err()
        });
        match r {
            Some(Some(e)) => Err(report("close", e, 0)),
            Some(None) => Ok(()),
            None => Err(internal()),
        }
    }

    fn export_description(h: &Handle) -> Result<Option<String>, ScriptError> {
        let at = h.at();
        run("export_description", move || {
            // SAFETY: a live handle.
            match call("export_description", &[unsafe { hv(at) }])? {
                None => Ok(None),
                Some(v) => bytes_of(v)
                    .map(Some)
                    .ok_or_else(|| Fail::Msg("export_description did not return a String".into())),
            }
        })
    }

    fn get_size(h: &Handle) -> Result<i64, ScriptError> {
        let at = h.at();
        run("get_size", move || {
            // SAFETY: a live handle.
            match call("get_size", &[unsafe { hv(at) }])? {
                Some(v) => size_of("get_size", v),
                None => Err(Fail::Msg("missing callback: get_size".into())),
            }
        })
    }

    fn block_size(h: &Handle) -> Result<(u32, u32, u32), ScriptError> {
        let at = h.at();
        run("block_size", move || {
            // SAFETY: a live handle.
            let Some(v) = call("block_size", &[unsafe { hv(at) }])? else {
                return Ok((0, 0, 0));
            };
            let n: Vec<u32> = rb::array(v)
                .unwrap_or_default()
                .into_iter()
                .filter_map(|x| rb::int(x).and_then(|n| u32::try_from(n).ok()))
                .collect();
            match n[..] {
                [a, b, c] => Ok((a, b, c)),
                _ => Err(Fail::Msg("block_size did not return three Integers".into())),
            }
        })
    }

    fn can_fast_zero(h: &Handle) -> Result<bool, ScriptError> {
        let at = h.at();
        run("can_fast_zero", move || {
            // SAFETY: a live handle.
            match call("can_fast_zero", &[unsafe { hv(at) }])? {
                Some(v) => Ok(rb::truthy(v)),
                // A fast zero fails fast when the script has no `zero`.
                None => Ok(!defined("zero")),
            }
        })
    }

    fn can_fua(h: &Handle) -> Result<c_int, ScriptError> {
        level(h, "can_fua", abi::FUA_NATIVE, "flush", abi::FUA_EMULATE)
    }

    fn can_cache(h: &Handle) -> Result<c_int, ScriptError> {
        level(
            h,
            "can_cache",
            abi::CACHE_NATIVE,
            "cache",
            abi::CACHE_NATIVE,
        )
    }

    fn pread(h: &Handle, buf: &mut [u8], offset: u64, _flags: Flags) -> Result<(), ScriptError> {
        let (at, dst, count) = (h.at(), buf.as_mut_ptr() as usize, buf.len());
        run("pread", move || {
            // SAFETY: a live handle.
            let args = [unsafe { hv(at) }, uint(count as u64), uint(offset)];
            let Some(v) = call("pread", &args)? else {
                return Err(Fail::Msg("missing callback: pread".into()));
            };
            let Some(b) = rb::str_bytes(v) else {
                return Err(Fail::Msg(format!(
                    "pread did not return a String ({})",
                    class_of(v)
                )));
            };
            if b.len() < count {
                return Err(Fail::Msg(format!(
                    "byte array returned from pread is too small ({} < {count} bytes)",
                    b.len()
                )));
            }
            // SAFETY: the caller waits with its buffer of `count` bytes;
            // `b` has at least as many, and they cannot overlap.
            unsafe { core::ptr::copy_nonoverlapping(b.as_ptr(), dst as *mut u8, count) };
            Ok(())
        })
    }

    fn pwrite(h: &Handle, buf: &[u8], offset: u64, flags: Flags) -> Result<(), ScriptError> {
        let (at, src, count) = (h.at(), buf.as_ptr() as usize, buf.len());
        run("pwrite", move || {
            // SAFETY: the caller waits, lending `count` bytes at `src`.
            let data = unsafe { core::slice::from_raw_parts(src as *const u8, count) };
            // SAFETY: a live handle.
            let args = [unsafe { hv(at) }, rb::bytes(data), uint(offset)];
            match call_flags("pwrite", &args, flags.bits())? {
                Some(_) => Ok(()),
                None => Err(Fail::Msg("missing callback: pwrite".into())),
            }
        })
    }

    fn flush(h: &Handle, flags: Flags) -> Result<(), ScriptError> {
        data(h, "flush", [0, 0], 0, flags)
    }

    fn trim(h: &Handle, count: u32, offset: u64, flags: Flags) -> Result<(), ScriptError> {
        data(h, "trim", [count.into(), offset], 2, flags)
    }

    fn cache(h: &Handle, count: u32, offset: u64, flags: Flags) -> Result<(), ScriptError> {
        data(h, "cache", [count.into(), offset], 2, flags)
    }

    fn zero(h: &Handle, count: u32, offset: u64, flags: Flags) -> Result<(), ScriptError> {
        let at = h.at();
        let (errno, missing) = run("zero", move || {
            // SAFETY: a live handle.
            let args = [
                unsafe { hv(at) },
                uint(count.into()),
                uint(offset),
                rb::boolean(flags.may_trim()),
            ];
            let r = call_flags("zero", &args, flags.bits());
            // Nbdkit.set_error(Errno::EOPNOTSUPP) (or no zero at all) asks
            // the server to write zeroes instead.
            let e = abi::script::script_errno();
            if e == libc::EOPNOTSUPP || e == libc::ENOTSUP {
                return Ok((e, false));
            }
            r.map(|v| (e, v.is_none()))
        })?;
        if zero_falls_back(errno, missing) {
            return Err(ScriptError::reported());
        }
        Ok(())
    }

    fn extents(
        h: &Handle,
        count: u32,
        offset: u64,
        flags: Flags,
        extents: &mut ExtentList,
    ) -> Result<(), ScriptError> {
        let at = h.at();
        let list = run("extents", move || {
            // SAFETY: a live handle.
            let args = [
                unsafe { hv(at) },
                uint(count.into()),
                uint(offset),
                uint(flags.bits().into()),
            ];
            let Some(v) = call("extents", &args)? else {
                return Ok(vec![(offset, u64::from(count), 0)]);
            };
            let bad =
                || Fail::Msg("extents did not return an Array of [offset, length, type]".into());
            let mut out = Vec::new();
            for item in rb::array(v).ok_or_else(bad)? {
                let t = rb::array(item).filter(|t| t.len() == 3).ok_or_else(bad)?;
                let n: Vec<i64> = t.iter().filter_map(|&x| rb::int(x)).collect();
                match n[..] {
                    [o, l, ty] if o >= 0 && l >= 0 && (0..=3).contains(&ty) => {
                        out.push((o as u64, l as u64, ty as u32))
                    }
                    _ => return Err(bad()),
                }
            }
            if out.is_empty() {
                return Err(Fail::Msg("extents returned an empty list".into()));
            }
            Ok(out)
        })?;
        for (o, l, t) in list {
            extents.add(o, l, t)?;
        }
        Ok(())
    }
}

abi::register_script_plugin!(RubyPlugin);
