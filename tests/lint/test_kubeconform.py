"""deploy/ and examples/ validated by kubeconform -strict against the session API server's
own schemas and the OvershootStream CRD's (kubeschemas.py): every field known to the API,
every value of the right type, no duplicate YAML keys.

The chart is rendered with the default values, the HA values (replicaCount 2) and the
maximal values (tests/helm's MAXIMAL: NetworkPolicies, watchNamespaces, ServiceMonitor and
PodMonitor, PDB, every list filled), once more with the maximal values cluster-wide.

Skipped, by GVK: the Prometheus Operator's ServiceMonitor and PodMonitor
(monitoring.coreos.com/v1). Their CRDs are not on the session's API server nor in this
repository, and fetching someone else's CRD from the network at test time is what this
offline lint avoids; tests/helm checks their rendered fields. Every other rendered object
must be validated, which the tests count.
"""

from __future__ import annotations

import subprocess
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubeschemas
import pytest
import yaml
from linters import Checked, Kubeconform, KubeconformRun, manifest_ids

from overshoot_localstack import binaries

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_OPERATOR_KINDS = (
    "monitoring.coreos.com/v1/ServiceMonitor",
    "monitoring.coreos.com/v1/PodMonitor",
)
# Kustomize's own file: not a Kubernetes object (nothing serves its kind); the fleet is
# checked as kustomize renders it instead.
KUSTOMIZATION = r"(^|/)kustomization\.yaml$"


def _ids(resources: list[Checked]) -> list[tuple[str, str, str]]:
    return sorted((r.api_version, r.kind, r.name) for r in resources)


def _gvk(api_version: str, kind: str) -> str:
    return f"{api_version}/{kind}"


def assert_all_validated(
    run: KubeconformRun, texts: list[str], skipped_kinds: tuple[str, ...] = ()
) -> None:
    """kubeconform passed, and each object of `texts` was validated (or is of a skipped
    kind): a file it did not read, or a kind it skipped unasked, fails here."""
    assert run.returncode == 0, run.report()
    expected = sorted(i for text in texts for i in manifest_ids(text))
    assert _ids(run.with_status("statusValid")) == [
        i for i in expected if _gvk(i[0], i[1]) not in skipped_kinds
    ], run.report()
    assert _ids(run.with_status("statusSkipped")) == [
        i for i in expected if _gvk(i[0], i[1]) in skipped_kinds
    ], run.report()


# --- the chart, deploy/ and examples/ --------------------------------------------------------


@pytest.mark.parametrize("values_set", ["default", "ha", "maximal", "maximal-cluster-wide"])
def test_chart_is_valid(
    kubeconform: Kubeconform, render_text: Callable[[str], Path], values_set: str
) -> None:
    manifests = render_text(values_set)
    run = kubeconform.check([manifests], skip=PROMETHEUS_OPERATOR_KINDS)
    assert_all_validated(run, [manifests.read_text()], PROMETHEUS_OPERATOR_KINDS)
    kinds = {r.kind for r in run.resources}
    assert {"Deployment", "CustomResourceDefinition", "Service"} <= kinds
    if values_set.startswith("maximal"):
        # The options are on: the objects they add were rendered and checked too.
        assert {"NetworkPolicy", "PodDisruptionBudget", "ServiceMonitor", "PodMonitor"} <= kinds


def test_deploy_and_examples_are_valid(kubeconform: Kubeconform) -> None:
    folders = [ROOT / "deploy" / "crds", ROOT / "deploy" / "rbac", ROOT / "examples"]
    run = kubeconform.check(folders, ignore_filename_patterns=[KUSTOMIZATION])
    files = sorted(
        p for folder in folders for p in folder.rglob("*.y*ml") if p.name != "kustomization.yaml"
    )
    assert_all_validated(run, [p.read_text() for p in files])
    # The examples' OvershootStreams were checked against the CRD's schema.
    assert any(r.kind == "OvershootStream" for r in run.with_status("statusValid"))


def test_fleet_as_kustomize_renders_it_is_valid(kubeconform: Kubeconform, tmp_path: Path) -> None:
    kubectl = binaries.ensure(["kubectl"])["kubectl"]
    fleet = ROOT / "examples" / "fleet"
    rendered = subprocess.run(
        [str(kubectl), "kustomize", str(fleet)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    manifests = tmp_path / "fleet.yaml"
    manifests.write_text(rendered)
    run = kubeconform.check([manifests])
    assert_all_validated(run, [rendered])


# --- the schemas are as strict as they claim --------------------------------------------------

_DEPLOYMENT = """
    apiVersion: apps/v1
    kind: Deployment
    metadata: {name: d}
    spec:
      selector: {matchLabels: {app: d}}
      template:
        metadata: {labels: {app: d}}
        spec:
          containers:
            - name: c
              image: registry.local/c:1
              ports: [{name: http, containerPort: 8080}]
              resources: {requests: {cpu: 1, memory: 128Mi}, limits: {cpu: 1.5, memory: 1e9}}
              livenessProbe: {httpGet: {path: /healthz, port: http}}
              readinessProbe: {httpGet: {path: /readyz, port: 8080}}
"""
_STREAM = """
    apiVersion: overshoot.ai/v1alpha1
    kind: OvershootStream
    metadata: {name: s, labels: {site: a}}
    spec:
      source: {testPattern: {pattern: smpte}}
      publisher: {resources: {requests: {cpu: 1, memory: 64Mi}}}
"""
_CRD = """
    apiVersion: apiextensions.k8s.io/v1
    kind: CustomResourceDefinition
    metadata: {name: widgets.example.com}
    spec:
      group: example.com
      scope: Namespaced
      names: {kind: Widget, plural: widgets}
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
                    size: {type: string, maxLength: 8}
                    parts: {type: array, items: {type: string, maxLength: 8}}
                    extra: {type: object, additionalProperties: {type: string}}
                    free: {type: object, x-kubernetes-preserve-unknown-fields: true}
"""


def _edit(text: str, old: str, new: str) -> str:
    text = textwrap.dedent(text)
    assert old in text, old
    return text.replace(old, new, 1)


# (case, manifest, a substring of kubeconform's message, or None for valid)
CASES: list[tuple[str, str, str | None]] = [
    ("deployment", _DEPLOYMENT, None),
    (
        "misspelt top-level field",
        _edit(_DEPLOYMENT, "  selector:", "  replica: 2\n  selector:"),
        "additional properties 'replica' not allowed",
    ),
    (
        "misspelt field deep in a container",
        _edit(_DEPLOYMENT, "image: registry", "imagePullPolcy: Always\n          image: registry"),
        "additional properties 'imagePullPolcy' not allowed",
    ),
    (
        "misspelt metadata field",
        _edit(_DEPLOYMENT, "metadata: {name: d}", "metadata: {name: d, labelz: {a: b}}"),
        "additional properties 'labelz' not allowed",
    ),
    (
        "a quantity that is no quantity",
        _edit(_DEPLOYMENT, "memory: 128Mi", "memory: 128MB"),
        "'128MB' does not match pattern",
    ),
    (
        "a port neither number nor name",
        _edit(_DEPLOYMENT, "port: 8080}", "port: 80.5}"),
        "/readinessProbe/httpGet/port",
    ),
    (
        "a string where an integer goes",
        _edit(_DEPLOYMENT, "containerPort: 8080", "containerPort: '8080'"),
        "/containerPort",
    ),
    (
        "a duplicated key",
        _edit(_DEPLOYMENT, "metadata: {name: d}", "metadata: {name: d}\nmetadata: {name: e}"),
        "already set in map",
    ),
    ("stream", _STREAM, None),
    (
        "misspelt stream field",
        _edit(_STREAM, "  publisher:", "  sauce: {}\n  publisher:"),
        "additional properties 'sauce' not allowed",
    ),
    (
        "a stream's metadata as ObjectMeta",
        _edit(_STREAM, "labels: {site: a}", "labelz: {site: a}"),
        "additional properties 'labelz' not allowed",
    ),
    (
        "a stream enum",
        _edit(_STREAM, "pattern: smpte", "pattern: plaid"),
        "/spec/source/testPattern/pattern",
    ),
    ("crd", _CRD, None),
    (
        "a misspelt keyword in a CRD's schema",
        _edit(_CRD, "size: {type: string, maxLength: 8}", "size: {type: string, maxlength: 8}"),
        "additional properties 'maxlength' not allowed",
    ),
    (
        "a misspelt keyword in a CRD's items schema",
        _edit(_CRD, "items: {type: string, maxLength: 8}", "items: {type: string, maxLenght: 8}"),
        "additional properties 'maxLenght' not allowed",
    ),
]


@pytest.mark.parametrize(("manifest", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_schemas_are_strict(
    kubeconform: Kubeconform, tmp_path: Path, manifest: str, message: str | None
) -> None:
    path = tmp_path / "case.yaml"
    path.write_text(textwrap.dedent(manifest))
    run = kubeconform.check([path])
    if message is None:
        assert_all_validated(run, [path.read_text()])
    else:
        assert run.returncode != 0, run.report()
        assert not run.with_status("statusValid"), run.report()
        assert message in run.report(), run.report()


def test_every_generated_schema_compiles(
    kubeconform: Kubeconform, openapi_v2: dict[str, Any], tmp_path: Path
) -> None:
    """A minimal object of each kind the API server serves: each is judged valid or invalid
    (most lack required fields), never "could not find schema", which is what kubeconform
    says of a schema file it cannot compile."""
    objects: list[dict[str, Any]] = []
    for definition in openapi_v2["definitions"].values():
        for group, version, kind in kubeschemas.group_version_kinds(definition):
            api_version = kubeschemas.api_version(group, version)
            if kind != "List":  # kubeconform unpacks a List's items instead
                objects.append({"apiVersion": api_version, "kind": kind, "metadata": {"name": "x"}})
    path = tmp_path / "every-kind.yaml"
    path.write_text(yaml.safe_dump_all(objects))
    run = kubeconform.check([path])
    errors = [str(r) for r in run.with_status("statusError")]
    assert not errors, "\n".join(errors)
    assert len(run.resources) == len(objects) > 200
