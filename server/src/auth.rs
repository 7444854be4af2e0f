//! The Auth service: users, roles, permissions, enable/disable, Authenticate.
//!
//! Changes go through raft as `Command::Auth` (checked for root at the API layer and wrapped
//! with the auth revision, see `authz`); passwords are bcrypt-hashed here, before proposing,
//! as etcd 3.5 does. Reads (UserGet, RoleList, AuthStatus, ...) are served from the auth
//! view after a linearizable barrier: the view is rebuilt before an apply is acknowledged.

use std::sync::Arc;

use cairn_proto::etcdserverpb as pb;
use cairn_proto::etcdserverpb::auth_server::Auth;
use cairn_proto::{authpb, rpctypes::EtcdError};
use cairn_storage::{AuthCommand, AuthResponse, Command, CommandResponse, PermType, Permission, RequestError};
use prost::Message;
use tonic::{Request, Response, Status};

use crate::authz::Authz;
use crate::context::Context;
use crate::status;

/// How often Authenticate retries when the auth store changed between the password check
/// and the token's apply (etcd retries without bound; a bound keeps a storm finite).
const AUTHENTICATE_ATTEMPTS: usize = 16;

/// etcd's answer to Authenticate for a user added with `--no-password`.
const NO_PASSWORD_USER: &str = "auth: authentication failed, password was given for no password user";

pub struct AuthService {
    pub ctx: Arc<Context>,
}

fn unexpected(what: &str) -> Status {
    Status::unknown(format!("internal error: unexpected response to {what}"))
}

fn blocking_failed(e: tokio::task::JoinError) -> Status {
    Status::unknown(format!("password hashing failed: {e}"))
}

impl AuthService {
    fn authz(&self) -> &Authz {
        &self.ctx.authz
    }

    /// Proposes an admin-only auth change for the caller of `md`; returns the header.
    async fn change(
        &self,
        md: &tonic::metadata::MetadataMap,
        cmd: AuthCommand,
        encoded_len: usize,
    ) -> Result<pb::ResponseHeader, Status> {
        let cmd = self.authz().authorize(md, self.ctx.node.store(), Command::Auth(cmd))?;
        let applied = self.ctx.propose(cmd, encoded_len).await?;
        match applied.result {
            Ok(CommandResponse::Auth(_)) => Ok(self.ctx.header(applied.revision)),
            Ok(_) => Err(unexpected("auth change")),
            Err(e) => Err(status::request_error(&e)),
        }
    }

    async fn hash(&self, password: String) -> Result<Vec<u8>, Status> {
        let cost = self.authz().bcrypt_cost;
        let hashed = tokio::task::spawn_blocking(move || bcrypt::hash(password, cost))
            .await
            .map_err(blocking_failed)?
            .map_err(|e| Status::unknown(format!("bcrypt: {e}")))?;
        Ok(hashed.into_bytes())
    }

    /// A linearizable read of the auth view.
    async fn read_view(&self) -> Result<Arc<crate::authz::AuthView>, Status> {
        self.ctx.linearizable_barrier().await?;
        Ok(self.authz().view())
    }

    fn header(&self) -> Option<pb::ResponseHeader> {
        Some(self.ctx.header(self.ctx.node.store().current_revision()))
    }
}

fn perm_type(t: i32) -> PermType {
    match authpb::permission::Type::try_from(t) {
        Ok(authpb::permission::Type::Write) => PermType::Write,
        Ok(authpb::permission::Type::Readwrite) => PermType::ReadWrite,
        // Unknown values read as READ, the zero value, as etcd's Go enum decoding does.
        _ => PermType::Read,
    }
}

fn wire_perm(p: &Permission) -> authpb::Permission {
    authpb::Permission {
        perm_type: match p.perm_type {
            PermType::Read => authpb::permission::Type::Read,
            PermType::Write => authpb::permission::Type::Write,
            PermType::ReadWrite => authpb::permission::Type::Readwrite,
        } as i32,
        key: p.key.clone().into(),
        range_end: p.range_end.clone().into(),
    }
}

#[tonic::async_trait]
impl Auth for AuthService {
    async fn auth_enable(&self, r: Request<pb::AuthEnableRequest>) -> Result<Response<pb::AuthEnableResponse>, Status> {
        let len = r.get_ref().encoded_len();
        let header = self.change(r.metadata(), AuthCommand::Enable, len).await?;
        Ok(Response::new(pb::AuthEnableResponse { header: Some(header) }))
    }

    async fn auth_disable(
        &self,
        r: Request<pb::AuthDisableRequest>,
    ) -> Result<Response<pb::AuthDisableResponse>, Status> {
        let len = r.get_ref().encoded_len();
        let header = self.change(r.metadata(), AuthCommand::Disable, len).await?;
        Ok(Response::new(pb::AuthDisableResponse { header: Some(header) }))
    }

    async fn auth_status(&self, r: Request<pb::AuthStatusRequest>) -> Result<Response<pb::AuthStatusResponse>, Status> {
        let who = self.authz().identify(r.metadata())?;
        let view = self.read_view().await?;
        view.admin_permitted(who.as_ref())?;
        Ok(Response::new(pb::AuthStatusResponse {
            header: self.header(),
            enabled: view.enabled,
            auth_revision: view.revision,
        }))
    }

    async fn authenticate(
        &self,
        r: Request<pb::AuthenticateRequest>,
    ) -> Result<Response<pb::AuthenticateResponse>, Status> {
        self.ctx.linearizable_barrier().await?;
        let len = r.get_ref().encoded_len();
        let req = r.into_inner();
        for _ in 0..AUTHENTICATE_ATTEMPTS {
            // etcd's CheckPassword, then the token's apply at the revision checked.
            let view = self.authz().view();
            if !view.enabled {
                return Err(EtcdError::AuthNotEnabled.status());
            }
            let hash = match view.users.get(&req.name) {
                // etcd's ErrNoPasswordUser is not in its gRPC table: code Unknown, Go text.
                Some(u) if u.no_password => return Err(Status::unknown(NO_PASSWORD_USER)),
                Some(u) => u.password.clone(),
                None => return Err(EtcdError::AuthFailed.status()),
            };
            let password = req.password.clone();
            let ok = tokio::task::spawn_blocking(move || {
                std::str::from_utf8(&hash).ok().is_some_and(|h| bcrypt::verify(password, h).unwrap_or(false))
            })
            .await
            .map_err(blocking_failed)?;
            if !ok {
                return Err(EtcdError::AuthFailed.status());
            }
            let cmd = Command::AuthChecked {
                auth_revision: view.revision,
                command: Box::new(Command::Auth(AuthCommand::Authenticate {
                    name: req.name.clone(),
                    token_prefix: Authz::token_prefix(),
                })),
            };
            let applied = self.ctx.propose(cmd, len).await?;
            match applied.result {
                Ok(CommandResponse::Auth(AuthResponse::Token { token, .. })) => {
                    return Ok(Response::new(pb::AuthenticateResponse {
                        header: Some(self.ctx.header(applied.revision)),
                        token,
                    }))
                }
                Ok(_) => return Err(unexpected("authenticate")),
                Err(RequestError::AuthOldRevision) => continue,
                Err(e) => return Err(status::request_error(&e)),
            }
        }
        Err(EtcdError::AuthOldRevision.status())
    }

    async fn user_add(&self, r: Request<pb::AuthUserAddRequest>) -> Result<Response<pb::AuthUserAddResponse>, Status> {
        let len = r.get_ref().encoded_len();
        // Admin first, so that a refused caller costs no bcrypt work.
        self.authz().check_admin(r.metadata())?;
        let no_password = r.get_ref().options.as_ref().is_some_and(|o| o.no_password);
        let password_hash = if no_password {
            Vec::new()
        } else if r.get_ref().password.is_empty() && !r.get_ref().hashed_password.is_empty() {
            r.get_ref().hashed_password.clone().into_bytes()
        } else {
            self.hash(r.get_ref().password.clone()).await?
        };
        let cmd = AuthCommand::UserAdd { name: r.get_ref().name.clone(), password_hash, no_password };
        let header = self.change(r.metadata(), cmd, len).await?;
        Ok(Response::new(pb::AuthUserAddResponse { header: Some(header) }))
    }

    async fn user_get(&self, r: Request<pb::AuthUserGetRequest>) -> Result<Response<pb::AuthUserGetResponse>, Status> {
        let who = self.authz().identify(r.metadata())?;
        let view = self.read_view().await?;
        let name = &r.get_ref().name;
        // etcd: root, or the user itself.
        if let Err(e) = view.admin_permitted(who.as_ref()) {
            if who.as_ref().map_or("", |w| w.user.as_str()) != name {
                return Err(e);
            }
        }
        let user = view.users.get(name).ok_or_else(|| EtcdError::UserNotFound.status())?;
        Ok(Response::new(pb::AuthUserGetResponse { header: self.header(), roles: user.roles.clone() }))
    }

    async fn user_list(
        &self,
        r: Request<pb::AuthUserListRequest>,
    ) -> Result<Response<pb::AuthUserListResponse>, Status> {
        let who = self.authz().identify(r.metadata())?;
        let view = self.read_view().await?;
        view.admin_permitted(who.as_ref())?;
        Ok(Response::new(pb::AuthUserListResponse {
            header: self.header(),
            users: view.users.keys().cloned().collect(),
        }))
    }

    async fn user_delete(
        &self,
        r: Request<pb::AuthUserDeleteRequest>,
    ) -> Result<Response<pb::AuthUserDeleteResponse>, Status> {
        let len = r.get_ref().encoded_len();
        let cmd = AuthCommand::UserDelete { name: r.get_ref().name.clone() };
        let header = self.change(r.metadata(), cmd, len).await?;
        Ok(Response::new(pb::AuthUserDeleteResponse { header: Some(header) }))
    }

    async fn user_change_password(
        &self,
        r: Request<pb::AuthUserChangePasswordRequest>,
    ) -> Result<Response<pb::AuthUserChangePasswordResponse>, Status> {
        let len = r.get_ref().encoded_len();
        self.authz().check_admin(r.metadata())?;
        let password_hash = if r.get_ref().password.is_empty() && !r.get_ref().hashed_password.is_empty() {
            r.get_ref().hashed_password.clone().into_bytes()
        } else {
            self.hash(r.get_ref().password.clone()).await?
        };
        let cmd = AuthCommand::UserChangePassword { name: r.get_ref().name.clone(), password_hash };
        let header = self.change(r.metadata(), cmd, len).await?;
        Ok(Response::new(pb::AuthUserChangePasswordResponse { header: Some(header) }))
    }

    async fn user_grant_role(
        &self,
        r: Request<pb::AuthUserGrantRoleRequest>,
    ) -> Result<Response<pb::AuthUserGrantRoleResponse>, Status> {
        let len = r.get_ref().encoded_len();
        let cmd = AuthCommand::UserGrantRole { user: r.get_ref().user.clone(), role: r.get_ref().role.clone() };
        let header = self.change(r.metadata(), cmd, len).await?;
        Ok(Response::new(pb::AuthUserGrantRoleResponse { header: Some(header) }))
    }

    async fn user_revoke_role(
        &self,
        r: Request<pb::AuthUserRevokeRoleRequest>,
    ) -> Result<Response<pb::AuthUserRevokeRoleResponse>, Status> {
        let len = r.get_ref().encoded_len();
        let cmd = AuthCommand::UserRevokeRole { name: r.get_ref().name.clone(), role: r.get_ref().role.clone() };
        let header = self.change(r.metadata(), cmd, len).await?;
        Ok(Response::new(pb::AuthUserRevokeRoleResponse { header: Some(header) }))
    }

    async fn role_add(&self, r: Request<pb::AuthRoleAddRequest>) -> Result<Response<pb::AuthRoleAddResponse>, Status> {
        let len = r.get_ref().encoded_len();
        let cmd = AuthCommand::RoleAdd { name: r.get_ref().name.clone() };
        let header = self.change(r.metadata(), cmd, len).await?;
        Ok(Response::new(pb::AuthRoleAddResponse { header: Some(header) }))
    }

    async fn role_get(&self, r: Request<pb::AuthRoleGetRequest>) -> Result<Response<pb::AuthRoleGetResponse>, Status> {
        let who = self.authz().identify(r.metadata())?;
        let view = self.read_view().await?;
        let name = &r.get_ref().role;
        // etcd: root, or a user that holds the role.
        if let Err(e) = view.admin_permitted(who.as_ref()) {
            if !view.user_has_role(who.as_ref(), name) {
                return Err(e);
            }
        }
        let role = view.roles.get(name).ok_or_else(|| EtcdError::RoleNotFound.status())?;
        Ok(Response::new(pb::AuthRoleGetResponse {
            header: self.header(),
            perm: role.perms.iter().map(wire_perm).collect(),
        }))
    }

    async fn role_list(
        &self,
        r: Request<pb::AuthRoleListRequest>,
    ) -> Result<Response<pb::AuthRoleListResponse>, Status> {
        let who = self.authz().identify(r.metadata())?;
        let view = self.read_view().await?;
        view.admin_permitted(who.as_ref())?;
        Ok(Response::new(pb::AuthRoleListResponse {
            header: self.header(),
            roles: view.roles.keys().cloned().collect(),
        }))
    }

    async fn role_delete(
        &self,
        r: Request<pb::AuthRoleDeleteRequest>,
    ) -> Result<Response<pb::AuthRoleDeleteResponse>, Status> {
        let len = r.get_ref().encoded_len();
        let cmd = AuthCommand::RoleDelete { role: r.get_ref().role.clone() };
        let header = self.change(r.metadata(), cmd, len).await?;
        Ok(Response::new(pb::AuthRoleDeleteResponse { header: Some(header) }))
    }

    async fn role_grant_permission(
        &self,
        r: Request<pb::AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<pb::AuthRoleGrantPermissionResponse>, Status> {
        let len = r.get_ref().encoded_len();
        self.authz().check_admin(r.metadata())?;
        let Some(p) = r.get_ref().perm.as_ref() else { return Err(EtcdError::PermissionNotGiven.status()) };
        let perm =
            Permission { perm_type: perm_type(p.perm_type), key: p.key.to_vec(), range_end: p.range_end.to_vec() };
        let cmd = AuthCommand::RoleGrantPermission { name: r.get_ref().name.clone(), perm };
        let header = self.change(r.metadata(), cmd, len).await?;
        Ok(Response::new(pb::AuthRoleGrantPermissionResponse { header: Some(header) }))
    }

    async fn role_revoke_permission(
        &self,
        r: Request<pb::AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<pb::AuthRoleRevokePermissionResponse>, Status> {
        let len = r.get_ref().encoded_len();
        let q = r.get_ref();
        let cmd = AuthCommand::RoleRevokePermission {
            role: q.role.clone(),
            key: q.key.to_vec(),
            range_end: q.range_end.to_vec(),
        };
        let header = self.change(r.metadata(), cmd, len).await?;
        Ok(Response::new(pb::AuthRoleRevokePermissionResponse { header: Some(header) }))
    }
}
