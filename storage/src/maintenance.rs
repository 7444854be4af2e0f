//! Maintenance of the store file: alarms, hashes, space accounting and defragmentation.
//!
//! # Defragmentation without stopping the member
//!
//! redb's own `compact()` needs the database to itself (no reader, no writer) for its whole
//! run: seconds to minutes on a large file. Instead [`Store::defragment`] writes a fresh copy
//! and swaps it in:
//!
//! 1. Under the writer lock (a few microseconds): open a read snapshot of the file and start
//!    the *tee*: from now on every applied batch is also appended to a spill file next to the
//!    store (`<file>.defrag-log`), on disk so that memory stays bounded however long the copy
//!    takes.
//! 2. Without any lock: copy every table of the snapshot, in key order, into a new file
//!    (`<file>.defrag`); rows inserted in order pack the B-trees densely.
//! 3. Without any lock: replay the spilled batches into the new file (apply is
//!    deterministic, so the copy reaches the same state), repeatedly, until little is left.
//! 4. Under the writer lock (the only pause: the last few batches and one fsync): replay the
//!    rest, make the new file durable, rename it over the old one, and switch the store to it.
//!    Readers that hold the old file keep it open until they finish.
//!
//! Every table is copied (`copy_all`): a new table must be added there.
//!
//! Physical compaction waits while a defragmentation runs (both rewrite rows). A crash at any
//! point leaves either the old file (leftovers are removed at the next open) or, after the
//! rename, the complete new one.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use redb::{
    Database, Durability, ReadTransaction, ReadableDatabase, ReadableTable, Table, TableDefinition, TableError,
};

use crate::codec::{alarm_type_code, alarm_type_from_code, Reader, Writer};
use crate::error::{DecodeError, RequestError, StoreError};
use crate::schema::*;
use crate::store::{ApplyEntry, Store};
use crate::types::*;

/// Meta key of the raised alarms: `(u64 LE member, u8 type)` per alarm.
pub const META_ALARMS: &str = "alarms";

/// Rows copied per write transaction of the new file.
const COPY_BATCH_ROWS: usize = 20_000;

/// Bytes copied per write transaction of the new file; each is made durable on its own, so
/// that no single fsync has much to write (one large fsync delays the raft log's small ones
/// on the same disk: measured ~100 ms put latency with one fsync of 18 MB).
const COPY_BATCH_BYTES: usize = 1 << 20;

/// Replay rounds end when one round had fewer batches than this; the rest is replayed
/// under the writer lock.
const CATCH_UP_BATCHES: usize = 4;

/// Most replay rounds before the switch.
const CATCH_UP_ROUNDS: usize = 100;

/// Tries to find a moment with little to replay before the switch replays what is left.
const SWITCH_TRIES: usize = 4;

/// At most this much of the spill file is replayed while applies wait (unless the switch
/// ran out of tries).
const MAX_LOCKED_REPLAY_BYTES: u64 = 64 << 10;

pub(crate) fn read_alarms(
    meta: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<Vec<AlarmMember>, StoreError> {
    let Some(v) = meta.get(META_ALARMS)? else {
        return Ok(Vec::new());
    };
    let v = v.value();
    if v.len() % 9 != 0 {
        return Err(StoreError::Corrupt { what: format!("alarms meta of {} bytes", v.len()) });
    }
    let mut out = Vec::with_capacity(v.len() / 9);
    for c in v.chunks_exact(9) {
        let member_id = u64::from_le_bytes(c[..8].try_into().expect("chunk of 9"));
        let alarm = alarm_type_from_code(c[8]).map_err(|e| StoreError::Corrupt { what: e.0 })?;
        out.push(AlarmMember { member_id, alarm });
    }
    Ok(out)
}

pub(crate) fn write_alarms(
    meta: &mut Table<'_, &'static str, &'static [u8]>,
    alarms: &[AlarmMember],
) -> Result<(), StoreError> {
    let mut v = Vec::with_capacity(alarms.len() * 9);
    for a in alarms {
        v.extend_from_slice(&a.member_id.to_le_bytes());
        v.push(alarm_type_code(a.alarm));
    }
    meta.insert(META_ALARMS, v.as_slice())?;
    Ok(())
}

fn defrag_paths(path: &Path) -> (PathBuf, PathBuf) {
    let with = |suffix: &str| {
        let mut n = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
        n.push(suffix);
        path.with_file_name(n)
    };
    (with(".defrag"), with(".defrag-log"))
}

/// Removes what an interrupted defragmentation left next to `path`.
pub(crate) fn remove_defrag_leftovers(path: &Path) -> Result<(), StoreError> {
    let (copy, log) = defrag_paths(path);
    for p in [copy, log] {
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// The spill file apply writes while a defragmentation runs.
pub(crate) struct Tee {
    out: BufWriter<File>,
    /// Set when a batch could not be recorded or the store was replaced wholesale (snapshot
    /// install): the copy can no longer catch up and the defragmentation gives up.
    broken: bool,
}

impl Store {
    /// Records an applied batch for a running defragmentation. Called under the writer lock
    /// after the batch committed. Never fails the apply: a failure breaks the tee instead.
    pub(crate) fn tee_batch(&self, entries: &[ApplyEntry<'_>], raft_state: &[u8]) {
        let mut tee = self.tee.lock().unwrap_or_else(|p| p.into_inner());
        let Some(t) = tee.as_mut() else { return };
        if t.broken {
            return;
        }
        let mut w = Writer::default();
        w.u32(entries.len() as u32);
        for e in entries {
            w.u64(e.index);
            match e.command {
                Some(c) => {
                    w.u8(1);
                    w.bytes(&c.encode());
                }
                None => w.u8(0),
            }
        }
        w.bytes(raft_state);
        let ok = t
            .out
            .write_all(&(w.buf.len() as u32).to_le_bytes())
            .and_then(|_| t.out.write_all(&w.buf))
            .and_then(|_| t.out.flush());
        if let Err(e) = ok {
            tracing::warn!(error = %e, "defragmentation: cannot record an applied batch; giving up");
            t.broken = true;
        }
    }

    /// Marks a running defragmentation as unable to catch up (the store was replaced).
    pub(crate) fn break_tee(&self) {
        if let Some(t) = self.tee.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            t.broken = true;
        }
    }

    /// Rewrites the store file compactly while applies and reads go on (see the module
    /// docs). Returns how long applies were paused.
    pub fn defragment(&self) -> Result<DefragReport, StoreError> {
        let Some(path) = self.path().map(Path::to_path_buf) else {
            return Err(StoreError::Corrupt { what: "defragment needs a file-backed store".into() });
        };
        let _maintenance = self.maintenance.lock().unwrap_or_else(|p| p.into_inner());
        let started = Instant::now();
        let size_before = Store::db_size(&path);
        let (copy_path, log_path) = defrag_paths(&path);
        remove_defrag_leftovers(&path)?;
        let result = self.defragment_into(&path, &copy_path, &log_path);
        // Whatever happened, apply stops recording.
        self.tee.lock().unwrap_or_else(|p| p.into_inner()).take();
        let _ = std::fs::remove_file(&log_path);
        match result {
            Ok(pause) => {
                Ok(DefragReport { size_before, size_after: Store::db_size(&path), pause, total: started.elapsed() })
            }
            Err(e) => {
                let _ = std::fs::remove_file(&copy_path);
                Err(e)
            }
        }
    }

    fn defragment_into(&self, path: &Path, copy_path: &Path, log_path: &Path) -> Result<Duration, StoreError> {
        // 1. Snapshot + tee, atomically with respect to applies.
        let snapshot = {
            let _w = self.writer();
            let out =
                BufWriter::with_capacity(1 << 20, OpenOptions::new().create_new(true).write(true).open(log_path)?);
            *self.tee.lock().unwrap_or_else(|p| p.into_inner()) = Some(Tee { out, broken: false });
            self.database().begin_read()?
        };
        // 2. Copy.
        let new_db = Database::builder().create(copy_path)?;
        copy_all(&snapshot, &new_db)?;
        drop(snapshot);
        let copy = Store::from_database(new_db, self.options().clone(), None)?;
        // 3. Catch up without the lock.
        let mut log = File::open(log_path)?;
        let mut pos = 0u64;
        // Bounded: applies as fast as replay could keep this going forever.
        for _ in 0..CATCH_UP_ROUNDS {
            let n = replay(&mut log, &mut pos, &copy)?;
            if n < CATCH_UP_BATCHES {
                break;
            }
        }
        // 4. The pause: the rest, durably, then the switch. The writer lock is not fair: while
        //    we waited for it, applies may have gone on; if much piled up, replay it outside
        //    the lock and try again.
        //    After a few tries (applies arriving as fast as they can be replayed) it replays
        //    whatever is left under the lock: progress over a short pause.
        let mut tries = 0;
        let (w, paused) = loop {
            let w = self.writer();
            let paused = Instant::now();
            tries += 1;
            if tries >= SWITCH_TRIES || log.metadata()?.len() - pos <= MAX_LOCKED_REPLAY_BYTES {
                break (w, paused);
            }
            drop(w);
            replay(&mut log, &mut pos, &copy)?;
        };
        if self.tee.lock().unwrap_or_else(|p| p.into_inner()).as_ref().is_none_or(|t| t.broken) {
            return Err(StoreError::Corrupt {
                what: "defragmentation abandoned: the store changed wholesale or a batch was not recorded".into(),
            });
        }
        replay(&mut log, &mut pos, &copy)?;
        if copy.current_revision() != self.current_revision() || copy.applied()?.0 != self.applied()?.0 {
            return Err(StoreError::Corrupt {
                what: format!(
                    "defragmented copy diverged: revision {} vs {}",
                    copy.current_revision(),
                    self.current_revision()
                ),
            });
        }
        copy.flush()?;
        let db = copy.into_database();
        std::fs::rename(copy_path, path)?;
        // From the rename on, the copy is the store's file: switch whatever happens next, or
        // later applies would go to the unlinked old file and be lost at the next open.
        let old = self.replace_database(db);
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        if let Err(e) = File::open(dir).and_then(|d| d.sync_all()) {
            // The next durable commit cannot make the rename durable either; say so loudly.
            tracing::error!(error = %e, dir = %dir.display(), "defragmentation: syncing the directory after the switch failed");
        }
        let pause = paused.elapsed();
        drop(w);
        // Closing the old file writes to it: not while applies wait.
        drop(old);
        Ok(pause)
    }

    fn into_database(self) -> Database {
        let arc = self.database();
        drop(self);
        match std::sync::Arc::try_unwrap(arc) {
            Ok(db) => db,
            Err(_) => unreachable!("a private copy store has no other users"),
        }
    }

    /// etcd's HashKV: a hash of the key-value history up to `revision` (0 = current), as
    /// kept after compaction: every revision above the compacted one, and for older ones
    /// the revision of each key that compaction keeps (its latest at the compacted revision,
    /// unless that is a delete). Equal logical contents give equal hashes whatever physical
    /// compaction has removed so far. Returns (hash, compacted revision, hashed revision).
    pub fn hash_kv(&self, revision: Revision) -> Result<Result<(u32, Revision, Revision), RequestError>, StoreError> {
        let db = self.database();
        let rtx = db.begin_read()?;
        let meta = rtx.open_table(META)?;
        let current = crate::store::meta_i64(&meta, META_CURRENT_REVISION)?.unwrap_or(1);
        let compacted = crate::store::meta_i64(&meta, META_COMPACT_REVISION)?.unwrap_or(-1);
        let rev = if revision <= 0 { current } else { revision };
        if rev > current {
            return Ok(Err(RequestError::FutureRevision { current_revision: current }));
        }
        if revision > 0 && rev < compacted {
            return Ok(Err(RequestError::Compacted { compact_revision: compacted }));
        }
        let index = rtx.open_table(KEY_INDEX)?;
        let revs = rtx.open_table(REVS)?;
        let mut h = crc32fast::Hasher::new();
        h.update(b"key");
        let rev_u = rev as u64;
        let comp = compacted.max(0) as u64;
        // Per key: rows in revision order; the last row at or below `comp` is kept if live.
        let mut key: Vec<u8> = Vec::new();
        let mut pending: Option<(u64, u64, bool)> = None;
        let hash_row = |h: &mut crc32fast::Hasher, key: &[u8], main: u64, sub: u64| -> Result<(), StoreError> {
            h.update(&main.to_be_bytes());
            h.update(&sub.to_be_bytes());
            h.update(&(key.len() as u32).to_le_bytes());
            h.update(key);
            if let Some(v) = revs.get((main, sub))? {
                h.update(v.value());
            }
            Ok(())
        };
        for row in index.iter()? {
            let (k, flags) = row?;
            let (k, main, sub) = k.value();
            let tomb = flags.value() & FLAG_TOMBSTONE != 0;
            if k != key.as_slice() {
                if let Some((m, s, false)) = pending.take() {
                    hash_row(&mut h, &key, m, s)?;
                }
                key.clear();
                key.extend_from_slice(k);
            }
            if main > rev_u {
                continue;
            }
            if main <= comp {
                pending = Some((main, sub, tomb));
                continue;
            }
            if let Some((m, s, false)) = pending.take() {
                hash_row(&mut h, &key, m, s)?;
            }
            hash_row(&mut h, &key, main, sub)?;
        }
        if let Some((m, s, false)) = pending.take() {
            hash_row(&mut h, &key, m, s)?;
        }
        Ok(Ok((h.finalize(), compacted, rev)))
    }

    /// etcd's Hash: a hash of every stored row of the key-value, lease and alarm state (not
    /// the raft bookkeeping). Unlike [`Store::hash_kv`] it depends on how far physical
    /// compaction got; etcd documents its Hash as for testing only.
    pub fn hash_all(&self) -> Result<u32, StoreError> {
        let db = self.database();
        let rtx = db.begin_read()?;
        let mut h = crc32fast::Hasher::new();
        for row in rtx.open_table(KEY_INDEX)?.iter()? {
            let (k, v) = row?;
            let (key, main, sub) = k.value();
            h.update(&(key.len() as u32).to_le_bytes());
            h.update(key);
            h.update(&main.to_le_bytes());
            h.update(&sub.to_le_bytes());
            h.update(&[v.value()]);
        }
        for row in rtx.open_table(REVS)?.iter()? {
            let (k, v) = row?;
            let (main, sub) = k.value();
            h.update(&main.to_le_bytes());
            h.update(&sub.to_le_bytes());
            h.update(v.value());
        }
        for row in rtx.open_table(LEASES)?.iter()? {
            let (k, v) = row?;
            h.update(&k.value().to_le_bytes());
            h.update(v.value());
        }
        for row in rtx.open_table(LEASE_KEYS)?.iter()? {
            let (k, _) = row?;
            let (lease, key) = k.value();
            h.update(&lease.to_le_bytes());
            h.update(key);
        }
        for table in [AUTH_USERS, AUTH_ROLES] {
            if let Ok(t) = rtx.open_table(table) {
                for row in t.iter()? {
                    let (k, v) = row?;
                    h.update(k.value().as_bytes());
                    h.update(v.value());
                }
            }
        }
        if let Ok(t) = rtx.open_table(AUTH_META) {
            for row in t.iter()? {
                let (k, v) = row?;
                h.update(k.value().as_bytes());
                h.update(&v.value().to_le_bytes());
            }
        }
        let meta = rtx.open_table(META)?;
        for key in [META_CURRENT_REVISION, META_COMPACT_REVISION, META_ALARMS] {
            if let Some(v) = meta.get(key)? {
                h.update(key.as_bytes());
                h.update(v.value());
            }
        }
        Ok(h.finalize())
    }

    /// The bytes of the file that hold live pages (etcd's dbSizeInUse): the file size minus
    /// free pages. Walks the page tree inside a write transaction, so applies wait for it;
    /// callers cache the answer.
    pub fn size_in_use(&self) -> Result<u64, StoreError> {
        let db = self.database();
        let wtx = db.begin_write()?;
        let stats = wtx.stats()?;
        wtx.abort()?;
        Ok(stats.allocated_pages() * stats.page_size() as u64)
    }
}

/// What a defragmentation did.
#[derive(Clone, Copy, Debug)]
pub struct DefragReport {
    pub size_before: u64,
    pub size_after: u64,
    /// How long applies waited for the switch.
    pub pause: Duration,
    pub total: Duration,
}

/// Replays the complete batches of the spill file after `pos` into `copy`; returns how many.
fn replay(log: &mut File, pos: &mut u64, copy: &Store) -> Result<usize, StoreError> {
    let end = log.metadata()?.len();
    log.seek(SeekFrom::Start(*pos))?;
    let mut n = 0;
    while *pos + 4 <= end {
        let mut len = [0u8; 4];
        log.read_exact(&mut len)?;
        let len = u32::from_le_bytes(len) as u64;
        if *pos + 4 + len > end {
            break;
        }
        let mut buf = vec![0u8; len as usize];
        log.read_exact(&mut buf)?;
        *pos += 4 + len;
        let mut r = Reader::new(&buf);
        let count = r.u32()? as usize;
        let mut items = Vec::with_capacity(count.min(1 << 16));
        for _ in 0..count {
            let index = r.u64()?;
            let cmd = match r.u8()? {
                0 => None,
                1 => Some(Command::decode(r.bytes()?)?),
                b => return Err(DecodeError(format!("defrag log entry flag {b}")).into()),
            };
            items.push((index, cmd));
        }
        let raft_state = r.vec()?;
        r.finish()?;
        let entries: Vec<ApplyEntry<'_>> =
            items.iter().map(|(index, cmd)| ApplyEntry { index: *index, command: cmd.as_ref() }).collect();
        copy.apply_batch(&entries, &raft_state, false)?;
        n += 1;
    }
    Ok(n)
}

/// Copies every table of the snapshot into `db`, in key order.
fn copy_all(src: &ReadTransaction, db: &Database) -> Result<(), StoreError> {
    copy_table(src, db, META)?;
    copy_table(src, db, KEY_INDEX)?;
    copy_table(src, db, REVS)?;
    copy_table(src, db, LEASES)?;
    copy_table(src, db, LEASE_KEYS)?;
    copy_table(src, db, AUTH_USERS)?;
    copy_table(src, db, AUTH_ROLES)?;
    copy_table(src, db, AUTH_META)?;
    let mut wtx = db.begin_write()?;
    wtx.set_durability(Durability::Immediate)?;
    wtx.commit()?;
    Ok(())
}

fn copy_table<K: redb::Key + 'static, V: redb::Value + 'static>(
    src: &ReadTransaction,
    db: &Database,
    def: TableDefinition<K, V>,
) -> Result<u64, StoreError> {
    let table = match src.open_table(def) {
        Ok(t) => t,
        Err(TableError::TableDoesNotExist(_)) => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    let mut rows = table.iter()?;
    let mut copied = 0u64;
    loop {
        let mut wtx = db.begin_write()?;
        wtx.set_durability(Durability::Immediate)?;
        let mut done = false;
        {
            let mut dst = wtx.open_table(def)?;
            let mut bytes = 0usize;
            for _ in 0..COPY_BATCH_ROWS {
                if bytes >= COPY_BATCH_BYTES {
                    break;
                }
                match rows.next() {
                    Some(row) => {
                        let (k, v) = row?;
                        let (k, v) = (k.value(), v.value());
                        bytes += K::as_bytes(&k).as_ref().len() + V::as_bytes(&v).as_ref().len();
                        dst.insert(k, v)?;
                        copied += 1;
                    }
                    None => {
                        done = true;
                        break;
                    }
                }
            }
        }
        wtx.commit()?;
        if done {
            return Ok(copied);
        }
    }
}

impl Store {
    /// Prepares a store restored from a snapshot to serve as a new member of a new cluster:
    /// forgets the raft position and membership of the member that made the snapshot (raft
    /// starts a fresh log) and its alarms (they name members that are not in the new
    /// cluster). Revisions, keys, leases and compaction state stay as they were.
    pub fn reset_for_new_member(&self) -> Result<(), StoreError> {
        let _w = self.writer();
        let db = self.database();
        let mut wtx = db.begin_write()?;
        wtx.set_durability(Durability::Immediate)?;
        {
            let mut meta = wtx.open_table(META)?;
            meta.remove(META_APPLIED_INDEX)?;
            meta.remove(META_RAFT_STATE)?;
            meta.remove(META_ALARMS)?;
        }
        wtx.commit()?;
        self.set_alarms(Vec::new());
        Ok(())
    }
}
