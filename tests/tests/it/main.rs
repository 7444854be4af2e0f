//! Integration tests of Cairn, one test binary (`it`) with a module per area:
//!
//! - `auth`: users, roles, permissions and tokens: differential against etcd over raw gRPC
//!   and etcdctl, and a restart.
//! - `cluster`: 3-member clusters of etcd and of Cairn running the same scenarios: reads and
//!   watches across members, `hasleader` (require-leader) streams when a follower loses its
//!   quorum, leader kill -9 and catch-up, a lagging member, member list, leases via followers.
//! - `jepsen`: linearizability of a 3-member cluster under crashes and pauses of members,
//!   concurrent clients' histories checked by `cairn_tests::linearizability`; reads right
//!   after a whole-cluster crash.
//! - `harness`: the test harness itself, against real etcd (start, kill -9, restart, stop).
//! - `differential`: the same KV requests against real etcd 3.5.1 and Cairn, compared
//!   field by field.
//! - `etcdctl`: etcdctl 3.5.1 against Cairn, compared with etcd where output must match.
//! - `crash`: kill -9 under concurrent writers, restart, every acknowledged write present.
//! - `lease`: the Lease API: differential (errors, TTL limits, revoke's revision) and
//!   etcdctl (grant/revoke/keep-alive/timetolive/list, expiry, restart).
//! - `lock`: the Lock and Election services compared with etcd over gRPC; `etcdctl lock` and
//!   `etcdctl elect` (waiting, failover on lease expiry, observing).
//! - `watch`: Watch streams compared response by response with etcd, `etcdctl watch`, the
//!   watch guarantees under load (10,000 watchers, a stalled stream) and across a restart.
//! - `http`: HTTP on the client port: the JSON gateway compared with etcd, gateway watch
//!   streams, /health /version /livez, the metrics listener, /metrics, and the Python
//!   `etcd3` and `etcd3gw` clients.
//! - `membership`: MemberAdd (learner), a member joining a running cluster, learner refusals,
//!   MemberPromote, MemberList, MemberRemove (the removed member exits; also of the leader)
//!   and MemberUpdate,
//!   compared with a 3-member etcd cluster.
//! - `kube`: an unmodified kube-apiserver on etcd and on Cairn running the same scenario
//!   (namespaces, configmap CRUD and conflicts, pagination, watches, lists at old
//!   resourceVersions, big objects), and on 3-member clusters of each under a leader kill -9,
//!   a member restart and a paused follower; opt-in, needs `CAIRN_KUBE_APISERVER`
//!   (`scripts/kube-e2e.sh`).
//! - `partition`: network partitions (members in network namespaces, needs root): an
//!   isolated leader that its clients still reach, compared with etcd.
//!
//! `CAIRN_DIFF_AGAINST=etcd` runs the Cairn side against a second etcd (checks the tests).

mod auth;
mod cluster;
mod crash;
mod differential;
mod etcdctl;
mod harness;
mod http;
mod jepsen;
mod kube;
mod lease;
mod lock;
mod maintenance;
mod membership;
mod partition;
mod watch;
