//! Command-line options of `cairn-bench`, parsed by hand (the flag set is small and stable).

use std::path::PathBuf;
use std::time::Duration;

use crate::server::MAX_MEMBERS;
use crate::workload::Kind;

/// Which server(s) a run starts, or which of the given endpoints it uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerKind {
    Etcd,
    Cairn,
}

impl ServerKind {
    pub fn name(self) -> &'static str {
        match self {
            ServerKind::Etcd => "etcd",
            ServerKind::Cairn => "cairn",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "etcd" => Some(ServerKind::Etcd),
            "cairn" => Some(ServerKind::Cairn),
            _ => None,
        }
    }
}

/// Which members of a started cluster the clients talk to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientsOn {
    /// Every member, round-robin by client index, the leader first (client `c` on member
    /// `c % members` in leader-first order), as an etcd client given every endpoint.
    All,
    /// The leader only.
    Leader,
}

/// A server that is already running: `label` names it in the tables (`etcd` and `cairn` are
/// the labels the ratio table looks for).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub label: String,
    pub url: String,
}

/// Everything a run is told on the command line.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// Tiny op counts, for the CI smoke test.
    pub quick: bool,
    /// Only this server (started, or picked by label from `endpoints`).
    pub only: Option<ServerKind>,
    /// Run against these instead of starting servers.
    pub endpoints: Vec<Endpoint>,
    /// Ops per workload run (total over all its clients). With neither this nor `duration`,
    /// each workload's default count, capped in time.
    pub ops: Option<u64>,
    /// Run each workload for this long (or until `ops`, when both are given).
    pub duration: Option<Duration>,
    /// Client count of the concurrent variant of each workload.
    pub clients: usize,
    /// gRPC connections the concurrent clients share (each client sticks to one).
    pub connections: usize,
    /// Bytes of every value written.
    pub value_size: usize,
    /// Workloads to run, in this order.
    pub workloads: Vec<Kind>,
    /// Watcher counts of the watch-fanout runs (one run per count). `None`: the default
    /// (1, 100, 1000; with `--quick` 1 and 100).
    pub watchers: Option<Vec<usize>>,
    /// Watch streams the watchers of a watch-fanout run are spread over (at most one per watcher).
    pub watch_streams: usize,
    /// Leases of a lease-keepalive run (at least one per client). `None`: 100, with `--quick` 10.
    pub leases: Option<usize>,
    /// Parent of the temporary data directories of started servers (default: the system temp dir).
    pub data_dir: Option<PathBuf>,
    /// Members of each started cluster (1: a single node).
    pub members: usize,
    /// Which members the clients talk to (matters only with several members).
    pub clients_on: ClientsOn,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            quick: false,
            only: None,
            endpoints: Vec::new(),
            ops: None,
            duration: None,
            clients: 100,
            connections: 4,
            value_size: 256,
            workloads: Kind::ALL.to_vec(),
            watchers: None,
            watch_streams: 10,
            leases: None,
            data_dir: None,
            members: 1,
            clients_on: ClientsOn::All,
        }
    }
}

impl Options {
    /// Watcher counts of the watch-fanout runs.
    pub fn watcher_counts(&self) -> Vec<usize> {
        match &self.watchers {
            Some(w) => w.clone(),
            None if self.quick => vec![1, 100],
            None => vec![1, 100, 1000],
        }
    }

    /// Leases granted by a lease-keepalive run (before raising it to the client count).
    pub fn lease_count(&self) -> usize {
        self.leases.unwrap_or(if self.quick { 10 } else { 100 })
    }
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Invocation {
    Run(Box<Options>),
    Help,
}

pub const USAGE: &str = "\
Usage: cairn-bench [flags]

Starts real etcd 3.5 and Cairn side by side (single-node or --members N clusters, free ports,
temporary data dirs), runs the same workloads against each and prints ops/s, latency
p50/p99/max, the Cairn/etcd ratios and the peak RSS of both servers.

Flags:
  --quick                 tiny op counts (CI smoke test)
  --only cairn|etcd       run against one server only (no ratios)
  --endpoints LIST        use running servers instead of starting them; LIST is
                          LABEL=URL[,LABEL=URL...] (labels etcd and cairn get ratios)
                          or a single URL
  --ops N                 ops per workload run, total over its clients (default: a count per
                          workload, each run capped at 4 s)
  --duration SECS         run each workload for SECS seconds (with --ops: whichever comes first)
  --clients N             clients of the concurrent variant of each workload (default 100)
  --connections N         gRPC connections per member the concurrent clients share (default 4)
  --value-size BYTES      size of every value written (default 256)
  --workloads LIST        comma-separated subset of: put,range-linearizable,range-serializable,
                          txn,list,watch-fanout,lease-keepalive,defrag (default: all)
  --watchers LIST         watcher counts of the watch-fanout runs, one run each
                          (default 1,100,1000; with --quick 1,100)
  --watch-streams N       watch streams the watchers of a run are spread over, on the
                          --connections connections (default 10)
  --leases N              leases of a lease-keepalive run, at least one per client
                          (default 100; with --quick 10)
  --data-dir DIR          parent of the temporary server data dirs (default: $TMPDIR or /tmp)
  --members N             start clusters of N members (1..=7, default 1: a single node)
  --clients-on all|leader with --members > 1: spread the clients over every member, round-robin
                          by client index with the leader first (default all), or put them all
                          on the leader
  -h, --help              this text

Environment:
  CAIRN_ETCD_BIN_DIR      directory holding etcd (default <repo>/.deps/etcd/bin,
                          installed by scripts/install-test-deps.sh)
  CAIRN_BIN               the cairn binary (default <repo>/target/release/cairn)
";

/// Parses the arguments after the program name.
pub fn parse(args: &[String]) -> Result<Invocation, String> {
    let mut o = Options::default();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        let mut value = || -> Result<String, String> {
            match &inline {
                Some(v) => Ok(v.clone()),
                None => it.next().cloned().ok_or_else(|| format!("{flag} needs a value")),
            }
        };
        match flag {
            "-h" | "--help" => return Ok(Invocation::Help),
            "--quick" => o.quick = true,
            "--only" => {
                let v = value()?;
                o.only = Some(ServerKind::parse(&v).ok_or_else(|| format!("--only takes cairn or etcd, not {v:?}"))?);
            }
            "--endpoints" => o.endpoints = parse_endpoints(&value()?)?,
            "--ops" => o.ops = Some(positive(flag, &value()?)?),
            "--duration" => {
                let v = value()?;
                let secs: f64 = v.parse().map_err(|_| format!("--duration takes seconds, not {v:?}"))?;
                if !(secs > 0.0 && secs <= 3600.0) {
                    return Err(format!("--duration must be in (0, 3600] seconds, not {v}"));
                }
                o.duration = Some(Duration::from_secs_f64(secs));
            }
            "--clients" => o.clients = usize::try_from(positive(flag, &value()?)?).map_err(|e| e.to_string())?,
            "--connections" => {
                o.connections = usize::try_from(positive(flag, &value()?)?).map_err(|e| e.to_string())?
            }
            "--value-size" => o.value_size = usize::try_from(positive(flag, &value()?)?).map_err(|e| e.to_string())?,
            "--workloads" => {
                o.workloads = value()?
                    .split(',')
                    .map(|w| Kind::parse(w.trim()).ok_or_else(|| format!("unknown workload {w:?}")))
                    .collect::<Result<_, _>>()?
            }
            "--watchers" => {
                let v = value()?;
                let counts = v
                    .split(',')
                    .map(|w| match w.trim().parse::<usize>() {
                        Ok(n) if (1..=100_000).contains(&n) => Ok(n),
                        _ => Err(format!("--watchers takes counts in 1..=100000, not {w:?}")),
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                o.watchers = Some(counts);
            }
            "--watch-streams" => {
                o.watch_streams = usize::try_from(positive(flag, &value()?)?).map_err(|e| e.to_string())?
            }
            "--leases" => {
                let n = positive(flag, &value()?)?;
                if n > 100_000 {
                    return Err("--leases is limited to 100000".into());
                }
                o.leases = Some(n as usize);
            }
            "--data-dir" => o.data_dir = Some(PathBuf::from(value()?)),
            "--members" => {
                let v = value()?;
                o.members = match v.parse::<usize>() {
                    Ok(n) if (1..=MAX_MEMBERS).contains(&n) => n,
                    _ => return Err(format!("--members takes a count in 1..={MAX_MEMBERS}, not {v:?}")),
                };
            }
            "--clients-on" => {
                o.clients_on = match value()?.as_str() {
                    "all" => ClientsOn::All,
                    "leader" => ClientsOn::Leader,
                    v => return Err(format!("--clients-on takes all or leader, not {v:?}")),
                }
            }
            _ => return Err(format!("unknown flag: {arg}")),
        }
    }
    if o.clients > 10_000 {
        return Err("--clients is limited to 10000".into());
    }
    if o.connections > o.clients.max(1) {
        o.connections = o.clients.max(1);
    }
    if o.members > 1 && !o.endpoints.is_empty() {
        return Err("--members starts clusters: it cannot be used with --endpoints".into());
    }
    if let Some(only) = o.only {
        if !o.endpoints.is_empty() {
            o.endpoints.retain(|e| e.label == only.name());
            if o.endpoints.is_empty() {
                return Err(format!("--only {} but no endpoint is labelled {0}", only.name()));
            }
        }
    }
    Ok(Invocation::Run(Box::new(o)))
}

fn positive(flag: &str, v: &str) -> Result<u64, String> {
    match v.parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{flag} takes a positive integer, not {v:?}")),
    }
}

fn parse_endpoints(v: &str) -> Result<Vec<Endpoint>, String> {
    let parts: Vec<&str> = v.split(',').map(str::trim).filter(|p| !p.is_empty()).collect();
    if parts.is_empty() {
        return Err("--endpoints is empty".into());
    }
    let mut out = Vec::new();
    for p in &parts {
        let (label, url) = match p.split_once('=') {
            Some((l, u)) => (l.to_string(), u.to_string()),
            None if parts.len() == 1 => ("target".to_string(), p.to_string()),
            None => return Err(format!("with several endpoints each needs a label (LABEL=URL): {p:?}")),
        };
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!("endpoint URL must start with http:// or https://: {url:?}"));
        }
        if out.iter().any(|e: &Endpoint| e.label == label) {
            return Err(format!("endpoint label {label:?} given twice"));
        }
        out.push(Endpoint { label, url });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Options, String> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        match parse(&args)? {
            Invocation::Run(o) => Ok(*o),
            Invocation::Help => Err("help".into()),
        }
    }

    #[test]
    fn defaults() {
        assert_eq!(run(&[]).unwrap(), Options::default());
    }

    #[test]
    fn flags_in_both_forms() {
        let o = run(&["--quick", "--only=cairn", "--ops", "5", "--clients=10", "--workloads", "put,txn"]).unwrap();
        assert!(o.quick);
        assert_eq!(o.only, Some(ServerKind::Cairn));
        assert_eq!(o.ops, Some(5));
        assert_eq!(o.clients, 10);
        assert_eq!(o.workloads, vec![Kind::Put, Kind::Txn]);
    }

    #[test]
    fn endpoints() {
        let o = run(&["--endpoints", "etcd=http://a:1,cairn=http://b:2"]).unwrap();
        assert_eq!(o.endpoints.len(), 2);
        assert_eq!(o.endpoints[1], Endpoint { label: "cairn".into(), url: "http://b:2".into() });
        let o = run(&["--endpoints", "http://a:1"]).unwrap();
        assert_eq!(o.endpoints[0].label, "target");
        assert!(run(&["--endpoints", "http://a:1,http://b:2"]).is_err());
        let o = run(&["--endpoints", "etcd=http://a:1,cairn=http://b:2", "--only", "etcd"]).unwrap();
        assert_eq!(o.endpoints, vec![Endpoint { label: "etcd".into(), url: "http://a:1".into() }]);
    }

    #[test]
    fn bad_input_is_an_error() {
        assert!(run(&["--bogus"]).is_err());
        assert!(run(&["--ops"]).is_err());
        assert!(run(&["--ops", "0"]).is_err());
        assert!(run(&["--only", "zk"]).is_err());
        assert!(run(&["--workloads", "put,nope"]).is_err());
        assert!(run(&["--duration", "-1"]).is_err());
        assert!(run(&["--watchers", "1,0"]).is_err());
        assert!(run(&["--watch-streams", "0"]).is_err());
    }

    #[test]
    fn watch_and_lease_flags() {
        let o = run(&["--watchers", "1, 10,1000", "--watch-streams=4", "--leases", "7"]).unwrap();
        assert_eq!(o.watcher_counts(), vec![1, 10, 1000]);
        assert_eq!((o.watch_streams, o.lease_count()), (4, 7));
        assert_eq!(run(&[]).unwrap().watcher_counts(), vec![1, 100, 1000]);
        assert_eq!(run(&["--quick"]).unwrap().watcher_counts(), vec![1, 100]);
        assert_eq!(run(&["--quick"]).unwrap().lease_count(), 10);
    }

    #[test]
    fn cluster_flags() {
        let o = run(&["--members", "3", "--clients-on=leader"]).unwrap();
        assert_eq!((o.members, o.clients_on), (3, ClientsOn::Leader));
        assert_eq!(run(&[]).unwrap().clients_on, ClientsOn::All);
        assert!(run(&["--members", "0"]).is_err());
        assert!(run(&["--members", "8"]).is_err());
        assert!(run(&["--clients-on", "followers"]).is_err());
        assert!(run(&["--members", "3", "--endpoints", "http://a:1"]).is_err());
    }

    #[test]
    fn connections_never_exceed_clients() {
        assert_eq!(run(&["--clients", "2"]).unwrap().connections, 2);
    }
}
