//! An unmodified kube-apiserver end to end, differential: the same scenario runs against a
//! kube-apiserver on real etcd 3.5.1 and against one on the server under test (Cairn, or etcd
//! again with `CAIRN_DIFF_AGAINST=etcd`), and the normalised transcripts must be equal.
//!
//! Opt-in: the test runs only when `CAIRN_KUBE_APISERVER` names a kube-apiserver binary
//! (`scripts/kube-e2e.sh` builds one with `scripts/build-kube-apiserver.sh` and runs this
//! test); without it the test prints `SKIPPED: ...` and returns. Building kube-apiserver
//! from source takes ~14 minutes and ~3.5 GB of Go caches, too much for the default suite.
//!
//! The apiserver runs with `--watch-cache-sizes=configmaps#0`: configmaps are served by the
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
use std::sync::mpsc;
use std::time::{Duration, Instant};

use cairn_tests::harness::{etcdctl, free_port, subject_kind, Server, ServerKind};
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
    let Some(apiserver) = std::env::var_os(APISERVER_ENV).filter(|p| !p.is_empty()).map(PathBuf::from) else {
        println!(
            "SKIPPED: set {APISERVER_ENV} (scripts/kube-e2e.sh): kube::kube_apiserver_on_etcd_and_cairn runs an \
             unmodified kube-apiserver against etcd and Cairn and needs its binary; it did not run"
        );
        return;
    };
    assert!(apiserver.is_file(), "{APISERVER_ENV}={} is not a file", apiserver.display());
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
    for (i, (w, g)) in want.iter().zip(got.iter()).enumerate() {
        assert_eq!(
            g,
            w,
            "kube-apiserver scenario: line {i} differs from etcd\netcd transcript:\n{}\n\n{subject} transcript:\n{}",
            want.join("\n"),
            got.join("\n")
        );
    }
    assert_eq!(
        got.len(),
        want.len(),
        "kube-apiserver scenario: transcript lengths differ\netcd:\n{}\n\n{subject}:\n{}",
        want.join("\n"),
        got.join("\n")
    );
    println!("kube-apiserver scenario: {} transcript lines equal on etcd and {subject}", want.len());
}

/// Starts a store of `kind` and a kube-apiserver on it, runs the scenario, stops the
/// apiserver and then the store (an apiserver whose store is gone hangs in its shutdown).
async fn run_against(kind: ServerKind, apiserver_bin: &Path) -> Vec<String> {
    let t0 = Instant::now();
    let mut store = Server::start(kind).await;
    let mut api = KubeApiserver::start(apiserver_bin, &store.client_url());
    let ready_after = api.wait_ready(&mut store);
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
    port: u16,
}

impl KubeApiserver {
    fn start(binary: &Path, etcd_url: &str) -> KubeApiserver {
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
        cmd.arg(format!("--etcd-servers={etcd_url}"))
            .arg("--service-account-issuer=https://kubernetes.default.svc")
            .arg(format!("--service-account-key-file={}", key.display()))
            .arg(format!("--service-account-signing-key-file={}", key.display()))
            .arg(format!("--token-auth-file={}", tokens.display()))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--secure-port={port}"))
            .arg(format!("--cert-dir={}", dir.path().join("certs").display()))
            // Configmaps straight from the store (see the module doc).
            .arg("--watch-cache-sizes=configmaps#0")
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
        KubeApiserver { child: Some(child), dir, port }
    }

    /// Waits until `/readyz` answers `ok`; returns how long that took. Panics with the log
    /// tail if the apiserver exits or is not ready in time.
    fn wait_ready(&mut self, store: &mut Server) -> Duration {
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
            assert!(store.is_running(), "{store} exited while kube-apiserver was starting");
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

    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }

    fn curl(&self) -> Command {
        let mut c = Command::new("curl");
        c.args(["-sS", "-k", "--max-time", REQUEST_TIMEOUT_SECS, "-H"]).arg(format!("Authorization: Bearer {TOKEN}"));
        c
    }

    fn get(&self, path: &str) -> Resp {
        self.call("GET", path, None)
    }

    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Resp {
        self.call_typed(method, path, "application/json", body)
    }

    /// One request with `curl`; the body goes through stdin (it can be megabytes).
    fn call_typed(&self, method: &str, path: &str, content_type: &str, body: Option<&Value>) -> Resp {
        let mut cmd = self.curl();
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
    fn open(api: &KubeApiserver, path: &str) -> Watch {
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
