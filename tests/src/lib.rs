//! Test support for Cairn: start real etcd 3.5.1 and Cairn as child processes, talk to them
//! with independent clients, and compare what they answer.
//!
//! Modules:
//! - [`harness`]: free ports, locating the binaries, [`harness::Server`] (one single-node
//!   server process with etcd's flags, owned by a test), [`harness::Cluster`] (N members of
//!   one kind forming a cluster, with kill -9 / SIGTERM / SIGSTOP faults and leader lookup),
//!   and the `etcdctl` helpers.
//! - [`diff`]: the differential machinery: a request model ([`diff::Req`]) that is executed
//!   through the `etcd-client` crate, responses normalised field by field
//!   ([`diff::Outcome`]), scripts of named steps, and [`diff::run_differential`] which runs
//!   one script against a fresh etcd and a fresh server under test and diffs the transcripts.
//! - [`linearizability`]: a linearizability checker for key-value histories (per-key
//!   registers with put, get, compare-and-set and delete; indeterminate writes), used by the
//!   Jepsen-style fault test.
//!
//! Environment variables:
//! - `CAIRN_ETCD_BIN_DIR`: directory holding `etcd` and `etcdctl` (default
//!   `<repo>/.deps/etcd/bin`, filled by `scripts/install-test-deps.sh`).
//! - `CAIRN_BIN`: path of the `cairn` binary (default: `target/<profile>/cairn`, next to the
//!   test executable's `deps/` directory).
//! - `CAIRN_DIFF_AGAINST`: `cairn` (default) or `etcd`; which server is under test. `etcd` runs
//!   every "Cairn" test against a second real etcd, to check the tests themselves.
//! - `CAIRN_DIFF_PRINT=1`: print the reference (etcd) transcript of every differential scenario.

pub mod diff;
pub mod harness;
pub mod linearizability;
pub mod watch_util;
