"""The OvershootStream lifecycle on a real control plane, with the operator as a real
process under its own RBAC and the emulator as Overshoot."""

from __future__ import annotations

import pytest
from kubernetes import client

from fixtures.cluster import wait_for
from fixtures.operator import API_KEY, put_api_key
from fixtures.streams import (
    condition,
    create_stream,
    delete_stream,
    get_stream,
    publish_secret,
    publisher_pod,
    status,
    stream_gone,
    stream_manifest,
)

pytestmark = pytest.mark.integration


def test_happy_path_to_publishing(kube_api, namespace, emulator_reset, run_operator):
    emulator = emulator_reset
    put_api_key(kube_api, namespace)
    operator = run_operator(emulator)
    create_stream(kube_api, namespace, stream_manifest("lobby"))

    stream_id = wait_for(
        lambda: status(kube_api, namespace, "lobby").get("streamId"),
        what="status.streamId",
    )
    obj = get_stream(kube_api, namespace, "lobby")
    assert obj["metadata"]["annotations"]["overshoot.ai/stream-id"] == stream_id
    assert "overshoot.ai/delete-stream" in obj["metadata"]["finalizers"]

    secret = wait_for(lambda: publish_secret(kube_api, namespace, "lobby"), what="publish Secret")
    assert secret["streamId"] == stream_id
    assert secret["token"]
    assert secret["url"].startswith("wss://")

    pod = wait_for(lambda: publisher_pod(kube_api, namespace, "lobby"), what="publisher Pod")
    assert pod.metadata.owner_references[0].name == "lobby"
    assert pod.metadata.owner_references[0].controller is True
    wait_for(
        lambda: publisher_pod(kube_api, namespace, "lobby").status.phase == "Running",
        what="publisher Pod Running on a kwok node",
    )

    # Before any frame: a live stream, but not Publishing (invariant 7).
    wait_for(
        lambda: status(kube_api, namespace, "lobby").get("phase") == "Provisioning",
        what="phase Provisioning",
    )
    assert condition(kube_api, namespace, "lobby", "StreamActive")["status"] == "True"
    assert condition(kube_api, namespace, "lobby", "Publishing")["status"] == "False"

    emulator.admin.frames(stream_id, count=50, fps=10)
    wait_for(
        lambda: status(kube_api, namespace, "lobby").get("phase") == "Publishing",
        timeout=30,
        what="phase Publishing after frames arrive",
    )
    ready = condition(kube_api, namespace, "lobby", "Ready")
    assert ready["status"] == "True"
    st = status(kube_api, namespace, "lobby")
    assert st["stream"]["lastFrameIndex"] >= 49
    assert st["observedGeneration"] == obj["metadata"]["generation"]
    # Exactly one remote stream was created for this key.
    assert emulator.admin.calls(API_KEY)["create"] == 1

    # Frames stop: Publishing goes False within the freshness window (10 s in tests).
    wait_for(
        lambda: condition(kube_api, namespace, "lobby", "Publishing").get("status") == "False",
        timeout=40,
        what="Publishing False after frames stop",
    )
    assert status(kube_api, namespace, "lobby")["phase"] == "Degraded"

    delete_stream(kube_api, namespace, "lobby")
    wait_for(lambda: stream_gone(kube_api, namespace, "lobby"), what="resource deleted")
    remote = emulator.admin.stream(stream_id)
    assert remote is None or remote["state"] == "ended"
    assert API_KEY not in operator.logs()


def test_keepalive_refresh_rotates_token(kube_api, namespace, emulator_reset, run_operator):
    emulator = emulator_reset
    put_api_key(kube_api, namespace)
    run_operator(emulator)
    create_stream(kube_api, namespace, stream_manifest("cam"))
    secret = wait_for(lambda: publish_secret(kube_api, namespace, "cam"), what="publish Secret")
    first_token = secret["token"]
    # Creation writes the Secret before it finishes; a refresh asked for while the creation
    # is still running is absorbed by it (kopf records the annotation with the creation).
    wait_for(
        lambda: status(kube_api, namespace, "cam").get("phase") == "Provisioning",
        what="creation finished",
    )
    # Ask for a refresh the way Argo CD's action does: a new annotation value.
    client.CustomObjectsApi(kube_api).patch_namespaced_custom_object(
        "overshoot.ai",
        "v1alpha1",
        namespace,
        "overshootstreams",
        "cam",
        {"metadata": {"annotations": {"overshoot.ai/refresh": "1"}}},
    )
    rotated = wait_for(
        lambda: (
            (s := publish_secret(kube_api, namespace, "cam")) and s["token"] != first_token and s
        ),
        what="token rotated in the Secret",
    )
    assert rotated["streamId"] == secret["streamId"]
    assert status(kube_api, namespace, "cam").get("lastKeepaliveTime")
