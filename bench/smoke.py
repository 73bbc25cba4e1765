"""``--smoke``: a benchmark's tiny run, so the test suite can run every benchmark in seconds and a
benchmark that breaks fails a test (``tests/integration/test_benchmarks_smoke.py``).

The same code runs at sizes that only show it still works: the figures of a smoke run mean nothing
(docs/performance.md's come from the full runs). Without ``--smoke`` nothing changes.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence

SMOKE_HELP = "a tiny run that only checks the benchmark works (the test suite's); its figures mean nothing"


def parse_arguments(
    parser: argparse.ArgumentParser, smoke: Mapping[str, object], argv: Sequence[str] | None = None
) -> argparse.Namespace:
    """The command line (``argv``, else ``sys.argv``) with ``--smoke`` added. With it, each size in
    ``smoke`` (an option's name, or a default the benchmark set with ``parser.set_defaults`` for a size
    it has no option for) takes its tiny value unless the command line gives that option itself."""
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    if parser.parse_known_args(argv)[0].smoke:
        parser.set_defaults(**smoke)
    return parser.parse_args(argv)
