//! Compiles Cairn's etcd-compatible .proto files (under `proto/`) with
//! tonic-prost-build: messages, gRPC servers and gRPC clients.

use std::env;
use std::path::{Path, PathBuf};

const PROTO_ROOT: &str = "proto";

const PROTOS: &[&str] = &[
    "proto/mvccpb/kv.proto",
    "proto/authpb/auth.proto",
    "proto/etcdserverpb/rpc.proto",
    "proto/v3lockpb/v3lock.proto",
    "proto/v3electionpb/v3election.proto",
    "proto/cairnpeerpb/peer.proto",
];

const NO_PROTOC: &str = "cairn-proto: `protoc` (the Protocol Buffers compiler) was not found. \
Run scripts/install-test-deps.sh, or install it yourself (Debian/Ubuntu: \
`apt-get install protobuf-compiler`), or set PROTOC to the path of a protoc binary.";

/// `$PROTOC` if set (it must point at an existing file), else `protoc` on `$PATH`.
fn find_protoc() -> PathBuf {
    if let Some(p) = env::var_os("PROTOC") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return p;
        }
        panic!("{NO_PROTOC}\n(PROTOC is set to {}, which is not a file.)", p.display());
    }
    let exe = if cfg!(windows) { "protoc.exe" } else { "protoc" };
    env::var_os("PATH")
        .and_then(|paths| env::split_paths(&paths).map(|dir| dir.join(exe)).find(|candidate| candidate.is_file()))
        .unwrap_or_else(|| panic!("{NO_PROTOC}"))
}

fn main() {
    println!("cargo:rerun-if-env-changed=PROTOC");
    println!("cargo:rerun-if-env-changed=PATH");
    println!("cargo:rerun-if-changed={PROTO_ROOT}");
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    for proto in PROTOS {
        assert!(Path::new(proto).is_file(), "cairn-proto: missing {proto}");
    }

    let protoc = find_protoc();
    // prost-build reads PROTOC; point it at the binary we resolved.
    env::set_var("PROTOC", &protoc);

    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let descriptor_path = out_dir.join("cairn_descriptor.bin");
    tonic_prost_build::configure()
        .file_descriptor_set_path(&descriptor_path)
        .build_server(true)
        .build_client(true)
        // Every proto `bytes` field (keys, values, range ends, blobs...) is
        // generated as `bytes::Bytes`, so buffers can be shared without copies.
        .bytes(".")
        .compile_protos(PROTOS, &[PROTO_ROOT])
        .unwrap_or_else(|e| panic!("cairn-proto: compiling the .proto files with {} failed: {e}", protoc.display()));

    // Feature `json`: serde impls in the JSON mapping etcd's grpc-gateway uses (Go's jsonpb
    // with OrigName): proto field names on output, proto or lowerCamelCase names accepted on
    // input, unknown fields ignored as the gateway ignores them.
    println!("cargo:rerun-if-env-changed=CARGO_FEATURE_JSON");
    if env::var_os("CARGO_FEATURE_JSON").is_some() {
        let descriptors = std::fs::read(&descriptor_path)
            .unwrap_or_else(|e| panic!("cairn-proto: read {}: {e}", descriptor_path.display()));
        pbjson_build::Builder::new()
            .register_descriptors(&descriptors)
            .unwrap_or_else(|e| panic!("cairn-proto: pbjson cannot read the descriptors: {e}"))
            .preserve_proto_field_names()
            .ignore_unknown_fields()
            .build(&[".mvccpb", ".authpb", ".etcdserverpb", ".v3lockpb", ".v3electionpb"])
            .unwrap_or_else(|e| panic!("cairn-proto: generating the JSON mapping failed: {e}"));
    }
}
