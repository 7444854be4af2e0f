//! [`Context`]: what every RPC handler shares: the raft node, the member's identity, the
//! limits, and the background compactor.

use std::sync::Arc;
use std::time::Duration;

use cairn_proto::etcdserverpb::ResponseHeader;
use cairn_proto::rpctypes::EtcdError;
use cairn_raft::RaftNode;
use cairn_storage::{AlarmAction, AlarmMember, AlarmType, Applied, Command, Revision};
use tokio::sync::{Notify, Semaphore};
use tonic::Status;

use crate::status;

/// etcd's request timeout: 5 s plus two election timeouts (with the default 1 s).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(7);

/// Most proposals in flight at once; further writers wait (a bounded queue in front of raft).
pub const MAX_INFLIGHT_PROPOSALS: usize = 8192;

/// etcd adds a raft request header around each write before it checks the size.
const RAFT_REQUEST_OVERHEAD: usize = 32;

pub struct Context {
    pub node: Arc<RaftNode>,
    pub cluster_id: u64,
    pub member_id: u64,
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub max_request_bytes: usize,
    pub max_txn_ops: usize,
    /// Bounds the proposals waiting on raft.
    pub proposals: Semaphore,
    /// Wakes the background compactor after the compacted revision moves.
    pub compactor: Arc<Notify>,
    /// Every watcher of this member.
    pub hub: Arc<cairn_storage::watch::WatchHub>,
    /// etcd's `--experimental-watch-progress-notify-interval`.
    pub watch_progress_notify_interval: Duration,
    /// etcd's `--quota-backend-bytes`.
    pub quota_backend_bytes: u64,
    /// Maintenance state of this member (cached sizes, downgrade).
    pub maintenance: crate::maintenance::MaintenanceState,
    /// Tokens, the auth view and the permission checks (see `authz`).
    pub authz: Arc<crate::authz::Authz>,
    /// Calls to the other members (member attributes, forwarded lease calls).
    pub peers: Arc<crate::peer::GrpcTransport>,
    /// Tells streams that require a leader (`hasleader`) when to give up.
    pub leader_monitor: crate::leader::LeaderMonitor,
    /// Names and client URLs of the other members, as they last told (MemberList).
    pub member_attrs: std::sync::Mutex<std::collections::HashMap<u64, (String, Vec<String>)>>,
}

impl Context {
    /// Calls a server-level peer method on the leader (lease calls a follower forwards).
    /// Errors: "no leader" when none is known, "request timed out" when the call fails.
    pub async fn call_leader(&self, method: &'static str, body: Vec<u8>) -> Result<Vec<u8>, Status> {
        let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
        loop {
            let Some((_, addr)) = self.node.leader_peer() else {
                if tokio::time::Instant::now() >= deadline {
                    return Err(EtcdError::NoLeader.status());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            use cairn_raft::PeerTransport;
            return match self.peers.call(&addr, method, body.clone(), left).await {
                Ok(b) => Ok(b),
                Err(e) => {
                    tracing::warn!(error = %e, method, "call to the leader failed");
                    Err(EtcdError::Timeout.status())
                }
            };
        }
    }

    /// The response header etcd sends: ids, the given store revision, the raft term.
    pub fn header(&self, revision: Revision) -> ResponseHeader {
        ResponseHeader { cluster_id: self.cluster_id, member_id: self.member_id, revision, raft_term: self.node.term() }
    }

    /// grpc-go's receive limit as etcd sets it (max-request-bytes + 512 KiB), with its error.
    pub fn check_grpc_size(&self, len: usize) -> Result<(), Status> {
        let max = self.max_request_bytes + crate::GRPC_OVERHEAD_BYTES;
        if len > max {
            return Err(Status::resource_exhausted(format!(
                "grpc: received message larger than max ({len} vs. {max})"
            )));
        }
        Ok(())
    }

    /// Replicates a write and waits for it to be applied here. `encoded_len` is the
    /// request's protobuf size, checked against `--max-request-bytes` as etcd checks it.
    pub async fn propose(&self, cmd: Command, encoded_len: usize) -> Result<Applied, Status> {
        if encoded_len + RAFT_REQUEST_OVERHEAD > self.max_request_bytes {
            return Err(status::too_large());
        }
        self.check_quota(&cmd).await?;
        let _permit =
            self.proposals.acquire().await.map_err(|_| status::write_error(&cairn_raft::WriteError::Stopped))?;
        match tokio::time::timeout(REQUEST_TIMEOUT, self.node.write(cmd)).await {
            Err(_) => Err(status::timeout()),
            Ok(Err(e)) => Err(status::write_error(&e)),
            Ok(Ok(applied)) => Ok(applied),
        }
    }

    /// etcd's quota check before proposing: a command that adds data fails with "database
    /// space exceeded" while the NOSPACE alarm is raised, and raises it (through raft, so it
    /// survives restarts) when the backend would grow past `--quota-backend-bytes`.
    async fn check_quota(&self, cmd: &Command) -> Result<(), Status> {
        let cost = cmd.quota_cost() as u64;
        if cost == 0 {
            return Ok(());
        }
        if self.node.store().alarms().iter().any(|a| a.alarm == AlarmType::NoSpace) {
            return Err(EtcdError::NoSpace.status());
        }
        let size = self.node.db_size();
        // etcd's quota is available while size + cost < quota.
        if size + cost < self.quota_backend_bytes {
            return Ok(());
        }
        tracing::warn!(
            db_size = size,
            quota = self.quota_backend_bytes,
            "backend size exceeds the quota; raising the NOSPACE alarm"
        );
        let alarm = Command::Alarm {
            action: AlarmAction::Activate,
            alarm: AlarmMember { member_id: self.member_id, alarm: AlarmType::NoSpace },
        };
        if let Err(e) = tokio::time::timeout(REQUEST_TIMEOUT, self.node.write(alarm)).await {
            tracing::warn!(error = %e, "raising the NOSPACE alarm timed out");
        }
        Err(EtcdError::NoSpace.status())
    }

    /// For RPCs that only root may call while auth is enabled (etcd's `IsAdminPermitted`):
    /// "user name is empty" without a token, "user name not found" for a user deleted
    /// since, "permission denied" without role root; "invalid auth token" for a bad token
    /// even while auth is disabled.
    pub fn auth_admin(&self, metadata: &tonic::metadata::MetadataMap) -> Result<(), Status> {
        self.authz.check_admin(metadata)
    }

    /// The admin check of etcd 3.5's Maintenance service (Hash, HashKV, Defragment,
    /// Snapshot), whose errors etcd does not translate: code Unknown with the auth
    /// package's text ("auth: user name is empty", "auth: permission denied", ...).
    pub fn auth_admin_maintenance(&self, metadata: &tonic::metadata::MetadataMap) -> Result<(), Status> {
        self.authz.check_admin_untranslated(metadata)
    }

    /// For RPCs etcd lets every caller make: only a token that is present must be valid.
    pub fn auth_token(&self, metadata: &tonic::metadata::MetadataMap) -> Result<(), Status> {
        self.authz.check_token(metadata)
    }

    /// Waits until a linearizable read may be served from the local store.
    pub async fn linearizable_barrier(&self) -> Result<(), Status> {
        match tokio::time::timeout(REQUEST_TIMEOUT, self.node.read_index()).await {
            Err(_) => Err(status::timeout()),
            Ok(Err(e)) => Err(status::write_error(&e)),
            Ok(Ok(())) => Ok(()),
        }
    }

    /// Runs physical compaction until it has caught up with the compacted revision.
    pub async fn compact_fully(&self) -> Result<(), Status> {
        loop {
            let store = self.node.store().clone();
            let done = tokio::task::spawn_blocking(move || store.compact_step())
                .await
                .map_err(|e| Status::unknown(format!("compaction task failed: {e}")))?
                .map_err(|e| status::store_error(&e))?;
            if done {
                return Ok(());
            }
        }
    }
}

/// The background compactor: after the compacted revision moves, removes superseded
/// revisions in bounded batches, yielding to applies between batches.
pub async fn compactor_loop(node: Arc<RaftNode>, wake: Arc<Notify>) {
    loop {
        wake.notified().await;
        loop {
            let store = node.store().clone();
            match tokio::task::spawn_blocking(move || store.compact_step()).await {
                Ok(Ok(true)) => break,
                Ok(Ok(false)) => tokio::task::yield_now().await,
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "physical compaction failed");
                    break;
                }
                Err(e) => {
                    tracing::error!(error = %e, "compaction task failed");
                    break;
                }
            }
        }
    }
}
