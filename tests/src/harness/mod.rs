//! Processes and binaries for tests.
//!
//! - [`ports`]: [`free_port`], never the same port twice in one test process.
//! - [`bins`]: where `etcd`, `etcdctl` and `cairn` are, and which server is under test.
//! - [`server`]: [`Server`], one single-node server process started with etcd's flags.
//! - [`cluster`]: [`Cluster`], N server processes of one kind forming one cluster, with
//!   faults (kill -9, SIGTERM, SIGSTOP/SIGCONT) and leader lookup.
//! - [`netns`]: [`Net`], network namespaces on a bridge, for clusters whose members can be
//!   partitioned from each other ([`Cluster::start_partitionable`]).
//! - [`etcdctl`]: run `etcdctl` (API v3) against an endpoint.

pub mod bins;
pub mod cluster;
pub mod etcdctl;
pub mod netns;
pub mod ports;
pub mod server;

pub use bins::{cairn_bin, etcd_bin, etcd_bin_dir, etcdctl_bin, repo_root, subject_kind};
pub use cluster::{Cluster, ClusterOptions};
pub use etcdctl::{etcdctl, etcdctl_with_stdin, normalize, CmdOutput, EtcdctlProcess};
pub use netns::Net;
pub use ports::free_port;
pub use server::{Server, ServerKind, ServerOptions};
