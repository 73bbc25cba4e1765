"""Scoring a message with Debian's SpamAssassin (``spamassassin -L -t``), installed by ``make tools``.

Local tests only (``-L``: no DNS blocklists, no network), so a score is the same on every machine with
the same rules. A missing ``spamassassin`` fails the test with "run `make tools`": it is never skipped.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass

# The report's table: "score RULE_NAME  description", one rule a line.
_RULE_LINE = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s+([A-Z0-9_]+)\s", re.MULTILINE)
_SCORE = re.compile(r"^X-Spam-Status: \w+, score=(-?\d+(?:\.\d+)?)", re.MULTILINE)


@dataclass(frozen=True)
class SpamReport:
    """What SpamAssassin said of one message: its score and the rules that fired (with their points)."""

    score: float
    rules: dict[str, float]


def spamassassin_path() -> str:
    """The ``spamassassin`` executable; fails (never skips) when it is missing."""
    path = shutil.which("spamassassin")
    if path is None:
        raise AssertionError("spamassassin is not installed: run `make tools` (apt-get install spamassassin)")
    return path


def score_message(data: bytes, *, timeout_s: float = 120.0) -> SpamReport:
    """Score ``data`` (one RFC 5322 message) with local tests only and the report of the rules that fired."""
    completed = subprocess.run(
        [spamassassin_path(), "-L", "-t"],
        input=data,
        capture_output=True,
        timeout=timeout_s,
        check=False,
    )
    output = completed.stdout.decode("utf-8", "replace")
    score = _SCORE.search(output)
    if score is None:
        raise AssertionError(f"spamassassin printed no X-Spam-Status: {completed.stderr.decode(errors='replace')}")
    _, _, report = output.partition("Content analysis details:")
    return SpamReport(float(score.group(1)), {rule: float(points) for points, rule in _RULE_LINE.findall(report)})
