//! Conversions between the wire types (`cairn_proto`) and the domain types
//! (`cairn_storage`), in one place.

use bytes::Bytes;
use cairn_proto::etcdserverpb as pb;
use cairn_proto::mvccpb;
use cairn_storage as st;

pub fn kv(k: st::KeyValue) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: Bytes::from(k.key),
        create_revision: k.create_revision,
        mod_revision: k.mod_revision,
        version: k.version,
        value: Bytes::from(k.value),
        lease: k.lease,
    }
}

pub fn range_req(r: &pb::RangeRequest) -> st::RangeRequest {
    // etcd 3.5 does not reject unknown sort values: an unknown target or order sorts nothing.
    let target = match r.sort_target {
        0 => Some(st::SortTarget::Key),
        1 => Some(st::SortTarget::Version),
        2 => Some(st::SortTarget::Create),
        3 => Some(st::SortTarget::Mod),
        4 => Some(st::SortTarget::Value),
        _ => None,
    };
    let order = match r.sort_order {
        0 => Some(st::SortOrder::None),
        1 => Some(st::SortOrder::Ascend),
        2 => Some(st::SortOrder::Descend),
        _ => None,
    };
    let (sort_order, sort_target) = match (order, target) {
        (Some(o), Some(t)) => (o, t),
        _ => (st::SortOrder::None, st::SortTarget::Key),
    };
    st::RangeRequest {
        key: r.key.to_vec(),
        range_end: r.range_end.to_vec(),
        limit: r.limit,
        revision: r.revision,
        sort_order,
        sort_target,
        keys_only: r.keys_only,
        count_only: r.count_only,
        min_mod_revision: r.min_mod_revision,
        max_mod_revision: r.max_mod_revision,
        min_create_revision: r.min_create_revision,
        max_create_revision: r.max_create_revision,
    }
}

pub fn range_resp(r: st::RangeResponse, header: pb::ResponseHeader) -> pb::RangeResponse {
    pb::RangeResponse { header: Some(header), kvs: r.kvs.into_iter().map(kv).collect(), more: r.more, count: r.count }
}

pub fn put_req(r: &pb::PutRequest) -> st::PutRequest {
    st::PutRequest {
        key: r.key.to_vec(),
        value: r.value.to_vec(),
        lease: r.lease,
        prev_kv: r.prev_kv,
        ignore_value: r.ignore_value,
        ignore_lease: r.ignore_lease,
    }
}

pub fn put_resp(r: st::PutResponse, header: pb::ResponseHeader) -> pb::PutResponse {
    pb::PutResponse { header: Some(header), prev_kv: r.prev_kv.map(kv) }
}

pub fn delete_req(r: &pb::DeleteRangeRequest) -> st::DeleteRangeRequest {
    st::DeleteRangeRequest { key: r.key.to_vec(), range_end: r.range_end.to_vec(), prev_kv: r.prev_kv }
}

pub fn delete_resp(r: st::DeleteRangeResponse, header: pb::ResponseHeader) -> pb::DeleteRangeResponse {
    pb::DeleteRangeResponse {
        header: Some(header),
        deleted: r.deleted,
        prev_kvs: r.prev_kvs.into_iter().map(kv).collect(),
    }
}

fn compare(c: &pb::Compare) -> st::Compare {
    use pb::compare::TargetUnion as U;
    let result = match c.result {
        1 => st::CompareResult::Greater,
        2 => st::CompareResult::Less,
        3 => st::CompareResult::NotEqual,
        // etcd treats unknown results like EQUAL (its switch falls to the default).
        _ => st::CompareResult::Equal,
    };
    // The operand comes from the union when it matches the target, else it is zero (etcd).
    let target = match c.target {
        0 => st::CompareTarget::Version(match &c.target_union {
            Some(U::Version(v)) => *v,
            _ => 0,
        }),
        1 => st::CompareTarget::Create(match &c.target_union {
            Some(U::CreateRevision(v)) => *v,
            _ => 0,
        }),
        2 => st::CompareTarget::Mod(match &c.target_union {
            Some(U::ModRevision(v)) => *v,
            _ => 0,
        }),
        3 => st::CompareTarget::Value(match &c.target_union {
            Some(U::Value(v)) => v.to_vec(),
            _ => Vec::new(),
        }),
        _ => st::CompareTarget::Lease(match &c.target_union {
            Some(U::Lease(v)) => *v,
            _ => 0,
        }),
    };
    st::Compare { result, target, key: c.key.to_vec(), range_end: c.range_end.to_vec() }
}

fn request_op(op: &pb::RequestOp) -> Option<st::RequestOp> {
    use pb::request_op::Request as R;
    Some(match op.request.as_ref()? {
        R::RequestRange(r) => st::RequestOp::Range(range_req(r)),
        R::RequestPut(r) => st::RequestOp::Put(put_req(r)),
        R::RequestDeleteRange(r) => st::RequestOp::DeleteRange(delete_req(r)),
        R::RequestTxn(r) => st::RequestOp::Txn(txn_req(r)),
    })
}

/// A txn op with no request set is dropped, as etcd skips it.
pub fn txn_req(r: &pb::TxnRequest) -> st::TxnRequest {
    st::TxnRequest {
        compare: r.compare.iter().map(compare).collect(),
        success: r.success.iter().filter_map(request_op).collect(),
        failure: r.failure.iter().filter_map(request_op).collect(),
    }
}

/// Inner responses carry a header with only a revision, as etcd 3.5 fills it: the store
/// revision as the op saw it, i.e. the old revision until the txn's first write and the new
/// one from then on. A nested txn's own header has revision 0.
pub fn txn_resp(r: st::TxnResponse, header: pb::ResponseHeader) -> pb::TxnResponse {
    let changed = writes(&r.responses);
    let new = header.revision;
    let old = if changed { new - 1 } else { new };
    let mut written = false;
    let responses = responses(r.responses, old, new, &mut written);
    pb::TxnResponse { header: Some(header), succeeded: r.succeeded, responses }
}

/// Whether executing these responses' ops changed the store.
fn writes(rs: &[st::ResponseOp]) -> bool {
    rs.iter().any(|r| match r {
        st::ResponseOp::Put(_) => true,
        st::ResponseOp::DeleteRange(d) => d.deleted > 0,
        st::ResponseOp::Txn(t) => writes(&t.responses),
        st::ResponseOp::Range(_) => false,
    })
}

fn responses(rs: Vec<st::ResponseOp>, old: i64, new: i64, written: &mut bool) -> Vec<pb::ResponseOp> {
    use pb::response_op::Response as R;
    let mut out = Vec::with_capacity(rs.len());
    for r in rs {
        let response = match r {
            st::ResponseOp::Txn(x) => R::ResponseTxn(pb::TxnResponse {
                header: Some(pb::ResponseHeader::default()),
                succeeded: x.succeeded,
                responses: responses(x.responses, old, new, written),
            }),
            other => {
                *written |= match &other {
                    st::ResponseOp::Put(_) => true,
                    st::ResponseOp::DeleteRange(d) => d.deleted > 0,
                    _ => false,
                };
                let h = pb::ResponseHeader { revision: if *written { new } else { old }, ..Default::default() };
                match other {
                    st::ResponseOp::Range(x) => R::ResponseRange(range_resp(x, h)),
                    st::ResponseOp::Put(x) => R::ResponsePut(put_resp(x, h)),
                    st::ResponseOp::DeleteRange(x) => R::ResponseDeleteRange(delete_resp(x, h)),
                    st::ResponseOp::Txn(_) => unreachable!("handled above"),
                }
            }
        };
        out.push(pb::ResponseOp { response: Some(response) });
    }
    out
}
