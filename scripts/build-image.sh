#!/usr/bin/env bash
# Build the project's Dockerfile into healingwork:<tag> and print that name as the last line of stdout.
#
# With Docker where an engine answers (`docker info`); otherwise with buildah (`make tools` installs it and
# builds the base images locally): chroot isolation, vfs storage, never pulling. The build log goes to stderr.
# IMAGE_TAG overrides the tag (default: `git describe --always --dirty`).
#
# buildah only: the RUN steps see the host's CA bundle and run uv with the platform's certificates, both
# bind-mounted read-only for the build and not part of the image, so a TLS-intercepting egress proxy the host
# trusts is trusted by `uv sync` too (uv otherwise uses its built-in roots). Where the host trusts no such
# proxy this changes nothing.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
tag="${IMAGE_TAG:-$(git describe --always --dirty 2>/dev/null || echo dev)}"
image="healingwork:$tag"

fail() {
    echo "build-image: $*" >&2
    exit 1
}

if command -v docker >/dev/null && timeout 10 docker info >/dev/null 2>&1; then
    docker build -t "$image" . >&2 || fail "docker build failed"
    echo "$image"
    exit 0
fi

command -v buildah >/dev/null || fail "no Docker engine answers and buildah is not installed: run \`make tools\`"
bah() { buildah --storage-driver vfs "$@"; }
for base in "$(sed -n 's/^FROM \(ghcr\.io\/astral-sh\/uv:[^[:space:]]*\).*/\1/p' Dockerfile)" \
    "$(sed -n 's/^ARG PYTHON_IMAGE=\([^[:space:]]*\).*/\1/p' Dockerfile)"; do
    bah inspect --type image "$base" >/dev/null 2>&1 || fail "base image $base is missing: run \`make tools\`"
done

build_mounts=()
if [[ -f /etc/ssl/certs/ca-certificates.crt ]]; then
    # uv reads ~/.config/uv/uv.toml; mounting over /root (which the base image has) leaves no mount point
    # behind in the image, as a file under a missing directory would with this buildah.
    home="$(mktemp -d "${TMPDIR:-/tmp}/build-image.XXXXXX")"
    trap 'rm -rf "$home"' EXIT
    mkdir -p "$home/.config/uv" "$home/.cache/uv"
    echo "system-certs = true" >"$home/.config/uv/uv.toml"
    build_mounts+=(-v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro -v "$home:/root:ro")
fi

previous="$(bah inspect --type image --format '{{.FromImageID}}' "$image" 2>/dev/null || true)"
containers_before="$(bah containers --quiet)"
status=0
bah bud --isolation chroot --pull=never "${build_mounts[@]}" -t "$image" . >&2 || status=$?
# This buildah leaves the working containers of some stages behind (here: the uv stage and the last one);
# with vfs each is a full copy of its image. Remove the ones this build created.
comm -13 <(sort <<<"$containers_before") <(bah containers --quiet | sort) |
    xargs --no-run-if-empty buildah --storage-driver vfs rm >/dev/null
((status == 0)) || fail "buildah bud failed (exit $status)"
current="$(bah inspect --type image --format '{{.FromImageID}}' "$image")"
# A rebuild under the same tag leaves the previous image nameless; with vfs every image is a full copy.
if [[ -n "$previous" && "$previous" != "$current" ]]; then
    bah rmi "$previous" >/dev/null 2>&1 || true
fi
echo "$image"
