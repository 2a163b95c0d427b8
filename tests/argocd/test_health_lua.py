"""deploy/argocd/health.lua in Argo CD's own engine (`argocd admin settings resource-overrides
health`, see conftest.py): on hand-written status samples (unit), and on the objects the real
operator writes against the real control plane (integration), including a status left stale
by a stopped operator, actions applied the way Argo CD applies them, and a deletion."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from argoengine import Action, ArgoCD, Health

from fixtures.cluster import wait_for
from fixtures.operator import put_api_key
from fixtures.streams import (
    condition,
    create_stream,
    delete_stream,
    get_stream,
    patch_stream,
    publish_secret,
    publisher_pod,
    status,
    stream_gone,
    stream_manifest,
)
from overshoot_operator import decisions
from overshoot_operator import overshoot as ov
from overshoot_operator.kube import KubeError, SecretProblem
from overshoot_operator.resource import FINALIZER, REFRESH_ANNOTATION

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
        pytest.param(
            stream(), "Progressing", "Waiting for the operator to report status", id="no-status"
        ),
        pytest.param(
            stream(status_={}),
            "Progressing",
            "Waiting for the operator to report status",
            id="empty",
        ),
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
            "Waiting for the operator to observe generation 4",
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
            "Waiting for the operator to observe generation 4",
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
            "WaitingForFrames message",
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
            "OvershootUnavailable message",
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
            "FramesStopped message",
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
            "RemoteStreamEnded message",
            id="failed",
        ),
        # delivery ServerPull: Overshoot pulls the camera; the same rules, its own reasons.
        pytest.param(
            stream(
                spec={"delivery": "ServerPull"},
                status_={
                    "observedGeneration": 3,
                    "phase": "Publishing",
                    "delivery": "ServerPull",
                    "stream": {"recentFps": 15, "lastPullAt": "2026-01-01T00:00:00Z"},
                    "conditions": [ready("True", "Publishing", message="Frames arrive")],
                },
            ),
            "Healthy",
            "Frames arrive (15 fps)",
            id="server-pull-publishing",
        ),
        pytest.param(
            stream(
                spec={"delivery": "ServerPull"},
                status_={
                    "observedGeneration": 3,
                    "phase": "Degraded",
                    "delivery": "ServerPull",
                    "conditions": [ready("False", "SourceStale")],
                },
            ),
            "Degraded",
            "SourceStale message",
            id="server-pull-source-stale",
        ),
        pytest.param(
            stream(
                spec={"delivery": "ServerPull"},
                status_={
                    "observedGeneration": 3,
                    "phase": "Pending",
                    "delivery": "ServerPull",
                    "conditions": [ready("False", "SourceUnreachable")],
                },
            ),
            "Degraded",
            "SourceUnreachable message",
            id="server-pull-unreachable",
        ),
        pytest.param(
            stream(
                status_={
                    "observedGeneration": 3,
                    "phase": "Pending",
                    "delivery": "Publisher",
                    "conditions": [ready("False", "WaitingForSource")],
                }
            ),
            "Degraded",
            "WaitingForSource message",
            id="released-for-a-source-that-never-delivered",
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
            "Suspending: waiting for the operator to observe generation 4",
            id="suspend-not-yet-observed",
        ),
        pytest.param(
            stream(status_={"observedGeneration": 3, "phase": "Rebalancing"}),
            "Progressing",
            "Phase Rebalancing",
            id="unknown-phase",
        ),
    ],
)
def test_health_of_samples(argocd, sample, expected, message):
    assert argocd.health(sample) == Health(expected, message)


@pytest.mark.unit
@pytest.mark.parametrize(
    "status_",
    [
        pytest.param(
            {
                "observedGeneration": 3,
                "phase": "Publishing",
                "conditions": [ready("True", "Publishing")],
            },
            id="publishing",
        ),
        pytest.param(
            {"observedGeneration": 3, "phase": "Failed", "conditions": [ready("False", "X")]},
            id="failed",
        ),
        pytest.param(None, id="no-status"),
    ],
)
def test_health_of_a_resource_being_deleted_is_argo_cds_own(argocd, status_):
    """Argo CD decides deletion itself: any object with a deletionTimestamp (and no Argo CD
    hook finalizer) is Progressing, "Pending deletion", before a health script runs."""
    sample = stream(
        status_=status_, deletionTimestamp="2026-01-01T00:00:00Z", finalizers=[FINALIZER]
    )
    assert argocd.health(sample) == Health("Progressing", "Pending deletion")


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

    def health(name: str) -> Health:
        return argocd.health(get_stream(kube_api, namespace, name))

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
        assert health(name) == Health("Progressing", "Waiting for the operator to report status")
    operator = run_operator(emulator)

    provisioning = phase_is("live", "Provisioning")
    assert argocd.health(provisioning) == Health("Progressing", _ready_message(provisioning))
    stream_id = provisioning["status"]["streamId"]
    emulator.admin.frames(stream_id, count=50, fps=10)
    publishing = phase_is("live", "Publishing")
    fps = publishing["status"].get("stream", {}).get("recentFps")
    assert argocd.health(publishing) == Health(
        "Healthy",
        _ready_message(publishing) + (f" ({_lua_number(fps)} fps)" if fps is not None else ""),
    )

    strict_id = wait_for(
        lambda: status(kube_api, namespace, "strict").get("streamId"), what="strict streamId"
    )
    wait_for(lambda: publisher_pod(kube_api, namespace, "strict"), what="strict Pod")
    emulator.admin.reap(strict_id)
    failed = phase_is("strict", "Failed")
    assert argocd.health(failed) == Health("Degraded", _ready_message(failed))
    assert "onRemoteEnd" in argocd.health(failed).message

    # The refresh action, applied as Argo CD applies it: the operator rotates the token.
    phase_is("nap", "Provisioning")
    secret = wait_for(lambda: publish_secret(kube_api, namespace, "nap"), what="nap Secret")
    # name -> disabled, as Argo CD lists them.
    assert argocd.list_actions(get_stream(kube_api, namespace, "nap")) == {
        "refresh": False,
        "resume": True,
        "suspend": False,
    }
    refresh = _apply_action(argocd, kube_api, namespace, "nap", "refresh")
    value = refresh.obj["metadata"]["annotations"][REFRESH_ANNOTATION]
    # Everything else (managedFields with their empty maps, status) came back as it was.
    assert refresh.patch == {"metadata": {"annotations": {REFRESH_ANNOTATION: value}}}
    wait_for(
        lambda: (publish_secret(kube_api, namespace, "nap") or {}).get("token") != secret["token"],
        what="nap token rotated after the refresh action",
    )

    # Suspended by the suspend action, applied as Argo CD applies it.
    suspend = _apply_action(argocd, kube_api, namespace, "nap", "suspend")
    assert suspend.patch == {"spec": {"suspend": True}}
    suspended = phase_is("nap", "Suspended")
    assert argocd.health(suspended) == Health("Suspended", _ready_message(suspended))
    assert argocd.list_actions(suspended) == {"refresh": False, "resume": False, "suspend": True}

    nokey = wait_for(
        lambda: (
            condition(kube_api, namespace, "nokey", "Ready").get("reason") == "SecretNotFound"
            and get_stream(kube_api, namespace, "nokey")
        ),
        what="nokey Ready False with SecretNotFound",
    )
    assert nokey["status"]["phase"] == "Pending"
    assert health("nokey") == Health("Degraded", _ready_message(nokey))
    assert "no-such-secret" in health("nokey").message

    # Frames stopped: Degraded, from the operator's own FramesStopped.
    stopped = phase_is("live", "Degraded")
    assert argocd.health(stopped) == Health("Degraded", _ready_message(stopped))

    # The operator stops; spec changes; its status now describes an older generation.
    operator.stop()
    patch_stream(kube_api, namespace, "live", {"spec": {"video": {"maxFps": 5}}})
    resume = _apply_action(argocd, kube_api, namespace, "nap", "resume")
    assert resume.patch == {"spec": {"suspend": False}}
    for name in ("live", "nap"):
        obj = get_stream(kube_api, namespace, name)
        assert obj["status"]["observedGeneration"] < obj["metadata"]["generation"]
        assert argocd.health(obj) == Health(
            "Progressing",
            f"Waiting for the operator to observe generation {obj['metadata']['generation']}",
        )
    # The Degraded and Suspended verdicts above did not depend on a stale status.
    assert health("strict").status == "Degraded"
    assert health("nokey").status == "Degraded"

    # Deleted while no operator runs: the finalizer holds the resource, and Argo CD shows
    # its own verdict for it, whatever the status says.
    delete_stream(kube_api, namespace, "live")
    deleting = get_stream(kube_api, namespace, "live")
    assert deleting["metadata"].get("deletionTimestamp")
    assert FINALIZER in deleting["metadata"]["finalizers"]
    assert argocd.health(deleting) == Health("Progressing", "Pending deletion")
    # An operator again releases the stream and lets the resource go.
    run_operator(emulator)
    wait_for(lambda: stream_gone(kube_api, namespace, "live"), timeout=40, what="live deleted")


def _apply_action(argocd: ArgoCD, kube_api: Any, namespace: str, name: str, action: str) -> Action:
    """Run `action` on the live object in Argo CD's engine and send its merge patch, as
    Argo CD's API server does; the action's result (`.obj`, `.patch`, `.diff`)."""
    result = argocd.run_action(get_stream(kube_api, namespace, name), action)
    assert result.patch, f"{action} changed nothing on {name}"
    patch_stream(kube_api, namespace, name, result.patch)
    return result


def _ready_message(obj: dict[str, Any]) -> str:
    ready_ = next(c for c in obj["status"]["conditions"] if c["type"] == "Ready")
    return str(ready_["message"])


def _lua_number(value: float) -> str:
    """How gopher-lua prints a number in a concatenation: a whole number without a fraction,
    anything else as Go's shortest representation (Python's repr, in the range of fps)."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))
