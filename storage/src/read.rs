//! Reads of the key index and revision log at a revision. Generic over redb's
//! `ReadableTable`, so the same code serves a read snapshot and reads inside an apply.

use std::ops::Bound;

use redb::ReadableTable;

use crate::error::{RequestError, StoreError};
use crate::record::Record;
use crate::schema::FLAG_TOMBSTONE;
use crate::types::*;

/// Key type of `KEY_INDEX`.
pub type IndexKey<'a> = (&'a [u8], u64, u64);

/// After this many rows of one key in a scan, seek instead of stepping (long histories).
const SEEK_AFTER_ROWS: usize = 8;

/// Which keys a request covers, from etcd's `key`/`range_end` pair.
#[derive(Clone, Debug)]
pub enum KeySpan<'a> {
    Single(&'a [u8]),
    /// `[start, end)`, or to the end of the keyspace when `end` is `None`.
    Range {
        start: &'a [u8],
        end: Option<&'a [u8]>,
    },
}

impl<'a> KeySpan<'a> {
    pub fn new(key: &'a [u8], range_end: &'a [u8]) -> Self {
        if range_end.is_empty() {
            KeySpan::Single(key)
        } else if range_end == [0] {
            KeySpan::Range { start: key, end: None }
        } else {
            KeySpan::Range { start: key, end: Some(range_end) }
        }
    }

    pub fn contains(&self, k: &[u8]) -> bool {
        match self {
            KeySpan::Single(s) => *s == k,
            KeySpan::Range { start, end } => *start <= k && end.is_none_or(|e| k < e),
        }
    }
}

/// A live key found by a scan: where its record is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Live {
    pub key: Vec<u8>,
    pub main: u64,
    pub sub: u64,
}

/// The newest row of `key` at or below revision `rev`: `(main, sub, tombstone)`.
pub fn newest_at<T>(index: &T, key: &[u8], rev: u64) -> Result<Option<(u64, u64, bool)>, StoreError>
where
    T: ReadableTable<IndexKey<'static>, u8>,
{
    let lo: IndexKey<'_> = (key, 0, 0);
    let hi: IndexKey<'_> = (key, rev, u64::MAX);
    let mut it = index.range::<IndexKey<'_>>(lo..=hi)?;
    match it.next_back() {
        None => Ok(None),
        Some(row) => {
            let (k, flags) = row?;
            let (_, main, sub) = k.value();
            Ok(Some((main, sub, flags.value() & FLAG_TOMBSTONE != 0)))
        }
    }
}

/// The live key `key` at revision `rev`, if any.
pub fn live_at<T>(index: &T, key: &[u8], rev: u64) -> Result<Option<Live>, StoreError>
where
    T: ReadableTable<IndexKey<'static>, u8>,
{
    Ok(match newest_at(index, key, rev)? {
        Some((main, sub, false)) => Some(Live { key: key.to_vec(), main, sub }),
        _ => None,
    })
}

/// Calls `f` for every key live at `rev` in `span`, in key order, until `f` returns false.
/// Costs one step per kept row, or one seek per key with a long history.
pub fn scan_live<T, F>(index: &T, span: &KeySpan<'_>, rev: u64, mut f: F) -> Result<(), StoreError>
where
    T: ReadableTable<IndexKey<'static>, u8>,
    F: FnMut(Live) -> bool,
{
    let (start, end) = match span {
        KeySpan::Single(k) => {
            if let Some(l) = live_at(index, k, rev)? {
                f(l);
            }
            return Ok(());
        }
        KeySpan::Range { start, end } => (*start, *end),
    };
    if let Some(e) = end {
        if e <= start {
            return Ok(());
        }
    }
    // The lower bound moves past a key when the scan restarts after a seek.
    let mut resume_after: Option<Vec<u8>> = None;
    loop {
        let lower: Bound<IndexKey<'_>> = match &resume_after {
            None => Bound::Included((start, 0, 0)),
            Some(k) => Bound::Excluded((k.as_slice(), u64::MAX, u64::MAX)),
        };
        let upper: Bound<IndexKey<'_>> = match end {
            None => Bound::Unbounded,
            Some(e) => Bound::Excluded((e, 0, 0)),
        };
        let mut it = index.range::<IndexKey<'_>>((lower, upper))?;
        let mut cur: Option<Vec<u8>> = None;
        let mut best: Option<(u64, u64, bool)> = None;
        let mut rows = 0usize;
        let mut seek_key: Option<Vec<u8>> = None;
        for row in &mut it {
            let (k, flags) = row?;
            let (key, main, sub) = k.value();
            if cur.as_deref() != Some(key) {
                if let (Some(ck), Some((m, s, false))) = (cur.take(), best) {
                    if !f(Live { key: ck, main: m, sub: s }) {
                        return Ok(());
                    }
                }
                cur = Some(key.to_vec());
                best = None;
                rows = 0;
            }
            rows += 1;
            if main <= rev {
                best = Some((main, sub, flags.value() & FLAG_TOMBSTONE != 0));
            }
            if main > rev || rows > SEEK_AFTER_ROWS {
                seek_key = cur.clone();
                break;
            }
        }
        drop(it);
        match seek_key {
            Some(k) => {
                if let Some(l) = live_at(index, &k, rev)? {
                    if !f(l) {
                        return Ok(());
                    }
                }
                resume_after = Some(k);
            }
            None => {
                if let (Some(ck), Some((m, s, false))) = (cur, best) {
                    f(Live { key: ck, main: m, sub: s });
                }
                return Ok(());
            }
        }
    }
}

/// Loads the record of a row.
pub fn load<T>(revs: &T, main: u64, sub: u64) -> Result<Record, StoreError>
where
    T: ReadableTable<(u64, u64), &'static [u8]>,
{
    match revs.get((main, sub))? {
        Some(v) => Ok(Record::decode(v.value())?),
        None => Err(StoreError::Corrupt {
            what: format!("key index names revision {main}.{sub} missing from the revision log"),
        }),
    }
}

/// The KeyValue of a live row.
pub fn load_kv<T>(revs: &T, l: &Live) -> Result<KeyValue, StoreError>
where
    T: ReadableTable<(u64, u64), &'static [u8]>,
{
    let rec = load(revs, l.main, l.sub)?;
    if rec.tombstone || rec.key != l.key {
        return Err(StoreError::Corrupt {
            what: format!("revision {}.{} does not hold live key {:?}", l.main, l.sub, l.key),
        });
    }
    Ok(rec.into_kv(l.main as i64))
}

/// Checks a read revision against the store's revisions: 0 or below means current.
pub fn resolve_revision(requested: Revision, current: Revision, compacted: Revision) -> Result<Revision, RequestError> {
    if requested > current {
        return Err(RequestError::FutureRevision { current_revision: current });
    }
    let rev = if requested <= 0 { current } else { requested };
    if rev < compacted {
        return Err(RequestError::Compacted { compact_revision: compacted });
    }
    Ok(rev)
}

/// etcd's Range: revision check, count of all keys in range, optional filters, sort and
/// limit (with `more`). The header revision is the caller's current revision.
pub fn range<I, R>(
    index: &I,
    revs: &R,
    req: &RangeRequest,
    current: Revision,
    compacted: Revision,
) -> Result<Result<RangeResponse, RequestError>, StoreError>
where
    I: ReadableTable<IndexKey<'static>, u8>,
    R: ReadableTable<(u64, u64), &'static [u8]>,
{
    let rev = match resolve_revision(req.revision, current, compacted) {
        Ok(r) => r,
        Err(e) => return Ok(Err(e)),
    };
    let filtered = req.min_mod_revision != 0
        || req.max_mod_revision != 0
        || req.min_create_revision != 0
        || req.max_create_revision != 0;
    // What etcd asks of its index: everything when it must sort or filter, else limit+1.
    let fetch: Option<usize> = if req.sort_order != SortOrder::None || filtered || req.limit <= 0 {
        None
    } else {
        Some(req.limit as usize + 1)
    };
    let span = KeySpan::new(&req.key, &req.range_end);
    let mut count: i64 = 0;
    let mut rows: Vec<Live> = Vec::new();
    scan_live(index, &span, rev as u64, |l| {
        count += 1;
        if !req.count_only && fetch.is_none_or(|n| rows.len() < n) {
            rows.push(l);
        }
        true
    })?;
    let mut resp = RangeResponse { kvs: Vec::with_capacity(rows.len()), more: false, count };
    if req.count_only {
        return Ok(Ok(resp));
    }
    for l in &rows {
        resp.kvs.push(load_kv(revs, l)?);
    }
    if filtered {
        resp.kvs.retain(|kv| {
            !(req.max_mod_revision != 0 && kv.mod_revision > req.max_mod_revision
                || req.min_mod_revision != 0 && kv.mod_revision < req.min_mod_revision
                || req.max_create_revision != 0 && kv.create_revision > req.max_create_revision
                || req.min_create_revision != 0 && kv.create_revision < req.min_create_revision)
        });
    }
    sort_kvs(&mut resp.kvs, req.sort_order, req.sort_target);
    if req.limit > 0 && resp.kvs.len() > req.limit as usize {
        resp.kvs.truncate(req.limit as usize);
        resp.more = true;
    }
    if req.keys_only {
        for kv in &mut resp.kvs {
            kv.value = Vec::new();
        }
    }
    Ok(Ok(resp))
}

/// etcd's sort rules: a target other than KEY with no order sorts ascending; KEY ascending is
/// the scan order already. Ties keep key order.
fn sort_kvs(kvs: &mut [KeyValue], order: SortOrder, target: SortTarget) {
    let order = match (order, target) {
        (SortOrder::None, SortTarget::Key) => return,
        (SortOrder::None, _) => SortOrder::Ascend,
        (SortOrder::Ascend, SortTarget::Key) => return,
        (o, _) => o,
    };
    let cmp = |a: &KeyValue, b: &KeyValue| match target {
        SortTarget::Key => a.key.cmp(&b.key),
        SortTarget::Version => a.version.cmp(&b.version),
        SortTarget::Create => a.create_revision.cmp(&b.create_revision),
        SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
        SortTarget::Value => a.value.cmp(&b.value),
    };
    match order {
        SortOrder::Descend => kvs.sort_by(|a, b| cmp(b, a)),
        _ => kvs.sort_by(cmp),
    }
}
