"""CPU per composed email in one process: :func:`services.common.compose.compose_email` (sandboxed
rendering, the unsubscribe footer, click and open tracking with signed links, the RFC 5322 bytes)
against an in-run baseline that writes the same message with plain string formatting.

Run: ``uv run python -m bench.compose [--messages 20000] [--rounds 5]``. No database, no network:
the step is ``bench.dispatch``'s (the message its dispatchers send), each message for another lead
and message id. The last output line is one JSON object.

* ``compose_us_per_email``: what the dispatcher spends composing one message (median over rounds);
* ``baseline_us_per_email``: the same bytes' shape by ``str.format`` from a message composed once
  (lead name and message id substituted; no template, no tokens): the floor of writing a message;
* ``ratio``: baseline over compose (1.0 would mean composing costs no more than formatting).

Rounds alternate the two, and CPU time (``time.process_time``) is measured, so the ratio holds up on a
shared machine. ``--smoke`` (bench/smoke.py): 200 messages, one round.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import uuid
from collections.abc import Callable

from bench.dispatch import SEQUENCE
from bench.smoke import parse_arguments
from services.common.compose import ComposeSettings, MessageIdentity, StepContent, compose_email
from services.common.templates import TemplateLead

SMOKE = {"messages": 200, "rounds": 1}  # --smoke (bench/smoke.py)
SETTINGS = ComposeSettings(
    public_base_url="https://links.example.com",
    hmac_secret="b" * 64,
    from_email="hello@example.com",
    from_name="Example Team",
)


def bench_step() -> StepContent:
    """The step ``bench.dispatch`` sends, as the dispatcher reads it."""
    step = SEQUENCE["spec"]["steps"][0]  # type: ignore[index]
    return StepContent("bench", step["name"], step["subject"], step["html"], step.get("text"))


def per_email_us(
    action: Callable[[TemplateLead, uuid.UUID], object], work: list[tuple[TemplateLead, uuid.UUID]]
) -> float:
    started = time.process_time()
    for lead, message_id in work:
        action(lead, message_id)
    return (time.process_time() - started) / len(work) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.compose", description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    arguments = parse_arguments(parser, SMOKE)
    step = bench_step()
    leads = [TemplateLead(f"lead{i}@example.com", f"Lead{i}", None, "bench") for i in range(arguments.messages)]
    work = [(lead, uuid.uuid4()) for lead in leads]

    def compose(lead: TemplateLead, message_id: uuid.UUID) -> bytes:
        return compose_email(step, lead, MessageIdentity(message_id), SETTINGS).data

    # The baseline's template: one composed message with the lead's name and the message id as fields.
    sample_lead, sample_id = TemplateLead("sample@example.com", "SampleName", None, "bench"), uuid.uuid4()
    pattern = (
        compose(sample_lead, sample_id)
        .decode()
        .replace("{", "{{")
        .replace("}", "}}")
        .replace("SampleName", "{name}")
        .replace(str(sample_id), "{message_id}")
    )

    def baseline(lead: TemplateLead, message_id: uuid.UUID) -> bytes:
        return pattern.format(name=lead.first_name, message_id=message_id).encode()

    compose(*work[0])  # templates compiled, caches warm: the steady state the dispatcher runs in
    compose_samples, baseline_samples = [], []
    for _ in range(arguments.rounds):
        baseline_samples.append(per_email_us(baseline, work))
        compose_samples.append(per_email_us(compose, work))
    compose_us, baseline_us = statistics.median(compose_samples), statistics.median(baseline_samples)
    result = {
        "benchmark": "compose",
        "compose_us_per_email": round(compose_us, 1),
        "baseline_us_per_email": round(baseline_us, 2),
        "ratio": round(baseline_us / compose_us, 3),
        "compose_us_rounds": [round(sample, 1) for sample in compose_samples],
        "messages": arguments.messages,
        "rounds": arguments.rounds,
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
