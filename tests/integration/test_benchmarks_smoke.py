"""Every benchmark of ``bench/`` runs in the suite at its tiny size (``--smoke``, bench/smoke.py), so a
benchmark that breaks fails a test instead of being found broken by hand.

Each runs as it is run by hand (``python -m bench.<name> --smoke``, a subprocess) with the project's real
parts: its embedded PostgreSQL, the embedded Tansu broker, the intake and dispatcher processes, the SMTP
sinks. The dispatch benchmark takes ``--python-sink`` (bench/smtp_sink.py, its documented fallback:
Postfix's ``smtp-sink`` is not installed by ``make tools``); ``bench.smtp_transaction`` has no fallback
and unpacks Postfix's ``smtp-sink`` into ``.tools/postfix`` on first use, as
``tests/integration/test_smtp_pipelining.py`` does. ``bench.chaos`` has its own test
(``tests/e2e/test_chaos.py``).

The assertions are on the last line's JSON (and the scheduler's progress lines, which say how many
steps each drain emitted): the keys docs/performance.md (docs/reliability.md for
``bench.long_transaction``) documents, positive rates and ratios, the sizes asked for. Never a figure's
size: a smoke run's figures mean nothing, and a timing threshold would fail on a busy machine.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench import compose, dispatch, erasure, intake, long_transaction, scheduler, smtp_transaction
from bench.smoke import parse_arguments

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
# Modules of bench/ that are not benchmarks of their own: the helpers the benchmarks start or import.
HELPERS = {"__init__", "smoke", "chaos_sink", "chaos_webhooks", "intake_server", "postfix_sink", "smtp_sink"}
TESTED_ELSEWHERE = {"chaos": "tests/e2e/test_chaos.py"}
SMOKE_TESTED = {
    "compose",
    "conditions",
    "dispatch",
    "erasure",
    "intake",
    "long_transaction",
    "scheduler",
    "smtp_transaction",
}
# Far above a smoke run's tens of seconds: only a hung benchmark reaches it.
TIMEOUT_S = 300


def tail(text: str, characters: int = 4000) -> str:
    return text[-characters:] if text else "(empty)"


def run_benchmark(name: str, *options: str) -> tuple[dict[str, Any], str]:
    """``python -m bench.<name> --smoke *options``: its JSON line and its whole stdout. A failure (exit
    code, timeout, no JSON last line) fails the test with the benchmark's stderr tail."""
    command = [sys.executable, "-m", f"bench.{name}", "--smoke", *options]
    process = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        # SIGINT first, so the benchmark's `finally` stops the PostgreSQL and broker it started.
        os.killpg(process.pid, signal.SIGINT)
        try:
            stdout, stderr = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
        pytest.fail(f"bench.{name} did not end within {TIMEOUT_S} s; stderr tail:\n{tail(stderr)}", pytrace=False)
    if process.returncode != 0:
        pytest.fail(
            f"bench.{name} exited with {process.returncode}; stderr tail:\n{tail(stderr)}\n"
            f"stdout tail:\n{tail(stdout, 1000)}",
            pytrace=False,
        )
    lines = stdout.strip().splitlines()
    try:
        result = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        pytest.fail(f"bench.{name}'s last line is not JSON:\n{tail(stdout)}\nstderr tail:\n{tail(stderr)}")
    assert isinstance(result, dict), result
    return result, stdout


def assert_positive(result: dict[str, Any], *keys: str) -> None:
    for key in keys:
        assert isinstance(result[key], int | float), (key, result)
        assert result[key] > 0, (key, result)


def test_every_benchmark_module_is_smoke_tested_here_or_tested_elsewhere_or_a_helper() -> None:
    modules = {path.stem for path in (ROOT / "bench").glob("*.py")}
    assert modules == HELPERS | set(TESTED_ELSEWHERE) | SMOKE_TESTED


def test_smoke_sizes_apply_only_with_the_flag_and_never_over_an_option_given() -> None:
    def parser() -> argparse.ArgumentParser:
        made = argparse.ArgumentParser()
        made.add_argument("--messages", type=int, default=10_000)
        made.set_defaults(rounds=2_000)
        return made

    smoke = {"messages": 200, "rounds": 20}
    full = parse_arguments(parser(), smoke, [])
    assert (full.messages, full.rounds, full.smoke) == (10_000, 2_000, False)
    tiny = parse_arguments(parser(), smoke, ["--smoke"])
    assert (tiny.messages, tiny.rounds, tiny.smoke) == (200, 20, True)
    asked = parse_arguments(parser(), smoke, ["--smoke", "--messages", "300"])
    assert (asked.messages, asked.rounds) == (300, 20)


def test_intake_benchmark_accepts_durable_leads_and_reports_its_ratio_and_latencies() -> None:
    result, _ = run_benchmark("intake")
    assert_positive(
        result,
        "accepted_per_s",
        "validate_only_per_s",
        "ratio",
        "p50_ms_at_half_load",
        "p99_ms_at_half_load",
        "p50_ms_at_full_load",
        "p99_ms_at_full_load",
        "half_load_per_s",
        "durable_leads_checked",
        "cpus",
    )
    assert result["ratio"] == pytest.approx(result["accepted_per_s"] / result["validate_only_per_s"], abs=0.002)
    assert result["half_load_per_s"] == pytest.approx(result["accepted_per_s"] / 2, abs=0.1)
    assert result["p50_ms_at_half_load"] <= result["p99_ms_at_half_load"], result
    assert result["p50_ms_at_full_load"] <= result["p99_ms_at_full_load"], result
    assert result["relay_catch_up_s"] >= 0, result
    assert result["load_average_1m"] >= 0, result
    assert (result["concurrency"], result["seconds"]) == (intake.SMOKE["concurrency"], intake.SMOKE["seconds"])


def test_scheduler_benchmark_drains_every_due_step_and_reports_scan_and_wake_ratios() -> None:
    result, stdout = run_benchmark("scheduler")
    sizes = scheduler.SMOKE["sizes"]
    assert isinstance(sizes, scheduler.Sizes)
    assert_positive(
        result,
        "due_steps_per_s",
        "baseline_rows_per_s",
        "due_vs_baseline",
        "scan_ms_10k",
        "scan_ms_1m",
        "scan_ratio",
        "conditions_due_steps_per_s",
        "conditions_vs_plain",
        "history_conditions_due_steps_per_s",
        "history_conditions_vs_plain",
        "event_wake_ms_10k",
        "event_wake_ms_1m",
        "wake_ratio",
        "cpus",
    )
    assert result["batch"] == scheduler.BATCH
    # Each of the three drains emitted exactly the due steps asked for, and both scans ran at their sizes.
    assert f"emitted {sizes.due} due steps in" in stdout
    assert f"emitted {sizes.due} due steps with conditions ({scheduler.REACTING})" in stdout
    assert f"emitted {sizes.due} due steps with conditions ({scheduler.READING_HISTORY})" in stdout
    assert f"due scan with {sizes.scan_small:,} enrollments" in stdout
    assert f"due scan with {sizes.scan_large:,} enrollments" in stdout


def test_conditions_benchmark_reports_compile_and_evaluation_costs_of_cel_expr_python() -> None:
    result, _ = run_benchmark("conditions")
    assert (result["benchmark"], result["library"]) == ("conditions", "cel-expr-python")
    assert_positive(result, "compile_us", "evaluate_us_100", "evaluate_us_1000", "evaluate_again_us_100")


def test_compose_benchmark_reports_cpu_per_composed_email_and_its_ratio_to_plain_formatting() -> None:
    result, _ = run_benchmark("compose")
    assert result["benchmark"] == "compose"
    assert_positive(result, "compose_us_per_email", "baseline_us_per_email", "ratio")
    assert len(result["compose_us_rounds"]) == compose.SMOKE["rounds"], result
    assert (result["messages"], result["rounds"]) == (compose.SMOKE["messages"], compose.SMOKE["rounds"])
    assert result["load_average_1m"] >= 0, result


def test_dispatch_benchmark_sends_every_message_end_to_end_and_reports_its_ratio_to_the_raw_ceiling() -> None:
    result, _ = run_benchmark("dispatch", "--python-sink")
    assert_positive(result, "emails_per_s", "raw_ceiling_per_s", "ratio", "dispatcher_cpu_us_per_email", "cpus")
    before, after = result["raw_ceiling_before_after"]
    assert before > 0, result
    assert after > 0, result
    assert result["raw_ceiling_per_s"] == pytest.approx((before + after) / 2, abs=0.2)
    assert result["ratio"] == pytest.approx(result["emails_per_s"] / result["raw_ceiling_per_s"], abs=0.002)
    assert result["load_average_1m"] >= 0, result
    # The benchmark itself fails unless every message ended `sent`.
    assert result["messages"] == dispatch.SMOKE["messages"]
    assert result["dispatchers"] == 2
    assert result["connections_per_dispatcher"] == dispatch.SMOKE["concurrency"]
    assert result["sink"] == "bench.smtp_sink (python)"


def test_erasure_benchmark_erases_the_address_at_each_outbox_size_and_reports_the_scan_ratio() -> None:
    result, _ = run_benchmark("erasure")
    sizes = erasure.SMOKE["sizes"]
    assert isinstance(sizes, tuple)
    size_keys = [f"erase_ms_{size}" for size in sizes]
    assert set(result) == {"benchmark", "scan_ratio", *size_keys}, result
    assert result["benchmark"] == "erasure"
    assert_positive(result, "scan_ratio", *size_keys)


def test_long_transaction_benchmark_drains_beside_jobs_and_a_long_transaction_and_reports_both_ratios() -> None:
    result, _ = run_benchmark("long_transaction")
    assert_positive(
        result,
        "baseline_steps_per_s",
        "with_jobs_steps_per_s",
        "with_long_transaction_steps_per_s",
        "jobs_ratio",
        "long_transaction_ratio",
        "cpus",
    )
    assert result["load_average_1m"] >= 0, result
    assert (result["due"], result["repeats"]) == (long_transaction.SMOKE["due"], long_transaction.SMOKE["repeats"])


def test_smtp_transaction_benchmark_reports_cpu_per_sendmail_and_per_transaction_for_each_round() -> None:
    result, _ = run_benchmark("smtp_transaction")
    rounds = smtp_transaction.SMOKE["rounds"]
    for key in ("cpu_us_per_sendmail", "cpu_us_per_transaction"):
        assert isinstance(result[key], list), result
        assert len(result[key]) == rounds, result
        assert all(value > 0 for value in result[key]), result
    assert result["load_average_1m"] >= 0, result
    assert result["messages"] == smtp_transaction.SMOKE["messages"]
    assert result["connections"] == smtp_transaction.SMOKE["connections"]
