//! The differential machinery: the same requests against two servers, compared field by
//! field.
//!
//! - [`request`]: the request model ([`Req`]) with builders ([`range`], [`put`], [`delete`],
//!   [`txn`], [`compact`], [`Cmp`]) and the conversion to `etcd-client` types.
//! - [`lease`]: Lease RPCs in scripts ([`LeaseReq`], [`LeaseResp`]), with server-chosen lease
//!   IDs normalised.
//! - [`outcome`]: normalised responses and errors ([`Outcome`]).
//! - [`script`]: [`Script`] (named steps with optional expectations) and [`run_script`].
//! - [`runner`]: [`run_differential`], fresh etcd vs fresh server under test, with a diff.

pub mod lease;
pub mod outcome;
pub mod request;
pub mod runner;
pub mod script;

pub use lease::{
    keep_alive_across_revoke, keep_alive_once, lease_grant, lease_list, lease_revoke, lease_ttl, LeaseName, LeaseReq,
    LeaseResp,
};
pub use outcome::{Bytes, Header, Kv, Normalizer, Outcome, Resp, RpcError};
pub use request::{
    compact, delete, prefix_end, put, range, range_all, txn, Cmp, CmpTarget, CompactReq, DeleteReq, PutReq, RangeReq,
    Req, TxnReq,
};
pub use runner::{diff_transcripts, line_diff, render_transcript, run_differential, run_differential_with_args};
pub use script::{run_script, Expect, Record, Script, Step};

/// Re-exported so scenarios need not depend on `etcd-client` names directly.
pub use etcd_client::{CompareOp, SortOrder, SortTarget};
