//! Domain types of the KV API: what a request asks and what a response says, in etcd's
//! vocabulary but free of protobuf. The server converts to and from the wire types.

/// A main revision number. etcd's revisions are `int64`; a fresh store is at revision 1 and
/// the first mutation creates revision 2.
pub type Revision = i64;

/// A lease ID; 0 means "no lease".
pub type LeaseId = i64;

/// One key at one revision, as etcd's `mvccpb.KeyValue`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyValue {
    pub key: Vec<u8>,
    pub create_revision: Revision,
    pub mod_revision: Revision,
    pub version: i64,
    pub value: Vec<u8>,
    pub lease: LeaseId,
}

/// etcd's `RangeRequest.SortOrder`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SortOrder {
    #[default]
    None,
    Ascend,
    Descend,
}

/// etcd's `RangeRequest.SortTarget`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SortTarget {
    #[default]
    Key,
    Version,
    Create,
    Mod,
    Value,
}

/// A Range request. `range_end` follows etcd: empty = the single key, `[0]` = every key
/// `>= key`, otherwise the half-open interval `[key, range_end)`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeRequest {
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
    pub limit: i64,
    pub revision: Revision,
    pub sort_order: SortOrder,
    pub sort_target: SortTarget,
    pub keys_only: bool,
    pub count_only: bool,
    pub min_mod_revision: Revision,
    pub max_mod_revision: Revision,
    pub min_create_revision: Revision,
    pub max_create_revision: Revision,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeResponse {
    pub kvs: Vec<KeyValue>,
    pub more: bool,
    pub count: i64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PutRequest {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub lease: LeaseId,
    pub prev_kv: bool,
    pub ignore_value: bool,
    pub ignore_lease: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PutResponse {
    pub prev_kv: Option<KeyValue>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeleteRangeRequest {
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
    pub prev_kv: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeleteRangeResponse {
    pub deleted: i64,
    pub prev_kvs: Vec<KeyValue>,
}

/// etcd's `Compare.CompareResult`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompareResult {
    Equal,
    Greater,
    Less,
    NotEqual,
}

/// What a compare looks at, with the operand. A wire compare whose target and union disagree
/// is converted with the operand's zero value, as etcd does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CompareTarget {
    Version(i64),
    Create(Revision),
    Mod(Revision),
    Value(Vec<u8>),
    Lease(LeaseId),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compare {
    pub result: CompareResult,
    pub target: CompareTarget,
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestOp {
    Range(RangeRequest),
    Put(PutRequest),
    DeleteRange(DeleteRangeRequest),
    Txn(TxnRequest),
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TxnRequest {
    pub compare: Vec<Compare>,
    pub success: Vec<RequestOp>,
    pub failure: Vec<RequestOp>,
}

impl TxnRequest {
    /// Only ranges on both branches (etcd's `isTxnReadonly`; a nested txn, even one that
    /// only reads, makes it a write as in etcd): served from a read view, not through raft.
    pub fn is_read_only(&self) -> bool {
        self.success.iter().chain(&self.failure).all(|op| matches!(op, RequestOp::Range(_)))
    }
}

/// A response inside a txn. On the wire each carries an inner header whose only field is
/// the revision of the whole txn (etcd 3.5 fills it so); the server adds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResponseOp {
    Range(RangeResponse),
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TxnResponse {
    pub succeeded: bool,
    pub responses: Vec<ResponseOp>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompactionRequest {
    pub revision: Revision,
    pub physical: bool,
}

/// A replicated, mutating request: what goes into the raft log and is applied in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Put(PutRequest),
    DeleteRange(DeleteRangeRequest),
    Txn(TxnRequest),
    Compact(CompactionRequest),
    /// Creates lease `id` with `ttl_secs` (the leader picked the ID when the client did not,
    /// and raised the TTL to the minimum; see `lease.rs`).
    LeaseGrant {
        id: LeaseId,
        ttl_secs: i64,
    },
    /// Deletes lease `id` and every key attached to it, in one revision.
    LeaseRevoke {
        id: LeaseId,
    },
    /// Raises or clears an alarm of a member (etcd's AlarmRequest ACTIVATE/DEACTIVATE).
    Alarm {
        action: AlarmAction,
        alarm: AlarmMember,
    },
    /// A change to users, roles or the enabled flag, or the assignment of a token.
    Auth(AuthCommand),
    /// `command`, applied only if the auth store is still at `auth_revision`: the server
    /// checked the request's permissions against that revision (etcd's auth-revision check;
    /// otherwise "revision of auth store is old").
    AuthChecked {
        auth_revision: u64,
        command: Box<Command>,
    },
}

/// etcd's `AlarmType` (NONE is not stored).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AlarmType {
    /// The backend passed `--quota-backend-bytes`: writes that add data fail.
    NoSpace,
    /// A corruption check failed.
    Corrupt,
}

/// One raised alarm: which member, which kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AlarmMember {
    pub member_id: u64,
    pub alarm: AlarmType,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AlarmAction {
    Activate,
    Deactivate,
}

/// etcd's `authpb.Permission.Type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PermType {
    Read,
    Write,
    ReadWrite,
}

/// A key-range permission of a role (etcd's `authpb.Permission`). `range_end` as in a
/// Range: empty = the single key, `[0]` = every key `>= key`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Permission {
    pub perm_type: PermType,
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
}

/// The replicated auth changes (etcd's `InternalRaftRequest.Auth*`). Passwords arrive
/// already bcrypt-hashed by the server, so that apply is deterministic and the log holds no
/// plain password.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthCommand {
    Enable,
    Disable,
    /// Assigns the simple token `<token_prefix>.<raft index>` to `name` (the server checked
    /// the password; apply checks that auth is on and the user can log in).
    Authenticate {
        name: String,
        token_prefix: String,
    },
    UserAdd {
        name: String,
        /// The bcrypt hash; empty with `no_password`.
        password_hash: Vec<u8>,
        no_password: bool,
    },
    UserDelete {
        name: String,
    },
    UserChangePassword {
        name: String,
        password_hash: Vec<u8>,
    },
    UserGrantRole {
        user: String,
        role: String,
    },
    UserRevokeRole {
        name: String,
        role: String,
    },
    RoleAdd {
        name: String,
    },
    RoleDelete {
        role: String,
    },
    RoleGrantPermission {
        name: String,
        perm: Permission,
    },
    RoleRevokePermission {
        role: String,
        key: Vec<u8>,
        range_end: Vec<u8>,
    },
}

/// What an applied auth command did, as far as the server must act on it (tokens).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthResponse {
    /// Done (or an accepted no-op, as etcd's repeated grant or enable).
    Ok,
    /// `token` now authenticates `name`.
    Token { name: String, token: String },
    /// The user was deleted or its password changed: its tokens are no longer valid.
    UserTokensRevoked { name: String },
    /// Auth was disabled: every token is dropped.
    Disabled,
}

impl Command {
    /// Roughly how many bytes the command takes encoded: bounds proposal batches.
    pub fn approx_size(&self) -> usize {
        fn op(o: &RequestOp) -> usize {
            match o {
                RequestOp::Range(r) => 96 + r.key.len() + r.range_end.len(),
                RequestOp::Put(p) => 32 + p.key.len() + p.value.len(),
                RequestOp::DeleteRange(d) => 16 + d.key.len() + d.range_end.len(),
                RequestOp::Txn(t) => txn(t),
            }
        }
        fn txn(t: &TxnRequest) -> usize {
            let compares: usize = t
                .compare
                .iter()
                .map(|c| {
                    24 + c.key.len()
                        + c.range_end.len()
                        + match &c.target {
                            CompareTarget::Value(v) => v.len(),
                            _ => 0,
                        }
                })
                .sum();
            16 + compares + t.success.iter().chain(t.failure.iter()).map(op).sum::<usize>()
        }
        match self {
            Command::Put(p) => 32 + p.key.len() + p.value.len(),
            Command::DeleteRange(d) => 16 + d.key.len() + d.range_end.len(),
            Command::Txn(t) => txn(t),
            Command::Compact(_) => 16,
            Command::LeaseGrant { .. } | Command::LeaseRevoke { .. } => 16,
            Command::Alarm { .. } => 16,
            Command::Auth(_) => 128,
            Command::AuthChecked { command, .. } => 8 + command.approx_size(),
        }
    }

    /// Whether etcd's applier refuses the command while the CORRUPT alarm is raised: every
    /// KV write, compaction and lease grant/revoke (auth and alarm changes still work).
    pub fn is_corrupt_refused(&self) -> bool {
        match self {
            Command::Put(_)
            | Command::DeleteRange(_)
            | Command::Txn(_)
            | Command::Compact(_)
            | Command::LeaseGrant { .. }
            | Command::LeaseRevoke { .. } => true,
            Command::AuthChecked { command, .. } => command.is_corrupt_refused(),
            Command::Alarm { .. } | Command::Auth(_) => false,
        }
    }

    /// etcd's quota cost: what the command adds to the backend. A command with cost > 0 is
    /// refused while the NOSPACE alarm is raised. As etcd counts it: a put is its key and
    /// value plus 256 bytes of overhead; a txn costs its costlier branch, counting only the
    /// puts directly in it; a lease grant costs 72 bytes.
    pub fn quota_cost(&self) -> usize {
        const KV_OVERHEAD: usize = 256;
        let put = |p: &PutRequest| KV_OVERHEAD + p.key.len() + p.value.len();
        let branch = |ops: &[RequestOp]| -> usize {
            ops.iter().map(|o| if let RequestOp::Put(p) = o { put(p) } else { 0 }).sum()
        };
        match self {
            Command::Put(p) => put(p),
            Command::Txn(t) => branch(&t.success).max(branch(&t.failure)),
            Command::LeaseGrant { .. } => 72,
            // Wrapped for the auth-revision check: what the client asked costs.
            Command::AuthChecked { command, .. } => command.quota_cost(),
            _ => 0,
        }
    }
}

/// The answer to one applied command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommandResponse {
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
    Compact,
    /// The lease as granted: its ID and TTL.
    LeaseGrant {
        id: LeaseId,
        ttl_secs: i64,
    },
    /// The revoked lease.
    LeaseRevoke {
        id: LeaseId,
    },
    /// The alarms the command changed: the raised one (also when it was already raised), or
    /// the cleared one (none if it was not raised).
    Alarm(Vec<AlarmMember>),
    Auth(AuthResponse),
}

/// A command's outcome: the response and the store revision to report in the header
/// (the new revision if the command changed anything, else the current one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    pub revision: Revision,
    pub result: Result<CommandResponse, crate::RequestError>,
}

/// What one revision changed, in the order the request touched the keys: the input of
/// watches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    /// For a delete: key and mod_revision set, the rest zero (etcd's tombstone form).
    pub kv: KeyValue,
}
