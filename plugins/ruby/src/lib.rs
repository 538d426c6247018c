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

use core::cell::Cell;
use core::ffi::{c_char, c_int, c_void};
use std::ffi::{CStr, CString};
use std::sync::{Mutex, OnceLock};

use abi::H;
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

thread_local! {
    /// On the Ruby thread: the errno of the last `Nbdkit.set_error` of the
    /// running job.
    static LAST_ERROR: Cell<c_int> = const { Cell::new(0) };
}

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

/// Report a failure of `callback` on the calling thread.
fn report(callback: &str, f: Fail) {
    match f {
        Fail::Ruby(line, bt) => {
            abi::error(&format!("{callback}: {line}"));
            if !bt.is_empty() {
                abi::debug(&format!("{callback}: backtrace:\n{bt}"));
            }
        }
        Fail::Msg(m) => abi::error(&format!("{}: {callback}: {m}", shown())),
        Fail::Quiet => {}
    }
}

/// The `Nbdkit` module.
fn module() -> Value {
    static M: OnceLock<Value> = OnceLock::new();
    // SAFETY: on the Ruby thread; a module constant is never collected.
    *M.get_or_init(|| unsafe { rb::rb_define_module(c"Nbdkit".as_ptr()) })
}

/// Run `f` on the Ruby thread once the script runs; a failure is reported
/// as an error of `callback` (with the errno the script chose) and turns
/// into `fail`.
fn run<R: Send + 'static>(
    callback: &'static str,
    fail: R,
    f: impl FnOnce() -> Res<R> + Send + 'static,
) -> R {
    if !ensure_started() {
        return fail;
    }
    let r = thread::on_ruby(move || {
        LAST_ERROR.with(|e| e.set(0));
        let r = f();
        (r, LAST_ERROR.with(Cell::get))
    });
    match r {
        Some((Ok(v), _)) => v,
        Some((Err(e), errno)) => {
            report(callback, e);
            if errno != 0 {
                abi::set_error(errno);
            }
            fail
        }
        None => {
            abi::error(&format!("ruby: {callback}: internal error"));
            fail
        }
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
        LAST_ERROR.with(|l| l.set(e));
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
        LAST_ERROR.with(|e| e.set(0));
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
            report("ruby", f);
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

/// A C string argument as Rust text.
///
/// # Safety
/// `p` is NULL or a NUL-terminated string valid for the call.
unsafe fn arg(p: *const c_char) -> String {
    if p.is_null() {
        String::new()
    } else {
        // SAFETY: the caller's contract.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }
}

unsafe extern "C" fn rb_load() {
    *CONFIG.lock().unwrap_or_else(|e| e.into_inner()) = Some(Config::default());
}

unsafe extern "C" fn rb_unload() {
    if STARTED.get() == Some(&Ok(())) && thread::running() {
        // at_exit handlers and finalizers of the script.
        // SAFETY: on the Ruby thread, once, at the end.
        thread::on_ruby(|| unsafe { rb::ruby_cleanup(0) });
    }
}

unsafe extern "C" fn rb_config(key: *const c_char, value: *const c_char) -> c_int {
    // SAFETY: the server passes two NUL-terminated strings.
    let (key, value) = unsafe { (arg(key), arg(value)) };
    let mut g = CONFIG.lock().unwrap_or_else(|e| e.into_inner());
    let Some(cfg) = g.as_mut() else { return -1 };
    if cfg.script.is_none() {
        if key != "script" {
            abi::error("the first parameter must be script=/path/to/ruby/script.rb");
            return -1;
        }
        let _ = SHOWN.set(value.clone());
        match std::fs::canonicalize(&value).and_then(|p| {
            std::fs::File::open(&p)?;
            Ok(p)
        }) {
            Ok(p) => {
                cfg.script = Some(p.to_string_lossy().into_owned());
                cfg.shown = value;
                0
            }
            Err(e) => {
                abi::error(&format!("{value}: cannot open the ruby script: {e}"));
                -1
            }
        }
    } else {
        cfg.params.push((key, value));
        0
    }
}

unsafe extern "C" fn rb_config_complete() -> c_int {
    let mut g = CONFIG.lock().unwrap_or_else(|e| e.into_inner());
    match g.as_mut() {
        Some(c) if c.script.is_some() => {
            c.config_complete = true;
            0
        }
        _ => {
            abi::error("the first parameter must be script=/path/to/ruby/script.rb");
            -1
        }
    }
}

unsafe extern "C" fn rb_get_ready() -> c_int {
    if let Some(c) = CONFIG.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
        c.get_ready = true;
    }
    0
}

unsafe extern "C" fn rb_after_fork() -> c_int {
    run("after_fork", -1, || {
        call("after_fork", &[])?;
        Ok(0)
    })
}

unsafe extern "C" fn rb_dump_plugin() {
    println!("ruby_api_version={}", env!("NBDKIT_RUBY_API_VERSION"));
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let has_script = CONFIG
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .is_some_and(|c| c.script.is_some());
    if has_script {
        run("dump_plugin", (), || {
            let r = call("dump_plugin", &[]);
            let _ = rb::call(QNIL, "eval", &[rb::string("$stdout.flush")]);
            r.map(|_| ())
        });
    }
}

unsafe extern "C" fn rb_cleanup() {
    if STARTED.get() == Some(&Ok(())) {
        run("cleanup", (), || call("cleanup", &[]).map(|_| ()));
    }
}

unsafe extern "C" fn rb_preconnect(readonly: c_int) -> c_int {
    run("preconnect", -1, move || {
        call("preconnect", &[rb::boolean(readonly != 0)])?;
        Ok(0)
    })
}

// ---------------------------------------------------------------------------
// Connections

/// A handle: the value the script's `open` returned, kept from the GC.
struct Handle {
    value: Box<Value>,
}

/// The handle's value (on the Ruby thread).
///
/// # Safety
/// `h` came from [`rb_open`] and is not yet closed.
unsafe fn hv(h: usize) -> Value {
    // SAFETY: the caller's contract.
    unsafe { *(*(h as *const Handle)).value }
}

unsafe extern "C" fn rb_open(readonly: c_int) -> H {
    let h = run("open", 0usize, move || {
        let Some(v) = call("open", &[rb::boolean(readonly != 0)])? else {
            return Err(Fail::Msg("missing callback: open".into()));
        };
        let mut value = Box::new(v);
        // SAFETY: a stable address, unregistered in close.
        unsafe { rb::rb_gc_register_address(&mut *value) };
        Ok(Box::into_raw(Box::new(Handle { value })) as usize)
    });
    h as H
}

unsafe extern "C" fn rb_close(h: H) {
    if h.is_null() {
        return;
    }
    let h = h as usize;
    let done = thread::running()
        && thread::on_ruby(move || {
            // SAFETY: the server closes each handle from rb_open once.
            let mut hd = unsafe { Box::from_raw(h as *mut Handle) };
            let r = call("close", &[*hd.value]);
            // SAFETY: registered in open.
            unsafe { rb::rb_gc_unregister_address(&mut *hd.value) };
            r.err()
        })
        .map(|e| {
            if let Some(e) = e {
                report("close", e);
            }
        })
        .is_some();
    if !done {
        abi::error("ruby: close: internal error");
    }
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

unsafe extern "C" fn rb_get_size(h: H) -> i64 {
    let h = h as usize;
    run("get_size", -1, move || {
        // SAFETY: a live handle.
        match call("get_size", &[unsafe { hv(h) }])? {
            Some(v) => size_of("get_size", v),
            None => Err(Fail::Msg("missing callback: get_size".into())),
        }
    })
}

/// A boolean callback: its result's truth; without it, whether the script
/// defines `plain`, else `default`.
fn boolean(h: H, name: &'static str, plain: Option<&'static str>, default: bool) -> c_int {
    let h = h as usize;
    run(name, -1, move || {
        // SAFETY: a live handle.
        match call(name, &[unsafe { hv(h) }])? {
            Some(v) => Ok(c_int::from(rb::truthy(v))),
            None => Ok(c_int::from(plain.map_or(default, defined))),
        }
    })
}

unsafe extern "C" fn rb_can_write(h: H) -> c_int {
    boolean(h, "can_write", Some("pwrite"), false)
}

unsafe extern "C" fn rb_can_flush(h: H) -> c_int {
    boolean(h, "can_flush", Some("flush"), false)
}

unsafe extern "C" fn rb_is_rotational(h: H) -> c_int {
    boolean(h, "is_rotational", None, false)
}

unsafe extern "C" fn rb_can_trim(h: H) -> c_int {
    boolean(h, "can_trim", Some("trim"), false)
}

unsafe extern "C" fn rb_can_zero(h: H) -> c_int {
    // Zeroing is on without it: `zero`, or the server's writes of zeroes.
    boolean(h, "can_zero", None, true)
}

unsafe extern "C" fn rb_can_multi_conn(h: H) -> c_int {
    boolean(h, "can_multi_conn", None, false)
}

unsafe extern "C" fn rb_can_extents(h: H) -> c_int {
    boolean(h, "can_extents", Some("extents"), false)
}

unsafe extern "C" fn rb_can_fast_zero(h: H) -> c_int {
    let hu = h as usize;
    run("can_fast_zero", -1, move || {
        // SAFETY: a live handle.
        match call("can_fast_zero", &[unsafe { hv(hu) }])? {
            Some(v) => Ok(c_int::from(rb::truthy(v))),
            // A fast zero fails fast when the script has no `zero`.
            None => Ok(c_int::from(!defined("zero"))),
        }
    })
}

/// `can_fua`/`can_cache`: true (native), false/nil, or a level number.
fn level(h: H, name: &'static str, native: c_int, fallback: &'static str, plain: c_int) -> c_int {
    let h = h as usize;
    run(name, -1, move || {
        // SAFETY: a live handle.
        match call(name, &[unsafe { hv(h) }])? {
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

unsafe extern "C" fn rb_can_fua(h: H) -> c_int {
    level(h, "can_fua", abi::FUA_NATIVE, "flush", abi::FUA_EMULATE)
}

unsafe extern "C" fn rb_can_cache(h: H) -> c_int {
    level(
        h,
        "can_cache",
        abi::CACHE_NATIVE,
        "cache",
        abi::CACHE_NATIVE,
    )
}

unsafe extern "C" fn rb_block_size(h: H, min: *mut u32, pref: *mut u32, max: *mut u32) -> c_int {
    let hu = h as usize;
    let r = run("block_size", None, move || {
        // SAFETY: a live handle.
        let Some(v) = call("block_size", &[unsafe { hv(hu) }])? else {
            return Ok(Some((0, 0, 0)));
        };
        let n: Vec<u32> = rb::array(v)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|x| rb::int(x).and_then(|n| u32::try_from(n).ok()))
            .collect();
        match n[..] {
            [a, b, c] => Ok(Some((a, b, c))),
            _ => Err(Fail::Msg("block_size did not return three Integers".into())),
        }
    });
    match r {
        Some((a, b, c)) => {
            // SAFETY: three u32s of the server's for the call.
            unsafe {
                *min = a;
                *pref = b;
                *max = c;
            }
            0
        }
        None => -1,
    }
}

fn bytes_of(v: Value) -> Option<String> {
    rb::str_bytes(v).map(|b| String::from_utf8_lossy(b).into_owned())
}

unsafe extern "C" fn rb_list_exports(
    readonly: c_int,
    is_tls: c_int,
    exports: *mut abi::Exports,
) -> c_int {
    let ex = exports as usize;
    let r = run("list_exports", None, move || {
        let args = [rb::boolean(readonly != 0), rb::boolean(is_tls != 0)];
        let Some(v) = call("list_exports", &args)? else {
            return Ok(Some(None));
        };
        let bad = || {
            Fail::Msg("list_exports did not return an Array of names or [name, description]".into())
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
        Ok(Some(Some(out)))
    });
    let Some(list) = r else { return -1 };
    let exports = ex as *mut abi::Exports;
    let Some(list) = list else {
        // SAFETY: the server's list for this call.
        return unsafe { abi::nbdkit_use_default_export(exports) };
    };
    for (n, d) in list {
        let n = abi::cstring(&n);
        let d = d.map(|d| abi::cstring(&d));
        let dp = d.as_ref().map_or(core::ptr::null(), |d| d.as_ptr());
        // SAFETY: the server's list and strings it copies.
        if unsafe { abi::nbdkit_add_export(exports, n.as_ptr(), dp) } == -1 {
            return -1;
        }
    }
    0
}

/// Hand a string to the server, which keeps it for the connection.
fn intern_str(s: &str) -> *const c_char {
    let c = abi::cstring(s);
    // SAFETY: a NUL-terminated string, copied by the server.
    unsafe { abi::nbdkit_strdup_intern(c.as_ptr()) }
}

unsafe extern "C" fn rb_default_export(readonly: c_int, is_tls: c_int) -> *const c_char {
    let r = run("default_export", None, move || {
        let args = [rb::boolean(readonly != 0), rb::boolean(is_tls != 0)];
        match call("default_export", &args)? {
            None => Ok(Some(String::new())),
            Some(v) => bytes_of(v)
                .map(Some)
                .ok_or_else(|| Fail::Msg("default_export did not return a String".into())),
        }
    });
    r.map_or(core::ptr::null(), |s| intern_str(&s))
}

unsafe extern "C" fn rb_export_description(h: H) -> *const c_char {
    let hu = h as usize;
    let r = run("export_description", None, move || {
        // SAFETY: a live handle.
        match call("export_description", &[unsafe { hv(hu) }])? {
            None => Ok(None),
            Some(v) => bytes_of(v)
                .map(Some)
                .ok_or_else(|| Fail::Msg("export_description did not return a String".into())),
        }
    });
    r.map_or(core::ptr::null(), |s| intern_str(&s))
}

// ---------------------------------------------------------------------------
// Data

fn uint(n: u64) -> Value {
    // SAFETY: plain value constructor.
    unsafe { rb::rb_ull2inum(n) }
}

unsafe extern "C" fn rb_pread(h: H, buf: *mut c_void, count: u32, offset: u64, _f: u32) -> c_int {
    let (hu, dst) = (h as usize, buf as usize);
    run("pread", -1, move || {
        // SAFETY: a live handle.
        let args = [unsafe { hv(hu) }, uint(count.into()), uint(offset)];
        let Some(v) = call("pread", &args)? else {
            return Err(Fail::Msg("missing callback: pread".into()));
        };
        let Some(b) = rb::str_bytes(v) else {
            return Err(Fail::Msg(format!(
                "pread did not return a String ({})",
                class_of(v)
            )));
        };
        if b.len() < count as usize {
            return Err(Fail::Msg(format!(
                "byte array returned from pread is too small ({} < {count} bytes)",
                b.len()
            )));
        }
        // SAFETY: the caller waits with its buffer of `count` bytes; `b`
        // has at least as many, and they cannot overlap.
        unsafe { core::ptr::copy_nonoverlapping(b.as_ptr(), dst as *mut u8, count as usize) };
        Ok(0)
    })
}

unsafe extern "C" fn rb_pwrite(
    h: H,
    buf: *const c_void,
    count: u32,
    offset: u64,
    flags: u32,
) -> c_int {
    let (hu, src) = (h as usize, buf as usize);
    run("pwrite", -1, move || {
        // SAFETY: the caller waits, lending `count` bytes at `src`.
        let data = unsafe { core::slice::from_raw_parts(src as *const u8, count as usize) };
        // SAFETY: a live handle.
        let args = [unsafe { hv(hu) }, rb::bytes(data), uint(offset)];
        match call_flags("pwrite", &args, flags)? {
            Some(_) => Ok(0),
            None => Err(Fail::Msg("missing callback: pwrite".into())),
        }
    })
}

/// A data callback with the handle and `args`; missing is "not implemented".
fn data(h: H, name: &'static str, args: [u64; 2], n: usize, flags: u32) -> c_int {
    let hu = h as usize;
    run(name, -1, move || {
        // SAFETY: a live handle.
        let mut a = vec![unsafe { hv(hu) }];
        a.extend(args[..n].iter().map(|&x| uint(x)));
        match call_flags(name, &a, flags)? {
            Some(_) => Ok(0),
            None => Err(Fail::Msg(format!("not implemented: {name}"))),
        }
    })
}

unsafe extern "C" fn rb_flush(h: H, flags: u32) -> c_int {
    data(h, "flush", [0, 0], 0, flags)
}

unsafe extern "C" fn rb_trim(h: H, count: u32, offset: u64, flags: u32) -> c_int {
    data(h, "trim", [count.into(), offset], 2, flags)
}

unsafe extern "C" fn rb_cache(h: H, count: u32, offset: u64, flags: u32) -> c_int {
    data(h, "cache", [count.into(), offset], 2, flags)
}

unsafe extern "C" fn rb_zero(h: H, count: u32, offset: u64, flags: u32) -> c_int {
    let hu = h as usize;
    let r = run("zero", None, move || {
        let may_trim = flags & abi::FLAG_MAY_TRIM != 0;
        // SAFETY: a live handle.
        let args = [
            unsafe { hv(hu) },
            uint(count.into()),
            uint(offset),
            rb::boolean(may_trim),
        ];
        let r = call_flags("zero", &args, flags);
        // Nbdkit.set_error(Errno::EOPNOTSUPP) (or no zero at all) asks
        // the server to write zeroes instead.
        let e = LAST_ERROR.with(Cell::get);
        if matches!(r, Ok(None)) || e == libc::EOPNOTSUPP || e == libc::ENOTSUP {
            return Ok(Some(Some(libc::EOPNOTSUPP)));
        }
        r.map(|_| Some(None))
    });
    match r {
        None => -1,
        Some(None) => 0,
        Some(Some(e)) => {
            abi::debug("zero falling back to pwrite");
            abi::set_error(e);
            -1
        }
    }
}

unsafe extern "C" fn rb_extents(
    h: H,
    count: u32,
    offset: u64,
    flags: u32,
    extents: *mut abi::Extents,
) -> c_int {
    let hu = h as usize;
    let r = run("extents", None, move || {
        // SAFETY: a live handle.
        let args = [
            unsafe { hv(hu) },
            uint(count.into()),
            uint(offset),
            uint(flags.into()),
        ];
        let Some(v) = call("extents", &args)? else {
            return Ok(Some(vec![(offset, u64::from(count), 0)]));
        };
        let bad = || Fail::Msg("extents did not return an Array of [offset, length, type]".into());
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
        Ok(Some(out))
    });
    let Some(list) = r else { return -1 };
    for (o, l, t) in list {
        // SAFETY: the server's list for this call.
        if unsafe { abi::nbdkit_add_extent(extents, o, l, t) } == -1 {
            return -1;
        }
    }
    0
}

// ---------------------------------------------------------------------------
// Registration

const CONFIG_HELP: &CStr = c"script=<FILENAME>     (required) The Ruby plugin to run.\n\
[other arguments may be used by the plugin that you load]";

static PLUGIN: abi::Registration = abi::Registration(abi::Plugin {
    thread_model: abi::THREAD_MODEL_SERIALIZE_ALL_REQUESTS,
    name: c"ruby".as_ptr(),
    load: Some(rb_load),
    unload: Some(rb_unload),
    config: Some(rb_config),
    config_complete: Some(rb_config_complete),
    config_help: CONFIG_HELP.as_ptr(),
    open: Some(rb_open),
    close: Some(rb_close),
    get_size: Some(rb_get_size),
    can_write: Some(rb_can_write),
    can_flush: Some(rb_can_flush),
    is_rotational: Some(rb_is_rotational),
    can_trim: Some(rb_can_trim),
    dump_plugin: Some(rb_dump_plugin),
    can_zero: Some(rb_can_zero),
    can_fua: Some(rb_can_fua),
    pread: Some(rb_pread),
    pwrite: Some(rb_pwrite),
    flush: Some(rb_flush),
    trim: Some(rb_trim),
    zero: Some(rb_zero),
    magic_config_key: c"script".as_ptr(),
    can_multi_conn: Some(rb_can_multi_conn),
    can_extents: Some(rb_can_extents),
    extents: Some(rb_extents),
    can_cache: Some(rb_can_cache),
    cache: Some(rb_cache),
    can_fast_zero: Some(rb_can_fast_zero),
    preconnect: Some(rb_preconnect),
    get_ready: Some(rb_get_ready),
    after_fork: Some(rb_after_fork),
    list_exports: Some(rb_list_exports),
    default_export: Some(rb_default_export),
    export_description: Some(rb_export_description),
    cleanup: Some(rb_cleanup),
    block_size: Some(rb_block_size),
    ..abi::Plugin::EMPTY
});

/// The registration function the server calls when it loads this object.
#[no_mangle]
pub extern "C" fn plugin_init() -> *const c_void {
    PLUGIN.as_ptr()
}
