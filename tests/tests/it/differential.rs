//! Differential tests: every scenario runs against a fresh real etcd 3.5.1 and a fresh Cairn
//! (or a second etcd with `CAIRN_DIFF_AGAINST=etcd`), started on free ports, and every response
//! is compared field by field (see `cairn_tests::diff`). Steps marked with an expected error or
//! revision must also get exactly that from real etcd, so a scenario cannot silently test
//! nothing; every error step is followed by a read of the whole store to show it unchanged.
//!
//! Revisions are absolute: a fresh store is at revision 1 and the first write gets revision 2.

use cairn_tests::diff::{
    compact, delete, put, range, range_all, run_differential, run_differential_with_args, txn, Cmp, CompareOp, Script,
    SortOrder, SortTarget, TxnReq,
};

const INVALID_ARGUMENT: &str = "InvalidArgument";
const OUT_OF_RANGE: &str = "OutOfRange";
const NOT_FOUND: &str = "NotFound";

const EMPTY_KEY: &str = "etcdserver: key is not provided";
const KEY_NOT_FOUND: &str = "etcdserver: key not found";
const VALUE_PROVIDED: &str = "etcdserver: value is provided";
const LEASE_PROVIDED: &str = "etcdserver: lease is provided";
const TOO_MANY_OPS: &str = "etcdserver: too many operations in txn request";
const DUPLICATE_KEY: &str = "etcdserver: duplicate key given in txn request";
const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";
const FUTURE_REV: &str = "etcdserver: mvcc: required revision is a future revision";
const LEASE_NOT_FOUND: &str = "etcdserver: requested lease not found";
const TOO_LARGE: &str = "etcdserver: request is too large";

const OPS: [CompareOp; 4] = [CompareOp::Equal, CompareOp::Greater, CompareOp::Less, CompareOp::NotEqual];
const TARGETS: [SortTarget; 5] =
    [SortTarget::Key, SortTarget::Version, SortTarget::Create, SortTarget::Mod, SortTarget::Value];
const ORDERS: [SortOrder; 3] = [SortOrder::None, SortOrder::Ascend, SortOrder::Descend];

/// A lease id that no server has granted.
const MISSING_LEASE: i64 = 0x7e57_1ea5e;

/// A read-only txn that shows whether `cmp` holds.
fn probe(cmp: Cmp) -> TxnReq {
    txn().when([cmp]).then_op(range("probe-then")).else_op(range("probe-else"))
}

/// `n` puts of distinct keys `<prefix>000`, `<prefix>001`, ...
fn puts(prefix: &str, n: usize) -> Vec<cairn_tests::diff::Req> {
    (0..n).map(|i| put(format!("{prefix}{i:03}"), "v").into()).collect()
}

// ---------------------------------------------------------------- basics

#[tokio::test]
async fn put_get_delete_basics() {
    let mut s = Script::new();
    s.at_rev(1, range("a"))
        .at_rev(2, put("a", "1"))
        .at_rev(2, range("a"))
        .at_rev(3, put("a", "2"))
        .step(range("a"))
        .at_rev(4, put("b", "1"))
        .step(range_all())
        .at_rev(5, delete("a"))
        .step(range("a"))
        .note("delete of a missing key: no new revision", delete("a"))
        .at_rev(5, delete("never-existed"))
        .note("re-create after delete resets version, new create_revision", put("a", "3"))
        .at_rev(6, range("a"))
        .note("empty value", put("empty", ""))
        .step(range("empty"))
        .note("binary key and value", put(b"\x00\x01bin\xff".to_vec(), b"\xff\x00\x80".to_vec()))
        .step(range(b"\x00\x01bin\xff".to_vec()))
        .note("same value again still makes a new revision", put("b", "1"))
        .step(range("b"))
        .dump();
    run_differential("put_get_delete_basics", &s).await;
}

#[tokio::test]
async fn recreate_after_delete_resets_version() {
    let mut s = Script::new();
    s.ok(put("k", "1")).ok(put("k", "2")).ok(put("k", "3")).step(range("k"));
    s.step(delete("k").prev_kv()).step(range("k"));
    s.ok(put("k", "4")).step(range("k")).ok(put("k", "5")).step(range("k"));
    for rev in 1..=8 {
        s.step(range("k").rev(rev));
    }
    s.note("delete and re-create in one txn is a duplicate", txn().then_op(delete("k")).then_op(put("k", "x")));
    s.note("re-create inside a txn after a delete", delete("k"));
    s.step(txn().when([Cmp::version("k", CompareOp::Equal, 0)]).then_op(put("k", "6")).then_op(range("k")));
    s.dump();
    run_differential("recreate_after_delete_resets_version", &s).await;
}

#[tokio::test]
async fn prev_kv_on_put_and_delete() {
    let mut s = Script::new();
    s.note("no previous value", put("a", "1").prev_kv())
        .note("previous value returned", put("a", "2").prev_kv())
        .note("without prev_kv nothing returned", put("a", "3"))
        .ok(put("a/1", "x"))
        .ok(put("a/2", "y"))
        .step(delete("a").prev_kv())
        .step(delete("a/").prefix().prev_kv())
        .note("nothing to delete", delete("a/").prefix().prev_kv())
        .ok(put("b", "1"))
        .note("delete without prev_kv", delete("b"))
        .ok(put("c", "1"))
        .step(txn().then_op(put("c", "2").prev_kv()).then_op(delete("c").prev_kv()))
        .dump();
    run_differential("prev_kv_on_put_and_delete", &s).await;
}

#[tokio::test]
async fn delete_range_variants() {
    let mut s = Script::new();
    for k in ["a", "a/1", "a/2", "a/3", "b", "b/1", "c", "d"] {
        s.ok(put(k, k));
    }
    s.step(delete("a/").end("a/3").prev_kv())
        .step(range_all().keys_only())
        .note("end before key deletes nothing", delete("c").end("b"))
        .step(delete("b").prefix())
        .step(delete("c").from_key().prev_kv())
        .step(range_all())
        .ok(put("x", "1"))
        .ok(put("y", "1"))
        .note("every key", delete("").prefix().prev_kv())
        .step(range_all())
        .step(range_all().rev(13))
        .dump();
    run_differential("delete_range_variants", &s).await;
}

// ---------------------------------------------------------------- ranges

#[tokio::test]
async fn range_prefix_and_from_key() {
    let mut s = Script::new();
    let keys: [&[u8]; 11] =
        [b"a", b"a/1", b"a/2", b"a/3", b"a0", b"ab", b"b", b"b/1", b"\xff", b"\xff\xff", b"\x00\x01"];
    for k in keys {
        s.ok(put(k.to_vec(), "v"));
    }
    s.step(range("a").prefix())
        .step(range("a/").prefix())
        .step(range("a").end("b"))
        .step(range("a/").end("a/3"))
        .step(range("a/2").from_key())
        .step(range(vec![0]).from_key())
        .note("end before key", range("b").end("a"))
        .note("end equal to key", range("a").end("a"))
        .step(range(b"\xff".to_vec()).prefix())
        .step(range(b"\xff\xff".to_vec()).prefix())
        .note("empty key with prefix: every key", range("").prefix())
        .step(range(vec![0]).end(vec![0, 2]))
        .step(range("a/1").end("a/1\x00"))
        .step(range("zzz").from_key())
        .step(range("a").prefix().serializable())
        .dump();
    run_differential("range_prefix_and_from_key", &s).await;
}

#[tokio::test]
async fn range_limit_more_count() {
    let mut s = Script::new();
    for i in 1..=5 {
        s.ok(put(format!("k{i}"), format!("v{i}")));
    }
    s.ok(put("z", "z"));
    for limit in [1, 2, 4, 5, 6, -1] {
        s.step(range("k").prefix().limit(limit));
    }
    s.step(range("k3").from_key().limit(2))
        .step(range("k").prefix().limit(2).keys_only())
        .step(range("k").prefix().limit(2).count_only())
        .step(range("k1").limit(1))
        .step(range("nope").limit(1))
        .ok(delete("k2"))
        .step(range("k").prefix().limit(2))
        .step(range("k").prefix().limit(2).rev(4))
        .step(range("k").prefix().limit(10).rev(7))
        .dump();
    run_differential("range_limit_more_count", &s).await;
}

#[tokio::test]
async fn range_historic_revisions() {
    let mut s = Script::new();
    s.ok(put("a", "1"))
        .ok(put("a", "2"))
        .ok(put("b", "1"))
        .ok(delete("a"))
        .ok(put("a", "3"))
        .ok(txn().then_op(put("c", "1")).then_op(put("d", "1")))
        .ok(delete("b").prefix());
    for rev in 1..=8 {
        s.step(range_all().rev(rev)).step(range("a").rev(rev));
    }
    s.step(range("a").rev(-1))
        .step(range("a").prefix().rev(4).serializable())
        .step(range("c").end("e").rev(7).count_only())
        .step(range_all().rev(6).limit(1))
        .dump();
    run_differential("range_historic_revisions", &s).await;
}

/// Data for the sort and filter scenarios: five keys whose version, create/mod revision and
/// value orders all differ from key order, with ties (version, value).
fn sort_data(s: &mut Script) {
    s.at_rev(2, put("k1", "v3"))
        .at_rev(3, put("k2", "v1"))
        .at_rev(4, put("k3", "v2"))
        .at_rev(5, put("k2", "v1"))
        .at_rev(6, put("k4", "v2"))
        .at_rev(7, put("k1", "v3"))
        .at_rev(8, put("k5", "v0"))
        .at_rev(9, put("k3", "v2"))
        .at_rev(10, put("k3", "v2"))
        .at_rev(11, put("other", "x"));
}

#[tokio::test]
async fn range_sort_orders_and_targets() {
    let mut s = Script::new();
    sort_data(&mut s);
    for target in TARGETS {
        for order in ORDERS {
            s.step(range("k").prefix().sort(target, order));
        }
    }
    for target in TARGETS {
        for order in ORDERS {
            s.step(range("k").prefix().sort(target, order).limit(2));
        }
    }
    s.note("sort on one key", range("k3").sort(SortTarget::Value, SortOrder::Descend))
        .step(range("k").prefix().sort(SortTarget::Value, SortOrder::Ascend).keys_only())
        .step(range("k").prefix().sort(SortTarget::Mod, SortOrder::Descend).count_only())
        .step(range("k").prefix().sort(SortTarget::Version, SortOrder::Descend).rev(6))
        .step(range("k").prefix().sort(SortTarget::Create, SortOrder::None).rev(6).limit(2))
        .step(range_all().sort(SortTarget::Mod, SortOrder::Ascend).limit(3))
        .dump();
    run_differential("range_sort_orders_and_targets", &s).await;
}

#[tokio::test]
async fn range_keys_only_count_only_serializable() {
    let mut s = Script::new();
    sort_data(&mut s);
    s.step(range("k").prefix().keys_only())
        .step(range("k").prefix().count_only())
        .step(range("k").prefix().keys_only().count_only())
        .step(range("k3").keys_only())
        .step(range("nope").count_only())
        .step(range("k").prefix().serializable())
        .step(range("k").prefix().serializable().rev(5))
        .step(range("k").prefix().serializable().keys_only().limit(2))
        .step(range("k").prefix().serializable().count_only())
        .dump();
    run_differential("range_keys_only_count_only_serializable", &s).await;
}

#[tokio::test]
async fn range_mod_and_create_revision_filters() {
    let mut s = Script::new();
    sort_data(&mut s);
    let all = || range("k").prefix();
    s.step(all().min_mod(7))
        .step(all().max_mod(6))
        .step(all().min_mod(6).max_mod(8))
        .step(all().min_create(4))
        .step(all().max_create(4))
        .step(all().min_create(3).max_create(6))
        .step(all().min_mod(6).max_create(4))
        .note("filters then limit", all().min_mod(6).limit(1))
        .step(all().max_mod(8).limit(2))
        .step(all().min_mod(7).count_only())
        .step(all().min_create(4).keys_only())
        .step(all().min_mod(5).sort(SortTarget::Mod, SortOrder::Descend).limit(2))
        .step(all().min_mod(100))
        .step(all().max_create(1))
        .step(all().min_mod(3).rev(6))
        .step(range("k3").min_mod(10))
        .step(range("k3").min_mod(11))
        .dump();
    run_differential("range_mod_and_create_revision_filters", &s).await;
}

// ---------------------------------------------------------------- put flags

#[tokio::test]
async fn put_ignore_value_and_ignore_lease() {
    let mut s = Script::new();
    s.ok(put("a", "1"))
        .note("keeps the value", put("a", "").ignore_value())
        .step(range("a"))
        .step(put("a", "").ignore_value().prev_kv())
        .note("keeps the lease (none)", put("a", "2").ignore_lease())
        .step(range("a"))
        .step(put("a", "").ignore_value().ignore_lease().prev_kv())
        .step(range("a"))
        .step(txn().then_op(put("a", "").ignore_value()).then_op(range("a")))
        .dump();
    run_differential("put_ignore_value_and_ignore_lease", &s).await;
}

// ---------------------------------------------------------------- txn compares

#[tokio::test]
async fn txn_compare_value() {
    let mut s = Script::new();
    s.ok(put("a", "m")).ok(put("empty", ""));
    for op in OPS {
        for rhs in ["m", "a", "z", "", "mm", "M"] {
            s.step(probe(Cmp::value("a", op, rhs)));
        }
        s.note("missing key", probe(Cmp::value("missing", op, "")))
            .note("missing key", probe(Cmp::value("missing", op, "x")))
            .note("empty value", probe(Cmp::value("empty", op, "")));
    }
    s.dump();
    run_differential("txn_compare_value", &s).await;
}

fn numeric_compares(s: &mut Script, make: fn(&'static str, CompareOp, i64) -> Cmp, rhs: &[i64]) {
    for op in OPS {
        for &r in rhs {
            s.step(probe(make("a", op, r)));
        }
        for r in [0, 1] {
            s.note("missing key compares as 0", probe(make("missing", op, r)));
        }
    }
}

/// `a`: create 2, mod 4, version 3; `b`: create 3, mod 3, version 1.
fn compare_data(s: &mut Script) {
    s.at_rev(2, put("a", "1")).at_rev(3, put("b", "1")).at_rev(4, put("a", "2")).at_rev(5, put("a", "3"));
}

#[tokio::test]
async fn txn_compare_version() {
    let mut s = Script::new();
    compare_data(&mut s);
    numeric_compares(&mut s, Cmp::version, &[0, 2, 3, 4, -1]);
    s.dump();
    run_differential("txn_compare_version", &s).await;
}

#[tokio::test]
async fn txn_compare_create_revision() {
    let mut s = Script::new();
    compare_data(&mut s);
    numeric_compares(&mut s, Cmp::create, &[0, 1, 2, 3]);
    s.dump();
    run_differential("txn_compare_create_revision", &s).await;
}

#[tokio::test]
async fn txn_compare_mod_revision() {
    let mut s = Script::new();
    compare_data(&mut s);
    numeric_compares(&mut s, Cmp::modified, &[0, 4, 5, 6]);
    s.dump();
    run_differential("txn_compare_mod_revision", &s).await;
}

#[tokio::test]
async fn txn_compare_lease() {
    let mut s = Script::new();
    compare_data(&mut s);
    numeric_compares(&mut s, Cmp::lease, &[0, 1, -1, MISSING_LEASE]);
    s.dump();
    run_differential("txn_compare_lease", &s).await;
}

#[tokio::test]
async fn txn_compare_with_range_end() {
    let mut s = Script::new();
    s.ok(put("p/1", "x")).ok(put("p/2", "x")).ok(put("p/2", "x")).ok(put("p/3", "y")).ok(put("q", "x"));
    let cmps = [
        Cmp::value("p/", CompareOp::Equal, "x").prefix(),
        Cmp::value("p/", CompareOp::Equal, "x").end("p/3"),
        Cmp::value("p/", CompareOp::NotEqual, "z").prefix(),
        Cmp::value("p/", CompareOp::Less, "y").prefix(),
        Cmp::value("p/", CompareOp::Less, "z").prefix(),
        Cmp::version("p/", CompareOp::Greater, 0).prefix(),
        Cmp::version("p/", CompareOp::Equal, 1).prefix(),
        Cmp::version("p/", CompareOp::Equal, 1).end("p/2"),
        Cmp::create("p/", CompareOp::Less, 5).prefix(),
        Cmp::create("p/", CompareOp::Less, 4).prefix(),
        Cmp::modified("p/", CompareOp::Greater, 1).prefix(),
        Cmp::modified("p/", CompareOp::NotEqual, 4).prefix(),
        Cmp::lease("p/", CompareOp::Equal, 0).prefix(),
        Cmp::value("p/2", CompareOp::Equal, "x").end(vec![0]),
        Cmp::value("p/2", CompareOp::Equal, "y").end(vec![0]),
        Cmp::version(vec![0], CompareOp::Greater, 0).end(vec![0]),
        Cmp::value("r/", CompareOp::Equal, "").prefix(),
        Cmp::value("r/", CompareOp::NotEqual, "x").prefix(),
        Cmp::version("r/", CompareOp::Equal, 0).prefix(),
        Cmp::create("r/", CompareOp::Less, 1).prefix(),
        Cmp::modified("r/", CompareOp::Greater, 0).prefix(),
    ];
    for c in cmps {
        s.step(probe(c));
    }
    s.note(
        "all compares must hold",
        txn()
            .when([Cmp::value("p/1", CompareOp::Equal, "x"), Cmp::value("p/3", CompareOp::Equal, "x")])
            .then_op(range("p/1"))
            .else_op(range("p/3")),
    );
    s.dump();
    run_differential("txn_compare_with_range_end", &s).await;
}

// ---------------------------------------------------------------- txn branches

#[tokio::test]
async fn txn_branches_ops_and_nesting() {
    let mut s = Script::new();
    s.note(
        "no compares: success; reads see earlier writes of the same txn; one revision",
        txn().then_op(put("a", "1")).then_op(put("b", "2")).then_op(range("a")).then_op(range_all()),
    )
    .note(
        "success branch with every op kind",
        txn()
            .when([Cmp::value("a", CompareOp::Equal, "1")])
            .then_op(put("c", "3").prev_kv())
            .then_op(delete("b").prev_kv())
            .then_op(range("b"))
            .then_op(txn().then_op(range("c")))
            .else_op(put("never", "x")),
    )
    .note(
        "failure branch with every op kind",
        txn()
            .when([Cmp::value("a", CompareOp::Equal, "nope")])
            .then_op(put("never", "x"))
            .else_op(put("d", "4"))
            .else_op(delete("c").prev_kv())
            .else_op(range("d"))
            .else_op(txn().when([Cmp::version("d", CompareOp::Equal, 0)]).then_op(range("x")).else_op(range("y"))),
    )
    .note(
        "header revisions inside a write txn: reads before the first write see the old revision",
        txn()
            .then_op(range("a"))
            .then_op(delete("missing"))
            .then_op(range("a"))
            .then_op(put("a", "1"))
            .then_op(range("a")),
    )
    .note(
        "the same, in the failure branch and in a nested txn",
        txn()
            .when([Cmp::value("a", CompareOp::Equal, "nope")])
            .else_op(range("c"))
            .else_op(txn().then_op(range("c")).then_op(put("c", "3")).then_op(range("c"))),
    )
    .note("empty branches: no new revision", txn())
    .note("failure with empty else", txn().when([Cmp::value("a", CompareOp::Equal, "nope")]).then_op(put("x", "1")))
    .note("read-only txn", txn().then_op(range("a")).then_op(range("d").rev(2)))
    .note("deleting nothing: no new revision", txn().then_op(delete("missing")))
    .note(
        "nested compares see the state before the txn, not the earlier ops",
        txn().then_op(put("n", "1")).then_op(
            txn().when([Cmp::value("n", CompareOp::Equal, "1")]).then_op(put("m", "then")).else_op(put("m", "else")),
        ),
    )
    .step(range_all())
    .note(
        "three levels",
        txn().then_op(
            txn()
                .when([Cmp::version("m", CompareOp::Greater, 0)])
                .then_op(txn().then_op(put("deep", "1")).then_op(range("deep")))
                .else_op(range("m")),
        ),
    )
    .note(
        "ranges with options inside a txn",
        txn()
            .then_op(range("").prefix().limit(2))
            .then_op(range("").prefix().count_only())
            .then_op(range("").prefix().keys_only().sort(SortTarget::Mod, SortOrder::Descend))
            .then_op(range("a").rev(2)),
    )
    .note(
        "ops on many keys at one revision",
        txn().then_op(put("t1", "1")).then_op(put("t2", "2")).then_op(delete("n")).then_op(delete("deep").prev_kv()),
    )
    .dump();
    run_differential("txn_branches_ops_and_nesting", &s).await;
}

// ---------------------------------------------------------------- compaction

#[tokio::test]
async fn compaction_and_reads_below_it() {
    let mut s = Script::new();
    s.ok(put("a", "1")) // 2
        .ok(put("b", "1")) // 3
        .ok(put("a", "2")) // 4
        .ok(delete("b")) // 5
        .ok(put("a", "3")) // 6
        .ok(put("c", "1")) // 7
        .at_rev(7, compact(5))
        .err(range("a").rev(4), OUT_OF_RANGE, COMPACTED)
        .err(range("a").rev(1), OUT_OF_RANGE, COMPACTED)
        .err(range("a").rev(4).serializable(), OUT_OF_RANGE, COMPACTED)
        .note("the compact revision itself is readable", range_all().rev(5))
        .step(range_all().rev(6))
        .step(range("a").rev(5).count_only())
        .ok(range_all())
        .err(compact(5), OUT_OF_RANGE, COMPACTED)
        .err(compact(3), OUT_OF_RANGE, COMPACTED)
        .err(compact(8), OUT_OF_RANGE, FUTURE_REV)
        .err(compact(1000), OUT_OF_RANGE, FUTURE_REV)
        .err(range("a").rev(8), OUT_OF_RANGE, FUTURE_REV)
        .err(range("a").rev(8).serializable(), OUT_OF_RANGE, FUTURE_REV)
        .note("txn with a read below the compaction", txn().then_op(range("a").rev(4)))
        .dump()
        .note("txn with a read in the future", txn().then_op(range("a").rev(100)))
        .dump()
        .note("write txn with a read below the compaction", txn().then_op(put("w", "1")).then_op(range("a").rev(3)))
        .dump()
        .note("compact to the current revision", compact(7).physical())
        .err(range("a").rev(6), OUT_OF_RANGE, COMPACTED)
        .step(range_all().rev(7))
        .ok(put("a", "4"))
        .step(range("a"))
        .step(range_all())
        .dump();
    run_differential("compaction_and_reads_below_it", &s).await;
}

#[tokio::test]
async fn compaction_edge_revisions() {
    let mut s = Script::new();
    s.note("compact -1 on a fresh store", compact(-1))
        .dump()
        .note("compact 0 on a fresh store", compact(0))
        .dump()
        .note("compact 0 again", compact(0))
        .dump()
        .note("compact 1 on a fresh store (its current revision)", compact(1))
        .dump()
        .note("txn range at revision -1 after compacting to 1", txn().then_op(range("a").rev(-1)))
        .note("standalone range at revision -1 reads the current revision", range("a").rev(-1))
        .ok(put("a", "1"))
        .ok(put("a", "2"))
        .ok(compact(2))
        .step(range("a").rev(2))
        .err(range("a").rev(1), OUT_OF_RANGE, COMPACTED)
        .note("compact 0 after a compaction", compact(0))
        .note("range at revision 0 after a compaction means the current revision", range("a").rev(0))
        .dump();
    run_differential("compaction_edge_revisions", &s).await;
}

// ---------------------------------------------------------------- errors

#[tokio::test]
async fn error_empty_key() {
    let mut s = Script::new();
    s.ok(put("a", "1"));
    s.err(range(""), INVALID_ARGUMENT, EMPTY_KEY)
        .err(range("").end("b"), INVALID_ARGUMENT, EMPTY_KEY)
        .err(put("", "v"), INVALID_ARGUMENT, EMPTY_KEY)
        .err(delete(""), INVALID_ARGUMENT, EMPTY_KEY)
        .err(delete("").end("z"), INVALID_ARGUMENT, EMPTY_KEY)
        .err(probe(Cmp::value("", CompareOp::Equal, "1")), INVALID_ARGUMENT, EMPTY_KEY)
        .err(probe(Cmp::version("", CompareOp::Equal, 0).end("z")), INVALID_ARGUMENT, EMPTY_KEY)
        .err(txn().then_op(put("", "v")), INVALID_ARGUMENT, EMPTY_KEY)
        .err(txn().then_op(put("b", "v")).then_op(range("")), INVALID_ARGUMENT, EMPTY_KEY)
        .err(txn().then_op(delete("")), INVALID_ARGUMENT, EMPTY_KEY)
        .err(
            txn().when([Cmp::value("a", CompareOp::Equal, "1")]).then_op(put("b", "v")).else_op(put("", "v")),
            INVALID_ARGUMENT,
            EMPTY_KEY,
        )
        .err(txn().then_op(txn().then_op(put("", "v"))), INVALID_ARGUMENT, EMPTY_KEY)
        .err(
            txn().then_op(txn().when([Cmp::value("", CompareOp::Equal, "1")]).then_op(put("b", "v"))),
            INVALID_ARGUMENT,
            EMPTY_KEY,
        )
        .ok(put("after", "1"));
    s.dump();
    run_differential("error_empty_key", &s).await;
}

#[tokio::test]
async fn error_put_flags_and_missing_lease() {
    let mut s = Script::new();
    s.ok(put("a", "1"))
        .err(put("a", "v").ignore_value(), INVALID_ARGUMENT, VALUE_PROVIDED)
        .err(put("a", "v").lease(MISSING_LEASE).ignore_lease(), INVALID_ARGUMENT, LEASE_PROVIDED)
        .err(put("missing", "").ignore_value(), INVALID_ARGUMENT, KEY_NOT_FOUND)
        .err(put("missing", "v").ignore_lease(), INVALID_ARGUMENT, KEY_NOT_FOUND)
        .err(put("a", "v").lease(MISSING_LEASE), NOT_FOUND, LEASE_NOT_FOUND)
        .err(put("new", "v").lease(MISSING_LEASE), NOT_FOUND, LEASE_NOT_FOUND)
        .err(txn().then_op(put("a", "v").ignore_value()), INVALID_ARGUMENT, VALUE_PROVIDED)
        .err(txn().then_op(put("b", "1")).then_op(put("missing", "").ignore_value()), INVALID_ARGUMENT, KEY_NOT_FOUND)
        .err(txn().then_op(put("b", "1")).then_op(put("c", "v").lease(MISSING_LEASE)), NOT_FOUND, LEASE_NOT_FOUND)
        .err(
            txn().then_op(txn().then_op(put("b", "1")).then_op(put("missing", "v").ignore_lease())),
            INVALID_ARGUMENT,
            KEY_NOT_FOUND,
        )
        .err(
            txn()
                .when([Cmp::value("a", CompareOp::Equal, "1")])
                .then_op(put("b", "1"))
                .else_op(put("a", "v").ignore_value()),
            INVALID_ARGUMENT,
            VALUE_PROVIDED,
        )
        .err(
            txn()
                .when([Cmp::value("a", CompareOp::Equal, "1")])
                .then_op(put("b", "1"))
                .else_op(put("a", "v").lease(MISSING_LEASE).ignore_lease()),
            INVALID_ARGUMENT,
            LEASE_PROVIDED,
        )
        .note(
            "a put of a missing key with ignore_value, and a missing lease, in the branch not taken",
            txn()
                .when([Cmp::value("a", CompareOp::Equal, "1")])
                .then_op(put("b", "1"))
                .else_op(put("missing", "").ignore_value())
                .else_op(put("c", "v").lease(MISSING_LEASE)),
        )
        .dump();
    run_differential("error_put_flags_and_missing_lease", &s).await;
}

#[tokio::test]
async fn error_too_many_txn_ops() {
    let mut s = Script::new();
    let cmps = |n: usize| (0..n).map(|i| Cmp::version(format!("c{i:03}"), CompareOp::Equal, 0)).collect::<Vec<_>>();
    s.note("exactly 128 puts", txn().then(puts("p", 128)))
        .err(txn().then(puts("q", 129)), INVALID_ARGUMENT, TOO_MANY_OPS)
        .err(txn().when(cmps(129)), INVALID_ARGUMENT, TOO_MANY_OPS)
        .err(txn().when(cmps(1)).then_op(range("a")).or_else(puts("q", 129)), INVALID_ARGUMENT, TOO_MANY_OPS)
        .err(txn().then((0..129).map(|i| range(format!("r{i}")))), INVALID_ARGUMENT, TOO_MANY_OPS)
        .note("128 compares and 128 ops", txn().when(cmps(128)).then(puts("s", 128)).or_else(puts("t", 128)))
        .note(
            "nested txn within the remaining budget (64 + 64)",
            txn().then(puts("u", 63)).then_op(txn().then(puts("v", 64))),
        )
        .err(txn().then(puts("w", 63)).then_op(txn().then(puts("x", 65))), INVALID_ARGUMENT, TOO_MANY_OPS)
        .err(txn().then(puts("y", 63)).then_op(txn().when(cmps(65))), INVALID_ARGUMENT, TOO_MANY_OPS)
        .dump();
    run_differential("error_too_many_txn_ops", &s).await;
}

#[tokio::test]
async fn error_duplicate_keys_in_txn() {
    let mut s = Script::new();
    s.ok(put("k", "0")).ok(put("k/1", "0"));
    s.err(txn().then_op(put("k", "1")).then_op(put("k", "2")), INVALID_ARGUMENT, DUPLICATE_KEY)
        .err(txn().then_op(put("k", "1")).then_op(delete("k")), INVALID_ARGUMENT, DUPLICATE_KEY)
        .err(txn().then_op(delete("k/").prefix()).then_op(put("k/1", "1")), INVALID_ARGUMENT, DUPLICATE_KEY)
        .err(txn().then_op(put("k/2", "1")).then_op(delete("k/").prefix()), INVALID_ARGUMENT, DUPLICATE_KEY)
        .err(txn().then_op(put("k", "1")).then_op(txn().then_op(put("k", "2"))), INVALID_ARGUMENT, DUPLICATE_KEY)
        .err(
            txn().then_op(put("k", "1")).then_op(txn().then_op(put("x", "1")).else_op(put("k", "2"))),
            INVALID_ARGUMENT,
            DUPLICATE_KEY,
        )
        .err(
            txn().then_op(put("k/1", "1")).then_op(txn().then_op(delete("k/").prefix())),
            INVALID_ARGUMENT,
            DUPLICATE_KEY,
        )
        .err(txn().then_op(delete("k")).then_op(txn().then_op(put("k", "1"))), INVALID_ARGUMENT, DUPLICATE_KEY)
        .err(
            txn().then_op(txn().then_op(put("k", "1"))).then_op(txn().then_op(put("k", "2"))),
            INVALID_ARGUMENT,
            DUPLICATE_KEY,
        )
        .err(
            txn()
                .when([Cmp::version("k", CompareOp::Greater, 0)])
                .then_op(put("a", "1"))
                .else_op(put("b", "1"))
                .else_op(put("b", "2")),
            INVALID_ARGUMENT,
            DUPLICATE_KEY,
        )
        .note(
            "same key in both branches of a nested txn is allowed",
            txn().then_op(
                txn()
                    .when([Cmp::version("k", CompareOp::Greater, 0)])
                    .then_op(put("k", "then"))
                    .else_op(put("k", "else")),
            ),
        )
        .note(
            "same key in both branches of the top txn is allowed",
            txn().when([Cmp::value("k", CompareOp::Equal, "x")]).then_op(put("k", "then")).else_op(put("k", "else")),
        )
        .note("overlapping deletes are allowed", txn().then_op(delete("k/").prefix()).then_op(delete("k/1")))
        .note(
            "put and range of one key are allowed",
            txn().then_op(put("k", "r")).then_op(range("k")).then_op(range("k")),
        )
        .note(
            "put after a from-key delete (range_end \\0)",
            txn().then_op(delete("a").from_key()).then_op(put("b", "1")),
        )
        .step(range_all())
        .ok(put("c", "0"))
        .note(
            "put, then a from-key delete over it in the same txn",
            txn().then_op(put("c", "1")).then_op(delete("a").from_key().prev_kv()),
        )
        .step(range_all())
        .note(
            "put in a nested then-branch and a later sibling put",
            txn().then_op(txn().then_op(put("z", "1")).else_op(put("y", "1"))).then_op(put("z", "2")),
        )
        .dump();
    run_differential("error_duplicate_keys_in_txn", &s).await;
}

#[tokio::test]
async fn error_request_too_large() {
    const MIB: usize = 1 << 20;
    let big = |n: usize| vec![b'x'; n];
    let mut s = Script::new();
    s.ok(put("a", "1"))
        .note("1 MiB value is accepted", put("one-mib", big(MIB)))
        .err(put("big", big(MIB + MIB / 2 + MIB / 10)), INVALID_ARGUMENT, TOO_LARGE)
        .err(txn().then_op(put("t1", big(800 << 10))).then_op(put("t2", big(800 << 10))), INVALID_ARGUMENT, TOO_LARGE)
        .note("2.5 MiB: above gRPC's receive limit (max-request-bytes + 512 KiB)", put("huge", big(5 * MIB / 2)))
        .dump()
        .note("a 1.6 MiB key in a read is not limited", range(big(MIB + MIB * 6 / 10)))
        .ok(range("one-mib").keys_only())
        .dump();
    run_differential("error_request_too_large", &s).await;
}

#[tokio::test]
async fn flag_max_txn_ops() {
    let mut s = Script::new();
    s.note("4 ops", txn().then(puts("a", 4)))
        .err(txn().then(puts("b", 5)), INVALID_ARGUMENT, TOO_MANY_OPS)
        .err(
            txn().when((0..5).map(|i| Cmp::version(format!("c{i}"), CompareOp::Equal, 0))),
            INVALID_ARGUMENT,
            TOO_MANY_OPS,
        )
        .note("nested within the budget (2 + 2)", txn().then(puts("d", 1)).then_op(txn().then(puts("e", 2))))
        .err(txn().then(puts("f", 1)).then_op(txn().then(puts("g", 3))), INVALID_ARGUMENT, TOO_MANY_OPS)
        .dump();
    run_differential_with_args("flag_max_txn_ops", &["--max-txn-ops", "4"], &s).await;
}

#[tokio::test]
async fn flag_max_request_bytes() {
    let mut s = Script::new();
    s.ok(put("a", vec![b'x'; 900]))
        .err(put("b", vec![b'x'; 2000]), INVALID_ARGUMENT, TOO_LARGE)
        .note("above max-request-bytes + 512 KiB", put("c", vec![b'x'; 600 << 10]))
        .dump();
    run_differential_with_args("flag_max_request_bytes", &["--max-request-bytes", "1024"], &s).await;
}
