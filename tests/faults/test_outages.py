"""The API server stopped, and a TCP fault proxy between the operator and the API server.

Real control plane, the operator as its ServiceAccount (leader election on), the emulator
as Overshoot with a 70 s lease (keepalives every ~10 s: 60 s before expiry). What is
counted is what a user would lose: leases (the emulator's active streams and creates),
finalizers that never go, status that never recovers, errors nobody handled.
"""

from __future__ import annotations

import time

import pytest
from kubernetes import client

from fixtures.cluster import wait_for
from fixtures.faults import active_ids, keepalives_by_stream, operator_tracebacks, stream_doc
from fixtures.operator import API_KEY, put_api_key
from fixtures.streams import (
    create_stream,
    delete_stream,
    publish_secret,
    status,
    stream_gone,
    stream_manifest,
    wait_provisioned,
)

pytestmark = [pytest.mark.integration, pytest.mark.faults]

# Kubernetes calls give up after 3 s here (10 s by default), so an outage shows quickly.
FAST_KUBE = {"kube_request_timeout_seconds": 3}


def test_apiserver_down_longer_than_a_keepalive_interval(
    cluster, kube_api, namespace, fresh_emulator, run_operator
):
    emulator = fresh_emulator(ttl_seconds=70)
    put_api_key(kube_api, namespace)
    operator = run_operator(emulator, **FAST_KUBE)
    names = ("north", "south")
    for name in names:
        create_stream(kube_api, namespace, stream_manifest(name))
    ids = {name: wait_provisioned(kube_api, namespace, name) for name in names}
    tokens = {name: publish_secret(kube_api, namespace, name)["token"] for name in names}
    renewed = keepalives_by_stream(emulator)

    cluster.stop_apiserver()
    try:
        # Leases held: both streams are renewed twice more while nothing can reach the API
        # server (~10 s apart), so the outage outlasts a keepalive interval.
        wait_for(
            lambda: all(
                keepalives_by_stream(emulator)[ids[n]] >= renewed[ids[n]] + 2 for n in names
            ),
            timeout=60,
            what="keepalives going on with the API server down",
        )
    finally:
        cluster.start_apiserver()

    # The newest tokens reach the Secrets once the API server is back (the writes that
    # failed during the outage are retried), and status says the lease moved on.
    wait_for(
        lambda: all(publish_secret(kube_api, namespace, n)["token"] != tokens[n] for n in names),
        timeout=30,
        what="the Secrets carrying tokens from after the outage",
    )
    wait_for(
        lambda: all(
            status(kube_api, namespace, n).get("expiresAt", "")
            >= time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 40))
            for n in names
        ),
        timeout=30,
        what="status showing a lease renewed after the outage",
    )
    assert active_ids(emulator) == set(ids.values())
    assert emulator.admin.calls(API_KEY)["create"] == len(names)

    # A delete right after is finalized.
    delete_stream(kube_api, namespace, "north")
    wait_for(lambda: stream_gone(kube_api, namespace, "north"), timeout=20, what="north deleted")
    assert stream_doc(emulator, ids["north"])["state"] == "ended"
    assert active_ids(emulator) == {ids["south"]}
    assert operator_tracebacks(operator.logs()) == []


def test_latency_on_every_kubernetes_call(
    kube_api, namespace, fresh_emulator, run_operator, api_proxy, operator_kubeconfig_via
):
    """0.7 s on every answer from the API server: slow, never doubled."""
    emulator = fresh_emulator(ttl_seconds=70)
    put_api_key(kube_api, namespace)
    api_proxy.latency(700)
    run_operator(emulator, kubeconfig_path=operator_kubeconfig_via(api_proxy), **FAST_KUBE)
    names = ("l1", "l2", "l3")
    for name in names:
        create_stream(kube_api, namespace, stream_manifest(name))
    ids = {name: wait_provisioned(kube_api, namespace, name, timeout=90) for name in names}
    delete_stream(kube_api, namespace, "l1")
    wait_for(lambda: stream_gone(kube_api, namespace, "l1"), timeout=60, what="l1 deleted")
    assert emulator.admin.calls(API_KEY)["create"] == len(names)
    assert active_ids(emulator) == {ids["l2"], ids["l3"]}


def test_connection_resets_create_each_stream_once(
    kube_api, namespace, fresh_emulator, run_operator, api_proxy, operator_kubeconfig_via
):
    """Half the connections to the API server are reset: a create whose record fails is
    recorded later, never made again."""
    emulator = fresh_emulator(ttl_seconds=70)
    put_api_key(kube_api, namespace)
    operator = run_operator(
        emulator, kubeconfig_path=operator_kubeconfig_via(api_proxy), **FAST_KUBE
    )
    names = tuple(f"r{i}" for i in range(5))
    api_proxy.add_toxic("reset_peer", stream="upstream", toxicity=0.5, timeout=0)
    for name in names:
        create_stream(kube_api, namespace, stream_manifest(name))
    # Let the operator struggle through the resets until every stream exists remotely.
    wait_for(
        lambda: emulator.admin.calls(API_KEY)["create"] >= len(names),
        timeout=90,
        what="a create for every resource despite the resets",
    )
    api_proxy.clear_toxics()
    ids = {name: wait_provisioned(kube_api, namespace, name, timeout=60) for name in names}
    assert len(set(ids.values())) == len(names)
    assert emulator.admin.calls(API_KEY)["create"] == len(names)
    assert active_ids(emulator) == set(ids.values())
    assert operator_tracebacks(operator.logs()) == []


def test_black_holed_api_server(
    kube_api, namespace, fresh_emulator, run_operator, api_proxy, operator_kubeconfig_via
):
    """Requests to the API server vanish (no answer, no reset) for longer than a keepalive
    interval: leases are held meanwhile, and the deletion made during the black hole is
    finalized once the operator sees it again."""
    emulator = fresh_emulator(ttl_seconds=70)
    put_api_key(kube_api, namespace)
    operator = run_operator(
        emulator, kubeconfig_path=operator_kubeconfig_via(api_proxy), **FAST_KUBE
    )
    for name in ("kept", "gone"):
        create_stream(kube_api, namespace, stream_manifest(name))
    ids = {name: wait_provisioned(kube_api, namespace, name) for name in ("kept", "gone")}
    renewed = keepalives_by_stream(emulator)

    hole = api_proxy.timeout(0, stream="upstream")
    # Deleted (as admin, not through the proxy) while the operator cannot hear about it.
    delete_stream(kube_api, namespace, "gone")
    wait_for(
        lambda: keepalives_by_stream(emulator)[ids["kept"]] >= renewed[ids["kept"]] + 2,
        timeout=60,
        what="keepalives going on inside the black hole",
    )
    # Nothing in the operator hangs: it still answers its probes.
    assert operator.running
    api_proxy.remove_toxic(hole)

    wait_for(lambda: stream_gone(kube_api, namespace, "gone"), timeout=60, what="gone finalized")
    assert stream_doc(emulator, ids["gone"])["state"] == "ended"
    assert active_ids(emulator) == {ids["kept"]}
    assert emulator.admin.calls(API_KEY)["create"] == 2
    assert status(kube_api, namespace, "kept")["streamId"] == ids["kept"]
    assert operator_tracebacks(operator.logs()) == []
    assert client.CoreV1Api(kube_api).read_namespaced_secret("kept-publish", namespace)
