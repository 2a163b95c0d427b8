"""The operator's RBAC (deploy/rbac/) on a real API server: it grants exactly what the
operator uses (invariant 10), checked as the operator's own ServiceAccount.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from fixtures.cluster import apply_manifests
from overshoot_localstack import kube
from overshoot_localstack.cluster import ControlPlane

pytestmark = pytest.mark.integration

RBAC_DIR = Path(__file__).parents[2] / "deploy" / "rbac"
OPERATOR_NAMESPACE = "overshoot-system"
OPERATOR_SA = "overshoot-operator"

# (verb, group, resource, subresource, namespace or None for all namespaces)
Access = tuple[str, str, str, str, str | None]

ALLOWED: list[Access] = [
    *[(v, "overshoot.ai", "overshootstreams", "", None) for v in ("get", "list", "watch")],
    ("patch", "overshoot.ai", "overshootstreams", "", "cameras"),
    ("patch", "overshoot.ai", "overshootstreams", "status", "cameras"),
    ("update", "overshoot.ai", "overshootstreams", "finalizers", "cameras"),
    ("create", "", "events", "", "cameras"),
    ("patch", "", "events", "", "cameras"),
    ("create", "coordination.k8s.io", "leases", "", OPERATOR_NAMESPACE),
    *[(v, "", "secrets", "", "cameras") for v in ("create", "get", "patch", "delete")],
    # patch: only the publish-stream annotation (children.py), which makes the kubelet
    # swap a recreated stream's Secret into the running Pod at once.
    *[(v, "", "pods", "", "cameras") for v in ("create", "get", "patch", "delete")],
    ("list", "", "pods", "", None),
    ("watch", "", "pods", "", None),
]

DENIED: list[Access] = [
    # Never lists or watches Secrets: only the ones a resource names, by name.
    ("list", "", "secrets", "", None),
    ("watch", "", "secrets", "", None),
    ("list", "", "secrets", "", "cameras"),
    # The operator never creates, replaces or deletes the user's resources.
    ("create", "overshoot.ai", "overshootstreams", "", "cameras"),
    ("update", "overshoot.ai", "overshootstreams", "", "cameras"),
    ("delete", "overshoot.ai", "overshootstreams", "", "cameras"),
    ("update", "overshoot.ai", "overshootstreams", "status", "cameras"),
    # Never reads or changes CRDs or namespaces (kopf's scanning is off).
    ("create", "apiextensions.k8s.io", "customresourcedefinitions", "", None),
    ("get", "apiextensions.k8s.io", "customresourcedefinitions", "", None),
    ("list", "apiextensions.k8s.io", "customresourcedefinitions", "", None),
    ("list", "", "namespaces", "", None),
    ("watch", "", "namespaces", "", None),
    ("delete", "", "namespaces", "", None),
    # Events are written, never read.
    ("list", "", "events", "", "cameras"),
    # Patches only (a Pod's spec is never changed: it is deleted and recreated).
    ("update", "", "secrets", "", "cameras"),
    ("update", "", "pods", "", "cameras"),
    ("create", "", "pods", "exec", "cameras"),
    # Nothing else.
    ("get", "", "configmaps", "", "cameras"),
    ("create", "apps", "deployments", "", "cameras"),
    ("get", "", "serviceaccounts", "", "cameras"),
    ("create", "", "serviceaccounts", "token", "cameras"),
    ("list", "kopf.dev", "clusterkopfpeerings", "", None),
    ("create", "rbac.authorization.k8s.io", "rolebindings", "", "cameras"),
    # Leases: only its own, in its own namespace (below).
    ("get", "coordination.k8s.io", "leases", "", "cameras"),
    ("create", "coordination.k8s.io", "leases", "", "cameras"),
    ("list", "coordination.k8s.io", "leases", "", OPERATOR_NAMESPACE),
    ("delete", "coordination.k8s.io", "leases", "", OPERATOR_NAMESPACE),
]

# The leader Lease by name: (verb, lease name, allowed).
LEASE_ACCESS = [
    ("get", "overshoot-operator", True),
    ("update", "overshoot-operator", True),
    ("get", "kube-scheduler", False),
    ("update", "kube-controller-manager", False),
    ("delete", "overshoot-operator", False),
]


def _can(api: client.ApiClient, access: Access, *, name: str | None = None) -> bool:
    verb, group, resource_, subresource, namespace = access
    review = client.V1SelfSubjectAccessReview(
        spec=client.V1SelfSubjectAccessReviewSpec(
            resource_attributes=client.V1ResourceAttributes(
                verb=verb,
                group=group,
                resource=resource_,
                subresource=subresource or None,
                namespace=namespace,
                name=name,
            )
        )
    )
    result: Any = client.AuthorizationV1Api(api).create_self_subject_access_review(review)
    return bool(result.status.allowed)


@pytest.fixture(scope="module")
def operator_api(
    kube_api: client.ApiClient, cluster: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[client.ApiClient]:
    """An ApiClient acting as the operator's ServiceAccount, with deploy/rbac/ applied.

    The RBAC objects stay: the operator's own integration tests run with them.
    """
    for name in ("namespace.yaml", "service-account.yaml", "cluster-role.yaml"):
        apply_manifests(kube_api, RBAC_DIR / name)
    apply_manifests(kube_api, RBAC_DIR / "cluster-role-binding.yaml")
    apply_manifests(kube_api, RBAC_DIR / "role-leader-election.yaml")
    path = tmp_path_factory.mktemp("rbac") / "kubeconfig"
    kubeconfig = kube.serviceaccount_kubeconfig(cluster, OPERATOR_NAMESPACE, OPERATOR_SA, path)
    with kube.api_client(kubeconfig) as api:
        yield api


@pytest.mark.parametrize("access", ALLOWED, ids=lambda a: "-".join(p or "*" for p in a))
def test_operator_may(operator_api: client.ApiClient, access: Access) -> None:
    assert _can(operator_api, access), access


@pytest.mark.parametrize("access", DENIED, ids=lambda a: "-".join(p or "*" for p in a))
def test_operator_may_not(operator_api: client.ApiClient, access: Access) -> None:
    assert not _can(operator_api, access), access


@pytest.mark.parametrize(("verb", "name", "allowed"), LEASE_ACCESS)
def test_operator_lease_access_is_by_name(
    operator_api: client.ApiClient, verb: str, name: str, allowed: bool
) -> None:
    access: Access = (verb, "coordination.k8s.io", "leases", "", OPERATOR_NAMESPACE)
    assert _can(operator_api, access, name=name) is allowed
