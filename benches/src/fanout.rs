//! The watch fan-out workload: `watchers` watchers on one prefix, spread over a few gRPC Watch
//! streams (stream `s` on connection `s % conns.len()`, watcher `w` on stream
//! `w % streams`), and one writer that puts a fresh key under the prefix, waits for the put's
//! answer and then until every watcher has the event, before it starts the next put. Each
//! latency is thus one put's fan-out, never queued behind the previous put's.
//!
//! Measured: for every put and every watcher, the time from the put's start to the moment the
//! watcher's event came out of its stream (one op = one delivery, so ops/s is events delivered
//! per second); and for every put, the time until its last watcher had it.
//!
//! Checked (each failure counts as an error): every watcher receives the event of every put
//! exactly once and in put order (a key's last path segment is the put's sequence number); an
//! event is a PUT whose mod_revision is the revision the put answered; no watcher is canceled
//! and no stream ends; every put reaches every watcher within `OP_TIMEOUT` (otherwise the run
//! stops there: a stalled fan-out).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Client, EventType, WatchOptions, WatchRequestSender, WatchResponse, WatchResponseStream};
use tokio::sync::{watch, Barrier, Notify};

use crate::cpu;
use crate::stats::RunOutcome;
use crate::workload::{describe, value, Fixture, RunSpec, OP_TIMEOUT};

/// How long one stream may take to create its watchers.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

/// What the stream tasks and the writer share.
struct Shared {
    /// Origin of every timestamp of the run (nanoseconds since it).
    base: Instant,
    /// Watchers created (before the writer starts).
    watching: AtomicU64,
    /// In-order deliveries so far, over all watchers.
    delivered: AtomicU64,
    /// Poked by a stream task after it counted deliveries.
    delivered_changed: Notify,
}

impl Shared {
    fn now_ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }
}

/// What the receiving side of one stream saw.
#[derive(Default)]
struct StreamOutcome {
    /// `(put sequence number, nanoseconds since base)` of every in-order delivery.
    deliveries: Vec<(u32, u64)>,
    /// Per watch id: the sequence number of the next put it should receive.
    next: HashMap<i64, u64>,
    /// Per put sequence number: the mod_revision its event had on this stream (0: not seen).
    revisions: Vec<i64>,
    /// Errors only (its latencies stay empty).
    errors: RunOutcome,
}

impl StreamOutcome {
    /// Accounts for the event of put `seq` (with `mod_revision`) that watcher `id` of this
    /// stream received at `now`; returns whether it counts as a delivery (it is the next put
    /// of that watcher, or a later one: the skipped puts are errors).
    fn deliver(&mut self, id: i64, seq: u64, mod_revision: i64, now: u64) -> bool {
        let Some(next) = self.next.get_mut(&id) else {
            self.errors.record_error(format!("an event for watch id {id}, which this stream did not create"));
            return false;
        };
        if seq < *next {
            let last = *next - 1;
            self.errors.record_error(format!(
                "watch id {id}: the event of put {seq} again or out of order (after put {last})"
            ));
            return false;
        }
        if seq > *next {
            self.errors.record_errors(seq - *next, format!("watch id {id}: puts {}..{} skipped", *next, seq - 1));
        }
        *next = seq + 1;
        self.deliveries.push((seq as u32, now));
        let s = seq as usize;
        if self.revisions.len() <= s {
            self.revisions.resize(s + 1, 0);
        }
        match self.revisions[s] {
            0 => self.revisions[s] = mod_revision,
            r if r != mod_revision => self
                .errors
                .record_error(format!("put {seq}: watchers of one stream got mod_revision {r} and {mod_revision}")),
            _ => {}
        }
        true
    }
}

/// Runs the fan-out with `spec.clients` watchers over `spec.watch_streams` streams (at most one
/// per watcher); the writer uses `conns[0]`.
pub async fn run(spec: RunSpec, conns: &[Client], fixture: &Fixture, server_pids: &[u32]) -> RunOutcome {
    let watchers = spec.clients;
    assert!(watchers > 0 && !conns.is_empty(), "a fan-out needs watchers ({watchers}) and connections");
    let quota = spec.quota;
    assert!(quota.ops.is_some() || quota.duration.is_some(), "a run needs an op count or a duration: {quota:?}");
    let streams = spec.watch_streams.clamp(1, watchers);
    let prefix = format!("{}watch/{}/", fixture.prefix, spec.run_id);
    let shared = Arc::new(Shared {
        base: Instant::now(),
        watching: AtomicU64::new(0),
        delivered: AtomicU64::new(0),
        delivered_changed: Notify::new(),
    });
    let ready = Arc::new(Barrier::new(streams + 1));
    let (stop, stopped) = watch::channel(false);
    let mut tasks = Vec::with_capacity(streams);
    for s in 0..streams {
        let count = watchers / streams + usize::from(s < watchers % streams);
        let task = stream_task(
            conns[s % conns.len()].clone(),
            prefix.clone(),
            count,
            shared.clone(),
            ready.clone(),
            stopped.clone(),
        );
        tasks.push(tokio::spawn(task));
    }
    ready.wait().await;

    let mut out = RunOutcome::default();
    let mut kv = conns[0].kv_client();
    // Per put, by sequence number: its start (nanoseconds since base) and answered revision.
    let mut starts: Vec<u64> = Vec::new();
    let mut revisions: Vec<i64> = Vec::new();
    let cpu_before = cpu::sample(server_pids);
    let start = Instant::now();
    let end = quota.duration.map(|d| start + d);
    let created = shared.watching.load(Ordering::Acquire);
    if created < watchers as u64 {
        out.record_error(format!("only {created} of {watchers} watchers were created: no puts"));
    } else {
        loop {
            let i = starts.len() as u64;
            match (quota.ops, end) {
                (Some(n), _) if i >= n => break,
                (_, Some(end)) if Instant::now() >= end => break,
                _ => {}
            }
            let t0 = Instant::now();
            starts.push(shared.now_ns());
            let put = kv.put(format!("{prefix}{i:09}"), value(fixture.value_size, i), None);
            match tokio::time::timeout(OP_TIMEOUT, put).await {
                Ok(Ok(resp)) if resp.header().is_some() => {
                    revisions.push(resp.header().map_or(0, |h| h.revision()));
                }
                outcome => {
                    out.record_error(match outcome {
                        Ok(Ok(_)) => "watch-fanout put: no header".to_string(),
                        Ok(Err(e)) => format!("watch-fanout put: {}", describe(&e)),
                        Err(_) => format!("watch-fanout put: no answer within {OP_TIMEOUT:?}"),
                    });
                    // Not counted as a put: whether its event comes or not is not checked.
                    starts.pop();
                    break;
                }
            }
            let target = watchers as u64 * (i + 1);
            let deadline = tokio::time::Instant::from_std(t0 + OP_TIMEOUT);
            let mut stalled = false;
            while shared.delivered.load(Ordering::Acquire) < target {
                if tokio::time::timeout_at(deadline, shared.delivered_changed.notified()).await.is_err() {
                    stalled = true;
                    break;
                }
            }
            if stalled {
                let have = shared.delivered.load(Ordering::Acquire).saturating_sub(target - watchers as u64);
                out.record_error(format!(
                    "put {i}: only {have} of {watchers} watchers had its event {OP_TIMEOUT:?} after its start \
                     (run stopped there)"
                ));
                break;
            }
        }
    }
    let elapsed = start.elapsed();
    let cpu_after = cpu::sample(server_pids);
    let _ = stop.send(true);

    let puts = starts.len();
    let mut last = vec![0u64; puts];
    let mut reached = vec![0usize; puts];
    for t in tasks {
        let so = match t.await {
            Ok(so) => so,
            Err(e) => {
                out.record_error(format!("watch stream task failed: {e}"));
                continue;
            }
        };
        out.merge(so.errors);
        out.latencies_ns.reserve(so.deliveries.len());
        for (seq, at) in so.deliveries {
            let s = seq as usize;
            if s >= puts {
                continue;
            }
            let latency = at.saturating_sub(starts[s]);
            out.latencies_ns.push(latency);
            last[s] = last[s].max(latency);
            reached[s] += 1;
        }
        let mut ids: Vec<(i64, u64)> = so.next.into_iter().collect();
        ids.sort_unstable();
        for (id, next) in ids {
            if (next as usize) < puts {
                out.record_errors(
                    (puts - next as usize) as u64,
                    format!("watch id {id} never got the events of puts {next}..{}", puts - 1),
                );
            }
        }
        for (s, &r) in so.revisions.iter().enumerate().take(puts) {
            if r != 0 && r != revisions[s] {
                out.record_error(format!(
                    "put {s} answered revision {}, but its event has mod_revision {r}",
                    revisions[s]
                ));
            }
        }
    }
    out.last_delivery_ns = Some((0..puts).filter(|&s| reached[s] == watchers).map(|s| last[s]).collect());
    out.elapsed = elapsed;
    out.cpu = cpu::usage(cpu_before, cpu_after, elapsed);
    out
}

/// One stream: creates its `count` watchers on `prefix`, waits at `ready`, then receives until
/// told to stop.
async fn stream_task(
    conn: Client,
    prefix: String,
    count: usize,
    shared: Arc<Shared>,
    ready: Arc<Barrier>,
    mut stop: watch::Receiver<bool>,
) -> StreamOutcome {
    let mut out = StreamOutcome::default();
    let opened = match tokio::time::timeout(SETUP_TIMEOUT, open(&conn, &prefix, count)).await {
        Ok(Ok((sender, receiver, ids))) => {
            shared.watching.fetch_add(ids.len() as u64, Ordering::AcqRel);
            out.next = ids.into_iter().map(|id| (id, 0)).collect();
            Some((sender, receiver))
        }
        Ok(Err(e)) => {
            out.errors.record_error(e);
            None
        }
        Err(_) => {
            out.errors.record_error(format!("creating {count} watchers took more than {SETUP_TIMEOUT:?}"));
            None
        }
    };
    ready.wait().await;
    // The sender is kept (unused) so that the request side of the stream stays open.
    let Some((_sender, mut receiver)) = opened else { return out };
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            m = receiver.message() => match m {
                Ok(Some(resp)) => receive(&mut out, &shared, prefix.as_bytes(), &resp),
                Ok(None) => {
                    out.errors.record_error("the server ended a watch stream".to_string());
                    break;
                }
                Err(e) => {
                    out.errors.record_error(format!("watch stream: {}", describe(&e)));
                    break;
                }
            },
        }
    }
    out
}

/// Opens a Watch stream on `conn` and creates `count` watchers on `prefix` in it; returns the
/// stream's halves and the watch ids.
async fn open(
    conn: &Client,
    prefix: &str,
    count: usize,
) -> Result<(WatchRequestSender, WatchResponseStream, Vec<i64>), String> {
    let options = WatchOptions::new().with_prefix();
    // Sends the first create request.
    let stream = conn
        .watch_client()
        .watch(prefix, Some(options.clone()))
        .await
        .map_err(|e| format!("watch: {}", describe(&e)))?;
    let (mut sender, mut receiver) = stream.split();
    // The other create requests go out while the created responses come back.
    let send = async {
        for _ in 1..count {
            sender.watch(prefix, Some(options.clone())).await.map_err(|e| format!("watch create: {}", describe(&e)))?;
        }
        Ok::<(), String>(())
    };
    let receive = async {
        let mut ids = Vec::with_capacity(count);
        while ids.len() < count {
            match receiver.message().await.map_err(|e| format!("watch create: {}", describe(&e)))? {
                Some(r) if r.created() && !r.canceled() => {
                    if ids.contains(&r.watch_id()) {
                        return Err(format!("watch create: watch id {} given twice in one stream", r.watch_id()));
                    }
                    ids.push(r.watch_id());
                }
                Some(r) => {
                    return Err(format!(
                        "watch create: unexpected response (watch id {}, created {}, canceled {}, reason {:?}, \
                         {} events)",
                        r.watch_id(),
                        r.created(),
                        r.canceled(),
                        r.cancel_reason(),
                        r.events().len()
                    ))
                }
                None => return Err("watch create: the server ended the stream".to_string()),
            }
        }
        Ok(ids)
    };
    let (sent, ids) = tokio::join!(send, receive);
    sent?;
    Ok((sender, receiver, ids?))
}

/// Accounts for one response of a stream: checks its events and records the deliveries.
fn receive(out: &mut StreamOutcome, shared: &Shared, prefix: &[u8], resp: &WatchResponse) {
    let now = shared.now_ns();
    let id = resp.watch_id();
    if resp.canceled() {
        out.errors.record_error(format!(
            "watch id {id} canceled by the server (reason {:?}, compact_revision {})",
            resp.cancel_reason(),
            resp.compact_revision()
        ));
        return;
    }
    if resp.events().is_empty() {
        // A progress notification or the like.
        return;
    }
    if !out.next.contains_key(&id) {
        out.errors.record_errors(
            resp.events().len() as u64,
            format!("events for watch id {id}, which this stream did not create"),
        );
        return;
    }
    let mut counted = 0;
    for ev in resp.events() {
        let Some(kv) = ev.kv() else {
            out.errors.record_error(format!("watch id {id}: an event without kv"));
            continue;
        };
        let seq = kv.key().strip_prefix(prefix).and_then(|k| std::str::from_utf8(k).ok()).and_then(|k| k.parse().ok());
        let (Some(seq), EventType::Put) = (seq, ev.event_type()) else {
            out.errors.record_error(format!(
                "watch id {id}: unexpected {:?} event on key {:?}",
                ev.event_type(),
                String::from_utf8_lossy(kv.key())
            ));
            continue;
        };
        if out.deliver(id, seq, kv.mod_revision(), now) {
            counted += 1;
        }
    }
    if counted > 0 {
        shared.delivered.fetch_add(counted, Ordering::AcqRel);
        shared.delivered_changed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(ids: &[i64]) -> StreamOutcome {
        StreamOutcome { next: ids.iter().map(|&id| (id, 0)).collect(), ..Default::default() }
    }

    #[test]
    fn in_order_deliveries_count_and_keep_their_time() {
        let mut s = stream(&[1, 2]);
        assert!(s.deliver(1, 0, 10, 100));
        assert!(s.deliver(2, 0, 10, 101));
        assert!(s.deliver(1, 1, 11, 200));
        assert_eq!(s.deliveries, vec![(0, 100), (0, 101), (1, 200)]);
        assert_eq!((s.next[&1], s.next[&2]), (2, 1));
        assert_eq!(s.revisions, vec![10, 11]);
        assert_eq!(s.errors.errors, 0);
    }

    #[test]
    fn duplicates_gaps_strangers_and_revision_mismatches_are_errors() {
        let mut s = stream(&[1, 2]);
        assert!(s.deliver(1, 0, 10, 1));
        assert!(!s.deliver(1, 0, 10, 2), "a duplicate is not a delivery");
        assert_eq!(s.errors.errors, 1);
        assert!(s.deliver(1, 3, 13, 3), "a later put counts, the skipped ones are errors");
        assert_eq!((s.errors.errors, s.next[&1]), (3, 4));
        assert!(!s.deliver(7, 0, 10, 4), "an unknown watch id");
        assert_eq!(s.errors.errors, 4);
        assert!(s.deliver(2, 0, 99, 5), "counted, but its revision differs from the other watcher's");
        assert_eq!(s.errors.errors, 5);
    }
}
