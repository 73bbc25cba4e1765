"""``healingwork sequences apply`` and ``sequences preview`` as a user runs them."""

from __future__ import annotations

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
    assert "sends at: 2026-03-30T09:00:00+02:00 (2026-03-30T07:00:00+00:00)" in lines
    assert "subject: The recording, Ada" in lines
    assert [line for line in lines if line.startswith("## step")] == [
        "## step 1/3 recording",
        "## step 2/3 resources",
        "## step 3/3 offer",
    ]


def test_preview_resolves_config_map_templates_from_the_same_folder() -> None:
    result = healingwork(
        "sequences", "preview", "-f", "k8s/examples", "--lead", '{"first_name": "Grace"}', env=clean_env()
    )

    assert result.returncode == 0, result.stderr
    assert "It has been a while. Here is what changed since you last heard from us." in result.stdout


@pytest.mark.parametrize(
    ("lead", "message"),
    [('{"first_nam": "Ada"}', "unknown field `first_nam`"), ("not json", "--lead:")],
)
def test_preview_with_a_bad_lead_names_the_problem(lead: str, message: str) -> None:
    result = healingwork("sequences", "preview", "-f", WEBINAR, "--lead", lead, env=clean_env())

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert message in result.stderr
