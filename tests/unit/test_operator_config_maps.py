"""Which ConfigMaps the operator watches (a server-side label selector, so clusterWide does not mean every
ConfigMap of the cluster) and which Sequences an edit of one re-reconciles."""

from __future__ import annotations

import kopf

from operators.sequence.config_maps import SEQUENCES, referenced_config_maps
from operators.sequence.handlers import configure_kopf


def test_the_config_map_watch_selects_the_templates_label_on_the_server() -> None:
    settings = kopf.OperatorSettings()
    configure_kopf(settings)
    config_maps = kopf.Resource("", "v1", "configmaps", namespaced=True)

    assert list(settings.watching.label_selectors.collect(config_maps)) == ["healingwork.io/templates=true"]
    assert list(settings.watching.label_selectors.collect(SEQUENCES)) == []


def test_the_referenced_config_maps_are_those_named_by_template_refs() -> None:
    spec = {
        "steps": [
            {"name": "a", "templateRef": {"configMap": "one", "htmlKey": "a.html"}},
            {"name": "b", "text": "inline"},
            {"name": "c", "templateRef": {"configMap": "two", "textKey": "c.txt"}},
            {"name": "d", "templateRef": {"configMap": "one", "textKey": "d.txt"}},
        ]
    }

    assert referenced_config_maps(spec) == {"one", "two"}
    assert referenced_config_maps({}) == set()
