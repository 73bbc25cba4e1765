"""The cost of one Sequence condition: compiling it, and evaluating it for one lead.

Run: ``uv run python -m bench.conditions``. No database: it times ``services.common.conditions``
alone. The last output line is one JSON object.

* ``compile_us``: compiling and type-checking a typical condition (uncached: the module caches by
  source, so the scheduler compiles each expression of a revision once per process).
* ``evaluate_us_100``: evaluating ``events.exists(e, e.type == 'opened' && e.step == 'hello')`` over a
  lead with 100 events, building the variables included (what the scheduler pays per due step with
  one condition); ``evaluate_us_1000`` the same with 1,000 events (the cap, :data:`MAX_EVENTS`).
* ``evaluate_again_us_100``: a second condition over the same lead (variables converted once per lead).

``--smoke`` (bench/smoke.py) times 20 rounds instead of 2,000.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from datetime import UTC, datetime, timedelta

from bench.smoke import parse_arguments
from services.common.conditions import (
    ConditionFacts,
    EventFact,
    LeadFact,
    compile_condition,
    evaluate,
)

NOW = datetime(2026, 1, 14, 10, 0, tzinfo=UTC)
CONDITION = "events.exists(e, e.type == 'opened' && e.step == 'hello')"
ROUNDS = 2_000
SMOKE = {"rounds": 20}  # --smoke (bench/smoke.py)


def facts(events: int) -> ConditionFacts:
    lead = LeadFact(domain="example.com", source="website", accepted_at=NOW, first_name="Ada", locale="de-DE")
    history = [
        EventFact(
            type=("sent", "opened", "clicked")[i % 3],
            at=NOW - timedelta(minutes=i),
            step=f"step-{i % 5}",
            sequence="welcome",
            properties={"n": i},
        )
        for i in range(events)
    ]
    return ConditionFacts(lead, history, NOW)


def per_call_us(action: object, rounds: int) -> float:
    assert callable(action)
    samples = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(rounds):
            action()
        samples.append((time.perf_counter() - started) / rounds * 1e6)
    return round(statistics.median(samples), 2)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.conditions", description=__doc__.split("\n\n")[0])
    parser.set_defaults(rounds=ROUNDS)
    rounds = parse_arguments(parser, SMOKE).rounds
    condition = compile_condition(CONDITION)

    def compile_uncached() -> None:
        compile_condition.__wrapped__(CONDITION)

    def evaluate_fresh(count: int) -> object:
        template = facts(count)
        return lambda: evaluate(condition, ConditionFacts(template.lead, template.events, NOW))

    warm = facts(100)
    evaluate(condition, warm)
    result = {
        "benchmark": "conditions",
        "library": "cel-expr-python",
        "compile_us": per_call_us(compile_uncached, rounds // 10),
        "evaluate_us_100": per_call_us(evaluate_fresh(100), rounds),
        "evaluate_us_1000": per_call_us(evaluate_fresh(1000), rounds // 10),
        "evaluate_again_us_100": per_call_us(lambda: evaluate(condition, warm), rounds),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
