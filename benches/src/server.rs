//! Starting a cluster of one or more members (real etcd or Cairn), each a child process with
//! etcd's flags, waiting until every member serves, finding the leader, reading the peak RSS,
//! and stopping every member (by pid, on drop).

use std::fs::File;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions};

use crate::options::ServerKind;

/// How long a freshly started server may take to answer a linearizable read.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between two readiness probes.
const READY_POLL: Duration = Duration::from_millis(50);
/// Bytes of the server log shown when it fails to start.
const LOG_TAIL_BYTES: usize = 4000;

/// The directory of this repository (the parent of `benches/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("benches/ has a parent directory").to_path_buf()
}

/// The `etcd` binary: `$CAIRN_ETCD_BIN_DIR/etcd`, else `<repo>/.deps/etcd/bin/etcd`.
pub fn etcd_binary() -> Result<PathBuf, String> {
    let dir = match std::env::var_os("CAIRN_ETCD_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => repo_root().join(".deps/etcd/bin"),
    };
    let bin = dir.join("etcd");
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(format!(
            "etcd binary not found at {}: run scripts/install-test-deps.sh (it installs etcd 3.5.1 into \
             <repo>/.deps/etcd/bin), or set CAIRN_ETCD_BIN_DIR to the directory holding etcd",
            bin.display()
        ))
    }
}

/// The `cairn` binary: `$CAIRN_BIN`, else `<repo>/target/release/cairn`.
pub fn cairn_binary() -> Result<PathBuf, String> {
    let bin = match std::env::var_os("CAIRN_BIN") {
        Some(p) => PathBuf::from(p),
        None => repo_root().join("target/release/cairn"),
    };
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(format!(
            "cairn binary not found at {}: build it with `cargo build --release -p cairn-server`, or set CAIRN_BIN",
            bin.display()
        ))
    }
}

/// A port on 127.0.0.1 that was free a moment ago (the OS picked it).
fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("cannot bind a free port: {e}"))?;
    Ok(l.local_addr().map_err(|e| format!("cannot read the bound port: {e}"))?.port())
}

/// `n` distinct ports on 127.0.0.1 that were free a moment ago.
fn free_ports(n: usize) -> Result<Vec<u16>, String> {
    let mut ports: Vec<u16> = Vec::with_capacity(n);
    // The OS may hand out a port again once its listener is closed; a few retries suffice.
    for _ in 0..n * 10 {
        if ports.len() == n {
            break;
        }
        let p = free_port()?;
        if !ports.contains(&p) {
            ports.push(p);
        }
    }
    if ports.len() == n {
        Ok(ports)
    } else {
        Err(format!("could not find {n} distinct free ports"))
    }
}

/// The cluster token every started cluster uses (`--initial-cluster-token`).
const CLUSTER_TOKEN: &str = "cairn-bench";
/// Most members a started cluster may have.
pub const MAX_MEMBERS: usize = 7;

/// Name and URLs of one member of a cluster the bench starts.
#[derive(Debug, Clone)]
struct MemberSpec {
    /// `n1`, `n2`, ...
    name: String,
    client_url: String,
    peer_url: String,
}

/// One running member (of a cluster of one or more). Dropping it kills the process (SIGKILL
/// to its pid) and reaps it.
pub struct ServerProcess {
    pub kind: ServerKind,
    /// `--name` (`n1`, `n2`, ...).
    pub name: String,
    /// `http://127.0.0.1:<client port>`.
    pub client_url: String,
    /// `http://127.0.0.1:<peer port>`: MemberList must show it, proving that the server that
    /// answers on `client_url` is this one (and not another that took the port first).
    peer_url: String,
    /// Where the server's stdout and stderr go.
    log_path: PathBuf,
    /// `None` once reaped.
    child: Option<Child>,
}

impl ServerProcess {
    /// Starts `binary` as `member` of the cluster `initial_cluster` (`n1=URL,...`) with the same
    /// flags for etcd and Cairn; its data dir and log go under `dir`. Returns once the process
    /// is spawned; call [`ServerProcess::wait_ready`] next.
    ///
    /// The server is killed when the calling thread exits: call this from a thread that lives
    /// as long as the server should (`cairn-bench` calls it from the main thread, in
    /// `block_on`), not from a tokio worker that may be shut down earlier.
    fn start(
        kind: ServerKind,
        binary: &Path,
        dir: &Path,
        member: &MemberSpec,
        initial_cluster: &str,
    ) -> Result<Self, String> {
        let MemberSpec { name, client_url, peer_url } = member.clone();
        let data_dir = dir.join(format!("{}-{name}.data", kind.name()));
        let log_path = dir.join(format!("{}-{name}.log", kind.name()));
        let log = File::create(&log_path).map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
        let log2 = log.try_clone().map_err(|e| format!("cannot duplicate the log file handle: {e}"))?;
        let mut cmd = Command::new(binary);
        cmd.arg("--name")
            .arg(&name)
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--listen-client-urls")
            .arg(&client_url)
            .arg("--advertise-client-urls")
            .arg(&client_url)
            .arg("--listen-peer-urls")
            .arg(&peer_url)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer_url)
            .arg("--initial-cluster")
            .arg(initial_cluster)
            .arg("--initial-cluster-state")
            .arg("new")
            .arg("--initial-cluster-token")
            .arg(CLUSTER_TOKEN)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        // Both servers read ETCD_* variables as flags: do not let the caller's environment in.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("ETCD_") {
                cmd.env_remove(k);
            }
        }
        // SAFETY: the closure runs in the forked child before exec and only calls prctl, which is
        // async-signal-safe. PR_SET_PDEATHSIG kills the server when the thread that forked it
        // (the main thread, which runs the bench until its end) dies, so that a bench killed
        // with SIGKILL leaves no server behind.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child =
            cmd.spawn().map_err(|e| format!("cannot start {} {name} ({}): {e}", kind.name(), binary.display()))?;
        Ok(ServerProcess { kind, name, client_url, peer_url, log_path, child: Some(child) })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Polls until the server answers a linearizable read (so it has a leader and serves) and
    /// lists itself, with this peer URL, as a member; fails early if the process exits.
    pub async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(format!(
                        "{} {} exited during startup ({status}); log {}:\n{}",
                        self.kind.name(),
                        self.name,
                        self.log_path.display(),
                        self.log_tail()
                    ));
                }
            }
            let last_error = match probe(&self.client_url, &self.peer_url).await {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                return Err(format!(
                    "{} {} did not serve on {} within {READY_TIMEOUT:?} (last probe: {last_error}); log {}:\n{}",
                    self.kind.name(),
                    self.name,
                    self.client_url,
                    self.log_path.display(),
                    self.log_tail()
                ));
            }
            tokio::time::sleep(READY_POLL).await;
        }
    }

    /// Peak resident set size of the process so far (`VmHWM` in /proc/<pid>/status), in KiB.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// `None` while the process runs; its exit status once it has exited.
    pub fn exited(&mut self) -> Option<String> {
        match self.child.as_mut()?.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            _ => None,
        }
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    pub fn log_tail(&self) -> String {
        match std::fs::read(&self.log_path) {
            Ok(bytes) => {
                let start = bytes.len().saturating_sub(LOG_TAIL_BYTES);
                String::from_utf8_lossy(&bytes[start..]).into_owned()
            }
            Err(e) => format!("(cannot read the log: {e})"),
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Child::kill sends SIGKILL to this child's pid only.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A cluster of one kind (etcd or Cairn) that this run started: `size` members on free client
/// and peer ports, bootstrapped together (`--initial-cluster-state new`). Dropping it kills
/// every member by its pid.
pub struct Cluster {
    pub kind: ServerKind,
    /// In `--initial-cluster` order (`n1`, `n2`, ...).
    members: Vec<ServerProcess>,
    /// Index in `members` of the leader found by [`Cluster::wait_ready`].
    leader: usize,
}

impl Cluster {
    /// Spawns every member (they need each other to elect a leader, so none is waited for
    /// here); call [`Cluster::wait_ready`] next. If one fails to spawn, the ones already
    /// spawned are killed.
    pub fn start(kind: ServerKind, binary: &Path, dir: &Path, size: usize) -> Result<Self, String> {
        assert!((1..=MAX_MEMBERS).contains(&size), "a cluster has 1..={MAX_MEMBERS} members, not {size}");
        let ports = free_ports(2 * size)?;
        let specs: Vec<MemberSpec> = (0..size)
            .map(|i| MemberSpec {
                name: format!("n{}", i + 1),
                client_url: format!("http://127.0.0.1:{}", ports[2 * i]),
                peer_url: format!("http://127.0.0.1:{}", ports[2 * i + 1]),
            })
            .collect();
        let initial_cluster = specs.iter().map(|m| format!("{}={}", m.name, m.peer_url)).collect::<Vec<_>>().join(",");
        let mut members = Vec::with_capacity(size);
        for m in &specs {
            members.push(ServerProcess::start(kind, binary, dir, m, &initial_cluster)?);
        }
        Ok(Cluster { kind, members, leader: 0 })
    }

    /// Waits until every member serves a linearizable read and lists itself, then until every
    /// member names the same leader, one of the members.
    pub async fn wait_ready(&mut self) -> Result<(), String> {
        for m in &mut self.members {
            m.wait_ready().await?;
        }
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let last_error = match self.find_leader().await {
                Ok(i) => {
                    self.leader = i;
                    return Ok(());
                }
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                return Err(format!(
                    "{}: the members did not agree on a leader within {READY_TIMEOUT:?}: {last_error}",
                    self.kind.name()
                ));
            }
            tokio::time::sleep(READY_POLL).await;
        }
    }

    /// The index of the leader every member names in Maintenance.Status.
    async fn find_leader(&self) -> Result<usize, String> {
        let mut ids = Vec::with_capacity(self.members.len());
        let mut leaders = Vec::with_capacity(self.members.len());
        for m in &self.members {
            let mut c = Client::connect([m.client_url.as_str()], Some(probe_options()))
                .await
                .map_err(|e| format!("{}: connect: {e}", m.name))?;
            let s = c.status().await.map_err(|e| format!("{}: status: {e}", m.name))?;
            ids.push(s.header().map(|h| h.member_id()).ok_or_else(|| format!("{}: status without header", m.name))?);
            leaders.push(s.leader());
        }
        let leader = leaders[0];
        if leader == 0 || leaders.iter().any(|l| *l != leader) {
            return Err(format!("leaders named by the members: {leaders:x?}"));
        }
        ids.iter().position(|id| *id == leader).ok_or_else(|| format!("leader {leader:x} is none of {ids:x?}"))
    }

    pub fn members(&self) -> &[ServerProcess] {
        &self.members
    }

    /// Index in [`Cluster::members`] of the leader found when the cluster became ready (it is
    /// not tracked afterwards).
    pub fn leader(&self) -> usize {
        self.leader
    }

    /// The pids of the members still running.
    pub fn pids(&self) -> Vec<u32> {
        self.members.iter().filter_map(ServerProcess::pid).collect()
    }

    /// Sum of the members' peak RSS, in KiB (`None` if one cannot be read).
    pub fn peak_rss_kib(&self) -> Option<u64> {
        self.members.iter().map(ServerProcess::peak_rss_kib).sum()
    }

    /// `None` while every member runs; otherwise which member exited, how, and its log's tail.
    pub fn exited(&mut self) -> Option<String> {
        self.members.iter_mut().find_map(|m| {
            let status = m.exited()?;
            Some(format!("member {} exited ({status}); log {}:\n{}", m.name, m.log_path().display(), m.log_tail()))
        })
    }
}

fn probe_options() -> ConnectOptions {
    ConnectOptions::new().with_connect_timeout(Duration::from_secs(1)).with_timeout(Duration::from_secs(2))
}

/// One readiness probe: connect, a linearizable Range (needs a leader), then MemberList must
/// hold `peer_url`.
async fn probe(url: &str, peer_url: &str) -> Result<(), String> {
    let mut client = Client::connect([url], Some(probe_options())).await.map_err(|e| format!("connect: {e}"))?;
    client.get("cairn-bench/ready-probe", None).await.map_err(|e| format!("range: {e}"))?;
    let members = client.member_list().await.map_err(|e| format!("member list: {e}"))?;
    if members.members().iter().any(|m| m.peer_urls().iter().any(|u| u == peer_url)) {
        Ok(())
    } else {
        Err(format!("the server on {url} is another one: no member has the peer URL {peer_url}"))
    }
}
