//! The tables printed at the end of a run: one row per (workload, clients, server), the
//! Cairn/etcd comparison, and the servers' resources.

use std::fmt::Write as _;
use std::time::Duration;

use crate::stats::Summary;
use crate::workload::Kind;

/// The measurement of one workload run against one server.
pub struct Row {
    pub kind: Kind,
    pub clients: usize,
    pub server: String,
    pub summary: Summary,
}

/// What is known about one server at the end of the run.
pub struct Resources {
    pub server: String,
    /// `VmHWM` of the process, when this run started it.
    pub peak_rss_kib: Option<u64>,
    /// `dbSize` from Maintenance.Status.
    pub db_size_bytes: Option<i64>,
}

/// Milliseconds with a precision that suits the magnitude.
fn ms(d: Duration) -> String {
    let v = d.as_secs_f64() * 1000.0;
    if v < 1.0 {
        format!("{v:.3}")
    } else if v < 100.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.0}")
    }
}

fn ratio(num: f64, den: f64) -> Option<f64> {
    (num > 0.0 && den > 0.0 && num.is_finite() && den.is_finite()).then(|| num / den)
}

fn fmt_ratio(r: Option<f64>) -> String {
    r.map_or_else(|| "n/a".to_string(), |r| format!("{r:.2}"))
}

fn mib(bytes: f64) -> String {
    format!("{:.1} MiB", bytes / (1024.0 * 1024.0))
}

/// Above this many cores used by other processes during a run, its figures are called noisy.
pub const NOISY_OTHER_CORES: f64 = 0.25;

fn cores(c: Option<f64>) -> String {
    c.map_or_else(|| "n/a".to_string(), |c| format!("{c:.2}"))
}

/// The per-run table, followed by a warning when other processes competed for the CPU.
pub fn results_table(rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<20} {:>7}  {:<8} {:>8} {:>6} {:>10} {:>9} {:>9} {:>9} {:>8} {:>9}",
        "workload", "clients", "server", "ops", "errors", "ops/s", "p50 ms", "p99 ms", "max ms", "srv cpu", "other cpu"
    );
    let mut noisiest: Option<(&Row, f64)> = None;
    for r in rows {
        let s = &r.summary;
        let _ = writeln!(
            out,
            "{:<20} {:>7}  {:<8} {:>8} {:>6} {:>10.0} {:>9} {:>9} {:>9} {:>8} {:>9}",
            r.kind.name(),
            r.clients,
            r.server,
            s.ok,
            s.errors,
            s.ops_per_sec,
            ms(s.p50),
            ms(s.p99),
            ms(s.max),
            cores(s.cpu.server_cores),
            cores(s.cpu.other_cores)
        );
        if let Some(o) = s.cpu.other_cores {
            if noisiest.is_none_or(|(_, n)| o > n) {
                noisiest = Some((r, o));
            }
        }
    }
    let _ = writeln!(
        out,
        "(srv cpu: cores used by the server during the run; other cpu: cores used by every other process \
         except this bench)"
    );
    if rows.iter().any(|r| r.kind == Kind::WatchFanout) {
        let _ = writeln!(
            out,
            "(watch-fanout: clients = watchers, ops = events delivered to a watcher, latency = from the put's \
             start until that watcher had the event)"
        );
    }
    if let Some((r, o)) = noisiest.filter(|(_, o)| *o > NOISY_OTHER_CORES) {
        let _ = writeln!(
            out,
            "WARNING: other processes competed for the CPU (up to {o:.2} cores, during {} {}={} {}): \
             these figures are noisy; rerun on a quiet machine",
            r.kind.name(),
            r.kind.count_label(),
            r.clients,
            r.server
        );
    }
    out
}

/// The Cairn/etcd comparison, when both ran: throughput cairn/etcd and p99 etcd/cairn, so that
/// a ratio above 1 means Cairn did better in both.
pub fn comparison_table(rows: &[Row]) -> Option<String> {
    let find = |kind: Kind, clients: usize, server: &str| {
        rows.iter().find(|r| r.kind == kind && r.clients == clients && r.server == server).map(|r| &r.summary)
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<20} {:>7}  {:>10} {:>11} {:>12}   {:>9} {:>10} {:>13}",
        "workload", "clients", "etcd ops/s", "cairn ops/s", "cairn/etcd", "etcd p99", "cairn p99", "p99 etcd/cairn"
    );
    let mut throughput_log_sum = 0.0;
    let mut p99_log_sum = 0.0;
    let (mut nt, mut np) = (0, 0);
    let mut seen = Vec::new();
    for r in rows {
        if seen.contains(&(r.kind, r.clients)) {
            continue;
        }
        seen.push((r.kind, r.clients));
        let (Some(e), Some(c)) = (find(r.kind, r.clients, "etcd"), find(r.kind, r.clients, "cairn")) else {
            continue;
        };
        let t = ratio(c.ops_per_sec, e.ops_per_sec);
        let p = ratio(e.p99.as_secs_f64(), c.p99.as_secs_f64());
        if let Some(t) = t {
            throughput_log_sum += t.ln();
            nt += 1;
        }
        if let Some(p) = p {
            p99_log_sum += p.ln();
            np += 1;
        }
        let _ = writeln!(
            out,
            "{:<20} {:>7}  {:>10.0} {:>11.0} {:>12}   {:>9} {:>10} {:>13}",
            r.kind.name(),
            r.clients,
            e.ops_per_sec,
            c.ops_per_sec,
            fmt_ratio(t),
            ms(e.p99),
            ms(c.p99),
            fmt_ratio(p)
        );
    }
    if nt == 0 {
        return None;
    }
    let geo = |sum: f64, n: i32| if n > 0 { Some((sum / f64::from(n)).exp()) } else { None };
    let _ = writeln!(
        out,
        "{:<20} {:>7}  {:>10} {:>11} {:>12}   {:>9} {:>10} {:>13}",
        "geometric mean",
        "",
        "",
        "",
        fmt_ratio(geo(throughput_log_sum, nt)),
        "",
        "",
        fmt_ratio(geo(p99_log_sum, np))
    );
    Some(out)
}

/// The watch fan-out runs' per-put figures: how long until the last watcher had a put's event
/// (only puts that reached every watcher count), with the p99 ratio etcd/cairn (> 1 means
/// Cairn's slowest watcher was served sooner). `None` without a fan-out run.
pub fn fanout_table(rows: &[Row]) -> Option<String> {
    let fan: Vec<&Row> = rows.iter().filter(|r| r.kind == Kind::WatchFanout).collect();
    if fan.is_empty() {
        return None;
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>8}  {:<8} {:>8} {:>8} {:>9} {:>9} {:>9} {:>15}",
        "watchers", "server", "puts", "puts/s", "p50 ms", "p99 ms", "max ms", "p99 etcd/cairn"
    );
    for r in &fan {
        let Some(l) = r.summary.last_delivery else { continue };
        let secs = r.summary.elapsed.as_secs_f64();
        let vs_etcd = if r.server == "cairn" {
            fan.iter()
                .find(|e| e.server == "etcd" && e.clients == r.clients)
                .and_then(|e| e.summary.last_delivery)
                .and_then(|e| ratio(e.p99.as_secs_f64(), l.p99.as_secs_f64()))
                .map_or_else(String::new, |x| format!("{x:.2}"))
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "{:>8}  {:<8} {:>8} {:>8.0} {:>9} {:>9} {:>9} {:>15}",
            r.clients,
            r.server,
            l.count,
            if secs > 0.0 { l.count as f64 / secs } else { 0.0 },
            ms(l.p50),
            ms(l.p99),
            ms(l.max),
            vs_etcd
        );
    }
    Some(out)
}

/// Peak RSS and db size of each server, with the etcd/cairn ratio of peak RSS (> 1 means Cairn
/// used less memory).
pub fn resources_table(res: &[Resources]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{:<8} {:>22} {:>22}", "server", "peak RSS (VmHWM)", "db size (Status)");
    for r in res {
        let _ = writeln!(
            out,
            "{:<8} {:>22} {:>22}",
            r.server,
            r.peak_rss_kib.map_or_else(|| "n/a".to_string(), |k| mib(k as f64 * 1024.0)),
            r.db_size_bytes.map_or_else(|| "n/a".to_string(), |b| mib(b as f64)),
        );
    }
    let get = |name: &str| res.iter().find(|r| r.server == name);
    if let (Some(e), Some(c)) = (get("etcd"), get("cairn")) {
        if let (Some(er), Some(cr)) = (e.peak_rss_kib, c.peak_rss_kib) {
            let _ = writeln!(
                out,
                "peak RSS etcd/cairn: {} (> 1 means Cairn used less memory)",
                fmt_ratio(ratio(er as f64, cr as f64))
            );
        }
        if let (Some(ed), Some(cd)) = (e.db_size_bytes, c.db_size_bytes) {
            let _ = writeln!(
                out,
                "db size etcd/cairn:  {} (> 1 means Cairn's file is smaller)",
                fmt_ratio(ratio(ed as f64, cd as f64))
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(ops_per_sec: f64, p99_ms: u64) -> Summary {
        Summary {
            ok: 10,
            errors: 0,
            error_samples: Vec::new(),
            elapsed: Duration::from_secs(1),
            cpu: Default::default(),
            ops_per_sec,
            p50: Duration::from_millis(1),
            p99: Duration::from_millis(p99_ms),
            max: Duration::from_millis(p99_ms),
            last_delivery: None,
        }
    }

    #[test]
    fn ratios_are_above_one_when_cairn_is_better() {
        let rows = vec![
            Row { kind: Kind::Put, clients: 1, server: "etcd".into(), summary: summary(100.0, 8) },
            Row { kind: Kind::Put, clients: 1, server: "cairn".into(), summary: summary(300.0, 2) },
        ];
        let t = comparison_table(&rows).expect("both servers ran");
        let fields: Vec<&str> = t.lines().nth(1).expect("a row").split_whitespace().collect();
        // workload clients etcd-ops/s cairn-ops/s cairn/etcd etcd-p99 cairn-p99 p99-etcd/cairn
        assert_eq!(fields, ["put", "1", "100", "300", "3.00", "8.00", "2.00", "4.00"]);
    }

    #[test]
    fn fanout_table_has_the_last_watcher_ratio_on_cairn_rows() {
        let mut rows = Vec::new();
        for (server, p99_ms) in [("etcd", 6), ("cairn", 3)] {
            let mut s = summary(1000.0, 1);
            s.last_delivery = Some(crate::stats::Percentiles {
                count: 10,
                p50: Duration::from_millis(1),
                p99: Duration::from_millis(p99_ms),
                max: Duration::from_millis(p99_ms),
            });
            rows.push(Row { kind: Kind::WatchFanout, clients: 100, server: server.into(), summary: s });
        }
        let t = fanout_table(&rows).expect("a fan-out ran");
        let lines: Vec<Vec<&str>> = t.lines().skip(1).map(|l| l.split_whitespace().collect()).collect();
        // watchers server puts puts/s p50 p99 max [p99 etcd/cairn]
        assert_eq!(lines[0], ["100", "etcd", "10", "10", "1.00", "6.00", "6.00"]);
        assert_eq!(lines[1], ["100", "cairn", "10", "10", "1.00", "3.00", "3.00", "2.00"]);
        assert!(fanout_table(&rows[..0]).is_none());
    }

    #[test]
    fn no_comparison_with_one_server() {
        let rows = vec![Row { kind: Kind::Put, clients: 1, server: "cairn".into(), summary: summary(1.0, 1) }];
        assert!(comparison_table(&rows).is_none());
    }
}
