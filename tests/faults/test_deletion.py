"""Deletion under faults: a finalizer stripped by hand, a delete while the create is in
flight, and a namespace of many streams deleted (named-namespace and cluster-wide modes).

Whatever happens, deletion ends every remote stream the resources held (the emulator says
`ended`), finishes within the documented bound, and nothing the operator owns comes back.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
from kubernetes import client

from fixtures.cluster import wait_for
from fixtures.faults import active_ids, keepalives_by_stream, stream_doc
from fixtures.operator import API_KEY, put_api_key
from fixtures.streams import (
    create_stream,
    delete_stream,
    patch_stream,
    publish_secret,
    stream_gone,
    stream_manifest,
    wait_provisioned,
)

pytestmark = [pytest.mark.integration, pytest.mark.faults]


def test_finalizer_stripped_by_hand_then_deleted(kube_api, namespace, fresh_emulator, run_operator):
    emulator = fresh_emulator(ttl_seconds=70)
    put_api_key(kube_api, namespace)
    run_operator(emulator)
    create_stream(kube_api, namespace, stream_manifest("bare"))
    stream_id = wait_provisioned(kube_api, namespace, "bare")
    patch_stream(kube_api, namespace, "bare", {"metadata": {"finalizers": []}})
    delete_stream(kube_api, namespace, "bare")

    wait_for(
        lambda: stream_doc(emulator, stream_id)["state"] == "ended",
        timeout=20,
        what="the remote stream of the vanished resource deleted",
    )
    wait_for(
        lambda: (
            stream_gone(kube_api, namespace, "bare")
            and publish_secret(kube_api, namespace, "bare") is None
        ),
        timeout=60,
        what="the resource and its Secret gone",
    )
    renewed = keepalives_by_stream(emulator)[stream_id]
    # Longer than a keepalive interval (~10 s here): nothing renews the stream or brings
    # its Secret back (the passing of time is what this checks).
    time.sleep(12)
    assert publish_secret(kube_api, namespace, "bare") is None
    assert keepalives_by_stream(emulator)[stream_id] == renewed
    assert active_ids(emulator) == set()


def test_delete_while_the_create_is_in_flight(kube_api, namespace, fresh_emulator, run_operator):
    emulator = fresh_emulator(ttl_seconds=300)
    put_api_key(kube_api, namespace)
    emulator.admin.fault(latency_ms=4000, count=1, endpoints=["create"])
    run_operator(emulator)
    create_stream(kube_api, namespace, stream_manifest("early"))
    wait_for(lambda: emulator.admin.calls(API_KEY)["create"] >= 1, what="the create in flight")
    delete_stream(kube_api, namespace, "early")
    wait_for(lambda: stream_gone(kube_api, namespace, "early"), timeout=30, what="early deleted")
    wait_for(
        lambda: active_ids(emulator) == set() and emulator.admin.streams(),
        timeout=10,
        what="the stream the create made, deleted",
    )
    assert emulator.admin.calls(API_KEY)["create"] == 1


@pytest.fixture
def doomed_namespace(kube_api: client.ApiClient) -> Iterator[str]:
    """A namespace the test deletes itself (the `namespace` fixture's would 404)."""
    name = f"doomed-{uuid.uuid4().hex[:6]}"
    core = client.CoreV1Api(kube_api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    wait_for(
        lambda: core.read_namespaced_service_account("default", name),
        what=f"ServiceAccount {name}/default",
    )
    yield name
    try:
        core.delete_namespace(name)
    except client.ApiException as err:
        if err.status != 404:
            raise


@pytest.mark.parametrize("mode", ["named-namespaces", "cluster-wide"])
def test_namespace_with_many_streams_deleted(
    kube_api, doomed_namespace, fresh_emulator, run_operator, mode
):
    emulator = fresh_emulator(ttl_seconds=300)
    namespace = doomed_namespace
    put_api_key(kube_api, namespace)
    watched = namespace if mode == "named-namespaces" else ""
    run_operator(emulator, namespaces=watched, default_api_key_secret_namespace=namespace)
    names = [f"cam-{i:02d}" for i in range(30)]
    for name in names:
        create_stream(kube_api, namespace, stream_manifest(name))
    ids = {name: wait_provisioned(kube_api, namespace, name, timeout=90) for name in names}
    assert active_ids(emulator) == set(ids.values())

    core = client.CoreV1Api(kube_api)
    core.delete_namespace(namespace)

    def namespace_gone() -> bool:
        try:
            core.read_namespace(namespace)
        except client.ApiException as err:
            return err.status == 404
        return False

    # Bound: the namespace controller's own pace plus one DELETE per stream; nothing waits
    # for deleteGiveUpSeconds, since Overshoot answers.
    wait_for(namespace_gone, timeout=120, what=f"namespace {namespace} deleted")
    assert active_ids(emulator) == set()
    assert all(stream_doc(emulator, i)["end_reason"] == "deleted" for i in ids.values())
