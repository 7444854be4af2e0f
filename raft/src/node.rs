//! [`RaftNode`]: one member's raft group, the only door to writes and linearizable reads.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cairn_storage::{Applied, Command, Store, StoreOptions};
use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::{BasicNode, Config, Raft, ServerState, SnapshotPolicy};

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

pub struct RaftNode {
    raft: Raft<TypeConfig>,
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
        let raft =
            Raft::new(cfg.member_id, Arc::new(config), Network, log, sm.clone()).await.map_err(|e| e.to_string())?;
        let node = RaftNode { raft, store, sm, member_id: cfg.member_id, state_path };
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
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn write(&self, cmd: Command) -> Result<Applied, WriteError> {
        match self.raft.client_write(Request(cmd)).await {
            Ok(resp) => resp.data.0.ok_or_else(|| WriteError::Other("entry applied without a response".into())),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => match f.leader_id {
                None => Err(WriteError::NoLeader),
                Some(l) => Err(WriteError::NotLeader { leader: Some(l) }),
            },
            Err(RaftError::APIError(e)) => Err(WriteError::Other(e.to_string())),
            Err(RaftError::Fatal(_)) => Err(WriteError::Stopped),
        }
    }

    /// ReadIndex: confirms leadership with a quorum and waits until this member has applied
    /// everything committed before the call. A local read after it is linearizable.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn read_index(&self) -> Result<(), WriteError> {
        match self.raft.ensure_linearizable().await {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => match f.leader_id {
                None => Err(WriteError::NoLeader),
                Some(l) => Err(WriteError::NotLeader { leader: Some(l) }),
            },
            Err(RaftError::APIError(e)) => Err(WriteError::Other(e.to_string())),
            Err(RaftError::Fatal(_)) => Err(WriteError::Stopped),
        }
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
