//! Byte formats of what the raft layer stores: log entries, votes, log ids and membership.
//! Every record starts with a version byte and ends with a crc32 (see docs/FORMAT.md).

use std::collections::{BTreeMap, BTreeSet};

use cairn_storage::codec::{Reader, Writer};
use cairn_storage::{Command, DecodeError};
use openraft::{BasicNode, CommittedLeaderId, EntryPayload, Membership};

use crate::types::*;
use crate::WriteError;

const VERSION: u8 = 1;

fn seal(mut w: Writer) -> Vec<u8> {
    let crc = crc32fast::hash(&w.buf);
    w.u32(crc);
    w.buf
}

fn open(buf: &[u8]) -> Result<Reader<'_>, DecodeError> {
    if buf.len() < 5 {
        return Err(DecodeError("raft record too short".into()));
    }
    let (body, crc) = buf.split_at(buf.len() - 4);
    if crc32fast::hash(body) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
        return Err(DecodeError("raft record checksum mismatch".into()));
    }
    let mut r = Reader::new(body);
    let v = r.u8()?;
    if v != VERSION {
        return Err(DecodeError(format!("raft record version {v} unknown")));
    }
    Ok(r)
}

fn put_log_id(w: &mut Writer, id: &LogId) {
    w.u64(id.leader_id.term);
    w.u64(id.leader_id.node_id);
    w.u64(id.index);
}

fn get_log_id(r: &mut Reader<'_>) -> Result<LogId, DecodeError> {
    let term = r.u64()?;
    let node = r.u64()?;
    let index = r.u64()?;
    Ok(LogId::new(CommittedLeaderId::new(term, node), index))
}

fn put_opt_log_id(w: &mut Writer, id: &Option<LogId>) {
    match id {
        None => w.u8(0),
        Some(id) => {
            w.u8(1);
            put_log_id(w, id);
        }
    }
}

fn get_opt_log_id(r: &mut Reader<'_>) -> Result<Option<LogId>, DecodeError> {
    match r.u8()? {
        0 => Ok(None),
        1 => Ok(Some(get_log_id(r)?)),
        x => Err(DecodeError(format!("option tag {x}"))),
    }
}

fn put_membership(w: &mut Writer, m: &Membership<NodeId, BasicNode>) {
    let configs = m.get_joint_config();
    w.u32(configs.len() as u32);
    for c in configs {
        w.u32(c.len() as u32);
        for id in c {
            w.u64(*id);
        }
    }
    let nodes: Vec<_> = m.nodes().collect();
    w.u32(nodes.len() as u32);
    for (id, n) in nodes {
        w.u64(*id);
        w.bytes(n.addr.as_bytes());
    }
}

fn get_membership(r: &mut Reader<'_>) -> Result<Membership<NodeId, BasicNode>, DecodeError> {
    let n = r.u32()? as usize;
    if n > r.remaining() {
        return Err(DecodeError("membership config count".into()));
    }
    let mut configs = Vec::with_capacity(n);
    for _ in 0..n {
        let m = r.u32()? as usize;
        if m > r.remaining() {
            return Err(DecodeError("membership voter count".into()));
        }
        let mut set = BTreeSet::new();
        for _ in 0..m {
            set.insert(r.u64()?);
        }
        configs.push(set);
    }
    let n = r.u32()? as usize;
    if n > r.remaining() {
        return Err(DecodeError("membership node count".into()));
    }
    let mut nodes = BTreeMap::new();
    for _ in 0..n {
        let id = r.u64()?;
        let addr = String::from_utf8(r.vec()?).map_err(|_| DecodeError("node address not utf-8".into()))?;
        nodes.insert(id, BasicNode { addr });
    }
    Ok(Membership::new(configs, nodes))
}

pub fn encode_entry(e: &Entry) -> Vec<u8> {
    let mut w = Writer::default();
    w.u8(VERSION);
    put_log_id(&mut w, &e.log_id);
    match &e.payload {
        EntryPayload::Blank => w.u8(0),
        EntryPayload::Normal(req) if req.origins.is_empty() => {
            w.u8(1);
            w.u32(req.commands.len() as u32);
            for c in &req.commands {
                w.bytes(&c.encode());
            }
        }
        EntryPayload::Normal(req) => {
            w.u8(3);
            w.u32(req.commands.len() as u32);
            for (i, c) in req.commands.iter().enumerate() {
                let o = req.origin(i);
                w.u64(o.member);
                w.u64(o.seq);
                w.bytes(&c.encode());
            }
        }
        EntryPayload::Membership(m) => {
            w.u8(2);
            put_membership(&mut w, m);
        }
    }
    seal(w)
}

pub fn decode_entry(buf: &[u8]) -> Result<Entry, DecodeError> {
    let mut r = open(buf)?;
    let log_id = get_log_id(&mut r)?;
    let payload = match r.u8()? {
        0 => EntryPayload::Blank,
        1 => {
            let n = r.u32()? as usize;
            if n > r.remaining() {
                return Err(DecodeError("command count exceeds the entry".into()));
            }
            let mut cmds = Vec::with_capacity(n);
            for _ in 0..n {
                cmds.push(Command::decode(r.bytes()?)?);
            }
            EntryPayload::Normal(Request::local(cmds))
        }
        3 => {
            let n = r.u32()? as usize;
            if n > r.remaining() {
                return Err(DecodeError("command count exceeds the entry".into()));
            }
            let mut commands = Vec::with_capacity(n);
            let mut origins = Vec::with_capacity(n);
            for _ in 0..n {
                let member = r.u64()?;
                let seq = r.u64()?;
                origins.push(Origin { member, seq });
                commands.push(Command::decode(r.bytes()?)?);
            }
            EntryPayload::Normal(Request { commands, origins })
        }
        2 => EntryPayload::Membership(get_membership(&mut r)?),
        x => return Err(DecodeError(format!("entry payload tag {x}"))),
    };
    r.finish()?;
    Ok(Entry { log_id, payload })
}

pub fn encode_vote(v: &Vote) -> Vec<u8> {
    let mut w = Writer::default();
    w.u8(VERSION);
    w.u64(v.leader_id.term);
    w.u64(v.leader_id.node_id);
    w.bool(v.committed);
    seal(w)
}

pub fn decode_vote(buf: &[u8]) -> Result<Vote, DecodeError> {
    let mut r = open(buf)?;
    let term = r.u64()?;
    let node = r.u64()?;
    let committed = r.bool()?;
    r.finish()?;
    Ok(if committed { Vote::new_committed(term, node) } else { Vote::new(term, node) })
}

pub fn encode_opt_log_id(id: &Option<LogId>) -> Vec<u8> {
    let mut w = Writer::default();
    w.u8(VERSION);
    put_opt_log_id(&mut w, id);
    seal(w)
}

pub fn decode_opt_log_id(buf: &[u8]) -> Result<Option<LogId>, DecodeError> {
    let mut r = open(buf)?;
    let id = get_opt_log_id(&mut r)?;
    r.finish()?;
    Ok(id)
}

/// The raft state kept in the state machine: last applied log id and last membership.
pub fn encode_sm_state(applied: &Option<LogId>, membership: &StoredMembership) -> Vec<u8> {
    let mut w = Writer::default();
    w.u8(VERSION);
    put_opt_log_id(&mut w, applied);
    put_opt_log_id(&mut w, membership.log_id());
    put_membership(&mut w, membership.membership());
    seal(w)
}

pub fn decode_sm_state(buf: &[u8]) -> Result<(Option<LogId>, StoredMembership), DecodeError> {
    if buf.is_empty() {
        return Ok((None, StoredMembership::default()));
    }
    let mut r = open(buf)?;
    let applied = get_opt_log_id(&mut r)?;
    let mlog = get_opt_log_id(&mut r)?;
    let m = get_membership(&mut r)?;
    r.finish()?;
    Ok((applied, StoredMembership::new(mlog, m)))
}

/// Snapshot meta as stored beside a snapshot file.
pub fn encode_snapshot_meta(meta: &openraft::SnapshotMeta<NodeId, BasicNode>) -> Vec<u8> {
    let mut w = Writer::default();
    w.u8(VERSION);
    put_opt_log_id(&mut w, &meta.last_log_id);
    put_opt_log_id(&mut w, meta.last_membership.log_id());
    put_membership(&mut w, meta.last_membership.membership());
    w.bytes(meta.snapshot_id.as_bytes());
    seal(w)
}

pub fn decode_snapshot_meta(buf: &[u8]) -> Result<openraft::SnapshotMeta<NodeId, BasicNode>, DecodeError> {
    let mut r = open(buf)?;
    let last_log_id = get_opt_log_id(&mut r)?;
    let mlog = get_opt_log_id(&mut r)?;
    let m = get_membership(&mut r)?;
    let snapshot_id = String::from_utf8(r.vec()?).map_err(|_| DecodeError("snapshot id not utf-8".into()))?;
    r.finish()?;
    Ok(openraft::SnapshotMeta { last_log_id, last_membership: StoredMembership::new(mlog, m), snapshot_id })
}

// ---- Peer messages (docs/FORMAT.md, "Peer messages"): the bodies of the private peer
// protocol's calls. Same framing as the records above: a version byte, then a crc32.

fn put_vote(w: &mut Writer, v: &Vote) {
    w.u64(v.leader_id.term);
    w.u64(v.leader_id.node_id);
    w.bool(v.committed);
}

fn get_vote(r: &mut Reader<'_>) -> Result<Vote, DecodeError> {
    let term = r.u64()?;
    let node = r.u64()?;
    let committed = r.bool()?;
    Ok(if committed { Vote::new_committed(term, node) } else { Vote::new(term, node) })
}

fn message(f: impl FnOnce(&mut Writer)) -> Vec<u8> {
    let mut w = Writer::default();
    w.u8(VERSION);
    f(&mut w);
    seal(w)
}

fn read_message<T>(buf: &[u8], f: impl FnOnce(&mut Reader<'_>) -> Result<T, DecodeError>) -> Result<T, DecodeError> {
    let mut r = open(buf)?;
    let out = f(&mut r)?;
    r.finish()?;
    Ok(out)
}

pub type AppendRequest = openraft::raft::AppendEntriesRequest<TypeConfig>;
pub type AppendResponse = openraft::raft::AppendEntriesResponse<NodeId>;
pub type VoteRequest = openraft::raft::VoteRequest<NodeId>;
pub type VoteResponse = openraft::raft::VoteResponse<NodeId>;
pub type SnapshotRequest = openraft::raft::InstallSnapshotRequest<TypeConfig>;
pub type SnapshotResponse = openraft::raft::InstallSnapshotResponse<NodeId>;

pub fn encode_append_request(m: &AppendRequest) -> Vec<u8> {
    message(|w| {
        put_vote(w, &m.vote);
        put_opt_log_id(w, &m.prev_log_id);
        put_opt_log_id(w, &m.leader_commit);
        w.u32(m.entries.len() as u32);
        for e in &m.entries {
            w.bytes(&encode_entry(e));
        }
    })
}

pub fn decode_append_request(buf: &[u8]) -> Result<AppendRequest, DecodeError> {
    read_message(buf, |r| {
        let vote = get_vote(r)?;
        let prev_log_id = get_opt_log_id(r)?;
        let leader_commit = get_opt_log_id(r)?;
        let n = r.u32()? as usize;
        if n > r.remaining() {
            return Err(DecodeError("entry count exceeds the message".into()));
        }
        let mut entries = Vec::with_capacity(n);
        for _ in 0..n {
            entries.push(decode_entry(r.bytes()?)?);
        }
        Ok(AppendRequest { vote, prev_log_id, entries, leader_commit })
    })
}

pub fn encode_append_response(m: &AppendResponse) -> Vec<u8> {
    message(|w| match m {
        AppendResponse::Success => w.u8(0),
        AppendResponse::PartialSuccess(id) => {
            w.u8(1);
            put_opt_log_id(w, id);
        }
        AppendResponse::Conflict => w.u8(2),
        AppendResponse::HigherVote(v) => {
            w.u8(3);
            put_vote(w, v);
        }
    })
}

pub fn decode_append_response(buf: &[u8]) -> Result<AppendResponse, DecodeError> {
    read_message(buf, |r| {
        Ok(match r.u8()? {
            0 => AppendResponse::Success,
            1 => AppendResponse::PartialSuccess(get_opt_log_id(r)?),
            2 => AppendResponse::Conflict,
            3 => AppendResponse::HigherVote(get_vote(r)?),
            x => return Err(DecodeError(format!("append response tag {x}"))),
        })
    })
}

pub fn encode_vote_request(m: &VoteRequest) -> Vec<u8> {
    message(|w| {
        put_vote(w, &m.vote);
        put_opt_log_id(w, &m.last_log_id);
    })
}

pub fn decode_vote_request(buf: &[u8]) -> Result<VoteRequest, DecodeError> {
    read_message(buf, |r| Ok(VoteRequest { vote: get_vote(r)?, last_log_id: get_opt_log_id(r)? }))
}

pub fn encode_vote_response(m: &VoteResponse) -> Vec<u8> {
    message(|w| {
        put_vote(w, &m.vote);
        w.bool(m.vote_granted);
        put_opt_log_id(w, &m.last_log_id);
    })
}

pub fn decode_vote_response(buf: &[u8]) -> Result<VoteResponse, DecodeError> {
    read_message(buf, |r| {
        Ok(VoteResponse { vote: get_vote(r)?, vote_granted: r.bool()?, last_log_id: get_opt_log_id(r)? })
    })
}

pub fn encode_snapshot_request(m: &SnapshotRequest) -> Vec<u8> {
    message(|w| {
        put_vote(w, &m.vote);
        w.bytes(&encode_snapshot_meta(&m.meta));
        w.u64(m.offset);
        w.bytes(&m.data);
        w.bool(m.done);
    })
}

pub fn decode_snapshot_request(buf: &[u8]) -> Result<SnapshotRequest, DecodeError> {
    read_message(buf, |r| {
        let vote = get_vote(r)?;
        let meta = decode_snapshot_meta(r.bytes()?)?;
        let offset = r.u64()?;
        let data = r.vec()?;
        let done = r.bool()?;
        Ok(SnapshotRequest { vote, meta, offset, data, done })
    })
}

pub fn encode_snapshot_response(m: &SnapshotResponse) -> Vec<u8> {
    message(|w| put_vote(w, &m.vote))
}

pub fn decode_snapshot_response(buf: &[u8]) -> Result<SnapshotResponse, DecodeError> {
    read_message(buf, |r| Ok(SnapshotResponse { vote: get_vote(r)? }))
}

/// Commands a member forwards to the leader, each with its origin.
pub fn encode_forward(cmds: &[(Origin, &Command)]) -> Vec<u8> {
    message(|w| {
        w.u32(cmds.len() as u32);
        for (o, c) in cmds {
            w.u64(o.member);
            w.u64(o.seq);
            w.bytes(&c.encode());
        }
    })
}

pub fn decode_forward(buf: &[u8]) -> Result<Vec<(Origin, Command)>, DecodeError> {
    read_message(buf, |r| {
        let n = r.u32()? as usize;
        if n > r.remaining() {
            return Err(DecodeError("command count exceeds the message".into()));
        }
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let member = r.u64()?;
            let seq = r.u64()?;
            out.push((Origin { member, seq }, Command::decode(r.bytes()?)?));
        }
        Ok(out)
    })
}

fn put_write_error(w: &mut Writer, e: &WriteError) {
    match e {
        WriteError::NoLeader => w.u8(0),
        WriteError::NotLeader { leader } => {
            w.u8(1);
            w.u64(leader.unwrap_or(0));
        }
        WriteError::Stopped => w.u8(2),
        WriteError::Other(m) => {
            w.u8(3);
            w.bytes(m.as_bytes());
        }
        WriteError::LeaderLost => w.u8(4),
    }
}

fn get_write_error(r: &mut Reader<'_>) -> Result<WriteError, DecodeError> {
    Ok(match r.u8()? {
        0 => WriteError::NoLeader,
        1 => {
            let l = r.u64()?;
            WriteError::NotLeader { leader: (l != 0).then_some(l) }
        }
        2 => WriteError::Stopped,
        3 => WriteError::Other(String::from_utf8_lossy(r.bytes()?).into_owned()),
        4 => WriteError::LeaderLost,
        x => return Err(DecodeError(format!("write error tag {x}"))),
    })
}

/// A result that is a u64 (a log index; 0 for "accepted") or a [`WriteError`].
pub fn encode_index_result(res: &Result<u64, WriteError>) -> Vec<u8> {
    message(|w| match res {
        Ok(i) => {
            w.u8(0);
            w.u64(*i);
        }
        Err(e) => {
            w.u8(1);
            put_write_error(w, e);
        }
    })
}

pub fn decode_index_result(buf: &[u8]) -> Result<Result<u64, WriteError>, DecodeError> {
    read_message(buf, |r| {
        Ok(match r.u8()? {
            0 => Ok(r.u64()?),
            1 => Err(get_write_error(r)?),
            x => return Err(DecodeError(format!("result tag {x}"))),
        })
    })
}
