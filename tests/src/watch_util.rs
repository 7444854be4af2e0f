//! Watch test support: normalised watch responses, a watch stream read by a background task
//! (with waits bounded by a deadline, never fixed sleeps), a differential runner that drives
//! the same watch scenario against real etcd and the server under test, and `etcdctl watch`
//! as a long-running child process.
//!
//! - [`WResp`] / [`WEvent`]: every field of `etcdserverpb.WatchResponse` the client exposes
//!   (header, watch_id, created, canceled, compact_revision, cancel_reason, events with type,
//!   kv and prev_kv), ids and terms normalised by [`Normalizer`].
//! - [`Recorder`]: one gRPC Watch stream. A task reads it into a queue; [`Recorder::until`]
//!   waits for a condition with a deadline. [`Recorder::open_stalled`] opens a stream that
//!   nobody reads until [`Recorder::resume`] (a stalled client, for back-pressure tests).
//! - [`WatchRun`] and [`run_watch_diff`]: a scenario (an async function over a [`WatchRun`])
//!   runs against a fresh etcd 3.5.1 and a fresh server under test; the transcripts (writes
//!   with their revisions, notes, and every response of every stream grouped by watch id)
//!   must be equal.
//! - [`EtcdctlWatch`]: `etcdctl watch ...` as a child process; stdout lines collected as they
//!   come, stdin kept open for interactive mode (`-i`).

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::process::Stdio;
use std::time::Duration;

use etcd_client::{Client, DeleteOptions, EventType, PutOptions, Txn, WatchOptions, WatchRequestSender, WatchResponse};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::diff::{line_diff, Header, Kv, Normalizer};
use crate::harness::{etcdctl_bin, subject_kind, Server, ServerKind, ServerOptions};

/// How long a wait for an expected response may take before it counts as missing. Generous:
/// the test machine is small and shared, and etcd syncs lagging watchers every 100 ms.
pub const WAIT: Duration = Duration::from_secs(10);
/// How long a stream must stay silent to count as "nothing more arrives".
pub const QUIET: Duration = Duration::from_millis(300);

// ------------------------------------------------------------------ normalised responses

/// One event of a watch response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WEvent {
    pub kind: EventType,
    pub kv: Option<Kv>,
    pub prev_kv: Option<Kv>,
}

/// One watch response, normalised (see the module doc).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WResp {
    pub header: Option<Header>,
    pub watch_id: i64,
    pub created: bool,
    pub canceled: bool,
    pub compact_revision: i64,
    pub cancel_reason: String,
    /// etcd's `fragment` flag (set on every part of a fragmented response but the last).
    pub fragment: bool,
    pub events: Vec<WEvent>,
}

impl WResp {
    pub fn from_client(norm: &mut Normalizer, r: &WatchResponse) -> WResp {
        WResp {
            header: norm.header(r.header()),
            watch_id: r.watch_id(),
            created: r.created(),
            canceled: r.canceled(),
            compact_revision: r.compact_revision(),
            cancel_reason: r.cancel_reason().to_string(),
            fragment: fragment_flag(r),
            events: r
                .events()
                .iter()
                .map(|e| WEvent {
                    kind: e.event_type(),
                    kv: e.kv().map(Normalizer::kv),
                    prev_kv: e.prev_kv().map(Normalizer::kv),
                })
                .collect(),
        }
    }
}

impl fmt::Display for WResp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.header {
            Some(h) => write!(f, "[{h}]")?,
            None => write!(f, "[no header]")?,
        }
        write!(f, " id={}", self.watch_id)?;
        if self.created {
            write!(f, " created")?;
        }
        if self.canceled {
            write!(f, " canceled")?;
        }
        if self.compact_revision != 0 {
            write!(f, " compact_revision={}", self.compact_revision)?;
        }
        if !self.cancel_reason.is_empty() {
            write!(f, " cancel_reason={:?}", self.cancel_reason)?;
        }
        if self.fragment {
            write!(f, " fragment")?;
        }
        if self.events.is_empty() && !self.created && !self.canceled {
            write!(f, " (no events: progress)")?;
        }
        for e in &self.events {
            let kind = match e.kind {
                EventType::Put => "PUT",
                EventType::Delete => "DELETE",
            };
            match &e.kv {
                Some(kv) => write!(f, "\n  {kind} {}", ShowKv(kv))?,
                None => write!(f, "\n  {kind} (no kv)")?,
            }
            if let Some(p) = &e.prev_kv {
                write!(f, "\n    prev: {}", ShowKv(p))?;
            }
        }
        Ok(())
    }
}

/// The `fragment` flag of a response. etcd-client has no accessor for it, so it is read from
/// the start of the response's Debug rendering (which stops before the events).
pub fn fragment_flag(r: &WatchResponse) -> bool {
    struct Head(String);
    impl fmt::Write for Head {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            self.0.push_str(s);
            if self.0.contains("events: ") {
                Err(fmt::Error)
            } else {
                Ok(())
            }
        }
    }
    let mut head = Head(String::new());
    let _ = write!(head, "{r:?}");
    head.0.contains("fragment: true")
}

/// A key-value pair as the KV differential shows it, with values over 64 bytes abbreviated
/// to their length and a hash.
struct ShowKv<'a>(&'a Kv);

impl fmt::Display for ShowKv<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kv = self.0;
        if kv.value.0.len() <= 64 {
            return write!(f, "{kv}");
        }
        let hash =
            kv.value.0.iter().fold(0xcbf29ce484222325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100000001b3));
        write!(
            f,
            "{}=<{} bytes, fnv {hash:016x}> create={} mod={} version={} lease={}",
            kv.key,
            kv.value.0.len(),
            kv.create_revision,
            kv.mod_revision,
            kv.version,
            kv.lease
        )
    }
}

/// (type, key, mod_revision) of every event of `watch_id` in `responses`, in order.
pub fn events_of(responses: &[WatchResponse], watch_id: i64) -> Vec<(EventType, Vec<u8>, i64)> {
    responses
        .iter()
        .filter(|r| r.watch_id() == watch_id)
        .flat_map(|r| r.events().iter())
        .map(|e| {
            let kv = e.kv().expect("an event has a kv");
            (e.event_type(), kv.key().to_vec(), kv.mod_revision())
        })
        .collect()
}

/// Whether a created response for `watch_id` is among `responses`.
pub fn has_created(responses: &[WatchResponse], watch_id: i64) -> bool {
    responses.iter().any(|r| r.watch_id() == watch_id && r.created())
}

/// Whether a canceled response for `watch_id` is among `responses`.
pub fn has_canceled(responses: &[WatchResponse], watch_id: i64) -> bool {
    responses.iter().any(|r| r.watch_id() == watch_id && r.canceled())
}

/// Whether `r` is a progress notification (no events, not created/canceled, no compaction).
pub fn is_progress(r: &WatchResponse) -> bool {
    r.events().is_empty() && !r.created() && !r.canceled() && r.compact_revision() == 0
}

// ------------------------------------------------------------------ a recorded stream

/// One gRPC Watch stream whose responses a background task reads into a queue.
pub struct Recorder {
    /// `None` after [`Recorder::close_send`].
    sender: Option<WatchRequestSender>,
    rx: mpsc::UnboundedReceiver<Result<WatchResponse, String>>,
    /// Every response received so far, in arrival order.
    pub got: Vec<WatchResponse>,
    /// Why the stream ended (end of stream or an error), once it has.
    pub ended: Option<String>,
    gate: Option<oneshot::Sender<()>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Recorder {
    /// Opens a stream on `client` with a first create request for `key` with `options`.
    pub async fn open(client: &Client, key: impl Into<Vec<u8>>, options: WatchOptions) -> Recorder {
        Self::open_inner(client, key.into(), options, false).await
    }

    /// Like [`Recorder::open`], but nothing reads the stream until [`Recorder::resume`]: the
    /// client stops consuming, so HTTP/2 flow control pushes back on the server.
    pub async fn open_stalled(client: &Client, key: impl Into<Vec<u8>>, options: WatchOptions) -> Recorder {
        Self::open_inner(client, key.into(), options, true).await
    }

    async fn open_inner(client: &Client, key: Vec<u8>, options: WatchOptions, stalled: bool) -> Recorder {
        let mut wc = client.watch_client().max_decoding_message_size(512 << 20);
        let stream = wc.watch(key, Some(options)).await.unwrap_or_else(|e| panic!("open a watch stream: {e}"));
        let (sender, mut responses) = stream.split();
        let (tx, rx) = mpsc::unbounded_channel();
        let (gate_tx, gate_rx) = oneshot::channel::<()>();
        let reader = tokio::spawn(async move {
            if stalled && gate_rx.await.is_err() {
                return;
            }
            loop {
                match responses.message().await {
                    Ok(Some(r)) => {
                        if tx.send(Ok(r)).is_err() {
                            return;
                        }
                    }
                    Ok(None) => {
                        let _ = tx.send(Err("end of stream".to_string()));
                        return;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                        return;
                    }
                }
            }
        });
        Recorder { sender: Some(sender), rx, got: Vec::new(), ended: None, gate: stalled.then_some(gate_tx), reader }
    }

    /// Starts reading a stream opened with [`Recorder::open_stalled`].
    pub fn resume(&mut self) {
        if let Some(g) = self.gate.take() {
            let _ = g.send(());
        }
    }

    fn sender(&mut self) -> &mut WatchRequestSender {
        self.sender.as_mut().expect("the request side of this stream was closed")
    }

    /// Sends another create request on this stream.
    pub async fn create(&mut self, key: impl Into<Vec<u8>>, options: WatchOptions) {
        self.sender().watch(key, Some(options)).await.unwrap_or_else(|e| panic!("send a create request: {e}"));
    }

    /// Sends a cancel request.
    pub async fn cancel(&mut self, watch_id: i64) {
        self.sender().cancel(watch_id).await.unwrap_or_else(|e| panic!("send a cancel request: {e}"));
    }

    /// Sends a progress request.
    pub async fn progress(&mut self) {
        self.sender().request_progress().await.unwrap_or_else(|e| panic!("send a progress request: {e}"));
    }

    /// Closes the request side of the stream (the client half-closes: no more requests, but
    /// it keeps reading responses).
    pub fn close_send(&mut self) {
        self.sender = None;
    }

    /// Moves what has arrived into `got` without waiting.
    pub fn poll(&mut self) -> usize {
        let mut n = 0;
        while let Ok(item) = self.rx.try_recv() {
            n += self.take(item);
        }
        n
    }

    fn take(&mut self, item: Result<WatchResponse, String>) -> usize {
        match item {
            Ok(r) => {
                self.got.push(r);
                1
            }
            Err(e) => {
                self.ended.get_or_insert(e);
                0
            }
        }
    }

    /// Receives until `pred(&got)` holds (true) or `timeout` passes or the stream ends (false).
    pub async fn until(&mut self, timeout: Duration, mut pred: impl FnMut(&[WatchResponse]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            self.poll();
            if pred(&self.got) {
                return true;
            }
            if self.ended.is_some() {
                return false;
            }
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(item)) => {
                    self.take(item);
                }
                Ok(None) => {
                    self.ended.get_or_insert_with(|| "reader task gone".to_string());
                }
                Err(_) => return pred(&self.got),
            }
        }
    }

    /// Receives for `period` (bounded: used to check that nothing more arrives); returns how
    /// many responses arrived.
    pub async fn drain_for(&mut self, period: Duration) -> usize {
        let before = self.got.len();
        let deadline = Instant::now() + period;
        while let Ok(Some(item)) = tokio::time::timeout_at(deadline, self.rx.recv()).await {
            self.take(item);
        }
        self.poll();
        self.got.len() - before
    }

    /// [`events_of`] over what has arrived.
    pub fn events(&self, watch_id: i64) -> Vec<(EventType, Vec<u8>, i64)> {
        events_of(&self.got, watch_id)
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

// ------------------------------------------------------------------ differential runner

/// One side of a differential watch scenario: a server, a client for writes, the streams
/// the scenario opened, and the log of what it did.
pub struct WatchRun {
    pub kind: ServerKind,
    pub server: Server,
    pub client: Client,
    pub streams: Vec<Recorder>,
    log: Vec<String>,
    /// Waits that ran out of time (a scenario bug if it happens with etcd).
    pub timeouts: Vec<String>,
}

impl WatchRun {
    pub async fn new(server: Server) -> WatchRun {
        let client = server.client().await;
        WatchRun { kind: server.kind(), server, client, streams: Vec::new(), log: Vec::new(), timeouts: Vec::new() }
    }

    /// Appends a line to the transcript.
    pub fn note(&mut self, line: impl Into<String>) {
        self.log.push(line.into());
    }

    /// Opens stream number `self.streams.len()` with a first create request; returns its index.
    pub async fn open(&mut self, key: impl Into<Vec<u8>>, options: WatchOptions) -> usize {
        let r = Recorder::open(&self.client, key, options).await;
        self.streams.push(r);
        self.streams.len() - 1
    }

    pub async fn create(&mut self, s: usize, key: impl Into<Vec<u8>>, options: WatchOptions) {
        self.streams[s].create(key, options).await;
    }

    pub async fn cancel(&mut self, s: usize, watch_id: i64) {
        self.note(format!("stream {s}: cancel {watch_id}"));
        self.streams[s].cancel(watch_id).await;
    }

    pub async fn progress(&mut self, s: usize) {
        self.note(format!("stream {s}: progress request"));
        self.streams[s].progress().await;
    }

    /// Closes the request side of stream `s` (see [`Recorder::close_send`]).
    pub fn close_send(&mut self, s: usize) {
        self.note(format!("stream {s}: client closes its request side"));
        self.streams[s].close_send();
    }

    /// Put; logs and returns the revision.
    pub async fn put(&mut self, key: &str, value: &str) -> i64 {
        let r = self.client.put(key, value, None).await.unwrap_or_else(|e| panic!("{}: put {key}: {e}", self.kind));
        let rev = r.header().map_or(0, |h| h.revision());
        let shown = if value.len() > 64 { format!("<{} bytes>", value.len()) } else { value.to_string() };
        self.note(format!("put {}={shown} -> rev {rev}", key.escape_debug()));
        rev
    }

    /// Put with options (e.g. a lease); logs and returns the revision.
    pub async fn put_with(&mut self, key: &str, value: &str, options: PutOptions) -> i64 {
        let r = self
            .client
            .put(key, value, Some(options))
            .await
            .unwrap_or_else(|e| panic!("{}: put {key}: {e}", self.kind));
        let rev = r.header().map_or(0, |h| h.revision());
        self.note(format!("put {}={} (with options) -> rev {rev}", key.escape_debug(), value.escape_debug()));
        rev
    }

    /// Delete (a key, or a range with options); logs deleted count and revision.
    pub async fn delete(&mut self, key: &str, options: Option<DeleteOptions>) -> i64 {
        let r = self.client.delete(key, options).await.unwrap_or_else(|e| panic!("{}: delete {key}: {e}", self.kind));
        let rev = r.header().map_or(0, |h| h.revision());
        self.note(format!("delete {} -> deleted {} rev {rev}", key.escape_debug(), r.deleted()));
        rev
    }

    /// Txn; logs success and revision.
    pub async fn txn(&mut self, label: &str, txn: Txn) -> i64 {
        let r = self.client.txn(txn).await.unwrap_or_else(|e| panic!("{}: txn {label}: {e}", self.kind));
        let rev = r.header().map_or(0, |h| h.revision());
        self.note(format!("txn {label} -> succeeded={} rev {rev}", r.succeeded()));
        rev
    }

    /// Compact to `revision` (physical, so that it is complete when this returns).
    pub async fn compact(&mut self, revision: i64) {
        let opts = etcd_client::CompactionOptions::new().with_physical();
        let r = self.client.compact(revision, Some(opts)).await;
        let shown = match r {
            Ok(_) => "ok".to_string(),
            Err(e) => format!("error: {e}"),
        };
        self.note(format!("compact {revision} -> {shown}"));
    }

    /// Waits until `pred` holds on stream `s`; a timeout is recorded (and shows in the
    /// transcript), not a panic, so the final diff shows what differs.
    pub async fn wait(&mut self, s: usize, what: &str, pred: impl FnMut(&[WatchResponse]) -> bool) {
        if !self.streams[s].until(WAIT, pred).await {
            let line = format!("TIMEOUT stream {s}: waiting for {what} (stream ended: {:?})", self.streams[s].ended);
            self.timeouts.push(line.clone());
            self.note(line);
        }
    }

    /// Waits for the created response of `watch_id` on stream `s`.
    pub async fn wait_created(&mut self, s: usize, watch_id: i64) {
        self.wait(s, &format!("created {watch_id}"), |g| has_created(g, watch_id)).await;
    }

    /// Waits for `n` responses in all on stream `s`.
    pub async fn wait_responses(&mut self, s: usize, n: usize) {
        self.wait(s, &format!("{n} responses"), |g| g.len() >= n).await;
    }

    /// Waits until `watch_id` on stream `s` has received `n` events in all.
    pub async fn wait_events(&mut self, s: usize, watch_id: i64, n: usize) {
        self.wait(s, &format!("{n} events of watch {watch_id}"), |g| events_of(g, watch_id).len() >= n).await;
    }

    /// Receives on stream `s` for [`QUIET`] and notes how many responses arrived (expected: 0).
    pub async fn expect_quiet(&mut self, s: usize, what: &str) {
        let n = self.streams[s].drain_for(QUIET).await;
        self.note(format!("stream {s}: {n} responses while quiet ({what})"));
    }

    /// The transcript: the log, then every stream's responses grouped by watch id (ordered by
    /// id; arrival order within a watch id; etcd does not order the responses of different
    /// watchers of one stream).
    pub fn transcript(&mut self) -> String {
        let mut norm = Normalizer::new();
        let mut out = String::new();
        for l in &self.log {
            let _ = writeln!(out, "{l}");
        }
        for (i, s) in self.streams.iter_mut().enumerate() {
            s.poll();
            let _ = writeln!(out, "stream {i}: {} responses", s.got.len());
            let mut by_id: BTreeMap<i64, Vec<WResp>> = BTreeMap::new();
            for r in &s.got {
                by_id.entry(r.watch_id()).or_default().push(WResp::from_client(&mut norm, r));
            }
            for (id, rs) in by_id {
                let _ = writeln!(out, "  watch {id}:");
                for r in rs {
                    for line in r.to_string().lines() {
                        let _ = writeln!(out, "    {line}");
                    }
                }
            }
            if let Some(e) = &s.ended {
                let _ = writeln!(out, "  stream ended: {e}");
            }
        }
        out
    }
}

/// Runs `scenario` against a fresh etcd 3.5.1 and a fresh server under test (Cairn, or a
/// second etcd with `CAIRN_DIFF_AGAINST=etcd`) at the same time, then waits [`QUIET`] on every
/// stream and compares the transcripts. Panics if etcd itself timed out on a wait (the
/// scenario is wrong) or if the transcripts differ. Returns the subject's transcript.
pub async fn run_watch_diff<F>(name: &str, scenario: F) -> String
where
    F: AsyncFn(&mut WatchRun),
{
    run_watch_diff_with_args(name, &[], scenario).await
}

/// Like [`run_watch_diff`], with extra flags given to both servers.
pub async fn run_watch_diff_with_args<F>(name: &str, args: &[&str], scenario: F) -> String
where
    F: AsyncFn(&mut WatchRun),
{
    let kind = subject_kind();
    let _ = ServerKind::Etcd.binary();
    let _ = kind.binary();
    let options = ServerOptions::with_args(args.iter().copied());
    let (mut etcd, subject) =
        tokio::join!(Server::start_with(ServerKind::Etcd, options.clone()), Server::start_with(kind, options));
    etcd.set_log_on_failure(false);
    let (mut a, mut b) = tokio::join!(WatchRun::new(etcd), WatchRun::new(subject));
    tokio::join!(scenario(&mut a), scenario(&mut b));
    tokio::join!(settle(&mut a), settle(&mut b));
    let (ta, tb) = (a.transcript(), b.transcript());
    if std::env::var("CAIRN_DIFF_PRINT").is_ok_and(|v| v == "1") {
        eprintln!("==== watch scenario `{name}`: transcript of etcd 3.5.1 ====\n{ta}");
    }
    assert!(
        a.timeouts.is_empty(),
        "watch scenario `{name}`: real etcd timed out on a wait, so the scenario is wrong:\n{}\n\
         etcd transcript:\n{ta}",
        a.timeouts.join("\n")
    );
    let label = match kind {
        ServerKind::Etcd => "etcd (2nd)",
        ServerKind::Cairn => "cairn",
    };
    if ta != tb {
        let running = if b.server.is_running() { "" } else { " (its process is no longer running!)" };
        panic!(
            "watch scenario `{name}`: {label}{running} differs from etcd 3.5.1 (- etcd, + {label}):\n{}\n\
             ---- full {label} transcript ----\n{tb}",
            line_diff(&ta, &tb)
        );
    }
    tb
}

/// Receives on every stream of `run` until all have been quiet for [`QUIET`].
async fn settle(run: &mut WatchRun) {
    for s in run.streams.iter_mut() {
        s.drain_for(QUIET).await;
    }
}

// ------------------------------------------------------------------ etcdctl watch

/// `etcdctl watch ...` running as a child process (killed when dropped).
pub struct EtcdctlWatch {
    child: tokio::process::Child,
    stdin: Option<tokio::process::ChildStdin>,
    out_rx: mpsc::UnboundedReceiver<String>,
    err_rx: mpsc::UnboundedReceiver<String>,
    /// Stdout lines so far.
    pub out: Vec<String>,
    /// Stderr lines so far.
    pub err: Vec<String>,
}

impl EtcdctlWatch {
    /// Starts `etcdctl --endpoints=<endpoint> watch <args>` with `ETCDCTL_API=3`; stdin is a
    /// pipe kept open (interactive mode reads commands from it).
    pub fn spawn(endpoint: &str, args: &[&str]) -> EtcdctlWatch {
        let mut cmd = tokio::process::Command::new(etcdctl_bin());
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("ETCDCTL_") {
                cmd.env_remove(key);
            }
        }
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={endpoint}"))
            .arg("--dial-timeout=3s")
            .arg("watch")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn etcdctl watch: {e}"));
        let stdin = child.stdin.take();
        let lines = |r: Box<dyn tokio::io::AsyncRead + Unpin + Send>| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(async move {
                let mut lines = BufReader::new(r).lines();
                while let Ok(Some(l)) = lines.next_line().await {
                    if tx.send(l).is_err() {
                        return;
                    }
                }
            });
            rx
        };
        let out_rx = lines(Box::new(child.stdout.take().expect("stdout piped")));
        let err_rx = lines(Box::new(child.stderr.take().expect("stderr piped")));
        EtcdctlWatch { child, stdin, out_rx, err_rx, out: Vec::new(), err: Vec::new() }
    }

    /// Writes one line to its stdin (interactive mode).
    pub async fn send_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin is open");
        stdin.write_all(format!("{line}\n").as_bytes()).await.expect("write etcdctl stdin");
        stdin.flush().await.expect("flush etcdctl stdin");
    }

    fn poll(&mut self) {
        while let Ok(l) = self.out_rx.try_recv() {
            self.out.push(l);
        }
        while let Ok(l) = self.err_rx.try_recv() {
            self.err.push(l);
        }
    }

    /// Collects output until `pred(stdout lines)` holds (true) or the deadline (false).
    pub async fn until(&mut self, timeout: Duration, mut pred: impl FnMut(&[String]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            self.poll();
            if pred(&self.out) {
                return true;
            }
            tokio::select! {
                l = self.out_rx.recv() => match l {
                    Some(l) => self.out.push(l),
                    None => {
                        // stdout closed: the process ended. Take the rest of stderr.
                        self.poll();
                        return pred(&self.out);
                    }
                },
                l = self.err_rx.recv(), if !self.err_rx.is_closed() => {
                    if let Some(l) = l { self.err.push(l) }
                },
                _ = tokio::time::sleep_until(deadline) => return pred(&self.out),
            }
        }
    }

    /// Waits until stdout has at least `n` lines.
    pub async fn wait_lines(&mut self, n: usize) -> bool {
        self.until(WAIT, |o| o.len() >= n).await
    }

    /// Collects output for a bounded `period` (to check that nothing more is printed).
    pub async fn drain_for(&mut self, period: Duration) {
        let _ = self.until(period, |_| false).await;
    }

    /// Kills the process (SIGKILL to its pid) and reaps it; returns stdout lines.
    pub async fn kill(&mut self) -> Vec<String> {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        self.poll();
        self.out.clone()
    }

    /// Its pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}
