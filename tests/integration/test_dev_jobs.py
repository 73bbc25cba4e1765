"""`healingwork dev` runs the batch jobs as processes on an interval, as the CronJobs would."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from devstack.jobs import DevJobs

pytestmark = pytest.mark.integration


def test_dev_jobs_run_each_job_as_a_process_on_its_interval(migrated_database_url: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["DATABASE_URL"] = migrated_database_url
    log = tmp_path / "jobs.log"
    jobs = DevJobs(env, log, schedule={"purge": 0.2, "aggregate-stats": 3600.0}, first_after_s=0.0)
    try:
        deadline = time.monotonic() + 60
        while len(jobs.runs["purge"]) < 2:
            assert time.monotonic() < deadline, log.read_text()
            jobs.tick()
            time.sleep(0.05)  # the polling interval of a loop that waits on child processes
    finally:
        jobs.stop()

    assert jobs.runs["purge"][:2] == [0, 0]
    assert jobs.runs["aggregate-stats"] in ([0], [])  # started once at most: its interval is an hour
    finished = [json.loads(line) for line in log.read_text().splitlines() if '"job succeeded"' in line]
    assert {line["job"] for line in finished} >= {"purge"}
