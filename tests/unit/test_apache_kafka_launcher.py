"""The Apache Kafka launcher's contract with `make tools`: the same pinned version, and a clear failure
naming `make tools` (never a skip) when the jars are not there."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from devstack.apache_kafka import KAFKA_VERSION, ApacheKafkaBroker, KafkaNotInstalled, kafka_home

ROOT = Path(__file__).resolve().parents[2]


def test_launcher_and_install_script_pin_the_same_kafka_version() -> None:
    script = (ROOT / "scripts" / "tools" / "kafka.sh").read_text()
    pom = (ROOT / "scripts" / "tools" / "kafka" / "pom.xml").read_text()
    assert re.search(r'^KAFKA_VERSION="([^"]+)"', script, re.MULTILINE)[1] == KAFKA_VERSION
    assert re.search(r"<kafka.version>([^<]+)</kafka.version>", pom)[1] == KAFKA_VERSION
    assert kafka_home(ROOT) == ROOT / ".tools" / f"kafka-{KAFKA_VERSION}"


def test_start_without_the_jars_fails_naming_make_tools_and_leaves_nothing_running(tmp_path: Path) -> None:
    broker = ApacheKafkaBroker(home=tmp_path / "kafka-missing", data_dir=tmp_path / "data")
    with pytest.raises(KafkaNotInstalled, match=r"Apache Kafka .* is not installed in .*: run `make tools`"):
        broker.start()
    assert not broker.running


def test_an_install_of_another_version_counts_as_missing(tmp_path: Path) -> None:
    home = tmp_path / "kafka"
    (home / "libs").mkdir(parents=True)
    (home / "libs" / "kafka_2.13-0.0.1.jar").write_bytes(b"")
    (home / ".installed").write_text("0.0.1\n")
    with pytest.raises(KafkaNotInstalled, match="make tools"):
        ApacheKafkaBroker(home=home).start()


def test_a_cluster_id_never_starts_with_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    """`kafka-storage format -t -xyz…` reads the id as an option (this failed a CI run): draw again."""
    import uuid

    from devstack import apache_kafka

    dash_first = uuid.UUID(bytes=b"\xf8" + bytes(15))  # base64 of 0b111110… is "-"
    plain = uuid.UUID(bytes=b"\x00" + bytes(15))
    draws = iter([dash_first, dash_first, plain])
    monkeypatch.setattr(apache_kafka.uuid, "uuid4", lambda: next(draws))
    cluster_id = apache_kafka._kafka_cluster_id()
    assert cluster_id == "AAAAAAAAAAAAAAAAAAAAAA"
    assert next(draws, None) is None
