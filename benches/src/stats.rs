//! What one workload run measured, and its summary (throughput and latency percentiles).

use std::time::Duration;

use crate::cpu::CpuUse;

/// The raw outcome of one workload run against one server.
#[derive(Debug, Default)]
pub struct RunOutcome {
    /// Latency of every successful op, in nanoseconds.
    pub latencies_ns: Vec<u64>,
    /// Ops that failed (an error, a timeout, or a response that does not hold what it must).
    pub errors: u64,
    /// The first few distinct error messages, to print.
    pub error_samples: Vec<String>,
    /// From the moment all clients were released to the moment the last one finished.
    pub elapsed: Duration,
    /// CPU used over `elapsed`.
    pub cpu: CpuUse,
    /// Watch fan-out only: for every put that reached every watcher, the time from the put's
    /// start until the last watcher had its event, in nanoseconds.
    pub last_delivery_ns: Option<Vec<u64>>,
}

/// At most this many distinct error messages are kept per run.
const MAX_ERROR_SAMPLES: usize = 5;

impl RunOutcome {
    pub fn record_error(&mut self, message: String) {
        self.record_errors(1, message);
    }

    /// Counts `n` failed ops that share one message.
    pub fn record_errors(&mut self, n: u64, message: String) {
        self.errors += n;
        if self.error_samples.len() < MAX_ERROR_SAMPLES && !self.error_samples.contains(&message) {
            self.error_samples.push(message);
        }
    }

    /// Folds the outcome of one client into this one (the elapsed time is set by the caller).
    pub fn merge(&mut self, other: RunOutcome) {
        self.latencies_ns.extend(other.latencies_ns);
        self.errors += other.errors;
        for m in other.error_samples {
            if self.error_samples.len() < MAX_ERROR_SAMPLES && !self.error_samples.contains(&m) {
                self.error_samples.push(m);
            }
        }
    }

    pub fn summary(mut self) -> Summary {
        let lat = Percentiles::of(&mut self.latencies_ns);
        let secs = self.elapsed.as_secs_f64();
        Summary {
            ok: lat.count,
            errors: self.errors,
            error_samples: self.error_samples,
            elapsed: self.elapsed,
            cpu: self.cpu,
            ops_per_sec: if secs > 0.0 { lat.count as f64 / secs } else { 0.0 },
            p50: lat.p50,
            p99: lat.p99,
            max: lat.max,
            last_delivery: self.last_delivery_ns.as_mut().map(|l| Percentiles::of(l)),
        }
    }
}

/// Count and nearest-rank percentiles of a set of durations.
#[derive(Debug, Clone, Copy, Default)]
pub struct Percentiles {
    pub count: u64,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl Percentiles {
    /// Of these nanoseconds (sorted in place).
    pub fn of(ns: &mut [u64]) -> Percentiles {
        ns.sort_unstable();
        Percentiles {
            count: ns.len() as u64,
            p50: percentile(ns, 0.50),
            p99: percentile(ns, 0.99),
            max: ns.last().map(|&n| Duration::from_nanos(n)).unwrap_or_default(),
        }
    }
}

/// Nearest-rank percentile of sorted latencies (zero when there are none).
fn percentile(sorted_ns: &[u64], p: f64) -> Duration {
    if sorted_ns.is_empty() {
        return Duration::ZERO;
    }
    let rank = (p * sorted_ns.len() as f64).ceil() as usize;
    Duration::from_nanos(sorted_ns[rank.clamp(1, sorted_ns.len()) - 1])
}

/// One row of the results table.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Successful ops.
    pub ok: u64,
    pub errors: u64,
    pub error_samples: Vec<String>,
    pub elapsed: Duration,
    pub cpu: CpuUse,
    /// Successful ops per second of wall time.
    pub ops_per_sec: f64,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
    /// Watch fan-out only: time from a put's start until its last watcher had the event.
    pub last_delivery: Option<Percentiles>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let l: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&l, 0.5), Duration::from_nanos(50));
        assert_eq!(percentile(&l, 0.99), Duration::from_nanos(99));
        assert_eq!(percentile(&[7], 0.99), Duration::from_nanos(7));
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
    }

    #[test]
    fn summary_counts_and_rates() {
        let mut o =
            RunOutcome { latencies_ns: vec![3, 1, 2, 4], elapsed: Duration::from_secs(2), ..Default::default() };
        o.record_error("boom".into());
        o.record_error("boom".into());
        let s = o.summary();
        assert_eq!((s.ok, s.errors), (4, 2));
        assert_eq!(s.error_samples, vec!["boom".to_string()]);
        assert_eq!(s.ops_per_sec, 2.0);
        assert_eq!(s.max, Duration::from_nanos(4));
    }
}
