"""The ConfigMaps that hold Sequence templates: which ones the operator sees, and what an edit does.

The operator reads only ConfigMaps labelled ``healingwork.io/templates: "true"``. The label is a
server-side selector of kopf's watch, so even with ``clusterWide: true`` the API server sends (and the
operator keeps in memory) only those, not every ConfigMap of the cluster. A ``templateRef`` to an
unlabelled ConfigMap is reported as not found, naming the label.

An edit of a labelled ConfigMap re-reconciles, at once, every Sequence whose ``templateRef`` names it
(found through an index of Sequences by referenced ConfigMap): a new revision within seconds, or
``Valid=False`` with a Warning Event when the edited template is broken. The refresh timer stays as the
safety net (an edit made while the operator was down, or one whose reconcile hit a database outage).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import kopf

# kopf's own patch function (the one it applies handler patches with): a ConfigMap handler has no
# `patch` for another object, and the Sequence's status must be written as the Sequence handlers do.
from kopf._cogs.clients.patching import patch_obj

from proto.sequence import TEMPLATES_LABEL, TEMPLATES_LABEL_VALUE

TEMPLATES_SELECTOR = f"{TEMPLATES_LABEL}={TEMPLATES_LABEL_VALUE}"

SEQUENCES = kopf.Resource(
    "healingwork.io", "v1alpha1", "sequences", kind="Sequence", namespaced=True, subresources=frozenset({"status"})
)

# What the handlers module provides: reconcile one Sequence body (body, patch, memo, ConfigMap index,
# retry; a TemporaryError while the database is down), and write a result into a patch plus post its Event.
Reconcile = Callable[..., Awaitable[Any]]
Publish = Callable[[Any, kopf.Body, kopf.Patch], None]

log = logging.getLogger(__name__)


def watch_only_labelled_config_maps(settings: kopf.OperatorSettings) -> None:
    """Make the API server filter kopf's ConfigMap watch by the templates label."""
    settings.watching.label_selectors["", "v1", "configmaps"] = TEMPLATES_SELECTOR


def referenced_config_maps(spec: Mapping[str, Any]) -> set[str]:
    """The names of the ConfigMaps a Sequence spec's steps reference."""
    names = set()
    for step in spec.get("steps") or []:
        ref = step.get("templateRef") if isinstance(step, Mapping) else None
        if isinstance(ref, Mapping) and isinstance(ref.get("configMap"), str):
            names.add(ref["configMap"])
    return names


def register_config_map_handlers(registry: kopf.OperatorRegistry, reconcile: Reconcile, publish: Publish) -> None:
    """Register the index of Sequences by referenced ConfigMap and the ConfigMap change handler."""

    @kopf.on.startup(registry=registry)
    def remember_settings(*, settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
        # Resource handlers get no `settings`; the patch of another object needs them.
        memo["kopf_settings"] = settings

    @kopf.index("healingwork.io", "v1alpha1", "sequences", registry=registry, id="sequences_by_config_map")
    def sequences_by_config_map(
        *, namespace: str | None, body: kopf.Body, spec: kopf.Spec, **_: Any
    ) -> dict[tuple[str, str], dict[str, Any]]:
        # The Sequence as last seen, so an edit of its ConfigMap can reconcile it without another read.
        snapshot = {key: body.get(key) for key in ("apiVersion", "kind", "metadata", "spec", "status")}
        return {(namespace or "default", name): snapshot for name in referenced_config_maps(spec)}

    @kopf.on.event("", "v1", "configmaps", labels={TEMPLATES_LABEL: TEMPLATES_LABEL_VALUE}, registry=registry)
    async def config_map_changed(
        *,
        type: str,
        namespace: str | None,
        name: str,
        memo: Any,
        logger: kopf.Logger,
        **kwargs: Any,
    ) -> None:
        settings: kopf.OperatorSettings = memo["kopf_settings"]
        # The initial listing (type None) is covered by the Sequences' own resume handlers.
        if type not in ("ADDED", "MODIFIED", "DELETED"):
            return
        index: kopf.Index[Any, Any] = kwargs["sequences_by_config_map"]
        for snapshot in list(index.get((namespace or "default", name), [])):
            body = kopf.Body(snapshot)
            if body.metadata.get("deletionTimestamp"):
                continue
            patch = kopf.Patch()
            try:
                # report_outage=False: this snapshot may be older than what on.update is reporting about.
                result = await reconcile(body, patch, memo, kwargs["config_maps"], 0, report_outage=False)
            except kopf.TemporaryError as error:
                # Not retried here: the refresh timer reconciles the Sequence once the database is back.
                logger.warning(f"ConfigMap {namespace}/{name} changed; {body.metadata.name} not reconciled: {error}")
                continue
            publish(result, body, patch)
            await patch_obj(
                settings=settings,
                resource=SEQUENCES,
                namespace=body.metadata.namespace,
                name=str(body.metadata.name),
                patch=patch,
                logger=logger,
            )
