//! [`RaftNode`]: one member's raft group, the only door to writes and linearizable reads.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cairn_storage::{Applied, Command, Store, StoreOptions};
use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::{BasicNode, Config, Raft, ServerState, SnapshotPolicy};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::codec;
use crate::log_store::LogStore;
use crate::network::{method, Network, PeerError, PeerTransport};
use crate::state_machine::{ApplyListener, StateMachine};
use crate::types::*;

/// How a member is set up.
#[derive(Clone)]
pub struct NodeConfig {
    /// etcd-style member ID; also the raft node ID.
    pub member_id: u64,
    /// Every member of a new cluster, this one included: member ID -> peer URL (etcd's
    /// `--initial-cluster`). Used only when the member starts with an empty log.
    pub initial_members: BTreeMap<u64, String>,
    /// Directory holding `state.redb`, the raft log `wal/` and `snap/`.
    pub dir: PathBuf,
    pub heartbeat_interval_ms: u64,
    pub election_timeout_ms: u64,
    /// Applied entries between raft snapshots (etcd's `--snapshot-count`).
    pub snapshot_count: u64,
    /// How peer messages travel ([`crate::network::NoPeers`] for a one-member group).
    pub transport: Arc<dyn PeerTransport>,
    /// Joining an existing cluster (`--initial-cluster-state=existing`): an empty log is
    /// not initialized here; the leader brings this member up to date.
    pub join: bool,
}

/// Why a write failed. None of these applied anything, except `Other` after a forward,
/// whose outcome is unknown (as etcd's "request timed out").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteError {
    /// No leader is known.
    NoLeader,
    /// Another member leads (a forwarded proposal reached a member that lost leadership).
    NotLeader { leader: Option<u64> },
    /// The node is shutting down or its raft core stopped.
    Stopped,
    /// The request reached the leader, which then failed or became unreachable: whether it
    /// was applied is unknown (etcd's "request timed out, possibly due to previous leader
    /// failure").
    LeaderLost,
    /// openraft or the peer network reported something else.
    Other(String),
}

/// A membership change (etcd's MemberAdd / MemberRemove / MemberPromote / MemberUpdate).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberChange {
    Add { id: u64, peer_url: String, learner: bool },
    Remove { id: u64 },
    Promote { id: u64 },
    Update { id: u64, peer_url: String },
}

/// Why a membership change was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberChangeError {
    NotLeader,
    NotFound,
    Exists,
    NotLearner,
    LearnerNotReady,
    Other(String),
}

/// What the server shows in ResponseHeader and Status.
#[derive(Clone, Debug, Default)]
pub struct RaftStatus {
    pub leader: Option<u64>,
    pub term: u64,
    pub last_log_index: u64,
    pub applied_index: u64,
    pub is_leader: bool,
}

/// Most commands waiting to be batched; `write` waits beyond it.
const PROPOSAL_QUEUE: usize = 16_384;
/// Most commands in one raft entry.
const MAX_BATCH_COMMANDS: usize = 1024;
/// Most (approximate) bytes in one raft entry.
const MAX_BATCH_BYTES: usize = 4 << 20;
/// Batches handed to openraft (or forwarded to the leader) at once; the next batch forms
/// while these are in flight.
const MAX_INFLIGHT_BATCHES: usize = 2;
/// Entries in one AppendEntries message. openraft gives each message one heartbeat interval
/// to arrive, so a message must stay small enough for that (entries are at most 4 MiB).
const MAX_PAYLOAD_ENTRIES: u64 = 8;
/// How long a forwarded proposal or read-index request may take on the leader.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(7);

struct Proposal {
    cmd: Command,
    /// `Origin::default()` for a proposal of this member; a forwarded one keeps its own.
    origin: Origin,
    done: oneshot::Sender<Result<Applied, WriteError>>,
}

/// Proposals this member forwarded to the leader, answered when this member applies them.
pub(crate) struct Waiters {
    member_id: u64,
    next_seq: AtomicU64,
    map: std::sync::Mutex<WaiterMap>,
}

#[derive(Default)]
struct WaiterMap {
    waiting: HashMap<u64, oneshot::Sender<Result<Applied, WriteError>>>,
    /// Size after the last sweep of abandoned waiters.
    swept_at: usize,
}

impl Waiters {
    pub(crate) fn new(member_id: u64) -> Waiters {
        // Unique across restarts of this member: an entry forwarded by a previous process
        // (applied after this one started) must not answer one of this process's waiters.
        let epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            .max(1);
        Waiters { member_id, next_seq: AtomicU64::new(epoch), map: Default::default() }
    }

    fn register(&self, done: oneshot::Sender<Result<Applied, WriteError>>) -> Origin {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let mut m = self.map.lock().expect("waiters lock poisoned");
        // A waiter whose caller gave up (timeout) is never answered if its entry is not
        // applied here: sweep those when the map has doubled since the last sweep.
        if m.waiting.len() >= 2 * m.swept_at.max(512) {
            m.waiting.retain(|_, s| !s.is_closed());
            m.swept_at = m.waiting.len();
        }
        m.waiting.insert(seq, done);
        Origin { member: self.member_id, seq }
    }

    fn fail(&self, origin: Origin, e: WriteError) {
        let w = self.map.lock().expect("waiters lock poisoned").waiting.remove(&origin.seq);
        if let Some(w) = w {
            let _ = w.send(Err(e));
        }
    }

    /// Whether `origin` is one of this member's forwarded proposals.
    pub(crate) fn is_mine(&self, origin: Origin) -> bool {
        origin.member == self.member_id && origin.member != 0
    }

    /// Answers a forwarded proposal with its outcome here.
    pub(crate) fn applied(&self, origin: Origin, outcome: &Applied) {
        let w = self.map.lock().expect("waiters lock poisoned").waiting.remove(&origin.seq);
        if let Some(w) = w {
            let _ = w.send(Ok(outcome.clone()));
        }
    }
}

/// What the batcher and the peer handlers share.
struct Shared {
    raft: Raft<TypeConfig>,
    transport: Arc<dyn PeerTransport>,
    waiters: Arc<Waiters>,
    election_timeout: Duration,
}

impl Shared {
    /// The leader and its peer URL, waiting up to two election timeouts for one.
    async fn leader(&self) -> Result<(u64, String), WriteError> {
        let mut rx = self.raft.metrics();
        let deadline = tokio::time::Instant::now() + 2 * self.election_timeout;
        loop {
            {
                let m = rx.borrow();
                let leader = match m.current_leader {
                    Some(_) if m.state == ServerState::Leader && !self.quorum_recent(&m) => None,
                    l => l,
                };
                if let Some(l) = leader {
                    let addr = m.membership_config.membership().get_node(&l).map(|n| n.addr.clone());
                    return addr.map(|a| (l, a)).ok_or(WriteError::NoLeader);
                }
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(WriteError::Stopped),
                Err(_) => return Err(WriteError::NoLeader),
            }
        }
    }

    /// Calls the leader, following leadership changes: a call that could not be delivered
    /// (no connection) or that reached a member which no longer leads is sent again to the
    /// next leader, until `deadline`. Anything else that fails after delivery is
    /// [`WriteError::LeaderLost`]: the leader may have acted on it.
    async fn call_leader(
        &self,
        method: &'static str,
        body: Vec<u8>,
        deadline: tokio::time::Instant,
    ) -> Result<u64, WriteError> {
        loop {
            let (leader, addr) = self.leader().await?;
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Err(WriteError::LeaderLost);
            }
            let retry = match self.transport.call(&addr, method, body.clone(), left).await {
                Ok(resp) => match codec::decode_index_result(&resp) {
                    Ok(Ok(i)) => return Ok(i),
                    Ok(Err(WriteError::NotLeader { .. } | WriteError::NoLeader)) => true,
                    Ok(Err(e)) => return Err(e),
                    Err(e) => return Err(WriteError::Other(format!("undecodable {method} response: {e}"))),
                },
                Err(PeerError::Unreachable(m)) => {
                    tracing::debug!(leader, error = %m, method, "leader unreachable; waiting for the next one");
                    true
                }
                Err(PeerError::Failed(m)) => {
                    tracing::warn!(leader, error = %m, method, "call to the leader failed");
                    return Err(WriteError::LeaderLost);
                }
            };
            if retry {
                // Wait for another leader (or give this one a moment), then try again.
                let mut rx = self.raft.metrics();
                let pause = tokio::time::Instant::now() + Duration::from_millis(100);
                let until = pause.min(deadline);
                while tokio::time::Instant::now() < until {
                    if rx.borrow().current_leader.is_some_and(|l| l != leader) {
                        break;
                    }
                    if tokio::time::timeout_at(until, rx.changed()).await.is_ok_and(|r| r.is_err()) {
                        return Err(WriteError::Stopped);
                    }
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err(WriteError::LeaderLost);
                }
            }
        }
    }

    /// Whether this member leads and heard from a quorum within an election timeout.
    /// openraft 0.9 has no CheckQuorum: a leader cut off from the majority stays leader
    /// until it hears a higher term. Like etcd's CheckQuorum, it is not treated as leader.
    fn is_leader(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.state == ServerState::Leader && self.quorum_recent(&m)
    }

    fn quorum_recent(&self, m: &openraft::RaftMetrics<NodeId, BasicNode>) -> bool {
        let voters = m.membership_config.membership().voter_ids().count();
        voters <= 1 || m.millis_since_quorum_ack.is_some_and(|ms| ms <= self.election_timeout.as_millis() as u64)
    }

    /// The leader as this member sees it: `None` while electing, and also when this member
    /// is a leader without a recent quorum.
    fn known_leader(&self) -> Option<NodeId> {
        let m = self.raft.metrics();
        let m = m.borrow();
        let l = m.current_leader?;
        if m.state == ServerState::Leader && !self.quorum_recent(&m) {
            return None;
        }
        Some(l)
    }
}

pub struct RaftNode {
    raft: Raft<TypeConfig>,
    proposals: mpsc::Sender<Proposal>,
    log: LogStore,
    store: Arc<Store>,
    sm: StateMachine,
    member_id: u64,
    state_path: PathBuf,
    shared: Arc<Shared>,
    /// A peer told this member it was removed from the cluster.
    removed: Arc<std::sync::atomic::AtomicBool>,
    /// Read-index rounds on this member as leader (local reads and followers' requests).
    leader_reads: mpsc::Sender<ReadWaiter>,
    /// Read-index rounds asked from the leader by this member as follower.
    follower_reads: mpsc::Sender<ReadWaiter>,
}

impl RaftNode {
    /// Opens the member's files and starts raft. A member with an empty log bootstraps the
    /// group from `initial_members` (every member of a new cluster does the same, with the
    /// same members, so they agree on the first membership entry).
    pub async fn start(cfg: NodeConfig) -> Result<RaftNode, String> {
        std::fs::create_dir_all(&cfg.dir).map_err(|e| format!("create {}: {e}", cfg.dir.display()))?;
        if !cfg.initial_members.contains_key(&cfg.member_id) {
            return Err(format!("member {:x} is not one of the initial members", cfg.member_id));
        }
        let state_path = cfg.dir.join("state.redb");
        let store = Arc::new(Store::open(&state_path, StoreOptions::default()).map_err(|e| e.to_string())?);
        let log =
            LogStore::open(&cfg.dir.join("wal"), Some(&cfg.dir.join("raft-log.redb"))).map_err(|e| e.to_string())?;
        let startup_last_index = {
            use openraft::storage::RaftLogStorage;
            let mut l = log.clone();
            l.get_log_state().await.map_err(|e| e.to_string())?.last_log_id.map_or(0, |id| id.index)
        };
        let waiters = Arc::new(Waiters::new(cfg.member_id));
        let sm = StateMachine::with_waiters(store.clone(), cfg.dir.join("snap"), waiters.clone())
            .map_err(|e| e.to_string())?;
        let config = Config {
            cluster_name: "cairn".into(),
            heartbeat_interval: cfg.heartbeat_interval_ms,
            // openraft waits `election_timeout_max` (its leader lease) plus a random timeout
            // in [min, max) before a follower campaigns: with [ET/2, ET) a dead leader is
            // replaced after 1.5-2 ET, close to etcd's [ET, 2ET).
            election_timeout_min: (cfg.election_timeout_ms / 2).max(cfg.heartbeat_interval_ms + 1),
            election_timeout_max: cfg.election_timeout_ms.max(cfg.heartbeat_interval_ms + 2),
            // A snapshot chunk must arrive within this (default 200 ms).
            install_snapshot_timeout: cfg.election_timeout_ms.max(1000),
            max_payload_entries: MAX_PAYLOAD_ENTRIES,
            snapshot_max_chunk_size: 1 << 20,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(cfg.snapshot_count),
            max_in_snapshot_log_to_keep: 1000,
            ..Default::default()
        }
        .validate()
        .map_err(|e| e.to_string())?;
        let removed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let network = Network { transport: cfg.transport.clone(), removed: removed.clone() };
        let raft = Raft::new(cfg.member_id, Arc::new(config), network, log.clone(), sm.clone())
            .await
            .map_err(|e| e.to_string())?;
        let shared = Arc::new(Shared {
            raft: raft.clone(),
            transport: cfg.transport.clone(),
            waiters,
            election_timeout: Duration::from_millis(cfg.election_timeout_ms),
        });
        let (proposals, rx) = mpsc::channel(PROPOSAL_QUEUE);
        tokio::spawn(batcher(shared.clone(), rx));
        let leader_reads = {
            let raft = raft.clone();
            spawn_read_rounds(move || {
                let raft = raft.clone();
                async move { leader_read_index(&raft, startup_last_index).await }
            })
        };
        let follower_reads = {
            let shared = shared.clone();
            spawn_read_rounds(move || {
                let shared = shared.clone();
                async move {
                    let deadline = tokio::time::Instant::now() + FORWARD_TIMEOUT;
                    shared.call_leader(method::READ_INDEX, Vec::new(), deadline).await
                }
            })
        };
        let node = RaftNode {
            raft,
            proposals,
            log,
            store,
            sm,
            member_id: cfg.member_id,
            state_path,
            shared,
            removed,
            leader_reads,
            follower_reads,
        };
        if cfg.join && !node.raft.is_initialized().await.map_err(|e| e.to_string())? {
            tracing::info!("joining an existing cluster: waiting for the leader to replicate to this member");
        } else if !node.raft.is_initialized().await.map_err(|e| e.to_string())? {
            let members: BTreeMap<u64, BasicNode> =
                cfg.initial_members.iter().map(|(id, url)| (*id, BasicNode { addr: url.clone() })).collect();
            node.raft.initialize(members).await.map_err(|e| e.to_string())?;
        } else if node.is_sole_voter() {
            // Alone in the group: no need to wait out an election timeout after a restart.
            let _ = node.raft.trigger().elect().await;
        }
        Ok(node)
    }

    fn is_sole_voter(&self) -> bool {
        let m = self.raft.metrics().borrow().membership_config.clone();
        let voters: Vec<u64> = m.membership().voter_ids().collect();
        voters == [self.member_id]
    }

    /// Waits until this member knows a leader, up to `timeout`.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<u64, WriteError> {
        let mut rx = self.raft.metrics();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(l) = rx.borrow().current_leader {
                return Ok(l);
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(WriteError::Stopped),
                Err(_) => return Err(WriteError::NoLeader),
            }
        }
    }

    pub fn set_apply_listener(&self, l: ApplyListener) {
        self.sm.set_listener(l);
    }

    /// Called after a snapshot sent by the leader replaced this member's store.
    pub fn set_install_listener(&self, l: crate::state_machine::InstallListener) {
        self.sm.set_install_listener(l);
    }

    /// Group commits (fsyncs) of the raft log since start.
    pub fn log_fsyncs(&self) -> u64 {
        self.log.fsyncs()
    }

    /// Durations of the raft log's group commits (etcd's WAL fsync histogram).
    pub fn wal_fsync_times(&self) -> &crate::log_store::DurationHistogram {
        self.log.fsync_times()
    }

    /// Latencies of the state machine's apply commits (etcd's backend commit duration).
    pub fn backend_commit_times(&self) -> &crate::log_store::DurationHistogram {
        self.sm.commit_times()
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn member_id(&self) -> u64 {
        self.member_id
    }

    /// Size of the state-machine file in bytes.
    pub fn db_size(&self) -> u64 {
        Store::db_size(&self.state_path)
    }

    /// Replicates and applies `cmd`; returns its outcome once applied on this member.
    /// Concurrent writes are batched into one raft entry (one fsync). On a follower the
    /// batch is forwarded to the leader and answered by this member's own apply.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn write(&self, cmd: Command) -> Result<Applied, WriteError> {
        let (done, rx) = oneshot::channel();
        self.proposals
            .send(Proposal { cmd, origin: Origin::default(), done })
            .await
            .map_err(|_| WriteError::Stopped)?;
        rx.await.map_err(|_| WriteError::Stopped)?
    }

    /// ReadIndex: confirms leadership with a quorum (on a follower: asks the leader to) and
    /// waits until this member has applied everything committed before the call. A local
    /// read after it is linearizable.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn read_index(&self) -> Result<(), WriteError> {
        let index = if self.shared.is_leader() {
            match join_read_round(&self.leader_reads).await {
                // Leadership moved meanwhile: ask the new leader.
                Err(WriteError::NotLeader { .. } | WriteError::NoLeader) => {
                    join_read_round(&self.follower_reads).await?
                }
                other => other?,
            }
        } else {
            join_read_round(&self.follower_reads).await?
        };
        self.wait_applied(index).await
    }

    /// Waits until this member has applied log index `index`.
    async fn wait_applied(&self, index: u64) -> Result<(), WriteError> {
        match self.raft.wait(Some(FORWARD_TIMEOUT)).applied_index_at_least(Some(index), "read index").await {
            Ok(_) => Ok(()),
            Err(openraft::metrics::WaitError::Timeout(..)) => {
                Err(WriteError::Other("timed out waiting for the read index to be applied".into()))
            }
            Err(openraft::metrics::WaitError::ShuttingDown) => Err(WriteError::Stopped),
        }
    }

    /// Serves one call of the peer protocol (see [`crate::network::method`]); the answer
    /// body, or an error message for the caller.
    pub async fn handle_peer(&self, method: &str, body: &[u8]) -> Result<Vec<u8>, String> {
        let bad = |e: cairn_storage::DecodeError| format!("undecodable {method} message: {e}");
        match method {
            method::APPEND => {
                let req = codec::decode_append_request(body).map_err(bad)?;
                let resp = self.raft.append_entries(req).await.map_err(|e| e.to_string())?;
                Ok(codec::encode_append_response(&resp))
            }
            method::VOTE => {
                let req = codec::decode_vote_request(body).map_err(bad)?;
                // A candidate outside a settled membership was removed: tell it (it stops).
                let m = self.raft.metrics().borrow().membership_config.clone();
                let settled = m.membership().get_joint_config().len() == 1 && m.log_id().is_some();
                if settled && m.membership().get_node(&req.vote.leader_id.node_id).is_none() {
                    return Err(crate::network::MEMBER_REMOVED.to_string());
                }
                let resp = self.raft.vote(req).await.map_err(|e| e.to_string())?;
                Ok(codec::encode_vote_response(&resp))
            }
            method::SNAPSHOT => {
                let req = codec::decode_snapshot_request(body).map_err(bad)?;
                let resp = self.raft.install_snapshot(req).await.map_err(|e| e.to_string())?;
                Ok(codec::encode_snapshot_response(&resp))
            }
            method::FORWARD => {
                let cmds = codec::decode_forward(body).map_err(bad)?;
                Ok(codec::encode_index_result(&self.propose_forwarded(cmds).await.map(|()| 0)))
            }
            method::READ_INDEX => Ok(codec::encode_index_result(&join_read_round(&self.leader_reads).await)),
            other => Err(format!("unknown peer method {other:?}")),
        }
    }

    /// Proposes commands another member forwarded, batched with this member's own; returns
    /// once they are applied here (the forwarding member answers from its own apply).
    async fn propose_forwarded(&self, cmds: Vec<(Origin, Command)>) -> Result<(), WriteError> {
        let mut pending = Vec::with_capacity(cmds.len());
        for (origin, cmd) in cmds {
            let (done, rx) = oneshot::channel();
            self.proposals.send(Proposal { cmd, origin, done }).await.map_err(|_| WriteError::Stopped)?;
            pending.push(rx);
        }
        // The commands may have gone into several entries: if some were appended, the
        // sender must not send them again (it would apply them twice), so a refusal of the
        // rest is reported as an unknown outcome rather than "not leader".
        let total = pending.len();
        let (mut refused, mut first_error) = (0usize, None);
        for rx in pending {
            match rx.await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    if matches!(e, WriteError::NotLeader { .. } | WriteError::NoLeader) {
                        refused += 1;
                    }
                    first_error.get_or_insert(e);
                }
                Err(_) => {
                    first_error.get_or_insert(WriteError::Stopped);
                }
            }
        }
        match first_error {
            None => Ok(()),
            // Every command refused before any append: the sender may send them again.
            Some(e @ (WriteError::NotLeader { .. } | WriteError::NoLeader)) if refused == total => Err(e),
            Some(WriteError::NotLeader { .. } | WriteError::NoLeader) => Err(WriteError::LeaderLost),
            Some(e) => Err(e),
        }
    }

    /// The current raft term, without copying the whole metrics (response headers).
    pub fn term(&self) -> u64 {
        self.raft.metrics().borrow().current_term
    }

    /// Whether this member leads.
    pub fn is_leader(&self) -> bool {
        self.shared.is_leader()
    }

    /// The leader and its peer URL, if one is known.
    pub fn leader_peer(&self) -> Option<(u64, String)> {
        let m = self.raft.metrics().borrow().clone();
        let l = m.current_leader?;
        m.membership_config.membership().get_node(&l).map(|n| (l, n.addr.clone()))
    }

    /// Whether a leader is known (a leader without a recent quorum does not count).
    pub fn has_leader(&self) -> bool {
        self.shared.known_leader().is_some()
    }

    pub fn status(&self) -> RaftStatus {
        let m = self.raft.metrics().borrow().clone();
        let recent = self.shared.quorum_recent(&m);
        let deposed = m.state == ServerState::Leader && !recent;
        RaftStatus {
            leader: if deposed { None } else { m.current_leader },
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            applied_index: m.last_applied.map_or(0, |l| l.index),
            is_leader: m.state == ServerState::Leader && recent,
        }
    }

    /// Members of the group: (id, peer url).
    pub fn members(&self) -> Vec<(u64, String)> {
        let m = self.raft.metrics().borrow().membership_config.clone();
        m.nodes().map(|(id, n)| (*id, n.addr.clone())).collect()
    }

    /// The learners of the group (members that replicate but do not vote).
    pub fn learners(&self) -> Vec<u64> {
        let m = self.raft.metrics().borrow().membership_config.clone();
        m.membership().learner_ids().collect()
    }

    /// Whether a peer said this member was removed from the cluster.
    pub fn is_removed(&self) -> bool {
        self.removed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether this member votes. A member that does not (a learner, or one that has not yet
    /// seen a membership with itself) serves only what a learner serves.
    pub fn is_voter(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        let is = m.membership_config.membership().voter_ids().any(|v| v == self.member_id);
        is
    }

    /// Whether this member is a learner.
    pub fn is_learner(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        let is = m.membership_config.membership().learner_ids().any(|l| l == self.member_id);
        is
    }

    /// Changes the membership; only on the leader (the server forwards to it). Adding a
    /// voter adds it as a learner first, then makes it a voter (openraft needs a node to be a
    /// learner before it votes); removal takes a member out entirely; promotion needs the
    /// learner to be in sync (etcd: its log within 10% of the leader's).
    pub async fn change_member(&self, change: MemberChange) -> Result<(), MemberChangeError> {
        use openraft::ChangeMembers;
        if !self.shared.is_leader() {
            return Err(MemberChangeError::NotLeader);
        }
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership().clone();
        let is_member = |id: u64| membership.get_node(&id).is_some();
        let is_learner = |id: u64| membership.learner_ids().any(|l| l == id);
        let res = match change {
            MemberChange::Add { id, peer_url, learner } => {
                if is_member(id) {
                    return Err(MemberChangeError::Exists);
                }
                if let Err(e) = self.raft.add_learner(id, BasicNode { addr: peer_url }, false).await {
                    return Err(MemberChangeError::Other(e.to_string()));
                }
                if learner {
                    return Ok(());
                }
                self.raft.change_membership(ChangeMembers::AddVoterIds([id].into()), false).await
            }
            MemberChange::Remove { id } => {
                if !is_member(id) {
                    return Err(MemberChangeError::NotFound);
                }
                if is_learner(id) {
                    self.raft.change_membership(ChangeMembers::RemoveNodes([id].into()), false).await
                } else {
                    self.raft.change_membership(ChangeMembers::RemoveVoters([id].into()), false).await
                }
            }
            MemberChange::Promote { id } => {
                if !is_member(id) {
                    return Err(MemberChangeError::NotFound);
                }
                if !is_learner(id) {
                    return Err(MemberChangeError::NotLearner);
                }
                let leader_last = m.last_log_index.unwrap_or(0);
                let matched = m.replication.as_ref().and_then(|r| r.get(&id).cloned().flatten()).map_or(0, |l| l.index);
                if (matched as f64) < 0.9 * leader_last as f64 {
                    return Err(MemberChangeError::LearnerNotReady);
                }
                self.raft.change_membership(ChangeMembers::AddVoterIds([id].into()), false).await
            }
            MemberChange::Update { id, peer_url } => {
                if !is_member(id) {
                    return Err(MemberChangeError::NotFound);
                }
                self.raft
                    .change_membership(ChangeMembers::SetNodes([(id, BasicNode { addr: peer_url })].into()), false)
                    .await
            }
        };
        res.map(|_| ()).map_err(|e| match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => MemberChangeError::NotLeader,
            e => MemberChangeError::Other(e.to_string()),
        })
    }

    /// Stops raft and makes the store durable.
    pub async fn shutdown(&self) {
        let _ = self.raft.shutdown().await;
        if let Err(e) = self.store.flush() {
            tracing::error!(error = %e, "final flush of the store failed");
        }
    }
}

/// The read index on the leader: openraft's read log id (after confirming leadership with a
/// quorum), but never below the last log index this process found at start. openraft 0.9
/// lets a restarted leader resume its term without a new blank entry, and its committed
/// index restored from disk may lag: entries acknowledged before a crash of the whole
/// cluster could then lie above openraft's read log id (a stale read, found by the Jepsen
/// test). Every acknowledged entry is in the leader's log, so waiting for the last one found
/// at start covers them.
async fn leader_read_index(raft: &Raft<TypeConfig>, startup_last_index: u64) -> Result<u64, WriteError> {
    match raft.get_read_log_id().await {
        Ok((read, _)) => Ok(read.map_or(0, |l| l.index).max(startup_last_index)),
        Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => Err(not_leader(f.leader_id)),
        Err(RaftError::APIError(e)) => Err(WriteError::Other(e.to_string())),
        Err(RaftError::Fatal(_)) => Err(WriteError::Stopped),
    }
}

type ReadWaiter = oneshot::Sender<Result<u64, WriteError>>;

/// Most read-index requests waiting for a round.
const READ_QUEUE: usize = 16_384;

/// Read-index rounds: every request queued when a round starts is answered by that round, so
/// concurrent linearizable reads share one leadership confirmation (one heartbeat round to a
/// quorum, as etcd batches its read-index requests) instead of one each. A round starts
/// after each request it answers arrived, so each gets a confirmation later than its own
/// arrival: linearizable. One round at a time.
fn spawn_read_rounds<F, Fut>(round: F) -> mpsc::Sender<ReadWaiter>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<u64, WriteError>> + Send,
{
    let (tx, mut rx) = mpsc::channel::<ReadWaiter>(READ_QUEUE);
    tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            let mut waiting = vec![first];
            while let Ok(w) = rx.try_recv() {
                waiting.push(w);
            }
            let res = round().await;
            for w in waiting {
                let _ = w.send(res.clone());
            }
        }
    });
    tx
}

/// Waits for the next read-index round of `rounds`.
async fn join_read_round(rounds: &mpsc::Sender<ReadWaiter>) -> Result<u64, WriteError> {
    let (tx, rx) = oneshot::channel();
    rounds.send(tx).await.map_err(|_| WriteError::Stopped)?;
    rx.await.map_err(|_| WriteError::Stopped)?
}

/// This member is not the leader: who is, if anyone.
fn not_leader(leader: Option<NodeId>) -> WriteError {
    match leader {
        None => WriteError::NoLeader,
        Some(l) => WriteError::NotLeader { leader: Some(l) },
    }
}

fn client_write_error(e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>) -> WriteError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => not_leader(f.leader_id),
        RaftError::APIError(e) => WriteError::Other(e.to_string()),
        RaftError::Fatal(_) => WriteError::Stopped,
    }
}

/// Takes every queued proposal (up to the batch bounds) into one raft entry and submits it:
/// on the leader to openraft, answering each proposal with its own outcome; on a follower
/// to the leader, each proposal then answered by this member's apply of it.
async fn batcher(shared: Arc<Shared>, mut rx: mpsc::Receiver<Proposal>) {
    let inflight = std::sync::Arc::new(Semaphore::new(MAX_INFLIGHT_BATCHES));
    while let Some(first) = rx.recv().await {
        let Ok(permit) = inflight.clone().acquire_owned().await else { return };
        let mut bytes = first.cmd.approx_size();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_COMMANDS && bytes < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(p) => {
                    bytes += p.cmd.approx_size();
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        let shared = shared.clone();
        tokio::spawn(async move {
            if shared.is_leader() {
                let _permit = permit;
                submit(&shared, batch).await;
            } else {
                // A forward waits on the leader, which may turn out to be this member (calling
                // itself): it must not hold the permits its own submits need.
                drop(permit);
                forward(&shared, batch).await;
            }
        });
    }
}

/// Leader: one raft entry for the batch.
async fn submit(shared: &Shared, batch: Vec<Proposal>) {
    let mut commands = Vec::with_capacity(batch.len());
    let mut origins = Vec::with_capacity(batch.len());
    let mut waiters = Vec::with_capacity(batch.len());
    for p in batch {
        commands.push(p.cmd);
        origins.push(p.origin);
        waiters.push(p.done);
    }
    if origins.iter().all(|o| *o == Origin::default()) {
        origins.clear();
    }
    // A deposed leader's pending entry may never be answered by openraft 0.9 (when a
    // snapshot replaces its log): bound the wait so that the batch permit comes back.
    let written = tokio::time::timeout(FORWARD_TIMEOUT, shared.raft.client_write(Request { commands, origins })).await;
    let written = match written {
        Ok(w) => w,
        Err(_) => {
            for w in waiters {
                let _ = w.send(Err(WriteError::LeaderLost));
            }
            return;
        }
    };
    match written {
        Ok(resp) => {
            let outcomes = resp.data.0;
            if outcomes.len() != waiters.len() {
                tracing::error!(got = outcomes.len(), want = waiters.len(), "batch applied with a wrong outcome count");
            }
            let mut outcomes = outcomes.into_iter();
            for w in waiters {
                let r = outcomes.next().ok_or_else(|| WriteError::Other("no outcome for a batched command".into()));
                let _ = w.send(r);
            }
        }
        Err(e) => {
            let e = client_write_error(e);
            for w in waiters {
                let _ = w.send(Err(e.clone()));
            }
        }
    }
}

/// Follower: the batch goes to the leader; this member's proposals wait for their apply
/// here. Proposals forwarded to this member (it lost leadership meanwhile) are refused.
async fn forward(shared: &Shared, batch: Vec<Proposal>) {
    let mut mine = Vec::with_capacity(batch.len());
    for p in batch {
        if p.origin == Origin::default() {
            let origin = shared.waiters.register(p.done);
            mine.push((origin, p.cmd));
        } else {
            let leader = shared.raft.metrics().borrow().current_leader;
            let _ = p.done.send(Err(not_leader(leader)));
        }
    }
    if mine.is_empty() {
        return;
    }
    let fail = |e: WriteError| {
        for (o, _) in &mine {
            shared.waiters.fail(*o, e.clone());
        }
    };
    let refs: Vec<(Origin, &Command)> = mine.iter().map(|(o, c)| (*o, c)).collect();
    let body = codec::encode_forward(&refs);
    let deadline = tokio::time::Instant::now() + FORWARD_TIMEOUT;
    // Accepted and applied on the leader: this member's apply answers each waiter.
    if let Err(e) = shared.call_leader(method::FORWARD, body, deadline).await {
        fail(e);
    }
}
