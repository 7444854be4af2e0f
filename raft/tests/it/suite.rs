use std::sync::Arc;

use cairn_raft::log_store::LogStore;
use cairn_raft::state_machine::StateMachine;
use cairn_raft::types::{StorageError, TypeConfig};
use cairn_storage::{Store, StoreOptions};
use openraft::testing::{StoreBuilder, Suite};

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = LogStore::open(&dir.path().join("wal"), None)?;
        let store = Arc::new(Store::open(&dir.path().join("state.redb"), StoreOptions::default()).expect("open store"));
        let sm = StateMachine::new(store, dir.path().join("snap"))?;
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite() {
    Suite::test_all(Builder).expect("openraft storage suite");
}
