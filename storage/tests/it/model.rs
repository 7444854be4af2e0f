//! A plain in-memory model of etcd's MVCC semantics, written from etcd's behaviour and not
//! from cairn-storage's code: the whole keyspace of every revision, kept in a Vec.
//!
//! It is slow and obviously correct on purpose. Rules it encodes (etcd 3.5):
//! - a fresh store is at revision 1; every command that changes something makes exactly one
//!   new revision; the n-th change inside it is sub-revision n;
//! - a put keeps create_revision and bumps version of a live key, else starts at version 1
//!   with create_revision = the new revision; a delete removes the key (a tombstone event);
//! - a delete of nothing, or a txn whose branch changes nothing, makes no revision;
//! - txn compares, and the checks of puts and ranges (ignore_* on a missing key, lease,
//!   range revision), are all made on the state before the txn, puts before ranges;
//! - a range inside a txn at revision 0 sees the txn's earlier writes;
//! - reads below the compacted revision fail, above the current one fail;
//! - leases (etcd's lessor): a grant of ID 0 is "not found", a TTL above 9e9 s "too large",
//!   an existing ID "already exists"; a revoke deletes every live key carrying the lease, in
//!   key order, in one revision (none if it has no keys); a put naming a lease that does not
//!   exist fails. The keys of a lease are simply the live keys whose `lease` is its ID.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};

use cairn_storage::*;

pub type State = BTreeMap<Vec<u8>, KeyValue>;

/// One row the store must keep for a change: `(main, sub, key, tombstone)`.
pub type Row = (Revision, usize, Vec<u8>, bool);

#[derive(Clone)]
pub struct Model {
    /// `states[r]`: every live key at revision r. `states[0]` is unused, `states[1]` is the
    /// empty fresh store.
    pub states: Vec<State>,
    /// `events[r]`: the changes of revision r, in order.
    pub events: Vec<Vec<Event>>,
    pub compacted: Revision,
    /// Leases that exist, with their granted TTL.
    pub leases: BTreeMap<LeaseId, i64>,
    pub max_txn_ops: usize,
}

/// Whether `k` is in etcd's `key`/`range_end` span.
pub fn in_span(k: &[u8], key: &[u8], end: &[u8]) -> bool {
    if end.is_empty() {
        k == key
    } else if end == [0] {
        k >= key
    } else {
        k >= key && k < end
    }
}

/// A command being applied: the state it writes and the changes so far.
struct Pending {
    rev: Revision,
    state: State,
    events: Vec<Event>,
}

impl Pending {
    fn put(&mut self, p: &PutRequest) -> PutResponse {
        let prev = self.state.get(&p.key).cloned();
        let value =
            if p.ignore_value { prev.as_ref().map(|kv| kv.value.clone()).unwrap_or_default() } else { p.value.clone() };
        let lease = if p.ignore_lease { prev.as_ref().map_or(0, |kv| kv.lease) } else { p.lease };
        let kv = KeyValue {
            key: p.key.clone(),
            create_revision: prev.as_ref().map_or(self.rev, |kv| kv.create_revision),
            mod_revision: self.rev,
            version: prev.as_ref().map_or(1, |kv| kv.version + 1),
            value,
            lease,
        };
        self.state.insert(p.key.clone(), kv.clone());
        self.events.push(Event { kind: EventKind::Put, kv });
        PutResponse { prev_kv: if p.prev_kv { prev } else { None } }
    }

    fn delete(&mut self, d: &DeleteRangeRequest) -> DeleteRangeResponse {
        let keys: Vec<Vec<u8>> = self.state.keys().filter(|k| in_span(k, &d.key, &d.range_end)).cloned().collect();
        let mut resp = DeleteRangeResponse { deleted: keys.len() as i64, prev_kvs: Vec::new() };
        for k in keys {
            let prev = self.state.remove(&k).expect("listed above");
            self.events.push(Event {
                kind: EventKind::Delete,
                kv: KeyValue { key: k, mod_revision: self.rev, ..Default::default() },
            });
            if d.prev_kv {
                resp.prev_kvs.push(prev);
            }
        }
        resp
    }
}

impl Model {
    pub fn new(max_txn_ops: usize) -> Model {
        Model {
            states: vec![State::new(), State::new()],
            events: vec![Vec::new(), Vec::new()],
            compacted: -1,
            leases: BTreeMap::new(),
            max_txn_ops,
        }
    }

    pub fn current(&self) -> Revision {
        self.states.len() as Revision - 1
    }

    pub fn state(&self, rev: Revision) -> &State {
        &self.states[rev as usize]
    }

    // ---- validation (etcd's v3rpc/key.go), made before a command is proposed ----

    pub fn validate(&self, cmd: &Command) -> Result<(), RequestError> {
        match cmd {
            Command::Alarm { .. } => Ok(()),
            Command::Put(p) => Self::validate_put(p),
            Command::DeleteRange(d) => Self::validate_key(&d.key),
            Command::Txn(x) => {
                self.validate_txn(x, self.max_txn_ops as i64)?;
                Self::intervals(&x.success)?;
                Self::intervals(&x.failure)?;
                Ok(())
            }
            Command::Compact(_) | Command::LeaseRevoke { .. } => Ok(()),
            Command::LeaseGrant { ttl_secs, .. } => Self::validate_ttl(*ttl_secs),
            Command::Auth(_) | Command::AuthChecked { .. } => Ok(()),
        }
    }

    /// etcd's `MaxLeaseTTL`.
    fn validate_ttl(ttl_secs: i64) -> Result<(), RequestError> {
        if ttl_secs > 9_000_000_000 {
            Err(RequestError::LeaseTtlTooLarge { ttl_secs })
        } else {
            Ok(())
        }
    }

    /// The live keys carrying lease `id`, in key order.
    pub fn lease_keys(&self, id: LeaseId) -> Vec<Vec<u8>> {
        self.state(self.current()).values().filter(|kv| kv.lease == id).map(|kv| kv.key.clone()).collect()
    }

    pub fn validate_key(k: &[u8]) -> Result<(), RequestError> {
        if k.is_empty() {
            Err(RequestError::EmptyKey)
        } else {
            Ok(())
        }
    }

    fn validate_put(p: &PutRequest) -> Result<(), RequestError> {
        Self::validate_key(&p.key)?;
        if p.ignore_value && !p.value.is_empty() {
            return Err(RequestError::ValueProvided);
        }
        if p.ignore_lease && p.lease != 0 {
            return Err(RequestError::LeaseProvided);
        }
        Ok(())
    }

    fn validate_txn(&self, x: &TxnRequest, max_ops: i64) -> Result<(), RequestError> {
        let opc = x.compare.len().max(x.success.len()).max(x.failure.len()) as i64;
        if opc > max_ops {
            return Err(RequestError::TooManyOps);
        }
        for c in &x.compare {
            Self::validate_key(&c.key)?;
        }
        for op in x.success.iter().chain(&x.failure) {
            match op {
                RequestOp::Range(r) => Self::validate_key(&r.key)?,
                RequestOp::Put(p) => Self::validate_put(p)?,
                RequestOp::DeleteRange(d) => Self::validate_key(&d.key)?,
                RequestOp::Txn(t) => self.validate_txn(t, max_ops - opc)?,
            }
        }
        Ok(())
    }

    /// etcd's `checkIntervals`: returns the puts and deleted intervals of a list of ops.
    /// A delete interval `[key, end)` with `end <= key` (the from-key form `\0`) covers no key.
    #[allow(clippy::type_complexity)]
    fn intervals(ops: &[RequestOp]) -> Result<(BTreeSet<Vec<u8>>, Vec<(Vec<u8>, Vec<u8>)>), RequestError> {
        let covers = |dels: &[(Vec<u8>, Vec<u8>)], k: &[u8]| {
            dels.iter()
                .any(|(s, e)| if e.is_empty() { s.as_slice() == k } else { s.as_slice() <= k && k < e.as_slice() })
        };
        let mut dels: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        for op in ops {
            if let RequestOp::DeleteRange(d) = op {
                dels.push((d.key.clone(), d.range_end.clone()));
            }
        }
        let mut puts: BTreeSet<Vec<u8>> = BTreeSet::new();
        for op in ops {
            let RequestOp::Txn(t) = op else { continue };
            let (then_puts, then_dels) = Self::intervals(&t.success)?;
            let (else_puts, else_dels) = Self::intervals(&t.failure)?;
            for k in &then_puts {
                if puts.contains(k) || covers(&dels, k) {
                    return Err(RequestError::DuplicateKey);
                }
                puts.insert(k.clone());
            }
            for k in &else_puts {
                if puts.contains(k) && !then_puts.contains(k) {
                    return Err(RequestError::DuplicateKey);
                }
                if covers(&dels, k) {
                    return Err(RequestError::DuplicateKey);
                }
                puts.insert(k.clone());
            }
            dels.extend(then_dels);
            dels.extend(else_dels);
        }
        for op in ops {
            let RequestOp::Put(p) = op else { continue };
            if puts.contains(&p.key) || covers(&dels, &p.key) {
                return Err(RequestError::DuplicateKey);
            }
            puts.insert(p.key.clone());
        }
        Ok((puts, dels))
    }

    // ---- reads ----

    /// A standalone Range (etcd's `rangeKeys` order of checks).
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, RequestError> {
        let current = self.current();
        if req.revision > current {
            return Err(RequestError::FutureRevision { current_revision: current });
        }
        let rev = if req.revision <= 0 { current } else { req.revision };
        if rev < self.compacted {
            return Err(RequestError::Compacted { compact_revision: self.compacted });
        }
        Ok(range_of(self.state(rev), req))
    }

    // ---- apply ----

    /// Applies one validated command; returns the header revision and the result, and the
    /// events of the new revision if it made one.
    pub fn apply(&mut self, cmd: &Command) -> (Applied, Option<Vec<Event>>) {
        let current = self.current();
        let mut pending = Pending { rev: current + 1, state: self.state(current).clone(), events: Vec::new() };
        let result = match cmd {
            Command::Alarm { .. } => {
                unreachable!("the generator makes no alarm commands (tests/it/maintenance.rs covers them)")
            }
            Command::Put(p) => {
                // Standalone put: the lease first, then ignore_* on a missing key (etcd's
                // applierV3backend.Put); in a txn the order is the other way round.
                if p.lease != 0 && !self.leases.contains_key(&p.lease) {
                    Err(RequestError::LeaseNotFound { lease: p.lease })
                } else if (p.ignore_value || p.ignore_lease) && !pending.state.contains_key(&p.key) {
                    Err(RequestError::KeyNotFound)
                } else {
                    Ok(CommandResponse::Put(pending.put(p)))
                }
            }
            Command::DeleteRange(d) => Ok(CommandResponse::DeleteRange(pending.delete(d))),
            Command::Txn(x) => {
                let base = self.state(current).clone();
                match self.check_txn_puts(x, &base).and_then(|_| self.check_txn_ranges(x, &base)) {
                    Err(e) => Err(e),
                    Ok(()) => Ok(CommandResponse::Txn(self.exec_txn(x, &base, &mut pending))),
                }
            }
            Command::Compact(c) => {
                if c.revision <= self.compacted {
                    Err(RequestError::Compacted { compact_revision: self.compacted })
                } else if c.revision > current {
                    Err(RequestError::FutureRevision { current_revision: current })
                } else {
                    self.compacted = c.revision;
                    Ok(CommandResponse::Compact)
                }
            }
            &Command::LeaseGrant { id, ttl_secs } => {
                if id == 0 {
                    Err(RequestError::LeaseNotFound { lease: id })
                } else if let Err(e) = Self::validate_ttl(ttl_secs) {
                    Err(e)
                } else {
                    match self.leases.entry(id) {
                        Entry::Occupied(_) => Err(RequestError::LeaseExist { lease: id }),
                        Entry::Vacant(e) => {
                            e.insert(ttl_secs);
                            Ok(CommandResponse::LeaseGrant { id, ttl_secs })
                        }
                    }
                }
            }
            &Command::LeaseRevoke { id } => {
                if self.leases.remove(&id).is_none() {
                    Err(RequestError::LeaseNotFound { lease: id })
                } else {
                    for key in self.lease_keys(id) {
                        pending.delete(&DeleteRangeRequest { key, range_end: Vec::new(), prev_kv: false });
                    }
                    Ok(CommandResponse::LeaseRevoke { id })
                }
            }
            Command::Auth(_) | Command::AuthChecked { .. } => unreachable!("the model covers no auth commands"),
        };
        if result.is_err() || pending.events.is_empty() {
            return (Applied { revision: current, result }, None);
        }
        self.states.push(pending.state);
        self.events.push(pending.events.clone());
        (Applied { revision: current + 1, result }, Some(pending.events))
    }

    fn compare(base: &State, c: &Compare) -> bool {
        let kvs: Vec<&KeyValue> = base.values().filter(|kv| in_span(&kv.key, &c.key, &c.range_end)).collect();
        let zero = KeyValue::default();
        if kvs.is_empty() && matches!(c.target, CompareTarget::Value(_)) {
            return false;
        }
        let kvs = if kvs.is_empty() { vec![&zero] } else { kvs };
        kvs.iter().all(|kv| {
            let ord = match &c.target {
                CompareTarget::Version(v) => kv.version.cmp(v),
                CompareTarget::Create(v) => kv.create_revision.cmp(v),
                CompareTarget::Mod(v) => kv.mod_revision.cmp(v),
                CompareTarget::Value(v) => kv.value.cmp(v),
                CompareTarget::Lease(v) => kv.lease.cmp(v),
            };
            match c.result {
                CompareResult::Equal => ord.is_eq(),
                CompareResult::NotEqual => ord.is_ne(),
                CompareResult::Greater => ord.is_gt(),
                CompareResult::Less => ord.is_lt(),
            }
        })
    }

    fn branch<'x>(base: &State, x: &'x TxnRequest) -> (bool, &'x [RequestOp]) {
        if x.compare.iter().all(|c| Self::compare(base, c)) {
            (true, &x.success)
        } else {
            (false, &x.failure)
        }
    }

    fn check_txn_puts(&self, x: &TxnRequest, base: &State) -> Result<(), RequestError> {
        for op in Self::branch(base, x).1 {
            match op {
                RequestOp::Txn(t) => self.check_txn_puts(t, base)?,
                RequestOp::Put(p) => {
                    if (p.ignore_value || p.ignore_lease) && !base.contains_key(&p.key) {
                        return Err(RequestError::KeyNotFound);
                    }
                    if p.lease != 0 && !self.leases.contains_key(&p.lease) {
                        return Err(RequestError::LeaseNotFound { lease: p.lease });
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn check_txn_ranges(&self, x: &TxnRequest, base: &State) -> Result<(), RequestError> {
        for op in Self::branch(base, x).1 {
            match op {
                RequestOp::Txn(t) => self.check_txn_ranges(t, base)?,
                RequestOp::Range(r) if r.revision != 0 => {
                    if r.revision > self.current() {
                        return Err(RequestError::FutureRevision { current_revision: self.current() });
                    }
                    if r.revision < self.compacted {
                        return Err(RequestError::Compacted { compact_revision: self.compacted });
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn exec_txn(&self, x: &TxnRequest, base: &State, pending: &mut Pending) -> TxnResponse {
        let (succeeded, ops) = Self::branch(base, x);
        let mut responses = Vec::new();
        for op in ops {
            responses.push(match op {
                RequestOp::Range(r) => {
                    // Checked above: 0 reads the txn's own view, otherwise a kept revision.
                    let resp =
                        if r.revision <= 0 { range_of(&pending.state, r) } else { range_of(self.state(r.revision), r) };
                    ResponseOp::Range(resp)
                }
                RequestOp::Put(p) => ResponseOp::Put(pending.put(p)),
                RequestOp::DeleteRange(d) => ResponseOp::DeleteRange(pending.delete(d)),
                RequestOp::Txn(t) => ResponseOp::Txn(self.exec_txn(t, base, pending)),
            });
        }
        TxnResponse { succeeded, responses }
    }

    // ---- compaction ----

    /// Every row of the revision log, in revision order.
    pub fn all_rows(&self) -> Vec<Row> {
        let mut rows = Vec::new();
        for (rev, evs) in self.events.iter().enumerate() {
            for (sub, e) in evs.iter().enumerate() {
                rows.push((rev as Revision, sub, e.kv.key.clone(), e.kind == EventKind::Delete));
            }
        }
        rows
    }

    /// The rows a store must hold once physical compaction to `self.compacted` is complete:
    /// every row above it, and for each key its newest row at or below it unless that row
    /// is a tombstone below it (a tombstone at exactly the compacted revision stays).
    pub fn rows_after_compaction(&self) -> Vec<Row> {
        let c = self.compacted;
        let mut newest: BTreeMap<Vec<u8>, Row> = BTreeMap::new();
        let mut kept = Vec::new();
        for row in self.all_rows() {
            if row.0 <= c {
                newest.insert(row.2.clone(), row);
            } else {
                kept.push(row);
            }
        }
        kept.extend(newest.into_values().filter(|r| !(r.3 && r.0 < c)));
        kept
    }
}

/// etcd's Range over one state: count of every key in span, then filters, sort, limit,
/// keys_only. Sorting is stable with key order for ties (what etcd's insertion sort does for
/// the small results here).
pub fn range_of(state: &State, req: &RangeRequest) -> RangeResponse {
    let mut kvs: Vec<KeyValue> =
        state.values().filter(|kv| in_span(&kv.key, &req.key, &req.range_end)).cloned().collect();
    let count = kvs.len() as i64;
    if req.count_only {
        return RangeResponse { kvs: Vec::new(), more: false, count };
    }
    let filtered = req.min_mod_revision != 0
        || req.max_mod_revision != 0
        || req.min_create_revision != 0
        || req.max_create_revision != 0;
    if req.sort_order == SortOrder::None && !filtered && req.limit > 0 {
        // etcd's rangeLimit looks at the sort order as sent: with order NONE it fetches
        // limit+1 keys in key order even when a target other than KEY sorts them afterwards.
        kvs.truncate(req.limit as usize + 1);
    }
    kvs.retain(|kv| {
        (req.max_mod_revision == 0 || kv.mod_revision <= req.max_mod_revision)
            && (req.min_mod_revision == 0 || kv.mod_revision >= req.min_mod_revision)
            && (req.max_create_revision == 0 || kv.create_revision <= req.max_create_revision)
            && (req.min_create_revision == 0 || kv.create_revision >= req.min_create_revision)
    });
    let order = match (req.sort_order, req.sort_target) {
        (SortOrder::None, SortTarget::Key) => SortOrder::None,
        (SortOrder::None, _) => SortOrder::Ascend,
        (o, _) => o,
    };
    let field = |kv: &KeyValue| -> (i64, Vec<u8>) {
        match req.sort_target {
            SortTarget::Key => (0, kv.key.clone()),
            SortTarget::Version => (kv.version, Vec::new()),
            SortTarget::Create => (kv.create_revision, Vec::new()),
            SortTarget::Mod => (kv.mod_revision, Vec::new()),
            SortTarget::Value => (0, kv.value.clone()),
        }
    };
    match order {
        SortOrder::None => {}
        SortOrder::Ascend => kvs.sort_by_key(field),
        SortOrder::Descend => kvs.sort_by_key(|kv| std::cmp::Reverse(field(kv))),
    }
    let mut more = false;
    if req.limit > 0 && kvs.len() > req.limit as usize {
        kvs.truncate(req.limit as usize);
        more = true;
    }
    if req.keys_only {
        for kv in &mut kvs {
            kv.value.clear();
        }
    }
    RangeResponse { kvs, more, count }
}
