//! Maintenance: Status, Alarm, Defragment, Hash, HashKV, Snapshot, MoveLeader, Downgrade.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_proto::etcdserverpb as pb;
use cairn_proto::etcdserverpb::maintenance_server::Maintenance;
use cairn_proto::rpctypes::EtcdError;
use cairn_storage::{AlarmAction, AlarmMember, AlarmType, Command, CommandResponse};
use prost::Message;
use sha2::Digest;
use tonic::{Request, Response, Status};

use crate::context::Context;
use crate::status;

/// The etcd release whose API and behaviour Cairn reports. kube-apiserver enables
/// RequestWatchProgress only for etcd >= 3.5.13.
pub const ETCD_VERSION: &str = "3.5.21";

/// The cluster version a 3.5 member reports (etcd's "3.5.0").
pub const CLUSTER_VERSION: &str = "3.5.0";

/// Snapshot stream chunk size (etcd sends 32 KiB chunks).
const SNAPSHOT_CHUNK: usize = 32 * 1024;

/// A snapshot stream's data is padded to a multiple of this before its sha256 trailer.
pub const SNAPSHOT_ALIGN: u64 = 512;

/// How long a measured dbSizeInUse is reused (measuring walks the file's page tree).
const IN_USE_CACHE: Duration = Duration::from_secs(10);

/// Member-local maintenance state.
#[derive(Default)]
pub struct MaintenanceState {
    /// The last dbSizeInUse measured, and when.
    in_use: Mutex<Option<(Instant, u64)>>,
    /// A downgrade enabled by Downgrade(ENABLE): its target version. Member-local: Cairn runs
    /// one version, so an enabled downgrade has nothing to coordinate yet.
    downgrade: Mutex<Option<String>>,
}

impl MaintenanceState {
    fn forget_in_use(&self) {
        *self.in_use.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

pub struct MaintenanceService {
    pub ctx: Arc<Context>,
}

type SnapshotStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::SnapshotResponse, Status>> + Send>>;

fn alarm_type(t: i32) -> Option<AlarmType> {
    match pb::AlarmType::try_from(t) {
        Ok(pb::AlarmType::Nospace) => Some(AlarmType::NoSpace),
        Ok(pb::AlarmType::Corrupt) => Some(AlarmType::Corrupt),
        _ => None,
    }
}

fn alarm_wire(a: &AlarmMember) -> pb::AlarmMember {
    pb::AlarmMember {
        member_id: a.member_id,
        alarm: match a.alarm {
            AlarmType::NoSpace => pb::AlarmType::Nospace as i32,
            AlarmType::Corrupt => pb::AlarmType::Corrupt as i32,
        },
    }
}

/// An alarm as etcd's Status lists it (protobuf text format of AlarmMember).
pub fn alarm_text(a: &AlarmMember) -> String {
    let name = match a.alarm {
        AlarmType::NoSpace => "NOSPACE",
        AlarmType::Corrupt => "CORRUPT",
    };
    format!("memberID:{} alarm:{name} ", a.member_id)
}

impl MaintenanceService {
    /// dbSizeInUse, measured at most every [`IN_USE_CACHE`].
    async fn size_in_use(&self) -> Result<u64, Status> {
        let state = &self.ctx.maintenance;
        if let Some((at, v)) = *state.in_use.lock().unwrap_or_else(|p| p.into_inner()) {
            if at.elapsed() < IN_USE_CACHE {
                return Ok(v);
            }
        }
        let store = self.ctx.node.store().clone();
        let v = tokio::task::spawn_blocking(move || store.size_in_use())
            .await
            .map_err(|e| Status::unknown(format!("size task failed: {e}")))?
            .map_err(|e| status::store_error(&e))?;
        *state.in_use.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), v));
        Ok(v)
    }
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    #[tracing::instrument(level = "debug", skip_all, name = "maintenance.alarm")]
    async fn alarm(&self, request: Request<pb::AlarmRequest>) -> Result<Response<pb::AlarmResponse>, Status> {
        // etcd: no permission needed; a token that is given must be valid.
        self.ctx.auth_token(request.metadata())?;
        let r = request.into_inner();
        let ctx = &self.ctx;
        let action = pb::alarm_request::AlarmAction::try_from(r.action)
            .map_err(|_| Status::unknown(format!("unknown alarm action {}", r.action)))?;
        let (revision, alarms) = match action {
            pb::alarm_request::AlarmAction::Get => {
                ctx.linearizable_barrier().await?;
                let all = ctx.node.store().alarms();
                // NONE lists every alarm; a type lists its own (an unknown type: none).
                let alarms: Vec<_> = if r.alarm == pb::AlarmType::None as i32 {
                    all.iter().map(alarm_wire).collect()
                } else {
                    let want = alarm_type(r.alarm);
                    all.iter().filter(|a| Some(a.alarm) == want).map(alarm_wire).collect()
                };
                (ctx.node.store().current_revision(), alarms)
            }
            pb::alarm_request::AlarmAction::Activate | pb::alarm_request::AlarmAction::Deactivate => {
                let Some(alarm) = alarm_type(r.alarm) else {
                    // etcd's applier ignores an alarm of type NONE.
                    ctx.linearizable_barrier().await?;
                    return Ok(Response::new(pb::AlarmResponse {
                        header: Some(ctx.header(ctx.node.store().current_revision())),
                        alarms: Vec::new(),
                    }));
                };
                let action = if action == pb::alarm_request::AlarmAction::Activate {
                    AlarmAction::Activate
                } else {
                    AlarmAction::Deactivate
                };
                let cmd = Command::Alarm { action, alarm: AlarmMember { member_id: r.member_id, alarm } };
                let applied = ctx.propose(cmd, r.encoded_len()).await?;
                match applied.result {
                    Ok(CommandResponse::Alarm(changed)) => (applied.revision, changed.iter().map(alarm_wire).collect()),
                    Ok(other) => return Err(Status::unknown(format!("unexpected alarm outcome {other:?}"))),
                    Err(e) => return Err(status::request_error(&e)),
                }
            }
        };
        Ok(Response::new(pb::AlarmResponse { header: Some(ctx.header(revision)), alarms }))
    }

    #[tracing::instrument(level = "debug", skip_all, name = "maintenance.status")]
    async fn status(&self, _request: Request<pb::StatusRequest>) -> Result<Response<pb::StatusResponse>, Status> {
        let s = self.ctx.node.status();
        let db_size = self.ctx.node.db_size() as i64;
        let in_use = (self.size_in_use().await? as i64).min(db_size);
        let errors = self.ctx.node.store().alarms().iter().map(alarm_text).collect();
        let downgrade = self.ctx.maintenance.downgrade.lock().unwrap_or_else(|p| p.into_inner()).clone();
        Ok(Response::new(pb::StatusResponse {
            header: Some(pb::ResponseHeader {
                cluster_id: self.ctx.cluster_id,
                member_id: self.ctx.member_id,
                revision: self.ctx.node.store().current_revision(),
                raft_term: s.term,
            }),
            version: ETCD_VERSION.to_string(),
            db_size,
            leader: s.leader.unwrap_or(0),
            raft_index: s.last_log_index,
            raft_term: s.term,
            raft_applied_index: s.applied_index,
            errors,
            db_size_in_use: in_use,
            is_learner: self.ctx.node.is_learner(),
            db_size_quota: self.ctx.quota_backend_bytes as i64,
            downgrade_info: Some(pb::DowngradeInfo {
                enabled: downgrade.is_some(),
                target_version: downgrade.unwrap_or_default(),
            }),
            ..Default::default()
        }))
    }

    #[tracing::instrument(level = "info", skip_all, name = "maintenance.defragment")]
    async fn defragment(
        &self,
        request: Request<pb::DefragmentRequest>,
    ) -> Result<Response<pb::DefragmentResponse>, Status> {
        self.ctx.auth_admin_maintenance(request.metadata())?;
        let store = self.ctx.node.store().clone();
        let report = tokio::task::spawn_blocking(move || store.defragment())
            .await
            .map_err(|e| Status::unknown(format!("defragment task failed: {e}")))?
            .map_err(|e| status::store_error(&e))?;
        self.ctx.maintenance.forget_in_use();
        // Physical compaction waited for the defragmentation; let it go on.
        self.ctx.compactor.notify_one();
        tracing::info!(
            size_before = report.size_before,
            size_after = report.size_after,
            pause_ms = report.pause.as_secs_f64() * 1e3,
            took_ms = report.total.as_secs_f64() * 1e3,
            "defragmented"
        );
        Ok(Response::new(pb::DefragmentResponse {
            header: Some(self.ctx.header(self.ctx.node.store().current_revision())),
        }))
    }

    #[tracing::instrument(level = "debug", skip_all, name = "maintenance.hash")]
    async fn hash(&self, request: Request<pb::HashRequest>) -> Result<Response<pb::HashResponse>, Status> {
        self.ctx.auth_admin_maintenance(request.metadata())?;
        let store = self.ctx.node.store().clone();
        let revision = store.current_revision();
        let hash = tokio::task::spawn_blocking(move || store.hash_all())
            .await
            .map_err(|e| Status::unknown(format!("hash task failed: {e}")))?
            .map_err(|e| status::store_error(&e))?;
        Ok(Response::new(pb::HashResponse { header: Some(self.ctx.header(revision)), hash }))
    }

    #[tracing::instrument(level = "debug", skip_all, name = "maintenance.hash_kv")]
    async fn hash_kv(&self, request: Request<pb::HashKvRequest>) -> Result<Response<pb::HashKvResponse>, Status> {
        self.ctx.auth_admin_maintenance(request.metadata())?;
        let r = request.into_inner();
        let store = self.ctx.node.store().clone();
        let (hash, compact_revision, hash_revision) = tokio::task::spawn_blocking(move || store.hash_kv(r.revision))
            .await
            .map_err(|e| Status::unknown(format!("hash task failed: {e}")))?
            .map_err(|e| status::store_error(&e))?
            .map_err(|e| status::request_error(&e))?;
        // Read after the hash: the header's revision is never below the hashed one.
        let current = self.ctx.node.store().current_revision();
        Ok(Response::new(pb::HashKvResponse {
            header: Some(self.ctx.header(current)),
            hash,
            compact_revision,
            hash_revision,
        }))
    }

    type SnapshotStream = SnapshotStream;

    #[tracing::instrument(level = "info", skip_all, name = "maintenance.snapshot")]
    async fn snapshot(&self, request: Request<pb::SnapshotRequest>) -> Result<Response<Self::SnapshotStream>, Status> {
        self.ctx.auth_admin_maintenance(request.metadata())?;
        let store = self.ctx.node.store().clone();
        let header = self.ctx.header(store.current_revision());
        let estimate = self.ctx.node.db_size();
        // A bounded channel: a slow client holds back the export (and its read snapshot),
        // not memory.
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<pb::SnapshotResponse, Status>>(4);
        tokio::task::spawn_blocking(move || {
            let mut w = ChunkSender {
                tx: tx.clone(),
                buf: Vec::with_capacity(SNAPSHOT_CHUNK),
                sent: 0,
                estimate,
                header,
                sha: sha2::Sha256::new(),
            };
            let result = store.export_snapshot(&mut w).map_err(|e| status::store_error(&e)).and_then(|_| w.finish());
            if let Err(e) = result {
                let _ = tx.blocking_send(Err(e));
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    #[tracing::instrument(level = "debug", skip_all, name = "maintenance.move_leader")]
    async fn move_leader(
        &self,
        request: Request<pb::MoveLeaderRequest>,
    ) -> Result<Response<pb::MoveLeaderResponse>, Status> {
        let r = request.into_inner();
        let s = self.ctx.node.status();
        if !s.is_leader {
            return Err(EtcdError::NotLeader.status());
        }
        // The only voter is this member: moving leadership to it is done already; any other
        // target is not a member that could take it.
        if r.target_id != self.ctx.member_id {
            return Err(EtcdError::BadLeaderTransferee.status());
        }
        Ok(Response::new(pb::MoveLeaderResponse {
            header: Some(self.ctx.header(self.ctx.node.store().current_revision())),
        }))
    }

    #[tracing::instrument(level = "debug", skip_all, name = "maintenance.downgrade")]
    async fn downgrade(
        &self,
        request: Request<pb::DowngradeRequest>,
    ) -> Result<Response<pb::DowngradeResponse>, Status> {
        let r = request.into_inner();
        let action = pb::downgrade_request::DowngradeAction::try_from(r.action)
            .map_err(|_| Status::unknown("etcdserver: unknown method"))?;
        let mut state = self.ctx.maintenance.downgrade.lock().unwrap_or_else(|p| p.into_inner()).clone();
        match action {
            pb::downgrade_request::DowngradeAction::Validate | pb::downgrade_request::DowngradeAction::Enable => {
                let target = downgrade_target(&r.version)?;
                if state.is_some() {
                    return Err(EtcdError::DowngradeInProcess.status());
                }
                if action == pb::downgrade_request::DowngradeAction::Enable {
                    state = Some(target);
                }
            }
            pb::downgrade_request::DowngradeAction::Cancel => {
                if state.take().is_none() {
                    return Err(EtcdError::NoInflightDowngrade.status());
                }
            }
        }
        *self.ctx.maintenance.downgrade.lock().unwrap_or_else(|p| p.into_inner()) = state;
        Ok(Response::new(pb::DowngradeResponse {
            header: Some(self.ctx.header(self.ctx.node.store().current_revision())),
            version: CLUSTER_VERSION.to_string(),
        }))
    }
}

/// etcd's downgrade target check: a `major.minor[.patch]` version exactly one minor below
/// the cluster's (3.5 -> 3.4). Returns it as `major.minor.0`.
fn downgrade_target(v: &str) -> Result<String, Status> {
    let parts: Vec<&str> = v.split('.').collect();
    let nums: Option<Vec<u64>> = parts.iter().map(|p| p.parse().ok()).collect();
    let nums = match nums {
        Some(n) if (2..=3).contains(&n.len()) => n,
        _ => return Err(EtcdError::WrongDowngradeVersionFormat.status()),
    };
    if nums[0] != 3 || nums[1] != 4 {
        return Err(EtcdError::InvalidDowngradeTargetVersion.status());
    }
    Ok("3.4.0".to_string())
}

/// Cuts the export into SnapshotResponse chunks; blocks when the client is slow.
struct ChunkSender {
    tx: tokio::sync::mpsc::Sender<Result<pb::SnapshotResponse, Status>>,
    buf: Vec<u8>,
    sent: u64,
    /// The file size: the remaining-bytes figure is an estimate until the last chunk (the
    /// export is not the file, and its exact length is known only at the end).
    estimate: u64,
    header: pb::ResponseHeader,
    /// Of everything before the trailer.
    sha: sha2::Sha256,
}

impl ChunkSender {
    fn send(&mut self, last: bool) -> std::io::Result<()> {
        let blob = bytes::Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(SNAPSHOT_CHUNK)));
        self.sent += blob.len() as u64;
        let remaining = if last { 0 } else { self.estimate.saturating_sub(self.sent).max(1) };
        let first = self.sent == blob.len() as u64;
        let msg = pb::SnapshotResponse {
            header: Some(self.header),
            remaining_bytes: remaining,
            blob,
            version: if first { CLUSTER_VERSION.to_string() } else { String::new() },
        };
        self.tx
            .blocking_send(Ok(msg))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "snapshot client went away"))
    }

    /// Ends the stream as etcd does: the data padded with zeros to a multiple of 512 bytes,
    /// then its sha256 (`etcdctl snapshot save` checks the length; restore checks the hash).
    fn finish(mut self) -> Result<(), Status> {
        let total = self.sent + self.buf.len() as u64;
        let pad = (SNAPSHOT_ALIGN - total % SNAPSHOT_ALIGN) % SNAPSHOT_ALIGN;
        let zeros = vec![0u8; pad as usize];
        std::io::Write::write_all(&mut self, &zeros).map_err(|e| Status::unavailable(e.to_string()))?;
        let digest = self.sha.clone().finalize();
        self.buf.extend_from_slice(&digest);
        self.send(true).map_err(|e| Status::unavailable(e.to_string()))
    }
}

impl std::io::Write for ChunkSender {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let room = SNAPSHOT_CHUNK - self.buf.len();
        let n = data.len().min(room);
        self.buf.extend_from_slice(&data[..n]);
        self.sha.update(&data[..n]);
        if self.buf.len() == SNAPSHOT_CHUNK {
            self.send(false)?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
