"""The local control plane does what the operator's tests rely on: a real API server with
CEL validation, RBAC and garbage collection, a scheduler, kwok Nodes, and restarts.

These test the harness, not the operator; the throwaway CRD below is not the product's.
"""

from __future__ import annotations

import json
import ssl
import textwrap

import httpx
import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from fixtures.cluster import ApplyYaml, SaKubeconfig, wait_for
from overshoot_localstack.cluster import ControlPlane
from overshoot_localstack.kube import api_client

pytestmark = pytest.mark.integration


def _phase(pod: client.V1Pod) -> str | None:
    return pod.status.phase if pod.status else None


def test_api_server_answers(cluster: ControlPlane, kube_api: client.ApiClient) -> None:
    version = client.VersionApi(kube_api).get_code()
    assert version.git_version == "v1.36.3"
    nodes = client.CoreV1Api(kube_api).list_node(label_selector="type=kwok").items
    assert len(nodes) >= 2


GIZMO_CRD = textwrap.dedent(
    """
    apiVersion: apiextensions.k8s.io/v1
    kind: CustomResourceDefinition
    metadata:
      name: gizmos.harness.test
    spec:
      group: harness.test
      names: {kind: Gizmo, plural: gizmos, singular: gizmo}
      scope: Namespaced
      versions:
        - name: v1
          served: true
          storage: true
          schema:
            openAPIV3Schema:
              type: object
              properties:
                spec:
                  type: object
                  properties:
                    minReplicas: {type: integer}
                    maxReplicas: {type: integer}
                  x-kubernetes-validations:
                    - rule: "self.minReplicas <= self.maxReplicas"
                      fieldPath: ".minReplicas"
                      message: "minReplicas must not exceed maxReplicas"
    """
)


def test_cel_rule_rejects_bad_object_naming_the_field(
    kube_api: client.ApiClient, namespace: str, apply_yaml: ApplyYaml
) -> None:
    apply_yaml(GIZMO_CRD)
    custom = client.CustomObjectsApi(kube_api)

    def create(spec: dict[str, int], name: str) -> object:
        body = {"apiVersion": "harness.test/v1", "kind": "Gizmo", "metadata": {"name": name}}
        return custom.create_namespaced_custom_object(
            "harness.test", "v1", namespace, "gizmos", {**body, "spec": spec}
        )

    # The CRD is served a moment after it is applied; a good object proves it is.
    wait_for(
        lambda: create({"minReplicas": 1, "maxReplicas": 2}, "good"),
        what="the Gizmo CRD to accept a valid object",
    )
    with pytest.raises(ApiException) as caught:
        create({"minReplicas": 3, "maxReplicas": 2}, "bad")
    assert caught.value.status == 422
    status = json.loads(caught.value.body or "{}")
    causes = status["details"]["causes"]
    assert any(
        c.get("field") == "spec.minReplicas"
        and "minReplicas must not exceed maxReplicas" in c.get("message", "")
        for c in causes
    ), causes
    assert "spec.minReplicas" in status["message"]


def test_pod_is_scheduled_on_kwok_node_and_runs(
    kube_api: client.ApiClient, namespace: str, apply_yaml: ApplyYaml
) -> None:
    apply_yaml(
        """
        apiVersion: v1
        kind: Pod
        metadata: {name: sleeper}
        spec:
          nodeSelector: {type: kwok}
          containers:
            - {name: main, image: registry.invalid/sleeper:1}
        """,
        namespace=namespace,
    )
    core = client.CoreV1Api(kube_api)

    def running() -> client.V1Pod | None:
        pod = core.read_namespaced_pod("sleeper", namespace)
        return pod if _phase(pod) == "Running" else None

    pod = wait_for(running, 60, what=f"Pod {namespace}/sleeper Running")
    assert pod.spec is not None and pod.status is not None
    assert (pod.spec.node_name or "").startswith("kwok-node-")
    ready = {c.type: c.status for c in pod.status.conditions or []}
    assert ready.get("Ready") == "True"


def test_deleting_owner_garbage_collects_dependent(
    kube_api: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(kube_api)
    owner = core.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="owner"))
    )
    core.create_namespaced_config_map(
        namespace,
        client.V1ConfigMap(
            metadata=client.V1ObjectMeta(
                name="dependent",
                owner_references=[
                    client.V1OwnerReference(
                        api_version="v1",
                        kind="ConfigMap",
                        name="owner",
                        uid=owner.metadata.uid if owner.metadata else None,
                        block_owner_deletion=True,
                    )
                ],
            )
        ),
    )
    core.delete_namespaced_config_map("owner", namespace)

    def gone() -> bool:
        try:
            core.read_namespaced_config_map("dependent", namespace)
        except ApiException as err:
            if err.status == 404:
                return True
            raise
        return False

    wait_for(gone, 60, what=f"ConfigMap {namespace}/dependent to be garbage-collected")


def test_serviceaccount_kubeconfig_has_only_its_roles_permissions(
    kube_api: client.ApiClient,
    namespace: str,
    apply_yaml: ApplyYaml,
    sa_kubeconfig: SaKubeconfig,
) -> None:
    apply_yaml(
        """
        apiVersion: v1
        kind: ServiceAccount
        metadata: {name: reader}
        ---
        apiVersion: rbac.authorization.k8s.io/v1
        kind: Role
        metadata: {name: configmap-getter}
        rules:
          - {apiGroups: [""], resources: [configmaps], verbs: [get]}
        ---
        apiVersion: rbac.authorization.k8s.io/v1
        kind: RoleBinding
        metadata: {name: reader-gets-configmaps}
        roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: configmap-getter}
        subjects:
          - {kind: ServiceAccount, name: reader}
        ---
        apiVersion: v1
        kind: ConfigMap
        metadata: {name: visible}
        data: {k: v}
        """,
        namespace=namespace,
    )
    path = sa_kubeconfig(namespace, "reader")
    with api_client(path) as sa_client:
        core = client.CoreV1Api(sa_client)
        # RBAC caches are informer-fed: the RoleBinding may take a moment to count.
        cm = wait_for(
            lambda: core.read_namespaced_config_map("visible", namespace),
            what="the reader ServiceAccount to get ConfigMap visible",
        )
        assert cm.data == {"k": "v"}
        with pytest.raises(ApiException) as caught:
            core.list_namespaced_secret(namespace)
        assert caught.value.status == 403
        assert f"system:serviceaccount:{namespace}:reader" in (caught.value.body or "")
        with pytest.raises(ApiException) as caught:
            core.list_namespaced_config_map(namespace)
        assert caught.value.status == 403


def test_control_plane_survives_apiserver_restart(
    cluster: ControlPlane, kube_api: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(kube_api)
    core.create_namespaced_config_map(
        namespace,
        client.V1ConfigMap(metadata=client.V1ObjectMeta(name="durable"), data={"k": "v"}),
    )
    old_pid = cluster.pids()["kube-apiserver"]

    cluster.restart_apiserver()

    assert cluster.pids()["kube-apiserver"] != old_pid
    assert core.read_namespaced_config_map("durable", namespace).data == {"k": "v"}
    # The rest of the control plane reconnects: the scheduler still places Pods.
    core.create_namespaced_pod(
        namespace,
        client.V1Pod(
            metadata=client.V1ObjectMeta(name="after-restart"),
            spec=client.V1PodSpec(
                node_selector={"type": "kwok"},
                containers=[client.V1Container(name="main", image="registry.invalid/x:1")],
            ),
        ),
    )
    wait_for(
        lambda: _phase(core.read_namespaced_pod("after-restart", namespace)) == "Running",
        60,
        what=f"Pod {namespace}/after-restart Running after the API server restart",
    )
    readyz = httpx.get(
        f"{cluster.server}/readyz",
        verify=ssl.create_default_context(cafile=str(cluster.ca_file)),
        trust_env=False,
    )
    # Anonymous requests may read /readyz (system:public-info-viewer).
    assert readyz.status_code == 200, readyz.text
