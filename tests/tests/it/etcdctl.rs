//! etcdctl 3.5.1 against the server under test (Cairn, or a second etcd with
//! `CAIRN_DIFF_AGAINST=etcd`), with the same commands run against real etcd wherever the
//! output must be equal (ids, terms and ports normalised).

use cairn_tests::diff::line_diff;
use cairn_tests::harness::{
    etcdctl, etcdctl_with_stdin, normalize, subject_kind, CmdOutput, Server, ServerKind, ServerOptions,
};

/// A fresh etcd (reference) and a fresh server under test, driven in lockstep.
struct Pair {
    etcd: Server,
    subject: Server,
}

impl Pair {
    async fn start() -> Pair {
        let kind = subject_kind();
        let _ = ServerKind::Etcd.binary();
        let _ = kind.binary();
        let (mut etcd, subject) = tokio::join!(
            Server::start_with(ServerKind::Etcd, ServerOptions::default()),
            Server::start_with(kind, ServerOptions::default())
        );
        etcd.set_log_on_failure(false);
        Pair { etcd, subject }
    }

    /// Runs `args` (with `input` on stdin if given) on both servers and asserts that the exit
    /// status, the normalised stdout and the `Error:` lines of stderr are equal. Returns the
    /// subject's output.
    fn same(&self, args: &[&str], input: Option<&str>) -> CmdOutput {
        let run = |s: &Server| match input {
            Some(i) => etcdctl_with_stdin(&s.endpoint(), args, i),
            None => etcdctl(&s.endpoint(), args),
        };
        let (want, got) = (run(&self.etcd), run(&self.subject));
        let view = |o: &CmdOutput, s: &Server| {
            format!(
                "exit: {}\n--- stdout ---\n{}--- Error lines of stderr ---\n{}",
                if o.success() { "success" } else { "failure" },
                normalize(&o.stdout, s.client_port(), s.peer_port()),
                error_lines(&o.stderr)
            )
        };
        let (w, g) = (view(&want, &self.etcd), view(&got, &self.subject));
        assert!(
            w == g,
            "`etcdctl {}` differs between etcd and {kind} (normalised; - etcd, + {kind}):\n{}\n--- {kind} raw output ---\n{got}",
            args.join(" "),
            line_diff(&w, &g),
            kind = self.subject.kind(),
        );
        got
    }

    /// [`Pair::same`] for a command that must succeed; returns the subject's stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.same(args, None);
        out.ok().to_string()
    }

    /// [`Pair::same`] for a command that must fail; returns the subject's `Error:` lines.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.same(args, None);
        error_lines(out.err())
    }
}

/// The lines of stderr that etcdctl prints for the user (`Error: ...`), without the client's
/// JSON log lines, which carry timestamps and addresses.
fn error_lines(stderr: &str) -> String {
    stderr.lines().filter(|l| l.starts_with("Error")).collect::<Vec<_>>().join("\n")
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}):\n{text}"))
}

#[tokio::test]
async fn put_get_del_match_etcd() {
    let p = Pair::start().await;
    assert_eq!(p.ok(&["put", "a", "1"]), "OK\n");
    p.ok(&["put", "a/1", "x"]);
    p.ok(&["put", "a/2", "y"]);
    p.ok(&["put", "b", "2"]);
    p.ok(&["put", "a", "11"]);

    assert_eq!(p.ok(&["get", "a"]), "a\n11\n");
    assert_eq!(p.ok(&["get", "a", "--prefix"]), "a\n11\na/1\nx\na/2\ny\n");
    assert_eq!(p.ok(&["get", "a", "--rev", "2"]), "a\n1\n");
    p.ok(&["get", "a", "--rev", "3"]);
    let j = json(&p.ok(&["get", "a", "-w", "json"]));
    assert_eq!(j["kvs"][0]["version"], 2);
    assert_eq!(j["header"]["revision"], 6);
    p.ok(&["get", "a", "--prefix", "-w", "json"]);
    assert_eq!(p.ok(&["get", "a", "--prefix", "--keys-only"]), "a\n\na/1\n\na/2\n\n");
    p.ok(&["get", "a", "--prefix", "--count-only", "-w", "fields"]);
    p.fails(&["get", "a", "--prefix", "--count-only"]);
    assert_eq!(p.ok(&["get", "a", "--prefix", "--limit", "1"]), "a\n11\n");
    let j = json(&p.ok(&["get", "a", "--prefix", "--limit", "2", "-w", "json"]));
    assert_eq!((j["more"].clone(), j["count"].clone()), (serde_json::json!(true), serde_json::json!(3)));
    p.ok(&["get", "a", "--prefix", "--limit", "1", "-w", "fields"]);
    p.ok(&["get", "", "--from-key"]);
    p.ok(&["get", "a/", "--from-key", "--keys-only"]);
    p.ok(&["get", "a", "--prefix", "--print-value-only"]);
    p.ok(&["get", "a", "--prefix", "--sort-by=MODIFY", "--order=DESCEND"]);
    p.ok(&["get", "a", "--prefix", "--sort-by=VALUE", "--order=ASCEND", "-w", "json"]);
    p.ok(&["get", "a", "b", "-w", "json"]);
    p.ok(&["get", "missing"]);
    p.ok(&["get", "missing", "-w", "json"]);

    assert_eq!(p.ok(&["del", "a/", "--prefix"]), "2\n");
    assert_eq!(p.ok(&["del", "b", "--prev-kv"]), "1\nb\n2\n");
    assert_eq!(p.ok(&["del", "missing"]), "0\n");
    p.ok(&["put", "c", "3"]);
    p.ok(&["del", "c", "--prev-kv", "-w", "json"]);
    p.ok(&["get", "", "--prefix", "-w", "json"]);

    assert!(p.fails(&["put", "", "v"]).contains("etcdserver: key is not provided"));
    assert!(p.fails(&["get", "a", "--rev", "100"]).contains("required revision is a future revision"));
    p.ok(&["put", "k", "v", "--prev-kv"]);
    p.ok(&["put", "k", "w", "--prev-kv", "-w", "json"]);
    p.fails(&["put", "k", "--ignore-value", "x"]);
    p.ok(&["put", "k", "--ignore-value"]);
    p.ok(&["get", "k", "-w", "json"]);
}

#[tokio::test]
async fn txn_from_stdin_matches_etcd() {
    let p = Pair::start().await;
    p.ok(&["put", "a", "1"]);
    p.ok(&["put", "x/1", "one"]);
    // Interactive form: compares, blank line, success ops, blank line, failure ops, blank line.
    let success = "value(\"a\") = \"1\"\n\nput a 2\nget a\n\nput a 3\n\n";
    let out = p.same(&["txn"], Some(success));
    assert_eq!(out.ok(), "SUCCESS\n\nOK\n\na\n2\n");
    let failure =
        "value(\"a\") = \"1\"\nmod(\"a\") > \"0\"\n\nput a 4\n\nput a 5 --prev-kv\ndel x/ --prefix\nget a\n\n";
    let out = p.same(&["txn"], Some(failure));
    assert!(out.ok().starts_with("FAILURE\n"), "{out}");
    p.same(&["txn", "-w", "json"], Some("version(\"a\") > \"2\"\ncreate(\"a\") = \"2\"\n\nget a\ndel a\n\n\n"));
    p.same(&["txn", "-w", "json"], Some("\nput n1 v\nput n2 v --prev-kv\n\n\n"));
    p.same(&["txn"], Some("\nput d v\nput d w\n\n\n"));
    p.ok(&["get", "", "--prefix", "-w", "json"]);
}

#[tokio::test]
async fn compaction_matches_etcd() {
    let p = Pair::start().await;
    for v in ["1", "2", "3", "4"] {
        p.ok(&["put", "a", v]);
    }
    assert_eq!(p.ok(&["compaction", "3"]), "compacted revision 3\n");
    assert!(p.fails(&["get", "a", "--rev", "2"]).contains("required revision has been compacted"));
    assert_eq!(p.ok(&["get", "a", "--rev", "3"]), "a\n2\n");
    assert!(p.fails(&["compaction", "3"]).contains("required revision has been compacted"));
    assert!(p.fails(&["compaction", "100"]).contains("required revision is a future revision"));
    assert_eq!(p.ok(&["compaction", "--physical", "5"]), "compacted revision 5\n");
    p.ok(&["get", "a", "-w", "json"]);
}

#[tokio::test]
async fn endpoint_status_health_and_member_list() {
    let p = Pair::start().await;
    for s in [&p.etcd, &p.subject] {
        for i in 0..3 {
            etcdctl(&s.endpoint(), &["put", &format!("k{i}"), "v"]).ok();
        }
    }
    let subject = &p.subject;
    let ep = subject.endpoint();

    // endpoint status -w json
    let status = json(etcdctl(&ep, &["endpoint", "status", "-w", "json"]).ok());
    let st = &status[0]["Status"];
    assert_eq!(status[0]["Endpoint"], ep.as_str(), "{status}");
    assert_eq!(st["header"]["revision"], 4, "3 puts on a fresh store: {status}");
    let member_id = st["header"]["member_id"].as_u64().unwrap_or_else(|| panic!("member_id set: {status}"));
    assert_ne!(member_id, 0);
    assert_ne!(st["header"]["cluster_id"].as_u64().unwrap_or(0), 0, "cluster_id set: {status}");
    assert_eq!(st["leader"].as_u64(), Some(member_id), "a single node leads itself: {status}");
    assert!(st["raftTerm"].as_u64().unwrap_or(0) >= 1, "{status}");
    let (index, applied) = (st["raftIndex"].as_u64().unwrap_or(0), st["raftAppliedIndex"].as_u64().unwrap_or(0));
    assert!(applied >= 4 && index >= applied, "raftIndex {index} >= raftAppliedIndex {applied} >= 4: {status}");
    assert!(st["dbSize"].as_i64().unwrap_or(0) > 0, "{status}");
    let version = st["version"].as_str().unwrap_or_else(|| panic!("version is a string: {status}"));
    let parts: Vec<u64> = version.split('.').map(|x| x.parse().unwrap_or(u64::MAX)).collect();
    match subject.kind() {
        ServerKind::Cairn => assert!(
            parts.len() == 3 && parts[0] == 3 && parts[1] == 5 && (13..u64::MAX).contains(&parts[2]),
            "Status.version must be a 3.5 release >= 3.5.13 (kube-apiserver feature detection), got {version:?}"
        ),
        ServerKind::Etcd => assert_eq!(version, "3.5.1"),
    }

    // endpoint status, table-less simple form: "<ep>, <hex id>, <version>, <db size>, <leader?>, ..."
    let simple = etcdctl(&ep, &["endpoint", "status"]).ok().to_string();
    let fields: Vec<&str> = simple.trim().split(", ").collect();
    assert_eq!(fields[0], ep, "{simple}");
    assert_eq!(fields[1], format!("{member_id:x}"), "{simple}");
    assert_eq!(fields[2], version, "{simple}");
    assert_eq!(fields[4], "true", "is leader: {simple}");
    assert_eq!(fields[5], "false", "is learner: {simple}");

    // endpoint health
    let health = json(etcdctl(&ep, &["endpoint", "health", "-w", "json"]).ok());
    assert_eq!(health[0]["endpoint"], ep.as_str(), "{health}");
    assert_eq!(health[0]["health"], true, "{health}");
    let plain = etcdctl(&ep, &["endpoint", "health"]).ok().to_string();
    assert!(plain.starts_with(&format!("{ep} is healthy: successfully committed proposal: took = ")), "{plain}");

    // member list: the same as etcd's once ids and ports are normalised
    let members = p.ok(&["member", "list", "-w", "json"]);
    let m = json(&members);
    assert_eq!(m["members"].as_array().map(Vec::len), Some(1), "{m}");
    assert_eq!(m["members"][0]["ID"].as_u64(), Some(member_id), "{m}");
    assert_eq!(m["members"][0]["name"], "n1", "{m}");
    assert_eq!(m["members"][0]["peerURLs"][0], subject.peer_url().as_str(), "{m}");
    assert_eq!(m["members"][0]["clientURLs"][0], subject.client_url().as_str(), "{m}");
    let line = etcdctl(&ep, &["member", "list"]).ok().to_string();
    assert_eq!(
        line,
        format!("{member_id:x}, started, n1, {}, {}, false\n", subject.peer_url(), subject.client_url()),
        "member list"
    );
}
