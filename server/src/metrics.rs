//! [`Metrics`]: the member's Prometheus metrics under etcd's names, and the tower layer that
//! counts gRPC calls as go-grpc-prometheus does.
//!
//! Everything on a request path is an atomic counter in a table fixed at start (one row per
//! etcd gRPC method): no lock, no allocation. Gauges (leader, revisions, sizes, watchers) are
//! read from the node when `/metrics` is scraped. Counts that etcd takes inside its MVCC
//! store are taken here at the RPC edge or from the apply listener; where that differs from
//! etcd it says so below.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context as TaskContext, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use cairn_raft::log_store::DurationHistogram;
use cairn_storage::{BatchOutcome, EventKind};
use http_body::Frame;
use tonic::body::Body;

use crate::context::Context;

/// Every etcd v3 gRPC method as go-grpc-prometheus labels it: (service, method, type).
/// etcd pre-registers all of them, so every series exists (at 0) from the start.
pub const GRPC_METHODS: &[(&str, &str, &str)] = &[
    ("etcdserverpb.KV", "Range", "unary"),
    ("etcdserverpb.KV", "Put", "unary"),
    ("etcdserverpb.KV", "DeleteRange", "unary"),
    ("etcdserverpb.KV", "Txn", "unary"),
    ("etcdserverpb.KV", "Compact", "unary"),
    ("etcdserverpb.Watch", "Watch", "bidi_stream"),
    ("etcdserverpb.Lease", "LeaseGrant", "unary"),
    ("etcdserverpb.Lease", "LeaseRevoke", "unary"),
    ("etcdserverpb.Lease", "LeaseKeepAlive", "bidi_stream"),
    ("etcdserverpb.Lease", "LeaseTimeToLive", "unary"),
    ("etcdserverpb.Lease", "LeaseLeases", "unary"),
    ("etcdserverpb.Cluster", "MemberAdd", "unary"),
    ("etcdserverpb.Cluster", "MemberRemove", "unary"),
    ("etcdserverpb.Cluster", "MemberUpdate", "unary"),
    ("etcdserverpb.Cluster", "MemberList", "unary"),
    ("etcdserverpb.Cluster", "MemberPromote", "unary"),
    ("etcdserverpb.Maintenance", "Alarm", "unary"),
    ("etcdserverpb.Maintenance", "Status", "unary"),
    ("etcdserverpb.Maintenance", "Defragment", "unary"),
    ("etcdserverpb.Maintenance", "Hash", "unary"),
    ("etcdserverpb.Maintenance", "HashKV", "unary"),
    ("etcdserverpb.Maintenance", "Snapshot", "server_stream"),
    ("etcdserverpb.Maintenance", "MoveLeader", "unary"),
    ("etcdserverpb.Maintenance", "Downgrade", "unary"),
    ("etcdserverpb.Auth", "AuthEnable", "unary"),
    ("etcdserverpb.Auth", "AuthDisable", "unary"),
    ("etcdserverpb.Auth", "AuthStatus", "unary"),
    ("etcdserverpb.Auth", "Authenticate", "unary"),
    ("etcdserverpb.Auth", "UserAdd", "unary"),
    ("etcdserverpb.Auth", "UserGet", "unary"),
    ("etcdserverpb.Auth", "UserList", "unary"),
    ("etcdserverpb.Auth", "UserDelete", "unary"),
    ("etcdserverpb.Auth", "UserChangePassword", "unary"),
    ("etcdserverpb.Auth", "UserGrantRole", "unary"),
    ("etcdserverpb.Auth", "UserRevokeRole", "unary"),
    ("etcdserverpb.Auth", "RoleAdd", "unary"),
    ("etcdserverpb.Auth", "RoleGet", "unary"),
    ("etcdserverpb.Auth", "RoleList", "unary"),
    ("etcdserverpb.Auth", "RoleDelete", "unary"),
    ("etcdserverpb.Auth", "RoleGrantPermission", "unary"),
    ("etcdserverpb.Auth", "RoleRevokePermission", "unary"),
];

/// gRPC status codes by number, as go-grpc-prometheus names them.
const GRPC_CODES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

/// The counters of one gRPC method.
#[derive(Default)]
struct MethodCounters {
    started: AtomicU64,
    received: AtomicU64,
    sent: AtomicU64,
    handled: [AtomicU64; 17],
}

/// Picks one counter of a method's row.
type CounterField = fn(&MethodCounters) -> &AtomicU64;

/// One gRPC method's row in [`GRPC_METHODS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MethodId(usize);

/// The member's metrics. One per member, shared by every listener and the apply listener.
pub struct Metrics {
    methods: Vec<MethodCounters>,
    /// "/etcdserverpb.KV/Range" -> row; built once, read without locks.
    by_path: HashMap<String, MethodId>,
    range: MethodId,
    txn: MethodId,
    leader_changes: AtomicU64,
    /// etcd counts these in its MVCC layer; here puts and deletes are counted per event
    /// from the apply listener (a delete of n keys counts n, etcd counts 1).
    mvcc_put: AtomicU64,
    mvcc_delete: AtomicU64,
    /// Range and Txn RPCs started (etcd counts store-level reads and write txns).
    mvcc_range: AtomicU64,
    mvcc_txn: AtomicU64,
    /// Live keys: counted once at start, then kept by the apply listener.
    keys: AtomicI64,
    quota_backend_bytes: u64,
    /// When this member's metrics began (the process start, to within start-up time).
    start_time: SystemTime,
}

impl Metrics {
    pub fn new(quota_backend_bytes: u64, initial_keys: i64) -> Metrics {
        let methods = GRPC_METHODS.iter().map(|_| MethodCounters::default()).collect();
        let by_path = GRPC_METHODS
            .iter()
            .enumerate()
            .map(|(i, (svc, m, _))| (format!("/{svc}/{m}"), MethodId(i)))
            .collect::<HashMap<_, _>>();
        let range = by_path["/etcdserverpb.KV/Range"];
        let txn = by_path["/etcdserverpb.KV/Txn"];
        Metrics {
            methods,
            by_path,
            range,
            txn,
            leader_changes: AtomicU64::new(0),
            mvcc_put: AtomicU64::new(0),
            mvcc_delete: AtomicU64::new(0),
            mvcc_range: AtomicU64::new(0),
            mvcc_txn: AtomicU64::new(0),
            keys: AtomicI64::new(initial_keys),
            quota_backend_bytes,
            start_time: SystemTime::now(),
        }
    }

    /// The method a gRPC path (`/package.Service/Method`) names, if etcd has it.
    pub fn method(&self, path: &str) -> Option<MethodId> {
        self.by_path.get(path).copied()
    }

    pub fn started(&self, m: MethodId) {
        self.methods[m.0].started.fetch_add(1, Ordering::Relaxed);
        if m == self.range {
            self.mvcc_range.fetch_add(1, Ordering::Relaxed);
        } else if m == self.txn {
            self.mvcc_txn.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn received(&self, m: MethodId, n: u64) {
        self.methods[m.0].received.fetch_add(n, Ordering::Relaxed);
    }

    pub fn sent(&self, m: MethodId, n: u64) {
        self.methods[m.0].sent.fetch_add(n, Ordering::Relaxed);
    }

    pub fn handled(&self, m: MethodId, code: tonic::Code) {
        let c = (code as usize).min(GRPC_CODES.len() - 1);
        self.methods[m.0].handled[c].fetch_add(1, Ordering::Relaxed);
    }

    pub fn leader_changed(&self) {
        self.leader_changes.fetch_add(1, Ordering::Relaxed);
    }

    /// Called after every applied batch: MVCC write counts and the live-key count.
    pub fn on_apply(&self, outcome: &BatchOutcome) {
        let (mut puts, mut deletes, mut new_keys) = (0u64, 0u64, 0i64);
        for (_, events) in &outcome.events {
            for e in events {
                match e.kind {
                    EventKind::Put => {
                        puts += 1;
                        if e.kv.version == 1 {
                            new_keys += 1;
                        }
                    }
                    EventKind::Delete => {
                        deletes += 1;
                        new_keys -= 1;
                    }
                }
            }
        }
        if puts > 0 {
            self.mvcc_put.fetch_add(puts, Ordering::Relaxed);
        }
        if deletes > 0 {
            self.mvcc_delete.fetch_add(deletes, Ordering::Relaxed);
        }
        if new_keys != 0 {
            self.keys.fetch_add(new_keys, Ordering::Relaxed);
        }
    }

    /// The Prometheus text exposition (format 0.0.4) of everything, gauges read now.
    pub fn render(&self, ctx: &Context) -> String {
        let mut out = String::with_capacity(64 * 1024);
        self.render_grpc(&mut out);
        let status = ctx.node.status();
        let gauge = |out: &mut String, name: &str, help: &str, v: f64| {
            family(out, name, help, "gauge");
            let _ = writeln!(out, "{name} {}", fmt_f64(v));
        };
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            family(out, name, help, "counter");
            let _ = writeln!(out, "{name} {v}");
        };
        let store = ctx.node.store();
        let db_size = ctx.node.db_size() as f64;
        let (watchers, streams) = ctx.hub.counts();
        let pending = crate::context::MAX_INFLIGHT_PROPOSALS.saturating_sub(ctx.proposals.available_permits());
        gauge(
            &mut out,
            "etcd_debugging_mvcc_compact_revision",
            "The revision of the last compaction in store.",
            store.compact_revision().max(0) as f64,
        );
        gauge(
            &mut out,
            "etcd_debugging_mvcc_current_revision",
            "The current revision of store.",
            store.current_revision() as f64,
        );
        gauge(
            &mut out,
            "etcd_debugging_mvcc_keys_total",
            "Total number of keys.",
            self.keys.load(Ordering::Relaxed).max(0) as f64,
        );
        gauge(&mut out, "etcd_debugging_mvcc_watch_stream_total", "Total number of watch streams.", streams as f64);
        gauge(&mut out, "etcd_debugging_mvcc_watcher_total", "Total number of watchers.", watchers as f64);
        // redb has no separate free-page count that is cheap to read: in use = allocated.
        histogram(
            &mut out,
            "etcd_disk_wal_fsync_duration_seconds",
            "The latency distributions of fsync called by WAL.",
            ctx.node.wal_fsync_times(),
        );
        histogram(
            &mut out,
            "etcd_disk_backend_commit_duration_seconds",
            "The latency distributions of commit called by backend.",
            ctx.node.backend_commit_times(),
        );
        gauge(
            &mut out,
            "etcd_mvcc_db_total_size_in_bytes",
            "Total size of the underlying database physically allocated in bytes.",
            db_size,
        );
        gauge(
            &mut out,
            "etcd_mvcc_db_total_size_in_use_in_bytes",
            "Total size of the underlying database logically in use in bytes.",
            db_size,
        );
        counter(
            &mut out,
            "etcd_mvcc_delete_total",
            "Total number of deletes seen by this member.",
            self.mvcc_delete.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "etcd_mvcc_put_total",
            "Total number of puts seen by this member.",
            self.mvcc_put.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "etcd_mvcc_range_total",
            "Total number of ranges seen by this member.",
            self.mvcc_range.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "etcd_mvcc_txn_total",
            "Total number of txns seen by this member.",
            self.mvcc_txn.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "etcd_server_has_leader",
            "Whether or not a leader exists. 1 is existence, 0 is not.",
            f64::from(u8::from(status.leader.is_some())),
        );
        family(
            &mut out,
            "etcd_server_id",
            "Server or member ID in hexadecimal format. 1 for 'server_id' label with current ID.",
            "gauge",
        );
        let _ = writeln!(out, "etcd_server_id{{server_id=\"{:x}\"}} 1", ctx.member_id);
        gauge(
            &mut out,
            "etcd_server_is_leader",
            "Whether or not this member is a leader. 1 if is, 0 otherwise.",
            f64::from(u8::from(status.is_leader)),
        );
        counter(
            &mut out,
            "etcd_server_leader_changes_seen_total",
            "The number of leader changes seen.",
            self.leader_changes.load(Ordering::Relaxed),
        );
        // etcd declares these two as gauges.
        gauge(
            &mut out,
            "etcd_server_proposals_applied_total",
            "The total number of consensus proposals applied.",
            status.applied_index as f64,
        );
        gauge(
            &mut out,
            "etcd_server_proposals_committed_total",
            "The total number of consensus proposals committed.",
            status.last_log_index.max(status.applied_index) as f64,
        );
        // Failed proposals are answered to their client with an error; not counted yet.
        counter(&mut out, "etcd_server_proposals_failed_total", "The total number of failed proposals seen.", 0);
        gauge(
            &mut out,
            "etcd_server_proposals_pending",
            "The current number of pending proposals to commit.",
            pending as f64,
        );
        gauge(
            &mut out,
            "etcd_server_quota_backend_bytes",
            "Current backend storage quota size in bytes.",
            self.quota_backend_bytes as f64,
        );
        family(
            &mut out,
            "etcd_server_version",
            "Which version is running. 1 for 'server_version' label with current version.",
            "gauge",
        );
        let _ = writeln!(out, "etcd_server_version{{server_version=\"{}\"}} 1", crate::maintenance::ETCD_VERSION);
        self.render_process(&mut out);
        out
    }

    /// go-grpc-prometheus's four families, every method (and for handled every code) listed.
    fn render_grpc(&self, out: &mut String) {
        // Prometheus orders series by label values: method, then service.
        let mut order: Vec<usize> = (0..GRPC_METHODS.len()).collect();
        order.sort_by_key(|&i| (GRPC_METHODS[i].1, GRPC_METHODS[i].0));
        let mut codes: Vec<usize> = (0..GRPC_CODES.len()).collect();
        codes.sort_by_key(|&c| GRPC_CODES[c]);
        family(
            out,
            "grpc_server_handled_total",
            "Total number of RPCs completed on the server, regardless of success or failure.",
            "counter",
        );
        for &c in &codes {
            for &i in &order {
                let (svc, m, t) = GRPC_METHODS[i];
                let v = self.methods[i].handled[c].load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "grpc_server_handled_total{{grpc_code=\"{}\",grpc_method=\"{m}\",grpc_service=\"{svc}\",grpc_type=\"{t}\"}} {v}",
                    GRPC_CODES[c]
                );
            }
        }
        let simple: [(&str, &str, CounterField); 3] = [
            ("grpc_server_msg_received_total", "Total number of RPC stream messages received on the server.", |c| {
                &c.received
            }),
            ("grpc_server_msg_sent_total", "Total number of gRPC stream messages sent by the server.", |c| &c.sent),
            ("grpc_server_started_total", "Total number of RPCs started on the server.", |c| &c.started),
        ];
        for (name, help, field) in simple {
            family(out, name, help, "counter");
            for &i in &order {
                let (svc, m, t) = GRPC_METHODS[i];
                let v = field(&self.methods[i]).load(Ordering::Relaxed);
                let _ = writeln!(out, "{name}{{grpc_method=\"{m}\",grpc_service=\"{svc}\",grpc_type=\"{t}\"}} {v}");
            }
        }
    }

    /// The process collector's basics, from /proc (Linux); left out where /proc is missing.
    fn render_process(&self, out: &mut String) {
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            family(out, "process_open_fds", "Number of open file descriptors.", "gauge");
            let _ = writeln!(out, "process_open_fds {}", dir.count());
        }
        let rss = std::fs::read_to_string("/proc/self/status").ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        });
        if let Some(kb) = rss {
            family(out, "process_resident_memory_bytes", "Resident memory size in bytes.", "gauge");
            let _ = writeln!(out, "process_resident_memory_bytes {}", kb * 1024);
        }
        let start = self.start_time.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs_f64();
        family(out, "process_start_time_seconds", "Start time of the process since unix epoch in seconds.", "gauge");
        let _ = writeln!(out, "process_start_time_seconds {}", fmt_f64(start));
    }
}

fn family(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn histogram(out: &mut String, name: &str, help: &str, h: &DurationHistogram) {
    family(out, name, help, "histogram");
    let (buckets, overflow, sum) = h.snapshot();
    let mut cumulative = 0u64;
    for (i, n) in buckets.iter().enumerate() {
        cumulative += n;
        let _ = writeln!(out, "{name}_bucket{{le=\"{}\"}} {cumulative}", fmt_f64(DurationHistogram::bound_secs(i)));
    }
    cumulative += overflow;
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
    let _ = writeln!(out, "{name}_sum {}", fmt_f64(sum));
    let _ = writeln!(out, "{name}_count {cumulative}");
}

/// Integers without a fraction, other values as Rust prints them (Prometheus parses both).
fn fmt_f64(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// Counts leader changes as etcd does (the first election counts): polls the node's view of
/// the leader every `interval` until the returned task is aborted.
pub fn spawn_leader_watch(
    metrics: Arc<Metrics>,
    node: Arc<cairn_raft::RaftNode>,
    interval: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last = None;
        let mut tick = tokio::time::interval(interval);
        loop {
            tick.tick().await;
            let now = node.status().leader;
            if now.is_some() && now != last {
                metrics.leader_changed();
            }
            last = now;
        }
    })
}

/// The tower layer over the whole client-port service: counts every etcd gRPC call it sees
/// (started, messages each way, handled with its final code). Other requests pass through.
#[derive(Clone)]
pub struct GrpcMetricsLayer {
    pub metrics: Arc<Metrics>,
}

impl<S> tower_layer::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetricsService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetricsService { inner, metrics: self.metrics.clone() }
    }
}

#[derive(Clone)]
pub struct GrpcMetricsService<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S> tower_service::Service<http::Request<Body>> for GrpcMetricsService<S>
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
        let is_grpc = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        let method = if is_grpc { self.metrics.method(req.uri().path()) } else { None };
        let Some(m) = method else {
            return Box::pin(self.inner.call(req));
        };
        let metrics = self.metrics.clone();
        metrics.started(m);
        let req = req.map(|b| {
            Body::new(CountingBody {
                inner: b,
                frames: FrameCounter::default(),
                on_messages: Tracker { metrics: metrics.clone(), method: m, sent: false },
                done: None,
            })
        });
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            // A trailers-only answer (an error before any message) carries grpc-status in
            // its headers; otherwise the status comes in the body's trailers.
            if let Some(code) = grpc_status(resp.headers()) {
                metrics.handled(m, code);
                return Ok(resp);
            }
            Ok(resp.map(|b| {
                Body::new(CountingBody {
                    inner: b,
                    frames: FrameCounter::default(),
                    on_messages: Tracker { metrics: metrics.clone(), method: m, sent: true },
                    done: Some(false),
                })
            }))
        })
    }
}

fn grpc_status(h: &http::HeaderMap) -> Option<tonic::Code> {
    let v = h.get("grpc-status")?;
    let n: i32 = std::str::from_utf8(v.as_bytes()).ok()?.trim().parse().ok()?;
    Some(tonic::Code::from_i32(n))
}

/// Where a counting body reports.
struct Tracker {
    metrics: Arc<Metrics>,
    method: MethodId,
    /// Response (messages sent) or request (received) side.
    sent: bool,
}

/// Counts length-prefixed gRPC messages in a byte stream split at arbitrary points.
#[derive(Default)]
struct FrameCounter {
    /// Bytes of the current message still to skip.
    remaining: u64,
    /// Bytes of the 5-byte prefix seen so far.
    header: [u8; 5],
    header_len: usize,
}

impl FrameCounter {
    /// The number of messages whose prefix completes in `data`.
    fn feed(&mut self, mut data: &[u8]) -> u64 {
        let mut n = 0;
        while !data.is_empty() {
            if self.remaining > 0 {
                let k = (self.remaining as usize).min(data.len());
                self.remaining -= k as u64;
                data = &data[k..];
                continue;
            }
            let k = (5 - self.header_len).min(data.len());
            self.header[self.header_len..self.header_len + k].copy_from_slice(&data[..k]);
            self.header_len += k;
            data = &data[k..];
            if self.header_len == 5 {
                n += 1;
                self.remaining =
                    u64::from(u32::from_be_bytes([self.header[1], self.header[2], self.header[3], self.header[4]]));
                self.header_len = 0;
            }
        }
        n
    }
}

/// A body that counts the gRPC messages passing through it; on the response side it also
/// records the call's final code (from the trailers; Canceled if dropped before them).
struct CountingBody {
    inner: Body,
    frames: FrameCounter,
    on_messages: Tracker,
    /// Response side: whether the final code was recorded. None on the request side.
    done: Option<bool>,
}

impl http_body::Body for CountingBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let Some(d) = f.data_ref() {
                    let n = this.frames.feed(d);
                    if n > 0 {
                        let t = &this.on_messages;
                        if t.sent {
                            t.metrics.sent(t.method, n);
                        } else {
                            t.metrics.received(t.method, n);
                        }
                    }
                } else if let Some(trailers) = f.trailers_ref() {
                    if this.done == Some(false) {
                        let code = grpc_status(trailers).unwrap_or(tonic::Code::Unknown);
                        this.on_messages.metrics.handled(this.on_messages.method, code);
                        this.done = Some(true);
                    }
                }
            }
            Some(Err(_)) | None => {
                if this.done == Some(false) {
                    let code = if frame.is_none() { tonic::Code::Ok } else { tonic::Code::Unknown };
                    this.on_messages.metrics.handled(this.on_messages.method, code);
                    this.done = Some(true);
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for CountingBody {
    fn drop(&mut self) {
        // The client went away before the call ended (a canceled watch, for instance).
        if self.done == Some(false) {
            self.on_messages.metrics.handled(self.on_messages.method, tonic::Code::Cancelled);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_counter_counts_messages_split_anywhere() {
        let mut stream = Vec::new();
        for len in [0u32, 3, 300] {
            stream.push(0);
            stream.extend_from_slice(&len.to_be_bytes());
            stream.extend(std::iter::repeat_n(7u8, len as usize));
        }
        for split in 1..stream.len() {
            let mut c = FrameCounter::default();
            let n: u64 = stream.chunks(split).map(|ch| c.feed(ch)).sum();
            assert_eq!(n, 3, "chunk size {split}");
        }
    }

    #[test]
    fn histogram_buckets_match_etcd() {
        assert_eq!(DurationHistogram::bound_secs(0), 0.001);
        assert_eq!(DurationHistogram::bound_secs(13), 8.192);
        let h = DurationHistogram::default();
        h.observe(Duration::from_micros(1500));
        h.observe(Duration::from_secs(20));
        let mut out = String::new();
        histogram(&mut out, "x", "h", &h);
        assert!(out.contains("x_bucket{le=\"0.001\"} 0\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.002\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 2\n"), "{out}");
        assert!(out.contains("x_count 2\n"), "{out}");
    }
}
