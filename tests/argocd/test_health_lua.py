"""deploy/argocd/health.lua, run in a real Lua 5.1: on hand-written status samples (unit), and
on the objects the real operator writes against the real control plane (integration),
including a status left stale by a stopped operator."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from fixtures.cluster import wait_for
from fixtures.operator import put_api_key
from fixtures.streams import (
    condition,
    create_stream,
    get_stream,
    patch_stream,
    publisher_pod,
    status,
    stream_manifest,
)
from overshoot_operator import decisions
from overshoot_operator import overshoot as ov
from overshoot_operator.kube import KubeError, SecretProblem

ROOT = Path(__file__).parents[2]
HEALTH_LUA = ROOT / "deploy" / "argocd" / "health.lua"


def ready(status_: str, reason: str, generation: int = 3, message: str = "") -> dict[str, Any]:
    return {
        "type": "Ready",
        "status": status_,
        "reason": reason,
        "message": message or f"{reason} message",
        "observedGeneration": generation,
    }


def stream(
    *,
    generation: int = 3,
    spec: dict[str, Any] | None = None,
    status_: dict[str, Any] | None = None,
    **metadata: Any,
) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "overshoot.ai/v1alpha1",
        "kind": "OvershootStream",
        "metadata": {"name": "lobby", "namespace": "cameras", "generation": generation, **metadata},
        "spec": {"source": {"testPattern": {}}, **(spec or {})},
    }
    if status_ is not None:
        obj["status"] = status_
    return obj


# --- Hand-written samples -----------------------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize(
    ("sample", "expected", "message"),
    [
        pytest.param(stream(), "Progressing", "Waiting for the operator", id="no-status"),
        pytest.param(stream(status_={}), "Progressing", "Waiting for the operator", id="empty"),
        pytest.param(
            stream(
                status_={
                    "observedGeneration": 3,
                    "phase": "Publishing",
                    "stream": {"recentFps": 14.5},
                    "conditions": [ready("True", "Publishing", message="Frames arrive")],
                }
            ),
            "Healthy",
            "Frames arrive (14.5 fps)",
            id="publishing",
        ),
        pytest.param(
            stream(
                generation=4,
                status_={
                    "observedGeneration": 3,
                    "phase": "Publishing",
                    "conditions": [ready("True", "Publishing")],
                },
            ),
            "Progressing",
            "observe generation 4",
            id="stale-observedGeneration",
        ),
        pytest.param(
            stream(
                generation=4,
                status_={
                    "observedGeneration": 4,
                    "phase": "Publishing",
                    "conditions": [ready("True", "Publishing", generation=3)],
                },
            ),
            "Progressing",
            "observe generation 4",
            id="stale-condition",
        ),
        pytest.param(
            stream(
                status_={
                    "observedGeneration": 3,
                    "phase": "Pending",
                    "conditions": [ready("False", "Creating")],
                }
            ),
            "Progressing",
            "Creating message",
            id="pending",
        ),
        pytest.param(
            stream(
                status_={
                    "observedGeneration": 3,
                    "phase": "Provisioning",
                    "conditions": [ready("False", "WaitingForFrames")],
                }
            ),
            "Progressing",
            "WaitingForFrames",
            id="provisioning",
        ),
        pytest.param(
            stream(
                status_={
                    "observedGeneration": 3,
                    "phase": "Pending",
                    "conditions": [ready("False", "OvershootUnavailable")],
                }
            ),
            "Progressing",
            "OvershootUnavailable",
            id="transient-error",
        ),
        pytest.param(
            stream(
                status_={
                    "observedGeneration": 3,
                    "phase": "Pending",
                    "conditions": [ready("False", "ApiKeyRejected", message="put a valid key")],
                }
            ),
            "Degraded",
            "put a valid key",
            id="user-fixable-pending",
        ),
        pytest.param(
            stream(
                status_={
                    "observedGeneration": 3,
                    "phase": "Degraded",
                    "conditions": [ready("False", "FramesStopped")],
                }
            ),
            "Degraded",
            "FramesStopped",
            id="frames-stopped",
        ),
        pytest.param(
            stream(
                status_={
                    "observedGeneration": 3,
                    "phase": "Failed",
                    "conditions": [ready("False", "RemoteStreamEnded")],
                }
            ),
            "Degraded",
            "RemoteStreamEnded",
            id="failed",
        ),
        pytest.param(
            stream(
                spec={"suspend": True},
                status_={
                    "observedGeneration": 3,
                    "phase": "Suspended",
                    "conditions": [ready("False", "Suspended", message="Suspended by spec")],
                },
            ),
            "Suspended",
            "Suspended by spec",
            id="suspended",
        ),
        pytest.param(
            stream(
                generation=4,
                spec={"suspend": True},
                status_={
                    "observedGeneration": 3,
                    "phase": "Publishing",
                    "conditions": [ready("True", "Publishing")],
                },
            ),
            "Progressing",
            "Suspending",
            id="suspend-not-yet-observed",
        ),
        pytest.param(
            stream(
                deletionTimestamp="2026-01-01T00:00:00Z",
                status_={"observedGeneration": 3, "phase": "Deleting", "conditions": []},
            ),
            "Progressing",
            "Deleting",
            id="deleting",
        ),
        pytest.param(
            stream(status_={"observedGeneration": 3, "phase": "Rebalancing"}),
            "Progressing",
            "Rebalancing",
            id="unknown-phase",
        ),
    ],
)
def test_health_of_samples(argocd, sample, expected, message):
    health = argocd.health(sample)
    assert health["status"] == expected, health
    assert message in health["message"], health


def _lua_user_fixable() -> set[str]:
    block = re.search(r"local userFixable = \{(.*?)\n\}", HEALTH_LUA.read_text(), re.S)
    assert block, "health.lua has no userFixable table"
    return set(re.findall(r"^\s*(\w+) = true,", block.group(1), re.M))


@pytest.mark.unit
def test_user_fixable_reasons_match_the_operator():
    """health.lua's list is the operator's: every reason decisions.py marks user-fixable,
    every SecretProblem reason of apikeys.py, and the reasons that fail a resource for good."""
    endpoint = ov.Endpoint.CREATE
    samples: list[Exception] = [
        ov.Unauthorized("401", endpoint=endpoint, status_code=401),
        ov.PaymentRequired("402", endpoint=endpoint, status_code=402),
        ov.RateLimited("429", endpoint=endpoint, status_code=429, retry_after=3),
        ov.OvershootUnavailable("503", endpoint=endpoint, status_code=503),
        ov.InvalidRequest("422", endpoint=endpoint, status_code=422),
        KubeError("500 from the API server", status=500),
        RuntimeError("bug"),
    ]
    secrets_source = (ROOT / "operator" / "overshoot_operator" / "apikeys.py").read_text()
    secret_reasons = set(
        re.findall(
            r"SecretProblem\((?:(?!SecretProblem\().)*?reason=\"(\w+)\"", secrets_source, re.S
        )
    )
    assert secret_reasons >= {"SecretNotFound", "SecretKeyMissing"}
    samples += [SecretProblem("missing", reason=r) for r in secret_reasons]
    problems = [decisions.problem_from_error(e, owner="o", api_key_ref="r") for e in samples]
    fixable = {p.reason for p in problems if p.user_fixable}
    transient = {p.reason for p in problems if not p.user_fixable}

    package = ROOT / "operator" / "overshoot_operator"
    sources = "".join((package / f).read_text() for f in ("reconciler.py", "decisions.py"))
    # Problems the operator builds itself with user_fixable=True, and Failed reasons (a
    # remote end with onRemoteEnd Fail, an unusable spec).
    fixable |= set(re.findall(r"Problem\(\s*\"(\w+)\",[^)]*?,\s*True,", sources, re.S))
    failed = set(re.findall(r"failed = \(\"(\w+)\"", sources))
    failed |= set(
        re.findall(
            r"failed_reason, failed_message = \"(\w+)\"", (package / "status.py").read_text()
        )
    )
    assert "InvalidSpec" in fixable | failed and "RemoteStreamEnded" in failed

    assert _lua_user_fixable() == fixable | failed
    assert not _lua_user_fixable() & transient


# --- Samples the real operator writes -----------------------------------------------------


@pytest.mark.integration
def test_health_of_real_operator_status(argocd, kube_api, namespace, emulator_reset, run_operator):
    emulator = emulator_reset
    put_api_key(kube_api, namespace)

    def health(name: str) -> dict[str, str]:
        return dict(argocd.health(get_stream(kube_api, namespace, name)))

    def phase_is(name: str, phase: str) -> dict[str, Any]:
        return wait_for(
            lambda: (
                (obj := get_stream(kube_api, namespace, name)).get("status", {}).get("phase")
                == phase
                and obj
            ),
            timeout=40,
            what=f"{name} phase {phase}",
        )

    # live: Provisioning → Publishing → frames stop → a stale status.
    create_stream(kube_api, namespace, stream_manifest("live"))
    # onRemoteEnd Fail, reaped → Failed.
    create_stream(kube_api, namespace, stream_manifest("strict", onRemoteEnd="Fail"))
    # Suspended and resumed by the Argo CD actions themselves.
    create_stream(kube_api, namespace, stream_manifest("nap"))
    # A missing API key Secret: a user must fix it.
    create_stream(
        kube_api,
        namespace,
        stream_manifest("nokey", apiKeySecretRef={"name": "no-such-secret", "key": "apiKey"}),
    )
    # Before any operator runs: no status at all.
    for name in ("live", "strict", "nap", "nokey"):
        assert "status" not in get_stream(kube_api, namespace, name)
        assert health(name)["status"] == "Progressing"
    operator = run_operator(emulator)

    provisioning = phase_is("live", "Provisioning")
    assert argocd.health(provisioning)["status"] == "Progressing"
    stream_id = provisioning["status"]["streamId"]
    emulator.admin.frames(stream_id, count=50, fps=10)
    publishing = phase_is("live", "Publishing")
    assert argocd.health(publishing) == {
        "status": "Healthy",
        "message": _ready_message(publishing)
        + (
            f" ({_lua_number(publishing['status']['stream']['recentFps'])} fps)"
            if publishing["status"].get("stream", {}).get("recentFps") is not None
            else ""
        ),
    }

    strict_id = wait_for(
        lambda: status(kube_api, namespace, "strict").get("streamId"), what="strict streamId"
    )
    wait_for(lambda: publisher_pod(kube_api, namespace, "strict"), what="strict Pod")
    emulator.admin.reap(strict_id)
    failed = phase_is("strict", "Failed")
    assert argocd.health(failed) == {"status": "Degraded", "message": _ready_message(failed)}
    assert "onRemoteEnd" in argocd.health(failed)["message"]

    nap = get_stream(kube_api, namespace, "nap")
    wait_for(lambda: status(kube_api, namespace, "nap").get("streamId"), what="nap streamId")
    suspended_spec = argocd.action("suspend", nap)
    patch_stream(
        kube_api, namespace, "nap", {"spec": {"suspend": suspended_spec["spec"]["suspend"]}}
    )
    suspended = phase_is("nap", "Suspended")
    assert argocd.health(suspended)["status"] == "Suspended"

    nokey = wait_for(
        lambda: (
            condition(kube_api, namespace, "nokey", "Ready").get("reason") == "SecretNotFound"
            and get_stream(kube_api, namespace, "nokey")
        ),
        what="nokey Ready False with SecretNotFound",
    )
    assert nokey["status"]["phase"] == "Pending"
    assert health("nokey") == {"status": "Degraded", "message": _ready_message(nokey)}
    assert "no-such-secret" in health("nokey")["message"]

    # Frames stopped: Degraded, from the operator's own FramesStopped.
    stopped = phase_is("live", "Degraded")
    assert argocd.health(stopped) == {"status": "Degraded", "message": _ready_message(stopped)}

    # The operator stops; spec changes; its status now describes an older generation.
    operator.stop()
    patch_stream(kube_api, namespace, "live", {"spec": {"video": {"maxFps": 5}}})
    resumed_spec = argocd.action("resume", get_stream(kube_api, namespace, "nap"))
    patch_stream(kube_api, namespace, "nap", {"spec": {"suspend": resumed_spec["spec"]["suspend"]}})
    for name in ("live", "nap"):
        obj = get_stream(kube_api, namespace, name)
        assert obj["status"]["observedGeneration"] < obj["metadata"]["generation"]
        assert argocd.health(obj) == {
            "status": "Progressing",
            "message": f"Waiting for the operator to observe generation {obj['metadata']['generation']}",
        }
    # The Degraded and Suspended verdicts above did not depend on a stale status.
    assert health("strict")["status"] == "Degraded"
    assert health("nokey")["status"] == "Degraded"


def _ready_message(obj: dict[str, Any]) -> str:
    ready_ = next(c for c in obj["status"]["conditions"] if c["type"] == "Ready")
    return str(ready_["message"])


def _lua_number(value: float) -> str:
    """How Lua 5.1 prints a number in a concatenation (%.14g)."""
    return f"{value:.14g}"
