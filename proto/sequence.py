"""The ``Sequence`` custom resource (``healingwork.io/v1alpha1``) as Structs.

The same shape is read from YAML files (``healingwork sequences apply``) and, later, from the
Kubernetes API by the operator. Field names are camelCase on the wire, snake_case in Python.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

API_VERSION = "healingwork.io/v1alpha1"
KIND = "Sequence"

Slug = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9]([a-z0-9._-]{0,62}[a-z0-9])?\Z")]
# Durations like "0s", "90m", "48h", "2d" or combinations "1h30m"; parsed by services.common.durations.
Duration = Annotated[str, msgspec.Meta(pattern=r"^([0-9]+(d|h|m|s))+\Z", max_length=32)]


class _Camel(msgspec.Struct, frozen=True, kw_only=True, rename="camel", forbid_unknown_fields=True):
    pass


class Trigger(_Camel, frozen=True, kw_only=True):
    """Which leads enroll: any listed source or any listed tag, or every lead when ``all``."""

    sources: list[Slug] = []
    tags: list[Annotated[str, msgspec.Meta(min_length=1, max_length=64)]] = []
    all: bool = False


class Step(_Camel, frozen=True, kw_only=True):
    """One email of the sequence, sent ``delay`` after the previous step (or after enrollment)."""

    name: Slug
    delay: Duration = "0s"
    subject: Annotated[str, msgspec.Meta(min_length=1, max_length=998)]
    html: str | None = None
    text: str | None = None


class Sender(_Camel, frozen=True, kw_only=True):
    """The From of a Sequence's emails, overriding FROM_EMAIL/FROM_NAME."""

    email: Annotated[str, msgspec.Meta(min_length=3, max_length=254, pattern=r"^[^\s@<>,;:\"]+@[^\s@<>,;:\"]+\Z")]
    name: Annotated[str, msgspec.Meta(max_length=100, pattern=r"^[^\r\n]*\Z")] | None = None


class SequenceSpec(_Camel, frozen=True, kw_only=True):
    """What a Sequence asks for."""

    trigger: Trigger
    steps: Annotated[list[Step], msgspec.Meta(min_length=1, max_length=100)]
    # Marketing email goes only to leads who consented, unless a Sequence says otherwise
    # (transactional flows such as a webinar reminder).
    require_consent: bool = True
    paused: bool = False
    # ``from: {email, name}``: the sender of this Sequence's emails (default: FROM_EMAIL, FROM_NAME).
    from_: Sender | None = msgspec.field(default=None, name="from")


class ObjectMeta(msgspec.Struct, frozen=True, kw_only=True):
    """The part of Kubernetes object metadata a Sequence needs."""

    name: Slug
    namespace: Slug = "default"
    generation: int = 1


class SequenceResource(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """A whole ``Sequence`` document."""

    api_version: Literal["healingwork.io/v1alpha1"]
    kind: Literal["Sequence"]
    metadata: ObjectMeta
    spec: SequenceSpec
