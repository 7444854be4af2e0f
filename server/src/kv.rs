//! The KV service: thin adapters from gRPC to [`Context`] and the store.

use std::sync::Arc;

use cairn_proto::etcdserverpb as pb;
use cairn_proto::etcdserverpb::kv_server::Kv;
use cairn_storage::{validate, Command, CommandResponse, CompactionRequest};
use prost::Message;
use tonic::{Request, Response, Status};

use crate::context::Context;
use crate::{convert, status};

pub struct KvService {
    pub ctx: Arc<Context>,
}

/// Every range of a read-only txn (both branches) is serializable (etcd's
/// `isTxnSerializable`): it needs no linearizable barrier.
fn txn_serializable(t: &pb::TxnRequest) -> bool {
    use pb::request_op::Request as Op;
    t.success.iter().chain(&t.failure).all(|op| matches!(&op.request, Some(Op::RequestRange(r)) if r.serializable))
}

fn unexpected(what: &str) -> Status {
    Status::unknown(format!("internal error: unexpected response to {what}"))
}

#[tonic::async_trait]
impl Kv for KvService {
    #[tracing::instrument(level = "debug", skip_all, name = "kv.range")]
    async fn range(&self, request: Request<pb::RangeRequest>) -> Result<Response<pb::RangeResponse>, Status> {
        let (md, _, r) = request.into_parts();
        self.ctx.check_grpc_size(r.encoded_len())?;
        let dreq = convert::range_req(&r);
        validate::check_range(&dreq).map_err(|e| status::request_error(&e))?;
        self.ctx.authz.check_range(&md, &dreq.key, &dreq.range_end)?;
        if !r.serializable {
            if !self.ctx.node.is_voter() {
                return Err(cairn_proto::rpctypes::EtcdError::NotSupportedForLearner.status());
            }
            self.ctx.linearizable_barrier().await?;
        }
        let store = self.ctx.node.store().clone();
        let read = || {
            let view = store.read()?;
            let rev = view.current_revision();
            view.range(&dreq).map(|x| (x, rev))
        };
        // A single-key read is a few B-tree lookups: inline. A range may scan many rows:
        // move it off the async worker (block_in_place costs a thread hand-off).
        let res = if dreq.range_end.is_empty() { read() } else { tokio::task::block_in_place(read) };
        match res {
            Err(e) => Err(status::store_error(&e)),
            Ok((Err(e), _)) => Err(status::request_error(&e)),
            Ok((Ok(resp), rev)) => Ok(Response::new(convert::range_resp(resp, self.ctx.header(rev)))),
        }
    }

    #[tracing::instrument(level = "debug", skip_all, name = "kv.put")]
    async fn put(&self, request: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        let (md, _, r) = request.into_parts();
        self.ctx.check_grpc_size(r.encoded_len())?;
        let dreq = convert::put_req(&r);
        validate::check_put(&dreq).map_err(|e| status::request_error(&e))?;
        let cmd = self.ctx.authz.authorize(&md, self.ctx.node.store(), Command::Put(dreq))?;
        let applied = self.ctx.propose(cmd, r.encoded_len()).await?;
        match applied.result {
            Ok(CommandResponse::Put(p)) => Ok(Response::new(convert::put_resp(p, self.ctx.header(applied.revision)))),
            Ok(_) => Err(unexpected("put")),
            Err(e) => Err(status::request_error(&e)),
        }
    }

    #[tracing::instrument(level = "debug", skip_all, name = "kv.delete_range")]
    async fn delete_range(
        &self,
        request: Request<pb::DeleteRangeRequest>,
    ) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        let (md, _, r) = request.into_parts();
        self.ctx.check_grpc_size(r.encoded_len())?;
        let dreq = convert::delete_req(&r);
        validate::check_delete(&dreq).map_err(|e| status::request_error(&e))?;
        let cmd = self.ctx.authz.authorize(&md, self.ctx.node.store(), Command::DeleteRange(dreq))?;
        let applied = self.ctx.propose(cmd, r.encoded_len()).await?;
        match applied.result {
            Ok(CommandResponse::DeleteRange(d)) => {
                Ok(Response::new(convert::delete_resp(d, self.ctx.header(applied.revision))))
            }
            Ok(_) => Err(unexpected("delete range")),
            Err(e) => Err(status::request_error(&e)),
        }
    }

    #[tracing::instrument(level = "debug", skip_all, name = "kv.txn")]
    async fn txn(&self, request: Request<pb::TxnRequest>) -> Result<Response<pb::TxnResponse>, Status> {
        let (md, _, r) = request.into_parts();
        self.ctx.check_grpc_size(r.encoded_len())?;
        let dreq = convert::txn_req(&r);
        validate::check_txn(&dreq, self.ctx.max_txn_ops).map_err(|e| status::request_error(&e))?;
        if dreq.is_read_only() {
            // etcd serves a txn without puts or deletes like a Range: no proposal, no revision.
            self.ctx.authz.check_txn(&md, &dreq)?;
            if !txn_serializable(&r) {
                self.ctx.linearizable_barrier().await?;
            }
            let store = self.ctx.node.store().clone();
            let res = tokio::task::block_in_place(|| {
                let view = store.read()?;
                let rev = view.current_revision();
                view.txn_read_only(&dreq).map(|x| (x, rev))
            });
            return match res {
                Err(e) => Err(status::store_error(&e)),
                Ok((Err(e), _)) => Err(status::request_error(&e)),
                Ok((Ok(t), rev)) => Ok(Response::new(convert::txn_resp(t, self.ctx.header(rev)))),
            };
        }
        let cmd = self.ctx.authz.authorize(&md, self.ctx.node.store(), Command::Txn(dreq))?;
        let applied = self.ctx.propose(cmd, r.encoded_len()).await?;
        match applied.result {
            Ok(CommandResponse::Txn(t)) => Ok(Response::new(convert::txn_resp(t, self.ctx.header(applied.revision)))),
            Ok(_) => Err(unexpected("txn")),
            Err(e) => Err(status::request_error(&e)),
        }
    }

    #[tracing::instrument(level = "debug", skip_all, name = "kv.compact")]
    async fn compact(
        &self,
        request: Request<pb::CompactionRequest>,
    ) -> Result<Response<pb::CompactionResponse>, Status> {
        let (md, _, r) = request.into_parts();
        self.ctx.check_grpc_size(r.encoded_len())?;
        let cmd = Command::Compact(CompactionRequest { revision: r.revision, physical: r.physical });
        // etcd 3.5 checks no permission for Compact; only a token that is sent must be valid.
        let cmd = self.ctx.authz.authorize(&md, self.ctx.node.store(), cmd)?;
        let applied = self.ctx.propose(cmd, r.encoded_len()).await?;
        match applied.result {
            Ok(CommandResponse::Compact) => {
                if r.physical {
                    self.ctx.compact_fully().await?;
                } else {
                    self.ctx.compactor.notify_one();
                }
                Ok(Response::new(pb::CompactionResponse { header: Some(self.ctx.header(applied.revision)) }))
            }
            Ok(_) => Err(unexpected("compact")),
            Err(e) => Err(status::request_error(&e)),
        }
    }
}
