"""The chart installed, upgraded and uninstalled by the real helm binary on the real control
plane (kube-apiserver, etcd, controller-manager, scheduler; kwok fakes the nodes, so the
operator Pods reach Running without an image being pulled).
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from chartkit import CHART, ROOT, Helm, load_sync_module, set_args
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from fixtures import streams
from fixtures.cluster import SaKubeconfig, wait_for
from fixtures.operator import put_api_key
from overshoot_localstack import kube
from overshoot_localstack.cluster import ControlPlane
from overshoot_localstack.emulator import EmulatorProcess
from overshoot_localstack.operator import OperatorProcess

pytestmark = pytest.mark.integration

CRD_NAME = "overshootstreams.overshoot.ai"
TIMEOUT = "180s"
DEFAULT_KEY_SECRET = "overshoot-api-key"
# What the operator asks for before it starts kopf: discovery of the CRD's group version
# (Kube.api_group_served), and what kopf reads to resolve its resources.
DISCOVERY_PATHS = ("/apis/overshoot.ai/v1alpha1", "/apis", "/api", "/api/v1")


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

    @property
    def key_role(self) -> str:
        return f"{self.fullname}-default-api-key"


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
    cluster: ControlPlane,
    kube_api: client.ApiClient,
    namespace: str,
    helm: Helm,
) -> Iterator[Release]:
    """A release name in the test's namespace; uninstalled afterwards if still installed."""
    rel = Release(f"ovs-{uuid.uuid4().hex[:6]}", namespace, cluster.kubeconfig)
    _adopt_crd(kube_api, rel.name, rel.namespace)
    yield rel
    helm("uninstall", rel.name, "-n", rel.namespace, kubeconfig=rel.kubeconfig, check=False)


Namespaces = Callable[[int], list[str]]


@pytest.fixture
def more_namespaces(kube_api: client.ApiClient, namespace: str) -> Iterator[Namespaces]:
    """`more_namespaces(n)`: n fresh namespaces besides the test's own (which holds the
    release), each with its `default` ServiceAccount; deleted afterwards."""
    core = client.CoreV1Api(kube_api)
    made: list[str] = []

    def make(count: int) -> list[str]:
        names = [f"{namespace[:50]}-{uuid.uuid4().hex[:6]}" for _ in range(count)]
        for name in names:
            core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
            made.append(name)
        for name in names:
            # Pods are refused until the serviceaccount controller has created `default`.
            wait_for(
                lambda name=name: core.read_namespaced_service_account("default", name),
                what=f"ServiceAccount {name}/default",
            )
        return names

    yield make
    for name in made:
        core.delete_namespace(name)


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


def _upgrade(helm: Helm, rel: Release, values: dict[str, Any]) -> str:
    result = helm(
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
    return result.stdout


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


def _can(
    api: client.ApiClient,
    verb: str,
    resource: str,
    namespace: str,
    name: str | None = None,
    *,
    group: str = "",
) -> bool:
    """What the API server's authorizer answers the caller of `api` (a SelfSubjectAccessReview)
    for `verb` on `resource` (`plural/subresource` for a subresource) in `namespace` ("" for
    all namespaces)."""
    plural, _, subresource = resource.partition("/")
    review = client.AuthorizationV1Api(api).create_self_subject_access_review(
        client.V1SelfSubjectAccessReview(
            spec=client.V1SelfSubjectAccessReviewSpec(
                resource_attributes=client.V1ResourceAttributes(
                    group=group,
                    resource=plural,
                    subresource=subresource or None,
                    verb=verb,
                    namespace=namespace,
                    name=name,
                )
            )
        )
    )
    return bool(review.status.allowed)


def _can_get_path(api: client.ApiClient, path: str) -> bool:
    """The authorizer's answer for a GET of a non-resource path (e.g. a discovery document)."""
    review = client.AuthorizationV1Api(api).create_self_subject_access_review(
        client.V1SelfSubjectAccessReview(
            spec=client.V1SelfSubjectAccessReviewSpec(
                non_resource_attributes=client.V1NonResourceAttributes(path=path, verb="get")
            )
        )
    )
    return bool(review.status.allowed)


def _may(api: client.ApiClient, verb: str, namespace: str, name: str | None) -> bool:
    """What the API server's authorizer answers the caller of `api` for a Lease."""
    return _can(api, verb, "leases", namespace, name, group="coordination.k8s.io")


def _discovery(api: client.ApiClient, group: str, version: str) -> list[dict[str, Any]]:
    """The resources of /apis/<group>/<version> (/api/v1 for the core group), read as the
    caller of `api`: the GET the operator makes to wait for its CRD (Kube.api_group_served)."""
    if group == "":
        listing = client.CoreV1Api(api).get_api_resources()
    else:
        listing = client.CustomObjectsApi(api).get_api_resources(group, version)
    resources: list[dict[str, Any]] = api.sanitize_for_serialization(listing)["resources"]
    return resources


def _grants(rules: list[Any]) -> list[tuple[str, str, str]]:
    """Every (group, resource, verb) the rules grant."""
    return [
        (group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    ]


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
    # Helm's keep policy, and the mark Argo CD's pruning honours (it ignores Helm's).
    assert crd.metadata.annotations["helm.sh/resource-policy"] == "keep"
    assert crd.metadata.annotations["argocd.argoproj.io/sync-options"] == "Prune=false"
    assert crd.metadata.annotations["meta.helm.sh/release-name"] == release.name
    established = {c.type: c.status for c in crd.status.conditions}
    assert established.get("Established") == "True"

    # Upgrade: a changed value reaches the Deployment's Pod template and rolls the Pod (a
    # rolling update: the new Pod first, then the old one goes).
    generation = deployment.metadata.generation
    notes = _upgrade(
        helm,
        release,
        {
            "apiLimits.maxConcurrency": "4",
            "keepalive.intervalSeconds": "60",
            "networkPolicy.enabled": "true",
        },
    )
    # Cluster-wide, only the operator's NetworkPolicy: NOTES says how to get the publishers'.
    networking = client.NetworkingV1Api(kube_api)
    assert networking.read_namespaced_network_policy(release.fullname, release.namespace)
    assert "networkPolicy.publisher.namespaces" in notes
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
    assert _gone(networking.read_namespaced_network_policy, release.fullname, release.namespace)
    assert not _gone(extensions.read_custom_resource_definition, CRD_NAME)


def pdb_allows(policy: client.PolicyV1Api, rel: Release) -> int | None:
    """The disruptions the budget allows now, as the disruption controller computed them."""
    status = policy.read_namespaced_pod_disruption_budget(rel.fullname, rel.namespace).status
    return None if status is None else status.disruptions_allowed


def test_upgrade_to_two_replicas_scales_the_deployment(
    kube_api: client.ApiClient, helm: Helm, release: Release
) -> None:
    apps = client.AppsV1Api(kube_api)
    policy = client.PolicyV1Api(kube_api)

    _install(helm, release, {})
    assert _gone(policy.read_namespaced_pod_disruption_budget, release.fullname, release.namespace)
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
    # Now with a standby: a drain may evict one replica, never the last one.
    pdb = policy.read_namespaced_pod_disruption_budget(release.fullname, release.namespace)
    assert pdb.spec.min_available == 1
    assert pdb.spec.selector.match_labels == after.spec.selector.match_labels
    wait_for(
        lambda: pdb_allows(policy, release) == 1,
        60,
        what=f"PodDisruptionBudget {release.fullname} to allow one disruption",
    )
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


def test_watch_namespaces_limit_the_service_account(
    kube_api: client.ApiClient,
    helm: Helm,
    release: Release,
    sa_kubeconfig: SaKubeconfig,
    more_namespaces: Namespaces,
) -> None:
    watched, other = more_namespaces(2)
    ns = release.namespace
    # NetworkPolicies too, with addresses: the API server validates what the chart renders.
    values = {
        "watchNamespaces": f"{{{watched}}}",
        "networkPolicy.enabled": "true",
        "networkPolicy.operator.apiServer": [{"cidr": "127.0.0.1/32", "ports": [{"port": 6443}]}],
        "networkPolicy.publisher.healthFrom": ["10.0.0.0/8"],
        "networkPolicy.publisher.livekit": [
            {
                "cidr": "198.51.100.0/24",
                "ports": [{"port": 50000, "endPort": 60000, "protocol": "UDP"}],
            }
        ],
        "networkPolicy.publisher.sources": [
            {"cidr": "192.0.2.0/24", "except": ["192.0.2.1/32"], "ports": [{"port": 554}]}
        ],
    }
    _install(helm, release, values)
    rbac = client.RbacAuthorizationV1Api(kube_api)
    networking = client.NetworkingV1Api(kube_api)
    source = _source_rules("cluster-role.yaml", "ClusterRole")

    # Stored by the API server: no ClusterRole, the ClusterRole's rules as a Role where watched.
    assert _gone(rbac.read_cluster_role, release.fullname)
    assert _gone(rbac.read_cluster_role_binding, release.fullname)
    role = rbac.read_namespaced_role(release.fullname, watched)
    assert kube_api.sanitize_for_serialization(role.rules) == source
    binding = rbac.read_namespaced_role_binding(release.fullname, watched)
    assert [(s.kind, s.name, s.namespace) for s in binding.subjects] == [
        ("ServiceAccount", release.fullname, ns)
    ]
    assert [r.metadata.name for r in rbac.list_namespaced_role(other).items] == []
    key_role = rbac.read_namespaced_role(release.key_role, ns)
    assert [(r.resources, r.resource_names, r.verbs) for r in key_role.rules] == [
        (["secrets"], [DEFAULT_KEY_SECRET], ["get"])
    ]
    assert networking.read_namespaced_network_policy(release.fullname, ns)
    assert networking.read_namespaced_network_policy(f"{release.fullname}-publisher", watched)
    assert not networking.list_namespaced_network_policy(other).items

    # Every resource the rules name is namespaced, as the generator assumes (a Role would
    # grant nothing on a cluster-scoped one): the API server's discovery says so.
    groups = [("", "v1")] + [
        (g.name, g.preferred_version.version)
        for g in client.ApisApi(kube_api).get_api_versions().groups
    ]
    served = {
        (group, r["name"]): r["namespaced"]
        for group, version in groups
        for r in _discovery(kube_api, group, version)
        if "/" not in r["name"]
    }
    for key in sorted(load_sync_module().NAMESPACED):
        assert served.get(key) is True, f"{key} is not a namespaced resource: {served.get(key)}"

    with kube.api_client(sa_kubeconfig(ns, release.fullname)) as api:
        # RBAC is served from informers; the first answer may predate the new Roles.
        wait_for(
            lambda: (
                _can(api, "create", "pods", watched)
                and _can(api, "get", "secrets", ns, DEFAULT_KEY_SECRET)
            ),
            30,
            what=f"the ServiceAccount to be allowed to create Pods in {watched}",
        )
        # In the watched namespace: everything deploy/rbac/cluster-role.yaml grants...
        for group, resource, verb in _grants(source):
            assert _can(api, verb, resource, watched, group=group), (verb, resource)
        # ...and in a namespace it does not watch, none of it.
        for group, resource, verb in _grants(source):
            assert not _can(api, verb, resource, other, group=group), (verb, resource)
        assert not _can(api, "get", "secrets", other, "anything")
        # Nor across all namespaces: no cluster-wide list or watch of anything.
        for group, resource in (
            ("", "pods"),
            ("", "secrets"),
            ("overshoot.ai", "overshootstreams"),
        ):
            for verb in ("get", "list", "watch"):
                assert not _can(api, verb, resource, "", group=group), (verb, resource)
        # The release namespace: the default API-key Secret, read by name, and nothing else.
        assert _can(api, "get", "secrets", ns, DEFAULT_KEY_SECRET)
        for verb in ("patch", "update", "delete"):
            assert not _can(api, verb, "secrets", ns, DEFAULT_KEY_SECRET), verb
        assert not _can(api, "get", "secrets", ns, "some-other-secret")
        for verb in ("list", "watch", "create"):
            assert not _can(api, verb, "secrets", ns), verb
        for verb, resource in (("create", "pods"), ("list", "pods"), ("create", "events")):
            assert not _can(api, verb, resource, ns), (verb, resource)
        assert not _can(api, "list", "overshootstreams", ns, group="overshoot.ai")
        # Discovery, how the operator waits for the CRD: allowed to every authenticated user
        # by system:discovery, so the chart grants nothing for it. Asked and done.
        for path in DISCOVERY_PATHS:
            assert _can_get_path(api, path), path
        resources = _discovery(api, "overshoot.ai", "v1alpha1")
        assert "overshootstreams" in {r["name"] for r in resources}
        # The Lease, as before.
        assert _may(api, "update", ns, release.fullname)
        assert not _may(api, "update", watched, release.fullname)


def test_operator_serves_watched_namespaces_with_the_charts_rbac(
    kube_api: client.ApiClient,
    helm: Helm,
    release: Release,
    sa_kubeconfig: SaKubeconfig,
    more_namespaces: Namespaces,
    emulator: EmulatorProcess,
    tmp_path: Path,
) -> None:
    """The real operator, as the chart's ServiceAccount with the chart's namespaced RBAC and
    the chart's own environment: a stream's whole life in a watched namespace, using the
    default API key from the release namespace (kwok runs no process, so the chart's Pod
    does not compete for the Lease)."""
    watched, other = more_namespaces(2)
    ns = release.namespace
    _install(helm, release, {"watchNamespaces": f"{{{watched}}}"})
    # A key of this test's own: the emulator counts the calls made with it.
    key = f"ovs_chart_rbac_{uuid.uuid4().hex}"
    put_api_key(kube_api, ns, key=key, name=DEFAULT_KEY_SECRET)
    deployment = client.AppsV1Api(kube_api).read_namespaced_deployment(release.fullname, ns)
    chart_env = _env(deployment.spec.template.spec.containers[0])
    settings = {name.removeprefix("OVERSHOOT_").lower(): value for name, value in chart_env.items()}
    # Only what a process outside the cluster must change: Overshoot is the emulator, and
    # the identity the Pod would take from its name.
    settings["api_url"] = emulator.api_url
    settings["leader_election_identity"] = "chart-rbac-test"
    assert settings["namespaces"] == watched
    assert settings["default_api_key_secret_namespace"] == ns

    # A stream the operator must leave alone, created first.
    manifest = streams.stream_manifest("cam")
    del manifest["spec"]["apiKeySecretRef"]  # the default key, from the release namespace
    streams.create_stream(kube_api, other, manifest)
    operator = OperatorProcess(
        kubeconfig=sa_kubeconfig(ns, release.fullname),
        settings=settings,
        log_path=tmp_path / "operator.log",
    )
    try:
        operator.start()
        streams.create_stream(kube_api, watched, manifest)
        stream_id = streams.wait_provisioned(kube_api, watched, "cam", timeout=60)
        publish = streams.publish_secret(kube_api, watched, "cam")
        assert publish is not None and publish["streamId"] == stream_id
        # Created with the default key, read from the release namespace through the Role
        # that names only that Secret.
        assert emulator.admin.calls(key)["create"] == 1
        assert (emulator.admin.stream(stream_id) or {}).get("state") == "active"
        # Events posted where the stream is (whatever their reasons).
        wait_for(
            lambda: any(
                e.source.component == "overshoot-operator"
                for e in streams.events(kube_api, watched)
            ),
            30,
            what=f"an Event from the operator in {watched}",
        )
        # The unwatched namespace's stream: no finalizer, no status, no children.
        untouched = streams.get_stream(kube_api, other, "cam")
        assert "status" not in untouched
        assert not untouched["metadata"].get("finalizers")
        assert streams.publish_secret(kube_api, other, "cam") is None
        assert streams.publisher_pod(kube_api, other, "cam") is None

        # Deletion: the remote stream released, the finalizer removed, the resource gone.
        streams.delete_stream(kube_api, watched, "cam")
        wait_for(
            lambda: streams.stream_gone(kube_api, watched, "cam"),
            60,
            what=f"OvershootStream {watched}/cam to be deleted",
        )
        remote = emulator.admin.stream(stream_id)
        assert remote is None or remote["state"] == "ended", remote
    finally:
        operator.stop()
        print(f"--- operator log ---\n{operator.logs()[-20000:]}")
    # Not one request was refused: the chart's RBAC is all the operator needed.
    # (the API server words every refusal "... is forbidden: User ... cannot ...").
    assert "forbidden" not in operator.logs().lower(), operator.logs()
