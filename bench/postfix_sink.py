"""Postfix's ``smtp-sink``: the fastest local SMTP sink, for the dispatch benchmark.

A sink in C costs the machine far less per message than one in Python, so more of these two cores
goes to what is measured. It is not installed here: the Debian package ``postfix`` is downloaded once
(``apt-get download``) and unpacked (``dpkg -x``) into ``.tools/postfix``; nothing is installed
system-wide. When that is not possible the benchmark falls back to ``bench.smtp_sink`` and says so.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PREFIX = ROOT / ".tools" / "postfix"
BINARY = PREFIX / "usr" / "sbin" / "smtp-sink"
LIBRARIES = PREFIX / "usr" / "lib" / "postfix"


def ensure_smtp_sink() -> Path | None:
    """The ``smtp-sink`` binary, unpacked on first use; None when apt-get or dpkg cannot provide it."""
    if BINARY.exists():
        return BINARY
    if not (shutil.which("apt-get") and shutil.which("dpkg")):
        return None
    with tempfile.TemporaryDirectory(prefix="postfix-") as work:
        try:
            subprocess.run(["apt-get", "download", "postfix"], cwd=work, check=True, capture_output=True, timeout=120)
            (package,) = Path(work).glob("postfix_*.deb")
            subprocess.run(["dpkg", "-x", str(package), str(PREFIX)], check=True, capture_output=True, timeout=60)
        except (subprocess.SubprocessError, OSError, ValueError):
            return None
    return BINARY if BINARY.exists() else None


def start_smtp_sink(binary: Path, port: int, *options: str) -> subprocess.Popen[bytes]:
    """Accept and discard every message on 127.0.0.1:``port`` (up to 1,024 concurrent sessions).
    ``options`` are smtp-sink's own (``-p``: no PIPELINING; ``-r RCPT``: refuse RCPT with a 4xx)."""
    privileges = ["-u", "nobody"] if os.geteuid() == 0 else []  # it refuses to keep root privileges
    return subprocess.Popen(
        [str(binary), *privileges, *options, "-m", "1024", f"127.0.0.1:{port}", "1024"],
        env={**os.environ, "LD_LIBRARY_PATH": str(LIBRARIES)},
    )
