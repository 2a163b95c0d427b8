"""A publisher Pod the cluster refuses: Pod Security, a ResourceQuota, a LimitRange.

The API server's own admission decides (real PodSecurity, quota and LimitRange plugins).
What a user must see: a condition that carries the API server's message, one Warning
Event, `status.publisherPod` naming no Pod that does not exist, no paid remote stream for
a Pod that cannot exist, and recovery once the spec or the namespace is fixed.
"""

from __future__ import annotations

import pytest
from kubernetes import client

from fixtures.cluster import wait_for
from fixtures.faults import active_ids, stream_doc
from fixtures.operator import API_KEY, put_api_key
from fixtures.streams import (
    condition,
    create_stream,
    events,
    patch_stream,
    publisher_pod,
    status,
    stream_manifest,
    wait_provisioned,
)

pytestmark = pytest.mark.integration

HOST_PATH_SOURCE = {
    "file": {"path": "/media/clip.mp4", "loop": True, "volume": {"hostPath": {"path": "/media"}}}
}
TEST_PATTERN = {"testPattern": {"pattern": "smpte", "width": 640, "height": 360, "fps": 10}}


def _label(kube_api: client.ApiClient, namespace: str, labels: dict[str, str | None]) -> None:
    client.CoreV1Api(kube_api).patch_namespace(namespace, {"metadata": {"labels": labels}})


def _refused(kube_api: client.ApiClient, namespace: str, name: str, needle: str) -> dict:
    ready = wait_for(
        lambda: (
            (c := condition(kube_api, namespace, name, "Ready"))
            and c.get("reason") == "PublisherRejected"
            and c
        ),
        timeout=20,
        what=f"{name}: Ready False with reason PublisherRejected",
    )
    assert needle in ready["message"], ready["message"]
    assert f"OvershootStream {namespace}/{name}" in ready["message"]
    return ready


def _one_warning(kube_api: client.ApiClient, namespace: str, name: str) -> None:
    warnings = wait_for(
        lambda: [
            e
            for e in events(kube_api, namespace)
            if e.involved_object.name == name and e.type == "Warning"
        ],
        what=f"a Warning Event about {name}",
    )
    assert [e.reason for e in warnings] == ["PublisherRejected"]


def test_pod_security_refusal_costs_no_stream_and_a_fixed_spec_recovers(
    kube_api, namespace, emulator_reset, run_operator
):
    emulator = emulator_reset
    put_api_key(kube_api, namespace)
    _label(kube_api, namespace, {"pod-security.kubernetes.io/enforce": "restricted"})
    run_operator(emulator)
    create_stream(kube_api, namespace, stream_manifest("host", source=HOST_PATH_SOURCE))
    _refused(kube_api, namespace, "host", "violates PodSecurity")
    _one_warning(kube_api, namespace, "host")
    st = status(kube_api, namespace, "host")
    assert st["phase"] == "Pending"
    assert "publisherPod" not in st and "streamId" not in st
    assert publisher_pod(kube_api, namespace, "host") is None
    # Asked with a dry run: no remote stream was ever paid for.
    assert emulator.admin.calls(API_KEY)["create"] == 0

    # A spec the namespace admits: provisioned at once (a spec change retries now).
    patch_stream(kube_api, namespace, "host", {"spec": {"source": {"file": None, **TEST_PATTERN}}})
    wait_provisioned(kube_api, namespace, "host")
    assert emulator.admin.calls(API_KEY)["create"] == 1


def test_quota_refusal_then_quota_lifted(kube_api, namespace, emulator_reset, run_operator):
    emulator = emulator_reset
    put_api_key(kube_api, namespace)
    core = client.CoreV1Api(kube_api)
    core.create_namespaced_resource_quota(
        namespace,
        client.V1ResourceQuota(
            metadata=client.V1ObjectMeta(name="no-pods"),
            spec=client.V1ResourceQuotaSpec(hard={"pods": "0"}),
        ),
    )
    run_operator(emulator)
    create_stream(kube_api, namespace, stream_manifest("quota"))
    _refused(kube_api, namespace, "quota", "exceeded quota")
    _one_warning(kube_api, namespace, "quota")
    assert emulator.admin.calls(API_KEY)["create"] == 0

    core.delete_namespaced_resource_quota("no-pods", namespace)
    # The namespace changed: the next dry run (or a refresh, now) admits the Pod.
    patch_stream(
        kube_api, namespace, "quota", {"metadata": {"annotations": {"overshoot.ai/refresh": "1"}}}
    )
    wait_provisioned(kube_api, namespace, "quota")


def test_limit_range_refusal(kube_api, namespace, emulator_reset, run_operator):
    emulator = emulator_reset
    put_api_key(kube_api, namespace)
    client.CoreV1Api(kube_api).create_namespaced_limit_range(
        namespace,
        client.V1LimitRange(
            metadata=client.V1ObjectMeta(name="tiny"),
            spec=client.V1LimitRangeSpec(
                limits=[client.V1LimitRangeItem(type="Container", max={"cpu": "50m"})]
            ),
        ),
    )
    run_operator(emulator)
    create_stream(kube_api, namespace, stream_manifest("tiny"))
    _refused(kube_api, namespace, "tiny", "cpu")
    assert emulator.admin.calls(API_KEY)["create"] == 0


def test_a_lost_pod_that_cannot_come_back_releases_its_stream(
    kube_api, namespace, emulator_reset, run_operator
):
    """The Pod ran, then went (deleted, evicted), and the namespace no longer admits it:
    the stream is kept for `publisherRejectedReleaseSeconds`, then released and said so."""
    emulator = emulator_reset
    put_api_key(kube_api, namespace)
    run_operator(emulator, publisher_rejected_release_seconds=5)
    create_stream(kube_api, namespace, stream_manifest("late", source=HOST_PATH_SOURCE))
    stream_id = wait_provisioned(kube_api, namespace, "late")
    _label(kube_api, namespace, {"pod-security.kubernetes.io/enforce": "restricted"})
    client.CoreV1Api(kube_api).delete_namespaced_pod(
        "late-publisher", namespace, grace_period_seconds=0
    )
    _refused(kube_api, namespace, "late", "violates PodSecurity")
    wait_for(
        lambda: stream_doc(emulator, stream_id)["state"] == "ended",
        timeout=30,
        what="the stream of a publisher that cannot run released",
    )
    wait_for(
        lambda: any(
            e.reason == "StreamReleased" and "no publisher could run" in e.message
            for e in events(kube_api, namespace)
        ),
        what="an Event saying the stream was released and why",
    )
    st = status(kube_api, namespace, "late")
    assert st["phase"] == "Pending" and "streamId" not in st
    assert active_ids(emulator) == set()

    _label(kube_api, namespace, {"pod-security.kubernetes.io/enforce": None})
    patch_stream(
        kube_api, namespace, "late", {"metadata": {"annotations": {"overshoot.ai/refresh": "1"}}}
    )
    assert wait_provisioned(kube_api, namespace, "late") != stream_id
