"""The chart rendered by the real helm binary, without a cluster: lint, the values schema,
the generated copies of deploy/crds and deploy/rbac, and the objects each option renders.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
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
# OperatorSettings fields the chart does not expose, with the reason.
NOT_RENDERED = {
    # Changing it would orphan every stream's stored state; not a user setting.
    "annotation_prefix",
    # The kubelet probes the Pod IP: in a Pod, the default (all interfaces) is the only
    # value that works.
    "listen_host",
}
NON_DEFAULT: dict[str, Any] = {
    "replicaCount": "2",
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


def _container(objects: list[dict[str, Any]], kind: str = "Deployment") -> dict[str, Any]:
    workload = only(objects, kind, FULLNAME)
    containers = workload["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["operator"]
    container: dict[str, Any] = containers[0]
    return container


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


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


def test_kopf_peering_crds_are_what_kopf_watches() -> None:
    # kopf's own names for its peering resources (kopf.dev/v1, cluster and namespaced).
    from kopf._cogs.structs import references

    docs = list(yaml.safe_load_all((CHART / "crds" / "kopf-peering.yaml").read_text()))
    served = {
        (d["spec"]["group"], v["name"], d["spec"]["names"]["plural"], d["spec"]["scope"])
        for d in docs
        for v in d["spec"]["versions"]
        if v["served"]
    }
    cluster, namespaced = references.CLUSTER_PEERINGS_K, references.NAMESPACED_PEERINGS_K
    assert served == {
        (cluster.group, cluster.version, cluster.any_name, "Cluster"),
        (namespaced.group, namespaced.version, namespaced.any_name, "Namespaced"),
    }


def test_cluster_role_rules_equal_deploy_rbac(render: Render) -> None:
    objects = render()
    role = only(objects, "ClusterRole", FULLNAME)
    assert role["rules"] == _rules(RBAC / "cluster-role.yaml")
    binding = only(objects, "ClusterRoleBinding", FULLNAME)
    assert binding["roleRef"]["name"] == FULLNAME
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": FULLNAME, "namespace": RELEASE_NAMESPACE}
    ]
    # Standalone: no peering role.
    assert [o["metadata"]["name"] for o in objects if o["kind"] == "ClusterRole"] == [FULLNAME]


def test_peering_role_rules_equal_deploy_rbac_optional(render: Render) -> None:
    objects = render({"replicaCount": "2"})
    role = only(objects, "ClusterRole", f"{FULLNAME}-peering")
    assert role["rules"] == _rules(RBAC / "optional" / "kopf-peering.yaml")
    binding = only(objects, "ClusterRoleBinding", f"{FULLNAME}-peering")
    assert binding["subjects"][0]["name"] == FULLNAME


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
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
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
    assert "args" not in container  # standalone
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"health": 8081, "metrics": 9090}
    assert container["resources"]["limits"]["memory"] == "512Mi"

    # The rendered environment is exactly what the operator parses, with its defaults.
    env = _env(container)
    settings = _settings_from(env, monkeypatch)
    defaults = OperatorSettings.model_construct()
    expected = {f: getattr(defaults, f) for f in OperatorSettings.model_fields if f != "namespaces"}
    expected["default_api_key_secret_namespace"] = RELEASE_NAMESPACE
    assert {f: getattr(settings, f) for f in expected} == expected
    assert settings.namespaces == []

    service = only(objects, "Service", FULLNAME)
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"


def test_every_user_setting_is_rendered(render: Render) -> None:
    env = _env(_container(render()))
    expected = {
        f"OVERSHOOT_{field.upper()}"
        for field in OperatorSettings.model_fields
        if field not in NOT_RENDERED
    }
    assert expected - env.keys() == set()
    assert {n for n in env if n.startswith("OVERSHOOT_")} - expected == set()


def test_non_default_values_reach_the_operator(
    render: Render, monkeypatch: pytest.MonkeyPatch
) -> None:
    objects = render(NON_DEFAULT)
    container = _container(objects, "StatefulSet")
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
    assert (settings.health_port, settings.metrics_port) == (18081, 19090)
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {
        "health": 18081,
        "metrics": 19090,
    }
    pod = only(objects, "StatefulSet", FULLNAME)["spec"]["template"]
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == "19090"


def test_publisher_image_follows_the_operator_image(render: Render) -> None:
    env = _env(_container(render({"image.repository": "registry.local/ovs", "image.tag": "7"})))
    assert env["OVERSHOOT_PUBLISHER_IMAGE"] == "registry.local/ovs:7"


# --- peering -------------------------------------------------------------------------------


def test_two_replicas_run_a_statefulset_with_peering(render: Render) -> None:
    objects = render({"replicaCount": "2"})
    assert "Deployment" not in kinds(objects)
    statefulset = only(objects, "StatefulSet", FULLNAME)
    assert statefulset["spec"]["replicas"] == 2
    assert statefulset["spec"]["serviceName"] == FULLNAME
    assert statefulset["spec"]["podManagementPolicy"] == "Parallel"

    container = _container(objects, "StatefulSet")
    assert container["command"] == ["overshoot-operator"]
    assert container["args"] == [f"--peering={FULLNAME}", "--priority=$(POD_INDEX)"]
    from_fields = {
        e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"]
        for e in container["env"]
        if "valueFrom" in e
    }
    # Distinct priorities: the StatefulSet ordinal; kopf's identity: the Pod name.
    assert from_fields == {
        "POD_INDEX": "metadata.labels['apps.kubernetes.io/pod-index']",
        "POD_ID": "metadata.name",
    }

    peering = only(objects, "ClusterKopfPeering")
    assert peering["apiVersion"] == "kopf.dev/v1"
    assert peering["metadata"]["name"] == FULLNAME != "default"
    assert "KopfPeering" not in kinds(objects)


def test_peering_name_follows_the_release(render: Render) -> None:
    objects = render({"replicaCount": "3"}, release="cams-eu")
    assert only(objects, "ClusterKopfPeering")["metadata"]["name"] == "cams-eu-overshoot-operator"
    assert only(objects, "StatefulSet")["spec"]["replicas"] == 3


def test_peering_with_watched_namespaces_uses_a_kopfpeering_in_each(render: Render) -> None:
    objects = render({"replicaCount": "2", "watchNamespaces": "{cameras,lobby}"})
    peerings = [o for o in objects if o["kind"] == "KopfPeering"]
    assert sorted(p["metadata"]["namespace"] for p in peerings) == ["cameras", "lobby"]
    assert {p["metadata"]["name"] for p in peerings} == {FULLNAME}
    assert "ClusterKopfPeering" not in kinds(objects)
    assert _env(_container(objects, "StatefulSet"))["OVERSHOOT_NAMESPACES"] == "cameras,lobby"


def test_peering_refuses_namespace_patterns(helm: Helm) -> None:
    result = helm(
        "template",
        "ovs",
        str(CHART),
        "--set",
        "replicaCount=2",
        "--set",
        "watchNamespaces={cameras-*}",
        check=False,
    )
    assert result.returncode != 0
    assert 'watchNamespaces: "cameras-*" is a pattern' in result.stderr


def test_one_replica_accepts_namespace_patterns(render: Render) -> None:
    objects = render({"watchNamespaces": "{cameras-*,lobby}"})
    assert _env(_container(objects))["OVERSHOOT_NAMESPACES"] == "cameras-*,lobby"
    assert not {"ClusterKopfPeering", "KopfPeering"} & set(kinds(objects))


# --- monitoring -------------------------------------------------------------------------------


def test_monitors_are_off_by_default(render: Render) -> None:
    assert not {"ServiceMonitor", "PodMonitor"} & set(kinds(render()))


def test_service_monitor_and_pod_monitor(render: Render) -> None:
    objects = render(NON_DEFAULT)
    selector = only(objects, "StatefulSet", FULLNAME)["spec"]["selector"]["matchLabels"]

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
