//! Hand-written lease cases: the exact revisions, sub-revisions and events of a revoke, the
//! error order of a grant, and leases surviving a reopen and a snapshot.

use cairn_storage::lease::{LeaseInfo, LeaseRecord};
use cairn_storage::*;

/// A store in a temp dir that applies one command per raft entry.
struct T {
    dir: tempfile::TempDir,
    store: Option<Store>,
    index: u64,
}

impl T {
    fn new() -> T {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(&dir.path().join("s.redb"), StoreOptions::default()).expect("open");
        T { dir, store: Some(store), index: 0 }
    }
    fn s(&self) -> &Store {
        self.store.as_ref().expect("open")
    }
    /// Applies `cmd`; returns its outcome and the events of the revision it made, if any.
    fn apply(&mut self, cmd: Command) -> (Applied, Option<(Revision, Vec<Event>)>) {
        self.index += 1;
        let out = self
            .s()
            .apply_batch(&[ApplyEntry { index: self.index, command: Some(&cmd) }], b"rs", false)
            .expect("apply");
        assert!(out.events.len() <= 1, "one command makes at most one revision");
        (out.applied.into_iter().next().flatten().expect("one outcome"), out.events.into_iter().next())
    }
    fn put(&mut self, key: &str, lease: LeaseId) -> Applied {
        let p = PutRequest { key: key.into(), value: b"v".to_vec(), lease, ..Default::default() };
        self.apply(Command::Put(p)).0
    }
    fn keys(&self) -> Vec<String> {
        let r = RangeRequest { key: vec![0], range_end: vec![0], keys_only: true, ..Default::default() };
        let resp = self.s().read().expect("view").range(&r).expect("storage").expect("range");
        resp.kvs.iter().map(|kv| String::from_utf8_lossy(&kv.key).into_owned()).collect()
    }
    fn lease_keys(&self, id: LeaseId) -> Option<Vec<String>> {
        let info = self.s().lease(id, true).expect("lease")?;
        Some(info.keys.iter().map(|k| String::from_utf8_lossy(k).into_owned()).collect())
    }
}

fn grant(id: LeaseId, ttl_secs: i64) -> Command {
    Command::LeaseGrant { id, ttl_secs }
}

fn revoke(id: LeaseId) -> Command {
    Command::LeaseRevoke { id }
}

fn deleted(key: &str, rev: Revision) -> Event {
    Event { kind: EventKind::Delete, kv: KeyValue { key: key.into(), mod_revision: rev, ..Default::default() } }
}

#[test]
fn revoke_deletes_every_key_in_one_revision_in_key_order() {
    let mut t = T::new();
    let (a, ev) = t.apply(grant(5, 10));
    assert_eq!(a, Applied { revision: 1, result: Ok(CommandResponse::LeaseGrant { id: 5, ttl_secs: 10 }) });
    assert_eq!(ev, None, "a grant makes no revision");
    // Attached in an order other than key order; one key without the lease.
    for k in ["c", "a", "b"] {
        assert!(t.put(k, 5).result.is_ok());
    }
    t.put("x", 0);
    assert_eq!(t.lease_keys(5), Some(vec!["a".into(), "b".into(), "c".into()]));
    assert_eq!(t.s().current_revision(), 5);

    let (a, ev) = t.apply(revoke(5));
    assert_eq!(a, Applied { revision: 6, result: Ok(CommandResponse::LeaseRevoke { id: 5 }) });
    assert_eq!(ev, Some((6, vec![deleted("a", 6), deleted("b", 6), deleted("c", 6)])));
    let tombstones: Vec<_> = t.s().debug_index_rows().expect("rows").into_iter().filter(|r| r.1 == 6).collect();
    assert_eq!(
        tombstones,
        vec![(b"a".to_vec(), 6, 0, true), (b"b".to_vec(), 6, 1, true), (b"c".to_vec(), 6, 2, true)],
        "one tombstone per key, sub-revisions in key order"
    );
    assert_eq!(t.keys(), ["x"]);
    assert_eq!(t.s().lease(5, true).expect("lease"), None);
    assert_eq!(t.s().leases().expect("leases"), vec![]);
    // Gone: revoking again, or putting with it, fails without a revision.
    assert_eq!(t.apply(revoke(5)).0, Applied { revision: 6, result: Err(RequestError::LeaseNotFound { lease: 5 }) });
    assert_eq!(t.put("y", 5), Applied { revision: 6, result: Err(RequestError::LeaseNotFound { lease: 5 }) });
}

#[test]
fn revoke_without_keys_makes_no_revision() {
    let mut t = T::new();
    t.put("k", 0);
    t.apply(grant(-8, 3));
    let (a, ev) = t.apply(revoke(-8));
    assert_eq!((a, ev), (Applied { revision: 2, result: Ok(CommandResponse::LeaseRevoke { id: -8 }) }, None));
    assert_eq!(t.s().leases().expect("leases"), vec![]);
}

#[test]
fn grant_errors_in_etcd_order_consume_no_revision() {
    let mut t = T::new();
    t.put("k", 0);
    let err = |t: &mut T, cmd| t.apply(cmd).0;
    assert_eq!(
        err(&mut t, grant(0, 10)),
        Applied { revision: 2, result: Err(RequestError::LeaseNotFound { lease: 0 }) }
    );
    assert_eq!(
        t.apply(grant(9, 9_000_000_000)).0.result,
        Ok(CommandResponse::LeaseGrant { id: 9, ttl_secs: 9_000_000_000 })
    );
    // The TTL limit is checked before the ID's existence (etcd's lessor.Grant).
    assert_eq!(
        err(&mut t, grant(9, 9_000_000_001)).result,
        Err(RequestError::LeaseTtlTooLarge { ttl_secs: 9_000_000_001 })
    );
    assert_eq!(err(&mut t, grant(9, 5)), Applied { revision: 2, result: Err(RequestError::LeaseExist { lease: 9 }) });
    // The failed grant did not change the lease.
    assert_eq!(
        t.s().lease(9, false).expect("lease"),
        Some(LeaseInfo { record: LeaseRecord { id: 9, ttl_secs: 9_000_000_000, remaining_ttl_secs: 0 }, keys: vec![] })
    );
}

#[test]
fn keys_follow_puts_deletes_and_txns() {
    let mut t = T::new();
    t.apply(grant(1, 10));
    t.apply(grant(2, 10));
    t.put("a", 1);
    t.put("b", 1);
    t.put("c", 1);
    // Moved to another lease, kept by ignore_lease, detached by a put without lease, deleted.
    t.put("a", 2);
    let keep = PutRequest { key: b"b".to_vec(), value: b"w".to_vec(), ignore_lease: true, ..Default::default() };
    assert!(t.apply(Command::Put(keep)).0.result.is_ok());
    let del = DeleteRangeRequest { key: b"c".to_vec(), range_end: vec![], prev_kv: false };
    assert!(t.apply(Command::DeleteRange(del)).0.result.is_ok());
    let txn = TxnRequest {
        compare: vec![],
        success: vec![RequestOp::Put(PutRequest { key: b"d".to_vec(), lease: 1, ..Default::default() })],
        failure: vec![],
    };
    assert!(t.apply(Command::Txn(txn)).0.result.is_ok());
    assert_eq!(t.lease_keys(1), Some(vec!["b".into(), "d".into()]));
    assert_eq!(t.lease_keys(2), Some(vec!["a".into()]));
    let rev = t.s().current_revision();
    let (_, ev) = t.apply(revoke(1));
    assert_eq!(ev, Some((rev + 1, vec![deleted("b", rev + 1), deleted("d", rev + 1)])));
    assert_eq!(t.keys(), ["a"]);
}

#[test]
fn leases_survive_reopen_and_snapshot() {
    let mut t = T::new();
    t.apply(grant(3, 7));
    t.apply(grant(i64::MAX, 2));
    t.put("k", i64::MAX);
    let want = t.s().leases().expect("leases");
    assert_eq!(want.iter().map(|r| (r.id, r.ttl_secs)).collect::<Vec<_>>(), vec![(3, 7), (i64::MAX, 2)]);
    let path = t.dir.path().join("s.redb");
    drop(t.store.take());
    t.store = Some(Store::open(&path, StoreOptions::default()).expect("reopen"));
    assert_eq!(t.s().leases().expect("leases"), want);
    let mut snap = Vec::new();
    t.s().export_snapshot(&mut snap).expect("export");
    let dir = tempfile::tempdir().expect("temp dir");
    let copy = Store::open(&dir.path().join("c.redb"), StoreOptions::default()).expect("open");
    copy.import_snapshot(snap.as_slice()).expect("import");
    assert_eq!(copy.leases().expect("leases"), want);
    assert_eq!(copy.lease(i64::MAX, true).expect("lease").map(|i| i.keys), Some(vec![b"k".to_vec()]));
    // The largest ID's keys are found (no overflow at the end of the ID space).
    let (_, ev) = t.apply(revoke(i64::MAX));
    assert_eq!(ev, Some((3, vec![deleted("k", 3)])));
}
