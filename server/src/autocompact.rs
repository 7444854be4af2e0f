//! Auto compaction (`--auto-compaction-mode`, `--auto-compaction-retention`), as etcd 3.5's
//! compactors schedule it. Only the leader proposes; a compaction is an ordinary replicated
//! Compact command.
//!
//! - periodic, retention P: the revision is sampled every `min(P, 1h) / 10`; the first
//!   compaction happens once P has passed, at the revision sampled P ago, then every
//!   `min(P, 1h)`.
//! - revision, retention N: every 5 minutes, compact at `current - N` if that moved.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use cairn_storage::{Command, CompactionRequest, Revision};
use tokio::time::Instant;

use crate::config::AutoCompactionRetention;
use crate::context::Context;

/// How often the revision compactor looks (etcd's `revInterval`).
pub const REVISION_CHECK_INTERVAL: Duration = Duration::from_secs(5 * 60);

/// Whether a compaction attempt counts as done (etcd: success or "already compacted").
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Done,
    Retry,
}

/// The schedule, over a revision source and a compaction action, so that tests can drive it
/// with a paused clock.
pub async fn schedule<R, C, F>(retention: AutoCompactionRetention, rev: R, mut compact: C)
where
    R: Fn() -> Option<Revision>,
    C: FnMut(Revision) -> F,
    F: Future<Output = Outcome>,
{
    match retention {
        AutoCompactionRetention::Disabled => std::future::pending().await,
        AutoCompactionRetention::Period(period) => {
            let compact_interval = period.min(Duration::from_secs(3600));
            let retry = (compact_interval / 10).max(Duration::from_millis(1));
            let keep = (period.as_nanos() / retry.as_nanos()) as usize + 1;
            let mut revs: VecDeque<Revision> = VecDeque::with_capacity(keep + 1);
            let mut last_success = Instant::now();
            let mut wait = period;
            loop {
                if let Some(r) = rev() {
                    revs.push_back(r);
                    if revs.len() > keep {
                        revs.pop_front();
                    }
                }
                tokio::time::sleep(retry).await;
                if last_success.elapsed() < wait {
                    continue;
                }
                wait = compact_interval;
                let Some(&target) = revs.front() else { continue };
                if compact(target).await == Outcome::Done {
                    last_success = Instant::now();
                }
            }
        }
        AutoCompactionRetention::Revisions(keep) => {
            let mut prev: Revision = 0;
            loop {
                tokio::time::sleep(REVISION_CHECK_INTERVAL).await;
                let Some(current) = rev() else { continue };
                let target = current - keep;
                if target <= 0 || target == prev {
                    continue;
                }
                if compact(target).await == Outcome::Done {
                    prev = target;
                }
            }
        }
    }
}

/// Runs the configured auto compaction for this member until the task is dropped.
pub async fn run(ctx: Arc<Context>, retention: AutoCompactionRetention) {
    let rev_ctx = ctx.clone();
    // Followers sample nothing and propose nothing (etcd pauses its compactor there).
    let rev = move || rev_ctx.node.status().is_leader.then(|| rev_ctx.node.store().current_revision());
    let compact = move |target: Revision| {
        let ctx = ctx.clone();
        async move {
            if !ctx.node.status().is_leader {
                return Outcome::Retry;
            }
            let cmd = Command::Compact(CompactionRequest { revision: target, physical: false });
            match ctx.propose(cmd, 16).await {
                Ok(applied) => match applied.result {
                    Ok(_) => {
                        tracing::info!(revision = target, "auto compaction: compacted");
                        Outcome::Done
                    }
                    Err(cairn_storage::RequestError::Compacted { .. }) => Outcome::Done,
                    Err(e) => {
                        tracing::warn!(revision = target, error = %e, "auto compaction failed");
                        Outcome::Retry
                    }
                },
                Err(e) => {
                    tracing::warn!(revision = target, error = %e.message(), "auto compaction failed");
                    Outcome::Retry
                }
            }
        }
    };
    schedule(retention, rev, compact).await
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicI64, Ordering};
    use std::sync::Mutex;

    use super::*;

    /// Drives `schedule` for `total` of paused time with the revision growing by one per
    /// `tick`; returns (elapsed, revision) of every compaction.
    async fn drive(retention: AutoCompactionRetention, tick: Duration, total: Duration) -> Vec<(Duration, Revision)> {
        let rev = Arc::new(AtomicI64::new(1));
        let log = Arc::new(Mutex::new(Vec::new()));
        let start = Instant::now();
        let r2 = rev.clone();
        let l2 = log.clone();
        let task = tokio::spawn(schedule(
            retention,
            move || Some(r2.load(Ordering::SeqCst)),
            move |target| {
                l2.lock().expect("log").push((start.elapsed(), target));
                async { Outcome::Done }
            },
        ));
        let bump = {
            let rev = rev.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(tick).await;
                    rev.fetch_add(1, Ordering::SeqCst);
                }
            })
        };
        tokio::time::sleep(total).await;
        task.abort();
        bump.abort();
        let out = log.lock().expect("log").clone();
        out
    }

    #[tokio::test(start_paused = true)]
    async fn periodic_compacts_after_the_period_at_the_revision_of_one_period_ago() {
        // Retention 10 s, one revision per second: first compaction at ~10 s at the revision
        // sampled at 0 s, then every 10 s at the revision from 10 s before.
        let got = drive(
            AutoCompactionRetention::Period(Duration::from_secs(10)),
            Duration::from_secs(1),
            Duration::from_secs(35),
        )
        .await;
        assert_eq!(got.len(), 3, "{got:?}");
        for (i, (at, rev)) in got.iter().enumerate() {
            let expect_at = Duration::from_secs(10 * (i as u64 + 1));
            assert!(*at >= expect_at && *at <= expect_at + Duration::from_secs(2), "{got:?}");
            // The revision sampled about one period earlier.
            let age = at.as_secs() as i64 - (*rev - 1);
            assert!((9..=12).contains(&age), "compacted revision {rev} at {at:?} is {age} s old: {got:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn periodic_over_an_hour_compacts_hourly() {
        let got = drive(
            AutoCompactionRetention::Period(Duration::from_secs(5 * 3600)),
            Duration::from_secs(60),
            Duration::from_secs(7 * 3600 + 60),
        )
        .await;
        // First after 5 h, then at 6 h and 7 h.
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(got[0].0 >= Duration::from_secs(5 * 3600));
        assert!(got[1].0 - got[0].0 <= Duration::from_secs(3600 + 400));
        // Each compaction keeps about 5 h of history (one revision per minute).
        for (at, rev) in &got {
            let age_min = at.as_secs() as i64 / 60 - (*rev - 1);
            assert!((290..=310).contains(&age_min), "{got:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn revision_mode_keeps_the_last_n_revisions_every_five_minutes() {
        let got =
            drive(AutoCompactionRetention::Revisions(100), Duration::from_secs(1), Duration::from_secs(16 * 60)).await;
        assert_eq!(got.len(), 3, "{got:?}");
        for (i, (at, rev)) in got.iter().enumerate() {
            assert_eq!(at.as_secs(), 300 * (i as u64 + 1));
            // The revision 100 behind the current one (which grows once a second).
            let expect = 1 + at.as_secs() as i64 - 100;
            assert!((expect - 1..=expect).contains(rev), "{got:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn revision_mode_does_not_repeat_an_unchanged_target() {
        let got =
            drive(AutoCompactionRetention::Revisions(100), Duration::from_secs(100_000), Duration::from_secs(1000))
                .await;
        assert!(got.is_empty(), "revision 1 - 100 is not a revision: {got:?}");
    }
}
