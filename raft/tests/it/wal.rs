//! The segment-file raft log (`cairn_raft::log_store`), through its openraft interface and
//! its files: reopen after appends, truncations, purges and votes; segments rolled and
//! deleted; a torn last record cut off; a corrupt earlier segment refused; the redb log of
//! earlier versions migrated.

use std::path::{Path, PathBuf};

use cairn_raft::codec;
use cairn_raft::log_store::{LogOptions, LogStore};
use cairn_raft::types::{Entry, LogId, Request, Vote};
use openraft::storage::{RaftLogReader, RaftLogStorage};
use openraft::{CommittedLeaderId, EntryPayload};

/// Small segments, so that a few hundred entries span several.
const SMALL: u64 = 4096;

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn entry(term: u64, index: u64) -> Entry {
    // Blank and normal entries (normal ones with no commands: the payload tag is what differs).
    let payload =
        if index.is_multiple_of(3) { EntryPayload::Blank } else { EntryPayload::Normal(Request::local(Vec::new())) };
    Entry { log_id: log_id(term, index), payload }
}

fn entries(term: u64, range: std::ops::Range<u64>) -> Vec<Entry> {
    range.map(|i| entry(term, i)).collect()
}

/// Appends `range` ten entries at a time (ten groups: small segments fill and roll).
async fn append_in_tens(log: &mut LogStore, term: u64, range: std::ops::Range<u64>) {
    let all = entries(term, range);
    for chunk in all.chunks(10) {
        log.append_and_wait(chunk.to_vec()).await.expect("append");
    }
}

fn open(dir: &Path) -> LogStore {
    LogStore::open_with(dir, None, LogOptions { segment_bytes: SMALL }).expect("open the log")
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read the log dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    v.sort();
    v
}

/// The ids of every entry the log returns, and its state.
async fn contents(log: &mut LogStore) -> (Vec<LogId>, Option<LogId>, Option<LogId>) {
    let got: Vec<LogId> = log.try_get_log_entries(0..u64::MAX).await.expect("read").iter().map(|e| e.log_id).collect();
    let st = log.get_log_state().await.expect("state");
    (got, st.last_purged_log_id, st.last_log_id)
}

/// Record boundaries of a segment file: `(offset of the frame, body length)` of every record.
fn records(path: &Path) -> Vec<(usize, usize)> {
    let b = std::fs::read(path).expect("read segment");
    let mut off = 16;
    let mut out = Vec::new();
    while off + 8 <= b.len() {
        let len = u32::from_le_bytes(b[off..off + 4].try_into().expect("4 bytes")) as usize;
        if len == 0 || off + 8 + len > b.len() {
            break;
        }
        out.push((off, len));
        off += 8 + len;
    }
    out
}

fn flip_byte(path: &Path, at: usize) {
    let mut b = std::fs::read(path).expect("read segment");
    b[at] ^= 0x5a;
    std::fs::write(path, b).expect("write segment");
}

#[test]
fn reopen_restores_entries_vote_committed_and_purge_across_segments() {
    rt().block_on(async {
        let dir = tempfile::tempdir().expect("tmp");
        let wal = dir.path().join("wal");
        let mut log = open(&wal);
        append_in_tens(&mut log, 1, 1..300).await;
        let vote = Vote::new(2, 1);
        log.save_vote(&vote).await.expect("vote");
        // A new leader overwrites the tail from 250 on.
        log.truncate(log_id(1, 250)).await.expect("truncate");
        append_in_tens(&mut log, 2, 250..320).await;
        log.save_committed(Some(log_id(2, 310))).await.expect("committed");
        let before = segments(&wal).len();
        assert!(before > 3, "small segments roll: {before} segment(s)");
        log.purge(log_id(1, 200)).await.expect("purge");
        // The committed hint and the purge are written with the next group.
        log.append_and_wait(entries(2, 320..321)).await.expect("append after purge");
        let after = segments(&wal).len();
        assert!(after < before, "purged segments are deleted: {before} -> {after}");
        let want_ids: Vec<LogId> = (201..250).map(|i| log_id(1, i)).chain((250..321).map(|i| log_id(2, i))).collect();
        let (ids, purged, last) = contents(&mut log).await;
        assert_eq!(ids, want_ids);
        assert_eq!((purged, last), (Some(log_id(1, 200)), Some(log_id(2, 320))));
        drop(log);

        let mut log = open(&wal);
        let (ids, purged, last) = contents(&mut log).await;
        assert_eq!(ids, want_ids, "entries after reopen");
        assert_eq!((purged, last), (Some(log_id(1, 200)), Some(log_id(2, 320))));
        assert_eq!(log.read_vote().await.expect("read vote"), Some(vote));
        assert_eq!(log.read_committed().await.expect("read committed"), Some(log_id(2, 310)));
        // Reads of single entries and ranges come back whole.
        let some = log.try_get_log_entries(240..260).await.expect("range");
        assert_eq!(some.iter().map(|e| e.log_id).collect::<Vec<_>>(), want_ids[39..59].to_vec());
        assert_eq!(some[0], entry(1, 240));
        assert_eq!(some[19], entry(2, 259));
    });
}

#[test]
fn purge_beyond_the_last_entry_empties_the_log() {
    rt().block_on(async {
        let dir = tempfile::tempdir().expect("tmp");
        let wal = dir.path().join("wal");
        let mut log = open(&wal);
        log.append_and_wait(entries(1, 1..100)).await.expect("append");
        // A snapshot installed from the leader: everything up to 500 is purged.
        log.purge(log_id(3, 500)).await.expect("purge");
        log.append_and_wait(entries(3, 501..505)).await.expect("append after the snapshot");
        drop(log);
        let mut log = open(&wal);
        let (ids, purged, last) = contents(&mut log).await;
        assert_eq!(ids, (501..505).map(|i| log_id(3, i)).collect::<Vec<_>>());
        assert_eq!((purged, last), (Some(log_id(3, 500)), Some(log_id(3, 504))));
    });
}

#[test]
fn torn_last_record_is_cut_off_and_writing_goes_on() {
    rt().block_on(async {
        let dir = tempfile::tempdir().expect("tmp");
        let wal = dir.path().join("wal");
        let mut log = LogStore::open(&wal, None).expect("open");
        log.append_and_wait(entries(1, 1..11)).await.expect("append");
        drop(log);
        // The last record's body is damaged (a write torn by a crash).
        let seg = segments(&wal).pop().expect("a segment");
        let (off, len) = *records(&seg).last().expect("records");
        flip_byte(&seg, off + 8 + len / 2);

        let mut log = LogStore::open(&wal, None).expect("reopen after a torn write");
        let (ids, _, last) = contents(&mut log).await;
        assert_eq!(ids, (1..10).map(|i| log_id(1, i)).collect::<Vec<_>>(), "entry 10 is gone");
        assert_eq!(last, Some(log_id(1, 9)));
        // A leader sends entry 10 again (and more); they go where the torn record was.
        log.append_and_wait(entries(2, 10..13)).await.expect("append after the cut");
        drop(log);
        let mut log = LogStore::open(&wal, None).expect("reopen");
        let (ids, _, last) = contents(&mut log).await;
        let want: Vec<LogId> = (1..10).map(|i| log_id(1, i)).chain((10..13).map(|i| log_id(2, i))).collect();
        assert_eq!(ids, want);
        assert_eq!(last, Some(log_id(2, 12)));
    });
}

#[test]
fn stale_bytes_after_the_end_never_pass_for_records() {
    rt().block_on(async {
        let dir = tempfile::tempdir().expect("tmp");
        let wal = dir.path().join("wal");
        let mut log = LogStore::open(&wal, None).expect("open");
        log.append_and_wait(entries(1, 1..6)).await.expect("append");
        drop(log);
        // Copy the records of entries 1 and 2 (valid frames, valid bodies) behind the end, as
        // an unsynced earlier write could have left them: their chained CRCs do not fit there.
        // (Taken as records they would replace entries 1.. and leave only 1 and 2.)
        let seg = segments(&wal).pop().expect("a segment");
        let recs = records(&seg);
        assert_eq!(recs.len(), 5);
        let mut b = std::fs::read(&seg).expect("read");
        let (first, _) = recs[0];
        let (second, second_len) = recs[1];
        let (last_off, last_len) = recs[4];
        let end = last_off + 8 + last_len;
        let copy = b[first..second + 8 + second_len].to_vec();
        b[end..end + copy.len()].copy_from_slice(&copy);
        std::fs::write(&seg, b).expect("write");
        let mut log = LogStore::open(&wal, None).expect("reopen");
        let (ids, _, _) = contents(&mut log).await;
        assert_eq!(ids, (1..6).map(|i| log_id(1, i)).collect::<Vec<_>>());
    });
}

#[test]
fn a_corrupt_earlier_segment_refuses_to_open() {
    rt().block_on(async {
        let dir = tempfile::tempdir().expect("tmp");
        let wal = dir.path().join("wal");
        let mut log = open(&wal);
        append_in_tens(&mut log, 1, 1..200).await;
        drop(log);
        let segs = segments(&wal);
        assert!(segs.len() >= 3, "{segs:?}");
        let (off, len) = records(&segs[1])[2];
        flip_byte(&segs[1], off + 8 + len - 1);
        let e = match LogStore::open_with(&wal, None, LogOptions { segment_bytes: SMALL }) {
            Ok(_) => panic!("a corrupt segment must not open"),
            Err(e) => e.to_string(),
        };
        assert!(e.contains("corrupt record"), "{e}");
        // A missing segment in the middle is refused too.
        let segs = segments(&wal);
        std::fs::remove_file(&segs[1]).expect("remove");
        assert!(segs.len() >= 3);
        let e = match LogStore::open_with(&wal, None, LogOptions { segment_bytes: SMALL }) {
            Ok(_) => panic!("a gap in the segments must not open"),
            Err(e) => e.to_string(),
        };
        assert!(e.contains("missing"), "{e}");
    });
}

#[test]
fn the_redb_log_of_earlier_versions_is_migrated() {
    rt().block_on(async {
        let dir = tempfile::tempdir().expect("tmp");
        let legacy = dir.path().join("raft-log.redb");
        let vote = Vote::new(4, 2);
        let old: Vec<(u64, Vec<u8>)> = (1..50).map(|i| (i, codec::encode_entry(&entry(4, i)))).collect();
        cairn_raft::legacy_log::write_for_tests(&legacy, Some(&codec::encode_vote(&vote)), &old).expect("legacy");
        let wal = dir.path().join("wal");
        let mut log = LogStore::open(&wal, Some(&legacy)).expect("open with migration");
        assert!(!legacy.exists(), "the redb file is removed once copied");
        let (ids, _, last) = contents(&mut log).await;
        assert_eq!(ids, (1..50).map(|i| log_id(4, i)).collect::<Vec<_>>());
        assert_eq!(last, Some(log_id(4, 49)));
        assert_eq!(log.read_vote().await.expect("vote"), Some(vote));
        log.append_and_wait(entries(4, 50..52)).await.expect("append after migration");
        drop(log);
        let mut log = LogStore::open(&wal, Some(&legacy)).expect("reopen");
        assert_eq!(contents(&mut log).await.2, Some(log_id(4, 51)));
    });
}
