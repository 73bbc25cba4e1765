#!/usr/bin/env bash
# Build promtool (Prometheus' rule checker) into ./.tools/promtool, from the Go module proxy: the chart
# tests evaluate the rendered alert rules with `promtool test rules` (tests/chart/test_chart_names_and_alerts.py).
#
# The version is pinned by the wrapper module beside this script (scripts/tools/promtool/go.mod and its
# committed go.sum; built with -mod=readonly). Idempotent: a stamp holds the hash of both files; while it
# matches and the binary is there, nothing is built. A cold build takes minutes (Prometheus' dependencies).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
module="$root/scripts/tools/promtool"
target="$root/.tools/promtool"
stamp="$target/.build"

fail() {
    echo "ensure-tools: $*" >&2
    exit 1
}

wanted="$(cat "$module"/go.{mod,sum} | sha256sum | cut -d' ' -f1)"
if ! [[ -x "$target/promtool" && -f "$stamp" && "$(cat "$stamp")" == "$wanted" ]]; then
    command -v go >/dev/null || fail "Go is required to build promtool"
    mkdir -p "$target"
    export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-mod=readonly -buildvcs=false"
    started=$SECONDS
    echo "ensure-tools: building promtool with $(go env GOVERSION); a cold build takes long" >&2
    (cd "$module" && go build -trimpath -ldflags="-s -w" -o "$target/promtool.new" github.com/prometheus/prometheus/cmd/promtool) ||
        fail "building promtool failed (see the go output above)"
    mv -f "$target/promtool.new" "$target/promtool"
    echo "$wanted" >"$stamp"
    echo "ensure-tools: built promtool in $((SECONDS - started)) s" >&2
fi
"$target/promtool" --version >/dev/null 2>&1 || fail "$target/promtool does not run"
echo "promtool ($target/promtool)"
