//! The Lease service: thin adapters from gRPC to raft proposals (grant, revoke), the store
//! (which leases exist, their TTLs and keys) and the [`Lessor`] (deadlines, keep-alives).
//!
//! etcd 3.5's answers, checked against the 3.5.1 binary by the differential tests:
//! - LeaseGrant: a TTL above 9e9 s fails with "etcdserver: too large lease TTL"; a smaller
//!   TTL than the minimum (2 s by default) is raised to it silently; ID 0 lets the server
//!   choose; an existing ID fails with "etcdserver: lease already exists".
//! - LeaseRevoke of a missing lease: "etcdserver: requested lease not found".
//! - LeaseKeepAlive of a missing (or expired) lease: a response with TTL 0, not an error.
//! - LeaseTimeToLive of a missing lease: TTL -1 and granted TTL 0, not an error.
//! - Every header carries the store's revision (grant and revoke: the one after apply).

use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use cairn_proto::etcdserverpb as pb;
use cairn_proto::etcdserverpb::lease_server::Lease;
use cairn_proto::rpctypes::EtcdError;
use cairn_storage::{lease as st_lease, Command, CommandResponse, LeaseId, RequestError};
use prost::Message;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use crate::context::Context;
use crate::lessor::{Lessor, LessorError};
use crate::peer;
use crate::status;

/// Keep-alive responses buffered per stream before the stream stops reading requests.
const KEEPALIVE_RESPONSE_BUFFER: usize = 16;

/// Server-chosen IDs tried before giving up (each is random in 2^63 - 1 values: a retry
/// means a collision with an existing lease, or a concurrent grant taking the same ID).
const ID_ATTEMPTS: usize = 8;

pub struct LeaseService {
    pub ctx: Arc<Context>,
    pub lessor: Arc<Lessor>,
}

fn unexpected(what: &str) -> Status {
    Status::unknown(format!("internal error: unexpected response to {what}"))
}

/// The gRPC status of a [`LessorError`].
fn lessor_error(e: LessorError, ctx: &Context) -> Status {
    match e {
        LessorError::NotPrimary => match ctx.node.status().leader {
            None => EtcdError::NoLeader.status(),
            Some(_) => EtcdError::NotLeader.status(),
        },
        LessorError::Timeout => status::timeout(),
    }
}

/// A random positive, non-zero lease ID that no lease has (etcd only hands out positive IDs).
fn pick_id(ctx: &Context) -> Result<LeaseId, Status> {
    for _ in 0..ID_ATTEMPTS {
        let id = rand::random::<i64>() & i64::MAX;
        if id != 0 && ctx.node.store().lease(id, false).map_err(|e| status::store_error(&e))?.is_none() {
            return Ok(id);
        }
    }
    Err(Status::unknown("internal error: no free lease ID found"))
}

/// Proposes the grant and registers its deadline. Runs as its own task: a client that goes
/// away after the proposal must not leave a lease without a deadline.
pub(crate) async fn grant(
    ctx: Arc<Context>,
    lessor: Arc<Lessor>,
    requested_id: LeaseId,
    ttl_secs: i64,
    encoded_len: usize,
) -> Result<pb::LeaseGrantResponse, Status> {
    for _ in 0..ID_ATTEMPTS {
        let id = if requested_id != 0 { requested_id } else { pick_id(&ctx)? };
        let applied = ctx.propose(Command::LeaseGrant { id, ttl_secs }, encoded_len).await?;
        match applied.result {
            Ok(CommandResponse::LeaseGrant { id, ttl_secs }) => {
                lessor.granted(id, ttl_secs);
                return Ok(pb::LeaseGrantResponse {
                    header: Some(ctx.header(applied.revision)),
                    id,
                    ttl: ttl_secs,
                    error: String::new(),
                });
            }
            // Another grant took the ID chosen here between the check and the apply.
            Err(RequestError::LeaseExist { .. }) if requested_id == 0 => continue,
            Err(e) => return Err(status::request_error(&e)),
            Ok(_) => return Err(unexpected("lease grant")),
        }
    }
    Err(Status::unknown("internal error: no free lease ID found"))
}

/// Proposes the revocation and forgets the deadline. Runs as its own task, like [`grant`].
async fn revoke(
    ctx: Arc<Context>,
    lessor: Arc<Lessor>,
    id: LeaseId,
    cmd: Command,
    encoded_len: usize,
) -> Result<pb::LeaseRevokeResponse, Status> {
    let applied = ctx.propose(cmd, encoded_len).await?;
    match applied.result {
        Ok(CommandResponse::LeaseRevoke { .. }) => {
            lessor.revoked(id);
            Ok(pb::LeaseRevokeResponse { header: Some(ctx.header(applied.revision)) })
        }
        Err(e) => {
            if matches!(e, RequestError::LeaseNotFound { .. }) {
                lessor.revoked(id);
            }
            Err(status::request_error(&e))
        }
        Ok(_) => Err(unexpected("lease revoke")),
    }
}

/// Answers the keep-alives of one stream in order, until the client closes its side.
/// Renews a lease: here on the leader, else on the leader through the peer port (etcd's
/// followers forward keep-alives to the leader).
async fn renew(ctx: &Context, lessor: &Lessor, id: i64) -> Result<Option<i64>, Status> {
    if ctx.node.is_leader() {
        return lessor.renew(id).await.map_err(|e| lessor_error(e, ctx));
    }
    let body = ctx.call_leader(peer::method::LEASE_RENEW, id.to_le_bytes().to_vec()).await?;
    peer::decode_lease_answer(&body).map_err(|e| lessor_error(e, ctx))
}

/// The remaining TTL of a lease as the leader's lessor tracks it (`None`: not tracked).
async fn remaining(ctx: &Context, lessor: &Lessor, id: i64) -> Result<Option<i64>, Status> {
    if ctx.node.is_leader() {
        lessor.wait_primary().await.map_err(|e| lessor_error(e, ctx))?;
        return Ok(lessor.remaining_secs(id));
    }
    let body = ctx.call_leader(peer::method::LEASE_REMAINING, id.to_le_bytes().to_vec()).await?;
    peer::decode_lease_answer(&body).map_err(|e| lessor_error(e, ctx))
}

async fn keep_alive(
    ctx: Arc<Context>,
    lessor: Arc<Lessor>,
    mut inbound: Streaming<pb::LeaseKeepAliveRequest>,
    tx: mpsc::Sender<Result<pb::LeaseKeepAliveResponse, Status>>,
    mut loss: Option<crate::leader::LeaderLoss>,
) {
    loop {
        let next = tokio::select! {
            m = inbound.message() => m,
            _ = async { loss.as_mut().expect("guarded").lost().await }, if loss.is_some() => {
                let _ = tx.send(Err(EtcdError::NoLeader.status())).await;
                return;
            }
        };
        let req = match next {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(error = %e, "lease keep-alive stream ended");
                return;
            }
        };
        // The header is taken before the renewal, as etcd does: a lease revoked at revision
        // R is never reported kept alive at a revision after R.
        let header = ctx.header(ctx.node.store().current_revision());
        let ttl = match renew(&ctx, &lessor, req.id).await {
            Ok(Some(ttl)) => ttl,
            // etcd answers a missing or expired lease with TTL 0, not an error.
            Ok(None) => 0,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        if tx.send(Ok(pb::LeaseKeepAliveResponse { header: Some(header), id: req.id, ttl })).await.is_err() {
            return;
        }
    }
}

type KeepAliveStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::LeaseKeepAliveResponse, Status>> + Send>>;

fn join_error(e: tokio::task::JoinError) -> Status {
    Status::unknown(format!("internal error: lease task failed: {e}"))
}

#[tonic::async_trait]
impl Lease for LeaseService {
    #[tracing::instrument(level = "debug", skip_all, name = "lease.grant")]
    async fn lease_grant(
        &self,
        request: Request<pb::LeaseGrantRequest>,
    ) -> Result<Response<pb::LeaseGrantResponse>, Status> {
        // etcd 3.5 checks no permission for a grant; a token that is sent must be valid.
        self.ctx.auth_token(request.metadata())?;
        let r = request.into_inner();
        self.ctx.check_grpc_size(r.encoded_len())?;
        st_lease::check_grant(r.ttl).map_err(|e| status::request_error(&e))?;
        let ttl_secs = self.lessor.effective_ttl(r.ttl);
        let task = tokio::spawn(grant(self.ctx.clone(), self.lessor.clone(), r.id, ttl_secs, r.encoded_len()));
        Ok(Response::new(task.await.map_err(join_error)??))
    }

    #[tracing::instrument(level = "debug", skip_all, name = "lease.revoke")]
    async fn lease_revoke(
        &self,
        request: Request<pb::LeaseRevokeRequest>,
    ) -> Result<Response<pb::LeaseRevokeResponse>, Status> {
        let (md, _, r) = request.into_parts();
        self.ctx.check_grpc_size(r.encoded_len())?;
        // etcd: the caller must be able to write every key attached to the lease.
        let cmd = self.ctx.authz.authorize(&md, self.ctx.node.store(), Command::LeaseRevoke { id: r.id })?;
        let task = tokio::spawn(revoke(self.ctx.clone(), self.lessor.clone(), r.id, cmd, r.encoded_len()));
        Ok(Response::new(task.await.map_err(join_error)??))
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    #[tracing::instrument(level = "debug", skip_all, name = "lease.keep_alive")]
    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let (tx, rx) = mpsc::channel(KEEPALIVE_RESPONSE_BUFFER);
        let loss =
            crate::leader::requires_leader(request.metadata().as_ref()).then(|| self.ctx.leader_monitor.subscribe());
        tokio::spawn(keep_alive(self.ctx.clone(), self.lessor.clone(), request.into_inner(), tx, loss));
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    #[tracing::instrument(level = "debug", skip_all, name = "lease.time_to_live")]
    async fn lease_time_to_live(
        &self,
        request: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<pb::LeaseTimeToLiveResponse>, Status> {
        let (md, _, r) = request.into_parts();
        self.ctx.check_grpc_size(r.encoded_len())?;
        // Only the leader knows the deadlines (etcd forwards the call to it). The lease
        // itself is read here after a read index, so that a grant seen by the leader is seen.
        let left = remaining(&self.ctx, &self.lessor, r.id).await?;
        if !self.ctx.node.is_leader() {
            self.ctx.linearizable_barrier().await?;
        }
        let store = self.ctx.node.store().clone();
        let info = tokio::task::block_in_place(|| store.lease(r.id, r.keys)).map_err(|e| status::store_error(&e))?;
        if let (true, Some(info)) = (r.keys, &info) {
            // etcd 3.5.9+ (a security fix over 3.5.1): the key names need read permission.
            self.ctx.authz.check_lease_keys_readable(&md, &info.keys)?;
        }
        let header = Some(self.ctx.header(store.current_revision()));
        let resp = match info {
            None => pb::LeaseTimeToLiveResponse { header, id: r.id, ttl: -1, granted_ttl: 0, keys: Vec::new() },
            Some(info) => pb::LeaseTimeToLiveResponse {
                header,
                id: r.id,
                // A lease granted a moment ago may not be registered yet: it has its full TTL.
                ttl: left.unwrap_or(info.record.ttl_secs),
                granted_ttl: info.record.ttl_secs,
                keys: info.keys.into_iter().map(Bytes::from).collect(),
            },
        };
        Ok(Response::new(resp))
    }

    #[tracing::instrument(level = "debug", skip_all, name = "lease.leases")]
    async fn lease_leases(
        &self,
        request: Request<pb::LeaseLeasesRequest>,
    ) -> Result<Response<pb::LeaseLeasesResponse>, Status> {
        let _ = request.into_inner();
        let store = self.ctx.node.store().clone();
        let records = tokio::task::block_in_place(|| store.leases()).map_err(|e| status::store_error(&e))?;
        let mut ids: Vec<LeaseId> = records.iter().map(|l| l.id).collect();
        self.lessor.sort_by_expiry(&mut ids);
        Ok(Response::new(pb::LeaseLeasesResponse {
            header: Some(self.ctx.header(store.current_revision())),
            leases: ids.into_iter().map(|id| pb::LeaseStatus { id }).collect(),
        }))
    }
}
