//! Smoke test of the bench: `cairn-bench --quick` against a real etcd and Cairn that it starts
//! itself. It checks that every workload ran against both servers and that every op succeeded;
//! it never checks a speed.
//!
//! Needs etcd (`scripts/install-test-deps.sh` installs it into `<repo>/.deps/etcd/bin`, or set
//! `CAIRN_ETCD_BIN_DIR`) and the `cairn` binary of the same cargo profile as this test
//! (`cargo build -p cairn-server`, which `scripts/test.sh` does before the tests, or set
//! `CAIRN_BIN`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A quick run takes a few seconds; past this it is hung and is killed.
const HANG_GUARD: Duration = Duration::from_secs(120);
/// Every workload runs with 1 and 100 clients (watch-fanout: watchers) in a quick run.
const WORKLOADS: [&str; 8] =
    ["put", "range-linearizable", "range-serializable", "txn", "list", "watch-fanout", "lease-keepalive", "defrag"];
const CLIENT_COUNTS: [&str; 2] = ["1", "100"];
const SERVERS: [&str; 2] = ["etcd", "cairn"];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("benches/ has a parent directory").to_path_buf()
}

fn etcd_bin_dir() -> PathBuf {
    let dir =
        std::env::var_os("CAIRN_ETCD_BIN_DIR").map(PathBuf::from).unwrap_or_else(|| repo_root().join(".deps/etcd/bin"));
    assert!(
        dir.join("etcd").is_file(),
        "etcd not found at {}: run scripts/install-test-deps.sh (it installs etcd 3.5.1 into <repo>/.deps/etcd/bin), \
         or set CAIRN_ETCD_BIN_DIR",
        dir.join("etcd").display()
    );
    dir
}

/// `$CAIRN_BIN`, else `cairn` in the profile directory this test runs from
/// (`target/<profile>/deps/smoke-…` → `target/<profile>/cairn`).
fn cairn_bin() -> PathBuf {
    let path = match std::env::var_os("CAIRN_BIN") {
        Some(p) => PathBuf::from(p),
        None => {
            let exe = std::env::current_exe().expect("the test knows its own path");
            exe.parent().and_then(Path::parent).expect("the test runs from target/<profile>/deps").join("cairn")
        }
    };
    assert!(
        path.is_file(),
        "cairn binary not found at {}: build it with `cargo build -p cairn-server` (scripts/test.sh runs \
         `cargo build --workspace --bins` before the tests), or set CAIRN_BIN",
        path.display()
    );
    path
}

#[test]
fn quick_bench_against_etcd_and_cairn_has_no_failed_op() {
    let etcd_dir = etcd_bin_dir();
    let cairn = cairn_bin();
    let work = tempfile::tempdir().expect("a temporary directory");
    let stdout_path = work.path().join("stdout");
    let stderr_path = work.path().join("stderr");
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_cairn-bench"))
        .arg("--quick")
        .arg("--data-dir")
        .arg(work.path().join("data"))
        .env("CAIRN_BIN", &cairn)
        .env("CAIRN_ETCD_BIN_DIR", &etcd_dir)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path).expect("create the stdout file"))
        .stderr(std::fs::File::create(&stderr_path).expect("create the stderr file"))
        .spawn()
        .expect("start cairn-bench");
    let status = loop {
        if let Some(status) = child.try_wait().expect("poll cairn-bench") {
            break status;
        }
        if started.elapsed() > HANG_GUARD {
            // SIGKILL to the bench's pid; the servers it started die with it (PR_SET_PDEATHSIG).
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "cairn-bench --quick did not finish within {HANG_GUARD:?}; stderr:\n{}",
                std::fs::read_to_string(&stderr_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stdout = std::fs::read_to_string(&stdout_path).expect("read stdout");
    let stderr = std::fs::read_to_string(&stderr_path).expect("read stderr");
    let context = format!("exit status {status}\n--- stdout\n{stdout}\n--- stderr\n{stderr}");
    assert!(status.success(), "cairn-bench --quick failed: {context}");

    // Rows of the results table: workload clients server ops errors ops/s p50 p99 max srv-cpu other-cpu.
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .skip_while(|l| !l.starts_with("== Results"))
        .skip(2)
        .take_while(|l| !l.trim().is_empty())
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows.iter().filter(|r| r.len() == 11 && r[3].parse::<u64>().is_ok()).count(),
        WORKLOADS.len() * CLIENT_COUNTS.len() * SERVERS.len(),
        "expected one result row per workload, client count and server: {context}"
    );
    for workload in WORKLOADS {
        for clients in CLIENT_COUNTS {
            for server in SERVERS {
                let row = rows
                    .iter()
                    .find(|r| r.len() == 11 && r[0] == workload && r[1] == clients && r[2] == server)
                    .unwrap_or_else(|| panic!("no result row for {workload} clients={clients} {server}: {context}"));
                let ops: u64 = row[3].parse().expect("ops is a number");
                assert!(ops > 0, "{workload} clients={clients} {server} did no op: {context}");
                assert_eq!(row[4], "0", "{workload} clients={clients} {server} had failed ops: {context}");
            }
        }
    }
    assert!(stdout.contains("== Cairn vs etcd"), "no comparison table: {context}");
    assert!(stdout.contains("== Watch fan-out"), "no watch fan-out table: {context}");
    eprintln!("cairn-bench --quick took {:.1}s", started.elapsed().as_secs_f64());
}
