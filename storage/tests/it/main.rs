//! cairn-storage integration tests: one binary (see STYLE.md).
//!
//! - `randomized`: seeded operations against a plain model (`model.rs`); replay a failure
//!   with `CAIRN_SEED=<seed>`, widen with `CAIRN_SEEDS=<n>` and `CAIRN_OPS=<n>`.
//! - `edge`: hand-written cases (compaction corners, sort rules, errors, codec).
//! - `lease`: hand-written lease cases (revoke's revision and events, grant errors).
//! - `crash`: durability and atomicity of the state-machine file, with a fault-injecting
//!   redb storage backend.

mod crash;
mod edge;
mod gen;
mod harness;
mod lease;
mod maintenance;
mod model;
mod randomized;
