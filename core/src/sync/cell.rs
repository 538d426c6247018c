//! Outside loom: `loom::cell`'s API over `core::cell::UnsafeCell`, so that
//! code written against it runs unchanged (and loom tracks its accesses).

/// An `UnsafeCell` whose accesses go through [`MutPtr`].
#[derive(Debug)]
pub(crate) struct UnsafeCell<T>(core::cell::UnsafeCell<T>);

/// A raw pointer to a cell's contents.
#[derive(Debug)]
pub(crate) struct MutPtr<T>(*mut T);

impl<T> UnsafeCell<T> {
    pub(crate) const fn new(v: T) -> Self {
        UnsafeCell(core::cell::UnsafeCell::new(v))
    }

    pub(crate) fn get_mut(&self) -> MutPtr<T> {
        MutPtr(self.0.get())
    }

    pub(crate) fn into_inner(self) -> T {
        self.0.into_inner()
    }
}

impl<T> MutPtr<T> {
    /// Use the raw pointer.
    pub(crate) fn with<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0)
    }
}
