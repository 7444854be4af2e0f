//! Crash test: writers running, kill -9 the server, restart. Every acknowledged write must
//! be there with the revision it was acknowledged at, revisions continue after the crash
//! (none reused), and no txn is half-applied. Three crash rounds on one data directory.
//! Guarantees checked: etcd's "KV: durable, one revision per mutation" (API guarantees) and
//! the crash bugs etcd found in itself (etcd#13766, #14370, #17780). One variant kills the
//! server while defragmentations run back to back.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_tests::harness::{Server, ServerKind};
use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp};

const WRITERS: usize = 8;
/// Acknowledged writes to wait for before each crash.
const ACKED_BEFORE_CRASH: usize = 150;

#[derive(Clone, Debug)]
struct Acked {
    /// Keys written by this operation, all with `value`.
    keys: Vec<String>,
    value: String,
    revision: i64,
}

async fn writer(
    endpoint: String,
    id: usize,
    round: usize,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<Acked>>>,
    count: Arc<AtomicUsize>,
) {
    let Ok(mut c) = etcd_client::Client::connect([endpoint.as_str()], None).await else { return };
    let mut seq = 0u64;
    while !stop.load(Ordering::Acquire) {
        seq += 1;
        let value = format!("r{round}-w{id}-{seq}");
        let res = if seq.is_multiple_of(3) {
            // A two-key txn, kube style: create-if-absent of both keys.
            let a = format!("txn/{round}/{id}/{seq}/a");
            let b = format!("txn/{round}/{id}/{seq}/b");
            let txn = Txn::new()
                .when([Compare::mod_revision(a.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(a.clone(), value.clone(), None), TxnOp::put(b.clone(), value.clone(), None)]);
            c.txn(txn).await.map(|r| {
                assert!(r.succeeded(), "create of fresh keys {a} must succeed");
                (vec![a, b], r.header().map_or(0, |h| h.revision()))
            })
        } else {
            let k = format!("put/{round}/{id}/{seq}");
            c.put(k.clone(), value.clone(), None).await.map(|r| (vec![k], r.header().map_or(0, |h| h.revision())))
        };
        match res {
            Ok((keys, revision)) => {
                acked.lock().expect("acked lock").push(Acked { keys, value, revision });
                count.fetch_add(1, Ordering::AcqRel);
            }
            // The server is gone (or going): this write may or may not have happened.
            Err(_) => return,
        }
    }
}

async fn wait_for(count: &AtomicUsize, n: usize, server: &Server) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while count.load(Ordering::Acquire) < n {
        assert!(
            Instant::now() < deadline,
            "writers acknowledged only {} writes in 60 s\n{}",
            count.load(Ordering::Acquire),
            server.log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill9_under_writes_loses_no_acknowledged_write() {
    crash_rounds(&[], false).await;
}

/// The same with defragmentations running back to back while the writers write, so that
/// the kill lands in the middle of one (copying, catching up or switching files).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill9_during_defragment_loses_no_acknowledged_write() {
    crash_rounds(&[], true).await;
}

/// The same with a raft snapshot (and log purge) every 64 entries, so that restarts begin
/// from a snapshot and a purged log.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill9_with_frequent_snapshots_loses_no_acknowledged_write() {
    crash_rounds(&["--snapshot-count", "64"], false).await;
}

/// Garbage for a defragmentation to reclaim: 4 MB written, deleted, compacted.
async fn make_garbage(server: &Server) {
    let mut c = server.client().await;
    let big = "x".repeat(40_000);
    for i in 0..100 {
        c.put(format!("garbage/{i:03}"), big.clone(), None).await.expect("put garbage");
    }
    c.delete("garbage/", Some(etcd_client::DeleteOptions::new().with_prefix())).await.expect("delete garbage");
    let rev = c.get("x", None).await.expect("get").header().expect("header").revision();
    c.compact(rev, Some(etcd_client::CompactionOptions::new().with_physical())).await.expect("compact");
}

async fn crash_rounds(args: &[&str], defrag: bool) {
    let mut server = Server::start_with_args(ServerKind::Cairn, args).await;
    let acked: Arc<Mutex<Vec<Acked>>> = Arc::new(Mutex::new(Vec::new()));
    let mut last_revision = 1i64;
    for round in 0..3 {
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicUsize::new(0));
        if defrag {
            make_garbage(&server).await;
        }
        let tasks: Vec<_> = (0..WRITERS)
            .map(|id| tokio::spawn(writer(server.endpoint(), id, round, stop.clone(), acked.clone(), count.clone())))
            .collect();
        let defrags = Arc::new(AtomicUsize::new(0));
        let defragger = defrag.then(|| {
            let (endpoint, stop, defrags) = (server.endpoint(), stop.clone(), defrags.clone());
            tokio::spawn(async move {
                let Ok(c) = etcd_client::Client::connect([endpoint.as_str()], None).await else { return };
                let mut m = c.maintenance_client();
                while !stop.load(Ordering::Acquire) {
                    if m.defragment().await.is_err() {
                        return;
                    }
                    defrags.fetch_add(1, Ordering::AcqRel);
                }
            })
        });
        wait_for(&count, ACKED_BEFORE_CRASH, &server).await;
        if defrag {
            // At least one defragmentation finished under the writes before the kill.
            let deadline = Instant::now() + Duration::from_secs(60);
            while defrags.load(Ordering::Acquire) == 0 {
                assert!(Instant::now() < deadline, "no defragmentation finished in 60 s\n{}", server.log_tail(40));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        server.kill9();
        stop.store(true, Ordering::Release);
        for t in tasks {
            t.await.expect("writer task");
        }
        if let Some(d) = defragger {
            d.await.expect("defragment task");
        }
        server.restart().await;
        // An interrupted defragmentation leaves nothing behind once the store is open.
        for leftover in ["state.redb.defrag", "state.redb.defrag-log"] {
            assert!(!server.data_dir().join("member").join(leftover).exists(), "{leftover} left after restart");
        }

        let mut c = server.client().await;
        let all = c.get("", Some(GetOptions::new().with_from_key())).await.expect("read everything after restart");
        let revision = all.header().expect("header").revision();
        let store: BTreeMap<String, (String, i64, i64)> = all
            .kvs()
            .iter()
            .map(|kv| {
                (
                    kv.key_str().expect("utf-8 key").to_string(),
                    (kv.value_str().expect("utf-8 value").to_string(), kv.mod_revision(), kv.version()),
                )
            })
            .collect();
        let acked_now = acked.lock().expect("acked lock").clone();
        let mut seen_revisions = std::collections::HashSet::new();
        for a in &acked_now {
            assert!(seen_revisions.insert(a.revision), "two acknowledged writes share revision {}", a.revision);
            for k in &a.keys {
                let (v, mod_rev, version) = store.get(k).unwrap_or_else(|| {
                    panic!("round {round}: acknowledged write of {k} at revision {} lost", a.revision)
                });
                assert_eq!(v, &a.value, "round {round}: {k} has another value");
                assert_eq!(*mod_rev, a.revision, "round {round}: {k} has another mod_revision");
                assert_eq!(*version, 1, "round {round}: {k} was written once");
            }
            assert!(a.revision <= revision, "acknowledged revision {} above the store's {revision}", a.revision);
        }
        // No txn half-applied, acknowledged or not.
        for (k, (v, mod_rev, _)) in store.range("txn/".to_string()..) {
            if let Some(prefix) = k.strip_suffix("/a") {
                let b = store.get(&format!("{prefix}/b")).unwrap_or_else(|| panic!("txn half-applied: {k} without /b"));
                assert_eq!((&b.0, b.1), (v, *mod_rev), "txn keys of {prefix} differ");
            }
            if let Some(prefix) = k.strip_suffix("/b") {
                assert!(store.contains_key(&format!("{prefix}/a")), "txn half-applied: {k} without /a");
            }
        }
        // Revisions continue: nothing reused, nothing goes back.
        assert!(revision >= last_revision, "store revision went back from {last_revision} to {revision}");
        let next = c.put("after-crash", format!("{round}"), None).await.expect("write after restart");
        let next_rev = next.header().expect("header").revision();
        assert_eq!(next_rev, revision + 1, "the first write after restart makes the next revision");
        last_revision = next_rev;
    }
}
