"""Fixtures for linting deploy/ and examples/ with the ecosystem's own checkers: kubeconform
against JSON schemas made from the session's API server, and kube-score.

Boundary: the linters' binaries (from the local stack's cache), the session's control plane
(only for its OpenAPI) and tests/helm's way of rendering the chart, reused rather than
repeated: chartkit for the chart's paths and --set arguments, tests/helm/conftest.py's `helm`
fixture for running helm.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from kubernetes import client

HELM_TESTS = Path(__file__).resolve().parents[1] / "helm"
# tests/helm's modules import each other by bare name (pytest puts their directory on
# sys.path when it collects them); so must we, also when tests/lint runs alone.
if str(HELM_TESTS) not in sys.path:
    sys.path.insert(0, str(HELM_TESTS))

import kubeschemas  # noqa: E402
from chartkit import (  # noqa: E402
    CHART,
    KUBE_VERSION,
    MAXIMAL,
    RELEASE_NAMESPACE,
    ROOT,
    Helm,
)
from linters import Kubeconform, KubeScore  # noqa: E402

from overshoot_localstack import binaries  # noqa: E402

RenderText = Callable[[str], Path]


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# tests/helm's session fixtures `helm_binary` and `helm`, registered here under their names.
_helm_fixtures = _load("lint_helm_fixtures", HELM_TESTS / "conftest.py")
helm_binary = _helm_fixtures.helm_binary
helm = _helm_fixtures.helm

# The values sets the chart is linted with: the defaults (values.yaml), HA (replicaCount 2),
# tests/helm's MAXIMAL (every option on: NetworkPolicies, watchNamespaces, both monitors,
# every list filled), and MAXIMAL cluster-wide (no watchNamespaces: a ClusterRole, and the
# publisher NetworkPolicies go in networkPolicy.publisher.namespaces).
VALUES_SETS: dict[str, dict[str, Any]] = {
    "default": {},
    "ha": {"replicaCount": 2},
    "maximal": MAXIMAL,
    "maximal-cluster-wide": {**MAXIMAL, "watchNamespaces": []},
}


def fetch_openapi_v2(api: client.ApiClient) -> dict[str, Any]:
    """GET /openapi/v2 (the aggregated Swagger 2.0 of every served kind) as this client."""
    method, url, headers, _body, _post = api.param_serialize(
        "GET",
        "/openapi/v2",
        header_params={"Accept": "application/json"},
        auth_settings=["BearerToken"],
    )
    response = api.call_api(method, url, header_params=headers, _request_timeout=60)
    body = response.read()  # type: ignore[no-untyped-call]
    if response.status != 200:
        raise AssertionError(f"GET /openapi/v2 answered {response.status}: {body[:500]!r}")
    document: dict[str, Any] = json.loads(body)
    return document


@pytest.fixture(scope="session")
def kube_version(kube_api: client.ApiClient) -> str:
    """The API server's version, e.g. v1.36.3."""
    version: str = client.VersionApi(kube_api).get_code().git_version
    return version


@pytest.fixture(scope="session")
def openapi_v2(kube_api: client.ApiClient) -> dict[str, Any]:
    """The session API server's /openapi/v2, read as admin."""
    return fetch_openapi_v2(kube_api)


@pytest.fixture(scope="session")
def schema_root(
    openapi_v2: dict[str, Any], kube_version: str, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """kubeconform's schemas for this session: every kind the API server serves (from its
    /openapi/v2) and the OvershootStream CRD of deploy/crds/, strict (see kubeschemas.py)."""
    root = tmp_path_factory.mktemp("kube-schemas")
    document = openapi_v2
    schemas = kubeschemas.from_openapi_v2(document, kube_version)
    metadata = kubeschemas.object_meta(document)
    for path in sorted((ROOT / "deploy" / "crds").glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text()):
            if crd:
                schemas.update(kubeschemas.from_crd(crd, metadata))
    kubeschemas.write(root, schemas)
    return root


@pytest.fixture(scope="session")
def kubeconform(schema_root: Path, kube_version: str) -> Kubeconform:
    binary = binaries.ensure(["kubeconform"])["kubeconform"]
    return Kubeconform(binary, schema_root, kube_version.removeprefix("v"))


@pytest.fixture(scope="session")
def kube_score() -> KubeScore:
    binary = binaries.ensure(["kube-score"])["kube-score"]
    # The control plane's minor version; kube-score takes vMAJOR.MINOR.
    major, minor = KUBE_VERSION.removeprefix("v").split(".")[:2]
    return KubeScore(binary, f"v{major}.{minor}")


@pytest.fixture(scope="session")
def render_text(helm: Helm, tmp_path_factory: pytest.TempPathFactory) -> RenderText:
    """`render_text(values_set) -> Path`: `helm template` of the chart with one of
    VALUES_SETS (as a values file, as tests/helm gives MAXIMAL), written to a file exactly as
    helm printed it, so the linters see duplicate keys and all. Rendered once per session."""
    out = tmp_path_factory.mktemp("rendered")
    rendered: dict[str, Path] = {}

    def run(values_set: str) -> Path:
        if values_set not in rendered:
            values = out / f"{values_set}.values.yaml"
            values.write_text(yaml.safe_dump(VALUES_SETS[values_set]))
            result = helm(
                "template",
                "ovs",
                str(CHART),
                "--namespace",
                RELEASE_NAMESPACE,
                "--kube-version",
                KUBE_VERSION,
                "--values",
                str(values),
            )
            rendered[values_set] = out / f"chart-{values_set}.yaml"
            rendered[values_set].write_text(result.stdout)
        return rendered[values_set]

    return run
