//! Three RaftNodes in one process, joined by an in-memory peer transport that calls
//! `handle_peer` directly and can cut a member off: replication, writes on followers
//! (forwarded, answered by the follower's own apply), follower read index, and a new leader
//! after the old one is cut off.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_raft::{NodeConfig, PeerError, PeerFuture, PeerTransport, RaftNode};
use cairn_storage::{Command, CommandResponse, PutRequest, RangeRequest};

/// Routes calls by peer URL to the node with that URL; URLs in `cut` are unreachable both
/// ways (a partitioned member).
#[derive(Default)]
struct Mesh {
    nodes: Mutex<HashMap<String, Arc<RaftNode>>>,
    cut: Mutex<HashSet<String>>,
}

struct Link {
    mesh: Arc<Mesh>,
    from: String,
}

impl PeerTransport for Link {
    fn call(&self, addr: &str, method: &'static str, body: Vec<u8>, _timeout: Duration) -> PeerFuture {
        let cut = self.mesh.cut.lock().expect("lock");
        let blocked = cut.contains(addr) || cut.contains(&self.from);
        drop(cut);
        let node = self.mesh.nodes.lock().expect("lock").get(addr).cloned();
        Box::pin(async move {
            let node = match (blocked, node) {
                (false, Some(n)) => n,
                _ => return Err(PeerError::Unreachable("cut off".into())),
            };
            node.handle_peer(method, &body).await.map_err(PeerError::Failed)
        })
    }
}

fn put(key: &str, value: &str) -> Command {
    Command::Put(PutRequest { key: key.into(), value: value.into(), ..Default::default() })
}

fn value_at(node: &RaftNode, key: &str) -> Option<Vec<u8>> {
    let view = node.store().read().expect("read view");
    let r = view.range(&RangeRequest { key: key.into(), ..Default::default() }).expect("range").expect("ok");
    r.kvs.first().map(|kv| kv.value.clone())
}

async fn start_group(dirs: &[tempfile::TempDir], mesh: &Arc<Mesh>) -> Vec<Arc<RaftNode>> {
    let members: BTreeMap<u64, String> = (1..=3u64).map(|i| (i, format!("mem://{i}"))).collect();
    let mut nodes = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let id = i as u64 + 1;
        let url = format!("mem://{id}");
        let node = Arc::new(
            RaftNode::start(NodeConfig {
                member_id: id,
                initial_members: members.clone(),
                dir: dir.path().to_path_buf(),
                heartbeat_interval_ms: 50,
                election_timeout_ms: 500,
                snapshot_count: 100_000,
                transport: Arc::new(Link { mesh: mesh.clone(), from: url.clone() }),
                join: false,
            })
            .await
            .expect("start"),
        );
        mesh.nodes.lock().expect("lock").insert(url, node.clone());
        nodes.push(node);
    }
    nodes
}

async fn leader_of(nodes: &[Arc<RaftNode>], except: Option<u64>) -> u64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let leaders: Vec<u64> =
            nodes.iter().filter(|n| Some(n.member_id()) != except && n.is_leader()).map(|n| n.member_id()).collect();
        if let [l] = leaders.as_slice() {
            return *l;
        }
        assert!(tokio::time::Instant::now() < deadline, "no single leader: {leaders:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_replicate_forward_and_fail_over() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().expect("temp dir")).collect();
    let mesh = Arc::new(Mesh::default());
    let nodes = start_group(&dirs, &mesh).await;
    let leader = leader_of(&nodes, None).await;

    // Concurrent writes through every member: each answered with its own revision, the
    // revisions of all members together are 2..=N+1 exactly once.
    let mut tasks = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        for j in 0..50 {
            let n = n.clone();
            tasks.push(tokio::spawn(async move { n.write(put(&format!("k{i}-{j}"), "v")).await }));
        }
    }
    let mut revisions = Vec::new();
    for t in tasks {
        let a = t.await.expect("task").expect("write");
        assert!(matches!(a.result, Ok(CommandResponse::Put(_))), "{a:?}");
        revisions.push(a.revision);
    }
    revisions.sort();
    assert_eq!(revisions, (2..=151).collect::<Vec<i64>>());

    // A follower's write is visible in its own store when it is answered (read your writes),
    // and after a read index every follower sees it.
    let follower = nodes.iter().find(|n| n.member_id() != leader).expect("a follower");
    follower.write(put("mine", "1")).await.expect("follower write");
    assert_eq!(value_at(follower, "mine"), Some(b"1".to_vec()));
    for n in &nodes {
        n.read_index().await.expect("read index");
        assert_eq!(value_at(n, "mine"), Some(b"1".to_vec()), "member {} after read index", n.member_id());
        assert_eq!(n.store().current_revision(), 152);
    }

    // Cut the leader off: the other two elect a new leader and keep accepting writes, on
    // either of them.
    let old = nodes.iter().find(|n| n.member_id() == leader).expect("leader").clone();
    mesh.cut.lock().expect("lock").insert(format!("mem://{leader}"));
    let new_leader = leader_of(&nodes, Some(leader)).await;
    assert_ne!(new_leader, leader);
    // The cut-off leader (openraft still calls it leader) stops counting as one once it has
    // not heard from a quorum for an election timeout, as etcd's CheckQuorum: no leader
    // for `hasleader` streams, no lease renewals, and its writes fail instead of hanging.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while old.is_leader() || old.has_leader() {
        assert!(tokio::time::Instant::now() < deadline, "the cut-off leader still believes it leads");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let w = tokio::time::timeout(Duration::from_secs(15), old.write(put("lost", "x"))).await.expect("answered in time");
    assert!(w.is_err(), "a write on the cut-off member must fail: {w:?}");
    for n in nodes.iter().filter(|n| n.member_id() != leader) {
        let a = tokio::time::timeout(Duration::from_secs(10), n.write(put("after", "cut")))
            .await
            .expect("write in time")
            .expect("write after the leader was cut off");
        assert!(a.revision > 152);
    }
    // The cut-off member cannot commit anything; once back it catches up.
    mesh.cut.lock().expect("lock").clear();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while value_at(&old, "after") != Some(b"cut".to_vec()) {
        assert!(tokio::time::Instant::now() < deadline, "the old leader did not catch up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let revs: Vec<i64> = nodes.iter().map(|n| n.store().current_revision()).collect();
    for n in &nodes {
        n.read_index().await.expect("read index");
    }
    let revs_after: Vec<i64> = nodes.iter().map(|n| n.store().current_revision()).collect();
    assert!(revs_after.windows(2).all(|w| w[0] == w[1]), "members disagree: {revs:?} -> {revs_after:?}");
    for n in &nodes {
        n.shutdown().await;
    }
    mesh.nodes.lock().expect("lock").clear();
}
