"""The chart rendered by the real helm binary, without a cluster: lint, the values schema,
the generated copies of deploy/crds and deploy/rbac, and the objects each option renders.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from chartkit import (
    CHART,
    MAXIMAL,
    RELEASE_NAMESPACE,
    ROOT,
    Helm,
    Render,
    in_namespace,
    kinds,
    load_sync_module,
    only,
    set_args,
)

from overshoot_operator.manifests import child_labels
from overshoot_operator.settings import OperatorSettings

pytestmark = pytest.mark.unit

CRD_SOURCE = ROOT / "deploy" / "crds" / "overshoot.ai_overshootstreams.yaml"
CRD_NAME = "overshootstreams.overshoot.ai"
RBAC = ROOT / "deploy" / "rbac"
FULLNAME = "ovs-overshoot-operator"
LEASE_ROLE = f"{FULLNAME}-leader-election"
KEY_ROLE = f"{FULLNAME}-default-api-key"
PUBLISHER_POLICY = f"{FULLNAME}-publisher"
# Both marks that keep the CRD (and every stream) when the chart stops rendering it: Helm
# reads the first, Argo CD's pruning only the second.
KEEP_ANNOTATIONS = {
    "helm.sh/resource-policy": "keep",
    "argocd.argoproj.io/sync-options": "Prune=false",
}
DNS_EGRESS = {"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]}
# OperatorSettings fields the chart does not expose, with the reason.
NOT_RENDERED = {
    # Changing it would orphan every stream's stored state; not a user setting.
    "annotation_prefix",
    # The kubelet probes the Pod IP: in a Pod, the default (all interfaces) is the only
    # value that works.
    "listen_host",
}
# OperatorSettings fields the chart renders from the Pod itself (the downward API), not
# from a value: each replica's identity in the Lease is its own Pod name.
FROM_THE_POD = {"leader_election_identity": "metadata.name"}
TIMING_RULE = (
    "leaderElection: needs leaseDurationSeconds > renewDeadlineSeconds > retryPeriodSeconds > 0"
)
NON_DEFAULT: dict[str, Any] = {
    "replicaCount": "2",
    "leaderElection.leaseDurationSeconds": "30",
    "leaderElection.renewDeadlineSeconds": "20",
    "leaderElection.retryPeriodSeconds": 2.5,
    "kubeRequestTimeoutSeconds": "20",
    "watchNamespaces": "{cameras,lobby}",
    "metrics.serviceMonitor.enabled": "true",
    "metrics.serviceMonitor.labels.release": "kube-prometheus",
    "metrics.podMonitor.enabled": "true",
    "metrics.podMonitor.interval": "15s",
    "crds.install": "false",
    "apiUrl": "http://emulator.dev.svc:8000/v1beta",
    "defaultApiKeySecret.name": "ovs-key",
    "defaultApiKeySecret.key": "token",
    "publisher.image.repository": "registry.local/publisher",
    "publisher.image.tag": "dev",
    "publisher.resources.limits.cpu": "2",
    "keepalive.intervalSeconds": "90",
    "statusPollSeconds": "15",
    "apiLimits.maxConcurrency": "8",
    "apiLimits.maxPerSecond": 2.5,
    "ports.health": "18081",
    "ports.metrics": "19090",
    "image.tag": "1.2.3",
}


def _rules(path: Any, kind: str = "ClusterRole") -> list[Any]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d and d["kind"] == kind]
    assert len(docs) == 1
    rules: list[Any] = docs[0]["rules"]
    return rules


def _container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    workload = only(objects, "Deployment", FULLNAME)
    containers = workload["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["operator"]
    container: dict[str, Any] = containers[0]
    return container


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


def _env_from_fields(container: dict[str, Any]) -> dict[str, str]:
    """The variables the kubelet fills in from the Pod: name -> fieldPath."""
    return {
        e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"]
        for e in container["env"]
        if "valueFrom" in e
    }


def _settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> OperatorSettings:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return OperatorSettings()


# --- generated copies: one source of truth -------------------------------------------------


def test_generated_files_are_current() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "hack" / "sync-chart.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_chart_crd_embeds_deploy_crd_byte_for_byte() -> None:
    sync = load_sync_module()
    template = (CHART / "templates" / "crds" / CRD_SOURCE.name).read_text()
    assert sync.unembed_crd(template) == CRD_SOURCE.read_text()


def test_rendered_crd_equals_deploy_crd_and_is_kept(render: Render) -> None:
    crd = only(render(), "CustomResourceDefinition", CRD_NAME)
    source = yaml.safe_load(CRD_SOURCE.read_text())
    metadata = crd.pop("metadata")
    assert crd == {k: v for k, v in source.items() if k != "metadata"}
    assert metadata["name"] == source["metadata"]["name"]
    assert metadata["annotations"] == KEEP_ANNOTATIONS
    assert metadata["labels"]["app.kubernetes.io/managed-by"] == "Helm"


def test_crd_metadata_comes_from_the_helper() -> None:
    # The generated template only calls the helper, so the annotations live in one place.
    template = (CHART / "templates" / "crds" / CRD_SOURCE.name).read_text()
    assert load_sync_module().METADATA_LINE in template
    code = [line for line in template.splitlines() if not line.lstrip().startswith("#")]
    assert not [line for line in code if "resource-policy" in line or "sync-options" in line]
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    assert "argocd.argoproj.io/sync-options: Prune=false" in helpers


def test_crd_keep_false_drops_both_policies(render: Render) -> None:
    crd = only(render({"crds.keep": "false"}), "CustomResourceDefinition", CRD_NAME)
    assert "annotations" not in crd["metadata"]


def test_crds_install_false_renders_no_crd(render: Render) -> None:
    objects = render({"crds.install": "false"})
    assert "CustomResourceDefinition" not in kinds(objects)
    assert "Deployment" in kinds(objects)


def test_cluster_role_rules_equal_deploy_rbac(render: Render) -> None:
    objects = render()
    role = only(objects, "ClusterRole", FULLNAME)
    assert role["rules"] == _rules(RBAC / "cluster-role.yaml")
    binding = only(objects, "ClusterRoleBinding", FULLNAME)
    assert binding["roleRef"]["name"] == FULLNAME
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": FULLNAME, "namespace": RELEASE_NAMESPACE}
    ]
    # One ClusterRole whatever the replica count (no optional peering role any more).
    for values in ({}, {"replicaCount": "3"}):
        names = [o["metadata"]["name"] for o in render(values) if o["kind"] == "ClusterRole"]
        assert names == [FULLNAME]


def test_lease_role_rules_equal_deploy_rbac_but_name_the_release_lease(render: Render) -> None:
    objects = render()
    role = only(objects, "Role", LEASE_ROLE)
    assert role["metadata"]["namespace"] == RELEASE_NAMESPACE
    source = _rules(RBAC / "role-leader-election.yaml", "Role")
    # deploy/rbac/ grants its own Lease; the chart grants the release's Lease and no other.
    assert [r.get("resourceNames") for r in source] == [None, ["overshoot-operator"]]
    assert [r.get("resourceNames") for r in role["rules"]] == [None, [FULLNAME]]
    without_names = [{k: v for k, v in r.items() if k != "resourceNames"} for r in role["rules"]]
    assert without_names == [{k: v for k, v in r.items() if k != "resourceNames"} for r in source]
    binding = only(objects, "RoleBinding", LEASE_ROLE)
    assert binding["metadata"]["namespace"] == RELEASE_NAMESPACE
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": LEASE_ROLE,
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": FULLNAME, "namespace": RELEASE_NAMESPACE}
    ]


def test_rbac_create_false_renders_no_rbac(render: Render) -> None:
    objects = render({"rbac.create": "false"})
    assert not {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"} & set(kinds(objects))
    # The operator still elects; the administrator grants the Lease under the same name.
    env = _env(_container(objects))
    assert env["OVERSHOOT_LEADER_ELECTION"] == "true"
    assert env["OVERSHOOT_LEADER_ELECTION_NAME"] == FULLNAME


def test_sync_refuses_resource_names_it_cannot_rename(tmp_path: Path) -> None:
    # The chart renames every resourceNames to its Lease: a rule naming anything else
    # (here a ConfigMap) would silently grant the wrong object, so the generator refuses it.
    docs = [d for d in yaml.safe_load_all((RBAC / "role-leader-election.yaml").read_text()) if d]
    role = next(d for d in docs if d["kind"] == "Role")
    role["rules"].append(
        {
            "apiGroups": [""],
            "resources": ["configmaps"],
            "resourceNames": ["overshoot-operator"],
            "verbs": ["get"],
        }
    )
    path = tmp_path / "role-leader-election.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    with pytest.raises(SystemExit, match="resourceNames must name only the Lease"):
        load_sync_module()._leader_election_rules(path)


def _cluster_role_with(tmp_path: Path, rule: dict[str, Any] | None, drop: str = "") -> Path:
    """deploy/rbac/cluster-role.yaml with `rule` added and the rules about `drop` removed."""
    doc = yaml.safe_load((RBAC / "cluster-role.yaml").read_text())
    doc["rules"] = [r for r in doc["rules"] if drop not in r["resources"]]
    if rule is not None:
        doc["rules"].append(rule)
    path = tmp_path / "cluster-role.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.parametrize(
    "rule",
    [
        # Cluster-scoped: a Role in a watched namespace would grant nothing.
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]},
        {
            "apiGroups": ["apiextensions.k8s.io"],
            "resources": ["customresourcedefinitions"],
            "verbs": ["get"],
        },
        {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list"]},
        # A Role cannot carry nonResourceURLs at all.
        {"nonResourceURLs": ["/metrics"], "verbs": ["get"]},
        # One namespaced and one cluster-scoped resource in the same rule.
        {"apiGroups": [""], "resources": ["pods", "persistentvolumes"], "verbs": ["get"]},
        {"apiGroups": ["*"], "resources": ["*"], "verbs": ["get"]},
    ],
    ids=["nodes", "crds", "namespaces", "non-resource", "mixed", "wildcard"],
)
def test_sync_refuses_operator_rules_a_role_cannot_grant(
    tmp_path: Path, rule: dict[str, Any]
) -> None:
    # With watchNamespaces the chart grants the operator's rules as Roles: a rule a Role
    # cannot grant would silently be missing there, so the generator refuses it.
    path = _cluster_role_with(tmp_path, rule)
    with pytest.raises(SystemExit, match="a Role grants only namespaced resources"):
        load_sync_module()._operator_rules(path)


def test_sync_derives_the_default_key_rule_from_the_source(tmp_path: Path) -> None:
    sync = load_sync_module()
    source = _rules(RBAC / "cluster-role.yaml")
    assert sync._default_api_key_rule(source, RBAC / "cluster-role.yaml") == {
        "apiGroups": [""],
        "resources": ["secrets"],
        "verbs": ["get"],
    }
    # A source without `get` on Secrets: the release-namespace rule would grant more than it.
    path = _cluster_role_with(tmp_path, None, drop="secrets")
    with pytest.raises(SystemExit, match="no rule grants `get` on Secrets"):
        sync._default_api_key_rule(_rules(path), path)


# --- lint and schema -------------------------------------------------------------------------


@pytest.mark.parametrize("values", [{}, NON_DEFAULT], ids=["defaults", "non-default"])
def test_helm_lint(helm: Helm, values: dict[str, Any]) -> None:
    result = helm(
        "lint", "--strict", str(CHART), "--namespace", RELEASE_NAMESPACE, *set_args(values)
    )
    assert "0 chart(s) failed" in result.stdout


def test_helm_lint_with_maximal_values(helm: Helm, render: Render, tmp_path: Path) -> None:
    # Every optional object and every list filled: lint --strict renders them all.
    path = tmp_path / "maximal.yaml"
    path.write_text(yaml.safe_dump(MAXIMAL))
    result = helm(
        "lint", "--strict", str(CHART), "--namespace", RELEASE_NAMESPACE, "--values", str(path)
    )
    assert "0 chart(s) failed" in result.stdout, result.stdout
    # ...and they are all there (lint would pass on a template that rendered nothing).
    objects = render(extra=["--values", str(path)])
    assert set(kinds(objects)) == {
        "CustomResourceDefinition",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "Deployment",
        "Service",
        "ServiceMonitor",
        "PodMonitor",
        "PodDisruptionBudget",
        "NetworkPolicy",
    }
    assert len([o for o in objects if o["kind"] == "NetworkPolicy"]) == 1 + 3


@pytest.mark.parametrize(
    ("key", "where"),
    [
        ("replicas", "at ''"),  # the common mistake: it is replicaCount
        ("crds.instal", "at '/crds'"),
        ("publisher.resources.requests.gpu", "at '/publisher/resources/requests'"),
        ("metrics.serviceMonitor.enable", "at '/metrics/serviceMonitor'"),
    ],
)
@pytest.mark.parametrize("command", ["lint", "template"])
def test_schema_rejects_unknown_keys(helm: Helm, command: str, key: str, where: str) -> None:
    unknown = key.rsplit(".", 1)[-1]
    result = helm(
        command,
        *(["ovs"] if command == "template" else []),
        str(CHART),
        "--set",
        f"{key}=1",
        check=False,
    )
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert where in output and f"additional properties '{unknown}' not allowed" in output, output


@pytest.mark.parametrize(
    "setting",
    [
        "keepalive.intervalSeconds=600",
        "replicaCount=0",
        "image.pullPolicy=Sometimes",
        "apiUrl=ftp://example.com",
        "watchNamespaces={Cameras}",
        "kubeRequestTimeoutSeconds=0",
        "kubeRequestTimeoutSeconds=121",
        "leaderElection.leaseDurationSeconds=1",
        "leaderElection.retryPeriodSeconds=0",
        "leaderElection.retryPeriodSeconds=61",
        "leaderElection.renew=5",
    ],
)
def test_schema_rejects_bad_values(helm: Helm, setting: str) -> None:
    result = helm("template", "ovs", str(CHART), "--set", setting, check=False)
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr, result.stderr


def _schema_objects(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        if node.get("type") == "object" or "properties" in node:
            found.append((path, node))
        for key, child in node.items():
            found.extend(_schema_objects(child, f"{path}/{key}"))
    return found


def test_schema_closes_every_object() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    # Kubernetes' Affinity parts are passed through for the API server to validate.
    passthrough = {
        f"/properties/affinity/properties/{p}"
        for p in ("nodeAffinity", "podAffinity", "podAntiAffinity")
    }
    open_objects = [
        path
        for path, node in _schema_objects(schema)
        if path not in passthrough
        and node.get("additionalProperties") is not False
        # A map with typed values (labels, annotations, nodeSelector) is closed too.
        and not isinstance(node.get("additionalProperties"), dict)
    ]
    assert open_objects == []


# --- values.yaml documents every value ----------------------------------------------------


def test_every_value_is_documented_name_first() -> None:
    lines = (CHART / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, str]] = []
    undocumented = []
    for number, line in enumerate(lines):
        match = re.match(r"^(\s*)([A-Za-z][\w-]*):", line)
        if not match:
            continue
        indent, key = len(match.group(1)), match.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, key))
        dotted = ".".join(k for _, k in stack)
        # The comment block right above the key; its first line names the key.
        above = number - 1
        while above >= 0 and lines[above].strip().startswith("#"):
            above -= 1
        block = [lines[i].strip() for i in range(above + 1, number)]
        if not block or not block[0].startswith(f"# {dotted} -- "):
            undocumented.append(dotted)
    assert undocumented == []


def test_values_and_schema_name_the_same_keys() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    definitions = schema["definitions"]

    def resolve(node: dict[str, Any]) -> dict[str, Any]:
        ref = node.get("$ref")
        return resolve(definitions[ref.rsplit("/", 1)[-1]]) if ref else node

    def missing(value: Any, node: dict[str, Any], path: str) -> list[str]:
        node = resolve(node)
        if not isinstance(value, dict) or "properties" not in node:
            return []
        out = [f"{path}.{k}" for k in value if k not in node["properties"]]
        for key, child in value.items():
            if key in node["properties"]:
                out += missing(child, node["properties"][key], f"{path}.{key}")
        return out

    assert missing(values, schema, "") == []


# --- the default render -----------------------------------------------------------------------


def test_default_render(render: Render, monkeypatch: pytest.MonkeyPatch) -> None:
    objects = render()
    assert kinds(objects) == sorted(
        [
            "ServiceAccount",
            "CustomResourceDefinition",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
            "Service",
            "Deployment",
        ]
    )
    # Keys do not belong in values: the chart never renders a Secret.
    assert all(o["kind"] != "Secret" for o in objects)
    for obj in objects:
        if obj["kind"] not in {"CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"}:
            assert obj["metadata"]["namespace"] == RELEASE_NAMESPACE, obj["kind"]

    deployment = only(objects, "Deployment", FULLNAME)
    assert deployment["spec"]["replicas"] == 1
    # Safe only because just the Lease holder acts: the new Pod starts before the old stops.
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
    }
    pod = deployment["spec"]["template"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod["metadata"]["labels"].items()
    assert pod["metadata"]["annotations"] == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": "9090",
        "prometheus.io/path": "/metrics",
    }
    spec = pod["spec"]
    assert spec["serviceAccountName"] == FULLNAME
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}

    container = _container(objects)
    assert container["image"] == "ghcr.io/overshoot-ai/overshoot-operator:0.1.0"
    assert container["command"] == ["overshoot-operator"]
    assert "args" not in container  # only --verbose would be one
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"health": 8081, "metrics": 9090}
    assert container["resources"]["limits"]["memory"] == "512Mi"
    # Local disk too (the logs and /tmp), below a limit that leaves room for /tmp's cap.
    assert container["resources"]["requests"]["ephemeral-storage"] == "64Mi"
    assert container["resources"]["limits"]["ephemeral-storage"] == "256Mi"
    assert spec["volumes"] == [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}]
    assert spec["affinity"] == _default_anti_affinity(deployment)

    # The rendered environment is exactly what the operator parses, with its defaults, except
    # where the chart knows better: its namespace, and leader election always on, on the
    # release's Lease. The identity comes from the Pod (below), so a Pod renders none.
    env = _env(container)
    settings = _settings_from(env, monkeypatch)
    defaults = OperatorSettings.model_construct()
    expected = {f: getattr(defaults, f) for f in OperatorSettings.model_fields if f != "namespaces"}
    expected["default_api_key_secret_namespace"] = RELEASE_NAMESPACE
    expected["leader_election"] = True
    expected["leader_election_namespace"] = RELEASE_NAMESPACE
    expected["leader_election_name"] = FULLNAME
    assert {f: getattr(settings, f) for f in expected} == expected
    assert settings.namespaces == []
    assert _env_from_fields(container) == {"OVERSHOOT_LEADER_ELECTION_IDENTITY": "metadata.name"}
    # The chart's defaults are the operator's (client-go's): 15 > 10 > 2.
    assert (
        settings.leader_lease_duration_seconds,
        settings.leader_renew_deadline_seconds,
        settings.leader_retry_period_seconds,
        settings.kube_request_timeout_seconds,
    ) == (15, 10, 2, 10)

    service = only(objects, "Service", FULLNAME)
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"


def test_every_user_setting_is_rendered(render: Render) -> None:
    container = _container(render())
    rendered = {e["name"] for e in container["env"]}
    assert len(rendered) == len(container["env"]), "a variable is rendered twice"
    expected = {
        f"OVERSHOOT_{field.upper()}"
        for field in OperatorSettings.model_fields
        if field not in NOT_RENDERED
    }
    assert expected - rendered == set()
    assert rendered - expected == set()  # no stray variables (kopf's POD_ID is gone too)
    from_pod = {f"OVERSHOOT_{field.upper()}": path for field, path in FROM_THE_POD.items()}
    assert _env_from_fields(container) == from_pod


def test_non_default_values_reach_the_operator(
    render: Render, monkeypatch: pytest.MonkeyPatch
) -> None:
    objects = render(NON_DEFAULT)
    container = _container(objects)
    assert container["image"] == "ghcr.io/overshoot-ai/overshoot-operator:1.2.3"
    settings = _settings_from(_env(container), monkeypatch)
    assert settings.api_url == "http://emulator.dev.svc:8000/v1beta"
    assert settings.default_api_key_secret_name == "ovs-key"
    assert settings.default_api_key_secret_key == "token"
    assert settings.publisher_image == "registry.local/publisher:dev"
    assert settings.publisher_cpu_limit == "2"
    assert settings.keepalive_interval_seconds == 90
    assert settings.status_poll_seconds == 15
    assert settings.api_max_concurrency == 8
    assert settings.api_max_per_second == 2.5
    assert settings.namespaces == ["cameras", "lobby"]
    assert settings.kube_request_timeout_seconds == 20
    assert (
        settings.leader_lease_duration_seconds,
        settings.leader_renew_deadline_seconds,
        settings.leader_retry_period_seconds,
    ) == (30, 20, 2.5)
    assert (settings.health_port, settings.metrics_port) == (18081, 19090)
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {
        "health": 18081,
        "metrics": 19090,
    }
    pod = only(objects, "Deployment", FULLNAME)["spec"]["template"]
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == "19090"


def test_publisher_image_follows_the_operator_image(render: Render) -> None:
    env = _env(_container(render({"image.repository": "registry.local/ovs", "image.tag": "7"})))
    assert env["OVERSHOOT_PUBLISHER_IMAGE"] == "registry.local/ovs:7"


# --- several replicas: leader election ------------------------------------------------------


def test_two_replicas_scale_the_one_deployment(render: Render) -> None:
    one, two = render(), render({"replicaCount": "2"})
    # Only the replica count differs, and a disruption budget is added: same Pod template
    # (so scaling rolls nothing), nothing replaced.
    assert kinds(two) == sorted([*kinds(one), "PodDisruptionBudget"])
    assert "StatefulSet" not in kinds(two)
    deployment = only(two, "Deployment", FULLNAME)
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["template"] == only(one, "Deployment")["spec"]["template"]
    assert deployment["spec"]["strategy"] == only(one, "Deployment")["spec"]["strategy"]
    container = _container(two)
    assert container["command"] == ["overshoot-operator"]
    assert "args" not in container  # no --peering or --priority: they are gone
    env = _env(container)
    assert env["OVERSHOOT_LEADER_ELECTION"] == "true"
    assert env["OVERSHOOT_LEADER_ELECTION_NAMESPACE"] == RELEASE_NAMESPACE
    assert env["OVERSHOOT_LEADER_ELECTION_NAME"] == FULLNAME
    assert _env_from_fields(container) == {"OVERSHOOT_LEADER_ELECTION_IDENTITY": "metadata.name"}


def test_lease_name_follows_the_release(render: Render) -> None:
    objects = render({"replicaCount": "3"}, release="cams-eu")
    name = "cams-eu-overshoot-operator"
    assert (
        _env(only(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0])[
            "OVERSHOOT_LEADER_ELECTION_NAME"
        ]
        == name
    )
    role = only(objects, "Role", f"{name}-leader-election")
    assert [r["resourceNames"] for r in role["rules"] if "resourceNames" in r] == [[name]]
    assert only(objects, "Deployment")["spec"]["replicas"] == 3


@pytest.mark.parametrize(
    ("lease", "renew", "retry"),
    [
        (15, 15, 2),  # the leader could still act when a standby takes over
        (10, 15, 2),
        (15, 10, 10),  # one failed renewal would already pass the deadline
        (15, 10, 12),
    ],
)
def test_bad_leader_election_timing_fails_the_render(
    helm: Helm, lease: int, renew: float, retry: float
) -> None:
    values = {
        "leaderElection.leaseDurationSeconds": lease,
        "leaderElection.renewDeadlineSeconds": renew,
        "leaderElection.retryPeriodSeconds": retry,
    }
    result = helm("template", "ovs", str(CHART), *set_args(values), check=False)
    assert result.returncode != 0
    assert TIMING_RULE in result.stderr, result.stderr
    assert f"got {lease}, {renew}, {retry}" in result.stderr, result.stderr


@pytest.mark.parametrize(
    "values",
    [
        # --set gives integers, values.yaml and --set-json floats: both must compare.
        {"leaderElection.renewDeadlineSeconds": "14", "leaderElection.retryPeriodSeconds": 0.5},
        {"leaderElection.renewDeadlineSeconds": 14.5, "leaderElection.retryPeriodSeconds": "14"},
    ],
)
def test_good_leader_election_timing_renders(
    render: Render, monkeypatch: pytest.MonkeyPatch, values: dict[str, Any]
) -> None:
    settings = _settings_from(_env(_container(render(values))), monkeypatch)
    assert settings.leader_lease_duration_seconds == 15
    assert settings.leader_renew_deadline_seconds == float(
        values["leaderElection.renewDeadlineSeconds"]
    )
    assert settings.leader_retry_period_seconds == float(
        values["leaderElection.retryPeriodSeconds"]
    )


def test_lease_duration_is_whole_seconds(helm: Helm) -> None:
    # The Lease stores whole seconds: 15.5 would be cut to 15 for every standby.
    values = {"leaderElection.leaseDurationSeconds": 15.5}
    result = helm("template", "ovs", str(CHART), *set_args(values), check=False)
    assert result.returncode != 0
    assert "at '/leaderElection/leaseDurationSeconds'" in result.stderr, result.stderr


@pytest.mark.parametrize("key", ["leaderElection", "kubeRequestTimeoutSeconds", "networkPolicy"])
def test_values_without_the_new_keys_fail_with_the_upgrade_advice(helm: Helm, key: str) -> None:
    # What `helm upgrade --reuse-values` from an older chart renders with (0.1.x has neither
    # of the first two keys, 0.2.x no networkPolicy): the old chart's values, which lack the
    # new keys (`null` removes a key, as they were never there).
    result = helm("template", "ovs", str(CHART), "--set", f"{key}=null", check=False)
    assert result.returncode != 0
    assert f"{key} is missing from the values" in result.stderr, result.stderr
    assert "--reset-then-reuse-values" in result.stderr


# --- watched namespaces -------------------------------------------------------------------


def test_watched_namespaces_are_rendered(render: Render) -> None:
    objects = render({"watchNamespaces": "{cameras,lobby}"})
    assert _env(_container(objects))["OVERSHOOT_NAMESPACES"] == "cameras,lobby"


@pytest.mark.parametrize("pattern", ["cameras-*", "cam?", "!lobby"])
@pytest.mark.parametrize("replicas", ["1", "2"])
def test_namespace_patterns_are_refused(helm: Helm, pattern: str, replicas: str) -> None:
    # The operator watches namespaces by exact name; kopf drops a pattern without a word.
    values = {"replicaCount": replicas, "watchNamespaces": f"{{lobby,{pattern}}}"}
    result = helm("template", "ovs", str(CHART), *set_args(values), check=False)
    assert result.returncode != 0
    assert f'watchNamespaces: "{pattern}" is a pattern' in result.stderr, result.stderr


# --- monitoring -------------------------------------------------------------------------------


def test_monitors_are_off_by_default(render: Render) -> None:
    assert not {"ServiceMonitor", "PodMonitor"} & set(kinds(render()))


def test_service_monitor_and_pod_monitor(render: Render) -> None:
    objects = render(NON_DEFAULT)
    selector = only(objects, "Deployment", FULLNAME)["spec"]["selector"]["matchLabels"]

    service_monitor = only(objects, "ServiceMonitor", FULLNAME)
    assert service_monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert service_monitor["metadata"]["labels"]["release"] == "kube-prometheus"
    assert service_monitor["spec"]["selector"]["matchLabels"] == selector
    assert service_monitor["spec"]["endpoints"] == [
        {"port": "metrics", "path": "/metrics", "interval": "30s"}
    ]
    service = only(objects, "Service", FULLNAME)
    assert selector.items() <= service["metadata"]["labels"].items()
    assert service["spec"]["ports"][0]["port"] == 19090

    pod_monitor = only(objects, "PodMonitor", FULLNAME)
    assert pod_monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert pod_monitor["spec"]["selector"]["matchLabels"] == selector
    assert pod_monitor["spec"]["podMetricsEndpoints"] == [
        {"port": "metrics", "path": "/metrics", "interval": "15s"}
    ]
    assert pod_monitor["spec"]["namespaceSelector"] == {"matchNames": [RELEASE_NAMESPACE]}


def test_scrape_annotations_can_be_turned_off(render: Render) -> None:
    pod = only(render({"metrics.scrapeAnnotations": "false"}), "Deployment")["spec"]["template"]
    assert not any(k.startswith("prometheus.io/") for k in pod["metadata"]["annotations"] or {})


def test_existing_service_account(render: Render) -> None:
    objects = render({"serviceAccount.create": "false", "serviceAccount.name": "ops-sa"})
    assert "ServiceAccount" not in kinds(objects)
    assert only(objects, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "ops-sa"
    assert only(objects, "ClusterRoleBinding")["subjects"][0]["name"] == "ops-sa"
    assert only(objects, "RoleBinding", LEASE_ROLE)["subjects"][0]["name"] == "ops-sa"


# --- high availability: disruption budget and spreading ---------------------------------


def _default_anti_affinity(deployment: dict[str, Any]) -> dict[str, Any]:
    """The chart's default: prefer a node without another replica of this release."""
    selector = deployment["spec"]["selector"]["matchLabels"]
    return {
        "podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 100,
                    "podAffinityTerm": {
                        "topologyKey": "kubernetes.io/hostname",
                        "labelSelector": {"matchLabels": selector},
                    },
                }
            ]
        }
    }


def test_one_replica_has_no_disruption_budget(render: Render) -> None:
    # minAvailable 1 of 1 would block every drain of the operator's node.
    assert "PodDisruptionBudget" not in kinds(render())


@pytest.mark.parametrize("replicas", ["2", "5"])
def test_ha_renders_a_disruption_budget_and_spreads_replicas(render: Render, replicas: str) -> None:
    objects = render({"replicaCount": replicas})
    deployment = only(objects, "Deployment", FULLNAME)
    pdb = only(objects, "PodDisruptionBudget", FULLNAME)
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["metadata"]["namespace"] == RELEASE_NAMESPACE
    assert pdb["spec"] == {
        "minAvailable": 1,
        "unhealthyPodEvictionPolicy": "AlwaysAllow",
        "selector": deployment["spec"]["selector"],
    }
    pod = deployment["spec"]["template"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    affinity = pod["spec"]["affinity"]
    assert affinity == _default_anti_affinity(deployment)
    # The term selects this release's operator Pods, and only them.
    term = affinity["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]
    selector = term["podAffinityTerm"]["labelSelector"]["matchLabels"]
    assert selector["app.kubernetes.io/instance"] == "ovs"
    assert selector.items() <= pod["metadata"]["labels"].items()


def test_user_affinity_replaces_the_default(render: Render) -> None:
    mine = {
        "podAntiAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [
                {"topologyKey": "topology.kubernetes.io/zone", "labelSelector": {}}
            ]
        }
    }
    for values in ({"affinity": mine}, {"affinity": mine, "replicaCount": "3"}):
        pod = only(render(values), "Deployment")["spec"]["template"]
        assert pod["spec"]["affinity"] == mine
    node_only = {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}}
    pod = only(render({"affinity": node_only, "replicaCount": "2"}), "Deployment")
    assert pod["spec"]["template"]["spec"]["affinity"] == node_only


# --- watched namespaces: RBAC there and nowhere else ------------------------------------


def _subjects(binding: dict[str, Any]) -> list[dict[str, Any]]:
    subjects: list[dict[str, Any]] = binding["subjects"]
    return subjects


@pytest.mark.parametrize("replicas", ["1", "2"])
def test_watch_namespaces_grant_roles_only_there(render: Render, replicas: str) -> None:
    objects = render({"watchNamespaces": "{cameras,lobby}", "replicaCount": replicas})
    # Nothing cluster-wide: no ClusterRole could grant Secrets or Pods elsewhere.
    assert not {"ClusterRole", "ClusterRoleBinding"} & set(kinds(objects))
    source = _rules(RBAC / "cluster-role.yaml")
    sa = [{"kind": "ServiceAccount", "name": FULLNAME, "namespace": RELEASE_NAMESPACE}]
    for ns in ("cameras", "lobby"):
        role = only(objects, "Role", FULLNAME, namespace=ns)
        assert role["rules"] == source
        binding = only(objects, "RoleBinding", FULLNAME, namespace=ns)
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": FULLNAME,
        }
        assert _subjects(binding) == sa
        assert in_namespace(objects, "Role", ns) == [FULLNAME]
    # The release namespace, not watched: the default key's Secret, by name, and the Lease.
    assert in_namespace(objects, "Role", RELEASE_NAMESPACE) == [KEY_ROLE, LEASE_ROLE]
    key_role = only(objects, "Role", KEY_ROLE)
    assert key_role["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["secrets"],
            "resourceNames": ["overshoot-api-key"],
            "verbs": ["get"],
        }
    ]
    key_binding = only(objects, "RoleBinding", KEY_ROLE)
    assert key_binding["metadata"]["namespace"] == RELEASE_NAMESPACE
    assert key_binding["roleRef"]["name"] == KEY_ROLE
    assert _subjects(key_binding) == sa
    assert only(objects, "Role", LEASE_ROLE)["rules"] == only(render(), "Role", LEASE_ROLE)["rules"]
    # The namespaced Roles grant exactly what the ClusterRole grants cluster-wide.
    cluster_wide = only(render({"replicaCount": replicas}), "ClusterRole", FULLNAME)
    assert cluster_wide["rules"] == source


def test_default_key_role_names_the_configured_secret(render: Render) -> None:
    values = {"watchNamespaces": "{cameras}", "defaultApiKeySecret.name": "ovs-key"}
    role = only(render(values), "Role", KEY_ROLE)
    assert [r["resourceNames"] for r in role["rules"]] == [["ovs-key"]]


def test_watched_release_namespace_needs_no_key_role(render: Render) -> None:
    # The watched namespace's Role already lets it read the Secret (and post Events) there.
    objects = render({"watchNamespaces": f"{{cameras,{RELEASE_NAMESPACE}}}"})
    assert in_namespace(objects, "Role", RELEASE_NAMESPACE) == [FULLNAME, LEASE_ROLE]
    assert in_namespace(objects, "RoleBinding", RELEASE_NAMESPACE) == [FULLNAME, LEASE_ROLE]
    assert only(objects, "Role", FULLNAME, namespace=RELEASE_NAMESPACE)["rules"] == _rules(
        RBAC / "cluster-role.yaml"
    )


def test_watch_namespaces_with_rbac_create_false_render_no_rbac(render: Render) -> None:
    objects = render({"watchNamespaces": "{cameras}", "rbac.create": "false"})
    assert not {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"} & set(kinds(objects))


def test_watch_namespaces_with_an_existing_service_account(render: Render) -> None:
    values = {
        "watchNamespaces": "{cameras}",
        "serviceAccount.create": "false",
        "serviceAccount.name": "ops-sa",
    }
    objects = render(values)
    for name, ns in ((FULLNAME, "cameras"), (KEY_ROLE, RELEASE_NAMESPACE)):
        binding = only(objects, "RoleBinding", name, namespace=ns)
        assert _subjects(binding) == [
            {"kind": "ServiceAccount", "name": "ops-sa", "namespace": RELEASE_NAMESPACE}
        ]


# --- NetworkPolicy ------------------------------------------------------------------------


def _policy_ports(rule: dict[str, Any]) -> list[tuple[str, int, int | None]]:
    return [(p["protocol"], p["port"], p.get("endPort")) for p in rule.get("ports", [])]


def test_network_policies_are_off_by_default(render: Render) -> None:
    assert "NetworkPolicy" not in kinds(render())
    assert "NetworkPolicy" not in kinds(render({"watchNamespaces": "{cameras}"}))


def test_operator_network_policy(render: Render) -> None:
    objects = render({"networkPolicy.enabled": "true", "ports.health": "18081"})
    policy = only(objects, "NetworkPolicy", FULLNAME)
    assert policy["metadata"]["namespace"] == RELEASE_NAMESPACE
    spec = policy["spec"]
    deployment = only(objects, "Deployment", FULLNAME)
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert spec["podSelector"] == {"matchLabels": deployment["spec"]["selector"]["matchLabels"]}
    assert spec["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    # In: the two ports the container serves, and no other.
    assert spec["ingress"] == [
        {"ports": [{"port": 18081, "protocol": "TCP"}, {"port": 9090, "protocol": "TCP"}]}
    ]
    served = {p["containerPort"] for p in _container(objects)["ports"]}
    assert {p["port"] for p in spec["ingress"][0]["ports"]} == served
    # Out: DNS; the API server (no address given: any address on 443 and 6443); Overshoot.
    assert spec["egress"] == [
        DNS_EGRESS,
        {"ports": [{"port": 443, "protocol": "TCP"}, {"port": 6443, "protocol": "TCP"}]},
        {"ports": [{"port": 443, "protocol": "TCP"}]},
    ]
    # The operator's policy only: it watches the whole cluster, publishers could be anywhere.
    assert [o["metadata"]["name"] for o in objects if o["kind"] == "NetworkPolicy"] == [FULLNAME]


def test_operator_network_policy_with_the_api_server_address(render: Render) -> None:
    api_server = [
        {"cidr": "10.0.0.10/32", "ports": [{"port": 6443}]},
        {"cidr": "fd00::/64", "except": ["fd00::1/128"]},
    ]
    objects = render(
        {"networkPolicy.enabled": "true", "networkPolicy.operator.apiServer": api_server}
    )
    egress = only(objects, "NetworkPolicy", FULLNAME)["spec"]["egress"]
    assert egress[1:3] == [
        {
            "to": [{"ipBlock": {"cidr": "10.0.0.10/32"}}],
            "ports": [{"port": 6443, "protocol": "TCP"}],
        },
        # No ports: every port of that address.
        {"to": [{"ipBlock": {"cidr": "fd00::/64", "except": ["fd00::1/128"]}}]},
    ]
    assert len(egress) == 4  # DNS, the two API server entries, Overshoot


@pytest.mark.parametrize(
    ("url", "port"),
    [
        ("https://api.overshoot.ai/v1", 443),
        ("http://emulator.dev.svc:8000/v1beta", 8000),
        ("http://emulator.dev.svc/v1", 80),
        ("https://[fd00::5]:8443/v1", 8443),
        ("https://[fd00::5]/v1", 443),
    ],
)
def test_operator_network_policy_allows_the_api_urls_port(
    render: Render, url: str, port: int
) -> None:
    objects = render({"networkPolicy.enabled": "true", "apiUrl": url})
    egress = only(objects, "NetworkPolicy", FULLNAME)["spec"]["egress"]
    assert egress[-1] == {"ports": [{"port": port, "protocol": "TCP"}]}


def test_publisher_network_policy_in_each_watched_namespace(
    render: Render, monkeypatch: pytest.MonkeyPatch
) -> None:
    values = {"networkPolicy.enabled": "true", "watchNamespaces": "{cameras,lobby}"}
    objects = render(values)
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    assert sorted((p["metadata"]["namespace"], p["metadata"]["name"]) for p in policies) == [
        ("cameras", PUBLISHER_POLICY),
        ("lobby", PUBLISHER_POLICY),
        (RELEASE_NAMESPACE, FULLNAME),
    ]
    settings = _settings_from(_env(_container(objects)), monkeypatch)
    for ns in ("cameras", "lobby"):
        spec = only(objects, "NetworkPolicy", PUBLISHER_POLICY, namespace=ns)["spec"]
        # Selects what the operator puts on every publisher Pod (and no operator Pod).
        selector = spec["podSelector"]["matchLabels"]
        assert selector.items() <= child_labels("lobby-cam").items()
        operator_labels = only(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
        assert not selector.items() <= operator_labels.items()
        assert spec["policyTypes"] == ["Ingress", "Egress"]
        # In: the publisher's health port (the one the operator configures), from anywhere.
        assert spec["ingress"] == [
            {"ports": [{"port": settings.publisher_health_port, "protocol": "TCP"}]}
        ]
        # Out: DNS, LiveKit's ports on any address, and (sources unknown) everything.
        dns, livekit, sources = spec["egress"]
        assert dns == DNS_EGRESS
        assert "to" not in livekit
        assert _policy_ports(livekit) == [
            ("TCP", 443, None),
            ("TCP", 7881, None),
            ("UDP", 3478, None),
            ("UDP", 50000, 60000),
        ]
        assert sources == {}


def test_publisher_network_policy_follows_the_publisher_health_port(render: Render) -> None:
    values = {
        "networkPolicy.enabled": "true",
        "watchNamespaces": "{cameras}",
        "publisher.healthPort": "8099",
    }
    spec = only(render(values), "NetworkPolicy", PUBLISHER_POLICY)["spec"]
    assert spec["ingress"][0]["ports"] == [{"port": 8099, "protocol": "TCP"}]


def test_publisher_network_policy_with_addresses(render: Render) -> None:
    values = {
        "networkPolicy.enabled": "true",
        "watchNamespaces": "{cameras}",
        "networkPolicy.publisher.healthFrom": ["10.1.0.0/16"],
        "networkPolicy.publisher.livekit": [
            {
                "cidr": "203.0.113.0/24",
                "ports": [{"port": 50000, "endPort": 60000, "protocol": "UDP"}],
            }
        ],
        "networkPolicy.publisher.sources": [
            {"cidr": "10.0.0.0/24", "ports": [{"port": 554}]},
            {"cidr": "198.51.100.7/32"},
        ],
    }
    spec = only(render(values), "NetworkPolicy", PUBLISHER_POLICY)["spec"]
    assert spec["ingress"] == [
        {
            "ports": [{"port": 8080, "protocol": "TCP"}],
            "from": [{"ipBlock": {"cidr": "10.1.0.0/16"}}],
        }
    ]
    assert spec["egress"] == [
        DNS_EGRESS,
        {
            "to": [{"ipBlock": {"cidr": "203.0.113.0/24"}}],
            "ports": [{"port": 50000, "endPort": 60000, "protocol": "UDP"}],
        },
        {"to": [{"ipBlock": {"cidr": "10.0.0.0/24"}}], "ports": [{"port": 554, "protocol": "TCP"}]},
        {"to": [{"ipBlock": {"cidr": "198.51.100.7/32"}}]},
    ]


def test_publisher_network_policy_namespaces_when_cluster_wide(render: Render) -> None:
    values = {"networkPolicy.enabled": "true", "networkPolicy.publisher.namespaces": "{cams,lab}"}
    objects = render(values)
    assert in_namespace(objects, "NetworkPolicy", "cams") == [PUBLISHER_POLICY]
    assert in_namespace(objects, "NetworkPolicy", "lab") == [PUBLISHER_POLICY]
    # With watchNamespaces the watched ones win: a publisher runs only where a stream is served.
    objects = render({**values, "watchNamespaces": "{cameras}"})
    assert sorted(o["metadata"]["namespace"] for o in objects if o["kind"] == "NetworkPolicy") == [
        "cameras",
        RELEASE_NAMESPACE,
    ]


@pytest.mark.parametrize(
    "values",
    [
        {"networkPolicy.operator.apiServer": [{"cidr": "10.0.0.10"}]},  # no prefix length
        {"networkPolicy.operator.apiServer": [{"ports": [{"port": 6443}]}]},  # no cidr
        {"networkPolicy.operator.apiServer": [{"cidr": "10.0.0.0/8", "port": 6443}]},
        {"networkPolicy.publisher.livekit": [{"cidr": "0.0.0.0/0", "ports": [{"port": 0}]}]},
        {
            "networkPolicy.publisher.sources": [
                {"cidr": "0.0.0.0/0", "ports": [{"port": 554, "protocol": "ICMP"}]}
            ]
        },
        {"networkPolicy.publisher.healthFrom": ["nodes"]},
        {"networkPolicy.publisher.namespaces": ["Cameras"]},
        {"networkPolicy.egress": []},
    ],
)
def test_schema_rejects_bad_network_policy_values(helm: Helm, values: dict[str, Any]) -> None:
    result = helm("template", "ovs", str(CHART), *set_args(values), check=False)
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr, result.stderr
