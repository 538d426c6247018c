//! The one place where locks shared across threads come from.
//!
//! With `std` they are the operating system's locks; without it, spin locks;
//! under `cfg(loom)` they are loom's models, so that the concurrency of the
//! plugins and the thread-model locks can be checked exhaustively
//! (`RUSTFLAGS="--cfg loom" cargo test --release -p nbdkit-core loom`).
//!
//! Beside the locks live the pieces of a runtime where threads meet, kept
//! here so loom can check them, and used by runtime-std (nothing here is a
//! model of code that runs elsewhere): the thread-model gate ([`gate`]), the
//! per-connection in-flight accounting with its drain ([`inflight`]), the
//! async lock that keeps one connection's replies whole and admits one
//! connection at a time under serialize_connections ([`async_mutex`]), the
//! blocking reply writer ([`reply_writer`]) and the worker pool of a
//! connection on blocking threads ([`pool`]). The waiting that needs an
//! async runtime is done with [`core::task::Waker`]s, so loom checks it too
//! (`loom::future::block_on`).

#[cfg(loom)]
pub use loom::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

#[cfg(all(not(loom), feature = "std"))]
pub use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

#[cfg(loom)]
pub use loom::sync::Condvar;
#[cfg(all(not(loom), feature = "std"))]
pub use std::sync::Condvar;

#[cfg(not(loom))]
pub use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
#[cfg(loom)]
pub use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

#[cfg(all(not(loom), feature = "std"))]
use cell::{MutPtr, UnsafeCell};
#[cfg(loom)]
use loom::cell::{MutPtr, UnsafeCell};

#[cfg(any(loom, feature = "std"))]
pub mod async_mutex;
#[cfg(all(not(loom), feature = "std"))]
mod cell;
#[cfg(any(loom, feature = "std"))]
pub mod gate;
#[cfg(any(loom, feature = "std"))]
pub mod inflight;
#[cfg(any(loom, feature = "std"))]
pub mod pool;
#[cfg(any(loom, feature = "std"))]
pub mod reply_writer;

#[cfg(all(test, loom))]
mod loom_tests;

#[cfg(all(not(loom), not(feature = "std")))]
pub use alloc::sync::Arc;
#[cfg(all(not(loom), not(feature = "std")))]
pub use spin::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Lock a mutex, ignoring poisoning: a panicking plugin call must not take
/// the whole server down with it.
#[cfg(any(loom, feature = "std"))]
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// Lock a mutex (spin locks cannot be poisoned).
#[cfg(all(not(loom), not(feature = "std")))]
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock()
}

/// Take a read lock, ignoring poisoning.
#[cfg(any(loom, feature = "std"))]
pub fn read<T>(m: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    match m.read() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// Take a write lock, ignoring poisoning.
#[cfg(any(loom, feature = "std"))]
pub fn write<T>(m: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    match m.write() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// Take a read lock.
#[cfg(all(not(loom), not(feature = "std")))]
pub fn read<T>(m: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    m.read()
}

/// Take a write lock.
#[cfg(all(not(loom), not(feature = "std")))]
pub fn write<T>(m: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    m.write()
}
