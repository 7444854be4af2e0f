//! The one table from Cairn's errors to etcd's gRPC status codes and messages.

use cairn_proto::rpctypes::EtcdError;
use cairn_raft::WriteError;
use cairn_storage::{RequestError, StoreError};
use tonic::Status;

/// A request's own failure, as etcd reports it.
pub fn request_error(e: &RequestError) -> Status {
    let k = match e {
        RequestError::EmptyKey => EtcdError::EmptyKey,
        RequestError::KeyNotFound => EtcdError::KeyNotFound,
        RequestError::ValueProvided => EtcdError::ValueProvided,
        RequestError::LeaseProvided => EtcdError::LeaseProvided,
        RequestError::TooManyOps => EtcdError::TooManyOps,
        RequestError::DuplicateKey => EtcdError::DuplicateKey,
        RequestError::Compacted { .. } => EtcdError::Compacted,
        RequestError::FutureRevision { .. } => EtcdError::FutureRev,
        RequestError::LeaseNotFound { .. } => EtcdError::LeaseNotFound,
        RequestError::LeaseExist { .. } => EtcdError::LeaseExist,
        RequestError::LeaseTtlTooLarge { .. } => EtcdError::LeaseTtlTooLarge,
        RequestError::NoSpace => EtcdError::NoSpace,
        RequestError::Corrupt => EtcdError::Corrupt,
        RequestError::AuthNotEnabled => EtcdError::AuthNotEnabled,
        RequestError::AuthFailed => EtcdError::AuthFailed,
        RequestError::RootUserNotExist => EtcdError::RootUserNotExist,
        RequestError::RootRoleNotExist => EtcdError::RootRoleNotExist,
        RequestError::UserAlreadyExist => EtcdError::UserAlreadyExist,
        RequestError::UserEmpty => EtcdError::UserEmpty,
        RequestError::UserNotFound => EtcdError::UserNotFound,
        RequestError::RoleAlreadyExist => EtcdError::RoleAlreadyExist,
        RequestError::RoleEmpty => EtcdError::RoleEmpty,
        RequestError::RoleNotFound => EtcdError::RoleNotFound,
        RequestError::RoleNotGranted => EtcdError::RoleNotGranted,
        RequestError::PermissionNotGranted => EtcdError::PermissionNotGranted,
        RequestError::InvalidAuthMgmt => EtcdError::InvalidAuthMgmt,
        RequestError::AuthOldRevision => EtcdError::AuthOldRevision,
        RequestError::PermissionDenied => EtcdError::PermissionDenied,
        // RequestError is non_exhaustive; a new variant must be added above.
        #[allow(unreachable_patterns)]
        _ => return Status::unknown(e.to_string()),
    };
    k.status()
}

/// A failure to get a request through raft.
pub fn write_error(e: &WriteError) -> Status {
    match e {
        WriteError::NoLeader => EtcdError::NoLeader.status(),
        // openraft refused the proposal: leadership moved between the check and the append.
        WriteError::NotLeader { .. } => EtcdError::LeaderChanged.status(),
        WriteError::Stopped => EtcdError::Stopped.status(),
        WriteError::LeaderLost => EtcdError::TimeoutDueToLeaderFail.status(),
        WriteError::Other(msg) => {
            tracing::warn!(error = %msg, "raft write failed");
            EtcdError::Timeout.status()
        }
    }
}

/// The node's storage failed; the request's effect is unknown to the client, as with etcd's
/// internal errors.
pub fn store_error(e: &StoreError) -> Status {
    tracing::error!(error = %e, "storage failure");
    Status::unknown(e.to_string())
}

pub fn no_leader() -> Status {
    EtcdError::NoLeader.status()
}

pub fn timeout() -> Status {
    EtcdError::Timeout.status()
}

pub fn too_large() -> Status {
    EtcdError::RequestTooLarge.status()
}
