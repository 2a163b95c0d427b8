"""The Argo CD resource actions (refresh, suspend, resume) and their discovery, in Argo CD's own
engine (`argocd admin settings resource-overrides run-action | list-actions`, see
argoengine.py); the sandbox those scripts get; and the generated argocd-cm patch that
carries them and the health check."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from argoengine import ArgoCDError

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
    refresh = argocd.run_action(live(), "refresh")
    value = refresh.obj["metadata"]["annotations"][REFRESH_ANNOTATION]
    assert isinstance(value, str) and before <= int(value) <= int(time.time())
    # What Argo CD sends is the annotation alone (an empty testPattern stays an object).
    assert refresh.patch == {"metadata": {"annotations": {REFRESH_ANNOTATION: value}}}
    # What the CLI shows.
    assert f'>     {REFRESH_ANNOTATION}: "{value}"' in refresh.diff.splitlines()


def test_refresh_keeps_other_annotations_and_always_changes_the_value(argocd):
    obj = live()
    obj["metadata"]["annotations"] = {"team": "lobby", REFRESH_ANNOTATION: "1"}
    first = argocd.run_action(obj, "refresh")
    value = first.obj["metadata"]["annotations"][REFRESH_ANNOTATION]
    assert value != "1" and first.obj["metadata"]["annotations"]["team"] == "lobby"
    assert first.patch == {"metadata": {"annotations": {REFRESH_ANNOTATION: value}}}
    # Clicked again within the same second (or twice more): still a new value each time.
    for previous in (str(int(time.time())), f"{int(time.time())}.1"):
        obj["metadata"]["annotations"][REFRESH_ANNOTATION] = previous
        again = argocd.run_action(obj, "refresh").obj["metadata"]["annotations"]
        assert again[REFRESH_ANNOTATION] != previous


@pytest.mark.parametrize(("action", "suspend"), [("suspend", True), ("resume", False)])
@pytest.mark.parametrize("before", [None, True, False])
def test_suspend_and_resume_set_spec_suspend(argocd, action, suspend, before):
    obj = live() if before is None else live(suspend=before)
    result = argocd.run_action(obj, action)
    assert result.obj["spec"] == {"source": {"testPattern": {}}, "suspend": suspend}
    assert result.obj["metadata"] == obj["metadata"]
    if before is suspend:
        # Already so: Argo CD sends an empty patch, and the CLI shows no difference.
        assert result.patch == {} and result.diff == ""
    else:
        assert result.patch == {"spec": {"suspend": suspend}}
        assert f">   suspend: {str(suspend).lower()}" in result.diff.splitlines()


def test_discovery_offers_suspend_or_resume_by_spec(argocd):
    """Argo CD lists every action the discovery script returns and greys out the disabled
    ones (its API does not refuse them: suspend and resume are idempotent)."""
    running = {"refresh": False, "resume": True, "suspend": False}
    assert argocd.list_actions(live()) == running
    assert argocd.list_actions(live(suspend=False)) == running
    assert argocd.list_actions(live(suspend=True)) == {
        "refresh": False,
        "resume": False,
        "suspend": True,
    }
    # Every action discovered has a script.
    for name in running:
        assert (ARGOCD / "actions" / name / "action.lua").is_file()


_PROBE = """\
local found = {}
found["global-os"] = type(os)
found["string"] = type(string)
found["math"] = type(math)
found["io"] = type(io)
found["debug"] = type(debug)
found["coroutine"] = type(coroutine)
found["table"] = type(table)
local safeOs = require("os")
found["require-os"] = type(safeOs)
found["require-os.time"] = type(safeOs.time)
found["require-os.date"] = type(safeOs.date)
found["require-os.getenv"] = type(safeOs.getenv)
found["require-os.execute"] = type(safeOs.execute)
obj.metadata.annotations = found
return obj
"""


def _argocd_cm(tmp_path: Path, actions: dict[str, str]) -> Path:
    """An argocd-cm with `actions` (name -> Lua) for OvershootStream, and nothing else."""
    definitions = [{"name": name, "action.lua": lua} for name, lua in actions.items()]
    cm = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "argocd-cm", "namespace": "argocd"},
        "data": {
            f"resource.customizations.actions.{RESOURCE}": yaml.safe_dump(
                {"discovery.lua": "return {}\n", "definitions": definitions}
            )
        },
    }
    path = tmp_path / "argocd-cm.yaml"
    path.write_text(yaml.safe_dump(cm))
    return path


def test_the_sandbox_the_scripts_run_in(argocd, tmp_path):
    """What Argo CD's gopher-lua gives an action (util/lua/lua.go): the base, package and
    table libraries, and a safe os with time and date only, as a module: there is no global
    `os`, no string, math, io, debug or coroutine library."""
    cm = _argocd_cm(
        tmp_path,
        {
            "probe": _PROBE,
            "global-os": "obj.metadata.annotations = {t = tostring(os.time())}\nreturn obj\n",
        },
    )
    found = argocd.run_action(live(), "probe", cm=cm).obj["metadata"]["annotations"]
    assert found == {
        "global-os": "nil",
        "string": "nil",
        "math": "nil",
        "io": "nil",
        "debug": "nil",
        "coroutine": "nil",
        "table": "table",
        "require-os": "table",
        "require-os.time": "function",
        "require-os.date": "function",
        "require-os.getenv": "nil",
        "require-os.execute": "nil",
    }
    # The bug deploy/argocd/actions/refresh once had, as Argo CD reports it.
    with pytest.raises(ArgoCDError) as failed:
        argocd.run_action(live(), "global-os", cm=cm)
    assert "attempt to index a non-table object(nil) with key 'time'" in failed.value.message


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
