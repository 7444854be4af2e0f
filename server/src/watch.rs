//! The Watch service: one task per gRPC stream, over the member's [`WatchHub`].
//!
//! The task handles the stream's requests (create, cancel, progress) and, when the hub
//! wakes it, hands each watcher's work to the client: published events of synced watchers,
//! or a bounded replay of the revision log for watchers that are behind (then they rejoin).
//! Responses go through a bounded channel; a slow client only slows its own stream, whose
//! watchers then fall behind and replay from storage later (the hub never blocks apply).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Wake, Waker};

use cairn_proto::etcdserverpb as pb;
use cairn_proto::etcdserverpb::watch_server::Watch;
use cairn_proto::mvccpb;
use cairn_storage::watch::{Take, WatchSpec, WatcherId};
use cairn_storage::{Event, EventKind, Revision};
use tokio::sync::{mpsc, Notify};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::context::Context;
use crate::{convert, status};

/// Responses queued to one client before its stream task waits.
const SEND_QUEUE: usize = 64;
/// Events per response when handing out published events.
const MAX_EVENTS_PER_RESPONSE: usize = 1000;
/// Revision-log rows read per catch-up step (one read transaction each).
const CATCHUP_ROWS: usize = 2000;
/// prev_kv lookups done on the async worker; more go through block_in_place.
const INLINE_PREV_KV_LOOKUPS: usize = 16;
/// Rounds of work per wake before the task yields.
const ROUNDS_PER_WAKE: usize = 64;

/// etcd's message for a watch on an empty range.
const ERR_EMPTY_RANGE: &str = "mvcc: watcher range is empty";
/// etcd's cancel reason for a watch the caller may not read (the Go text of
/// `rpctypes.ErrGRPCPermissionDenied`).
const ERR_PERMISSION_DENIED: &str = "rpc error: code = PermissionDenied desc = etcdserver: permission denied";
/// etcd's message for a client-chosen watch ID already in use on the stream.
const ERR_DUPLICATE_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";

pub struct WatchService {
    pub ctx: Arc<Context>,
}

/// Wakes a task waiting on a [`Notify`]: how the hub tells a stream it has work.
pub(crate) struct NotifyWaker(pub(crate) Arc<Notify>);

impl Wake for NotifyWaker {
    fn wake(self: Arc<Self>) {
        self.0.notify_one();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.notify_one();
    }
}

type WatchStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::WatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<Streaming<pb::WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let require_leader = crate::leader::requires_leader(request.metadata().as_ref());
        let (metadata, _, inbound) = request.into_parts();
        let (tx, rx) = mpsc::channel(SEND_QUEUE);
        let ctx = self.ctx.clone();
        tokio::spawn(async move {
            let mut s = StreamTask::new(ctx, tx, require_leader, metadata);
            s.run(inbound).await;
            s.ctx.hub.close_stream(s.sid);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

struct WatcherInfo {
    watch_id: i64,
    spec: WatchSpec,
    prev_kv: bool,
    progress_notify: bool,
    /// Split responses larger than `--max-request-bytes` (etcd's fragment option).
    fragment: bool,
}

struct StreamTask {
    ctx: Arc<Context>,
    tx: mpsc::Sender<Result<pb::WatchResponse, Status>>,
    notify: Arc<Notify>,
    sid: u64,
    require_leader: bool,
    /// The stream's metadata: its token is checked at every create, as etcd does.
    metadata: tonic::metadata::MetadataMap,
    by_hub: HashMap<WatcherId, WatcherInfo>,
    /// Client watch IDs in use. `None`: the server canceled the watcher (compaction); the
    /// ID stays taken until the client cancels it, as in etcd.
    by_watch_id: HashMap<i64, Option<WatcherId>>,
    next_watch_id: i64,
    /// A progress request arrived while some watcher was behind: answer when all caught up.
    progress_pending: bool,
}

/// The stream is gone (client closed, or our send failed).
struct Closed;

impl StreamTask {
    fn new(
        ctx: Arc<Context>,
        tx: mpsc::Sender<Result<pb::WatchResponse, Status>>,
        require_leader: bool,
        metadata: tonic::metadata::MetadataMap,
    ) -> StreamTask {
        let notify = Arc::new(Notify::new());
        let waker = Waker::from(Arc::new(NotifyWaker(notify.clone())));
        let sid = ctx.hub.open_stream(waker);
        StreamTask {
            ctx,
            tx,
            notify,
            sid,
            require_leader,
            metadata,
            by_hub: HashMap::new(),
            by_watch_id: HashMap::new(),
            next_watch_id: 0,
            progress_pending: false,
        }
    }

    async fn run(&mut self, mut inbound: Streaming<pb::WatchRequest>) {
        let interval = self.ctx.watch_progress_notify_interval;
        let mut progress = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        let mut loss = self.ctx.leader_monitor.subscribe();
        // A client may close its sending side and keep receiving (etcd keeps the watchers).
        let mut inbound_open = true;
        loop {
            let step = tokio::select! {
                req = inbound.message(), if inbound_open => match req {
                    Ok(Some(r)) => self.handle(r).await,
                    Ok(None) => {
                        inbound_open = false;
                        Ok(())
                    }
                    Err(_) => return,
                },
                _ = self.tx.closed() => return,
                _ = self.notify.notified() => Ok(()),
                _ = progress.tick() => self.progress_notify().await,
                // etcd cancels the stream (not its watchers) with "no leader".
                _ = loss.lost(), if self.require_leader => {
                    let _ = self.tx.send(Err(crate::status::no_leader())).await;
                    return;
                }
            };
            if step.is_err() {
                return;
            }
            if self.deliver().await.is_err() {
                return;
            }
        }
    }

    async fn send(&self, r: pb::WatchResponse) -> Result<(), Closed> {
        self.tx.send(Ok(r)).await.map_err(|_| Closed)
    }

    /// Sends an events response, split as etcd splits it when the watcher asked for
    /// fragments and the response is at least `--max-request-bytes`: every part but the last
    /// has `fragment` set; a part holds one event at least.
    async fn send_events(&self, r: pb::WatchResponse, fragment: bool) -> Result<(), Closed> {
        use prost::Message;
        let max = self.ctx.max_request_bytes;
        if !fragment || r.events.len() < 2 || r.encoded_len() < max {
            return self.send(r).await;
        }
        let mut rest = r.events.into_iter().peekable();
        let base = pb::WatchResponse { events: Vec::new(), fragment: true, ..r };
        while rest.peek().is_some() {
            let mut part = base.clone();
            while let Some(ev) = rest.peek() {
                part.events.push(ev.clone());
                if part.events.len() > 1 && part.encoded_len() >= max {
                    part.events.pop();
                    break;
                }
                rest.next();
            }
            part.fragment = rest.peek().is_some();
            self.send(part).await?;
        }
        Ok(())
    }

    fn header(&self, revision: Revision) -> pb::ResponseHeader {
        self.ctx.header(revision)
    }

    async fn handle(&mut self, req: pb::WatchRequest) -> Result<(), Closed> {
        use pb::watch_request::RequestUnion as U;
        match req.request_union {
            Some(U::CreateRequest(c)) => self.create(c).await,
            Some(U::CancelRequest(c)) => {
                if let Some(entry) = self.by_watch_id.remove(&c.watch_id) {
                    if let Some(hid) = entry {
                        self.by_hub.remove(&hid);
                        self.ctx.hub.remove(hid);
                    }
                    let r = pb::WatchResponse {
                        header: Some(self.header(self.ctx.node.store().current_revision())),
                        watch_id: c.watch_id,
                        canceled: true,
                        ..Default::default()
                    };
                    self.send(r).await?;
                }
                Ok(())
            }
            Some(U::ProgressRequest(_)) => {
                self.progress_pending = true;
                Ok(())
            }
            None => Ok(()),
        }
    }

    async fn create(&mut self, mut c: pb::WatchCreateRequest) -> Result<(), Closed> {
        let current = self.ctx.node.store().current_revision();
        if c.key.is_empty() {
            // etcd: an empty key is the smallest key, "\0".
            c.key = bytes::Bytes::from_static(&[0]);
        }
        let fail = |reason: &str| pb::WatchResponse {
            header: Some(self.header(current)),
            watch_id: -1,
            created: true,
            canceled: true,
            cancel_reason: reason.to_string(),
            ..Default::default()
        };
        if !self.ctx.authz.watch_permitted(&self.metadata, &c.key, &c.range_end) {
            let r = pb::WatchResponse { watch_id: c.watch_id, ..fail(ERR_PERMISSION_DENIED) };
            return self.send(r).await;
        }
        let from_key = c.range_end.as_ref() == [0];
        if !c.range_end.is_empty() && !from_key && c.key >= c.range_end {
            let r = fail(ERR_EMPTY_RANGE);
            return self.send(r).await;
        }
        let watch_id = if c.watch_id != 0 {
            if self.by_watch_id.contains_key(&c.watch_id) {
                let r = fail(ERR_DUPLICATE_ID);
                return self.send(r).await;
            }
            c.watch_id
        } else {
            while self.by_watch_id.contains_key(&self.next_watch_id) {
                self.next_watch_id += 1;
            }
            let id = self.next_watch_id;
            self.next_watch_id += 1;
            id
        };
        let start = if c.start_revision == 0 { current + 1 } else { c.start_revision };
        let spec = WatchSpec {
            key: c.key.to_vec(),
            range_end: c.range_end.to_vec(),
            no_put: c.filters.contains(&(pb::watch_create_request::FilterType::Noput as i32)),
            no_delete: c.filters.contains(&(pb::watch_create_request::FilterType::Nodelete as i32)),
        };
        // The created response goes out before any event of the watcher.
        let r = pb::WatchResponse { header: Some(self.header(current)), watch_id, created: true, ..Default::default() };
        self.send(r).await?;
        let Some(hid) = self.ctx.hub.add(self.sid, spec.clone(), start, c.start_revision) else { return Err(Closed) };
        self.by_watch_id.insert(watch_id, Some(hid));
        self.by_hub.insert(
            hid,
            WatcherInfo {
                watch_id,
                spec,
                prev_kv: c.prev_kv,
                progress_notify: c.progress_notify,
                fragment: c.fragment,
            },
        );
        Ok(())
    }

    /// Periodic progress notifications for watchers that asked for them and are caught up.
    async fn progress_notify(&mut self) -> Result<(), Closed> {
        let due: Vec<(i64, Revision)> = self
            .by_hub
            .iter()
            .filter(|(_, w)| w.progress_notify)
            .filter_map(|(hid, w)| self.ctx.hub.watcher_progress(*hid).map(|rev| (w.watch_id, rev)))
            .collect();
        for (watch_id, rev) in due {
            let r = pb::WatchResponse { header: Some(self.header(rev)), watch_id, ..Default::default() };
            self.send(r).await?;
        }
        Ok(())
    }

    /// Hands out the work of every watcher the hub marked, then answers a pending progress
    /// request if the whole stream is caught up.
    async fn deliver(&mut self) -> Result<(), Closed> {
        for _ in 0..ROUNDS_PER_WAKE {
            let dirty = self.ctx.hub.take_dirty(self.sid);
            if dirty.is_empty() {
                break;
            }
            for hid in dirty {
                self.work(hid).await?;
            }
            tokio::task::yield_now().await;
        }
        if let Some(rev) = self.progress_pending.then(|| self.ctx.hub.stream_progress(self.sid)).flatten() {
            self.progress_pending = false;
            // Every watcher of the stream was handed all events up to `rev`.
            let r = pb::WatchResponse { header: Some(self.header(rev)), watch_id: -1, ..Default::default() };
            self.send(r).await?;
        }
        // More work left after the rounds: come back without waiting for a new wake.
        if !self.ctx.hub.take_dirty_peek(self.sid) {
            return Ok(());
        }
        self.notify.notify_one();
        Ok(())
    }

    async fn work(&mut self, hid: WatcherId) -> Result<(), Closed> {
        let Some(info) = self.by_hub.get(&hid) else { return Ok(()) };
        let (watch_id, prev_kv, fragment) = (info.watch_id, info.prev_kv, info.fragment);
        match self.ctx.hub.take(hid, MAX_EVENTS_PER_RESPONSE) {
            Take::Idle => Ok(()),
            Take::Events(deliveries) => {
                for d in deliveries {
                    let events = self.events(d.events, prev_kv);
                    let r = pb::WatchResponse {
                        header: Some(self.header(d.revision)),
                        watch_id,
                        events,
                        ..Default::default()
                    };
                    self.send_events(r, fragment).await?;
                }
                Ok(())
            }
            Take::CatchUp { next_rev } => self.catch_up(hid, next_rev).await,
        }
    }

    /// One bounded step of replaying the revision log for a watcher that is behind.
    async fn catch_up(&mut self, hid: WatcherId, next_rev: Revision) -> Result<(), Closed> {
        let Some(info) = self.by_hub.get(&hid) else { return Ok(()) };
        let (watch_id, prev_kv, fragment, spec) = (info.watch_id, info.prev_kv, info.fragment, info.spec.clone());
        let store = self.ctx.node.store().clone();
        let read = tokio::task::block_in_place(|| -> Result<_, cairn_storage::StoreError> {
            let view = store.read()?;
            let (current, compacted) = (view.current_revision(), view.compact_revision());
            if next_rev < compacted {
                return Ok(Err(compacted));
            }
            let (rows, next) = view.events(next_rev, current, CATCHUP_ROWS)?;
            let mut events = Vec::new();
            for (_, ev) in rows {
                if spec.matches(&ev) {
                    let prev = if prev_kv { view.get_at(&ev.kv.key, ev.kv.mod_revision - 1)? } else { None };
                    events.push(event(ev, prev));
                }
            }
            Ok(Ok((events, next, current)))
        });
        match read {
            Err(e) => {
                // The node's storage failed: end the stream with the error.
                let _ = self.tx.send(Err(status::store_error(&e))).await;
                Err(Closed)
            }
            Ok(Err(compacted)) => {
                self.by_hub.remove(&hid);
                self.by_watch_id.insert(watch_id, None);
                self.ctx.hub.remove(hid);
                let r = pb::WatchResponse {
                    header: Some(self.header(0)),
                    watch_id,
                    compact_revision: compacted,
                    canceled: true,
                    ..Default::default()
                };
                self.send(r).await
            }
            Ok(Ok((events, next, current))) => {
                if !events.is_empty() {
                    let r = pb::WatchResponse {
                        header: Some(self.header(current)),
                        watch_id,
                        events,
                        ..Default::default()
                    };
                    self.send_events(r, fragment).await?;
                }
                self.ctx.hub.caught_up(hid, next);
                Ok(())
            }
        }
    }

    /// Wire events, with prev_kv read from the store when the watcher asked for it.
    fn events(&self, evs: Vec<Event>, prev_kv: bool) -> Vec<mvccpb::Event> {
        if !prev_kv {
            return evs.into_iter().map(|e| event(e, None)).collect();
        }
        let store = self.ctx.node.store().clone();
        let n = evs.len();
        let read = move || {
            let view = store.read().ok();
            evs.into_iter()
                .map(|e| {
                    let prev = view.as_ref().and_then(|v| v.get_at(&e.kv.key, e.kv.mod_revision - 1).ok().flatten());
                    event(e, prev)
                })
                .collect()
        };
        // A few point lookups run inline; many move off the async worker.
        if n <= INLINE_PREV_KV_LOOKUPS {
            read()
        } else {
            tokio::task::block_in_place(read)
        }
    }
}

fn event(e: Event, prev: Option<cairn_storage::KeyValue>) -> mvccpb::Event {
    mvccpb::Event {
        r#type: match e.kind {
            EventKind::Put => mvccpb::event::EventType::Put as i32,
            EventKind::Delete => mvccpb::event::EventType::Delete as i32,
        },
        kv: Some(convert::kv(e.kv)),
        prev_kv: prev.map(convert::kv),
    }
}
