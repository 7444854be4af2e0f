//! Command-line flags and `ETCD_*` environment variables, named as etcd names them.
//! A flag beats its environment variable; an unknown flag is an error.

use std::path::PathBuf;

/// What the binary was asked to do.
#[derive(Debug)]
pub enum Invocation {
    Run(Box<Config>),
    Version,
    Help,
}

/// A member's configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub name: String,
    pub data_dir: PathBuf,
    pub listen_client_urls: Vec<String>,
    pub advertise_client_urls: Vec<String>,
    pub listen_peer_urls: Vec<String>,
    pub initial_advertise_peer_urls: Vec<String>,
    pub initial_cluster: String,
    pub initial_cluster_state: String,
    pub initial_cluster_token: String,
    /// Largest accepted write request, in bytes (etcd `--max-request-bytes`).
    pub max_request_bytes: usize,
    /// Most operations in one txn (etcd `--max-txn-ops`).
    pub max_txn_ops: usize,
    pub log_level: String,
    pub heartbeat_interval_ms: u64,
    pub election_timeout_ms: u64,
    pub snapshot_count: u64,
    /// Period of progress notifications to watchers that asked for them.
    pub watch_progress_notify_interval: std::time::Duration,
    /// Backend size past which the NOSPACE alarm is raised (etcd `--quota-backend-bytes`;
    /// 0 means the default, 2 GiB).
    pub quota_backend_bytes: u64,
    /// `periodic` or `revision` (etcd `--auto-compaction-mode`).
    pub auto_compaction_mode: AutoCompactionMode,
    /// etcd `--auto-compaction-retention`: for `periodic` a duration (a bare number means
    /// hours), for `revision` a revision count. Zero disables auto compaction.
    pub auto_compaction_retention: AutoCompactionRetention,
    /// etcd `--auth-token`: only `simple` is supported.
    pub auth_token: String,
    /// etcd `--auth-token-ttl`: how long an unused simple token lives, in seconds.
    pub auth_token_ttl_secs: u64,
    /// etcd `--bcrypt-cost` for password hashes.
    pub bcrypt_cost: u32,
    /// etcd `--listen-metrics-urls`: extra plain-HTTP listeners for /metrics and /health.
    pub listen_metrics_urls: Vec<String>,
    /// etcd `--enable-grpc-gateway`: serve the JSON API on the client port.
    pub enable_grpc_gateway: bool,
}

/// etcd's `--auto-compaction-mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AutoCompactionMode {
    Periodic,
    Revision,
}

/// etcd's `--auto-compaction-retention`, parsed for its mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AutoCompactionRetention {
    Disabled,
    Period(std::time::Duration),
    Revisions(i64),
}

impl Default for Config {
    fn default() -> Self {
        Config {
            name: "default".into(),
            data_dir: PathBuf::from("default.cairn"),
            listen_client_urls: vec!["http://127.0.0.1:2379".into()],
            advertise_client_urls: vec!["http://localhost:2379".into()],
            listen_peer_urls: vec!["http://127.0.0.1:2380".into()],
            initial_advertise_peer_urls: vec!["http://localhost:2380".into()],
            initial_cluster: "default=http://localhost:2380".into(),
            initial_cluster_state: "new".into(),
            initial_cluster_token: "etcd-cluster".into(),
            max_request_bytes: 1_572_864,
            max_txn_ops: 128,
            log_level: "info".into(),
            heartbeat_interval_ms: 100,
            election_timeout_ms: 1000,
            snapshot_count: 100_000,
            watch_progress_notify_interval: std::time::Duration::from_secs(600),
            quota_backend_bytes: DEFAULT_QUOTA_BACKEND_BYTES,
            auto_compaction_mode: AutoCompactionMode::Periodic,
            auto_compaction_retention: AutoCompactionRetention::Disabled,
            auth_token: "simple".into(),
            auth_token_ttl_secs: 300,
            bcrypt_cost: 10,
            listen_metrics_urls: Vec::new(),
            enable_grpc_gateway: true,
        }
    }
}

/// etcd's default backend quota: 2 GiB.
pub const DEFAULT_QUOTA_BACKEND_BYTES: u64 = 2 << 30;

/// etcd's largest suggested quota (8 GiB); larger values are accepted with a warning.
pub const MAX_QUOTA_BACKEND_BYTES: u64 = 8 << 30;

/// The flags Cairn knows, for `--help` and for mapping `ETCD_*` variables.
pub const FLAGS: &[(&str, &str)] = &[
    ("name", "Human-readable name for this member."),
    ("data-dir", "Path to the data directory (default \"${name}.cairn\")."),
    ("listen-client-urls", "List of URLs to listen on for client traffic."),
    ("advertise-client-urls", "List of this member's client URLs to advertise to the public."),
    ("listen-peer-urls", "List of URLs to listen on for peer traffic."),
    ("initial-advertise-peer-urls", "List of this member's peer URLs to advertise to the rest of the cluster."),
    ("initial-cluster", "Initial cluster configuration for bootstrapping."),
    ("initial-cluster-state", "Initial cluster state ('new' or 'existing')."),
    ("initial-cluster-token", "Initial cluster token for the cluster during bootstrap."),
    ("max-request-bytes", "Maximum client request size in bytes the server will accept."),
    ("max-txn-ops", "Maximum number of operations permitted in a transaction."),
    ("log-level", "Configures log level. Only supports debug, info, warn, error, panic, or fatal."),
    ("heartbeat-interval", "Time (in milliseconds) of a heartbeat interval."),
    ("election-timeout", "Time (in milliseconds) for an election to timeout."),
    ("snapshot-count", "Number of committed transactions to trigger a snapshot to disk."),
    ("experimental-watch-progress-notify-interval", "Duration of periodic watch progress notifications."),
    ("quota-backend-bytes", "Raise alarms when backend size exceeds the given quota. 0 means use the default quota."),
    ("auto-compaction-mode", "Interpret 'auto-compaction-retention' one of: periodic|revision."),
    (
        "auto-compaction-retention",
        "Auto compaction retention for mvcc key value store. 0 means disable auto compaction.",
    ),
    ("auth-token", "Specify auth token specific options. Only 'simple' is supported."),
    ("auth-token-ttl", "The lifetime in seconds of the auth token."),
    ("bcrypt-cost", "Specify bcrypt algorithm cost factor for auth password hashing."),
    ("listen-metrics-urls", "List of URLs to listen on for the metrics and health endpoints."),
    ("enable-grpc-gateway", "Enable GRPC gateway."),
];

/// A configuration error, printed to the user as is.
#[derive(Debug, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn list(v: &str) -> Vec<String> {
    v.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect()
}

fn number<T: std::str::FromStr>(flag: &str, v: &str) -> Result<T, ConfigError> {
    v.trim().parse().map_err(|_| ConfigError(format!("invalid value {v:?} for flag --{flag}: parse error")))
}

fn boolean(flag: &str, v: &str) -> Result<bool, ConfigError> {
    match v.trim() {
        "true" | "1" | "t" | "T" | "TRUE" | "True" => Ok(true),
        "false" | "0" | "f" | "F" | "FALSE" | "False" => Ok(false),
        _ => Err(ConfigError(format!("invalid value {v:?} for flag --{flag}: parse error"))),
    }
}

/// `--auto-compaction-retention` as etcd reads it: in periodic mode a bare number is hours,
/// otherwise a Go duration; in revision mode a revision count.
fn parse_retention(mode: AutoCompactionMode, v: &str) -> Result<AutoCompactionRetention, ConfigError> {
    let flag = "auto-compaction-retention";
    let v = v.trim();
    match mode {
        AutoCompactionMode::Revision => {
            let n: i64 = number(flag, v)?;
            if n < 0 {
                return Err(ConfigError(format!("invalid value {v:?} for flag --{flag}: negative")));
            }
            Ok(if n == 0 { AutoCompactionRetention::Disabled } else { AutoCompactionRetention::Revisions(n) })
        }
        AutoCompactionMode::Periodic => {
            let d = match v.parse::<f64>() {
                Ok(h) if h >= 0.0 && h.is_finite() => std::time::Duration::from_secs_f64(h * 3600.0),
                Ok(_) => return Err(ConfigError(format!("invalid value {v:?} for flag --{flag}: negative"))),
                Err(_) => duration(flag, v)?,
            };
            Ok(if d.is_zero() { AutoCompactionRetention::Disabled } else { AutoCompactionRetention::Period(d) })
        }
    }
}

/// A Go duration such as `10m`, `5s`, `1m30s`, `250ms`.
fn duration(flag: &str, v: &str) -> Result<std::time::Duration, ConfigError> {
    let bad = || ConfigError(format!("invalid value {v:?} for flag --{flag}: parse error"));
    let mut total = 0f64;
    let mut rest = v.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(bad)?;
        let n: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += n * scale;
        rest = &rest[unit_len..];
    }
    Ok(std::time::Duration::from_secs_f64(total))
}

/// Parses arguments (without the program name) and the environment.
pub fn parse(args: &[String], env: &dyn Fn(&str) -> Option<String>) -> Result<Invocation, ConfigError> {
    let mut values: Vec<(String, String)> = Vec::new();
    // Environment first, so that flags given later override.
    for (flag, _) in FLAGS {
        let var = format!("ETCD_{}", flag.to_uppercase().replace('-', "_"));
        if let Some(v) = env(&var) {
            values.push((flag.to_string(), v));
        }
    }
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        i += 1;
        let Some(body) = a.strip_prefix("--").or_else(|| a.strip_prefix('-')) else {
            return Err(ConfigError(format!("'{a}' is not a valid flag")));
        };
        let (name, inline) = match body.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (body.to_string(), None),
        };
        match name.as_str() {
            "version" => return Ok(Invocation::Version),
            "h" | "help" => return Ok(Invocation::Help),
            _ => {}
        }
        if !FLAGS.iter().any(|(f, _)| *f == name) {
            return Err(ConfigError(format!("unknown flag: --{name}")));
        }
        let value = match inline {
            Some(v) => v,
            None => {
                if i >= args.len() {
                    return Err(ConfigError(format!("flag needs an argument: --{name}")));
                }
                i += 1;
                args[i - 1].clone()
            }
        };
        values.push((name, value));
    }
    let mut c = Config::default();
    let mut data_dir_set = false;
    let mut retention: Option<String> = None;
    for (flag, v) in values {
        match flag.as_str() {
            "name" => c.name = v,
            "data-dir" => {
                c.data_dir = PathBuf::from(v);
                data_dir_set = true;
            }
            "listen-client-urls" => c.listen_client_urls = list(&v),
            "advertise-client-urls" => c.advertise_client_urls = list(&v),
            "listen-peer-urls" => c.listen_peer_urls = list(&v),
            "initial-advertise-peer-urls" => c.initial_advertise_peer_urls = list(&v),
            "initial-cluster" => c.initial_cluster = v,
            "initial-cluster-state" => {
                if v != "new" && v != "existing" {
                    return Err(ConfigError(format!(
                        "invalid value {v:?} for flag --initial-cluster-state: valid values are \"new\", \"existing\""
                    )));
                }
                c.initial_cluster_state = v
            }
            "initial-cluster-token" => c.initial_cluster_token = v,
            "max-request-bytes" => c.max_request_bytes = number(&flag, &v)?,
            "max-txn-ops" => c.max_txn_ops = number(&flag, &v)?,
            "log-level" => {
                if !["debug", "info", "warn", "error", "panic", "fatal"].contains(&v.as_str()) {
                    return Err(ConfigError(format!("invalid value {v:?} for flag --log-level")));
                }
                c.log_level = v
            }
            "heartbeat-interval" => c.heartbeat_interval_ms = number(&flag, &v)?,
            "election-timeout" => c.election_timeout_ms = number(&flag, &v)?,
            "snapshot-count" => c.snapshot_count = number(&flag, &v)?,
            "experimental-watch-progress-notify-interval" => {
                c.watch_progress_notify_interval = duration(&flag, &v)?;
                if c.watch_progress_notify_interval.is_zero() {
                    return Err(ConfigError(format!("invalid value {v:?} for flag --{flag}: must be positive")));
                }
            }
            "quota-backend-bytes" => {
                let q: i64 = number(&flag, &v)?;
                c.quota_backend_bytes = match q {
                    // etcd: a negative quota disables it.
                    q if q < 0 => u64::MAX / 2,
                    0 => DEFAULT_QUOTA_BACKEND_BYTES,
                    q => q as u64,
                };
            }
            "auto-compaction-mode" => {
                c.auto_compaction_mode = match v.as_str() {
                    "periodic" | "" => AutoCompactionMode::Periodic,
                    "revision" => AutoCompactionMode::Revision,
                    _ => return Err(ConfigError(format!("unknown auto-compaction-mode {v:?}"))),
                }
            }
            "auto-compaction-retention" => retention = Some(v),
            "auth-token" => {
                let kind = v.split(',').next().unwrap_or_default();
                if kind != "simple" {
                    return Err(ConfigError(format!(
                        "--auth-token {v:?}: only 'simple' tokens are supported by cairn"
                    )));
                }
                c.auth_token = kind.to_string();
            }
            "auth-token-ttl" => c.auth_token_ttl_secs = number(&flag, &v)?,
            "bcrypt-cost" => {
                c.bcrypt_cost = number(&flag, &v)?;
                if !(4..=31).contains(&c.bcrypt_cost) {
                    return Err(ConfigError(format!(
                        "invalid bcrypt-cost {}: it must be between 4 and 31",
                        c.bcrypt_cost
                    )));
                }
            }
            "listen-metrics-urls" => c.listen_metrics_urls = list(&v),
            "enable-grpc-gateway" => c.enable_grpc_gateway = boolean(&flag, &v)?,
            _ => unreachable!("flag list and match agree"),
        }
    }
    if let Some(v) = retention {
        c.auto_compaction_retention = parse_retention(c.auto_compaction_mode, &v)?;
    }
    if !data_dir_set {
        c.data_dir = PathBuf::from(format!("{}.cairn", c.name));
    }
    if c.election_timeout_ms < 5 * c.heartbeat_interval_ms {
        return Err(ConfigError(format!(
            "--election-timeout[{}ms] should be at least 5 times as --heartbeat-interval[{}ms]",
            c.election_timeout_ms, c.heartbeat_interval_ms
        )));
    }
    if c.max_txn_ops == 0 {
        return Err(ConfigError("--max-txn-ops must be positive".into()));
    }
    Ok(Invocation::Run(Box::new(c)))
}

/// etcd's default `--initial-cluster` (with `--name default`).
const DEFAULT_INITIAL_CLUSTER: &str = "default=http://localhost:2380";

impl Config {
    /// The members of `--initial-cluster`, name -> peer URLs (sorted), in order of first
    /// appearance. As etcd: with the default value and another `--name`, the cluster is this
    /// member alone at its `--initial-advertise-peer-urls`; this member must be listed, with
    /// exactly its advertised peer URLs.
    pub fn initial_members(&self) -> Result<Vec<(String, Vec<String>)>, ConfigError> {
        let mut out: Vec<(String, Vec<String>)> = Vec::new();
        if self.initial_cluster == DEFAULT_INITIAL_CLUSTER && self.name != "default" {
            out.push((self.name.clone(), self.initial_advertise_peer_urls.clone()));
        } else {
            for part in self.initial_cluster.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                let (name, url) = part
                    .split_once('=')
                    .ok_or_else(|| ConfigError(format!("--initial-cluster: {part:?} is not name=url")))?;
                socket_addr(url)?;
                match out.iter_mut().find(|(n, _)| n == name) {
                    Some((_, urls)) => urls.push(url.to_string()),
                    None => out.push((name.to_string(), vec![url.to_string()])),
                }
            }
        }
        for (_, urls) in &mut out {
            urls.sort();
            urls.dedup();
        }
        let Some((_, mine)) = out.iter().find(|(n, _)| *n == self.name) else {
            return Err(ConfigError(format!(
                "couldn't find local name {:?} in the initial cluster configuration",
                self.name
            )));
        };
        let mut advertised = self.initial_advertise_peer_urls.clone();
        advertised.sort();
        advertised.dedup();
        if *mine != advertised {
            return Err(ConfigError(format!(
                "--initial-cluster has {}={} but missing from --initial-advertise-peer-urls={} (resolved urls: {:?} != {:?})",
                self.name,
                mine.join(","),
                self.initial_advertise_peer_urls.join(","),
                mine,
                advertised
            )));
        }
        Ok(out)
    }
}

/// `host:port` of a listen URL. Only plain `http://` is served so far.
pub fn socket_addr(url: &str) -> Result<String, ConfigError> {
    if url.starts_with("https://") || url.starts_with("unixs://") {
        return Err(ConfigError(format!("{url}: TLS is not supported yet")));
    }
    let rest =
        url.strip_prefix("http://").ok_or_else(|| ConfigError(format!("{url}: URL scheme must be http or https")))?;
    let hostport = rest.trim_end_matches('/');
    if hostport.contains('/') || !hostport.contains(':') {
        return Err(ConfigError(format!("{url}: expected http://host:port")));
    }
    Ok(hostport.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str], env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let env: Vec<(String, String)> = env.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
        match parse(&args, &|k| env.iter().find(|(a, _)| a == k).map(|(_, b)| b.clone()))? {
            Invocation::Run(c) => Ok(*c),
            other => panic!("expected run, got {other:?}"),
        }
    }

    #[test]
    fn defaults_flags_and_env() {
        let c = run(&[], &[]).expect("defaults");
        assert_eq!(c.data_dir, PathBuf::from("default.cairn"));
        let c = run(&["--name", "n1", "--max-txn-ops=4"], &[("ETCD_MAX_TXN_OPS", "9"), ("ETCD_DATA_DIR", "/d")])
            .expect("flags");
        assert_eq!(c.name, "n1");
        assert_eq!(c.max_txn_ops, 4);
        assert_eq!(c.data_dir, PathBuf::from("/d"));
        assert_eq!(run(&["--bogus"], &[]).unwrap_err(), ConfigError("unknown flag: --bogus".into()));
        assert!(run(&["--max-txn-ops", "x"], &[]).is_err());
        assert!(run(&["--name"], &[]).is_err());
        let c = run(&["--experimental-watch-progress-notify-interval", "1m30s"], &[]).expect("duration");
        assert_eq!(c.watch_progress_notify_interval, std::time::Duration::from_secs(90));
        assert!(run(&["--experimental-watch-progress-notify-interval", "5"], &[]).is_err());
        assert_eq!(socket_addr("http://127.0.0.1:2379").expect("url"), "127.0.0.1:2379");
        assert!(socket_addr("https://127.0.0.1:2379").is_err());
    }

    #[test]
    fn initial_cluster() {
        let c = run(&[], &[]).expect("defaults");
        assert_eq!(
            c.initial_members().expect("default"),
            vec![("default".into(), vec!["http://localhost:2380".into()])]
        );
        let c = run(&["--name", "n1", "--initial-advertise-peer-urls", "http://127.0.0.1:7001"], &[]).expect("flags");
        assert_eq!(c.initial_members().expect("from name"), vec![("n1".into(), vec!["http://127.0.0.1:7001".into()])]);
        let c = run(
            &[
                "--name",
                "b",
                "--initial-advertise-peer-urls",
                "http://h:2",
                "--initial-cluster",
                "a=http://h:1,b=http://h:2,c=http://h:3,a=http://h:0",
            ],
            &[],
        )
        .expect("flags");
        let m = c.initial_members().expect("three");
        assert_eq!(m.len(), 3);
        assert_eq!(m[0], ("a".to_string(), vec!["http://h:0".to_string(), "http://h:1".to_string()]));
        let c = run(&["--name", "x", "--initial-cluster", "a=http://h:1"], &[]).expect("flags");
        assert!(c.initial_members().unwrap_err().0.contains("couldn't find local name"));
        let c = run(&["--name", "a", "--initial-cluster", "a=http://h:1"], &[]).expect("flags");
        assert!(c.initial_members().unwrap_err().0.contains("missing from --initial-advertise-peer-urls"));
    }

    #[test]
    fn maintenance_and_auth_flags() {
        let c = run(&["--quota-backend-bytes", "0", "--auto-compaction-retention", "1"], &[]).expect("defaults");
        assert_eq!(c.quota_backend_bytes, DEFAULT_QUOTA_BACKEND_BYTES);
        assert_eq!(c.auto_compaction_retention, AutoCompactionRetention::Period(std::time::Duration::from_secs(3600)));
        let c = run(
            &["--auto-compaction-retention=100", "--auto-compaction-mode=revision", "--quota-backend-bytes=1048576"],
            &[("ETCD_BCRYPT_COST", "4")],
        )
        .expect("revision mode");
        assert_eq!(c.auto_compaction_retention, AutoCompactionRetention::Revisions(100));
        assert_eq!(c.quota_backend_bytes, 1 << 20);
        assert_eq!(c.bcrypt_cost, 4);
        let c = run(&["--auto-compaction-retention", "90s"], &[]).expect("duration");
        assert_eq!(c.auto_compaction_retention, AutoCompactionRetention::Period(std::time::Duration::from_secs(90)));
        assert!(run(&["--auto-compaction-mode", "weekly"], &[]).is_err());
        assert!(run(&["--bcrypt-cost", "3"], &[]).is_err());
        assert!(run(&["--auth-token", "jwt,pub-key=a"], &[]).is_err());
        assert!(!run(&["--enable-grpc-gateway=false"], &[]).expect("bool").enable_grpc_gateway);
    }
}
