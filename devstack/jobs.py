"""The CronJobs' stand-in for ``healingwork dev``: each batch job runs as its own process
(``healingwork job <name>``, exactly what a CronJob runs) on a short interval, so retries, reconciliation,
stats and retention work locally too. A run still going when the next is due is not doubled (the
job's advisory lock would skip it anyway)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from devstack.embedded import parent_death_preexec

# Seconds between runs; much shorter than the production schedules (docs/jobs.md) so effects are visible.
DEV_SCHEDULE = {"retry-failed": 30.0, "aggregate-stats": 300.0, "purge": 3600.0}
STOP_TIMEOUT_S = 10.0


class DevJobs:
    """Call :meth:`tick` often (it never blocks); :meth:`stop` ends whatever still runs."""

    def __init__(
        self, env: dict[str, str], log_path: Path, schedule: dict[str, float] | None = None, first_after_s: float = 5.0
    ) -> None:
        self._env = env
        self._log_path = log_path
        self._schedule = schedule or DEV_SCHEDULE
        start = time.monotonic() + first_after_s
        self._due = dict.fromkeys(self._schedule, start)
        self._running: dict[str, subprocess.Popen[bytes]] = {}
        self.runs: dict[str, list[int]] = {name: [] for name in self._schedule}

    def reschedule(self, schedule: dict[str, float]) -> None:
        """Run the jobs on ``schedule`` from now on: each is next due within its new interval."""
        now = time.monotonic()
        self._schedule = schedule
        for name, interval in schedule.items():
            self._due[name] = min(self._due.get(name, now), now + interval)
            self.runs.setdefault(name, [])

    def tick(self) -> None:
        """Reap finished runs (recording their exit status) and start the jobs that are due."""
        now = time.monotonic()
        for name, process in list(self._running.items()):
            if process.poll() is not None:
                self.runs[name].append(process.returncode)
                del self._running[name]
        for name, interval in self._schedule.items():
            if name in self._running or now < self._due[name]:
                continue
            self._due[name] = now + interval
            with self._log_path.open("ab") as log:
                self._running[name] = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                    [sys.executable, "-m", "services", "job", name],
                    env=self._env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    # A run still going when `healingwork dev` dies (even by SIGKILL) gets SIGTERM: it rolls
                    # back and exits, as a CronJob's run does at its deadline. Call tick() from the main thread.
                    preexec_fn=parent_death_preexec(signal.SIGTERM),
                )

    def stop(self) -> None:
        for process in self._running.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for process in self._running.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._running.clear()
