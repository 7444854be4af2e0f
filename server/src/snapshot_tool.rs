//! `cairn snapshot restore|status`: the offline side of `etcdctl snapshot save`, in the
//! spirit of etcdutl. A snapshot file is what the Maintenance.Snapshot stream sent: Cairn's
//! store export with its checksum (docs/FORMAT.md).

use std::path::{Path, PathBuf};

use cairn_storage::{Store, StoreOptions};

use crate::config::{self, Invocation};

const USAGE: &str = "Usage:
  cairn snapshot restore <file> [--data-dir DIR] [--name NAME] [--initial-cluster CLUSTER]
                                [--initial-cluster-token TOKEN] [--initial-advertise-peer-urls URLS]
      Restores a snapshot (from `etcdctl snapshot save`) into a new data directory that a new
      member serves, with the same keys, revisions, leases and compacted revision.
  cairn snapshot status <file> [-w simple|json|table]
      Checks a snapshot file and prints its hash, revision, key count and size.";

/// What the snapshot holds (`cairn snapshot status`).
#[derive(Debug)]
pub struct SnapshotInfo {
    /// crc32 of the whole file (its integrity check covers everything before the trailer).
    pub hash: u32,
    pub revision: i64,
    /// Key revisions stored (rows of the key index).
    pub total_key: u64,
    pub total_size: u64,
}

/// Entry point of `cairn snapshot ...`; returns the process exit code.
pub fn main(args: &[String]) -> i32 {
    let result = match args.first().map(String::as_str) {
        Some("restore") => restore_cmd(&args[1..]),
        Some("status") => status_cmd(&args[1..]),
        _ => Err(USAGE.to_string()),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("Error: {e}");
            1
        }
    }
}

fn restore_cmd(args: &[String]) -> Result<(), String> {
    let Some(file) = args.first() else {
        return Err(format!("snapshot restore needs a file\n{USAGE}"));
    };
    for a in &args[1..] {
        let name = a.trim_start_matches('-').split('=').next().unwrap_or_default();
        if a.starts_with('-')
            && ![
                "data-dir",
                "name",
                "initial-cluster",
                "initial-cluster-token",
                "initial-advertise-peer-urls",
                "skip-hash-check",
            ]
            .contains(&name)
        {
            return Err(format!("unknown flag: {a}\n{USAGE}"));
        }
    }
    // The member flags mean what they mean to `cairn` itself (defaults included).
    let skip_hash_check = args[1..].iter().any(|a| a.contains("skip-hash-check"));
    let rest: Vec<String> = args[1..].iter().filter(|a| !a.contains("skip-hash-check")).cloned().collect();
    let cfg = match config::parse(&rest, &|_| None).map_err(|e| e.to_string())? {
        Invocation::Run(c) => *c,
        _ => return Err(USAGE.to_string()),
    };
    if !skip_hash_check {
        verify_sha256(Path::new(file))?;
    }
    restore(Path::new(file), &cfg)?;
    println!("restored snapshot {file} into {}", cfg.data_dir.display());
    Ok(())
}

/// Checks the sha256 trailer that the Snapshot stream ends with.
pub fn verify_sha256(file: &Path) -> Result<(), String> {
    use sha2::Digest;
    use std::io::Read;
    let mut f = std::fs::File::open(file).map_err(|e| format!("open {}: {e}", file.display()))?;
    let len = f.metadata().map_err(|e| e.to_string())?.len();
    if len % crate::maintenance::SNAPSHOT_ALIGN != 32 {
        return Err(format!(
            "snapshot file {} has no sha256 trailer (size {len}); use --skip-hash-check for a file not made by a Snapshot stream",
            file.display()
        ));
    }
    let mut sha = sha2::Sha256::new();
    let mut left = len - 32;
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let n = (left as usize).min(buf.len());
        f.read_exact(&mut buf[..n]).map_err(|e| e.to_string())?;
        sha.update(&buf[..n]);
        left -= n as u64;
    }
    let mut want = [0u8; 32];
    f.read_exact(&mut want).map_err(|e| e.to_string())?;
    if sha.finalize().as_slice() != want {
        return Err("expected sha256 does not match the snapshot data".into());
    }
    Ok(())
}

/// Restores `file` into `cfg.data_dir`, which must not exist yet.
pub fn restore(file: &Path, cfg: &config::Config) -> Result<(), String> {
    if cfg.data_dir.exists() {
        return Err(format!("data-dir {:?} exists", cfg.data_dir.display().to_string()));
    }
    let input = std::fs::File::open(file).map_err(|e| format!("open {}: {e}", file.display()))?;
    let member = cfg.data_dir.join("member");
    let fail = |e: String| {
        let _ = std::fs::remove_dir_all(&cfg.data_dir);
        e
    };
    std::fs::create_dir_all(&member).map_err(|e| fail(format!("create {}: {e}", member.display())))?;
    let store = Store::open(&member.join("state.redb"), StoreOptions::default()).map_err(|e| fail(e.to_string()))?;
    store
        .import_snapshot(std::io::BufReader::new(input))
        .map_err(|e| fail(format!("{}: not a valid snapshot: {e}", file.display())))?;
    store.reset_for_new_member().map_err(|e| fail(e.to_string()))?;
    drop(store);
    let initial = crate::initial_member_ids(cfg).map_err(fail)?;
    crate::load_or_make_ids(&member, cfg, &initial).map_err(fail)?;
    Ok(())
}

fn status_cmd(args: &[String]) -> Result<(), String> {
    let mut file = None;
    let mut format = "simple".to_string();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        i += 1;
        if let Some(v) = a.strip_prefix("--write-out=").or_else(|| a.strip_prefix("-w=")) {
            format = v.to_string();
        } else if a == "-w" || a == "--write-out" {
            format = args.get(i).cloned().ok_or("flag needs an argument: -w")?;
            i += 1;
        } else if a.starts_with('-') {
            return Err(format!("unknown flag: {a}\n{USAGE}"));
        } else {
            file = Some(PathBuf::from(a));
        }
    }
    let file = file.ok_or_else(|| format!("snapshot status needs a file\n{USAGE}"))?;
    let info = status(&file)?;
    match format.as_str() {
        "json" => println!(
            "{{\"hash\":{},\"revision\":{},\"totalKey\":{},\"totalSize\":{}}}",
            info.hash, info.revision, info.total_key, info.total_size
        ),
        "table" => {
            let row = [
                format!("{:x}", info.hash),
                info.revision.to_string(),
                info.total_key.to_string(),
                human(info.total_size),
            ];
            let heads = ["HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE"];
            let widths: Vec<usize> = heads.iter().zip(&row).map(|(h, r)| h.len().max(r.len()) + 2).collect();
            let line = widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>().join("+");
            println!("+{line}+");
            let fmt = |cells: Vec<String>| -> String {
                cells.iter().zip(&widths).map(|(c, w)| format!("{c:^w$}")).collect::<Vec<_>>().join("|")
            };
            println!("|{}|", fmt(heads.iter().map(|s| s.to_string()).collect()));
            println!("+{line}+");
            println!("|{}|", fmt(row.to_vec()));
            println!("+{line}+");
        }
        "simple" => println!("{:x}, {}, {}, {}", info.hash, info.revision, info.total_key, human(info.total_size)),
        other => return Err(format!("unknown output format {other:?} (simple, json or table)")),
    }
    Ok(())
}

/// Checks `file` (by loading it into a scratch store) and describes it.
pub fn status(file: &Path) -> Result<SnapshotInfo, String> {
    let bytes = std::fs::read(file).map_err(|e| format!("read {}: {e}", file.display()))?;
    let scratch = std::env::temp_dir().join(format!("cairn-snapshot-status-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).map_err(|e| e.to_string())?;
    let result = (|| {
        let store = Store::open(&scratch.join("s.redb"), StoreOptions::default()).map_err(|e| e.to_string())?;
        store
            .import_snapshot(bytes.as_slice())
            .map_err(|e| format!("{}: not a valid snapshot: {e}", file.display()))?;
        let rows = store.debug_row_counts().map_err(|e| e.to_string())?;
        Ok(SnapshotInfo {
            hash: crc32fast::hash(&bytes),
            revision: store.current_revision(),
            total_key: rows.key_index,
            total_size: bytes.len() as u64,
        })
    })();
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

/// Sizes as etcd prints them (go-humanize, SI units).
fn human(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "kB", "MB", "GB", "TB", "PB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else if v < 10.0 {
        format!("{:.1} {}", v, UNITS[u])
    } else {
        format!("{:.0} {}", v, UNITS[u])
    }
}
