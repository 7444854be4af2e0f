//! Multi-member clusters, black box: the same scenario runs on a 3-member etcd 3.5.1 cluster
//! and on a 3-member cluster of the server under test (Cairn, or etcd again with
//! `CAIRN_DIFF_AGAINST=etcd`), and the normalised transcripts must be equal. Member ids,
//! ports, lease ids and which member happens to lead differ between clusters, so transcripts
//! name members by role ("leader", "follower F") and ids by member name.
//!
//! - `require_leader_watch_is_canceled_without_leader`: clientv3's `WithRequireLeader`
//!   (`hasleader: true` metadata) on a follower that loses its quorum (the other two are
//!   SIGSTOPped): open streams, new streams and a unary call, then recovery.
//! - `writes_on_any_member_are_read_everywhere`: read-your-writes across members, one
//!   revision sequence, a watch on another member sees every write once, in order.
//! - `leader_kill9_then_new_leader_and_catch_up`: kill -9 of the leader, writes go on, the
//!   old leader restarts and catches up (HashKV equal at one revision on all members).
//! - `member_list_matches_etcd`: `etcdctl member list` (json and simple) on every member.
//! - `lagging_member_catches_up_through_snapshot`: a stopped member misses thousands of
//!   writes under `--snapshot-count 100` and catches up after restart.
//! - `follower_lease_keepalive_and_timetolive`: lease calls through followers.
//!
//! The two clusters of a test run one after the other, and the tests of this module one at a
//! time (`ONE_CLUSTER_AT_A_TIME`): three members with a 500 ms election timeout on a small
//! machine should not see elections caused by CPU starvation.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cairn_proto::etcdserverpb::cluster_client::ClusterClient;
use cairn_proto::etcdserverpb::kv_client::KvClient;
use cairn_proto::etcdserverpb::lease_client::LeaseClient;
use cairn_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use cairn_proto::etcdserverpb::watch_client::WatchClient;
use cairn_proto::etcdserverpb::{
    self as pb, compare, request_op, response_op, watch_request, Compare, DeleteRangeRequest, HashKvRequest,
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseRevokeRequest, LeaseTimeToLiveRequest,
    MemberListRequest, PutRequest, RangeRequest, RequestOp, TxnRequest, WatchCreateRequest, WatchRequest,
    WatchResponse,
};
use cairn_proto::mvccpb;
use cairn_tests::harness::{etcdctl, subject_kind, Cluster, ClusterOptions, ServerKind};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

/// Clusters of this module run one at a time (see the module doc).
static ONE_CLUSTER_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The metadata key and value of clientv3's `WithRequireLeader` (etcd's
/// `rpctypes.MetadataRequireLeaderKey` / `MetadataHasLeader`).
const HAS_LEADER: (&str, &str) = ("hasleader", "true");
/// How long a member without a leader is watched for what its streams do.
const NO_LEADER_WINDOW: Duration = Duration::from_secs(10);
/// How long to wait for one expected response on a stream.
const WAIT: Duration = Duration::from_secs(10);
/// How long writes are retried while a new leader is elected.
const FAILOVER: Duration = Duration::from_secs(15);

/// Runs `scenario` on a fresh etcd cluster, then on a fresh cluster of the server under test,
/// and compares the transcripts line by line. Returns both transcripts' (equal) lines.
async fn differential<F>(name: &str, options: ClusterOptions, scenario: F) -> Vec<String>
where
    F: AsyncFn(&mut Cluster) -> Vec<String>,
{
    let _one = ONE_CLUSTER_AT_A_TIME.lock().await;
    let subject = subject_kind();
    let _ = ServerKind::Etcd.binary();
    let _ = subject.binary();
    let want = {
        let mut etcd = Cluster::start_with(ServerKind::Etcd, options.clone()).await;
        scenario(&mut etcd).await
    };
    if std::env::var("CAIRN_DIFF_PRINT").is_ok_and(|v| v == "1") {
        println!("{name} (etcd):\n{}", want.join("\n"));
    }
    let got = {
        let mut cluster = Cluster::start_with(subject, options).await;
        scenario(&mut cluster).await
    };
    for (i, (w, g)) in want.iter().zip(got.iter()).enumerate() {
        assert_eq!(
            g,
            w,
            "{name}: step {i} differs from etcd\netcd transcript:\n{}\n\n{subject} transcript:\n{}",
            want.join("\n"),
            got.join("\n")
        );
    }
    assert_eq!(got.len(), want.len(), "{name}: transcript lengths differ\netcd:\n{}\n\n{subject}:\n{}", want.join("\n"), got.join("\n"));
    want
}

// ================================================================ small helpers

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn status_text(s: &Status) -> String {
    format!("{:?} {:?}", s.code(), s.message())
}

fn rev(h: &Option<pb::ResponseHeader>) -> i64 {
    h.as_ref().map_or(-1, |h| h.revision)
}

/// `request` with the `hasleader: true` metadata if `has_leader`.
fn with_leader<T>(message: T, has_leader: bool) -> Request<T> {
    let mut r = Request::new(message);
    if has_leader {
        r.metadata_mut().insert(HAS_LEADER.0, HAS_LEADER.1.parse().expect("ASCII metadata"));
    }
    r
}

fn range(key: &str, serializable: bool) -> RangeRequest {
    RangeRequest { key: Bytes::from(key.to_string()), serializable, ..Default::default() }
}

fn prefix_range(prefix: &str, serializable: bool, count_only: bool) -> RangeRequest {
    let mut end = prefix.as_bytes().to_vec();
    *end.last_mut().expect("a non-empty prefix") += 1;
    RangeRequest {
        key: Bytes::from(prefix.to_string()),
        range_end: Bytes::from(end),
        serializable,
        count_only,
        ..Default::default()
    }
}

fn put_req(key: &str, value: &str, lease: i64) -> PutRequest {
    PutRequest { key: Bytes::from(key.to_string()), value: Bytes::from(value.to_string()), lease, ..Default::default() }
}

fn create_watch(key: &str, start_revision: i64, all_keys: bool) -> WatchRequest {
    WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(WatchCreateRequest {
            key: Bytes::from(if all_keys { vec![0u8] } else { key.as_bytes().to_vec() }),
            range_end: if all_keys { Bytes::from(vec![0u8]) } else { Bytes::new() },
            start_revision,
            ..Default::default()
        })),
    }
}

fn show_event(e: &mvccpb::Event) -> String {
    let kv = e.kv.clone().unwrap_or_default();
    let kind = if e.r#type == mvccpb::event::EventType::Delete as i32 { "DELETE" } else { "PUT" };
    format!("{kind} {}={} @{}", text(&kv.key), text(&kv.value), kv.mod_revision)
}

fn show_watch_response(r: &WatchResponse) -> String {
    if r.created {
        return "created".to_string();
    }
    if r.canceled {
        return format!("canceled reason={:?} compact_revision={}", r.cancel_reason, r.compact_revision);
    }
    if r.events.is_empty() {
        return "progress".to_string();
    }
    format!("events [{}]", r.events.iter().map(show_event).collect::<Vec<_>>().join(", "))
}

fn show_keepalive(r: &LeaseKeepAliveResponse) -> String {
    format!("keepalive ttl={}", r.ttl)
}

/// A coarse bucket for how long after `since` something happened: etcd's timings depend on
/// the election timeout and scheduling, the transcript only on the bucket.
fn bucket(elapsed: Duration) -> &'static str {
    if elapsed < Duration::from_secs(1) {
        "within 1s"
    } else if elapsed < NO_LEADER_WINDOW {
        "after 1s, within 10s"
    } else {
        "after 10s"
    }
}

/// Polls `f` until it returns `Some`, for at most `limit`; panics with `what` otherwise.
async fn until<T, F, Fut>(what: &str, limit: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(t) = f().await {
            return t;
        }
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ================================================================ recorded raw streams

/// One thing a server stream yielded, with when it arrived.
enum Item<T> {
    Message(T),
    /// The stream ended with this gRPC status.
    Failed(Status),
    /// The stream ended with status OK.
    Ended,
}

/// A raw bidirectional stream whose responses a background task records as they arrive, so
/// that what happened when can be read afterwards. The request sender is kept open: a closed
/// request stream would be a client-side end.
struct Recorded<Req, Resp> {
    requests: mpsc::Sender<Req>,
    items: mpsc::UnboundedReceiver<(Instant, Item<Resp>)>,
    /// Set once the stream has ended (failed or OK).
    ended: bool,
}

impl<Req, Resp: Send + 'static> Recorded<Req, Resp> {
    fn spawn(requests: mpsc::Sender<Req>, mut stream: tonic::Streaming<Resp>) -> Self {
        let (tx, items) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let item = match stream.message().await {
                    Ok(Some(m)) => Item::Message(m),
                    Ok(None) => Item::Ended,
                    Err(s) => Item::Failed(s),
                };
                let last = !matches!(item, Item::Message(_));
                if tx.send((Instant::now(), item)).is_err() || last {
                    return;
                }
            }
        });
        Recorded { requests, items, ended: false }
    }

    /// The next item within `limit`, or `None`.
    async fn next_within(&mut self, limit: Duration) -> Option<(Instant, Item<Resp>)> {
        if self.ended {
            return None;
        }
        let item = tokio::time::timeout(limit, self.items.recv()).await.ok().flatten();
        if matches!(item, Some((_, Item::Failed(_) | Item::Ended))) {
            self.ended = true;
        }
        item
    }

    /// Every item that has arrived so far, without waiting.
    fn drain(&mut self) -> Vec<(Instant, Item<Resp>)> {
        let mut out = Vec::new();
        while let Ok(item) = self.items.try_recv() {
            if !matches!(item.1, Item::Message(_)) {
                self.ended = true;
            }
            out.push(item);
        }
        out
    }
}

type RawWatch = Recorded<WatchRequest, WatchResponse>;
type RawKeepAlive = Recorded<LeaseKeepAliveRequest, LeaseKeepAliveResponse>;

/// Opens a Watch stream on `ch` and sends `first` on it. etcd sends the response headers with
/// its first message, so the call is awaited after the first request is queued. `Err` is the
/// status the server answered instead of opening the stream (or a timeout, as Unknown).
async fn open_watch(ch: &Channel, has_leader: bool, first: WatchRequest) -> Result<RawWatch, Status> {
    let (tx, rx) = mpsc::channel(16);
    tx.send(first).await.expect("the request stream is open");
    let mut client = WatchClient::new(ch.clone());
    let call = client.watch(with_leader(ReceiverStream::new(rx), has_leader));
    match tokio::time::timeout(WAIT, call).await {
        Ok(Ok(stream)) => Ok(Recorded::spawn(tx, stream.into_inner())),
        Ok(Err(s)) => Err(s),
        Err(_) => Err(Status::unknown("cairn-tests: no response headers within 10s")),
    }
}

/// Like [`open_watch`] for LeaseKeepAlive, with one keep-alive of `lease` sent first.
async fn open_keepalive(ch: &Channel, has_leader: bool, lease: i64) -> Result<RawKeepAlive, Status> {
    let (tx, rx) = mpsc::channel(16);
    tx.send(LeaseKeepAliveRequest { id: lease }).await.expect("the request stream is open");
    let mut client = LeaseClient::new(ch.clone());
    let call = client.lease_keep_alive(with_leader(ReceiverStream::new(rx), has_leader));
    match tokio::time::timeout(WAIT, call).await {
        Ok(Ok(stream)) => Ok(Recorded::spawn(tx, stream.into_inner())),
        Ok(Err(s)) => Err(s),
        Err(_) => Err(Status::unknown("cairn-tests: no response headers within 10s")),
    }
}

/// Describes the items of a stream; times are bucketed relative to `since`.
fn describe<T>(items: &[(Instant, Item<T>)], since: Instant, show: impl Fn(&T) -> String) -> Vec<String> {
    items
        .iter()
        .map(|(at, item)| {
            let when = bucket(at.saturating_duration_since(since));
            match item {
                Item::Message(m) => format!("{} ({when})", show(m)),
                Item::Failed(s) => format!("stream failed: {} ({when})", status_text(s)),
                Item::Ended => format!("stream ended OK ({when})"),
            }
        })
        .collect()
}

/// The next message of `s` within [`WAIT`], described; panics on an end or a timeout.
async fn next_message<Req, Resp: Send + 'static>(
    s: &mut Recorded<Req, Resp>,
    what: &str,
    show: impl Fn(&Resp) -> String,
) -> String {
    match s.next_within(WAIT).await {
        Some((_, Item::Message(m))) => show(&m),
        Some((_, Item::Failed(st))) => panic!("{what}: stream failed: {}", status_text(&st)),
        Some((_, Item::Ended)) => panic!("{what}: stream ended"),
        None => panic!("{what}: nothing within {WAIT:?}"),
    }
}

/// Describes the result of opening a stream: the error the server answered, or the first
/// message (or what happened instead) within [`WAIT`], each with a time bucket from `since`.
async fn describe_open<Req, Resp: Send + 'static>(
    opened: Result<Recorded<Req, Resp>, Status>,
    since: Instant,
    show: impl Fn(&Resp) -> String,
) -> String {
    match opened {
        Err(s) => format!("refused: {} ({})", status_text(&s), bucket(since.elapsed())),
        Ok(mut s) => match s.next_within(WAIT).await {
            Some(item) => format!("opened, then {}", describe(&[item], since, show).join("")),
            None => format!("opened, nothing within {WAIT:?}"),
        },
    }
}

// ================================================================ a. hasleader

/// The etcd facts the `hasleader` transcript must show (checked on the etcd run).
fn assert_etcd_has_leader_facts(t: &[String]) {
    let line = |prefix: &str| -> &str {
        t.iter()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line {prefix:?} in\n{}", t.join("\n")))
            .as_str()
    };
    let no_leader = "Unavailable \"etcdserver: no leader\"";
    assert_eq!(
        line("no leader: hasleader watch:"),
        format!("no leader: hasleader watch: [stream failed: {no_leader} (after 1s, within 10s)]")
    );
    assert_eq!(
        line("no leader: hasleader keepalive:"),
        format!("no leader: hasleader keepalive: [stream failed: {no_leader} (after 1s, within 10s)]")
    );
    assert_eq!(line("no leader: plain watch:"), "no leader: plain watch: [] (still open)");
    assert_eq!(line("new hasleader watch:"), format!("new hasleader watch: refused: {no_leader} (within 1s)"));
    assert_eq!(line("new hasleader keepalive:"), format!("new hasleader keepalive: refused: {no_leader} (within 1s)"));
    assert_eq!(line("hasleader serializable range:"), format!("hasleader serializable range: {no_leader}"));
}

/// On follower F, watch streams with and without `hasleader` see a put; then the two other
/// members are SIGSTOPped, so F has no leader: what each open stream does (etcd cancels
/// `hasleader` streams with Unavailable "etcdserver: no leader" after three election
/// timeouts without a leader, and leaves the others open), what new streams and a unary call
/// with `hasleader` get (refused at once), then recovery after SIGCONT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_leader_watch_is_canceled_without_leader() {
    let t = differential("require_leader_watch", ClusterOptions::default(), async |c: &mut Cluster| {
        let mut t = Vec::new();
        let leader = c.leader().await;
        let others = c.others(leader);
        let (f, other) = (others[0], others[1]);
        let (ch_f, ch_leader) = (c.channel(f).await, c.channel(leader).await);
        let lease = LeaseClient::new(ch_leader.clone())
            .lease_grant(LeaseGrantRequest { ttl: 60, id: 0 })
            .await
            .expect("lease grant")
            .into_inner()
            .id;

        let mut w_leader = open_watch(&ch_f, true, create_watch("k", 0, false)).await.expect("hasleader watch");
        let mut w_plain = open_watch(&ch_f, false, create_watch("k", 0, false)).await.expect("plain watch");
        t.push(format!("hasleader watch: {}", next_message(&mut w_leader, "hasleader watch", show_watch_response).await));
        t.push(format!("plain watch: {}", next_message(&mut w_plain, "plain watch", show_watch_response).await));
        let mut ka_leader = open_keepalive(&ch_f, true, lease).await.expect("hasleader keepalive");
        t.push(format!("hasleader keepalive: {}", next_message(&mut ka_leader, "keepalive", show_keepalive).await));

        let put = KvClient::new(ch_leader.clone()).put(put_req("k", "v1", 0)).await.expect("put k=v1").into_inner();
        t.push(format!("put k=v1 through the leader: revision {}", rev(&put.header)));
        t.push(format!("hasleader watch: {}", next_message(&mut w_leader, "hasleader watch", show_watch_response).await));
        t.push(format!("plain watch: {}", next_message(&mut w_plain, "plain watch", show_watch_response).await));

        // F loses its leader: the other two members stop answering.
        c.pause(leader);
        c.pause(other);
        let paused_at = Instant::now();
        // Watch until both hasleader streams have ended, for at most the window.
        let deadline = paused_at + NO_LEADER_WINDOW;
        let (mut seen_w, mut seen_ka) = (Vec::new(), Vec::new());
        while !(w_leader.ended && ka_leader.ended) && Instant::now() < deadline {
            let left = deadline.saturating_duration_since(Instant::now()).min(Duration::from_millis(100));
            if w_leader.ended {
                tokio::time::sleep(left).await;
            } else if let Some(item) = w_leader.next_within(left).await {
                seen_w.push(item);
            }
            seen_ka.extend(ka_leader.drain());
        }
        seen_ka.extend(ka_leader.drain());
        // The stream without hasleader gets one more second to show anything.
        let mut seen_plain = w_plain.drain();
        seen_plain.extend(w_plain.next_within(Duration::from_secs(1)).await);
        let open = |ended: bool| if ended { "" } else { " (still open)" };
        // The exact timings, for whoever reads the output (the transcript has buckets only).
        let ends = |kind: &str, at: Option<Instant>| match at {
            Some(at) => println!("[{}] the hasleader {kind} ended {:?} after F lost its peers", c.kind(), at - paused_at),
            None => println!("[{}] the hasleader {kind} did not end within {NO_LEADER_WINDOW:?}", c.kind()),
        };
        ends("watch", seen_w.iter().find(|(_, i)| !matches!(i, Item::Message(_))).map(|(at, _)| *at));
        ends("keepalive", seen_ka.iter().find(|(_, i)| !matches!(i, Item::Message(_))).map(|(at, _)| *at));
        t.push(format!(
            "no leader: hasleader watch: [{}]{}",
            describe(&seen_w, paused_at, show_watch_response).join(", "),
            open(w_leader.ended)
        ));
        t.push(format!(
            "no leader: hasleader keepalive: [{}]{}",
            describe(&seen_ka, paused_at, show_keepalive).join(", "),
            open(ka_leader.ended)
        ));
        t.push(format!(
            "no leader: plain watch: [{}]{}",
            describe(&seen_plain, paused_at, show_watch_response).join(", "),
            open(w_plain.ended)
        ));

        // New calls on F while it has no leader.
        let since = Instant::now();
        let opened = open_watch(&ch_f, true, create_watch("k", 0, false)).await;
        t.push(format!("new hasleader watch: {}", describe_open(opened, since, show_watch_response).await));
        let since = Instant::now();
        let opened = open_watch(&ch_f, false, create_watch("k", 0, false)).await;
        t.push(format!("new plain watch: {}", describe_open(opened, since, show_watch_response).await));
        let since = Instant::now();
        let opened = open_keepalive(&ch_f, true, lease).await;
        t.push(format!("new hasleader keepalive: {}", describe_open(opened, since, show_keepalive).await));
        let mut kv_f = KvClient::new(ch_f.clone());
        let r = kv_f.range(with_leader(range("k", true), true)).await;
        t.push(format!(
            "hasleader serializable range: {}",
            match r {
                Ok(r) => format!("ok count={}", r.into_inner().count),
                Err(s) => status_text(&s),
            }
        ));
        let r = kv_f.range(with_leader(range("k", true), false)).await;
        t.push(format!(
            "plain serializable range: {}",
            match r {
                Ok(r) => format!("ok count={}", r.into_inner().count),
                Err(s) => status_text(&s),
            }
        ));

        // Recovery: the stream without hasleader is still usable.
        c.resume(leader);
        c.resume(other);
        let leader = c.leader().await;
        let writer = c.others(f)[0];
        // Not in the transcript: whether F wins an election after SIGCONT is a race.
        println!("[{}] after SIGCONT the leader is {}", c.kind(), if leader == f { "F" } else { "another member" });
        let put = KvClient::new(c.channel(writer).await).put(put_req("k", "v2", 0)).await.expect("put k=v2").into_inner();
        t.push(format!("put k=v2 through a member other than F: revision {}", rev(&put.header)));
        t.push(format!("plain watch: {}", next_message(&mut w_plain, "plain watch", show_watch_response).await));
        let opened = open_watch(&ch_f, true, create_watch("k", 0, false)).await;
        t.push(format!("hasleader watch after recovery: {}", describe_open(opened, Instant::now(), show_watch_response).await));
        t
    })
    .await;
    assert_etcd_has_leader_facts(&t);
}
