"""The chart installed, upgraded and uninstalled by the real helm binary on the real control
plane (kube-apiserver, etcd, controller-manager, scheduler; kwok fakes the nodes, so the
operator Pods reach Running without an image being pulled).
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from chartkit import CHART, ROOT, Helm, set_args
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from fixtures.cluster import SaKubeconfig, wait_for
from overshoot_localstack import kube
from overshoot_localstack.cluster import ControlPlane

pytestmark = pytest.mark.integration

CRD_NAME = "overshootstreams.overshoot.ai"
TIMEOUT = "180s"


@dataclasses.dataclass(frozen=True)
class Release:
    name: str
    namespace: str
    kubeconfig: Path

    @property
    def fullname(self) -> str:
        return f"{self.name}-overshoot-operator"

    @property
    def lease_role(self) -> str:
        return f"{self.fullname}-leader-election"


def _gone(read: Any, *args: str) -> bool:
    try:
        read(*args)
    except ApiException as err:
        if err.status == 404:
            return True
        raise
    return False


def _adopt_crd(api: client.ApiClient, release: str, namespace: str) -> None:
    """Let the release take over the CRD if other tests (or an earlier release) applied it.

    Helm refuses to create an object that exists without its ownership marks; these are the
    marks it documents for adopting one, the same step a user takes after `kubectl apply`.
    """
    extensions = client.ApiextensionsV1Api(api)
    if _gone(extensions.read_custom_resource_definition, CRD_NAME):
        return
    extensions.patch_custom_resource_definition(
        CRD_NAME,
        {
            "metadata": {
                "labels": {"app.kubernetes.io/managed-by": "Helm"},
                "annotations": {
                    "meta.helm.sh/release-name": release,
                    "meta.helm.sh/release-namespace": namespace,
                },
            }
        },
    )


@pytest.fixture
def release(
    cluster: ControlPlane, kube_api: client.ApiClient, namespace: str, helm: Helm
) -> Iterator[Release]:
    """A release name in the test's namespace; uninstalled afterwards if still installed."""
    rel = Release(f"ovs-{uuid.uuid4().hex[:6]}", namespace, cluster.kubeconfig)
    _adopt_crd(kube_api, rel.name, rel.namespace)
    yield rel
    helm("uninstall", rel.name, "-n", rel.namespace, kubeconfig=rel.kubeconfig, check=False)


def _install(helm: Helm, rel: Release, values: dict[str, Any]) -> str:
    result = helm(
        "install",
        rel.name,
        str(CHART),
        "-n",
        rel.namespace,
        "--wait",
        "--timeout",
        TIMEOUT,
        *set_args(values),
        kubeconfig=rel.kubeconfig,
    )
    return result.stdout


def _upgrade(helm: Helm, rel: Release, values: dict[str, Any]) -> None:
    helm(
        "upgrade",
        rel.name,
        str(CHART),
        "-n",
        rel.namespace,
        "--reuse-values",
        "--wait",
        "--timeout",
        TIMEOUT,
        *set_args(values),
        kubeconfig=rel.kubeconfig,
    )


def _running_pods(api: client.ApiClient, rel: Release, count: int) -> list[Any]:
    def running() -> list[Any] | None:
        pods = (
            client.CoreV1Api(api)
            .list_namespaced_pod(
                rel.namespace, label_selector=f"app.kubernetes.io/instance={rel.name}"
            )
            .items
        )
        live = [p for p in pods if p.metadata.deletion_timestamp is None]
        if len(live) == count and all(p.status.phase == "Running" for p in live):
            return live
        return None

    return wait_for(running, 60, what=f"{count} Running operator Pod(s) of {rel.name}")


def _env(container: Any) -> dict[str, str]:
    return {e.name: e.value for e in container.env if e.value is not None}


def _source_rules(name: str, kind: str) -> list[Any]:
    path = ROOT / "deploy" / "rbac" / name
    doc = next(d for d in yaml.safe_load_all(path.read_text()) if d and d["kind"] == kind)
    rules: list[Any] = doc["rules"]
    return rules


def _may(api: client.ApiClient, verb: str, namespace: str, name: str | None) -> bool:
    """What the API server's authorizer answers the caller of `api` for a Lease."""
    review = client.AuthorizationV1Api(api).create_self_subject_access_review(
        client.V1SelfSubjectAccessReview(
            spec=client.V1SelfSubjectAccessReviewSpec(
                resource_attributes=client.V1ResourceAttributes(
                    group="coordination.k8s.io",
                    resource="leases",
                    verb=verb,
                    namespace=namespace,
                    name=name,
                )
            )
        )
    )
    return bool(review.status.allowed)


def test_install_upgrade_uninstall(
    kube_api: client.ApiClient, helm: Helm, release: Release
) -> None:
    apps = client.AppsV1Api(kube_api)
    core = client.CoreV1Api(kube_api)
    rbac = client.RbacAuthorizationV1Api(kube_api)
    extensions = client.ApiextensionsV1Api(kube_api)

    notes = _install(helm, release, {})
    # NOTES.txt: the next step is the key's Secret, then a stream, then watching it.
    assert (
        f"kubectl create secret generic overshoot-api-key \\\n       --namespace {release.namespace}"
        in notes
    )
    assert "kubectl apply -f examples/test-pattern.yaml" in notes
    assert "kubectl get ovs -A -w" in notes
    # The acting replica's log is found through the Lease's holder.
    assert f"kubectl get lease -n {release.namespace} {release.fullname}" in notes

    deployment = apps.read_namespaced_deployment(release.fullname, release.namespace)
    assert deployment.spec.template.spec.service_account_name == release.fullname
    assert deployment.spec.strategy.type == "RollingUpdate"
    rolling = deployment.spec.strategy.rolling_update
    assert (rolling.max_unavailable, rolling.max_surge) == (0, 1)
    core.read_namespaced_service_account(release.fullname, release.namespace)
    pods = _running_pods(kube_api, release, 1)
    assert pods[0].spec.containers[0].command == ["overshoot-operator"]

    # RBAC as stored by the API server equals deploy/rbac/cluster-role.yaml, and the Lease
    # Role deploy/rbac/role-leader-election.yaml but for the Lease's name.
    role = rbac.read_cluster_role(release.fullname)
    stored = kube_api.sanitize_for_serialization(role.rules)
    assert stored == _source_rules("cluster-role.yaml", "ClusterRole")
    binding = rbac.read_cluster_role_binding(release.fullname)
    assert [(s.name, s.namespace) for s in binding.subjects] == [
        (release.fullname, release.namespace)
    ]
    lease_role = rbac.read_namespaced_role(release.lease_role, release.namespace)
    expected = [
        {**rule, "resourceNames": [release.fullname]} if "resourceNames" in rule else rule
        for rule in _source_rules("role-leader-election.yaml", "Role")
    ]
    assert kube_api.sanitize_for_serialization(lease_role.rules) == expected
    lease_binding = rbac.read_namespaced_role_binding(release.lease_role, release.namespace)
    assert lease_binding.role_ref.name == release.lease_role
    assert [(s.name, s.namespace) for s in lease_binding.subjects] == [
        (release.fullname, release.namespace)
    ]

    crd = extensions.read_custom_resource_definition(CRD_NAME)
    assert crd.metadata.annotations["helm.sh/resource-policy"] == "keep"
    assert crd.metadata.annotations["meta.helm.sh/release-name"] == release.name
    established = {c.type: c.status for c in crd.status.conditions}
    assert established.get("Established") == "True"

    # Upgrade: a changed value reaches the Deployment's Pod template and rolls the Pod (a
    # rolling update: the new Pod first, then the old one goes).
    generation = deployment.metadata.generation
    _upgrade(helm, release, {"apiLimits.maxConcurrency": "4", "keepalive.intervalSeconds": "60"})
    deployment = apps.read_namespaced_deployment(release.fullname, release.namespace)
    assert deployment.metadata.generation > generation
    env = _env(deployment.spec.template.spec.containers[0])
    assert env["OVERSHOOT_API_MAX_CONCURRENCY"] == "4"
    assert env["OVERSHOOT_KEEPALIVE_INTERVAL_SECONDS"] == "60"
    pods = _running_pods(kube_api, release, 1)
    assert _env(pods[0].spec.containers[0])["OVERSHOOT_API_MAX_CONCURRENCY"] == "4"
    history = helm("history", release.name, "-n", release.namespace, kubeconfig=release.kubeconfig)
    assert "deployed" in history.stdout.splitlines()[-1]

    # Uninstall: the operator and its RBAC go; the CRD (and so every user's stream) stays.
    result = helm(
        "uninstall", release.name, "-n", release.namespace, "--wait", kubeconfig=release.kubeconfig
    )
    assert CRD_NAME in result.stdout + result.stderr  # Helm says which resources it kept
    wait_for(
        lambda: _gone(apps.read_namespaced_deployment, release.fullname, release.namespace),
        60,
        what=f"Deployment {release.fullname} to be deleted",
    )
    assert _gone(rbac.read_cluster_role, release.fullname)
    assert _gone(rbac.read_namespaced_role, release.lease_role, release.namespace)
    assert _gone(rbac.read_namespaced_role_binding, release.lease_role, release.namespace)
    assert _gone(core.read_namespaced_service_account, release.fullname, release.namespace)
    assert not _gone(extensions.read_custom_resource_definition, CRD_NAME)


def test_upgrade_to_two_replicas_scales_the_deployment(
    kube_api: client.ApiClient, helm: Helm, release: Release
) -> None:
    apps = client.AppsV1Api(kube_api)

    _install(helm, release, {})
    before = apps.read_namespaced_deployment(release.fullname, release.namespace)
    (first,) = _running_pods(kube_api, release, 1)
    _upgrade(helm, release, {"replicaCount": "2"})

    # The same Deployment, scaled: the Pod template is unchanged, so nothing rolls, and the
    # first Pod (the leader, had kwok run the operator) keeps running next to the new one.
    after = apps.read_namespaced_deployment(release.fullname, release.namespace)
    assert after.metadata.uid == before.metadata.uid
    assert after.spec.replicas == 2
    assert after.spec.template == before.spec.template
    pods = _running_pods(kube_api, release, 2)
    assert first.metadata.name in {p.metadata.name for p in pods}
    assert not apps.list_namespaced_stateful_set(release.namespace).items
    for pod in pods:
        container = pod.spec.containers[0]
        assert container.args is None  # no --peering/--priority
        env = _env(container)
        assert env["OVERSHOOT_LEADER_ELECTION"] == "true"
        assert env["OVERSHOOT_LEADER_ELECTION_NAME"] == release.fullname
        assert env["OVERSHOOT_LEADER_ELECTION_NAMESPACE"] == release.namespace
        identity = next(e for e in container.env if e.name == "OVERSHOOT_LEADER_ELECTION_IDENTITY")
        assert identity.value_from.field_ref.field_path == "metadata.name"


def test_service_account_may_use_only_its_own_lease(
    kube_api: client.ApiClient, helm: Helm, release: Release, sa_kubeconfig: SaKubeconfig
) -> None:
    _install(helm, release, {})
    ns, lease = release.namespace, release.fullname
    # Asked by the API server's authorizer, as the chart's ServiceAccount itself.
    with kube.api_client(sa_kubeconfig(ns, release.fullname)) as api:
        # RBAC is served from informers; the first answer may predate the new Role.
        wait_for(
            lambda: _may(api, "get", ns, lease) and _may(api, "update", ns, lease),
            30,
            what=f"the ServiceAccount to be allowed get and update on Lease {ns}/{lease}",
        )
        # `create` cannot be limited by name in RBAC, and is needed for the first election.
        assert _may(api, "create", ns, None)
        # Another Lease in the namespace (another release's, or a cluster component's)...
        for verb in ("get", "update", "patch", "delete"):
            assert not _may(api, verb, ns, "other-operator"), verb
        # ...verbs the operator does not use on its own Lease, or on all Leases...
        for verb in ("patch", "delete"):
            assert not _may(api, verb, ns, lease), verb
        for verb in ("list", "watch"):
            assert not _may(api, verb, ns, None), verb
        # ...and its Lease's name in another namespace: the Role is namespaced.
        assert not _may(api, "get", "default", lease)
        assert not _may(api, "create", "default", None)
