//! etcd v3's gRPC API for Cairn, generated from Cairn's own `.proto` files.
//!
//! The files under `proto/proto/` are Cairn's own text, wire-compatible with
//! etcd 3.5 (same packages, services, methods, messages, field names, field
//! numbers and enum values; a few additive etcd 3.6 fields are included too).
//! `build.rs` compiles them with `tonic-prost-build`, generating both gRPC
//! servers and clients.
//!
//! # Module map
//!
//! | module | proto package | contents |
//! |---|---|---|
//! | [`mvccpb`] | `mvccpb` | `KeyValue`, `Event` (+ `event::EventType`) |
//! | [`authpb`] | `authpb` | `User`, `Permission` (+ `permission::Type`), `Role`, `UserAddOptions` |
//! | [`etcdserverpb`] | `etcdserverpb` | all KV/Watch/Lease/Cluster/Maintenance/Auth messages and services |
//! | [`v3lockpb`] | `v3lockpb` | the `Lock` service |
//! | [`v3electionpb`] | `v3electionpb` | the `Election` service |
//! | [`rpctypes`] | — | etcd's gRPC errors (codes + exact messages) as data |
//!
//! Generated services (server trait + server wrapper, and client):
//!
//! - `etcdserverpb::kv_server::{Kv, KvServer}`, `etcdserverpb::kv_client::KvClient`
//! - `etcdserverpb::watch_server::{Watch, WatchServer}`, `etcdserverpb::watch_client::WatchClient`
//! - `etcdserverpb::lease_server::{Lease, LeaseServer}`, `etcdserverpb::lease_client::LeaseClient`
//! - `etcdserverpb::cluster_server::{Cluster, ClusterServer}`, `etcdserverpb::cluster_client::ClusterClient`
//! - `etcdserverpb::maintenance_server::{Maintenance, MaintenanceServer}`,
//!   `etcdserverpb::maintenance_client::MaintenanceClient`
//! - `etcdserverpb::auth_server::{Auth, AuthServer}`, `etcdserverpb::auth_client::AuthClient`
//! - `v3lockpb::lock_server::{Lock, LockServer}`, `v3lockpb::lock_client::LockClient`
//! - `v3electionpb::election_server::{Election, ElectionServer}`,
//!   `v3electionpb::election_client::ElectionClient`
//!
//! # Rust types of proto fields
//!
//! - **Every proto `bytes` field is [`bytes::Bytes`]** (not `Vec<u8>`): keys,
//!   values, range ends, `Compare.value`, snapshot blobs, lease key lists
//!   (`Vec<Bytes>`), auth names... Build one with `Bytes::from(vec)`,
//!   `Bytes::from_static(b"..")` or `Bytes::copy_from_slice(..)`; cloning is
//!   a reference-count bump.
//! - Field names are snake_case of the proto names: `TTL` → `ttl`, `ID` → `id`,
//!   `peerURLs` → `peer_ur_ls`, `dbSizeInUse` → `db_size_in_use`,
//!   `remaining_TTL` → `remaining_ttl`, `grantedTTL` → `granted_ttl`.
//! - Enum fields are `i32` with typed accessors (e.g. `RangeRequest::sort_order()`);
//!   `oneof`s are `Option<nested_module::Enum>` (e.g. `request_op::Request`,
//!   `compare::TargetUnion`, `watch_request::RequestUnion`).
//! - With the `json` feature every message implements serde's `Serialize` and
//!   `Deserialize` in the mapping of etcd's grpc-gateway: proto field names
//!   (`cluster_id`, `TTL`, `peerURLs`), 64-bit integers as strings, `bytes` as
//!   base64, enums by name, default values left out; input also accepts
//!   lowerCamelCase names, integers as numbers and enums as numbers, and ignores
//!   unknown fields.
//! - Not included: etcd 3.7's `KV.RangeStream` RPC (etcd 3.5 lacks it; an
//!   unknown method answers `Unimplemented`, as etcd 3.5 does).

#![warn(missing_docs)]

/// Package `mvccpb`: stored key-values and watch events.
#[allow(missing_docs, clippy::all, clippy::pedantic, rustdoc::all)]
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
    #[cfg(feature = "json")]
    include!(concat!(env!("OUT_DIR"), "/mvccpb.serde.rs"));
}

/// Package `authpb`: users, roles and permissions.
#[allow(missing_docs, clippy::all, clippy::pedantic, rustdoc::all)]
pub mod authpb {
    tonic::include_proto!("authpb");
    #[cfg(feature = "json")]
    include!(concat!(env!("OUT_DIR"), "/authpb.serde.rs"));
}

/// Package `etcdserverpb`: the KV, Watch, Lease, Cluster, Maintenance and Auth services.
#[allow(missing_docs, clippy::all, clippy::pedantic, rustdoc::all)]
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
    #[cfg(feature = "json")]
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.serde.rs"));
}

/// Package `v3lockpb`: the Lock service.
#[allow(missing_docs, clippy::all, clippy::pedantic, rustdoc::all)]
pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
    #[cfg(feature = "json")]
    include!(concat!(env!("OUT_DIR"), "/v3lockpb.serde.rs"));
}

/// Package `v3electionpb`: the Election service.
#[allow(missing_docs, clippy::all, clippy::pedantic, rustdoc::all)]
pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
    #[cfg(feature = "json")]
    include!(concat!(env!("OUT_DIR"), "/v3electionpb.serde.rs"));
}

/// Package `cairnpeerpb`: Cairn's private member-to-member protocol (raft messages,
/// forwarded proposals and reads) on the peer URLs.
#[allow(missing_docs, clippy::all, clippy::pedantic, rustdoc::all)]
pub mod cairnpeerpb {
    tonic::include_proto!("cairnpeerpb");
}

pub mod rpctypes;
