"""The JSON log lines: one object per record, with the call site's extras and without framework internals."""

from __future__ import annotations

import json
import logging

import kopf

from services.common.logs import REQUEST_ID, JsonFormatter


def _format(record: logging.LogRecord) -> dict[str, object]:
    line = JsonFormatter("operator").format(record)
    assert "\n" not in line
    parsed: dict[str, object] = json.loads(line)
    return parsed


def _capture(logger: logging.Logger | logging.LoggerAdapter[logging.Logger], message: str) -> logging.LogRecord:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    base = logger.logger if isinstance(logger, logging.LoggerAdapter) else logger
    handler = Keep()
    base.addHandler(handler)
    base.setLevel(logging.INFO)
    try:
        logger.info(message)
    finally:
        base.removeHandler(handler)
    return records[0]


def test_call_site_extras_and_request_id_are_fields() -> None:
    record = logging.makeLogRecord({"msg": "claimed %d", "args": (3,), "levelname": "INFO", "batch": 7})
    token = REQUEST_ID.set("req-1")
    try:
        entry = _format(record)
    finally:
        REQUEST_ID.reset(token)
    assert entry["msg"] == "claimed 3"
    assert entry["batch"] == 7
    assert entry["request_id"] == "req-1"


def test_kopf_object_log_line_names_the_object_without_dumping_the_operator_settings() -> None:
    body: kopf.RawBody = {
        "apiVersion": "healingwork.io/v1alpha1",
        "kind": "Sequence",
        "metadata": {"name": "welcome", "namespace": "marketing", "uid": "u-1"},
    }
    logger = kopf.ObjectLogger(body=kopf.Body(body), settings=kopf.OperatorSettings())
    line = JsonFormatter("operator").format(_capture(logger, "reconciled"))
    entry = json.loads(line)
    assert entry["msg"] == "reconciled"
    assert entry["object"] == {
        "apiVersion": "healingwork.io/v1alpha1",
        "kind": "Sequence",
        "name": "welcome",
        "namespace": "marketing",
        "uid": "u-1",
    }
    assert not {"settings", "k8s_ref", "k8s_skip"} & set(entry)
    assert len(line) < 500, line
