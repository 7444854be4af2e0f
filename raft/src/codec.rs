//! Byte formats of what the raft layer stores: log entries, votes, log ids and membership.
//! Every record starts with a version byte and ends with a crc32 (see docs/FORMAT.md).

use std::collections::{BTreeMap, BTreeSet};

use cairn_storage::codec::{Reader, Writer};
use cairn_storage::{Command, DecodeError};
use openraft::{BasicNode, CommittedLeaderId, EntryPayload, Membership};

use crate::types::*;

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
        EntryPayload::Normal(req) => {
            w.u8(1);
            w.u32(req.0.len() as u32);
            for c in &req.0 {
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
            EntryPayload::Normal(Request(cmds))
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
