//! The `cairn` server: etcd's v3 gRPC API over [`cairn_raft::RaftNode`].
//!
//! Modules:
//! - [`config`]: etcd's flags and `ETCD_*` variables.
//! - [`context`]: what all handlers share; proposals, linearizable reads, the compactor.
//! - [`kv`], [`maintenance`], [`cluster`]: the gRPC services (thin adapters).
//! - [`watch`]: the Watch streams over the member's watch hub.
//! - [`lease`]: the Lease service; [`lessor`]: lease deadlines on the leader, expiry.
//! - [`auth`]: the Auth service; [`authz`]: tokens, the permission cache, every RPC's check.
//! - [`v3lock`], [`election`]: the Lock and Election services, over [`concurrency`] (etcd's
//!   client-side mutex and election algorithms, run in the server).
//! - [`convert`]: wire <-> domain types; [`status`]: errors -> etcd's gRPC statuses.
//! - [`http`]: plain HTTP on the client port (/health, /version, /metrics) and on the
//!   metrics listeners; [`gateway`]: etcd's JSON gateway (`/v3/...`).
//! - [`metrics`]: Prometheus metrics under etcd's names, and the gRPC counting layer.
//!
//! Services not registered yet answer Unimplemented.

pub mod auth;
pub mod authz;
pub mod autocompact;
pub mod cluster;
pub mod concurrency;
pub mod config;
pub mod context;
pub mod convert;
pub mod election;
pub mod gateway;
pub mod http;
pub mod kv;
pub mod lease;
pub mod lessor;
pub mod maintenance;
pub mod metrics;
pub mod snapshot_tool;
pub mod status;
pub mod v3lock;
pub mod watch;

use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cairn_proto::etcdserverpb::auth_server::AuthServer;
use cairn_proto::etcdserverpb::cluster_server::ClusterServer;
use cairn_proto::etcdserverpb::kv_server::KvServer;
use cairn_proto::etcdserverpb::lease_server::LeaseServer;
use cairn_proto::etcdserverpb::maintenance_server::MaintenanceServer;
use cairn_proto::etcdserverpb::watch_server::WatchServer;
use cairn_proto::v3electionpb::election_server::ElectionServer;
use cairn_proto::v3lockpb::lock_server::LockServer;
use cairn_raft::{NodeConfig, RaftNode};
use cairn_storage::watch::WatchHub;
use tokio::sync::{Notify, Semaphore};

use crate::config::Config;
use crate::context::Context;

/// gRPC accepts messages this much larger than `--max-request-bytes` (etcd's overhead), so
/// that an oversized write gets etcd's "request is too large" rather than a transport error.
pub const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// How far past etcd's gRPC limit tonic still decodes a message, so that the handler can
/// answer with grpc-go's exact "received message larger than max" error.
pub const TONIC_SLACK_BYTES: usize = 16 << 20;

/// Events a caught-up watcher may have queued before it is dropped to catching up from the
/// revision log (bounds the hub's memory per watcher).
pub const WATCH_MAX_PENDING_EVENTS: usize = 4096;

/// FNV-1a, 64 bit: derives stable member and cluster IDs from the bootstrap flags.
fn fnv64(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for p in parts {
        for b in p.bytes().chain(std::iter::once(0)) {
            h ^= b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
    }
    h
}

/// The member and cluster IDs: computed at bootstrap, then read from the data dir so that
/// they never change for a member.
pub(crate) fn load_or_make_ids(dir: &Path, cfg: &Config) -> Result<(u64, u64), String> {
    let path = dir.join("ids");
    match std::fs::read_to_string(&path) {
        Ok(s) => {
            let mut it = s.split_whitespace().map(|x| u64::from_str_radix(x, 16));
            match (it.next(), it.next()) {
                (Some(Ok(m)), Some(Ok(c))) => Ok((m, c)),
                _ => Err(format!("{} is corrupt", path.display())),
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut peers = cfg.initial_advertise_peer_urls.clone();
            peers.sort();
            let joined = peers.join(",");
            let member = fnv64(&[&joined, &cfg.initial_cluster_token]).max(1);
            let cluster = fnv64(&[&format!("{member:x}"), &cfg.initial_cluster_token]).max(1);
            let tmp = dir.join("ids.tmp");
            std::fs::write(&tmp, format!("{member:x} {cluster:x}\n")).map_err(|e| e.to_string())?;
            std::fs::rename(&tmp, &path).map_err(|e| e.to_string())?;
            Ok((member, cluster))
        }
        Err(e) => Err(format!("read {}: {e}", path.display())),
    }
}

/// The number of live keys, once at start (the metrics keep it up to date from then on).
fn count_keys(node: &RaftNode) -> Result<i64, String> {
    let view = node.store().read().map_err(|e| e.to_string())?;
    let all = cairn_storage::RangeRequest { key: vec![0], range_end: vec![0], count_only: true, ..Default::default() };
    match view.range(&all) {
        Ok(Ok(r)) => Ok(r.count),
        Ok(Err(e)) => Err(format!("count keys: {e:?}")),
        Err(e) => Err(format!("count keys: {e}")),
    }
}

/// Runs a member until `shutdown` resolves, then stops cleanly.
pub async fn run(cfg: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), String> {
    let member_dir = cfg.data_dir.join("member");
    std::fs::create_dir_all(&member_dir).map_err(|e| format!("create {}: {e}", member_dir.display()))?;
    let (member_id, cluster_id) = load_or_make_ids(&member_dir, &cfg)?;
    let mut addrs = Vec::new();
    for u in &cfg.listen_client_urls {
        addrs.push(config::socket_addr(u).map_err(|e| e.to_string())?);
    }
    let mut listeners = Vec::new();
    for a in &addrs {
        let l = tokio::net::TcpListener::bind(a).await.map_err(|e| format!("listen on {a}: {e}"))?;
        listeners.push(l);
    }
    let mut metrics_listeners = Vec::new();
    for u in &cfg.listen_metrics_urls {
        let a = config::socket_addr(u).map_err(|e| e.to_string())?;
        let l = tokio::net::TcpListener::bind(&a).await.map_err(|e| format!("listen on {a}: {e}"))?;
        metrics_listeners.push(l);
    }
    let node = Arc::new(
        RaftNode::start(NodeConfig {
            member_id,
            peer_url: cfg.initial_advertise_peer_urls.first().cloned().unwrap_or_default(),
            dir: member_dir,
            heartbeat_interval_ms: cfg.heartbeat_interval_ms,
            election_timeout_ms: cfg.election_timeout_ms,
            snapshot_count: cfg.snapshot_count,
        })
        .await?,
    );
    node.wait_for_leader(Duration::from_secs(30)).await.map_err(|e| format!("no leader elected: {e:?}"))?;
    let compactor = Arc::new(Notify::new());
    let hub = Arc::new(WatchHub::new(node.store().current_revision(), WATCH_MAX_PENDING_EVENTS));
    let metrics = Arc::new(metrics::Metrics::new(cfg.quota_backend_bytes, count_keys(&node)?));
    let authz = Arc::new(authz::Authz::new(
        node.store().auth_state().map_err(|e| format!("read the auth store: {e}"))?,
        Duration::from_secs(cfg.auth_token_ttl_secs),
        cfg.bcrypt_cost,
    ));
    {
        // After every applied batch: publish its events to the watchers, and wake the
        // compactor if the compacted revision moved.
        let store = node.store().clone();
        let wake = compactor.clone();
        let hub = hub.clone();
        let metrics = metrics.clone();
        let authz = authz.clone();
        let seen = AtomicI64::new(store.compact_revision());
        node.set_apply_listener(Arc::new(move |outcome| {
            // Before the proposers hear back: the next request sees the new permissions.
            authz.on_applied(outcome, &store);
            metrics.on_apply(outcome);
            for (revision, events) in &outcome.events {
                hub.publish(*revision, events);
            }
            let c = store.compact_revision();
            if seen.swap(c, Ordering::AcqRel) != c {
                wake.notify_one();
            }
        }));
    }
    // Revisions applied before the listener was attached were not published, but are in
    // storage: watchers that start at or below them catch up from there.
    hub.mark_published(node.store().current_revision());
    // Likewise auth changes applied before the listener was attached.
    authz.reload(node.store());
    // A compaction interrupted by a crash resumes now.
    compactor.notify_one();
    tokio::spawn(context::compactor_loop(node.clone(), compactor.clone()));
    let ctx = Arc::new(Context {
        node: node.clone(),
        cluster_id,
        member_id,
        name: cfg.name.clone(),
        peer_urls: cfg.initial_advertise_peer_urls.clone(),
        client_urls: cfg.advertise_client_urls.clone(),
        max_request_bytes: cfg.max_request_bytes,
        max_txn_ops: cfg.max_txn_ops,
        proposals: Semaphore::new(context::MAX_INFLIGHT_PROPOSALS),
        compactor,
        hub,
        watch_progress_notify_interval: cfg.watch_progress_notify_interval,
        quota_backend_bytes: cfg.quota_backend_bytes,
        maintenance: maintenance::MaintenanceState::default(),
        authz,
    });
    // Lease expiry: the lessor promotes (every lease gets its full TTL) as soon as this member
    // leads, then proposes the revocation of expired leases.
    let lessor = Arc::new(lessor::Lessor::new(lessor::LessorConfig::from_raft_timing(
        cfg.heartbeat_interval_ms,
        cfg.election_timeout_ms,
    )));
    let lessor_task = tokio::spawn(lessor::run(lessor.clone(), ctx.clone()));
    let autocompact_task = tokio::spawn(autocompact::run(ctx.clone(), cfg.auto_compaction_retention));
    let leader_watch = metrics::spawn_leader_watch(
        metrics.clone(),
        node.clone(),
        Duration::from_millis(cfg.heartbeat_interval_ms.max(10)),
    );
    let gateway = cfg.enable_grpc_gateway.then(|| {
        Arc::new(gateway::Gateway {
            kv: kv::KvService { ctx: ctx.clone() },
            watch: watch::WatchService { ctx: ctx.clone() },
            lease: lease::LeaseService { ctx: ctx.clone(), lessor: lessor.clone() },
            cluster: cluster::ClusterService { ctx: ctx.clone() },
            maintenance: maintenance::MaintenanceService { ctx: ctx.clone() },
            auth: auth::AuthService { ctx: ctx.clone() },
            lock: v3lock::LockService { ctx: ctx.clone(), lessor: lessor.clone() },
            election: election::ElectionService { ctx: ctx.clone(), lessor: lessor.clone() },
            metrics: metrics.clone(),
            // base64 makes JSON a third larger than the protobuf it carries.
            max_body_bytes: (cfg.max_request_bytes + GRPC_OVERHEAD_BYTES) * 2,
        })
    });
    let http_api = Arc::new(http::HttpApi { ctx: ctx.clone(), metrics: metrics.clone(), gateway });
    // tonic refuses only far larger messages (with its own error); up to that, handlers
    // refuse what exceeds etcd's limit with grpc-go's message (`Context::check_grpc_size`).
    let max_msg = cfg.max_request_bytes + GRPC_OVERHEAD_BYTES + TONIC_SLACK_BYTES;
    let (stop_tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let mut servers = Vec::new();
    for l in listeners {
        let addr = l.local_addr().map_err(|e| e.to_string())?;
        let grpc = tonic::service::Routes::new(
            KvServer::new(kv::KvService { ctx: ctx.clone() }).max_decoding_message_size(max_msg),
        )
        .add_service(
            MaintenanceServer::new(maintenance::MaintenanceService { ctx: ctx.clone() })
                .max_decoding_message_size(max_msg),
        )
        .add_service(
            ClusterServer::new(cluster::ClusterService { ctx: ctx.clone() }).max_decoding_message_size(max_msg),
        )
        .add_service(WatchServer::new(watch::WatchService { ctx: ctx.clone() }).max_decoding_message_size(max_msg))
        .add_service(
            LeaseServer::new(lease::LeaseService { ctx: ctx.clone(), lessor: lessor.clone() })
                .max_decoding_message_size(max_msg),
        )
        .add_service(AuthServer::new(auth::AuthService { ctx: ctx.clone() }).max_decoding_message_size(max_msg))
        .add_service(
            LockServer::new(v3lock::LockService { ctx: ctx.clone(), lessor: lessor.clone() })
                .max_decoding_message_size(max_msg),
        )
        .add_service(
            ElectionServer::new(election::ElectionService { ctx: ctx.clone(), lessor: lessor.clone() })
                .max_decoding_message_size(max_msg),
        );
        // gRPC (HTTP/2) and plain HTTP (HTTP/1.1 or h2) share the port, as in etcd: gRPC
        // services are routed by their paths, everything else goes to the HTTP API.
        let api = http_api.clone();
        let all = grpc.into_axum_router().fallback(move |req: axum::extract::Request| api.clone().client(req));
        let router = tonic::transport::Server::builder()
            .accept_http1(true)
            .layer(metrics::GrpcMetricsLayer { metrics: metrics.clone() })
            .add_routes(tonic::service::Routes::from(all));
        let mut stop = stop_tx.subscribe();
        // Small requests and responses must not wait for Nagle's algorithm (a 40 ms stall
        // against delayed ACKs): every accepted connection gets TCP_NODELAY.
        let incoming = tokio_stream::StreamExt::map(tokio_stream::wrappers::TcpListenerStream::new(l), |s| {
            s.and_then(|s| {
                s.set_nodelay(true)?;
                Ok(s)
            })
        });
        servers.push(tokio::spawn(async move {
            router
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = stop.recv().await;
                })
                .await
        }));
        tracing::info!(address = %addr, member_id = %format!("{member_id:x}"), cluster_id = %format!("{cluster_id:x}"), "ready to serve client requests");
    }
    for l in metrics_listeners {
        let addr = l.local_addr().map_err(|e| e.to_string())?;
        let api = http_api.clone();
        let app = axum::Router::new().fallback(move |req: axum::extract::Request| api.clone().metrics_listener(req));
        let router =
            tonic::transport::Server::builder().accept_http1(true).add_routes(tonic::service::Routes::from(app));
        let mut stop = stop_tx.subscribe();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(l);
        servers.push(tokio::spawn(async move {
            router
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = stop.recv().await;
                })
                .await
        }));
        tracing::info!(address = %addr, "serving /metrics and /health");
    }
    shutdown.await;
    tracing::info!("received stop request, shutting down");
    // A stopping member proposes no more revocations; the next leader (this member after a
    // restart) gives every lease its full TTL again.
    lessor_task.abort();
    autocompact_task.abort();
    leader_watch.abort();
    let _ = stop_tx.send(());
    for s in servers {
        match tokio::time::timeout(Duration::from_secs(5), s).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "gRPC server ended with an error"),
            Ok(Err(e)) => tracing::warn!(error = %e, "gRPC server task failed"),
            Err(_) => tracing::warn!("gRPC server did not stop within 5 s"),
        }
    }
    node.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}
