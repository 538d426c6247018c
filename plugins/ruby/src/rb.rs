//! The part of libruby's C API this plugin uses, declared by hand (the
//! functions are libruby's exported symbols; the special constants are
//! Ruby 3's on 64-bit hosts, checked by build.rs), and safe-ish helpers
//! that run Ruby code under `rb_protect` so that a Ruby exception never
//! unwinds through Rust frames that own anything.
//!
//! Everything here runs on the Ruby thread (see `crate::thread`).

use core::ffi::{c_char, c_int, c_long, c_void};
use std::ffi::CString;

pub(crate) type Value = usize;
pub(crate) type Id = usize;

pub(crate) const QFALSE: Value = 0x00;
pub(crate) const QNIL: Value = 0x08;
pub(crate) const QTRUE: Value = 0x14;

extern "C" {
    pub(crate) fn ruby_init_stack(addr: *mut Value);
    pub(crate) fn ruby_setup() -> c_int;
    pub(crate) fn ruby_options(argc: c_int, argv: *mut *mut c_char) -> *mut c_void;
    pub(crate) fn ruby_script(name: *const c_char);
    pub(crate) fn ruby_cleanup(ex: c_int) -> c_int;
    pub(crate) fn rb_protect(
        f: unsafe extern "C" fn(Value) -> Value,
        arg: Value,
        state: *mut c_int,
    ) -> Value;
    pub(crate) fn rb_errinfo() -> Value;
    pub(crate) fn rb_set_errinfo(v: Value);
    pub(crate) fn rb_intern2(name: *const c_char, len: c_long) -> Id;
    pub(crate) fn rb_funcallv(recv: Value, mid: Id, argc: c_int, argv: *const Value) -> Value;
    pub(crate) fn rb_define_module(name: *const c_char) -> Value;
    pub(crate) fn rb_define_singleton_method(
        obj: Value,
        name: *const c_char,
        f: *const c_void,
        argc: c_int,
    );
    pub(crate) fn rb_eval_string_protect(s: *const c_char, state: *mut c_int) -> Value;
    pub(crate) fn rb_load_protect(path: Value, wrap: c_int, state: *mut c_int);
    pub(crate) fn rb_str_new(p: *const c_char, len: c_long) -> Value;
    pub(crate) fn rb_utf8_str_new(p: *const c_char, len: c_long) -> Value;
    pub(crate) fn rb_check_string_type(v: Value) -> Value;
    pub(crate) fn rb_check_array_type(v: Value) -> Value;
    pub(crate) fn rb_string_value_ptr(v: *mut Value) -> *mut c_char;
    pub(crate) fn rb_ary_entry(a: Value, i: c_long) -> Value;
    pub(crate) fn rb_num2ll(v: Value) -> i64;
    pub(crate) fn rb_ll2inum(n: i64) -> Value;
    pub(crate) fn rb_ull2inum(n: u64) -> Value;
    pub(crate) fn rb_obj_method_arity(obj: Value, mid: Id) -> c_int;
    pub(crate) fn rb_gc_register_address(p: *mut Value);
    pub(crate) fn rb_gc_unregister_address(p: *mut Value);
}

/// `RTEST`.
pub(crate) fn truthy(v: Value) -> bool {
    v & !QNIL != 0
}

pub(crate) fn is_fixnum(v: Value) -> bool {
    v & 1 == 1
}

pub(crate) fn fixnum(v: Value) -> i64 {
    (v as i64) >> 1
}

pub(crate) fn boolean(b: bool) -> Value {
    if b {
        QTRUE
    } else {
        QFALSE
    }
}

pub(crate) fn intern(name: &str) -> Id {
    // SAFETY: a pointer and length of a live string.
    unsafe { rb_intern2(name.as_ptr().cast(), name.len() as c_long) }
}

/// A Ruby exception.
pub(crate) struct Exception(pub(crate) Value);

/// Run `f` under `rb_protect`: its value, or the exception it raised.
/// `f` must own nothing that needs dropping when Ruby unwinds through it.
pub(crate) fn protect(mut f: impl FnMut() -> Value) -> Result<Value, Exception> {
    unsafe extern "C" fn tramp(arg: Value) -> Value {
        // SAFETY: `arg` is the `&mut dyn FnMut` below, live for the call.
        let f = unsafe { &mut *(arg as *mut &mut dyn FnMut() -> Value) };
        f()
    }
    let mut dynf: &mut dyn FnMut() -> Value = &mut f;
    let mut state = 0;
    // SAFETY: the trampoline gets a pointer to `dynf`, which outlives the call.
    let r = unsafe { rb_protect(tramp, &mut dynf as *mut _ as Value, &mut state) };
    if state == 0 {
        Ok(r)
    } else {
        // SAFETY: plain calls on the Ruby thread.
        let e = unsafe { rb_errinfo() };
        unsafe { rb_set_errinfo(QNIL) };
        Err(Exception(e))
    }
}

/// `recv.name(*args)` (private methods too), protected.
pub(crate) fn call(recv: Value, name: &str, args: &[Value]) -> Result<Value, Exception> {
    let id = intern(name);
    protect(|| {
        // SAFETY: `args` is a live slice of VALUEs on this thread's stack.
        unsafe { rb_funcallv(recv, id, args.len() as c_int, args.as_ptr()) }
    })
}

/// A binary (ASCII-8BIT) Ruby string of `b`.
pub(crate) fn bytes(b: &[u8]) -> Value {
    // SAFETY: a pointer and length of live bytes, copied by Ruby.
    unsafe { rb_str_new(b.as_ptr().cast(), b.len() as c_long) }
}

/// A UTF-8 Ruby string of `s`.
pub(crate) fn string(s: &str) -> Value {
    // SAFETY: as above.
    unsafe { rb_utf8_str_new(s.as_ptr().cast(), s.len() as c_long) }
}

/// The bytes of a Ruby `String` (or of an object with `to_str`); `None`
/// for anything else.
pub(crate) fn str_bytes(v: Value) -> Option<&'static [u8]> {
    // SAFETY: a plain call on the Ruby thread.
    let mut s = protect(|| unsafe { rb_check_string_type(v) }).ok()?;
    if s == QNIL {
        return None;
    }
    let len = call(s, "bytesize", &[]).ok().filter(|&l| is_fixnum(l))?;
    // SAFETY: `s` is a String, so this does not raise; its bytes stay
    // valid while `s` is alive and unchanged, which the caller's use
    // (before it returns to Ruby) ensures.
    let p = unsafe { rb_string_value_ptr(&mut s) };
    // SAFETY: `len` bytes at `p`, the string's contents.
    Some(unsafe { core::slice::from_raw_parts(p.cast::<u8>(), fixnum(len) as usize) })
}

/// An `Integer` as i64 (`None` for anything else or out of range).
pub(crate) fn int(v: Value) -> Option<i64> {
    if is_fixnum(v) {
        return Some(fixnum(v));
    }
    let cls = call(v, "is_a?", &[integer_class()?]).ok()?;
    if !truthy(cls) {
        return None;
    }
    let mut out = 0i64;
    // SAFETY: a plain call; a RangeError is caught by rb_protect.
    protect(|| {
        out = unsafe { rb_num2ll(v) };
        QNIL
    })
    .ok()?;
    Some(out)
}

fn integer_class() -> Option<Value> {
    let s = CString::new("Integer").ok()?;
    let mut state = 0;
    // SAFETY: a NUL-terminated Ruby expression.
    let v = unsafe { rb_eval_string_protect(s.as_ptr(), &mut state) };
    (state == 0).then_some(v)
}

/// The elements of an `Array` (or of an object with `to_ary`); `None` for
/// anything else.
pub(crate) fn array(v: Value) -> Option<Vec<Value>> {
    // SAFETY: a plain call on the Ruby thread.
    let a = protect(|| unsafe { rb_check_array_type(v) }).ok()?;
    if a == QNIL {
        return None;
    }
    let n = call(a, "length", &[]).ok().filter(|&l| is_fixnum(l))?;
    // SAFETY: indexes below the length of the array.
    Some(
        (0..fixnum(n))
            .map(|i| unsafe { rb_ary_entry(a, i as c_long) })
            .collect(),
    )
}
