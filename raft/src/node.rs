//! [`RaftNode`]: one member's raft group, the only door to writes and linearizable reads.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cairn_storage::{Applied, Command, Store, StoreOptions};
use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::{BasicNode, Config, Raft, ServerState, SnapshotPolicy};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::log_store::LogStore;
use crate::network::Network;
use crate::state_machine::{ApplyListener, StateMachine};
use crate::types::*;

/// How a member is set up.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// etcd-style member ID; also the raft node ID.
    pub member_id: u64,
    /// This member's peer URL, recorded in the raft membership.
    pub peer_url: String,
    /// Directory holding `state.redb`, `raft-log.redb` and `snap/`.
    pub dir: PathBuf,
    pub heartbeat_interval_ms: u64,
    pub election_timeout_ms: u64,
    /// Applied entries between raft snapshots (etcd's `--snapshot-count`).
    pub snapshot_count: u64,
}

/// Why a write failed. None of these applied anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteError {
    /// No leader is known.
    NoLeader,
    /// Another member leads (multi-node; forwarding is not implemented yet).
    NotLeader { leader: Option<u64> },
    /// The node is shutting down or its raft core stopped.
    Stopped,
    /// openraft reported something else.
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
/// Batches handed to openraft at once; the next batch forms while these are in flight.
const MAX_INFLIGHT_BATCHES: usize = 2;

struct Proposal {
    cmd: Command,
    done: oneshot::Sender<Result<Applied, WriteError>>,
}

pub struct RaftNode {
    raft: Raft<TypeConfig>,
    proposals: mpsc::Sender<Proposal>,
    log: LogStore,
    store: Arc<Store>,
    sm: StateMachine,
    member_id: u64,
    state_path: PathBuf,
}

impl RaftNode {
    /// Opens the member's files and starts raft. A member with no membership yet bootstraps
    /// itself as the single voter.
    pub async fn start(cfg: NodeConfig) -> Result<RaftNode, String> {
        std::fs::create_dir_all(&cfg.dir).map_err(|e| format!("create {}: {e}", cfg.dir.display()))?;
        let state_path = cfg.dir.join("state.redb");
        let store = Arc::new(Store::open(&state_path, StoreOptions::default()).map_err(|e| e.to_string())?);
        let log = LogStore::open(&cfg.dir.join("raft-log.redb")).map_err(|e| e.to_string())?;
        let sm = StateMachine::new(store.clone(), cfg.dir.join("snap")).map_err(|e| e.to_string())?;
        let config = Config {
            cluster_name: "cairn".into(),
            heartbeat_interval: cfg.heartbeat_interval_ms,
            election_timeout_min: cfg.election_timeout_ms,
            election_timeout_max: cfg.election_timeout_ms * 2,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(cfg.snapshot_count),
            max_in_snapshot_log_to_keep: 1000,
            ..Default::default()
        }
        .validate()
        .map_err(|e| e.to_string())?;
        let raft = Raft::new(cfg.member_id, Arc::new(config), Network, log.clone(), sm.clone())
            .await
            .map_err(|e| e.to_string())?;
        let (proposals, rx) = mpsc::channel(PROPOSAL_QUEUE);
        tokio::spawn(batcher(raft.clone(), rx));
        let node = RaftNode { raft, proposals, log, store, sm, member_id: cfg.member_id, state_path };
        if !node.raft.is_initialized().await.map_err(|e| e.to_string())? {
            let mut members = BTreeMap::new();
            members.insert(cfg.member_id, BasicNode { addr: cfg.peer_url.clone() });
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
    /// Concurrent writes are batched into one raft entry (one fsync).
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn write(&self, cmd: Command) -> Result<Applied, WriteError> {
        let (done, rx) = oneshot::channel();
        self.proposals.send(Proposal { cmd, done }).await.map_err(|_| WriteError::Stopped)?;
        rx.await.map_err(|_| WriteError::Stopped)?
    }

    /// ReadIndex: confirms leadership with a quorum and waits until this member has applied
    /// everything committed before the call. A local read after it is linearizable.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn read_index(&self) -> Result<(), WriteError> {
        match self.raft.ensure_linearizable().await {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => Err(not_leader(f.leader_id)),
            Err(RaftError::APIError(e)) => Err(WriteError::Other(e.to_string())),
            Err(RaftError::Fatal(_)) => Err(WriteError::Stopped),
        }
    }

    /// The current raft term, without copying the whole metrics (response headers).
    pub fn term(&self) -> u64 {
        self.raft.metrics().borrow().current_term
    }

    /// Whether a leader is known (without copying the whole metrics).
    pub fn has_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader.is_some()
    }

    pub fn status(&self) -> RaftStatus {
        let m = self.raft.metrics().borrow().clone();
        RaftStatus {
            leader: m.current_leader,
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            applied_index: m.last_applied.map_or(0, |l| l.index),
            is_leader: m.state == ServerState::Leader,
        }
    }

    /// Members of the group: (id, peer url, is voter).
    pub fn members(&self) -> Vec<(u64, String)> {
        let m = self.raft.metrics().borrow().membership_config.clone();
        m.nodes().map(|(id, n)| (*id, n.addr.clone())).collect()
    }

    /// Stops raft and makes the store durable.
    pub async fn shutdown(&self) {
        let _ = self.raft.shutdown().await;
        if let Err(e) = self.store.flush() {
            tracing::error!(error = %e, "final flush of the store failed");
        }
    }
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

/// Takes every queued proposal (up to the batch bounds) into one raft entry, submits it,
/// and answers each proposal with its own outcome.
async fn batcher(raft: Raft<TypeConfig>, mut rx: mpsc::Receiver<Proposal>) {
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
        let (cmds, waiters): (Vec<Command>, Vec<_>) = batch.into_iter().map(|p| (p.cmd, p.done)).unzip();
        let raft = raft.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match raft.client_write(Request(cmds)).await {
                Ok(resp) => {
                    let outcomes = resp.data.0;
                    if outcomes.len() != waiters.len() {
                        tracing::error!(
                            got = outcomes.len(),
                            want = waiters.len(),
                            "batch applied with a wrong outcome count"
                        );
                    }
                    let mut outcomes = outcomes.into_iter();
                    for w in waiters {
                        let r =
                            outcomes.next().ok_or_else(|| WriteError::Other("no outcome for a batched command".into()));
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
        });
    }
}
