//! openraft glue for Cairn. openraft's types stay in here; the server talks to
//! [`RaftNode`].
//!
//! Modules:
//! - [`node`]: [`RaftNode`]: start/bootstrap, `write`, `read_index`, status.
//! - [`log_store`]: the raft log, a write-ahead log of segment files, group commit on a
//!   writer thread; [`legacy_log`] reads the redb log of earlier versions once.
//! - [`state_machine`]: applies committed entries to `cairn_storage::Store`; snapshots.
//! - [`network`]: the peer network: openraft's RPCs over a [`PeerTransport`].
//! - [`codec`]: byte formats of entries, votes and snapshot meta.
//! - [`types`]: the openraft type configuration.

// openraft's trait methods dictate `StorageError` (224 bytes) as the error type; our helpers
// return the same type rather than convert at every call.
#![allow(clippy::result_large_err)]

pub mod codec;
pub mod legacy_log;
pub mod log_store;
pub mod network;
pub mod node;
pub mod state_machine;
pub mod types;

pub use network::{NoPeers, PeerError, PeerFuture, PeerTransport};
pub use node::{MemberChange, MemberChangeError, NodeConfig, RaftNode, RaftStatus, WriteError};
pub use state_machine::ApplyListener;
pub use types::Origin;
