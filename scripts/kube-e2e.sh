#!/usr/bin/env bash
# An unmodified kube-apiserver end to end against etcd 3.5.1 and Cairn (opt-in, not part of
# scripts/test.sh): builds kube-apiserver (scripts/build-kube-apiserver.sh; cached, cold
# ~14 min) and runs the `kube` test module of the `it` test binary with it.
#   scripts/kube-e2e.sh                 # K8S_VERSION=v1.37.2 by default
#   CAIRN_DIFF_PRINT=1 scripts/kube-e2e.sh   # also print the etcd transcript
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${REPO_ROOT}"

APISERVER="$(./scripts/build-kube-apiserver.sh)"
# The test starts target/<profile>/cairn: build it first, as scripts/test.sh does.
cargo build -p cairn-server --bin cairn
CAIRN_KUBE_APISERVER="${APISERVER}" cargo test -p cairn-tests --test it kube -- --nocapture
