"""The kubernetes suite's own promise: without the tools it fails, naming `make tools`; it never skips."""

from __future__ import annotations

from pathlib import Path

import pytest

import tests.support.kubernetes as kubernetes

pytestmark = pytest.mark.kubernetes


def test_missing_tools_fail_the_suite_naming_make_tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kubernetes, "TOOLS_BIN", tmp_path / "bin")

    with (
        pytest.raises(pytest.fail.Exception, match=r"bin/etcd is missing: run `make tools`"),
        kubernetes.running_cluster(tmp_path),
    ):
        pytest.fail("the cluster started without its binaries")
