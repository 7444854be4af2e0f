//! The watcher registry ([`WatchHub`]) and the reads that replay history for watchers
//! that are behind.
//!
//! Every watcher is either *synced* — it receives the events of each applied revision as it
//! is published — or *unsynced* — its stream replays the revision log from `next_rev` and
//! then asks to rejoin. The invariant that makes delivery exactly-once and in order:
//! a watcher has handed every matching event below `next_rev` to its stream, and, while
//! synced, every matching event of a published revision `>= next_rev` is in its `pending`
//! queue. Revisions are published after they are committed, so anything a catch-up needs
//! is in storage; a catch-up that read through revision C rejoins only if nothing after C
//! has been published yet, and publishes below `next_rev` are ignored.
//!
//! Memory is bounded: a synced watcher queues at most `max_pending_events`; past that it
//! drops its queue and becomes unsynced (it replays from storage later), so a slow stream
//! never blocks apply. Lock: one mutex; wakers are woken after it is released.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::task::Waker;

use crate::error::StoreError;
use crate::read::{self, KeySpan};
use crate::record::Record;
use crate::store::ReadView;
use crate::sync::Mutex;
use crate::types::*;

pub type WatcherId = u64;

/// Approximate memory of a queued event.
fn event_bytes(e: &Event) -> usize {
    e.kv.key.len() + e.kv.value.len() + 64
}

/// Bytes a synced watcher may have queued before it drops to catching up.
pub const MAX_PENDING_BYTES: usize = 16 << 20;
pub type StreamId = u64;

/// What a watcher watches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchSpec {
    pub key: Vec<u8>,
    /// etcd's range_end: empty = the key, `[0]` = every key >= key, else `[key, range_end)`.
    pub range_end: Vec<u8>,
    /// etcd's NOPUT filter.
    pub no_put: bool,
    /// etcd's NODELETE filter.
    pub no_delete: bool,
}

impl WatchSpec {
    pub fn matches(&self, ev: &Event) -> bool {
        match ev.kind {
            EventKind::Put if self.no_put => return false,
            EventKind::Delete if self.no_delete => return false,
            _ => {}
        }
        KeySpan::new(&self.key, &self.range_end).contains(&ev.kv.key)
    }
}

/// The matching events of one revision, never split.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    pub revision: Revision,
    pub events: Vec<Event>,
}

/// What a stream should do for one watcher.
#[derive(Debug, PartialEq, Eq)]
pub enum Take {
    /// Published events, whole revisions in order; `next_rev` already moved past them.
    Events(Vec<Delivery>),
    /// Behind: replay the revision log from `next_rev`, then call [`WatchHub::caught_up`].
    CatchUp { next_rev: Revision },
    /// Nothing to do (or the watcher is gone).
    Idle,
}

struct Watcher {
    stream: StreamId,
    spec: WatchSpec,
    /// The start revision the client asked for; 0 for "from now".
    requested_start: Revision,
    next_rev: Revision,
    synced: bool,
    pending: VecDeque<Delivery>,
    pending_events: usize,
    /// Approximate bytes of `pending`.
    pending_bytes: usize,
}

/// Marks watcher `id` of `stream` as having work; its stream's waker goes into `wake` the
/// first time (woken after the hub's lock is released).
fn mark_dirty(streams: &mut HashMap<StreamId, StreamState>, stream: StreamId, id: WatcherId, wake: &mut Vec<Waker>) {
    if let Some(s) = streams.get_mut(&stream) {
        if s.dirty.insert(id) {
            wake.push(s.waker.clone());
        }
    }
}

impl Watcher {
    /// Drops the queue: the watcher replays from storage from `next_rev` (nothing it was
    /// given is given again; `next_rev` moves only when events are taken).
    fn unsync(&mut self) {
        self.synced = false;
        self.pending.clear();
        self.pending_events = 0;
        self.pending_bytes = 0;
    }

    /// A progress notification at `published` is true for this watcher: it is synced, has
    /// nothing queued, and the store has reached the start revision the client asked for
    /// (a client resumes at the notified revision + 1, which must not be before the watch's
    /// start: etcd#20221, fixed by etcd as "skip progress while startRev > current").
    fn progress_ready(&self, published: Revision) -> bool {
        self.synced && self.pending.is_empty() && self.requested_start <= published
    }
}

struct StreamState {
    waker: Waker,
    /// Watchers with something to do.
    dirty: BTreeSet<WatcherId>,
    watchers: BTreeSet<WatcherId>,
}

struct Inner {
    published: Revision,
    watchers: HashMap<WatcherId, Watcher>,
    streams: HashMap<StreamId, StreamState>,
    next_id: u64,
}

/// The registry of every watcher of this member. Shared by the apply path (publish) and
/// the watch streams.
pub struct WatchHub {
    inner: Mutex<Inner>,
    max_pending_events: usize,
}

impl WatchHub {
    /// A hub whose last published revision is `published` (the store's current revision at
    /// start), queueing at most `max_pending_events` per synced watcher.
    pub fn new(published: Revision, max_pending_events: usize) -> WatchHub {
        WatchHub {
            inner: Mutex::new(Inner { published, watchers: HashMap::new(), streams: HashMap::new(), next_id: 1 }),
            max_pending_events: max_pending_events.max(1),
        }
    }

    fn lock(&self) -> crate::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("watch hub lock poisoned")
    }

    /// How many watchers and watch streams are registered (etcd's
    /// `etcd_debugging_mvcc_watcher_total` and `..._watch_stream_total`).
    pub fn counts(&self) -> (usize, usize) {
        let g = self.lock();
        (g.watchers.len(), g.streams.len())
    }

    /// The last published revision.
    pub fn published(&self) -> Revision {
        self.lock().published
    }

    /// A new stream, woken through `waker` when one of its watchers has work.
    pub fn open_stream(&self, waker: Waker) -> StreamId {
        let mut g = self.lock();
        let id = g.next_id;
        g.next_id += 1;
        g.streams.insert(id, StreamState { waker, dirty: BTreeSet::new(), watchers: BTreeSet::new() });
        id
    }

    /// Removes a stream and all its watchers.
    pub fn close_stream(&self, stream: StreamId) {
        let mut g = self.lock();
        if let Some(s) = g.streams.remove(&stream) {
            for w in s.watchers {
                g.watchers.remove(&w);
            }
        }
    }

    /// Registers a watcher that delivers every matching event of revision `>= start`;
    /// `requested_start` is the start revision the client gave (0 for "from now").
    /// Returns None if the stream is gone.
    pub fn add(
        &self,
        stream: StreamId,
        spec: WatchSpec,
        start: Revision,
        requested_start: Revision,
    ) -> Option<WatcherId> {
        let mut g = self.lock();
        let id = g.next_id;
        let synced = start > g.published;
        let s = g.streams.get_mut(&stream)?;
        s.watchers.insert(id);
        if !synced {
            s.dirty.insert(id);
            s.waker.wake_by_ref();
        }
        g.next_id += 1;
        g.watchers.insert(
            id,
            Watcher {
                stream,
                spec,
                requested_start,
                next_rev: start,
                synced,
                pending: VecDeque::new(),
                pending_events: 0,
                pending_bytes: 0,
            },
        );
        Some(id)
    }

    /// Removes a watcher; false if it was not there.
    pub fn remove(&self, id: WatcherId) -> bool {
        let mut g = self.lock();
        match g.watchers.remove(&id) {
            Some(w) => {
                if let Some(s) = g.streams.get_mut(&w.stream) {
                    s.watchers.remove(&id);
                    s.dirty.remove(&id);
                }
                true
            }
            None => false,
        }
    }

    /// Publishes the events of one committed revision, in the order the request made them.
    pub fn publish(&self, revision: Revision, events: &[Event]) {
        let mut wake: Vec<Waker> = Vec::new();
        {
            let mut g = self.lock();
            // Revisions arrive in order; one at or below `published` was applied before the
            // hub was attached (start-up) and concerns no watcher.
            if revision <= g.published {
                return;
            }
            g.published = revision;
            let Inner { watchers, streams, .. } = &mut *g;
            for (id, w) in watchers.iter_mut() {
                if !w.synced || revision < w.next_rev {
                    continue;
                }
                let matching: Vec<Event> = events.iter().filter(|e| w.spec.matches(e)).cloned().collect();
                if matching.is_empty() {
                    continue;
                }
                w.pending_events += matching.len();
                w.pending_bytes += matching.iter().map(event_bytes).sum::<usize>();
                w.pending.push_back(Delivery { revision, events: matching });
                if w.pending_events > self.max_pending_events || w.pending_bytes > MAX_PENDING_BYTES {
                    // Too far behind: drop the queue, replay from storage later.
                    w.unsync();
                }
                mark_dirty(streams, w.stream, *id, &mut wake);
            }
        }
        for w in wake {
            w.wake();
        }
    }

    /// The store jumped to `revision` without publishing the revisions in between (a raft
    /// snapshot was installed): every caught-up watcher drops its queue and replays from
    /// storage, where those revisions are (or were compacted: then it gets the compacted
    /// response).
    pub fn jump_to(&self, revision: Revision) {
        let mut wake: Vec<Waker> = Vec::new();
        {
            let mut g = self.lock();
            if revision <= g.published {
                return;
            }
            g.published = revision;
            let Inner { watchers, streams, .. } = &mut *g;
            for (id, w) in watchers.iter_mut() {
                if !w.synced {
                    continue;
                }
                w.unsync();
                mark_dirty(streams, w.stream, *id, &mut wake);
            }
        }
        for w in wake {
            w.wake();
        }
    }

    /// The watchers of `stream` with work, clearing the set.
    pub fn take_dirty(&self, stream: StreamId) -> Vec<WatcherId> {
        let mut g = self.lock();
        match g.streams.get_mut(&stream) {
            Some(s) => std::mem::take(&mut s.dirty).into_iter().collect(),
            None => Vec::new(),
        }
    }

    /// Whether some watcher of `stream` has work (without clearing it).
    pub fn take_dirty_peek(&self, stream: StreamId) -> bool {
        self.lock().streams.get(&stream).is_some_and(|s| !s.dirty.is_empty())
    }

    /// Takes up to about `max_events` published events of a watcher (whole revisions; at
    /// least one revision), or says it must catch up.
    pub fn take(&self, id: WatcherId, max_events: usize) -> Take {
        let mut g = self.lock();
        let Some(w) = g.watchers.get_mut(&id) else { return Take::Idle };
        if !w.synced {
            return Take::CatchUp { next_rev: w.next_rev };
        }
        let mut out = Vec::new();
        let mut n = 0;
        while let Some(d) = w.pending.front() {
            if !out.is_empty() && n + d.events.len() > max_events {
                break;
            }
            let d = w.pending.pop_front().expect("front exists");
            n += d.events.len();
            let bytes: usize = d.events.iter().map(event_bytes).sum();
            w.pending_bytes = w.pending_bytes.saturating_sub(bytes);
            w.next_rev = d.revision + 1;
            out.push(d);
        }
        w.pending_events -= n;
        let more = !w.pending.is_empty();
        let stream = w.stream;
        if more {
            if let Some(s) = g.streams.get_mut(&stream) {
                s.dirty.insert(id);
            }
        }
        if out.is_empty() {
            Take::Idle
        } else {
            Take::Events(out)
        }
    }

    /// After a catch-up delivered every matching event below `next_rev`: rejoins the
    /// published flow if nothing at or after `next_rev` was published yet. Returns true if
    /// the watcher is synced now; false if it must keep catching up (it stays dirty) or is
    /// gone.
    pub fn caught_up(&self, id: WatcherId, next_rev: Revision) -> bool {
        let mut g = self.lock();
        let published = g.published;
        let Some(w) = g.watchers.get_mut(&id) else { return false };
        assert!(!w.synced, "only an unsynced watcher catches up");
        assert!(next_rev >= w.next_rev, "a catch-up never goes back: {} -> {next_rev}", w.next_rev);
        w.next_rev = next_rev;
        if next_rev > published {
            w.synced = true;
            true
        } else {
            let stream = w.stream;
            if let Some(s) = g.streams.get_mut(&stream) {
                s.dirty.insert(id);
            }
            false
        }
    }

    /// The revision a progress response for the whole stream may carry now, if every
    /// watcher of `stream` is synced with nothing queued and has reached its start revision
    /// (a progress request is answered only then). Decided under one lock, so no revision
    /// can be published between the check and the revision it returns.
    pub fn stream_progress(&self, stream: StreamId) -> Option<Revision> {
        let g = self.lock();
        let ready = match g.streams.get(&stream) {
            Some(s) => s.watchers.iter().all(|id| g.watchers.get(id).is_none_or(|w| w.progress_ready(g.published))),
            None => true,
        };
        ready.then_some(g.published)
    }

    /// Like [`WatchHub::stream_progress`] for one watcher (periodic progress notify).
    pub fn watcher_progress(&self, id: WatcherId) -> Option<Revision> {
        let g = self.lock();
        g.watchers.get(&id).filter(|w| w.progress_ready(g.published)).map(|_| g.published)
    }

    /// Raises the published revision to `revision` (start-up: everything up to the store's
    /// current revision is in storage, whether or not it was published).
    pub fn mark_published(&self, revision: Revision) {
        let mut g = self.lock();
        g.published = g.published.max(revision);
    }
}

/// Reads for watch catch-up.
impl ReadView {
    /// Events of revisions `from..=to` (every key, request order within a revision), reading
    /// about `max_rows` rows at most but never splitting a revision. Returns the events and
    /// the first revision not read (`to + 1` when complete).
    pub fn events(
        &self,
        from: Revision,
        to: Revision,
        max_rows: usize,
    ) -> Result<(Vec<(Revision, Event)>, Revision), StoreError> {
        let (_, revs) = self.tables();
        let mut out = Vec::new();
        if from > to {
            return Ok((out, from));
        }
        let lo = (from.max(0) as u64, 0u64);
        let hi = (to.max(0) as u64, u64::MAX);
        let mut last_rev: Option<u64> = None;
        for row in redb::ReadableTable::range(revs, lo..=hi)? {
            let (k, v) = row?;
            let (main, _) = k.value();
            if out.len() >= max_rows && last_rev != Some(main) {
                return Ok((out, main as Revision));
            }
            last_rev = Some(main);
            let rec = Record::decode(v.value())?;
            let ev = if rec.tombstone {
                Event {
                    kind: EventKind::Delete,
                    kv: KeyValue { key: rec.key, mod_revision: main as Revision, ..Default::default() },
                }
            } else {
                Event { kind: EventKind::Put, kv: rec.into_kv(main as Revision) }
            };
            out.push((main as Revision, ev));
        }
        Ok((out, to + 1))
    }

    /// The key's live value at revision `rev`, if any (a watch event's prev_kv).
    pub fn get_at(&self, key: &[u8], rev: Revision) -> Result<Option<KeyValue>, StoreError> {
        // Below the compacted revision there is no answer (etcd leaves prev_kv out then).
        if rev < 1 || rev < self.compact_revision() {
            return Ok(None);
        }
        let (index, revs) = self.tables();
        match read::live_at(index, key, rev as u64)? {
            Some(l) => Ok(Some(read::load_kv(revs, &l)?)),
            None => Ok(None),
        }
    }
}

/// loom models of the hub (run with `RUSTFLAGS="--cfg loom" cargo test -p cairn-storage
/// --lib --release watch::loom`; scripts/test.sh does). The guarantee checked: a watcher
/// registered at revision R while batches are applied and published concurrently sees
/// every event >= R exactly once, in order — through the published queue, the catch-up
/// from the "store" (commit happens before publish, as in apply), or both.
#[cfg(all(test, loom))]
mod loom_model {
    use super::*;
    use loom::sync::Arc;

    fn put(rev: Revision) -> Event {
        Event { kind: EventKind::Put, kv: KeyValue { key: b"k".to_vec(), mod_revision: rev, ..Default::default() } }
    }

    /// Drives one watcher: returns true when nothing is left to do right now.
    fn step(hub: &WatchHub, store: &loom::sync::Mutex<Vec<Revision>>, id: WatcherId, seen: &mut Vec<Revision>) -> bool {
        match hub.take(id, 10) {
            Take::Idle => true,
            Take::Events(ds) => {
                for d in ds {
                    seen.extend(d.events.iter().map(|e| e.kv.mod_revision));
                }
                false
            }
            Take::CatchUp { next_rev } => {
                let committed = store.lock().expect("store").clone();
                let current = *committed.last().expect("store has revision 1");
                seen.extend(committed.iter().copied().filter(|r| *r >= next_rev && *r > 1));
                hub.caught_up(id, current + 1);
                false
            }
        }
    }

    fn model(max_pending: usize, start: Revision) {
        loom::model(move || {
            // Revision 1 is the empty store; 2 is committed and published before the watch.
            let store = Arc::new(loom::sync::Mutex::new(vec![1, 2]));
            let hub = Arc::new(WatchHub::new(2, max_pending));
            let stream = hub.open_stream(Waker::noop().clone());
            let applier = {
                let (hub, store) = (hub.clone(), store.clone());
                loom::thread::spawn(move || {
                    for rev in 3..=4 {
                        store.lock().expect("store").push(rev);
                        hub.publish(rev, &[put(rev)]);
                    }
                })
            };
            let spec = WatchSpec { key: b"k".to_vec(), range_end: Vec::new(), no_put: false, no_delete: false };
            let id = hub.add(stream, spec, start, start).expect("stream open");
            let mut seen = Vec::new();
            // Work concurrently with the applier for a few steps...
            for _ in 0..3 {
                step(&hub, &store, id, &mut seen);
            }
            applier.join().expect("applier");
            // ...then drain.
            for _ in 0..16 {
                if step(&hub, &store, id, &mut seen) && hub.watcher_progress(id).is_some() {
                    break;
                }
            }
            let want: Vec<Revision> = (start.max(2)..=4).collect();
            assert_eq!(seen, want, "every event >= {start} exactly once, in order");
        });
    }

    #[test]
    fn watcher_in_the_past_sees_every_event_once() {
        model(16, 2);
    }

    #[test]
    fn watcher_at_the_next_revision_sees_every_event_once() {
        model(16, 3);
    }

    #[test]
    fn overflowing_watcher_catches_up_exactly_once() {
        model(1, 2);
    }
}
