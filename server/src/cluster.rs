//! Cluster: MemberList over the raft membership; membership changes are not implemented yet.

use std::sync::Arc;
use std::time::Duration;

use cairn_raft::PeerTransport;

use cairn_proto::etcdserverpb as pb;
use cairn_proto::etcdserverpb::cluster_server::Cluster;
use tonic::{Request, Response, Status};

use crate::context::Context;
use crate::peer;

pub struct ClusterService {
    pub ctx: Arc<Context>,
}

/// How long MemberList waits for another member to tell its name and client URLs.
const ATTRS_TIMEOUT: Duration = Duration::from_millis(500);

impl ClusterService {
    /// Every member of the raft group. Another member's name and client URLs come from
    /// that member over the peer port (remembered once told); a member that never
    /// answered is listed as etcd lists an unstarted member: no name, no client URLs.
    async fn members(&self) -> Vec<pb::Member> {
        let others: Vec<(u64, String)> =
            self.ctx.node.members().into_iter().filter(|(id, _)| *id != self.ctx.member_id).collect();
        let asks = others.iter().map(|(id, peer)| {
            let known = self.ctx.member_attrs.lock().expect("member attrs lock poisoned").get(id).cloned();
            let peers = self.ctx.peers.clone();
            let peer = peer.clone();
            async move {
                if known.is_some() {
                    return known;
                }
                let body = peers.call(&peer, peer::method::MEMBER_ATTRS, Vec::new(), ATTRS_TIMEOUT).await.ok()?;
                Some(peer::decode_attrs(&body))
            }
        });
        let answers = futures::future::join_all(asks).await;
        let mut out = Vec::new();
        for (id, peer) in self.ctx.node.members() {
            if id == self.ctx.member_id {
                out.push(pb::Member {
                    id,
                    name: self.ctx.name.clone(),
                    peer_ur_ls: self.ctx.peer_urls.clone(),
                    client_ur_ls: self.ctx.client_urls.clone(),
                    is_learner: false,
                });
                continue;
            }
            let pos = others.iter().position(|(o, _)| *o == id);
            let attrs = pos.and_then(|p| answers[p].clone());
            if let Some(a) = &attrs {
                self.ctx.member_attrs.lock().expect("member attrs lock poisoned").insert(id, a.clone());
            }
            let (name, client_urls) = attrs.unwrap_or_default();
            out.push(pb::Member { id, name, peer_ur_ls: vec![peer], client_ur_ls: client_urls, is_learner: false });
        }
        out
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(&self, _r: Request<pb::MemberAddRequest>) -> Result<Response<pb::MemberAddResponse>, Status> {
        Err(Status::unimplemented("member add is not implemented yet"))
    }

    async fn member_remove(
        &self,
        _r: Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberRemoveResponse>, Status> {
        Err(Status::unimplemented("member remove is not implemented yet"))
    }

    async fn member_update(
        &self,
        _r: Request<pb::MemberUpdateRequest>,
    ) -> Result<Response<pb::MemberUpdateResponse>, Status> {
        Err(Status::unimplemented("member update is not implemented yet"))
    }

    async fn member_list(
        &self,
        request: Request<pb::MemberListRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        if request.into_inner().linearizable {
            self.ctx.linearizable_barrier().await?;
        }
        Ok(Response::new(pb::MemberListResponse {
            // etcd's member list header carries no revision.
            header: Some(self.ctx.header(0)),
            members: self.members().await,
        }))
    }

    async fn member_promote(
        &self,
        _r: Request<pb::MemberPromoteRequest>,
    ) -> Result<Response<pb::MemberPromoteResponse>, Status> {
        Err(Status::unimplemented("member promote is not implemented yet"))
    }
}
