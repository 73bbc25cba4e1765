"""`healingwork dev` runs the batch jobs as processes on an interval, as the CronJobs would."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
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


def test_a_job_run_does_not_outlive_dev_killed_with_sigkill(tmp_path: Path) -> None:
    """A run of a job still going when `healingwork dev` is killed gets SIGTERM from the kernel."""
    with socket.socket() as silent_database:
        silent_database.bind(("127.0.0.1", 0))
        silent_database.listen(8)  # connections complete in the backlog; PostgreSQL never answers
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["DATABASE_URL"] = f"postgresql://nobody@127.0.0.1:{silent_database.getsockname()[1]}/x"
        env["DB_CONNECT_TIMEOUT_S"] = "300"  # the run hangs in its connect until it is told to stop
        code = (
            "import sys, time\n"
            "from pathlib import Path\n"
            "from devstack.jobs import DevJobs\n"
            f"jobs = DevJobs({env!r}, Path({str(tmp_path / 'jobs.log')!r}), schedule={{'purge': 3600.0}},"
            " first_after_s=0.0)\n"
            "while True:\n"
            "    jobs.tick()\n"
            "    time.sleep(0.1)\n"
        )
        dev = subprocess.Popen([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2])
        try:
            deadline = time.monotonic() + 30
            while not (runs := psutil.Process(dev.pid).children()):
                assert time.monotonic() < deadline, "the job never started"
                time.sleep(0.1)
            [run] = runs
            time.sleep(1.0)  # the run is connecting
            assert run.is_running()

            dev.kill()
            dev.wait(10)
            _gone, alive = psutil.wait_procs([run], timeout=10)
            assert alive == []
        finally:
            if dev.poll() is None:
                dev.kill()
                dev.wait()
