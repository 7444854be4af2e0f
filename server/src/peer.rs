//! The peer port: Cairn's private member-to-member protocol (`cairnpeerpb.Peer`, one unary
//! call whose body the raft codec encodes) served on `--listen-peer-urls`, and the gRPC
//! transport the raft crate uses to call other members.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use cairn_proto::cairnpeerpb as pb;
use cairn_proto::cairnpeerpb::peer_client::PeerClient;
use cairn_proto::cairnpeerpb::peer_server::Peer;
use cairn_raft::{MemberChange, MemberChangeError, PeerError, PeerFuture, PeerTransport, RaftNode};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use crate::lessor::{Lessor, LessorError};

/// Largest peer message: an AppendEntries of 8 entries of at most 4 MiB each, with room.
pub const MAX_PEER_MESSAGE: usize = 64 << 20;

/// Calls other members over gRPC: one lazily connected channel per peer URL (tonic
/// reconnects it as needed), each call with its own deadline.
pub struct GrpcTransport {
    cluster_id: u64,
    channels: Mutex<HashMap<String, Channel>>,
}

impl GrpcTransport {
    pub fn new(cluster_id: u64) -> GrpcTransport {
        GrpcTransport { cluster_id, channels: Mutex::new(HashMap::new()) }
    }

    fn channel(&self, addr: &str) -> Result<Channel, PeerError> {
        let mut map = self.channels.lock().expect("peer channels lock poisoned");
        if let Some(c) = map.get(addr) {
            return Ok(c.clone());
        }
        let endpoint = Endpoint::from_shared(addr.to_string())
            .map_err(|e| PeerError::Failed(format!("bad peer URL {addr:?}: {e}")))?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5));
        let c = endpoint.connect_lazy();
        map.insert(addr.to_string(), c.clone());
        Ok(c)
    }
}

impl PeerTransport for GrpcTransport {
    fn call(&self, addr: &str, method: &'static str, body: Vec<u8>, timeout: Duration) -> PeerFuture {
        let channel = self.channel(addr);
        let cluster_id = self.cluster_id;
        Box::pin(async move {
            let mut client = PeerClient::new(channel?)
                .max_decoding_message_size(MAX_PEER_MESSAGE)
                .max_encoding_message_size(MAX_PEER_MESSAGE);
            let mut req = Request::new(pb::PeerRequest { method: method.to_string(), cluster_id, body: body.into() });
            req.set_timeout(timeout);
            match tokio::time::timeout(timeout, client.call(req)).await {
                Err(_) => Err(PeerError::Failed(format!("{method} timed out after {timeout:?}"))),
                Ok(Ok(resp)) => Ok(resp.into_inner().body.to_vec()),
                // Not delivered: no connection could be made. (A connection that broke during
                // the call is also Unavailable, but then the peer may have acted on it.)
                Ok(Err(s)) if s.code() == tonic::Code::Unavailable && is_connect_error(&s) => {
                    Err(PeerError::Unreachable(s.message().to_string()))
                }
                Ok(Err(s)) => Err(PeerError::Failed(format!("{:?}: {}", s.code(), s.message()))),
            }
        })
    }
}

/// Whether the call was certainly not delivered: no connection could be made (an I/O error
/// of connecting in the error's source chain), or the peer refused it while starting.
fn is_connect_error(s: &Status) -> bool {
    if s.message() == "member is starting" {
        return true;
    }
    let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(s);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            if matches!(io.kind(), ConnectionRefused | AddrNotAvailable | HostUnreachable | NetworkUnreachable) {
                return true;
            }
        }
        cur = e.source();
    }
    false
}

/// Peer methods the server answers itself (not raft's).
pub mod method {
    /// The member's name and client URLs (for MemberList).
    pub const MEMBER_ATTRS: &str = "member_attrs";
    /// Renew a lease on the leader (a keep-alive a follower received): body the lease ID.
    pub const LEASE_RENEW: &str = "lease_renew";
    /// The leader's remaining TTL of a lease (TimeToLive on a follower): body the lease ID.
    pub const LEASE_REMAINING: &str = "lease_remaining";
    /// A membership change, run by the leader ([`super::encode_member_change`]).
    pub const MEMBER_CHANGE: &str = "member_change";
    /// Which member has these peer URLs (a member joining an existing cluster asks):
    /// body the sorted URLs joined by ","; answer member ID and cluster ID (16 bytes) or
    /// nothing. Answered whatever the caller's cluster ID.
    pub const MEMBER_LOOKUP: &str = "member_lookup";
}

pub fn encode_member_change(c: &MemberChange) -> Vec<u8> {
    let (op, id, learner, url) = match c {
        MemberChange::Add { id, peer_url, learner } => (1u8, *id, *learner, peer_url.as_str()),
        MemberChange::Remove { id } => (2, *id, false, ""),
        MemberChange::Promote { id } => (3, *id, false, ""),
        MemberChange::Update { id, peer_url } => (4, *id, false, peer_url.as_str()),
    };
    let mut b = vec![op];
    b.extend_from_slice(&id.to_le_bytes());
    b.push(u8::from(learner));
    b.extend_from_slice(url.as_bytes());
    b
}

fn decode_member_change(b: &[u8]) -> Option<MemberChange> {
    if b.len() < 10 {
        return None;
    }
    let id = u64::from_le_bytes(b[1..9].try_into().ok()?);
    let learner = b[9] != 0;
    let peer_url = String::from_utf8(b[10..].to_vec()).ok()?;
    Some(match b[0] {
        1 => MemberChange::Add { id, peer_url, learner },
        2 => MemberChange::Remove { id },
        3 => MemberChange::Promote { id },
        4 => MemberChange::Update { id, peer_url },
        _ => return None,
    })
}

pub fn encode_member_change_result(r: &Result<(), MemberChangeError>) -> Vec<u8> {
    match r {
        Ok(()) => vec![0],
        Err(MemberChangeError::NotLeader) => vec![1],
        Err(MemberChangeError::NotFound) => vec![2],
        Err(MemberChangeError::Exists) => vec![3],
        Err(MemberChangeError::NotLearner) => vec![4],
        Err(MemberChangeError::LearnerNotReady) => vec![5],
        Err(MemberChangeError::Other(m)) => [&[6u8][..], m.as_bytes()].concat(),
    }
}

pub fn decode_member_change_result(b: &[u8]) -> Result<(), MemberChangeError> {
    match b {
        [0] => Ok(()),
        [1] => Err(MemberChangeError::NotLeader),
        [2] => Err(MemberChangeError::NotFound),
        [3] => Err(MemberChangeError::Exists),
        [4] => Err(MemberChangeError::NotLearner),
        [5] => Err(MemberChangeError::LearnerNotReady),
        [6, m @ ..] => Err(MemberChangeError::Other(String::from_utf8_lossy(m).into_owned())),
        _ => Err(MemberChangeError::Other("undecodable member change answer".into())),
    }
}

/// Serves the peer protocol of this member.
pub struct PeerService {
    pub cluster_id: u64,
    /// Set once the node has started (raft messages may arrive before: they are refused,
    /// and the sender retries).
    pub node: Arc<OnceLock<Arc<RaftNode>>>,
    /// Set once the lessor exists.
    pub lessor: Arc<OnceLock<Arc<Lessor>>>,
    pub name: String,
    pub client_urls: Vec<String>,
}

/// A lease answer between members: `Ok(Some(ttl))`, `Ok(None)` (no such lease), or this
/// member is not the primary lessor.
pub fn encode_lease_answer(a: Result<Option<i64>, LessorError>) -> Vec<u8> {
    match a {
        Ok(Some(ttl)) => [&[0u8][..], &ttl.to_le_bytes()].concat(),
        Ok(None) => vec![1],
        Err(_) => vec![2],
    }
}

pub fn decode_lease_answer(b: &[u8]) -> Result<Option<i64>, LessorError> {
    match b {
        [0, rest @ ..] if rest.len() == 8 => Ok(Some(i64::from_le_bytes(rest.try_into().unwrap_or_default()))),
        [1] => Ok(None),
        _ => Err(LessorError::NotPrimary),
    }
}

fn lease_id(body: &[u8]) -> Result<i64, Status> {
    body.try_into().map(i64::from_le_bytes).map_err(|_| Status::invalid_argument("lease ID must be 8 bytes"))
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn call(&self, request: Request<pb::PeerRequest>) -> Result<Response<pb::PeerResponse>, Status> {
        let req = request.into_inner();
        if req.method == method::MEMBER_LOOKUP {
            let Some(node) = self.node.get() else {
                return Err(Status::unavailable("member is starting"));
            };
            let want = String::from_utf8_lossy(&req.body).into_owned();
            let body = node
                .members()
                .into_iter()
                .find(|(_, url)| *url == want)
                .map(|(id, _)| [id.to_le_bytes(), self.cluster_id.to_le_bytes()].concat())
                .unwrap_or_default();
            return Ok(Response::new(pb::PeerResponse { body: body.into() }));
        }
        if req.cluster_id != self.cluster_id {
            return Err(Status::failed_precondition(format!(
                "cluster ID mismatch: this member is in {:x}, the sender in {:x}",
                self.cluster_id, req.cluster_id
            )));
        }
        let body = match req.method.as_str() {
            method::MEMBER_ATTRS => encode_attrs(&self.name, &self.client_urls),
            method::MEMBER_CHANGE => {
                let Some(node) = self.node.get() else {
                    return Err(Status::unavailable("member is starting"));
                };
                let change = decode_member_change(&req.body)
                    .ok_or_else(|| Status::invalid_argument("undecodable member change"))?;
                encode_member_change_result(&node.change_member(change).await)
            }
            method::LEASE_RENEW | method::LEASE_REMAINING => {
                let id = lease_id(&req.body)?;
                let Some(lessor) = self.lessor.get() else {
                    return Err(Status::unavailable("member is starting"));
                };
                let answer = if req.method == method::LEASE_RENEW {
                    lessor.renew(id).await
                } else {
                    // A lessor still promoting answers once promoted, as on the leader itself.
                    lessor.wait_primary().await.map(|()| lessor.remaining_secs(id))
                };
                encode_lease_answer(answer)
            }
            m => {
                let Some(node) = self.node.get() else {
                    return Err(Status::unavailable("member is starting"));
                };
                node.handle_peer(m, &req.body).await.map_err(Status::internal)?
            }
        };
        Ok(Response::new(pb::PeerResponse { body: body.into() }))
    }
}

/// `name \n url \n url ...` (names and URLs hold no newline).
fn encode_attrs(name: &str, client_urls: &[String]) -> Vec<u8> {
    let mut s = name.to_string();
    for u in client_urls {
        s.push('\n');
        s.push_str(u);
    }
    s.into_bytes()
}

/// A member's name and client URLs, as [`method::MEMBER_ATTRS`] answers.
pub fn decode_attrs(body: &[u8]) -> (String, Vec<String>) {
    let s = String::from_utf8_lossy(body);
    let mut it = s.split('\n');
    let name = it.next().unwrap_or_default().to_string();
    (name, it.map(str::to_string).collect())
}
