//! Maintenance: Status and Alarm (no alarms exist yet) for `etcdctl endpoint status` and
//! `endpoint health`; the other RPCs answer Unimplemented until their issue.

use std::pin::Pin;
use std::sync::Arc;

use cairn_proto::etcdserverpb as pb;
use cairn_proto::etcdserverpb::maintenance_server::Maintenance;
use tonic::{Request, Response, Status};

use crate::context::Context;

/// The etcd release whose API and behaviour Cairn reports. kube-apiserver enables
/// RequestWatchProgress only for etcd >= 3.5.13.
pub const ETCD_VERSION: &str = "3.5.21";

pub struct MaintenanceService {
    pub ctx: Arc<Context>,
}

type SnapshotStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::SnapshotResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(&self, request: Request<pb::AlarmRequest>) -> Result<Response<pb::AlarmResponse>, Status> {
        let _ = request.into_inner();
        // No alarm can be raised yet (no quota, no corruption check): every action sees none.
        Ok(Response::new(pb::AlarmResponse {
            header: Some(self.ctx.header(self.ctx.node.store().current_revision())),
            alarms: Vec::new(),
        }))
    }

    #[tracing::instrument(level = "debug", skip_all, name = "maintenance.status")]
    async fn status(&self, _request: Request<pb::StatusRequest>) -> Result<Response<pb::StatusResponse>, Status> {
        let s = self.ctx.node.status();
        let db_size = self.ctx.node.db_size() as i64;
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
            errors: Vec::new(),
            db_size_in_use: db_size,
            is_learner: false,
            ..Default::default()
        }))
    }

    async fn defragment(
        &self,
        _request: Request<pb::DefragmentRequest>,
    ) -> Result<Response<pb::DefragmentResponse>, Status> {
        Err(Status::unimplemented("defragment is not implemented yet"))
    }

    async fn hash(&self, _request: Request<pb::HashRequest>) -> Result<Response<pb::HashResponse>, Status> {
        Err(Status::unimplemented("hash is not implemented yet"))
    }

    async fn hash_kv(&self, _request: Request<pb::HashKvRequest>) -> Result<Response<pb::HashKvResponse>, Status> {
        Err(Status::unimplemented("hashkv is not implemented yet"))
    }

    type SnapshotStream = SnapshotStream;

    async fn snapshot(&self, _request: Request<pb::SnapshotRequest>) -> Result<Response<Self::SnapshotStream>, Status> {
        Err(Status::unimplemented("snapshot is not implemented yet"))
    }

    async fn move_leader(
        &self,
        _request: Request<pb::MoveLeaderRequest>,
    ) -> Result<Response<pb::MoveLeaderResponse>, Status> {
        Err(Status::unimplemented("move leader is not implemented yet"))
    }

    async fn downgrade(
        &self,
        _request: Request<pb::DowngradeRequest>,
    ) -> Result<Response<pb::DowngradeResponse>, Status> {
        Err(Status::unimplemented("downgrade is not implemented yet"))
    }
}
