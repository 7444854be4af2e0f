//! The raft log of earlier versions: one redb file (`member/raft-log.redb`) with a `logs`
//! table (index -> encoded entry) and a `meta` table (vote, committed hint, purge point).
//! Read once, when a member that still has it starts; [`crate::log_store`] copies it into
//! its first segment and removes the file.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

const LOGS: TableDefinition<u64, &[u8]> = TableDefinition::new("logs");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// Everything a legacy log file holds, in its encodings (the same as the segment records').
pub(crate) struct LegacyLog {
    pub vote: Option<Vec<u8>>,
    pub committed: Option<Vec<u8>>,
    pub last_purged: Option<Vec<u8>>,
    pub entries: Vec<(u64, Vec<u8>)>,
}

/// Reads the legacy log at `path`.
pub(crate) fn read(path: &Path) -> Result<LegacyLog, redb::Error> {
    let db = Database::builder().open(path)?;
    let r = db.begin_read()?;
    let meta = r.open_table(META)?;
    let get = |k: &str| -> Result<Option<Vec<u8>>, redb::Error> { Ok(meta.get(k)?.map(|v| v.value().to_vec())) };
    let (vote, committed, last_purged) = (get("vote")?, get("committed")?, get("last_purged")?);
    let logs = r.open_table(LOGS)?;
    let mut entries = Vec::new();
    for row in logs.iter()? {
        let (k, v) = row?;
        entries.push((k.value(), v.value().to_vec()));
    }
    Ok(LegacyLog { vote, committed, last_purged, entries })
}

/// Writes a legacy log file (tests of the migration).
#[doc(hidden)]
pub fn write_for_tests(path: &Path, vote: Option<&[u8]>, entries: &[(u64, Vec<u8>)]) -> Result<(), redb::Error> {
    let db = Database::builder().create(path)?;
    let w = db.begin_write()?;
    {
        let mut logs = w.open_table(LOGS)?;
        let mut meta = w.open_table(META)?;
        for (i, e) in entries {
            logs.insert(*i, e.as_slice())?;
        }
        if let Some(v) = vote {
            meta.insert("vote", v)?;
        }
    }
    w.commit()?;
    Ok(())
}
