//! Random requests over a small key alphabet, so that keys collide often: re-creates,
//! overlapping ranges, duplicate keys in txns, long histories.

use cairn_storage::*;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;

/// Keys in sorted order; `b\0` sits between `b` and `ba`, `ab` inside the prefix `a`.
pub const KEYS: &[&[u8]] = &[b"a", b"ab", b"b", b"b\0", b"ba", b"c", b"d"];
const VALUES: &[&[u8]] = &[b"", b"v", b"w", b"xyz", b"\0", b"\xff"];
/// Lease IDs the generator uses: granted and revoked over and over, so that keys get
/// attached, moved between leases and deleted by revokes. Negative IDs are valid (a client
/// may choose any non-zero ID).
pub const LEASES: &[LeaseId] = &[1, 2, -3];
/// A lease that is never granted.
pub const MISSING_LEASE: LeaseId = 7;

/// What the generator needs to know of the store: revisions to aim reads and compares at.
#[derive(Clone, Copy)]
pub struct Revs {
    pub current: Revision,
    pub compacted: Revision,
}

pub struct Gen<'r> {
    pub rng: &'r mut StdRng,
    pub revs: Revs,
}

impl Gen<'_> {
    fn p(&mut self, percent: u32) -> bool {
        self.rng.gen_range(0..100) < percent
    }

    pub fn key(&mut self) -> Vec<u8> {
        if self.p(1) {
            return Vec::new();
        }
        KEYS.choose(self.rng).expect("non-empty").to_vec()
    }

    fn value(&mut self) -> Vec<u8> {
        if self.p(15) {
            let n = self.rng.gen_range(0..6);
            return (0..n).map(|_| self.rng.gen()).collect();
        }
        VALUES.choose(self.rng).expect("non-empty").to_vec()
    }

    /// etcd's range_end forms: single key, from-key `\0`, an interval (possibly empty or
    /// inverted), a prefix.
    pub fn range_end(&mut self, key: &[u8]) -> Vec<u8> {
        match self.rng.gen_range(0..100) {
            0..=34 => Vec::new(),
            35..=49 => vec![0],
            50..=84 => {
                if self.p(15) {
                    b"z".to_vec()
                } else {
                    KEYS.choose(self.rng).expect("non-empty").to_vec()
                }
            }
            _ => {
                let mut e = key.to_vec();
                match e.last_mut() {
                    Some(b) if *b < 0xff => *b += 1,
                    _ => e = vec![0],
                }
                e
            }
        }
    }

    /// A revision to read at: mostly current (0) or a kept one, sometimes compacted, future
    /// or negative.
    pub fn read_revision(&mut self) -> Revision {
        let Revs { current, compacted } = self.revs;
        match self.rng.gen_range(0..100) {
            0..=44 => 0,
            45..=54 => current,
            55..=59 => current + self.rng.gen_range(1..3),
            60..=61 => -1,
            62 => -2,
            _ => self.rng.gen_range((compacted - 3).max(1)..=current),
        }
    }

    fn filter_rev(&mut self) -> Revision {
        if self.p(80) {
            0
        } else {
            self.rng.gen_range(0..=self.revs.current + 1)
        }
    }

    pub fn range(&mut self) -> RangeRequest {
        let key = self.key();
        let range_end = self.range_end(&key);
        // In a txn a negative revision is checked against the compacted one (etcd quirk),
        // then read at the current revision; the model and the store both do so.
        let revision = self.read_revision();
        RangeRequest {
            key,
            range_end,
            limit: *[0, 0, 0, 1, 2, 3, -1].choose(self.rng).expect("non-empty"),
            revision,
            sort_order: *[SortOrder::None, SortOrder::None, SortOrder::Ascend, SortOrder::Descend]
                .choose(self.rng)
                .expect("non-empty"),
            sort_target: *[
                SortTarget::Key,
                SortTarget::Key,
                SortTarget::Version,
                SortTarget::Create,
                SortTarget::Mod,
                SortTarget::Value,
            ]
            .choose(self.rng)
            .expect("non-empty"),
            keys_only: self.p(20),
            count_only: self.p(10),
            min_mod_revision: self.filter_rev(),
            max_mod_revision: self.filter_rev(),
            min_create_revision: self.filter_rev(),
            max_create_revision: self.filter_rev(),
        }
    }

    /// A lease ID for a put or compare: mostly none, else one of [`LEASES`], sometimes one
    /// that never exists.
    fn lease(&mut self, percent: u32) -> LeaseId {
        if !self.p(percent) {
            0
        } else if self.p(15) {
            MISSING_LEASE
        } else {
            *LEASES.choose(self.rng).expect("non-empty")
        }
    }

    pub fn put(&mut self) -> PutRequest {
        let ignore_value = self.p(15);
        let ignore_lease = self.p(15);
        PutRequest {
            key: self.key(),
            // With ignore_value mostly no value (else "value is provided").
            value: if ignore_value && self.p(85) { Vec::new() } else { self.value() },
            lease: self.lease(if ignore_lease { 5 } else { 50 }),
            prev_kv: self.p(50),
            ignore_value,
            ignore_lease,
        }
    }

    pub fn delete(&mut self) -> DeleteRangeRequest {
        let key = self.key();
        let range_end = self.range_end(&key);
        DeleteRangeRequest { key, range_end, prev_kv: self.p(50) }
    }

    fn compare(&mut self) -> Compare {
        let Revs { current, .. } = self.revs;
        let target = match self.rng.gen_range(0..5) {
            0 => CompareTarget::Version(self.rng.gen_range(0..4)),
            1 => CompareTarget::Create(self.rng.gen_range(0..=current + 1)),
            2 => CompareTarget::Mod(self.rng.gen_range(0..=current + 1)),
            3 => CompareTarget::Value(self.value()),
            _ => CompareTarget::Lease(self.lease(50)),
        };
        let result = *[CompareResult::Equal, CompareResult::NotEqual, CompareResult::Greater, CompareResult::Less]
            .choose(self.rng)
            .expect("non-empty");
        let key = self.key();
        let range_end = if self.p(30) { self.range_end(&key) } else { Vec::new() };
        Compare { result, target, key, range_end }
    }

    pub fn txn(&mut self, depth: usize) -> TxnRequest {
        let n_cmp = self.rng.gen_range(0..=2);
        let compare = (0..n_cmp).map(|_| self.compare()).collect();
        let branch = |g: &mut Self| -> Vec<RequestOp> {
            // Up to 5 ops against a budget of 4: sometimes "too many operations".
            let n = if g.p(5) { 5 } else { g.rng.gen_range(0..=3) };
            (0..n)
                .map(|_| match g.rng.gen_range(0..100) {
                    0..=29 => RequestOp::Range(g.range()),
                    30..=64 => RequestOp::Put(g.put()),
                    65..=84 => RequestOp::DeleteRange(g.delete()),
                    _ if depth < 2 => RequestOp::Txn(g.txn(depth + 1)),
                    _ => RequestOp::Range(g.range()),
                })
                .collect()
        };
        let success = branch(self);
        let failure = branch(self);
        TxnRequest { compare, success, failure }
    }

    pub fn compact(&mut self) -> CompactionRequest {
        let Revs { current, compacted } = self.revs;
        let revision = if self.p(85) && compacted < current {
            self.rng.gen_range(compacted + 1..=current)
        } else {
            self.rng.gen_range((compacted - 1).max(0)..=current + 1)
        };
        CompactionRequest { revision, physical: self.p(50) }
    }

    /// A grant: mostly of one of [`LEASES`] (often existing already), sometimes of ID 0 (etcd:
    /// "not found") or with a TTL at or above the limit.
    pub fn lease_grant(&mut self) -> Command {
        let id = if self.p(5) { 0 } else { *LEASES.choose(self.rng).expect("non-empty") };
        let ttl_secs = *[1, 2, 60, 60, -1, 9_000_000_000, 9_000_000_001].choose(self.rng).expect("non-empty");
        Command::LeaseGrant { id, ttl_secs }
    }

    /// A revoke of one of [`LEASES`], or of a lease that never exists.
    pub fn lease_revoke(&mut self) -> Command {
        let id = if self.p(10) { MISSING_LEASE } else { *LEASES.choose(self.rng).expect("non-empty") };
        Command::LeaseRevoke { id }
    }

    /// A mutating command.
    pub fn command(&mut self) -> Command {
        match self.rng.gen_range(0..100) {
            0..=37 => Command::Put(self.put()),
            38..=52 => Command::DeleteRange(self.delete()),
            53..=80 => Command::Txn(self.txn(0)),
            81..=83 => Command::Compact(self.compact()),
            84..=92 => self.lease_grant(),
            _ => self.lease_revoke(),
        }
    }
}
