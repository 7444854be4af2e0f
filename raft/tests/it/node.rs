//! RaftNode end to end on real files: a one-voter group elects itself, writes are applied
//! with their revisions, concurrent writes share fsyncs (group commit), a restart recovers.

use std::sync::Arc;
use std::time::Duration;

use cairn_raft::{NodeConfig, RaftNode};
use cairn_storage::{Command, CommandResponse, PutRequest};

fn config(dir: &std::path::Path) -> NodeConfig {
    NodeConfig {
        member_id: 7,
        initial_members: [(7, "http://127.0.0.1:2380".to_string())].into(),
        dir: dir.to_path_buf(),
        heartbeat_interval_ms: 100,
        election_timeout_ms: 1000,
        snapshot_count: 100_000,
        transport: Arc::new(cairn_raft::NoPeers),
        join: false,
    }
}

fn put(key: String) -> Command {
    Command::Put(PutRequest { key: key.into_bytes(), value: b"v".to_vec(), ..Default::default() })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_share_fsyncs_and_survive_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = Arc::new(RaftNode::start(config(dir.path())).await.expect("start"));
    node.wait_for_leader(Duration::from_secs(10)).await.expect("leader");
    let before = node.log_fsyncs();
    const WRITES: usize = 400;
    let tasks: Vec<_> = (0..WRITES)
        .map(|i| {
            let n = node.clone();
            tokio::spawn(async move { n.write(put(format!("k{i:04}"))).await })
        })
        .collect();
    let mut revisions = Vec::new();
    for t in tasks {
        let applied = t.await.expect("task").expect("write");
        assert!(matches!(applied.result, Ok(CommandResponse::Put(_))), "{applied:?}");
        revisions.push(applied.revision);
    }
    revisions.sort();
    assert_eq!(revisions, (2..2 + WRITES as i64).collect::<Vec<_>>(), "one revision per write, none shared");
    let fsyncs = node.log_fsyncs() - before;
    // Group commit: while one fsync runs, the writes queued behind it go in the next one.
    assert!(fsyncs < WRITES as u64 / 2, "{WRITES} concurrent writes took {fsyncs} fsyncs");
    node.shutdown().await;
    drop(node);

    // In-process restart: tasks of the stopped node (openraft's, the proposal batcher) may
    // still hold the files for a moment on a loaded machine; redb refuses a second open
    // until they let go. A new process (the real restart) never sees this.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let node = loop {
        match RaftNode::start(config(dir.path())).await {
            Ok(n) => break n,
            Err(e) if e.contains("Cannot acquire lock") && std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("restart: {e}"),
        }
    };
    node.wait_for_leader(Duration::from_secs(10)).await.expect("leader after restart");
    assert_eq!(node.store().current_revision(), 1 + WRITES as i64);
    let applied = node.write(put("after".into())).await.expect("write after restart");
    assert_eq!(applied.revision, 2 + WRITES as i64, "revisions continue after a restart");
    node.shutdown().await;
}
