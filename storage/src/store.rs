//! [`Store`]: the MVCC state machine over one redb file.
//!
//! Writes happen only in [`Store::apply_batch`], one redb write transaction per batch of
//! raft entries, with the applied index in the same transaction. Reads take a
//! [`ReadView`], a redb read snapshot, so a multi-key read is consistent without locks.
//! Physical compaction runs in bounded batches ([`Store::compact_step`]) between applies.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use redb::{Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, Table, WriteTransaction};

use crate::error::{RequestError, StoreError};
use crate::read::{self, IndexKey, KeySpan, Live};
use crate::record::Record;
use crate::schema::*;
use crate::types::*;

/// Tunables of the store, with their units.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Revision-log rows removed per physical compaction transaction (etcd's
    /// `--experimental-compaction-batch-limit` is 1000 revisions).
    pub compaction_batch_rows: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions { compaction_batch_rows: 1000 }
    }
}

/// The MVCC store. Shared by reference between the apply path and readers.
pub struct Store {
    /// The open file. Replaced (under the writer lock) only by [`Store::defragment`]; every
    /// user clones the `Arc`, so a replaced file stays open until its last reader is done.
    db: RwLock<Arc<Database>>,
    /// Where the file lives (None for a store on a custom backend, which cannot defragment).
    path: Option<PathBuf>,
    opts: StoreOptions,
    /// While a defragmentation runs: where apply records the batches it applies, for the
    /// new file to catch up (see `maintenance.rs`).
    pub(crate) tee: Mutex<Option<crate::maintenance::Tee>>,
    /// Serialises defragmentation with physical compaction (both rewrite the file's rows).
    pub(crate) maintenance: Mutex<()>,
    /// The raised alarms, published after each commit that changes them.
    alarms: RwLock<Vec<AlarmMember>>,
    /// Held by the writers that move the revisions (apply, snapshot import) from before their
    /// write transaction until they have published its revisions, so that the published
    /// values follow commit order. Apply reads the revisions it builds on from the file, in
    /// its transaction, never from these copies.
    writer: Mutex<()>,
    /// Latest revision, published after each commit (readers use their snapshot's own).
    current_revision: AtomicI64,
    /// Compacted revision, published after each commit.
    compact_revision: AtomicI64,
}

/// One raft entry handed to [`Store::apply_batch`]: blank and membership entries carry no
/// command but still advance the applied index.
/// Several commands of one raft entry (a proposal batch) are passed as consecutive
/// `ApplyEntry`s with the same index, in order.
pub struct ApplyEntry<'a> {
    pub index: u64,
    pub command: Option<&'a Command>,
}

/// What a batch did: one outcome per entry (None for entries without a command) and the
/// events of every new revision, in revision order.
#[derive(Debug, Default)]
pub struct BatchOutcome {
    pub applied: Vec<Option<Applied>>,
    pub events: Vec<(Revision, Vec<Event>)>,
}

pub(crate) struct Tables<'t> {
    index: Table<'t, IndexKey<'static>, u8>,
    revs: Table<'t, (u64, u64), &'static [u8]>,
    pub(crate) leases: Table<'t, i64, &'static [u8]>,
    pub(crate) lease_keys: Table<'t, (i64, &'static [u8]), ()>,
    wtx: &'t WriteTransaction,
    /// Opened on the first auth command of the batch (most batches have none).
    auth: Option<crate::auth::AuthTables<'t>>,
}

impl<'t> Tables<'t> {
    fn auth(&mut self) -> Result<&mut crate::auth::AuthTables<'t>, StoreError> {
        if self.auth.is_none() {
            self.auth = Some(crate::auth::AuthTables::open(self.wtx)?);
        }
        Ok(self.auth.as_mut().expect("opened above"))
    }
}

/// The state of one apply in progress: revision counters and the events made so far.
pub(crate) struct ApplyState {
    current: Revision,
    compacted: Revision,
    /// The raised alarms; `alarms_changed` when a command of this batch changed them.
    alarms: Vec<AlarmMember>,
    alarms_changed: bool,
    /// Sub-revision for the next change in the revision being written.
    next_sub: u64,
    events: Vec<Event>,
    /// Raft index of the entry being applied (simple tokens are named after it).
    index: u64,
}

impl ApplyState {
    pub(crate) fn index(&self) -> u64 {
        self.index
    }
    /// The revision changes of the running command are written at.
    fn write_rev(&self) -> Revision {
        self.current + 1
    }
    /// The revision reads inside the running command see: earlier changes of it included.
    fn read_rev(&self) -> Revision {
        if self.next_sub > 0 {
            self.current + 1
        } else {
            self.current
        }
    }
}

/// Checks the format version of the file and writes the initial meta values into a new one;
/// returns the current and compacted revisions.
fn init_file(db: &Database) -> Result<(Revision, Revision), StoreError> {
    let wtx = db.begin_write()?;
    let (current, compacted) = {
        let mut meta = wtx.open_table(META)?;
        let version = match meta.get(META_FORMAT_VERSION)? {
            Some(v) => {
                let b: [u8; 4] = v
                    .value()
                    .try_into()
                    .map_err(|_| StoreError::Corrupt { what: "format version is not 4 bytes".into() })?;
                Some(u32::from_le_bytes(b))
            }
            None => None,
        };
        match version {
            Some(v) if v != FORMAT_VERSION => {
                return Err(StoreError::FormatVersion { found: v, supported: FORMAT_VERSION })
            }
            Some(_) => {}
            None => {
                meta.insert(META_FORMAT_VERSION, FORMAT_VERSION.to_le_bytes().as_slice())?;
                // A fresh etcd store is at revision 1: the first change makes revision 2.
                meta.insert(META_CURRENT_REVISION, 1i64.to_le_bytes().as_slice())?;
                // etcd starts its compacted revision at -1: Compact(0) on a fresh store succeeds.
                meta.insert(META_COMPACT_REVISION, (-1i64).to_le_bytes().as_slice())?;
            }
        }
        let current = get_i64(&meta, META_CURRENT_REVISION)?
            .ok_or_else(|| StoreError::Corrupt { what: "current revision missing".into() })?;
        let compacted = get_i64(&meta, META_COMPACT_REVISION)?.unwrap_or(-1);
        drop(meta);
        wtx.open_table(KEY_INDEX)?;
        wtx.open_table(REVS)?;
        wtx.open_table(LEASES)?;
        wtx.open_table(LEASE_KEYS)?;
        wtx.open_table(AUTH_USERS)?;
        wtx.open_table(AUTH_ROLES)?;
        wtx.open_table(AUTH_META)?;
        (current, compacted)
    };
    wtx.commit()?;
    Ok((current, compacted))
}

/// Creates and initialises a new store file under a temporary name, then renames it into
/// place: a crash during a node's very first start must not leave a half-written file at
/// `path`, which redb would refuse to open ("not a redb database") on every later start.
fn create_file(path: &Path) -> Result<(), StoreError> {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".creating");
    let tmp = path.with_file_name(name);
    // A leftover of an interrupted creation holds nothing.
    if tmp.exists() {
        std::fs::remove_file(&tmp)?;
    }
    {
        let db = Database::builder().create(&tmp)?;
        init_file(&db)?;
    }
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, path)?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

pub(crate) fn meta_i64(
    meta: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<Option<i64>, StoreError> {
    get_i64(meta, key)
}

fn get_i64(meta: &impl ReadableTable<&'static str, &'static [u8]>, key: &str) -> Result<Option<i64>, StoreError> {
    match meta.get(key)? {
        None => Ok(None),
        Some(v) => {
            let b: [u8; 8] =
                v.value().try_into().map_err(|_| StoreError::Corrupt { what: format!("meta {key} is not 8 bytes") })?;
            Ok(Some(i64::from_le_bytes(b)))
        }
    }
}

impl Store {
    /// Opens (or creates) the store file at `path`.
    pub fn open(path: &Path, opts: StoreOptions) -> Result<Store, StoreError> {
        if !path.exists() {
            create_file(path)?;
        }
        crate::maintenance::remove_defrag_leftovers(path)?;
        Store::from_database(Database::builder().create(path)?, opts, Some(path.to_path_buf()))
    }

    /// Opens (or creates) a store on any redb storage backend. For tests that inject faults
    /// below redb (crash consistency); production code uses [`Store::open`].
    #[doc(hidden)]
    pub fn open_with_backend(backend: impl redb::StorageBackend, opts: StoreOptions) -> Result<Store, StoreError> {
        Store::from_database(Database::builder().create_with_backend(backend)?, opts, None)
    }

    pub(crate) fn from_database(db: Database, opts: StoreOptions, path: Option<PathBuf>) -> Result<Store, StoreError> {
        let (current, compacted) = init_file(&db)?;
        let alarms = {
            let rtx = db.begin_read()?;
            crate::maintenance::read_alarms(&rtx.open_table(META)?)?
        };
        Ok(Store {
            db: RwLock::new(Arc::new(db)),
            path,
            opts,
            tee: Mutex::new(None),
            maintenance: Mutex::new(()),
            alarms: RwLock::new(alarms),
            writer: Mutex::new(()),
            current_revision: AtomicI64::new(current),
            compact_revision: AtomicI64::new(compacted),
        })
    }

    /// The latest committed revision.
    pub fn current_revision(&self) -> Revision {
        self.current_revision.load(Ordering::Acquire)
    }

    /// The compacted revision.
    pub fn compact_revision(&self) -> Revision {
        self.compact_revision.load(Ordering::Acquire)
    }

    /// The applied raft index and the raft layer's opaque state, as last committed.
    pub fn applied(&self) -> Result<(u64, Vec<u8>), StoreError> {
        let rtx = self.database().begin_read()?;
        let meta = rtx.open_table(META)?;
        let index = get_i64(&meta, META_APPLIED_INDEX)?.unwrap_or(0) as u64;
        let state = meta.get(META_RAFT_STATE)?.map(|v| v.value().to_vec()).unwrap_or_default();
        Ok((index, state))
    }

    /// Size of the database file in bytes (etcd's dbSize).
    pub fn db_size(path: &Path) -> u64 {
        std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
    }

    /// Applies a batch of raft entries in one transaction. `raft_state` is stored with the
    /// applied index. With `durable` the commit is fsynced; otherwise it becomes durable with
    /// the next durable commit (the raft log covers the gap after a crash).
    pub fn apply_batch(
        &self,
        entries: &[ApplyEntry<'_>],
        raft_state: &[u8],
        durable: bool,
    ) -> Result<BatchOutcome, StoreError> {
        let _writer = self.writer();
        let db = self.database();
        let mut wtx = db.begin_write()?;
        wtx.set_durability(if durable { Durability::Immediate } else { Durability::None })?;
        let mut out = BatchOutcome { applied: Vec::with_capacity(entries.len()), events: Vec::new() };
        let (current, compacted, alarms_after) = {
            let mut meta = wtx.open_table(META)?;
            let current = get_i64(&meta, META_CURRENT_REVISION)?
                .ok_or_else(|| StoreError::Corrupt { what: "current revision missing".into() })?;
            let compacted = get_i64(&meta, META_COMPACT_REVISION)?.unwrap_or(-1);
            assert_eq!(current, self.current_revision(), "published current revision matches the file");
            assert_eq!(compacted, self.compact_revision(), "published compact revision matches the file");
            let mut t = Tables {
                index: wtx.open_table(KEY_INDEX)?,
                revs: wtx.open_table(REVS)?,
                leases: wtx.open_table(LEASES)?,
                lease_keys: wtx.open_table(LEASE_KEYS)?,
                wtx: &wtx,
                auth: None,
            };
            let alarms = crate::maintenance::read_alarms(&meta)?;
            let mut st = ApplyState {
                current,
                compacted,
                alarms,
                alarms_changed: false,
                next_sub: 0,
                events: Vec::new(),
                index: 0,
            };
            let mut last_index = None;
            for e in entries {
                if let Some(prev) = last_index {
                    // Commands batched into one raft entry share its index.
                    assert!(e.index >= prev, "applied index must not decrease within a batch: {prev} then {}", e.index);
                }
                last_index = Some(e.index);
                let Some(cmd) = e.command else {
                    out.applied.push(None);
                    continue;
                };
                let before = st.current;
                st.index = e.index;
                let result = apply_command(&mut t, &mut st, cmd)?;
                if st.next_sub > 0 {
                    st.current += 1;
                    st.next_sub = 0;
                    out.events.push((st.current, std::mem::take(&mut st.events)));
                }
                assert!(st.current == before || st.current == before + 1, "a command makes at most one revision");
                out.applied.push(Some(Applied { revision: st.current, result }));
            }
            assert!(st.compacted <= st.current, "compact revision {} above current {}", st.compacted, st.current);
            meta.insert(META_CURRENT_REVISION, st.current.to_le_bytes().as_slice())?;
            meta.insert(META_COMPACT_REVISION, st.compacted.to_le_bytes().as_slice())?;
            if let Some(i) = last_index {
                let prev = get_i64(&meta, META_APPLIED_INDEX)?.unwrap_or(0) as u64;
                assert!(i > prev || i == 0, "applied index must advance: stored {prev}, batch ends at {i}");
                meta.insert(META_APPLIED_INDEX, (i as i64).to_le_bytes().as_slice())?;
            }
            meta.insert(META_RAFT_STATE, raft_state)?;
            if st.alarms_changed {
                crate::maintenance::write_alarms(&mut meta, &st.alarms)?;
            }
            (st.current, st.compacted, st.alarms_changed.then_some(st.alarms))
        };
        let (current, compacted, alarms) = (current, compacted, alarms_after);
        wtx.commit()?;
        self.current_revision.store(current, Ordering::Release);
        self.compact_revision.store(compacted, Ordering::Release);
        if let Some(a) = alarms {
            self.set_alarms(a);
        }
        self.tee_batch(entries, raft_state);
        Ok(out)
    }

    /// Makes every earlier commit durable (one fsync).
    pub fn flush(&self) -> Result<(), StoreError> {
        let mut wtx = self.database().begin_write()?;
        wtx.set_durability(Durability::Immediate)?;
        wtx.commit()?;
        Ok(())
    }

    /// A consistent read snapshot.
    pub fn read(&self) -> Result<ReadView, StoreError> {
        let db = self.database();
        let rtx = db.begin_read()?;
        let (current, compacted) = {
            let meta = rtx.open_table(META)?;
            (get_i64(&meta, META_CURRENT_REVISION)?.unwrap_or(1), get_i64(&meta, META_COMPACT_REVISION)?.unwrap_or(-1))
        };
        Ok(ReadView { index: rtx.open_table(KEY_INDEX)?, revs: rtx.open_table(REVS)?, current, compacted, _db: db })
    }

    /// Runs one bounded batch of physical compaction. Returns true when the compaction up to
    /// the compacted revision is complete (nothing left to do).
    pub fn compact_step(&self) -> Result<bool, StoreError> {
        let _maintenance = self.maintenance.lock().unwrap_or_else(|p| p.into_inner());
        let mut wtx = self.database().begin_write()?;
        wtx.set_durability(Durability::None)?;
        let done = compact_batch(&wtx, self.opts.compaction_batch_rows)?;
        wtx.commit()?;
        Ok(done)
    }

    /// Row counts of the key index and the revision log, for tests that check what physical
    /// compaction removed. Not part of the API.
    #[doc(hidden)]
    pub fn debug_row_counts(&self) -> Result<RowCounts, StoreError> {
        let rtx = self.database().begin_read()?;
        Ok(RowCounts { key_index: rtx.open_table(KEY_INDEX)?.len()?, revs: rtx.open_table(REVS)?.len()? })
    }

    /// Every key-index row as `(key, main, sub, tombstone)`, in key order, for tests that
    /// check exactly which rows physical compaction kept. Not part of the API.
    #[doc(hidden)]
    pub fn debug_index_rows(&self) -> Result<Vec<IndexRow>, StoreError> {
        let rtx = self.database().begin_read()?;
        let mut rows = Vec::new();
        for row in rtx.open_table(KEY_INDEX)?.iter()? {
            let (k, flags) = row?;
            let (key, main, sub) = k.value();
            rows.push((key.to_vec(), main, sub, flags.value() & FLAG_TOMBSTONE != 0));
        }
        Ok(rows)
    }

    /// The writer lock (see the `writer` field).
    pub(crate) fn writer(&self) -> MutexGuard<'_, ()> {
        self.writer.lock().expect("store writer lock poisoned: a writer panicked mid-apply")
    }

    /// The open file (see the `db` field).
    pub(crate) fn database(&self) -> Arc<Database> {
        self.db.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
    /// Installs a defragmented file; the caller holds the writer lock. Returns the old one,
    /// for the caller to close after releasing the lock (closing writes and syncs the file).
    pub(crate) fn replace_database(&self, db: Database) -> Arc<Database> {
        std::mem::replace(&mut *self.db.write().unwrap_or_else(|p| p.into_inner()), Arc::new(db))
    }
    pub(crate) fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }
    pub(crate) fn options(&self) -> &StoreOptions {
        &self.opts
    }
    /// The raised alarms.
    pub fn alarms(&self) -> Vec<AlarmMember> {
        self.alarms.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
    pub(crate) fn set_alarms(&self, alarms: Vec<AlarmMember>) {
        *self.alarms.write().unwrap_or_else(|p| p.into_inner()) = alarms;
    }
    pub(crate) fn current_revision_atomic(&self) -> &AtomicI64 {
        &self.current_revision
    }
    pub(crate) fn compact_revision_atomic(&self) -> &AtomicI64 {
        &self.compact_revision
    }
}

/// One key-index row as `(key, main, sub, tombstone)` ([`Store::debug_index_rows`]).
#[doc(hidden)]
pub type IndexRow = (Vec<u8>, u64, u64, bool);

/// Rows in the two MVCC tables ([`Store::debug_row_counts`]).
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowCounts {
    pub key_index: u64,
    pub revs: u64,
}

/// A read snapshot: every read through it sees one revision of the store.
pub struct ReadView {
    index: redb::ReadOnlyTable<IndexKey<'static>, u8>,
    revs: redb::ReadOnlyTable<(u64, u64), &'static [u8]>,
    current: Revision,
    compacted: Revision,
    /// Keeps the file open while the view lives, even if a defragmentation replaced it.
    _db: Arc<Database>,
}

impl ReadView {
    pub fn current_revision(&self) -> Revision {
        self.current
    }
    pub fn compact_revision(&self) -> Revision {
        self.compacted
    }
    /// etcd's Range. The outer error is a storage failure, the inner one the request's.
    pub fn range(&self, req: &RangeRequest) -> Result<Result<RangeResponse, RequestError>, StoreError> {
        read::range(&self.index, &self.revs, req, self.current, self.compacted)
    }

    /// etcd's read-only Txn ([`TxnRequest::is_read_only`]) on this view: the compares, then
    /// the ranges of the branch taken (nested txns likewise), all at the view's revision; the
    /// first failing range's error (a compacted or future revision) is the answer. Nothing is
    /// written and no revision is used. A txn that writes is refused as a storage error.
    pub fn txn_read_only(&self, x: &TxnRequest) -> Result<Result<TxnResponse, RequestError>, StoreError> {
        let mut succeeded = true;
        for c in &x.compare {
            if !compare_at(&self.index, &self.revs, self.current, c)? {
                succeeded = false;
                break;
            }
        }
        let ops = if succeeded { &x.success } else { &x.failure };
        // Every range's revision first, in order (etcd's `checkRequests`), then the reads.
        for op in ops {
            if let RequestOp::Range(r) = op {
                if let Err(e) = check_txn_range_revision(r.revision, self.current, self.compacted) {
                    return Ok(Err(e));
                }
            }
        }
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            let r = match op {
                RequestOp::Range(r) => self.range(r)?.map(ResponseOp::Range),
                RequestOp::Txn(inner) => self.txn_read_only(inner)?.map(ResponseOp::Txn),
                RequestOp::Put(_) | RequestOp::DeleteRange(_) => {
                    return Err(StoreError::Io(std::io::Error::other("txn_read_only: the txn writes")));
                }
            };
            match r {
                Ok(resp) => responses.push(resp),
                Err(e) => return Ok(Err(e)),
            }
        }
        Ok(Ok(TxnResponse { succeeded, responses }))
    }
}

/// Applies one command; request errors leave no trace (everything is checked before the
/// first write).
fn apply_command(
    t: &mut Tables<'_>,
    st: &mut ApplyState,
    cmd: &Command,
) -> Result<Result<CommandResponse, RequestError>, StoreError> {
    // etcd's capped applier: with NOSPACE raised, whatever adds data fails first.
    // etcd's corrupt applier: with CORRUPT raised, every write fails ("corrupt cluster").
    if st.alarms.iter().any(|a| a.alarm == AlarmType::Corrupt) && cmd.is_corrupt_refused() {
        return Ok(Err(RequestError::Corrupt));
    }
    if cmd.quota_cost() > 0 && st.alarms.iter().any(|a| a.alarm == AlarmType::NoSpace) {
        return Ok(Err(RequestError::NoSpace));
    }
    match cmd {
        Command::Put(p) => {
            // etcd's applierV3backend.Put looks the lease up before ignore_* needs the key;
            // inside a txn (checkRequestPut) the order is the other way round.
            if let Err(e) = check_put_lease(t, p)? {
                return Ok(Err(e));
            }
            if let Err(e) = check_put_key(t, st, p)? {
                return Ok(Err(e));
            }
            Ok(Ok(CommandResponse::Put(put(t, st, p)?)))
        }
        Command::DeleteRange(d) => Ok(Ok(CommandResponse::DeleteRange(delete_range(t, st, d)?))),
        Command::Txn(x) => {
            let path = match txn_path(t, st, x)? {
                Ok(p) => p,
                Err(e) => return Ok(Err(e)),
            };
            Ok(Ok(CommandResponse::Txn(run_txn(t, st, x, &path)?)))
        }
        Command::Compact(c) => {
            if c.revision <= st.compacted {
                return Ok(Err(RequestError::Compacted { compact_revision: st.compacted }));
            }
            if c.revision > st.current {
                return Ok(Err(RequestError::FutureRevision { current_revision: st.current }));
            }
            st.compacted = c.revision;
            Ok(Ok(CommandResponse::Compact))
        }
        Command::LeaseGrant { id, ttl_secs } => crate::lease::grant(t, *id, *ttl_secs),
        Command::LeaseRevoke { id } => crate::lease::revoke(t, st, *id),
        Command::Alarm { action, alarm } => {
            let changed = match action {
                AlarmAction::Activate => {
                    if !st.alarms.contains(alarm) {
                        st.alarms.push(*alarm);
                        st.alarms.sort();
                        st.alarms_changed = true;
                    }
                    vec![*alarm]
                }
                AlarmAction::Deactivate => match st.alarms.iter().position(|a| a == alarm) {
                    Some(i) => {
                        st.alarms.remove(i);
                        st.alarms_changed = true;
                        vec![*alarm]
                    }
                    None => Vec::new(),
                },
            };
            Ok(Ok(CommandResponse::Alarm(changed)))
        }
        Command::Auth(a) => crate::auth::apply(t.auth()?, st, a),
        Command::AuthChecked { auth_revision, command } => {
            // etcd's check at apply: permissions were checked at `auth_revision` (0: while
            // auth was disabled); an auth change since then may have taken them away. With
            // auth disabled now, nothing is checked.
            let auth = t.auth()?;
            if auth.enabled()? {
                if *auth_revision == 0 {
                    // Checked while disabled, applied after AuthEnable: as etcd's applier
                    // with an empty user name (Compact and LeaseGrant need no permission).
                    if !matches!(**command, Command::Compact(_) | Command::LeaseGrant { .. }) {
                        return Ok(Err(RequestError::UserEmpty));
                    }
                } else if auth.revision()? > *auth_revision {
                    return Ok(Err(RequestError::AuthOldRevision));
                }
            }
            apply_command(t, st, command)
        }
    }
}

/// Apply-time check of a put: the key must exist for ignore_value/ignore_lease.
fn check_put_key(t: &Tables<'_>, st: &ApplyState, p: &PutRequest) -> Result<Result<(), RequestError>, StoreError> {
    if (p.ignore_value || p.ignore_lease) && read::live_at(&t.index, &p.key, st.read_rev() as u64)?.is_none() {
        return Ok(Err(RequestError::KeyNotFound));
    }
    Ok(Ok(()))
}

/// Apply-time check of a put: its lease must exist.
fn check_put_lease(t: &Tables<'_>, p: &PutRequest) -> Result<Result<(), RequestError>, StoreError> {
    if p.lease != 0 && !p.ignore_lease && t.leases.get(p.lease)?.is_none() {
        return Ok(Err(RequestError::LeaseNotFound { lease: p.lease }));
    }
    Ok(Ok(()))
}

fn put(t: &mut Tables<'_>, st: &mut ApplyState, p: &PutRequest) -> Result<PutResponse, StoreError> {
    let rev = st.write_rev();
    let prev = match read::live_at(&t.index, &p.key, st.read_rev() as u64)? {
        Some(l) => Some(read::load_kv(&t.revs, &l)?),
        None => None,
    };
    let sub = st.next_sub;
    st.next_sub += 1;
    let lease = if p.ignore_lease { prev.as_ref().map_or(0, |kv| kv.lease) } else { p.lease };
    let value =
        if p.ignore_value { prev.as_ref().map(|kv| kv.value.clone()).unwrap_or_default() } else { p.value.clone() };
    let rec = Record {
        tombstone: false,
        key: p.key.clone(),
        create_revision: prev.as_ref().map_or(rev, |kv| kv.create_revision),
        version: prev.as_ref().map_or(1, |kv| kv.version + 1),
        lease,
        value,
    };
    t.index.insert((p.key.as_slice(), rev as u64, sub), 0u8)?;
    t.revs.insert((rev as u64, sub), rec.encode().as_slice())?;
    let old_lease = prev.as_ref().map_or(0, |kv| kv.lease);
    if old_lease != lease {
        if old_lease != 0 {
            t.lease_keys.remove((old_lease, p.key.as_slice()))?;
        }
        if lease != 0 {
            t.lease_keys.insert((lease, p.key.as_slice()), ())?;
        }
    }
    st.events.push(Event { kind: EventKind::Put, kv: rec.into_kv(rev) });
    Ok(PutResponse { prev_kv: if p.prev_kv { prev } else { None } })
}

pub(crate) fn delete_range(
    t: &mut Tables<'_>,
    st: &mut ApplyState,
    d: &DeleteRangeRequest,
) -> Result<DeleteRangeResponse, StoreError> {
    let span = KeySpan::new(&d.key, &d.range_end);
    let mut live: Vec<Live> = Vec::new();
    read::scan_live(&t.index, &span, st.read_rev() as u64, |l| {
        live.push(l);
        true
    })?;
    let mut resp = DeleteRangeResponse { deleted: live.len() as i64, prev_kvs: Vec::new() };
    let rev = st.write_rev();
    for l in live {
        let kv = read::load_kv(&t.revs, &l)?;
        let sub = st.next_sub;
        st.next_sub += 1;
        let rec =
            Record { tombstone: true, key: l.key.clone(), create_revision: 0, version: 0, lease: 0, value: Vec::new() };
        t.index.insert((l.key.as_slice(), rev as u64, sub), FLAG_TOMBSTONE)?;
        t.revs.insert((rev as u64, sub), rec.encode().as_slice())?;
        if kv.lease != 0 {
            t.lease_keys.remove((kv.lease, l.key.as_slice()))?;
        }
        st.events.push(Event {
            kind: EventKind::Delete,
            kv: KeyValue { key: l.key, mod_revision: rev, ..Default::default() },
        });
        if d.prev_kv {
            resp.prev_kvs.push(kv);
        }
    }
    Ok(resp)
}

/// The branch taken at every level of a txn, decided before any write as etcd does: the
/// outcome of the top compare, then the paths of the nested txns of that branch in order.
#[derive(Debug)]
struct TxnPath {
    succeeded: bool,
    nested: Vec<TxnPath>,
}

/// Decides the path of a txn and makes etcd's checks along it, before any write: first every
/// put on the path (key for ignore_*, then lease), then every range's revision (etcd's
/// `checkRequests` with `checkRequestPut`, then with `checkRequestRange`).
fn txn_path(t: &Tables<'_>, st: &ApplyState, x: &TxnRequest) -> Result<Result<TxnPath, RequestError>, StoreError> {
    let path = decide_path(t, st, x)?;
    if let Err(e) = check_path(t, st, x, &path, CheckPass::Puts)? {
        return Ok(Err(e));
    }
    if let Err(e) = check_path(t, st, x, &path, CheckPass::Ranges)? {
        return Ok(Err(e));
    }
    Ok(Ok(path))
}

/// Evaluates the compares of a txn and of the nested txns on its path, all on the state
/// before the txn (etcd's `compareToPath`).
fn decide_path(t: &Tables<'_>, st: &ApplyState, x: &TxnRequest) -> Result<TxnPath, StoreError> {
    let mut succeeded = true;
    for c in &x.compare {
        if !compare(t, st, c)? {
            succeeded = false;
            break;
        }
    }
    let ops = if succeeded { &x.success } else { &x.failure };
    let mut nested = Vec::new();
    for op in ops {
        if let RequestOp::Txn(inner) = op {
            nested.push(decide_path(t, st, inner)?);
        }
    }
    Ok(TxnPath { succeeded, nested })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum CheckPass {
    Puts,
    Ranges,
}

fn check_path(
    t: &Tables<'_>,
    st: &ApplyState,
    x: &TxnRequest,
    path: &TxnPath,
    pass: CheckPass,
) -> Result<Result<(), RequestError>, StoreError> {
    let ops = if path.succeeded { &x.success } else { &x.failure };
    let mut nested = path.nested.iter();
    for op in ops {
        let r = match op {
            RequestOp::Txn(inner) => {
                let p = nested.next().expect("decide_path made one path per nested txn of the branch");
                check_path(t, st, inner, p, pass)?
            }
            RequestOp::Put(p) if pass == CheckPass::Puts => match check_put_key(t, st, p)? {
                Ok(()) => check_put_lease(t, p)?,
                Err(e) => Err(e),
            },
            RequestOp::Range(r) if pass == CheckPass::Ranges => {
                check_txn_range_revision(r.revision, st.current, st.compacted)
            }
            _ => Ok(()),
        };
        if r.is_err() {
            return Ok(r);
        }
    }
    Ok(Ok(()))
}

fn compare(t: &Tables<'_>, st: &ApplyState, c: &Compare) -> Result<bool, StoreError> {
    compare_at(&t.index, &t.revs, st.read_rev(), c)
}

/// One compare against the keys of its range at revision `rev`.
fn compare_at<I, R>(index: &I, revs: &R, rev: Revision, c: &Compare) -> Result<bool, StoreError>
where
    I: redb::ReadableTable<IndexKey<'static>, u8>,
    R: redb::ReadableTable<(u64, u64), &'static [u8]>,
{
    let span = KeySpan::new(&c.key, &c.range_end);
    let mut live: Vec<Live> = Vec::new();
    read::scan_live(index, &span, rev as u64, |l| {
        live.push(l);
        true
    })?;
    if live.is_empty() {
        // A missing key has version, create and mod revision 0 and lease 0; a value compare
        // against it always fails.
        if matches!(c.target, CompareTarget::Value(_)) {
            return Ok(false);
        }
        return Ok(compare_kv(c, &KeyValue::default()));
    }
    for l in &live {
        let kv = read::load_kv(revs, l)?;
        if !compare_kv(c, &kv) {
            return Ok(false);
        }
    }
    Ok(true)
}

fn compare_kv(c: &Compare, kv: &KeyValue) -> bool {
    use std::cmp::Ordering as O;
    let ord = match &c.target {
        CompareTarget::Version(v) => kv.version.cmp(v),
        CompareTarget::Create(v) => kv.create_revision.cmp(v),
        CompareTarget::Mod(v) => kv.mod_revision.cmp(v),
        CompareTarget::Value(v) => kv.value.as_slice().cmp(v.as_slice()),
        CompareTarget::Lease(v) => kv.lease.cmp(v),
    };
    match c.result {
        CompareResult::Equal => ord == O::Equal,
        CompareResult::Greater => ord == O::Greater,
        CompareResult::Less => ord == O::Less,
        CompareResult::NotEqual => ord != O::Equal,
    }
}

fn run_txn(t: &mut Tables<'_>, st: &mut ApplyState, x: &TxnRequest, path: &TxnPath) -> Result<TxnResponse, StoreError> {
    let ops = if path.succeeded { &x.success } else { &x.failure };
    let mut nested = path.nested.iter();
    let mut responses = Vec::with_capacity(ops.len());
    for op in ops {
        responses.push(match op {
            RequestOp::Range(r) => {
                let current = st.read_rev();
                match read::range(&t.index, &t.revs, r, current, st.compacted)? {
                    Ok(resp) => ResponseOp::Range(resp),
                    Err(e) => {
                        // txn_path checked every range's revision before the first write.
                        return Err(StoreError::Corrupt { what: format!("txn range failed after its check: {e}") });
                    }
                }
            }
            RequestOp::Put(p) => ResponseOp::Put(put(t, st, p)?),
            RequestOp::DeleteRange(d) => ResponseOp::DeleteRange(delete_range(t, st, d)?),
            RequestOp::Txn(inner) => {
                let p = nested.next().expect("txn_path made one path per nested txn of the branch");
                ResponseOp::Txn(run_txn(t, st, inner, p)?)
            }
        });
    }
    Ok(TxnResponse { succeeded: path.succeeded, responses })
}

/// A physical compaction pass: the compact revision it works to, and where it resumes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct CompactPass {
    target: Revision,
    resume: (u64, u64),
}

fn get_pass(meta: &impl ReadableTable<&'static str, &'static [u8]>) -> Result<Option<CompactPass>, StoreError> {
    match meta.get(META_COMPACT_CURSOR)? {
        None => Ok(None),
        Some(v) => {
            let b = v.value();
            if b.len() != 24 {
                return Err(StoreError::Corrupt { what: format!("compact cursor is {} bytes, not 24", b.len()) });
            }
            let le = |r: std::ops::Range<usize>| -> [u8; 8] { b[r].try_into().expect("8 bytes") };
            Ok(Some(CompactPass {
                target: i64::from_le_bytes(le(0..8)),
                resume: (u64::from_le_bytes(le(8..16)), u64::from_le_bytes(le(16..24))),
            }))
        }
    }
}

fn put_pass(meta: &mut Table<'_, &'static str, &'static [u8]>, pass: CompactPass) -> Result<(), StoreError> {
    let mut b = [0u8; 24];
    b[..8].copy_from_slice(&pass.target.to_le_bytes());
    b[8..16].copy_from_slice(&pass.resume.0.to_le_bytes());
    b[16..].copy_from_slice(&pass.resume.1.to_le_bytes());
    meta.insert(META_COMPACT_CURSOR, b.as_slice())?;
    Ok(())
}

/// etcd's revision check of a range inside a txn: unlike a standalone Range, a negative
/// revision is compared with the compacted revision (and then read at the current one).
/// etcd's `checkRequestRange` for a range inside a txn: unlike a standalone Range, a
/// negative revision is not "the current one" but below the compacted revision.
fn check_txn_range_revision(requested: Revision, current: Revision, compacted: Revision) -> Result<(), RequestError> {
    if requested == 0 {
        Ok(())
    } else if requested > current {
        Err(RequestError::FutureRevision { current_revision: current })
    } else if requested < compacted {
        Err(RequestError::Compacted { compact_revision: compacted })
    } else {
        Ok(())
    }
}

/// One batch of physical compaction, in `wtx`; true when physical compaction has caught up
/// with the compacted revision.
///
/// A pass to target C walks the revision log from its cursor up to C; for each row of key k
/// at revision r it removes the rows of k older than r (superseded at or before C) and, if r
/// is a delete below C, the tombstone itself. A tombstone at exactly C stays, so a watch from
/// C still sees it (etcd#18089); the next pass starts at C and removes it.
///
/// Invariants:
/// - A pass keeps the target it started with even if the compacted revision moves on while
///   it runs: the rows behind its cursor were judged against that target (a tombstone at
///   exactly it was kept), so only a pass that starts at it revisits them. Re-reading the
///   compacted revision per batch leaked such tombstones for good.
/// - Cursor, target, progress and removals commit in one transaction, so a crash resumes
///   where the last committed batch ended; redoing a batch is harmless (removals are
///   idempotent).
/// - Reads at any revision >= the compacted revision see the same result before, during and
///   after a pass: only rows superseded at or below C, and tombstones below C (whose key is
///   absent at C either way), are removed.
fn compact_batch(wtx: &WriteTransaction, max_rows: usize) -> Result<bool, StoreError> {
    let mut meta = wtx.open_table(META)?;
    let compacted = get_i64(&meta, META_COMPACT_REVISION)?.unwrap_or(-1);
    let done_to = get_i64(&meta, META_PHYSICAL_COMPACTED)?.unwrap_or(0);
    let pass = match get_pass(&meta)? {
        Some(p) if p.target > done_to => p,
        _ if compacted > done_to => CompactPass { target: compacted, resume: (done_to as u64, 0) },
        _ => return Ok(true),
    };
    assert!(
        pass.target <= compacted,
        "compaction pass target {} above the compacted revision {compacted}",
        pass.target
    );
    let target = pass.target;
    let mut index = wtx.open_table(KEY_INDEX)?;
    let mut revs = wtx.open_table(REVS)?;
    let mut rows: Vec<(u64, u64, Vec<u8>, bool)> = Vec::new();
    let mut exhausted = true;
    for row in revs.range(pass.resume..=(target as u64, u64::MAX))? {
        if rows.len() >= max_rows {
            exhausted = false;
            break;
        }
        let (k, v) = row?;
        let (main, sub) = k.value();
        let rec = Record::decode(v.value())?;
        rows.push((main, sub, rec.key, rec.tombstone));
    }
    for (main, sub, key, tombstone) in &rows {
        let older: Vec<(u64, u64)> = index
            .range::<IndexKey<'_>>((key.as_slice(), 0, 0)..(key.as_slice(), *main, *sub))?
            .map(|r| r.map(|(k, _)| (k.value().1, k.value().2)))
            .collect::<Result<_, _>>()?;
        for (m, s) in older {
            index.remove((key.as_slice(), m, s))?;
            revs.remove((m, s))?;
        }
        if *tombstone && (*main as i64) < target {
            index.remove((key.as_slice(), *main, *sub))?;
            revs.remove((*main, *sub))?;
        }
    }
    if exhausted {
        meta.insert(META_PHYSICAL_COMPACTED, target.to_le_bytes().as_slice())?;
        put_pass(&mut meta, CompactPass { target, resume: (target as u64, 0) })?;
    } else {
        let (m, s, _, _) = rows.last().expect("a batch that stopped early has rows");
        put_pass(&mut meta, CompactPass { target, resume: (*m, s + 1) })?;
    }
    Ok(exhausted && target == compacted)
}

/// The key index of a read snapshot.
pub(crate) type IndexTable = redb::ReadOnlyTable<IndexKey<'static>, u8>;
/// The revision log of a read snapshot.
pub(crate) type RevsTable = redb::ReadOnlyTable<(u64, u64), &'static [u8]>;

impl ReadView {
    /// The snapshot's tables, for the reads in other modules (watch catch-up).
    pub(crate) fn tables(&self) -> (&IndexTable, &RevsTable) {
        (&self.index, &self.revs)
    }
}
