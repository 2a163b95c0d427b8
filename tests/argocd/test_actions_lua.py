"""The Argo CD resource actions (refresh, suspend, resume), their discovery, and the
generated argocd-cm patch that carries them and the health check."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from overshoot_operator.resource import REFRESH_ANNOTATION

pytestmark = pytest.mark.unit

ARGOCD = Path(__file__).parents[2] / "deploy" / "argocd"
RESOURCE = "overshoot.ai_OvershootStream"


def live(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "overshoot.ai/v1alpha1",
        "kind": "OvershootStream",
        "metadata": {"name": "lobby", "namespace": "cameras", "generation": 2},
        "spec": {"source": {"testPattern": {}}, **spec},
        "status": {"observedGeneration": 2, "phase": "Publishing"},
    }


def test_refresh_sets_a_new_annotation_value(argocd):
    before = int(time.time())
    out = argocd.action("refresh", live())
    value = out["metadata"]["annotations"][REFRESH_ANNOTATION]
    assert isinstance(value, str) and before <= int(value) <= int(time.time())
    # Everything else is returned as it came.
    assert out["spec"] == live()["spec"] and out["status"] == live()["status"]


def test_refresh_keeps_other_annotations_and_always_changes_the_value(argocd):
    obj = live()
    obj["metadata"]["annotations"] = {"team": "lobby", REFRESH_ANNOTATION: "1"}
    first = argocd.action("refresh", obj)
    assert first["metadata"]["annotations"]["team"] == "lobby"
    value = first["metadata"]["annotations"][REFRESH_ANNOTATION]
    assert value != "1"
    # Clicked again within the same second (or twice more): still a new value each time.
    for previous in (value, f"{value}.1"):
        obj["metadata"]["annotations"][REFRESH_ANNOTATION] = previous
        again = argocd.action("refresh", obj)["metadata"]["annotations"][REFRESH_ANNOTATION]
        assert again != previous


@pytest.mark.parametrize(("action", "suspend"), [("suspend", True), ("resume", False)])
@pytest.mark.parametrize("before", [None, True, False])
def test_suspend_and_resume_set_spec_suspend(argocd, action, suspend, before):
    obj = live() if before is None else live(suspend=before)
    out = argocd.action(action, obj)
    assert out["spec"]["suspend"] is suspend
    assert out["spec"]["source"] == {"testPattern": {}}
    assert out["metadata"] == obj["metadata"]


def test_discovery_offers_suspend_or_resume_by_spec(argocd):
    running = argocd.discovery(live())
    assert running == {
        "refresh": {"disabled": False},
        "suspend": {"disabled": False},
        "resume": {"disabled": True},
    }
    suspended = argocd.discovery(live(suspend=True))
    assert suspended["suspend"] == {"disabled": True}
    assert suspended["resume"] == {"disabled": False}
    assert suspended["refresh"] == {"disabled": False}
    # Every action discovered has a script.
    for name in running:
        assert (ARGOCD / "actions" / name / "action.lua").is_file()


def test_argocd_cm_patch_is_generated_from_the_lua():
    result = subprocess.run(
        [sys.executable, str(ARGOCD / "render.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    patch = yaml.safe_load((ARGOCD / "argocd-cm-patch.yaml").read_text())
    assert patch["kind"] == "ConfigMap" and patch["metadata"]["name"] == "argocd-cm"
    data = patch["data"]
    assert set(data) == {
        f"resource.customizations.health.{RESOURCE}",
        f"resource.customizations.actions.{RESOURCE}",
    }
    assert data[f"resource.customizations.health.{RESOURCE}"] == (ARGOCD / "health.lua").read_text()
    actions = yaml.safe_load(data[f"resource.customizations.actions.{RESOURCE}"])
    assert actions["discovery.lua"] == (ARGOCD / "actions" / "discovery.lua").read_text()
    scripts = {d["name"]: d["action.lua"] for d in actions["definitions"]}
    on_disk = {p.parent.name: p.read_text() for p in (ARGOCD / "actions").glob("*/action.lua")}
    assert scripts == on_disk
