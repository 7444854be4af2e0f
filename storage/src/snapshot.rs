//! Whole-store snapshots as a byte stream, for raft snapshots (followers that fell behind)
//! and later for `etcdctl snapshot save`.
//!
//! Stream: `b"CAIRNSN1" | u32 format version | rows... | 0xFF | u32 crc32(everything before)`,
//! each row a table tag and the row's fields in the codec's encoding.

use std::io::{Read, Write};
use std::sync::atomic::Ordering;

use redb::{Durability, ReadableDatabase, ReadableTable};

use crate::codec::Writer;
use crate::error::{DecodeError, StoreError};
use crate::schema::*;
use crate::store::Store;

const MAGIC: &[u8; 8] = b"CAIRNSN1";
const TAG_META: u8 = 1;
const TAG_INDEX: u8 = 2;
const TAG_REV: u8 = 3;
const TAG_LEASE: u8 = 4;
const TAG_LEASE_KEY: u8 = 5;
const TAG_AUTH_USER: u8 = 6;
const TAG_AUTH_ROLE: u8 = 7;
const TAG_AUTH_META: u8 = 8;
const TAG_END: u8 = 0xFF;
/// No single field of a snapshot may be larger than this (a request is at most a few MiB).
const MAX_FIELD_BYTES: usize = 64 << 20;

struct CrcWriter<W: Write> {
    inner: W,
    crc: crc32fast::Hasher,
    buf: Writer,
}

impl<W: Write> CrcWriter<W> {
    fn flush_row(&mut self) -> std::io::Result<()> {
        self.crc.update(&self.buf.buf);
        self.inner.write_all(&self.buf.buf)?;
        self.buf.buf.clear();
        Ok(())
    }
}

impl Store {
    /// Writes a consistent copy of the whole store to `out`; returns the applied raft index
    /// it contains.
    pub fn export_snapshot<W: Write>(&self, out: W) -> Result<u64, StoreError> {
        let db = self.database();
        let rtx = db.begin_read()?;
        let mut w = CrcWriter { inner: out, crc: crc32fast::Hasher::new(), buf: Writer::default() };
        w.buf.buf.extend_from_slice(MAGIC);
        w.buf.u32(FORMAT_VERSION);
        w.flush_row()?;
        let mut applied = 0u64;
        for row in rtx.open_table(META)?.iter()? {
            let (k, v) = row?;
            if k.value() == META_APPLIED_INDEX {
                let b: [u8; 8] = v.value().try_into().map_err(|_| DecodeError("applied index".into()))?;
                applied = u64::from_le_bytes(b);
            }
            w.buf.u8(TAG_META);
            w.buf.bytes(k.value().as_bytes());
            w.buf.bytes(v.value());
            w.flush_row()?;
        }
        for row in rtx.open_table(KEY_INDEX)?.iter()? {
            let (k, v) = row?;
            let (key, main, sub) = k.value();
            w.buf.u8(TAG_INDEX);
            w.buf.bytes(key);
            w.buf.u64(main);
            w.buf.u64(sub);
            w.buf.u8(v.value());
            w.flush_row()?;
        }
        for row in rtx.open_table(REVS)?.iter()? {
            let (k, v) = row?;
            let (main, sub) = k.value();
            w.buf.u8(TAG_REV);
            w.buf.u64(main);
            w.buf.u64(sub);
            w.buf.bytes(v.value());
            w.flush_row()?;
        }
        for row in rtx.open_table(LEASES)?.iter()? {
            let (k, v) = row?;
            w.buf.u8(TAG_LEASE);
            w.buf.i64(k.value());
            w.buf.bytes(v.value());
            w.flush_row()?;
        }
        for row in rtx.open_table(LEASE_KEYS)?.iter()? {
            let (k, _) = row?;
            let (lease, key) = k.value();
            w.buf.u8(TAG_LEASE_KEY);
            w.buf.i64(lease);
            w.buf.bytes(key);
            w.flush_row()?;
        }
        for (tag, table) in [(TAG_AUTH_USER, AUTH_USERS), (TAG_AUTH_ROLE, AUTH_ROLES)] {
            for row in rtx.open_table(table)?.iter()? {
                let (k, v) = row?;
                w.buf.u8(tag);
                w.buf.bytes(k.value().as_bytes());
                w.buf.bytes(v.value());
                w.flush_row()?;
            }
        }
        for row in rtx.open_table(AUTH_META)?.iter()? {
            let (k, v) = row?;
            w.buf.u8(TAG_AUTH_META);
            w.buf.bytes(k.value().as_bytes());
            w.buf.u64(v.value());
            w.flush_row()?;
        }
        w.buf.u8(TAG_END);
        w.flush_row()?;
        let crc = w.crc.clone().finalize();
        w.inner.write_all(&crc.to_le_bytes())?;
        w.inner.flush()?;
        Ok(applied)
    }

    /// Replaces the whole store with the snapshot read from `input`, durably, in one
    /// transaction: a bad stream (checksum, format) changes nothing.
    pub fn import_snapshot<R: Read>(&self, input: R) -> Result<(), StoreError> {
        let mut r = CrcReader { inner: input, crc: crc32fast::Hasher::new() };
        let mut magic = [0u8; 8];
        r.read_exact(&mut magic)?;
        if &magic != MAGIC {
            return Err(DecodeError("not a cairn snapshot".into()).into());
        }
        let version = r.u32()?;
        if version != FORMAT_VERSION {
            return Err(StoreError::FormatVersion { found: version, supported: FORMAT_VERSION });
        }
        let _writer = self.writer();
        // A running defragmentation cannot catch up with a wholesale replacement.
        self.break_tee();
        let db = self.database();
        let mut wtx = db.begin_write()?;
        wtx.set_durability(Durability::Immediate)?;
        for name in ["meta", "key_index", "revs", "leases", "lease_keys", "auth_users", "auth_roles", "auth_meta"] {
            wtx.delete_table(redb::TableDefinition::<&[u8], &[u8]>::new(name))?;
        }
        let (current, compacted) = {
            let mut meta = wtx.open_table(META)?;
            let mut index = wtx.open_table(KEY_INDEX)?;
            let mut revs = wtx.open_table(REVS)?;
            let mut leases = wtx.open_table(LEASES)?;
            let mut lease_keys = wtx.open_table(LEASE_KEYS)?;
            let mut auth_users = wtx.open_table(AUTH_USERS)?;
            let mut auth_roles = wtx.open_table(AUTH_ROLES)?;
            let mut auth_meta = wtx.open_table(AUTH_META)?;
            let utf8 = |b: Vec<u8>| String::from_utf8(b).map_err(|_| DecodeError("auth row name not utf-8".into()));
            loop {
                match r.u8()? {
                    TAG_META => {
                        let k = r.field()?;
                        let v = r.field()?;
                        let k = String::from_utf8(k).map_err(|_| DecodeError("meta key not utf-8".into()))?;
                        meta.insert(k.as_str(), v.as_slice())?;
                    }
                    TAG_INDEX => {
                        let k = r.field()?;
                        let (m, s, f) = (r.u64()?, r.u64()?, r.u8()?);
                        index.insert((k.as_slice(), m, s), f)?;
                    }
                    TAG_REV => {
                        let (m, s) = (r.u64()?, r.u64()?);
                        let v = r.field()?;
                        revs.insert((m, s), v.as_slice())?;
                    }
                    TAG_LEASE => {
                        let id = r.i64()?;
                        let v = r.field()?;
                        leases.insert(id, v.as_slice())?;
                    }
                    TAG_LEASE_KEY => {
                        let id = r.i64()?;
                        let k = r.field()?;
                        lease_keys.insert((id, k.as_slice()), ())?;
                    }
                    TAG_AUTH_USER => {
                        let k = utf8(r.field()?)?;
                        let v = r.field()?;
                        auth_users.insert(k.as_str(), v.as_slice())?;
                    }
                    TAG_AUTH_ROLE => {
                        let k = utf8(r.field()?)?;
                        let v = r.field()?;
                        auth_roles.insert(k.as_str(), v.as_slice())?;
                    }
                    TAG_AUTH_META => {
                        let k = utf8(r.field()?)?;
                        let v = r.u64()?;
                        auth_meta.insert(k.as_str(), v)?;
                    }
                    TAG_END => break,
                    t => return Err(DecodeError(format!("snapshot row tag {t}")).into()),
                }
            }
            let want = r.crc.clone().finalize();
            let mut crc = [0u8; 4];
            r.inner.read_exact(&mut crc)?;
            if u32::from_le_bytes(crc) != want {
                return Err(DecodeError("snapshot checksum mismatch".into()).into());
            }
            let get = |key: &str| -> Result<i64, StoreError> {
                match meta.get(key)? {
                    Some(v) => {
                        Ok(i64::from_le_bytes(v.value().try_into().map_err(|_| DecodeError(format!("meta {key}")))?))
                    }
                    None => Ok(0),
                }
            };
            (get(META_CURRENT_REVISION)?, get(META_COMPACT_REVISION)?)
        };
        if current < 1 {
            return Err(DecodeError("snapshot has no current revision".into()).into());
        }
        wtx.commit()?;
        self.set_revisions(current, compacted);
        let alarms = {
            let rtx = db.begin_read()?;
            crate::maintenance::read_alarms(&rtx.open_table(META)?)?
        };
        self.set_alarms(alarms);
        Ok(())
    }

    fn set_revisions(&self, current: i64, compacted: i64) {
        self.current_revision_atomic().store(current, Ordering::Release);
        self.compact_revision_atomic().store(compacted, Ordering::Release);
    }
}

struct CrcReader<R: Read> {
    inner: R,
    crc: crc32fast::Hasher,
}

impl<R: Read> CrcReader<R> {
    fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), StoreError> {
        self.inner.read_exact(buf)?;
        self.crc.update(buf);
        Ok(())
    }
    fn u8(&mut self) -> Result<u8, StoreError> {
        let mut b = [0u8; 1];
        self.read_exact(&mut b)?;
        Ok(b[0])
    }
    fn u32(&mut self) -> Result<u32, StoreError> {
        let mut b = [0u8; 4];
        self.read_exact(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }
    fn u64(&mut self) -> Result<u64, StoreError> {
        let mut b = [0u8; 8];
        self.read_exact(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }
    fn i64(&mut self) -> Result<i64, StoreError> {
        Ok(self.u64()? as i64)
    }
    fn field(&mut self) -> Result<Vec<u8>, StoreError> {
        let n = self.u32()? as usize;
        if n > MAX_FIELD_BYTES {
            return Err(DecodeError(format!("snapshot field of {n} bytes")).into());
        }
        let mut v = vec![0u8; n];
        self.read_exact(&mut v)?;
        Ok(v)
    }
}
