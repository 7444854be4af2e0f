//! etcd's gRPC errors, as data.
//!
//! Clients (Go `clientv3`, `etcdctl`, kube-apiserver, the Rust `etcd-client`)
//! recognise etcd errors by their gRPC code *and* by their message text, so
//! Cairn must send exactly etcd's strings. Each [`EtcdError`] variant is one
//! `ErrGRPC*` value of etcd 3.5's `api/v3rpc/rpctypes`, with the gRPC code
//! etcd 3.5 uses and the message byte for byte.
//!
//! ```
//! use cairn_proto::rpctypes::EtcdError;
//!
//! let status = EtcdError::Compacted.status();
//! assert_eq!(status.code(), tonic::Code::OutOfRange);
//! assert_eq!(status.message(), "etcdserver: mvcc: required revision has been compacted");
//! assert_eq!(EtcdError::from_message(status.message()), Some(EtcdError::Compacted));
//! ```
//!
//! Errors etcd does not list here are sent by etcd as `Code::Unknown` with
//! their internal text; see [`unknown`].

use std::fmt;

use tonic::{Code, Status};

macro_rules! etcd_errors {
    ($( $(#[$doc:meta])* $variant:ident => ($go:ident, $code:ident, $msg:literal), )*) => {
        /// One of etcd 3.5's gRPC errors (`rpctypes.ErrGRPC*`).
        ///
        /// The variant name is the Go name without its `ErrGRPC` prefix (with
        /// acronyms in Rust case, e.g. `LeaseTtlTooLarge`).
        #[non_exhaustive]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum EtcdError {
            $(
                $(#[$doc])*
                #[doc = concat!("`", stringify!($go), "`: ", stringify!($code), ", \"", $msg, "\".")]
                $variant,
            )*
        }

        impl EtcdError {
            /// Every error of the catalogue, in etcd's order.
            pub const ALL: &'static [EtcdError] = &[$(EtcdError::$variant,)*];

            /// The gRPC status code etcd 3.5 sends for this error.
            pub const fn code(self) -> Code {
                match self {
                    $(EtcdError::$variant => Code::$code,)*
                }
            }

            /// The exact message etcd sends (always starts with `etcdserver: `).
            pub const fn message(self) -> &'static str {
                match self {
                    $(EtcdError::$variant => $msg,)*
                }
            }

            /// The Go identifier in etcd's `rpctypes` package, e.g. `"ErrGRPCEmptyKey"`.
            pub const fn go_name(self) -> &'static str {
                match self {
                    $(EtcdError::$variant => stringify!($go),)*
                }
            }
        }
    };
}

etcd_errors! {
    EmptyKey => (ErrGRPCEmptyKey, InvalidArgument, "etcdserver: key is not provided"),
    KeyNotFound => (ErrGRPCKeyNotFound, InvalidArgument, "etcdserver: key not found"),
    ValueProvided => (ErrGRPCValueProvided, InvalidArgument, "etcdserver: value is provided"),
    LeaseProvided => (ErrGRPCLeaseProvided, InvalidArgument, "etcdserver: lease is provided"),
    TooManyOps => (ErrGRPCTooManyOps, InvalidArgument, "etcdserver: too many operations in txn request"),
    DuplicateKey => (ErrGRPCDuplicateKey, InvalidArgument, "etcdserver: duplicate key given in txn request"),
    InvalidClientApiVersion => (ErrGRPCInvalidClientAPIVersion, InvalidArgument, "etcdserver: invalid client api version"),
    InvalidSortOption => (ErrGRPCInvalidSortOption, InvalidArgument, "etcdserver: invalid sort option"),
    Compacted => (ErrGRPCCompacted, OutOfRange, "etcdserver: mvcc: required revision has been compacted"),
    FutureRev => (ErrGRPCFutureRev, OutOfRange, "etcdserver: mvcc: required revision is a future revision"),
    NoSpace => (ErrGRPCNoSpace, ResourceExhausted, "etcdserver: mvcc: database space exceeded"),
    LeaseNotFound => (ErrGRPCLeaseNotFound, NotFound, "etcdserver: requested lease not found"),
    LeaseExist => (ErrGRPCLeaseExist, FailedPrecondition, "etcdserver: lease already exists"),
    LeaseTtlTooLarge => (ErrGRPCLeaseTTLTooLarge, OutOfRange, "etcdserver: too large lease TTL"),
    WatchCanceled => (ErrGRPCWatchCanceled, Cancelled, "etcdserver: watch canceled"),
    MemberExist => (ErrGRPCMemberExist, FailedPrecondition, "etcdserver: member ID already exist"),
    PeerUrlExist => (ErrGRPCPeerURLExist, FailedPrecondition, "etcdserver: Peer URLs already exists"),
    MemberNotEnoughStarted => (ErrGRPCMemberNotEnoughStarted, FailedPrecondition, "etcdserver: re-configuration failed due to not enough started members"),
    MemberBadUrls => (ErrGRPCMemberBadURLs, InvalidArgument, "etcdserver: given member URLs are invalid"),
    MemberNotFound => (ErrGRPCMemberNotFound, NotFound, "etcdserver: member not found"),
    MemberNotLearner => (ErrGRPCMemberNotLearner, FailedPrecondition, "etcdserver: can only promote a learner member"),
    LearnerNotReady => (ErrGRPCLearnerNotReady, FailedPrecondition, "etcdserver: can only promote a learner member which is in sync with leader"),
    TooManyLearners => (ErrGRPCTooManyLearners, FailedPrecondition, "etcdserver: too many learner members in cluster"),
    ClusterIdMismatch => (ErrGRPCClusterIDMismatch, FailedPrecondition, "etcdserver: cluster ID mismatch"),
    RequestTooLarge => (ErrGRPCRequestTooLarge, InvalidArgument, "etcdserver: request is too large"),
    RequestTooManyRequests => (ErrGRPCRequestTooManyRequests, ResourceExhausted, "etcdserver: too many requests"),
    RootUserNotExist => (ErrGRPCRootUserNotExist, FailedPrecondition, "etcdserver: root user does not exist"),
    RootRoleNotExist => (ErrGRPCRootRoleNotExist, FailedPrecondition, "etcdserver: root user does not have root role"),
    UserAlreadyExist => (ErrGRPCUserAlreadyExist, FailedPrecondition, "etcdserver: user name already exists"),
    UserEmpty => (ErrGRPCUserEmpty, InvalidArgument, "etcdserver: user name is empty"),
    UserNotFound => (ErrGRPCUserNotFound, FailedPrecondition, "etcdserver: user name not found"),
    RoleAlreadyExist => (ErrGRPCRoleAlreadyExist, FailedPrecondition, "etcdserver: role name already exists"),
    RoleNotFound => (ErrGRPCRoleNotFound, FailedPrecondition, "etcdserver: role name not found"),
    RoleEmpty => (ErrGRPCRoleEmpty, InvalidArgument, "etcdserver: role name is empty"),
    AuthFailed => (ErrGRPCAuthFailed, InvalidArgument, "etcdserver: authentication failed, invalid user ID or password"),
    PermissionNotGiven => (ErrGRPCPermissionNotGiven, InvalidArgument, "etcdserver: permission not given"),
    PermissionDenied => (ErrGRPCPermissionDenied, PermissionDenied, "etcdserver: permission denied"),
    RoleNotGranted => (ErrGRPCRoleNotGranted, FailedPrecondition, "etcdserver: role is not granted to the user"),
    PermissionNotGranted => (ErrGRPCPermissionNotGranted, FailedPrecondition, "etcdserver: permission is not granted to the role"),
    AuthNotEnabled => (ErrGRPCAuthNotEnabled, FailedPrecondition, "etcdserver: authentication is not enabled"),
    InvalidAuthToken => (ErrGRPCInvalidAuthToken, Unauthenticated, "etcdserver: invalid auth token"),
    InvalidAuthMgmt => (ErrGRPCInvalidAuthMgmt, InvalidArgument, "etcdserver: invalid auth management"),
    AuthOldRevision => (ErrGRPCAuthOldRevision, InvalidArgument, "etcdserver: revision of auth store is old"),
    NoLeader => (ErrGRPCNoLeader, Unavailable, "etcdserver: no leader"),
    NotLeader => (ErrGRPCNotLeader, FailedPrecondition, "etcdserver: not leader"),
    LeaderChanged => (ErrGRPCLeaderChanged, Unavailable, "etcdserver: leader changed"),
    NotCapable => (ErrGRPCNotCapable, FailedPrecondition, "etcdserver: not capable"),
    Stopped => (ErrGRPCStopped, Unavailable, "etcdserver: server stopped"),
    Timeout => (ErrGRPCTimeout, Unavailable, "etcdserver: request timed out"),
    TimeoutDueToLeaderFail => (ErrGRPCTimeoutDueToLeaderFail, Unavailable, "etcdserver: request timed out, possibly due to previous leader failure"),
    TimeoutDueToConnectionLost => (ErrGRPCTimeoutDueToConnectionLost, Unavailable, "etcdserver: request timed out, possibly due to connection lost"),
    TimeoutWaitAppliedIndex => (ErrGRPCTimeoutWaitAppliedIndex, Unavailable, "etcdserver: request timed out, waiting for the applied index took too long"),
    Unhealthy => (ErrGRPCUnhealthy, Unavailable, "etcdserver: unhealthy cluster"),
    Corrupt => (ErrGRPCCorrupt, DataLoss, "etcdserver: corrupt cluster"),
    // Unavailable in etcd 3.5 (checked against 3.5.1); FailedPrecondition from 3.6 (etcd#12985).
    NotSupportedForLearner => (ErrGRPCNotSupportedForLearner, Unavailable, "etcdserver: rpc not supported for learner"),
    BadLeaderTransferee => (ErrGRPCBadLeaderTransferee, FailedPrecondition, "etcdserver: bad leader transferee"),
    WrongDowngradeVersionFormat => (ErrGRPCWrongDowngradeVersionFormat, InvalidArgument, "etcdserver: wrong downgrade target version format"),
    InvalidDowngradeTargetVersion => (ErrGRPCInvalidDowngradeTargetVersion, InvalidArgument, "etcdserver: invalid downgrade target version"),
    ClusterVersionUnavailable => (ErrGRPCClusterVersionUnavailable, FailedPrecondition, "etcdserver: cluster version not found during downgrade"),
    DowngradeInProcess => (ErrGRPCDowngradeInProcess, FailedPrecondition, "etcdserver: cluster has a downgrade job in progress"),
    NoInflightDowngrade => (ErrGRPCNoInflightDowngrade, FailedPrecondition, "etcdserver: no inflight downgrade job"),
    Canceled => (ErrGRPCCanceled, Cancelled, "etcdserver: request canceled"),
    DeadlineExceeded => (ErrGRPCDeadlineExceeded, DeadlineExceeded, "etcdserver: context deadline exceeded"),
}

impl EtcdError {
    /// The code and message as a [`RpcError`] value.
    pub const fn rpc_error(self) -> RpcError {
        RpcError { code: self.code(), message: self.message() }
    }

    /// A fresh `tonic::Status` carrying this error's code and exact message.
    pub fn status(&self) -> Status {
        Status::new(self.code(), self.message())
    }

    /// The error whose message is exactly `message`, if any (how etcd's own
    /// client maps a received status back to an error).
    pub fn from_message(message: &str) -> Option<EtcdError> {
        Self::ALL.iter().copied().find(|e| e.message() == message)
    }

    /// The error matching a received status (same code and same message).
    pub fn from_status(status: &Status) -> Option<EtcdError> {
        Self::from_message(status.message()).filter(|e| e.code() == status.code())
    }
}

impl fmt::Display for EtcdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for EtcdError {}

impl From<EtcdError> for Status {
    fn from(e: EtcdError) -> Status {
        e.status()
    }
}

/// A gRPC code and message pair, for errors handled as plain data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RpcError {
    /// gRPC status code.
    pub code: Code,
    /// Exact message text.
    pub message: &'static str,
}

impl RpcError {
    /// A fresh `tonic::Status` with this code and message.
    pub fn status(&self) -> Status {
        Status::new(self.code, self.message)
    }
}

impl From<EtcdError> for RpcError {
    fn from(e: EtcdError) -> RpcError {
        e.rpc_error()
    }
}

/// What etcd sends for an error outside the catalogue: `Code::Unknown` with
/// the internal error text.
pub fn unknown(message: impl Into<String>) -> Status {
    Status::new(Code::Unknown, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn selected_codes_and_messages() {
        let cases = [
            (EtcdError::EmptyKey, Code::InvalidArgument, "etcdserver: key is not provided"),
            (EtcdError::Compacted, Code::OutOfRange, "etcdserver: mvcc: required revision has been compacted"),
            (EtcdError::FutureRev, Code::OutOfRange, "etcdserver: mvcc: required revision is a future revision"),
            (EtcdError::LeaseNotFound, Code::NotFound, "etcdserver: requested lease not found"),
            (EtcdError::LeaseTtlTooLarge, Code::OutOfRange, "etcdserver: too large lease TTL"),
            (EtcdError::NoSpace, Code::ResourceExhausted, "etcdserver: mvcc: database space exceeded"),
            (EtcdError::NotCapable, Code::FailedPrecondition, "etcdserver: not capable"),
            (EtcdError::NotSupportedForLearner, Code::Unavailable, "etcdserver: rpc not supported for learner"),
            (EtcdError::InvalidAuthToken, Code::Unauthenticated, "etcdserver: invalid auth token"),
            (EtcdError::PeerUrlExist, Code::FailedPrecondition, "etcdserver: Peer URLs already exists"),
            (EtcdError::Corrupt, Code::DataLoss, "etcdserver: corrupt cluster"),
            (EtcdError::DeadlineExceeded, Code::DeadlineExceeded, "etcdserver: context deadline exceeded"),
            (EtcdError::WatchCanceled, Code::Cancelled, "etcdserver: watch canceled"),
        ];
        for (err, code, msg) in cases {
            assert_eq!(err.code(), code, "{err:?}");
            assert_eq!(err.message(), msg, "{err:?}");
            let st = err.status();
            assert_eq!(st.code(), code);
            assert_eq!(st.message(), msg);
            assert_eq!(Status::from(err).message(), msg);
            assert_eq!(err.rpc_error().status().code(), code);
            assert_eq!(err.to_string(), msg);
        }
        assert_eq!(EtcdError::EmptyKey.go_name(), "ErrGRPCEmptyKey");
        assert_eq!(EtcdError::LeaseTtlTooLarge.go_name(), "ErrGRPCLeaseTTLTooLarge");
    }

    #[test]
    fn catalogue_is_complete_and_unambiguous() {
        assert_eq!(EtcdError::ALL.len(), 63);
        let messages: HashSet<_> = EtcdError::ALL.iter().map(|e| e.message()).collect();
        assert_eq!(messages.len(), EtcdError::ALL.len(), "duplicate message");
        for e in EtcdError::ALL {
            assert!(e.message().starts_with("etcdserver: "), "{e:?}");
            assert!(e.go_name().starts_with("ErrGRPC"), "{e:?}");
            assert_eq!(EtcdError::from_message(e.message()), Some(*e));
            assert_eq!(EtcdError::from_status(&e.status()), Some(*e));
        }
        assert_eq!(EtcdError::from_message("etcdserver: nope"), None);
        let wrong_code = Status::new(Code::Internal, EtcdError::EmptyKey.message());
        assert_eq!(EtcdError::from_status(&wrong_code), None);
        assert_eq!(unknown("boom").code(), Code::Unknown);
    }
}
