"""The project's image for tests: built by ``make image``, its processes run as a container runtime would run them.

Every process gets the image's user, environment, entrypoint and working directory, a **read-only root
filesystem**, a fresh writable tmpfs on ``/tmp`` (the chart's emptyDir) and the host's network, so a port
it listens on answers on the host's loopback.

With Docker (where an engine answers) that is ``docker run --read-only --tmpfs /tmp --network host``. Without
one, the image lives in buildah's storage and no OCI runtime can run containers on these machines (crun and
runc fail on their cgroups), so :class:`BuildahImage` does what a runtime would, with util-linux and coreutils:
a working container's root filesystem is bind-mounted onto itself and remounted read-only in a private mount
namespace (``unshare --mount``), with ``/proc``, a tmpfs ``/dev`` holding the usual devices, a tmpfs ``/tmp``
and the host's ``/etc/hosts`` and ``/etc/resolv.conf`` on top, then entered with ``chroot --userspec`` as the
image's user. No cgroups, no PID or network namespace, no seccomp: the test checks the image, not isolation.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Self

ROOT = Path(__file__).resolve().parents[2]
BUILDAH = ["buildah", "--storage-driver", "vfs"]

# Run by `unshare --mount` (mounts are private to the new namespace and vanish with the process):
# $1 the working container's root, $2 the working directory, $3 uid:gid; the command follows.
_ENTER_READ_ONLY = r"""
set -eu
root="$1" workdir="$2" user="$3"
shift 3
mount --bind "$root" "$root"
mount -t proc proc "$root/proc"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$root/tmp"
mount -t tmpfs -o mode=0755,nosuid tmpfs "$root/dev"
for device in null zero full random urandom tty; do
    touch "$root/dev/$device"
    mount --bind "/dev/$device" "$root/dev/$device"
done
mkdir "$root/dev/shm" && mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$root/dev/shm"
for file in /etc/hosts /etc/resolv.conf; do
    mount --bind "$file" "$root$file"
    mount -o remount,bind,ro "$root$file"
done
mount -o remount,bind,ro "$root"
exec chroot --userspec="$user" "$root" /usr/bin/env --chdir="$workdir" "$@"
"""


class ImageMissing(Exception):
    """The image cannot be built or run here; the message says what to do."""


@dataclass(frozen=True)
class ImageConfig:
    """What the image says about how to run it."""

    user: str
    env: dict[str, str]
    entrypoint: list[str]
    workdir: str

    @classmethod
    def from_oci(cls, config: Mapping[str, Any]) -> ImageConfig:
        env = dict(item.split("=", 1) for item in config.get("Env") or [])
        return cls(
            user=config.get("User") or "0:0",
            env=env,
            entrypoint=list(config.get("Entrypoint") or []),
            workdir=config.get("WorkingDir") or "/",
        )


class RunningImage(Protocol):
    """An image ready to run processes."""

    config: ImageConfig

    def prepare(
        self, args: Sequence[str], env: Mapping[str, str], *, entrypoint: Sequence[str] | None = None
    ) -> tuple[list[str], dict[str, str]]:
        """The host argv and environment that run ``args`` (after the image's entrypoint, or ``entrypoint``
        instead) in the image with ``env`` on top of the image's environment."""
        ...


def run_in(
    image: RunningImage,
    args: Sequence[str],
    env: Mapping[str, str] | None = None,
    *,
    entrypoint: Sequence[str] | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run ``args`` in ``image`` to completion; stdout and stderr captured as text."""
    argv, full_env = image.prepare(args, env or {}, entrypoint=entrypoint)
    return subprocess.run(argv, env=full_env, capture_output=True, text=True, check=False, timeout=timeout)


def start_in(
    image: RunningImage, args: Sequence[str], env: Mapping[str, str] | None = None, **popen: Any
) -> subprocess.Popen[str]:
    """Start ``args`` in ``image``. With buildah the returned process is the command itself, so a signal
    reaches it directly; ``docker run`` forwards signals to it."""
    argv, full_env = image.prepare(args, env or {})
    return subprocess.Popen(argv, env=full_env, text=True, **popen)


def build_image(tag: str) -> str:
    """``make image`` with ``IMAGE_TAG=tag``; returns the name it printed last."""
    env = {**os.environ, "IMAGE_TAG": tag}
    result = subprocess.run(
        ["make", "--no-print-directory", "-s", "image"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=1800,
    )
    if result.returncode != 0:
        tail = "\n".join(result.stderr.strip().splitlines()[-15:])
        raise ImageMissing(f"`make image` failed (exit {result.returncode}):\n{tail}")
    return result.stdout.strip().splitlines()[-1]


class BuildahImage:
    """A working container of ``name`` in buildah's storage, run read-only (see the module docstring)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.container = f"healingwork-test-{uuid.uuid4().hex[:8]}"
        self.rootfs = ""
        self.config = ImageConfig(user="0:0", env={}, entrypoint=[], workdir="/")

    def __enter__(self) -> Self:
        inspected = json.loads(_buildah("inspect", "--type", "image", self.name))
        self.config = ImageConfig.from_oci(inspected["OCIv1"]["config"])
        _buildah("from", "--pull-never", "--name", self.container, self.name)
        try:
            self.rootfs = _buildah("mount", self.container).strip()
        except BaseException:
            _buildah("rm", self.container)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        _buildah("umount", self.container)
        _buildah("rm", self.container)

    def prepare(
        self, args: Sequence[str], env: Mapping[str, str], *, entrypoint: Sequence[str] | None = None
    ) -> tuple[list[str], dict[str, str]]:
        argv = [*(self.config.entrypoint if entrypoint is None else entrypoint), *args]
        host_argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", _ENTER_READ_ONLY, "enter"]
        host_argv += [self.rootfs, self.config.workdir, self.config.user, *argv]
        # The image's environment and nothing of the host's, as a runtime does; the helper tools on the way
        # in are found on the image's PATH too (it names /usr/bin and /usr/sbin).
        return host_argv, {**self.config.env, **env}


class DockerImage:
    """``name`` in a Docker engine, run with ``docker run --read-only --tmpfs /tmp --network host``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.config = ImageConfig(user="0:0", env={}, entrypoint=[], workdir="/")

    def __enter__(self) -> Self:
        inspected = subprocess.run(
            ["docker", "image", "inspect", "--format", "{{json .Config}}", self.name],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
        self.config = ImageConfig.from_oci(json.loads(inspected))
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def prepare(
        self, args: Sequence[str], env: Mapping[str, str], *, entrypoint: Sequence[str] | None = None
    ) -> tuple[list[str], dict[str, str]]:
        argv = ["docker", "run", "--rm", "--read-only", "--tmpfs", "/tmp:mode=1777", "--network", "host"]
        # `--env NAME` hands the variable from the docker command's environment to the container.
        argv += [f"--env={name}" for name in sorted(env)]
        if entrypoint is not None:
            argv += ["--entrypoint", entrypoint[0], self.name, *entrypoint[1:], *args]
        else:
            argv += [self.name, *args]
        return argv, {**os.environ, **env}


def _buildah(*args: str) -> str:
    result = subprocess.run([*BUILDAH, *args], capture_output=True, text=True, check=False, timeout=600)
    if result.returncode != 0:
        raise ImageMissing(f"buildah {args[0]} failed: {result.stderr.strip()}")
    return result.stdout


def check_buildah_prerequisites() -> None:
    """Raise :class:`ImageMissing` naming ``make tools`` when buildah or the base images are missing here."""
    if shutil.which("buildah") is None:
        raise ImageMissing("no Docker engine answers and buildah is not installed: run `make tools`")
    dockerfile = (ROOT / "Dockerfile").read_text()
    bases = [line.split()[1] for line in dockerfile.splitlines() if line.startswith("FROM ghcr.io/")]
    bases += [line.split("=", 1)[1].strip() for line in dockerfile.splitlines() if line.startswith("ARG PYTHON_IMAGE=")]
    for base in bases:
        found = subprocess.run([*BUILDAH, "inspect", "--type", "image", base], capture_output=True, check=False)
        if found.returncode != 0:
            raise ImageMissing(f"base image {base} is not in buildah's storage: run `make tools`")
    if os.geteuid() != 0:
        raise ImageMissing("running the image without a Docker engine needs root (unshare --mount, chroot)")
    for tool in ("unshare", "chroot", "mount"):
        if shutil.which(tool) is None:
            raise ImageMissing(f"{tool} is missing (util-linux, coreutils, mount)")
