//! The Lock service (etcd's v3lock): a distributed mutex per name, held through a lease.
//!
//! As etcd 3.5 (`v3lock/lock.go` over `concurrency.Mutex`):
//! - Lock puts `<name>/<lease hex>` (empty value, the caller's lease; lease 0 makes a 60 s
//!   session lease) in a txn that checks its create revision is 0, so a second Lock with the
//!   same lease reuses the key. The lock is held when no key under `<name>/` was created
//!   before it; otherwise Lock waits until every older key is deleted, then checks its own
//!   key still exists ("mutex: session is expired" if its lease ended meanwhile).
//! - A waiter whose request is cancelled deletes its key, as does one whose wait fails.
//! - The response header is the txn's when the lock was free, else the final Get's.
//! - Unlock deletes the key (any key: etcd does not check it is a lock key).
//! - Errors come with code Unknown and etcd's message (see [`crate::concurrency`]).

use std::sync::Arc;

use bytes::Bytes;
use cairn_proto::v3lockpb as pb;
use cairn_proto::v3lockpb::lock_server::Lock;
use cairn_proto::{etcdserverpb, rpctypes};
use cairn_storage::Command;
use prost::Message;
use tonic::{Request, Response, Status};

use crate::concurrency::{self as cc, CleanupOnCancel};
use crate::context::Context;
use crate::lessor::Lessor;

/// etcd's `concurrency.ErrSessionExpired`.
pub const ERR_SESSION_EXPIRED: &str = "mutex: session is expired";

pub struct LockService {
    pub ctx: Arc<Context>,
    pub lessor: Arc<Lessor>,
}

/// The delete that releases `key` (etcd's `Mutex.Unlock`), as a proposable command.
fn unlock_command(key: &[u8]) -> (Command, usize) {
    let req = etcdserverpb::DeleteRangeRequest { key: Bytes::copy_from_slice(key), ..Default::default() };
    let len = req.encoded_len();
    (Command::DeleteRange(crate::convert::delete_req(&req)), len)
}

#[tonic::async_trait]
impl Lock for LockService {
    #[tracing::instrument(level = "debug", skip_all, name = "lock.lock")]
    async fn lock(&self, request: Request<pb::LockRequest>) -> Result<Response<pb::LockResponse>, Status> {
        let md = request.metadata().clone();
        let r = request.into_inner();
        self.ctx.check_grpc_size(r.encoded_len())?;
        let ctx = &self.ctx;
        let (lease, prefix, my_key) = cc::session_key(ctx, &self.lessor, &md, &r.name, r.lease).await?;

        // tryAcquire: create the key unless this session has it already; read the owner.
        let owner = etcdserverpb::RequestOp {
            request: Some(etcdserverpb::request_op::Request::RequestRange(cc::first_created(&prefix))),
        };
        let acquire = etcdserverpb::TxnRequest {
            compare: vec![cc::create_revision_is(&my_key, 0)],
            success: vec![cc::put(&my_key, b"", lease), owner.clone()],
            failure: vec![cc::get(&my_key), owner],
        };
        let t = cc::txn(ctx, &md, acquire).await?;
        let my_rev = if t.succeeded {
            t.revision
        } else {
            match t.range_kvs(0).and_then(|kvs| kvs.first()) {
                Some(kv) => kv.create_revision,
                None => return Err(Status::unknown("internal error: lock key missing after a failed compare")),
            }
        };
        let owner_rev = t.range_kvs(1).and_then(|kvs| kvs.first()).map(|kv| kv.create_revision);
        if owner_rev.is_none_or(|rev| rev == my_rev) {
            let header = ctx.header(t.revision);
            return Ok(Response::new(pb::LockResponse { header: Some(header), key: Bytes::from(my_key) }));
        }

        // Wait for every older waiter to go. From here a cancelled request deletes its key.
        let cleanup = CleanupOnCancel::new(ctx, unlock_command(&my_key));
        if let Err(e) = cc::wait_deletes(ctx, &prefix, my_rev - 1).await {
            unlock_now(ctx, cleanup).await;
            return Err(e);
        }
        // Make sure the session did not expire meanwhile: the key must still exist.
        let got =
            cc::range(ctx, &etcdserverpb::RangeRequest { key: Bytes::copy_from_slice(&my_key), ..Default::default() })
                .await;
        let (kvs, rev) = match got {
            Ok(x) => x,
            Err(e) => {
                unlock_now(ctx, cleanup).await;
                return Err(e);
            }
        };
        cleanup.disarm();
        if kvs.is_empty() {
            return Err(rpctypes::unknown(ERR_SESSION_EXPIRED));
        }
        Ok(Response::new(pb::LockResponse { header: Some(ctx.header(rev)), key: Bytes::from(my_key) }))
    }

    #[tracing::instrument(level = "debug", skip_all, name = "lock.unlock")]
    async fn unlock(&self, request: Request<pb::UnlockRequest>) -> Result<Response<pb::UnlockResponse>, Status> {
        let md = request.metadata().clone();
        let r = request.into_inner();
        self.ctx.check_grpc_size(r.encoded_len())?;
        cc::check_access(&self.ctx, &md, None, Some(&r.key))?;
        let rev = cc::delete_key(&self.ctx, &md, &r.key).await?;
        Ok(Response::new(pb::UnlockResponse { header: Some(self.ctx.header(rev)) }))
    }
}

/// etcd's `m.Unlock(client.Ctx())` after a failed wait: the delete is not tied to the
/// request (it completes even if the caller goes away meanwhile); its own error is ignored.
async fn unlock_now(ctx: &Arc<Context>, cleanup: CleanupOnCancel) {
    if let Some((cmd, len)) = cleanup.disarm() {
        let ctx = ctx.clone();
        let _ = tokio::spawn(async move { ctx.propose(cmd, len).await }).await;
    }
}
