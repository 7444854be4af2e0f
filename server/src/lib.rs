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
pub mod leader;
pub mod lease;
pub mod lessor;
pub mod maintenance;
pub mod metrics;
pub mod peer;
pub mod snapshot_tool;
pub mod status;
pub mod v3lock;
pub mod watch;

use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cairn_proto::cairnpeerpb::peer_server::PeerServer;
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
pub(crate) fn fnv64(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for p in parts {
        for b in p.bytes().chain(std::iter::once(0)) {
            h ^= b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
    }
    h
}

/// A member's ID: derived from its peer URLs and the cluster token, so that every member of
/// a new cluster computes the same IDs for all from `--initial-cluster`.
fn member_id_of(peer_urls: &[String], token: &str) -> u64 {
    let mut peers = peer_urls.to_vec();
    peers.sort();
    fnv64(&[&peers.join(","), token]).max(1)
}

/// The cluster ID: derived from every member ID and the token.
fn cluster_id_of(member_ids: &[u64], token: &str) -> u64 {
    let mut ids = member_ids.to_vec();
    ids.sort_unstable();
    let joined: Vec<String> = ids.iter().map(|m| format!("{m:x}")).collect();
    fnv64(&[&joined.join(","), token]).max(1)
}

/// The member's IDs as kept in `member/ids`: `<member hex> <cluster hex>`, then `join` for
/// a member that joined a running cluster (it must never bootstrap a group of its own, even
/// if it restarts before the leader reached it).
pub(crate) struct Ids {
    pub member: u64,
    pub cluster: u64,
    pub joined: bool,
}

fn read_ids(path: &Path) -> Result<Option<Ids>, String> {
    match std::fs::read_to_string(path) {
        Ok(s) => {
            let mut it = s.split_whitespace();
            let hex = |x: Option<&str>| x.and_then(|x| u64::from_str_radix(x, 16).ok());
            match (hex(it.next()), hex(it.next()), it.next()) {
                (Some(member), Some(cluster), joined) => {
                    Ok(Some(Ids { member, cluster, joined: joined == Some("join") }))
                }
                _ => Err(format!("{} is corrupt", path.display())),
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("read {}: {e}", path.display())),
    }
}

fn write_ids(dir: &Path, ids: &Ids) -> Result<(), String> {
    let tmp = dir.join("ids.tmp");
    let join = if ids.joined { " join" } else { "" };
    std::fs::write(&tmp, format!("{:x} {:x}{join}\n", ids.member, ids.cluster)).map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, dir.join("ids")).map_err(|e| e.to_string())
}

/// The member and cluster IDs: computed at bootstrap, then read from the data dir so that
/// they never change for a member.
pub(crate) fn load_or_make_ids(dir: &Path, cfg: &Config, initial: &[(u64, String)]) -> Result<Ids, String> {
    if let Some(ids) = read_ids(&dir.join("ids"))? {
        return Ok(ids);
    }
    let member = member_id_of(&cfg.initial_advertise_peer_urls, &cfg.initial_cluster_token);
    let ids: Vec<u64> = initial.iter().map(|(id, _)| *id).collect();
    let ids = Ids { member, cluster: cluster_id_of(&ids, &cfg.initial_cluster_token), joined: false };
    write_ids(dir, &ids)?;
    Ok(ids)
}

/// A member joining an existing cluster (added with MemberAdd first) learns its member ID
/// and the cluster ID from a member listed in `--initial-cluster` that knows its peer URL,
/// and keeps them in its data dir.
async fn join_ids(dir: &Path, cfg: &Config) -> Result<Ids, String> {
    use cairn_raft::PeerTransport;
    let mut mine = cfg.initial_advertise_peer_urls.clone();
    mine.sort();
    let my_url = mine.first().cloned().unwrap_or_default();
    let others: Vec<String> = cfg
        .initial_members()
        .map_err(|e| e.0)?
        .into_iter()
        .filter(|(name, _)| *name != cfg.name)
        .flat_map(|(_, urls)| urls)
        .collect();
    let lookup = peer::GrpcTransport::new(0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        for url in &others {
            let body = lookup
                .call(url, peer::method::MEMBER_LOOKUP, my_url.clone().into_bytes(), Duration::from_secs(2))
                .await;
            if let Ok(b) = body {
                if b.len() == 16 {
                    let member = u64::from_le_bytes(b[..8].try_into().map_err(|_| "bad lookup answer")?);
                    let cluster = u64::from_le_bytes(b[8..].try_into().map_err(|_| "bad lookup answer")?);
                    let ids = Ids { member, cluster, joined: true };
                    write_ids(dir, &ids)?;
                    tracing::info!(member_id = %format!("{member:x}"), cluster_id = %format!("{cluster:x}"), "joining an existing cluster");
                    return Ok(ids);
                }
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "no member of --initial-cluster knows a member with peer URL {my_url}: add it with `member add` first"
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `--initial-cluster` as (member ID, first peer URL) per member.
pub(crate) fn initial_member_ids(cfg: &Config) -> Result<Vec<(u64, String)>, String> {
    let members = cfg.initial_members().map_err(|e| e.0)?;
    let mut out: Vec<(u64, String)> = Vec::new();
    for (name, urls) in members {
        let id = member_id_of(&urls, &cfg.initial_cluster_token);
        if out.iter().any(|(o, _)| *o == id) {
            return Err(format!("--initial-cluster: member {name:?} has the same peer URLs as another member"));
        }
        out.push((id, urls.first().cloned().unwrap_or_default()));
    }
    Ok(out)
}

/// Accepted connections of `l`, each with TCP_NODELAY: small requests and responses must
/// not wait for Nagle's algorithm (a 40 ms stall against delayed ACKs).
fn nodelay_incoming(
    l: tokio::net::TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    tokio_stream::StreamExt::map(tokio_stream::wrappers::TcpListenerStream::new(l), |s| {
        s.and_then(|s| {
            s.set_nodelay(true)?;
            Ok(s)
        })
    })
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
    // The initial-cluster flags matter only at bootstrap; a member that has its IDs ignores
    // them, as etcd ignores them once the member is initialized.
    // (A member restarted before its log was initialized uses them again, if still valid.)
    let bootstrapping = !member_dir.join("ids").exists();
    let joining = bootstrapping && cfg.initial_cluster_state == "existing";
    let initial = match initial_member_ids(&cfg) {
        Ok(m) => m,
        Err(e) if bootstrapping && !joining => return Err(e),
        Err(_) => Vec::new(),
    };
    let ids = if joining { join_ids(&member_dir, &cfg).await? } else { load_or_make_ids(&member_dir, &cfg, &initial)? };
    let (member_id, cluster_id, join) = (ids.member, ids.cluster, ids.joined);
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
    // The peer port serves before raft starts: the other members of a new cluster must be
    // able to reach this one to elect a leader.
    let (stop_tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let node_cell = Arc::new(std::sync::OnceLock::new());
    let lessor_cell = Arc::new(std::sync::OnceLock::new());
    let mut servers = Vec::new();
    for u in &cfg.listen_peer_urls {
        let a = config::socket_addr(u).map_err(|e| e.to_string())?;
        let l = tokio::net::TcpListener::bind(&a).await.map_err(|e| format!("listen on {a}: {e}"))?;
        let service = peer::PeerService {
            cluster_id,
            node: node_cell.clone(),
            lessor: lessor_cell.clone(),
            name: cfg.name.clone(),
            client_urls: cfg.advertise_client_urls.clone(),
        };
        // Peer calls cancelled by their deadlines reset their streams; h2's default limit
        // (20 pending resets) would then close the connection between two members under
        // load (seen in the Jepsen soak).
        let router =
            tonic::transport::Server::builder().http2_max_pending_accept_reset_streams(Some(4096)).add_service(
                PeerServer::new(service)
                    .max_decoding_message_size(peer::MAX_PEER_MESSAGE)
                    .max_encoding_message_size(peer::MAX_PEER_MESSAGE),
            );
        let mut stop = stop_tx.subscribe();
        let incoming = nodelay_incoming(l);
        servers.push(tokio::spawn(async move {
            router
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = stop.recv().await;
                })
                .await
        }));
        tracing::info!(address = %a, "serving peer traffic");
    }
    let transport = Arc::new(peer::GrpcTransport::new(cluster_id));
    let mut initial_members: std::collections::BTreeMap<u64, String> = initial.iter().cloned().collect();
    // A restarted member reads its ID from its data dir; the initial members matter only
    // while its log is empty, but it must be among them.
    initial_members
        .entry(member_id)
        .or_insert_with(|| cfg.initial_advertise_peer_urls.first().cloned().unwrap_or_default());
    let node = Arc::new(
        RaftNode::start(NodeConfig {
            member_id,
            initial_members,
            dir: member_dir,
            heartbeat_interval_ms: cfg.heartbeat_interval_ms,
            election_timeout_ms: cfg.election_timeout_ms,
            snapshot_count: cfg.snapshot_count,
            transport: transport.clone(),
            join,
        })
        .await?,
    );
    let _ = node_cell.set(node.clone());
    // A member of a new cluster waits for the others as long as it takes (as etcd does).
    loop {
        match node.wait_for_leader(Duration::from_secs(10)).await {
            Ok(_) => break,
            Err(cairn_raft::WriteError::NoLeader) => {
                tracing::info!("no leader yet: waiting for a quorum of the members to start");
            }
            Err(e) => return Err(format!("raft stopped before a leader was elected: {e:?}")),
        }
    }
    let compactor = Arc::new(Notify::new());
    let hub = Arc::new(WatchHub::new(node.store().current_revision(), WATCH_MAX_PENDING_EVENTS));
    let metrics = Arc::new(metrics::Metrics::new(cfg.quota_backend_bytes, count_keys(&node)?));
    let authz = Arc::new(authz::Authz::new(
        node.store().auth_state().map_err(|e| format!("read the auth store: {e}"))?,
        Duration::from_secs(cfg.auth_token_ttl_secs),
        cfg.bcrypt_cost,
    ));
    // Lease expiry: the lessor promotes (every lease gets its full TTL) as soon as this member
    // leads, then proposes the revocation of expired leases. It learns every applied grant
    // and revocation, whichever member proposed it.
    let lessor = Arc::new(lessor::Lessor::new(lessor::LessorConfig::from_raft_timing(
        cfg.heartbeat_interval_ms,
        cfg.election_timeout_ms,
    )));
    {
        // After every applied batch: publish its events to the watchers, and wake the
        // compactor if the compacted revision moved.
        let store = node.store().clone();
        let wake = compactor.clone();
        let hub = hub.clone();
        let metrics = metrics.clone();
        let authz = authz.clone();
        let lessor = lessor.clone();
        let seen = AtomicI64::new(store.compact_revision());
        node.set_apply_listener(Arc::new(move |outcome| {
            for a in outcome.applied.iter().flatten() {
                match &a.result {
                    Ok(cairn_storage::CommandResponse::LeaseGrant { id, ttl_secs }) => lessor.granted(*id, *ttl_secs),
                    Ok(cairn_storage::CommandResponse::LeaseRevoke { id }) => lessor.revoked(*id),
                    _ => {}
                }
            }
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
    {
        // A snapshot from the leader replaced the store: watchers replay what they missed
        // from it, permissions are reloaded, a pending compaction resumes.
        let store = node.store().clone();
        let hub = hub.clone();
        let authz = authz.clone();
        let wake = compactor.clone();
        node.set_install_listener(Arc::new(move || {
            hub.jump_to(store.current_revision());
            authz.drop_tokens();
            authz.reload(&store);
            wake.notify_one();
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
    let (leader_monitor, leader_monitor_task) =
        leader::LeaderMonitor::spawn(node.clone(), Duration::from_millis(cfg.election_timeout_ms));
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
        peers: transport,
        leader_monitor,
        member_attrs: Default::default(),
    });
    let _ = lessor_cell.set(lessor.clone());
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
            .layer(leader::RequireLeaderLayer { node: node.clone() })
            .add_routes(tonic::service::Routes::from(all));
        let mut stop = stop_tx.subscribe();
        let incoming = nodelay_incoming(l);
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
    // A member removed from the cluster stops, as etcd's does.
    let removed = {
        let node = node.clone();
        async move {
            let mut was_member = false;
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tick.tick().await;
                if node.is_removed() {
                    return;
                }
                let members = node.members();
                let member = members.iter().any(|(id, _)| *id == member_id);
                if member {
                    was_member = true;
                } else if was_member && !members.is_empty() {
                    return;
                }
            }
        }
    };
    let mut outcome = Ok(());
    tokio::select! {
        _ = shutdown => tracing::info!("received stop request, shutting down"),
        _ = removed => {
            tracing::error!("the member has been permanently removed from the cluster; shutting down");
            outcome = Err("the member has been permanently removed from the cluster".to_string());
        }
    }
    // A stopping member proposes no more revocations; the next leader (this member after a
    // restart) gives every lease its full TTL again.
    lessor_task.abort();
    autocompact_task.abort();
    leader_watch.abort();
    leader_monitor_task.abort();
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
    outcome
}
