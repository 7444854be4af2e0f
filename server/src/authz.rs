//! Auth on the request path: simple tokens, the permission cache, and the checks etcd 3.5
//! makes of every KV, Watch, Lease and Auth RPC.
//!
//! - [`AuthView`]: the users and roles of the store at one auth revision, rebuilt from
//!   storage after every applied auth command (from the apply listener, before the
//!   proposer gets its answer, so a revoke takes effect on the very next request). Each
//!   user's merged key ranges are computed on first use and cached in the view.
//! - The token table: simple tokens (`<16 letters>.<raft index>`, assigned at apply) held
//!   in memory as etcd does; a token unused for `--auth-token-ttl` seconds expires, every
//!   use restarts its TTL. Deleting a user or changing its password drops its tokens;
//!   AuthDisable drops them all. Tokens do not survive a restart (nor do etcd's).
//! - Writes are checked against the view at revision R and proposed as
//!   `Command::AuthChecked { auth_revision: R }`: if any auth change is applied in between,
//!   apply refuses them with "revision of auth store is old" (etcd's check), so a write is
//!   never applied under permissions that were already revoked. While auth is disabled
//!   writes are wrapped with revision 0: one that applies after an AuthEnable is refused
//!   ("user name is empty", as etcd's applier refuses a request without a user); one
//!   checked under auth that applies after an AuthDisable goes through, as in etcd.
//!
//! etcd's quirks kept on purpose: the checks read the token from metadata `token` or
//! `authorization`; a token that is not valid fails the request even while auth is
//! disabled; without a token, a request that needs a permission fails with "user name is
//! empty".

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use cairn_proto::rpctypes::EtcdError;
use cairn_storage::auth::{AuthState, RoleRecord, UserRecord};
use cairn_storage::{
    AuthResponse, BatchOutcome, Command, CommandResponse, Compare, PermType, RequestOp, Store, TxnRequest,
};
use rand::Rng;
use tonic::metadata::MetadataMap;
use tonic::Status;

use crate::status;

/// gRPC metadata keys that carry the token (etcd's `TokenFieldNameGRPC` and, from the JSON
/// gateway, `TokenFieldNameSwagger`).
const TOKEN_KEYS: [&str; 2] = ["token", "authorization"];

/// Letters of a simple token's random part, and its length (etcd's `defaultSimpleTokenLength`).
const TOKEN_LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
const TOKEN_PREFIX_LEN: usize = 16;

/// An authenticated caller: the user its token names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthInfo {
    pub user: String,
}

/// A key range as etcd's interval tree holds it: `[begin, end)`, `end = None` unbounded.
#[derive(Clone, Debug)]
struct Interval {
    begin: Vec<u8>,
    end: Option<Vec<u8>>,
}

/// `a < b` where `None` is +infinity.
fn end_lt(a: &Option<Vec<u8>>, b: &Option<Vec<u8>>) -> bool {
    match (a, b) {
        (_, None) => a.is_some(),
        (None, Some(_)) => false,
        (Some(x), Some(y)) => x < y,
    }
}

impl Interval {
    /// A permission's or a request's range, in etcd's reading: empty end = the key alone,
    /// `[0]` = from the key on.
    fn of(key: &[u8], range_end: &[u8]) -> Interval {
        if range_end.is_empty() {
            let mut end = key.to_vec();
            end.push(0);
            Interval { begin: key.to_vec(), end: Some(end) }
        } else if range_end == [0] {
            Interval { begin: key.to_vec(), end: None }
        } else {
            Interval { begin: key.to_vec(), end: Some(range_end.to_vec()) }
        }
    }

    fn overlaps(&self, other: &Interval) -> bool {
        let begin_before_other_end = other.end.as_ref().is_none_or(|e| self.begin.as_slice() < e.as_slice());
        let other_begins_before_end = self.end.as_ref().is_none_or(|e| other.begin.as_slice() < e.as_slice());
        begin_before_other_end && other_begins_before_end
    }
}

/// A user's permissions, merged over its roles (etcd's `unifiedRangePermissions`), each
/// list sorted by begin.
#[derive(Debug, Default)]
struct Merged {
    read: Vec<Interval>,
    write: Vec<Interval>,
}

/// etcd's `intervalTree.Contains`: the intervals that overlap `want`, visited by begin,
/// leave no gap and cover it from its begin to its end.
fn covers(perms: &[Interval], want: &Interval) -> bool {
    let mut min_begin: Option<&[u8]> = None;
    let mut max_end: Option<Vec<u8>> = Some(Vec::new());
    for p in perms.iter().filter(|p| p.overlaps(want)) {
        match min_begin {
            None => {
                min_begin = Some(&p.begin);
                max_end = p.end.clone();
            }
            Some(_) => {
                if end_lt(&max_end, &Some(p.begin.clone())) {
                    return false;
                }
                if end_lt(&max_end, &p.end) {
                    max_end = p.end.clone();
                }
            }
        }
    }
    match min_begin {
        None => false,
        Some(b) => b <= want.begin.as_slice() && !end_lt(&max_end, &want.end),
    }
}

impl Merged {
    fn of(user: &UserRecord, roles: &BTreeMap<String, RoleRecord>) -> Merged {
        let mut m = Merged::default();
        for r in user.roles.iter().filter_map(|name| roles.get(name)) {
            for p in &r.perms {
                let ivl = Interval::of(&p.key, &p.range_end);
                match p.perm_type {
                    PermType::Read => m.read.push(ivl),
                    PermType::Write => m.write.push(ivl),
                    PermType::ReadWrite => {
                        m.read.push(ivl.clone());
                        m.write.push(ivl);
                    }
                }
            }
        }
        m.read.sort_by(|a, b| a.begin.cmp(&b.begin));
        m.write.sort_by(|a, b| a.begin.cmp(&b.begin));
        m
    }

    /// etcd's `isRangeOpPermitted`: a single key must lie in one permission, a range must
    /// be covered by their union.
    fn permits(&self, key: &[u8], range_end: &[u8], need: Need) -> bool {
        let perms = match need {
            Need::Read => &self.read,
            Need::Write => &self.write,
        };
        if range_end.is_empty() {
            perms.iter().any(|p| p.begin.as_slice() <= key && p.end.as_ref().is_none_or(|e| key < e.as_slice()))
        } else {
            covers(perms, &Interval::of(key, range_end))
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Need {
    Read,
    Write,
}

/// The auth store as of one auth revision, with a per-user cache of merged permissions.
#[derive(Debug, Default)]
pub struct AuthView {
    pub enabled: bool,
    pub revision: u64,
    pub users: BTreeMap<String, UserRecord>,
    pub roles: BTreeMap<String, RoleRecord>,
    merged: Mutex<HashMap<String, Arc<Merged>>>,
}

impl AuthView {
    pub fn new(st: AuthState) -> AuthView {
        AuthView {
            enabled: st.enabled,
            revision: st.revision,
            users: st.users.into_iter().map(|u| (u.name.clone(), u)).collect(),
            roles: st.roles.into_iter().map(|r| (r.name.clone(), r)).collect(),
            merged: Mutex::new(HashMap::new()),
        }
    }

    fn merged(&self, user: &UserRecord) -> Arc<Merged> {
        let mut cache = self.merged.lock().expect("permission cache lock poisoned");
        cache.entry(user.name.clone()).or_insert_with(|| Arc::new(Merged::of(user, &self.roles))).clone()
    }

    /// etcd's `isOpPermitted`.
    fn op_permitted(&self, who: Option<&AuthInfo>, key: &[u8], range_end: &[u8], need: Need) -> Result<(), Status> {
        if !self.enabled {
            return Ok(());
        }
        let Some(who) = who else { return Err(EtcdError::UserEmpty.status()) };
        let Some(user) = self.users.get(&who.user) else { return Err(EtcdError::PermissionDenied.status()) };
        if user.has_root_role() || self.merged(user).permits(key, range_end, need) {
            Ok(())
        } else {
            Err(EtcdError::PermissionDenied.status())
        }
    }

    pub fn read_permitted(&self, who: Option<&AuthInfo>, key: &[u8], range_end: &[u8]) -> Result<(), Status> {
        self.op_permitted(who, key, range_end, Need::Read)
    }

    pub fn write_permitted(&self, who: Option<&AuthInfo>, key: &[u8], range_end: &[u8]) -> Result<(), Status> {
        self.op_permitted(who, key, range_end, Need::Write)
    }

    /// etcd's `IsAdminPermitted`: the caller must hold role root.
    pub fn admin_permitted(&self, who: Option<&AuthInfo>) -> Result<(), Status> {
        if !self.enabled {
            return Ok(());
        }
        let Some(who) = who.filter(|w| !w.user.is_empty()) else { return Err(EtcdError::UserEmpty.status()) };
        match self.users.get(&who.user) {
            None => Err(EtcdError::UserNotFound.status()),
            Some(u) if !u.has_root_role() => Err(EtcdError::PermissionDenied.status()),
            Some(_) => Ok(()),
        }
    }

    /// etcd's `UserHasRole`.
    pub fn user_has_role(&self, who: Option<&AuthInfo>, role: &str) -> bool {
        who.and_then(|w| self.users.get(&w.user)).is_some_and(|u| u.roles.iter().any(|r| r == role))
    }

    /// etcd's `checkTxnAuth`: every compare needs read, every op of both branches its
    /// permission (nested txns too: etcd 3.5 skips them, which lets a nested op escape
    /// every check; Cairn checks them).
    fn txn_permitted(&self, who: Option<&AuthInfo>, t: &TxnRequest) -> Result<(), Status> {
        for Compare { key, range_end, .. } in &t.compare {
            self.read_permitted(who, key, range_end)?;
        }
        for op in t.success.iter().chain(t.failure.iter()) {
            match op {
                RequestOp::Range(r) => self.read_permitted(who, &r.key, &r.range_end)?,
                RequestOp::Put(p) => self.write_permitted(who, &p.key, &[])?,
                RequestOp::DeleteRange(d) => {
                    if d.prev_kv {
                        self.read_permitted(who, &d.key, &d.range_end)?;
                    }
                    self.write_permitted(who, &d.key, &d.range_end)?;
                }
                RequestOp::Txn(inner) => self.txn_permitted(who, inner)?,
            }
        }
        Ok(())
    }

    /// etcd's `checkLeasePuts`: the caller must be able to write every key attached to the
    /// lease (it could otherwise delete them by revoking it, or by attaching more keys).
    fn lease_keys_permitted(&self, who: Option<&AuthInfo>, store: &Store, lease: i64) -> Result<(), Status> {
        if lease == 0 {
            return Ok(());
        }
        if let Some(info) = store.lease(lease, true).map_err(|e| status::store_error(&e))? {
            for k in &info.keys {
                self.write_permitted(who, k, &[])?;
            }
        }
        Ok(())
    }
}

struct TokenEntry {
    user: String,
    deadline: Instant,
}

/// The simple-token table.
struct Tokens {
    by_token: HashMap<String, TokenEntry>,
    last_sweep: Instant,
}

/// The server's auth state: the current view and the tokens.
pub struct Authz {
    view: RwLock<Arc<AuthView>>,
    tokens: Mutex<Tokens>,
    token_ttl: Duration,
    /// etcd's `--bcrypt-cost`.
    pub bcrypt_cost: u32,
}

impl Authz {
    pub fn new(st: AuthState, token_ttl: Duration, bcrypt_cost: u32) -> Authz {
        Authz {
            view: RwLock::new(Arc::new(AuthView::new(st))),
            tokens: Mutex::new(Tokens { by_token: HashMap::new(), last_sweep: Instant::now() }),
            token_ttl,
            bcrypt_cost,
        }
    }

    /// The current view.
    pub fn view(&self) -> Arc<AuthView> {
        self.view.read().expect("auth view lock poisoned").clone()
    }

    /// Called after every applied batch: takes up the tokens it assigned or revoked and, if
    /// it held an auth command, rebuilds the view from the store.
    pub fn on_applied(&self, outcome: &BatchOutcome, store: &Store) {
        let mut changed = false;
        for applied in outcome.applied.iter().flatten() {
            let Ok(CommandResponse::Auth(r)) = &applied.result else { continue };
            let now = Instant::now();
            let mut tokens = self.tokens.lock().expect("token lock poisoned");
            match r {
                AuthResponse::Token { name, token } => {
                    tokens
                        .by_token
                        .insert(token.clone(), TokenEntry { user: name.clone(), deadline: now + self.token_ttl });
                    if now.duration_since(tokens.last_sweep) >= Duration::from_secs(1) {
                        tokens.by_token.retain(|_, e| e.deadline > now);
                        tokens.last_sweep = now;
                    }
                }
                AuthResponse::UserTokensRevoked { name } => {
                    tokens.by_token.retain(|_, e| &e.user != name);
                    changed = true;
                }
                AuthResponse::Disabled => {
                    tokens.by_token.clear();
                    changed = true;
                }
                AuthResponse::Ok => changed = true,
            }
        }
        if changed {
            self.reload(store);
        }
    }

    /// Rebuilds the view from the store (after start, auth changes, a snapshot install).
    /// Forgets every token (a snapshot from the leader replaced the auth store: tokens of
    /// users changed or deleted in between must not stay valid here). Clients re-authenticate.
    pub fn drop_tokens(&self) {
        self.tokens.lock().expect("token lock poisoned").by_token.clear();
    }

    pub fn reload(&self, store: &Store) {
        match store.auth_state() {
            Ok(st) => *self.view.write().expect("auth view lock poisoned") = Arc::new(AuthView::new(st)),
            // The store failed: apply stops too; keep the last view.
            Err(e) => tracing::error!(error = %e, "cannot read the auth store"),
        }
    }

    /// A fresh token prefix (etcd's `GenTokenPrefix`).
    pub fn token_prefix() -> String {
        let mut rng = rand::thread_rng();
        (0..TOKEN_PREFIX_LEN).map(|_| TOKEN_LETTERS[rng.gen_range(0..TOKEN_LETTERS.len())] as char).collect()
    }

    /// etcd's `AuthInfoFromCtx`: the caller named by the request's token, `None` without a
    /// token; an unknown or expired token is "invalid auth token". A use restarts the TTL.
    pub fn identify(&self, md: &MetadataMap) -> Result<Option<AuthInfo>, Status> {
        let Some(v) = TOKEN_KEYS.iter().find_map(|k| md.get(*k)) else { return Ok(None) };
        let token = v.to_str().map_err(|_| EtcdError::InvalidAuthToken.status())?;
        let now = Instant::now();
        let mut tokens = self.tokens.lock().expect("token lock poisoned");
        match tokens.by_token.get_mut(token) {
            Some(e) if e.deadline > now => {
                e.deadline = now + self.token_ttl;
                Ok(Some(AuthInfo { user: e.user.clone() }))
            }
            Some(_) => {
                tokens.by_token.remove(token);
                Err(EtcdError::InvalidAuthToken.status())
            }
            None => Err(EtcdError::InvalidAuthToken.status()),
        }
    }

    /// The caller and the view its request is checked against.
    pub fn caller(&self, md: &MetadataMap) -> Result<(Arc<AuthView>, Option<AuthInfo>), Status> {
        let who = self.identify(md)?;
        Ok((self.view(), who))
    }

    /// Range: read permission on the range.
    pub fn check_range(&self, md: &MetadataMap, key: &[u8], range_end: &[u8]) -> Result<(), Status> {
        let (view, who) = self.caller(md)?;
        view.read_permitted(who.as_ref(), key, range_end)
    }

    /// A read-only Txn: read permission on every compare and range of both branches, as
    /// for a Txn proposed through raft.
    pub fn check_txn(&self, md: &MetadataMap, txn: &cairn_storage::TxnRequest) -> Result<(), Status> {
        let (view, who) = self.caller(md)?;
        if !view.enabled {
            return Ok(());
        }
        view.txn_permitted(who.as_ref(), txn)
    }

    /// Checks a write as etcd's auth applier does and returns the command to propose
    /// (wrapped with the auth revision it was checked at while auth is enabled).
    pub fn authorize(&self, md: &MetadataMap, store: &Store, cmd: Command) -> Result<Command, Status> {
        let (view, who) = self.caller(md)?;
        if matches!(cmd, Command::AuthChecked { .. } | Command::Alarm { .. }) {
            return Ok(cmd);
        }
        if !view.enabled {
            // Revision 0 marks "checked while disabled": if AuthEnable applies first, apply
            // refuses the write as etcd does (user name is empty) instead of letting it in.
            return Ok(Command::AuthChecked { auth_revision: 0, command: Box::new(cmd) });
        }
        let who = who.as_ref();
        match &cmd {
            Command::Put(p) => {
                view.write_permitted(who, &p.key, &[])?;
                view.lease_keys_permitted(who, store, p.lease)?;
                if p.prev_kv {
                    view.read_permitted(who, &p.key, &[])?;
                }
            }
            Command::DeleteRange(d) => {
                view.write_permitted(who, &d.key, &d.range_end)?;
                if d.prev_kv {
                    view.read_permitted(who, &d.key, &d.range_end)?;
                }
            }
            Command::Txn(t) => view.txn_permitted(who, t)?,
            Command::LeaseRevoke { id } => view.lease_keys_permitted(who, store, *id)?,
            // etcd 3.5 checks no permission for these (a valid token or none will do).
            Command::Compact(_) | Command::LeaseGrant { .. } => {}
            Command::Auth(_) => view.admin_permitted(who)?,
            Command::AuthChecked { .. } => return Ok(cmd),
            // etcd checks no permission for alarms (only that a given token is valid).
            Command::Alarm { .. } => return Ok(cmd),
        }
        Ok(Command::AuthChecked { auth_revision: view.revision, command: Box::new(cmd) })
    }

    /// etcd's `isWatchPermitted`, on the request as etcd has normalised it by then: an empty
    /// key is `\0`, and a from-key range end `\0` becomes empty, so that a from-key watch
    /// needs read on its first key only (etcd 3.5's behaviour, kept for compatibility).
    pub fn watch_permitted(&self, md: &MetadataMap, key: &[u8], range_end: &[u8]) -> bool {
        let Ok((view, who)) = self.caller(md) else { return false };
        let key: &[u8] = if key.is_empty() { &[0] } else { key };
        let range_end: &[u8] = if range_end == [0] { &[] } else { range_end };
        view.read_permitted(who.as_ref(), key, range_end).is_ok()
    }

    /// LeaseTimeToLive (etcd 3.5.9+'s `checkLeaseTimeToLive`, a security fix over 3.5.1):
    /// with auth enabled the caller must be able to read every key of the lease.
    pub fn check_lease_keys_readable(&self, md: &MetadataMap, keys: &[Vec<u8>]) -> Result<(), Status> {
        let (view, who) = self.caller(md)?;
        if !view.enabled {
            return Ok(());
        }
        let who = who.ok_or_else(|| EtcdError::UserEmpty.status())?;
        for k in keys {
            view.read_permitted(Some(&who), k, &[])?;
        }
        Ok(())
    }

    /// An RPC that only root may call while auth is enabled (etcd's `IsAdminPermitted`;
    /// with auth disabled it checks only that a token, if any, is valid).
    pub fn check_admin(&self, md: &MetadataMap) -> Result<(), Status> {
        let (view, who) = self.caller(md)?;
        view.admin_permitted(who.as_ref())
    }

    /// [`Authz::check_admin`] as etcd 3.5's Maintenance service answers it (Hash, HashKV,
    /// Defragment, Snapshot): the auth package's error untranslated, code Unknown, e.g.
    /// "auth: permission denied" (checked against etcd 3.5.1).
    pub fn check_admin_untranslated(&self, md: &MetadataMap) -> Result<(), Status> {
        self.check_admin(md).map_err(|s| {
            let text = match EtcdError::from_message(s.message()) {
                Some(EtcdError::InvalidAuthToken) => "auth: invalid auth token",
                Some(EtcdError::UserEmpty) => "auth: user name is empty",
                Some(EtcdError::UserNotFound) => "auth: user not found",
                Some(EtcdError::PermissionDenied) => "auth: permission denied",
                _ => return s,
            };
            Status::unknown(text)
        })
    }

    /// Only the token's validity (RPCs that etcd 3.5 lets every caller make).
    pub fn check_token(&self, md: &MetadataMap) -> Result<(), Status> {
        self.identify(md).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_storage::Permission;

    fn view(perms: &[(PermType, &[u8], &[u8])]) -> AuthView {
        let role = RoleRecord {
            name: "r".into(),
            perms: perms
                .iter()
                .map(|(t, k, e)| Permission { perm_type: *t, key: k.to_vec(), range_end: e.to_vec() })
                .collect(),
        };
        let alice = UserRecord { name: "alice".into(), password: vec![], roles: vec!["r".into()], no_password: false };
        let root = UserRecord { name: "root".into(), password: vec![], roles: vec!["root".into()], no_password: false };
        AuthView::new(AuthState { enabled: true, revision: 5, users: vec![alice, root], roles: vec![role] })
    }

    fn alice() -> Option<AuthInfo> {
        Some(AuthInfo { user: "alice".into() })
    }

    #[test]
    fn ranges_are_checked_as_etcd_does() {
        let v = view(&[
            (PermType::Read, b"a", b""),
            (PermType::ReadWrite, b"b", b"d"),
            (PermType::Read, b"d", b"f"),
            (PermType::Write, b"p/", b"p0"),
            (PermType::Read, b"z", &[0]),
        ]);
        let a = alice();
        let r = |k: &[u8], e: &[u8]| v.read_permitted(a.as_ref(), k, e).is_ok();
        let w = |k: &[u8], e: &[u8]| v.write_permitted(a.as_ref(), k, e).is_ok();
        assert!(r(b"a", b"") && !w(b"a", b""));
        assert!(!r(b"a", b"b"), "[a, b) is more than the key a");
        assert!(r(b"a", b"a\0"), "[a, a\\0) is the key a");
        assert!(r(b"b", b"f") && r(b"c", b"e"), "adjacent permissions cover a range together");
        assert!(!w(b"b", b"e"));
        assert!(!r(b"b", b"g"));
        assert!(w(b"p/x", b"") && w(b"p/", b"p0") && !r(b"p/x", b""));
        assert!(r(b"z", &[0]) && r(b"zz", b"") && r(b"zz", &[0]) && !r(b"y", &[0]));
        assert!(!r(b"x", b""));
        let denied = v.read_permitted(None, b"a", b"").expect_err("no user");
        assert_eq!(denied.message(), "etcdserver: user name is empty");
        let ghost = Some(AuthInfo { user: "ghost".into() });
        assert_eq!(
            v.read_permitted(ghost.as_ref(), b"a", b"").expect_err("ghost").code(),
            tonic::Code::PermissionDenied
        );
        let root = Some(AuthInfo { user: "root".into() });
        assert!(v.write_permitted(root.as_ref(), b"", &[0]).is_ok());
        assert!(v.admin_permitted(root.as_ref()).is_ok());
        assert_eq!(v.admin_permitted(a.as_ref()).expect_err("alice").code(), tonic::Code::PermissionDenied);
        assert_eq!(v.admin_permitted(ghost.as_ref()).expect_err("ghost").message(), "etcdserver: user name not found");
    }

    #[test]
    fn maintenance_admin_errors_are_untranslated() {
        let st = AuthState { enabled: true, revision: 2, users: vec![], roles: vec![] };
        let authz = Authz::new(st, Duration::from_secs(5), 4);
        let mut md = MetadataMap::new();
        let e = authz.check_admin_untranslated(&md).expect_err("no token");
        assert_eq!((e.code(), e.message()), (tonic::Code::Unknown, "auth: user name is empty"));
        md.insert("token", "nope.1".parse().expect("ascii"));
        let e = authz.check_admin_untranslated(&md).expect_err("bad token");
        assert_eq!((e.code(), e.message()), (tonic::Code::Unknown, "auth: invalid auth token"));
        let e = authz.check_admin(&md).expect_err("bad token");
        assert_eq!((e.code(), e.message()), (tonic::Code::Unauthenticated, "etcdserver: invalid auth token"));
    }

    #[test]
    fn token_prefix_is_sixteen_letters() {
        let p = Authz::token_prefix();
        assert_eq!(p.len(), 16);
        assert!(p.bytes().all(|b| b.is_ascii_alphabetic()));
    }
}
