//! Cluster: MemberList for this one-voter group; membership changes come with multi-node.

use std::sync::Arc;

use cairn_proto::etcdserverpb as pb;
use cairn_proto::etcdserverpb::cluster_server::Cluster;
use tonic::{Request, Response, Status};

use crate::context::Context;

pub struct ClusterService {
    pub ctx: Arc<Context>,
}

impl ClusterService {
    fn members(&self) -> Vec<pb::Member> {
        self.ctx
            .node
            .members()
            .into_iter()
            .map(|(id, peer)| {
                let me = id == self.ctx.member_id;
                pb::Member {
                    id,
                    name: if me { self.ctx.name.clone() } else { String::new() },
                    peer_ur_ls: if me { self.ctx.peer_urls.clone() } else { vec![peer] },
                    client_ur_ls: if me { self.ctx.client_urls.clone() } else { Vec::new() },
                    is_learner: false,
                }
            })
            .collect()
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
            members: self.members(),
        }))
    }

    async fn member_promote(
        &self,
        _r: Request<pb::MemberPromoteRequest>,
    ) -> Result<Response<pb::MemberPromoteResponse>, Status> {
        Err(Status::unimplemented("member promote is not implemented yet"))
    }
}
