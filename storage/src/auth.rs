//! etcd's auth store in the state machine: users, roles, the enabled flag and the auth
//! revision, changed only by replicated [`AuthCommand`]s.
//!
//! What lives where (as etcd 3.5 splits it):
//! - Here, applied in order on every member: the tables and etcd's checks of each change
//!   (`authStore.UserAdd`, `RoleGrantPermission`, ...). Passwords arrive bcrypt-hashed: the
//!   server hashes before proposing, so apply is deterministic and cheap.
//! - In the server: password checks (bcrypt), the token table (simple tokens are assigned
//!   here, at apply, as `<prefix>.<raft index>`, and held by the server in memory), and the
//!   permission checks of each request against a cache of these tables.
//!
//! Invariants:
//! - The auth revision starts at 1 and grows by one with every change that etcd counts
//!   (every successful user/role change and AuthDisable; not AuthEnable, not a repeated
//!   grant of a role, not Authenticate), so a request checked at revision R can tell at
//!   apply whether anything changed since (`Command::AuthChecked`).
//! - A user's roles are sorted and unique; a role's permissions are sorted by key (stable:
//!   equal keys keep the order they were granted in) and no two have the same key and
//!   range end.
//! - While auth is enabled user `root` exists and holds role `root`: deleting it or revoking
//!   the role is refused ("invalid auth management").

use redb::{ReadableDatabase, ReadableTable, Table, WriteTransaction};

use crate::codec::{permission, read_permission, Reader, Writer};
use crate::error::{DecodeError, RequestError, StoreError};
use crate::schema::{AUTH_ENABLED, AUTH_META, AUTH_REVISION, AUTH_ROLES, AUTH_USERS};
use crate::store::{ApplyState, Store};
use crate::types::*;

/// etcd's name of the administrator user and role.
pub const ROOT: &str = "root";

/// Format version of encoded [`UserRecord`]s and [`RoleRecord`]s.
pub const AUTH_RECORD_VERSION: u8 = 1;

/// A user (etcd's `authpb.User`).
///
/// Layout: `u8 version | bytes name | bytes password | bool no_password | u32 n | n x bytes
/// role | u32 crc32(all before)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserRecord {
    pub name: String,
    /// The bcrypt hash (empty for a user added with `no_password`).
    pub password: Vec<u8>,
    /// Sorted, unique.
    pub roles: Vec<String>,
    /// etcd's `UserAddOptions.no_password`: the user cannot authenticate with a password.
    pub no_password: bool,
}

/// A role (etcd's `authpb.Role`).
///
/// Layout: `u8 version | bytes name | u32 n | n x permission | u32 crc32(all before)`, a
/// permission as in the command codec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleRecord {
    pub name: String,
    /// Sorted by key (stable).
    pub perms: Vec<Permission>,
}

fn seal(mut w: Writer) -> Vec<u8> {
    let crc = crc32fast::hash(&w.buf);
    w.u32(crc);
    w.buf
}

fn open<'a>(buf: &'a [u8], what: &str) -> Result<Reader<'a>, DecodeError> {
    if buf.len() < 5 {
        return Err(DecodeError(format!("{what} record too short")));
    }
    let (body, crc) = buf.split_at(buf.len() - 4);
    if crc32fast::hash(body) != u32::from_le_bytes(crc.try_into().expect("split at len-4")) {
        return Err(DecodeError(format!("{what} record checksum mismatch")));
    }
    let mut r = Reader::new(body);
    let v = r.u8()?;
    if v != AUTH_RECORD_VERSION {
        return Err(DecodeError(format!("{what} record version {v} unknown")));
    }
    Ok(r)
}

fn string(r: &mut Reader<'_>) -> Result<String, DecodeError> {
    String::from_utf8(r.vec()?).map_err(|_| DecodeError("auth name is not UTF-8".into()))
}

impl UserRecord {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u8(AUTH_RECORD_VERSION);
        w.bytes(self.name.as_bytes());
        w.bytes(&self.password);
        w.bool(self.no_password);
        w.u32(self.roles.len() as u32);
        for r in &self.roles {
            w.bytes(r.as_bytes());
        }
        seal(w)
    }

    pub fn decode(buf: &[u8]) -> Result<UserRecord, DecodeError> {
        let mut r = open(buf, "user")?;
        let name = string(&mut r)?;
        let password = r.vec()?;
        let no_password = r.bool()?;
        let n = r.u32()? as usize;
        if n > r.remaining() {
            return Err(DecodeError("role count exceeds record".into()));
        }
        let mut roles = Vec::with_capacity(n);
        for _ in 0..n {
            roles.push(string(&mut r)?);
        }
        r.finish()?;
        Ok(UserRecord { name, password, roles, no_password })
    }

    /// etcd's `hasRootRole`.
    pub fn has_root_role(&self) -> bool {
        self.roles.binary_search_by(|r| r.as_str().cmp(ROOT)).is_ok()
    }
}

impl RoleRecord {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u8(AUTH_RECORD_VERSION);
        w.bytes(self.name.as_bytes());
        w.u32(self.perms.len() as u32);
        for p in &self.perms {
            permission(&mut w, p);
        }
        seal(w)
    }

    pub fn decode(buf: &[u8]) -> Result<RoleRecord, DecodeError> {
        let mut r = open(buf, "role")?;
        let name = string(&mut r)?;
        let n = r.u32()? as usize;
        if n > r.remaining() {
            return Err(DecodeError("permission count exceeds record".into()));
        }
        let mut perms = Vec::with_capacity(n);
        for _ in 0..n {
            perms.push(read_permission(&mut r)?);
        }
        r.finish()?;
        Ok(RoleRecord { name, perms })
    }
}

/// The whole auth store as of one commit ([`Store::auth_state`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuthState {
    pub enabled: bool,
    pub revision: u64,
    /// In name order.
    pub users: Vec<UserRecord>,
    /// In name order.
    pub roles: Vec<RoleRecord>,
}

/// The auth tables of one apply transaction.
pub(crate) struct AuthTables<'t> {
    users: Table<'t, &'static str, &'static [u8]>,
    roles: Table<'t, &'static str, &'static [u8]>,
    meta: Table<'t, &'static str, u64>,
}

impl<'t> AuthTables<'t> {
    pub(crate) fn open(wtx: &'t WriteTransaction) -> Result<AuthTables<'t>, StoreError> {
        Ok(AuthTables {
            users: wtx.open_table(AUTH_USERS)?,
            roles: wtx.open_table(AUTH_ROLES)?,
            meta: wtx.open_table(AUTH_META)?,
        })
    }

    /// The auth revision (1 in a store that has never seen an auth change).
    pub(crate) fn revision(&self) -> Result<u64, StoreError> {
        Ok(self.meta.get(AUTH_REVISION)?.map_or(1, |v| v.value()))
    }

    pub(crate) fn enabled(&self) -> Result<bool, StoreError> {
        Ok(self.meta.get(AUTH_ENABLED)?.is_some_and(|v| v.value() == 1))
    }

    fn bump(&mut self) -> Result<(), StoreError> {
        let r = self.revision()?;
        self.meta.insert(AUTH_REVISION, r + 1)?;
        Ok(())
    }

    fn user(&self, name: &str) -> Result<Option<UserRecord>, StoreError> {
        match self.users.get(name)? {
            None => Ok(None),
            Some(v) => {
                let u = UserRecord::decode(v.value())?;
                if u.name != name {
                    return Err(StoreError::Corrupt { what: format!("user row {name:?} holds user {:?}", u.name) });
                }
                Ok(Some(u))
            }
        }
    }

    fn put_user(&mut self, u: &UserRecord) -> Result<(), StoreError> {
        debug_assert!(u.roles.windows(2).all(|w| w[0] < w[1]), "roles of {:?} sorted and unique", u.name);
        self.users.insert(u.name.as_str(), u.encode().as_slice())?;
        Ok(())
    }

    fn role(&self, name: &str) -> Result<Option<RoleRecord>, StoreError> {
        match self.roles.get(name)? {
            None => Ok(None),
            Some(v) => {
                let r = RoleRecord::decode(v.value())?;
                if r.name != name {
                    return Err(StoreError::Corrupt { what: format!("role row {name:?} holds role {:?}", r.name) });
                }
                Ok(Some(r))
            }
        }
    }

    fn put_role(&mut self, r: &RoleRecord) -> Result<(), StoreError> {
        debug_assert!(r.perms.windows(2).all(|w| w[0].key <= w[1].key), "permissions of {:?} sorted", r.name);
        self.roles.insert(r.name.as_str(), r.encode().as_slice())?;
        Ok(())
    }
}

type Outcome = Result<Result<CommandResponse, RequestError>, StoreError>;

fn ok(r: AuthResponse) -> Outcome {
    Ok(Ok(CommandResponse::Auth(r)))
}

fn fail(e: RequestError) -> Outcome {
    Ok(Err(e))
}

/// Applies one auth command with etcd 3.5's checks, in etcd's order. Every error is found
/// before the first write.
pub(crate) fn apply(a: &mut AuthTables<'_>, st: &ApplyState, cmd: &AuthCommand) -> Outcome {
    match cmd {
        AuthCommand::Enable => {
            if a.enabled()? {
                return ok(AuthResponse::Ok);
            }
            match a.user(ROOT)? {
                None => return fail(RequestError::RootUserNotExist),
                Some(u) if !u.has_root_role() => return fail(RequestError::RootRoleNotExist),
                Some(_) => {}
            }
            // etcd 3.5 does not move the auth revision on enable (checked against 3.5.1).
            a.meta.insert(AUTH_ENABLED, 1)?;
            ok(AuthResponse::Ok)
        }
        AuthCommand::Disable => {
            if !a.enabled()? {
                return ok(AuthResponse::Ok);
            }
            a.meta.insert(AUTH_ENABLED, 0)?;
            a.bump()?;
            ok(AuthResponse::Disabled)
        }
        AuthCommand::Authenticate { name, token_prefix } => {
            if !a.enabled()? {
                return fail(RequestError::AuthNotEnabled);
            }
            match a.user(name)? {
                Some(u) if !u.no_password => {}
                _ => return fail(RequestError::AuthFailed),
            }
            ok(AuthResponse::Token { name: name.clone(), token: format!("{token_prefix}.{}", st.index()) })
        }
        AuthCommand::UserAdd { name, password_hash, no_password } => {
            if name.is_empty() {
                return fail(RequestError::UserEmpty);
            }
            if a.user(name)?.is_some() {
                return fail(RequestError::UserAlreadyExist);
            }
            let password = if *no_password { Vec::new() } else { password_hash.clone() };
            a.put_user(&UserRecord { name: name.clone(), password, roles: Vec::new(), no_password: *no_password })?;
            a.bump()?;
            ok(AuthResponse::Ok)
        }
        AuthCommand::UserDelete { name } => {
            if a.enabled()? && name == ROOT {
                return fail(RequestError::InvalidAuthMgmt);
            }
            if a.user(name)?.is_none() {
                return fail(RequestError::UserNotFound);
            }
            a.users.remove(name.as_str())?;
            a.bump()?;
            ok(AuthResponse::UserTokensRevoked { name: name.clone() })
        }
        AuthCommand::UserChangePassword { name, password_hash } => {
            let Some(mut u) = a.user(name)? else { return fail(RequestError::UserNotFound) };
            // etcd keeps the user's options: a no-password user still cannot log in.
            u.password = password_hash.clone();
            a.put_user(&u)?;
            a.bump()?;
            ok(AuthResponse::UserTokensRevoked { name: name.clone() })
        }
        AuthCommand::UserGrantRole { user, role } => {
            let Some(mut u) = a.user(user)? else { return fail(RequestError::UserNotFound) };
            // etcd lets role root be granted before it is created.
            if role != ROOT && a.role(role)?.is_none() {
                return fail(RequestError::RoleNotFound);
            }
            match u.roles.binary_search(role) {
                Ok(_) => ok(AuthResponse::Ok),
                Err(i) => {
                    u.roles.insert(i, role.clone());
                    a.put_user(&u)?;
                    a.bump()?;
                    ok(AuthResponse::Ok)
                }
            }
        }
        AuthCommand::UserRevokeRole { name, role } => {
            if a.enabled()? && name == ROOT && role == ROOT {
                return fail(RequestError::InvalidAuthMgmt);
            }
            let Some(mut u) = a.user(name)? else { return fail(RequestError::UserNotFound) };
            let Ok(i) = u.roles.binary_search(role) else { return fail(RequestError::RoleNotGranted) };
            u.roles.remove(i);
            a.put_user(&u)?;
            a.bump()?;
            ok(AuthResponse::Ok)
        }
        AuthCommand::RoleAdd { name } => {
            if name.is_empty() {
                return fail(RequestError::RoleEmpty);
            }
            if a.role(name)?.is_some() {
                return fail(RequestError::RoleAlreadyExist);
            }
            a.put_role(&RoleRecord { name: name.clone(), perms: Vec::new() })?;
            a.bump()?;
            ok(AuthResponse::Ok)
        }
        AuthCommand::RoleDelete { role } => {
            if a.enabled()? && role == ROOT {
                return fail(RequestError::InvalidAuthMgmt);
            }
            if a.role(role)?.is_none() {
                return fail(RequestError::RoleNotFound);
            }
            a.roles.remove(role.as_str())?;
            // Every user loses the role (etcd walks all users too).
            let mut holders = Vec::new();
            for row in a.users.iter()? {
                let (_, v) = row?;
                let u = UserRecord::decode(v.value())?;
                if u.roles.binary_search(role).is_ok() {
                    holders.push(u);
                }
            }
            for mut u in holders {
                u.roles.retain(|r| r != role);
                a.put_user(&u)?;
            }
            a.bump()?;
            ok(AuthResponse::Ok)
        }
        AuthCommand::RoleGrantPermission { name, perm } => {
            let Some(mut r) = a.role(name)? else { return fail(RequestError::RoleNotFound) };
            match r.perms.iter_mut().find(|p| p.key == perm.key && p.range_end == perm.range_end) {
                Some(p) => p.perm_type = perm.perm_type,
                None => {
                    let at = r.perms.partition_point(|p| p.key <= perm.key);
                    r.perms.insert(at, perm.clone());
                }
            }
            a.put_role(&r)?;
            a.bump()?;
            ok(AuthResponse::Ok)
        }
        AuthCommand::RoleRevokePermission { role, key, range_end } => {
            let Some(mut r) = a.role(role)? else { return fail(RequestError::RoleNotFound) };
            let Some(i) = r.perms.iter().position(|p| &p.key == key && &p.range_end == range_end) else {
                return fail(RequestError::PermissionNotGranted);
            };
            r.perms.remove(i);
            a.put_role(&r)?;
            a.bump()?;
            ok(AuthResponse::Ok)
        }
    }
}

impl Store {
    /// The whole auth store as of the last commit: what the server's permission cache is
    /// built from (after start and after every applied auth command).
    pub fn auth_state(&self) -> Result<AuthState, StoreError> {
        let rtx = self.database().begin_read()?;
        let meta = rtx.open_table(AUTH_META)?;
        let mut st = AuthState {
            enabled: meta.get(AUTH_ENABLED)?.is_some_and(|v| v.value() == 1),
            revision: meta.get(AUTH_REVISION)?.map_or(1, |v| v.value()),
            users: Vec::new(),
            roles: Vec::new(),
        };
        for row in rtx.open_table(AUTH_USERS)?.iter()? {
            let (_, v) = row?;
            st.users.push(UserRecord::decode(v.value())?);
        }
        for row in rtx.open_table(AUTH_ROLES)?.iter()? {
            let (_, v) = row?;
            st.roles.push(RoleRecord::decode(v.value())?);
        }
        Ok(st)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_corruption() {
        let u = UserRecord {
            name: "alice".into(),
            password: b"$2b$10$abc".to_vec(),
            roles: vec!["a".into(), "root".into()],
            no_password: false,
        };
        let r = RoleRecord {
            name: "r".into(),
            perms: vec![
                Permission { perm_type: PermType::Read, key: b"a".to_vec(), range_end: vec![] },
                Permission { perm_type: PermType::ReadWrite, key: b"z".to_vec(), range_end: vec![0] },
            ],
        };
        let eu = u.encode();
        let er = r.encode();
        assert_eq!(UserRecord::decode(&eu), Ok(u.clone()));
        assert_eq!(RoleRecord::decode(&er), Ok(r));
        assert!(u.has_root_role());
        for enc in [&eu, &er] {
            for i in 0..enc.len() {
                let mut bad = enc.clone();
                bad[i] ^= 0x08;
                assert!(UserRecord::decode(&bad).is_err() && RoleRecord::decode(&bad).is_err(), "byte {i}");
            }
        }
    }

    use crate::store::{ApplyEntry, StoreOptions};

    struct Harness {
        _dir: tempfile::TempDir,
        store: Store,
        index: u64,
    }

    impl Harness {
        fn new() -> Harness {
            let dir = tempfile::tempdir().expect("temp dir");
            let store = Store::open(&dir.path().join("s.redb"), StoreOptions::default()).expect("open");
            Harness { _dir: dir, store, index: 0 }
        }
        fn run(&mut self, cmd: Command) -> Result<CommandResponse, RequestError> {
            self.index += 1;
            let out = self.store.apply_batch(&[ApplyEntry { index: self.index, command: Some(&cmd) }], &[], false);
            let applied = out.expect("apply").applied.pop().flatten().expect("an outcome");
            applied.result
        }
        fn auth(&mut self, a: AuthCommand) -> Result<CommandResponse, RequestError> {
            self.run(Command::Auth(a))
        }
        fn revision(&self) -> u64 {
            self.store.auth_state().expect("auth state").revision
        }
    }

    fn s(x: &str) -> String {
        x.to_string()
    }

    #[test]
    fn auth_changes_follow_etcd() {
        let mut h = Harness::new();
        assert_eq!(h.revision(), 1, "a fresh store is at auth revision 1");
        let done = Ok(CommandResponse::Auth(AuthResponse::Ok));
        assert_eq!(h.auth(AuthCommand::Enable), Err(RequestError::RootUserNotExist));
        let add = |n: &str| AuthCommand::UserAdd { name: s(n), password_hash: b"h".to_vec(), no_password: false };
        assert_eq!(h.auth(add("root")), done);
        assert_eq!(h.auth(add("root")), Err(RequestError::UserAlreadyExist));
        assert_eq!(h.auth(add("")), Err(RequestError::UserEmpty));
        assert_eq!(h.auth(AuthCommand::Enable), Err(RequestError::RootRoleNotExist));
        let grant = |u: &str, r: &str| AuthCommand::UserGrantRole { user: s(u), role: s(r) };
        assert_eq!(h.auth(grant("root", "nosuch")), Err(RequestError::RoleNotFound));
        assert_eq!(h.auth(grant("nobody", "root")), Err(RequestError::UserNotFound));
        assert_eq!(h.revision(), 2);
        assert_eq!(h.auth(grant("root", "root")), done, "role root may be granted before it exists");
        assert_eq!(h.revision(), 3);
        assert_eq!(h.auth(grant("root", "root")), done);
        assert_eq!(h.revision(), 3, "a repeated grant changes nothing");
        assert_eq!(
            h.auth(AuthCommand::Authenticate { name: s("root"), token_prefix: s("p") }),
            Err(RequestError::AuthNotEnabled)
        );
        assert_eq!(h.auth(AuthCommand::Enable), done);
        assert_eq!(h.revision(), 3, "enable does not move the auth revision (etcd 3.5.1)");
        let token = format!("abc.{}", h.index + 1);
        assert_eq!(
            h.auth(AuthCommand::Authenticate { name: s("root"), token_prefix: s("abc") }),
            Ok(CommandResponse::Auth(AuthResponse::Token { name: s("root"), token })),
            "the token is named after the raft index"
        );
        assert_eq!(h.auth(AuthCommand::UserDelete { name: s("root") }), Err(RequestError::InvalidAuthMgmt));
        assert_eq!(
            h.auth(AuthCommand::UserRevokeRole { name: s("root"), role: s("root") }),
            Err(RequestError::InvalidAuthMgmt)
        );
        assert_eq!(h.auth(AuthCommand::RoleDelete { role: s("root") }), Err(RequestError::InvalidAuthMgmt));
        h.auth(AuthCommand::UserAdd { name: s("bob"), password_hash: b"x".to_vec(), no_password: true })
            .expect("add bob");
        assert_eq!(
            h.auth(AuthCommand::Authenticate { name: s("bob"), token_prefix: s("p") }),
            Err(RequestError::AuthFailed)
        );
        assert_eq!(
            h.auth(AuthCommand::Authenticate { name: s("eve"), token_prefix: s("p") }),
            Err(RequestError::AuthFailed)
        );
        assert_eq!(h.auth(AuthCommand::RoleAdd { name: s("") }), Err(RequestError::RoleEmpty));
        assert_eq!(h.auth(AuthCommand::RoleAdd { name: s("r") }), done);
        assert_eq!(h.auth(AuthCommand::RoleAdd { name: s("r") }), Err(RequestError::RoleAlreadyExist));
        let perm = |t, k: &[u8], e: &[u8]| Permission { perm_type: t, key: k.to_vec(), range_end: e.to_vec() };
        for p in [perm(PermType::Read, b"b", b""), perm(PermType::Write, b"a", b"c"), perm(PermType::Read, b"a", b"")] {
            assert_eq!(h.auth(AuthCommand::RoleGrantPermission { name: s("r"), perm: p }), done);
        }
        assert_eq!(
            h.auth(AuthCommand::RoleGrantPermission { name: s("r"), perm: perm(PermType::ReadWrite, b"a", b"") }),
            done,
            "same key and range end: the type is updated"
        );
        let revoke = |k: &[u8], e: &[u8]| AuthCommand::RoleRevokePermission {
            role: s("r"),
            key: k.to_vec(),
            range_end: e.to_vec(),
        };
        assert_eq!(h.auth(revoke(b"b", b"c")), Err(RequestError::PermissionNotGranted));
        assert_eq!(h.auth(revoke(b"b", b"")), done);
        assert_eq!(h.auth(grant("bob", "r")), done);
        assert_eq!(
            h.auth(AuthCommand::UserRevokeRole { name: s("bob"), role: s("x") }),
            Err(RequestError::RoleNotGranted)
        );
        let st = h.store.auth_state().expect("state");
        assert_eq!(
            st.roles.iter().find(|r| r.name == "r").expect("role r").perms,
            vec![perm(PermType::Write, b"a", b"c"), perm(PermType::ReadWrite, b"a", b"")]
        );
        // A request checked at an older revision is refused at apply; at the current one it runs.
        let rev = h.revision();
        let put = Command::Put(PutRequest { key: b"k".to_vec(), value: b"v".to_vec(), ..Default::default() });
        assert_eq!(
            h.run(Command::AuthChecked { auth_revision: rev - 1, command: Box::new(put.clone()) }),
            Err(RequestError::AuthOldRevision)
        );
        assert!(h.run(Command::AuthChecked { auth_revision: rev, command: Box::new(put) }).is_ok());
        // Deleting a role takes it from every user.
        assert_eq!(h.auth(AuthCommand::RoleDelete { role: s("r") }), done);
        let st = h.store.auth_state().expect("state");
        assert!(st.users.iter().find(|u| u.name == "bob").expect("bob").roles.is_empty());
        assert_eq!(h.auth(AuthCommand::Disable), Ok(CommandResponse::Auth(AuthResponse::Disabled)));
        assert_eq!(h.revision(), rev + 2, "disable moves the auth revision");
        assert_eq!(h.auth(AuthCommand::Disable), done);
        assert_eq!(
            h.auth(AuthCommand::UserChangePassword { name: s("bob"), password_hash: b"n".to_vec() }),
            Ok(CommandResponse::Auth(AuthResponse::UserTokensRevoked { name: s("bob") }))
        );
        assert_eq!(
            h.auth(AuthCommand::UserDelete { name: s("root") }),
            Ok(CommandResponse::Auth(AuthResponse::UserTokensRevoked { name: s("root") }))
        );

        // Snapshots carry the auth tables.
        let before = h.store.auth_state().expect("state");
        let mut snap = Vec::new();
        h.store.export_snapshot(&mut snap).expect("export");
        let other = Harness::new();
        other.store.import_snapshot(snap.as_slice()).expect("import");
        assert_eq!(other.store.auth_state().expect("state"), before);
    }
}
