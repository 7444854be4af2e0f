//! [`Cluster`]: N members of one server kind (etcd or Cairn) forming one raft group, owned by a
//! test.
//!
//! Every member is a [`Server`] started with etcd's clustering flags: its own client and peer
//! ports on 127.0.0.1, `--initial-cluster n1=http://127.0.0.1:P1,n2=...`, `--initial-cluster-state
//! new` and a token unique to the cluster. All processes are spawned before any is waited for:
//! a member serves a linearizable read only once a quorum is up.
//!
//! Faults: [`Cluster::kill9`] (crash), [`Cluster::stop`] (SIGTERM), [`Cluster::restart`] and
//! [`Cluster::restart_together`] (after a loss of quorum), [`Cluster::pause`] /
//! [`Cluster::resume`] (SIGSTOP / SIGCONT: a hung member that keeps its sockets open). Dropping
//! the cluster continues every paused process and kills every process (by pid, through each
//! [`Server`]'s drop), so none outlives the test.
//!
//! [`Cluster::start_partitionable`] runs each member in its own network namespace of a
//! [`Net`] (listening on the namespace's address instead of 127.0.0.1), which adds network
//! partitions: [`Cluster::isolate`], [`Cluster::partition`], [`Cluster::heal_network`]. The
//! test process reaches every member in every partition. The namespaces are removed after the
//! members are killed, when the cluster is dropped.

use std::fmt;
use std::time::{Duration, Instant};

use etcd_client::Client;
use tonic::transport::Channel;

use super::netns::Net;
use super::ports::free_port;
use super::server::{connect, Server, ServerKind, ServerOptions, StartError};

/// Starts on fresh ports tried when a port turns out to be taken.
const START_ATTEMPTS: u32 = 3;
/// How long [`Cluster::leader`] polls for an agreed leader.
const LEADER_TIMEOUT: Duration = Duration::from_secs(20);
/// How long one member may take to answer a Status request while looking for the leader.
const STATUS_TIMEOUT: Duration = Duration::from_secs(1);
/// How often the leader is polled.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// How to start a [`Cluster`].
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// Number of members (named `n1`, `n2`, ...).
    pub size: usize,
    /// Flags given to every member after the standard ones, e.g. `["--snapshot-count", "100"]`.
    pub extra_args: Vec<String>,
    /// How long each member may take to serve a linearizable read after (re)start.
    pub ready_timeout: Duration,
}

impl Default for ClusterOptions {
    /// Three members with a 50 ms heartbeat and a 500 ms election timeout, so that a lost
    /// leader is noticed within about a second.
    fn default() -> Self {
        ClusterOptions {
            size: 3,
            extra_args: ["--heartbeat-interval", "50", "--election-timeout", "500"].map(String::from).to_vec(),
            ready_timeout: Duration::from_secs(30),
        }
    }
}

impl ClusterOptions {
    /// The default options with `args` appended to the extra flags.
    pub fn with_args<I, S>(args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut options = ClusterOptions::default();
        options.extra_args.extend(args.into_iter().map(Into::into));
        options
    }
}

/// The members of one cluster, started together. Member indexes are 0-based; member `i` is
/// named `n{i+1}`.
pub struct Cluster {
    kind: ServerKind,
    members: Vec<Server>,
    /// The namespaces the members run in ([`Cluster::start_partitionable`]). Declared after
    /// `members`: dropped after every member is killed.
    net: Option<Net>,
}

impl Cluster {
    /// Starts a cluster of 3 members of `kind` with [`ClusterOptions::default`] and waits until
    /// every member serves a linearizable read.
    pub async fn start(kind: ServerKind) -> Cluster {
        Cluster::start_with(kind, ClusterOptions::default()).await
    }

    /// Like [`Cluster::start`] with the default options plus extra flags.
    pub async fn start_with_args(kind: ServerKind, args: &[&str]) -> Cluster {
        Cluster::start_with(kind, ClusterOptions::with_args(args.iter().copied())).await
    }

    /// Starts a cluster with explicit options. Panics (with the members' log tails) if it does
    /// not become ready in time.
    pub async fn start_with(kind: ServerKind, options: ClusterOptions) -> Cluster {
        Cluster::start_in(kind, options, None).await
    }

    /// Like [`Cluster::start_with`], each member in its own network namespace (see
    /// [`super::netns`]; needs root), so that members can be partitioned from each other.
    pub async fn start_partitionable(kind: ServerKind, options: ClusterOptions) -> Cluster {
        let net = Net::new(options.size);
        Cluster::start_in(kind, options, Some(net)).await
    }

    async fn start_in(kind: ServerKind, options: ClusterOptions, net: Option<Net>) -> Cluster {
        assert!(options.size >= 1, "a cluster needs at least one member");
        static TOKENS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let token =
            format!("cairn-tests-{}-{}", std::process::id(), TOKENS.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        let members = (0..options.size)
            .map(|i| {
                let mut extra_args = vec![
                    "--initial-cluster-state".to_string(),
                    "new".to_string(),
                    "--initial-cluster-token".to_string(),
                    token.clone(),
                ];
                extra_args.extend(options.extra_args.iter().cloned());
                let server_options = ServerOptions {
                    name: format!("n{}", i + 1),
                    extra_args,
                    ready_timeout: options.ready_timeout,
                    initial_cluster: None,
                };
                let mut server = Server::unstarted(kind, server_options, free_port(), free_port());
                if let Some(net) = &net {
                    server.place_in(net.namespace(i), &net.address(i));
                }
                server
            })
            .collect();
        let mut cluster = Cluster { kind, members, net };
        for attempt in 1..=START_ATTEMPTS {
            cluster.set_initial_cluster();
            for m in &mut cluster.members {
                m.spawn();
            }
            match cluster.wait_all_ready().await {
                Ok(()) => return cluster,
                Err(StartError::AddressInUse(_)) if attempt < START_ATTEMPTS => {
                    // Every member must learn the new URLs: start the whole cluster again.
                    for m in &mut cluster.members {
                        m.kill9();
                        m.reset_ports(free_port(), free_port());
                    }
                }
                Err(e) => panic!("starting a {kind} cluster: {e}"),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    fn set_initial_cluster(&mut self) {
        let initial_cluster =
            self.members.iter().map(|m| format!("{}={}", m.name(), m.peer_url())).collect::<Vec<_>>().join(",");
        for m in &mut self.members {
            m.set_initial_cluster(initial_cluster.clone());
        }
    }

    /// Waits for each member in turn; all are already spawned, so waiting for the first one
    /// covers the time the cluster needs to elect a leader.
    async fn wait_all_ready(&mut self) -> Result<(), StartError> {
        for m in &mut self.members {
            m.wait_ready().await?;
        }
        Ok(())
    }

    /// Which binary the members run.
    pub fn kind(&self) -> ServerKind {
        self.kind
    }

    /// The number of members.
    pub fn size(&self) -> usize {
        self.members.len()
    }

    /// Member `i` (0-based).
    pub fn member(&self, i: usize) -> &Server {
        &self.members[i]
    }

    /// Member `i`, mutable (e.g. to turn off its log on failure).
    pub fn member_mut(&mut self, i: usize) -> &mut Server {
        &mut self.members[i]
    }

    /// `<host>:<client port>` of member `i` (host 127.0.0.1, or its namespace's address).
    pub fn endpoint(&self, i: usize) -> String {
        self.members[i].endpoint()
    }

    /// The client endpoints of every member, in member order.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Server::endpoint).collect()
    }

    /// The pid of member `i`, if it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i].pid()
    }

    /// An etcd-client connected to member `i` only. Panics if it cannot connect.
    pub async fn client(&self, i: usize) -> Client {
        self.members[i].client().await
    }

    /// A gRPC channel to member `i` only, for the raw `cairn_proto` clients. Panics if it
    /// cannot connect.
    pub async fn channel(&self, i: usize) -> Channel {
        let m = &self.members[i];
        Channel::from_shared(m.client_url())
            .expect("a client URL is a valid URI")
            .connect_timeout(Duration::from_secs(2))
            .connect()
            .await
            .unwrap_or_else(|e| panic!("{m}: cannot open a gRPC channel: {e}"))
    }

    /// Kills member `i` with SIGKILL and reaps it (a crash).
    pub fn kill9(&mut self, i: usize) {
        self.members[i].kill9();
    }

    /// Stops member `i` with SIGTERM and waits for it to exit (see [`Server::stop`]).
    pub fn stop(&mut self, i: usize) {
        self.members[i].stop();
    }

    /// Starts member `i` again on its data dir and ports and waits until it serves a
    /// linearizable read (which needs a quorum, including itself caught up to the read index).
    pub async fn restart(&mut self, i: usize) {
        self.members[i].restart().await;
    }

    /// Starts the members `which` again, on their data dirs and ports, all at once, then waits
    /// until each serves a linearizable read: the restart after a loss of quorum (several
    /// members crashed), where no member is ready until enough of them run. Running members
    /// among them are first stopped with SIGTERM. Panics if one is not ready in time.
    pub async fn restart_together(&mut self, which: &[usize]) {
        for &i in which {
            if self.members[i].is_running() {
                self.members[i].stop();
            }
        }
        for &i in which {
            self.members[i].spawn();
        }
        for &i in which {
            self.wait_ready(i).await;
        }
    }

    /// Waits until member `i` serves a linearizable read. Panics if it does not in time.
    pub async fn wait_ready(&mut self, i: usize) {
        if let Err(e) = self.members[i].wait_ready().await {
            panic!("{e}");
        }
    }

    /// Stops member `i` with SIGSTOP (see [`Server::pause`]).
    pub fn pause(&mut self, i: usize) {
        self.members[i].pause();
    }

    /// Continues member `i` with SIGCONT (see [`Server::resume`]).
    pub fn resume(&mut self, i: usize) {
        self.members[i].resume();
    }

    /// The Maintenance Status of member `i`: `(its member id, the leader it knows, 0 if none)`,
    /// or `None` if it does not answer within a second.
    pub async fn status(&self, i: usize) -> Option<(u64, u64)> {
        let endpoint = self.members[i].endpoint();
        let status = async {
            let mut c = connect(&endpoint).await.ok()?;
            let s = c.status().await.ok()?;
            Some((s.header()?.member_id(), s.leader()))
        };
        tokio::time::timeout(STATUS_TIMEOUT, status).await.ok().flatten()
    }

    /// The member id of member `i` (from its Status header). Panics if it does not answer.
    pub async fn member_id(&self, i: usize) -> u64 {
        let (id, _) = self.status(i).await.unwrap_or_else(|| panic!("{}: no Status answer", self.members[i]));
        id
    }

    /// The index of the leader, once every running, unpaused member that answers names the same
    /// leader, that leader is one of them, and at least a quorum answered. Polls for up to
    /// 20 s, then panics.
    pub async fn leader(&mut self) -> usize {
        self.leader_within(LEADER_TIMEOUT)
            .await
            .unwrap_or_else(|| panic!("{} cluster: no agreed leader within {LEADER_TIMEOUT:?}", self.kind))
    }

    /// Like [`Cluster::leader`], `None` after `timeout`.
    pub async fn leader_within(&mut self, timeout: Duration) -> Option<usize> {
        let deadline = Instant::now() + timeout;
        let quorum = self.members.len() / 2 + 1;
        loop {
            let live: Vec<usize> = (0..self.members.len())
                .filter(|&i| self.members[i].is_running() && !self.members[i].is_paused())
                .collect();
            let mut answers = Vec::new();
            for &i in &live {
                if let Some(a) = self.status(i).await {
                    answers.push((i, a));
                }
            }
            if answers.len() >= quorum {
                let (_, (_, leader_id)) = answers[0];
                let agreed = leader_id != 0 && answers.iter().all(|(_, (_, l))| *l == leader_id);
                if agreed {
                    if let Some((i, _)) = answers.iter().find(|(_, (id, _))| *id == leader_id) {
                        return Some(*i);
                    }
                }
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// The network of a cluster started with [`Cluster::start_partitionable`]; panics otherwise.
    pub fn net(&mut self) -> &mut Net {
        self.net.as_mut().expect("network faults need Cluster::start_partitionable")
    }

    /// The network of a cluster started with [`Cluster::start_partitionable`], if it was.
    pub fn net_opt(&self) -> Option<&Net> {
        self.net.as_ref()
    }

    /// Cuts member `i` off from every other member (both directions); clients still reach it.
    pub fn isolate(&mut self, i: usize) {
        self.net().isolate(i);
    }

    /// Cuts every pair of members in different groups (see [`Net::partition`]).
    pub fn partition(&mut self, groups: &[&[usize]]) {
        self.net().partition(groups);
    }

    /// Restores every cut link, if the cluster has a network.
    pub fn heal_network(&mut self) {
        if let Some(net) = self.net.as_mut() {
            net.heal();
        }
    }

    /// Whether some member is cut from another.
    pub fn is_partitioned(&self) -> bool {
        self.net.as_ref().is_some_and(|n| !n.cuts().is_empty())
    }

    /// The members other than `i`, in order.
    pub fn others(&self, i: usize) -> Vec<usize> {
        (0..self.members.len()).filter(|&j| j != i).collect()
    }
}

impl fmt::Display for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} cluster [{}]", self.kind, self.endpoints().join(", "))
    }
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cluster")
            .field("kind", &self.kind)
            .field("members", &self.members)
            .field("net", &self.net)
            .finish()
    }
}

impl Drop for Cluster {
    /// Kills every member by pid ([`Server::kill9`] sends SIGCONT to a paused one first) and
    /// reaps it; each member's own drop then prints its log tail if the test is failing.
    fn drop(&mut self) {
        for m in &mut self.members {
            m.kill9();
        }
    }
}

// ================================================================ joining members

/// How long [`Cluster::wait_serving`] polls a member with serializable reads.
const SERVING_TIMEOUT: Duration = Duration::from_secs(30);

impl Cluster {
    /// Prepares member `n{size+1}` to join this running cluster and returns its index; it is
    /// not started. It gets fresh ports, the cluster's token and extra flags with
    /// `--initial-cluster-state existing`, and `--initial-cluster` = every member of this
    /// harness plus itself, as `etcdctl member add` prints it (so call this before any member is
    /// removed from the cluster).
    ///
    /// The caller adds its [`Server::peer_url`] with MemberAdd (voter or learner) first — etcd
    /// refuses to start a member the cluster does not know — then starts it with
    /// [`Cluster::spawn_member`] and waits with [`Cluster::wait_serving`].
    pub fn add_joining_member(&mut self) -> usize {
        assert!(self.net.is_none(), "joining members are not supported in a partitionable cluster");
        let first = self.members.first().expect("a cluster has at least one member").options().clone();
        let mut extra_args = first.extra_args;
        let state = extra_args
            .iter()
            .position(|a| a == "--initial-cluster-state")
            .expect("cluster members are started with --initial-cluster-state");
        extra_args[state + 1] = "existing".to_string();
        let options = ServerOptions {
            name: format!("n{}", self.members.len() + 1),
            extra_args,
            ready_timeout: first.ready_timeout,
            initial_cluster: None,
        };
        let mut joining = Server::unstarted(self.kind, options, free_port(), free_port());
        let initial_cluster = self
            .members
            .iter()
            .chain(std::iter::once(&joining))
            .map(|m| format!("{}={}", m.name(), m.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        joining.set_initial_cluster(initial_cluster);
        self.members.push(joining);
        self.members.len() - 1
    }

    /// Starts the process of member `i` (prepared by [`Cluster::add_joining_member`], or after
    /// [`Cluster::kill9`]) without waiting for anything.
    pub fn spawn_member(&mut self, i: usize) {
        self.members[i].spawn();
    }

    /// Polls member `i` with a serializable get until it answers one: a learner refuses
    /// linearizable reads, so this is readiness for a joining member. Panics (with its log tail)
    /// if the process exits or it does not answer within 30 s.
    pub async fn wait_serving(&mut self, i: usize) {
        let deadline = Instant::now() + SERVING_TIMEOUT;
        let endpoint = self.members[i].endpoint();
        let mut last_error = String::from("no attempt yet");
        loop {
            assert!(
                self.members[i].is_running(),
                "{}: exited before serving (last client error: {last_error})\n{}",
                self.members[i],
                self.members[i].log_tail(60)
            );
            let attempt = async {
                let mut c = connect(&endpoint).await.map_err(|e| format!("connect: {e}"))?;
                let options = etcd_client::GetOptions::new().with_serializable();
                c.get("cairn-tests/readiness-probe", Some(options)).await.map_err(|e| format!("get: {e}"))
            };
            match tokio::time::timeout(STATUS_TIMEOUT * 2, attempt).await {
                Ok(Ok(_)) => return,
                Ok(Err(e)) => last_error = e,
                Err(_) => last_error = "timed out".to_string(),
            }
            assert!(
                Instant::now() < deadline,
                "{}: no serializable read within {SERVING_TIMEOUT:?} (last client error: {last_error})\n{}",
                self.members[i],
                self.members[i].log_tail(60)
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}
