//! Locks that stay usable after a panic. A panic while answering is caught and answered 500,
//! and tally's critical sections are short assignments that leave their data whole at every
//! step: a poisoned lock says a panic happened, not that the data behind it is broken, so it
//! must not fail every later request.

use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

pub trait MutexExt<T: ?Sized> {
    fn locked(&self) -> MutexGuard<'_, T>;
}

impl<T: ?Sized> MutexExt<T> for Mutex<T> {
    fn locked(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

pub trait RwLockExt<T: ?Sized> {
    fn read_locked(&self) -> RwLockReadGuard<'_, T>;
    fn write_locked(&self) -> RwLockWriteGuard<'_, T>;
}

impl<T: ?Sized> RwLockExt<T> for RwLock<T> {
    fn read_locked(&self) -> RwLockReadGuard<'_, T> {
        self.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_locked(&self) -> RwLockWriteGuard<'_, T> {
        self.write().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_poisoned_by_a_panic_is_still_usable() {
        let (counter, table) = (Mutex::new(1), RwLock::new(vec![1]));
        let _ = std::panic::catch_unwind(|| {
            let (_held, _written) = (counter.lock().unwrap(), table.write().unwrap());
            panic!("a bug while holding both");
        });
        assert!(counter.is_poisoned() && table.is_poisoned());
        *counter.locked() += 1;
        table.write_locked().push(2);
        assert_eq!((*counter.locked(), table.read_locked().clone()), (2, vec![1, 2]));
    }
}
