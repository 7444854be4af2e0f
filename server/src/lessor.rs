//! The lessor: when leases expire, decided on the leader from its own clock, in memory.
//!
//! The store knows which leases exist and their granted TTLs (`cairn_storage::lease`); it
//! knows no time. The lessor of the leader keeps one deadline per lease and, when a deadline
//! passes, *proposes* `LeaseRevoke` through raft like any client; apply then deletes the
//! lease and its keys on every member alike. As in etcd 3.5 (`server/lease/lessor.go`):
//!
//! - A keep-alive moves the deadline to now + TTL in memory only, with no raft entry, and
//!   answers with the TTL. A keep-alive of a lease whose deadline has passed waits until its
//!   revocation is applied and then finds it gone: an expired lease is never revived.
//! - Becoming leader (and so every start of a one-voter group) gives every lease its full
//!   TTL again from that moment plus an election timeout (etcd's `Promote(extend)`): a
//!   restart or leader change never mass-expires leases whose holders kept them alive.
//!   With `revoke_per_sec` leases or more, those that would then expire in the same second
//!   are spread out (at most 3/4 of the rate per second), as etcd does.
//! - Revocations are proposed in batches of at most `revoke_per_sec / 2`, batches at least
//!   [`BATCH_INTERVAL`] apart (so at most `revoke_per_sec` per second, etcd: 1000), at most
//!   [`MAX_PENDING_REVOKES`] in flight. A revocation that fails (not leader, timeout) is
//!   retried after [`RETRY_INTERVAL`].
//!
//! Structure: [`Deadlines`] is the pure, synchronous core (every method takes `now`); it
//! orders leases by the next time each must be looked at in a `BTreeSet`, so finding the
//! expired ones costs O(log n) per expired lease, not a scan of all leases. [`Lessor`]
//! wraps it for the async world (tokio's clock, so tests run under `tokio::time::pause()`),
//! and [`run`] is the background task. [`LeaseHost`] is what the lessor needs from the
//! node, implemented by [`Context`] and by a fake in the tests.
//!
//! Lock order: the `Deadlines` mutex is a leaf; it is never held across an `.await`.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use cairn_storage::lease::LeaseRecord;
use cairn_storage::{Command, CommandResponse, LeaseId, RequestError};
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::context::{Context, REQUEST_TIMEOUT};

/// How often the background task looks at leadership, and the shortest time between two
/// batches of revocations (etcd's lessor loop ticks every 500 ms).
pub const BATCH_INTERVAL: Duration = Duration::from_millis(500);

/// After a revocation was proposed, when to propose it again if the lease still exists
/// (etcd's `expiredLeaseRetryInterval`).
pub const RETRY_INTERVAL: Duration = Duration::from_secs(3);

/// Revocations proposed at once (etcd's `maxPendingRevokes`).
pub const MAX_PENDING_REVOKES: usize = 16;

/// The lessor's tunables, with their units.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LessorConfig {
    /// Grants with a smaller TTL get this one (etcd: `ceil((3 * election_ticks / 2) *
    /// heartbeat)`, 2 s with the default 100 ms / 1000 ms).
    pub min_ttl_secs: i64,
    /// Added to every lease's TTL when this member becomes leader (etcd: the election
    /// timeout), so that clients have time to find the new leader.
    pub promote_extend: Duration,
    /// Most revocations proposed per second (etcd's `leaseRevokeRate`).
    pub revoke_per_sec: usize,
}

impl LessorConfig {
    /// etcd's values for the given raft timing (`--heartbeat-interval`, `--election-timeout`).
    pub fn from_raft_timing(heartbeat_interval_ms: u64, election_timeout_ms: u64) -> LessorConfig {
        let heartbeat_ms = heartbeat_interval_ms.max(1);
        let election_ticks = election_timeout_ms / heartbeat_ms;
        // etcd: minTTL := time.Duration((3*cfg.ElectionTicks)/2) * heartbeat, rounded up to
        // whole seconds.
        let min_ttl_ms = (3 * election_ticks / 2) * heartbeat_ms;
        LessorConfig {
            min_ttl_secs: min_ttl_ms.div_ceil(1000) as i64,
            promote_extend: Duration::from_millis(election_ticks * heartbeat_ms),
            revoke_per_sec: 1000,
        }
    }

    /// Most revocations in one batch.
    fn batch_limit(&self) -> usize {
        (self.revoke_per_sec / 2).max(1)
    }
}

/// What a keep-alive found ([`Deadlines::renew`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Renew {
    /// The deadline moved to now + TTL; the TTL.
    Renewed { ttl_secs: i64 },
    /// No such lease.
    NotFound,
    /// Its deadline has passed: it is being revoked.
    Expired,
    /// This member does not track deadlines (not the leader, or not yet promoted).
    NotPrimary,
}

/// Who tracks deadlines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// Not the leader: no deadlines.
    Follower,
    /// Became leader, loading the leases from the store: grants register, keep-alives wait.
    Promoting,
    /// The leader, with a deadline for every lease.
    Primary,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    ttl_secs: i64,
    /// When the lease expires.
    deadline: Instant,
    /// When the lease is next looked at: its deadline, or after it passed, when its
    /// revocation is proposed again. Its position in `Deadlines::queue`.
    due: Instant,
}

/// The pure core of the lessor: a deadline per lease and the expiry decisions. Time is
/// always a parameter.
#[derive(Debug)]
pub struct Deadlines {
    role: Role,
    leases: BTreeMap<LeaseId, Entry>,
    /// `(due, id)` of every lease in `leases`: the next one to look at is the first.
    queue: BTreeSet<(Instant, LeaseId)>,
    /// Leases revoked while promoting: the store read of the promotion may predate the
    /// revocation, so the promotion must not bring them back.
    revoked_while_promoting: BTreeSet<LeaseId>,
}

impl Default for Deadlines {
    fn default() -> Self {
        Deadlines {
            role: Role::Follower,
            leases: BTreeMap::new(),
            queue: BTreeSet::new(),
            revoked_while_promoting: BTreeSet::new(),
        }
    }
}

fn after(now: Instant, secs: i64) -> Instant {
    // A TTL is at most 9e9 s (285 years); tokio's Instant saturates far beyond that.
    now + Duration::from_secs(secs.max(0) as u64)
}

impl Deadlines {
    fn set(&mut self, id: LeaseId, ttl_secs: i64, deadline: Instant) {
        if let Some(old) = self.leases.insert(id, Entry { ttl_secs, deadline, due: deadline }) {
            self.queue.remove(&(old.due, id));
        }
        self.queue.insert((deadline, id));
        debug_assert_eq!(self.leases.len(), self.queue.len(), "one queue entry per lease");
    }

    /// This member became leader: from now on grants register; keep-alives wait for
    /// [`Deadlines::promote`].
    pub fn begin_promotion(&mut self) {
        self.role = Role::Promoting;
        self.revoked_while_promoting.clear();
    }

    /// Every lease in the store gets its full TTL from `now` plus `extend` (etcd's
    /// `Promote`); leases registered since [`Deadlines::begin_promotion`] get the same.
    ///
    /// With `revoke_per_sec` leases or more, leases that would now expire in the same second
    /// are spread out as etcd does: past 3/4 of the revocation rate in one window, each
    /// further lease gets a delay, so that leases whose holders are alive and about to keep
    /// them alive are not all queued behind the revocation rate limit.
    pub fn promote(&mut self, leases: &[LeaseRecord], now: Instant, extend: Duration, revoke_per_sec: usize) {
        for l in leases {
            if !self.revoked_while_promoting.contains(&l.id) {
                self.set(l.id, l.ttl_secs, after(now, l.ttl_on_promotion_secs()) + extend);
            }
        }
        self.revoked_while_promoting.clear();
        self.role = Role::Primary;
        if self.leases.len() >= revoke_per_sec {
            self.spread_pile_up(now, revoke_per_sec);
        }
    }

    /// etcd's pile-up adjustment in `lessor.Promote`, on the deadlines in order.
    fn spread_pile_up(&mut self, now: Instant, revoke_per_sec: usize) {
        let target = (3 * revoke_per_sec / 4).max(1) as f64;
        let order: Vec<(Instant, LeaseId)> = self.queue.iter().copied().collect();
        let Some(&(first, _)) = order.first() else { return };
        let mut base = first - now;
        let mut next_window = base + Duration::from_secs(1);
        let mut expires = 0usize;
        for (deadline, id) in order {
            let remaining = deadline - now;
            if remaining > next_window {
                base = remaining;
                next_window = base + Duration::from_secs(1);
                expires = 1;
                continue;
            }
            expires += 1;
            if expires as f64 <= target {
                continue;
            }
            // Spread over the seconds after the window, less how far into it this one was.
            let delay = Duration::from_secs_f64(expires as f64 / target).saturating_sub(remaining - base);
            next_window = base + delay;
            let ttl_secs = self.leases[&id].ttl_secs;
            self.set(id, ttl_secs, deadline + delay);
        }
    }

    /// This member is no longer leader: forget every deadline (etcd's `Demote`).
    pub fn demote(&mut self) {
        self.role = Role::Follower;
        self.leases.clear();
        self.queue.clear();
        self.revoked_while_promoting.clear();
    }

    pub fn is_primary(&self) -> bool {
        self.role == Role::Primary
    }

    /// A grant was applied: the lease expires at now + TTL. Ignored on a follower (a new
    /// leader reads every lease from the store when it promotes).
    pub fn grant(&mut self, id: LeaseId, ttl_secs: i64, now: Instant) {
        if self.role != Role::Follower {
            self.revoked_while_promoting.remove(&id);
            self.set(id, ttl_secs, after(now, ttl_secs));
        }
    }

    /// A keep-alive.
    pub fn renew(&mut self, id: LeaseId, now: Instant) -> Renew {
        if self.role != Role::Primary {
            return Renew::NotPrimary;
        }
        match self.leases.get(&id) {
            None => Renew::NotFound,
            Some(e) if e.deadline <= now => Renew::Expired,
            Some(e) => {
                let ttl_secs = e.ttl_secs;
                self.set(id, ttl_secs, after(now, ttl_secs));
                Renew::Renewed { ttl_secs }
            }
        }
    }

    /// A revocation was applied (or found the lease gone).
    pub fn revoked(&mut self, id: LeaseId) {
        if let Some(e) = self.leases.remove(&id) {
            self.queue.remove(&(e.due, id));
        }
        if self.role == Role::Promoting {
            self.revoked_while_promoting.insert(id);
        }
    }

    /// What etcd's TimeToLive reports as TTL: the time left, in whole seconds truncated
    /// toward zero (negative once the deadline has passed by a second or more).
    pub fn remaining_secs(&self, id: LeaseId, now: Instant) -> Option<i64> {
        let e = self.leases.get(&id)?;
        Some(if e.deadline >= now {
            (e.deadline - now).as_secs() as i64
        } else {
            -((now - e.deadline).as_secs() as i64)
        })
    }

    /// The deadline of a lease, if tracked.
    pub fn deadline(&self, id: LeaseId) -> Option<Instant> {
        self.leases.get(&id).map(|e| e.deadline)
    }

    /// Up to `limit` leases whose deadline has passed and that are due to be revoked, in
    /// deadline order. Each is looked at again after `retry` unless its revocation is
    /// applied first. Costs O(log n) per lease returned.
    pub fn take_expired(&mut self, now: Instant, limit: usize, retry: Duration) -> Vec<LeaseId> {
        let mut out = Vec::new();
        if self.role != Role::Primary {
            return out;
        }
        while out.len() < limit {
            let Some(&(due, id)) = self.queue.first() else { break };
            if due > now {
                break;
            }
            self.queue.pop_first();
            let e = self.leases.get_mut(&id).expect("every queue entry names a tracked lease");
            assert!(e.due == due && e.deadline <= due, "lease {id:x}: queued at {due:?}, entry {e:?}");
            e.due = now + retry;
            self.queue.insert((e.due, id));
            out.push(id);
        }
        out
    }

    /// When [`Deadlines::take_expired`] will next have something to return.
    pub fn next_due(&self) -> Option<Instant> {
        if self.role != Role::Primary {
            return None;
        }
        self.queue.first().map(|&(due, _)| due)
    }

    pub fn len(&self) -> usize {
        self.leases.len()
    }

    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }
}

/// Why a revocation proposed by the lessor did not apply.
#[derive(Debug)]
pub struct RevokeFailed(pub String);

/// What the lessor needs from the node.
pub trait LeaseHost: Send + Sync + 'static {
    /// Whether this member is the raft leader now.
    fn is_leader(&self) -> bool;
    /// Every lease, once everything committed before the call is applied here (what a new
    /// leader promotes).
    fn leases(&self) -> impl Future<Output = Result<Vec<LeaseRecord>, String>> + Send;
    /// Proposes `LeaseRevoke { id }` and waits until it is applied. `Ok` also when the
    /// lease no longer existed.
    fn revoke(&self, id: LeaseId) -> impl Future<Output = Result<(), RevokeFailed>> + Send;
}

/// The lessor shared by the Lease service and the background task.
pub struct Lessor {
    config: LessorConfig,
    deadlines: Mutex<Deadlines>,
    /// Wakes the background task when a deadline may have moved earlier.
    wake: Notify,
    /// Bumped whenever a revocation is applied or the role changes: keep-alives waiting on
    /// an expired lease, or for the promotion, look again.
    changed: watch::Sender<u64>,
}

/// Why a keep-alive or TimeToLive could not be answered here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LessorError {
    /// Not the leader within the request timeout.
    NotPrimary,
    /// An expired lease was still not revoked within the request timeout.
    Timeout,
}

impl Lessor {
    pub fn new(config: LessorConfig) -> Lessor {
        Lessor {
            config,
            deadlines: Mutex::new(Deadlines::default()),
            wake: Notify::new(),
            changed: watch::Sender::new(0),
        }
    }

    fn deadlines(&self) -> MutexGuard<'_, Deadlines> {
        self.deadlines.lock().expect("lessor lock poisoned: a panic while changing deadlines")
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// The TTL a grant asks for, as etcd grants it: raised to the minimum.
    pub fn effective_ttl(&self, ttl_secs: i64) -> i64 {
        ttl_secs.max(self.config.min_ttl_secs)
    }

    /// A grant was applied.
    pub fn granted(&self, id: LeaseId, ttl_secs: i64) {
        self.deadlines().grant(id, ttl_secs, Instant::now());
        self.wake.notify_one();
    }

    /// A revocation was applied, or found the lease gone.
    pub fn revoked(&self, id: LeaseId) {
        self.deadlines().revoked(id);
        self.bump();
    }

    /// A keep-alive: `Some(ttl)` if renewed, `None` if the lease does not exist (or expired:
    /// then only after its revocation is applied, as etcd).
    pub async fn renew(&self, id: LeaseId) -> Result<Option<i64>, LessorError> {
        let give_up = Instant::now() + REQUEST_TIMEOUT;
        loop {
            // Subscribe before looking, so that a change in between is not missed.
            let mut changes = self.changed.subscribe();
            let r = self.deadlines().renew(id, Instant::now());
            let err = match r {
                Renew::Renewed { ttl_secs } => return Ok(Some(ttl_secs)),
                Renew::NotFound => return Ok(None),
                Renew::Expired => LessorError::Timeout,
                Renew::NotPrimary => LessorError::NotPrimary,
            };
            match tokio::time::timeout_at(give_up, changes.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return Err(err),
            }
        }
    }

    /// Waits until this member tracks deadlines (the leader, promoted), up to the request
    /// timeout.
    pub async fn wait_primary(&self) -> Result<(), LessorError> {
        let give_up = Instant::now() + REQUEST_TIMEOUT;
        loop {
            let mut changes = self.changed.subscribe();
            if self.deadlines().is_primary() {
                return Ok(());
            }
            match tokio::time::timeout_at(give_up, changes.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return Err(LessorError::NotPrimary),
            }
        }
    }

    /// Whether this member's lessor is the primary (the leader's, promoted).
    pub fn is_primary(&self) -> bool {
        self.deadlines().is_primary()
    }

    /// etcd's TimeToLive TTL of a tracked lease ([`Deadlines::remaining_secs`]).
    pub fn remaining_secs(&self, id: LeaseId) -> Option<i64> {
        self.deadlines().remaining_secs(id, Instant::now())
    }

    /// Sorts lease IDs as etcd's LeaseLeases does: by time left, soonest first (untracked
    /// leases last), ties by ID.
    pub fn sort_by_expiry(&self, ids: &mut [LeaseId]) {
        let d = self.deadlines();
        ids.sort_by_key(|id| (d.deadline(*id).is_none(), d.deadline(*id), *id));
    }

    async fn promote<H: LeaseHost>(&self, host: &H) -> Result<(), String> {
        self.deadlines().begin_promotion();
        let leases = host.leases().await?;
        let now = Instant::now();
        let mut d = self.deadlines();
        if d.role != Role::Promoting {
            // Demoted meanwhile.
            return Ok(());
        }
        d.promote(&leases, now, self.config.promote_extend, self.config.revoke_per_sec);
        tracing::info!(leases = d.len(), "lessor promoted: every lease has its full TTL again");
        drop(d);
        self.bump();
        Ok(())
    }

    fn demote(&self) {
        self.deadlines().demote();
        self.bump();
        tracing::info!("lessor demoted: lease deadlines are kept by the new leader");
    }
}

/// The background task: follows leadership (promote, demote) and proposes the revocation of
/// expired leases, rate-limited. Runs until aborted.
pub async fn run<H: LeaseHost>(lessor: Arc<Lessor>, host: Arc<H>) {
    let mut last_batch: Option<Instant> = None;
    loop {
        let leader = host.is_leader();
        let role = lessor.deadlines().role;
        if leader && role == Role::Follower {
            if let Err(e) = lessor.promote(host.as_ref()).await {
                tracing::warn!(error = %e, "lessor promotion failed; retrying");
                lessor.demote();
            }
        } else if !leader && role != Role::Follower {
            lessor.demote();
        }
        let now = Instant::now();
        let may_batch = last_batch.is_none_or(|t| now >= t + BATCH_INTERVAL);
        if may_batch {
            let expired = lessor.deadlines().take_expired(now, lessor.config.batch_limit(), RETRY_INTERVAL);
            if !expired.is_empty() {
                last_batch = Some(now);
                revoke_batch(&lessor, &host, expired).await;
                continue;
            }
        }
        // Sleep until the next deadline (not before the next batch may start), a grant, or
        // the next leadership check.
        let mut wake_at = now + BATCH_INTERVAL;
        if let Some(due) = lessor.deadlines().next_due() {
            let earliest = last_batch.map_or(due, |t| due.max(t + BATCH_INTERVAL));
            wake_at = wake_at.min(earliest);
        }
        tokio::select! {
            _ = tokio::time::sleep_until(wake_at) => {}
            _ = lessor.wake.notified() => {}
        }
    }
}

/// Proposes the revocation of `ids`, at most [`MAX_PENDING_REVOKES`] at once, and waits for
/// all of them.
async fn revoke_batch<H: LeaseHost>(lessor: &Arc<Lessor>, host: &Arc<H>, ids: Vec<LeaseId>) {
    let mut inflight = JoinSet::new();
    for id in ids {
        if inflight.len() >= MAX_PENDING_REVOKES {
            inflight.join_next().await;
        }
        let (lessor, host) = (lessor.clone(), host.clone());
        inflight.spawn(async move {
            match host.revoke(id).await {
                Ok(()) => lessor.revoked(id),
                // The lease stays queued and is proposed again after RETRY_INTERVAL.
                Err(e) => {
                    tracing::warn!(lease = %format!("{id:016x}"), error = %e.0, "failed to revoke an expired lease")
                }
            }
        });
    }
    while inflight.join_next().await.is_some() {}
}

impl LeaseHost for Context {
    fn is_leader(&self) -> bool {
        self.node.status().is_leader
    }

    async fn leases(&self) -> Result<Vec<LeaseRecord>, String> {
        self.linearizable_barrier().await.map_err(|s| s.message().to_string())?;
        let store = self.node.store().clone();
        tokio::task::spawn_blocking(move || store.leases())
            .await
            .map_err(|e| format!("lease read task failed: {e}"))?
            .map_err(|e| e.to_string())
    }

    async fn revoke(&self, id: LeaseId) -> Result<(), RevokeFailed> {
        match self.propose(Command::LeaseRevoke { id }, REVOKE_REQUEST_BYTES).await {
            Ok(a) => match a.result {
                Ok(CommandResponse::LeaseRevoke { .. }) | Err(RequestError::LeaseNotFound { .. }) => Ok(()),
                Ok(other) => Err(RevokeFailed(format!("unexpected response {other:?}"))),
                Err(e) => Err(RevokeFailed(e.to_string())),
            },
            Err(s) => Err(RevokeFailed(s.message().to_string())),
        }
    }
}

/// The encoded size of a `LeaseRevokeRequest` (an int64 field): what its proposal weighs
/// against `--max-request-bytes`.
const REVOKE_REQUEST_BYTES: usize = 11;

#[cfg(test)]
mod tests {
    //! The lessor under tokio's paused clock: time moves only when every task waits, and
    //! then jumps straight to the next timer, so deadlines are observed exactly.

    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use super::*;

    fn rec(id: LeaseId, ttl_secs: i64) -> LeaseRecord {
        LeaseRecord { id, ttl_secs, remaining_ttl_secs: 0 }
    }

    /// A node: leadership by a switch, leases in a map, revocations recorded with their time.
    #[derive(Default)]
    struct FakeHost {
        leader: AtomicBool,
        store: Mutex<BTreeMap<LeaseId, i64>>,
        /// `(when, id)` of every applied revocation.
        revoked: Mutex<Vec<(Instant, LeaseId)>>,
        /// Revocations to fail before they succeed again.
        failures: AtomicUsize,
        /// `(when, id)` of every proposed revocation, failed or not.
        proposed: Mutex<Vec<(Instant, LeaseId)>>,
        /// How long a revocation takes to apply.
        apply_delay: Mutex<Duration>,
    }

    impl FakeHost {
        fn with(leases: &[(LeaseId, i64)], leader: bool) -> Arc<FakeHost> {
            let h = FakeHost::default();
            h.store.lock().expect("lock").extend(leases.iter().copied());
            h.leader.store(leader, Ordering::SeqCst);
            Arc::new(h)
        }
        fn revoked(&self) -> Vec<(Instant, LeaseId)> {
            self.revoked.lock().expect("lock").clone()
        }
        fn revoked_ids(&self) -> Vec<LeaseId> {
            self.revoked().into_iter().map(|(_, id)| id).collect()
        }
    }

    impl LeaseHost for FakeHost {
        fn is_leader(&self) -> bool {
            self.leader.load(Ordering::SeqCst)
        }
        async fn leases(&self) -> Result<Vec<LeaseRecord>, String> {
            Ok(self.store.lock().expect("lock").iter().map(|(&id, &ttl)| rec(id, ttl)).collect())
        }
        async fn revoke(&self, id: LeaseId) -> Result<(), RevokeFailed> {
            self.proposed.lock().expect("lock").push((Instant::now(), id));
            let delay = *self.apply_delay.lock().expect("lock");
            tokio::time::sleep(delay).await;
            if self.failures.load(Ordering::SeqCst) > 0 {
                self.failures.fetch_sub(1, Ordering::SeqCst);
                return Err(RevokeFailed("injected".into()));
            }
            if self.store.lock().expect("lock").remove(&id).is_some() {
                self.revoked.lock().expect("lock").push((Instant::now(), id));
            }
            Ok(())
        }
    }

    /// etcd's default timing, without the promotion extension unless a test wants it.
    fn config(extend: Duration) -> LessorConfig {
        LessorConfig { promote_extend: extend, ..LessorConfig::from_raft_timing(100, 1000) }
    }

    fn start(host: &Arc<FakeHost>, extend: Duration) -> (Arc<Lessor>, tokio::task::JoinHandle<()>) {
        let lessor = Arc::new(Lessor::new(config(extend)));
        let task = tokio::spawn(run(lessor.clone(), host.clone()));
        (lessor, task)
    }

    /// A grant as the Lease service makes it: applied (here: in the fake store), then
    /// registered.
    fn grant(host: &FakeHost, lessor: &Lessor, id: LeaseId, ttl_secs: i64) {
        host.store.lock().expect("lock").insert(id, ttl_secs);
        lessor.granted(id, ttl_secs);
    }

    async fn sleep_ms(ms: u64) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    #[test]
    fn min_ttl_and_extension_follow_etcd() {
        // etcd 3.5.1 with the default flags grants TTL 2 for TTL 1 (checked against the binary).
        let c = LessorConfig::from_raft_timing(100, 1000);
        assert_eq!((c.min_ttl_secs, c.promote_extend, c.revoke_per_sec), (2, Duration::from_secs(1), 1000));
        assert_eq!(LessorConfig::from_raft_timing(100, 2000).min_ttl_secs, 3);
        assert_eq!(LessorConfig::from_raft_timing(50, 500).min_ttl_secs, 1);
        assert_eq!(LessorConfig::from_raft_timing(0, 0).min_ttl_secs, 0);
        let l = Lessor::new(c);
        assert_eq!((l.effective_ttl(1), l.effective_ttl(-5), l.effective_ttl(60)), (2, 2, 60));
    }

    #[test]
    fn deadlines_core() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut d = Deadlines::default();
        d.grant(1, 5, t0);
        assert!(d.is_empty(), "a follower tracks nothing");
        assert_eq!(d.renew(1, t0), Renew::NotPrimary);
        d.begin_promotion();
        d.grant(9, 1, t0);
        assert_eq!(d.renew(9, t0), Renew::NotPrimary, "keep-alives wait for the promotion");
        // Revoked while the promotion read the store: not brought back by that read.
        d.revoked(8);
        d.promote(
            &[rec(1, 5), rec(2, 2), LeaseRecord { id: 3, ttl_secs: 60, remaining_ttl_secs: 4 }, rec(8, 5)],
            t0,
            Duration::ZERO,
            1000,
        );
        assert_eq!(d.len(), 4);
        assert_eq!(d.next_due(), Some(at(1000)));
        // The checkpointed remaining TTL wins over the TTL; keep-alives still answer the TTL.
        assert_eq!(d.deadline(3), Some(at(4000)));
        assert_eq!(d.remaining_secs(2, at(1)), Some(1), "1.999 s truncates to 1");
        assert_eq!(d.remaining_secs(2, at(2500)), Some(0), "-0.5 s truncates to 0");
        assert_eq!(d.remaining_secs(2, at(3500)), Some(-1));
        assert_eq!(d.renew(1, at(1500)), Renew::Renewed { ttl_secs: 5 });
        assert_eq!(d.deadline(1), Some(at(6500)));
        assert_eq!(d.renew(7, at(1500)), Renew::NotFound);
        // Expired at 1 s (9) and 2 s (2); a limit of 1 returns the earliest first.
        assert_eq!(d.take_expired(at(2000), 1, RETRY_INTERVAL), vec![9]);
        assert_eq!(d.take_expired(at(2000), 10, RETRY_INTERVAL), vec![2]);
        assert_eq!(d.take_expired(at(2000), 10, RETRY_INTERVAL), Vec::<LeaseId>::new(), "not due again yet");
        assert_eq!(d.renew(2, at(2100)), Renew::Expired, "an expired lease is not revived");
        d.revoked(9);
        assert_eq!(d.next_due(), Some(at(4000)));
        assert_eq!(d.take_expired(at(5000), 10, RETRY_INTERVAL), vec![3, 2], "3 by deadline, 2 by retry");
        d.demote();
        assert!(d.is_empty());
        assert_eq!(d.next_due(), None);
    }

    #[test]
    fn promotion_spreads_a_pile_up_of_deadlines_as_etcd() {
        let t0 = Instant::now();
        let mut d = Deadlines::default();
        d.begin_promotion();
        let leases: Vec<LeaseRecord> = (1..=3000).map(|id| rec(id, 10)).chain([rec(5000, 30)]).collect();
        d.promote(&leases, t0, Duration::from_secs(1), 1000);
        let mut after_ms: Vec<u128> =
            (1..=3000).map(|id| (d.deadline(id).expect("tracked") - t0).as_millis()).collect();
        after_ms.sort();
        // 750 keep TTL + extension; the rest follow at 750 per second (etcd: 3/4 of the rate).
        assert_eq!(after_ms[0], 11_000);
        assert_eq!(after_ms[749], 11_000);
        assert!(after_ms[750] > 11_000 && after_ms[750] <= 12_002, "{}", after_ms[750]);
        assert_eq!(after_ms[2999], 15_000, "the last of 3000 at 3000/750 s after the window");
        for (i, &t) in after_ms.iter().enumerate() {
            let in_second = after_ms[i..].iter().take_while(|&&u| u < t + 1000).count();
            assert!(in_second <= 751, "{in_second} deadlines in the second after {t} ms");
        }
        assert_eq!(d.deadline(5000), Some(t0 + Duration::from_secs(31)), "a later window is left alone");
        // Below the revocation rate nothing is spread.
        let mut d = Deadlines::default();
        d.begin_promotion();
        d.promote(&leases[..999], t0, Duration::ZERO, 1000);
        assert!((1..=999).all(|id| d.deadline(id) == Some(t0 + Duration::from_secs(10))));
    }

    #[tokio::test(start_paused = true)]
    async fn expiry_revokes_exactly_at_the_deadline() {
        let host = FakeHost::with(&[], true);
        let (lessor, task) = start(&host, Duration::ZERO);
        sleep_ms(1).await;
        let t0 = Instant::now();
        grant(&host, &lessor, 1, 5);
        grant(&host, &lessor, 2, 3);
        sleep_ms(2_999).await;
        assert!(host.revoked().is_empty(), "nothing before the first deadline");
        sleep_ms(10_000).await;
        assert_eq!(host.revoked(), vec![(t0 + Duration::from_secs(3), 2), (t0 + Duration::from_secs(5), 1)]);
        assert!(lessor.deadlines().is_empty());
        task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn keep_alive_extends_the_deadline_in_memory() {
        let host = FakeHost::with(&[], true);
        let (lessor, task) = start(&host, Duration::ZERO);
        sleep_ms(1).await;
        let t0 = Instant::now();
        grant(&host, &lessor, 1, 5);
        sleep_ms(3_000).await;
        assert_eq!(lessor.renew(1).await, Ok(Some(5)));
        assert_eq!(lessor.remaining_secs(1), Some(5));
        sleep_ms(4_000).await;
        assert!(host.revoked().is_empty(), "kept alive at 3 s: alive at 7 s");
        assert_eq!(lessor.remaining_secs(1), Some(1));
        sleep_ms(10_000).await;
        assert_eq!(host.revoked(), vec![(t0 + Duration::from_secs(8), 1)]);
        assert_eq!(host.proposed.lock().expect("lock").len(), 1, "keep-alives propose nothing");
        assert_eq!(lessor.renew(1).await, Ok(None), "gone: TTL 0 for the client");
        task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn keep_alive_of_an_expired_lease_waits_for_its_revocation() {
        let host = FakeHost::with(&[], true);
        *host.apply_delay.lock().expect("lock") = Duration::from_secs(2);
        let (lessor, task) = start(&host, Duration::ZERO);
        sleep_ms(1).await;
        let t0 = Instant::now();
        grant(&host, &lessor, 1, 3);
        sleep_ms(3_500).await;
        // Expired at 3 s, its revocation applies at 5 s: the keep-alive waits for it.
        assert_eq!(lessor.renew(1).await, Ok(None));
        assert_eq!(Instant::now(), t0 + Duration::from_secs(5));
        assert_eq!(host.revoked(), vec![(t0 + Duration::from_secs(5), 1)]);
        task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn promotion_gives_every_lease_its_full_ttl_plus_an_election_timeout() {
        let host = FakeHost::with(&[(1, 10), (2, 4)], false);
        let (lessor, task) = start(&host, Duration::from_secs(1));
        // A follower expires nothing, however long the leases have existed.
        sleep_ms(100_000).await;
        assert!(host.proposed.lock().expect("lock").is_empty());
        assert_eq!(lessor.renew(2).await, Err(LessorError::NotPrimary), "no leader: no keep-alive");
        let t = Instant::now();
        host.leader.store(true, Ordering::SeqCst);
        // A keep-alive waits for the promotion, then renews: 2 then expires 4 s after it.
        assert_eq!(lessor.renew(2).await, Ok(Some(4)));
        let promoted = Instant::now();
        assert!(promoted - t <= BATCH_INTERVAL, "leadership is noticed within one check interval");
        sleep_ms(60_000).await;
        assert_eq!(
            host.revoked(),
            vec![(promoted + Duration::from_secs(4), 2), (promoted + Duration::from_secs(11), 1)],
            "2 renewed at the promotion; 1 has 10 s + 1 s from the promotion"
        );
        task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn demotion_stops_expiry_and_a_new_term_starts_over() {
        let host = FakeHost::with(&[(1, 5)], true);
        let (lessor, task) = start(&host, Duration::from_secs(1));
        sleep_ms(4_000).await;
        host.leader.store(false, Ordering::SeqCst);
        sleep_ms(30_000).await;
        assert!(host.revoked().is_empty(), "a former leader proposes nothing");
        assert!(lessor.deadlines().is_empty());
        host.leader.store(true, Ordering::SeqCst);
        sleep_ms(1).await;
        assert_eq!(lessor.wait_primary().await, Ok(()));
        let promoted = Instant::now();
        sleep_ms(5_000).await;
        assert!(host.revoked().is_empty(), "full TTL again after the new promotion");
        sleep_ms(10_000).await;
        let revoked = host.revoked();
        assert_eq!(revoked.len(), 1);
        assert!(revoked[0].0 - promoted <= Duration::from_secs(6) + BATCH_INTERVAL, "{revoked:?}");
        task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn revocations_are_rate_limited_and_batched() {
        const N: i64 = 2_600;
        let host = FakeHost::with(&[], true);
        let (lessor, task) = start(&host, Duration::ZERO);
        sleep_ms(1).await;
        let t0 = Instant::now();
        // Granted at one instant (a promotion would have spread them out).
        for id in 1..=N {
            grant(&host, &lessor, id, 2);
        }
        sleep_ms(10_000).await;
        let revoked = host.revoked();
        assert_eq!(revoked.len(), N as usize, "every lease revoked in the end");
        let first = revoked[0].0;
        assert_eq!(first - t0, Duration::from_secs(2), "the first batch right at the deadline");
        // Never more than 1000 in any one-second window, never more than 500 in a batch.
        for (i, (t, _)) in revoked.iter().enumerate() {
            let in_window = revoked[i..].iter().take_while(|(u, _)| *u < *t + Duration::from_secs(1)).count();
            assert!(in_window <= 1000, "{in_window} revocations in the second after {:?}", *t - t0);
            let same = revoked.iter().filter(|(u, _)| u == t).count();
            assert!(same <= 500, "{same} revocations at one instant");
        }
        let last = revoked[revoked.len() - 1].0;
        assert!(last - first <= Duration::from_millis(2_600), "as fast as the rate allows: {:?}", last - first);
        assert!(lessor.deadlines().is_empty());
        task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_revocation_is_proposed_again_after_the_retry_interval() {
        let host = FakeHost::with(&[], true);
        host.failures.store(2, Ordering::SeqCst);
        let (lessor, task) = start(&host, Duration::ZERO);
        sleep_ms(1).await;
        let t0 = Instant::now();
        grant(&host, &lessor, 7, 2);
        sleep_ms(20_000).await;
        let secs =
            |v: Vec<(Instant, LeaseId)>| v.into_iter().map(|(t, id)| ((t - t0).as_millis(), id)).collect::<Vec<_>>();
        assert_eq!(secs(host.proposed.lock().expect("lock").clone()), vec![(2_000, 7), (5_000, 7), (8_000, 7)]);
        assert_eq!(host.revoked_ids(), vec![7]);
        task.abort();
    }
}
