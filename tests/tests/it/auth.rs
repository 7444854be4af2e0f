//! Auth end to end.
//!
//! - Differential over raw gRPC (tokens chosen per request): the same script against real
//!   etcd 3.5.1 and Cairn, every outcome (gRPC code and message, or the parts of the answer
//!   that do not depend on the server) compared: enable without root / without role root,
//!   wrong password, unknown and no-password users, already exists / not found / empty names,
//!   not granted role or permission, root protected while enabled, permission denied on
//!   range, put, delete, txn (compares and both branches), lease revoke and put with a
//!   lease, the canceled watch create, a revoke taking effect on the next request, deleted
//!   user's and expired tokens, the `authorization` header, tokens after AuthDisable.
//! - etcdctl 3.5.1: `user`, `role`, `auth` commands and `--user` get/put/del/txn/watch, run
//!   against both servers with the outputs compared.
//! - Restart: users, roles, permissions and the enabled flag survive a Cairn restart.

use std::time::Duration;

use cairn_proto::authpb;
use cairn_proto::etcdserverpb as pb;
use cairn_proto::etcdserverpb::auth_client::AuthClient;
use cairn_proto::etcdserverpb::kv_client::KvClient;
use cairn_proto::etcdserverpb::lease_client::LeaseClient;
use cairn_proto::etcdserverpb::watch_client::WatchClient;
use cairn_tests::harness::{etcdctl, etcdctl_with_stdin, subject_kind, Server, ServerKind};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

/// Cheap hashing keeps the script fast; both servers get the same flags.
const FLAGS: &[&str] = &["--bcrypt-cost", "4", "--auth-token-ttl", "2"];
/// Longer than `--auth-token-ttl` 2 s plus etcd's 1 s expiry resolution.
const PAST_TOKEN_TTL: Duration = Duration::from_millis(4500);

struct Conn {
    ch: Channel,
}

fn req<T>(m: T, token: Option<&str>) -> Request<T> {
    let mut r = Request::new(m);
    if let Some(t) = token {
        r.metadata_mut().insert("token", t.parse().expect("a token is ASCII"));
    }
    r
}

/// One outcome line: `ok <what>` or `<code>: <message>`.
fn out<T>(r: Result<Response<T>, Status>, show: impl FnOnce(T) -> String) -> String {
    match r {
        Ok(x) => format!("ok {}", show(x.into_inner())),
        Err(s) => format!("{:?}: {}", s.code(), s.message()),
    }
}

fn nothing<T>(_: T) -> String {
    String::new()
}

fn perm(t: authpb::permission::Type, key: &str, end: &[u8]) -> Option<authpb::Permission> {
    Some(authpb::Permission {
        perm_type: t as i32,
        key: key.as_bytes().to_vec().into(),
        range_end: end.to_vec().into(),
    })
}

impl Conn {
    async fn new(endpoint: &str) -> Conn {
        let ch = Channel::from_shared(format!("http://{endpoint}")).expect("uri").connect().await.expect("connect");
        Conn { ch }
    }
    fn auth(&self) -> AuthClient<Channel> {
        AuthClient::new(self.ch.clone())
    }
    fn kv(&self) -> KvClient<Channel> {
        KvClient::new(self.ch.clone())
    }

    async fn login(&self, name: &str, password: &str) -> Result<String, String> {
        let r =
            self.auth().authenticate(pb::AuthenticateRequest { name: name.into(), password: password.into() }).await;
        match r {
            Ok(r) => Ok(r.into_inner().token),
            Err(s) => Err(format!("{:?}: {}", s.code(), s.message())),
        }
    }

    async fn get(&self, key: &str, end: &[u8], token: Option<&str>) -> String {
        let r = pb::RangeRequest {
            key: key.as_bytes().to_vec().into(),
            range_end: end.to_vec().into(),
            ..Default::default()
        };
        out(self.kv().range(req(r, token)).await, |r| format!("count={}", r.count))
    }

    async fn put(&self, key: &str, lease: i64, token: Option<&str>) -> String {
        let r = pb::PutRequest { key: key.as_bytes().to_vec().into(), value: "v".into(), lease, ..Default::default() };
        out(self.kv().put(req(r, token)).await, nothing)
    }

    async fn del(&self, key: &str, prev_kv: bool, token: Option<&str>) -> String {
        let r = pb::DeleteRangeRequest { key: key.as_bytes().to_vec().into(), prev_kv, ..Default::default() };
        out(self.kv().delete_range(req(r, token)).await, |r| format!("deleted={}", r.deleted))
    }

    async fn txn(&self, compare_key: &str, success: Vec<pb::RequestOp>, token: Option<&str>) -> String {
        let c = pb::Compare {
            key: compare_key.as_bytes().to_vec().into(),
            target: pb::compare::CompareTarget::Version as i32,
            result: pb::compare::CompareResult::Greater as i32,
            target_union: Some(pb::compare::TargetUnion::Version(-1)),
            ..Default::default()
        };
        let r = pb::TxnRequest { compare: vec![c], success, failure: vec![] };
        out(self.kv().txn(req(r, token)).await, |r| format!("succeeded={}", r.succeeded))
    }

    /// The first response to one watch create on a new stream, without its header.
    async fn watch(&self, key: &str, end: &[u8], watch_id: i64, token: Option<&str>) -> String {
        let create = pb::WatchRequest {
            request_union: Some(pb::watch_request::RequestUnion::CreateRequest(pb::WatchCreateRequest {
                key: key.as_bytes().to_vec().into(),
                range_end: end.to_vec().into(),
                watch_id,
                ..Default::default()
            })),
        };
        let reqs = tokio_stream::StreamExt::chain(tokio_stream::iter(vec![create]), tokio_stream::pending());
        let r = WatchClient::new(self.ch.clone()).watch(req(reqs, token)).await;
        match r {
            Err(s) => format!("{:?}: {}", s.code(), s.message()),
            Ok(resp) => {
                let mut stream = resp.into_inner();
                match tokio::time::timeout(Duration::from_secs(5), stream.message()).await {
                    Err(_) => "no response within 5 s".into(),
                    Ok(Err(s)) => format!("{:?}: {}", s.code(), s.message()),
                    Ok(Ok(None)) => "stream ended".into(),
                    Ok(Ok(Some(w))) => format!(
                        "watch_id={} created={} canceled={} reason={:?} events={} has_header={}",
                        w.watch_id,
                        w.created,
                        w.canceled,
                        w.cancel_reason,
                        w.events.len(),
                        w.header.is_some()
                    ),
                }
            }
        }
    }
}

fn put_op(key: &str) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
            key: key.as_bytes().to_vec().into(),
            value: "t".into(),
            ..Default::default()
        })),
    }
}

fn get_op(key: &str) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(pb::request_op::Request::RequestRange(pb::RangeRequest {
            key: key.as_bytes().to_vec().into(),
            ..Default::default()
        })),
    }
}

/// The differential script; returns one line per step.
async fn auth_script(endpoint: &str) -> Vec<String> {
    use authpb::permission::Type::{Read, Readwrite, Write};
    let c = Conn::new(endpoint).await;
    let mut log: Vec<String> = Vec::new();
    let mut a = c.auth();
    macro_rules! step {
        ($label:expr, $e:expr) => {{
            let line = $e;
            log.push(format!("{}: {}", $label, line));
        }};
    }
    let status = |r: pb::AuthStatusResponse| format!("enabled={} rev={}", r.enabled, r.auth_revision);
    let add = |name: &str, pw: &str, no_password: bool| pb::AuthUserAddRequest {
        name: name.into(),
        password: pw.into(),
        options: Some(authpb::UserAddOptions { no_password }),
        ..Default::default()
    };
    let grant = |user: &str, role: &str| pb::AuthUserGrantRoleRequest { user: user.into(), role: role.into() };
    let grant_perm = |role: &str, p| pb::AuthRoleGrantPermissionRequest { name: role.into(), perm: p };

    step!("status fresh", out(a.auth_status(pb::AuthStatusRequest {}).await, status));
    step!("enable without root", out(a.auth_enable(pb::AuthEnableRequest {}).await, nothing));
    step!("authenticate while disabled", format!("{:?}", c.login("root", "x").await));
    step!("add root", out(a.user_add(add("root", "rootpw", false)).await, nothing));
    step!("add root again", out(a.user_add(add("root", "other", false)).await, nothing));
    step!("add empty name", out(a.user_add(add("", "x", false)).await, nothing));
    step!("enable without role root", out(a.auth_enable(pb::AuthEnableRequest {}).await, nothing));
    step!("role add empty", out(a.role_add(pb::AuthRoleAddRequest { name: "".into() }).await, nothing));
    step!("grant root before role exists", out(a.user_grant_role(grant("root", "root")).await, nothing));
    step!("role add root", out(a.role_add(pb::AuthRoleAddRequest { name: "root".into() }).await, nothing));
    step!("add alice", out(a.user_add(add("alice", "alicepw", false)).await, nothing));
    step!("add bob no password", out(a.user_add(add("bob", "", true)).await, nothing));
    step!("role add r", out(a.role_add(pb::AuthRoleAddRequest { name: "r".into() }).await, nothing));
    step!("role add r again", out(a.role_add(pb::AuthRoleAddRequest { name: "r".into() }).await, nothing));
    step!("grant read a", out(a.role_grant_permission(grant_perm("r", perm(Read, "a", b""))).await, nothing));
    step!("grant write p/", out(a.role_grant_permission(grant_perm("r", perm(Write, "p/", b"p0"))).await, nothing));
    step!("grant rw from z", out(a.role_grant_permission(grant_perm("r", perm(Readwrite, "z", &[0]))).await, nothing));
    step!(
        "grant rw a (update)",
        out(a.role_grant_permission(grant_perm("r", perm(Readwrite, "a", b""))).await, nothing)
    );
    step!("grant no perm", out(a.role_grant_permission(grant_perm("r", None)).await, nothing));
    step!(
        "grant perm to missing role",
        out(a.role_grant_permission(grant_perm("nosuch", perm(Read, "a", b""))).await, nothing)
    );
    step!("grant alice r", out(a.user_grant_role(grant("alice", "r")).await, nothing));
    step!("grant alice r again", out(a.user_grant_role(grant("alice", "r")).await, nothing));
    step!("grant alice missing role", out(a.user_grant_role(grant("alice", "nosuch")).await, nothing));
    step!("grant missing user", out(a.user_grant_role(grant("nobody", "r")).await, nothing));
    step!(
        "revoke role not granted",
        out(
            a.user_revoke_role(pb::AuthUserRevokeRoleRequest { name: "alice".into(), role: "root".into() }).await,
            nothing
        )
    );
    let revoke_perm = |role: &str, key: &str, end: &[u8]| pb::AuthRoleRevokePermissionRequest {
        role: role.into(),
        key: key.as_bytes().to_vec().into(),
        range_end: end.to_vec().into(),
    };
    step!("revoke perm not granted", out(a.role_revoke_permission(revoke_perm("r", "b", b"")).await, nothing));
    step!("revoke perm wrong end", out(a.role_revoke_permission(revoke_perm("r", "a", b"c")).await, nothing));
    step!("revoke perm missing role", out(a.role_revoke_permission(revoke_perm("nosuch", "a", b"")).await, nothing));
    step!("user get missing", out(a.user_get(pb::AuthUserGetRequest { name: "nobody".into() }).await, nothing));
    step!("role get missing", out(a.role_get(pb::AuthRoleGetRequest { role: "nosuch".into() }).await, nothing));
    step!(
        "user get alice",
        out(a.user_get(pb::AuthUserGetRequest { name: "alice".into() }).await, |r| format!("{:?}", r.roles))
    );
    step!(
        "role get r",
        out(a.role_get(pb::AuthRoleGetRequest { role: "r".into() }).await, |r| format!("{:?}", r.perm))
    );
    step!("user list", out(a.user_list(pb::AuthUserListRequest {}).await, |r| format!("{:?}", r.users)));
    step!("role list", out(a.role_list(pb::AuthRoleListRequest {}).await, |r| format!("{:?}", r.roles)));
    step!(
        "delete missing user",
        out(a.user_delete(pb::AuthUserDeleteRequest { name: "nobody".into() }).await, nothing)
    );
    step!(
        "delete missing role",
        out(a.role_delete(pb::AuthRoleDeleteRequest { role: "nosuch".into() }).await, nothing)
    );
    step!(
        "passwd missing user",
        out(
            a.user_change_password(pb::AuthUserChangePasswordRequest {
                name: "nobody".into(),
                password: "x".into(),
                ..Default::default()
            })
            .await,
            nothing
        )
    );
    step!("status before enable", out(a.auth_status(pb::AuthStatusRequest {}).await, status));
    step!("enable", out(a.auth_enable(pb::AuthEnableRequest {}).await, nothing));

    // Without a token.
    step!("anonymous get", c.get("a", b"", None).await);
    step!("anonymous put", c.put("a", 0, None).await);
    step!("anonymous status", out(c.auth().auth_status(pb::AuthStatusRequest {}).await, status));
    step!("anonymous user list", out(c.auth().user_list(pb::AuthUserListRequest {}).await, nothing));
    step!("anonymous enable", out(c.auth().auth_enable(pb::AuthEnableRequest {}).await, nothing));
    step!("anonymous watch", c.watch("a", b"", 0, None).await);

    // Authenticate.
    step!("wrong password", format!("{:?}", c.login("root", "nope").await.map(|_| ())));
    step!("unknown user", format!("{:?}", c.login("nobody", "x").await.map(|_| ())));
    step!("no-password user", format!("{:?}", c.login("bob", "").await.map(|_| ())));
    let root = c.login("root", "rootpw").await.expect("root logs in");
    let alice = c.login("alice", "alicepw").await.expect("alice logs in");
    let (prefix, index) = root.split_once('.').expect("simple token <prefix>.<index>");
    step!(
        "token shape",
        format!(
            "prefix16={} index_numeric={}",
            prefix.len() == 16 && prefix.bytes().all(|b| b.is_ascii_alphabetic()),
            index.parse::<u64>().is_ok()
        )
    );
    let (r, al) = (Some(root.as_str()), Some(alice.as_str()));
    step!("root status", out(c.auth().auth_status(req(pb::AuthStatusRequest {}, r)).await, status));
    step!("root enable again", out(c.auth().auth_enable(req(pb::AuthEnableRequest {}, r)).await, nothing));

    // Alice's permissions: read a (rw after the update), write p/*, rw z...
    step!("alice put a", c.put("a", 0, al).await);
    step!("alice get a", c.get("a", b"", al).await);
    step!("alice get [a, b)", c.get("a", b"b", al).await);
    step!("alice put p/x", c.put("p/x", 0, al).await);
    step!("alice get p/x", c.get("p/x", b"", al).await);
    step!("alice get from z", c.get("z", &[0], al).await);
    step!("alice get from y", c.get("y", &[0], al).await);
    step!("alice get zz..", c.get("zz", b"zzz", al).await);
    step!("alice put q", c.put("q", 0, al).await);
    step!("alice txn compare a put p/y", c.txn("a", vec![put_op("p/y")], al).await);
    step!("alice txn compare p/x", c.txn("p/x", vec![put_op("p/y")], al).await);
    step!("alice txn get p/x", c.txn("a", vec![get_op("p/x")], al).await);
    step!("alice txn put q", c.txn("a", vec![put_op("q")], al).await);
    step!("alice del p/x prev_kv", c.del("p/x", true, al).await);
    step!("alice del p/x", c.del("p/x", false, al).await);
    step!("alice status", out(c.auth().auth_status(req(pb::AuthStatusRequest {}, al)).await, status));
    step!(
        "alice user get self",
        out(c.auth().user_get(req(pb::AuthUserGetRequest { name: "alice".into() }, al)).await, |r| format!(
            "{:?}",
            r.roles
        ))
    );
    step!(
        "alice user get root",
        out(c.auth().user_get(req(pb::AuthUserGetRequest { name: "root".into() }, al)).await, nothing)
    );
    step!(
        "alice role get r",
        out(c.auth().role_get(req(pb::AuthRoleGetRequest { role: "r".into() }, al)).await, |r| r
            .perm
            .len()
            .to_string())
    );
    step!(
        "alice role get root",
        out(c.auth().role_get(req(pb::AuthRoleGetRequest { role: "root".into() }, al)).await, nothing)
    );
    step!("alice user list", out(c.auth().user_list(req(pb::AuthUserListRequest {}, al)).await, nothing));
    step!("alice user add", out(c.auth().user_add(req(add("eve", "x", false), al)).await, nothing));
    step!("alice disable", out(c.auth().auth_disable(req(pb::AuthDisableRequest {}, al)).await, nothing));
    step!(
        "alice passwd self",
        out(
            c.auth()
                .user_change_password(req(
                    pb::AuthUserChangePasswordRequest {
                        name: "alice".into(),
                        password: "n".into(),
                        ..Default::default()
                    },
                    al
                ))
                .await,
            nothing
        )
    );

    // Watch.
    step!("alice watch a", c.watch("a", b"", 0, al).await);
    step!("alice watch p/ prefix", c.watch("p/", b"p0", 0, al).await);
    step!("alice watch p/x id 7", c.watch("p/x", b"", 7, al).await);
    step!("alice watch from z", c.watch("z", &[0], 0, al).await);
    step!("alice watch from y", c.watch("y", &[0], 0, al).await);
    step!("alice watch from a (etcd checks the first key only)", c.watch("a", &[0], 0, al).await);
    step!("alice watch [a, c)", c.watch("a", b"c", 0, al).await);

    // Leases: a revoke or a put with a lease needs write on the lease's keys.
    let mut lease = LeaseClient::new(c.ch.clone());
    step!(
        "anonymous lease grant",
        out(lease.lease_grant(pb::LeaseGrantRequest { ttl: 100, id: 0x77 }).await, |r| r.id.to_string())
    );
    step!("root put secret with lease", c.put("secret", 0x77, r).await);
    step!("alice put p/l with the lease", c.put("p/l", 0x77, al).await);
    step!("alice lease revoke", out(lease.lease_revoke(req(pb::LeaseRevokeRequest { id: 0x77 }, al)).await, nothing));
    step!("anonymous lease revoke", out(lease.lease_revoke(pb::LeaseRevokeRequest { id: 0x77 }).await, nothing));
    step!("root lease revoke", out(lease.lease_revoke(req(pb::LeaseRevokeRequest { id: 0x77 }, r)).await, nothing));

    // Root stays root while enabled.
    step!(
        "delete root",
        out(c.auth().user_delete(req(pb::AuthUserDeleteRequest { name: "root".into() }, r)).await, nothing)
    );
    step!(
        "delete role root",
        out(c.auth().role_delete(req(pb::AuthRoleDeleteRequest { role: "root".into() }, r)).await, nothing)
    );
    step!(
        "revoke root from root",
        out(
            c.auth()
                .user_revoke_role(req(pb::AuthUserRevokeRoleRequest { name: "root".into(), role: "root".into() }, r))
                .await,
            nothing
        )
    );

    // A revoke takes effect on the next request (same token).
    step!("revoke p/", out(c.auth().role_revoke_permission(req(revoke_perm("r", "p/", b"p0"), r)).await, nothing));
    step!("alice put p/z after revoke", c.put("p/z", 0, al).await);
    step!(
        "revoke role r from alice",
        out(
            c.auth()
                .user_revoke_role(req(pb::AuthUserRevokeRoleRequest { name: "alice".into(), role: "r".into() }, r))
                .await,
            nothing
        )
    );
    step!("alice get a after role revoke", c.get("a", b"", al).await);
    step!(
        "delete role r",
        out(c.auth().role_delete(req(pb::AuthRoleDeleteRequest { role: "r".into() }, r)).await, nothing)
    );
    step!(
        "delete alice",
        out(c.auth().user_delete(req(pb::AuthUserDeleteRequest { name: "alice".into() }, r)).await, nothing)
    );
    step!("deleted alice's token", c.get("a", b"", al).await);
    step!("bogus token", c.get("a", b"", Some("abc")).await);
    step!("bogus token with index", c.get("a", b"", Some("abcdefghabcdefgh.1")).await);
    let mut with_authorization = Request::new(pb::RangeRequest { key: "a".into(), ..Default::default() });
    with_authorization.metadata_mut().insert("authorization", root.parse().expect("ascii"));
    step!("authorization header", out(c.kv().range(with_authorization).await, |r| format!("count={}", r.count)));
    step!("status after changes", out(c.auth().auth_status(req(pb::AuthStatusRequest {}, r)).await, status));

    // Disable: tokens are dropped.
    step!("disable", out(c.auth().auth_disable(req(pb::AuthDisableRequest {}, r)).await, nothing));
    step!("old root token after disable", c.get("a", b"", r).await);
    step!("anonymous get after disable", c.get("a", b"", None).await);
    step!("disable again", out(c.auth().auth_disable(pb::AuthDisableRequest {}).await, nothing));
    step!("status after disable", out(c.auth().auth_status(pb::AuthStatusRequest {}).await, status));

    // Expiry: a token unused for longer than --auth-token-ttl is invalid. (Waiting is the
    // only way: any poll would use the token and restart its TTL.)
    step!("enable again", out(c.auth().auth_enable(pb::AuthEnableRequest {}).await, nothing));
    let t = c.login("root", "rootpw").await.expect("root logs in");
    step!("fresh token", c.get("a", b"", Some(&t)).await);
    tokio::time::sleep(PAST_TOKEN_TTL).await;
    step!("expired token", c.get("a", b"", Some(&t)).await);
    let t2 = c.login("root", "rootpw").await.expect("root logs in");
    step!(
        "delete root while enabled (new token)",
        out(c.auth().user_delete(req(pb::AuthUserDeleteRequest { name: "root".into() }, Some(&t2))).await, nothing)
    );
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_errors_match_etcd() {
    let etcd = Server::start_with_args(ServerKind::Etcd, FLAGS).await;
    let cairn = Server::start_with_args(subject_kind(), FLAGS).await;
    let (e, c) = (etcd.endpoint(), cairn.endpoint());
    let (want, got) = tokio::join!(auth_script(&e), auth_script(&c));
    let mut diffs = Vec::new();
    for (w, g) in want.iter().zip(got.iter()) {
        if w != g {
            diffs.push(format!("etcd:  {w}\ncairn: {g}"));
        }
    }
    assert_eq!(want.len(), got.len());
    assert!(
        diffs.is_empty(),
        "{} differences:\n{}\n\nfull etcd log:\n{}",
        diffs.len(),
        diffs.join("\n"),
        want.join("\n")
    );
}

/// The lines of an etcdctl run that must match etcd's: stdout and the `Error:` lines.
fn ctl(endpoint: &str, args: &[&str], stdin: Option<&str>) -> String {
    let o = match stdin {
        Some(s) => etcdctl_with_stdin(endpoint, args, s),
        None => etcdctl(endpoint, args),
    };
    let errors: Vec<&str> = o.stderr.lines().filter(|l| l.starts_with("Error:")).collect();
    format!("$ etcdctl {}\n{}{}", args.join(" "), o.stdout, errors.join("\n"))
}

fn etcdctl_script(ep: &str) -> Vec<String> {
    let mut log = Vec::new();
    let mut run = |args: &[&str]| log.push(ctl(ep, args, None));
    run(&["auth", "status"]);
    run(&["auth", "enable"]);
    run(&["user", "add", "root:rootpw"]);
    run(&["user", "add", "alice:alicepw"]);
    run(&["user", "add", "bob", "--no-password"]);
    run(&["user", "add", "alice:x"]);
    run(&["role", "add", "root"]);
    run(&["user", "grant-role", "root", "root"]);
    run(&["role", "add", "r"]);
    run(&["role", "grant-permission", "r", "read", "a"]);
    run(&["role", "grant-permission", "--prefix", "r", "readwrite", "p/"]);
    run(&["role", "grant-permission", "--from-key", "r", "write", "z"]);
    run(&["role", "grant-permission", "r", "readwrite", "k1", "k3"]);
    run(&["role", "get", "r"]);
    run(&["role", "list"]);
    run(&["user", "grant-role", "alice", "r"]);
    run(&["user", "grant-role", "bob", "r"]);
    run(&["user", "revoke-role", "bob", "r"]);
    run(&["user", "revoke-role", "bob", "r"]);
    run(&["user", "get", "alice"]);
    run(&["user", "get", "alice", "--detail"]);
    run(&["user", "list"]);
    run(&["role", "revoke-permission", "r", "nope"]);
    run(&["role", "add", "tmp"]);
    run(&["role", "delete", "tmp"]);
    run(&["role", "delete", "tmp"]);
    run(&["user", "delete", "bob"]);
    run(&["user", "delete", "bob"]);
    run(&["auth", "enable"]);
    run(&["auth", "status"]);
    run(&["get", "a"]);
    let root = ["--user", "root:rootpw"];
    let alice = ["--user", "alice:alicepw"];
    let with =
        |u: &[&str; 2], rest: &[&str]| -> Vec<String> { u.iter().chain(rest.iter()).map(|s| s.to_string()).collect() };
    for args in [
        with(&root, &["auth", "status"]),
        with(&root, &["put", "a", "1"]),
        with(&alice, &["get", "a"]),
        with(&alice, &["put", "a", "2"]),
        with(&alice, &["put", "p/1", "x"]),
        with(&alice, &["get", "p/", "--prefix"]),
        with(&alice, &["get", "", "--prefix"]),
        with(&alice, &["put", "zz", "w"]),
        with(&alice, &["get", "zz"]),
        with(&alice, &["put", "k2", "v"]),
        with(&alice, &["get", "k1", "k3"]),
        with(&alice, &["del", "p/1"]),
        with(&alice, &["del", "a"]),
        with(&alice, &["user", "list"]),
        with(&alice, &["--user", "alice:wrong", "get", "a"]),
        with(&root, &["user", "passwd", "alice", "--interactive=false"]),
        with(&root, &["role", "revoke-permission", "r", "p/", "--prefix"]),
        with(&alice, &["put", "p/2", "x"]),
        with(&root, &["user", "revoke-role", "alice", "r"]),
        with(&alice, &["get", "a"]),
        with(&root, &["user", "delete", "root"]),
        with(&root, &["auth", "disable"]),
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let input = if args.contains(&"passwd") { Some("newpw\n") } else { None };
        log.push(ctl(ep, &args, input));
    }
    // The changed password: the old one fails, the new one works (auth is re-enabled).
    log.push(ctl(ep, &["auth", "enable"], None));
    log.push(ctl(ep, &["--user", "alice:alicepw", "get", "a"], None));
    log.push(ctl(ep, &["--user", "alice:newpw", "get", "a"], None));
    log.push(ctl(ep, &["--user", "root:rootpw", "txn"], Some("\nput a 3\n\nget a\n\n")));
    log.push(ctl(ep, &["--user", "root:rootpw", "role", "grant-permission", "r", "read", "a"], None));
    log.push(ctl(ep, &["--user", "root:rootpw", "user", "grant-role", "alice", "r"], None));
    log.push(ctl(ep, &["--user", "alice:newpw", "txn"], Some("\nget a\n\n\n")));
    log.push(ctl(ep, &["--user", "alice:newpw", "txn"], Some("\nput a 4\n\n\n")));
    log.push(ctl(ep, &["--user", "alice:newpw", "watch", "p/x"], None));
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_auth_matches_etcd() {
    let etcd = Server::start_with_args(ServerKind::Etcd, FLAGS).await;
    let cairn = Server::start_with_args(subject_kind(), FLAGS).await;
    let (e, c) = (etcd.endpoint(), cairn.endpoint());
    let (want, got) = tokio::join!(
        tokio::task::spawn_blocking(move || etcdctl_script(&e)),
        tokio::task::spawn_blocking(move || etcdctl_script(&c))
    );
    let (want, got) = (want.expect("etcd script"), got.expect("cairn script"));
    // Sanity on Cairn's own output, then the comparison.
    let joined = got.join("\n");
    assert!(joined.contains("Authentication Enabled"), "{joined}");
    assert!(joined.contains("etcdserver: permission denied"), "{joined}");
    for (w, g) in want.iter().zip(got.iter()) {
        assert_eq!(w, g, "etcdctl output differs (left etcd, right cairn)");
    }
    assert_eq!(want.len(), got.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_survives_restart() {
    let mut s = Server::start_with_args(subject_kind(), FLAGS).await;
    let ep = s.endpoint();
    let setup: &[&[&str]] = &[
        &["user", "add", "root:rootpw"],
        &["user", "add", "alice:alicepw"],
        &["role", "add", "root"],
        &["user", "grant-role", "root", "root"],
        &["role", "add", "r"],
        &["role", "grant-permission", "--prefix", "r", "readwrite", "p/"],
        &["user", "grant-role", "alice", "r"],
        &["auth", "enable"],
    ];
    for args in setup {
        etcdctl(&ep, args).ok();
    }
    etcdctl(&ep, &["--user", "alice:alicepw", "put", "p/1", "v"]).ok();
    let before = etcdctl(&ep, &["--user", "root:rootpw", "auth", "status"]).ok().to_string();
    s.restart().await;
    let ep = s.endpoint();
    assert_eq!(etcdctl(&ep, &["--user", "root:rootpw", "auth", "status"]).ok(), before);
    assert!(before.contains("Authentication Status: true"), "{before}");
    assert_eq!(etcdctl(&ep, &["--user", "alice:alicepw", "get", "p/1", "--print-value-only"]).ok(), "v\n");
    assert!(etcdctl(&ep, &["--user", "alice:alicepw", "put", "q", "v"])
        .err()
        .contains("etcdserver: permission denied"));
    assert!(etcdctl(&ep, &["get", "p/1"]).err().contains("etcdserver: user name is empty"));
    assert_eq!(etcdctl(&ep, &["--user", "root:rootpw", "user", "list"]).ok(), "alice\nroot\n");
    assert!(etcdctl(&ep, &["--user", "root:rootpw", "role", "get", "r"]).ok().contains("[p/, p0) (prefix p/)"));
    assert!(etcdctl(&ep, &["--user", "alice:wrong", "get", "p/1"])
        .err()
        .contains("etcdserver: authentication failed, invalid user ID or password"));
}

/// Lock and Election with auth on: etcd runs them through its in-process client with the
/// caller's token, so a user needs read on the name's prefix and write on its own key; the
/// answers (errors as code Unknown) must be etcd's.
async fn lock_election_script(endpoint: &str) -> Vec<String> {
    use authpb::permission::Type::{Read, Readwrite};
    use cairn_proto::v3electionpb::election_client::ElectionClient;
    use cairn_proto::v3electionpb::{CampaignRequest, LeaderRequest};
    use cairn_proto::v3lockpb::lock_client::LockClient;
    use cairn_proto::v3lockpb::LockRequest;
    let c = Conn::new(endpoint).await;
    let mut a = c.auth();
    let mut log = Vec::new();
    let add = |name: &str| pb::AuthUserAddRequest {
        name: name.into(),
        password: "pw".into(),
        options: Some(authpb::UserAddOptions { no_password: false }),
        ..Default::default()
    };
    for step in [
        a.user_add(add("root")).await.map(|_| ()),
        a.user_grant_role(pb::AuthUserGrantRoleRequest { user: "root".into(), role: "root".into() }).await.map(|_| ()),
        a.user_add(add("alice")).await.map(|_| ()),
        a.role_add(pb::AuthRoleAddRequest { name: "locker".into() }).await.map(|_| ()),
        a.role_grant_permission(pb::AuthRoleGrantPermissionRequest {
            name: "locker".into(),
            perm: perm(Readwrite, "ok/", b"ok0"),
        })
        .await
        .map(|_| ()),
        a.role_grant_permission(pb::AuthRoleGrantPermissionRequest {
            name: "locker".into(),
            perm: perm(Read, "ro/", b"ro0"),
        })
        .await
        .map(|_| ()),
        a.user_grant_role(pb::AuthUserGrantRoleRequest { user: "alice".into(), role: "locker".into() })
            .await
            .map(|_| ()),
        a.auth_enable(pb::AuthEnableRequest {}).await.map(|_| ()),
    ] {
        step.expect("auth setup");
    }
    let alice = c.login("alice", "pw").await.expect("alice logs in");
    let mut lock = LockClient::new(c.ch.clone());
    let mut elect = ElectionClient::new(c.ch.clone());
    for (name, token) in [
        ("ok/l", Some(alice.as_str())),
        ("ro/l", Some(alice.as_str())),
        ("no/l", Some(alice.as_str())),
        ("ok/l2", None),
    ] {
        let r = lock.lock(req(LockRequest { name: name.as_bytes().to_vec().into(), lease: 0 }, token)).await;
        log.push(format!("lock {name} as {}: {}", token.map_or("nobody", |_| "alice"), out(r, |_| String::new())));
    }
    for (key, token) in [("ok/l/1", Some(alice.as_str())), ("no/l/1", Some(alice.as_str())), ("ok/l/1", None)] {
        let r =
            lock.unlock(req(cairn_proto::v3lockpb::UnlockRequest { key: key.as_bytes().to_vec().into() }, token)).await;
        log.push(format!("unlock {key} as {}: {}", token.map_or("nobody", |_| "alice"), out(r, |_| String::new())));
    }
    for name in ["ok/e", "ro/e", "no/e"] {
        let r = elect
            .campaign(req(
                CampaignRequest { name: name.as_bytes().to_vec().into(), lease: 0, value: "v".into() },
                Some(&alice),
            ))
            .await;
        log.push(format!("campaign {name}: {}", out(r, |_| String::new())));
        let r = elect.leader(req(LeaderRequest { name: name.as_bytes().to_vec().into() }, Some(&alice))).await;
        log.push(format!("leader {name}: {}", out(r, |r| format!("{}", r.kv.is_some()))));
    }
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_and_election_check_permissions_as_etcd() {
    let etcd = Server::start_with_args(ServerKind::Etcd, FLAGS).await;
    let cairn = Server::start_with_args(subject_kind(), FLAGS).await;
    let (e, c) = (etcd.endpoint(), cairn.endpoint());
    let (want, got) = tokio::join!(lock_election_script(&e), lock_election_script(&c));
    assert_eq!(want, got, "etcd (left) and {} (right) differ", cairn.kind());
    assert!(want.iter().any(|l| l.starts_with("lock ok/l as alice: ok")), "{want:#?}");
    assert!(want.iter().any(|l| l.contains("permission denied")), "{want:#?}");
}
