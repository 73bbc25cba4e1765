"""A Kubernetes API for operator tests: kmock's emulator, taught the two things of an API server the
operator's correctness depends on and the emulator leaves out.

* ``metadata.resourceVersion`` changes on every write. kopf guards its patches with it and uses it to
  recognise its own writes coming back on the watch; with a constant version it would handle stale
  bodies again and post every Event several times.
* A JSON patch whose ``test`` of the resourceVersion fails is refused with 422, as the API server does
  (kopf then retries on its next cycle instead of repeating a request that cannot succeed).
* ``metadata.generation`` starts at 1 and grows on every change of ``spec`` (never of ``status``).
* ``metadata.generateName`` gives a new object a unique name (kopf names its Events this way).
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncIterator
from typing import Any

import attrs
import kmock
from kmock._internal import apps, enums, rendering  # the emulator's request hook is internal

VERBS = {"list", "watch", "get", "create", "update", "patch", "delete"}
SEQUENCES = "healingwork.io/v1alpha1/sequences"

_versions = itertools.count(1)


@attrs.frozen
class PatchTestFailed(kmock.KubernetesError):
    status: int = 422
    reason: str = "Invalid"
    message: str = "the resourceVersion test of the patch failed: the object changed meanwhile"


class ApiServerEmulator(kmock.KubernetesEmulator):
    async def _handle(self, request: rendering.Request) -> Any:
        if request.resource is not None and request.action in (enums.action.CREATE, enums.action.UPDATE):
            version = str(next(_versions))
            data = request.data
            if isinstance(data, dict):
                metadata = data.setdefault("metadata", {})
                metadata["resourceVersion"] = version
                if request.action == enums.action.CREATE:
                    metadata.setdefault("generation", 1)
                    if "name" not in metadata and "generateName" in metadata:
                        metadata["name"] = f"{metadata['generateName']}{version}"
                elif "spec" in data and request.subresource is None:
                    current = self.objects[request.resource, request.namespace, request.name]
                    metadata["generation"] = int(current["metadata"].get("generation", 1)) + 1
            elif isinstance(data, list):
                current = self.objects[request.resource, request.namespace, request.name]
                expected = current["metadata"].get("resourceVersion")
                for op in data:
                    is_version_test = op.get("op") == "test" and op.get("path") == "/metadata/resourceVersion"
                    if is_version_test and op.get("value") != expected:
                        raise PatchTestFailed()
                data.append({"op": "replace", "path": "/metadata/resourceVersion", "value": version})
        return await super()._handle(request)


@contextlib.asynccontextmanager
async def kubernetes_api() -> AsyncIterator[ApiServerEmulator]:
    """A running emulator that serves the resources the Sequence operator discovers and uses."""
    async with ApiServerEmulator() as server, apps.Server(server):
        server.resources[SEQUENCES] = kmock.ResourceInfo(
            kind="Sequence", namespaced=True, verbs=VERBS, shortnames={"seq"}, subresources={"status"}
        )
        server.resources["v1/configmaps"] = kmock.ResourceInfo(kind="ConfigMap", namespaced=True, verbs=VERBS)
        server.resources["v1/events"] = kmock.ResourceInfo(kind="Event", namespaced=True, verbs=VERBS)
        # Every cluster's discovery lists these; kopf waits to see them even with scanning disabled.
        server.resources["v1/namespaces"] = kmock.ResourceInfo(kind="Namespace", namespaced=False, verbs=VERBS)
        server.resources["apiextensions.k8s.io/v1/customresourcedefinitions"] = kmock.ResourceInfo(
            kind="CustomResourceDefinition", namespaced=False, verbs=VERBS
        )
        yield server
