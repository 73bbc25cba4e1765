"""The ``Sequence`` custom resource (``healingwork.io/v1alpha1``) as Structs.

The same shape is read from YAML files (``healingwork sequences apply``) and from the Kubernetes API
by the operator; ``k8s/crds/sequences.healingwork.io.yaml`` is its schema for the API server, and a
test keeps the two in step. Field names are camelCase on the wire, snake_case in Python.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

API_VERSION = "healingwork.io/v1alpha1"
KIND = "Sequence"

Slug = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9]([a-z0-9._-]{0,62}[a-z0-9])?\Z")]
# Durations like "0s", "90m", "48h", "2d" or combinations "1h30m"; parsed by services.common.durations.
Duration = Annotated[str, msgspec.Meta(pattern=r"^([0-9]+(d|h|m|s))+\Z", max_length=32)]
# "HH:MM" on a 24-hour clock; "24:00" closes a window at midnight.
ClockTime = Annotated[str, msgspec.Meta(pattern=r"^(([01][0-9]|2[0-3]):[0-5][0-9]|24:00)\Z")]
# "lead" (the lead's own time zone) or an IANA name such as "Europe/Berlin"; checked against tzdata
# by services.common.sequences, because a schema cannot list every zone.
TimeZoneName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)*\Z", max_length=64)]
Weekday = Literal["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
WEEKDAYS: tuple[Weekday, ...] = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
# Kubernetes object names (DNS subdomain) and ConfigMap keys.
ObjectName = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?\Z")]
ConfigMapKey = Annotated[str, msgspec.Meta(pattern=r"^[-._a-zA-Z0-9]{1,253}\Z")]
RevisionPolicy = Literal["Latest", "Pinned"]
# Global: an unsubscribe from this Sequence's mail suppresses the address everywhere (RFC 8058 one-click
# as it always was). Sequence: it ends only this Sequence's enrollment of the address.
UnsubscribeScope = Literal["Global", "Sequence"]
# One line of text (a name people read), never a header injection.
DisplayName = Annotated[str, msgspec.Meta(min_length=1, max_length=100, pattern=r"^[^\r\n]*\Z")]
# The label a ConfigMap needs for the operator to read it as templates (templateRef); the operator's
# watch selects on it, so unlabelled ConfigMaps never reach it (docs/operator.md, "ConfigMaps").
TEMPLATES_LABEL, TEMPLATES_LABEL_VALUE = "healingwork.io/templates", "true"
# One inline body (html or text), in characters, and all inline subjects and bodies of a Sequence
# together: one object must fit into etcd (1.5 MiB) even when every character is JSON-escaped to 6
# bytes (docs/operator.md, "Size limits"). The CRD has the same numbers (maxLength and a CEL rule).
MAX_BODY_CHARACTERS = 131072
MAX_INLINE_CHARACTERS = 196608
Body = Annotated[str, msgspec.Meta(max_length=MAX_BODY_CHARACTERS)]
# A CEL expression over ``lead``, ``events`` and ``now`` (services.common.conditions), compiled and
# type-checked when the Sequence is applied.
Expression = Annotated[str, msgspec.Meta(min_length=1, max_length=2048)]
OnTimeout = Literal["skip", "send"]


class _Camel(msgspec.Struct, frozen=True, kw_only=True, rename="camel", forbid_unknown_fields=True):
    pass


class Trigger(_Camel, frozen=True, kw_only=True):
    """Which leads enroll: any listed source or any listed tag, or every lead when ``all``."""

    sources: list[Slug] = []
    tags: list[Annotated[str, msgspec.Meta(min_length=1, max_length=64)]] = []
    all: bool = False
    # Of the leads the above matches, only those for which this is true enroll (evaluated once, at
    # enrollment, over the lead and its events so far).
    when: Expression | None = None


class TemplateRef(_Camel, frozen=True, kw_only=True):
    """A step's body kept in a ConfigMap of the Sequence's namespace: the HTML and/or text template keys."""

    config_map: ObjectName
    html_key: ConfigMapKey | None = None
    text_key: ConfigMapKey | None = None


class WaitFor(_Camel, frozen=True, kw_only=True):
    """Hold a due step until ``condition`` holds (re-evaluated when an event arrives for the lead), at
    most ``timeout``; then ``onTimeout`` skips the step or sends it anyway."""

    condition: Expression
    timeout: Duration
    on_timeout: OnTimeout = "skip"


class Variant(_Camel, frozen=True, kw_only=True):
    """One arm of an A/B test of a step: what it overrides of the step, and its share by ``weight``."""

    name: Slug
    weight: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 1
    subject: Annotated[str, msgspec.Meta(min_length=1, max_length=998)] | None = None
    html: Body | None = None
    text: Body | None = None
    template_ref: TemplateRef | None = None


class Step(_Camel, frozen=True, kw_only=True):
    """One email of the sequence, sent ``delay`` after the previous step (or after enrollment).

    The body is ``html`` and/or ``text`` inline, or from ``templateRef`` (not both for the same part).
    ``when`` false at the due time skips the step; ``waitFor`` holds it until its condition holds;
    ``variants`` split leads deterministically (per lead and step, by weight) between versions of it.
    """

    name: Slug
    delay: Duration = "0s"
    # Required unless every variant gives its own subject.
    subject: Annotated[str, msgspec.Meta(min_length=1, max_length=998)] | None = None
    html: Body | None = None
    text: Body | None = None
    template_ref: TemplateRef | None = None
    when: Expression | None = None
    wait_for: WaitFor | None = None
    variants: Annotated[list[Variant], msgspec.Meta(max_length=10)] = []

    @property
    def base_subject(self) -> str:
        """The step's subject, or (when only its variants have one) the first variant's: what is stored
        as the step's own and shown where no variant applies."""
        subject = self.subject or next((v.subject for v in self.variants if v.subject), None)
        assert subject is not None, "checked by spec_problems: a step or each of its variants has a subject"
        return subject


class SendWindow(_Camel, frozen=True, kw_only=True):
    """When steps may be sent: between ``start`` and ``end`` on ``days``, in ``timezone``.

    A step that falls due outside the window waits for the window's next opening. ``timezone: lead``
    uses the lead's own time zone, ``fallbackTimezone`` when the lead has none.
    """

    start: ClockTime = "00:00"
    end: ClockTime = "24:00"
    timezone: TimeZoneName = "lead"
    fallback_timezone: TimeZoneName = "UTC"
    days: Annotated[list[Weekday], msgspec.Meta(min_length=1, max_length=7)] = msgspec.field(
        default_factory=lambda: list(WEEKDAYS)
    )


class FromAddress(_Camel, frozen=True, kw_only=True):
    """The sender of this Sequence's emails, instead of the platform's ``FROM_EMAIL``/``FROM_NAME``.

    Neither part can carry a line break or a second address into the From header.
    """

    email: Annotated[str, msgspec.Meta(min_length=3, max_length=254, pattern=r"^[^\s@<>,;:\"]+@[^\s@<>,;:\"]+\Z")]
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=100, pattern=r"^[^\r\n]*\Z")] | None = None


class SequenceSpec(_Camel, frozen=True, kw_only=True):
    """What a Sequence asks for."""

    trigger: Trigger
    steps: Annotated[list[Step], msgspec.Meta(min_length=1, max_length=100)]
    send_window: SendWindow | None = None
    # Marketing email goes only to leads who consented, unless a Sequence says otherwise
    # (transactional flows such as a webinar reminder).
    require_consent: bool = True
    # Enroll only leads that confirmed their address by email (double opt-in), whatever DOUBLE_OPT_IN says.
    double_opt_in: bool = False
    paused: bool = False
    from_: FromAddress | None = msgspec.field(default=None, name="from")
    # Latest: in-flight enrollments move to a new revision at the step of the same name.
    # Pinned: in-flight enrollments finish the revision they started.
    revision_policy: RevisionPolicy = "Latest"
    # What subscribers see on the preference page; the Sequence's name when absent.
    display_name: DisplayName | None = None
    unsubscribe_scope: UnsubscribeScope = "Global"
    # The goal: once true (checked before each step and whenever an event arrives for the lead), the
    # enrollment ends with reason ``goal``.
    exit_when: Expression | None = None


class ObjectMeta(msgspec.Struct, frozen=True, kw_only=True):
    """The part of Kubernetes object metadata a Sequence needs (other fields are ignored)."""

    name: Slug
    namespace: Slug = "default"
    # Set by the API server and bumped on every spec change; None for a Sequence read from a file.
    generation: int | None = None
    # Set by the API server, different for a Sequence deleted and created again under the same name.
    uid: str | None = None


class SequenceResource(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """A whole ``Sequence`` document (``status`` is ignored: it is written, never read)."""

    api_version: Literal["healingwork.io/v1alpha1"]
    kind: Literal["Sequence"]
    metadata: ObjectMeta
    spec: SequenceSpec


class Condition(_Camel, frozen=True, kw_only=True):
    """A standard Kubernetes status condition."""

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str
    last_transition_time: str
    observed_generation: int | None = None


class SequenceStatus(_Camel, frozen=True, kw_only=True):
    """What the operator writes to ``.status``."""

    observed_generation: int | None = None
    revision: int | None = None
    steps: int | None = None
    conditions: list[Condition] = []
    active_enrollments: int = 0
    completed_enrollments: int = 0
    cancelled_enrollments: int = 0
