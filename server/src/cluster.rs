//! Cluster: the member list over the raft membership, and membership changes (run by the
//! leader; a follower forwards them over the peer port).

use std::sync::Arc;
use std::time::Duration;

use cairn_proto::rpctypes::EtcdError;
use cairn_raft::{MemberChange, MemberChangeError, PeerTransport};

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
        let learners = self.ctx.node.learners();
        let mut out = Vec::new();
        for (id, peer) in self.ctx.node.members() {
            if id == self.ctx.member_id {
                out.push(pb::Member {
                    id,
                    name: self.ctx.name.clone(),
                    peer_ur_ls: self.ctx.peer_urls.clone(),
                    client_ur_ls: self.ctx.client_urls.clone(),
                    is_learner: learners.contains(&id),
                });
                continue;
            }
            let pos = others.iter().position(|(o, _)| *o == id);
            let attrs = pos.and_then(|p| answers[p].clone());
            if let Some(a) = &attrs {
                self.ctx.member_attrs.lock().expect("member attrs lock poisoned").insert(id, a.clone());
            }
            let (name, client_urls) = attrs.unwrap_or_default();
            let is_learner = learners.contains(&id);
            out.push(pb::Member { id, name, peer_ur_ls: vec![peer], client_ur_ls: client_urls, is_learner });
        }
        out
    }
}

/// etcd's default `--experimental-max-learners`.
const MAX_LEARNERS: usize = 1;

impl ClusterService {
    /// Runs a membership change on the leader (here, or forwarded to it), then waits until
    /// this member sees it, so that the member list answered with it shows it. (Not a read
    /// barrier: removing the leader leaves no leader for a moment, and etcd answers success.)
    async fn change(&self, change: MemberChange) -> Result<(), Status> {
        let seen = |node: &cairn_raft::RaftNode| {
            let members = node.members();
            let has = |id: u64| members.iter().any(|(m, _)| *m == id);
            match &change {
                MemberChange::Add { id, .. } => has(*id),
                MemberChange::Remove { id } => !has(*id),
                MemberChange::Promote { id } => !node.learners().contains(id),
                MemberChange::Update { id, peer_url } => members.iter().any(|(m, u)| m == id && u == peer_url),
            }
        };
        let res = if self.ctx.node.is_leader() {
            self.ctx.node.change_member(change.clone()).await
        } else {
            let body = self.ctx.call_leader(peer::method::MEMBER_CHANGE, peer::encode_member_change(&change)).await?;
            peer::decode_member_change_result(&body)
        };
        match res {
            Ok(()) => {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
                while !seen(&self.ctx.node) && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Ok(())
            }
            Err(MemberChangeError::NotLeader) => Err(EtcdError::LeaderChanged.status()),
            Err(MemberChangeError::NotFound) => Err(EtcdError::MemberNotFound.status()),
            Err(MemberChangeError::Exists) => Err(EtcdError::MemberExist.status()),
            Err(MemberChangeError::NotLearner) => Err(EtcdError::MemberNotLearner.status()),
            Err(MemberChangeError::LearnerNotReady) => Err(EtcdError::LearnerNotReady.status()),
            Err(MemberChangeError::Other(m)) => {
                tracing::warn!(error = %m, "membership change failed");
                Err(EtcdError::Timeout.status())
            }
        }
    }

    /// etcd's checks of the peer URLs of a member being added (`id` None) or updated: valid
    /// URLs, none taken by another member. Returns the current members and the URLs sorted.
    async fn check_peer_urls(
        &self,
        id: Option<u64>,
        urls: &[String],
    ) -> Result<(Vec<pb::Member>, Vec<String>), Status> {
        if !valid_peer_urls(urls) {
            return Err(EtcdError::MemberBadUrls.status());
        }
        let mut urls = urls.to_vec();
        urls.sort();
        let current = self.members().await;
        if current.iter().any(|m| Some(m.id) != id && m.peer_ur_ls.iter().any(|u| urls.contains(u))) {
            return Err(EtcdError::PeerUrlExist.status());
        }
        Ok((current, urls))
    }

    fn member_of(&self, id: u64, members: &[pb::Member]) -> Option<pb::Member> {
        members.iter().find(|m| m.id == id).cloned()
    }
}

/// etcd's peer URL check: absolute http(s) URLs with a host and port.
fn valid_peer_urls(urls: &[String]) -> bool {
    !urls.is_empty() && urls.iter().all(|u| crate::config::socket_addr(u).is_ok())
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        request: Request<pb::MemberAddRequest>,
    ) -> Result<Response<pb::MemberAddResponse>, Status> {
        let r = request.into_inner();
        let (current, urls) = self.check_peer_urls(None, &r.peer_ur_ls).await?;
        if r.is_learner && current.iter().filter(|m| m.is_learner).count() >= MAX_LEARNERS {
            return Err(EtcdError::TooManyLearners.status());
        }
        // As etcd: derived from the peer URLs, the cluster and the time of the request.
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let id = crate::fnv64(&[&urls.join(","), &format!("{:x}", self.ctx.cluster_id), &now.to_string()]).max(1);
        let peer_url = urls.first().cloned().unwrap_or_default();
        self.change(MemberChange::Add { id, peer_url, learner: r.is_learner }).await?;
        let members = self.members().await;
        let member = self.member_of(id, &members).map(|mut m| {
            m.peer_ur_ls = r.peer_ur_ls.clone();
            m
        });
        Ok(Response::new(pb::MemberAddResponse { header: Some(self.ctx.header(0)), member, members }))
    }

    async fn member_remove(
        &self,
        request: Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberRemoveResponse>, Status> {
        let r = request.into_inner();
        self.change(MemberChange::Remove { id: r.id }).await?;
        Ok(Response::new(pb::MemberRemoveResponse { header: Some(self.ctx.header(0)), members: self.members().await }))
    }

    async fn member_update(
        &self,
        request: Request<pb::MemberUpdateRequest>,
    ) -> Result<Response<pb::MemberUpdateResponse>, Status> {
        let r = request.into_inner();
        // etcd: another member's peer URL cannot be taken (the member itself may keep its own).
        let (_, urls) = self.check_peer_urls(Some(r.id), &r.peer_ur_ls).await?;
        let peer_url = urls.first().cloned().unwrap_or_default();
        self.change(MemberChange::Update { id: r.id, peer_url }).await?;
        Ok(Response::new(pb::MemberUpdateResponse { header: Some(self.ctx.header(0)), members: self.members().await }))
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
        request: Request<pb::MemberPromoteRequest>,
    ) -> Result<Response<pb::MemberPromoteResponse>, Status> {
        let r = request.into_inner();
        self.change(MemberChange::Promote { id: r.id }).await?;
        Ok(Response::new(pb::MemberPromoteResponse { header: Some(self.ctx.header(0)), members: self.members().await }))
    }
}
