//! etcd's client-side `concurrency` package (sessions, waiting for deletions), run inside
//! the server for the Lock and Election services.
//!
//! etcd 3.5 implements v3lock and v3election with its Go client (`clientv3/concurrency`)
//! talking to its own KV, Lease and Watch services in-process. Cairn runs the same
//! algorithms directly: writes are txns proposed through raft, reads come from the local
//! store after a read-index barrier, and waiting is a watcher on the member's watch hub.
//! Observable consequences kept from etcd (checked against the 3.5.1 binary by
//! `tests/tests/it/lock.rs`):
//!
//! - Every error reaches the caller with code Unknown and etcd's message (the in-process
//!   client turns statuses into plain errors, which grpc-go sends as Unknown), e.g.
//!   "etcdserver: requested lease not found", "election: not leader".
//! - A request with lease 0 makes a session: a new lease of 60 s (`defaultSessionTTL`)
//!   that nobody keeps alive.
//! - Keys are `<name>/<lease ID as Go's %x>`; the holder is the key under `<name>/` with the
//!   lowest create revision; a waiter waits until every key under the prefix with a smaller
//!   create revision is deleted (`waitDeletes`), watching the newest of them each time.

use std::sync::Arc;
use std::task::Waker;

use bytes::Bytes;
use cairn_proto::etcdserverpb as pb;
use cairn_proto::rpctypes::EtcdError;
use cairn_storage::watch::{StreamId, Take, WatchSpec, WatcherId};
use cairn_storage::{validate, Command, CommandResponse, Event, EventKind, KeyValue, LeaseId, Revision};
use prost::Message;
use tokio::sync::Notify;
use tonic::Status;

use crate::context::Context;
use crate::lessor::Lessor;
use crate::watch::NotifyWaker;
use crate::{convert, status};

/// etcd's `concurrency.defaultSessionTTL`: the TTL of the lease made for a request with
/// lease 0.
pub const DEFAULT_SESSION_TTL_SECS: i64 = 60;

/// Revision-log rows read per catch-up step of an internal watcher.
const CATCHUP_ROWS: usize = 2000;

/// Events taken from the hub at once by an internal watcher.
const MAX_TAKE_EVENTS: usize = 1000;

/// How an error of etcd's in-process client reaches the caller of Lock/Election: grpc-go
/// sends the client's error value (not a status) as code Unknown with its text.
pub fn client_error(s: Status) -> Status {
    Status::unknown(s.message().to_string())
}

/// Go's `%x` of an int64 (a minus sign, then the magnitude), as etcd names session keys.
/// Auth: etcd serves Lock and Election through its in-process client with the caller's
/// token, so the caller needs what those calls need: read on the `prefix` range (the owner
/// and waiter lookups, the watch) and write on its own `key` (the put/delete of it).
/// Errors come back as the client saw them (code Unknown).
pub fn check_access(
    ctx: &Context,
    md: &tonic::metadata::MetadataMap,
    prefix: Option<&[u8]>,
    key: Option<&[u8]>,
) -> Result<(), Status> {
    if let Some(p) = prefix {
        ctx.authz.check_range(md, p, &prefix_end(p)).map_err(client_error)?;
    }
    if let Some(k) = key {
        let put = Command::Put(cairn_storage::PutRequest { key: k.to_vec(), ..Default::default() });
        ctx.authz.authorize(md, ctx.node.store(), put).map_err(client_error)?;
    }
    if prefix.is_none() && key.is_none() {
        ctx.authz.check_token(md).map_err(client_error)?;
    }
    Ok(())
}

pub fn go_hex(v: i64) -> String {
    if v < 0 {
        format!("-{:x}", v.unsigned_abs())
    } else {
        format!("{v:x}")
    }
}

/// etcd's `GetPrefixRangeEnd`: the smallest key after every key starting with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// The session's lease: the given one, or for 0 a new lease of 60 s (etcd's
/// `NewSession(WithLease(0))` grants one; the session is orphaned at once, so nothing keeps
/// it alive).
/// The start of Lock and Campaign (etcd's NewSession + key): the caller's session lease,
/// the prefix `<name>/` and its key `<name>/<lease hex>`, with the caller's permissions on
/// both checked.
pub async fn session_key(
    ctx: &Arc<Context>,
    lessor: &Arc<Lessor>,
    md: &tonic::metadata::MetadataMap,
    name: &[u8],
    lease: LeaseId,
) -> Result<(LeaseId, Vec<u8>, Vec<u8>), Status> {
    check_access(ctx, md, None, None)?;
    let lease = session_lease(ctx, lessor, lease).await?;
    let prefix = [name, b"/"].concat();
    let key = [&prefix[..], go_hex(lease).as_bytes()].concat();
    check_access(ctx, md, Some(&prefix), Some(&key))?;
    Ok((lease, prefix, key))
}

pub async fn session_lease(ctx: &Arc<Context>, lessor: &Arc<Lessor>, lease: LeaseId) -> Result<LeaseId, Status> {
    if lease != 0 {
        return Ok(lease);
    }
    let ttl_secs = lessor.effective_ttl(DEFAULT_SESSION_TTL_SECS);
    let len = pb::LeaseGrantRequest { ttl: ttl_secs, id: 0 }.encoded_len();
    // Its own task, as the Lease service does: a grant applied after the caller went away
    // still gets its deadline.
    let task = tokio::spawn(crate::lease::grant(ctx.clone(), lessor.clone(), 0, ttl_secs, len));
    match task.await {
        Ok(Ok(r)) => Ok(r.id),
        Ok(Err(s)) => Err(client_error(s)),
        Err(e) => Err(Status::unknown(format!("internal error: lease task failed: {e}"))),
    }
}

// ---------------------------------------------------------------- requests

/// `Compare(CreateRevision(key), "=", rev)`.
pub fn create_revision_is(key: &[u8], rev: Revision) -> pb::Compare {
    pb::Compare {
        result: pb::compare::CompareResult::Equal as i32,
        target: pb::compare::CompareTarget::Create as i32,
        key: Bytes::copy_from_slice(key),
        range_end: Bytes::new(),
        target_union: Some(pb::compare::TargetUnion::CreateRevision(rev)),
    }
}

fn op(r: pb::request_op::Request) -> pb::RequestOp {
    pb::RequestOp { request: Some(r) }
}

/// `OpPut(key, value, WithLease(lease))`.
pub fn put(key: &[u8], value: &[u8], lease: LeaseId) -> pb::RequestOp {
    op(pb::request_op::Request::RequestPut(pb::PutRequest {
        key: Bytes::copy_from_slice(key),
        value: Bytes::copy_from_slice(value),
        lease,
        ..Default::default()
    }))
}

/// `OpGet(key)`.
pub fn get(key: &[u8]) -> pb::RequestOp {
    op(pb::request_op::Request::RequestRange(pb::RangeRequest {
        key: Bytes::copy_from_slice(key),
        ..Default::default()
    }))
}

/// `OpDelete(key)`.
pub fn delete(key: &[u8]) -> pb::RequestOp {
    op(pb::request_op::Request::RequestDeleteRange(pb::DeleteRangeRequest {
        key: Bytes::copy_from_slice(key),
        ..Default::default()
    }))
}

/// `OpGet(prefix, WithFirstCreate()...)`: the key under `prefix` created first.
pub fn first_created(prefix: &[u8]) -> pb::RangeRequest {
    pb::RangeRequest {
        key: Bytes::copy_from_slice(prefix),
        range_end: Bytes::from(prefix_end(prefix)),
        limit: 1,
        sort_order: pb::range_request::SortOrder::Ascend as i32,
        sort_target: pb::range_request::SortTarget::Create as i32,
        ..Default::default()
    }
}

/// `OpGet(prefix, WithLastCreate()..., WithMaxCreateRev(max))`: the key under `prefix`
/// created last at or before `max_create_rev`.
fn last_created_up_to(prefix: &[u8], max_create_rev: Revision) -> pb::RangeRequest {
    pb::RangeRequest {
        key: Bytes::copy_from_slice(prefix),
        range_end: Bytes::from(prefix_end(prefix)),
        limit: 1,
        sort_order: pb::range_request::SortOrder::Descend as i32,
        sort_target: pb::range_request::SortTarget::Create as i32,
        max_create_revision: max_create_rev,
        ..Default::default()
    }
}

/// A txn's outcome and the revision of its header.
pub struct TxnOutcome {
    pub succeeded: bool,
    pub responses: Vec<cairn_storage::ResponseOp>,
    pub revision: Revision,
}

impl TxnOutcome {
    /// The kvs of the range response at `index`, if that response is a range.
    pub fn range_kvs(&self, index: usize) -> Option<&[KeyValue]> {
        match self.responses.get(index) {
            Some(cairn_storage::ResponseOp::Range(r)) => Some(&r.kvs),
            _ => None,
        }
    }
}

/// Builds a command for `req` as the KV service would (validation, size), for proposing.
pub fn txn_command(ctx: &Context, req: &pb::TxnRequest) -> Result<(Command, usize), Status> {
    let dreq = convert::txn_req(req);
    validate::check_txn(&dreq, ctx.max_txn_ops).map_err(|e| client_error(status::request_error(&e)))?;
    Ok((Command::Txn(dreq), req.encoded_len()))
}

/// Proposes a txn, as the in-process client's `Txn` does with the caller's token `md`:
/// permissions checked, and the write wrapped with the auth revision it was checked at.
pub async fn txn(ctx: &Context, md: &tonic::metadata::MetadataMap, req: pb::TxnRequest) -> Result<TxnOutcome, Status> {
    let (cmd, len) = txn_command(ctx, &req)?;
    let cmd = ctx.authz.authorize(md, ctx.node.store(), cmd).map_err(client_error)?;
    let applied = ctx.propose(cmd, len).await.map_err(client_error)?;
    match applied.result {
        Ok(CommandResponse::Txn(t)) => {
            Ok(TxnOutcome { succeeded: t.succeeded, responses: t.responses, revision: applied.revision })
        }
        Ok(_) => Err(Status::unknown("internal error: unexpected response to txn")),
        Err(e) => Err(client_error(status::request_error(&e))),
    }
}

/// Deletes one key, as the in-process client's `Delete` does; the header's revision.
pub async fn delete_key(ctx: &Context, md: &tonic::metadata::MetadataMap, key: &[u8]) -> Result<Revision, Status> {
    let req = pb::DeleteRangeRequest { key: Bytes::copy_from_slice(key), ..Default::default() };
    let dreq = convert::delete_req(&req);
    validate::check_delete(&dreq).map_err(|e| client_error(status::request_error(&e)))?;
    let cmd = ctx.authz.authorize(md, ctx.node.store(), Command::DeleteRange(dreq)).map_err(client_error)?;
    let applied = ctx.propose(cmd, req.encoded_len()).await.map_err(client_error)?;
    match applied.result {
        Ok(CommandResponse::DeleteRange(_)) => Ok(applied.revision),
        Ok(_) => Err(Status::unknown("internal error: unexpected response to delete range")),
        Err(e) => Err(client_error(status::request_error(&e))),
    }
}

/// A linearizable Range, as the in-process client's `Get` does: the kvs and the header's
/// revision.
pub async fn range(ctx: &Context, req: &pb::RangeRequest) -> Result<(Vec<KeyValue>, Revision), Status> {
    ctx.linearizable_barrier().await.map_err(client_error)?;
    let dreq = convert::range_req(req);
    let store = ctx.node.store().clone();
    // A prefix may hold many keys (each waiter's): off the async worker, as kv.rs does.
    let res = tokio::task::block_in_place(|| {
        let view = store.read()?;
        let rev = view.current_revision();
        view.range(&dreq).map(|r| (r, rev))
    });
    match res {
        Err(e) => Err(client_error(status::store_error(&e))),
        Ok((Err(e), _)) => Err(client_error(status::request_error(&e))),
        Ok((Ok(r), rev)) => Ok((r.kvs, rev)),
    }
}

/// etcd's `waitDeletes`: returns once no key under `prefix` has a create revision at or
/// below `max_create_rev`. Each round reads the newest such key and waits for its deletion;
/// keys at or below `max_create_rev` can only disappear (new keys get newer revisions), so
/// this ends exactly when the last of them is gone. A waiter's own key being deleted
/// meanwhile does not end the wait (etcd's "TODO: early termination").
pub async fn wait_deletes(ctx: &Arc<Context>, prefix: &[u8], max_create_rev: Revision) -> Result<(), Status> {
    let req = last_created_up_to(prefix, max_create_rev);
    loop {
        let (kvs, rev) = range(ctx, &req).await?;
        let Some(last) = kvs.into_iter().next() else { return Ok(()) };
        let mut w = InternalWatch::open(ctx, last.key, Vec::new(), rev);
        'deleted: loop {
            for ev in w.next().await? {
                if ev.kind == EventKind::Delete {
                    break 'deleted;
                }
            }
        }
    }
}

// ---------------------------------------------------------------- internal watch

/// A watcher on the member's hub, used from inside a handler (the in-process client's
/// `Watch`): every matching event from `start` on, exactly once, in order, replaying the
/// revision log when it is behind. Removed from the hub when dropped (a cancelled request
/// leaves no watcher behind).
pub struct InternalWatch {
    ctx: Arc<Context>,
    stream: StreamId,
    id: Option<WatcherId>,
    spec: WatchSpec,
    wake: Arc<Notify>,
}

impl InternalWatch {
    /// Watches `[key, range_end)` (etcd's range_end rules) from revision `start`.
    pub fn open(ctx: &Arc<Context>, key: Vec<u8>, range_end: Vec<u8>, start: Revision) -> InternalWatch {
        let wake = Arc::new(Notify::new());
        let stream = ctx.hub.open_stream(Waker::from(Arc::new(NotifyWaker(wake.clone()))));
        let spec = WatchSpec { key, range_end, no_put: false, no_delete: false };
        let id = ctx.hub.add(stream, spec.clone(), start, start);
        InternalWatch { ctx: ctx.clone(), stream, id, spec, wake }
    }

    /// The next matching events (at least one), in revision order. Fails with etcd's
    /// compacted error if the history it needs is compacted.
    pub async fn next(&mut self) -> Result<Vec<Event>, Status> {
        let Some(id) = self.id else {
            return Err(Status::unknown("internal error: watch stream closed"));
        };
        loop {
            // Clear the stream's dirty mark first: a publish after this wakes us again.
            self.ctx.hub.take_dirty(self.stream);
            match self.ctx.hub.take(id, MAX_TAKE_EVENTS) {
                Take::Events(ds) => return Ok(ds.into_iter().flat_map(|d| d.events).collect()),
                Take::CatchUp { next_rev } => {
                    let events = self.catch_up(id, next_rev)?;
                    if !events.is_empty() {
                        return Ok(events);
                    }
                }
                Take::Idle => self.wake.notified().await,
            }
        }
    }

    /// One bounded step of replaying the revision log from `next_rev`.
    fn catch_up(&self, id: WatcherId, next_rev: Revision) -> Result<Vec<Event>, Status> {
        let store = self.ctx.node.store().clone();
        let spec = &self.spec;
        let read = tokio::task::block_in_place(|| -> Result<_, cairn_storage::StoreError> {
            let view = store.read()?;
            let (current, compacted) = (view.current_revision(), view.compact_revision());
            if next_rev < compacted {
                return Ok(None);
            }
            let (rows, next) = view.events(next_rev, current, CATCHUP_ROWS)?;
            let events: Vec<Event> = rows.into_iter().map(|(_, e)| e).filter(|e| spec.matches(e)).collect();
            Ok(Some((events, next)))
        });
        match read {
            Err(e) => Err(client_error(status::store_error(&e))),
            Ok(None) => Err(client_error(EtcdError::Compacted.status())),
            Ok(Some((events, next))) => {
                self.ctx.hub.caught_up(id, next);
                Ok(events)
            }
        }
    }
}

impl Drop for InternalWatch {
    fn drop(&mut self) {
        self.ctx.hub.close_stream(self.stream);
    }
}

// ---------------------------------------------------------------- cleanup

/// A write to propose if the request is dropped (its client cancelled) before [`disarm`]:
/// etcd's cleanup of a waiter whose context ends (Lock unlocks, Campaign resigns).
///
/// [`disarm`]: CleanupOnCancel::disarm
pub struct CleanupOnCancel {
    ctx: Arc<Context>,
    cmd: Option<(Command, usize)>,
}

impl CleanupOnCancel {
    pub fn new(ctx: &Arc<Context>, cmd: (Command, usize)) -> CleanupOnCancel {
        CleanupOnCancel { ctx: ctx.clone(), cmd: Some(cmd) }
    }

    /// The request finished (by itself): nothing to do on drop. Returns the command.
    pub fn disarm(mut self) -> Option<(Command, usize)> {
        self.cmd.take()
    }
}

impl Drop for CleanupOnCancel {
    fn drop(&mut self) {
        let Some((cmd, len)) = self.cmd.take() else { return };
        let ctx = self.ctx.clone();
        // Dropped outside a runtime only at shutdown, when nothing can be proposed anyway.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = ctx.propose(cmd, len).await {
                    tracing::warn!(error = %e.message(), "cleanup after a cancelled lock/election request failed");
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_hex_matches_go_formatting() {
        assert_eq!(go_hex(0), "0");
        assert_eq!(go_hex(0x694d7a1b2c3d4e5f), "694d7a1b2c3d4e5f");
        assert_eq!(go_hex(-1), "-1");
        assert_eq!(go_hex(i64::MIN), "-8000000000000000");
    }

    #[test]
    fn prefix_end_is_etcds() {
        assert_eq!(prefix_end(b"a/"), b"a0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
        assert_eq!(prefix_end(b""), vec![0]);
    }
}
