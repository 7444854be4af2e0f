//! An unmodified kube-apiserver end to end, differential: the same scenario runs against a
//! kube-apiserver on real etcd 3.5.1 and against one on the server under test (Cairn, or etcd
//! again with `CAIRN_DIFF_AGAINST=etcd`), and the normalised transcripts must be equal. Two
//! tests:
//!
//! - `kube_apiserver_on_etcd_and_cairn`: one store node, the API semantics (below);
//! - `kube_apiserver_on_three_member_clusters`: a 3-member cluster, the apiserver given all
//!   three client URLs (`--etcd-servers`), under faults (see [`cluster_scenario`]): kill -9 of
//!   the store's leader while a writer creates and patches configmaps (the apiserver must
//!   recover within 60 s and serve requests after it), a watch opened before the kill (every
//!   write that took effect, once, in order, resumed from its last resourceVersion if the
//!   stream ends), the killed member restarted and caught up (etcdctl `--consistency=s` on
//!   each member shows the same configmaps), a follower paused (SIGSTOP) for 5 s under the
//!   writes. Its transcript holds outcomes only; timings (how long writes failed or hung,
//!   how long `/readyz` was not ok, how many requests failed) are printed, not compared.
//!
//! Opt-in: the tests run only when `CAIRN_KUBE_APISERVER` names a kube-apiserver binary
//! (`scripts/kube-e2e.sh` builds one with `scripts/build-kube-apiserver.sh` and runs them);
//! without it each test prints `SKIPPED: ...` and returns. Building kube-apiserver from
//! source takes ~14 minutes and ~3.5 GB of Go caches, too much for the default suite. Both
//! take `ONE_CLUSTER_AT_A_TIME` (a kube-apiserver is heavy) and stop the apiserver before the
//! store (an apiserver whose store is gone hangs in its shutdown); their process guards kill
//! both, apiserver first, on failure.
//!
//! The single-node scenario. The apiserver runs with `--watch-cache-sizes=configmaps#0`: configmaps are served by the
//! store itself (gets, paginated lists, lists at an old revision, watches from a revision go
//! to the store as etcd Range/Txn/Watch requests), everything else through the apiserver's
//! watch cache as in production. The scenario (see [`scenario`]):
//!
//! - `/readyz`, `/livez` and their `etcd` checks;
//! - a namespace: create, create again (409 AlreadyExists), get;
//! - a configmap's life: create, get, update, update with a stale resourceVersion (409
//!   Conflict), unconditional update, merge patch, delete with a stale precondition (409),
//!   delete, get and delete of the deleted object (404); a watch opened before (from the
//!   list's resourceVersion) sees ADDED, MODIFIED x3, DELETED in order; watches opened
//!   afterwards from that resourceVersion and from a middle one replay the same events;
//! - lists at old resourceVersions (`resourceVersionMatch=Exact`) and at a future one;
//! - pagination: 30 configmaps listed with `limit=10` following `continue` tokens while
//!   objects are created and deleted between pages (the pages show the first page's
//!   snapshot), a fresh paginated list, a paginated list with a label selector;
//! - a ~1 MB configmap (stored and read back), one over the apiserver's 1 MiB limit (422);
//!   one whose stored form is over etcd's 1.5 MiB request limit only with its managedFields
//!   (the apiserver retries without them when the store answers "request is too large"),
//!   and one over the limit without them (500 "etcdserver: request is too large");
//! - deleting a namespace: Terminating, creation in it refused (403), `finalize`, gone;
//! - the store afterwards, read with etcdctl: the keys under `/registry/configmaps/<ns>/`
//!   and `/registry/namespaces/<ns>`, the stored value of the big configmap (protobuf
//!   envelope `k8s\0`), the resources the apiserver's post-start hooks wrote;
//! - a compaction of the store (etcdctl) under the running apiserver: a list at an older
//!   resourceVersion, a continue token from before and a watch from an older
//!   resourceVersion get 410 Gone (Expired); current objects are still served.
//!
//! Normalised: uids, timestamps, continue tokens, and resourceVersions. The resourceVersions
//! of the scenario's objects are replaced by their rank among all object resourceVersions of
//! the transcript (`rv1 < rv2 < ...`), so their order and equality are compared, not their
//! values (the apiserver itself writes to the store in the background, on its own schedule).
//! A list's own resourceVersion is checked against its items (not below the newest one).

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_tests::harness::{etcdctl, free_port, subject_kind, Cluster, ClusterOptions, Server, ServerKind};
use serde_json::{json, Value};
use tempfile::TempDir;

/// The environment variable naming the kube-apiserver binary.
const APISERVER_ENV: &str = "CAIRN_KUBE_APISERVER";
/// The bearer token of the admin user (group `system:masters`) in the token file.
const TOKEN: &str = "cairn-kube-e2e-token";
/// How long the apiserver may take to answer `/readyz` with `ok` (it creates its default
/// objects, RBAC roles, priority levels first; slow on a loaded 2-core machine).
const READY_TIMEOUT: Duration = Duration::from_secs(180);
/// How long the apiserver may take to exit after SIGTERM (it drains requests first).
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// `curl --max-time` of one request.
const REQUEST_TIMEOUT_SECS: &str = "60";
/// How long a watch may take to deliver the events it is expected to deliver.
const WATCH_WAIT: Duration = Duration::from_secs(30);
/// Lines of the apiserver log shown on failures.
const LOG_TAIL_LINES: usize = 40;
/// etcd's default `--max-request-bytes` (1.5 MiB).
const ETCD_MAX_REQUEST_BYTES: usize = 1536 * 1024;
/// The apiserver's limit on a configmap's data + binaryData (`MaxSecretSize`, 1 MiB).
const CONFIGMAP_MAX_BYTES: usize = 1024 * 1024;

const NS: &str = "kube-e2e";
const PAGE_NS: &str = "kube-e2e-page";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_apiserver_on_etcd_and_cairn() {
    let Some(apiserver) = apiserver_binary("kube_apiserver_on_etcd_and_cairn") else { return };
    // A kube-apiserver is heavy: never next to a 3-member cluster of another test.
    let _one = crate::cluster::ONE_CLUSTER_AT_A_TIME.lock().await;
    let subject = subject_kind();
    let _ = ServerKind::Etcd.binary();
    let _ = subject.binary();

    let want = run_against(ServerKind::Etcd, &apiserver).await;
    if std::env::var("CAIRN_DIFF_PRINT").is_ok_and(|v| v == "1") {
        println!("kube-apiserver scenario (etcd):\n{}", want.join("\n"));
    }
    let got = run_against(subject, &apiserver).await;
    assert_equal_transcripts("kube-apiserver scenario", subject, &want, &got);
    println!("kube-apiserver scenario: {} transcript lines equal on etcd and {subject}", want.len());
}

/// The kube-apiserver binary named by [`APISERVER_ENV`]; `None` (after printing `SKIPPED`)
/// without it.
fn apiserver_binary(test: &str) -> Option<PathBuf> {
    let Some(apiserver) = std::env::var_os(APISERVER_ENV).filter(|p| !p.is_empty()).map(PathBuf::from) else {
        println!(
            "SKIPPED: set {APISERVER_ENV} (scripts/kube-e2e.sh): kube::{test} runs an unmodified kube-apiserver \
             against etcd and Cairn and needs its binary; it did not run"
        );
        return None;
    };
    assert!(apiserver.is_file(), "{APISERVER_ENV}={} is not a file", apiserver.display());
    Some(apiserver)
}

fn assert_equal_transcripts(what: &str, subject: ServerKind, want: &[String], got: &[String]) {
    for (i, (w, g)) in want.iter().zip(got.iter()).enumerate() {
        assert_eq!(
            g,
            w,
            "{what}: line {i} differs from etcd\netcd transcript:\n{}\n\n{subject} transcript:\n{}",
            want.join("\n"),
            got.join("\n")
        );
    }
    assert_eq!(
        got.len(),
        want.len(),
        "{what}: transcript lengths differ\netcd:\n{}\n\n{subject}:\n{}",
        want.join("\n"),
        got.join("\n")
    );
}

/// Starts a store of `kind` and a kube-apiserver on it, runs the scenario, stops the
/// apiserver and then the store (an apiserver whose store is gone hangs in its shutdown).
async fn run_against(kind: ServerKind, apiserver_bin: &Path) -> Vec<String> {
    let t0 = Instant::now();
    let mut store = Server::start(kind).await;
    let mut api = KubeApiserver::start(apiserver_bin, &store.client_url(), &[]);
    let ready_after = api.wait_ready(|| (!store.is_running()).then(|| format!("{store} exited")));
    println!("[{kind}] kube-apiserver ready {ready_after:?} after its start");
    let t1 = Instant::now();
    let mut transcript = scenario(&api, &store);
    println!("[{kind}] scenario took {:?}", t1.elapsed());
    let stopped = api.stop();
    println!("[{kind}] kube-apiserver stopped in {stopped:?}");
    let status = store.stop();
    // etcd shuts down gracefully, then re-raises SIGTERM on itself; Cairn exits with 0.
    assert!(status.success() || status.signal() == Some(libc::SIGTERM), "{kind} exited with {status} after SIGTERM");
    rank_resource_versions(&mut transcript);
    println!("[{kind}] total {:?}", t0.elapsed());
    transcript
}

// ================================================================ the scenario

fn scenario(api: &KubeApiserver, store: &Server) -> Vec<String> {
    let mut t = Vec::new();
    health(api, &mut t);
    namespace(api, &mut t);
    let (list_rv, created_rv) = configmap_life(api, &mut t);
    pagination(api, &mut t);
    big_objects(api, &mut t);
    namespace_deletion(api, &mut t);
    store_contents(store, &mut t);
    compaction(api, store, &list_rv, &created_rv, &mut t);
    t
}

fn health(api: &KubeApiserver, t: &mut Vec<String>) {
    t.push("== health".into());
    for path in ["/readyz", "/livez", "/readyz/etcd", "/livez/etcd", "/readyz/etcd-readiness"] {
        let r = api.get(path);
        t.push(format!("GET {path} -> {} {}", r.code, r.body.trim()));
    }
    // The verbose check lists: every check of the binary, all passing.
    for path in ["/readyz?verbose", "/livez?verbose"] {
        let r = api.get(path);
        let failing: Vec<&str> = r.body.lines().filter(|l| l.starts_with("[-]")).collect();
        let checks = r.body.lines().filter(|l| l.starts_with("[+]")).count();
        t.push(format!("GET {path} -> {} failing={failing:?} passing>0={}", r.code, checks > 0));
    }
}

fn namespace(api: &KubeApiserver, t: &mut Vec<String>) {
    t.push("== namespace".into());
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}});
    let r = api.call("POST", "/api/v1/namespaces", Some(&ns));
    t.push(format!("create namespace -> {}", r.show()));
    let r = api.call("POST", "/api/v1/namespaces", Some(&ns));
    t.push(format!("create namespace again -> {}", r.show()));
    let r = api.get(&format!("/api/v1/namespaces/{NS}"));
    t.push(format!("get namespace -> {}", r.show()));
}

fn configmap(name: &str, data: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data})
}

fn configmap_life(api: &KubeApiserver, t: &mut Vec<String>) -> (String, String) {
    t.push("== configmap life".into());
    let base = format!("/api/v1/namespaces/{NS}/configmaps");
    let cm = format!("{base}/cm1");
    let list = api.get(&base);
    t.push(format!("list -> {}", list.show()));
    let rv0 = list.rv();
    let live = Watch::open(api, &format!("{base}?watch=1&resourceVersion={rv0}"));

    let r = api.call("POST", &base, Some(&configmap("cm1", json!({"k": "v1"}))));
    t.push(format!("create cm1 -> {}", r.show()));
    let rv_created = r.rv();
    let r = api.get(&cm);
    t.push(format!("get cm1 -> {}", r.show()));
    let mut obj = r.json();
    obj["data"] = json!({"k": "v2"});
    let r = api.call("PUT", &cm, Some(&obj));
    t.push(format!("update cm1 at its resourceVersion -> {}", r.show()));
    let rv_updated = r.rv();
    obj["data"] = json!({"k": "v3"});
    let r = api.call("PUT", &cm, Some(&obj));
    t.push(format!("update cm1 at the stale resourceVersion -> {}", r.show()));
    obj["metadata"].as_object_mut().expect("metadata is an object").remove("resourceVersion");
    let r = api.call("PUT", &cm, Some(&obj));
    t.push(format!("update cm1 without resourceVersion -> {}", r.show()));
    let r = api.call_typed("PATCH", &cm, "application/merge-patch+json", Some(&json!({"data": {"k2": "x"}})));
    t.push(format!("merge patch cm1 -> {}", r.show()));
    let r = api.get(&cm);
    t.push(format!("get cm1 -> {}", r.show()));
    let stale = json!({"kind": "DeleteOptions", "apiVersion": "v1", "preconditions": {"resourceVersion": rv_created}});
    let r = api.call("DELETE", &cm, Some(&stale));
    t.push(format!("delete cm1 with a stale resourceVersion precondition -> {}", r.show()));
    let r = api.call("DELETE", &cm, None);
    t.push(format!("delete cm1 -> {}", r.show()));
    let r = api.get(&cm);
    t.push(format!("get deleted cm1 -> {}", r.show()));
    let r = api.call("DELETE", &cm, None);
    t.push(format!("delete deleted cm1 -> {}", r.show()));

    t.push(format!("watch opened before, from the list's resourceVersion: {}", live.events(5).join(" | ")));
    let replay = Watch::open(api, &format!("{base}?watch=1&resourceVersion={rv0}"));
    t.push(format!("watch opened after, from the list's resourceVersion: {}", replay.events(5).join(" | ")));
    let middle = Watch::open(api, &format!("{base}?watch=1&resourceVersion={rv_updated}"));
    t.push(format!("watch from the first update's resourceVersion: {}", middle.events(3).join(" | ")));

    t.push("== lists at old resourceVersions".into());
    for (what, rv) in [("creation", &rv_created), ("first update", &rv_updated)] {
        let r = api.get(&format!("{base}?resourceVersion={rv}&resourceVersionMatch=Exact"));
        t.push(format!("list at cm1's {what} (Exact) -> {}", r.show()));
    }
    let r = api.get(&format!("{base}?resourceVersion={rv_created}&resourceVersionMatch=NotOlderThan"));
    t.push(format!("list not older than cm1's creation -> {}", r.show()));
    let future = rv0.parse::<u64>().expect("a list resourceVersion is a number") + 1_000_000;
    let r = api.get(&format!("{base}?resourceVersion={future}&resourceVersionMatch=Exact"));
    t.push(format!("list at a future resourceVersion (Exact) -> {}", r.show_with(&[&future.to_string()])));
    (rv0, rv_created)
}

fn pagination(api: &KubeApiserver, t: &mut Vec<String>) {
    t.push("== pagination".into());
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": PAGE_NS}});
    let r = api.call("POST", "/api/v1/namespaces", Some(&ns));
    t.push(format!("create namespace {PAGE_NS} -> {}", r.code));
    let base = format!("/api/v1/namespaces/{PAGE_NS}/configmaps");
    let mut codes = BTreeSet::new();
    let mut rvs = Vec::new();
    for i in 0..30 {
        let mut cm = configmap(&format!("cm-{i:02}"), json!({"i": i.to_string()}));
        cm["metadata"]["labels"] = json!({"parity": if i % 2 == 0 { "even" } else { "odd" }});
        let r = api.call("POST", &base, Some(&cm));
        codes.insert(r.code);
        rvs.push(r.rv().parse::<u64>().unwrap_or(0));
    }
    let increasing = rvs.windows(2).all(|w| w[0] < w[1]);
    t.push(format!("create cm-00..cm-29 -> codes {codes:?}, resourceVersions increasing: {increasing}"));

    let first = api.get(&format!("{base}?limit=10"));
    t.push(format!("list limit=10 -> {}", first.show()));
    let snapshot_rv = first.rv();
    // Between pages: a new object after the last page, one deleted from the second page. The
    // next pages are read at the first page's revision and show neither change.
    let r = api.call("POST", &base, Some(&configmap("cm-30", json!({}))));
    t.push(format!("create cm-30 between pages -> {}", r.code));
    let r = api.call("DELETE", &format!("{base}/cm-15"), None);
    t.push(format!("delete cm-15 between pages -> {}", r.code));
    let mut token = first.continue_token();
    let mut page = 2;
    while let Some(c) = token {
        let r = api.get(&format!("{base}?limit=10&continue={}", url_encode(&c)));
        t.push(format!("list limit=10 page {page} -> {}", r.show()));
        t.push(format!("page {page} served at the first page's resourceVersion: {}", r.rv() == snapshot_rv));
        token = r.continue_token();
        page += 1;
        assert!(page < 10, "pagination does not end");
    }
    t.push(format!("paginated list: {} pages", page - 1));

    let (names, pages) = api.list_all(&format!("{base}?limit=10"));
    t.push(format!("fresh paginated list -> {pages} pages, {} items: {}", names.len(), names.join(",")));
    let (names, pages) = api.list_all(&format!("{base}?limit=4&labelSelector=parity%3Deven"));
    t.push(format!("paginated list parity=even limit=4 -> {pages} pages, items: {}", names.join(",")));
    let r = api.get(&format!("{base}?labelSelector=parity%3Dodd&fieldSelector=metadata.name%3Dcm-07"));
    t.push(format!("list parity=odd name=cm-07 -> {}", r.show()));
}

fn big_objects(api: &KubeApiserver, t: &mut Vec<String>) {
    t.push("== big objects".into());
    let base = format!("/api/v1/namespaces/{NS}/configmaps");
    let blob = "x".repeat(1_000_000);
    let r = api.call("POST", &base, Some(&configmap("big", json!({ "blob": blob }))));
    t.push(format!("create big (1,000,000 bytes of data) -> {}", r.show()));
    let r = api.get(&format!("{base}/big"));
    t.push(format!("get big -> {}", r.show()));
    let intact = r.json()["data"]["blob"].as_str() == Some(blob.as_str());
    t.push(format!("big read back intact: {intact}"));

    let over = "y".repeat(CONFIGMAP_MAX_BYTES + 1);
    let r = api.call("POST", &base, Some(&configmap("too-big-for-kube", json!({ "blob": over }))));
    t.push(format!("create a configmap of 1 MiB + 1 -> {}", r.show()));

    // Validation counts keys + values (< 1 MiB here), but the stored object also carries
    // every key in managedFields: ~1.8 MB, over etcd's request limit (and under its gRPC
    // message limit, the request limit + 512 KiB, so the store itself answers "request is
    // too large"). The apiserver then stores the object without managedFields (~0.95 MB):
    // the answer has no managedFields if, and only if, the store refused the first write.
    let mut data = serde_json::Map::new();
    for i in 0..3500 {
        data.insert(format!("{i:04}-{}", "k".repeat(248)), json!(""));
    }
    let size: usize = data.keys().map(String::len).sum();
    assert!(size < CONFIGMAP_MAX_BYTES && 2 * size > ETCD_MAX_REQUEST_BYTES, "data of {size} bytes");
    let r = api.call("POST", &base, Some(&configmap("too-big-with-managed-fields", Value::Object(data))));
    t.push(format!("create a configmap stored as ~1.8 MB with managedFields, ~0.95 MB without -> {}", r.show()));
    let r = api.get(&format!("{base}/too-big-with-managed-fields"));
    t.push(format!("get it -> {}", r.show()));

    // Over the store's limit even without managedFields: 1,040,000 bytes of data, a 262,000
    // byte annotation and 2,500 labels of 126 bytes: ~1.63 MB stored (~1.81 MB with
    // managedFields), the apiserver's own limits all met.
    let mut cm = configmap("too-big-for-etcd", json!({ "blob": "z".repeat(1_040_000) }));
    cm["metadata"]["annotations"] = json!({ "big": "a".repeat(262_000) });
    let labels: serde_json::Map<String, Value> =
        (0..2500).map(|i| (format!("l{i:04}-{}", "l".repeat(57)), json!("v".repeat(63)))).collect();
    cm["metadata"]["labels"] = Value::Object(labels);
    let r = api.call("POST", &base, Some(&cm));
    t.push(format!("create a configmap stored as ~1.63 MB -> {}", r.show()));
    let r = api.get(&format!("{base}/too-big-for-etcd"));
    t.push(format!("get it -> {}", r.show()));
}

fn namespace_deletion(api: &KubeApiserver, t: &mut Vec<String>) {
    t.push("== namespace deletion".into());
    let path = format!("/api/v1/namespaces/{PAGE_NS}");
    let r = api.call("DELETE", &path, None);
    t.push(format!("delete namespace {PAGE_NS} -> {}", r.show()));
    let r = api.get(&path);
    t.push(format!("get it -> {}", r.show()));
    let r = api.call("POST", &format!("{path}/configmaps"), Some(&configmap("late", json!({}))));
    t.push(format!("create a configmap in it -> {}", r.show()));
    // No namespace controller runs (no kube-controller-manager): do its last step, empty the
    // finalizers, by hand. The configmaps stay in the store (nobody deletes them).
    let mut ns = api.get(&path).json();
    ns["spec"]["finalizers"] = json!([]);
    let r = api.call("PUT", &format!("{path}/finalize"), Some(&ns));
    t.push(format!("finalize it -> {}", r.show()));
    let r = api.get(&path);
    t.push(format!("get it -> {}", r.show()));
    let r = api.get("/api/v1/namespaces");
    let mut names: Vec<String> = r.json()["items"]
        .as_array()
        .map(|items| items.iter().filter_map(|i| i["metadata"]["name"].as_str().map(String::from)).collect())
        .unwrap_or_default();
    names.sort();
    t.push(format!("namespaces -> {} {}", r.code, names.join(",")));
}

fn store_contents(store: &Server, t: &mut Vec<String>) {
    t.push("== the store".into());
    let ep = store.endpoint();
    for prefix in [format!("/registry/configmaps/{NS}/"), format!("/registry/configmaps/{PAGE_NS}/")] {
        let out = etcdctl(&ep, &["get", &prefix, "--prefix", "--keys-only"]);
        let keys: Vec<&str> = out.ok().lines().filter(|l| !l.is_empty()).collect();
        t.push(format!("keys under {prefix}: {} {}", keys.len(), keys.join(",")));
    }
    for key in [format!("/registry/namespaces/{NS}"), format!("/registry/namespaces/{PAGE_NS}")] {
        let out = etcdctl(&ep, &["get", &key, "-w", "json"]);
        let count = serde_json::from_str::<Value>(out.ok()).map(|v| v["count"].as_i64().unwrap_or(0)).unwrap_or(-1);
        t.push(format!("{key}: count {count}"));
    }
    let key = format!("/registry/configmaps/{NS}/big");
    let out = etcdctl(&ep, &["get", &key, "-w", "json"]);
    let v: Value = serde_json::from_str(out.ok()).expect("etcdctl -w json prints JSON");
    let kv = &v["kvs"][0];
    let value = base64_decode(kv["value"].as_str().unwrap_or(""));
    let envelope = value.starts_with(b"k8s\0");
    let size_ok = (1_000_000..1_100_000).contains(&value.len());
    t.push(format!(
        "{key}: protobuf envelope (k8s\\0): {envelope}, 1,000,000 < size < 1,100,000: {size_ok}, version {}, \
         mod_revision {{rv:{}}}",
        kv["version"], kv["mod_revision"]
    ));
    // The apiserver's own objects are there too, under /registry/ only.
    let out = etcdctl(&ep, &["get", "", "--from-key", "--keys-only"]);
    let outside: BTreeSet<&str> = out.ok().lines().filter(|l| !l.is_empty() && !l.starts_with("/registry/")).collect();
    let resources: BTreeSet<&str> =
        out.ok().lines().filter_map(|l| l.strip_prefix("/registry/")).filter_map(|l| l.split('/').next()).collect();
    t.push(format!("keys outside /registry/: {outside:?}"));
    println!("[{}] resources under /registry/: {resources:?}", store.kind());
    // Written by the apiserver's post-start hooks, which /readyz waits for.
    let bootstrap = [
        "apiregistration.k8s.io",
        "configmaps",
        "flowschemas",
        "masterleases",
        "namespaces",
        "priorityclasses",
        "prioritylevelconfigurations",
        "ranges",
        "services",
    ];
    let missing: Vec<&str> = bootstrap.into_iter().filter(|r| !resources.contains(r)).collect();
    t.push(format!("bootstrap resources missing under /registry/: {missing:?}"));
}

/// The store compacted (with etcdctl, to its current revision) under the apiserver: reads
/// at older resourceVersions get 410 Gone, from the store's `Compacted` errors.
fn compaction(api: &KubeApiserver, store: &Server, list_rv: &str, created_rv: &str, t: &mut Vec<String>) {
    t.push("== compaction".into());
    let base = format!("/api/v1/namespaces/{NS}/configmaps");
    let first = api.get(&format!("{base}?limit=1"));
    t.push(format!(
        "list limit=1 before the compaction -> {} continue={}",
        first.code,
        first.continue_token().is_some()
    ));
    // A write after the first page: its revision is below the compaction's.
    let r = api.call("POST", &base, Some(&configmap("after-first-page", json!({}))));
    t.push(format!("create after-first-page -> {}", r.code));
    let ep = store.endpoint();
    let out = etcdctl(&ep, &["get", "compaction-probe", "-w", "json"]);
    let v: Value = serde_json::from_str(out.ok()).expect("etcdctl -w json prints JSON");
    let revision = v["header"]["revision"].as_i64().expect("a header revision").to_string();
    let out = etcdctl(&ep, &["compaction", &revision]);
    t.push(format!("etcdctl compaction <current revision> -> {}", out.ok().trim().replace(&revision, "<revision>")));

    let r = api.get(&format!("{base}?resourceVersion={created_rv}&resourceVersionMatch=Exact"));
    t.push(format!("list at cm1's creation (Exact) -> {}", r.show_with(&[created_rv, &revision])));
    if let Some(c) = first.continue_token() {
        let r = api.get(&format!("{base}?limit=1&continue={}", url_encode(&c)));
        t.push(format!("list limit=1, the continue token from before -> {}", r.show_with(&[&revision])));
    }
    let watch = Watch::open(api, &format!("{base}?watch=1&resourceVersion={list_rv}"));
    let events = watch.events(1).into_iter().map(|e| e.replace(list_rv, "<rv>").replace(&revision, "<revision>"));
    t.push(format!("watch from the first list's resourceVersion: {}", events.collect::<Vec<_>>().join(" | ")));
    let r = api.get(&format!("{base}/big"));
    t.push(format!("get big -> {}", r.show()));
}

// ================================================================ normalisation

/// Replaces every `{rv:N}` of the transcript by `rvK`, K the rank of N among all of them.
fn rank_resource_versions(transcript: &mut [String]) {
    let mut all = BTreeSet::new();
    for line in transcript.iter() {
        for n in rv_tokens(line) {
            all.insert(n);
        }
    }
    let rank = |n: u64| all.iter().position(|&m| m == n).expect("collected above") + 1;
    for line in transcript.iter_mut() {
        let mut out = String::new();
        let mut rest = line.as_str();
        while let Some(at) = rest.find("{rv:") {
            out.push_str(&rest[..at]);
            let after = &rest[at + 4..];
            let end = after.find('}').expect("a {rv: token is closed");
            match after[..end].parse::<u64>() {
                Ok(n) => out.push_str(&format!("rv{}", rank(n))),
                Err(_) => out.push_str(&format!("rv?{}", &after[..end])),
            }
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        *line = out;
    }
}

fn rv_tokens(line: &str) -> Vec<u64> {
    let mut found = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("{rv:") {
        let after = &rest[at + 4..];
        let end = after.find('}').unwrap_or(after.len());
        if let Ok(n) = after[..end].parse() {
            found.push(n);
        }
        rest = &after[end.min(after.len())..];
    }
    found
}

/// One object, without what legitimately differs between runs: uid, timestamps,
/// managedFields' times; its resourceVersion as a `{rv:N}` token. Long strings are shown by
/// length.
fn show_object(v: &Value) -> String {
    let m = &v["metadata"];
    // Items of a list carry no kind.
    let kind = v["kind"].as_str().map(|k| format!("{k} ")).unwrap_or_default();
    let mut parts = vec![format!("{kind}{}", m["name"].as_str().unwrap_or("?"))];
    if let Some(rv) = m["resourceVersion"].as_str() {
        parts.push(format!("{{rv:{rv}}}"));
    }
    parts.push(format!("uid={}", m["uid"].as_str().is_some_and(|u| u.len() == 36)));
    parts.push(format!("created={}", m["creationTimestamp"].is_string()));
    if m.get("deletionTimestamp").is_some() {
        parts.push(format!("deleting={}", m["deletionTimestamp"].is_string()));
    }
    if let Some(labels) = m.get("labels").and_then(Value::as_object) {
        if labels.len() > 10 {
            parts.push(format!("labels=<{}>", labels.len()));
        } else {
            parts.push(format!("labels={}", Value::Object(labels.clone())));
        }
    }
    if let Some(annotations) = m.get("annotations").and_then(Value::as_object) {
        let sizes: Vec<String> =
            annotations.iter().map(|(k, v)| format!("{k}=<{} bytes>", v.as_str().map_or(0, str::len))).collect();
        parts.push(format!("annotations={sizes:?}"));
    }
    if let Some(mf) = m["managedFields"].as_array() {
        let managers: Vec<String> = mf
            .iter()
            .map(|f| format!("{}/{}", f["manager"].as_str().unwrap_or("?"), f["operation"].as_str().unwrap_or("?")))
            .collect();
        parts.push(format!("managers={managers:?}"));
    }
    for field in ["spec", "status"] {
        if let Some(x) = v.get(field) {
            parts.push(format!("{field}={x}"));
        }
    }
    if let Some(data) = v.get("data").and_then(Value::as_object) {
        let shown: Vec<String> = data
            .iter()
            .map(|(k, x)| {
                let k = if k.len() > 40 { format!("<{} bytes>", k.len()) } else { k.clone() };
                match x.as_str() {
                    Some(s) if s.len() > 40 => format!("{k}=<{} bytes>", s.len()),
                    _ => format!("{k}={x}"),
                }
            })
            .collect();
        if shown.len() > 10 {
            parts.push(format!("data=<{} keys>", shown.len()));
        } else {
            parts.push(format!("data={{{}}}", shown.join(",")));
        }
    }
    parts.join(" ")
}

/// A `Status` (an error) or an object or a list, normalised.
fn show_body(v: &Value, volatile: &[&str]) -> String {
    match v["kind"].as_str() {
        Some("Status") => {
            let mut message = v["message"].as_str().unwrap_or("").to_string();
            for s in volatile {
                message = message.replace(s, "<volatile>");
            }
            let message = mark_message_rvs(&message);
            format!(
                "Status {} reason={} message={message:?} details={}",
                v["status"].as_str().unwrap_or("?"),
                v["reason"].as_str().unwrap_or(""),
                v.get("details")
                    .map(|d| {
                        let mut d = d.clone();
                        if let Some(uid) = d.get_mut("uid") {
                            *uid = json!("<uid>");
                        }
                        d.to_string()
                    })
                    .unwrap_or_default()
            )
        }
        Some(kind) if kind.ends_with("List") => {
            let items = v["items"].as_array().cloned().unwrap_or_default();
            let newest = items
                .iter()
                .filter_map(|i| i["metadata"]["resourceVersion"].as_str().and_then(|s| s.parse::<u64>().ok()))
                .max()
                .unwrap_or(0);
            let list_rv = v["metadata"]["resourceVersion"].as_str().and_then(|s| s.parse::<u64>().ok());
            let m = &v["metadata"];
            format!(
                "{kind} rv>=items={} continue={} remaining={} items=[{}]",
                list_rv.is_some_and(|r| r >= newest),
                m["continue"].as_str().is_some_and(|c| !c.is_empty()),
                m.get("remainingItemCount").map(Value::to_string).unwrap_or_else(|| "-".into()),
                items.iter().map(show_object).collect::<Vec<_>>().join("; ")
            )
        }
        Some(_) => show_object(v),
        None => format!("{v}"),
    }
}

/// In an error message, the resourceVersions of objects, `(N)` in "the ResourceVersion in
/// the precondition (N)", become `{rv:N}` tokens; the store's current revision ("current:
/// N") is masked (it depends on the apiserver's own background writes).
fn mark_message_rvs(message: &str) -> String {
    let mut out = String::new();
    let mut rest = message;
    while let Some(at) = rest.find('(') {
        out.push_str(&rest[..=at]);
        rest = &rest[at + 1..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 && rest[digits..].starts_with(')') {
            out.push_str(&format!("{{rv:{}}}", &rest[..digits]));
            rest = &rest[digits..];
        }
    }
    out.push_str(rest);
    match out.find("current: ") {
        Some(at) => {
            let tail = &out[at + 9..];
            let digits = tail.bytes().take_while(u8::is_ascii_digit).count();
            format!("{}current: <revision>{}", &out[..at], &tail[digits..])
        }
        None => out,
    }
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> Option<u32> {
        match c {
            b'A'..=b'Z' => Some(u32::from(c - b'A')),
            b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
            b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    };
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for v in s.bytes().filter_map(val) {
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

// ================================================================ the apiserver process

/// A kube-apiserver process on `127.0.0.1:<port>` with a temporary cert dir, service-account
/// key and token file, owned by the test: dropping it kills the process.
struct KubeApiserver {
    child: Option<Child>,
    /// Holds `certs/`, `sa.key`, `tokens.csv` and `apiserver.log`.
    dir: TempDir,
    api: Api,
}

impl std::ops::Deref for KubeApiserver {
    type Target = Api;

    fn deref(&self) -> &Api {
        &self.api
    }
}

impl KubeApiserver {
    /// `etcd_urls`: the `--etcd-servers` list (comma-separated client URLs); `extra_args` go
    /// after the standard flags.
    fn start(binary: &Path, etcd_urls: &str, extra_args: &[&str]) -> KubeApiserver {
        let dir = tempfile::Builder::new().prefix("cairn-tests-kube-").tempdir().expect("create a temporary directory");
        let key = dir.path().join("sa.key");
        let out = Command::new("openssl")
            .args(["genrsa", "-out"])
            .arg(&key)
            .arg("2048")
            .stderr(Stdio::null())
            .output()
            .expect("run openssl genrsa (is openssl installed?)");
        assert!(out.status.success(), "openssl genrsa failed: {out:?}");
        let tokens = dir.path().join("tokens.csv");
        std::fs::write(&tokens, format!("{TOKEN},admin,admin-uid,system:masters\n")).expect("write the token file");
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("apiserver.log")).expect("create the apiserver log");
        let mut cmd = Command::new(binary);
        cmd.arg(format!("--etcd-servers={etcd_urls}"))
            .arg("--service-account-issuer=https://kubernetes.default.svc")
            .arg(format!("--service-account-key-file={}", key.display()))
            .arg(format!("--service-account-signing-key-file={}", key.display()))
            .arg(format!("--token-auth-file={}", tokens.display()))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--secure-port={port}"))
            .arg(format!("--cert-dir={}", dir.path().join("certs").display()))
            // Configmaps straight from the store (see the module doc).
            .arg("--watch-cache-sizes=configmaps#0")
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log file handle"))
            .stderr(log);
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::process::CommandExt;
            // SAFETY: prctl is async-signal-safe and the closure allocates nothing. The
            // apiserver dies with the thread that started it instead of outliving the test.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
        }
        let child = cmd.spawn().unwrap_or_else(|e| panic!("start {}: {e}", binary.display()));
        KubeApiserver { child: Some(child), dir, api: Api { port } }
    }

    /// Waits until `/readyz` answers `ok`; returns how long that took. Panics with the log
    /// tail if the apiserver exits or is not ready in time, or if `store_down` says why the
    /// store is gone.
    fn wait_ready(&mut self, mut store_down: impl FnMut() -> Option<String>) -> Duration {
        let start = Instant::now();
        loop {
            let r = self.get("/readyz");
            if r.code == 200 && r.body.trim() == "ok" {
                return start.elapsed();
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                panic!("kube-apiserver exited with {status} before /readyz said ok\n{}", self.log_tail());
            }
            if let Some(why) = store_down() {
                panic!("{why} while kube-apiserver was starting\n{}", self.log_tail());
            }
            if start.elapsed() > READY_TIMEOUT {
                panic!(
                    "kube-apiserver not ready within {READY_TIMEOUT:?}; last /readyz: {} {}\n{}",
                    r.code,
                    r.body,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// SIGTERM, then waits for the exit (SIGKILL and panic after [`STOP_TIMEOUT`]).
    fn stop(&mut self) -> Duration {
        let start = Instant::now();
        let mut child = self.child.take().expect("kube-apiserver is running");
        let pid = libc::pid_t::try_from(child.id()).expect("pid fits in pid_t");
        // SAFETY: kill(2) on our own child, not yet reaped (its pid cannot be reused).
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return start.elapsed(),
                Ok(None) if start.elapsed() < STOP_TIMEOUT => std::thread::sleep(Duration::from_millis(100)),
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("kube-apiserver did not exit within {STOP_TIMEOUT:?} of SIGTERM\n{}", self.log_tail());
                }
            }
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("apiserver.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        format!("--- kube-apiserver log (tail) ---\n{}", lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n"))
    }
}

/// The HTTPS side of a kube-apiserver on `127.0.0.1:<port>`: requests with `curl` as the
/// admin user. Cheap to clone into the threads of the cluster test (writer, readyz prober).
#[derive(Clone)]
struct Api {
    port: u16,
}

impl Api {
    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }

    fn curl(&self) -> Command {
        self.curl_within(REQUEST_TIMEOUT_SECS)
    }

    /// `curl` with the admin token and `--max-time max_time_secs`.
    fn curl_within(&self, max_time_secs: &str) -> Command {
        let mut c = Command::new("curl");
        c.args(["-sS", "-k", "--max-time", max_time_secs, "-H"]).arg(format!("Authorization: Bearer {TOKEN}"));
        c
    }

    fn get(&self, path: &str) -> Resp {
        self.call("GET", path, None)
    }

    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Resp {
        self.call_typed(method, path, "application/json", body)
    }

    fn call_typed(&self, method: &str, path: &str, content_type: &str, body: Option<&Value>) -> Resp {
        self.request(method, path, content_type, body, REQUEST_TIMEOUT_SECS)
    }

    /// One request with `curl --max-time max_time_secs`; the body goes through stdin (it can
    /// be megabytes).
    fn request(&self, method: &str, path: &str, content_type: &str, body: Option<&Value>, max_time_secs: &str) -> Resp {
        let mut cmd = self.curl_within(max_time_secs);
        cmd.args(["-X", method, "-w", "\n%{http_code}", "-H"]).arg(format!("Content-Type: {content_type}"));
        if body.is_some() {
            cmd.args(["--data-binary", "@-"]);
        }
        cmd.arg(self.url(path)).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("run curl");
        let mut stdin = child.stdin.take().expect("piped stdin");
        let payload = body.map(Value::to_string).unwrap_or_default();
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(payload.as_bytes());
        });
        let out = child.wait_with_output().expect("wait for curl");
        let _ = writer.join();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let (body, code) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
        Resp {
            request: format!("{method} {path}"),
            code: code.trim().parse().unwrap_or(0),
            body: body.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        }
    }

    /// Follows a list's continue tokens from the first page; returns the names and the page
    /// count.
    fn list_all(&self, first: &str) -> (Vec<String>, usize) {
        let mut names = Vec::new();
        let mut path = first.to_string();
        for pages in 1..20 {
            let r = self.get(&path);
            assert_eq!(r.code, 200, "{}: {}", r.request, r.body);
            let v = r.json();
            for i in v["items"].as_array().into_iter().flatten() {
                names.push(i["metadata"]["name"].as_str().unwrap_or("?").to_string());
            }
            match r.continue_token() {
                Some(c) => path = format!("{first}&continue={}", url_encode(&c)),
                None => return (names, pages),
            }
        }
        panic!("{first}: more than 20 pages");
    }
}

impl Drop for KubeApiserver {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            if std::thread::panicking() {
                eprintln!("the test failed while kube-apiserver ran\n{}", self.log_tail());
            }
        }
    }
}

/// One HTTP answer.
struct Resp {
    request: String,
    /// 0 if curl got no answer (see `stderr`).
    code: u16,
    body: String,
    stderr: String,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| {
            panic!("{}: not JSON ({e}): code {} {:?} {}", self.request, self.code, self.body, self.stderr)
        })
    }

    fn show(&self) -> String {
        self.show_with(&[])
    }

    /// The code and the normalised body; `volatile` strings of an error message are masked.
    fn show_with(&self, volatile: &[&str]) -> String {
        if self.code == 0 {
            return format!("no answer: {}", self.stderr);
        }
        match serde_json::from_str::<Value>(&self.body) {
            Ok(v) => format!("{} {}", self.code, show_body(&v, volatile)),
            Err(_) => format!("{} {:?}", self.code, self.body),
        }
    }

    /// The resourceVersion of the object or list answered.
    fn rv(&self) -> String {
        let v = self.json();
        v["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or_else(|| panic!("{}: no resourceVersion in {}", self.request, self.body))
            .to_string()
    }

    fn continue_token(&self) -> Option<String> {
        self.json()["metadata"]["continue"].as_str().filter(|c| !c.is_empty()).map(String::from)
    }
}

/// A watch stream (`curl -N`), its lines read by a thread.
struct Watch {
    curl: Child,
    lines: mpsc::Receiver<String>,
    path: String,
}

impl Watch {
    fn open(api: &Api, path: &str) -> Watch {
        let mut cmd = api.curl();
        cmd.arg("-N").arg(api.url(path)).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null());
        let mut curl = cmd.spawn().expect("run curl for a watch");
        let stdout = curl.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Watch { curl, lines, path: path.to_string() }
    }

    /// The first `n` events, normalised (`TYPE name rv data`); fewer if they do not come
    /// within [`WATCH_WAIT`] (the transcript shows it). Then, briefly, anything more.
    fn events(mut self, n: usize) -> Vec<String> {
        let deadline = Instant::now() + WATCH_WAIT;
        let mut events = Vec::new();
        while events.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => events.push(show_event(&line)),
                Err(_) => {
                    events.push(format!("<only {} events within {WATCH_WAIT:?} on {}>", events.len(), self.path));
                    break;
                }
            }
        }
        while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(300)) {
            events.push(format!("unexpected: {}", show_event(&line)));
        }
        let _ = self.curl.kill();
        let _ = self.curl.wait();
        events
    }
}

fn show_event(line: &str) -> String {
    match serde_json::from_str::<Value>(line) {
        Ok(v) => format!("{} {}", v["type"].as_str().unwrap_or("?"), show_body(&v["object"], &[])),
        Err(_) => format!("not JSON: {line:?}"),
    }
}

// ================================================================ on 3-member clusters

/// The namespace of the cluster test.
const CLUSTER_NS: &str = "kube-e2e-cluster";
/// How long the apiserver may take, after a fault, to answer `/readyz` with `ok` and to
/// serve [`RECOVERED_AFTER`] writes in a row again.
const RECOVERY_BOUND: Duration = Duration::from_secs(60);
/// Consecutive successful writes that count as "writes work again".
const RECOVERED_AFTER: usize = 5;
/// Writes (all successful) before the leader is killed.
const WRITES_BEFORE_KILL: usize = 10;
/// How long a follower stays stopped (SIGSTOP).
const PAUSE_FOR: Duration = Duration::from_secs(5);
/// `curl --max-time` of the background writes: above the apiserver's own 60 s request
/// timeout, so that every write gets an answer (504 at worst) rather than being abandoned.
const WRITE_TIMEOUT_SECS: &str = "70";
/// `curl --max-time` of a `/readyz` probe.
const PROBE_TIMEOUT_SECS: &str = "5";
/// Pause between two background writes, and between two `/readyz` probes.
const WRITE_GAP: Duration = Duration::from_millis(50);
const PROBE_GAP: Duration = Duration::from_millis(250);
/// How long the members may take to show the same configmaps to serializable reads.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(30);
/// The configmap written after every other write; the watch is read up to its ADDED event.
const MARKER: &str = "zz-marker";
/// The configmap every odd write patches: each patch adds one data key `sNNNNN`.
const COUNTER: &str = "counter";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_apiserver_on_three_member_clusters() {
    let Some(apiserver) = apiserver_binary("kube_apiserver_on_three_member_clusters") else { return };
    let _one = crate::cluster::ONE_CLUSTER_AT_A_TIME.lock().await;
    let subject = subject_kind();
    let _ = ServerKind::Etcd.binary();
    let _ = subject.binary();

    let want = run_on_cluster(ServerKind::Etcd, &apiserver).await;
    if std::env::var("CAIRN_DIFF_PRINT").is_ok_and(|v| v == "1") {
        println!("kube-apiserver on a 3-member cluster (etcd):\n{}", want.join("\n"));
    }
    let got = run_on_cluster(subject, &apiserver).await;
    assert_equal_transcripts("kube-apiserver on a 3-member cluster", subject, &want, &got);
    // Equal is not enough: every outcome must be the good one (on etcd, hence on both).
    let bad: Vec<&String> = want.iter().filter(|l| l.contains(": false")).collect();
    assert!(bad.is_empty(), "kube-apiserver on a 3-member etcd cluster: bad outcomes {bad:#?}\n{}", want.join("\n"));
    println!("kube-apiserver on a 3-member cluster: {} transcript lines equal on etcd and {subject}", want.len());
}

/// Starts a 3-member cluster of `kind` and a kube-apiserver with all three client URLs in
/// `--etcd-servers`, runs [`cluster_scenario`], stops the apiserver, then the members.
async fn run_on_cluster(kind: ServerKind, apiserver_bin: &Path) -> Vec<String> {
    let t0 = Instant::now();
    // Declared before the apiserver: on a panic the apiserver is dropped (killed) first.
    let mut cluster = Cluster::start_with(kind, cluster_options()).await;
    let urls: Vec<String> = (0..cluster.size()).map(|i| cluster.member(i).client_url()).collect();
    // No periodic compaction by the apiserver: the watch is resumed from old revisions.
    let mut api = KubeApiserver::start(apiserver_bin, &urls.join(","), &["--etcd-compaction-interval=0"]);
    let ready_after = api.wait_ready(|| {
        (0..cluster.size()).find(|&i| !cluster.member_mut(i).is_running()).map(|i| format!("{}", cluster.member(i)))
    });
    println!(
        "[{kind} cluster] kube-apiserver ready {ready_after:?} after its start (--etcd-servers={})",
        urls.join(",")
    );
    let transcript = cluster_scenario(&mut cluster, &api).await;
    let stopped = api.stop();
    println!("[{kind} cluster] kube-apiserver stopped in {stopped:?}");
    for i in 0..cluster.size() {
        cluster.stop(i);
    }
    println!("[{kind} cluster] total {:?}", t0.elapsed());
    transcript
}

/// Three members; a 100 ms heartbeat and a 1 s election timeout (the harness default is
/// 50/500): a kube-apiserver and the store share 2 busy cores, and an election caused by CPU
/// starvation would add failures nobody asked for.
fn cluster_options() -> ClusterOptions {
    ClusterOptions {
        extra_args: ["--heartbeat-interval", "100", "--election-timeout", "1000"].map(String::from).to_vec(),
        ..ClusterOptions::default()
    }
}

/// What happens while the apiserver runs on a 3-member cluster (each line an outcome, timings
/// and counts printed apart):
///
/// 1. ready; a namespace, a `counter` configmap and five more are created;
/// 2. a watch is opened from the list's resourceVersion; a writer thread creates `w-N`
///    configmaps and merge-patches a key `sN` into `counter`, in turn, one request at a time,
///    and a prober polls `/readyz`; the store's leader is killed (-9); the apiserver must
///    recover within [`RECOVERY_BOUND`] and serve requests after it;
/// 3. the killed member is restarted; a follower is paused (SIGSTOP) for [`PAUSE_FOR`] under
///    the writes and continued; the apiserver must recover again;
/// 4. the writer stops; a marker configmap is written last. The watch (resumed from its last
///    resourceVersion whenever it ended) must show exactly the writes that took effect (the
///    store at the marker's resourceVersion), each once, in order, the acknowledged ones at
///    their acknowledged resourceVersions; acknowledged writes must all have taken effect;
/// 5. serializable reads of `/registry/configmaps/<ns>/` on each member (etcdctl
///    `--consistency=s`) must agree, and list what the apiserver lists.
async fn cluster_scenario(cluster: &mut Cluster, api: &KubeApiserver) -> Vec<String> {
    let kind = cluster.kind();
    let mut t = Vec::new();
    let base = format!("/api/v1/namespaces/{CLUSTER_NS}/configmaps");

    t.push("== ready".into());
    let r = api.get("/readyz");
    t.push(format!("GET /readyz -> {} {}", r.code, r.body.trim()));
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": CLUSTER_NS}});
    let r = api.call("POST", "/api/v1/namespaces", Some(&ns));
    t.push(format!("create namespace -> {}", r.code));
    let r = api.call("POST", &base, Some(&configmap(COUNTER, json!({}))));
    t.push(format!("create {COUNTER} -> {}", r.code));
    let codes: BTreeSet<u16> = (0..5)
        .map(|i| api.call("POST", &base, Some(&configmap(&format!("cm-{i}"), json!({"i": i.to_string()})))))
        .map(|r| r.code)
        .collect();
    t.push(format!("create cm-0..cm-4 -> codes {codes:?}"));
    let list = api.get(&base);
    t.push(format!("list -> {} {}", list.code, list_names(&list).join(",")));
    let rv0 = list.rv();
    let mut watch = ResumableWatch::open(api, &base, &rv0);

    t.push("== kill -9 of the store's leader under writes".into());
    let load = Load::start(api);
    let before = load.wait_writes(WRITES_BEFORE_KILL, RECOVERY_BOUND).await;
    t.push(format!("{WRITES_BEFORE_KILL} writes before the kill, all succeeded: {}", before.iter().all(WriteRec::ok)));
    let leader = cluster.leader().await;
    load.set_phase(Phase::Failover);
    let killed_at = Instant::now();
    cluster.kill9(leader);
    t.push("kill -9 the leader".into());
    let failover = load.wait_recovered(killed_at, killed_at).await;
    t.push(format!(
        "kube-apiserver recovered (/readyz ok, {RECOVERED_AFTER} writes in a row ok) within {RECOVERY_BOUND:?}: {}",
        failover.recovered
    ));
    println!("[{kind} cluster] leader n{} killed: {}", leader + 1, failover.show());
    load.set_phase(Phase::AfterFailover);
    after_fault_requests("after the failover", api, &load, &mut t);

    t.push("== restart of the killed member".into());
    let restart_at = Instant::now();
    cluster.restart(leader).await;
    t.push("the killed member restarted and serves linearizable reads".into());
    println!("[{kind} cluster] n{} restarted, serving after {:?}", leader + 1, restart_at.elapsed());
    let r = api.get("/readyz");
    t.push(format!("GET /readyz -> {} {}", r.code, r.body.trim()));

    t.push(format!("== a follower paused (SIGSTOP) for {PAUSE_FOR:?} under writes, then continued"));
    // The follower that was never killed: the apiserver's etcd client has been connected to it
    // all along (to the restarted member it may still be backing off from reconnecting, and
    // then sends it nothing), so some requests go to the paused member on either store.
    let killed = leader;
    let leader = cluster.leader().await;
    let follower = cluster.others(leader).into_iter().find(|&i| i != killed).expect("3 members");
    load.set_phase(Phase::Paused);
    let paused_at = Instant::now();
    cluster.pause(follower);
    tokio::time::sleep(PAUSE_FOR).await;
    cluster.resume(follower);
    let resumed_at = Instant::now();
    let pause = load.wait_recovered(paused_at, resumed_at).await;
    t.push(format!("kube-apiserver recovered within {RECOVERY_BOUND:?} of the resume: {}", pause.recovered));
    // Printed, not compared: whether the continued follower took the leadership over (etcd's
    // pre-vote and check-quorum keep the leader).
    let leader_after = cluster.leader().await;
    println!(
        "[{kind} cluster] follower n{} paused {PAUSE_FOR:?}: {}; the leader n{} before, n{} after{}",
        follower + 1,
        pause.show(),
        leader + 1,
        leader_after + 1,
        if leader_after == leader { "" } else { " (LEADER CHANGED)" }
    );
    load.set_phase(Phase::AfterPause);
    after_fault_requests("after the resume", api, &load, &mut t);

    let writes = load.finish();
    let failed: Vec<&WriteRec> = writes.iter().filter(|w| !w.ok()).collect();
    println!(
        "[{kind} cluster] {} writes, {} failed: {:?}",
        writes.len(),
        failed.len(),
        failed.iter().map(|w| format!("{} ({:?}): {} {}", w.id, w.phase, w.code, w.error)).collect::<Vec<_>>()
    );

    t.push("== the watch opened before the kill".into());
    let r = api.call("POST", &base, Some(&configmap(MARKER, json!({}))));
    t.push(format!("create {MARKER} (the last write) -> {}", r.code));
    let marker_rv = r.rv();
    let seen_marker = watch.read_until_added(MARKER, RECOVERY_BOUND);
    t.push(format!("the watch (resumed from its last resourceVersion when it ended) reached {MARKER}: {seen_marker}"));
    println!("[{kind} cluster] watch: {}", watch.show(killed_at));
    let at_marker = api.get(&format!("{base}?resourceVersion={marker_rv}&resourceVersionMatch=Exact"));
    t.push(format!("list at {MARKER}'s resourceVersion (Exact) -> {}", at_marker.code));
    check_watch(&watch, &writes, &at_marker, &mut t);

    t.push(format!(
        "== the members' stores, read with etcdctl --consistency=s under /registry/configmaps/{CLUSTER_NS}/"
    ));
    let (agree, views) = members_agree(cluster).await;
    t.push(format!("the same keys, values and mod revisions on all {} members: {agree}", cluster.size()));
    let prefix = format!("/registry/configmaps/{CLUSTER_NS}/");
    let keys: Vec<String> = views[0].iter().map(|(k, _, _)| k.trim_start_matches(&prefix).to_string()).collect();
    let mut names = list_names(&at_marker);
    names.sort();
    t.push(format!("they are the configmaps the apiserver lists at {MARKER}: {}", keys == names));
    println!("[{kind} cluster] {} configmaps on every member", keys.len());
    let r = api.get("/readyz");
    t.push(format!("GET /readyz -> {} {}", r.code, r.body.trim()));
    t
}

/// A few requests once the apiserver has recovered: all must succeed.
fn after_fault_requests(when: &str, api: &KubeApiserver, load: &Load, t: &mut Vec<String>) {
    let r = api.get("/readyz");
    t.push(format!("{when}: GET /readyz -> {} {}", r.code, r.body.trim()));
    let created = load.write(&api.api, true);
    t.push(format!("{when}: create a configmap -> {}", created.code));
    let patched = load.write(&api.api, false);
    t.push(format!("{when}: patch {COUNTER} -> {}", patched.code));
    let name = created.id.trim_start_matches("create ");
    let r = api.get(&format!("/api/v1/namespaces/{CLUSTER_NS}/configmaps/{name}"));
    t.push(format!("{when}: get it -> {}", r.code));
    let r = api.get(&format!("/api/v1/namespaces/{CLUSTER_NS}/configmaps"));
    let listed = r.code == 200 && list_names(&r).iter().any(|n| n == name);
    t.push(format!("{when}: list -> {}, has it: {listed}", r.code));
}

fn list_names(r: &Resp) -> Vec<String> {
    r.json()["items"]
        .as_array()
        .map(|items| items.iter().filter_map(|i| i["metadata"]["name"].as_str().map(String::from)).collect())
        .unwrap_or_default()
}

/// The watch against the writes: every write that took effect (per the store at the marker),
/// exactly once, in resourceVersion order, the acknowledged ones at their resourceVersions.
fn check_watch(watch: &ResumableWatch, writes: &[WriteRec], at_marker: &Resp, t: &mut Vec<String>) {
    // What each event adds: `create w-N` (ADDED w-N) or `patch sN` (the key a MODIFIED of
    // the counter adds to its data); anything else is unexpected.
    let mut counter_keys: BTreeSet<String> = BTreeSet::new();
    let mut seen: Vec<(String, u64)> = Vec::new();
    let mut unexpected = Vec::new();
    for e in &watch.events {
        match (e.kind.as_str(), e.name.as_str()) {
            ("ADDED", MARKER) => break,
            ("ADDED", name) if name.starts_with("w-") => seen.push((format!("create {name}"), e.rv)),
            ("MODIFIED", COUNTER) => {
                let keys: BTreeSet<String> = e.data_keys.iter().cloned().collect();
                let added: Vec<&String> = keys.difference(&counter_keys).collect();
                match (added.as_slice(), counter_keys.is_subset(&keys)) {
                    ([key], true) => seen.push((format!("patch {key}"), e.rv)),
                    _ => unexpected.push(format!("MODIFIED {COUNTER} adding {added:?}")),
                }
                counter_keys = keys;
            }
            (kind, name) => unexpected.push(format!("{kind} {name}")),
        }
    }
    let in_order = seen.windows(2).all(|w| w[0].1 < w[1].1);
    let ids: BTreeSet<&str> = seen.iter().map(|(id, _)| id.as_str()).collect();
    let once = ids.len() == seen.len();
    t.push(format!(
        "watch: events in resourceVersion order: {in_order}, none twice: {once}, none unexpected or in error: {}",
        unexpected.is_empty() && watch.errors.is_empty()
    ));
    if !unexpected.is_empty() || !watch.errors.is_empty() {
        println!("watch: unexpected events {unexpected:?}, errors {:?}", watch.errors);
    }

    // The writes that took effect: the store at the marker.
    let mut effective: BTreeSet<String> = BTreeSet::new();
    for item in at_marker.json()["items"].as_array().into_iter().flatten() {
        let name = item["metadata"]["name"].as_str().unwrap_or("?");
        if name.starts_with("w-") {
            effective.insert(format!("create {name}"));
        }
        if name == COUNTER {
            for key in item["data"].as_object().into_iter().flatten().map(|(k, _)| k) {
                effective.insert(format!("patch {key}"));
            }
        }
    }
    let attempted: BTreeSet<&str> = writes.iter().map(|w| w.id.as_str()).collect();
    let effective_ids: BTreeSet<&str> = effective.iter().map(String::as_str).collect();
    t.push(format!(
        "the watch shows exactly the writes that took effect (the store at {MARKER}): {}",
        ids == effective_ids
    ));
    if ids != effective_ids {
        println!(
            "watch: missing {:?}, not in the store {:?}",
            effective_ids.difference(&ids).collect::<Vec<_>>(),
            ids.difference(&effective_ids).collect::<Vec<_>>()
        );
    }
    t.push(format!("the store holds no write that was not requested: {}", effective_ids.is_subset(&attempted)));

    let rv_of: std::collections::BTreeMap<&str, u64> = seen.iter().map(|(id, rv)| (id.as_str(), *rv)).collect();
    let acked: Vec<&WriteRec> = writes.iter().filter(|w| w.ok()).collect();
    let lost: Vec<&str> = acked.iter().filter(|w| !effective.contains(&w.id)).map(|w| w.id.as_str()).collect();
    t.push(format!("every acknowledged write took effect: {}", lost.is_empty()));
    let wrong_rv: Vec<String> = acked
        .iter()
        .filter(|w| w.rv.is_none() || rv_of.get(w.id.as_str()) != w.rv.as_ref())
        .map(|w| format!("{} acknowledged at {:?}, watched at {:?}", w.id, w.rv, rv_of.get(w.id.as_str())))
        .collect();
    t.push(format!(
        "the watch shows each acknowledged write at its acknowledged resourceVersion: {}",
        wrong_rv.is_empty()
    ));
    // Real-time order: a write acknowledged before another one started has a lower resourceVersion.
    let mut order_violations = Vec::new();
    for a in &acked {
        for b in &acked {
            if a.end < b.start && a.rv >= b.rv {
                order_violations.push(format!("{} ({:?}) before {} ({:?})", a.id, a.rv, b.id, b.rv));
            }
        }
    }
    t.push(format!(
        "acknowledged writes' resourceVersions follow their real-time order: {}",
        order_violations.is_empty()
    ));
    let unknown_effective =
        writes.iter().filter(|w| !w.ok() && effective.contains(&w.id)).map(|w| w.id.as_str()).collect::<Vec<_>>();
    println!(
        "watch: {} events for {} effective writes ({} acknowledged; failed requests that took effect anyway: {:?}); \
         lost {lost:?}; wrong resourceVersions {wrong_rv:?}; order violations {order_violations:?}",
        seen.len(),
        effective.len(),
        acked.len(),
        unknown_effective
    );
}

/// Polls every member with `etcdctl get <prefix> --prefix --consistency=s` until all answer
/// the same keys, values and mod revisions (up to [`CATCH_UP_TIMEOUT`]). Returns whether they
/// did and the last views (member 0 first).
async fn members_agree(cluster: &Cluster) -> (bool, Vec<View>) {
    let prefix = format!("/registry/configmaps/{CLUSTER_NS}/");
    let deadline = Instant::now() + CATCH_UP_TIMEOUT;
    loop {
        let views: Vec<Result<View, String>> =
            (0..cluster.size()).map(|i| serializable_view(&cluster.endpoint(i), &prefix)).collect();
        let agree = views.iter().all(|v| v.is_ok() && v == &views[0]);
        if agree || Instant::now() > deadline {
            if !agree {
                for (i, v) in views.iter().enumerate() {
                    match v {
                        Ok(kvs) => {
                            println!("n{}: {} keys, last {:?}", i + 1, kvs.len(), kvs.last().map(|(k, r, _)| (k, r)))
                        }
                        Err(e) => println!("n{}: {e}", i + 1),
                    }
                }
            }
            return (agree, views.into_iter().map(Result::unwrap_or_default).collect());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// What one member holds under a prefix: `(key, mod_revision, value in base64)`, by key.
type View = Vec<(String, i64, String)>;

/// `(key, mod_revision, value in base64)` of every key under `prefix`, a serializable read
/// on the member at `endpoint` alone.
fn serializable_view(endpoint: &str, prefix: &str) -> Result<View, String> {
    let out = etcdctl(endpoint, &["get", prefix, "--prefix", "--consistency=s", "-w", "json"]);
    if !out.success() {
        return Err(out.to_string());
    }
    let v: Value = serde_json::from_str(&out.stdout).map_err(|e| format!("{e}: {}", out.stdout))?;
    Ok(v["kvs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|kv| {
            let key = String::from_utf8_lossy(&base64_decode(kv["key"].as_str().unwrap_or(""))).into_owned();
            (key, kv["mod_revision"].as_i64().unwrap_or(-1), kv["value"].as_str().unwrap_or("").to_string())
        })
        .collect())
}

/// Which part of the cluster scenario a background write was started in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    BeforeKill,
    Failover,
    AfterFailover,
    Paused,
    AfterPause,
}

const PHASES: [Phase; 5] = [Phase::BeforeKill, Phase::Failover, Phase::AfterFailover, Phase::Paused, Phase::AfterPause];

/// One write of the cluster scenario.
#[derive(Clone, Debug)]
struct WriteRec {
    /// What it adds: `create w-00012` (a configmap) or `patch s00013` (a data key of the
    /// counter configmap).
    id: String,
    phase: Phase,
    /// The HTTP status, 0 without an answer.
    code: u16,
    /// The resourceVersion of the answer, on success.
    rv: Option<u64>,
    start: Instant,
    end: Instant,
    /// The start of the answer's body (or curl's error), on failure.
    error: String,
}

impl WriteRec {
    fn ok(&self) -> bool {
        (200..300).contains(&self.code)
    }
}

/// One `/readyz` probe.
struct Probe {
    start: Instant,
    ok: bool,
    /// When not ok: the code and the failing checks (or curl's error).
    failure: String,
}

/// What a fault did to the apiserver's clients.
struct Recovery {
    recovered: bool,
    /// From the fault to the answer of the first of [`RECOVERED_AFTER`] successful writes
    /// in a row (started after the fault, or after the resume).
    writes_back_after: Option<Duration>,
    /// From the fault to the first `ok` probe started after the first of those writes was
    /// answered.
    ready_after: Option<Duration>,
    /// How long `/readyz` was not `ok`, from the fault to recovery.
    readyz_not_ok: Duration,
    /// Writes that failed, and all writes, from the fault to recovery.
    failed: usize,
    writes: usize,
    /// The longest write of that window.
    slowest: Duration,
    /// The failed writes' codes and errors.
    errors: Vec<String>,
    /// Why the `/readyz` probes that were not ok were not (distinct answers).
    readyz_failures: BTreeSet<String>,
}

impl Recovery {
    fn show(&self) -> String {
        format!(
            "recovered {}, writes ok again {:?} after the fault, /readyz ok {:?} after it, /readyz not ok for {:?}; \
             {} of {} writes failed, the slowest took {:?}; errors {:?}; /readyz failures {:?}",
            self.recovered,
            self.writes_back_after,
            self.ready_after,
            self.readyz_not_ok,
            self.failed,
            self.writes,
            self.slowest,
            self.errors,
            self.readyz_failures
        )
    }
}

/// The background load of the cluster scenario: a writer thread (one write at a time) and a
/// `/readyz` prober thread. Dropping it tells both to stop without waiting for them (their
/// current curl ends at its `--max-time`, or as soon as the apiserver is killed).
struct Load {
    stop: Arc<AtomicBool>,
    phase: Arc<AtomicUsize>,
    seq: Arc<AtomicU64>,
    writes: Arc<Mutex<Vec<WriteRec>>>,
    probes: Arc<Mutex<Vec<Probe>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(api: &KubeApiserver) -> Load {
        let mut load = Load {
            stop: Arc::new(AtomicBool::new(false)),
            phase: Arc::new(AtomicUsize::new(0)),
            seq: Arc::new(AtomicU64::new(0)),
            writes: Arc::new(Mutex::new(Vec::new())),
            probes: Arc::new(Mutex::new(Vec::new())),
            threads: Vec::new(),
        };
        let writer = load.handle();
        let api_w = api.api.clone();
        load.threads.push(std::thread::spawn(move || {
            while !writer.stop.load(Ordering::SeqCst) {
                let create = writer.seq.load(Ordering::SeqCst).is_multiple_of(2);
                writer.write(&api_w, create);
                std::thread::sleep(WRITE_GAP);
            }
        }));
        let prober = load.handle();
        let api_p = api.api.clone();
        load.threads.push(std::thread::spawn(move || {
            while !prober.stop.load(Ordering::SeqCst) {
                let start = Instant::now();
                let r = api_p.request("GET", "/readyz", "application/json", None, PROBE_TIMEOUT_SECS);
                let ok = r.code == 200 && r.body.trim() == "ok";
                let failure = if ok {
                    String::new()
                } else if r.code == 0 {
                    format!("no answer: {}", r.stderr)
                } else {
                    let failing: Vec<&str> = r.body.lines().filter(|l| l.starts_with("[-]")).collect();
                    format!("{} {}", r.code, failing.join(" "))
                };
                prober.probes.lock().expect("probes lock").push(Probe { start, ok, failure });
                std::thread::sleep(PROBE_GAP);
            }
        }));
        load
    }

    /// The shared state without the threads, for a thread.
    fn handle(&self) -> Load {
        Load {
            stop: self.stop.clone(),
            phase: self.phase.clone(),
            seq: self.seq.clone(),
            writes: self.writes.clone(),
            probes: self.probes.clone(),
            threads: Vec::new(),
        }
    }

    fn set_phase(&self, phase: Phase) {
        let i = PHASES.iter().position(|&p| p == phase).expect("listed in PHASES");
        self.phase.store(i, Ordering::SeqCst);
    }

    /// One write with the next sequence number N, recorded: `create` makes configmap `w-N`,
    /// otherwise data key `sN` is merge-patched into the counter.
    fn write(&self, api: &Api, create: bool) -> WriteRec {
        let seq = self.seq.fetch_add(1, Ordering::SeqCst);
        let phase = PHASES[self.phase.load(Ordering::SeqCst)];
        let base = format!("/api/v1/namespaces/{CLUSTER_NS}/configmaps");
        let start = Instant::now();
        let (id, r) = if create {
            let name = format!("w-{seq:05}");
            let body = configmap(&name, json!({ "seq": seq.to_string() }));
            (format!("create {name}"), api.request("POST", &base, "application/json", Some(&body), WRITE_TIMEOUT_SECS))
        } else {
            let key = format!("s{seq:05}");
            let mut data = serde_json::Map::new();
            data.insert(key.clone(), json!("x"));
            let patch = json!({ "data": Value::Object(data) });
            let path = format!("{base}/{COUNTER}");
            (
                format!("patch {key}"),
                api.request("PATCH", &path, "application/merge-patch+json", Some(&patch), WRITE_TIMEOUT_SECS),
            )
        };
        let end = Instant::now();
        let ok = (200..300).contains(&r.code);
        let rv = ok
            .then(|| serde_json::from_str::<Value>(&r.body).ok())
            .flatten()
            .and_then(|v| v["metadata"]["resourceVersion"].as_str().and_then(|s| s.parse().ok()));
        let error = if ok {
            String::new()
        } else {
            let text = if r.code == 0 { r.stderr.clone() } else { r.body.replace('\n', " ") };
            text.chars().take(200).collect()
        };
        let rec = WriteRec { id, phase, code: r.code, rv, start, end, error };
        self.writes.lock().expect("writes lock").push(rec.clone());
        rec
    }

    /// Waits until `n` writes are done; returns them. Panics after `within`.
    async fn wait_writes(&self, n: usize, within: Duration) -> Vec<WriteRec> {
        let deadline = Instant::now() + within;
        loop {
            let writes = self.writes.lock().expect("writes lock").clone();
            if writes.len() >= n {
                return writes;
            }
            assert!(Instant::now() < deadline, "only {} writes within {within:?}: {writes:?}", writes.len());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits (up to [`RECOVERY_BOUND`] after `settle_from`) until [`RECOVERED_AFTER`] writes
    /// started after `settle_from` succeeded in a row and a `/readyz` probe said ok (one
    /// started once the first of them was answered). Counts what happened from `fault_at`.
    async fn wait_recovered(&self, fault_at: Instant, settle_from: Instant) -> Recovery {
        loop {
            let (recovery, done) = self.recovery(fault_at, settle_from);
            if done || settle_from.elapsed() > RECOVERY_BOUND {
                return recovery;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn recovery(&self, fault_at: Instant, settle_from: Instant) -> (Recovery, bool) {
        let mut writes = self.writes.lock().expect("writes lock").clone();
        writes.sort_by_key(|w| w.start);
        let after: Vec<&WriteRec> = writes.iter().filter(|w| w.start >= settle_from).collect();
        let run = after.windows(RECOVERED_AFTER).find(|run| run.iter().all(|w| w.ok()));
        let back_end = run.map(|run| run[0].end);
        let probes = self.probes.lock().expect("probes lock");
        let ready = back_end.and_then(|b| probes.iter().find(|p| p.start >= b && p.ok).map(|p| p.start));
        let until = ready.unwrap_or_else(Instant::now);
        let window: Vec<&WriteRec> = writes.iter().filter(|w| w.end >= fault_at && w.start <= until).collect();
        let mut readyz_not_ok = Duration::ZERO;
        let in_window: Vec<&Probe> = probes.iter().filter(|p| p.start >= fault_at && p.start <= until).collect();
        for (i, p) in in_window.iter().enumerate() {
            if !p.ok {
                let next = in_window.get(i + 1).map_or(until, |n| n.start);
                readyz_not_ok += next.saturating_duration_since(p.start);
            }
        }
        let recovery = Recovery {
            recovered: ready.is_some(),
            writes_back_after: back_end.map(|b| b.saturating_duration_since(fault_at)),
            ready_after: ready.map(|r| r.saturating_duration_since(fault_at)),
            readyz_not_ok,
            failed: window.iter().filter(|w| !w.ok()).count(),
            writes: window.len(),
            slowest: window.iter().map(|w| w.end - w.start).max().unwrap_or_default(),
            errors: window.iter().filter(|w| !w.ok()).map(|w| format!("{}: {} {}", w.id, w.code, w.error)).collect(),
            readyz_failures: in_window.iter().filter(|p| !p.ok).map(|p| p.failure.clone()).collect(),
        };
        (recovery, ready.is_some())
    }

    /// Stops both threads, waits for them, returns every write.
    fn finish(mut self) -> Vec<WriteRec> {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            t.join().expect("a load thread panicked");
        }
        self.writes.lock().expect("writes lock").clone()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// One event of a watch: type, object name, resourceVersion, data keys.
struct WatchEvent {
    kind: String,
    name: String,
    rv: u64,
    data_keys: Vec<String>,
}

/// A watch from a resourceVersion that is reopened from the last resourceVersion it
/// delivered whenever its stream ends (as a client such as an informer would).
struct ResumableWatch {
    api: Api,
    base: String,
    stream: WatchStream,
    last_rv: String,
    events: Vec<WatchEvent>,
    /// ERROR events and lines that are not events.
    errors: Vec<String>,
    /// When each stream ended, and the resourceVersion it was reopened from.
    resumed: Vec<(Instant, String)>,
}

impl ResumableWatch {
    fn open(api: &Api, base: &str, rv: &str) -> ResumableWatch {
        ResumableWatch {
            api: api.clone(),
            base: base.to_string(),
            stream: WatchStream::open(api, &format!("{base}?watch=1&resourceVersion={rv}")),
            last_rv: rv.to_string(),
            events: Vec::new(),
            errors: Vec::new(),
            resumed: Vec::new(),
        }
    }

    /// Reads events until the ADDED event of `name`, reopening ended streams; false if it does
    /// not come within `within`.
    fn read_until_added(&mut self, name: &str, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stream.lines.recv_timeout(left) {
                Ok(Some(line)) => {
                    let Ok(v) = serde_json::from_str::<Value>(&line) else {
                        self.errors.push(format!("not JSON: {line:?}"));
                        continue;
                    };
                    let kind = v["type"].as_str().unwrap_or("").to_string();
                    let object = &v["object"];
                    if kind.is_empty() || kind == "ERROR" {
                        self.errors.push(format!("{kind} {}", if kind.is_empty() { &v } else { object }));
                        continue;
                    }
                    let rv = object["metadata"]["resourceVersion"].as_str().unwrap_or("0").to_string();
                    let event = WatchEvent {
                        kind,
                        name: object["metadata"]["name"].as_str().unwrap_or("?").to_string(),
                        rv: rv.parse().unwrap_or(0),
                        data_keys: object["data"].as_object().map(|d| d.keys().cloned().collect()).unwrap_or_default(),
                    };
                    self.last_rv = rv;
                    let done = event.kind == "ADDED" && event.name == name;
                    self.events.push(event);
                    if done {
                        return true;
                    }
                }
                Ok(None) => {
                    // The stream ended: reopen from the last resourceVersion seen.
                    let ended = self.stream.ended.lock().expect("ended lock").unwrap_or_else(Instant::now);
                    self.resumed.push((ended, self.last_rv.clone()));
                    if self.resumed.len() > 100 || Instant::now() > deadline {
                        return false;
                    }
                    std::thread::sleep(Duration::from_millis(200));
                    let path = format!("{}?watch=1&resourceVersion={}", self.base, self.last_rv);
                    self.stream = WatchStream::open(&self.api, &path);
                }
                Err(_) => return false,
            }
        }
    }

    fn show(&self, fault_at: Instant) -> String {
        let ended: Vec<String> = self
            .resumed
            .iter()
            .map(|(at, rv)| {
                let t = if *at >= fault_at {
                    format!("{:?} after the kill", *at - fault_at)
                } else {
                    format!("{:?} before the kill", fault_at - *at)
                };
                format!("ended {t}, resumed from {rv}")
            })
            .collect();
        format!(
            "{} events, {} stream(s): {}; errors {:?}",
            self.events.len(),
            self.resumed.len() + 1,
            if ended.is_empty() { "never ended".to_string() } else { ended.join("; ") },
            self.errors
        )
    }
}

/// A watch stream (`curl -N`, no `--max-time`: it lasts as long as the apiserver keeps it);
/// its lines are sent by a reader thread, then `None` when it ends. Dropping it kills curl.
struct WatchStream {
    curl: Child,
    lines: mpsc::Receiver<Option<String>>,
    ended: Arc<Mutex<Option<Instant>>>,
}

impl WatchStream {
    fn open(api: &Api, path: &str) -> WatchStream {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "-k", "-N", "-H"])
            .arg(format!("Authorization: Bearer {TOKEN}"))
            .arg(api.url(path))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut curl = cmd.spawn().expect("run curl for a watch");
        let stdout = curl.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        let ended = Arc::new(Mutex::new(None));
        let ended_w = ended.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(Some(line)).is_err() {
                    return;
                }
            }
            *ended_w.lock().expect("ended lock") = Some(Instant::now());
            let _ = tx.send(None);
        });
        WatchStream { curl, lines, ended }
    }
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        let _ = self.curl.kill();
        let _ = self.curl.wait();
    }
}
