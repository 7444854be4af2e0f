//! Maintenance and operations end to end with etcdctl 3.5.1: quota and the NOSPACE alarm,
//! compaction + defragment + disarm, snapshot save -> `cairn snapshot status/restore` -> a new
//! member serving it, HashKV, status/health, move-leader, downgrade, auto compaction and
//! `check perf`; error cases compared with real etcd 3.5.1.

use std::time::{Duration, Instant};

use cairn_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use cairn_proto::etcdserverpb::{self as pb};
use cairn_tests::harness::{cairn_bin, etcdctl, free_port, CmdOutput, Server, ServerKind, ServerOptions};

fn error_lines(o: &CmdOutput) -> String {
    o.stderr.lines().filter(|l| l.starts_with("Error")).collect::<Vec<_>>().join("\n")
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}):\n{text}"))
}

/// `etcdctl endpoint status -w json`'s Status object.
fn status(s: &Server) -> serde_json::Value {
    json(etcdctl(&s.endpoint(), &["endpoint", "status", "-w", "json"]).ok())[0]["Status"].clone()
}

fn revision(s: &Server) -> i64 {
    status(s)["header"]["revision"].as_i64().expect("revision")
}

/// A value of `n` bytes that does not compress.
fn blob(n: usize, seed: u64) -> String {
    let mut x = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (b'a' + (x % 26) as u8) as char
        })
        .collect()
}

/// Writes 100 kB values until the server refuses; returns the refusal.
fn fill_until_refused(s: &Server) -> CmdOutput {
    for i in 0..400 {
        let out = etcdctl(&s.endpoint(), &["put", &format!("fill/{i:04}"), &blob(100_000, i)]);
        if !out.success() {
            return out;
        }
    }
    panic!("{} accepted 40 MB under a small quota", s.kind());
}

/// The quota workflow, run the same way on etcd and Cairn: fill until NOSPACE, see what
/// works under the alarm, then compact + defragment + disarm brings writes back.
#[tokio::test]
async fn nospace_alarm_workflow_matches_etcd_and_survives_restart() {
    let quota = ["--quota-backend-bytes", "8000000"];
    let (mut etcd, mut cairn) = tokio::join!(
        Server::start_with_args(ServerKind::Etcd, &quota),
        Server::start_with_args(ServerKind::Cairn, &quota)
    );
    etcd.set_log_on_failure(false);
    for s in [&etcd, &cairn] {
        let refused = fill_until_refused(s);
        assert_eq!(error_lines(&refused), "Error: etcdserver: mvcc: database space exceeded", "{}", s.kind());
        let e = s.endpoint();
        let id = status(s)["header"]["member_id"].as_u64().expect("member id");
        let alarm = format!("memberID:{id} alarm:NOSPACE \n");
        assert_eq!(etcdctl(&e, &["alarm", "list"]).ok(), alarm, "{}", s.kind());
        assert_eq!(status(s)["errors"], serde_json::json!([alarm.trim_end_matches('\n')]), "{}", s.kind());
        // Under the alarm: writes that add data fail, reads, deletes and compaction work.
        assert_eq!(error_lines(&etcdctl(&e, &["put", "x", "y"])), "Error: etcdserver: mvcc: database space exceeded");
        assert_eq!(
            error_lines(&etcdctl(&e, &["lease", "grant", "100"])),
            "Error: failed to grant lease (etcdserver: mvcc: database space exceeded)"
        );
        assert!(etcdctl(&e, &["get", "fill/0000", "--keys-only"]).ok().contains("fill/0000"));
        assert!(etcdctl(&e, &["del", "fill/", "--prefix"]).success());
    }
    // The alarm is stored: it is still raised after a restart.
    cairn.restart().await;
    let e = cairn.endpoint();
    assert!(etcdctl(&e, &["alarm", "list"]).ok().contains("alarm:NOSPACE"));
    assert_eq!(error_lines(&etcdctl(&e, &["put", "x", "y"])), "Error: etcdserver: mvcc: database space exceeded");
    for s in [&etcd, &cairn] {
        let e = s.endpoint();
        let rev = revision(s).to_string();
        let before = status(s)["dbSize"].as_i64().expect("dbSize");
        assert_eq!(etcdctl(&e, &["compaction", "--physical", &rev]).ok(), format!("compacted revision {rev}\n"));
        assert!(etcdctl(&e, &["defrag"]).ok().starts_with("Finished defragmenting etcd member["), "{}", s.kind());
        let after = status(s)["dbSize"].as_i64().expect("dbSize");
        assert!(after < before / 4, "{}: defragment left {after} of {before} bytes", s.kind());
        let disarmed = etcdctl(&e, &["alarm", "disarm"]);
        assert!(disarmed.ok().contains("alarm:NOSPACE"), "{}", s.kind());
        assert_eq!(etcdctl(&e, &["alarm", "list"]).ok(), "", "{}", s.kind());
        assert_eq!(etcdctl(&e, &["put", "x", "y"]).ok(), "OK\n", "{}", s.kind());
    }
    // A second disarm finds nothing to clear, on both.
    assert_eq!(
        etcdctl(&etcd.endpoint(), &["alarm", "disarm"]).ok(),
        etcdctl(&cairn.endpoint(), &["alarm", "disarm"]).ok()
    );
}

/// Defragment while a client keeps writing: every acknowledged write is there afterwards,
/// and the file shrank.
#[tokio::test]
async fn defragment_under_writes_loses_nothing() {
    let s = Server::start(ServerKind::Cairn).await;
    let mut c = s.client().await;
    for i in 0..200u64 {
        c.put(format!("big/{i:04}"), blob(20_000, i), None).await.expect("put");
    }
    c.delete("big/", Some(etcd_client::DeleteOptions::new().with_prefix())).await.expect("delete");
    let rev = c.get("x", None).await.expect("get").header().expect("header").revision();
    c.compact(rev, Some(etcd_client::CompactionOptions::new().with_physical())).await.expect("compact");
    let before = status(&s)["dbSize"].as_i64().expect("dbSize");
    let writer = {
        let mut c = s.client().await;
        tokio::spawn(async move {
            let mut acked = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(3);
            let mut i = 0u64;
            while Instant::now() < deadline {
                let k = format!("live/{i:06}");
                c.put(k.clone(), format!("v{i}"), None).await.expect("put during defragment");
                acked.push(k);
                i += 1;
            }
            acked
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let e = s.endpoint();
    let defrag = tokio::task::spawn_blocking(move || etcdctl(&e, &["defrag"])).await.expect("defrag task");
    assert!(defrag.ok().starts_with("Finished defragmenting etcd member["));
    let acked = writer.await.expect("writer");
    let after = status(&s)["dbSize"].as_i64().expect("dbSize");
    assert!(after < before / 2, "defragment left {after} of {before} bytes");
    let got = c.get("live/", Some(etcd_client::GetOptions::new().with_prefix().with_keys_only())).await.expect("get");
    let keys: Vec<String> = got.kvs().iter().map(|kv| kv.key_str().expect("utf-8").to_string()).collect();
    assert_eq!(keys, acked, "every acknowledged write survives the defragmentation");
    let in_use = status(&s)["dbSizeInUse"].as_i64().expect("dbSizeInUse");
    assert!(in_use > 0 && in_use <= after, "dbSizeInUse {in_use}, dbSize {after}");
}

/// `etcdctl snapshot save`, `cairn snapshot status`, `cairn snapshot restore`, then a new
/// member serves the restored data with its revisions, compaction and leases.
#[tokio::test]
async fn snapshot_save_restore_and_serve() {
    let s = Server::start(ServerKind::Cairn).await;
    let e = s.endpoint();
    let mut c = s.client().await;
    for i in 0..50 {
        c.put(format!("k/{i:02}"), format!("v{i}"), None).await.expect("put");
    }
    c.put("k/00", "again", None).await.expect("put");
    let lease = c.lease_grant(600, None).await.expect("grant").id();
    c.put("leased", "x", Some(etcd_client::PutOptions::new().with_lease(lease))).await.expect("put");
    c.compact(10, None).await.expect("compact");
    let rev = revision(&s);
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("snap.db");
    let saved = etcdctl(&e, &["snapshot", "save", file.to_str().expect("utf-8")]);
    assert!(saved.ok().contains("Snapshot saved at"), "{saved}");
    let cairn = cairn_bin();
    let st = std::process::Command::new(&cairn)
        .args(["snapshot", "status", file.to_str().expect("utf-8"), "-w", "json"])
        .output()
        .expect("run cairn snapshot status");
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    let st = json(&String::from_utf8_lossy(&st.stdout));
    assert_eq!(st["revision"].as_i64(), Some(rev));
    assert!(st["totalKey"].as_u64().expect("totalKey") >= 52);
    // A corrupted copy is refused.
    let bad = dir.path().join("bad.db");
    let mut bytes = std::fs::read(&file).expect("read snapshot");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&bad, &bytes).expect("write");
    let data = dir.path().join("restored");
    let out = std::process::Command::new(&cairn)
        .args(["snapshot", "restore", bad.to_str().expect("utf-8"), "--data-dir", data.to_str().expect("utf-8")])
        .output()
        .expect("run restore");
    assert!(!out.status.success(), "a corrupted snapshot must not restore");
    assert!(String::from_utf8_lossy(&out.stderr).contains("sha256"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!data.exists());
    // The real one restores into a new data dir that a new member serves.
    let (port, peer) = (free_port(), free_port());
    let peer_url = format!("http://127.0.0.1:{peer}");
    let out = std::process::Command::new(&cairn)
        .args([
            "snapshot",
            "restore",
            file.to_str().expect("utf-8"),
            "--data-dir",
            data.to_str().expect("utf-8"),
            "--name",
            "restored",
            "--initial-advertise-peer-urls",
            &peer_url,
            "--initial-cluster",
            &format!("restored={peer_url}"),
        ])
        .output()
        .expect("run restore");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let existing = std::process::Command::new(&cairn)
        .args(["snapshot", "restore", file.to_str().expect("utf-8"), "--data-dir", data.to_str().expect("utf-8")])
        .output()
        .expect("run restore");
    assert!(!existing.status.success(), "restoring over an existing data dir must fail");
    let child = std::process::Command::new(&cairn)
        .args([
            "--name",
            "restored",
            "--data-dir",
            data.to_str().expect("utf-8"),
            "--listen-client-urls",
            &format!("http://127.0.0.1:{port}"),
            "--advertise-client-urls",
            &format!("http://127.0.0.1:{port}"),
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
            "--initial-cluster",
            &format!("restored={peer_url}"),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start the restored member");
    // Stopped (by its pid) when the test ends, passed or failed.
    let _member = KillOnDrop(child);
    let e2 = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !etcdctl(&e2, &["get", "x"]).success() {
        assert!(Instant::now() < deadline, "restored member did not come up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    {
        let got = json(etcdctl(&e2, &["get", "k/00", "-w", "json"]).ok());
        assert_eq!(got["header"]["revision"].as_i64(), Some(rev));
        assert_eq!(got["kvs"][0]["create_revision"].as_i64(), Some(2));
        assert_eq!(got["kvs"][0]["version"].as_i64(), Some(2));
        assert_eq!(got["count"].as_i64(), Some(1));
        let all = json(etcdctl(&e2, &["get", "k/", "--prefix", "--keys-only", "-w", "json"]).ok());
        assert_eq!(all["count"].as_i64(), Some(50));
        // History and compaction come along.
        assert!(etcdctl(&e2, &["get", "k/00", "--rev", "12"]).ok().contains("v0"));
        assert_eq!(
            error_lines(&etcdctl(&e2, &["get", "k/00", "--rev", "5"])),
            "Error: etcdserver: mvcc: required revision has been compacted"
        );
        assert!(etcdctl(&e2, &["lease", "list"]).ok().contains(&format!("{lease:x}")));
        let ttl = etcdctl(&e2, &["lease", "timetolive", &format!("{lease:x}"), "--keys"]);
        assert!(ttl.ok().contains("leased"), "{ttl}");
        // New writes continue the revision sequence.
        let put = json(etcdctl(&e2, &["put", "new", "1", "-w", "json"]).ok());
        assert_eq!(put["header"]["revision"].as_i64(), Some(rev + 1));
        assert_eq!(etcdctl(&e2, &["alarm", "list"]).ok(), "");
    }
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// HashKV: equal on two members with equal data (whatever physical compaction has done),
/// different after a change; errors as etcd's.
#[tokio::test]
async fn hashkv_equal_for_equal_data_and_errors_match_etcd() {
    let (a, b, mut etcd) = tokio::join!(
        Server::start(ServerKind::Cairn),
        Server::start(ServerKind::Cairn),
        Server::start(ServerKind::Etcd)
    );
    etcd.set_log_on_failure(false);
    for s in [&a, &b, &etcd] {
        let mut c = s.client().await;
        for i in 0..30 {
            c.put(format!("k{}", i % 7), format!("v{i}"), None).await.expect("put");
        }
        c.delete("k3", None).await.expect("delete");
        c.compact(20, None).await.expect("compact");
    }
    let hash = |s: &Server, rev: i64| -> (u32, i64) {
        let out = json(etcdctl(&s.endpoint(), &["endpoint", "hashkv", "--rev", &rev.to_string(), "-w", "json"]).ok());
        let h = &out[0]["HashKV"];
        (h["hash"].as_u64().expect("hash") as u32, h["compact_revision"].as_i64().expect("compact_revision"))
    };
    assert_eq!(hash(&a, 0), hash(&b, 0));
    assert_eq!(hash(&a, 25), hash(&b, 25));
    assert_eq!(hash(&a, 0).1, 20);
    assert_ne!(hash(&a, 25).0, hash(&a, 31).0);
    let mut ca = a.client().await;
    ca.put("k1", "changed", None).await.expect("put");
    assert_ne!(hash(&a, 0), hash(&b, 0));
    // Errors, compared with etcd through the gRPC API.
    for rev in [10i64, 1000] {
        let mut got = Vec::new();
        for s in [&etcd, &a] {
            let mut m = MaintenanceClient::connect(s.client_url()).await.expect("connect");
            let st = m.hash_kv(pb::HashKvRequest { revision: rev }).await.expect_err("hashkv error");
            got.push((st.code(), st.message().to_string()));
        }
        assert_eq!(got[0], got[1], "HashKV at revision {rev}");
    }
    let mut m = MaintenanceClient::connect(a.client_url()).await.expect("connect");
    let h = m.hash(pb::HashRequest {}).await.expect("hash").into_inner();
    assert!(h.header.is_some());
}

/// Status fields, health, move-leader and downgrade answers: as a single etcd member.
#[tokio::test]
async fn status_health_move_leader_and_downgrade_as_a_single_member() {
    let (s, mut etcd) = tokio::join!(Server::start(ServerKind::Cairn), Server::start(ServerKind::Etcd));
    etcd.set_log_on_failure(false);
    let st = status(&s);
    let id = st["header"]["member_id"].as_u64().expect("member id");
    assert_eq!(st["leader"].as_u64(), Some(id));
    assert!(st["dbSize"].as_i64().expect("dbSize") > 0);
    let in_use = st["dbSizeInUse"].as_i64().expect("dbSizeInUse");
    assert!(in_use > 0 && in_use <= st["dbSize"].as_i64().expect("dbSize"));
    assert!(st["raftIndex"].as_u64() >= st["raftAppliedIndex"].as_u64());
    assert!(st["raftAppliedIndex"].as_u64().expect("applied") > 0);
    assert!(st["raftTerm"].as_u64().expect("term") > 0);
    assert_eq!(st.get("isLearner"), None, "false is omitted, as etcd's JSON does");
    assert!(etcdctl(&s.endpoint(), &["endpoint", "health"]).ok().contains("is healthy"));
    // Moving leadership to itself is done already; to anyone else it is refused as by etcd.
    for srv in [&s, &etcd] {
        let me = format!("{:x}", status(srv)["header"]["member_id"].as_u64().expect("id"));
        let out = etcdctl(&srv.endpoint(), &["move-leader", &me]);
        assert_eq!(out.ok(), format!("Leadership transferred from {me} to {me}\n"));
    }
    let e1 = error_lines(&etcdctl(&etcd.endpoint(), &["move-leader", "1234"]));
    let e2 = error_lines(&etcdctl(&s.endpoint(), &["move-leader", "1234"]));
    assert_eq!(e1, e2);
    // Downgrade: validation errors as etcd's.
    let mut got = Vec::new();
    for srv in [&etcd, &s] {
        let mut m = MaintenanceClient::connect(srv.client_url()).await.expect("connect");
        let mut answers = Vec::new();
        for (action, version) in [(0, "3.3.0"), (0, "bogus"), (0, "3.6.0"), (2, "")] {
            let r = m.downgrade(pb::DowngradeRequest { action, version: version.to_string() }).await;
            answers.push(match r {
                Ok(r) => format!("ok {}", r.into_inner().version),
                Err(e) => format!("{:?} {}", e.code(), e.message()),
            });
        }
        got.push(answers);
    }
    assert_eq!(got[0], got[1], "Downgrade answers (etcd, then Cairn)");
}

/// `--auto-compaction-mode periodic --auto-compaction-retention 2s`: old revisions go away
/// without anyone asking.
#[tokio::test]
async fn periodic_auto_compaction_compacts() {
    let s = Server::start_with(
        ServerKind::Cairn,
        ServerOptions::with_args(["--auto-compaction-mode", "periodic", "--auto-compaction-retention", "2s"]),
    )
    .await;
    let mut c = s.client().await;
    c.put("k", "v1", None).await.expect("put");
    let first = c.get("k", None).await.expect("get").header().expect("header").revision();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        c.put("k", "again", None).await.expect("put");
        match c.get("k", Some(etcd_client::GetOptions::new().with_revision(first))).await {
            Err(e) if e.to_string().contains("required revision has been compacted") => break,
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => {}
        }
        assert!(Instant::now() < deadline, "revision {first} was not compacted within 30 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `etcdctl check perf` runs its whole workload against Cairn (smoke: it completes and every
/// write is accepted; the pass/fail thresholds depend on the machine).
#[tokio::test]
async fn check_perf_smoke() {
    let s = Server::start(ServerKind::Cairn).await;
    let e = s.endpoint();
    let out = tokio::task::spawn_blocking(move || etcdctl(&e, &["check", "perf", "--auto-compact", "--auto-defrag"]))
        .await
        .expect("check perf task");
    let text = format!("{}{}", out.stdout, out.stderr);
    assert!(text.contains("Throughput"), "{out}");
    assert!(!text.contains("ERROR("), "check perf saw failed requests:\n{out}");
}
