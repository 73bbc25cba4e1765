"""``healingwork sequences apply`` and ``sequences preview`` as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.platform import fetch_all
from tests.unit.test_cli import ROOT, clean_env, healingwork

pytestmark = pytest.mark.integration

WEBINAR = "k8s/examples/webinar-follow-up.yaml"


def test_apply_stores_every_example_and_is_idempotent(migrated_database_url: str) -> None:
    env = clean_env(DATABASE_URL=migrated_database_url)

    first = healingwork("sequences", "apply", "-f", "k8s/examples", env=env)
    again = healingwork("sequences", "apply", "-f", "k8s/examples", env=env)

    assert first.returncode == 0, first.stderr
    assert sorted(first.stdout.splitlines()) == [
        "sequence default/re-engagement: revision 1",
        "sequence default/webinar-follow-up: revision 1",
        "sequence default/welcome-ab: revision 1",
        "sequence default/welcome: revision 1",
    ]
    assert all(line.endswith("(unchanged)") for line in again.stdout.splitlines())


async def test_apply_reads_standard_input_with_dash(migrated_database_url: str) -> None:
    result = healingwork(
        "sequences",
        "apply",
        "-f",
        "-",
        env=clean_env(DATABASE_URL=migrated_database_url),
        stdin=(ROOT / WEBINAR).read_text(),
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout == "sequence default/webinar-follow-up: revision 1\n"
    rows = await fetch_all(migrated_database_url, "SELECT from_email, revision_policy FROM sequence_revisions")
    assert rows == [{"from_email": "events@healingwork.example", "revision_policy": "Pinned"}]


async def test_apply_accepts_a_step_that_places_the_unsubscribe_url_itself(
    migrated_database_url: str, tmp_path: Path
) -> None:
    own_link = tmp_path / "own-link.yaml"
    own_link.write_text(
        (ROOT / WEBINAR).read_text().replace("we mentioned during the session.", "Leave: {{ unsubscribe_url }}")
    )

    result = healingwork("sequences", "apply", "-f", str(own_link), env=clean_env(DATABASE_URL=migrated_database_url))

    assert result.returncode == 0, result.stderr
    assert result.stdout == "sequence default/webinar-follow-up: revision 1\n"


@pytest.mark.parametrize(
    ("template", "error"),
    [
        ("{{ 10 // 0 }}", "template error: ZeroDivisionError: integer division or modulo by zero (in the subject)"),
        ("{{ 'a' * 50000000 }}", "a repetition would be 50,000,000 long, over the limit of 1,048,576"),
    ],
)
async def test_apply_of_a_template_that_fails_in_any_way_prints_one_line_and_stores_nothing(
    migrated_database_url: str, tmp_path: Path, template: str, error: str
) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text((ROOT / WEBINAR).read_text().replace("Three resources", template))

    result = healingwork("sequences", "apply", "-f", str(broken), env=clean_env(DATABASE_URL=migrated_database_url))

    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("healingwork sequences apply: Sequence default/webinar-follow-up: spec.steps[1]")
    assert error in result.stderr
    assert await fetch_all(migrated_database_url, "SELECT name FROM sequences") == []


async def test_apply_of_a_template_that_does_not_render_stores_nothing(
    migrated_database_url: str, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text((ROOT / WEBINAR).read_text().replace("Three resources", "{{ lead.first_name | nosuchfilter }}"))

    result = healingwork(
        "sequences", "apply", "-f", "k8s/examples", "-f", str(broken), env=clean_env(DATABASE_URL=migrated_database_url)
    )

    assert result.returncode == 1
    assert result.stderr.startswith("healingwork sequences apply: Sequence default/webinar-follow-up: spec.steps[1]")
    assert "nosuchfilter" in result.stderr
    assert await fetch_all(migrated_database_url, "SELECT name FROM sequences") == []


def test_apply_without_files_says_what_to_give() -> None:
    result = healingwork("sequences", "apply", env=clean_env(DATABASE_URL="postgresql://nobody@127.0.0.1:1/x"))

    assert result.returncode == 1
    assert "give the Sequences to read with -f FILE|DIR" in result.stderr


def test_preview_prints_every_step_rendered_with_its_send_time_in_the_leads_zone() -> None:
    result = healingwork(
        "sequences",
        "preview",
        "-f",
        WEBINAR,
        "--lead",
        '{"first_name": "Ada", "timezone": "Europe/Berlin"}',
        "--at",
        "2026-03-27T16:00:00+01:00",
        env=clean_env(),
    )

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "# sequence default/webinar-follow-up"
    # Friday 16:00 + 12 h is Saturday night: the window opens Monday 09:00, after the DST switch.
    at = lines.index("sends at: 2026-03-30T07:00:00+00:00 (UTC)")
    assert lines[at + 1] == "          2026-03-30T09:00:00+02:00 (Europe/Berlin, the lead's time zone)"
    assert "Subject: The recording, Ada" in lines
    assert [line for line in lines if line.startswith("## step")] == [
        "## step 1/3 recording",
        "## step 2/3 resources",
        "## step 3/3 offer",
    ]


def test_preview_shows_the_headers_footer_and_tracking_links_a_lead_gets() -> None:
    result = healingwork(
        "sequences",
        "preview",
        "-f",
        "k8s/examples/welcome.yaml",
        "--lead",
        '{"first_name": "Ada", "email": "ada@example.org"}',
        env=clean_env(PUBLIC_BASE_URL="https://go.example.com", FROM_EMAIL="hello@mail.example.com"),
    )

    assert result.returncode == 0, result.stderr
    first_step = result.stdout.split("## step 2/2")[0]
    lines = first_step.splitlines()
    assert "To: Ada <ada@example.org>" in lines
    assert "From: healingwork <hello@mail.example.com>" in lines
    assert "List-Unsubscribe-Post: List-Unsubscribe=One-Click" in lines
    [unsubscribe] = [line for line in lines if line.startswith("List-Unsubscribe: ")]
    https_url, mailto = (part.strip().strip("<>") for part in unsubscribe.removeprefix("List-Unsubscribe: ").split(","))
    assert https_url.startswith("https://go.example.com/u/")
    assert mailto.startswith("mailto:hello@mail.example.com?subject=unsubscribe%20")
    assert f"Unsubscribe: {https_url}" in lines  # the footer of the text part, derived from the HTML
    assert f'<a href="{https_url}">Unsubscribe</a>' in first_step
    assert '<img src="https://go.example.com/t/o/' in first_step
    assert not any(line.startswith("Date:") for line in lines)


@pytest.mark.parametrize(
    ("sequence", "timezone", "local"),
    [
        # No send window: the time in the lead's zone, not UTC twice.
        ("welcome", "America/New_York", "2026-03-27T11:00:00-04:00 (America/New_York, the lead's time zone)"),
        # A window in Berlin time: the send time is still shown in the lead's own zone.
        ("re-engagement", "Asia/Tokyo", "2026-03-31T15:00:00+09:00 (Asia/Tokyo, the lead's time zone)"),
        ("re-engagement", None, "2026-03-31T08:00:00+02:00 (Europe/Berlin, the send window's zone; the lead has none)"),
        ("welcome", None, "2026-03-27T15:00:00+00:00 (UTC; the lead has no time zone)"),
    ],
)
def test_preview_shows_each_send_time_in_utc_and_in_the_leads_zone(
    sequence: str, timezone: str | None, local: str
) -> None:
    lead = json.dumps({"timezone": timezone} if timezone else {})

    result = healingwork(
        "sequences", "preview", "-f", "k8s/examples", "--lead", lead, "--at", "2026-03-27T15:00:00Z", env=clean_env()
    )

    assert result.returncode == 0, result.stderr
    section = result.stdout.split(f"# sequence default/{sequence}\n")[1].split("# sequence ")[0]
    lines = section.splitlines()
    first = lines.index(f"          {local}")
    assert lines[first - 1].startswith("sends at: ")
    assert lines[first - 1].endswith("+00:00 (UTC)")


def test_preview_of_a_template_that_fails_names_the_step_in_one_line(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text((ROOT / WEBINAR).read_text().replace("Three resources", "{{ 10 // 0 }}"))

    result = healingwork("sequences", "preview", "-f", str(broken), "--lead", "{}", env=clean_env())

    assert result.returncode == 1
    assert result.stderr == (
        "healingwork sequences preview: Sequence default/webinar-follow-up: spec.steps[1] (resources):"
        " template error: ZeroDivisionError: integer division or modulo by zero (in the subject)\n"
    )


def test_preview_resolves_config_map_templates_from_the_same_folder() -> None:
    result = healingwork(
        "sequences", "preview", "-f", "k8s/examples", "--lead", '{"first_name": "Grace"}', env=clean_env()
    )

    assert result.returncode == 0, result.stderr
    assert "It has been a while. Here is what changed since you last heard from us." in result.stdout


@pytest.mark.parametrize(
    ("lead", "message"),
    [
        ('{"first_nam": "Ada"}', "unknown field `first_nam`"),
        ("not json", "--lead:"),
        ('{"timezone": "Mars/Olympus"}', "--lead: timezone 'Mars/Olympus' is not an IANA time zone"),
    ],
)
def test_preview_with_a_bad_lead_names_the_problem(lead: str, message: str) -> None:
    result = healingwork("sequences", "preview", "-f", WEBINAR, "--lead", lead, env=clean_env())

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert message in result.stderr


def test_preview_with_events_shows_sent_skipped_waited_and_the_variant() -> None:
    opened = '[{"type": "opened", "step": "hello"}]'
    result = healingwork(
        "sequences",
        "preview",
        "k8s/examples/welcome-ab.yaml",
        "--lead",
        '{"locale": "de-DE", "id": "00000000-0000-0000-0000-000000000001"}',
        "--at",
        "2026-03-27T08:00:00+00:00",
        "--events",
        opened,
        env=clean_env(),
    )

    assert result.returncode == 0, result.stderr
    outcomes = [line for line in result.stdout.splitlines() if line.startswith("outcome:")]
    assert outcomes[0] in ("outcome: send (variant a)", "outcome: send (variant b)")
    assert outcomes[1:] == ["outcome: skip: when is false", "outcome: wait until 2026-04-01T08:00:00+00:00, then skip"]


def test_preview_of_a_lead_that_trigger_when_keeps_out_says_so() -> None:
    result = healingwork(
        "sequences", "preview", "k8s/examples/welcome-ab.yaml", "--lead", '{"locale": "en"}', env=clean_env()
    )

    assert result.returncode == 0, result.stderr
    assert "not enrolled: trigger.when is false for this lead" in result.stdout


async def test_apply_and_preview_refuse_an_expression_that_does_not_compile(
    migrated_database_url: str, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        (ROOT / "k8s/examples/welcome-ab.yaml").read_text().replace("lead.locale.startsWith('de')", "lead.locale.+")
    )

    for command in (("apply",), ("preview", "--lead", "{}")):
        result = healingwork("sequences", *command, str(broken), env=clean_env(DATABASE_URL=migrated_database_url))
        assert result.returncode != 0
        assert "at `$.spec.trigger.when`" in result.stderr
    assert await fetch_all(migrated_database_url, "SELECT 1 FROM sequences") == []
