//! Every table and meta key of the state-machine file, in one place. docs/FORMAT.md describes
//! them; change both together and bump [`FORMAT_VERSION`] on any incompatible change.

use redb::TableDefinition;

/// The on-disk format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// Small named values: see the `META_*` keys.
pub const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// The key index: `(user key, main revision, sub revision) -> flags`. One row per revision
/// of a key that is still kept; `flags & FLAG_TOMBSTONE` marks a delete. Sorted by key then
/// revision, so "the key at revision R" is one seek and a range scan visits keys in order.
pub const KEY_INDEX: TableDefinition<(&[u8], u64, u64), u8> = TableDefinition::new("key_index");

/// The revision log: `(main, sub) -> record` (see `record.rs`), the full content of every
/// kept revision in revision order. Watches replay from it; compaction walks it.
pub const REVS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("revs");

/// Leases: `lease id -> record` (`lease::LeaseRecord`): the leases granted and not revoked.
pub const LEASES: TableDefinition<i64, &[u8]> = TableDefinition::new("leases");

/// Keys attached to a lease: `(lease id, key) -> ()`, one row per live key with that lease.
pub const LEASE_KEYS: TableDefinition<(i64, &[u8]), ()> = TableDefinition::new("lease_keys");

/// Auth users: `name -> record` (`auth::UserRecord`).
pub const AUTH_USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("auth_users");

/// Auth roles: `name -> record` (`auth::RoleRecord`).
pub const AUTH_ROLES: TableDefinition<&str, &[u8]> = TableDefinition::new("auth_roles");

/// Auth state: [`AUTH_ENABLED`] (0 or 1) and [`AUTH_REVISION`] (etcd's auth revision, bumped
/// by every auth change).
pub const AUTH_META: TableDefinition<&str, u64> = TableDefinition::new("auth_meta");
/// Row of [`AUTH_META`]: 1 when auth is enabled.
pub const AUTH_ENABLED: &str = "enabled";
/// Row of [`AUTH_META`]: the auth revision (1 in a fresh store, as etcd).
pub const AUTH_REVISION: &str = "revision";

/// Key-index flag: this revision deleted the key.
pub const FLAG_TOMBSTONE: u8 = 1;

/// u32 LE: the format version of the file.
pub const META_FORMAT_VERSION: &str = "format_version";
/// i64 LE: the store's current (latest) main revision.
pub const META_CURRENT_REVISION: &str = "current_revision";
/// i64 LE: the compacted revision: reads below it fail.
pub const META_COMPACT_REVISION: &str = "compact_revision";
/// i64 LE: the compact revision up to which physical removal has finished.
pub const META_PHYSICAL_COMPACTED: &str = "physical_compacted";
/// i64 LE + 2 x u64 LE: the running physical compaction pass, as its target revision and the
/// `REVS` position `(main, sub)` where it resumes (inclusive). A pass in progress is one
/// whose target is above `physical_compacted`.
pub const META_COMPACT_CURSOR: &str = "compact_cursor";
/// u64 LE: the raft log index of the last applied entry.
pub const META_APPLIED_INDEX: &str = "applied_index";
/// Opaque bytes owned by the raft layer, written atomically with the applied index.
pub const META_RAFT_STATE: &str = "raft_state";
