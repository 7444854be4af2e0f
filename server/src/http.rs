//! [`HttpApi`]: what the client port answers over plain HTTP next to gRPC (etcd serves both
//! on one port), and what the `--listen-metrics-urls` listeners answer.
//!
//! On the client port the gRPC services are routed by path (`/etcdserverpb.KV/Range`...);
//! every other request lands here:
//!
//! | path | answer (etcd 3.5.1 unless noted) |
//! |---|---|
//! | `/v3/...` | the JSON gateway ([`crate::gateway`]), unless `--enable-grpc-gateway=false` |
//! | `/health` | `{"health":"true","reason":""}`; 503 with the reason when unhealthy |
//! | `/livez`, `/readyz` | `ok` — not in 3.5.1 (404 there); served as later 3.5 releases do |
//! | `/version` | `{"etcdserver":"3.5.x","etcdcluster":"3.5.0"}` |
//! | `/metrics` | Prometheus text ([`crate::metrics`]) |
//!
//! A metrics listener answers `/metrics` and `/health` only, as etcd's does.

use std::sync::Arc;

use http::{HeaderValue, Method, StatusCode};

use crate::context::Context;
use crate::gateway::{plain, Gateway, HttpRequest, HttpResponse};
use crate::metrics::Metrics;

/// The cluster version Cairn reports: the lowest member version, minor only, as etcd does.
pub const CLUSTER_VERSION: &str = "3.5.0";

/// Shared by every HTTP request of a member.
pub struct HttpApi {
    pub ctx: Arc<Context>,
    pub metrics: Arc<Metrics>,
    /// `None` when `--enable-grpc-gateway=false`.
    pub gateway: Option<Arc<Gateway>>,
}

impl HttpApi {
    /// A request on the client port that no gRPC service took.
    pub async fn client(self: Arc<Self>, req: HttpRequest) -> HttpResponse {
        if is_grpc(&req) {
            return grpc_unimplemented(req.uri().path());
        }
        let path = req.uri().path().to_owned();
        let mut resp = match path.as_str() {
            "/health" => self.health(req).await,
            "/livez" => only_get(&req).unwrap_or_else(|| text(StatusCode::OK, "ok")),
            "/readyz" => only_get(&req).unwrap_or_else(|| {
                if self.ctx.node.has_leader() {
                    text(StatusCode::OK, "ok")
                } else {
                    text(StatusCode::SERVICE_UNAVAILABLE, "readyz check failed")
                }
            }),
            "/version" => only_get(&req).unwrap_or_else(version),
            "/metrics" => self.metrics_page(),
            p if p.starts_with("/v3/") => match &self.gateway {
                Some(g) => match g.route(req).await {
                    Some(r) => r,
                    None => plain(StatusCode::NOT_FOUND, "Not Found\n"),
                },
                None => plain(StatusCode::NOT_FOUND, "404 page not found\n"),
            },
            _ => plain(StatusCode::NOT_FOUND, "404 page not found\n"),
        };
        cors(&mut resp);
        resp
    }

    /// A request on a `--listen-metrics-urls` listener.
    pub async fn metrics_listener(self: Arc<Self>, req: HttpRequest) -> HttpResponse {
        match req.uri().path() {
            "/metrics" => self.metrics_page(),
            "/health" => self.health(req).await,
            _ => plain(StatusCode::NOT_FOUND, "404 page not found\n"),
        }
    }

    fn metrics_page(&self) -> HttpResponse {
        let body = self.metrics.render(&self.ctx);
        let mut r = http::Response::new(axum::body::Body::from(body));
        r.headers_mut()
            .insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
        r
    }

    /// etcd 3.5's `/health`: alarms, then a leader, then a linearizable read (skipped with
    /// `?serializable=true`).
    async fn health(&self, req: HttpRequest) -> HttpResponse {
        if let Some(r) = only_get(&req) {
            return r;
        }
        let (parts, _) = req.into_parts();
        let serializable = parts.uri.query().is_some_and(|q| q.split('&').any(|kv| kv == "serializable=true"));
        // `?exclude=NOSPACE` (repeatable) ignores that alarm, as etcd's.
        let excluded: Vec<String> = parts
            .uri
            .query()
            .map(|q| q.split('&').filter_map(|kv| kv.strip_prefix("exclude=")).map(str::to_string).collect())
            .unwrap_or_default();
        let alarm = self.ctx.node.store().alarms().into_iter().find_map(|a| {
            let name = match a.alarm {
                cairn_storage::AlarmType::NoSpace => "NOSPACE",
                cairn_storage::AlarmType::Corrupt => "CORRUPT",
            };
            (!excluded.iter().any(|e| e == name)).then(|| format!("ALARM {name}"))
        });
        let reason = if alarm.is_some() {
            alarm
        } else if !self.ctx.node.has_leader() {
            Some("RAFT NO LEADER".to_string())
        } else if serializable {
            None
        } else {
            self.ctx.linearizable_barrier().await.err().map(|s| format!("QGET ERROR:{}", s.message()))
        };
        match reason {
            None => {
                let mut r = http::Response::new(axum::body::Body::from(r#"{"health":"true","reason":""}"#));
                r.headers_mut()
                    .insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
                r
            }
            Some(reason) => {
                let reason = serde_json::to_string(&reason).unwrap_or_else(|_| "\"\"".into());
                // Go's http.Error: text/plain, a trailing newline.
                let body = format!("{{\"health\":\"false\",\"reason\":{reason}}}\n");
                let mut r = http::Response::new(axum::body::Body::from(body));
                *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                r.headers_mut()
                    .insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
                r.headers_mut().insert("x-content-type-options", HeaderValue::from_static("nosniff"));
                r
            }
        }
    }
}

fn is_grpc(req: &HttpRequest) -> bool {
    req.headers().get(http::header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// etcd's handlers answer other methods with 405 and `Allow: GET`.
fn only_get(req: &HttpRequest) -> Option<HttpResponse> {
    if req.method() == Method::GET {
        return None;
    }
    let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed\n");
    r.headers_mut().insert(http::header::ALLOW, HeaderValue::from_static("GET"));
    Some(r)
}

fn text(status: StatusCode, body: &'static str) -> HttpResponse {
    let mut r = http::Response::new(axum::body::Body::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

fn version() -> HttpResponse {
    let body = format!(
        "{{\"etcdserver\":{},\"etcdcluster\":{}}}",
        serde_json::Value::from(crate::maintenance::ETCD_VERSION),
        serde_json::Value::from(CLUSTER_VERSION)
    );
    let mut r = http::Response::new(axum::body::Body::from(body));
    r.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// etcd's default `--cors=*` headers, on every HTTP answer of the client port.
fn cors(r: &mut HttpResponse) {
    let h = r.headers_mut();
    h.insert("access-control-allow-headers", HeaderValue::from_static("accept, content-type, authorization"));
    h.insert("access-control-allow-methods", HeaderValue::from_static("POST, GET, OPTIONS, PUT, DELETE"));
    h.insert("access-control-allow-origin", HeaderValue::from_static("*"));
}

/// A gRPC call of a method no service has: grpc-go's Unimplemented, as a trailers-only answer.
fn grpc_unimplemented(path: &str) -> HttpResponse {
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let service = parts.next().unwrap_or("");
    let message = match parts.next() {
        Some(method) if KNOWN_SERVICES.contains(&service) => format!("unknown method {method} for service {service}"),
        _ => format!("unknown service {service}"),
    };
    let mut r = http::Response::new(axum::body::Body::empty());
    let h = r.headers_mut();
    h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    h.insert("grpc-status", HeaderValue::from(tonic::Code::Unimplemented as i32));
    if let Ok(v) = HeaderValue::from_str(&percent_encode(&message)) {
        h.insert("grpc-message", v);
    }
    r
}

/// Services registered on the client port.
const KNOWN_SERVICES: &[&str] = &[
    "etcdserverpb.KV",
    "etcdserverpb.Watch",
    "etcdserverpb.Lease",
    "etcdserverpb.Cluster",
    "etcdserverpb.Maintenance",
    "etcdserverpb.Auth",
    "v3lockpb.Lock",
    "v3electionpb.Election",
];

/// gRPC's percent-encoding of grpc-message (space and printable ASCII except `%` as is).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
