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
    RELEASE_NAMESPACE,
    ROOT,
    Helm,
    Render,
    kinds,
    load_sync_module,
    only,
    set_args,
)

from overshoot_operator.settings import OperatorSettings

pytestmark = pytest.mark.unit

CRD_SOURCE = ROOT / "deploy" / "crds" / "overshoot.ai_overshootstreams.yaml"
CRD_NAME = "overshootstreams.overshoot.ai"
RBAC = ROOT / "deploy" / "rbac"
FULLNAME = "ovs-overshoot-operator"
LEASE_ROLE = f"{FULLNAME}-leader-election"
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
    assert metadata["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert metadata["labels"]["app.kubernetes.io/managed-by"] == "Helm"


def test_crd_keep_false_drops_the_policy(render: Render) -> None:
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


# --- lint and schema -------------------------------------------------------------------------


@pytest.mark.parametrize("values", [{}, NON_DEFAULT], ids=["defaults", "non-default"])
def test_helm_lint(helm: Helm, values: dict[str, Any]) -> None:
    result = helm(
        "lint", "--strict", str(CHART), "--namespace", RELEASE_NAMESPACE, *set_args(values)
    )
    assert "0 chart(s) failed" in result.stdout


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
    # Only the replica count differs: same kinds, same Pod template, nothing replaced.
    assert kinds(two) == kinds(one)
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


@pytest.mark.parametrize("key", ["leaderElection", "kubeRequestTimeoutSeconds"])
def test_values_without_the_new_keys_fail_with_the_upgrade_advice(helm: Helm, key: str) -> None:
    # What `helm upgrade --reuse-values` from chart 0.1.x renders with: the old chart's
    # values, which lack the new keys (`null` removes a key, as they were never there).
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
