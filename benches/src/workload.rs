//! The workloads: what one op of each is, the data they need loaded first, and the runner that
//! drives N concurrent clients over a few shared gRPC connections and times every op.
//!
//! Every op checks its response (a Range finds its key with a value of the written size, a
//! list page holds `LIST_LIMIT` keys and says `more`, a kube-style txn succeeds, a keep-alive
//! answers its lease with the granted TTL): an answer that does not hold what it must counts as
//! an error, like a gRPC error or a timeout.
//!
//! The watch fan-out workload has a runner of its own, in [`crate::fanout`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, GetOptions, KvClient, LeaseClient, LeaseKeepAliveStream, LeaseKeeper, Txn, TxnOp,
    TxnOpResponse,
};
use tokio::sync::Barrier;

use crate::cpu;
use crate::stats::RunOutcome;

/// Keys preloaded for the single-key range workloads.
pub const READ_KEYS: usize = 1000;
/// Keys preloaded under the prefix the list workload pages through.
pub const LIST_KEYS: usize = 1000;
/// Page size of the list workload (client-go's pager asks kube-apiserver for 500 items a page,
/// and the apiserver passes that limit on to etcd).
pub const LIST_LIMIT: usize = 500;
/// Keys each kube-style txn client owns and updates in turn.
pub const TXN_KEYS_PER_CLIENT: usize = 8;
/// Puts per preload txn (under etcd's default --max-txn-ops of 128).
const PRELOAD_BATCH: usize = 100;
/// Longest run of a workload when its op count is a default (not `--ops`).
pub const DEFAULT_RUN_CAP: Duration = Duration::from_secs(4);
/// The same for `--quick`.
pub const QUICK_RUN_CAP: Duration = Duration::from_secs(1);
/// An op that takes longer than this is counted as an error (a stall) and the client moves on.
pub const OP_TIMEOUT: Duration = Duration::from_secs(10);
/// TTL of the leases the keep-alive workload grants (they are revoked at the end of each run;
/// this only matters if the bench is killed).
pub const LEASE_TTL_SECS: i64 = 60;
/// Multiplier that spreads a client's successive reads over the preloaded keys (a prime, so
/// coprime with `READ_KEYS`).
const READ_STRIDE: usize = 7919;

/// One kind of workload; each is run with 1 client and with `--clients` clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Put of a fresh key with a `--value-size` value.
    Put,
    /// Range of one existing key, linearizable (etcd: ReadIndex; Cairn: openraft ReadIndex).
    RangeLinearizable,
    /// Range of one existing key, serializable (served from the local store).
    RangeSerializable,
    /// kube-apiserver's GuaranteedUpdate: `Txn If(mod_revision(k)==r) Then Put(k,v) Else Get(k)`.
    Txn,
    /// First page (limit `LIST_LIMIT`) of a linearizable range over a prefix of `LIST_KEYS` keys.
    List,
    /// Watch fan-out: N watchers on one prefix, one writer; one op is one event delivered to
    /// one watcher (see [`crate::fanout`]). Its "clients" are the watchers.
    WatchFanout,
    /// One LeaseKeepAlive request on a lease's stream and its response.
    LeaseKeepAlive,
    /// Puts while the server defragments (see [`crate::defrag`]).
    Defrag,
}

impl Kind {
    pub const ALL: [Kind; 8] = [
        Kind::Put,
        Kind::RangeLinearizable,
        Kind::RangeSerializable,
        Kind::Txn,
        Kind::List,
        Kind::WatchFanout,
        Kind::LeaseKeepAlive,
        Kind::Defrag,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Put => "put",
            Kind::RangeLinearizable => "range-linearizable",
            Kind::RangeSerializable => "range-serializable",
            Kind::Txn => "txn",
            Kind::List => "list",
            Kind::WatchFanout => "watch-fanout",
            Kind::LeaseKeepAlive => "lease-keepalive",
            Kind::Defrag => "defrag",
        }
    }

    /// What the client count of a run of this workload counts.
    pub fn count_label(self) -> &'static str {
        if self == Kind::WatchFanout {
            "watchers"
        } else {
            "clients"
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == s)
    }

    /// Ops of one run when neither `--ops` nor `--duration` is given (such runs are also capped
    /// at `DEFAULT_RUN_CAP`, so that the whole default run stays within two and a half minutes
    /// on two cores however slow a server is). For `WatchFanout` the ops are the writer's puts
    /// and `clients` is the watcher count.
    pub fn default_ops(self, clients: usize, quick: bool) -> u64 {
        let concurrent = clients > 1;
        if self == Kind::WatchFanout {
            // About 500 000 deliveries at most, and never fewer than 100 puts.
            return if quick { 20 } else { (500_000 / clients as u64).clamp(100, 2_000) };
        }
        match (quick, concurrent, self) {
            (true, false, Kind::List) => 10,
            (true, false, _) => 20,
            (true, true, Kind::List) => 50,
            (true, true, _) => 200,
            (false, false, Kind::Put | Kind::Txn) => 2_000,
            (false, false, Kind::RangeLinearizable | Kind::RangeSerializable | Kind::LeaseKeepAlive) => 5_000,
            (false, false, Kind::List) => 300,
            (false, true, Kind::Put | Kind::Txn) => 20_000,
            (false, true, Kind::RangeLinearizable | Kind::RangeSerializable | Kind::LeaseKeepAlive) => 50_000,
            (false, true, Kind::List) => 1_000,
            (false, _, Kind::WatchFanout) => unreachable!("handled above"),
            // A defrag run lasts as long as the defragmentation; the op count is not used.
            (_, _, Kind::Defrag) => 1,
        }
    }
}

/// How long a run goes on: until `ops` ops are done or `duration` has passed since the start,
/// whichever comes first (at least one of the two is set).
#[derive(Debug, Clone, Copy)]
pub struct Quota {
    /// Ops in total, split evenly over the clients.
    pub ops: Option<u64>,
    /// Every client stops starting new ops once this much time has passed.
    pub duration: Option<Duration>,
}

/// One run of a workload against one server.
#[derive(Debug, Clone, Copy)]
pub struct RunSpec {
    pub kind: Kind,
    /// Concurrent clients (for `WatchFanout`: watchers).
    pub clients: usize,
    pub quota: Quota,
    /// Distinguishes the keys of the runs of one bench run.
    pub run_id: usize,
    /// `LeaseKeepAlive`: leases granted for the run (at least one per client), spread over the
    /// clients (lease `l` belongs to client `l % clients`).
    pub leases: usize,
    /// `WatchFanout`: gRPC watch streams the watchers are spread over.
    pub watch_streams: usize,
}

/// An etcd-client error in one line; for a gRPC status, its code and message (such as
/// `gRPC Unimplemented: ...`).
pub fn describe(e: &etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(s) if s.message().is_empty() => format!("gRPC {:?}", s.code()),
        etcd_client::Error::GRpcStatus(s) => format!("gRPC {:?}: {}", s.code(), s.message()),
        e => e.to_string(),
    }
}

/// Data loaded into one server before the workloads run, and the key space of this bench run.
pub struct Fixture {
    /// Every key this bench run writes starts with this (unique per run, so that runs against
    /// long-lived `--endpoints` never collide).
    pub prefix: String,
    pub value_size: usize,
    read_keys: Arc<Vec<Vec<u8>>>,
    list_prefix: String,
}

impl Fixture {
    /// Writes the keys of the range and list workloads (in txns of `PRELOAD_BATCH` puts).
    pub async fn load(kv: &KvClient, prefix: &str, value_size: usize) -> Result<Fixture, String> {
        let mut kv = kv.clone();
        let read_keys: Vec<Vec<u8>> = (0..READ_KEYS).map(|i| format!("{prefix}read/{i:06}").into_bytes()).collect();
        let list_prefix = format!("{prefix}list/");
        let list_keys: Vec<Vec<u8>> = (0..LIST_KEYS).map(|i| format!("{list_prefix}{i:06}").into_bytes()).collect();
        for (n, batch) in read_keys.iter().chain(list_keys.iter()).collect::<Vec<_>>().chunks(PRELOAD_BATCH).enumerate()
        {
            let ops: Vec<TxnOp> = batch
                .iter()
                .enumerate()
                .map(|(i, k)| TxnOp::put((*k).clone(), value(value_size, (n * 1000 + i) as u64), None))
                .collect();
            let resp = kv.txn(Txn::new().and_then(ops)).await.map_err(|e| format!("preload txn {n}: {e}"))?;
            if !resp.succeeded() {
                return Err(format!("preload txn {n} did not succeed"));
            }
        }
        Ok(Fixture { prefix: prefix.to_string(), value_size, read_keys: Arc::new(read_keys), list_prefix })
    }
}

impl Fixture {
    /// Fails unless a linearizable Range on `kv` sees every preloaded key: once it has, the
    /// member behind `kv` has applied the preload, and its serializable reads find the keys too.
    pub async fn check_visible(&self, kv: &KvClient) -> Result<(), String> {
        let mut kv = kv.clone();
        let options = GetOptions::new().with_prefix().with_count_only();
        let resp =
            kv.get(self.prefix.as_str(), Some(options)).await.map_err(|e| format!("count preloaded keys: {e}"))?;
        let expected = (READ_KEYS + LIST_KEYS) as i64;
        if resp.count() == expected {
            Ok(())
        } else {
            Err(format!("{} preloaded keys, expected {expected}", resp.count()))
        }
    }
}

/// A value of `size` bytes that differs from op to op (its first bytes are `seed`).
pub fn value(size: usize, seed: u64) -> Vec<u8> {
    let mut v: Vec<u8> = (0..size).map(|i| b'a' + (i % 26) as u8).collect();
    let s = seed.to_le_bytes();
    let n = s.len().min(size);
    v[..n].copy_from_slice(&s[..n]);
    v
}

/// What one client of a run remembers between its ops.
enum ClientState {
    Put {
        key_prefix: String,
        value_size: usize,
    },
    Range {
        keys: Arc<Vec<Vec<u8>>>,
        offset: usize,
        options: GetOptions,
        value_size: usize,
    },
    Txn {
        keys: Vec<Vec<u8>>,
        mod_revisions: Vec<i64>,
        value_size: usize,
    },
    List {
        prefix: String,
    },
    /// Each lease with its keep-alive stream and granted TTL; op `i` renews lease `i % len`.
    Lease {
        leases: Vec<(LeaseKeeper, LeaseKeepAliveStream, i64)>,
    },
}

impl ClientState {
    /// Prepares client `client` of a run (for the txn workload: creates its keys and remembers
    /// their mod_revision; for the lease workload: grants its leases and opens one keep-alive
    /// stream per lease).
    async fn new(
        spec: &RunSpec,
        fixture: &Fixture,
        client: usize,
        kv: &mut KvClient,
        lease: &mut LeaseClient,
    ) -> Result<Self, String> {
        let p = &fixture.prefix;
        let run_id = spec.run_id;
        let kind = spec.kind;
        Ok(match kind {
            Kind::WatchFanout | Kind::Defrag => {
                return Err(format!("{} has its own runner (crate::fanout, crate::defrag)", kind.name()));
            }
            Kind::Put => {
                ClientState::Put { key_prefix: format!("{p}put/{run_id}/{client:05}/"), value_size: fixture.value_size }
            }
            Kind::RangeLinearizable | Kind::RangeSerializable => ClientState::Range {
                keys: fixture.read_keys.clone(),
                offset: client * 37,
                options: if kind == Kind::RangeSerializable {
                    GetOptions::new().with_serializable()
                } else {
                    GetOptions::new()
                },
                value_size: fixture.value_size,
            },
            Kind::Txn => {
                let keys: Vec<Vec<u8>> =
                    (0..TXN_KEYS_PER_CLIENT).map(|k| format!("{p}txn/{run_id}/{client:05}/{k}").into_bytes()).collect();
                let mut mod_revisions = Vec::with_capacity(keys.len());
                for (k, key) in keys.iter().enumerate() {
                    let resp = kv
                        .put(key.clone(), value(fixture.value_size, k as u64), None)
                        .await
                        .map_err(|e| format!("txn setup put: {e}"))?;
                    mod_revisions.push(resp.header().ok_or("txn setup put: no header")?.revision());
                }
                ClientState::Txn { keys, mod_revisions, value_size: fixture.value_size }
            }
            Kind::List => ClientState::List { prefix: fixture.list_prefix.clone() },
            Kind::LeaseKeepAlive => {
                let mut leases = Vec::new();
                for _ in (client..spec.leases.max(spec.clients)).step_by(spec.clients) {
                    let granted = lease
                        .grant(LEASE_TTL_SECS, None)
                        .await
                        .map_err(|e| format!("lease grant: {}", describe(&e)))?;
                    if !granted.error().is_empty() || granted.ttl() <= 0 {
                        return Err(format!(
                            "lease grant: ttl {} error {:?} (asked for {LEASE_TTL_SECS})",
                            granted.ttl(),
                            granted.error()
                        ));
                    }
                    // Sends a first keep-alive and waits for its answer.
                    let (keeper, stream) = lease
                        .keep_alive(granted.id())
                        .await
                        .map_err(|e| format!("lease keep-alive stream: {}", describe(&e)))?;
                    leases.push((keeper, stream, granted.ttl()));
                }
                ClientState::Lease { leases }
            }
        })
    }

    /// Undoes what `new` set up that would outlive the run (the leases: revoked).
    async fn teardown(self, lease: &mut LeaseClient) -> Result<(), String> {
        if let ClientState::Lease { leases } = self {
            for (keeper, stream, _) in leases {
                let id = keeper.id();
                drop((keeper, stream));
                lease.revoke(id).await.map_err(|e| format!("lease revoke {id:x}: {}", describe(&e)))?;
            }
        }
        Ok(())
    }

    /// The `i`th op of this client; `Err` when it fails or its answer is wrong.
    async fn op(&mut self, kv: &mut KvClient, i: u64) -> Result<(), String> {
        match self {
            ClientState::Put { key_prefix, value_size } => {
                let resp = kv
                    .put(format!("{key_prefix}{i:09}"), value(*value_size, i), None)
                    .await
                    .map_err(|e| format!("put: {e}"))?;
                resp.header().ok_or("put: no header")?;
                Ok(())
            }
            ClientState::Range { keys, offset, options, value_size } => {
                let key = &keys[(*offset + (i as usize).wrapping_mul(READ_STRIDE)) % keys.len()];
                let resp = kv.get(key.clone(), Some(options.clone())).await.map_err(|e| format!("range: {e}"))?;
                match resp.kvs() {
                    [kv] if kv.key() == key.as_slice() && kv.value().len() == *value_size => Ok(()),
                    kvs => Err(format!("range: expected the one preloaded key, got {} kvs", kvs.len())),
                }
            }
            ClientState::Txn { keys, mod_revisions, value_size } => {
                let k = i as usize % keys.len();
                let key = keys[k].clone();
                let txn = Txn::new()
                    .when([Compare::mod_revision(key.clone(), CompareOp::Equal, mod_revisions[k])])
                    .and_then([TxnOp::put(key.clone(), value(*value_size, i), None)])
                    .or_else([TxnOp::get(key, None)]);
                let resp = kv.txn(txn).await.map_err(|e| format!("txn: {e}"))?;
                let revision = resp.header().ok_or("txn: no header")?.revision();
                if resp.succeeded() {
                    // The put is the only write of this revision: it is the key's new mod_revision.
                    mod_revisions[k] = revision;
                    return Ok(());
                }
                let expected = mod_revisions[k];
                if let Some(TxnOpResponse::Get(get)) = resp.op_responses().first() {
                    if let Some(kv) = get.kvs().first() {
                        mod_revisions[k] = kv.mod_revision();
                        return Err(format!(
                            "txn: compare failed although only this client writes the key (expected \
                             mod_revision {expected}, key has {})",
                            kv.mod_revision()
                        ));
                    }
                }
                Err(format!("txn: compare failed (expected mod_revision {expected}) and the Else branch found no key"))
            }
            ClientState::List { prefix } => {
                let options = GetOptions::new().with_prefix().with_limit(LIST_LIMIT as i64);
                let resp = kv.get(prefix.as_str(), Some(options)).await.map_err(|e| format!("list: {e}"))?;
                if resp.kvs().len() != LIST_LIMIT || !resp.more() || resp.count() != LIST_KEYS as i64 {
                    return Err(format!(
                        "list: expected {LIST_LIMIT} kvs, more=true, count={LIST_KEYS}; got {} kvs, more={}, count={}",
                        resp.kvs().len(),
                        resp.more(),
                        resp.count()
                    ));
                }
                Ok(())
            }
            ClientState::Lease { leases } => {
                let n = leases.len();
                let (keeper, stream, ttl) = &mut leases[i as usize % n];
                keeper.keep_alive().await.map_err(|e| format!("keep-alive send: {}", describe(&e)))?;
                match stream.message().await.map_err(|e| format!("keep-alive: {}", describe(&e)))? {
                    Some(r) if r.id() == keeper.id() && r.ttl() == *ttl => Ok(()),
                    Some(r) => Err(format!(
                        "keep-alive: expected lease {:x} with ttl {ttl}, got lease {:x} with ttl {}",
                        keeper.id(),
                        r.id(),
                        r.ttl()
                    )),
                    None => Err("keep-alive: the server ended the stream".to_string()),
                }
            }
        }
    }
}

/// Runs `spec.kind` with `spec.clients` concurrent clients; client `c` uses connection
/// `c % conns.len()`. Every client prepares first (not timed); the clock starts when all are
/// ready and stops when the last one has done its ops; then the clients undo their setup (not
/// timed). The CPU used by the server's members `server_pids` (when known) and by the rest of the machine
/// is measured over the timed interval.
pub async fn run(spec: RunSpec, conns: &[Client], fixture: &Arc<Fixture>, server_pids: &[u32]) -> RunOutcome {
    let RunSpec { kind, clients, quota, .. } = spec;
    assert!(clients > 0 && !conns.is_empty(), "a run needs clients ({clients}) and connections ({})", conns.len());
    assert!(quota.ops.is_some() || quota.duration.is_some(), "a run needs an op count or a duration: {quota:?}");
    let start_barrier = Arc::new(Barrier::new(clients + 1));
    let end_barrier = Arc::new(Barrier::new(clients + 1));
    let mut tasks = Vec::with_capacity(clients);
    for c in 0..clients {
        let conn = &conns[c % conns.len()];
        let (mut kv, mut lease) = (conn.kv_client(), conn.lease_client());
        let (start_barrier, end_barrier) = (start_barrier.clone(), end_barrier.clone());
        let fixture = fixture.clone();
        let ops = quota.ops.map(|n| n / clients as u64 + u64::from((c as u64) < n % clients as u64));
        tasks.push(tokio::spawn(async move {
            let mut out = RunOutcome::default();
            let state = ClientState::new(&spec, &fixture, c, &mut kv, &mut lease).await;
            start_barrier.wait().await;
            let mut state = match state {
                Ok(s) => Some(s),
                Err(e) => {
                    out.record_error(e);
                    None
                }
            };
            if let Some(state) = state.as_mut() {
                let end = quota.duration.map(|d| Instant::now() + d);
                out.latencies_ns.reserve(ops.unwrap_or(1024) as usize);
                let mut i = 0u64;
                loop {
                    match (ops, end) {
                        (Some(n), _) if i >= n => break,
                        (_, Some(end)) if Instant::now() >= end => break,
                        _ => {}
                    }
                    let t0 = Instant::now();
                    match tokio::time::timeout(OP_TIMEOUT, state.op(&mut kv, i)).await {
                        Ok(Ok(())) => out.latencies_ns.push(t0.elapsed().as_nanos() as u64),
                        Ok(Err(e)) => out.record_error(e),
                        Err(_) => out.record_error(format!("{}: no answer within {OP_TIMEOUT:?}", kind.name())),
                    }
                    i += 1;
                }
            }
            end_barrier.wait().await;
            if let Some(state) = state {
                match tokio::time::timeout(OP_TIMEOUT, state.teardown(&mut lease)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => out.record_error(e),
                    Err(_) => out.record_error(format!("{}: teardown took more than {OP_TIMEOUT:?}", kind.name())),
                }
            }
            out
        }));
    }
    start_barrier.wait().await;
    let cpu_before = cpu::sample(server_pids);
    let start = Instant::now();
    end_barrier.wait().await;
    let elapsed = start.elapsed();
    let cpu_after = cpu::sample(server_pids);
    let mut total = RunOutcome::default();
    for t in tasks {
        match t.await {
            Ok(out) => total.merge(out),
            Err(e) => total.record_error(format!("client task failed: {e}")),
        }
    }
    total.elapsed = elapsed;
    total.cpu = cpu::usage(cpu_before, cpu_after, elapsed);
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for k in Kind::ALL {
            assert_eq!(Kind::parse(k.name()), Some(k));
        }
    }

    #[test]
    fn fanout_puts_shrink_with_the_watchers() {
        assert_eq!(Kind::WatchFanout.default_ops(1, false), 2_000);
        assert_eq!(Kind::WatchFanout.default_ops(1000, false), 500);
        assert_eq!(Kind::WatchFanout.default_ops(100_000, false), 100);
        assert_eq!(Kind::WatchFanout.default_ops(1000, true), 20);
    }

    #[test]
    fn values_have_the_asked_size_and_differ() {
        assert_eq!(value(256, 1).len(), 256);
        assert_ne!(value(256, 1), value(256, 2));
        assert_eq!(value(3, 7).len(), 3);
    }
}
