//! HTTP on the client port: etcd's JSON gateway compared with etcd 3.5.1 (status and body
//! of every request, after normalizing the member's identity), gateway watch streams,
//! /health /version /livez, the metrics listener, /metrics after real traffic, and the
//! Python `etcd3` (gRPC) and `etcd3gw` (gateway) clients' main operations.

use std::time::Duration;

use cairn_tests::harness::{repo_root, Server, ServerKind};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// One HTTP/1.1 answer.
#[derive(Debug)]
struct HttpResp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl HttpResp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// A connection whose answer is read as it arrives (chunked or not).
struct HttpConn {
    r: BufReader<TcpStream>,
    status: u16,
    headers: Vec<(String, String)>,
    chunked: bool,
    /// Body bytes read but not yet returned as lines.
    pending: Vec<u8>,
    /// Bytes left of a Content-Length body; None when chunked.
    remaining: Option<usize>,
    done: bool,
}

async fn open(port: u16, method: &str, path: &str, body: &str) -> HttpConn {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("send request");
    let mut r = BufReader::new(s);
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        let n = r.read(&mut b).await.expect("read head");
        assert!(n == 1, "connection closed in the response head: {}", String::from_utf8_lossy(&head));
        head.push(b[0]);
    }
    let head = String::from_utf8(head).expect("utf-8 head");
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|c| c.parse().ok()).expect("status line");
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':').map(|(k, v)| (k.trim().to_string(), v.trim().to_string())))
        .collect();
    let find = |n: &str| headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(n)).map(|(_, v)| v.clone());
    let chunked = find("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    let remaining = if chunked { None } else { find("content-length").and_then(|v| v.parse().ok()) };
    HttpConn { r, status, headers, chunked, pending: Vec::new(), remaining, done: false }
}

impl HttpConn {
    /// More body bytes into `pending`; false at the end of the body.
    async fn fill(&mut self) -> bool {
        if self.done {
            return false;
        }
        if self.chunked {
            let mut size_line = Vec::new();
            loop {
                let b = self.r.read_u8().await.expect("chunk size");
                size_line.push(b);
                if size_line.ends_with(b"\r\n") {
                    break;
                }
            }
            let size = usize::from_str_radix(String::from_utf8_lossy(&size_line).trim(), 16).expect("chunk size hex");
            let mut chunk = vec![0u8; size + 2];
            self.r.read_exact(&mut chunk).await.expect("chunk");
            if size == 0 {
                self.done = true;
                return false;
            }
            self.pending.extend_from_slice(&chunk[..size]);
            true
        } else {
            let mut buf = vec![0u8; 64 * 1024];
            let want = self.remaining.unwrap_or(buf.len()).min(buf.len());
            if want == 0 {
                self.done = true;
                return false;
            }
            let n = self.r.read(&mut buf[..want]).await.expect("body");
            if n == 0 {
                self.done = true;
                return false;
            }
            if let Some(r) = &mut self.remaining {
                *r -= n;
            }
            self.pending.extend_from_slice(&buf[..n]);
            true
        }
    }

    /// The next `\n`-terminated line of the body (the gateway's stream framing).
    async fn line(&mut self, timeout: Duration) -> Option<String> {
        tokio::time::timeout(timeout, async {
            loop {
                if let Some(i) = self.pending.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = self.pending.drain(..=i).collect();
                    return Some(String::from_utf8_lossy(&line[..line.len() - 1]).into_owned());
                }
                if !self.fill().await {
                    return None;
                }
            }
        })
        .await
        .unwrap_or_else(|_| {
            panic!("no stream line within {timeout:?}; have {:?}", String::from_utf8_lossy(&self.pending))
        })
    }

    async fn finish(mut self) -> HttpResp {
        while self.fill().await {}
        HttpResp { status: self.status, headers: self.headers, body: self.pending }
    }
}

async fn request(port: u16, method: &str, path: &str, body: &str) -> HttpResp {
    tokio::time::timeout(Duration::from_secs(20), open(port, method, path, body).await.finish())
        .await
        .expect("HTTP answer within 20 s")
}

async fn post(port: u16, path: &str, body: &str) -> HttpResp {
    request(port, "POST", path, body).await
}

/// The member's identity and term differ between the two servers.
fn normalize(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for k in ["cluster_id", "member_id", "raft_term"] {
                if m.contains_key(k) {
                    m.insert(k.to_string(), Value::from("<n>"));
                }
            }
            for (_, x) in m.iter_mut() {
                normalize(x);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(normalize),
        _ => {}
    }
}

fn b64(s: &str) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    let mut out = String::new();
    for c in b.chunks(3) {
        let n =
            (u32::from(c[0]) << 16) | (u32::from(*c.get(1).unwrap_or(&0)) << 8) | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// How a step's answers are compared.
#[derive(Clone, Copy, PartialEq)]
enum Cmp {
    /// Status and the whole JSON body (normalized).
    Full,
    /// Status, and for errors the gRPC code (the message is Go's or serde's parser text).
    StatusAndCode,
    /// Status and body text exactly (non-JSON answers).
    Text,
}

/// The gateway requests of the differential test: (path, body, comparison).
fn gateway_steps() -> Vec<(&'static str, String, Cmp)> {
    let k = |s: &str| b64(&format!("/gw/{s}"));
    vec![
        ("/v3/kv/put", format!(r#"{{"key":"{}","value":"{}"}}"#, k("a"), b64("1")), Cmp::Full),
        ("/v3/kv/put", format!(r#"{{"key":"{}","value":"{}","prev_kv":true}}"#, k("a"), b64("2")), Cmp::Full),
        ("/v3/kv/put", format!(r#"{{"key":"{}","value":"{}","prevKv":true}}"#, k("b"), b64("3")), Cmp::Full),
        ("/v3/kv/range", format!(r#"{{"key":"{}"}}"#, k("a")), Cmp::Full),
        // lowerCamelCase names, int64 as number and as string, enums by name and number.
        (
            "/v3/kv/range",
            format!(
                r#"{{"key":"{}","rangeEnd":"{}","limit":1,"sortOrder":"DESCEND","sort_target":"KEY"}}"#,
                k(""),
                k("z")
            ),
            Cmp::Full,
        ),
        (
            "/v3/kv/range",
            format!(r#"{{"key":"{}","range_end":"{}","keys_only":true,"revision":"2"}}"#, k(""), k("z")),
            Cmp::Full,
        ),
        (
            "/v3/kv/range",
            format!(r#"{{"key":"{}","range_end":"{}","count_only":true,"sort_order":1}}"#, k(""), k("z")),
            Cmp::Full,
        ),
        ("/v3/kv/range", format!(r#"{{"key":"{}","unknown_field":1}}"#, k("a")), Cmp::Full),
        // Errors: the gateway's {"error","code","message"} and HTTP status.
        ("/v3/kv/range", r#"{"key":""}"#.to_string(), Cmp::Full),
        ("/v3/kv/range", format!(r#"{{"key":"{}","revision":"100"}}"#, k("a")), Cmp::Full),
        ("/v3/kv/put", r#"{"key":"Zm9v","#.to_string(), Cmp::StatusAndCode),
        ("/v3/kv/range", "[1]".to_string(), Cmp::StatusAndCode),
        ("/v3/kv/range", r#"{"key":"!!"}"#.to_string(), Cmp::StatusAndCode),
        ("/v3/kv/range", String::new(), Cmp::Full),
        (
            "/v3/kv/txn",
            format!(
                r#"{{"compare":[{{"key":"{}","result":"EQUAL","target":"VALUE","value":"{}"}}],"success":[{{"request_put":{{"key":"{}","value":"{}"}}}},{{"request_range":{{"key":"{}"}}}}],"failure":[{{"request_range":{{"key":"{}"}}}}]}}"#,
                k("a"),
                b64("2"),
                k("c"),
                b64("4"),
                k("c"),
                k("a")
            ),
            Cmp::Full,
        ),
        (
            "/v3/kv/txn",
            format!(
                r#"{{"compare":[{{"key":"{}","target":"VERSION","version":"7"}}],"failure":[{{"request_delete_range":{{"key":"{}","prev_kv":true}}}}]}}"#,
                k("a"),
                k("c")
            ),
            Cmp::Full,
        ),
        ("/v3/kv/deleterange", format!(r#"{{"key":"{}","prev_kv":true}}"#, k("b")), Cmp::Full),
        ("/v3/kv/deleterange", format!(r#"{{"key":"{}"}}"#, k("nothing")), Cmp::Full),
        ("/v3/kv/compaction", r#"{"revision":"3","physical":true}"#.to_string(), Cmp::Full),
        ("/v3/kv/range", format!(r#"{{"key":"{}","revision":2}}"#, k("a")), Cmp::Full),
        ("/v3/kv/compaction", r#"{"revision":"2"}"#.to_string(), Cmp::Full),
        ("/v3/lease/grant", r#"{"TTL":60,"ID":"4242"}"#.to_string(), Cmp::Full),
        ("/v3/lease/grant", r#"{"TTL":"60","ID":4242}"#.to_string(), Cmp::Full),
        ("/v3/kv/put", format!(r#"{{"key":"{}","value":"{}","lease":"4242"}}"#, k("l"), b64("x")), Cmp::Full),
        ("/v3/lease/leases", "{}".to_string(), Cmp::Full),
        ("/v3/kv/lease/leases", "{}".to_string(), Cmp::Full),
        ("/v3/lease/keepalive", r#"{"ID":4242}"#.to_string(), Cmp::Full),
        ("/v3/lease/revoke", r#"{"ID":4242}"#.to_string(), Cmp::Full),
        ("/v3/kv/lease/revoke", r#"{"ID":4242}"#.to_string(), Cmp::Full),
        ("/v3/lease/timetolive", r#"{"ID":4242,"keys":true}"#.to_string(), Cmp::Full),
        ("/v3/kv/lease/timetolive", r#"{"ID":4242}"#.to_string(), Cmp::Full),
        ("/v3/lease/keepalive", r#"{"ID":4242} {"ID":4242}"#.to_string(), Cmp::Full),
        ("/v3/kv/range", format!(r#"{{"key":"{}"}}"#, k("l")), Cmp::Full),
        ("/v3/maintenance/alarm", "{}".to_string(), Cmp::Full),
        ("/v3/no/such/path", "{}".to_string(), Cmp::Text),
        ("/nothing", "{}".to_string(), Cmp::Text),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_matches_etcd() {
    let etcd = Server::start(ServerKind::Etcd).await;
    let cairn = Server::start(cairn_tests::harness::subject_kind()).await;
    for (i, (path, body, cmp)) in gateway_steps().into_iter().enumerate() {
        let want = post(etcd.client_port(), path, &body).await;
        let got = post(cairn.client_port(), path, &body).await;
        let ctx = format!(
            "step {i}: POST {path} {body}\n etcd:  {} {}\n cairn: {} {}",
            want.status,
            want.text(),
            got.status,
            got.text()
        );
        assert_eq!(got.status, want.status, "{ctx}");
        match cmp {
            Cmp::Full => {
                let (mut w, mut g) = if path == "/v3/lease/keepalive" {
                    // A stream of {"result":...} lines.
                    let lines = |r: &HttpResp| {
                        Value::Array(r.text().lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect())
                    };
                    (lines(&want), lines(&got))
                } else {
                    (want.json(), got.json())
                };
                normalize(&mut w);
                normalize(&mut g);
                assert_eq!(g, w, "{ctx}");
                assert_eq!(got.header("content-type"), want.header("content-type"), "{ctx}");
            }
            Cmp::StatusAndCode => {
                assert_eq!(got.json()["code"], want.json()["code"], "{ctx}");
                assert!(got.json()["message"].is_string() && got.json()["error"].is_string(), "{ctx}");
            }
            Cmp::Text => assert_eq!(got.text(), want.text(), "{ctx}"),
        }
    }
    // A GET on a gateway path: 405 as grpc-gateway answers it.
    let (w, g) = (
        request(etcd.client_port(), "GET", "/v3/kv/range", "").await,
        request(cairn.client_port(), "GET", "/v3/kv/range", "").await,
    );
    assert_eq!((g.status, g.text()), (w.status, w.text()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_status_and_member_list_have_etcds_shape() {
    let etcd = Server::start(ServerKind::Etcd).await;
    let cairn = Server::start(cairn_tests::harness::subject_kind()).await;
    for path in ["/v3/maintenance/status", "/v3/cluster/member/list"] {
        let w = post(etcd.client_port(), path, "{}").await.json();
        let g = post(cairn.client_port(), path, "{}").await.json();
        let keys = |v: &Value| v.as_object().map(|m| m.keys().cloned().collect::<Vec<_>>()).unwrap_or_default();
        // etcd 3.5.1 has no dbSizeQuota etc.; every field etcd shows must be there.
        for k in keys(&w) {
            assert!(g.get(&k).is_some(), "{path}: cairn lacks {k}: {g}");
        }
        if path.ends_with("list") {
            let (wm, gm) = (&w["members"][0], &g["members"][0]);
            assert_eq!(keys(gm), keys(wm), "{path}: {g} vs {w}");
            assert!(gm["ID"].is_string(), "uint64 as a string: {g}");
            assert_eq!(gm["clientURLs"][0], Value::from(cairn.client_url()));
        } else {
            assert!(g["dbSize"].as_str().and_then(|s| s.parse::<i64>().ok()).is_some_and(|n| n > 0), "{g}");
            assert_eq!(g["leader"], g["header"]["member_id"], "{g}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_watch_streams_like_etcd() {
    let etcd = Server::start(ServerKind::Etcd).await;
    let cairn = Server::start(cairn_tests::harness::subject_kind()).await;
    let mut outputs = Vec::new();
    for s in [&etcd, &cairn] {
        let port = s.client_port();
        post(port, "/v3/kv/put", &format!(r#"{{"key":"{}","value":"{}"}}"#, b64("/w/a"), b64("0"))).await;
        // Two watchers on one stream: the body carries two requests (the client then stops
        // sending; the stream goes on, as etcd's does).
        let body = format!(
            r#"{{"create_request":{{"key":"{}","prev_kv":true}}}}
{{"create_request":{{"key":"{}","range_end":"{}","start_revision":"2","watch_id":"7"}}}}"#,
            b64("/w/a"),
            b64("/w/"),
            b64("/w0")
        );
        let mut conn = open(port, "POST", "/v3/watch", &body).await;
        assert_eq!(conn.status, 200);
        let mut lines = Vec::new();
        // created, created, then the replay of revision 2 for watcher 7.
        for _ in 0..3 {
            lines.push(conn.line(Duration::from_secs(10)).await.expect("a created response"));
        }
        post(port, "/v3/kv/put", &format!(r#"{{"key":"{}","value":"{}"}}"#, b64("/w/a"), b64("1"))).await;
        post(port, "/v3/kv/deleterange", &format!(r#"{{"key":"{}"}}"#, b64("/w/a"))).await;
        while lines.len() < 7 {
            lines.push(conn.line(Duration::from_secs(10)).await.expect("an event"));
        }
        let mut v: Vec<Value> = lines.iter().map(|l| serde_json::from_str(l).expect("JSON line")).collect();
        v.iter_mut().for_each(normalize);
        // Which of the two watchers answers first for one revision is not ordered.
        v[3..].sort_by_key(|x| x.to_string());
        outputs.push(v);
    }
    assert_eq!(outputs[1], outputs[0], "cairn vs etcd watch stream");
    assert!(outputs[1][0]["result"]["created"] == Value::Bool(true), "{:?}", outputs[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_version_livez_and_metrics_listener() {
    let metrics_port = cairn_tests::harness::free_port();
    let metrics_url = format!("http://127.0.0.1:{metrics_port}");
    let cairn =
        Server::start_with_args(cairn_tests::harness::subject_kind(), &["--listen-metrics-urls", &metrics_url]).await;
    let port = cairn.client_port();
    let h = request(port, "GET", "/health", "").await;
    assert_eq!((h.status, h.text().as_str()), (200, r#"{"health":"true","reason":""}"#));
    let h = request(port, "POST", "/health", "").await;
    assert_eq!(h.status, 405);
    let v = request(port, "GET", "/version", "").await.json();
    assert!(v["etcdserver"].as_str().is_some_and(|s| s.starts_with("3.5.")), "{v}");
    assert_eq!(v["etcdcluster"], Value::from("3.5.0"));
    for p in ["/livez", "/readyz"] {
        let r = request(port, "GET", p, "").await;
        assert_eq!((r.status, r.text().as_str()), (200, "ok"), "{p}");
    }
    // The metrics listener: /metrics and /health, nothing else.
    let h = request(metrics_port, "GET", "/health", "").await;
    assert_eq!((h.status, h.text().as_str()), (200, r#"{"health":"true","reason":""}"#));
    let m = request(metrics_port, "GET", "/metrics", "").await;
    assert!(m.text().contains("\netcd_server_has_leader 1\n"), "{}", m.text());
    assert_eq!(request(metrics_port, "POST", "/v3/kv/range", "{}").await.status, 404);
    assert_eq!(request(metrics_port, "GET", "/version", "").await.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_can_be_disabled() {
    let cairn = Server::start_with_args(cairn_tests::harness::subject_kind(), &["--enable-grpc-gateway=false"]).await;
    let r = post(cairn.client_port(), "/v3/kv/range", r#"{"key":"YQ=="}"#).await;
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(request(cairn.client_port(), "GET", "/health", "").await.status, 200);
    // gRPC on the same port is unaffected.
    let mut c = cairn.client().await;
    c.put("a", "1", None).await.expect("gRPC put");
}

/// The value of one sample (`name{labels} value`) in a Prometheus text page.
fn sample(page: &str, series: &str) -> f64 {
    page.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {series} in /metrics"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_have_etcds_names_and_grow() {
    let cairn = Server::start(cairn_tests::harness::subject_kind()).await;
    let port = cairn.client_port();
    let before = request(port, "GET", "/metrics", "").await;
    assert_eq!(before.status, 200);
    assert!(before.header("content-type").is_some_and(|c| c.starts_with("text/plain; version=0.0.4")));
    let before = before.text();
    let mut c = cairn.client().await;
    for i in 0..5 {
        c.put(format!("m{i}"), "v", None).await.expect("put");
    }
    c.get("m0", None).await.expect("get");
    let _ = c.get("", None).await.expect_err("empty key is an error");
    c.delete("m0", None).await.expect("delete");
    let after = request(port, "GET", "/metrics", "").await.text();
    let put_ok = r#"grpc_server_handled_total{grpc_code="OK",grpc_method="Put",grpc_service="etcdserverpb.KV",grpc_type="unary"}"#;
    let range_bad = r#"grpc_server_handled_total{grpc_code="InvalidArgument",grpc_method="Range",grpc_service="etcdserverpb.KV",grpc_type="unary"}"#;
    let put_started =
        r#"grpc_server_started_total{grpc_method="Put",grpc_service="etcdserverpb.KV",grpc_type="unary"}"#;
    let put_sent = r#"grpc_server_msg_sent_total{grpc_method="Put",grpc_service="etcdserverpb.KV",grpc_type="unary"}"#;
    let put_recv =
        r#"grpc_server_msg_received_total{grpc_method="Put",grpc_service="etcdserverpb.KV",grpc_type="unary"}"#;
    assert!(sample(&after, put_ok) >= sample(&before, put_ok) + 5.0);
    assert!(sample(&after, put_started) >= sample(&before, put_started) + 5.0);
    assert!(sample(&after, put_sent) >= 5.0 && sample(&after, put_recv) >= 5.0);
    assert!(sample(&after, range_bad) >= 1.0);
    assert!(sample(&after, "etcd_mvcc_put_total") >= sample(&before, "etcd_mvcc_put_total") + 5.0);
    assert!(sample(&after, "etcd_mvcc_delete_total") >= 1.0);
    assert!(sample(&after, "etcd_mvcc_range_total") >= 1.0);
    assert!(sample(&after, "etcd_debugging_mvcc_keys_total") >= 4.0);
    assert!(sample(&after, "etcd_debugging_mvcc_current_revision") >= 7.0);
    assert_eq!(sample(&after, "etcd_server_has_leader"), 1.0);
    assert_eq!(sample(&after, "etcd_server_is_leader"), 1.0);
    assert!(sample(&after, "etcd_server_leader_changes_seen_total") >= 1.0);
    assert!(sample(&after, "etcd_server_proposals_committed_total") >= 6.0);
    assert!(sample(&after, "etcd_server_proposals_applied_total") >= 6.0);
    assert_eq!(sample(&after, "etcd_server_proposals_pending"), 0.0);
    assert!(sample(&after, "etcd_mvcc_db_total_size_in_bytes") > 0.0);
    assert!(sample(&after, "etcd_mvcc_db_total_size_in_use_in_bytes") > 0.0);
    assert_eq!(sample(&after, "etcd_server_quota_backend_bytes"), 2147483648.0);
    assert!(sample(&after, "etcd_disk_wal_fsync_duration_seconds_count") >= 6.0);
    assert!(sample(&after, r#"etcd_disk_wal_fsync_duration_seconds_bucket{le="+Inf"}"#) >= 6.0);
    assert!(sample(&after, "etcd_disk_backend_commit_duration_seconds_count") >= 6.0);
    assert!(sample(&after, "process_resident_memory_bytes") > 0.0);
    assert!(sample(&after, "process_start_time_seconds") > 1.6e9);
    assert!(sample(&after, "process_open_fds") > 0.0);
    assert!(after.contains("\netcd_server_version{server_version=\"3.5."), "server version");
    assert!(after.contains("\netcd_server_id{server_id=\""), "server id");
    for family in [
        "grpc_server_handled_total counter",
        "etcd_server_has_leader gauge",
        "etcd_disk_wal_fsync_duration_seconds histogram",
        "etcd_disk_backend_commit_duration_seconds histogram",
    ] {
        assert!(after.contains(&format!("# TYPE {family}\n")), "{family}");
    }
    // A watch stream and its watcher show up, and go when the stream ends.
    let mut stream = c.watch("w", None).await.expect("watch");
    let created = stream.message().await.expect("watch response").expect("created");
    assert!(created.created());
    let page = request(port, "GET", "/metrics", "").await.text();
    assert_eq!(sample(&page, "etcd_debugging_mvcc_watcher_total"), 1.0);
    assert_eq!(sample(&page, "etcd_debugging_mvcc_watch_stream_total"), 1.0);
    let started =
        r#"grpc_server_started_total{grpc_method="Watch",grpc_service="etcdserverpb.Watch",grpc_type="bidi_stream"}"#;
    assert_eq!(sample(&page, started), 1.0);
    drop(stream);
    drop(c);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let page = request(port, "GET", "/metrics", "").await.text();
        if sample(&page, "etcd_debugging_mvcc_watch_stream_total") == 0.0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the watch stream was not closed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs tests/py/<script> with the venv scripts/install-test-deps.sh makes.
fn run_python(script: &str, port: u16, prefix: &str) -> String {
    let root = repo_root();
    let python = root.join(".deps/py/bin/python");
    assert!(python.is_file(), "{} is missing: run scripts/install-test-deps.sh", python.display());
    let out = std::process::Command::new(&python)
        .arg(root.join("tests/py").join(script))
        .args(["127.0.0.1", &port.to_string(), prefix])
        .env("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{script} failed: {}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_etcd3_and_etcd3gw_clients() {
    let cairn = Server::start(cairn_tests::harness::subject_kind()).await;
    let port = cairn.client_port();
    let grpc =
        tokio::task::spawn_blocking(move || run_python("etcd3_client.py", port, "/py-grpc/")).await.expect("join");
    for op in ["put/get", "get_prefix", "delete", "transaction", "lease", "watch", "status"] {
        assert!(grpc.lines().any(|l| l == format!("ok {op}")), "etcd3: no `ok {op}` in\n{grpc}");
    }
    let gw = tokio::task::spawn_blocking(move || run_python("etcd3gw_client.py", port, "/py-gw/")).await.expect("join");
    for op in
        ["put/get", "get_prefix", "delete", "transaction", "lease", "create/replace/delete_prefix", "watch", "status"]
    {
        assert!(gw.lines().any(|l| l == format!("ok {op}")), "etcd3gw: no `ok {op}` in\n{gw}");
    }
}

/// The gateway's Auth, Lock and Election paths answer as etcd's: same statuses and JSON
/// (tokens and lease-derived keys compared by shape), errors with the same code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_auth_lock_and_election_match_etcd() {
    let args = ["--bcrypt-cost", "4"];
    let etcd = Server::start_with_args(ServerKind::Etcd, &args).await;
    let cairn = Server::start_with_args(cairn_tests::harness::subject_kind(), &args).await;
    let name = b64("gw-lock");
    let steps: Vec<(&str, String, bool)> = vec![
        ("/v3/auth/status", "{}".into(), true),
        ("/v3/auth/user/add", r#"{"name":"root","password":"pw"}"#.into(), true),
        ("/v3/auth/user/add", r#"{"name":"root","password":"pw"}"#.into(), true),
        ("/v3/auth/role/add", r#"{"name":"root"}"#.into(), true),
        ("/v3/auth/user/grant", r#"{"user":"root","role":"root"}"#.into(), true),
        ("/v3/auth/role/add", r#"{"name":"reader"}"#.into(), true),
        (
            "/v3/auth/role/grant",
            format!(
                r#"{{"name":"reader","perm":{{"permType":"READ","key":"{}","range_end":"{}"}}}}"#,
                b64("a"),
                b64("b")
            ),
            true,
        ),
        ("/v3/auth/role/get", r#"{"role":"reader"}"#.into(), true),
        ("/v3/auth/role/list", "{}".into(), true),
        ("/v3/auth/user/get", r#"{"name":"root"}"#.into(), true),
        ("/v3/auth/user/list", "{}".into(), true),
        (
            "/v3/auth/role/revoke",
            format!(r#"{{"role":"reader","key":"{}","range_end":"{}"}}"#, b64("x"), b64("y")),
            true,
        ),
        ("/v3/election/leader", format!(r#"{{"name":"{name}"}}"#), true),
        ("/v3/lock/lock", format!(r#"{{"name":"{name}"}}"#), false),
        ("/v3/election/campaign", format!(r#"{{"name":"{}","value":"{}"}}"#, b64("gw-elect"), b64("v")), false),
        ("/v3/election/leader", format!(r#"{{"name":"{}"}}"#, b64("gw-elect")), false),
        ("/v3/auth/enable", "{}".into(), true),
        ("/v3/auth/authenticate", r#"{"name":"root","password":"wrong"}"#.into(), true),
        ("/v3/auth/authenticate", r#"{"name":"root","password":"pw"}"#.into(), false),
        ("/v3/kv/range", format!(r#"{{"key":"{}"}}"#, b64("a")), true),
        ("/v3/auth/status", "{}".into(), true),
    ];
    let shape = |v: &Value| -> Value {
        fn walk(v: &Value) -> Value {
            match v {
                Value::Object(m) => Value::Object(m.iter().map(|(k, x)| (k.clone(), walk(x))).collect()),
                Value::Array(a) => Value::Array(a.iter().map(walk).collect()),
                Value::String(_) => Value::from("<s>"),
                other => other.clone(),
            }
        }
        walk(v)
    };
    for (i, (path, body, full)) in steps.into_iter().enumerate() {
        let want = post(etcd.client_port(), path, &body).await;
        let got = post(cairn.client_port(), path, &body).await;
        let ctx = format!(
            "step {i}: POST {path} {body}\n etcd:  {} {}\n cairn: {} {}",
            want.status,
            want.text(),
            got.status,
            got.text()
        );
        assert_eq!(got.status, want.status, "{ctx}");
        let (mut w, mut g) = (want.json(), got.json());
        normalize(&mut w);
        normalize(&mut g);
        if full {
            assert_eq!(g, w, "{ctx}");
        } else {
            assert_eq!(shape(&g), shape(&w), "{ctx}");
        }
    }
}

/// A txn without puts or deletes is served like a Range (etcd's read-only txn): no
/// proposal is committed and no revision used, the answer is the same as through raft
/// (compares, both branches, nesting, serializable ranges), and a write txn is a proposal.
/// Runs against etcd too (`CAIRN_DIFF_AGAINST=etcd`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_txns_are_not_proposals() {
    use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp, TxnOpResponse};
    let server = Server::start(cairn_tests::harness::subject_kind()).await;
    let port = server.client_port();
    let mut c = server.client().await;
    c.put("a", "1", None).await.expect("put a");
    let rev = c.put("b", "2", None).await.expect("put b").header().expect("header").revision();
    let committed = |page: &str| sample(page, "etcd_server_proposals_committed_total");
    let before = committed(&request(port, "GET", "/metrics", "").await.text());
    let values = |r: &etcd_client::TxnResponse| -> Vec<String> {
        let mut out = Vec::new();
        for op in r.op_responses() {
            match op {
                TxnOpResponse::Get(g) => out.extend(g.kvs().iter().map(|kv| kv.value_str().unwrap_or("?").to_string())),
                TxnOpResponse::Txn(t) => out.push(format!("txn(succeeded={})", t.succeeded())),
                _ => out.push("write".to_string()),
            }
        }
        out
    };
    for i in 0..10 {
        let want = if i % 2 == 0 { "1" } else { "x" };
        let t = Txn::new()
            .when([Compare::value("a", CompareOp::Equal, want)])
            .and_then([TxnOp::get("a", None), TxnOp::get("b", Some(GetOptions::new().with_serializable()))])
            .or_else([TxnOp::get("b", Some(GetOptions::new().with_serializable()))]);
        let r = c.txn(t).await.expect("read-only txn");
        assert_eq!(r.header().expect("header").revision(), rev, "the header has the current revision");
        if i % 2 == 0 {
            assert!(r.succeeded());
            assert_eq!(values(&r), vec!["1".to_string(), "2".to_string()]);
        } else {
            assert!(!r.succeeded());
            assert_eq!(values(&r), vec!["2".to_string()]);
        }
    }
    // An empty txn and a compare-only one are read-only too.
    let r = c.txn(Txn::new()).await.expect("empty txn");
    assert!(r.succeeded() && r.op_responses().is_empty());
    let r = c.txn(Txn::new().when([Compare::mod_revision("a", CompareOp::Less, 2)])).await.expect("compare only");
    assert!(!r.succeeded());
    // A range at a future revision inside a read-only txn fails as it does through raft.
    let e = c
        .txn(Txn::new().and_then([TxnOp::get("a", Some(GetOptions::new().with_revision(rev + 100)))]))
        .await
        .expect_err("future revision");
    assert!(e.to_string().contains("mvcc: required revision is a future revision"), "{e}");
    let after = committed(&request(port, "GET", "/metrics", "").await.text());
    assert_eq!(after, before, "read-only txns committed no proposal");
    // A nested txn makes a txn a proposal even if it only reads (as in etcd), and it uses
    // no revision either.
    let nested = Txn::new()
        .when([Compare::version("b", CompareOp::Greater, 0)])
        .and_then([TxnOp::txn(Txn::new().and_then([TxnOp::get("b", None)]))]);
    let r = c.txn(nested).await.expect("nested read-only txn");
    assert_eq!(r.header().expect("header").revision(), rev);
    assert_eq!(values(&r), vec!["txn(succeeded=true)".to_string()]);
    let after_nested = committed(&request(port, "GET", "/metrics", "").await.text());
    assert!(after_nested > after, "a nested txn is a proposal ({after} -> {after_nested})");
    let after = after_nested;
    // No revision was used: the next write gets rev + 1; a write txn is a proposal.
    let r = c.txn(Txn::new().and_then([TxnOp::put("c", "3", None), TxnOp::get("a", None)])).await.expect("write txn");
    assert_eq!(r.header().expect("header").revision(), rev + 1);
    let later = committed(&request(port, "GET", "/metrics", "").await.text());
    assert!(later > after, "a write txn is a proposal ({after} -> {later})");
}
