#!/usr/bin/env bash
# Build the Kubernetes control plane the kubernetes test suite runs against (tests/support/kubernetes.py):
# kube-apiserver and etcd, from the Go module proxy, into ./.tools/bin.
#
# The versions are pinned by the two wrapper modules beside this script, the single source:
#   scripts/tools/kube-apiserver/go.mod  k8s.io/kubernetes, its staging modules replaced by their releases
#   scripts/tools/etcd/go.mod            go.etcd.io/etcd/server/v3
# Their go.sum files are committed and the build runs with -mod=readonly, so nothing is resolved anew.
#
# Idempotent: a stamp holds the hash of both modules' go.mod and go.sum; while it matches and both binaries
# are there, nothing is built. Go's own module and build caches ($GOMODCACHE, $GOCACHE) are kept, so a
# rebuild after a version bump compiles only what changed. Needs Go >= 1.26 (k8s.io/kubernetes' go.mod).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
modules="$root/scripts/tools"
bin="$root/.tools/bin"
stamp="$bin/.kubernetes-build"

fail() {
    echo "ensure-tools: $*" >&2
    exit 1
}

required_version() { # module-file module-path -> the version it requires
    awk -v module="$2" '$1 == "require" && $2 == module { print $3 } $1 == module && $2 ~ /^v/ { print $2 }' "$1" | head -n 1
}

kubernetes_version="$(required_version "$modules/kube-apiserver/go.mod" k8s.io/kubernetes)"
etcd_version="$(required_version "$modules/etcd/go.mod" go.etcd.io/etcd/server/v3)"
[[ -n "$kubernetes_version" && -n "$etcd_version" ]] || fail "cannot read the pinned versions from $modules/*/go.mod"
wanted="$(cat "$modules"/kube-apiserver/go.{mod,sum} "$modules"/etcd/go.{mod,sum} | sha256sum | cut -d' ' -f1)"

installed() {
    [[ -x "$bin/kube-apiserver" && -x "$bin/etcd" && -f "$stamp" && "$(cat "$stamp")" == "$wanted" ]]
}

if ! installed; then
    command -v go >/dev/null || fail "Go is required to build kube-apiserver and etcd (apt-get install golang, or go.dev/dl)"
    mkdir -p "$bin"
    # The toolchain found on PATH builds, never one downloaded because a go.mod names a newer one.
    export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-mod=readonly -buildvcs=false"
    started=$SECONDS
    build() { # module-dir binary package [ldflags...]
        local module=$1 binary=$2 package=$3
        shift 3
        echo "ensure-tools: building $binary ($package) with $(go env GOVERSION); a cold build takes long" >&2
        (cd "$modules/$module" && go build -trimpath -ldflags="-s -w $*" -o "$bin/$binary.new" "$package") ||
            fail "building $binary failed (see the go output above)"
    }
    # kube-apiserver reports this version (/version, kubectl version, helm's kubeVersion check); without
    # it a module build would call itself v0.0.0-master.
    minor="${kubernetes_version#v*.}"
    minor="${minor%%.*}"
    version_package=k8s.io/component-base/version
    build kube-apiserver kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver \
        "-X $version_package.gitVersion=$kubernetes_version" \
        "-X $version_package.gitMajor=1" \
        "-X $version_package.gitMinor=$minor" \
        "-X $version_package.gitTreeState=clean"
    build etcd etcd go.etcd.io/etcd/server/v3
    # Moved into place only once both are built, so an interrupted run never leaves a stamp that lies.
    mv -f "$bin/kube-apiserver.new" "$bin/kube-apiserver"
    mv -f "$bin/etcd.new" "$bin/etcd"
    echo "$wanted" >"$stamp"
    echo "ensure-tools: built kube-apiserver $kubernetes_version and etcd $etcd_version in $((SECONDS - started)) s" >&2
fi

"$bin/kube-apiserver" --version >/dev/null 2>&1 || fail "$bin/kube-apiserver does not run"
"$bin/etcd" --version >/dev/null 2>&1 || fail "$bin/etcd does not run"
echo "kube-apiserver $kubernetes_version, etcd $etcd_version ($bin)"
