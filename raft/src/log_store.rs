//! The raft log: a write-ahead log of segment files, with group commit.
//!
//! openraft calls [`RaftLogStorage::append`] and expects it to return at once, with the
//! entries readable, and to call back when they are durable. Appends, truncations, purges
//! and votes all go, in call order, to one writer thread. The thread takes everything
//! queued, appends it as records to the current segment with one write and one
//! `fdatasync`, then completes every waiter: concurrent client writes share one fsync. Until
//! then, appended entries live in `pending`, which readers merge over the files.
//!
//! On disk (docs/FORMAT.md §7): `member/wal/<seq:016x>.wal` segments, each preallocated
//! (64 MiB, more for a larger group), a 16-byte header (magic, version, a salt), then
//! records `u32 len | u32 crc | body` whose CRC-32 chains from the previous record's (the
//! first from the salt), so bytes left over from an earlier, unsynced write never pass for
//! a record. A zero length, the end of the file or, in the last segment only, a bad record
//! (a torn write) ends the log; a bad record in an earlier segment is corruption and the
//! log refuses to open. Every segment starts with the vote, committed id and purge point
//! as of its creation, so segments can be deleted from the front once purged. Truncation
//! and purge are records too, replayed in order at open; the index of every durable entry
//! (segment, offset, length) is kept in memory, the entries are read back with `pread`.
//!
//! A member that still has the redb log of earlier versions (`raft-log.redb`) has it
//! copied into the first segment at open; the redb file is removed once that is durable.
//!
//! Lock order: `pending`, then `state`, then `durable`; none is held across an await or a
//! disk write.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read};
use std::ops::RangeBounds;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{ErrorVerb, OptionalSend, RaftLogReader};
use tokio::sync::oneshot;

use crate::codec;
use crate::types::*;

/// At most this many operations wait for the writer; `append` blocks beyond it.
const WRITE_QUEUE_OPS: usize = 4096;
/// One group commit takes at most this many operations.
const GROUP_MAX_OPS: usize = 1024;

/// The size segments are preallocated to (etcd's WAL segments are 64 MB too).
pub const SEGMENT_BYTES: u64 = 64 << 20;
const MAGIC: &[u8; 8] = b"CAIRNWAL";
const VERSION: u32 = 1;
const HEADER_BYTES: u64 = 16;
/// `u32 len | u32 crc` before every record body.
const FRAME_BYTES: u64 = 8;
/// No record is larger (a sanity bound on a length read back).
const MAX_RECORD: u32 = 1 << 30;

const REC_ENTRY: u8 = 1;
const REC_TRUNCATE: u8 = 2;
const REC_PURGE: u8 = 3;
const REC_VOTE: u8 = 4;
const REC_COMMITTED: u8 = 5;

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

/// Who learns that an append is durable: openraft, or a caller of
/// [`LogStore::append_and_wait`].
enum Flushed {
    Raft(LogFlushed<TypeConfig>),
    Wait(oneshot::Sender<Result<(), String>>),
}

enum WriteOp {
    Append { entries: Vec<(u64, Vec<u8>, LogId)>, callback: Flushed },
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

/// Where a durable entry's bytes are.
#[derive(Clone, Copy, Debug)]
struct Loc {
    seg: u64,
    off: u64,
    len: u32,
}

/// What the segment files hold, as replayed: entry locations, the vote, the committed hint,
/// the purge point, and per segment its file and its highest entry index.
#[derive(Default)]
struct Durable {
    locs: BTreeMap<u64, Loc>,
    vote: Option<Vec<u8>>,
    committed: Option<Vec<u8>>,
    purged: Option<LogId>,
    files: BTreeMap<u64, Arc<File>>,
    seg_last: BTreeMap<u64, u64>,
}

impl Durable {
    /// Applies one record body found at `off` of segment `seg` (replay, and after a write).
    fn apply(&mut self, seg: u64, off: u64, body: &[u8]) -> Result<(), String> {
        let (&kind, rest) = body.split_first().ok_or("empty record")?;
        match kind {
            REC_ENTRY => {
                let index = read_u64(rest).ok_or("short entry record")?;
                // An entry replaces any at or after its index (openraft truncates first; this
                // keeps replay exact even so).
                let _ = self.locs.split_off(&index);
                let len = u32::try_from(rest.len() - 8).map_err(|_| "entry too large")?;
                self.locs.insert(index, Loc { seg, off: off + 9, len });
                let last = self.seg_last.entry(seg).or_insert(index);
                *last = (*last).max(index);
            }
            REC_TRUNCATE => {
                let from = read_u64(rest).ok_or("short truncate record")?;
                let _ = self.locs.split_off(&from);
            }
            REC_PURGE => {
                let upto = codec::decode_opt_log_id(rest).map_err(|e| e.to_string())?;
                if let Some(upto) = upto {
                    self.locs = self.locs.split_off(&(upto.index + 1));
                }
                self.purged = upto;
            }
            REC_VOTE => self.vote = Some(rest.to_vec()),
            REC_COMMITTED => self.committed = Some(rest.to_vec()),
            other => return Err(format!("unknown record type {other}")),
        }
        Ok(())
    }

    /// The records a new segment starts with: the vote, committed hint and purge point.
    fn header_records(&self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        if let Some(v) = &self.vote {
            out.push(body(REC_VOTE, &[v]));
        }
        if let Some(c) = &self.committed {
            out.push(body(REC_COMMITTED, &[c]));
        }
        if self.purged.is_some() {
            out.push(body(REC_PURGE, &[&codec::encode_opt_log_id(&self.purged)]));
        }
        out
    }
}

fn read_u64(b: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(..8)?.try_into().ok()?))
}

fn body(kind: u8, parts: &[&[u8]]) -> Vec<u8> {
    let mut b = Vec::with_capacity(1 + parts.iter().map(|p| p.len()).sum::<usize>());
    b.push(kind);
    for p in parts {
        b.extend_from_slice(p);
    }
    b
}

/// The CRC of a record: over its length and body, chained from the previous record's.
fn record_crc(prev: u32, len: u32, body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new_with_initial(prev);
    h.update(&len.to_le_bytes());
    h.update(body);
    h.finalize()
}

/// Frames `bodies` after a record whose CRC is `crc`: returns the bytes, the offset (relative
/// to the first byte) of every body, and the last CRC.
fn frame(mut crc: u32, bodies: &[Vec<u8>]) -> (Vec<u8>, Vec<u64>, u32) {
    let total: usize = bodies.iter().map(|b| FRAME_BYTES as usize + b.len()).sum();
    let mut buf = Vec::with_capacity(total);
    let mut offsets = Vec::with_capacity(bodies.len());
    for b in bodies {
        let len = b.len() as u32;
        crc = record_crc(crc, len, b);
        buf.extend_from_slice(&len.to_le_bytes());
        buf.extend_from_slice(&crc.to_le_bytes());
        offsets.push(buf.len() as u64);
        buf.extend_from_slice(b);
    }
    (buf, offsets, crc)
}

fn segment_name(seq: u64) -> String {
    format!("{seq:016x}.wal")
}

fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Allocates `len` bytes for `f` so that writes into them change no file metadata (an
/// `fdatasync` then writes data only). Falls back to a sparse `set_len` where the file
/// system cannot.
fn preallocate(f: &File, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let Ok(len_off) = libc::off_t::try_from(len) else {
        return Err(io::Error::other("segment too large"));
    };
    // SAFETY: `posix_fallocate` reads only its arguments; the descriptor is owned by `f`,
    // which outlives the call.
    let rc = unsafe { libc::posix_fallocate(f.as_raw_fd(), 0, len_off) };
    match rc {
        0 => Ok(()),
        libc::EOPNOTSUPP | libc::EINVAL => f.set_len(len),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

/// How the log's files are laid out; tests use small segments.
#[derive(Clone, Debug)]
pub struct LogOptions {
    /// The size a new segment is preallocated to.
    pub segment_bytes: u64,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions { segment_bytes: SEGMENT_BYTES }
    }
}

/// A segment just created: its file, the bytes used and preallocated, the last CRC and the
/// offsets of the records it was created with.
struct NewSegment {
    file: Arc<File>,
    used: u64,
    cap: u64,
    crc: u32,
    offsets: Vec<u64>,
}

/// The writer thread's end of the current segment.
struct Tail {
    dir: PathBuf,
    segment_bytes: u64,
    seq: u64,
    file: Arc<File>,
    /// Where the next record goes.
    off: u64,
    /// The file's preallocated size.
    cap: u64,
    /// The CRC of the last record (the salt in a segment without records).
    crc: u32,
    /// Set by a failed write: the file's state is unknown, every later write fails.
    failed: Option<String>,
}

impl Tail {
    /// Creates segment `seq` holding `records` after its header, preallocated to hold `more`
    /// further bytes at least, durably (written under a temporary name, synced, renamed, the
    /// directory synced). Returns the file, the offsets of the records and the last CRC.
    fn create_segment(
        dir: &Path,
        seq: u64,
        records: &[Vec<u8>],
        more: u64,
        segment_bytes: u64,
    ) -> io::Result<NewSegment> {
        let salt = {
            let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            (t.as_nanos() as u32) ^ (seq as u32).rotate_left(16) ^ std::process::id()
        };
        let (framed, offsets, crc) = frame(salt, records);
        let used = HEADER_BYTES + framed.len() as u64;
        let cap = segment_bytes.max(used + more);
        let tmp = dir.join(format!("{}.tmp", segment_name(seq)));
        let path = dir.join(segment_name(seq));
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&tmp)?;
        preallocate(&file, cap)?;
        let mut head = Vec::with_capacity(HEADER_BYTES as usize + framed.len());
        head.extend_from_slice(MAGIC);
        head.extend_from_slice(&VERSION.to_le_bytes());
        head.extend_from_slice(&salt.to_le_bytes());
        head.extend_from_slice(&framed);
        file.write_all_at(&head, 0)?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        fsync_dir(dir)?;
        let offsets = offsets.into_iter().map(|o| o + HEADER_BYTES).collect();
        Ok(NewSegment { file: Arc::new(file), used, cap, crc, offsets })
    }

    /// Writes one group: its records to the current segment (or to a new one when they do
    /// not fit), one `fdatasync`, then applies them to `durable`.
    fn write(&mut self, bodies: &[Vec<u8>], durable: &Mutex<Durable>) -> io::Result<()> {
        if let Some(e) = &self.failed {
            return Err(io::Error::other(format!("an earlier raft log write failed: {e}")));
        }
        let result = self.write_inner(bodies, durable);
        if let Err(e) = &result {
            self.failed = Some(e.to_string());
        }
        result
    }

    fn write_inner(&mut self, bodies: &[Vec<u8>], durable: &Mutex<Durable>) -> io::Result<()> {
        let need: u64 = bodies.iter().map(|b| FRAME_BYTES + b.len() as u64).sum();
        if self.off + need > self.cap {
            self.roll(need, durable)?;
        }
        let (buf, offsets, crc) = frame(self.crc, bodies);
        self.file.write_all_at(&buf, self.off)?;
        self.file.sync_data()?;
        let base = self.off;
        self.off += buf.len() as u64;
        self.crc = crc;
        let mut d = durable.lock().expect("durable lock poisoned");
        for (b, o) in bodies.iter().zip(offsets) {
            d.apply(self.seq, base + o, b).map_err(io::Error::other)?;
        }
        self.delete_purged(&mut d);
        Ok(())
    }

    /// Seals the current segment (cut to its last record, synced: its end is the end of the
    /// file) and starts the next one with the vote, committed hint and purge point.
    fn roll(&mut self, need: u64, durable: &Mutex<Durable>) -> io::Result<()> {
        self.file.set_len(self.off)?;
        self.file.sync_all()?;
        let seq = self.seq + 1;
        let records = durable.lock().expect("durable lock poisoned").header_records();
        let NewSegment { file, used, cap, crc, offsets } =
            Tail::create_segment(&self.dir, seq, &records, need, self.segment_bytes)?;
        let mut d = durable.lock().expect("durable lock poisoned");
        for (b, o) in records.iter().zip(offsets) {
            d.apply(seq, o, b).map_err(io::Error::other)?;
        }
        d.files.insert(seq, file.clone());
        drop(d);
        self.seq = seq;
        self.file = file;
        self.off = used;
        self.cap = cap;
        self.crc = crc;
        Ok(())
    }

    /// Deletes segments from the front while every entry in them is purged (never the
    /// current one). A deletion lost in a crash only replays a segment whose entries the
    /// purge record drops again.
    fn delete_purged(&self, d: &mut Durable) {
        let Some(purged) = d.purged.map(|p| p.index) else { return };
        let doomed: Vec<u64> = d
            .files
            .keys()
            .copied()
            .take_while(|&seq| seq != self.seq && d.seg_last.get(&seq).is_none_or(|&last| last <= purged))
            .collect();
        for seq in doomed {
            let path = self.dir.join(segment_name(seq));
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove a purged raft log segment");
                return;
            }
            d.files.remove(&seq);
            d.seg_last.remove(&seq);
        }
    }
}

/// Replays every segment of `dir` into a [`Durable`]; returns it with the writer's tail.
fn recover(dir: &Path, options: &LogOptions) -> io::Result<(Durable, Tail)> {
    let mut seqs = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".wal.tmp") {
            std::fs::remove_file(dir.join(&*name))?;
        } else if let Some(hex) = name.strip_suffix(".wal") {
            match u64::from_str_radix(hex, 16) {
                Ok(seq) if hex.len() == 16 => seqs.push(seq),
                _ => return Err(io::Error::other(format!("unexpected file {name} in the raft log directory"))),
            }
        }
    }
    seqs.sort_unstable();
    let mut d = Durable::default();
    if seqs.is_empty() {
        let NewSegment { file, used, cap, crc, .. } = Tail::create_segment(dir, 1, &[], 0, options.segment_bytes)?;
        d.files.insert(1, file.clone());
        let tail = Tail {
            dir: dir.to_path_buf(),
            segment_bytes: options.segment_bytes,
            seq: 1,
            file,
            off: used,
            cap,
            crc,
            failed: None,
        };
        return Ok((d, tail));
    }
    let mut tail = None;
    for (i, &seq) in seqs.iter().enumerate() {
        let is_last = i + 1 == seqs.len();
        if i > 0 && seq != seqs[i - 1] + 1 {
            return Err(io::Error::other(format!(
                "raft log segment {} is missing (found {} and {})",
                segment_name(seqs[i - 1] + 1),
                segment_name(seqs[i - 1]),
                segment_name(seq)
            )));
        }
        let path = dir.join(segment_name(seq));
        let file = OpenOptions::new().read(true).write(is_last).open(&path)?;
        let (end, crc) = replay_segment(&file, seq, is_last, &mut d)
            .map_err(|e| io::Error::other(format!("raft log segment {}: {e}", path.display())))?;
        let file = Arc::new(file);
        d.files.insert(seq, file.clone());
        if is_last {
            let cap = file.metadata()?.len();
            tail = Some(Tail {
                dir: dir.to_path_buf(),
                segment_bytes: options.segment_bytes,
                seq,
                file,
                off: end,
                cap,
                crc,
                failed: None,
            });
        }
    }
    let tail = tail.ok_or_else(|| io::Error::other("no raft log segment"))?;
    Ok((d, tail))
}

/// Replays one segment into `d`; returns where its records end and the last CRC. A bad
/// record ends the last segment (a torn write, logged) and is an error in any other.
fn replay_segment(file: &File, seq: u64, is_last: bool, d: &mut Durable) -> Result<(u64, u32), String> {
    let size = file.metadata().map_err(|e| e.to_string())?.len();
    let mut r = BufReader::with_capacity(1 << 20, file);
    let mut header = [0u8; HEADER_BYTES as usize];
    r.read_exact(&mut header).map_err(|e| format!("header: {e}"))?;
    if &header[..8] != MAGIC {
        return Err("not a Cairn raft log segment (bad magic)".into());
    }
    let version = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
    if version != VERSION {
        return Err(format!("segment format version {version}, this build reads {VERSION}"));
    }
    let mut crc = u32::from_le_bytes(header[12..16].try_into().expect("4 bytes"));
    let mut off = HEADER_BYTES;
    let mut body = Vec::new();
    loop {
        if off + FRAME_BYTES > size {
            break;
        }
        let mut fr = [0u8; FRAME_BYTES as usize];
        r.read_exact(&mut fr).map_err(|e| format!("at offset {off}: {e}"))?;
        let len = u32::from_le_bytes(fr[..4].try_into().expect("4 bytes"));
        let want = u32::from_le_bytes(fr[4..].try_into().expect("4 bytes"));
        if len == 0 {
            break;
        }
        let bad = |why: &str| -> Result<(u64, u32), String> {
            if is_last {
                tracing::warn!(
                    segment = seq,
                    offset = off,
                    why,
                    "raft log ends with a torn record; writing on from it"
                );
                Ok((off, crc))
            } else {
                Err(format!("corrupt record at offset {off}: {why}"))
            }
        };
        if len > MAX_RECORD || off + FRAME_BYTES + u64::from(len) > size {
            return bad("length beyond the file");
        }
        body.resize(len as usize, 0);
        r.read_exact(&mut body).map_err(|e| format!("at offset {off}: {e}"))?;
        let got = record_crc(crc, len, &body);
        if got != want {
            return bad("checksum mismatch");
        }
        d.apply(seq, off + FRAME_BYTES, &body).map_err(|e| format!("record at offset {off}: {e}"))?;
        crc = got;
        off += FRAME_BYTES + u64::from(len);
    }
    Ok((off, crc))
}

/// Copies the legacy redb log at `legacy` into segment 1 of `dir` (unless `dir` already has
/// segments: a migration that completed before a crash), then removes the redb file.
fn migrate(legacy: &Path, dir: &Path, segment_bytes: u64) -> Result<(), String> {
    let has_segments = std::fs::read_dir(dir)
        .map_err(|e| e.to_string())?
        .filter_map(Result::ok)
        .any(|e| e.file_name().to_string_lossy().ends_with(".wal"));
    if !has_segments {
        let old = crate::legacy_log::read(legacy).map_err(|e| e.to_string())?;
        let mut records = Vec::new();
        if let Some(v) = &old.vote {
            records.push(body(REC_VOTE, &[v]));
        }
        if let Some(c) = &old.committed {
            records.push(body(REC_COMMITTED, &[c]));
        }
        if let Some(p) = &old.last_purged {
            records.push(body(REC_PURGE, &[p]));
        }
        for (i, e) in &old.entries {
            records.push(body(REC_ENTRY, &[&i.to_le_bytes(), e]));
        }
        Tail::create_segment(dir, 1, &records, 0, segment_bytes).map_err(|e| e.to_string())?;
        tracing::info!(entries = old.entries.len(), "copied the redb raft log into the segment log");
    }
    std::fs::remove_file(legacy).map_err(|e| e.to_string())?;
    let parent = legacy.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fsync_dir(parent).map_err(|e| e.to_string())
}

struct Inner {
    /// Group commits (one fsync each) made so far; etcd's WAL fsync count.
    fsyncs: Arc<AtomicU64>,
    /// How long each group commit (write + fsync) took.
    fsync_times: Arc<DurationHistogram>,
    /// Appended, not yet durable entries by index. Readers merge them over the files.
    pending: Mutex<BTreeMap<u64, Entry>>,
    state: Mutex<State>,
    durable: Arc<Mutex<Durable>>,
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
    /// Opens (creating) the log in directory `dir` and starts its writer thread. A redb log
    /// of earlier versions at `legacy` is migrated into it (see the module doc).
    pub fn open(dir: &Path, legacy: Option<&Path>) -> Result<LogStore, StorageError> {
        LogStore::open_with(dir, legacy, LogOptions::default())
    }

    /// [`LogStore::open`] with explicit options.
    pub fn open_with(dir: &Path, legacy: Option<&Path>, options: LogOptions) -> Result<LogStore, StorageError> {
        let io = |e: io::Error| err(ErrorVerb::Write, e);
        let created = !dir.exists();
        std::fs::create_dir_all(dir).map_err(io)?;
        if created {
            let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
            fsync_dir(parent).map_err(io)?;
        }
        if let Some(legacy) = legacy.filter(|l| l.exists()) {
            migrate(legacy, dir, options.segment_bytes)
                .map_err(|e| err(ErrorVerb::Write, Msg(format!("migrating the raft log {}: {e}", legacy.display()))))?;
        }
        let (durable, tail) = recover(dir, &options).map_err(|e| err(ErrorVerb::Read, e))?;
        let last = match durable.locs.last_key_value() {
            Some((_, loc)) => {
                let file =
                    durable.files.get(&loc.seg).ok_or_else(|| err(ErrorVerb::Read, Msg("segment missing".into())))?;
                Some(read_entry(file, loc)?.log_id)
            }
            None => durable.purged,
        };
        let state = State { last_purged: durable.purged, last };
        let (tx, rx) = mpsc::sync_channel(WRITE_QUEUE_OPS);
        let fsyncs = Arc::new(AtomicU64::new(0));
        let fsync_times = Arc::new(DurationHistogram::default());
        let durable = Arc::new(Mutex::new(durable));
        let inner = Arc::new(Inner {
            fsyncs: fsyncs.clone(),
            fsync_times: fsync_times.clone(),
            pending: Mutex::new(BTreeMap::new()),
            state: Mutex::new(state),
            durable: durable.clone(),
            tx,
        });
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || writer_loop(tail, durable, rx, weak, fsyncs, fsync_times))
            .map_err(io)?;
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

    /// Appends `entries` and waits until they are durable (what openraft's callback learns).
    /// For tests and tools: openraft itself uses [`RaftLogStorage::append`].
    pub async fn append_and_wait(&mut self, entries: Vec<Entry>) -> Result<(), StorageError> {
        let (done, rx) = oneshot::channel();
        self.append_entries(entries, Flushed::Wait(done))?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(err(ErrorVerb::Write, Msg(e))),
            Err(_) => Err(err(ErrorVerb::Write, Msg("log writer stopped".into()))),
        }
    }

    fn append_entries(&self, entries: impl IntoIterator<Item = Entry>, callback: Flushed) -> Result<(), StorageError> {
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
            match callback {
                Flushed::Raft(cb) => cb.log_io_completed(Ok(())),
                Flushed::Wait(done) => {
                    let _ = done.send(Ok(()));
                }
            }
            return Ok(());
        }
        self.send(WriteOp::Append { entries: encoded, callback })
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
}

fn read_entry(file: &File, loc: &Loc) -> Result<Entry, StorageError> {
    let mut buf = vec![0u8; loc.len as usize];
    file.read_exact_at(&mut buf, loc.off).map_err(|e| err(ErrorVerb::Read, e))?;
    codec::decode_entry(&buf).map_err(|e| err(ErrorVerb::Read, e))
}

/// The body of the records of one operation.
fn bodies_of(op: &WriteOp, out: &mut Vec<Vec<u8>>) {
    match op {
        WriteOp::Append { entries, .. } => {
            for (idx, bytes, _) in entries {
                out.push(body(REC_ENTRY, &[&idx.to_le_bytes(), bytes]));
            }
        }
        WriteOp::Truncate { from, .. } => out.push(body(REC_TRUNCATE, &[&from.to_le_bytes()])),
        WriteOp::Purge { upto, .. } => out.push(body(REC_PURGE, &[&codec::encode_opt_log_id(&Some(*upto))])),
        WriteOp::Vote { vote, .. } => out.push(body(REC_VOTE, &[vote])),
        WriteOp::Committed { committed } => out.push(body(REC_COMMITTED, &[committed])),
    }
}

/// The writer thread: group commits until the store is dropped.
fn writer_loop(
    mut tail: Tail,
    durable: Arc<Mutex<Durable>>,
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
        let mut bodies = Vec::new();
        for op in &ops {
            bodies_of(op, &mut bodies);
        }
        let started = std::time::Instant::now();
        let result = tail.write(&bodies, &durable).map_err(|e| e.to_string());
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
                WriteOp::Append { callback: Flushed::Raft(callback), .. } => callback.log_io_completed(
                    result.clone().map_err(|e| std::io::Error::other(format!("raft log append failed: {e}"))),
                ),
                WriteOp::Append { callback: Flushed::Wait(done), .. } => {
                    let _ = done.send(result.clone());
                }
                WriteOp::Truncate { done, .. } | WriteOp::Purge { done, .. } | WriteOp::Vote { done, .. } => {
                    let _ = done.send(result.clone());
                }
                WriteOp::Committed { .. } => {}
            }
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        // `pending` first: an entry leaves it only after it is in `durable`.
        let mut out: BTreeMap<u64, Entry> = {
            let pending = self.inner.pending.lock().expect("pending lock poisoned");
            pending.range(range.clone()).map(|(k, v)| (*k, v.clone())).collect()
        };
        let wanted: Vec<(u64, Loc, Arc<File>)> = {
            let d = self.inner.durable.lock().expect("durable lock poisoned");
            let mut v = Vec::new();
            for (&idx, loc) in d.locs.range(range) {
                if out.contains_key(&idx) {
                    continue;
                }
                let file = d.files.get(&loc.seg).ok_or_else(|| {
                    err(ErrorVerb::Read, Msg(format!("raft log entry {idx} is in a missing segment")))
                })?;
                v.push((idx, *loc, file.clone()));
            }
            v
        };
        for (idx, loc, file) in wanted {
            out.insert(idx, read_entry(&file, &loc)?);
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
        let v = self.inner.durable.lock().expect("durable lock poisoned").vote.clone();
        match v {
            None => Ok(None),
            Some(b) => Ok(Some(codec::decode_vote(&b).map_err(|e| err(ErrorVerb::Read, e))?)),
        }
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // A hint for a faster restart: written with the next group, never waited for.
        self.send(WriteOp::Committed { committed: codec::encode_opt_log_id(&committed) })
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let c = self.inner.durable.lock().expect("durable lock poisoned").committed.clone();
        match c {
            None => Ok(None),
            Some(b) => Ok(codec::decode_opt_log_id(&b).map_err(|e| err(ErrorVerb::Read, e))?),
        }
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        self.append_entries(entries, Flushed::Raft(callback))
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
