//! Watch: the same watch streams and writes against real etcd 3.5.1 and the server under test
//! (Cairn, or a second etcd with `CAIRN_DIFF_AGAINST=etcd`), every WatchResponse compared
//! field by field (`cairn_tests::watch_util`); `etcdctl watch` end to end; etcd's watch
//! guarantees under load (10,000 watchers, a stalled stream); resuming after a restart.
//!
//! Waits are bounded by a deadline and end as soon as the expected responses are there; the
//! only fixed waits are short quiet periods that check that nothing more arrives.
//!
//! Revisions are absolute: a fresh store is at revision 1 and the first write gets revision 2.
//!
//! The "Cairn-only" tests check fixes etcd made after 3.5.1 (etcd#19179: a watch at the
//! compaction revision sees the delete there; etcd#20221: no progress notification below a
//! future start revision; etcd#15220: a progress response never overtakes events); they
//! run against Cairn only, since etcd 3.5.1 has those bugs (each was checked to fail
//! against etcd 3.5.1).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_tests::harness::{subject_kind, Server, ServerKind};
use cairn_tests::watch_util::{
    events_of, has_canceled, has_created, is_progress, run_watch_diff, run_watch_diff_with_args, EtcdctlWatch,
    Recorder, WatchRun, QUIET, WAIT,
};
use etcd_client::{
    Client, Compare, CompareOp, DeleteOptions, EventType, Txn, TxnOp, WatchFilterType, WatchOptions, WatchResponse,
};

fn opts() -> WatchOptions {
    WatchOptions::new()
}

fn prefix() -> WatchOptions {
    WatchOptions::new().with_prefix()
}

fn del_prefix() -> Option<DeleteOptions> {
    Some(DeleteOptions::new().with_prefix())
}

// ================================================================ differential scenarios

/// A key, a prefix, a range, from-key (also with an empty key, which etcd reads as "\0"),
/// and all keys, one stream each; puts, deletes, and a delete of a range.
#[tokio::test]
async fn diff_key_prefix_range_from_key() {
    run_watch_diff("key_prefix_range_from_key", async |r: &mut WatchRun| {
        let s_key = r.open("foo", opts()).await;
        let s_prefix = r.open("foo", prefix()).await;
        let s_from = r.open("foo", opts().with_from_key()).await;
        // Raw: key "" and range_end "\0".
        let s_empty_from = r.open("", opts().with_range(vec![0u8])).await;
        let s_all = r.open("", opts().with_all_keys()).await;
        let s_range = r.open("foo", opts().with_range("fop")).await;
        // key "" and no range_end: etcd watches the single key "\0".
        let s_empty = r.open("", opts()).await;
        // key "" and range_end "b": ["\0", "b").
        let s_empty_to_b = r.open("", opts().with_range("b")).await;
        for s in 0..r.streams.len() {
            r.wait_created(s, 0).await;
        }
        r.put("foo", "1").await;
        r.put("foo/bar", "2").await;
        r.put("fo", "3").await;
        r.put("g", "4").await;
        r.put("a", "5").await;
        r.put("\0", "nul").await;
        r.delete("foo", None).await;
        r.put("foo", "6").await;
        // One revision, three delete events in key order: fo, foo, foo/bar.
        r.delete("fo", del_prefix()).await;
        r.wait_events(s_key, 0, 4).await;
        r.wait_events(s_prefix, 0, 6).await;
        r.wait_events(s_from, 0, 7).await;
        r.wait_events(s_empty_from, 0, 11).await;
        r.wait_events(s_all, 0, 11).await;
        r.wait_events(s_range, 0, 6).await;
        r.wait_events(s_empty, 0, 1).await;
        r.wait_events(s_empty_to_b, 0, 2).await;
    })
    .await;
}

/// start_revision in the past (history replayed), at the current revision, at 1, and in the
/// future: the future watcher sees nothing until the store reaches its revision, then exactly
/// the events from that revision on (etcd#20221).
#[tokio::test]
async fn diff_start_revision_past_current_future() {
    run_watch_diff("start_revision", async |r: &mut WatchRun| {
        r.put("k/a", "1").await; // 2
        r.put("k/b", "1").await; // 3
        r.put("x", "1").await; // 4
        r.put("k/a", "2").await; // 5
        r.delete("k/b", None).await; // 6
        let past = r.open("k/", prefix().with_start_revision(3)).await;
        r.wait_events(past, 0, 3).await;
        let current = r.open("k/", prefix().with_start_revision(6)).await;
        r.wait_events(current, 0, 1).await;
        let first = r.open("k/", prefix().with_start_revision(1)).await;
        r.wait_events(first, 0, 4).await;
        let future = r.open("k/", prefix().with_start_revision(9)).await;
        r.wait_created(future, 0).await;
        let now = r.open("k/a", opts()).await;
        r.wait_created(now, 0).await;
        r.put("k/c", "1").await; // 7
        r.wait_events(past, 0, 4).await;
        r.put("y", "1").await; // 8
        r.expect_quiet(future, "the store is at 8, the watch starts at 9").await;
        r.put("k/a", "3").await; // 9
        r.put("k/d", "1").await; // 10
        r.wait_events(future, 0, 2).await;
        r.wait_events(past, 0, 6).await;
        r.wait_events(current, 0, 4).await;
        r.wait_events(first, 0, 7).await;
        r.wait_events(now, 0, 1).await;
    })
    .await;
}

/// prev_kv, live and in a replay from the past; a delete of a range with prev_kv.
#[tokio::test]
async fn diff_prev_kv() {
    run_watch_diff("prev_kv", async |r: &mut WatchRun| {
        r.put("p/a", "1").await; // 2
        r.put("p/a", "2").await; // 3
        r.put("p/b", "1").await; // 4
        let replay = r.open("p/", prefix().with_prev_key().with_start_revision(2)).await;
        r.wait_events(replay, 0, 3).await;
        let live = r.open("p/", prefix().with_prev_key()).await;
        r.wait_created(live, 0).await;
        let key = r.open("p/a", opts().with_prev_key()).await;
        r.wait_created(key, 0).await;
        r.put("p/a", "3").await; // 5
        r.delete("p/b", None).await; // 6
        r.put("p/b", "2").await; // 7
        r.delete("p/", del_prefix()).await; // 8: p/a, p/b
        r.wait_events(replay, 0, 8).await;
        r.wait_events(live, 0, 5).await;
        r.wait_events(key, 0, 2).await;
        // The whole history again with prev_kv, replayed in one go.
        let again = r.open("p/", prefix().with_prev_key().with_start_revision(1)).await;
        r.wait_events(again, 0, 8).await;
    })
    .await;
}

/// NOPUT and NODELETE (and both) on one stream, live and replayed from the past.
#[tokio::test]
async fn diff_filters() {
    run_watch_diff("filters", async |r: &mut WatchRun| {
        let s = r.open("f/", prefix().with_filters([WatchFilterType::NoPut]).with_prev_key()).await;
        r.wait_created(s, 0).await;
        r.create(s, "f/", prefix().with_filters([WatchFilterType::NoDelete])).await;
        r.wait_created(s, 1).await;
        r.create(s, "f/", prefix().with_filters([WatchFilterType::NoPut, WatchFilterType::NoDelete])).await;
        r.wait_created(s, 2).await;
        r.put("f/a", "1").await; // 2
        r.put("f/b", "1").await; // 3
        r.delete("f/a", None).await; // 4
        let t = Txn::new().and_then([TxnOp::put("f/c", "1", None), TxnOp::delete("f/b", None)]);
        r.txn("put f/c, delete f/b", t).await; // 5
        r.put("f/a", "2").await; // 6
        r.delete("f/", del_prefix()).await; // 7: f/a, f/c
        r.wait_events(s, 0, 4).await;
        r.wait_events(s, 1, 4).await;
        let replay = r.open("f/", prefix().with_filters([WatchFilterType::NoPut]).with_start_revision(2)).await;
        r.wait_events(replay, 0, 4).await;
        r.create(replay, "f/", prefix().with_filters([WatchFilterType::NoDelete]).with_start_revision(2)).await;
        r.wait_events(replay, 1, 4).await;
    })
    .await;
}

/// Txns that change several keys: all events of one revision in one response, in request
/// order (not key order), nested txns depth first, the else branch; a read-only txn and a
/// txn whose branch changes nothing make no events.
#[tokio::test]
async fn diff_txn_events_in_request_order() {
    run_watch_diff("txn", async |r: &mut WatchRun| {
        r.put("t/m", "0").await; // 2
        r.put("t/x", "0").await; // 3
        let all = r.open("t/", prefix().with_prev_key()).await;
        r.wait_created(all, 0).await;
        let one = r.open("t/a", opts()).await;
        r.wait_created(one, 0).await;
        let t = Txn::new().when([Compare::version("t/m", CompareOp::Greater, 0)]).and_then([
            TxnOp::put("t/z", "1", None),
            TxnOp::put("t/a", "1", None),
            TxnOp::delete("t/m", None),
            TxnOp::put("t/b", "1", None),
            TxnOp::get("t/x", None),
        ]);
        r.txn("then: put t/z, put t/a, delete t/m, put t/b, get", t).await; // 4
        let nested = Txn::new().and_then([TxnOp::put("t/z", "2", None), TxnOp::delete("t/b", None)]);
        let t = Txn::new().and_then([
            TxnOp::put("t/n1", "1", None),
            TxnOp::txn(nested),
            TxnOp::delete("t/x", Some(DeleteOptions::new().with_range("t/y"))),
        ]);
        r.txn("put t/n1, txn(put t/z, delete t/b), delete [t/x, t/y)", t).await; // 5
        let t = Txn::new()
            .when([Compare::value("t/a", CompareOp::Equal, "nope")])
            .and_then([TxnOp::put("t/then", "1", None)])
            .or_else([TxnOp::put("t/e2", "1", None), TxnOp::put("t/e1", "1", None)]);
        r.txn("else: put t/e2, put t/e1", t).await; // 6
        r.txn("read only", Txn::new().and_then([TxnOp::get("t/", Some(etcd_client::GetOptions::new().with_prefix()))]))
            .await;
        r.txn("delete of nothing", Txn::new().and_then([TxnOp::delete("t/none", None)])).await;
        r.put("t/a", "2").await; // 7
        r.wait_events(all, 0, 11).await;
        r.wait_events(one, 0, 2).await;
        let replay = r.open("t/", prefix().with_start_revision(2)).await;
        r.wait_events(replay, 0, 13).await;
    })
    .await;
}

/// A delete of a range: one event per key, in key order, in one response; a delete that
/// deletes nothing makes no revision and no event.
#[tokio::test]
async fn diff_delete_range() {
    run_watch_diff("delete_range", async |r: &mut WatchRun| {
        for k in ["r/3", "r/1", "r/2", "s"] {
            r.put(k, "v").await; // 2..5
        }
        let rs = r.open("r/", prefix().with_prev_key()).await;
        r.wait_created(rs, 0).await;
        let all = r.open("", opts().with_all_keys()).await;
        r.wait_created(all, 0).await;
        r.delete("r/1", Some(DeleteOptions::new().with_range("r/3"))).await; // 6: r/1, r/2
        r.delete("r/", del_prefix()).await; // 7: r/3
        r.delete("r/", del_prefix()).await; // nothing
        r.delete("", Some(DeleteOptions::new().with_all_keys())).await; // 8: s
        r.wait_events(rs, 0, 3).await;
        r.wait_events(all, 0, 4).await;
    })
    .await;
}

/// A watch from a compacted revision: created, then a response with compact_revision and
/// canceled (exactly what etcd sends, header included); a watch from exactly the compacted
/// revision works; the stream goes on; a negative start revision (compacted revision -1 on
/// a fresh store, then the real one).
#[tokio::test]
async fn diff_compacted_start_revision() {
    run_watch_diff("compacted", async |r: &mut WatchRun| {
        let neg = r.open("c/", prefix().with_start_revision(-5)).await;
        r.wait(neg, "cancel of the watch from -5", |g| has_canceled(g, 0)).await;
        r.put("c/a", "1").await; // 2
        r.put("c/b", "1").await; // 3
        r.put("c/a", "2").await; // 4
        r.put("c/c", "1").await; // 5
        r.compact(4).await;
        let old = r.open("c/", prefix().with_start_revision(2)).await;
        r.wait(old, "compacted cancel of 0", |g| has_canceled(g, 0)).await;
        let at = r.open("c/", prefix().with_start_revision(4)).await;
        r.wait_events(at, 0, 2).await;
        let just_below = r.open("c/a", opts().with_start_revision(3)).await;
        r.wait(just_below, "compacted cancel of 0", |g| has_canceled(g, 0)).await;
        // The same stream goes on: a new watcher (next auto id) works.
        r.create(old, "c/", prefix()).await;
        r.wait_created(old, 1).await;
        r.create(neg, "c/", prefix().with_start_revision(-5)).await;
        r.wait(neg, "cancel of the second watch from -5", |g| has_canceled(g, 1)).await;
        r.put("c/d", "1").await; // 6
        r.wait_events(old, 1, 1).await;
        r.wait_events(at, 0, 3).await;
    })
    .await;
}

/// A client-chosen watch id whose watcher was canceled by compaction: etcd still holds the
/// id on the stream until the client cancels it (clientv3 sends that cancel): a create with
/// the same id is refused as a duplicate, and the cancel gets a canceled response; after it
/// the id can be used again.
#[tokio::test]
async fn diff_compacted_watch_id_until_canceled() {
    run_watch_diff("compacted_watch_id", async |r: &mut WatchRun| {
        for i in 0..4 {
            r.put("c/a", &i.to_string()).await; // 2..5
        }
        r.compact(4).await;
        let s = r.open("c/", prefix().with_start_revision(3).with_watch_id(7)).await;
        r.wait(s, "compacted cancel of 7", |g| has_canceled(g, 7)).await;
        r.create(s, "c/", prefix().with_watch_id(7)).await;
        r.wait(s, "a second create response for id 7 (or an error)", |g| g.iter().filter(|x| x.created()).count() >= 2)
            .await;
        let t = r.open("c/", prefix().with_start_revision(3).with_watch_id(9)).await;
        r.wait(t, "compacted cancel of 9", |g| has_canceled(g, 9)).await;
        r.cancel(t, 9).await;
        r.expect_quiet(t, "after the cancel of 9").await;
        r.create(t, "c/", prefix().with_watch_id(9)).await;
        r.wait(t, "a second create response for id 9 (or an error)", |g| g.iter().filter(|x| x.created()).count() >= 2)
            .await;
        r.put("c/a", "x").await; // 6
        r.wait_events(t, 9, 1).await;
    })
    .await;
}

/// A client that closes its side of the stream after its create requests (e.g. drops the
/// request half of a split etcd-client stream) still receives events: etcd ends the stream
/// only when the client cancels the call.
#[tokio::test]
async fn diff_half_closed_stream_keeps_watching() {
    run_watch_diff("half_close", async |r: &mut WatchRun| {
        let s = r.open("hc", opts()).await;
        r.wait_created(s, 0).await;
        r.close_send(s);
        r.put("hc", "1").await; // 2
        r.put("hc", "2").await; // 3
        r.wait_events(s, 0, 2).await;
    })
    .await;
}

/// `fragment`: a response larger than --max-request-bytes is split into several responses,
/// every part but the last flagged `fragment` (a replay of three 1 MiB values, and one
/// revision deleting three 1 MiB keys with prev_kv); without `fragment` it is one response.
#[tokio::test]
async fn diff_fragment() {
    run_watch_diff("fragment", async |r: &mut WatchRun| {
        for i in 1..=3 {
            let v = format!("{i}").repeat(1 << 20);
            r.put(&format!("fr/{i}"), &v).await; // 2..4
        }
        let replay = r.open("fr/", prefix().with_start_revision(2).with_fragment()).await;
        r.wait_events(replay, 0, 3).await;
        let whole = r.open("fr/", prefix().with_start_revision(2)).await;
        r.wait_events(whole, 0, 3).await;
        let live = r.open("fr/", prefix().with_prev_key().with_fragment()).await;
        r.wait_created(live, 0).await;
        let live_whole = r.open("fr/", prefix().with_prev_key()).await;
        r.wait_created(live_whole, 0).await;
        r.delete("fr/", del_prefix()).await; // 5
        r.wait_events(live, 0, 3).await;
        r.wait_events(live_whole, 0, 3).await;
    })
    .await;
}

/// WatchCancelRequest: the canceled response (with its header), no events afterwards; a
/// cancel of an unknown or already canceled id gets no response; auto ids keep counting.
#[tokio::test]
async fn diff_cancel() {
    run_watch_diff("cancel", async |r: &mut WatchRun| {
        let s = r.open("x", opts()).await;
        r.wait_created(s, 0).await;
        r.create(s, "y", opts()).await;
        r.wait_created(s, 1).await;
        r.put("x", "1").await; // 2
        r.wait_events(s, 0, 1).await;
        r.cancel(s, 0).await;
        r.wait(s, "canceled 0", |g| has_canceled(g, 0)).await;
        r.put("x", "2").await; // 3
        r.put("y", "1").await; // 4
        r.wait_events(s, 1, 1).await;
        r.cancel(s, 42).await;
        r.cancel(s, 0).await;
        r.expect_quiet(s, "cancel of unknown ids").await;
        r.create(s, "x", opts()).await;
        r.wait_created(s, 2).await;
        r.put("x", "3").await; // 5
        r.wait_events(s, 2, 1).await;
        // Cancel of a watcher that is replaying history.
        r.create(s, "x", opts().with_start_revision(2)).await;
        r.wait_events(s, 3, 3).await;
        r.cancel(s, 3).await;
        r.wait(s, "canceled 3", |g| has_canceled(g, 3)).await;
    })
    .await;
}

/// Client-chosen watch ids, auto ids skipping them, and the error for a duplicate id.
#[tokio::test]
async fn diff_watch_ids_and_duplicate() {
    run_watch_diff("watch_ids", async |r: &mut WatchRun| {
        let s = r.open("a", opts()).await; // auto: 0
        r.wait_created(s, 0).await;
        r.create(s, "b", opts().with_watch_id(1)).await;
        r.wait_created(s, 1).await;
        r.create(s, "c", opts()).await; // auto: 1 is taken, so 2
        r.wait_created(s, 2).await;
        r.create(s, "d", opts().with_watch_id(2)).await; // duplicate
        r.wait(s, "the duplicate id error", |g| g.iter().any(|x| x.watch_id() == -1)).await;
        r.create(s, "e", opts().with_watch_id(100)).await;
        r.wait_created(s, 100).await;
        r.create(s, "f", opts()).await; // auto: 3
        r.wait_created(s, 3).await;
        r.create(s, "g", opts().with_watch_id(100).with_start_revision(1)).await; // duplicate
        r.wait(s, "a second duplicate id error", |g| g.iter().filter(|x| x.watch_id() == -1).count() >= 2).await;
        for k in ["a", "b", "c", "d", "e", "f", "g"] {
            r.put(k, "1").await; // 2..8
        }
        for id in [0, 1, 2, 100, 3] {
            r.wait_events(s, id, 1).await;
        }
        // Ids are per stream: another stream may use the same ids.
        let t = r.open("a", opts().with_watch_id(100)).await;
        r.wait_created(t, 100).await;
        r.put("a", "2").await; // 9
        r.wait_events(t, 100, 1).await;
        r.wait_events(s, 0, 2).await;
    })
    .await;
}

/// Keys attached to a lease: the put events carry the lease id; a revoke deletes every
/// attached key in one revision, one delete event per key (key order), with prev_kv.
#[tokio::test]
async fn diff_lease_revoke_events() {
    run_watch_diff("lease_revoke", async |r: &mut WatchRun| {
        const LEASE: i64 = 0x1234;
        let s = r.open("l/", prefix().with_prev_key()).await;
        r.wait_created(s, 0).await;
        let g = r.client.lease_grant(600, Some(etcd_client::LeaseGrantOptions::new().with_id(LEASE))).await;
        r.note(format!("lease grant {LEASE:#x}: {:?}", g.as_ref().map(|g| g.id()).map_err(|e| e.to_string())));
        for k in ["l/c", "l/a", "l/b"] {
            r.put_with(k, "v", etcd_client::PutOptions::new().with_lease(LEASE)).await;
            // 2..4
        }
        r.put("l/z", "no lease").await; // 5
        let rv = r.client.lease_revoke(LEASE).await;
        r.note(format!("lease revoke: {:?}", rv.map(|v| v.header().map(|h| h.revision())).map_err(|e| e.to_string())));
        r.wait_events(s, 0, 7).await;
        let replay = r.open("l/", prefix().with_start_revision(2)).await;
        r.wait_events(replay, 0, 7).await;
    })
    .await;
}

/// A watch on an empty range (key >= range_end) is refused with etcd's created+canceled
/// response, consumes no id, and the stream goes on.
#[tokio::test]
async fn diff_empty_range() {
    run_watch_diff("empty_range", async |r: &mut WatchRun| {
        let s = r.open("b", opts().with_range("a")).await;
        r.wait(s, "the empty range error", |g| !g.is_empty()).await;
        r.create(s, "b", opts().with_range("b")).await;
        r.wait_responses(s, 2).await;
        r.create(s, "a", opts().with_range("b")).await;
        r.wait_created(s, 0).await;
        r.put("a0", "1").await; // 2
        r.put("b", "1").await; // 3
        r.wait_events(s, 0, 1).await;
    })
    .await;
}

/// Several watchers on one stream with overlapping ranges, one of them replaying from the
/// past while the others are live; each gets its own responses.
#[tokio::test]
async fn diff_many_watchers_one_stream() {
    run_watch_diff("many_watchers", async |r: &mut WatchRun| {
        r.put("m/a", "0").await; // 2
        let s = r.open("m/a", opts()).await; // 0
        r.wait_created(s, 0).await;
        r.create(s, "m/", prefix()).await; // 1
        r.wait_created(s, 1).await;
        r.create(s, "", opts().with_all_keys()).await; // 2
        r.wait_created(s, 2).await;
        r.create(s, "m/a", opts().with_filters([WatchFilterType::NoPut])).await; // 3
        r.wait_created(s, 3).await;
        r.create(s, "m/", prefix().with_prev_key().with_start_revision(1)).await; // 4
        r.wait_events(s, 4, 1).await;
        r.put("m/a", "1").await; // 3
        r.put("m/b", "1").await; // 4
        r.put("n", "1").await; // 5
        let t = Txn::new().and_then([TxnOp::put("m/c", "1", None), TxnOp::put("m/a", "2", None)]);
        r.txn("put m/c, put m/a", t).await; // 6
        r.delete("m/a", None).await; // 7
        r.wait_events(s, 0, 3).await;
        r.wait_events(s, 1, 5).await;
        r.wait_events(s, 2, 6).await;
        r.wait_events(s, 3, 1).await;
        r.wait_events(s, 4, 6).await;
    })
    .await;
}

/// WatchProgressRequest on streams whose watchers are all caught up: a response with
/// watch_id -1 and the current revision in the header.
#[tokio::test]
async fn diff_progress_request() {
    run_watch_diff("progress", async |r: &mut WatchRun| {
        let s = r.open("g/", prefix()).await;
        r.wait_created(s, 0).await;
        r.progress(s).await;
        r.wait(s, "progress 1", |g| g.iter().filter(|x| is_progress(x)).count() >= 1).await;
        r.put("g/a", "1").await; // 2
        r.wait_events(s, 0, 1).await;
        r.progress(s).await;
        r.wait(s, "progress 2", |g| g.iter().filter(|x| is_progress(x)).count() >= 2).await;
        r.put("h", "1").await; // 3 (not watched)
        r.progress(s).await;
        r.wait(s, "progress 3", |g| g.iter().filter(|x| is_progress(x)).count() >= 3).await;
        // A stream with two watchers. (A stream whose watcher starts in the future: see
        // future_watch_gets_no_progress_notification_below_its_start; etcd 3.5.1 answers
        // with the current revision there, which is etcd#20221.)
        let two = r.open("g/", prefix()).await;
        r.wait_created(two, 0).await;
        r.create(two, "h", opts()).await;
        r.wait_created(two, 1).await;
        r.put("h", "2").await; // 4
        r.wait_events(two, 1, 1).await;
        r.progress(two).await;
        r.wait(two, "progress", |g| g.iter().any(is_progress)).await;
        // A stream whose only watcher was canceled.
        r.cancel(two, 0).await;
        r.cancel(two, 1).await;
        r.wait(two, "both canceled", |g| has_canceled(g, 0) && has_canceled(g, 1)).await;
        r.progress(two).await;
        r.wait(two, "progress on an empty stream", |g| g.iter().filter(|x| is_progress(x)).count() >= 2).await;
    })
    .await;
}

/// Runs a scenario with the progress interval flag given to both servers (the flag must be
/// accepted by both; no periodic notification is due within the scenario).
#[tokio::test]
async fn diff_progress_notify_flag_accepted() {
    run_watch_diff_with_args(
        "progress_notify_flag",
        &["--experimental-watch-progress-notify-interval", "1h"],
        async |r: &mut WatchRun| {
            let s = r.open("w", opts().with_progress_notify()).await;
            r.wait_created(s, 0).await;
            r.put("w", "1").await;
            r.wait_events(s, 0, 1).await;
        },
    )
    .await;
}

/// Periodic progress notifications (`--experimental-watch-progress-notify-interval`) go only
/// to watchers that asked for them, carry the watcher's id and the current revision (etcd
/// 3.5.1 does the same; the count depends on timing, so this is a property, not a diff).
#[tokio::test]
async fn periodic_progress_notify_only_for_watchers_that_asked() {
    let server =
        Server::start_with_args(subject_kind(), &["--experimental-watch-progress-notify-interval", "100ms"]).await;
    let mut c = server.client().await;
    let mut s = Recorder::open(&c, "v/", prefix().with_progress_notify()).await;
    s.create("v/", prefix()).await;
    assert!(s.until(WAIT, |g| has_created(g, 0) && has_created(g, 1)).await, "{:?}", s.got);
    c.put("v/a", "1", None).await.expect("put"); // 2
    c.put("other", "1", None).await.expect("put"); // 3
    assert!(
        s.until(WAIT, |g| g.iter().filter(|x| is_progress(x) && x.header().map(|h| h.revision()) == Some(3)).count()
            >= 2)
            .await,
        "two notifications at revision 3: {:?}",
        s.got
    );
    for x in s.got.iter().filter(|x| is_progress(x)) {
        assert_eq!(x.watch_id(), 0, "only watcher 0 asked for progress notifications: {x:?}");
    }
}

// ================================================================ Cairn-only (etcd fixes after 3.5.1)

/// A Cairn server with a short periodic progress interval.
async fn cairn_with_progress_interval() -> Server {
    Server::start_with_args(ServerKind::Cairn, &["--experimental-watch-progress-notify-interval", "100ms"]).await
}

/// etcd#19179 (etcd 3.5.1 has this bug: its watch gets no event at all here): a watch
/// opened at exactly the compacted revision, where that revision is a delete, must deliver
/// the delete (the tombstone at the compaction revision is kept). Cairn only.
#[tokio::test]
async fn watch_at_compact_revision_sees_delete() {
    let server = Server::start(ServerKind::Cairn).await;
    let mut c = server.client().await;
    let physical = || Some(etcd_client::CompactionOptions::new().with_physical());
    c.put("d/a", "1", None).await.expect("put"); // 2
    c.put("d/b", "1", None).await.expect("put"); // 3
    c.delete("d/a", None).await.expect("delete"); // 4
    c.compact(4, physical()).await.expect("compact");
    let mut p = Recorder::open(&c, "d/", prefix().with_start_revision(4).with_prev_key()).await;
    let mut k = Recorder::open(&c, "d/a", opts().with_start_revision(4)).await;
    c.put("e/1", "1", None).await.expect("put"); // 5
    c.put("e/2", "1", None).await.expect("put"); // 6
    c.delete("e/", del_prefix()).await.expect("delete"); // 7: e/1, e/2
    c.compact(7, physical()).await.expect("compact");
    let mut e = Recorder::open(&c, "e/", prefix().with_start_revision(7)).await;
    let mut gone = Recorder::open(&c, "e/", prefix().with_start_revision(6)).await;
    // Compacting again past the kept tombstone.
    c.put("d/a", "2", None).await.expect("put"); // 8
    c.compact(8, physical()).await.expect("compact");
    let mut again = Recorder::open(&c, "d/a", opts().with_start_revision(8)).await;
    let d = |k: &str, rev: i64| (EventType::Delete, k.as_bytes().to_vec(), rev);
    let p_ = |k: &str, rev: i64| (EventType::Put, k.as_bytes().to_vec(), rev);
    for (name, rec, want) in [
        ("d/ from 4", &mut p, vec![d("d/a", 4), p_("d/a", 8)]),
        ("d/a from 4", &mut k, vec![d("d/a", 4), p_("d/a", 8)]),
        ("e/ from 7", &mut e, vec![d("e/1", 7), d("e/2", 7)]),
        ("d/a from 8", &mut again, vec![p_("d/a", 8)]),
    ] {
        rec.until(WAIT, |g| events_of(g, 0).len() >= want.len()).await;
        rec.drain_for(QUIET).await;
        assert_eq!(rec.events(0), want, "watch {name} (compacted at the delete's revision): {:?}", rec.got);
    }
    assert!(gone.until(WAIT, |g| has_canceled(g, 0)).await, "{:?}", gone.got);
    let cr = gone.got.iter().find(|r| r.canceled()).expect("canceled");
    assert_eq!(cr.compact_revision(), 7, "{cr:?}");
}

/// etcd#20221 (fixed after 3.5.1 by etcd PR #20229, in 3.4, 3.5 and 3.6): a watcher whose
/// start revision is in the future gets no progress notification, periodic or requested,
/// below its start revision (clientv3 resumes a watch at a notification's revision + 1, so
/// such a notification makes a resumed watch replay events from before its start; current
/// etcd sends a notification only once the store has reached every watcher's start
/// revision). It sees nothing until the store reaches its revision, then exactly the events
/// from that revision. A live watcher with progress_notify gets periodic notifications at
/// the current revision. Cairn only: etcd 3.5.1 has the bug.
#[tokio::test]
async fn future_watch_gets_no_progress_notification_below_its_start() {
    let server = cairn_with_progress_interval().await;
    let mut c = server.client().await;
    c.put("u/0", "0", None).await.expect("put"); // 2
    let mut fut = Recorder::open(&c, "u/", prefix().with_start_revision(6).with_progress_notify()).await;
    let mut live = Recorder::open(&c, "u/", prefix().with_progress_notify()).await;
    assert!(fut.until(WAIT, |g| has_created(g, 0)).await, "created: {:?}", fut.got);
    let at = |rev: i64| {
        move |g: &[WatchResponse]| g.iter().any(|x| is_progress(x) && x.header().map(|h| h.revision()) == Some(rev))
    };
    // The live watcher shows that notifications are sent (100 ms period) at revision 2.
    assert!(live.until(WAIT, at(2)).await, "the live watcher gets a notification at revision 2: {:?}", live.got);
    // A requested notification on the future watcher's stream, and several periods at
    // revision 2 (a bounded wait: it checks what arrives).
    fut.progress().await;
    fut.drain_for(Duration::from_millis(500)).await;
    for i in 3..=5 {
        c.put(format!("u/{i}"), "v", None).await.expect("put"); // 3, 4, 5
    }
    assert!(live.until(WAIT, at(5)).await, "the live watcher gets a notification at revision 5: {:?}", live.got);
    fut.drain_for(Duration::from_millis(300)).await;
    c.put("u/6", "v", None).await.expect("put"); // 6
    assert!(fut.until(WAIT, |g| !events_of(g, 0).is_empty()).await, "the event at 6: {:?}", fut.got);
    fut.drain_for(QUIET).await;
    let bad: Vec<(i64, i64)> = fut
        .got
        .iter()
        .filter(|x| is_progress(x))
        .map(|x| (x.watch_id(), x.header().map_or(0, |h| h.revision())))
        .filter(|(_, rev)| *rev < 6)
        .collect();
    assert!(
        bad.is_empty(),
        "a watcher starting at revision 6 got progress notifications (watch id, revision) {bad:?}: below its \
         start revision, so a client resuming from one would replay events before revision 6 (etcd#20221)"
    );
    let evs: Vec<i64> = fut.events(0).iter().map(|e| e.2).collect();
    assert_eq!(evs, vec![6], "exactly the events from revision 6");
}

/// etcd#15220 (fixed after 3.5.1): a progress response (watch_id -1) on a stream whose
/// watcher is replaying history comes only after the replayed events, and its revision is at
/// least that of every event delivered before it.
#[tokio::test]
async fn progress_request_never_overtakes_replayed_events() {
    let server = Server::start(ServerKind::Cairn).await;
    let mut c = server.client().await;
    for i in 0..100 {
        c.put(format!("q/{:03}", i % 50), format!("{i}"), None).await.expect("put");
        // 2..101
    }
    let mut s = Recorder::open(&c, "q/", prefix().with_start_revision(2)).await;
    s.progress().await;
    assert!(s.until(WAIT, |g| g.iter().any(is_progress)).await, "a progress response: {} responses", s.got.len());
    let at = s.got.iter().position(is_progress).expect("progress");
    let rev = s.got[at].header().map_or(0, |h| h.revision());
    let before: Vec<i64> = events_of(&s.got[..at], 0).iter().map(|e| e.2).collect();
    assert_eq!(
        before.len(),
        100,
        "every replayed event (revisions 2..101) comes before the progress response at {rev}"
    );
    assert!(rev >= 101, "progress revision {rev} must cover the delivered events (<= 101)");
    assert_eq!(s.got[at].watch_id(), -1);
}

/// Concurrent writers of [`progress_response_is_a_bookmark_under_writes`]: many, so that
/// the server applies (and publishes) revisions in batches.
const BOOKMARK_WRITERS: usize = 32;

/// A progress response is a bookmark: after a response at revision R, no event of revision
/// <= R may arrive on that stream (etcd's "bookmarkable" guarantee). Progress requests are
/// sent back to back while 32 writers put into the watched prefix, so revisions are
/// published while the server decides whether the stream is caught up. Cairn only (etcd
/// 3.5.1 answers progress requests out of band: etcd#15220).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_response_is_a_bookmark_under_writes() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let server = Server::start(ServerKind::Cairn).await;
    let c = server.client().await;
    let mut s = Recorder::open(&c, "b/", prefix()).await;
    assert!(s.until(WAIT, |g| has_created(g, 0)).await, "{:?}", s.got);
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicUsize::new(0));
    let writers: Vec<_> = (0..BOOKMARK_WRITERS)
        .map(|w| {
            let (mut c, stop, acked) = (c.clone(), stop.clone(), acked.clone());
            tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::Acquire) {
                    c.put(format!("b/{w}/{}", i % 20), format!("{i}"), None).await.expect("put");
                    acked.fetch_add(1, Ordering::AcqRel);
                    i += 1;
                }
            })
        })
        .collect();
    let until = Instant::now() + Duration::from_secs(4);
    let mut requests = 0;
    while Instant::now() < until {
        s.progress().await;
        requests += 1;
        assert!(
            s.until(WAIT, |g| g.iter().filter(|x| is_progress(x)).count() >= requests).await,
            "progress request {requests} unanswered"
        );
    }
    stop.store(true, Ordering::Release);
    for w in writers {
        w.await.expect("writer");
    }
    let total = acked.load(Ordering::Acquire);
    assert!(s.until(WAIT, count_events_at_least(total)).await, "every event arrives");
    // For each progress response, the smallest revision of any event after it.
    let mut violations = Vec::new();
    let mut min_after = i64::MAX;
    let mut last_event = 0;
    for r in s.got.iter().rev() {
        if is_progress(r) {
            let rev = r.header().map_or(0, |h| h.revision());
            if min_after <= rev {
                violations.push((rev, min_after));
            }
        }
        for e in r.events() {
            min_after = min_after.min(e.kv().expect("kv").mod_revision());
        }
    }
    for r in &s.got {
        for e in r.events() {
            let rev = e.kv().expect("kv").mod_revision();
            assert!(rev > last_event, "events out of order: {rev} after {last_event}");
            last_event = rev;
        }
    }
    eprintln!("bookmark: {requests} progress requests answered during {total} writes");
    assert!(
        violations.is_empty(),
        "{} of {requests} progress responses were followed by events at or below their revision \
         (progress revision, first later event revision): {:?}",
        violations.len(),
        &violations[..violations.len().min(10)]
    );
}

// ================================================================ etcdctl watch

/// etcdctl watch with --prefix, --prev-kv, --rev and -w json, against etcd and the server
/// under test at once; the printed output must be equal (and is checked line by line).
#[tokio::test]
async fn etcdctl_watch_prefix_rev_prev_kv() {
    let kind = subject_kind();
    let (mut etcd, subject) = tokio::join!(Server::start(ServerKind::Etcd), Server::start(kind));
    etcd.set_log_on_failure(false);
    let (a, b) = tokio::join!(etcdctl_watch_session(&etcd), etcdctl_watch_session(&subject));
    for (name, (want, got)) in a.iter().zip(b.iter()).enumerate() {
        assert_eq!(want, got, "etcdctl watch #{name}: etcd (left) vs {kind} (right)");
    }
}

/// What etcdctl printed for each watch of [`etcdctl_watch_session`] (JSON normalised).
async fn etcdctl_watch_session(s: &Server) -> Vec<Vec<String>> {
    let mut c = s.client().await;
    c.put("a", "1", None).await.expect("put"); // 2
    c.put("foo", "0", None).await.expect("put"); // 3
    let ep = s.endpoint();
    // --rev makes the output independent of when each watch is established.
    let mut prev = EtcdctlWatch::spawn(&ep, &["foo", "--prefix", "--prev-kv", "--rev", "4"]);
    let mut past = EtcdctlWatch::spawn(&ep, &["a", "--rev", "2"]);
    let mut range = EtcdctlWatch::spawn(&ep, &["foo", "foo0", "--rev", "4"]);
    c.put("foo", "1", None).await.expect("put"); // 4
    c.put("foo/x", "2", None).await.expect("put"); // 5
    c.put("a", "2", None).await.expect("put"); // 6
    c.delete("foo", None).await.expect("delete"); // 7
    c.put("bar", "1", None).await.expect("put"); // 8
    let expected = [
        (&mut prev, lines(&["PUT", "foo", "0", "foo", "1", "PUT", "foo/x", "2", "DELETE", "foo", "1", "foo", ""])),
        (&mut past, lines(&["PUT", "a", "1", "PUT", "a", "2"])),
        (&mut range, lines(&["PUT", "foo", "1", "PUT", "foo/x", "2", "DELETE", "foo", ""])),
    ];
    let mut out = Vec::new();
    for (w, expect) in expected {
        let ok = w.wait_lines(expect.len()).await;
        w.drain_for(QUIET).await;
        let got = w.kill().await;
        assert!(
            ok && got == expect,
            "{s}: etcdctl watch printed\n{got:#?}\nexpected\n{expect:#?}\nstderr: {:?}",
            w.err
        );
        out.push(got);
    }
    // -w json, started after the writes: the history in one response (header: revision 8;
    // events 4, 5, 7).
    let mut json = EtcdctlWatch::spawn(&ep, &["foo", "--prefix", "--rev", "4", "-w", "json"]);
    let ok = json.until(WAIT, |o| o.iter().any(|l| l.starts_with('{'))).await;
    json.drain_for(QUIET).await;
    let got = json.kill().await;
    assert!(ok, "{s}: etcdctl watch -w json printed {got:#?}, stderr {:?}", json.err);
    out.push(got.iter().map(|l| cairn_tests::harness::normalize(l, s.client_port(), s.peer_port())).collect());
    out
}

fn lines(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// etcdctl watch --rev at a compacted revision: etcdctl reports the cancel and exits.
#[tokio::test]
async fn etcdctl_watch_compacted_rev() {
    let kind = subject_kind();
    let (mut etcd, subject) = tokio::join!(Server::start(ServerKind::Etcd), Server::start(kind));
    etcd.set_log_on_failure(false);
    async fn run(s: &Server) -> (Vec<String>, Vec<String>) {
        let mut c = s.client().await;
        for i in 0..4 {
            c.put("k", format!("{i}"), None).await.expect("put"); // 2..5
        }
        c.compact(4, None).await.expect("compact");
        let mut w = EtcdctlWatch::spawn(&s.endpoint(), &["k", "--rev", "2"]);
        // It exits by itself: wait for stdout to close (then stderr has the reason).
        let _ = w.until(WAIT, |_| false).await;
        w.drain_for(Duration::from_millis(200)).await;
        let out = w.kill().await;
        let err: Vec<String> = w.err.iter().filter(|l| !l.starts_with('{')).cloned().collect();
        (out, err)
    }
    let (a, b) = tokio::join!(run(&etcd), run(&subject));
    assert!(
        a.1.iter().any(|l| l.contains("required revision has been compacted")),
        "etcd's etcdctl reports the compaction: {a:?}"
    );
    assert_eq!(a, b, "etcdctl watch --rev <compacted>: etcd (left) vs {kind} (right)");
}

/// etcdctl watch -i (interactive): `watch` commands and `progress` on stdin.
#[tokio::test]
async fn etcdctl_watch_interactive_progress() {
    let kind = subject_kind();
    let (mut etcd, subject) = tokio::join!(Server::start(ServerKind::Etcd), Server::start(kind));
    etcd.set_log_on_failure(false);
    async fn run(s: &Server) -> Vec<String> {
        let mut c = s.client().await;
        c.put("foo", "0", None).await.expect("put"); // 2
        let mut w = EtcdctlWatch::spawn(&s.endpoint(), &["-i"]);
        w.send_line("watch foo --rev 2").await;
        assert!(w.wait_lines(3).await, "{s}: the event at 2: {:?} {:?}", w.out, w.err);
        c.put("foo", "1", None).await.expect("put"); // 3
        c.put("zzz", "1", None).await.expect("put"); // 4
        assert!(w.wait_lines(6).await, "{s}: the event at 3: {:?} {:?}", w.out, w.err);
        w.send_line("progress").await;
        assert!(w.wait_lines(7).await, "{s}: progress: {:?} {:?}", w.out, w.err);
        w.send_line("watch zzz --prefix --rev 4 --prev-kv").await;
        assert!(w.wait_lines(10).await, "{s}: the second watch: {:?} {:?}", w.out, w.err);
        w.drain_for(QUIET).await;
        let out = w.kill().await;
        let expect = lines(&["PUT", "foo", "0", "PUT", "foo", "1", "progress notify: 4", "PUT", "zzz", "1"]);
        assert_eq!(out, expect, "{s}: etcdctl watch -i printed (stderr {:?})", w.err);
        out
    }
    let (a, b) = tokio::join!(run(&etcd), run(&subject));
    assert_eq!(a, b, "etcdctl watch -i: etcd (left) vs {kind} (right)");
}

// ================================================================ guarantees under load

/// One acknowledged write: its revision and its events (type, key) in request order.
#[derive(Clone, Debug)]
struct Acked {
    rev: i64,
    events: Vec<(EventType, String)>,
}

/// What a watcher of the load test watches.
#[derive(Clone, Debug)]
enum Sel {
    Key(String),
    Prefix(String),
}

impl Sel {
    fn matches(&self, k: &str) -> bool {
        match self {
            Sel::Key(x) => k == x,
            Sel::Prefix(p) => k.starts_with(p.as_str()),
        }
    }
    fn options(&self) -> (String, WatchOptions) {
        match self {
            Sel::Key(k) => (k.clone(), opts()),
            Sel::Prefix(p) => (p.clone(), prefix()),
        }
    }
}

const LOAD_STREAMS: usize = 100;
const LOAD_PER_STREAM: usize = 100;
const LOAD_CLIENTS: usize = 10;
const LOAD_KEYS: usize = 100;
const LOAD_WRITERS: usize = 4;
const LOAD_OPS_PER_WRITER: usize = 50;

fn load_key(j: usize) -> String {
    format!("load/{:02}", j % LOAD_KEYS)
}

/// Watchers `LOAD_EARLY..LOAD_PER_STREAM` of each stream are created while the writers run
/// (from the same start revision, so they replay history while new revisions are published,
/// then rejoin the live flow).
const LOAD_EARLY: usize = 90;

/// Watcher `i` of stream `s`: 0 and 90 watch everything under load/, 1..=9 and 91..=95 a
/// tens prefix (10 keys), the others a single key each.
fn load_sel(s: usize, i: usize) -> Sel {
    match i {
        0 | 90 => Sel::Prefix("load/".to_string()),
        1..=9 | 91..=95 => Sel::Prefix(format!("load/{}", (s + i) % 10)),
        _ => Sel::Key(load_key(s * 7 + i)),
    }
}

/// The events watcher `sel` must receive: (revision, type, key) in revision order, request
/// order within a revision.
fn expected_for(sel: &Sel, acked: &[Acked]) -> Vec<(i64, EventType, String)> {
    let mut out = Vec::new();
    for a in acked {
        for (t, k) in &a.events {
            if sel.matches(k) {
                out.push((a.rev, *t, k.clone()));
            }
        }
    }
    out
}

/// Checks one watcher's responses: exactly the expected events, in order; no revision split
/// across two responses. Returns a description of the first problem.
fn check_watcher(got: &[WatchResponse], id: i64, expect: &[(i64, EventType, String)]) -> Result<(), String> {
    let mut seen: Vec<(i64, EventType, String)> = Vec::new();
    let mut rev_in_response: HashMap<i64, usize> = HashMap::new();
    for (n, r) in got.iter().enumerate().filter(|(_, r)| r.watch_id() == id && !r.events().is_empty()) {
        for e in r.events() {
            let kv = e.kv().expect("kv");
            let rev = kv.mod_revision();
            if let Some(prev) = rev_in_response.insert(rev, n) {
                if prev != n {
                    return Err(format!("revision {rev} split across responses {prev} and {n}"));
                }
            }
            seen.push((rev, e.event_type(), String::from_utf8_lossy(kv.key()).into_owned()));
        }
    }
    if seen == expect {
        return Ok(());
    }
    let first = seen.iter().zip(expect.iter()).position(|(a, b)| a != b).unwrap_or(seen.len().min(expect.len()));
    Err(format!(
        "got {} events, expected {}; first difference at #{first}: got {:?}, expected {:?}",
        seen.len(),
        expect.len(),
        seen.get(first),
        expect.get(first)
    ))
}

async fn load_writer(mut c: Client, w: usize, acked: Arc<Mutex<Vec<Acked>>>) {
    for k in 0..LOAD_OPS_PER_WRITER {
        let base = w * 31 + k * 13;
        let value = format!("w{w}-{k}");
        if k % 5 == 4 {
            let keys: Vec<String> = (0..3).map(|d| load_key(base + d * 17)).collect();
            let ops: Vec<TxnOp> = keys.iter().map(|key| TxnOp::put(key.as_str(), value.as_str(), None)).collect();
            let r = c.txn(Txn::new().and_then(ops)).await.expect("txn");
            let rev = r.header().expect("header").revision();
            acked.lock().unwrap().push(Acked { rev, events: keys.into_iter().map(|k| (EventType::Put, k)).collect() });
        } else if k % 7 == 6 {
            let key = load_key(base);
            let r = c.delete(key.as_str(), None).await.expect("delete");
            if r.deleted() > 0 {
                let rev = r.header().expect("header").revision();
                acked.lock().unwrap().push(Acked { rev, events: vec![(EventType::Delete, key)] });
            }
        } else {
            let key = load_key(base);
            let r = c.put(key.as_str(), value.as_str(), None).await.expect("put");
            let rev = r.header().expect("header").revision();
            acked.lock().unwrap().push(Acked { rev, events: vec![(EventType::Put, key)] });
        }
    }
}

/// 10,000 watchers over 100 streams (10 connections), each matching a known subset of the
/// keys, and 4 concurrent writers (puts, 3-key txns, deletes); 1,000 of the watchers are
/// created while the writers run, from the same start revision (they replay history while
/// new revisions are published, then rejoin): every watcher receives every matching event
/// exactly once, in revision order, no gaps, no revision split across responses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_watchers_every_event_exactly_once_in_order() {
    let t0 = Instant::now();
    let server = Server::start(subject_kind()).await;
    let mut clients = Vec::new();
    for _ in 0..LOAD_CLIENTS {
        clients.push(server.client().await);
    }
    let r0 = clients[0].get("load/", None).await.expect("get").header().expect("header").revision();
    let mut streams = Vec::new();
    for s in 0..LOAD_STREAMS {
        let c = &clients[s % LOAD_CLIENTS];
        let (k, o) = load_sel(s, 0).options();
        let mut rec = Recorder::open(c, k, o.with_watch_id(1).with_start_revision(r0 + 1)).await;
        for i in 1..LOAD_EARLY {
            let (k, o) = load_sel(s, i).options();
            rec.create(k, o.with_watch_id(i as i64 + 1).with_start_revision(r0 + 1)).await;
        }
        streams.push(rec);
    }
    let created_ok = |n: usize| move |g: &[WatchResponse]| g.iter().filter(|r| r.created()).count() >= n;
    for (s, rec) in streams.iter_mut().enumerate() {
        let ok = rec.until(Duration::from_secs(30), created_ok(LOAD_EARLY)).await;
        assert!(ok, "stream {s}: {} created responses of {LOAD_EARLY}", rec.got.len());
        assert!(rec.got.iter().all(|r| r.created() && !r.canceled()), "stream {s}: a create failed");
    }
    let created = t0.elapsed();

    let acked = Arc::new(Mutex::new(Vec::new()));
    let writers: Vec<_> = (0..LOAD_WRITERS)
        .map(|w| tokio::spawn(load_writer(clients[w % LOAD_CLIENTS].clone(), w, acked.clone())))
        .collect();
    // A quarter of the writes in, the late watchers join from the same start revision.
    let quarter = LOAD_WRITERS * LOAD_OPS_PER_WRITER / 4;
    let until = Instant::now() + Duration::from_secs(30);
    while acked.lock().unwrap().len() < quarter && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let late_at = acked.lock().unwrap().len();
    for (s, rec) in streams.iter_mut().enumerate() {
        for i in LOAD_EARLY..LOAD_PER_STREAM {
            let (k, o) = load_sel(s, i).options();
            rec.create(k, o.with_watch_id(i as i64 + 1).with_start_revision(r0 + 1)).await;
        }
    }
    for w in writers {
        w.await.expect("writer");
    }
    let written = t0.elapsed();
    let mut acked = acked.lock().unwrap().clone();
    acked.sort_by_key(|a| a.rev);
    for pair in acked.windows(2) {
        assert!(pair[0].rev < pair[1].rev, "two acknowledged writes with revision {}", pair[0].rev);
    }

    let mut total = 0usize;
    let mut failures = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    for (s, rec) in streams.iter_mut().enumerate() {
        let expect: Vec<Vec<(i64, EventType, String)>> =
            (0..LOAD_PER_STREAM).map(|i| expected_for(&load_sel(s, i), &acked)).collect();
        let want: usize = expect.iter().map(Vec::len).sum();
        total += want;
        let mut counted = 0usize;
        let mut n = 0usize;
        rec.until(deadline.saturating_duration_since(tokio::time::Instant::now()), |g| {
            for r in &g[counted..] {
                n += r.events().len();
            }
            counted = g.len();
            n >= want
        })
        .await;
        rec.poll();
        for (i, e) in expect.iter().enumerate() {
            if let Err(m) = check_watcher(&rec.got, i as i64 + 1, e) {
                failures.push(format!("stream {s} watcher {} ({:?}): {m}", i + 1, load_sel(s, i)));
            }
        }
    }
    // Nothing more arrives anywhere.
    let mut extra = 0;
    for rec in streams.iter_mut() {
        extra += rec.drain_for(Duration::from_millis(20)).await;
    }
    for (s, rec) in streams.iter().enumerate() {
        let n = rec.got.iter().filter(|r| r.created() && !r.canceled()).count();
        assert_eq!(n, LOAD_PER_STREAM, "stream {s}: created responses");
    }
    eprintln!(
        "load: {} watchers ({} of them created after {late_at} writes) in {created:?}; {} writes acknowledged in \
         {:?}; {total} deliveries checked at {:?}",
        LOAD_STREAMS * LOAD_PER_STREAM,
        LOAD_STREAMS * (LOAD_PER_STREAM - LOAD_EARLY),
        acked.len(),
        written - created,
        t0.elapsed()
    );
    assert!(
        failures.is_empty(),
        "{} of {} watchers did not get exactly their events:\n{}",
        failures.len(),
        LOAD_STREAMS * LOAD_PER_STREAM,
        failures.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
    );
    assert_eq!(extra, 0, "responses arrived after every watcher had all its events");
}

fn p99(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[(v.len() * 99 / 100).min(v.len() - 1)]
}

const STALL_KEYS: usize = 100;
const STALL_VALUE: usize = 1024;

/// One txn writing all STALL_KEYS keys under big/ with ~1 KiB values; returns its revision
/// and how long it took.
async fn big_txn(c: &mut Client, n: usize) -> (i64, Duration) {
    let value = format!("{n:08}").repeat(STALL_VALUE / 8);
    let ops: Vec<TxnOp> = (0..STALL_KEYS).map(|k| TxnOp::put(format!("big/{k:03}"), value.as_str(), None)).collect();
    let t = Instant::now();
    let r = c.txn(Txn::new().and_then(ops)).await.expect("big txn");
    (r.header().expect("header").revision(), t.elapsed())
}

/// The revisions (in order, one per event) of watcher `id`'s events, and whether a
/// revision was split across responses.
fn revs_of(got: &[WatchResponse], id: i64) -> (Vec<i64>, bool) {
    let mut out = Vec::new();
    let mut where_: HashMap<i64, usize> = HashMap::new();
    let mut split = false;
    for (n, r) in got.iter().enumerate().filter(|(_, r)| r.watch_id() == id) {
        for e in r.events() {
            let rev = e.kv().expect("kv").mod_revision();
            if *where_.entry(rev).or_insert(n) != n {
                split = true;
            }
            out.push(rev);
        }
    }
    (out, split)
}

/// A predicate over a growing response list: at least `n` events in all (counted
/// incrementally).
fn count_events_at_least(n: usize) -> impl FnMut(&[WatchResponse]) -> bool {
    let (mut seen, mut events) = (0usize, 0usize);
    move |g: &[WatchResponse]| {
        for r in &g[seen..] {
            events += r.events().len();
        }
        seen = g.len();
        events >= n
    }
}

/// The expected revision list: every revision in `revs`, STALL_KEYS events each.
fn expand(revs: &[i64]) -> Vec<i64> {
    revs.iter().flat_map(|r| std::iter::repeat_n(*r, STALL_KEYS)).collect()
}

/// A stream whose client never reads, watching a busy prefix, while a writer does txns of
/// 100 puts of 1 KiB each: the writer's latency does not depend on it (p99 with the stalled
/// streams vs without, generous bound; every write within a deadline), a healthy watcher
/// gets every event meanwhile, and the stalled client, once it reads again, gets every event
/// exactly once in order (caught up from the revision log); a second stalled client whose
/// revisions were compacted meanwhile gets the events up to some point and then the
/// compacted response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_stream_does_not_slow_writes_and_catches_up() {
    const BEFORE: usize = 10;
    // Enough revisions (100 events each) to fill the stalled client's HTTP/2 window, the
    // server's send queue and the watcher's bounded in-memory queue (Cairn: about 130).
    const DURING: usize = 150;
    let t0 = Instant::now();
    let server = Server::start(subject_kind()).await;
    let mut writer = server.client().await;
    let healthy_client = server.client().await;
    let r0 = writer.get("big/", None).await.expect("get").header().expect("header").revision();
    let mut healthy = Recorder::open(&healthy_client, "big/", prefix().with_start_revision(r0 + 1)).await;

    let mut before = Vec::new();
    let mut revs_before = Vec::new();
    for n in 0..BEFORE {
        let (rev, d) = big_txn(&mut writer, n).await;
        before.push(d);
        revs_before.push(rev);
    }
    let r1 = *revs_before.last().expect("writes");
    // Two stalled clients, each on its own connection (a stalled stream holds its
    // connection's flow-control window).
    let stalled_client = server.client().await;
    let compacted_client = server.client().await;
    let mut stalled = Recorder::open_stalled(&stalled_client, "big/", prefix().with_start_revision(r1 + 1)).await;
    let mut compacted = Recorder::open_stalled(&compacted_client, "big/", prefix().with_start_revision(r1 + 1)).await;

    let deadline = Instant::now() + Duration::from_secs(120);
    let mut during = Vec::new();
    let mut revs_during = Vec::new();
    for n in BEFORE..BEFORE + DURING {
        let (rev, d) = big_txn(&mut writer, n).await;
        during.push(d);
        revs_during.push(rev);
        assert!(Instant::now() < deadline, "writes stalled: {} of {DURING} done in 120 s", revs_during.len());
    }
    let written = t0.elapsed();

    // The healthy watcher got everything, exactly once, in order.
    let all: Vec<i64> = revs_before.iter().chain(revs_during.iter()).copied().collect();
    let want_healthy = expand(&all);
    let ok = healthy.until(Duration::from_secs(60), count_events_at_least(want_healthy.len())).await;
    let (got, split) = revs_of(&healthy.got, 0);
    assert!(
        ok && got == want_healthy && !split,
        "healthy watcher: {} events of {}, split {split}",
        got.len(),
        want_healthy.len()
    );

    // The stalled client reads again: every event since r1, exactly once, in order.
    let want = expand(&revs_during);
    stalled.resume();
    let ok = stalled.until(Duration::from_secs(60), count_events_at_least(want.len())).await;
    stalled.drain_for(QUIET).await;
    let (got, split) = revs_of(&stalled.got, 0);
    let first_diff = got.iter().zip(want.iter()).position(|(a, b)| a != b);
    assert!(
        ok && got == want && !split,
        "stalled watcher after resuming: {} events of {} (first difference at {first_diff:?}), a revision split \
         across responses: {split}; stream ended: {:?}",
        got.len(),
        want.len(),
        stalled.ended
    );
    assert!(stalled.got.iter().all(|r| r.compact_revision() == 0 && !r.canceled()));
    // Responses holding more than one revision: replays from the revision log.
    let replayed = stalled.got.iter().filter(|r| r.events().len() > STALL_KEYS).count();

    // Compact everything, then let the second stalled client read.
    let current = *revs_during.last().expect("writes");
    // Not physical: the compacted revision moves at once, which is what the watch checks.
    writer.compact(current, None).await.expect("compact");
    compacted.resume();
    let mut enough = count_events_at_least(want.len());
    let ok = compacted
        .until(Duration::from_secs(60), |g| {
            let n = enough(g);
            n || g.iter().any(|r| r.compact_revision() != 0)
        })
        .await;
    compacted.drain_for(QUIET).await;
    let (got, split) = revs_of(&compacted.got, 0);
    assert!(ok, "the compacted client got neither every event nor a compacted response: {} events", got.len());
    assert!(
        !split && got.len() <= want.len() && got[..] == want[..got.len()],
        "the events before the compacted response are a gapless prefix of the expected ones"
    );
    let cancel: Vec<&WatchResponse> = compacted.got.iter().filter(|r| r.compact_revision() != 0).collect();
    if got.len() < want.len() {
        assert_eq!(cancel.len(), 1, "one compacted response");
        let c = cancel[0];
        assert!(c.canceled() && c.compact_revision() == current, "compacted response: {c:?}");
        let last = compacted.got.last().expect("responses");
        assert!(last.compact_revision() != 0, "nothing after the compacted response");
    }
    eprintln!(
        "stalled: the resumed client got {} responses ({replayed} with several revisions); {} events delivered to \
         the compacted client before {} (of {})",
        stalled.got.len(),
        got.len(),
        if cancel.is_empty() { "no compacted response".to_string() } else { format!("compact_revision {current}") },
        want.len(),
    );

    // Writes again without stalled streams (the store is as large as during the stall), for
    // the latency comparison.
    drop(stalled);
    drop(compacted);
    let mut after = Vec::new();
    for n in 0..BEFORE {
        after.push(big_txn(&mut writer, BEFORE + DURING + n).await.1);
    }
    let (p_before, p_during, p_after) = (p99(before), p99(during), p99(after));
    eprintln!(
        "stalled: p99 write latency {p_before:?} before, {p_during:?} with the stalled streams, {p_after:?} after; \
         writes done at {written:?}, test at {:?}",
        t0.elapsed()
    );
    let baseline = p_before.max(p_after);
    assert!(
        p_during <= baseline * 10 + Duration::from_secs(1),
        "write p99 with stalled watch streams {p_during:?} vs {baseline:?} without"
    );
}

// ================================================================ restart

/// Watchers reconnecting after a kill -9 and restart with start_revision = last seen + 1 get
/// exactly the events they missed (written before and after the crash), then live events; a
/// compaction from before the crash still holds after it.
#[tokio::test]
async fn resume_after_restart_gets_exactly_the_missed_events() {
    let mut server = Server::start(subject_kind()).await;
    let mut c = server.client().await;
    let mut a = Recorder::open(&c, "rs/", prefix()).await;
    let mut b = Recorder::open(&c, "rs/", prefix()).await;
    assert!(a.until(WAIT, |g| has_created(g, 0)).await && b.until(WAIT, |g| has_created(g, 0)).await);
    let mut written: BTreeMap<i64, (String, String)> = BTreeMap::new();
    for i in 0..10 {
        let (k, v) = (format!("rs/{i:02}"), format!("v{i}"));
        let rev = c.put(k.as_str(), v.as_str(), None).await.expect("put").header().expect("header").revision();
        written.insert(rev, (k, v));
    }
    assert!(a.until(WAIT, |g| events_of(g, 0).len() >= 10).await);
    let a_last = a.events(0).last().expect("events").2;
    drop(a); // a disconnects
    for i in 10..20 {
        let (k, v) = (format!("rs/{i:02}"), format!("v{i}"));
        let rev = c.put(k.as_str(), v.as_str(), None).await.expect("put").header().expect("header").revision();
        written.insert(rev, (k, v));
    }
    assert!(b.until(WAIT, |g| events_of(g, 0).len() >= 20).await);
    let b_last = b.events(0).last().expect("events").2;
    assert_eq!(b_last, *written.keys().last().expect("writes"));
    c.compact(a_last, None).await.expect("compact");

    server.kill9();
    server.restart().await;
    drop(b);
    let mut c = server.client().await;
    for i in 20..30 {
        let (k, v) = (format!("rs/{i:02}"), format!("v{i}"));
        let rev = c.put(k.as_str(), v.as_str(), None).await.expect("put").header().expect("header").revision();
        written.insert(rev, (k, v));
    }
    let mut a = Recorder::open(&c, "rs/", prefix().with_start_revision(a_last + 1)).await;
    let mut b = Recorder::open(&c, "rs/", prefix().with_start_revision(b_last + 1)).await;
    let mut old = Recorder::open(&c, "rs/", prefix().with_start_revision(a_last - 1)).await;
    let (k, v) = ("rs/live".to_string(), "live".to_string());
    // Wait until both resumed watchers have replayed, then a live write.
    let missed_a = written.range(a_last + 1..).count();
    let missed_b = written.range(b_last + 1..).count();
    assert!(a.until(WAIT, |g| events_of(g, 0).len() >= missed_a).await, "a replayed {:?}", a.events(0).len());
    assert!(b.until(WAIT, |g| events_of(g, 0).len() >= missed_b).await, "b replayed {:?}", b.events(0).len());
    let rev = c.put(k.as_str(), v.as_str(), None).await.expect("put").header().expect("header").revision();
    written.insert(rev, (k, v));
    for (name, rec, last) in [("a", &mut a, a_last), ("b", &mut b, b_last)] {
        let want: Vec<(i64, String, String)> =
            written.range(last + 1..).map(|(r, (k, v))| (*r, k.clone(), v.clone())).collect();
        assert!(rec.until(WAIT, |g| events_of(g, 0).len() >= want.len()).await, "{name}: live event");
        rec.drain_for(QUIET).await;
        let got: Vec<(i64, String, String)> = rec
            .got
            .iter()
            .flat_map(|r| r.events().iter())
            .map(|e| {
                let kv = e.kv().expect("kv");
                assert_eq!(e.event_type(), EventType::Put);
                (
                    kv.mod_revision(),
                    String::from_utf8_lossy(kv.key()).into_owned(),
                    String::from_utf8_lossy(kv.value()).into_owned(),
                )
            })
            .collect();
        assert_eq!(got, want, "watcher {name} resumed at {} after the restart", last + 1);
    }
    // Below the compaction made before the crash: compacted.
    assert!(old.until(WAIT, |g| g.iter().any(|r| r.compact_revision() != 0)).await, "{:?}", old.got);
    let cr = old.got.iter().find(|r| r.compact_revision() != 0).expect("compacted");
    assert!(cr.canceled() && cr.compact_revision() == a_last, "{cr:?}");
}
