//! Maintenance: alarms (capped apply, persistence), HashKV, defragmentation while applies run.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use cairn_storage::*;

fn put(k: &str, v: &[u8]) -> Command {
    Command::Put(PutRequest { key: k.as_bytes().to_vec(), value: v.to_vec(), ..Default::default() })
}

fn del_prefix(p: &str) -> Command {
    let mut end = p.as_bytes().to_vec();
    *end.last_mut().expect("non-empty prefix") += 1;
    Command::DeleteRange(DeleteRangeRequest { key: p.as_bytes().to_vec(), range_end: end, prev_kv: false })
}

fn apply(s: &Store, index: &AtomicU64, cmd: Command) -> Applied {
    let i = index.fetch_add(1, Ordering::SeqCst) + 1;
    let out = s.apply_batch(&[ApplyEntry { index: i, command: Some(&cmd) }], b"raft", false).expect("apply");
    out.applied.into_iter().next().flatten().expect("one outcome")
}

fn all(s: &Store) -> Vec<KeyValue> {
    let r = RangeRequest { key: vec![0], range_end: vec![0], ..Default::default() };
    s.read().expect("read").range(&r).expect("store").expect("request").kvs
}

const NOSPACE: AlarmMember = AlarmMember { member_id: 42, alarm: AlarmType::NoSpace };

#[test]
fn nospace_alarm_caps_writes_and_survives_reopen() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("s.redb");
    let idx = AtomicU64::new(0);
    {
        let s = Store::open(&path, StoreOptions::default()).expect("open");
        apply(&s, &idx, put("a", b"1"));
        let a = apply(&s, &idx, Command::Alarm { action: AlarmAction::Activate, alarm: NOSPACE });
        assert_eq!(a.result, Ok(CommandResponse::Alarm(vec![NOSPACE])));
        // Raising it again answers with the alarm and changes nothing.
        let a = apply(&s, &idx, Command::Alarm { action: AlarmAction::Activate, alarm: NOSPACE });
        assert_eq!(a.result, Ok(CommandResponse::Alarm(vec![NOSPACE])));
        assert_eq!(s.alarms(), vec![NOSPACE]);
        let rev = s.current_revision();
        assert_eq!(apply(&s, &idx, put("b", b"2")).result, Err(RequestError::NoSpace));
        assert_eq!(apply(&s, &idx, Command::LeaseGrant { id: 5, ttl_secs: 10 }).result, Err(RequestError::NoSpace));
        // A txn whose branches only read or delete still works; one with a put does not.
        let txn_put = Command::Txn(TxnRequest {
            compare: vec![],
            success: vec![],
            failure: vec![RequestOp::Put(PutRequest { key: b"c".to_vec(), ..Default::default() })],
        });
        assert_eq!(apply(&s, &idx, txn_put).result, Err(RequestError::NoSpace));
        assert_eq!(s.current_revision(), rev, "refused writes make no revision");
        assert!(apply(&s, &idx, del_prefix("a")).result.is_ok(), "deletes work under NOSPACE");
        assert!(apply(&s, &idx, Command::Compact(CompactionRequest { revision: 2, physical: false })).result.is_ok());
    }
    let s = Store::open(&path, StoreOptions::default()).expect("reopen");
    assert_eq!(s.alarms(), vec![NOSPACE], "alarms survive a restart");
    assert_eq!(apply(&s, &idx, put("b", b"2")).result, Err(RequestError::NoSpace));
    let d = apply(&s, &idx, Command::Alarm { action: AlarmAction::Deactivate, alarm: NOSPACE });
    assert_eq!(d.result, Ok(CommandResponse::Alarm(vec![NOSPACE])));
    let d = apply(&s, &idx, Command::Alarm { action: AlarmAction::Deactivate, alarm: NOSPACE });
    assert_eq!(d.result, Ok(CommandResponse::Alarm(vec![])), "clearing an absent alarm changes nothing");
    assert!(s.alarms().is_empty());
    assert!(apply(&s, &idx, put("b", b"2")).result.is_ok());
}

#[test]
fn hash_kv_ignores_physical_compaction_progress_and_checks_revisions() {
    let dir = tempfile::tempdir().expect("temp dir");
    let idx_a = AtomicU64::new(0);
    let idx_b = AtomicU64::new(0);
    let a = Store::open(&dir.path().join("a.redb"), StoreOptions { compaction_batch_rows: 3 }).expect("open");
    let b = Store::open(&dir.path().join("b.redb"), StoreOptions { compaction_batch_rows: 3 }).expect("open");
    for (s, idx) in [(&a, &idx_a), (&b, &idx_b)] {
        for i in 0..20 {
            apply(s, idx, put(&format!("k{}", i % 7), format!("v{i}").as_bytes()));
        }
        apply(s, idx, del_prefix("k3"));
        apply(s, idx, put("z", b"last"));
    }
    let h = |s: &Store, r| s.hash_kv(r).expect("store").expect("request");
    assert_eq!(h(&a, 0), h(&b, 0));
    assert_eq!(h(&a, 10), h(&b, 10));
    assert_ne!(h(&a, 10).0, h(&a, 0).0);
    assert_eq!(h(&a, 0).2, a.current_revision());
    for (s, idx) in [(&a, &idx_a), (&b, &idx_b)] {
        apply(s, idx, Command::Compact(CompactionRequest { revision: 15, physical: false }));
    }
    // a finishes physical compaction, b does only one step: same hashes.
    while !a.compact_step().expect("compact") {}
    b.compact_step().expect("one step");
    assert_ne!(a.debug_row_counts().expect("rows"), b.debug_row_counts().expect("rows"));
    assert_eq!(h(&a, 0), h(&b, 0));
    assert_eq!(h(&a, 15), h(&b, 15));
    assert_eq!(h(&a, 0).1, 15);
    assert_eq!(a.hash_kv(14).expect("store"), Err(RequestError::Compacted { compact_revision: 15 }));
    let cur = a.current_revision();
    assert_eq!(a.hash_kv(cur + 1).expect("store"), Err(RequestError::FutureRevision { current_revision: cur }));
}

#[test]
fn defragment_shrinks_the_file_and_keeps_every_write_made_meanwhile() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("s.redb");
    let s = Arc::new(Store::open(&path, StoreOptions::default()).expect("open"));
    let idx = Arc::new(AtomicU64::new(0));
    let big = vec![7u8; 4096];
    for i in 0..3000 {
        apply(&s, &idx, put(&format!("big/{i:05}"), &big));
    }
    apply(&s, &idx, del_prefix("big/"));
    // Every table comes along, the auth tables included.
    let user = AuthCommand::UserAdd { name: "alice".into(), password_hash: b"h".to_vec(), no_password: false };
    assert!(apply(&s, &idx, Command::Auth(user)).result.is_ok());
    assert!(apply(&s, &idx, Command::Auth(AuthCommand::RoleAdd { name: "r".into() })).result.is_ok());
    let lease = apply(&s, &idx, Command::LeaseGrant { id: 77, ttl_secs: 100 });
    assert!(lease.result.is_ok());
    let auth_before = s.auth_state().expect("auth state");
    let leases_before = s.leases().expect("leases").len();
    let rev = s.current_revision();
    apply(&s, &idx, Command::Compact(CompactionRequest { revision: rev, physical: false }));
    while !s.compact_step().expect("compact") {}
    s.flush().expect("flush");
    let before = Store::db_size(&path);
    // A writer keeps applying during the defragmentation.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (s, idx, stop) = (s.clone(), idx.clone(), stop.clone());
        std::thread::spawn(move || {
            // Bounded, so that the live data stays small however slow the build is.
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) && n < 5000 {
                apply(&s, &idx, put(&format!("live/{n:06}"), format!("v{n}").as_bytes()));
                n += 1;
            }
            n
        })
    };
    // Let the writer get going, then defragment.
    while s.current_revision() < rev + 50 {
        std::thread::yield_now();
    }
    let report = s.defragment().expect("defragment");
    eprintln!("defragment: {report:?}");
    let mid = s.current_revision();
    while s.current_revision() < mid + 50 && !writer.is_finished() {
        std::thread::yield_now();
    }
    stop.store(true, Ordering::SeqCst);
    let written = writer.join().expect("writer");
    let after = Store::db_size(&path);
    assert!(after < before / 4, "defragment should shrink {before} bytes, got {after} ({report:?})");
    let kvs = all(&s);
    assert_eq!(kvs.len(), written, "every write before, during and after the switch is there");
    for (i, kv) in kvs.iter().enumerate() {
        assert_eq!(kv.key, format!("live/{i:06}").into_bytes());
        assert_eq!(kv.value, format!("v{i}").into_bytes());
    }
    assert_eq!(s.applied().expect("applied").0, idx.load(Ordering::SeqCst));
    assert_eq!(s.auth_state().expect("auth state").users.len(), auth_before.users.len());
    assert_eq!(s.auth_state().expect("auth state").roles.len(), auth_before.roles.len());
    assert_eq!(s.auth_state().expect("auth state").revision, auth_before.revision);
    assert_eq!(s.leases().expect("leases").len(), leases_before);
    // And it all survives a reopen of the new file.
    let cur = s.current_revision();
    drop(s);
    let s = Store::open(&path, StoreOptions::default()).expect("reopen");
    assert_eq!(s.current_revision(), cur);
    assert_eq!(all(&s).len(), written);
    assert!(!dir.path().join("s.redb.defrag").exists());
    assert!(!dir.path().join("s.redb.defrag-log").exists());
}

#[test]
fn corrupt_alarm_refuses_every_write_and_auth_race_rules_hold() {
    let dir = tempfile::tempdir().expect("temp dir");
    let s = Store::open(&dir.path().join("s.redb"), StoreOptions::default()).expect("open");
    let idx = AtomicU64::new(0);
    apply(&s, &idx, put("a", b"1"));
    let corrupt = AlarmMember { member_id: 1, alarm: AlarmType::Corrupt };
    apply(&s, &idx, Command::Alarm { action: AlarmAction::Activate, alarm: corrupt });
    for cmd in [put("b", b"2"), del_prefix("a"), Command::Compact(CompactionRequest { revision: 1, physical: false })] {
        assert_eq!(apply(&s, &idx, cmd).result, Err(RequestError::Corrupt));
    }
    apply(&s, &idx, Command::Alarm { action: AlarmAction::Deactivate, alarm: corrupt });
    assert!(apply(&s, &idx, put("b", b"2")).result.is_ok());

    // A write checked while auth was disabled (revision 0) but applied after AuthEnable is
    // refused as etcd refuses a request without a user; compaction and lease grants need no
    // permission and go through.
    let root = AuthCommand::UserAdd { name: "root".into(), password_hash: b"h".to_vec(), no_password: false };
    assert!(apply(&s, &idx, Command::Auth(root)).result.is_ok());
    let grant = AuthCommand::UserGrantRole { user: "root".into(), role: "root".into() };
    assert!(apply(&s, &idx, Command::Auth(grant)).result.is_ok());
    assert!(apply(&s, &idx, Command::Auth(AuthCommand::Enable)).result.is_ok());
    let late = |c: Command| Command::AuthChecked { auth_revision: 0, command: Box::new(c) };
    assert_eq!(apply(&s, &idx, late(put("c", b"3"))).result, Err(RequestError::UserEmpty));
    assert!(apply(&s, &idx, late(Command::LeaseGrant { id: 9, ttl_secs: 60 })).result.is_ok());
    // Checked under auth at the current revision: applies; after a change: refused.
    let rev = s.auth_state().expect("auth").revision;
    let checked = |c: Command, r| Command::AuthChecked { auth_revision: r, command: Box::new(c) };
    assert!(apply(&s, &idx, checked(put("d", b"4"), rev)).result.is_ok());
    assert!(apply(&s, &idx, Command::Auth(AuthCommand::RoleAdd { name: "x".into() })).result.is_ok());
    assert_eq!(apply(&s, &idx, checked(put("e", b"5"), rev)).result, Err(RequestError::AuthOldRevision));
    // After AuthDisable, a write checked under auth goes through (etcd checks nothing then).
    assert!(apply(&s, &idx, Command::Auth(AuthCommand::Disable)).result.is_ok());
    assert!(apply(&s, &idx, checked(put("f", b"6"), rev)).result.is_ok());
}
