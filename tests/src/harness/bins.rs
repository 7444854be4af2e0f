//! Where the binaries are, and which server is under test.
//!
//! Nothing here skips a test: a missing binary is a panic whose message says how to get it.

use std::path::{Path, PathBuf};

use super::ServerKind;

/// The repository root: the parent of this crate's directory.
pub fn repo_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = manifest.parent().expect("the tests crate lives in a subdirectory of the repository");
    root.canonicalize().unwrap_or_else(|_| root.to_path_buf())
}

/// The directory holding `etcd` and `etcdctl`: `$CAIRN_ETCD_BIN_DIR`, or `<repo>/.deps/etcd/bin`.
pub fn etcd_bin_dir() -> PathBuf {
    match std::env::var_os("CAIRN_ETCD_BIN_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => repo_root().join(".deps").join("etcd").join("bin"),
    }
}

fn etcd_tool(name: &str) -> PathBuf {
    let path = etcd_bin_dir().join(name);
    assert!(
        path.is_file(),
        "{name} binary not found at {}: run scripts/install-test-deps.sh (it installs etcd 3.5.1 into \
         .deps/etcd/bin), or point CAIRN_ETCD_BIN_DIR at a directory holding etcd and etcdctl 3.5.1",
        path.display()
    );
    path
}

/// The `etcd` server binary (3.5.1). Panics with instructions when it is missing.
pub fn etcd_bin() -> PathBuf {
    etcd_tool("etcd")
}

/// The `etcdctl` binary (3.5.1). Panics with instructions when it is missing.
pub fn etcdctl_bin() -> PathBuf {
    etcd_tool("etcdctl")
}

/// The `cairn` binary: `$CAIRN_BIN`, or `cairn` in the cargo profile directory this test runs
/// from (the test executable is `target/<profile>/deps/<name>-<hash>`). Panics with
/// instructions when it is missing.
pub fn cairn_bin() -> PathBuf {
    let path = match std::env::var_os("CAIRN_BIN") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => {
            let exe = std::env::current_exe().expect("path of the running test executable");
            let mut dir = exe.parent().expect("the test executable is in a directory").to_path_buf();
            if dir.file_name().is_some_and(|n| n == "deps") {
                dir.pop();
            }
            dir.join("cairn")
        }
    };
    assert!(
        path.is_file(),
        "cairn binary not found at {}; build it with `cargo build -p cairn-server` (scripts/test.sh does \
         `cargo build --workspace --bins` before the tests), or set CAIRN_BIN to its path",
        path.display()
    );
    path
}

/// Which server the "Cairn" side of a test is: `$CAIRN_DIFF_AGAINST` = `cairn` (default) or
/// `etcd`. With `etcd`, differential and etcdctl tests compare etcd with a second etcd, which
/// checks the tests and the harness themselves.
pub fn subject_kind() -> ServerKind {
    match std::env::var("CAIRN_DIFF_AGAINST") {
        Err(_) => ServerKind::Cairn,
        Ok(v) => match v.trim().to_ascii_lowercase().as_str() {
            "" | "cairn" => ServerKind::Cairn,
            "etcd" => ServerKind::Etcd,
            other => panic!("CAIRN_DIFF_AGAINST must be `cairn` or `etcd`, not {other:?}"),
        },
    }
}
