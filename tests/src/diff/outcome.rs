//! Responses and errors in a normalised form that can be compared between two servers.
//!
//! Every field of etcd 3.5's KV responses is kept, except what legitimately differs between
//! two clusters: `cluster_id` and `member_id` become ordinals in order of first appearance
//! within one transcript (0 stays 0: "not set" must match too, and one server must always
//! give the same id), and `raft_term` becomes 0 or 1 (unset or set). Errors are kept as
//! (gRPC code, message).

use std::collections::HashMap;
use std::fmt::{self, Display};

use etcd_client::{
    CompactionResponse, DeleteResponse, GetResponse, KeyValue, PutResponse, ResponseHeader, TxnOpResponse, TxnResponse,
};

use super::request::ShowBytes;

/// Bytes compared exactly and shown readably.
#[derive(Clone, PartialEq, Eq)]
pub struct Bytes(pub Vec<u8>);

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        ShowBytes(&self.0).fmt(f)
    }
}

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        ShowBytes(&self.0).fmt(f)
    }
}

/// A response header, normalised (see the module doc).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub cluster_id: u64,
    pub member_id: u64,
    pub revision: i64,
    pub raft_term: u64,
}

/// A key-value pair, every field of `mvccpb.KeyValue`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kv {
    pub key: Bytes,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    pub value: Bytes,
    pub lease: i64,
}

/// A successful response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resp {
    Range { header: Option<Header>, kvs: Vec<Kv>, more: bool, count: i64 },
    Put { header: Option<Header>, prev_kv: Option<Kv> },
    Delete { header: Option<Header>, deleted: i64, prev_kvs: Vec<Kv> },
    Txn { header: Option<Header>, succeeded: bool, responses: Vec<Resp> },
    Compact { header: Option<Header> },
    Lease(super::lease::LeaseResp),
}

impl Resp {
    /// The header of the response.
    pub fn header(&self) -> Option<&Header> {
        match self {
            Resp::Range { header, .. }
            | Resp::Put { header, .. }
            | Resp::Delete { header, .. }
            | Resp::Txn { header, .. }
            | Resp::Compact { header } => header.as_ref(),
            Resp::Lease(l) => l.header(),
        }
    }
}

/// A failed request: the gRPC status code (as tonic names it, e.g. `InvalidArgument`) and the
/// message. A failure outside gRPC (transport, client) has code `client-error`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RpcError {
    pub code: String,
    pub message: String,
}

impl RpcError {
    /// Code used for failures that are not a gRPC status from the server.
    pub const CLIENT_ERROR: &'static str = "client-error";

    /// From an `etcd-client` error.
    pub fn from_client(e: &etcd_client::Error) -> RpcError {
        match e {
            etcd_client::Error::GRpcStatus(s) => {
                RpcError { code: format!("{:?}", s.code()), message: s.message().to_string() }
            }
            other => RpcError { code: Self::CLIENT_ERROR.to_string(), message: other.to_string() },
        }
    }

    /// Whether the server answered with a gRPC status (rather than the client failing).
    pub fn is_grpc(&self) -> bool {
        self.code != Self::CLIENT_ERROR
    }
}

/// What one request got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok(Resp),
    Err(RpcError),
}

/// Normalises the ids of one transcript (see the module doc).
#[derive(Debug, Default)]
pub struct Normalizer {
    ids: HashMap<u64, u64>,
    /// Lease IDs the server chose, in order of first appearance (see `lease.rs`).
    pub(crate) chosen_leases: Vec<i64>,
}

impl Normalizer {
    pub fn new() -> Self {
        Self::default()
    }

    fn id(&mut self, id: u64) -> u64 {
        if id == 0 {
            return 0;
        }
        let next = self.ids.len() as u64 + 1;
        *self.ids.entry(id).or_insert(next)
    }

    pub fn header(&mut self, h: Option<&ResponseHeader>) -> Option<Header> {
        h.map(|h| Header {
            cluster_id: self.id(h.cluster_id()),
            member_id: self.id(h.member_id()),
            revision: h.revision(),
            raft_term: u64::from(h.raft_term() != 0),
        })
    }

    pub fn kv(kv: &KeyValue) -> Kv {
        Kv {
            key: Bytes(kv.key().to_vec()),
            create_revision: kv.create_revision(),
            mod_revision: kv.mod_revision(),
            version: kv.version(),
            value: Bytes(kv.value().to_vec()),
            lease: kv.lease(),
        }
    }

    pub fn range(&mut self, r: &GetResponse) -> Resp {
        Resp::Range {
            header: self.header(r.header()),
            kvs: r.kvs().iter().map(Self::kv).collect(),
            more: r.more(),
            count: r.count(),
        }
    }

    pub fn put(&mut self, r: &PutResponse) -> Resp {
        Resp::Put { header: self.header(r.header()), prev_kv: r.prev_key().map(Self::kv) }
    }

    pub fn delete(&mut self, r: &DeleteResponse) -> Resp {
        Resp::Delete {
            header: self.header(r.header()),
            deleted: r.deleted(),
            prev_kvs: r.prev_kvs().iter().map(Self::kv).collect(),
        }
    }

    pub fn txn(&mut self, r: &TxnResponse) -> Resp {
        let header = self.header(r.header());
        let responses = r
            .op_responses()
            .iter()
            .map(|op| match op {
                TxnOpResponse::Get(g) => self.range(g),
                TxnOpResponse::Put(p) => self.put(p),
                TxnOpResponse::Delete(d) => self.delete(d),
                TxnOpResponse::Txn(t) => self.txn(t),
            })
            .collect();
        Resp::Txn { header, succeeded: r.succeeded(), responses }
    }

    pub fn compact(&mut self, r: &CompactionResponse) -> Resp {
        Resp::Compact { header: self.header(r.header()) }
    }
}

// ---- rendering: compact, one line per key-value, nested txns indented ----

impl fmt::Display for Header {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let id = |v: u64| if v == 0 { "0".to_string() } else { format!("#{v}") };
        write!(
            f,
            "rev={} cluster={} member={} term={}",
            self.revision,
            id(self.cluster_id),
            id(self.member_id),
            if self.raft_term == 0 { "0" } else { "set" }
        )
    }
}

impl fmt::Display for Kv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}={} create={} mod={} version={} lease={}",
            self.key, self.value, self.create_revision, self.mod_revision, self.version, self.lease
        )
    }
}

fn show_header(h: &Option<Header>) -> String {
    match h {
        Some(h) => format!("[{h}]"),
        None => "[no header]".to_string(),
    }
}

fn render(resp: &Resp, indent: usize, out: &mut String) {
    use std::fmt::Write;
    let pad = "  ".repeat(indent);
    match resp {
        Resp::Range { header, kvs, more, count } => {
            let _ = writeln!(out, "{pad}Range {} count={count} more={more} kvs={}", show_header(header), kvs.len());
            for kv in kvs {
                let _ = writeln!(out, "{pad}  {kv}");
            }
        }
        Resp::Put { header, prev_kv } => {
            let _ = write!(out, "{pad}Put {}", show_header(header));
            match prev_kv {
                Some(kv) => {
                    let _ = writeln!(out, " prev_kv: {kv}");
                }
                None => {
                    let _ = writeln!(out, " prev_kv: none");
                }
            }
        }
        Resp::Delete { header, deleted, prev_kvs } => {
            let _ = writeln!(out, "{pad}Delete {} deleted={deleted} prev_kvs={}", show_header(header), prev_kvs.len());
            for kv in prev_kvs {
                let _ = writeln!(out, "{pad}  {kv}");
            }
        }
        Resp::Txn { header, succeeded, responses } => {
            let _ =
                writeln!(out, "{pad}Txn {} succeeded={succeeded} responses={}", show_header(header), responses.len());
            for r in responses {
                render(r, indent + 1, out);
            }
        }
        Resp::Compact { header } => {
            let _ = writeln!(out, "{pad}Compact {}", show_header(header));
        }
        Resp::Lease(l) => {
            for line in l.to_string().lines() {
                let _ = writeln!(out, "{pad}{line}");
            }
        }
    }
}

impl fmt::Display for Resp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = String::new();
        render(self, 0, &mut s);
        f.write_str(s.trim_end())
    }
}

impl fmt::Display for RpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ERROR code={} message={:?}", self.code, self.message)
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Ok(r) => r.fmt(f),
            Outcome::Err(e) => e.fmt(f),
        }
    }
}
