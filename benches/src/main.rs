//! `cairn-bench`: a load generator of our own (the `etcd-client` crate over tokio) that starts
//! real etcd 3.5 and Cairn side by side (each a single node or a cluster of `--members`), runs
//! the same workloads against each, one server at a time, and prints throughput, latency percentiles, the Cairn/etcd ratios and the servers'
//! peak RSS. See benches/README.md.
//!
//! Modules:
//! - [`options`]: the command line.
//! - [`server`]: locating the binaries and running a cluster (one or more members) as child
//!   processes.
//! - [`workload`]: the workloads, their preloaded data and the concurrent runner.
//! - [`fanout`]: the watch fan-out workload's own runner (watchers, a writer, delivery checks).
//! - [`cpu`]: CPU used by the server and by the rest of the machine during a run.
//! - [`stats`]: raw outcome of a run and its summary (ops/s, p50, p99, max).
//! - [`report`]: the tables.
//!
//! Exit status: 0 when every op succeeded, 1 when an op failed or a server could not be run,
//! 2 on a usage error.

mod cpu;
mod defrag;
mod fanout;
mod options;
mod report;
mod server;
mod stats;
mod workload;

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use etcd_client::{Client, ConnectOptions};

use options::{ClientsOn, Invocation, Options, ServerKind};
use report::{Resources, Row};
use server::Cluster;
use workload::{Fixture, Kind, Quota, RunSpec};

/// Deadline of one gRPC call made outside the timed loops (preload, Status).
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = match options::parse(&args) {
        Ok(Invocation::Run(o)) => *o,
        Ok(Invocation::Help) => {
            print!("{}", options::USAGE);
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("cairn-bench: {e}\nTry 'cairn-bench --help'.");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cairn-bench: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(&opts)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("cairn-bench: some ops failed (see the errors column and the messages above)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("cairn-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One server (a single node or a cluster) the workloads run against.
struct Target {
    label: String,
    /// The client URLs the workloads use: every member, the leader first, or only the leader
    /// (`--clients-on`); the one `--endpoints` URL.
    urls: Vec<String>,
    /// Set when this run started the server.
    cluster: Option<Cluster>,
    /// `Options::connections` connections per URL; connection `j` is on `urls[j % urls.len()]`,
    /// so that client `c` (on connection `c % clients.len()`) talks to `urls[c % urls.len()]`.
    clients: Vec<Client>,
    fixture: Option<Arc<Fixture>>,
}

/// Runs every workload; `Ok(true)` when every op succeeded.
async fn run(opts: &Options) -> Result<bool, String> {
    // Declared before the targets so that it is removed after the servers are stopped.
    let data_dir;
    let mut targets = Vec::new();
    if opts.endpoints.is_empty() {
        let kinds: Vec<ServerKind> =
            [ServerKind::Etcd, ServerKind::Cairn].into_iter().filter(|k| opts.only.is_none_or(|o| o == *k)).collect();
        let mut binaries = Vec::new();
        for k in &kinds {
            let bin = match k {
                ServerKind::Etcd => server::etcd_binary()?,
                ServerKind::Cairn => server::cairn_binary()?,
            };
            eprintln!("cairn-bench: {:<5} = {} ({})", k.name(), bin.display(), version_of(&bin));
            binaries.push(bin);
        }
        let mut builder = tempfile::Builder::new();
        builder.prefix("cairn-bench-");
        data_dir = match &opts.data_dir {
            Some(parent) => {
                std::fs::create_dir_all(parent).map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
                builder.tempdir_in(parent)
            }
            None => builder.tempdir(),
        }
        .map_err(|e| format!("cannot create the data directory: {e}"))?;
        eprintln!("cairn-bench: data and logs under {}", data_dir.path().display());
        for (k, bin) in kinds.iter().zip(&binaries) {
            let mut cluster = Cluster::start(*k, bin, data_dir.path(), opts.members)?;
            cluster.wait_ready().await?;
            let leader = cluster.leader();
            for (i, m) in cluster.members().iter().enumerate() {
                eprintln!(
                    "cairn-bench: {} {} serves on {} (pid {}){}",
                    k.name(),
                    m.name,
                    m.client_url,
                    m.pid().unwrap_or(0),
                    if i == leader && opts.members > 1 { ", leader" } else { "" }
                );
            }
            let members = cluster.members();
            let mut urls = vec![members[leader].client_url.clone()];
            if opts.clients_on == ClientsOn::All {
                urls.extend(
                    members.iter().enumerate().filter(|(i, _)| *i != leader).map(|(_, m)| m.client_url.clone()),
                );
            }
            targets.push(Target {
                label: k.name().to_string(),
                urls,
                cluster: Some(cluster),
                clients: Vec::new(),
                fixture: None,
            });
        }
    } else {
        for e in &opts.endpoints {
            targets.push(Target {
                label: e.label.clone(),
                urls: vec![e.url.clone()],
                cluster: None,
                clients: Vec::new(),
                fixture: None,
            });
        }
    }

    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let prefix = format!("cairn-bench/{}-{now}/", std::process::id());
    for t in &mut targets {
        for _ in 0..opts.connections {
            for url in &t.urls {
                let c = connect(url).await.map_err(|e| format!("{}: {e}", t.label))?;
                t.clients.push(c);
            }
        }
        let kv = t.clients[0].kv_client();
        let fixture = tokio::time::timeout(SETUP_TIMEOUT, Fixture::load(&kv, &prefix, opts.value_size))
            .await
            .map_err(|_| format!("{}: preloading the keys took more than {SETUP_TIMEOUT:?}", t.label))?
            .map_err(|e| format!("{}: {e}", t.label))?;
        // Every member the clients use has applied the preload before the first run (its
        // serializable reads find the keys).
        for (url, c) in t.urls.iter().zip(&t.clients) {
            tokio::time::timeout(SETUP_TIMEOUT, fixture.check_visible(&c.kv_client()))
                .await
                .map_err(|_| format!("{} {url}: checking the preload took more than {SETUP_TIMEOUT:?}", t.label))?
                .map_err(|e| format!("{} {url}: {e}", t.label))?;
        }
        t.fixture = Some(Arc::new(fixture));
    }

    let mut client_counts = vec![1];
    if opts.clients > 1 {
        client_counts.push(opts.clients);
    }
    let watcher_counts = opts.watcher_counts();
    eprintln!(
        "cairn-bench: {}; workloads {}; clients {:?} over {} connection(s) per member used; watchers {:?} over {} stream(s); {} \
         lease(s); {}-byte values; {}",
        topology(opts),
        opts.workloads.iter().map(|k| k.name()).collect::<Vec<_>>().join(","),
        client_counts,
        opts.connections,
        watcher_counts,
        opts.watch_streams,
        opts.lease_count(),
        opts.value_size,
        match (opts.ops, opts.duration) {
            (Some(n), Some(d)) => format!("{n} ops or {d:?} per run, whichever comes first"),
            (Some(n), None) => format!("{n} ops per run"),
            (None, Some(d)) => format!("{d:?} per run"),
            (None, None) if opts.quick => format!("quick op counts, each run capped at {:?}", workload::QUICK_RUN_CAP),
            (None, None) => format!("default op counts, each run capped at {:?}", workload::DEFAULT_RUN_CAP),
        }
    );

    let mut rows = Vec::new();
    let mut run_id = 0;
    for &kind in &opts.workloads {
        let counts = if kind == Kind::WatchFanout { &watcher_counts } else { &client_counts };
        for &clients in counts {
            run_id += 1;
            let quota = match (opts.ops, opts.duration) {
                (None, None) => Quota {
                    ops: Some(kind.default_ops(clients, opts.quick)),
                    duration: Some(if opts.quick { workload::QUICK_RUN_CAP } else { workload::DEFAULT_RUN_CAP }),
                },
                (ops, duration) => Quota { ops, duration },
            };
            let spec =
                RunSpec { kind, clients, quota, run_id, leases: opts.lease_count(), watch_streams: opts.watch_streams };
            for t in &mut targets {
                let conns = if clients == 1 { &t.clients[..1] } else { &t.clients[..] };
                let fixture = t.fixture.as_ref().expect("every target is preloaded before the runs");
                let pids = t.cluster.as_ref().map(Cluster::pids).unwrap_or_default();
                let outcome = if kind == Kind::WatchFanout {
                    fanout::run(spec, conns, fixture, &pids).await
                } else if kind == Kind::Defrag {
                    defrag::run(spec, conns, fixture, &pids, &t.label, opts.quick).await
                } else {
                    workload::run(spec, conns, fixture, &pids).await
                };
                let summary = outcome.summary();
                eprintln!(
                    "cairn-bench: {:<18} {:<13} {:<6} {:>8} ok {:>4} errors in {:>7.2}s",
                    kind.name(),
                    format!("{}={clients}", kind.count_label()),
                    t.label,
                    summary.ok,
                    summary.errors,
                    summary.elapsed.as_secs_f64()
                );
                for m in &summary.error_samples {
                    eprintln!("cairn-bench:   error: {m}");
                }
                if let Some(c) = t.cluster.as_mut() {
                    if let Some(what) = c.exited() {
                        return Err(format!("{} during {}: {what}", t.label, kind.name()));
                    }
                }
                rows.push(Row { kind, clients, server: t.label.clone(), summary });
            }
        }
    }

    let mut resources = Vec::new();
    for t in &mut targets {
        let db_size = match tokio::time::timeout(SETUP_TIMEOUT, t.clients[0].status()).await {
            Ok(Ok(s)) => Some(s.db_size()),
            _ => None,
        };
        resources.push(Resources {
            server: t.label.clone(),
            peak_rss_kib: t.cluster.as_ref().and_then(Cluster::peak_rss_kib),
            db_size_bytes: db_size,
        });
    }

    println!();
    println!("== Results ({}; latencies in milliseconds; ops = successful ops)", topology(opts));
    print!("{}", report::results_table(&rows));
    if let Some(cmp) = report::comparison_table(&rows) {
        println!();
        println!("== Cairn vs etcd (> 1 means Cairn better: throughput cairn/etcd, p99 latency etcd/cairn)");
        print!("{cmp}");
    }
    if let Some(fan) = report::fanout_table(&rows) {
        println!();
        println!("== Watch fan-out: from a put's start until its LAST watcher had the event (milliseconds)");
        print!("{fan}");
    }
    println!();
    if opts.members > 1 {
        println!("== Servers at the end of the run (peak RSS: sum over the members; db size: the leader's)");
    } else {
        println!("== Servers at the end of the run");
    }
    print!("{}", report::resources_table(&resources));

    let failed: Vec<&Row> = rows.iter().filter(|r| r.summary.errors > 0).collect();
    if !failed.is_empty() {
        println!();
        println!("== Errors");
        for r in &failed {
            println!(
                "{} {}={} {}: {} errors",
                r.kind.name(),
                r.kind.count_label(),
                r.clients,
                r.server,
                r.summary.errors
            );
            for m in &r.summary.error_samples {
                println!("  {m}");
            }
        }
    }
    // The targets (and their server processes) are dropped here, before `data_dir`.
    drop(targets);
    Ok(failed.is_empty())
}

/// The servers' shape, for the headers: `single node`, or `3 members, clients on all (leader first)`.
fn topology(opts: &Options) -> String {
    match (opts.endpoints.is_empty(), opts.members, opts.clients_on) {
        (false, _, _) => "given endpoints".to_string(),
        (true, 1, _) => "single node".to_string(),
        (true, n, ClientsOn::All) => format!("{n} members, clients on all, round-robin from the leader"),
        (true, n, ClientsOn::Leader) => format!("{n} members, clients on the leader"),
    }
}

async fn connect(url: &str) -> Result<Client, String> {
    let opts = ConnectOptions::new().with_connect_timeout(Duration::from_secs(5));
    Client::connect([url], Some(opts)).await.map_err(|e| format!("cannot connect to {url}: {e}"))
}

/// The first line of `<bin> --version`, for the header.
fn version_of(bin: &Path) -> String {
    match std::process::Command::new(bin).arg("--version").output() {
        Ok(out) => String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or("no version").trim().to_string(),
        Err(e) => format!("--version failed: {e}"),
    }
}
