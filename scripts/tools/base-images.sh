#!/usr/bin/env bash
# Build, locally, the two base images the Dockerfile names, so it builds unmodified with --pull=never on a
# machine that reaches no container registry (only PyPI and Debian):
#
#   python:3.11-slim-bookworm   debootstrap --variant=minbase of Debian bookworm (whose python3 is 3.11),
#                               security updates applied, docs/man/locales left out as the official slim
#                               image does, python3.11/python3/python on PATH under /usr/local/bin.
#   ghcr.io/astral-sh/uv:X.Y.Z  a scratch image with /uv and /uvx from the musllinux (static) wheel of uv X.Y.Z
#                               on PyPI; X.Y.Z is read from the Dockerfile's FROM line.
#
# Installs Debian's buildah and debootstrap with apt when missing (needs root). buildah runs with
# `--storage-driver vfs` (no overlay mounts needed) and the images live in /var/lib/containers/storage.
# The debootstrap result is cached as a tarball in .tools/base-images, keyed by a hash of this script, so a
# rerun with the images present does nothing, and a machine with .tools cached but a fresh image store only
# re-imports the tarball. Idempotent; prints one line per image.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cache="$root/.tools/base-images"
DEBIAN_SUITE="bookworm"
DEBIAN_MIRROR="http://deb.debian.org/debian"
DEBIAN_SECURITY_MIRROR="http://deb.debian.org/debian-security"
# What the Dockerfile's RUN lines and the runtime need besides minbase (passwd, for groupadd/useradd, is in it).
DEBIAN_PACKAGES="python3,ca-certificates,netbase,tzdata"
RECIPE_LABEL="io.healingwork.base-recipe"

fail() {
    echo "base-images: $*" >&2
    exit 1
}

# The names exactly as the Dockerfile spells them; a Docker-style short name is stored fully qualified
# (docker.io/library/…), which is what Docker and buildah resolve it to.
python_image="$(sed -n 's/^ARG PYTHON_IMAGE=\([^[:space:]]*\).*/\1/p' "$root/Dockerfile")"
uv_image="$(sed -n 's/^FROM \(ghcr\.io\/astral-sh\/uv:[^[:space:]]*\).*/\1/p' "$root/Dockerfile")"
[[ -n "$python_image" && -n "$uv_image" ]] ||
    fail "cannot read ARG PYTHON_IMAGE=… and FROM ghcr.io/astral-sh/uv:… from $root/Dockerfile"
[[ "$python_image" == "python:3.11-slim-bookworm" ]] ||
    fail "the Dockerfile asks for $python_image; this script builds python:3.11-slim-bookworm only"
uv_version="${uv_image##*:}"
recipe="$(sha256sum "${BASH_SOURCE[0]}" | cut -c1-12)"

ensure_packages() {
    local missing=()
    command -v buildah >/dev/null || missing+=(buildah)
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    ((${#missing[@]} == 0)) && return
    [[ "$(id -u)" == 0 ]] || fail "${missing[*]} missing; install as root: apt-get install -y ${missing[*]}"
    command -v apt-get >/dev/null || fail "${missing[*]} missing and this machine has no apt-get"
    echo "base-images: apt-get install ${missing[*]}" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null 2>&1 ||
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null; } ||
        fail "apt-get install ${missing[*]} failed"
}

bah() { buildah --storage-driver vfs "$@"; }

# The recipe an image in the store was built by, empty when the image is absent.
image_recipe() {
    bah inspect --type image --format "{{index .OCIv1.Config.Labels \"$RECIPE_LABEL\"}}" "$1" 2>/dev/null || true
}

build_uv_image() {
    local wheel_dir="$cache/uv-$uv_version"
    local wheel
    wheel="$(ls "$wheel_dir"/uv-"$uv_version"-*musllinux*_x86_64.whl 2>/dev/null | head -n 1 || true)"
    if [[ -z "$wheel" ]]; then
        mkdir -p "$wheel_dir"
        python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
            --platform musllinux_1_1_x86_64 --python-version 3.11 -d "$wheel_dir" "uv==$uv_version" ||
            fail "cannot download the uv $uv_version wheel from PyPI (python3 -m pip download)"
        wheel="$(ls "$wheel_dir"/uv-"$uv_version"-*musllinux*_x86_64.whl)"
    fi
    local work ctr
    work="$(mktemp -d "${TMPDIR:-/tmp}/base-images.XXXXXX")"
    python3 -c 'import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as wheel:
    for name in ("uv", "uvx"):
        with open(f"{sys.argv[3]}/{name}", "wb") as out:
            out.write(wheel.read(f"uv-{sys.argv[2]}.data/scripts/{name}"))' "$wheel" "$uv_version" "$work" ||
        fail "cannot extract uv and uvx from $wheel"
    chmod 0755 "$work/uv" "$work/uvx"
    "$work/uv" --version | grep -q "^uv $uv_version" || fail "$wheel holds no uv $uv_version binary that runs here"
    ctr="$(bah from scratch)"
    bah copy --quiet "$ctr" "$work/uv" "$work/uvx" / >/dev/null
    bah config --label "$RECIPE_LABEL=$recipe" --label "org.opencontainers.image.version=$uv_version" \
        --label "org.opencontainers.image.source=https://pypi.org/project/uv/$uv_version/" "$ctr"
    bah commit --quiet --rm "$ctr" "$uv_image" >/dev/null
    rm -rf "$work"
}

# debootstrap bookworm minbase, updated from bookworm-security, trimmed; written to $1 as a gzip tarball.
build_python_rootfs() {
    local tarball="$1" work rootfs
    work="$(mktemp -d "${TMPDIR:-/tmp}/base-images.XXXXXX")"
    rootfs="$work/rootfs"
    echo "base-images: debootstrap --variant=minbase $DEBIAN_SUITE (a few minutes)" >&2
    debootstrap --variant=minbase --include="$DEBIAN_PACKAGES" "$DEBIAN_SUITE" "$rootfs" "$DEBIAN_MIRROR" \
        >"$work/debootstrap.log" 2>&1 || fail "debootstrap failed: $(tail -n 3 "$work/debootstrap.log" | tr '\n' ' ')"
    # As the official debian slim images: no docs, man pages or locales, now or from later apt-get installs.
    cat >"$rootfs/etc/dpkg/dpkg.cfg.d/slim" <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
CFG
    cat >"$rootfs/etc/apt/sources.list" <<LIST
deb $DEBIAN_MIRROR $DEBIAN_SUITE main
deb $DEBIAN_MIRROR $DEBIAN_SUITE-updates main
deb $DEBIAN_SECURITY_MIRROR $DEBIAN_SUITE-security main
LIST
    cp /etc/resolv.conf "$rootfs/etc/resolv.conf"
    chroot "$rootfs" /bin/sh -ec '
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get upgrade -y -qq >/dev/null
        apt-get clean
        # The official image has its interpreter on PATH under /usr/local/bin.
        for name in python3.11 python3 python; do ln -sf /usr/bin/python3.11 /usr/local/bin/$name; done
        dpkg-query -W -f "\${Package} \${Version}\n"
    ' >"$work/packages.txt" 2>"$work/chroot.log" ||
        fail "updating the rootfs failed: $(tail -n 3 "$work/chroot.log" | tr '\n' ' ')"
    find "$rootfs/usr/share/doc" -mindepth 2 ! -name copyright ! -type d -delete
    find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
    rm -rf "$rootfs"/usr/share/{man,info,locale,lintian}/* "$rootfs"/var/lib/apt/lists/* \
        "$rootfs"/var/cache/apt/* "$rootfs"/var/cache/debconf/*-old "$rootfs"/var/log/* "$rootfs"/tmp/* \
        "$rootfs"/dev/*
    : >"$rootfs/etc/resolv.conf"
    echo "healingwork" >"$rootfs/etc/hostname"
    "$rootfs/usr/bin/python3.11" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' ||
        fail "the rootfs has no python 3.11"
    mkdir -p "$(dirname "$tarball")"
    tar --numeric-owner --xattrs -C "$rootfs" -czf "$tarball.partial" . || fail "cannot write $tarball"
    mv -f "$work/packages.txt" "${tarball%.tar.gz}.packages.txt"
    mv -f "$tarball.partial" "$tarball"
    rm -rf "$work"
}

build_python_image() {
    local tarball="$cache/python-3.11-slim-bookworm-$recipe.tar.gz" ctr mountpoint
    if [[ ! -f "$tarball" ]]; then
        rm -f "$cache"/python-3.11-slim-bookworm-*.tar.gz "$cache"/python-3.11-slim-bookworm-*.packages.txt
        build_python_rootfs "$tarball"
    fi
    ctr="$(bah from scratch)"
    mountpoint="$(bah mount "$ctr")"
    tar --numeric-owner --xattrs -xpzf "$tarball" -C "$mountpoint" || fail "cannot unpack $tarball"
    bah umount "$ctr" >/dev/null
    bah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --env LANG=C.UTF-8 \
        --cmd python3 --label "$RECIPE_LABEL=$recipe" \
        --label "org.opencontainers.image.description=Debian $DEBIAN_SUITE minbase + python3 (3.11), built locally by scripts/tools/base-images.sh" \
        "$ctr"
    bah commit --quiet --rm "$ctr" "docker.io/library/$python_image" >/dev/null
}

ensure_packages
for image in "$uv_image" "docker.io/library/$python_image"; do
    if [[ "$(image_recipe "$image")" != "$recipe" ]]; then
        previous="$(bah inspect --type image --format '{{.FromImageID}}' "$image" 2>/dev/null || true)"
        if [[ "$image" == "$uv_image" ]]; then build_uv_image; else build_python_image; fi
        [[ -n "$previous" ]] && bah rmi "$previous" >/dev/null 2>&1 || true
    fi
    echo "$image $(bah inspect --type image --format '{{.FromImageID}}' "$image" | cut -c1-12)"
done
