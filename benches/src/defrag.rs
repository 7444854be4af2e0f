//! The `defrag` workload: writes while the server defragments.
//!
//! Setup (not timed): write `fill` bytes of 64 KiB values, delete 90 % of them, compact
//! (physical) at the current revision. Timed: `clients` writers put `--value-size` values
//! while one Defragment call runs; the run ends when it returns. One op is one put that
//! started during the defragmentation, so throughput and p99/max latency show how much the
//! defragmentation stopped writes (etcd's blocks the member for its whole duration).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use etcd_client::{Client, CompactionOptions, DeleteOptions};

use crate::cpu;
use crate::stats::RunOutcome;
use crate::workload::{value, Fixture, RunSpec};

/// Bytes written before the defragmentation (quick runs: an eighth).
pub const FILL_BYTES: usize = 96 << 20;
const FILL_VALUE: usize = 48 << 10;
const FILL_CONCURRENCY: usize = 16;

async fn fill(conn: &Client, prefix: &str, bytes: usize) -> Result<(), String> {
    let n = bytes / FILL_VALUE;
    let mut tasks = Vec::new();
    for w in 0..FILL_CONCURRENCY {
        let mut kv = conn.kv_client();
        let prefix = prefix.to_string();
        tasks.push(tokio::spawn(async move {
            for i in (w..n).step_by(FILL_CONCURRENCY) {
                let part = if i % 10 == 0 { "keep" } else { "drop" };
                kv.put(format!("{prefix}{part}/{i:06}"), value(FILL_VALUE, i as u64), None)
                    .await
                    .map_err(|e| format!("fill put: {e}"))?;
            }
            Ok::<(), String>(())
        }));
    }
    for t in tasks {
        t.await.map_err(|e| format!("fill task: {e}"))??;
    }
    Ok(())
}

pub async fn run(
    spec: RunSpec,
    conns: &[Client],
    fixture: &Fixture,
    server_pids: &[u32],
    label: &str,
    quick: bool,
) -> RunOutcome {
    let mut out = RunOutcome::default();
    let prefix = format!("{}defrag/{}/", fixture.prefix, spec.run_id);
    let bytes = if quick { FILL_BYTES / 8 } else { FILL_BYTES };
    let mut c0 = conns[0].clone();
    let setup = async {
        fill(&conns[0], &prefix, bytes).await?;
        c0.delete(format!("{prefix}drop/"), Some(DeleteOptions::new().with_prefix()))
            .await
            .map_err(|e| format!("delete: {e}"))?;
        let rev = c0.get("x", None).await.map_err(|e| format!("get: {e}"))?.header().map(|h| h.revision()).unwrap_or(0);
        c0.compact(rev, Some(CompactionOptions::new().with_physical())).await.map_err(|e| format!("compact: {e}"))?;
        c0.status().await.map(|s| s.db_size()).map_err(|e| format!("status: {e}"))
    };
    let before = match setup.await {
        Ok(s) => s,
        Err(e) => {
            out.record_error(e);
            return out;
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    let window: Arc<OnceLock<Instant>> = Arc::new(OnceLock::new());
    let mut writers = Vec::new();
    for c in 0..spec.clients {
        let mut kv = conns[c % conns.len()].kv_client();
        let stop = stop.clone();
        let window = window.clone();
        let key_prefix = format!("{prefix}live/{c}/");
        let size = fixture.value_size;
        writers.push(tokio::spawn(async move {
            let mut o = RunOutcome::default();
            let mut i = 0u64;
            while !stop.load(Ordering::Acquire) {
                let t0 = Instant::now();
                match tokio::time::timeout(
                    Duration::from_secs(60),
                    kv.put(format!("{key_prefix}{i}"), value(size, i), None),
                )
                .await
                {
                    // Only puts that were (at least partly) in flight during the defragmentation.
                    Ok(Ok(_)) if window.get().is_some_and(|w| Instant::now() >= *w) => {
                        o.latencies_ns.push(t0.elapsed().as_nanos() as u64)
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => o.record_error(format!("put during defragment: {e}")),
                    Err(_) => o.record_error("put during defragment: no answer within 60 s".into()),
                }
                i += 1;
            }
            o
        }));
    }
    // Let the writers reach a steady state, then defragment.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let cpu_before = cpu::sample(server_pids);
    let start = Instant::now();
    let _ = window.set(start);
    let mut m = conns[0].maintenance_client();
    let defrag = m.defragment().await;
    let elapsed = start.elapsed();
    stop.store(true, Ordering::Release);
    let cpu_after = cpu::sample(server_pids);
    if let Err(e) = defrag {
        out.record_error(format!("defragment: {e}"));
    }
    for w in writers {
        match w.await {
            Ok(o) => out.merge(o),
            Err(e) => out.record_error(format!("writer task: {e}")),
        }
    }
    let after = c0.status().await.map(|s| s.db_size()).unwrap_or(0);
    eprintln!(
        "cairn-bench: defrag {label:<6} clients={}: {:.1} MB -> {:.1} MB in {:.3} s",
        spec.clients,
        before as f64 / 1e6,
        after as f64 / 1e6,
        elapsed.as_secs_f64()
    );
    let _ = c0.delete(prefix, Some(DeleteOptions::new().with_prefix())).await;
    out.elapsed = elapsed;
    out.cpu = cpu::usage(cpu_before, cpu_after, elapsed);
    out
}
