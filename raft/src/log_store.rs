//! The raft log in its own redb file, with group commit.
//!
//! openraft calls [`RaftLogStorage::append`] and expects it to return at once, with the
//! entries readable, and to call back when they are durable. Appends, truncations, purges
//! and votes all go, in call order, to one writer thread. The thread takes everything
//! queued, writes it in one redb transaction and commits it with one fsync
//! (`Durability::Immediate`), then completes every waiter: concurrent client writes share
//! one fsync. Until their commit, appended entries live in `pending`, which readers merge
//! over the file.
//!
//! Lock order: `pending` before `state`; neither is held across an await or a disk write.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{ErrorVerb, OptionalSend, RaftLogReader};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::oneshot;

use crate::codec;
use crate::types::*;

const LOGS: TableDefinition<u64, &[u8]> = TableDefinition::new("logs");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const META_VOTE: &str = "vote";
const META_COMMITTED: &str = "committed";
const META_PURGED: &str = "last_purged";

/// At most this many operations wait for the writer; `append` blocks beyond it.
const WRITE_QUEUE_OPS: usize = 4096;
/// One group commit takes at most this many operations.
const GROUP_MAX_OPS: usize = 1024;

/// A latency histogram with etcd's disk buckets (1 ms doubling to 8.192 s, as
/// `etcd_disk_wal_fsync_duration_seconds`): lock-free, observed by the writer thread and read
/// by the metrics endpoint.
pub struct DurationHistogram {
    /// Observations at or below `BUCKET_BOUNDS_SECS[i]` and above the previous bound.
    buckets: [AtomicU64; DurationHistogram::BUCKETS],
    /// Observations above the last bound.
    overflow: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Default for DurationHistogram {
    fn default() -> Self {
        DurationHistogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            overflow: AtomicU64::new(0),
            sum_nanos: AtomicU64::new(0),
        }
    }
}

impl DurationHistogram {
    /// etcd's `prometheus.ExponentialBuckets(0.001, 2, 14)`.
    pub const BUCKETS: usize = 14;

    /// The upper bound of bucket `i`, in seconds.
    pub fn bound_secs(i: usize) -> f64 {
        0.001 * (1u64 << i) as f64
    }

    pub fn observe(&self, d: std::time::Duration) {
        let secs = d.as_secs_f64();
        match (0..Self::BUCKETS).find(|&i| secs <= Self::bound_secs(i)) {
            Some(i) => self.buckets[i].fetch_add(1, Ordering::Relaxed),
            None => self.overflow.fetch_add(1, Ordering::Relaxed),
        };
        self.sum_nanos.fetch_add(d.as_nanos().min(u64::MAX as u128) as u64, Ordering::Relaxed);
    }

    /// Per-bucket counts (not cumulative), the overflow count and the sum in seconds.
    pub fn snapshot(&self) -> ([u64; Self::BUCKETS], u64, f64) {
        let b = std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed));
        (b, self.overflow.load(Ordering::Relaxed), self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9)
    }
}

enum WriteOp {
    Append { entries: Vec<(u64, Vec<u8>, LogId)>, callback: LogFlushed<TypeConfig> },
    Truncate { from: u64, done: oneshot::Sender<Result<(), String>> },
    Purge { upto: LogId, done: oneshot::Sender<Result<(), String>> },
    Vote { vote: Vec<u8>, done: oneshot::Sender<Result<(), String>> },
    Committed { committed: Vec<u8> },
}

#[derive(Clone, Copy, Default)]
struct State {
    last_purged: Option<LogId>,
    last: Option<LogId>,
}

struct Inner {
    db: Arc<Database>,
    /// Group commits (one fsync each) made so far; etcd's WAL fsync count.
    fsyncs: Arc<AtomicU64>,
    /// How long each group commit (write + fsync) took.
    fsync_times: Arc<DurationHistogram>,
    /// Appended, not yet committed entries by index. Readers merge them over the file.
    pending: Mutex<BTreeMap<u64, Entry>>,
    state: Mutex<State>,
    tx: mpsc::SyncSender<WriteOp>,
}

/// The log store; cheap to clone (readers are clones).
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Inner>,
}

fn err(verb: ErrorVerb, e: impl std::error::Error + 'static) -> StorageError {
    sto_err(verb, e)
}

#[derive(Debug)]
struct Msg(String);
impl std::fmt::Display for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for Msg {}

impl LogStore {
    /// Opens the log file and starts its writer thread.
    pub fn open(path: &Path) -> Result<LogStore, StorageError> {
        if !path.exists() {
            create_file(path).map_err(|e| err(ErrorVerb::Write, e))?;
        }
        let db = Database::builder().open(path).map_err(|e| err(ErrorVerb::Read, e))?;
        let db = Arc::new(db);
        let state = {
            let r = db.begin_read().map_err(|e| err(ErrorVerb::Read, e))?;
            let meta = r.open_table(META).map_err(|e| err(ErrorVerb::Read, e))?;
            let last_purged = match meta.get(META_PURGED).map_err(|e| err(ErrorVerb::Read, e))? {
                Some(v) => codec::decode_opt_log_id(v.value()).map_err(|e| err(ErrorVerb::Read, e))?,
                None => None,
            };
            let logs = r.open_table(LOGS).map_err(|e| err(ErrorVerb::Read, e))?;
            let last = match logs.last().map_err(|e| err(ErrorVerb::Read, e))? {
                Some((_, v)) => Some(codec::decode_entry(v.value()).map_err(|e| err(ErrorVerb::Read, e))?.log_id),
                None => last_purged,
            };
            State { last_purged, last }
        };
        let (tx, rx) = mpsc::sync_channel(WRITE_QUEUE_OPS);
        let fsyncs = Arc::new(AtomicU64::new(0));
        let fsync_times = Arc::new(DurationHistogram::default());
        let inner = Arc::new(Inner {
            db: db.clone(),
            fsyncs: fsyncs.clone(),
            fsync_times: fsync_times.clone(),
            pending: Mutex::new(BTreeMap::new()),
            state: Mutex::new(state),
            tx,
        });
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || writer_loop(db, rx, weak, fsyncs, fsync_times))
            .map_err(|e| err(ErrorVerb::Write, e))?;
        Ok(LogStore { inner })
    }

    /// How many group commits (fsyncs) the log has made since it was opened.
    pub fn fsyncs(&self) -> u64 {
        self.inner.fsyncs.load(Ordering::Relaxed)
    }

    /// Durations of the group commits (etcd's `etcd_disk_wal_fsync_duration_seconds`).
    pub fn fsync_times(&self) -> &DurationHistogram {
        &self.inner.fsync_times
    }

    fn send(&self, op: WriteOp) -> Result<(), StorageError> {
        self.inner.tx.send(op).map_err(|_| err(ErrorVerb::Write, Msg("log writer stopped".into())))
    }

    async fn send_wait(&self, op: WriteOp, rx: oneshot::Receiver<Result<(), String>>) -> Result<(), StorageError> {
        self.send(op)?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(err(ErrorVerb::Write, Msg(e))),
            Err(_) => Err(err(ErrorVerb::Write, Msg("log writer stopped".into()))),
        }
    }

    fn read_meta(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        let r = self.inner.db.begin_read().map_err(|e| err(ErrorVerb::Read, e))?;
        let meta = r.open_table(META).map_err(|e| err(ErrorVerb::Read, e))?;
        Ok(meta.get(key).map_err(|e| err(ErrorVerb::Read, e))?.map(|v| v.value().to_vec()))
    }
}

/// Creates the log file under a temporary name and renames it into place, so that a crash
/// during a member's first start never leaves a half-written file redb refuses to open.
fn create_file(path: &Path) -> Result<(), redb::Error> {
    let tmp = path.with_extension("creating");
    if tmp.exists() {
        std::fs::remove_file(&tmp).map_err(redb::Error::Io)?;
    }
    {
        let db = Database::builder().create(&tmp)?;
        let w = db.begin_write()?;
        w.open_table(LOGS)?;
        w.open_table(META)?;
        w.commit()?;
    }
    std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(redb::Error::Io)?;
    std::fs::rename(&tmp, path).map_err(redb::Error::Io)?;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::File::open(dir).and_then(|f| f.sync_all()).map_err(redb::Error::Io)?;
    Ok(())
}

/// The writer thread: group commits until the store is dropped.
fn writer_loop(
    db: Arc<Database>,
    rx: mpsc::Receiver<WriteOp>,
    inner: std::sync::Weak<Inner>,
    fsyncs: Arc<AtomicU64>,
    fsync_times: Arc<DurationHistogram>,
) {
    // A committed-index hint alone does not make a group: it waits for the next one (a
    // separate fsync for it would double the fsyncs of a lone client's writes).
    let mut hint: Option<WriteOp> = None;
    while let Ok(first) = rx.recv() {
        let mut ops: Vec<WriteOp> = hint.take().into_iter().collect();
        ops.push(first);
        while ops.len() < GROUP_MAX_OPS {
            match rx.try_recv() {
                Ok(op) => ops.push(op),
                Err(_) => break,
            }
        }
        if ops.iter().all(|op| matches!(op, WriteOp::Committed { .. })) {
            hint = ops.pop();
            continue;
        }
        let started = std::time::Instant::now();
        let result = write_group(&db, &ops).map_err(|e| e.to_string());
        fsync_times.observe(started.elapsed());
        fsyncs.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = &result {
            tracing::error!(error = %e, "raft log write failed");
        }
        // Entries are durable now: drop them from `pending` unless a truncate replaced them.
        if result.is_ok() {
            if let Some(inner) = inner.upgrade() {
                let mut pending = inner.pending.lock().expect("pending lock poisoned");
                for op in &ops {
                    if let WriteOp::Append { entries, .. } = op {
                        for (idx, _, id) in entries {
                            if pending.get(idx).is_some_and(|e| e.log_id == *id) {
                                pending.remove(idx);
                            }
                        }
                    }
                }
            }
        }
        for op in ops {
            match op {
                WriteOp::Append { callback, .. } => callback.log_io_completed(
                    result.clone().map_err(|e| std::io::Error::other(format!("raft log append failed: {e}"))),
                ),
                WriteOp::Truncate { done, .. } | WriteOp::Purge { done, .. } | WriteOp::Vote { done, .. } => {
                    let _ = done.send(result.clone());
                }
                WriteOp::Committed { .. } => {}
            }
        }
    }
}

fn write_group(db: &Database, ops: &[WriteOp]) -> Result<(), redb::Error> {
    let mut w = db.begin_write()?;
    w.set_durability(Durability::Immediate)?;
    {
        let mut logs = w.open_table(LOGS)?;
        let mut meta = w.open_table(META)?;
        for op in ops {
            match op {
                WriteOp::Append { entries, .. } => {
                    for (idx, bytes, _) in entries {
                        logs.insert(*idx, bytes.as_slice())?;
                    }
                }
                WriteOp::Truncate { from, .. } => {
                    let doomed: Vec<u64> =
                        logs.range(*from..)?.map(|r| r.map(|(k, _)| k.value())).collect::<Result<_, _>>()?;
                    for i in doomed {
                        logs.remove(i)?;
                    }
                }
                WriteOp::Purge { upto, .. } => {
                    let doomed: Vec<u64> =
                        logs.range(..=upto.index)?.map(|r| r.map(|(k, _)| k.value())).collect::<Result<_, _>>()?;
                    for i in doomed {
                        logs.remove(i)?;
                    }
                    meta.insert(META_PURGED, codec::encode_opt_log_id(&Some(*upto)).as_slice())?;
                }
                WriteOp::Vote { vote, .. } => {
                    meta.insert(META_VOTE, vote.as_slice())?;
                }
                WriteOp::Committed { committed } => {
                    meta.insert(META_COMMITTED, committed.as_slice())?;
                }
            }
        }
    }
    w.commit()?;
    Ok(())
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        // `pending` first: an entry leaves it only after it is in the file.
        let mut out: BTreeMap<u64, Entry> = {
            let pending = self.inner.pending.lock().expect("pending lock poisoned");
            pending.range(range.clone()).map(|(k, v)| (*k, v.clone())).collect()
        };
        let r = self.inner.db.begin_read().map_err(|e| err(ErrorVerb::Read, e))?;
        let logs = r.open_table(LOGS).map_err(|e| err(ErrorVerb::Read, e))?;
        let lo = match range.start_bound() {
            Bound::Included(x) => Bound::Included(*x),
            Bound::Excluded(x) => Bound::Excluded(*x),
            Bound::Unbounded => Bound::Unbounded,
        };
        let hi = match range.end_bound() {
            Bound::Included(x) => Bound::Included(*x),
            Bound::Excluded(x) => Bound::Excluded(*x),
            Bound::Unbounded => Bound::Unbounded,
        };
        for row in logs.range::<u64>((lo, hi)).map_err(|e| err(ErrorVerb::Read, e))? {
            let (k, v) = row.map_err(|e| err(ErrorVerb::Read, e))?;
            if let std::collections::btree_map::Entry::Vacant(slot) = out.entry(k.value()) {
                slot.insert(codec::decode_entry(v.value()).map_err(|e| err(ErrorVerb::Read, e))?);
            }
        }
        Ok(out.into_values().collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let s = *self.inner.state.lock().expect("state lock poisoned");
        Ok(LogState { last_purged_log_id: s.last_purged, last_log_id: s.last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let (done, rx) = oneshot::channel();
        self.send_wait(WriteOp::Vote { vote: codec::encode_vote(vote), done }, rx).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        match self.read_meta(META_VOTE)? {
            None => Ok(None),
            Some(b) => Ok(Some(codec::decode_vote(&b).map_err(|e| err(ErrorVerb::Read, e))?)),
        }
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // A hint for a faster restart: written with the next group, never waited for.
        self.send(WriteOp::Committed { committed: codec::encode_opt_log_id(&committed) })
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        match self.read_meta(META_COMMITTED)? {
            None => Ok(None),
            Some(b) => Ok(codec::decode_opt_log_id(&b).map_err(|e| err(ErrorVerb::Read, e))?),
        }
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut encoded = Vec::new();
        {
            let mut pending = self.inner.pending.lock().expect("pending lock poisoned");
            let mut state = self.inner.state.lock().expect("state lock poisoned");
            for e in entries {
                encoded.push((e.log_id.index, codec::encode_entry(&e), e.log_id));
                state.last = Some(e.log_id);
                pending.insert(e.log_id.index, e);
            }
        }
        if encoded.is_empty() {
            callback.log_io_completed(Ok(()));
            return Ok(());
        }
        self.send(WriteOp::Append { entries: encoded, callback })
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        {
            let mut pending = self.inner.pending.lock().expect("pending lock poisoned");
            let _ = pending.split_off(&log_id.index);
        }
        let (done, rx) = oneshot::channel();
        self.send_wait(WriteOp::Truncate { from: log_id.index, done }, rx).await?;
        // The new last entry: the one before the truncated index, or the purged id.
        let prev = if log_id.index == 0 {
            None
        } else {
            self.try_get_log_entries(log_id.index - 1..log_id.index).await?.pop().map(|e| e.log_id)
        };
        let mut state = self.inner.state.lock().expect("state lock poisoned");
        state.last = prev.or(state.last_purged);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let (done, rx) = oneshot::channel();
        self.send_wait(WriteOp::Purge { upto: log_id, done }, rx).await?;
        let mut state = self.inner.state.lock().expect("state lock poisoned");
        state.last_purged = Some(log_id);
        if state.last.is_none_or(|l| l.index < log_id.index) {
            state.last = Some(log_id);
        }
        Ok(())
    }
}
