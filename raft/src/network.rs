//! The peer network: openraft's RPCs as calls of a [`PeerTransport`] (the server provides a
//! gRPC one on the peer URLs), with bodies in the raft codec's formats. The transport also
//! carries forwarded proposals and read-index requests (see [`crate::node`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::BasicNode;

use crate::codec;
use crate::types::*;

/// AppendEntries bodies above this are split (unless they hold a single entry).
const MAX_APPEND_BYTES: usize = 2 << 20;

/// Why a peer call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerError {
    /// The peer could not be reached (connection refused, timed out before an answer).
    Unreachable(String),
    /// The peer answered with an error (or an answer we cannot read).
    Failed(String),
}

impl std::fmt::Display for PeerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerError::Unreachable(m) => write!(f, "peer unreachable: {m}"),
            PeerError::Failed(m) => write!(f, "peer call failed: {m}"),
        }
    }
}

impl std::error::Error for PeerError {}

pub type PeerFuture = Pin<Box<dyn Future<Output = Result<Vec<u8>, PeerError>> + Send>>;

/// Carries one request body to the member at `addr` (its peer URL) and brings back the
/// response body. `method` is one of the method names of `cairnpeerpb.PeerRequest`.
pub trait PeerTransport: Send + Sync + 'static {
    fn call(&self, addr: &str, method: &'static str, body: Vec<u8>, timeout: Duration) -> PeerFuture;
}

/// Method names of the peer protocol handled by [`crate::RaftNode::handle_peer`].
pub mod method {
    pub const APPEND: &str = "append";
    pub const VOTE: &str = "vote";
    pub const SNAPSHOT: &str = "snapshot";
    pub const FORWARD: &str = "forward";
    pub const READ_INDEX: &str = "read_index";
}

/// What a member answers a vote request of a member that is no longer in the cluster
/// (etcd's message); the removed member stops when it hears it.
pub const MEMBER_REMOVED: &str = "the member has been permanently removed from the cluster";

#[derive(Clone)]
pub struct Network {
    pub(crate) transport: Arc<dyn PeerTransport>,
    /// Set when a peer said this member was removed.
    pub(crate) removed: Arc<std::sync::atomic::AtomicBool>,
}

pub struct Peer {
    transport: Arc<dyn PeerTransport>,
    target: NodeId,
    addr: String,
    removed: Arc<std::sync::atomic::AtomicBool>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;
    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Peer {
        Peer { transport: self.transport.clone(), target, addr: node.addr.clone(), removed: self.removed.clone() }
    }
}

fn rpc_error<E: std::error::Error>(e: PeerError) -> RPCError<NodeId, BasicNode, E> {
    match e {
        PeerError::Unreachable(_) => RPCError::Unreachable(Unreachable::new(&e)),
        PeerError::Failed(_) => RPCError::Network(NetworkError::new(&e)),
    }
}

impl Peer {
    async fn call<E: std::error::Error>(
        &self,
        method: &'static str,
        body: Vec<u8>,
        option: &RPCOption,
    ) -> Result<Vec<u8>, RPCError<NodeId, BasicNode, E>> {
        tracing::trace!(target = self.target, method, "peer call");
        let res = self.transport.call(&self.addr, method, body, option.hard_ttl()).await;
        if let Err(PeerError::Failed(m)) = &res {
            if m.contains(MEMBER_REMOVED) {
                self.removed.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
        res.map_err(rpc_error)
    }
}

fn undecodable<E: std::error::Error>(e: cairn_storage::DecodeError) -> RPCError<NodeId, BasicNode, E> {
    rpc_error(PeerError::Failed(format!("undecodable peer response: {e}")))
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let n = rpc.entries.len() as u64;
        let body = codec::encode_append_request(&rpc);
        // openraft gives a message one heartbeat interval: a large one is split (openraft
        // retries at once with at most the hinted number of entries).
        if body.len() > MAX_APPEND_BYTES && n > 1 {
            let hint = (n * MAX_APPEND_BYTES as u64 / body.len() as u64).clamp(1, n - 1);
            return Err(RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint(hint)));
        }
        let body = self.call(method::APPEND, body, &option).await?;
        codec::decode_append_response(&body).map_err(undecodable)
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>>
    {
        let body = self.call(method::SNAPSHOT, codec::encode_snapshot_request(&rpc), &option).await?;
        codec::decode_snapshot_response(&body).map_err(undecodable)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let body = self.call(method::VOTE, codec::encode_vote_request(&rpc), &option).await?;
        codec::decode_vote_response(&body).map_err(undecodable)
    }

    fn backoff(&self) -> openraft::network::Backoff {
        // A member that is down is retried every 200 ms (openraft's default is 500 ms).
        openraft::network::Backoff::new(std::iter::repeat(Duration::from_millis(200)))
    }
}

/// A transport for one-member groups: there is nobody to call.
pub struct NoPeers;

impl PeerTransport for NoPeers {
    fn call(&self, addr: &str, _method: &'static str, _body: Vec<u8>, _timeout: Duration) -> PeerFuture {
        let e = PeerError::Unreachable(format!("no peer transport (member at {addr})"));
        Box::pin(async move { Err(e) })
    }
}
