//! Leases in the store: the lease record, the apply of `LeaseGrant` and `LeaseRevoke`, and
//! the reads the Lease RPCs and the lessor need.
//!
//! Time is not here. A lease record holds its granted TTL only; when a lease expires is
//! decided by the leader's lessor (server crate) from its own clock, which then proposes a
//! `LeaseRevoke` like any client. Apply never reads a clock, so every member applies the same
//! log to the same state.
//!
//! Invariants (etcd 3.5's lessor, checked by the storage model test):
//! - `LEASES` holds a record for exactly the leases granted and not yet revoked.
//! - `LEASE_KEYS` holds `(l, k)` exactly when key k is live with lease l (put and delete
//!   maintain it; a put naming a lease that does not exist is refused before any write).
//! - A revoke deletes every key of the lease in one new revision, one delete event per key,
//!   in key order (etcd sorts the keys so that every member writes the same sub-revisions);
//!   a lease without keys is revoked without a new revision.

use redb::{ReadableDatabase, ReadableTable};

use crate::codec::{Reader, Writer};
use crate::error::{DecodeError, RequestError, StoreError};
use crate::schema::{LEASES, LEASE_KEYS};
use crate::store::{self, ApplyState, Store, Tables};
use crate::types::*;

/// etcd's `MaxLeaseTTL`: a grant above it fails with "too large lease TTL".
pub const MAX_LEASE_TTL_SECS: i64 = 9_000_000_000;

/// Format version of an encoded [`LeaseRecord`].
pub const LEASE_RECORD_VERSION: u8 = 1;

/// The value of a `LEASES` row (etcd's `leasepb.Lease`).
///
/// Layout (little endian): `u8 version | i64 id | i64 ttl_secs | i64 remaining_ttl_secs |
/// u32 crc32(all before)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseRecord {
    pub id: LeaseId,
    /// The TTL the lease was granted with (after the server raised it to the minimum).
    pub ttl_secs: i64,
    /// The remaining TTL at the last checkpoint, 0 for none. Cairn writes no checkpoints yet
    /// (etcd 3.5 has them off by default), so this is always 0 and a new leader gives every
    /// lease its full TTL; the field keeps the record etcd's shape for when they come.
    pub remaining_ttl_secs: i64,
}

impl LeaseRecord {
    /// The TTL a new leader gives the lease from the moment it takes over (etcd's
    /// `Lease.RemainingTTL`): the checkpointed remaining TTL if there is one, else the TTL.
    pub fn ttl_on_promotion_secs(&self) -> i64 {
        if self.remaining_ttl_secs > 0 {
            self.remaining_ttl_secs
        } else {
            self.ttl_secs
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer { buf: Vec::with_capacity(29) };
        w.u8(LEASE_RECORD_VERSION);
        w.i64(self.id);
        w.i64(self.ttl_secs);
        w.i64(self.remaining_ttl_secs);
        let crc = crc32fast::hash(&w.buf);
        w.u32(crc);
        w.buf
    }

    pub fn decode(buf: &[u8]) -> Result<LeaseRecord, DecodeError> {
        if buf.len() < 4 {
            return Err(DecodeError("lease record too short".into()));
        }
        let (body, crc) = buf.split_at(buf.len() - 4);
        if crc32fast::hash(body) != u32::from_le_bytes(crc.try_into().expect("split at len-4")) {
            return Err(DecodeError("lease record checksum mismatch".into()));
        }
        let mut r = Reader::new(body);
        let v = r.u8()?;
        if v != LEASE_RECORD_VERSION {
            return Err(DecodeError(format!("lease record version {v} unknown")));
        }
        let rec = LeaseRecord { id: r.i64()?, ttl_secs: r.i64()?, remaining_ttl_secs: r.i64()? };
        r.finish()?;
        Ok(rec)
    }

    /// Decodes the record of the `LEASES` row of `id`, checking that it names `id`.
    fn decode_row(id: LeaseId, buf: &[u8]) -> Result<LeaseRecord, StoreError> {
        let rec = LeaseRecord::decode(buf)?;
        if rec.id != id {
            return Err(StoreError::Corrupt {
                what: format!("lease row {id:x} holds the record of lease {:x}", rec.id),
            });
        }
        Ok(rec)
    }
}

/// The check etcd makes of a grant before it is proposed: the TTL limit. (A TTL below the
/// minimum is not an error: the server raises it before proposing.)
pub fn check_grant(ttl_secs: i64) -> Result<(), RequestError> {
    if ttl_secs > MAX_LEASE_TTL_SECS {
        return Err(RequestError::LeaseTtlTooLarge { ttl_secs });
    }
    Ok(())
}

/// Applies `LeaseGrant`, in etcd's order of checks (`lessor.Grant`): ID 0 is "not found",
/// then the TTL limit, then an existing ID.
pub(crate) fn grant(
    t: &mut Tables<'_>,
    id: LeaseId,
    ttl_secs: i64,
) -> Result<Result<CommandResponse, RequestError>, StoreError> {
    if id == 0 {
        return Ok(Err(RequestError::LeaseNotFound { lease: id }));
    }
    if let Err(e) = check_grant(ttl_secs) {
        return Ok(Err(e));
    }
    if t.leases.get(id)?.is_some() {
        return Ok(Err(RequestError::LeaseExist { lease: id }));
    }
    let rec = LeaseRecord { id, ttl_secs, remaining_ttl_secs: 0 };
    t.leases.insert(id, rec.encode().as_slice())?;
    Ok(Ok(CommandResponse::LeaseGrant { id, ttl_secs }))
}

/// Applies `LeaseRevoke`: deletes every key attached to the lease (as single-key deletes in
/// key order, all in the revision being written) and the lease.
pub(crate) fn revoke(
    t: &mut Tables<'_>,
    st: &mut ApplyState,
    id: LeaseId,
) -> Result<Result<CommandResponse, RequestError>, StoreError> {
    if t.leases.get(id)?.is_none() {
        return Ok(Err(RequestError::LeaseNotFound { lease: id }));
    }
    let keys = attached_keys(&t.lease_keys, id)?;
    for key in keys {
        let d = DeleteRangeRequest { key, range_end: Vec::new(), prev_kv: true };
        let resp = store::delete_range(t, st, &d)?;
        // The read side of put's write of LEASE_KEYS: the row names a live key of this lease.
        match resp.prev_kvs.as_slice() {
            [kv] if kv.lease == id => {}
            other => {
                return Err(StoreError::Corrupt {
                    what: format!(
                        "lease {id:x} lists key {:?}, but the store holds {other:?} for it",
                        String::from_utf8_lossy(&d.key)
                    ),
                })
            }
        }
    }
    t.leases.remove(id)?;
    Ok(Ok(CommandResponse::LeaseRevoke { id }))
}

/// The keys attached to lease `id`, in key order.
fn attached_keys(
    lease_keys: &impl ReadableTable<(i64, &'static [u8]), ()>,
    id: LeaseId,
) -> Result<Vec<Vec<u8>>, StoreError> {
    let mut keys = Vec::new();
    for row in lease_keys.range::<(i64, &[u8])>((id, &[][..])..)? {
        let (k, _) = row?;
        let (lease, key) = k.value();
        if lease != id {
            break;
        }
        keys.push(key.to_vec());
    }
    Ok(keys)
}

/// A lease as the store holds it, with its keys when asked for ([`Store::lease`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseInfo {
    pub record: LeaseRecord,
    /// The live keys attached to it, in key order (empty unless asked for).
    pub keys: Vec<Vec<u8>>,
}

impl Store {
    /// Lease `id` as of the last commit, with its attached keys if `with_keys`; `None` if
    /// it does not exist.
    pub fn lease(&self, id: LeaseId, with_keys: bool) -> Result<Option<LeaseInfo>, StoreError> {
        let rtx = self.database().begin_read()?;
        let leases = rtx.open_table(LEASES)?;
        let Some(v) = leases.get(id)? else { return Ok(None) };
        let record = LeaseRecord::decode_row(id, v.value())?;
        let keys = if with_keys { attached_keys(&rtx.open_table(LEASE_KEYS)?, id)? } else { Vec::new() };
        Ok(Some(LeaseInfo { record, keys }))
    }

    /// Every lease as of the last commit, in ID order.
    pub fn leases(&self) -> Result<Vec<LeaseRecord>, StoreError> {
        let rtx = self.database().begin_read()?;
        let mut out = Vec::new();
        for row in rtx.open_table(LEASES)?.iter()? {
            let (k, v) = row?;
            out.push(LeaseRecord::decode_row(k.value(), v.value())?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trip_and_corruption() {
        let rec = LeaseRecord { id: -3, ttl_secs: 9_000_000_000, remaining_ttl_secs: 17 };
        let enc = rec.encode();
        assert_eq!(LeaseRecord::decode(&enc), Ok(rec));
        for i in 0..enc.len() {
            let mut bad = enc.clone();
            bad[i] ^= 0x10;
            assert!(LeaseRecord::decode(&bad).is_err(), "flipped byte {i} not detected");
        }
        assert!(LeaseRecord::decode(&enc[..enc.len() - 1]).is_err());
        assert_eq!(rec.ttl_on_promotion_secs(), 17);
        assert_eq!(LeaseRecord { remaining_ttl_secs: 0, ..rec }.ttl_on_promotion_secs(), 9_000_000_000);
    }

    #[test]
    fn grant_checks_ttl_limit() {
        assert_eq!(check_grant(MAX_LEASE_TTL_SECS), Ok(()));
        assert_eq!(check_grant(-1), Ok(()));
        assert_eq!(
            check_grant(MAX_LEASE_TTL_SECS + 1),
            Err(RequestError::LeaseTtlTooLarge { ttl_secs: MAX_LEASE_TTL_SECS + 1 })
        );
    }
}
