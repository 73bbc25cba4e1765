"""Settings: environment variables read once, at start-up, into one typed object per command.

Each setting is a field of a msgspec Struct; its environment variable is the field name in upper
case. Extra checks ride on the field's type as ``Meta(extra={"check": fn})``. :func:`load_settings`
checks every field and raises one :class:`ConfigError` listing every problem, so an operator fixes
a broken deployment in one round instead of one variable at a time.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal, TypeAlias, TypeVar, get_args, get_origin, get_type_hints
from urllib.parse import parse_qs, urlsplit

import msgspec
from email_validator import EmailNotValidError, validate_email

Check = Callable[[Any], str | None]


class ConfigError(Exception):
    """The environment does not configure the command; ``problems`` lists each one."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))


# Values that appear in examples, tutorials and the original system's sample config: a secret that
# equals one of them is public knowledge, not a secret.
KNOWN_EXAMPLE_SECRETS = frozenset(
    {
        "changeme",
        "change-me",
        "secret",
        "your-secret-here",
        "your-hmac-secret",
        "your-hmac-secret-here",
        "hmac-secret",
        "dev-secret",
        "development-secret",
        "test-secret",
        "supersecret",
        "replace-me",
        "please-change-me-this-is-not-a-secret",
        "0123456789abcdef0123456789abcdef",
        "00000000000000000000000000000000",
    }
)


def check_hmac_secret(value: str) -> str | None:
    if len(value.encode()) < 32:
        return "must be at least 32 bytes (generate one with: openssl rand -hex 32)"
    lowered = value.lower()
    if lowered in KNOWN_EXAMPLE_SECRETS or any(word in lowered for word in ("changeme", "change-me", "example")):
        return "is a known example value; generate a real secret (openssl rand -hex 32)"
    if len(set(value)) < 8:
        return "has too little variety to be a secret (generate one with: openssl rand -hex 32)"
    return None


def check_email(value: str) -> str | None:
    try:
        validate_email(value, check_deliverability=False)
    except EmailNotValidError as error:
        return f"is not a valid email address ({error})"
    return None


def check_http_url(value: str) -> str | None:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an absolute http(s) URL such as https://mail.example.com"
    return None


def check_postgres_url(value: str) -> str | None:
    parts = urlsplit(value)
    if parts.scheme not in ("postgresql", "postgres"):
        return "must be a postgresql:// URL such as postgresql://user:password@host:5432/healingwork"
    return None


def check_smtp_url(value: str) -> str | None:
    parts = urlsplit(value)
    if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
        return "must be smtp://[user:password@]host[:port] (STARTTLS when offered) or smtps://... (implicit TLS)"
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return "has an invalid port"
    starttls = parse_qs(parts.query).get("starttls", ["auto"])
    if len(starttls) != 1 or starttls[0] not in ("auto", "required", "never"):
        return "has an invalid starttls option: use starttls=required or starttls=never (default: auto)"
    return None


_HOST_PORT = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\]):([0-9]{1,5})")


def check_bootstrap_servers(value: str) -> str | None:
    for server in value.split(","):
        match = _HOST_PORT.fullmatch(server.strip())
        if match is None or not 1 <= int(match.group(1)) <= 65535:
            return "must be a comma-separated list of host:port (such as kafka-0.kafka:9092,kafka-1.kafka:9092)"
    return None


def check_not_blank(value: str) -> str | None:
    return "must not be blank" if not value.strip() else None


def check_networks(value: str) -> str | None:
    for item in filter(None, (part.strip() for part in value.split(","))):
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            return f"has {item!r}, which is not an IP address or CIDR network (such as 10.0.0.0/8)"
    return None


def check_origins(value: str) -> str | None:
    for item in filter(None, (part.strip() for part in value.split(","))):
        parts = urlsplit(item)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.path or parts.query:
            return f"has {item!r}; list origins such as https://www.example.com (scheme, host, optional port)"
    return None


def check_optional_hmac_secret(value: str) -> str | None:
    return check_hmac_secret(value) if value else None


def check_optional_email(value: str) -> str | None:
    return check_email(value) if value else None


_HEADER_NAME = re.compile(r"[!-9;-~]{1,76}")  # RFC 5322 field name: printable ASCII except colon


def check_header_name(value: str) -> str | None:
    if value.lower() == "none" or _HEADER_NAME.fullmatch(value):
        return None
    return "must be an email header name such as X-Idempotency-Key (or none)"


# A DNS domain name (RFC 1035 labels), as List-Id wants its namespace: lowercase letters, digits, hyphens.
_DOMAIN_NAME = re.compile(r"(?=.{1,200}\Z)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]([a-z0-9-]{0,61}[a-z0-9])?")


def check_optional_domain(value: str) -> str | None:
    if not value or _DOMAIN_NAME.fullmatch(value):
        return None
    return "must be a lowercase domain name such as lists.example.com (or empty)"


_SIGNING_KEY_ID = re.compile(r"[A-Za-z0-9._-]{1,32}")


def signing_key_entries(value: str) -> list[tuple[str, str]]:
    """``REQUEST_SIGNING_KEYS`` as ``(key id, secret)`` pairs, the current key first; raises ValueError
    saying what is wrong (the secrets themselves are never in the message)."""
    entries: list[tuple[str, str]] = []
    for item in filter(None, (part.strip() for part in value.split(","))):
        key_id, colon, secret = item.partition(":")
        if not colon or not _SIGNING_KEY_ID.fullmatch(key_id.strip()):
            raise ValueError("must list <key id>:<secret> entries, comma-separated (key id: 1-32 of A-Z a-z 0-9 . _ -)")
        if problem := check_hmac_secret(secret.strip()):
            raise ValueError(f"has the key {key_id.strip()!r} whose secret {problem}")
        entries.append((key_id.strip(), secret.strip()))
    if len({key_id for key_id, _ in entries}) != len(entries):
        raise ValueError("lists a key id twice")
    return entries


def check_signing_keys(value: str) -> str | None:
    try:
        signing_key_entries(value)
    except ValueError as error:
        return str(error)
    return None


HmacSecret: TypeAlias = Annotated[str, msgspec.Meta(extra={"check": check_hmac_secret})]
SigningKeys: TypeAlias = Annotated[str, msgspec.Meta(extra={"check": check_signing_keys})]
EmailAddress: TypeAlias = Annotated[str, msgspec.Meta(extra={"check": check_email})]
HttpUrl: TypeAlias = Annotated[str, msgspec.Meta(extra={"check": check_http_url})]
PostgresUrl: TypeAlias = Annotated[str, msgspec.Meta(extra={"check": check_postgres_url})]
SmtpUrl: TypeAlias = Annotated[str, msgspec.Meta(extra={"check": check_smtp_url})]
BootstrapServers: TypeAlias = Annotated[str, msgspec.Meta(extra={"check": check_bootstrap_servers})]
NonBlank: TypeAlias = Annotated[str, msgspec.Meta(extra={"check": check_not_blank})]
OptionalHmacSecret: TypeAlias = Annotated[str, msgspec.Meta(extra={"check": check_optional_hmac_secret})]
OptionalEmailAddress: TypeAlias = Annotated[str, msgspec.Meta(extra={"check": check_optional_email})]
HeaderName: TypeAlias = Annotated[str, msgspec.Meta(extra={"check": check_header_name})]
OptionalDomain: TypeAlias = Annotated[str, msgspec.Meta(extra={"check": check_optional_domain})]
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]


S = TypeVar("S", bound=msgspec.Struct)


def _checks_of(annotation: Any) -> list[Check]:
    if get_origin(annotation) is not Annotated:
        return []
    return [
        meta.extra["check"]
        for meta in get_args(annotation)[1:]
        if isinstance(meta, msgspec.Meta) and meta.extra and "check" in meta.extra
    ]


def load_settings(kind: type[S], environ: Mapping[str, str] | None = None) -> S:
    """Build ``kind`` from the environment, or raise :class:`ConfigError` listing every problem.

    Empty variables count as unset. A field without a default is required.
    """
    env = os.environ if environ is None else environ
    hints = get_type_hints(kind, include_extras=True)
    values: dict[str, Any] = {}
    problems: list[str] = []
    for field in msgspec.structs.fields(kind):
        name = field.name.upper()
        raw = env.get(name, "").strip()
        if not raw:
            if field.required:
                problems.append(f"{name} is required but not set")
            continue
        try:
            value = msgspec.convert(raw, hints[field.name], strict=False)
        except msgspec.ValidationError as error:
            problems.append(f"{name}={_shown(name, raw)} is invalid: {str(error).removesuffix(' - at `$`')}")
            continue
        failures = [message for check in _checks_of(hints[field.name]) if (message := check(value))]
        problems.extend(f"{name} {message}" for message in failures)
        values[field.name] = value
    problems.extend(_cross_field_problems(values))
    if problems:
        raise ConfigError(problems)
    return msgspec.convert(values, kind)


def _sends_auth_in_clear(smtp_url: str) -> bool:
    parts = urlsplit(smtp_url)
    starttls = parse_qs(parts.query).get("starttls", ["auto"])
    return parts.scheme == "smtp" and parts.username is not None and starttls == ["never"]


def _cross_field_problems(values: Mapping[str, Any]) -> list[str]:
    """Problems no single variable shows: request-signing keys must be their own key material (the
    dispatcher holds ``HMAC_SECRET``; a client secret derivable from it would let that pod mint admin
    requests)."""
    problems: list[str] = []
    smtp_url = values.get("smtp_url")
    if smtp_url and not values.get("smtp_allow_plaintext_auth") and _sends_auth_in_clear(smtp_url):
        problems.append(
            "SMTP_URL has credentials and starttls=never: the password would cross the network in clear; "
            "use STARTTLS (the default) or smtps://, or set SMTP_ALLOW_PLAINTEXT_AUTH=true for a local relay"
        )
    link_secrets = {values.get("hmac_secret"), values.get("hmac_secret_previous")} - {None, ""}
    signing_keys = values.get("request_signing_keys")
    if signing_keys and link_secrets:
        try:
            reused = [key_id for key_id, secret in signing_key_entries(signing_keys) if secret in link_secrets]
        except ValueError:
            reused = []  # reported by the field's own check
        if reused:
            problems.append(
                f"REQUEST_SIGNING_KEYS key {reused[0]!r} reuses HMAC_SECRET; generate its own (openssl rand -hex 32)"
            )
    return problems


def _shown(name: str, raw: str) -> str:
    secret = any(word in name for word in ("SECRET", "PASSWORD", "TOKEN", "URL"))
    return "<hidden>" if secret else repr(raw)


class DatabaseSettings(msgspec.Struct, frozen=True, kw_only=True):
    """What every command that touches PostgreSQL needs."""

    database_url: PostgresUrl
    db_pool_min_size: PositiveInt = 1
    db_pool_max_size: PositiveInt = 10
    db_connect_timeout_s: PositiveFloat = 5.0
    db_statement_timeout_s: PositiveFloat = 15.0
    log_level: str = "INFO"


class BusSettings(DatabaseSettings, frozen=True, kw_only=True):
    """Commands that also talk to Kafka."""

    kafka_bootstrap_servers: BootstrapServers
    kafka_request_timeout_s: PositiveFloat = 10.0
    # How long a dead group member keeps its partitions; also how long a consumer group takes to form.
    kafka_session_timeout_s: PositiveFloat = 10.0
    # The longest a fetch waits at the broker for new records. Not every broker answers a waiting fetch
    # as soon as records arrive (Tansu does not), so this bounds the latency each hop may add.
    kafka_fetch_max_wait_s: Annotated[float, msgspec.Meta(gt=0, le=10)] = 0.1
    kafka_partitions: PositiveInt = 6
    kafka_replication_factor: PositiveInt = 1
    # retention.ms of the topics the platform creates: the bound on how long an erased person's ids and
    # redacted texts stay in Kafka after publication (docs/security.md). Existing topics are not changed.
    kafka_topic_retention_hours: PositiveFloat = 168.0
    # The outbox relay's producer: idempotent where the broker supports it (auto asks it at start).
    kafka_idempotent_producer: Literal["auto", "true", "false"] = "auto"
    topic_leads_accepted: NonBlank = "leads.accepted"
    topic_email_dispatch: NonBlank = "email.dispatch"
    topic_email_events: NonBlank = "email.events"
    topic_email_dlq: NonBlank = "email.dispatch.dlq"
    topic_leads_suppressed: NonBlank = "leads.suppressed"
    # What happens to leads and enrollments beyond emails: lead.erased, enrollment.started/ended,
    # lead.custom_event (key: lead id); read by the webhooks service.
    topic_lifecycle_events: NonBlank = "lifecycle.events"
    # Prepended to consumer group ids, so two installations (or test runs) can share one Kafka cluster.
    kafka_group_prefix: str = ""
    outbox_batch_size: PositiveInt = 200
    outbox_poll_interval_s: PositiveFloat = 0.5
    relay_enabled: bool = True
    # /healthz, /readyz and /metrics on a port of their own (the intake's API port never serves /metrics);
    # 0 turns it off.
    health_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8080
    # On SIGTERM the process exits within this long, whatever is unreachable: work in flight may finish
    # until the last min(5 s, a quarter) of it, which is kept for closing the Kafka and PostgreSQL clients.
    shutdown_grace_s: PositiveFloat = 20.0


class IntakeSettings(BusSettings, frozen=True, kw_only=True):
    """``healingwork intake``: the HTTP API and an outbox relay."""

    hmac_secret: HmacSecret
    public_base_url: HttpUrl
    # Keys the address hashes of suppressions and leads (HMAC-SHA256). Never rotate it: every stored
    # hash depends on it and erased addresses cannot be rehashed. Separate from HMAC_SECRET.
    suppression_hash_key: HmacSecret
    host: str = "0.0.0.0"  # noqa: S104 - a container listens on all its interfaces
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 8000
    # The OpenAPI document and its UIs under /schema (Swagger, Redoc, ...); the chart turns them off.
    openapi_enabled: bool = True
    duplicate_window_hours: PositiveFloat = 24.0
    max_body_bytes: PositiveInt = 65536
    # Tracking links keep working while the key rotates: tokens signed with the previous secret verify.
    hmac_secret_previous: OptionalHmacSecret = ""
    # POST /v1/webhooks/email-events (generic format) verifies this; unset: the generic adapter is off.
    webhook_secret: OptionalHmacSecret = ""
    webhook_tolerance_s: PositiveFloat = 300.0
    # SES via SNS: the topic ARNs whose notifications are accepted; empty: the SNS adapter is off.
    sns_topic_arns: str = ""
    # SNS messages whose Timestamp is older than this are refused (SNS retries a delivery for up to an hour
    # with its default policy; a captured message replayed later is refused).
    sns_max_age_s: PositiveFloat = 3600.0
    # Per-process limits of the unauthenticated write routes (see docs/security.md): provider webhook
    # requests per client IP (429 beyond), and tracked opens/clicks per client IP (beyond: the pixel or
    # redirect is still served, nothing is recorded).
    webhook_rate_limit_per_minute: PositiveInt = 600
    tracking_rate_limit_per_minute: PositiveInt = 600
    # Repeated opens/clicks of one message (same type, URL and automated flag) within this window are one event.
    tracking_dedupe_window_s: PositiveFloat = 60.0
    # Authentication: "required" everywhere but `healingwork dev`, which sets "disabled".
    auth_mode: Literal["required", "disabled"] = "required"
    signature_tolerance_s: PositiveFloat = 300.0
    # Signed requests: "<key id>:<secret>" entries, the current key first; every listed key verifies
    # (rotation). Its own key material, never HMAC_SECRET. Empty: signed requests are refused.
    request_signing_keys: SigningKeys = ""
    # Also accept the old "t=<unix>,v1=<HMAC of '<t>.<body>'>" signatures (secrets derived from HMAC_SECRET).
    signature_v1_compat: bool = False
    idempotency_ttl_hours: PositiveFloat = 24.0
    # Group commit: leads per transaction at most, and transactions of leads in flight at once.
    lead_batch_max_size: PositiveInt = 64
    lead_batch_concurrency: PositiveInt = 4
    rate_limit_per_minute: PositiveInt = 600
    # Browser forms: unauthenticated POST /v1/leads from these origins (comma-separated); empty = off.
    public_form_origins: Annotated[str, msgspec.Meta(extra={"check": check_origins})] = ""
    form_rate_limit_per_minute: PositiveInt = 10
    form_honeypot_field: NonBlank = "website_url"
    # Proxies whose X-Forwarded-For is believed when finding the client's IP (comma-separated CIDRs).
    trusted_proxies: Annotated[str, msgspec.Meta(extra={"check": check_networks})] = ""
    # Double opt-in: which new leads must confirm by email before they enroll (a Sequence with
    # spec.doubleOptIn asks it of every lead it enrolls, whatever this says).
    double_opt_in: Literal["public-forms", "all", "off"] = "public-forms"
    # How long a confirmation link works; unconfirmed leads older than this are purged.
    confirmation_expiry_hours: PositiveFloat = 168.0
    # A resubmitted unconfirmed lead gets another confirmation email no sooner than this.
    confirmation_cooldown_minutes: PositiveFloat = 15.0
    # Outgoing webhooks: let endpoints be registered on loopback/private/link-local addresses (dev only).
    webhook_allow_private_networks: bool = False
    # Outgoing webhooks: after POST /v1/webhook-endpoints/{id}/rotate-secret, deliveries are signed with the
    # previous secret too, next to the new one, for this long (receivers switch without losing events).
    webhook_secret_grace_s: PositiveFloat = 86400.0


class ClientsSettings(DatabaseSettings, frozen=True, kw_only=True):
    """``healingwork clients create|signing-secret``: API clients, their keys and signing secrets."""

    # The intake's REQUEST_SIGNING_KEYS: a client's signing secret is derived from the current (first) key.
    request_signing_keys: SigningKeys = ""


class SchedulerSettings(BusSettings, frozen=True, kw_only=True):
    """``healingwork scheduler``: enrolls leads and emits due steps."""

    scheduler_poll_interval_s: PositiveFloat = 1.0
    scheduler_batch_size: PositiveInt = 100


class DispatcherSettings(BusSettings, frozen=True, kw_only=True):
    """``healingwork dispatcher``: renders and sends email over SMTP."""

    hmac_secret: HmacSecret
    public_base_url: HttpUrl
    from_email: EmailAddress
    from_name: NonBlank
    smtp_url: SmtpUrl
    # Send SMTP AUTH on an unencrypted session (a relay on the same host or pod only); otherwise
    # credentials go only over TLS (smtps://, or STARTTLS, which then is required).
    smtp_allow_plaintext_auth: bool = False
    smtp_timeout_s: PositiveFloat = 30.0
    max_attempts: PositiveInt = 8
    retry_base_delay_s: PositiveFloat = 60.0
    retry_max_delay_s: PositiveFloat = 6 * 3600.0
    # Records fetched per batch, and SMTP transactions in flight at once (= pooled connections).
    dispatch_batch_size: PositiveInt = 200
    dispatch_concurrency: PositiveInt = 16
    # Messages per second for this transport across all replicas (0: unlimited); see docs/configuration.md.
    smtp_rate_per_s: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    smtp_rate_name: NonBlank = "default"
    # How long the whole pool pauses after 421/451/454 (doubling while the server keeps answering so).
    smtp_throttle_pause_s: PositiveFloat = 5.0
    # Header carrying the message id for providers that deduplicate on one; "none" leaves it out.
    smtp_idempotency_header: HeaderName = "X-Idempotency-Key"
    # List-Unsubscribe mailto address; empty: FROM_EMAIL (subject "unsubscribe <token>").
    unsubscribe_mailto: OptionalEmailAddress = ""
    track_opens: bool = True
    track_clicks: bool = True
    # The domain part of each Sequence's List-Id (<name.namespace.LIST_ID_DOMAIN>); empty: the domain of
    # the message's From address.
    list_id_domain: OptionalDomain = ""
    # The double opt-in confirmation email: its subject, and an HTML template file replacing the built-in
    # one (a ConfigMap mounted as a file, in Kubernetes); see docs/configuration.md.
    confirmation_subject: NonBlank = "Please confirm your subscription"
    confirmation_template_file: str = ""


def check_retry_schedule(value: str) -> str | None:
    try:
        delays = [float(part) for part in value.split(",")]
    except ValueError:
        return "must be comma-separated seconds such as 5,300,1800,7200,18000,36000,36000"
    if not delays or any(delay < 0 for delay in delays):
        return "must list at least one delay, none negative"
    return None


RetrySchedule: TypeAlias = Annotated[str, msgspec.Meta(extra={"check": check_retry_schedule})]


class WebhooksSettings(BusSettings, frozen=True, kw_only=True):
    """``healingwork webhooks``: delivers outgoing webhooks (Standard Webhooks signatures)."""

    # The endpoints' signing secrets are stored encrypted under a key derived from this (and the previous one).
    hmac_secret: HmacSecret
    hmac_secret_previous: OptionalHmacSecret = ""
    # Deliver to loopback/private/link-local addresses too (`healingwork dev` and tests only).
    webhook_allow_private_networks: bool = False
    # One attempt, from connecting to the last byte read, takes at most this long.
    webhook_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=10)] = 10.0
    # Seconds to wait after each failed attempt (the Standard Webhooks recommendation: 8 attempts over
    # about 27.5 hours); after the last, the delivery fails, and the endpoint is disabled if nothing
    # reached it since the delivery was created.
    webhook_retry_schedule_s: RetrySchedule = "5,300,1800,7200,18000,36000,36000"
    # Deliveries claimed per pass (= sent at once), and how often due deliveries are looked for.
    webhook_batch_size: PositiveInt = 50
    webhook_poll_interval_s: PositiveFloat = 1.0
    # The backstop for events a broker lost: how often the outbox is read again, and how far back at start.
    webhook_reconcile_interval_s: PositiveFloat = 30.0
    webhook_reconcile_lookback_s: PositiveFloat = 86400.0


class PreviewSettings(msgspec.Struct, frozen=True, kw_only=True):
    """``healingwork sequences preview``: the dispatcher's settings that shape a message, read where they
    are set so the preview shows the links and headers the dispatcher would send; none is required."""

    public_base_url: HttpUrl = "https://links.example.com"
    from_email: EmailAddress = "sender@example.com"
    from_name: NonBlank = "healingwork"
    smtp_idempotency_header: HeaderName = "X-Idempotency-Key"
    unsubscribe_mailto: OptionalEmailAddress = ""
    track_opens: bool = True
    track_clicks: bool = True
    # The domain part of each Sequence's List-Id (<name.namespace.LIST_ID_DOMAIN>); empty: the domain of
    # the message's From address.
    list_id_domain: OptionalDomain = ""


class DeadLetterSettings(DatabaseSettings, frozen=True, kw_only=True):
    """``healingwork dlq``: inspects and re-drives dead letters through the outbox (no Kafka connection)."""

    topic_email_dispatch: NonBlank = "email.dispatch"
    topic_email_events: NonBlank = "email.events"


def check_optional_http_url(value: str | None) -> str | None:
    return None if value is None else check_http_url(value)


OptionalHttpUrl: TypeAlias = Annotated[str | None, msgspec.Meta(extra={"check": check_optional_http_url})]


class JobSettings(DatabaseSettings, frozen=True, kw_only=True):
    """``healingwork job <name>``: the batch jobs run as CronJobs.

    Jobs talk to PostgreSQL only: what they publish goes through the outbox, which the relays of the
    running services deliver. The topic names are the services' variables, read again here.
    """

    topic_leads_accepted: NonBlank = "leads.accepted"
    topic_email_dispatch: NonBlank = "email.dispatch"
    topic_email_events: NonBlank = "email.events"
    topic_email_dlq: NonBlank = "email.dispatch.dlq"
    pushgateway_url: OptionalHttpUrl = None
    pushgateway_timeout_s: PositiveFloat = 10.0
    sentry_dsn: str | None = None
    # retry-failed
    max_attempts: PositiveInt = 8
    retry_batch_size: PositiveInt = 500
    stuck_queued_after_s: PositiveFloat = 900.0
    stuck_sending_after_s: PositiveFloat = 900.0
    # Queue messages stuck in `sending` again instead of only counting them (a possible duplicate).
    resend_stuck_sending: bool = False
    unenrolled_lead_after_s: PositiveFloat = 900.0
    # aggregate-stats
    stats_window_days: PositiveInt = 2
    # purge
    purge_batch_size: PositiveInt = 5000
    events_retention_days: PositiveFloat = 180.0
    outbox_retention_hours: PositiveFloat = 168.0
    idempotency_ttl_hours: PositiveFloat = 24.0
    duplicate_window_hours: PositiveFloat = 24.0
    # Unconfirmed (double opt-in) leads older than this are deleted; intake's value, read again here.
    confirmation_expiry_hours: PositiveFloat = 168.0


class OperatorSettings(DatabaseSettings, frozen=True, kw_only=True):
    """``healingwork operator``: reconciles Sequence resources into PostgreSQL and their status."""

    # Comma-separated namespaces to watch; empty watches every namespace (cluster-wide RBAC needed).
    operator_namespaces: str = ""
    # How often every Sequence is reconciled again (counts refreshed, ConfigMap edits picked up).
    operator_refresh_interval_s: PositiveFloat = 60.0
    # /healthz, /readyz and /metrics listen here; 0 turns them off.
    health_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8080
    # Longest wait between two tries of a handler while PostgreSQL is unreachable (they never give up).
    operator_retry_max_delay_s: PositiveFloat = 60.0
    # How often stored Sequences whose resource is gone from the API server are marked deleted.
    operator_sweep_interval_s: PositiveFloat = 300.0
