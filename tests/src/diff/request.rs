//! The request model of the differential tests: plain data for the KV RPCs (Range, Put,
//! DeleteRange, Txn, Compact), with builders, a readable one-line rendering for labels, and
//! the conversion to the `etcd-client` crate's request types.
//!
//! Every byte sent is explicit: `range_end` is computed here (prefix, from-key `\0`) and
//! passed with `with_range`, so both servers get exactly the same request. One limit of
//! `etcd-client` (and of Go's clientv3): a sort of (Key, Ascend) is sent as sort order None,
//! which means the same thing to etcd.

use std::fmt;

use etcd_client::{
    CompactionOptions, Compare, CompareOp, DeleteOptions, GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp,
};

/// One KV request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Req {
    Range(RangeReq),
    Put(PutReq),
    Delete(DeleteReq),
    Txn(TxnReq),
    Compact(CompactReq),
    /// A Lease RPC (see [`super::lease`]).
    Lease(super::lease::LeaseReq),
}

/// A Range (get) request; fields as in etcd's `RangeRequest`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeReq {
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
    pub limit: i64,
    pub revision: i64,
    pub sort: Option<(SortTarget, SortOrder)>,
    pub serializable: bool,
    pub keys_only: bool,
    pub count_only: bool,
    pub min_mod_revision: i64,
    pub max_mod_revision: i64,
    pub min_create_revision: i64,
    pub max_create_revision: i64,
}

/// A Put request; fields as in etcd's `PutRequest`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PutReq {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub lease: i64,
    pub prev_kv: bool,
    pub ignore_value: bool,
    pub ignore_lease: bool,
}

/// A DeleteRange request; fields as in etcd's `DeleteRangeRequest`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeleteReq {
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
    pub prev_kv: bool,
}

/// A Txn request: compares, then the success ops or the failure ops.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TxnReq {
    pub compare: Vec<Cmp>,
    pub success: Vec<Req>,
    pub failure: Vec<Req>,
}

/// A Compaction request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompactReq {
    pub revision: i64,
    pub physical: bool,
}

/// What a [`Cmp`] compares, with the value compared against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CmpTarget {
    Version(i64),
    Create(i64),
    Mod(i64),
    Value(Vec<u8>),
    Lease(i64),
}

/// One compare of a txn; fields as in etcd's `Compare`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cmp {
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
    pub op: CompareOp,
    pub target: CmpTarget,
}

/// The end of the range of all keys with prefix `key`, as etcd's clients compute it: the key
/// with its last byte below 0xff incremented and what follows dropped; `\0` (to the end of
/// the keyspace) if there is no such byte.
pub fn prefix_end(key: &[u8]) -> Vec<u8> {
    match key.iter().rposition(|&b| b < 0xff) {
        Some(i) => {
            let mut end = key[..=i].to_vec();
            end[i] += 1;
            end
        }
        None => vec![0],
    }
}

/// A Range of one key.
pub fn range(key: impl Into<Vec<u8>>) -> RangeReq {
    RangeReq { key: key.into(), ..RangeReq::default() }
}

/// A Range over every key (`\0` to `\0`).
pub fn range_all() -> RangeReq {
    range(vec![0]).from_key()
}

/// A Put of `key` = `value`.
pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> PutReq {
    PutReq { key: key.into(), value: value.into(), ..PutReq::default() }
}

/// A DeleteRange of one key.
pub fn delete(key: impl Into<Vec<u8>>) -> DeleteReq {
    DeleteReq { key: key.into(), ..DeleteReq::default() }
}

/// An empty txn (no compares: the success branch runs).
pub fn txn() -> TxnReq {
    TxnReq::default()
}

/// A Compaction at `revision`.
pub fn compact(revision: i64) -> CompactReq {
    CompactReq { revision, physical: false }
}

impl RangeReq {
    /// Sets `range_end` to exactly these bytes.
    pub fn end(mut self, end: impl Into<Vec<u8>>) -> Self {
        self.range_end = end.into();
        self
    }
    /// All keys with this key as prefix (an empty key means every key, as clients send it).
    pub fn prefix(mut self) -> Self {
        if self.key.is_empty() {
            self.key = vec![0];
            self.range_end = vec![0];
        } else {
            self.range_end = prefix_end(&self.key);
        }
        self
    }
    /// All keys ≥ key (`range_end` = `\0`).
    pub fn from_key(mut self) -> Self {
        self.range_end = vec![0];
        self
    }
    pub fn limit(mut self, limit: i64) -> Self {
        self.limit = limit;
        self
    }
    pub fn rev(mut self, revision: i64) -> Self {
        self.revision = revision;
        self
    }
    pub fn sort(mut self, target: SortTarget, order: SortOrder) -> Self {
        self.sort = Some((target, order));
        self
    }
    pub fn serializable(mut self) -> Self {
        self.serializable = true;
        self
    }
    pub fn keys_only(mut self) -> Self {
        self.keys_only = true;
        self
    }
    pub fn count_only(mut self) -> Self {
        self.count_only = true;
        self
    }
    pub fn min_mod(mut self, revision: i64) -> Self {
        self.min_mod_revision = revision;
        self
    }
    pub fn max_mod(mut self, revision: i64) -> Self {
        self.max_mod_revision = revision;
        self
    }
    pub fn min_create(mut self, revision: i64) -> Self {
        self.min_create_revision = revision;
        self
    }
    pub fn max_create(mut self, revision: i64) -> Self {
        self.max_create_revision = revision;
        self
    }

    fn options(&self) -> GetOptions {
        let mut o = GetOptions::new();
        if !self.range_end.is_empty() {
            o = o.with_range(self.range_end.clone());
        }
        if self.limit != 0 {
            o = o.with_limit(self.limit);
        }
        if self.revision != 0 {
            o = o.with_revision(self.revision);
        }
        if let Some((target, order)) = self.sort {
            o = o.with_sort(target, order);
        }
        if self.serializable {
            o = o.with_serializable();
        }
        if self.keys_only {
            o = o.with_keys_only();
        }
        if self.count_only {
            o = o.with_count_only();
        }
        if self.min_mod_revision != 0 {
            o = o.with_min_mod_revision(self.min_mod_revision);
        }
        if self.max_mod_revision != 0 {
            o = o.with_max_mod_revision(self.max_mod_revision);
        }
        if self.min_create_revision != 0 {
            o = o.with_min_create_revision(self.min_create_revision);
        }
        if self.max_create_revision != 0 {
            o = o.with_max_create_revision(self.max_create_revision);
        }
        o
    }

    /// The key and options for `KvClient::get`.
    pub fn to_client(&self) -> (Vec<u8>, GetOptions) {
        (self.key.clone(), self.options())
    }
}

impl PutReq {
    pub fn lease(mut self, lease: i64) -> Self {
        self.lease = lease;
        self
    }
    pub fn prev_kv(mut self) -> Self {
        self.prev_kv = true;
        self
    }
    pub fn ignore_value(mut self) -> Self {
        self.ignore_value = true;
        self
    }
    pub fn ignore_lease(mut self) -> Self {
        self.ignore_lease = true;
        self
    }

    /// The options for `KvClient::put` (key and value are passed separately).
    pub fn options(&self) -> PutOptions {
        let mut o = PutOptions::new();
        if self.lease != 0 {
            o = o.with_lease(self.lease);
        }
        if self.prev_kv {
            o = o.with_prev_key();
        }
        if self.ignore_value {
            o = o.with_ignore_value();
        }
        if self.ignore_lease {
            o = o.with_ignore_lease();
        }
        o
    }
}

impl DeleteReq {
    /// Sets `range_end` to exactly these bytes.
    pub fn end(mut self, end: impl Into<Vec<u8>>) -> Self {
        self.range_end = end.into();
        self
    }
    /// All keys with this key as prefix.
    pub fn prefix(mut self) -> Self {
        if self.key.is_empty() {
            self.key = vec![0];
            self.range_end = vec![0];
        } else {
            self.range_end = prefix_end(&self.key);
        }
        self
    }
    /// All keys ≥ key (`range_end` = `\0`).
    pub fn from_key(mut self) -> Self {
        self.range_end = vec![0];
        self
    }
    pub fn prev_kv(mut self) -> Self {
        self.prev_kv = true;
        self
    }

    /// The options for `KvClient::delete`.
    pub fn options(&self) -> DeleteOptions {
        let mut o = DeleteOptions::new();
        if !self.range_end.is_empty() {
            o = o.with_range(self.range_end.clone());
        }
        if self.prev_kv {
            o = o.with_prev_key();
        }
        o
    }
}

impl TxnReq {
    /// Adds compares.
    pub fn when(mut self, compares: impl IntoIterator<Item = Cmp>) -> Self {
        self.compare.extend(compares);
        self
    }
    /// Adds ops to the success branch.
    pub fn then<R: Into<Req>>(mut self, ops: impl IntoIterator<Item = R>) -> Self {
        self.success.extend(ops.into_iter().map(Into::into));
        self
    }
    /// Adds ops to the failure branch.
    pub fn or_else<R: Into<Req>>(mut self, ops: impl IntoIterator<Item = R>) -> Self {
        self.failure.extend(ops.into_iter().map(Into::into));
        self
    }
    /// Adds one op to the success branch.
    pub fn then_op(mut self, op: impl Into<Req>) -> Self {
        self.success.push(op.into());
        self
    }
    /// Adds one op to the failure branch.
    pub fn else_op(mut self, op: impl Into<Req>) -> Self {
        self.failure.push(op.into());
        self
    }

    /// The `etcd-client` txn. Panics on a Compact inside (not a txn op).
    pub fn to_client(&self) -> Txn {
        let compares: Vec<Compare> = self.compare.iter().map(Cmp::to_client).collect();
        let success: Vec<TxnOp> = self.success.iter().map(Req::to_txn_op).collect();
        let failure: Vec<TxnOp> = self.failure.iter().map(Req::to_txn_op).collect();
        Txn::new().when(compares).and_then(success).or_else(failure)
    }
}

impl CompactReq {
    pub fn physical(mut self) -> Self {
        self.physical = true;
        self
    }

    /// The options for `KvClient::compact`.
    pub fn options(&self) -> CompactionOptions {
        if self.physical {
            CompactionOptions::new().with_physical()
        } else {
            CompactionOptions::new()
        }
    }
}

impl Cmp {
    fn new(key: impl Into<Vec<u8>>, op: CompareOp, target: CmpTarget) -> Cmp {
        Cmp { key: key.into(), range_end: Vec::new(), op, target }
    }
    /// Compare the version of `key`.
    pub fn version(key: impl Into<Vec<u8>>, op: CompareOp, version: i64) -> Cmp {
        Cmp::new(key, op, CmpTarget::Version(version))
    }
    /// Compare the create_revision of `key`.
    pub fn create(key: impl Into<Vec<u8>>, op: CompareOp, revision: i64) -> Cmp {
        Cmp::new(key, op, CmpTarget::Create(revision))
    }
    /// Compare the mod_revision of `key`.
    pub fn modified(key: impl Into<Vec<u8>>, op: CompareOp, revision: i64) -> Cmp {
        Cmp::new(key, op, CmpTarget::Mod(revision))
    }
    /// Compare the value of `key`.
    pub fn value(key: impl Into<Vec<u8>>, op: CompareOp, value: impl Into<Vec<u8>>) -> Cmp {
        Cmp::new(key, op, CmpTarget::Value(value.into()))
    }
    /// Compare the lease of `key`.
    pub fn lease(key: impl Into<Vec<u8>>, op: CompareOp, lease: i64) -> Cmp {
        Cmp::new(key, op, CmpTarget::Lease(lease))
    }
    /// Sets `range_end` to exactly these bytes.
    pub fn end(mut self, end: impl Into<Vec<u8>>) -> Self {
        self.range_end = end.into();
        self
    }
    /// All keys with this key as prefix.
    pub fn prefix(mut self) -> Self {
        self.range_end = prefix_end(&self.key);
        self
    }

    /// The `etcd-client` compare.
    pub fn to_client(&self) -> Compare {
        let key = self.key.clone();
        let c = match &self.target {
            CmpTarget::Version(v) => Compare::version(key, self.op, *v),
            CmpTarget::Create(r) => Compare::create_revision(key, self.op, *r),
            CmpTarget::Mod(r) => Compare::mod_revision(key, self.op, *r),
            CmpTarget::Value(v) => Compare::value(key, self.op, v.clone()),
            CmpTarget::Lease(l) => Compare::lease(key, self.op, *l),
        };
        if self.range_end.is_empty() {
            c
        } else {
            c.with_range(self.range_end.clone())
        }
    }
}

impl Req {
    /// The op inside a txn. Panics for a Compact, which is not a txn op.
    pub fn to_txn_op(&self) -> TxnOp {
        match self {
            Req::Range(r) => {
                let (key, options) = r.to_client();
                TxnOp::get(key, Some(options))
            }
            Req::Put(p) => TxnOp::put(p.key.clone(), p.value.clone(), Some(p.options())),
            Req::Delete(d) => TxnOp::delete(d.key.clone(), Some(d.options())),
            Req::Txn(t) => TxnOp::txn(t.to_client()),
            Req::Compact(_) => panic!("a compaction cannot be an op of a txn"),
            Req::Lease(_) => panic!("a lease request cannot be an op of a txn"),
        }
    }
}

impl From<RangeReq> for Req {
    fn from(r: RangeReq) -> Req {
        Req::Range(r)
    }
}
impl From<PutReq> for Req {
    fn from(r: PutReq) -> Req {
        Req::Put(r)
    }
}
impl From<DeleteReq> for Req {
    fn from(r: DeleteReq) -> Req {
        Req::Delete(r)
    }
}
impl From<TxnReq> for Req {
    fn from(r: TxnReq) -> Req {
        Req::Txn(r)
    }
}
impl From<CompactReq> for Req {
    fn from(r: CompactReq) -> Req {
        Req::Compact(r)
    }
}
impl From<super::lease::LeaseReq> for Req {
    fn from(r: super::lease::LeaseReq) -> Req {
        Req::Lease(r)
    }
}

/// Bytes shown as a quoted string with escapes; long ones as their length and a hash.
pub struct ShowBytes<'a>(pub &'a [u8]);

/// Byte strings longer than this are shown as `<N bytes #hash>`.
const SHOW_MAX: usize = 48;

impl fmt::Display for ShowBytes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        if b.len() > SHOW_MAX {
            // FNV-1a: a stable fingerprint to tell long values apart in a diff.
            let hash =
                b.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &x| (h ^ u64::from(x)).wrapping_mul(0x100_0000_01b3));
            return write!(f, "<{} bytes #{:08x}>", b.len(), hash as u32);
        }
        write!(f, "\"{}\"", b.escape_ascii())
    }
}

fn show_ops(f: &mut fmt::Formatter<'_>, ops: &[Req]) -> fmt::Result {
    /// Ops of a branch shown in a label; the rest are counted.
    const SHOWN: usize = 4;
    f.write_str("[")?;
    for (i, op) in ops.iter().take(SHOWN).enumerate() {
        if i > 0 {
            f.write_str("; ")?;
        }
        write!(f, "{op}")?;
    }
    if ops.len() > SHOWN {
        write!(f, "; ... {} ops in all", ops.len())?;
    }
    f.write_str("]")
}

fn show_end(f: &mut fmt::Formatter<'_>, end: &[u8]) -> fmt::Result {
    if !end.is_empty() {
        write!(f, " end={}", ShowBytes(end))?;
    }
    Ok(())
}

impl fmt::Display for RangeReq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "range {}", ShowBytes(&self.key))?;
        show_end(f, &self.range_end)?;
        let nums = [
            ("limit", self.limit),
            ("rev", self.revision),
            ("min_mod", self.min_mod_revision),
            ("max_mod", self.max_mod_revision),
            ("min_create", self.min_create_revision),
            ("max_create", self.max_create_revision),
        ];
        for (name, v) in nums {
            if v != 0 {
                write!(f, " {name}={v}")?;
            }
        }
        if let Some((t, o)) = self.sort {
            write!(f, " sort={t:?}/{o:?}")?;
        }
        for (name, on) in
            [("serializable", self.serializable), ("keys_only", self.keys_only), ("count_only", self.count_only)]
        {
            if on {
                write!(f, " {name}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Display for PutReq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "put {}={}", ShowBytes(&self.key), ShowBytes(&self.value))?;
        if self.lease != 0 {
            write!(f, " lease={}", self.lease)?;
        }
        for (name, on) in
            [("prev_kv", self.prev_kv), ("ignore_value", self.ignore_value), ("ignore_lease", self.ignore_lease)]
        {
            if on {
                write!(f, " {name}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Display for DeleteReq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "delete {}", ShowBytes(&self.key))?;
        show_end(f, &self.range_end)?;
        if self.prev_kv {
            f.write_str(" prev_kv")?;
        }
        Ok(())
    }
}

impl fmt::Display for Cmp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = match self.op {
            CompareOp::Equal => "==",
            CompareOp::Greater => ">",
            CompareOp::Less => "<",
            CompareOp::NotEqual => "!=",
        };
        let (what, rhs) = match &self.target {
            CmpTarget::Version(v) => ("version", v.to_string()),
            CmpTarget::Create(r) => ("create", r.to_string()),
            CmpTarget::Mod(r) => ("mod", r.to_string()),
            CmpTarget::Value(v) => ("value", ShowBytes(v).to_string()),
            CmpTarget::Lease(l) => ("lease", l.to_string()),
        };
        write!(f, "{what}({}", ShowBytes(&self.key))?;
        show_end(f, &self.range_end)?;
        write!(f, ") {op} {rhs}")
    }
}

impl fmt::Display for TxnReq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("txn if [")?;
        for (i, c) in self.compare.iter().take(4).enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{c}")?;
        }
        if self.compare.len() > 4 {
            write!(f, ", ... {} compares in all", self.compare.len())?;
        }
        f.write_str("] then ")?;
        show_ops(f, &self.success)?;
        f.write_str(" else ")?;
        show_ops(f, &self.failure)
    }
}

impl fmt::Display for CompactReq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "compact {}", self.revision)?;
        if self.physical {
            f.write_str(" physical")?;
        }
        Ok(())
    }
}

impl fmt::Display for Req {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Req::Range(r) => r.fmt(f),
            Req::Put(r) => r.fmt(f),
            Req::Delete(r) => r.fmt(f),
            Req::Txn(r) => r.fmt(f),
            Req::Compact(r) => r.fmt(f),
            Req::Lease(r) => r.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_like_clients() {
        assert_eq!(prefix_end(b"a"), b"b");
        assert_eq!(prefix_end(b"a/"), b"a0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), b"\0");
        assert_eq!(prefix_end(b""), b"\0");
    }

    #[test]
    fn labels_are_readable() {
        assert_eq!(range("a").prefix().limit(2).to_string(), r#"range "a" end="b" limit=2"#);
        assert_eq!(put("k", "v").prev_kv().to_string(), r#"put "k"="v" prev_kv"#);
        let t = txn().when([Cmp::value("k", CompareOp::Equal, "v")]).then_op(delete("k")).else_op(range("k"));
        assert_eq!(t.to_string(), r#"txn if [value("k") == "v"] then [delete "k"] else [range "k"]"#);
        assert_eq!(ShowBytes(&[b'x'; 49]).to_string().split(' ').next(), Some("<49"));
    }
}
