//! Checks of the harness itself (against real etcd), and of process life-cycle of the server
//! under test: kill -9, restart, SIGTERM.

use std::os::unix::process::ExitStatusExt;

use cairn_tests::harness::{etcdctl, free_port, subject_kind, Server, ServerKind};
use etcd_client::GetOptions;

#[test]
fn free_ports_are_distinct() {
    let ports: std::collections::HashSet<u16> = (0..50).map(|_| free_port()).collect();
    assert_eq!(ports.len(), 50);
}

#[tokio::test]
async fn etcd_start_kill9_restart_stop() {
    let mut server = Server::start(ServerKind::Etcd).await;
    let mut client = server.client().await;
    let put = client.put("k", "v", None).await.expect("put");
    assert_eq!(put.header().expect("header").revision(), 2, "first put of a fresh store gets revision 2");
    let pid = server.pid().expect("running");

    server.kill9();
    assert!(server.pid().is_none());
    // SAFETY: kill with signal 0 only checks whether the pid exists.
    let alive = unsafe { libc::kill(pid as libc::pid_t, 0) } == 0;
    assert!(!alive, "the killed process {pid} must be gone (reaped)");

    server.restart().await;
    let mut client = server.client().await;
    let got = client.get("k", None).await.expect("get after restart");
    assert_eq!(got.kvs().len(), 1, "the acknowledged put survives kill -9");
    assert_eq!(got.header().expect("header").revision(), 2);
    let out = etcdctl(&server.endpoint(), &["get", "k", "--print-value-only"]);
    assert_eq!(out.ok(), "v\n");

    server.restart().await; // a clean stop (SIGTERM) and a start
    let status = server.stop();
    // etcd shuts down gracefully, then re-raises SIGTERM on itself: it dies "by signal 15".
    assert!(status.success() || status.signal() == Some(libc::SIGTERM), "etcd exits on SIGTERM, got {status}");
    assert!(server.log_tail(200).contains("==== cairn-tests: start #3"), "the log is kept across restarts");
}

/// The server under test keeps acknowledged writes across kill -9, continues the revisions,
/// and exits on SIGTERM (Cairn with status 0; etcd re-raises the signal).
#[tokio::test]
async fn subject_survives_kill9_and_stops_on_sigterm() {
    let kind = subject_kind();
    let mut server = Server::start(kind).await;
    let mut client = server.client().await;
    for i in 0..5 {
        client.put(format!("k{i}"), "v", None).await.expect("put");
    }
    server.kill9();
    server.restart().await;
    let mut client = server.client().await;
    let all = client.get("k", Some(GetOptions::new().with_prefix())).await.expect("get after restart");
    assert_eq!(all.kvs().len(), 5, "every acknowledged put survives kill -9");
    let put = client.put("after", "v", None).await.expect("put after restart");
    assert_eq!(put.header().expect("header").revision(), 7, "revisions continue after the restart");

    let status = server.stop();
    match kind {
        ServerKind::Cairn => assert!(status.success(), "cairn exits 0 on SIGTERM, got {status}"),
        ServerKind::Etcd => assert!(status.success() || status.signal() == Some(libc::SIGTERM), "{status}"),
    }
    server.restart().await;
    let mut client = server.client().await;
    let got = client.get("after", None).await.expect("get after a clean restart");
    assert_eq!(got.kvs().len(), 1);
}
