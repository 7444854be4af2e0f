//! Errors, split as the style guide asks: a [`RequestError`] is one request's failure and
//! changes nothing; a [`StoreError`] is a failure of the node's storage (disk, corruption)
//! and must stop the node from applying further.

use std::fmt;

use crate::types::{LeaseId, Revision};

/// One request failed; the store is unchanged. Each variant maps to one etcd error.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RequestError {
    /// A Range/Put/DeleteRange/Compare without a key.
    EmptyKey,
    /// `ignore_value`/`ignore_lease` on a key that does not exist.
    KeyNotFound,
    /// `ignore_value` together with a value.
    ValueProvided,
    /// `ignore_lease` together with a lease.
    LeaseProvided,
    /// More than `--max-txn-ops` operations in one txn (or nested budget).
    TooManyOps,
    /// Two puts of one key, or a put inside a deleted range, in one txn.
    DuplicateKey,
    /// The requested revision is at or below the compacted revision.
    Compacted {
        compact_revision: Revision,
    },
    /// The requested revision is above the current revision.
    FutureRevision {
        current_revision: Revision,
    },
    /// The lease does not exist.
    LeaseNotFound {
        lease: LeaseId,
    },
    /// A grant of a lease ID that exists.
    LeaseExist {
        lease: LeaseId,
    },
    /// A grant with a TTL above `lease::MAX_LEASE_TTL_SECS`.
    LeaseTtlTooLarge {
        ttl_secs: i64,
    },
    /// The NOSPACE alarm is raised and the request adds data.
    NoSpace,
    /// The CORRUPT alarm is raised: no writes.
    Corrupt,
    /// Auth: Authenticate while auth is disabled.
    AuthNotEnabled,
    /// Auth: unknown user, wrong password, or a user without password.
    AuthFailed,
    /// Auth: AuthEnable without a user `root`.
    RootUserNotExist,
    /// Auth: AuthEnable while user `root` lacks the role `root`.
    RootRoleNotExist,
    UserAlreadyExist,
    UserEmpty,
    UserNotFound,
    RoleAlreadyExist,
    RoleEmpty,
    RoleNotFound,
    /// Auth: revoking a role the user does not have.
    RoleNotGranted,
    /// Auth: revoking a permission the role does not have.
    PermissionNotGranted,
    /// Auth: a change that would lock out the administrator (root while auth is enabled).
    InvalidAuthMgmt,
    /// Auth: the request was checked against an auth revision that is no longer current.
    AuthOldRevision,
    /// Auth: the user may not do this.
    PermissionDenied,
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestError::EmptyKey => write!(f, "key is not provided"),
            RequestError::KeyNotFound => write!(f, "key not found"),
            RequestError::ValueProvided => write!(f, "value is provided"),
            RequestError::LeaseProvided => write!(f, "lease is provided"),
            RequestError::TooManyOps => write!(f, "too many operations in txn request"),
            RequestError::DuplicateKey => write!(f, "duplicate key given in txn request"),
            RequestError::Compacted { compact_revision } => {
                write!(f, "required revision has been compacted (compact revision {compact_revision})")
            }
            RequestError::FutureRevision { current_revision } => {
                write!(f, "required revision is a future revision (current revision {current_revision})")
            }
            RequestError::LeaseNotFound { lease } => write!(f, "requested lease {lease:x} not found"),
            RequestError::LeaseExist { lease } => write!(f, "lease {lease:x} already exists"),
            RequestError::LeaseTtlTooLarge { ttl_secs } => write!(f, "too large lease TTL ({ttl_secs} s)"),
            RequestError::NoSpace => write!(f, "database space exceeded"),
            RequestError::Corrupt => write!(f, "corrupt cluster"),
            RequestError::AuthNotEnabled => write!(f, "authentication is not enabled"),
            RequestError::AuthFailed => write!(f, "authentication failed, invalid user ID or password"),
            RequestError::RootUserNotExist => write!(f, "root user does not exist"),
            RequestError::RootRoleNotExist => write!(f, "root user does not have root role"),
            RequestError::UserAlreadyExist => write!(f, "user name already exists"),
            RequestError::UserEmpty => write!(f, "user name is empty"),
            RequestError::UserNotFound => write!(f, "user name not found"),
            RequestError::RoleAlreadyExist => write!(f, "role name already exists"),
            RequestError::RoleEmpty => write!(f, "role name is empty"),
            RequestError::RoleNotFound => write!(f, "role name not found"),
            RequestError::RoleNotGranted => write!(f, "role is not granted to the user"),
            RequestError::PermissionNotGranted => write!(f, "permission is not granted to the role"),
            RequestError::InvalidAuthMgmt => write!(f, "invalid auth management"),
            RequestError::AuthOldRevision => write!(f, "revision of auth store is old"),
            RequestError::PermissionDenied => write!(f, "permission denied"),
        }
    }
}

impl std::error::Error for RequestError {}

/// The store itself failed. After one of these the node must not keep applying.
#[derive(Debug)]
#[non_exhaustive]
pub enum StoreError {
    /// redb reported an error (I/O, or its own corruption checks).
    Redb(redb::Error),
    /// A record failed its checksum or could not be decoded.
    Corrupt { what: String },
    /// The file was written by a format this build does not read.
    FormatVersion { found: u32, supported: u32 },
    /// A file operation outside redb failed: reading or writing a snapshot stream, creating
    /// the store file.
    Io(std::io::Error),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Redb(e) => write!(f, "storage error: {e}"),
            StoreError::Corrupt { what } => write!(f, "storage corrupt: {what}"),
            StoreError::FormatVersion { found, supported } => {
                write!(f, "data format version {found} is not supported (this build reads {supported})")
            }
            StoreError::Io(e) => write!(f, "I/O error: {e}"),
        }
    }
}

impl std::error::Error for StoreError {}

impl From<std::io::Error> for StoreError {
    fn from(e: std::io::Error) -> Self {
        StoreError::Io(e)
    }
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Redb(e.into())
            }
        }
    )*};
}
from_redb!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

/// A record or command could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "decode error: {}", self.0)
    }
}

impl std::error::Error for DecodeError {}

impl From<DecodeError> for StoreError {
    fn from(e: DecodeError) -> Self {
        StoreError::Corrupt { what: e.0 }
    }
}
