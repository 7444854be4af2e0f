//! The openraft type configuration. openraft types stay inside this crate: the rest of
//! Cairn sees [`cairn_storage::Command`] going in and [`cairn_storage::Applied`] coming out.

use std::fmt;

use cairn_storage::{Applied, Command};

/// Who proposed a command. A member that forwarded a command to the leader answers its
/// client from its own apply of the entry, found by `(member, seq)` (etcd's wait by request
/// ID). `member == 0`: proposed on the leader itself, answered by `client_write`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Origin {
    pub member: u64,
    pub seq: u64,
}

/// The application data of a log entry: a batch of replicated commands, applied in order,
/// each with its own revision. Batching concurrent proposals into one entry is our group
/// commit: openraft 0.9 appends and flushes one client write at a time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Request {
    pub commands: Vec<Command>,
    /// Empty (every command proposed on the leader) or one origin per command.
    pub origins: Vec<Origin>,
}

impl Request {
    /// Commands proposed on the leader itself.
    pub fn local(commands: Vec<Command>) -> Request {
        Request { commands, origins: Vec::new() }
    }

    /// The origin of command `i`.
    pub fn origin(&self, i: usize) -> Origin {
        self.origins.get(i).copied().unwrap_or_default()
    }
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "batch of {} command(s)", self.commands.len())
    }
}

/// What applying one entry produced, one outcome per command (none for blank and
/// membership entries).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Response(pub Vec<Applied>);

openraft::declare_raft_types!(
    /// Cairn's raft types: u64 member IDs (etcd's), the peer URL as the node address.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type NodeId = u64;
pub type LogId = openraft::LogId<NodeId>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type Vote = openraft::Vote<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, openraft::BasicNode>;
pub type StorageError = openraft::StorageError<NodeId>;

/// Wraps any error as an openraft storage error.
pub(crate) fn sto_err(verb: openraft::ErrorVerb, e: impl std::error::Error + 'static) -> StorageError {
    openraft::StorageIOError::new(openraft::ErrorSubject::Store, verb, openraft::AnyError::new(&e)).into()
}
