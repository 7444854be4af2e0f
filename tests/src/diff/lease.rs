//! Lease requests in differential scripts: the request model ([`LeaseReq`], built with
//! [`lease_grant`], [`lease_revoke`], [`lease_ttl`], [`lease_list`], [`keep_alive_once`],
//! [`keep_alive_across_revoke`]), their execution through `etcd-client`'s lease client, and
//! the normalised responses ([`LeaseResp`]).
//!
//! Lease IDs: a script names the leases it grants with its own IDs (both servers honour a
//! client-chosen ID), so puts and revokes can refer to them. A lease the server chose the ID
//! of (a grant with ID 0) is shown as `chosen#N`, N in order of first appearance within one
//! transcript; its value is checked only to be positive. Lists (lease IDs of LeaseLeases,
//! keys of TimeToLive) are sorted: etcd returns them in map order.

use std::fmt;

use etcd_client::{LeaseClient, LeaseGrantOptions, LeaseKeepAliveResponse, LeaseTimeToLiveOptions};

use super::outcome::{Bytes, Header, Normalizer, Resp};

/// One Lease RPC (or, for keep-alives, a short exchange on one stream).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseReq {
    /// LeaseGrant with this TTL; `id` 0 lets the server choose.
    Grant {
        ttl: i64,
        id: i64,
    },
    Revoke {
        id: i64,
    },
    /// LeaseTimeToLive, with the attached keys if `keys`.
    TimeToLive {
        id: i64,
        keys: bool,
    },
    /// LeaseLeases.
    Leases,
    /// Opens a keep-alive stream and sends one keep-alive, as `etcdctl lease keep-alive
    /// --once`. `etcd-client` reads the first response itself and turns a TTL <= 0 into a
    /// client error, shown as [`LeaseResp::KeepAliveNotFound`].
    KeepAliveOnce {
        id: i64,
    },
    /// Opens a keep-alive stream for an existing lease, sends a keep-alive, revokes the lease,
    /// sends another keep-alive on the same stream: every response, so the server's exact
    /// answer for a lease that no longer exists is compared.
    KeepAliveAcrossRevoke {
        id: i64,
    },
}

/// A grant of `ttl` seconds with the client-chosen ID `id` (0: the server chooses).
pub fn lease_grant(ttl: i64, id: i64) -> LeaseReq {
    LeaseReq::Grant { ttl, id }
}

pub fn lease_revoke(id: i64) -> LeaseReq {
    LeaseReq::Revoke { id }
}

/// TimeToLive of `id`, with its keys if `keys`.
pub fn lease_ttl(id: i64, keys: bool) -> LeaseReq {
    LeaseReq::TimeToLive { id, keys }
}

pub fn lease_list() -> LeaseReq {
    LeaseReq::Leases
}

pub fn keep_alive_once(id: i64) -> LeaseReq {
    LeaseReq::KeepAliveOnce { id }
}

pub fn keep_alive_across_revoke(id: i64) -> LeaseReq {
    LeaseReq::KeepAliveAcrossRevoke { id }
}

/// A lease ID as compared: the script's own, or the ordinal of a server-chosen one.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LeaseName {
    Id(i64),
    Chosen(usize),
}

/// One keep-alive response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeepAlive {
    pub header: Option<Header>,
    pub id: LeaseName,
    pub ttl: i64,
}

/// A successful Lease response, normalised.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseResp {
    Grant {
        header: Option<Header>,
        id: LeaseName,
        ttl: i64,
        error: String,
    },
    Revoke {
        header: Option<Header>,
    },
    TimeToLive {
        header: Option<Header>,
        id: LeaseName,
        ttl: i64,
        granted_ttl: i64,
        keys: Vec<Bytes>,
    },
    Leases {
        header: Option<Header>,
        ids: Vec<LeaseName>,
    },
    /// `etcd-client` refused the stream: the server's first response had TTL <= 0.
    KeepAliveNotFound {
        message: String,
    },
    /// The responses of a keep-alive exchange, with the revoke in between if there was one.
    KeepAlives {
        before: Vec<KeepAlive>,
        revoke: Option<Option<Header>>,
        after: Vec<KeepAlive>,
    },
}

impl LeaseResp {
    pub fn header(&self) -> Option<&Header> {
        match self {
            LeaseResp::Grant { header, .. }
            | LeaseResp::Revoke { header }
            | LeaseResp::TimeToLive { header, .. }
            | LeaseResp::Leases { header, .. } => header.as_ref(),
            LeaseResp::KeepAliveNotFound { .. } => None,
            LeaseResp::KeepAlives { before, .. } => before.first().and_then(|k| k.header.as_ref()),
        }
    }
}

impl Normalizer {
    /// The name of a lease ID in this transcript.
    pub fn lease(&self, id: i64) -> LeaseName {
        match self.chosen_leases.iter().position(|&c| c == id) {
            Some(i) => LeaseName::Chosen(i + 1),
            None => LeaseName::Id(id),
        }
    }

    fn keep_alive(&mut self, r: &LeaseKeepAliveResponse) -> KeepAlive {
        KeepAlive { header: self.header(r.header()), id: self.lease(r.id()), ttl: r.ttl() }
    }
}

/// Executes one lease request.
pub async fn execute(
    lease: &mut LeaseClient,
    norm: &mut Normalizer,
    req: &LeaseReq,
) -> Result<Resp, etcd_client::Error> {
    let resp = match *req {
        LeaseReq::Grant { ttl, id } => {
            let r = lease.grant(ttl, Some(LeaseGrantOptions::new().with_id(id))).await?;
            if id == 0 {
                assert!(r.id() > 0, "a server-chosen lease ID must be positive, got {}", r.id());
                norm.chosen_leases.push(r.id());
            }
            LeaseResp::Grant {
                header: norm.header(r.header()),
                id: norm.lease(r.id()),
                ttl: r.ttl(),
                error: r.error().to_string(),
            }
        }
        LeaseReq::Revoke { id } => {
            let r = lease.revoke(id).await?;
            LeaseResp::Revoke { header: norm.header(r.header()) }
        }
        LeaseReq::TimeToLive { id, keys } => {
            let options = if keys { LeaseTimeToLiveOptions::new().with_keys() } else { LeaseTimeToLiveOptions::new() };
            let r = lease.time_to_live(id, Some(options)).await?;
            let mut keys: Vec<Bytes> = r.keys().iter().map(|k| Bytes(k.clone())).collect();
            keys.sort_by(|a, b| a.0.cmp(&b.0));
            LeaseResp::TimeToLive {
                header: norm.header(r.header()),
                id: norm.lease(r.id()),
                ttl: r.ttl(),
                granted_ttl: r.granted_ttl(),
                keys,
            }
        }
        LeaseReq::Leases => {
            let r = lease.leases().await?;
            let mut ids: Vec<LeaseName> = r.leases().iter().map(|l| norm.lease(l.id())).collect();
            ids.sort();
            LeaseResp::Leases { header: norm.header(r.header()), ids }
        }
        LeaseReq::KeepAliveOnce { id } => match lease.keep_alive(id).await {
            // etcd-client keeps the first response to itself; one more shows what it was.
            Ok((mut keeper, mut stream)) => {
                keeper.keep_alive().await?;
                let before = next_keep_alive(&mut stream, norm).await?;
                LeaseResp::KeepAlives { before: vec![before], revoke: None, after: Vec::new() }
            }
            Err(etcd_client::Error::LeaseKeepAliveError(message)) => LeaseResp::KeepAliveNotFound { message },
            Err(e) => return Err(e),
        },
        LeaseReq::KeepAliveAcrossRevoke { id } => {
            let (mut keeper, mut stream) = lease.keep_alive(id).await?;
            keeper.keep_alive().await?;
            let before = next_keep_alive(&mut stream, norm).await?;
            let revoked = lease.revoke(id).await?;
            let revoke = Some(norm.header(revoked.header()));
            keeper.keep_alive().await?;
            let after = next_keep_alive(&mut stream, norm).await?;
            LeaseResp::KeepAlives { before: vec![before], revoke, after: vec![after] }
        }
    };
    Ok(Resp::Lease(resp))
}

async fn next_keep_alive(
    stream: &mut etcd_client::LeaseKeepAliveStream,
    norm: &mut Normalizer,
) -> Result<KeepAlive, etcd_client::Error> {
    match stream.message().await? {
        Some(r) => Ok(norm.keep_alive(&r)),
        None => Err(etcd_client::Error::LeaseKeepAliveError("keep-alive stream ended".to_string())),
    }
}

// ---- rendering ----

impl fmt::Display for LeaseName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LeaseName::Id(id) => write!(f, "{id}"),
            LeaseName::Chosen(n) => write!(f, "chosen#{n}"),
        }
    }
}

fn show_header(h: &Option<Header>) -> String {
    match h {
        Some(h) => format!("[{h}]"),
        None => "[no header]".to_string(),
    }
}

impl fmt::Display for KeepAlive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeepAlive {} id={} ttl={}", show_header(&self.header), self.id, self.ttl)
    }
}

impl fmt::Display for LeaseResp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LeaseResp::Grant { header, id, ttl, error } => {
                write!(f, "LeaseGrant {} id={id} ttl={ttl} error={error:?}", show_header(header))
            }
            LeaseResp::Revoke { header } => write!(f, "LeaseRevoke {}", show_header(header)),
            LeaseResp::TimeToLive { header, id, ttl, granted_ttl, keys } => {
                write!(
                    f,
                    "LeaseTimeToLive {} id={id} ttl={ttl} granted_ttl={granted_ttl} keys=[",
                    show_header(header)
                )?;
                for (i, k) in keys.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{k}")?;
                }
                f.write_str("]")
            }
            LeaseResp::Leases { header, ids } => {
                let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
                write!(f, "LeaseLeases {} ids=[{}]", show_header(header), ids.join(", "))
            }
            LeaseResp::KeepAliveNotFound { message } => write!(f, "KeepAlive refused by the client: {message}"),
            LeaseResp::KeepAlives { before, revoke, after } => {
                for k in before {
                    writeln!(f, "{k}")?;
                }
                if let Some(h) = revoke {
                    writeln!(f, "LeaseRevoke {}", show_header(h))?;
                }
                for k in after {
                    writeln!(f, "{k}")?;
                }
                Ok(())
            }
        }
    }
}

impl fmt::Display for LeaseReq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LeaseReq::Grant { ttl, id } => write!(f, "lease grant ttl={ttl} id={id}"),
            LeaseReq::Revoke { id } => write!(f, "lease revoke {id}"),
            LeaseReq::TimeToLive { id, keys } => {
                write!(f, "lease timetolive {id}{}", if *keys { " --keys" } else { "" })
            }
            LeaseReq::Leases => f.write_str("lease list"),
            LeaseReq::KeepAliveOnce { id } => write!(f, "lease keep-alive once {id}"),
            LeaseReq::KeepAliveAcrossRevoke { id } => write!(f, "lease keep-alive {id}, revoke it, keep-alive again"),
        }
    }
}
