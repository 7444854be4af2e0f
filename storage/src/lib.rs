//! Cairn's storage: etcd's MVCC model over a redb file. Synchronous and deterministic: no
//! gRPC, no tokio, no raft here; the raft crate drives [`Store::apply_batch`].
//!
//! Modules:
//! - [`types`]: requests, responses, commands and events in etcd's vocabulary.
//! - [`validate`]: the checks etcd makes before proposing (txn op budget, duplicate keys).
//! - [`store`]: [`Store`], apply and reads; physical compaction.
//! - [`read`]: range scans over the key index at a revision.
//! - [`lease`]: lease records, grant and revoke at apply, lease reads (no clock: the
//!   server's lessor decides expiry and proposes revocations).
//! - [`maintenance`]: alarms, hashes, space in use, defragmentation while serving.
//! - [`auth`]: users, roles, the enabled flag and the auth revision; apply of auth commands
//!   (password hashing, tokens and permission checks are the server's).
//! - [`schema`]: every table and meta key (see docs/FORMAT.md).
//! - [`record`], [`codec`]: byte formats of stored records and replicated commands.
//! - [`watch`]: the watcher registry and the history reads of lagging watchers.
//! - [`error`]: [`RequestError`] (one request failed) vs [`StoreError`] (the node failed).

pub mod auth;
pub mod codec;
pub mod error;
pub mod lease;
pub mod maintenance;
pub mod read;
pub mod record;
pub mod schema;
pub mod snapshot;
pub mod store;
pub mod sync;
pub mod types;
pub mod validate;
pub mod watch;

pub use error::{DecodeError, RequestError, StoreError};
pub use store::{ApplyEntry, BatchOutcome, ReadView, Store, StoreOptions};
pub use types::*;
