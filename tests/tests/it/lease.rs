//! Leases end to end.
//!
//! - Differential (etcd-client, both servers, every response compared): lease errors, the
//!   minimum and maximum TTL, keys attached and deleted by a revoke in one revision, the
//!   answers for missing leases (revoke, put, TimeToLive, keep-alive).
//! - etcdctl 3.5.1: `lease grant/revoke/keep-alive/timetolive --keys/list`, `put --lease`,
//!   compared with etcd where the output must be equal (lease IDs normalised); a key
//!   disappears after a revoke and after expiry; `lease keep-alive` keeps a lease past its
//!   TTL; a restart does not expire leases.
//!
//! Waits are for conditions with a deadline, never fixed sleeps.

use std::time::{Duration, Instant};

use cairn_tests::diff::{
    keep_alive_across_revoke, keep_alive_once, lease_grant, lease_list, lease_revoke, lease_ttl, put, range, range_all,
    run_differential, txn, Script,
};
use cairn_tests::harness::{
    etcdctl, normalize, subject_kind, CmdOutput, EtcdctlProcess, Server, ServerKind, ServerOptions,
};
use cairn_tests::watch_util::{run_watch_diff, WatchRun};
use etcd_client::{LeaseGrantOptions, PutOptions, WatchOptions};

const NOT_FOUND: &str = "NotFound";
const OUT_OF_RANGE: &str = "OutOfRange";
const FAILED_PRECONDITION: &str = "FailedPrecondition";

const LEASE_NOT_FOUND: &str = "etcdserver: requested lease not found";
const LEASE_EXIST: &str = "etcdserver: lease already exists";
const TTL_TOO_LARGE: &str = "etcdserver: too large lease TTL";

/// A lease ID no server has granted.
const MISSING: i64 = 0x7e57_1ea5e;

/// Longest wait for a lease to expire and its keys to go (TTL 2 s, revoked within 0.5 s).
const EXPIRY_DEADLINE: Duration = Duration::from_secs(20);
/// How often a condition is polled.
const POLL: Duration = Duration::from_millis(100);

// ---------------------------------------------------------------- differential

#[tokio::test]
async fn lease_errors_and_ttl_limits_match_etcd() {
    let mut s = Script::new();
    // Short leases are revoked at once, so that none expires during the script.
    s.note("TTL 1 is raised to the minimum (2 s)", lease_grant(1, 1001)).ok(lease_revoke(1001));
    s.note("TTL 0", lease_grant(0, 1002)).ok(lease_revoke(1002));
    s.note("negative TTL", lease_grant(-5, 1003)).ok(lease_revoke(1003));
    s.note("the largest TTL", lease_grant(9_000_000_000, 1004));
    s.err(lease_grant(9_000_000_001, 1005), OUT_OF_RANGE, TTL_TOO_LARGE);
    s.err(lease_grant(100, 1004), FAILED_PRECONDITION, LEASE_EXIST);
    s.note("the TTL limit is checked before the ID", lease_grant(9_000_000_001, 1004));
    s.note("server-chosen ID (positive, fresh)", lease_grant(1000, 0));
    s.note("a negative client-chosen ID", lease_grant(1000, -7));
    s.step(lease_ttl(-7, false));
    s.step(lease_list());
    s.err(lease_revoke(MISSING), NOT_FOUND, LEASE_NOT_FOUND);
    s.note("revoke of ID 0", lease_revoke(0));
    s.err(put("k", "v").lease(MISSING), NOT_FOUND, LEASE_NOT_FOUND);
    s.err(txn().then_op(put("k", "v")).then_op(put("l", "v").lease(MISSING)), NOT_FOUND, LEASE_NOT_FOUND);
    s.note("TimeToLive of a missing lease: TTL -1", lease_ttl(MISSING, true));
    s.note("TimeToLive of ID 0", lease_ttl(0, false));
    s.note("keep-alive of a missing lease", keep_alive_once(MISSING));
    s.ok(lease_grant(1000, 1006)).ok(put("kept", "v").lease(1006));
    s.note("keep-alive answers TTL 0 once the lease is gone", keep_alive_across_revoke(1006));
    s.err(lease_revoke(1006), NOT_FOUND, LEASE_NOT_FOUND);
    s.ok(lease_revoke(1004)).ok(lease_revoke(-7));
    s.step(lease_list()).dump();
    run_differential("lease_errors_and_ttl_limits_match_etcd", &s).await;
}

#[tokio::test]
async fn revoke_deletes_the_keys_of_a_lease_in_one_revision() {
    let mut s = Script::new();
    s.at_rev(1, lease_grant(1000, 10)).ok(lease_grant(1000, 11));
    s.ok(put("c", "1").lease(10)).ok(put("a", "1").lease(10)).ok(put("b", "1").lease(10));
    s.ok(put("x", "1")).ok(put("y", "1").lease(11));
    s.note("moved to another lease", put("y", "2").lease(10));
    s.note("ignore_lease keeps the lease", put("a", "2").ignore_lease());
    s.note("a put without lease detaches the key", put("c", "2"));
    s.note("attached inside a txn", txn().then_op(put("d", "1").lease(10)).then_op(put("e", "1").lease(11)));
    s.note("a deleted key is detached", cairn_tests::diff::delete("e"));
    // A keep-alive right before each TimeToLive: the remaining TTL (truncated to whole
    // seconds) is then the same on both servers unless a step takes a second.
    s.note("keep-alive answers the granted TTL", keep_alive_once(10)).step(lease_ttl(10, true));
    s.ok(keep_alive_once(11)).step(lease_ttl(11, true));
    s.ok(keep_alive_once(10)).step(lease_ttl(10, false));
    s.step(range_all());
    s.at_rev(12, lease_revoke(10));
    s.note("every key of lease 10 gone at revision 12", range_all());
    s.note("each key deleted at revision 12", range("a").rev(11)).step(range("a").rev(12));
    s.note("a lease without keys: no revision", lease_revoke(11));
    s.step(lease_ttl(10, true)).step(lease_list());
    s.err(put("z", "1").lease(10), NOT_FOUND, LEASE_NOT_FOUND);
    s.dump();
    run_differential("revoke_deletes_the_keys_of_a_lease_in_one_revision", &s).await;
}

/// What a watcher sees of a revoke and of an expiry: one delete event per key, in key order,
/// all at one revision, with the previous values.
#[tokio::test]
async fn revoke_and_expiry_delete_events_match_etcd() {
    run_watch_diff("revoke_and_expiry_delete_events_match_etcd", async |run: &mut WatchRun| {
        let s = run.open("k/", WatchOptions::new().with_prefix().with_prev_key()).await;
        run.wait_created(s, 0).await;
        let mut lease = run.client.lease_client();
        let kind = run.kind;
        let grant = async |lease: &mut etcd_client::LeaseClient, ttl: i64, id: i64| {
            let r = lease.grant(ttl, Some(LeaseGrantOptions::new().with_id(id))).await;
            r.unwrap_or_else(|e| panic!("{kind}: grant {id}: {e}"))
        };
        grant(&mut lease, 1000, 5).await;
        for k in ["k/c", "k/a", "k/b"] {
            run.put_with(k, "v", PutOptions::new().with_lease(5)).await;
        }
        run.put("k/z", "v").await;
        let r = lease.revoke(5).await.unwrap_or_else(|e| panic!("{kind}: revoke: {e}"));
        run.note(format!("revoke 5 -> rev {}", r.header().map_or(0, |h| h.revision())));
        run.wait_events(s, 0, 7).await;
        // A lease of the minimum TTL: its keys go at its expiry.
        grant(&mut lease, 2, 6).await;
        run.put_with("k/y", "v", PutOptions::new().with_lease(6)).await;
        run.put_with("k/x", "v", PutOptions::new().with_lease(6)).await;
        run.note("lease 6 expires");
        run.wait_events(s, 0, 11).await;
    })
    .await;
}

// ---------------------------------------------------------------- etcdctl

/// The lease ID in `etcdctl lease grant` output (`lease <16 hex> granted with TTL(..s)`).
fn granted_id(out: &str) -> String {
    let id = out.strip_prefix("lease ").and_then(|r| r.split(' ').next()).unwrap_or_default();
    assert!(id.len() == 16 && out.contains(" granted with TTL("), "not a grant: {out:?}");
    id.to_string()
}

/// `etcdctl <args>` with `{L}` replaced by the lease ID.
fn run(server: &Server, lease: &str, args: &[&str]) -> CmdOutput {
    let args: Vec<String> = args.iter().map(|a| a.replace("{L}", lease)).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    etcdctl(&server.endpoint(), &args)
}

/// etcdctl output with the lease ID as `<lease>` (hex) or `"lease"` (decimal, in JSON), ids
/// and ports normalised.
/// The remaining TTL of a 100 s lease read within a few seconds of its grant: 95..=99 all
/// read as `~99` (the suite runs many servers at once; a step may take over a second).
fn fuzzy_ttl(s: &str) -> String {
    let mut out = s.to_string();
    for n in 95..=99 {
        out = out
            .replace(&format!("remaining({n}s)"), "remaining(~99s)")
            .replace(&format!("\"ttl\": {n}"), "\"ttl\": ~99");
    }
    out
}

fn shown(out: &CmdOutput, server: &Server, lease: &str) -> String {
    let decimal = i64::from_str_radix(lease, 16).map(|d| d.to_string()).unwrap_or_else(|e| panic!("{lease}: {e}"));
    let stdout = fuzzy_ttl(&out.stdout).replace(lease, "<lease>").replace(&decimal, "\"lease\"");
    let errors: Vec<&str> = out.stderr.lines().filter(|l| l.starts_with("Error")).collect();
    format!(
        "exit: {}\n{}\n{}",
        if out.success() { "success" } else { "failure" },
        normalize(&stdout, server.client_port(), server.peer_port()),
        errors.join("\n").replace(lease, "<lease>")
    )
}

/// A fresh etcd and a fresh server under test, each with one lease of the same TTL.
struct Pair {
    etcd: Server,
    subject: Server,
    etcd_lease: String,
    subject_lease: String,
}

impl Pair {
    async fn start(ttl: &str) -> Pair {
        let kind = subject_kind();
        let (mut etcd, subject) = tokio::join!(
            Server::start_with(ServerKind::Etcd, ServerOptions::default()),
            Server::start_with(kind, ServerOptions::default())
        );
        etcd.set_log_on_failure(false);
        let want = etcdctl(&etcd.endpoint(), &["lease", "grant", ttl]);
        let got = etcdctl(&subject.endpoint(), &["lease", "grant", ttl]);
        let (etcd_lease, subject_lease) = (granted_id(want.ok()), granted_id(got.ok()));
        assert_eq!(shown(&want, &etcd, &etcd_lease), shown(&got, &subject, &subject_lease));
        Pair { etcd, subject, etcd_lease, subject_lease }
    }

    /// Runs `args` (`{L}` = the lease) on both; the normalised outputs must be equal.
    fn same(&self, args: &[&str]) -> CmdOutput {
        let want = run(&self.etcd, &self.etcd_lease, args);
        let got = run(&self.subject, &self.subject_lease, args);
        let (w, g) = (shown(&want, &self.etcd, &self.etcd_lease), shown(&got, &self.subject, &self.subject_lease));
        assert_eq!(w, g, "`etcdctl {}`: etcd (left) and {} (right) differ", args.join(" "), self.subject.kind());
        got
    }
}

#[tokio::test]
async fn etcdctl_lease_commands_match_etcd() {
    let p = Pair::start("100").await;
    let l = p.subject_lease.clone();
    assert_eq!(p.same(&["put", "k2", "v", "--lease={L}"]).ok(), "OK\n");
    assert_eq!(
        fuzzy_ttl(p.same(&["lease", "timetolive", "{L}"]).ok()),
        format!("lease {l} granted with TTL(100s), remaining(~99s)\n")
    );
    assert_eq!(
        fuzzy_ttl(p.same(&["lease", "timetolive", "--keys", "{L}"]).ok()),
        format!("lease {l} granted with TTL(100s), remaining(~99s), attached keys([k2])\n")
    );
    // With two keys etcd lists them in Go map order (either way round); Cairn in key order.
    p.same(&["put", "k1", "v", "--lease={L}"]);
    let both = fuzzy_ttl(run(&p.subject, &l, &["lease", "timetolive", "--keys", "{L}"]).ok());
    let sorted = format!("lease {l} granted with TTL(100s), remaining(~99s), attached keys([k1 k2])\n");
    match p.subject.kind() {
        ServerKind::Cairn => assert_eq!(both, sorted),
        ServerKind::Etcd => assert!(both == sorted || both == sorted.replace("k1 k2", "k2 k1"), "{both}"),
    }
    p.same(&["lease", "timetolive", "{L}", "-w", "json"]);
    assert_eq!(p.same(&["lease", "keep-alive", "--once", "{L}"]).ok(), format!("lease {l} keepalived with TTL(100)\n"));
    p.same(&["lease", "keep-alive", "--once", "{L}", "-w", "json"]);
    assert_eq!(p.same(&["lease", "list"]).ok(), format!("found 1 leases\n{l}\n"));
    p.same(&["lease", "list", "-w", "json"]);
    p.same(&["get", "k", "--prefix", "-w", "json"]);
    assert_eq!(p.same(&["lease", "revoke", "{L}"]).ok(), format!("lease {l} revoked\n"));
    assert_eq!(p.same(&["get", "k", "--prefix"]).ok(), "", "the keys went with the lease");
    p.same(&["get", "k", "--prefix", "-w", "json"]);
    assert_eq!(p.same(&["lease", "timetolive", "{L}"]).ok(), format!("lease {l} already expired\n"));
    p.same(&["lease", "timetolive", "{L}", "-w", "json"]);
    p.same(&["lease", "list"]);
    // Errors.
    assert!(p.same(&["lease", "revoke", "{L}"]).err().contains(LEASE_NOT_FOUND));
    assert!(p.same(&["lease", "keep-alive", "--once", "{L}"]).err().contains(LEASE_NOT_FOUND));
    assert!(p.same(&["put", "k", "v", "--lease={L}"]).err().contains(LEASE_NOT_FOUND));
    assert!(p.same(&["lease", "grant", "9000000001"]).err().contains(TTL_TOO_LARGE));
    let out = etcdctl(&p.subject.endpoint(), &["lease", "grant", "1", "-w", "json"]);
    let j: serde_json::Value = serde_json::from_str(out.ok().trim()).unwrap_or_else(|e| panic!("json ({e}): {out}"));
    assert_eq!(j["TTL"], 2, "TTL 1 is raised to etcd's minimum of 2 s: {j}");
    assert!(j["ID"].as_i64().unwrap_or(0) > 0, "a positive server-chosen ID: {j}");
}

/// Polls `cond` until it holds or `deadline` passes; returns whether it held.
fn wait_for(deadline: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let give_up = Instant::now() + deadline;
    while Instant::now() < give_up {
        if cond() {
            return true;
        }
        std::thread::sleep(POLL);
    }
    cond()
}

#[tokio::test]
async fn a_key_disappears_when_its_lease_expires() {
    let server = Server::start(subject_kind()).await;
    let ep = server.endpoint();
    let lease = granted_id(etcdctl(&ep, &["lease", "grant", "2"]).ok());
    etcdctl(&ep, &["put", "k", "v", &format!("--lease={lease}")]).ok();
    etcdctl(&ep, &["put", "other", "v"]).ok();
    let granted = Instant::now();
    assert_eq!(etcdctl(&ep, &["get", "k", "--print-value-only"]).ok(), "v\n");
    let gone = wait_for(EXPIRY_DEADLINE, || etcdctl(&ep, &["get", "k"]).ok().is_empty());
    assert!(gone, "the key of a 2 s lease still exists after {EXPIRY_DEADLINE:?}");
    assert!(granted.elapsed() >= Duration::from_secs(1), "not before the lease's TTL: {:?}", granted.elapsed());
    assert_eq!(etcdctl(&ep, &["lease", "timetolive", &lease]).ok(), format!("lease {lease} already expired\n"));
    assert_eq!(etcdctl(&ep, &["lease", "list"]).ok(), "found 0 leases\n");
    assert_eq!(etcdctl(&ep, &["get", "other", "--print-value-only"]).ok(), "v\n");
    // One delete at one new revision: puts at 2 and 3, the expiry at 4.
    let j: serde_json::Value =
        serde_json::from_str(etcdctl(&ep, &["get", "other", "-w", "json"]).ok().trim()).expect("json");
    assert_eq!(j["header"]["revision"], 4, "{j}");
}

#[tokio::test]
async fn etcdctl_keep_alive_keeps_a_lease_past_its_ttl_until_revoked() {
    let server = Server::start(subject_kind()).await;
    let ep = server.endpoint();
    let lease = granted_id(etcdctl(&ep, &["lease", "grant", "2"]).ok());
    etcdctl(&ep, &["put", "k", "v", &format!("--lease={lease}")]).ok();
    let started = Instant::now();
    let mut ka = EtcdctlProcess::start(&ep, &["lease", "keep-alive", &lease]);
    // etcdctl keeps alive every TTL/3; wait for keep-alives spanning twice the TTL.
    let want = format!("lease {lease} keepalived with TTL(2)");
    while started.elapsed() < Duration::from_secs(4) {
        let line = ka.line_within(Duration::from_secs(5)).unwrap_or_else(|| panic!("no keep-alive within 5 s"));
        assert_eq!(line, want);
    }
    assert_eq!(etcdctl(&ep, &["get", "k", "--print-value-only"]).ok(), "v\n", "kept alive past its 2 s TTL");
    let ttl = etcdctl(&ep, &["lease", "timetolive", &lease]).ok().to_string();
    assert!(ttl.starts_with(&format!("lease {lease} granted with TTL(2s), remaining(")), "{ttl}");
    etcdctl(&ep, &["lease", "revoke", &lease]).ok();
    // The keep-alive loop learns that the lease is gone (a TTL of 0) and ends.
    let mut last = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        match ka.line_within(Duration::from_secs(1)) {
            Some(l) if l == want => {}
            Some(l) => {
                last = l;
                break;
            }
            None => {}
        }
    }
    assert_eq!(last, format!("lease {lease} expired or revoked."));
    let exited = wait_for(Duration::from_secs(10), || ka.has_exited());
    assert!(exited, "etcdctl lease keep-alive ends once the lease is revoked");
    assert_eq!(etcdctl(&ep, &["get", "k"]).ok(), "");
}

// Multi-threaded: the readiness probe's connection must be able to close while this thread
// blocks in `stop()`, or the server waits for it on shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_gives_every_lease_its_full_ttl_again() {
    let mut server = Server::start(subject_kind()).await;
    let ep = server.endpoint();
    let lease = granted_id(etcdctl(&ep, &["lease", "grant", "3"]).ok());
    let granted = Instant::now();
    etcdctl(&ep, &["put", "k", "v", &format!("--lease={lease}")]).ok();
    server.stop();
    // The condition under test, not a synchronisation: the server stays down until the
    // lease's whole TTL has passed.
    std::thread::sleep((granted + Duration::from_secs(4)).saturating_duration_since(Instant::now()));
    server.restart().await;
    let restarted = Instant::now();
    let ep = server.endpoint();
    assert_eq!(etcdctl(&ep, &["get", "k", "--print-value-only"]).ok(), "v\n", "no mass expiry on restart");
    let ttl = etcdctl(&ep, &["lease", "timetolive", &lease]).ok().to_string();
    // The full TTL plus an election timeout (1 s) from the promotion.
    let remaining: i64 = ttl
        .split("remaining(")
        .nth(1)
        .and_then(|r| r.split('s').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no remaining TTL in {ttl:?}"));
    assert!((1..=3).contains(&remaining), "remaining {remaining} s after a restart: {ttl}");
    // And it still expires.
    let gone = wait_for(EXPIRY_DEADLINE, || etcdctl(&ep, &["get", "k"]).ok().is_empty());
    assert!(gone, "the lease expires after the restart");
    assert!(restarted.elapsed() >= Duration::from_secs(2), "{:?}", restarted.elapsed());
}
