//! Checks a request must pass before it is proposed, as etcd's gRPC layer makes them
//! (`v3rpc/key.go`): pure functions of the request, so every node agrees.

use std::collections::BTreeSet;

use crate::error::RequestError;
use crate::types::*;

pub fn check_range(r: &RangeRequest) -> Result<(), RequestError> {
    if r.key.is_empty() {
        return Err(RequestError::EmptyKey);
    }
    Ok(())
}

pub fn check_put(r: &PutRequest) -> Result<(), RequestError> {
    if r.key.is_empty() {
        return Err(RequestError::EmptyKey);
    }
    if r.ignore_value && !r.value.is_empty() {
        return Err(RequestError::ValueProvided);
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(RequestError::LeaseProvided);
    }
    Ok(())
}

pub fn check_delete(r: &DeleteRangeRequest) -> Result<(), RequestError> {
    if r.key.is_empty() {
        return Err(RequestError::EmptyKey);
    }
    Ok(())
}

/// The whole txn check: op budget and keys (recursively), then the duplicate-key rule on
/// both branches.
pub fn check_txn(r: &TxnRequest, max_txn_ops: usize) -> Result<(), RequestError> {
    check_txn_ops(r, max_txn_ops as i64)?;
    check_intervals(&r.success)?;
    check_intervals(&r.failure)?;
    Ok(())
}

fn check_txn_ops(r: &TxnRequest, max_txn_ops: i64) -> Result<(), RequestError> {
    let opc = r.compare.len().max(r.success.len()).max(r.failure.len()) as i64;
    if opc > max_txn_ops {
        return Err(RequestError::TooManyOps);
    }
    if r.compare.iter().any(|c| c.key.is_empty()) {
        return Err(RequestError::EmptyKey);
    }
    // A nested txn gets what this level left of the budget; its own ops count against it.
    for op in r.success.iter().chain(r.failure.iter()) {
        match op {
            RequestOp::Range(x) => check_range(x)?,
            RequestOp::Put(x) => check_put(x)?,
            RequestOp::DeleteRange(x) => check_delete(x)?,
            RequestOp::Txn(x) => check_txn_ops(x, max_txn_ops - opc)?,
        }
    }
    Ok(())
}

/// A deleted interval `[key, range_end)`; an empty `range_end` is the single key. As in
/// etcd, a `range_end` that sorts below `key` (such as the from-key form `\0`) covers
/// nothing here.
struct Interval<'a> {
    key: &'a [u8],
    end: &'a [u8],
}

impl Interval<'_> {
    fn contains(&self, k: &[u8]) -> bool {
        if self.end.is_empty() {
            self.key == k
        } else {
            self.key <= k && k < self.end
        }
    }
}

/// The puts and deletes of one list of ops (with its nested txns), or DuplicateKey.
fn check_intervals(reqs: &[RequestOp]) -> Result<(BTreeSet<&[u8]>, Vec<Interval<'_>>), RequestError> {
    let mut dels: Vec<Interval<'_>> = reqs
        .iter()
        .filter_map(|op| match op {
            RequestOp::DeleteRange(d) => Some(Interval { key: &d.key, end: &d.range_end }),
            _ => None,
        })
        .collect();
    let mut puts: BTreeSet<&[u8]> = BTreeSet::new();
    for op in reqs {
        let RequestOp::Txn(t) = op else { continue };
        let (puts_then, dels_then) = check_intervals(&t.success)?;
        let (puts_else, dels_else) = check_intervals(&t.failure)?;
        for k in &puts_then {
            if puts.contains(k) || dels.iter().any(|d| d.contains(k)) {
                return Err(RequestError::DuplicateKey);
            }
            puts.insert(k);
        }
        for k in &puts_else {
            // The same key in both branches is fine: only one branch runs.
            if puts.contains(k) && !puts_then.contains(k) {
                return Err(RequestError::DuplicateKey);
            }
            if dels.iter().any(|d| d.contains(k)) {
                return Err(RequestError::DuplicateKey);
            }
            puts.insert(k);
        }
        dels.extend(dels_then);
        dels.extend(dels_else);
    }
    for op in reqs {
        let RequestOp::Put(p) = op else { continue };
        let k: &[u8] = &p.key;
        if puts.contains(k) || dels.iter().any(|d| d.contains(k)) {
            return Err(RequestError::DuplicateKey);
        }
        puts.insert(k);
    }
    Ok((puts, dels))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(k: &str) -> RequestOp {
        RequestOp::Put(PutRequest { key: k.into(), ..Default::default() })
    }
    fn del(k: &str, end: &str) -> RequestOp {
        RequestOp::DeleteRange(DeleteRangeRequest { key: k.into(), range_end: end.into(), prev_kv: false })
    }
    fn txn(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> TxnRequest {
        TxnRequest { compare: vec![], success, failure }
    }

    #[test]
    fn duplicate_key_rules() {
        assert_eq!(check_txn(&txn(vec![put("a"), put("a")], vec![]), 128), Err(RequestError::DuplicateKey));
        assert_eq!(check_txn(&txn(vec![del("a", "c"), put("b")], vec![]), 128), Err(RequestError::DuplicateKey));
        assert_eq!(check_txn(&txn(vec![put("b"), del("a", "c")], vec![]), 128), Err(RequestError::DuplicateKey));
        assert_eq!(check_txn(&txn(vec![put("c"), del("a", "c")], vec![]), 128), Ok(()));
        assert_eq!(check_txn(&txn(vec![put("a")], vec![put("a")]), 128), Ok(()));
        let nested = RequestOp::Txn(txn(vec![put("a")], vec![put("a")]));
        assert_eq!(check_txn(&txn(vec![nested.clone()], vec![]), 128), Ok(()));
        assert_eq!(check_txn(&txn(vec![nested, put("a")], vec![]), 128), Err(RequestError::DuplicateKey));
        let nested_del = RequestOp::Txn(txn(vec![del("a", "")], vec![]));
        assert_eq!(check_txn(&txn(vec![nested_del, put("a")], vec![]), 128), Err(RequestError::DuplicateKey));
    }

    #[test]
    fn op_budget() {
        let ops: Vec<RequestOp> = (0..128).map(|i| put(&format!("k{i}"))).collect();
        assert_eq!(check_txn(&txn(ops.clone(), vec![]), 128), Ok(()));
        let mut more = ops;
        more.push(put("x"));
        assert_eq!(check_txn(&txn(more, vec![]), 128), Err(RequestError::TooManyOps));
        // nested: 2 ops at the top leave 2 for a child under a budget of 4.
        let child = RequestOp::Txn(txn(vec![put("a"), put("b"), put("c")], vec![]));
        assert_eq!(check_txn(&txn(vec![child, put("z")], vec![]), 4), Err(RequestError::TooManyOps));
    }
}
