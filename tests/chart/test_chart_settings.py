"""The chart and the settings of services/common/config.py: every setting is either set by the chart (a named
value, or fixed) or listed in docs/deployment.md as one for ``config.extraEnv``; each named value reaches
exactly the pods whose command reads it; the values schema refuses malformed ones, naming them.

Helm comes from ``scripts/ensure-tools.sh`` (see test_chart.py).
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml

from services.common.config import BusSettings
from tests.chart.test_chart import CHART, MINIMAL, ROOT, Manifest, helm, of_kind, pod_specs, render, render_error

PRODUCTION = ROOT / "charts" / "healingwork" / "ci" / "production-values.yaml"
EXISTING_SECRET = ROOT / "charts" / "healingwork" / "ci" / "existing-secret-values.yaml"
DEPLOYMENT_DOC = ROOT / "docs" / "deployment.md"
TEMPLATE_DIR = "/etc/healingwork/confirmation-template"
TEMPLATE = '<p>Hello {{ lead.first_name }}, <a href="{{ confirm_url }}">confirm</a>.</p>\n'

# Every named value set at once (on top of ci/production-values.yaml), so every setting the chart can set is
# rendered somewhere.
EVERY_VALUE = (
    "config.kafkaGroupPrefix=eu.prod-",
    "intake.snsTopicArns={arn:aws:sns:eu-west-1:123456789012:ses-bounces,arn:aws:sns:eu-west-1:123456789012:ses-complaints}",
    "dispatcher.smtpRatePerSecond=14",
    "dispatcher.trackOpens=false",
    "dispatcher.trackClicks=false",
    "secrets.requestSigningKeys=k1:" + "8c1f2a3b4c5d6e7f8091a2b3c4d5e6f7",
)


@cache
def commands() -> dict[str, type[msgspec.Struct]]:
    """The settings Struct of each command, from the one place that maps them (scripts/config_reference.py)."""
    path = ROOT / "scripts" / "config_reference.py"
    spec = importlib.util.spec_from_file_location("config_reference", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    mapping: dict[str, type[msgspec.Struct]] = module.COMMANDS
    return mapping


def settings_of(command: str) -> set[str]:
    return {field.name.upper() for field in msgspec.structs.fields(commands()[command])}


def every_setting() -> set[str]:
    return set().union(*(settings_of(command) for command in commands()))


def extra_env_only_settings() -> set[str]:
    """The variables docs/deployment.md lists as set through config.extraEnv only (between its markers)."""
    text = DEPLOYMENT_DOC.read_text()
    table = text.split("<!-- extraenv-only:start -->")[1].split("<!-- extraenv-only:end -->")[0]
    return set(re.findall(r"^\| `([A-Z0-9_]+)` \|", table, flags=re.MULTILINE))


def command_of(pod: str) -> str | None:
    """The healingwork command a rendered pod runs; None for the helm test Pod, which runs none."""
    kind, name = pod.split("/")
    if kind == "CronJob":
        return "job *"
    if kind == "Job":
        return "migrate"
    if kind == "Deployment":
        return name.removeprefix("healingwork-")
    return None


def release_config(manifests: list[Manifest]) -> dict[str, str]:
    [config] = [m for m in of_kind(manifests, "ConfigMap") if m["metadata"]["name"] == "healingwork"]
    data: dict[str, str] = config["data"]
    return data


def own_env(manifests: list[Manifest]) -> dict[str, dict[str, Any]]:
    """Per healingwork command: the variables its pod gets besides the release ConfigMap's (by name)."""
    shared = set(release_config(manifests))
    env: dict[str, dict[str, Any]] = {}
    for pod, spec in pod_specs(manifests):
        command = command_of(pod)
        if command is None:
            continue
        [container] = spec["containers"]
        own = {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}
        # The migration hook gets the ConfigMap's settings inline (the ConfigMap does not exist yet).
        env[command] = {name: value for name, value in own.items() if name not in shared}
    return env


def env_of(manifests: list[Manifest], command: str) -> dict[str, Any]:
    return own_env(manifests)[command]


def render_with_template(tmp_path: Path, template: str, *values: Path) -> subprocess.CompletedProcess[str]:
    """helm template with the confirmation template from a file, as docs/deployment.md shows (--set-file)."""
    path = tmp_path / "confirmation.html"
    path.write_text(template)
    arguments = [arg for value in values for arg in ("--values", str(value))]
    return helm(
        "template",
        "healingwork",
        CHART,
        "--namespace",
        "mail",
        *arguments,
        "--set-file",
        f"config.doubleOptIn.confirmationTemplate={path}",
    )


def rendered_with_template(tmp_path: Path, template: str, *values: Path) -> list[Manifest]:
    result = render_with_template(tmp_path, template, *values)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def dispatcher_pod(manifests: list[Manifest]) -> Manifest:
    [deployment] = [d for d in of_kind(manifests, "Deployment") if d["metadata"]["name"] == "healingwork-dispatcher"]
    return deployment["spec"]["template"]


# --- every setting has one place -----------------------------------------------------------------------


def chart_set_settings() -> set[str]:
    manifests = render(PRODUCTION, sets=EVERY_VALUE)
    extra = set(yaml.safe_load(PRODUCTION.read_text())["config"]["extraEnv"])
    per_pod = set().union(*own_env(manifests).values())
    return (set(release_config(manifests)) - extra) | per_pod


def test_every_setting_is_set_by_the_chart_or_listed_as_extra_env_only() -> None:
    settings, by_chart, listed = every_setting(), chart_set_settings(), extra_env_only_settings()

    assert sorted(settings - by_chart - listed) == [], "neither a chart value nor listed in docs/deployment.md"
    assert sorted(by_chart & listed) == [], "set by the chart but listed in docs/deployment.md as extraEnv-only"
    assert sorted(listed - settings) == [], "listed in docs/deployment.md but not a setting of config.py"
    assert sorted(by_chart - settings) == [], "the chart sets a variable no command reads"


def test_extra_env_refuses_every_setting_the_chart_sets_naming_the_value_to_use() -> None:
    by_chart = sorted(chart_set_settings())
    error = render_error("--values", MINIMAL, *[f"--set=config.extraEnv.{name}=x" for name in by_chart])

    refused = set(re.findall(r"config\.extraEnv\.([A-Z0-9_]+): the chart sets \1 from ", error))
    assert sorted(refused) == by_chart
    assert "config.extraEnv.LIST_ID_DOMAIN: the chart sets LIST_ID_DOMAIN from config.listIdDomain" in error
    assert "config.extraEnv.TRUSTED_PROXIES: the chart sets TRUSTED_PROXIES from intake.trustedProxies" in error


def test_extra_env_still_takes_a_setting_without_a_value() -> None:
    manifests = render(MINIMAL, sets=("config.extraEnv.SMTP_RATE_NAME=eu-relay",))
    assert release_config(manifests)["SMTP_RATE_NAME"] == "eu-relay"


# --- each value reaches exactly the pods that read it ---------------------------------------------------


@pytest.mark.parametrize("values", [MINIMAL, PRODUCTION, EXISTING_SECRET], ids=lambda p: p.name)
def test_each_pod_gets_only_settings_its_command_reads_and_every_reader_gets_them(values: Path) -> None:
    env = own_env(render(values, sets=EVERY_VALUE if values == PRODUCTION else ()))

    for command, names in env.items():
        assert sorted(set(names) - settings_of(command)) == [], f"{command} does not read these"
    for name in set().union(*env.values()):
        holders = {command for command, names in env.items() if name in names}
        readers = {command for command in env if name in settings_of(command)}
        assert holders == readers, name


def test_named_values_land_in_the_pods_that_read_them() -> None:
    manifests = render(PRODUCTION, sets=EVERY_VALUE)
    dispatcher, intake = env_of(manifests, "dispatcher"), env_of(manifests, "intake")

    assert dispatcher["LIST_ID_DOMAIN"] == "lists.example.com"
    assert dispatcher["UNSUBSCRIBE_MAILTO"] == "unsubscribe@mail.example.com"
    assert dispatcher["CONFIRMATION_SUBJECT"] == "{{ lead.first_name }}, please confirm your subscription"
    assert dispatcher["CONFIRMATION_TEMPLATE_FILE"] == f"{TEMPLATE_DIR}/confirmation.html"
    assert (dispatcher["SMTP_RATE_PER_S"], dispatcher["TRACK_OPENS"], dispatcher["TRACK_CLICKS"]) == (
        "14",
        "false",
        "false",
    )
    assert intake["DOUBLE_OPT_IN"] == "public-forms"
    assert intake["TRUSTED_PROXIES"] == "10.244.250.0/26"
    assert intake["PUBLIC_FORM_ORIGINS"] == "https://www.example.com"
    assert intake["SNS_TOPIC_ARNS"] == (
        "arn:aws:sns:eu-west-1:123456789012:ses-bounces,arn:aws:sns:eu-west-1:123456789012:ses-complaints"
    )
    assert release_config(manifests)["KAFKA_GROUP_PREFIX"] == "eu.prod-"


def test_a_fractional_send_rate_given_with_set_reaches_the_dispatcher() -> None:
    # --set passes 2.5 as a string; the schema takes a number or a numeric string.
    assert env_of(render(MINIMAL, sets=("dispatcher.smtpRatePerSecond=2.5",)), "dispatcher")["SMTP_RATE_PER_S"] == "2.5"


def test_with_defaults_the_pods_get_no_new_setting() -> None:
    manifests = render(MINIMAL)
    env = own_env(manifests)

    # The values left empty (or at the service's default) render nothing: the services' defaults apply.
    assert set(env["dispatcher"]) == {"HEALTH_PORT", "DATABASE_URL", "HMAC_SECRET", "SMTP_URL"}
    assert set(env["intake"]) == {
        "PORT",
        "HEALTH_PORT",
        "OPENAPI_ENABLED",
        "DATABASE_URL",
        "HMAC_SECRET",
        "SUPPRESSION_HASH_KEY",
        "REQUEST_SIGNING_KEYS",
        "HMAC_SECRET_PREVIOUS",
        "WEBHOOK_SECRET",
    }
    assert set(release_config(manifests)) == {
        "KAFKA_BOOTSTRAP_SERVERS",
        "PUBLIC_BASE_URL",
        "FROM_EMAIL",
        "FROM_NAME",
        "LOG_LEVEL",
        "KAFKA_PARTITIONS",
        "KAFKA_REPLICATION_FACTOR",
        "KAFKA_TOPIC_RETENTION_HOURS",
        *(f"TOPIC_{name}" for name in ("LEADS_ACCEPTED", "EMAIL_DISPATCH", "EMAIL_EVENTS", "EMAIL_DLQ")),
        "TOPIC_LEADS_SUPPRESSED",
        "TOPIC_LIFECYCLE_EVENTS",
    }
    pod = dispatcher_pod(manifests)
    assert [v["name"] for v in pod["spec"]["volumes"]] == ["tmp"]
    assert "checksum/confirmation-template" not in pod["metadata"]["annotations"]
    assert [m["metadata"]["name"] for m in of_kind(manifests, "ConfigMap")] == ["healingwork"]


# --- topics ---------------------------------------------------------------------------------------------


def test_the_topic_defaults_are_the_services_defaults() -> None:
    defaults = {
        field.name.upper(): field.default
        for field in msgspec.structs.fields(BusSettings)
        if field.name.startswith("topic_")
    }
    config = release_config(render(MINIMAL))

    assert {name: value for name, value in config.items() if name.startswith("TOPIC_")} == defaults


def test_every_topic_comes_from_the_one_configmap_for_every_component() -> None:
    topics = {
        "leadsAccepted": "eu.leads.accepted",
        "emailDispatch": "eu.email.dispatch",
        "emailEvents": "eu.email.events",
        "emailDlq": "eu.email.dispatch.dlq",
        "leadsSuppressed": "eu.leads.suppressed",
        "lifecycleEvents": "eu.lifecycle.events",
    }
    manifests = render(MINIMAL, sets=tuple(f"config.topics.{key}={name}" for key, name in topics.items()))

    config = release_config(manifests)
    assert sorted(value for name, value in config.items() if name.startswith("TOPIC_")) == sorted(topics.values())
    readers = {command for command in commands() if any(s.startswith("TOPIC_") for s in settings_of(command))}
    for pod, spec in pod_specs(manifests):
        command = command_of(pod)
        if command not in readers:
            continue
        [container] = spec["containers"]
        # Every reader gets the names through the ConfigMap, none from a setting of its own.
        assert container["envFrom"] == [{"configMapRef": {"name": "healingwork"}}], pod
        assert [e["name"] for e in container["env"] if e["name"].startswith("TOPIC_")] == [], pod


# --- the confirmation email template --------------------------------------------------------------------


def test_the_confirmation_template_is_a_configmap_mounted_read_only_into_the_dispatcher_only(tmp_path: Path) -> None:
    manifests = rendered_with_template(tmp_path, TEMPLATE, MINIMAL)

    [template] = [m for m in of_kind(manifests, "ConfigMap") if m["metadata"]["name"] != "healingwork"]
    assert template["metadata"]["name"] == "healingwork-confirmation-template"
    assert template["data"] == {"confirmation.html": TEMPLATE}
    pod = dispatcher_pod(manifests)
    [container] = pod["spec"]["containers"]
    assert {"name": "confirmation-template", "mountPath": TEMPLATE_DIR, "readOnly": True} in container["volumeMounts"]
    assert {
        "name": "confirmation-template",
        "configMap": {
            "name": "healingwork-confirmation-template",
            "items": [{"key": "confirmation.html", "path": "confirmation.html"}],
        },
    } in pod["spec"]["volumes"]
    assert env_of(manifests, "dispatcher")["CONFIRMATION_TEMPLATE_FILE"] == f"{TEMPLATE_DIR}/confirmation.html"
    mounted = {
        name
        for name, spec in pod_specs(manifests)
        if any(v.get("configMap", {}).get("name") == "healingwork-confirmation-template" for v in spec["volumes"])
    }
    assert mounted == {"Deployment/healingwork-dispatcher"}


def test_a_changed_confirmation_template_rolls_the_dispatcher(tmp_path: Path) -> None:
    def checksum(template: str) -> str:
        pod = dispatcher_pod(rendered_with_template(tmp_path, template, MINIMAL))
        value: str = pod["metadata"]["annotations"]["checksum/confirmation-template"]
        return value

    assert checksum(TEMPLATE) != checksum(TEMPLATE.replace("Hello", "Hi"))


def test_an_existing_configmap_is_mounted_and_the_chart_renders_none() -> None:
    manifests = render(EXISTING_SECRET)

    assert [m["metadata"]["name"] for m in of_kind(manifests, "ConfigMap")] == ["healingwork"]
    pod = dispatcher_pod(manifests)
    [volume] = [v for v in pod["spec"]["volumes"] if v["name"] == "confirmation-template"]
    assert volume["configMap"]["name"] == "healingwork-confirmation-template"
    assert env_of(manifests, "dispatcher")["CONFIRMATION_TEMPLATE_FILE"] == f"{TEMPLATE_DIR}/confirmation.html"
    # Edited outside the release: nothing to checksum (docs/deployment.md: restart the dispatcher).
    assert "checksum/confirmation-template" not in pod["metadata"]["annotations"]


def test_a_template_and_an_existing_configmap_together_are_rejected(tmp_path: Path) -> None:
    result = render_with_template(tmp_path, TEMPLATE, EXISTING_SECRET)
    error = result.stderr
    assert result.returncode != 0
    assert "config.doubleOptIn.confirmationTemplate and config.doubleOptIn.existingConfigMap" in error


def test_a_template_without_the_confirm_url_is_rejected() -> None:
    error = render_error("--values", MINIMAL, "--set", "config.doubleOptIn.confirmationTemplate=<p>Welcome</p>")
    assert "config.doubleOptIn.confirmationTemplate never shows {{ confirm_url }}" in error


# --- the schema refuses malformed values, naming them ---------------------------------------------------


@pytest.mark.parametrize(
    ("assignment", "path"),
    [
        ("config.listIdDomain=Lists.Example.com", "/config/listIdDomain"),
        ("config.listIdDomain=lists.example.com.", "/config/listIdDomain"),
        ("config.unsubscribeMailto=unsubscribe", "/config/unsubscribeMailto"),
        ("config.kafkaGroupPrefix=eu prod", "/config/kafkaGroupPrefix"),
        ("config.topics.lifecycleEvents=lifecycle events", "/config/topics/lifecycleEvents"),
        ("config.topics.leadsSuppressed=", "/config/topics/leadsSuppressed"),
        ("config.doubleOptIn.mode=sometimes", "/config/doubleOptIn/mode"),
        ("config.doubleOptIn.confirmationSubject=   ", "/config/doubleOptIn/confirmationSubject"),
        ("config.doubleOptIn.existingConfigMap=My_Template", "/config/doubleOptIn/existingConfigMap"),
        ("intake.trustedProxies[0]=the ingress", "/intake/trustedProxies/0"),
        ("intake.publicFormOrigins[0]=https://www.example.com/form", "/intake/publicFormOrigins/0"),
        ("intake.snsTopicArns[0]=ses-bounces", "/intake/snsTopicArns/0"),
        ("dispatcher.smtpRatePerSecond=fast", "/dispatcher/smtpRatePerSecond"),
        ("dispatcher.trackOpens=no", "/dispatcher/trackOpens"),
    ],
)
def test_values_schema_rejects_a_malformed_setting_naming_it(assignment: str, path: str) -> None:
    error = render_error("--values", MINIMAL, "--set-string", assignment)

    assert "values don't meet the specifications of the schema" in error, error
    assert f"at '{path}'" in error, error
