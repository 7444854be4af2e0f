//! Synchronisation primitives, swapped for loom's under `--cfg loom` so the watch hub can be
//! model-checked.

#[cfg(loom)]
pub use loom::sync::{Mutex, MutexGuard};
#[cfg(not(loom))]
pub use std::sync::{Mutex, MutexGuard};
