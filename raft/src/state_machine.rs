//! The raft state machine: [`cairn_storage::Store`] plus snapshot files.
//!
//! Applies are committed without fsync (`Durability::None`): the raft log is durable, and
//! after a crash the store reopens at its last durable commit and openraft re-applies the
//! committed entries after it. The store is made durable at least every
//! [`DURABLE_EVERY`] and before every snapshot, and the log is purged only up to a
//! snapshot, so the log always covers what the store may have lost.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_storage::{ApplyEntry, BatchOutcome, Command, Store};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, ErrorVerb, OptionalSend, RaftSnapshotBuilder};
use tokio::sync::Mutex;

use crate::codec;
use crate::node::Waiters;
use crate::types::*;

/// The longest the store goes without a durable commit while applying.
pub const DURABLE_EVERY: Duration = Duration::from_secs(1);

/// Batches of at most this many commands (and no fsync) are applied on the state machine
/// task itself.
const INLINE_APPLY_COMMANDS: usize = 8;

/// Called after every applied batch, with what it did (events for watches, revisions).
pub type ApplyListener = Arc<dyn Fn(&BatchOutcome) + Send + Sync>;

/// Called after an installed snapshot replaced the store (revisions jumped, auth changed).
pub type InstallListener = Arc<dyn Fn() + Send + Sync>;

struct Inner {
    store: Arc<Store>,
    snapshot_dir: PathBuf,
    /// Serializes apply, snapshot build and install: an export reads the applied state and
    /// the data in one view.
    lock: Mutex<SmState>,
    listener: std::sync::Mutex<Option<ApplyListener>>,
    /// How long each apply transaction's commit took (etcd's backend commit latency).
    commit_times: Arc<crate::log_store::DurationHistogram>,
    /// Proposals this member forwarded to the leader, answered here when applied.
    waiters: Arc<Waiters>,
    /// Called after a snapshot from the leader replaced the store.
    on_install: std::sync::Mutex<Option<InstallListener>>,
}

struct SmState {
    last_durable: Instant,
    /// The last applied membership, cached; `None` until loaded from the store.
    membership: Option<StoredMembership>,
}

#[derive(Clone)]
pub struct StateMachine {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Msg(String);
impl std::fmt::Display for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for Msg {}

fn sm_err(e: impl std::error::Error + 'static) -> StorageError {
    sto_err(ErrorVerb::Write, e)
}

impl StateMachine {
    /// Latencies of the apply transactions (each ends in one redb commit).
    pub fn commit_times(&self) -> &crate::log_store::DurationHistogram {
        &self.inner.commit_times
    }

    /// A state machine that forwards nothing (openraft's conformance suite).
    pub fn new(store: Arc<Store>, snapshot_dir: PathBuf) -> Result<StateMachine, StorageError> {
        StateMachine::with_waiters(store, snapshot_dir, Arc::new(Waiters::new(0)))
    }

    pub(crate) fn with_waiters(
        store: Arc<Store>,
        snapshot_dir: PathBuf,
        waiters: Arc<Waiters>,
    ) -> Result<StateMachine, StorageError> {
        std::fs::create_dir_all(&snapshot_dir).map_err(sm_err)?;
        Ok(StateMachine {
            inner: Arc::new(Inner {
                store,
                snapshot_dir,
                lock: Mutex::new(SmState { last_durable: Instant::now(), membership: None }),
                listener: std::sync::Mutex::new(None),
                commit_times: Arc::new(crate::log_store::DurationHistogram::default()),
                waiters,
                on_install: std::sync::Mutex::new(None),
            }),
        })
    }

    pub fn set_install_listener(&self, l: InstallListener) {
        *self.inner.on_install.lock().expect("listener lock poisoned") = Some(l);
    }

    pub fn set_listener(&self, l: ApplyListener) {
        *self.inner.listener.lock().expect("listener lock poisoned") = Some(l);
    }

    fn current_paths(&self) -> (PathBuf, PathBuf) {
        (self.inner.snapshot_dir.join("current.snap"), self.inner.snapshot_dir.join("current.meta"))
    }

    fn sm_state(&self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let (_, blob) = self.inner.store.applied().map_err(sm_err)?;
        codec::decode_sm_state(&blob).map_err(sm_err)
    }
}

/// Writes `bytes` to `path` through a synced temporary file and a rename.
fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        self.sm_state()
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut guard = self.inner.lock.lock().await;
        let mut membership = match guard.membership.take() {
            Some(m) => m,
            None => self.sm_state()?.1,
        };
        let mut last = None;
        let mut items: Vec<(u64, Option<Command>)> = Vec::new();
        // Commands per entry, to regroup the outcomes into one response per entry.
        let mut per_entry: Vec<usize> = Vec::new();
        // Commands this member forwarded: (position in `items`, origin).
        let mut mine: Vec<(usize, Origin)> = Vec::new();
        for e in entries {
            last = Some(e.log_id);
            match e.payload {
                EntryPayload::Normal(req) if !req.commands.is_empty() => {
                    per_entry.push(req.commands.len());
                    for (i, o) in req.origins.iter().enumerate() {
                        if self.inner.waiters.is_mine(*o) {
                            mine.push((items.len() + i, *o));
                        }
                    }
                    items.extend(req.commands.into_iter().map(|c| (e.log_id.index, Some(c))));
                }
                EntryPayload::Membership(m) => {
                    membership = StoredMembership::new(Some(e.log_id), m);
                    per_entry.push(0);
                    items.push((e.log_id.index, None));
                }
                EntryPayload::Blank | EntryPayload::Normal(_) => {
                    per_entry.push(0);
                    items.push((e.log_id.index, None));
                }
            }
        }
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let blob = codec::encode_sm_state(&last, &membership);
        let n_commands = items.len();
        let durable = guard.last_durable.elapsed() >= DURABLE_EVERY;
        let store = self.inner.store.clone();
        let commit_times = self.inner.commit_times.clone();
        let apply = move || {
            let batch: Vec<ApplyEntry<'_>> =
                items.iter().map(|(i, c)| ApplyEntry { index: *i, command: c.as_ref() }).collect();
            let started = Instant::now();
            let out = store.apply_batch(&batch, &blob, durable);
            commit_times.observe(started.elapsed());
            out
        };
        // A small batch without fsync is a short redb transaction: apply it on this task (a
        // thread hand-off costs more than the work). Large or durable batches go to the
        // blocking pool.
        let outcome = if n_commands <= INLINE_APPLY_COMMANDS && !durable {
            apply().map_err(sm_err)?
        } else {
            tokio::task::spawn_blocking(apply)
                .await
                .map_err(|e| sm_err(Msg(format!("apply task failed: {e}"))))?
                .map_err(sm_err)?
        };
        guard.membership = Some(membership);
        if durable {
            guard.last_durable = Instant::now();
        }
        let listener = self.inner.listener.lock().expect("listener lock poisoned").clone();
        if let Some(l) = listener {
            l(&outcome);
        }
        for (pos, origin) in mine {
            match outcome.applied.get(pos) {
                Some(Some(applied)) => self.inner.waiters.applied(origin, applied),
                _ => tracing::error!(pos, "no outcome for a forwarded command"),
            }
        }
        let mut outcomes = outcome.applied.into_iter().flatten();
        Ok(per_entry.into_iter().map(|n| Response(outcomes.by_ref().take(n).collect())).collect())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        let _guard = self.inner.lock.lock().await;
        let path = self.inner.snapshot_dir.join("receiving.snap");
        // Read and write: install_snapshot reads back what openraft wrote into it.
        let f = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .await
            .map_err(sm_err)?;
        Ok(Box::new(f))
    }

    async fn install_snapshot(
        &mut self,
        meta: &openraft::SnapshotMeta<NodeId, openraft::BasicNode>,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        let mut guard = self.inner.lock.lock().await;
        guard.membership = None;
        let mut f = *snapshot;
        use tokio::io::AsyncSeekExt;
        f.sync_all().await.map_err(sm_err)?;
        f.seek(std::io::SeekFrom::Start(0)).await.map_err(sm_err)?;
        let f = f.into_std().await;
        let store = self.inner.store.clone();
        tokio::task::spawn_blocking(move || store.import_snapshot(std::io::BufReader::new(f)))
            .await
            .map_err(|e| sm_err(Msg(format!("install task failed: {e}"))))?
            .map_err(sm_err)?;
        let (snap, meta_path) = self.current_paths();
        std::fs::rename(self.inner.snapshot_dir.join("receiving.snap"), &snap).map_err(sm_err)?;
        write_atomically(&meta_path, &codec::encode_snapshot_meta(meta)).map_err(sm_err)?;
        tracing::info!(last_log_id = ?meta.last_log_id, "installed a snapshot from the leader");
        let listener = self.inner.on_install.lock().expect("listener lock poisoned").clone();
        if let Some(l) = listener {
            l();
        }
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        // Under the lock: a snapshot being built renames its file and then writes its meta;
        // the meta and the file read here must be of the same snapshot.
        let _guard = self.inner.lock.lock().await;
        let (snap, meta_path) = self.current_paths();
        let meta = match std::fs::read(&meta_path) {
            Ok(b) => codec::decode_snapshot_meta(&b).map_err(sm_err)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(sm_err(e)),
        };
        let f = tokio::fs::File::open(&snap).await.map_err(sm_err)?;
        Ok(Some(Snapshot { meta, snapshot: Box::new(f) }))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let mut guard = self.inner.lock.lock().await;
        let (last_log_id, membership) = self.sm_state()?;
        let store = self.inner.store.clone();
        let tmp = self.inner.snapshot_dir.join("building.snap");
        let tmp2 = tmp.clone();
        // Durable first: the log may be purged up to this snapshot.
        tokio::task::spawn_blocking(move || -> Result<(), cairn_storage::StoreError> {
            store.flush()?;
            let f = std::fs::File::create(&tmp2)?;
            let mut w = std::io::BufWriter::new(f);
            store.export_snapshot(&mut w)?;
            let f = w.into_inner().map_err(|e| e.into_error())?;
            f.sync_all()?;
            Ok(())
        })
        .await
        .map_err(|e| sm_err(Msg(format!("snapshot task failed: {e}"))))?
        .map_err(sm_err)?;
        guard.last_durable = Instant::now();
        let snapshot_id = match &last_log_id {
            Some(l) => format!("{}-{}-{}", l.leader_id.term, l.leader_id.node_id, l.index),
            None => "empty".to_string(),
        };
        let meta = openraft::SnapshotMeta { last_log_id, last_membership: membership, snapshot_id };
        let (snap, meta_path) = self.current_paths();
        std::fs::rename(&tmp, &snap).map_err(sm_err)?;
        write_atomically(&meta_path, &codec::encode_snapshot_meta(&meta)).map_err(sm_err)?;
        let f = tokio::fs::File::open(&snap).await.map_err(sm_err)?;
        Ok(Snapshot { meta, snapshot: Box::new(f) })
    }
}
