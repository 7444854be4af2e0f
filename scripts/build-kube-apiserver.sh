#!/usr/bin/env bash
# Builds an unmodified kube-apiserver from the k8s.io/kubernetes Go module (through the Go
# module proxy) into a cache directory and prints the binary's path on stdout (everything
# else goes to stderr). Does nothing but print the path when the binary is already there.
#
#   scripts/build-kube-apiserver.sh                      # v1.37.2
#   K8S_VERSION=v1.37.2 scripts/build-kube-apiserver.sh
#
# Environment:
#   K8S_VERSION              Kubernetes version (default v1.37.2); its staging modules
#                            (k8s.io/api, apiserver, client-go, ...) are v0.<minor>.<patch>.
#   STAGING_VERSION          override that staging version.
#   CAIRN_KUBE_CACHE_DIR     where to build (default ${XDG_CACHE_HOME:-$HOME/.cache}/cairn);
#                            the binary is <dir>/kube-apiserver-<version>/kube-apiserver.
#   KUBE_BUILD_JOBS          `go build -p` (default 2).
#
# Needs Go as recent as Kubernetes' go.mod asks (v1.37: go 1.26). A cold build downloads
# ~800 MB of modules into GOMODCACHE and fills ~2.7 GB of GOCACHE; it took ~14 min on
# 2 cores. A rebuild with warm caches takes seconds.
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-v1.37.2}
case "$K8S_VERSION" in
    v1.*.*) ;;
    *) echo "K8S_VERSION must look like v1.<minor>.<patch>, not '$K8S_VERSION'" >&2; exit 2 ;;
esac
STAGING_VERSION=${STAGING_VERSION:-v0.${K8S_VERSION#v1.}}
CACHE_DIR=${CAIRN_KUBE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/cairn}
OUT_DIR="$CACHE_DIR/kube-apiserver-$K8S_VERSION"
BIN="$OUT_DIR/kube-apiserver"
JOBS=${KUBE_BUILD_JOBS:-2}

if [ -x "$BIN" ]; then
    echo "$BIN"
    exit 0
fi

command -v go >/dev/null || { echo "go is not installed (Kubernetes $K8S_VERSION needs a recent Go)" >&2; exit 1; }
echo "building kube-apiserver $K8S_VERSION with $(go version) into $OUT_DIR" >&2
start=$(date +%s)

# A throwaway main module that requires k8s.io/kubernetes. Kubernetes' own go.mod replaces
# its staging modules with ./staging/src/... directories, which a module download does not
# have: replace each with its published version instead.
MOD_DIR="$OUT_DIR/module"
mkdir -p "$MOD_DIR"
cd "$MOD_DIR"
KMOD=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
[ -f "$KMOD" ] || { echo "could not download k8s.io/kubernetes@$K8S_VERSION" >&2; exit 1; }
GOVER=$(awk '$1=="go"{print $2; exit}' "$KMOD")
STAGING=$(awk '/^replace/{r=1} r && $2=="=>" && $3 ~ /^\.\/staging/ {print $1}' "$KMOD")
[ -n "$STAGING" ] || { echo "no ./staging replacements found in $KMOD" >&2; exit 1; }
{
    echo "module cairn.test/kube-apiserver-build"
    echo
    echo "go $GOVER"
    echo
    echo "require k8s.io/kubernetes $K8S_VERSION"
    echo
    echo "replace ("
    for m in $STAGING; do printf '\t%s => %s %s\n' "$m" "$m" "$STAGING_VERSION"; done
    echo ")"
} >go.mod
cat >tools.go <<'EOT'
//go:build tools

package tools

import _ "k8s.io/kubernetes/cmd/kube-apiserver"
EOT

go mod tidy >&2
# Static binary, version stamped as Kubernetes' own build does (`kube-apiserver --version`).
# Built to a temporary name and renamed: an interrupted build leaves no binary behind that
# the next run would take as done.
MINOR=$(echo "$K8S_VERSION" | cut -d. -f2)
CGO_ENABLED=0 go build -p "$JOBS" -trimpath -ldflags "-s -w \
    -X k8s.io/component-base/version.gitVersion=$K8S_VERSION \
    -X k8s.io/component-base/version.gitMajor=1 \
    -X k8s.io/component-base/version.gitMinor=$MINOR \
    -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION" \
    -o "$BIN.tmp" k8s.io/kubernetes/cmd/kube-apiserver >&2
"$BIN.tmp" --version >&2
mv "$BIN.tmp" "$BIN"
echo "built in $(($(date +%s) - start)) s" >&2
echo "$BIN"
