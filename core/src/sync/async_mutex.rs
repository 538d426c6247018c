//! An async lock whose guard may be held across `.await`: runtime-std
//! writes each reply of a connection whole under it (the replies of
//! concurrent requests never interleave on the wire), and holds it for a
//! whole connection under serialize_connections.
//!
//! The waiting is plain [`Waker`]s under one short mutex, so it runs on any
//! executor and loom checks it (`loom::future::block_on`): an unlock wakes
//! the longest waiter, and a waiter that is dropped after being woken, but
//! before it took the lock, passes the wake-up on, so no waiter is lost.

use alloc::collections::VecDeque;
use core::future::Future;
use core::mem::ManuallyDrop;
use core::ops::{Deref, DerefMut};
use core::pin::Pin;
use core::task::{Context, Poll, Waker};

use super::{lock, MutPtr, Mutex, UnsafeCell};

#[derive(Debug, Default)]
struct State {
    locked: bool,
    /// Waiting lockers, oldest first, each under its key.
    waiters: VecDeque<(u64, Waker)>,
    next_key: u64,
}

/// A value that one task at a time may use, across `.await`s.
#[derive(Debug)]
pub struct AsyncMutex<T> {
    state: Mutex<State>,
    value: UnsafeCell<T>,
}

// SAFETY: the value is only reached through a guard, and at most one guard
// exists at a time (`State::locked`), as for `std::sync::Mutex`.
unsafe impl<T: Send> Send for AsyncMutex<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for AsyncMutex<T> {}

/// The future of [`AsyncMutex::lock`].
#[derive(Debug)]
#[must_use = "futures do nothing unless polled"]
pub struct Lock<'a, T> {
    mutex: &'a AsyncMutex<T>,
    /// Our key while we may be in the waiter queue.
    key: Option<u64>,
}

/// The lock, held; released when dropped.
#[derive(Debug)]
pub struct AsyncMutexGuard<'a, T> {
    mutex: &'a AsyncMutex<T>,
    /// Dropped before the lock is let go (loom tracks the access it is).
    value: ManuallyDrop<MutPtr<T>>,
}

// SAFETY: the guard gives `&mut T` to the one thread that has it, as
// `std::sync::MutexGuard` does; moving it to another thread moves that
// exclusive access with it (which an async task's guard needs).
unsafe impl<T: Send> Send for AsyncMutexGuard<'_, T> {}
// SAFETY: `&guard` only gives `&T`.
unsafe impl<T: Sync> Sync for AsyncMutexGuard<'_, T> {}

impl<T> AsyncMutex<T> {
    /// An unlocked mutex over `value`.
    pub fn new(value: T) -> Self {
        AsyncMutex {
            state: Mutex::new(State::default()),
            value: UnsafeCell::new(value),
        }
    }

    /// Wait for the lock.
    pub fn lock(&self) -> Lock<'_, T> {
        Lock {
            mutex: self,
            key: None,
        }
    }

    /// The value back.
    pub fn into_inner(self) -> T {
        self.value.into_inner()
    }
}

impl<'a, T> Future for Lock<'a, T> {
    type Output = AsyncMutexGuard<'a, T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let mut s = lock(&this.mutex.state);
        if !s.locked {
            s.locked = true;
            if let Some(key) = this.key.take() {
                s.waiters.retain(|(k, _)| *k != key);
            }
            drop(s);
            return Poll::Ready(AsyncMutexGuard {
                mutex: this.mutex,
                value: ManuallyDrop::new(this.mutex.value.get_mut()),
            });
        }
        let queued = this
            .key
            .and_then(|key| s.waiters.iter_mut().find(|(k, _)| *k == key));
        match queued {
            Some((_, w)) => {
                if !w.will_wake(cx.waker()) {
                    *w = cx.waker().clone();
                }
            }
            None => {
                // First poll, or woken (and taken off the queue) but beaten
                // to the lock: queue (again).
                let key = s.next_key;
                s.next_key += 1;
                s.waiters.push_back((key, cx.waker().clone()));
                this.key = Some(key);
            }
        }
        Poll::Pending
    }
}

impl<T> Drop for Lock<'_, T> {
    fn drop(&mut self) {
        let Some(key) = self.key else { return };
        let mut s = lock(&self.mutex.state);
        let before = s.waiters.len();
        s.waiters.retain(|(k, _)| *k != key);
        if s.waiters.len() == before && !s.locked {
            // We were woken to take the lock and never will: wake the next.
            let next = s.waiters.pop_front();
            drop(s);
            if let Some((_, w)) = next {
                w.wake();
            }
        }
    }
}

impl<T> Deref for AsyncMutexGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the lock is held, so this guard is the only access.
        self.value.with(|p| unsafe { &*p })
    }
}

impl<T> DerefMut for AsyncMutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the lock is held, so this guard is the only access.
        self.value.with(|p| unsafe { &mut *p })
    }
}

impl<T> Drop for AsyncMutexGuard<'_, T> {
    fn drop(&mut self) {
        // SAFETY: dropped once, here, and not used after.
        unsafe { ManuallyDrop::drop(&mut self.value) };
        let next = {
            let mut s = lock(&self.mutex.state);
            s.locked = false;
            s.waiters.pop_front()
        };
        if let Some((_, w)) = next {
            w.wake();
        }
    }
}
