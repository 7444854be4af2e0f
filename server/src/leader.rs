//! etcd's `hasleader` contract (clientv3 `WithRequireLeader`): a gRPC call carrying the
//! metadata `hasleader: true` fails at once with "etcdserver: no leader" while this member
//! knows no leader, and such streams already open are cancelled with that error once the
//! member has been without a leader for [`NO_LEADER_CHECKS`] election timeouts in a row.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use cairn_proto::rpctypes::EtcdError;
use cairn_raft::RaftNode;
use tokio::sync::watch;
use tonic::body::Body;

/// etcd's `maxNoLeaderCnt`: leaderless checks (one per election timeout) before streams that
/// require a leader are cancelled.
pub const NO_LEADER_CHECKS: u32 = 3;

/// Whether a request asked for a leader (`hasleader: true`).
pub fn requires_leader(headers: &http::HeaderMap) -> bool {
    headers.get("hasleader").is_some_and(|v| v.as_bytes() == b"true")
}

/// Watches leadership and announces when streams requiring a leader must end: the value is
/// a generation, bumped at every check that finds the member leaderless for long enough.
#[derive(Clone)]
pub struct LeaderMonitor {
    cancel: watch::Receiver<u64>,
}

impl LeaderMonitor {
    /// Starts the check loop (every `election_timeout`, as etcd's `monitorLeader`).
    pub fn spawn(node: Arc<RaftNode>, election_timeout: Duration) -> (LeaderMonitor, tokio::task::JoinHandle<()>) {
        let (tx, rx) = watch::channel(0u64);
        let task = tokio::spawn(async move {
            let mut leaderless = 0u32;
            let mut tick = tokio::time::interval(election_timeout);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                if node.has_leader() {
                    leaderless = 0;
                    continue;
                }
                leaderless += 1;
                if leaderless >= NO_LEADER_CHECKS {
                    tracing::warn!(checks = leaderless, "no leader: cancelling the streams that require one");
                    tx.send_modify(|g| *g += 1);
                }
            }
        });
        (LeaderMonitor { cancel: rx }, task)
    }

    /// A monitor that never cancels (tests of single services).
    pub fn never() -> LeaderMonitor {
        let (tx, rx) = watch::channel(0u64);
        std::mem::forget(tx);
        LeaderMonitor { cancel: rx }
    }

    /// A handle for one stream: resolves when the stream must be cancelled.
    pub fn subscribe(&self) -> LeaderLoss {
        let mut rx = self.cancel.clone();
        rx.mark_unchanged();
        LeaderLoss { rx }
    }
}

/// One stream's view of [`LeaderMonitor`].
pub struct LeaderLoss {
    rx: watch::Receiver<u64>,
}

impl LeaderLoss {
    /// Resolves when streams that require a leader must end (never if the monitor stops).
    pub async fn lost(&mut self) {
        if self.rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// The tower layer refusing `hasleader` gRPC calls while no leader is known.
#[derive(Clone)]
pub struct RequireLeaderLayer {
    pub node: Arc<RaftNode>,
}

impl<S> tower_layer::Layer<S> for RequireLeaderLayer {
    type Service = RequireLeaderService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RequireLeaderService { inner, node: self.node.clone() }
    }
}

#[derive(Clone)]
pub struct RequireLeaderService<S> {
    inner: S,
    node: Arc<RaftNode>,
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S> tower_service::Service<http::Request<Body>> for RequireLeaderService<S>
where
    S: tower_service::Service<http::Request<Body>, Response = http::Response<Body>> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        // etcd's learner rule: a learner serves only Status, Snapshot and serializable
        // Range (checked by the KV service); everything else is refused.
        let path = req.uri().path();
        if path.starts_with("/etcdserverpb.")
            && !matches!(
                path,
                "/etcdserverpb.Maintenance/Status" | "/etcdserverpb.Maintenance/Snapshot" | "/etcdserverpb.KV/Range"
            )
            && !self.node.is_voter()
        {
            let resp = EtcdError::NotSupportedForLearner.status().into_http::<Body>();
            return Box::pin(async move { Ok(resp) });
        }
        if requires_leader(req.headers()) && !self.node.has_leader() {
            let resp = EtcdError::NoLeader.status().into_http::<Body>();
            return Box::pin(async move { Ok(resp) });
        }
        Box::pin(self.inner.call(req))
    }
}
