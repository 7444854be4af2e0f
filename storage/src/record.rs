//! The record stored in `REVS` for one revision of one key.
//!
//! Layout (little endian): `u8 version | u8 flags | i64 create_revision | i64 version |
//! i64 lease | u32 key_len | key | value | u32 crc32(all before)`.

use crate::codec::{Reader, Writer};
use crate::error::DecodeError;
use crate::schema::FLAG_TOMBSTONE;
use crate::types::KeyValue;

pub const RECORD_VERSION: u8 = 1;

/// A decoded `REVS` record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub tombstone: bool,
    pub key: Vec<u8>,
    pub create_revision: i64,
    pub version: i64,
    pub lease: i64,
    pub value: Vec<u8>,
}

impl Record {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer { buf: Vec::with_capacity(34 + self.key.len() + self.value.len()) };
        w.u8(RECORD_VERSION);
        w.u8(if self.tombstone { FLAG_TOMBSTONE } else { 0 });
        w.i64(self.create_revision);
        w.i64(self.version);
        w.i64(self.lease);
        w.bytes(&self.key);
        w.buf.extend_from_slice(&self.value);
        let crc = crc32fast::hash(&w.buf);
        w.u32(crc);
        w.buf
    }

    pub fn decode(buf: &[u8]) -> Result<Record, DecodeError> {
        if buf.len() < 4 {
            return Err(DecodeError("record too short".into()));
        }
        let (body, crc) = buf.split_at(buf.len() - 4);
        if crc32fast::hash(body) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
            return Err(DecodeError("record checksum mismatch".into()));
        }
        let mut r = Reader::new(body);
        let v = r.u8()?;
        if v != RECORD_VERSION {
            return Err(DecodeError(format!("record version {v} unknown")));
        }
        let flags = r.u8()?;
        let create_revision = r.i64()?;
        let version = r.i64()?;
        let lease = r.i64()?;
        let key = r.vec()?;
        let value = body[body.len() - r.remaining()..].to_vec();
        Ok(Record { tombstone: flags & FLAG_TOMBSTONE != 0, key, create_revision, version, lease, value })
    }

    /// The API form of this record at `mod_revision`.
    pub fn into_kv(self, mod_revision: i64) -> KeyValue {
        KeyValue {
            key: self.key,
            create_revision: self.create_revision,
            mod_revision,
            version: self.version,
            value: self.value,
            lease: self.lease,
        }
    }
}
