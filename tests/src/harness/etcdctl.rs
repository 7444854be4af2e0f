//! Running `etcdctl` (API v3, from etcd 3.5.1) against one endpoint.

use std::io::Write;
use std::process::{Command, ExitStatus, Stdio};

use super::bins::etcdctl_bin;

/// `--command-timeout` given to every etcdctl invocation.
const COMMAND_TIMEOUT: &str = "10s";
/// `--dial-timeout` given to every etcdctl invocation.
const DIAL_TIMEOUT: &str = "3s";

/// What an etcdctl run printed and how it exited.
#[derive(Clone, Debug)]
pub struct CmdOutput {
    /// The command line, for messages.
    pub command: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CmdOutput {
    /// Whether the command exited with status 0.
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// The stdout of a successful run; panics with the whole output otherwise.
    pub fn ok(&self) -> &str {
        assert!(self.success(), "`{}` failed:\n{self}", self.command);
        &self.stdout
    }

    /// The stderr of a failed run; panics with the whole output if it succeeded.
    pub fn err(&self) -> &str {
        assert!(!self.success(), "`{}` succeeded but was expected to fail:\n{self}", self.command);
        &self.stderr
    }
}

impl std::fmt::Display for CmdOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "status: {}\n--- stdout ---\n{}--- stderr ---\n{}", self.status, self.stdout, self.stderr)
    }
}

/// Runs `etcdctl --endpoints=<endpoint> --command-timeout=10s <args>` with `ETCDCTL_API=3`
/// and no other `ETCDCTL_*` variables; stdin is empty.
pub fn etcdctl(endpoint: &str, args: &[&str]) -> CmdOutput {
    run(endpoint, args, None)
}

/// Like [`etcdctl`], with `input` written to its stdin (e.g. `etcdctl txn`).
pub fn etcdctl_with_stdin(endpoint: &str, args: &[&str], input: &str) -> CmdOutput {
    run(endpoint, args, Some(input))
}

fn run(endpoint: &str, args: &[&str], input: Option<&str>) -> CmdOutput {
    let bin = etcdctl_bin();
    let mut cmd = Command::new(&bin);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("ETCDCTL_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .arg(format!("--command-timeout={COMMAND_TIMEOUT}"))
        .arg(format!("--dial-timeout={DIAL_TIMEOUT}"))
        .args(args)
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let command = format!("etcdctl --endpoints={endpoint} {}", args.join(" "));
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
    if let Some(input) = input {
        let mut stdin = child.stdin.take().expect("stdin was piped");
        stdin.write_all(input.as_bytes()).unwrap_or_else(|e| panic!("write stdin of `{command}`: {e}"));
        // Dropping stdin closes it: etcdctl reads to end of input.
    }
    let output = child.wait_with_output().unwrap_or_else(|e| panic!("wait for `{command}`: {e}"));
    CmdOutput {
        command,
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Normalises etcdctl output so that two clusters can be compared: the server's client and
/// peer addresses become `<client>` and `<peer>`; JSON output (one document, or one per line)
/// is pretty-printed (keys sorted) and its ids (`cluster_id`, `member_id`, `ID`, `leader` and their `fields` spellings) become
/// `<id#N>` in order of first appearance and raft terms become `<term>`; in `-w fields`
/// output the same fields are replaced line by line.
pub fn normalize(text: &str, client_port: u16, peer_port: u16) -> String {
    let text = text
        .replace(&format!("127.0.0.1:{client_port}"), "<client>")
        .replace(&format!("127.0.0.1:{peer_port}"), "<peer>");
    let mut ids = IdNames::default();
    let mut out = Vec::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if let Ok(mut json) = serde_json::from_str::<serde_json::Value>(trimmed) {
            if json.is_object() || json.is_array() {
                ids.walk(&mut json);
                out.push(serde_json::to_string_pretty(&json).unwrap_or_else(|_| json.to_string()));
                continue;
            }
        }
        out.push(ids.fields_line(line));
    }
    let mut s = out.join("\n");
    if text.ends_with('\n') {
        s.push('\n');
    }
    s
}

/// JSON keys holding member or cluster ids.
const ID_KEYS: [&str; 6] = ["cluster_id", "member_id", "ID", "leader", "ClusterID", "MemberID"];
/// JSON keys holding raft terms.
const TERM_KEYS: [&str; 3] = ["raft_term", "raftTerm", "RaftTerm"];

#[derive(Default)]
struct IdNames {
    names: std::collections::HashMap<String, String>,
}

impl IdNames {
    fn name(&mut self, raw: String) -> String {
        let next = format!("<id#{}>", self.names.len() + 1);
        self.names.entry(raw).or_insert(next).clone()
    }

    fn walk(&mut self, v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map.iter_mut() {
                    if ID_KEYS.contains(&k.as_str()) && (v.is_number() || v.is_string()) {
                        *v = serde_json::Value::String(self.name(v.to_string()));
                    } else if TERM_KEYS.contains(&k.as_str()) && v.is_number() {
                        *v = serde_json::Value::String("<term>".to_string());
                    } else {
                        self.walk(v);
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(|i| self.walk(i)),
            _ => {}
        }
    }

    /// `"ClusterID" : 123` lines of `-w fields` output.
    fn fields_line(&mut self, line: &str) -> String {
        for key in ["ClusterID", "MemberID"] {
            if let Some(rest) = line.strip_prefix(&format!("\"{key}\" : ")) {
                return format!("\"{key}\" : {}", self.name(rest.trim().to_string()));
            }
        }
        if line.starts_with("\"RaftTerm\" : ") {
            return "\"RaftTerm\" : <term>".to_string();
        }
        line.to_string()
    }
}

/// A long-running etcdctl child (`lease keep-alive`, `lock`, `elect`, ...) against one
/// endpoint: its stdout lines arrive on a channel; stdin and stderr are closed. Killed (by its
/// pid) when dropped.
pub struct EtcdctlProcess {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl EtcdctlProcess {
    pub fn start(endpoint: &str, args: &[&str]) -> EtcdctlProcess {
        let mut child = Command::new(etcdctl_bin())
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={endpoint}"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start etcdctl {}: {e}", args.join(" ")));
        let stdout = child.stdout.take().expect("stdout was piped");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        EtcdctlProcess { child, lines }
    }

    /// The next line; panics if none is printed within `deadline`.
    pub fn line(&self, deadline: std::time::Duration) -> String {
        self.lines.recv_timeout(deadline).unwrap_or_else(|e| panic!("no line from etcdctl within {deadline:?}: {e}"))
    }

    /// The next line if one is printed within `deadline`.
    pub fn line_within(&self, deadline: std::time::Duration) -> Option<String> {
        self.lines.recv_timeout(deadline).ok()
    }

    /// Whether the process has exited.
    pub fn has_exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// SIGKILL, and wait for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for EtcdctlProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
