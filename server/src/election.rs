//! The Election service (etcd's v3election): leader election per name over leases.
//!
//! As etcd 3.5 (`v3election/election.go` over `concurrency.Election`):
//! - Campaign puts `<name>/<lease hex>` = value with the caller's lease (lease 0 makes a
//!   60 s session lease) if its create revision is 0; if the key exists already (same
//!   lease) it is reused, proclaiming the new value if it differs. The campaigner leads
//!   once every key under `<name>/` created before its own is deleted. The response header
//!   is the campaign txn's; the leader key carries the key's create revision. A waiter
//!   whose own lease ends keeps waiting and then succeeds (etcd does not check), one whose
//!   request is cancelled resigns.
//! - Proclaim puts the new value with the leader's lease if the key still has the leader's
//!   create revision, else "election: not leader"; Resign deletes it under the same
//!   condition (and succeeds either way). Both need `leader` (`"leader" field must be
//!   provided`); lease 0 in it makes a 60 s session lease, as etcd's session does.
//! - Leader is the key with the lowest create revision ("election: no leader" if none).
//! - Observe streams the leader's kv, then every put to that key; when it is deleted, the
//!   next leader (or, if none, the first key put under the prefix). Errors end the stream
//!   without a status, as etcd's does.
//! - Errors come with code Unknown and etcd's message (see [`crate::concurrency`]).

use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use cairn_proto::etcdserverpb as kvpb;
use cairn_proto::rpctypes;
use cairn_proto::v3electionpb as pb;
use cairn_proto::v3electionpb::election_server::Election;
use cairn_storage::{EventKind, KeyValue, Revision};
use prost::Message;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use crate::concurrency::{self as cc, CleanupOnCancel, InternalWatch};
use crate::context::Context;
use crate::convert;
use crate::lessor::Lessor;

/// etcd's `concurrency.ErrElectionNotLeader`.
pub const ERR_NOT_LEADER: &str = "election: not leader";
/// etcd's `concurrency.ErrElectionNoLeader`.
pub const ERR_NO_LEADER: &str = "election: no leader";
/// etcd's `v3election.ErrMissingLeaderKey`.
pub const ERR_MISSING_LEADER_KEY: &str = "\"leader\" field must be provided";

/// Observe responses queued before the observer waits for its client.
const OBSERVE_QUEUE: usize = 16;

pub struct ElectionService {
    pub ctx: Arc<Context>,
    pub lessor: Arc<Lessor>,
}

/// etcd's `Election.Proclaim`: puts `value` if `key` still has create revision `rev`.
/// The txn header's revision, or "election: not leader".
async fn proclaim(
    ctx: &Context,
    md: &tonic::metadata::MetadataMap,
    key: &[u8],
    rev: Revision,
    lease: i64,
    value: &[u8],
) -> Result<Revision, Status> {
    let t = cc::txn(
        ctx,
        md,
        kvpb::TxnRequest {
            compare: vec![cc::create_revision_is(key, rev)],
            success: vec![cc::put(key, value, lease)],
            failure: vec![],
        },
    )
    .await?;
    if !t.succeeded {
        return Err(rpctypes::unknown(ERR_NOT_LEADER));
    }
    Ok(t.revision)
}

/// etcd's `Election.Resign` as a txn: deletes `key` if it still has create revision `rev`.
fn resign_request(key: &[u8], rev: Revision) -> kvpb::TxnRequest {
    kvpb::TxnRequest {
        compare: vec![cc::create_revision_is(key, rev)],
        success: vec![cc::delete(key)],
        failure: vec![],
    }
}

fn leader_key(l: Option<pb::LeaderKey>) -> Result<pb::LeaderKey, Status> {
    l.ok_or_else(|| rpctypes::unknown(ERR_MISSING_LEADER_KEY))
}

type ObserveStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::LeaderResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Election for ElectionService {
    #[tracing::instrument(level = "debug", skip_all, name = "election.campaign")]
    async fn campaign(&self, request: Request<pb::CampaignRequest>) -> Result<Response<pb::CampaignResponse>, Status> {
        let md = request.metadata().clone();
        let r = request.into_inner();
        self.ctx.check_grpc_size(r.encoded_len())?;
        let ctx = &self.ctx;
        let (lease, prefix, key) = cc::session_key(ctx, &self.lessor, &md, &r.name, r.lease).await?;
        let t = cc::txn(
            ctx,
            &md,
            kvpb::TxnRequest {
                compare: vec![cc::create_revision_is(&key, 0)],
                success: vec![cc::put(&key, &r.value, lease)],
                failure: vec![cc::get(&key)],
            },
        )
        .await?;
        let mut leader_rev = t.revision;
        if !t.succeeded {
            let Some(kv) = t.range_kvs(0).and_then(|kvs| kvs.first()) else {
                return Err(Status::unknown("internal error: election key missing after a failed compare"));
            };
            leader_rev = kv.create_revision;
            if kv.value[..] != r.value[..] {
                if let Err(e) = proclaim(ctx, &md, &key, leader_rev, lease, &r.value).await {
                    // etcd resigns, ignoring the resign's own error.
                    let _ = cc::txn(ctx, &md, resign_request(&key, leader_rev)).await;
                    return Err(e);
                }
            }
        }
        // Wait until every older candidate is gone. A cancelled request resigns.
        let cleanup = CleanupOnCancel::new(ctx, cc::txn_command(ctx, &resign_request(&key, leader_rev))?);
        let waited = cc::wait_deletes(ctx, &prefix, leader_rev - 1).await;
        // Any other failure of the wait leaves the key (etcd resigns only when the context
        // is done, which here means the future is dropped).
        cleanup.disarm();
        waited?;
        Ok(Response::new(pb::CampaignResponse {
            header: Some(ctx.header(t.revision)),
            leader: Some(pb::LeaderKey { name: r.name, key: Bytes::from(key), rev: leader_rev, lease }),
        }))
    }

    #[tracing::instrument(level = "debug", skip_all, name = "election.proclaim")]
    async fn proclaim(&self, request: Request<pb::ProclaimRequest>) -> Result<Response<pb::ProclaimResponse>, Status> {
        let md = request.metadata().clone();
        let r = request.into_inner();
        self.ctx.check_grpc_size(r.encoded_len())?;
        let l = leader_key(r.leader)?;
        cc::check_access(&self.ctx, &md, None, Some(&l.key))?;
        let lease = cc::session_lease(&self.ctx, &self.lessor, l.lease).await?;
        let rev = proclaim(&self.ctx, &md, &l.key, l.rev, lease, &r.value).await?;
        Ok(Response::new(pb::ProclaimResponse { header: Some(self.ctx.header(rev)) }))
    }

    #[tracing::instrument(level = "debug", skip_all, name = "election.leader")]
    async fn leader(&self, request: Request<pb::LeaderRequest>) -> Result<Response<pb::LeaderResponse>, Status> {
        let md = request.metadata().clone();
        let r = request.into_inner();
        self.ctx.check_grpc_size(r.encoded_len())?;
        let prefix = [&r.name[..], b"/"].concat();
        cc::check_access(&self.ctx, &md, Some(&prefix), None)?;
        let (kvs, rev) = cc::range(&self.ctx, &cc::first_created(&prefix)).await?;
        let Some(kv) = kvs.into_iter().next() else { return Err(rpctypes::unknown(ERR_NO_LEADER)) };
        Ok(Response::new(pb::LeaderResponse { header: Some(self.ctx.header(rev)), kv: Some(convert::kv(kv)) }))
    }

    type ObserveStream = ObserveStream;

    #[tracing::instrument(level = "debug", skip_all, name = "election.observe")]
    async fn observe(&self, request: Request<pb::LeaderRequest>) -> Result<Response<Self::ObserveStream>, Status> {
        let md = request.metadata().clone();
        let r = request.into_inner();
        self.ctx.check_grpc_size(r.encoded_len())?;
        let prefix = [&r.name[..], b"/"].concat();
        cc::check_access(&self.ctx, &md, Some(&prefix), None)?;
        let (tx, mut rx) = mpsc::channel(OBSERVE_QUEUE);
        let ctx = self.ctx.clone();
        tokio::spawn(async move {
            // The observer ends when its client goes away, even while it waits for a change.
            tokio::select! {
                _ = tx.closed() => {}
                _ = observe(&ctx, &prefix, &tx) => {}
            }
        });
        // grpc-go sends the response headers with the first message: as with etcd, the call
        // completes only once there is a leader to report (or the observer ended).
        let first = rx.recv().await;
        let rest = tokio_stream::wrappers::ReceiverStream::new(rx);
        Ok(Response::new(Box::pin(tokio_stream::StreamExt::chain(tokio_stream::iter(first), rest))))
    }

    #[tracing::instrument(level = "debug", skip_all, name = "election.resign")]
    async fn resign(&self, request: Request<pb::ResignRequest>) -> Result<Response<pb::ResignResponse>, Status> {
        let md = request.metadata().clone();
        let r = request.into_inner();
        self.ctx.check_grpc_size(r.encoded_len())?;
        let l = leader_key(r.leader)?;
        cc::check_access(&self.ctx, &md, None, Some(&l.key))?;
        // etcd makes a session here too (a 60 s lease for lease 0), though Resign uses none.
        cc::session_lease(&self.ctx, &self.lessor, l.lease).await?;
        let t = cc::txn(&self.ctx, &md, resign_request(&l.key, l.rev)).await?;
        Ok(Response::new(pb::ResignResponse { header: Some(self.ctx.header(t.revision)) }))
    }
}

type ObserveTx = mpsc::Sender<Result<pb::LeaderResponse, Status>>;

/// etcd's `Election.observe`: returns when the client is gone or a read or watch fails
/// (the stream then ends without an error status, as etcd's Observe returns nil).
async fn observe(ctx: &Arc<Context>, prefix: &[u8], tx: &ObserveTx) {
    let send = |revision: Revision, kv: KeyValue| {
        let r = pb::LeaderResponse { header: Some(ctx.header(revision)), kv: Some(convert::kv(kv)) };
        async move { tx.send(Ok(r)).await.is_ok() }
    };
    loop {
        let Ok((kvs, rev)) = cc::range(ctx, &cc::first_created(prefix)).await else { return };
        let (revision, leader) = match kvs.into_iter().next() {
            Some(kv) => (rev, kv),
            None => {
                // No leader: the first key put under the prefix is reported (etcd does not
                // check it is the oldest), with its own revision in the header.
                let mut w = InternalWatch::open(ctx, prefix.to_vec(), cc::prefix_end(prefix), rev);
                'put: loop {
                    let Ok(events) = w.next().await else { return };
                    if let Some(ev) = events.into_iter().find(|e| e.kind == EventKind::Put) {
                        break 'put (ev.kv.mod_revision, ev.kv);
                    }
                }
            }
        };
        let key = leader.key.clone();
        if !send(revision, leader).await {
            return;
        }
        // Every put to the leader's key, until it is deleted.
        let mut w = InternalWatch::open(ctx, key, Vec::new(), revision + 1);
        'leader: loop {
            let Ok(events) = w.next().await else { return };
            for ev in events {
                if ev.kind == EventKind::Delete {
                    break 'leader;
                }
                if !send(ev.kv.mod_revision, ev.kv).await {
                    return;
                }
            }
        }
    }
}
