"""Reads of the API server the kopf handlers do not get for free: whether the Sequence resource is
served, and every Sequence that exists (for the sweep). They use kopf's own API client, so they run
with the operator's credentials (the login handler's), timeouts and retries; they must be called from
inside the running operator (a task started by a startup handler), once kopf has logged in.

kopf's client lives in ``kopf._cogs``, not its public API: the version is pinned in uv.lock, and
tests/kubernetes/test_operator_failures.py exercises both calls against a real API server
(test_operator_crd_missing.py without the CRD).
"""

from __future__ import annotations

import logging

import kopf
from kopf._cogs.clients import api, errors, fetching
from kopf._cogs.structs.references import NamespaceName

log = logging.getLogger(__name__)


class ResourceNotServed(Exception):
    """The API server does not serve the resource (its CRD is not installed or not Established)."""


async def resource_served(settings: kopf.OperatorSettings, group: str, version: str, plural: str) -> bool:
    """Whether the API server's discovery lists ``plural`` in ``group/version`` (the CRD is installed
    and Established). Raises on any other failure to ask."""
    try:
        found = await api.get(url=f"/apis/{group}/{version}", settings=settings, logger=log)
    except errors.APINotFoundError:
        return False
    return any(entry.get("name") == plural for entry in (found or {}).get("resources") or [])


async def existing_objects(
    settings: kopf.OperatorSettings, resource: kopf.Resource, namespaces: list[str] | None
) -> set[tuple[str, str]]:
    """The (namespace, name) of every object of ``resource`` in ``namespaces`` (None: cluster-wide),
    listed in chunks. Raises when any page cannot be read: a partial list must never be taken for
    the whole; :class:`ResourceNotServed` when the API server does not serve ``resource``."""
    found: set[tuple[str, str]] = set()
    scopes = [NamespaceName(n) for n in namespaces] if namespaces is not None else [None]
    try:
        for namespace in scopes:
            async for chunk, _ in fetching.fetch_objs(
                settings=settings, resource=resource, namespace=namespace, logger=log
            ):
                for item in chunk:
                    metadata = item.get("metadata") or {}
                    found.add((str(metadata.get("namespace") or "default"), str(metadata.get("name"))))
    except errors.APINotFoundError as error:
        raise ResourceNotServed(resource.plural) from error
    return found
