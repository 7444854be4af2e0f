//! A store and its model side by side: every request goes to both and every answer is
//! compared field by field.

use std::path::PathBuf;

use cairn_storage::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::gen::{Gen, Revs, KEYS, MISSING_LEASE};
use crate::model::{range_of, Model};

pub const MAX_TXN_OPS: usize = 4;

/// The seeds to run: `CAIRN_SEED` alone, else `CAIRN_SEEDS` (default `default_count`) seeds
/// from a random base. Each run prints its seed.
pub fn seeds(default_count: u64) -> Vec<u64> {
    if let Ok(s) = std::env::var("CAIRN_SEED") {
        return vec![s.trim().parse().expect("CAIRN_SEED must be a u64")];
    }
    let count =
        std::env::var("CAIRN_SEEDS").ok().map_or(default_count, |s| s.parse().expect("CAIRN_SEEDS must be a u64"));
    let base: u64 = rand::thread_rng().gen();
    (0..count).map(|i| base.wrapping_add(i.wrapping_mul(0x9E37_79B9_7F4A_7C15))).collect()
}

pub fn ops_per_seed(default: usize) -> usize {
    std::env::var("CAIRN_OPS").ok().map_or(default, |s| s.parse().expect("CAIRN_OPS must be a number"))
}

/// The checks the server makes before proposing (what `validate` offers).
pub fn validate_command(cmd: &Command) -> Result<(), RequestError> {
    match cmd {
        Command::Put(p) => validate::check_put(p),
        Command::DeleteRange(d) => validate::check_delete(d),
        Command::Txn(x) => validate::check_txn(x, MAX_TXN_OPS),
        Command::Compact(_) | Command::LeaseRevoke { .. } | Command::Alarm { .. } => Ok(()),
        Command::LeaseGrant { ttl_secs, .. } => lease::check_grant(*ttl_secs),
        Command::Auth(_) | Command::AuthChecked { .. } => Ok(()),
    }
}

pub struct Harness {
    pub seed: u64,
    pub rng: StdRng,
    dir: tempfile::TempDir,
    path: PathBuf,
    pub store: Option<Store>,
    pub model: Model,
    /// Raft index of the last applied entry, and the raft state stored with it.
    pub applied: (u64, Vec<u8>),
    pub step: usize,
    pub stats: Stats,
}

#[derive(Debug, Default)]
pub struct Stats {
    pub commands: usize,
    pub invalid: usize,
    pub request_errors: usize,
    pub revisions: usize,
    pub ranges: usize,
    pub compactions: usize,
    pub compaction_completed: usize,
    pub reopens: usize,
    pub snapshots: usize,
    pub lease_grants: usize,
    /// Revokes that deleted keys (made a revision).
    pub lease_revokes_with_keys: usize,
}

fn compaction_opts(rng: &mut StdRng) -> StoreOptions {
    StoreOptions { compaction_batch_rows: rng.gen_range(1..=8) }
}

impl Harness {
    pub fn new(seed: u64) -> Harness {
        let mut rng = StdRng::seed_from_u64(seed);
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("state.redb");
        let store = Store::open(&path, compaction_opts(&mut rng)).expect("open");
        Harness {
            seed,
            rng,
            dir,
            path,
            store: Some(store),
            model: Model::new(MAX_TXN_OPS),
            applied: (0, Vec::new()),
            step: 0,
            stats: Stats::default(),
        }
    }

    pub fn store(&self) -> &Store {
        self.store.as_ref().expect("store open")
    }

    /// Context for assertion messages: how to replay this failure.
    pub fn ctx(&self, what: &str) -> String {
        format!("CAIRN_SEED={} step {}: {what}", self.seed, self.step)
    }

    pub fn gen(&mut self) -> Gen<'_> {
        let revs = Revs { current: self.model.current(), compacted: self.model.compacted };
        Gen { rng: &mut self.rng, revs }
    }

    /// Applies `cmds` as one raft batch (with blank entries mixed in), comparing every
    /// outcome and event with the model. Commands that fail validation are not proposed.
    pub fn apply(&mut self, cmds: Vec<Command>, durable: bool) {
        let mut entries: Vec<(u64, Option<Command>)> = Vec::new();
        let mut index = self.applied.0;
        for cmd in cmds {
            let enc = cmd.encode();
            assert_eq!(Command::decode(&enc).as_ref(), Ok(&cmd), "{}", self.ctx("command codec round trip"));
            let v = validate_command(&cmd);
            assert_eq!(v, self.model.validate(&cmd), "{}", self.ctx(&format!("validation of {cmd:?}")));
            if v.is_err() {
                self.stats.invalid += 1;
                continue;
            }
            if self.rng.gen_range(0..10) == 0 {
                index += 1;
                entries.push((index, None));
            }
            index += 1;
            entries.push((index, Some(cmd)));
        }
        if entries.is_empty() {
            return;
        }
        let raft_state = format!("raft-state-{index}-{}", self.seed).into_bytes();
        let batch: Vec<ApplyEntry<'_>> =
            entries.iter().map(|(i, c)| ApplyEntry { index: *i, command: c.as_ref() }).collect();
        let out = self.store().apply_batch(&batch, &raft_state, durable).expect("apply_batch");
        self.applied = (index, raft_state);
        assert_eq!(out.applied.len(), entries.len(), "{}", self.ctx("one outcome per entry"));
        let mut want_events = Vec::new();
        for ((_, cmd), got) in entries.iter().zip(&out.applied) {
            let Some(cmd) = cmd else {
                assert_eq!(got, &None, "{}", self.ctx("blank entry has no outcome"));
                continue;
            };
            self.stats.commands += 1;
            let (want, events) = self.model.apply(cmd);
            if want.result.is_err() {
                self.stats.request_errors += 1;
            }
            if matches!(cmd, Command::Compact(_)) && want.result.is_ok() {
                self.stats.compactions += 1;
            }
            if matches!(cmd, Command::LeaseGrant { .. }) && want.result.is_ok() {
                self.stats.lease_grants += 1;
            }
            if matches!(cmd, Command::LeaseRevoke { .. }) && events.is_some() {
                self.stats.lease_revokes_with_keys += 1;
            }
            if let Some(evs) = events {
                self.stats.revisions += 1;
                want_events.push((want.revision, evs));
            }
            assert_eq!(got.as_ref(), Some(&want), "{}", self.ctx(&format!("outcome of {cmd:?}")));
        }
        assert_eq!(out.events, want_events, "{}", self.ctx("events of the batch"));
        self.check_revisions();
        check_leases(self.store(), &self.model, &|w| self.ctx(w));
    }

    pub fn check_revisions(&self) {
        let s = self.store();
        assert_eq!(s.current_revision(), self.model.current(), "{}", self.ctx("current revision"));
        assert_eq!(s.compact_revision(), self.model.compacted, "{}", self.ctx("compact revision"));
    }

    /// One Range through a fresh read view, compared with the model.
    pub fn range(&mut self, req: &RangeRequest) {
        self.stats.ranges += 1;
        let view = self.store().read().expect("read view");
        assert_eq!(view.current_revision(), self.model.current(), "{}", self.ctx("view current revision"));
        assert_eq!(view.compact_revision(), self.model.compacted, "{}", self.ctx("view compact revision"));
        let want = Model::validate_key(&req.key).and_then(|_| self.model.range(req));
        let got = match validate::check_range(req) {
            Err(e) => Err(e),
            Ok(()) => view.range(req).expect("range storage error"),
        };
        assert_eq!(got, want, "{}", self.ctx(&format!("range {req:?}")));
    }

    /// Every key at every kept revision, whole-keyspace and per key, plus the errors just
    /// outside the kept window.
    pub fn check_all_revisions(&self) {
        check_store_against_model(self.store(), &self.model, &|w| self.ctx(w));
    }

    /// Runs physical compaction: `Some(n)` steps at most, or `None` until done. When done,
    /// the kept rows must be exactly the ones the model says.
    pub fn compact_steps(&mut self, limit: Option<usize>) {
        let mut done = false;
        let mut n = 0;
        while !done && limit.is_none_or(|l| n < l) {
            done = self.store().compact_step().expect("compact_step");
            n += 1;
        }
        self.check_rows(done);
    }

    /// Rows in the store: between what a complete compaction keeps and everything written;
    /// exactly the former when `complete`.
    pub fn check_rows(&mut self, complete: bool) {
        let s = self.store();
        let counts = s.debug_row_counts().expect("row counts");
        let rows = s.debug_index_rows().expect("index rows");
        assert_eq!(counts.key_index, rows.len() as u64);
        assert_eq!(counts.key_index, counts.revs, "{}", self.ctx("key index and revision log have the same rows"));
        let mut kept: Vec<(Vec<u8>, u64, u64, bool)> =
            self.model.rows_after_compaction().into_iter().map(|(m, s, k, t)| (k, m as u64, s as u64, t)).collect();
        kept.sort();
        let all = self.model.all_rows().len();
        if complete {
            self.stats.compaction_completed += 1;
            assert_eq!(rows, kept, "{}", self.ctx(&format!("rows after compaction to {}", self.model.compacted)));
        } else {
            assert!(
                rows.len() >= kept.len() && rows.len() <= all,
                "{}",
                self.ctx(&format!("{} rows, want {}..={all}", rows.len(), kept.len()))
            );
        }
    }

    /// Drops the store and opens the file again (no crash: every commit is visible).
    pub fn reopen(&mut self) {
        self.stats.reopens += 1;
        drop(self.store.take());
        let opts = compaction_opts(&mut self.rng);
        self.store = Some(Store::open(&self.path, opts).expect("reopen"));
        self.check_revisions();
        assert_eq!(
            self.store().applied().expect("applied"),
            self.applied,
            "{}",
            self.ctx("applied index after reopen")
        );
    }

    /// Exports a snapshot, imports it into a fresh store that already holds other data, checks
    /// the copy and continues on it.
    pub fn snapshot_round_trip(&mut self) {
        self.stats.snapshots += 1;
        let mut buf = Vec::new();
        let idx = self.store().export_snapshot(&mut buf).expect("export");
        assert_eq!(idx, self.applied.0, "{}", self.ctx("exported applied index"));
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("imported.redb");
        let copy = Store::open(&path, compaction_opts(&mut self.rng)).expect("open target");
        // Something to be replaced.
        let junk = Command::Put(PutRequest { key: b"junk".to_vec(), value: b"j".to_vec(), ..Default::default() });
        copy.apply_batch(&[ApplyEntry { index: 99_999, command: Some(&junk) }], b"junk", false).expect("junk");
        copy.import_snapshot(buf.as_slice()).expect("import");
        assert_eq!(copy.applied().expect("applied"), self.applied, "{}", self.ctx("applied after import"));
        assert_eq!(
            copy.debug_index_rows().expect("rows"),
            self.store().debug_index_rows().expect("rows"),
            "{}",
            self.ctx("rows after import")
        );
        check_store_against_model(&copy, &self.model, &|w| self.ctx(&format!("imported: {w}")));
        // Continue on the copy, from its own file.
        drop(self.store.take());
        self.store = Some(copy);
        self.dir = dir;
        self.path = path;
    }
}

/// Compares a whole store with the model: revisions, every kept revision (whole keyspace and
/// each key alone), and the errors at both ends of the window.
pub fn check_store_against_model(store: &Store, model: &Model, ctx: &dyn Fn(&str) -> String) {
    let view = store.read().expect("read view");
    assert_eq!(view.current_revision(), model.current(), "{}", ctx("current revision"));
    assert_eq!(view.compact_revision(), model.compacted, "{}", ctx("compact revision"));
    let first = model.compacted.max(1);
    for rev in first..=model.current() {
        let all = RangeRequest { key: vec![0], range_end: vec![0], revision: rev, ..Default::default() };
        assert_eq!(
            view.range(&all).expect("range"),
            Ok(range_of(model.state(rev), &all)),
            "{}",
            ctx(&format!("all keys at {rev}"))
        );
        for k in KEYS {
            let one = RangeRequest { key: k.to_vec(), revision: rev, ..Default::default() };
            assert_eq!(
                view.range(&one).expect("range"),
                Ok(range_of(model.state(rev), &one)),
                "{}",
                ctx(&format!("key {k:?} at {rev}"))
            );
        }
    }
    check_leases(store, model, ctx);
    if model.compacted > 1 {
        let below = RangeRequest { key: b"a".to_vec(), revision: model.compacted - 1, ..Default::default() };
        assert_eq!(
            view.range(&below).expect("range"),
            Err(RequestError::Compacted { compact_revision: model.compacted }),
            "{}",
            ctx("read below the compact revision")
        );
    }
    let future = RangeRequest { key: b"a".to_vec(), revision: model.current() + 1, ..Default::default() };
    assert_eq!(
        view.range(&future).expect("range"),
        Err(RequestError::FutureRevision { current_revision: model.current() }),
        "{}",
        ctx("read above the current revision")
    );
}

/// The leases of a store against the model's: the same IDs and TTLs, and each with exactly
/// the live keys that carry it (the `LEASE_KEYS` table agrees with the key index).
pub fn check_leases(store: &Store, model: &Model, ctx: &dyn Fn(&str) -> String) {
    let got: Vec<(LeaseId, i64)> = store.leases().expect("leases").into_iter().map(|r| (r.id, r.ttl_secs)).collect();
    let want: Vec<(LeaseId, i64)> = model.leases.iter().map(|(&id, &ttl)| (id, ttl)).collect();
    assert_eq!(got, want, "{}", ctx("leases"));
    for &id in model.leases.keys().chain(std::iter::once(&MISSING_LEASE)) {
        let info = store.lease(id, true).expect("lease");
        let want = model.leases.get(&id).map(|_| model.lease_keys(id));
        assert_eq!(info.map(|i| i.keys), want, "{}", ctx(&format!("keys of lease {id}")));
    }
}
