"""Every manifest in examples/ is accepted by the real API server with the real CRD, and
holds nothing that looks like a real credential.

Acceptance is a server-side dry-run create (`dryRun=All`) with strict field validation, so
a misspelt field fails here instead of being pruned silently; CEL rules and the structural
schema run exactly as on `kubectl apply`. The fleet is also rendered with kustomize (the one
built into the project's kubectl) and its output dry-run created, as Argo CD would sync it.
"""

from __future__ import annotations

import base64
import ipaddress
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from kubernetes import client, dynamic

from fixtures.cluster import load_manifests
from overshoot_localstack import binaries

ROOT = Path(__file__).parents[2]
EXAMPLES = ROOT / "examples"
FLEET = EXAMPLES / "fleet"
KUSTOMIZATION = "kustomization.yaml"
PLACEHOLDER = "replace-me"
# Documentation names and addresses (RFC 2606, RFC 5737): nobody's real camera.
DOC_NETWORKS = [
    ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")
]
SOURCE_KINDS = {"rtsp", "url", "file", "testPattern"}


def example_files() -> list[Path]:
    """Every manifest file under examples/, whoever wrote it; kustomizations are not objects."""
    files = sorted(p for p in EXAMPLES.rglob("*.y*ml") if p.name != KUSTOMIZATION)
    assert files, "examples/ has no manifests"
    return files


def objects(path: Path) -> list[dict[str, Any]]:
    docs = load_manifests(path)
    assert docs, f"{path.relative_to(ROOT)} holds no object"
    for obj in docs:
        assert {"apiVersion", "kind", "metadata"} <= obj.keys(), f"{path}: not an object"
    return docs


def ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(EXAMPLES)) for p in paths]


FILES = example_files()


# --- Server-side dry run ------------------------------------------------------------------


def dry_run_create(api: client.ApiClient, obj: dict[str, Any], namespace: str) -> None:
    """POST with dryRun=All and fieldValidation=Strict; raises ApiException if refused."""
    dyn = dynamic.DynamicClient(api)  # type: ignore[no-untyped-call]
    resource = dyn.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
    body = {**obj, "metadata": {**obj["metadata"]}}
    if resource.namespaced:
        body["metadata"]["namespace"] = namespace
    path = resource.path(namespace=namespace if resource.namespaced else None)
    # The dynamic client knows dryRun but not fieldValidation: both go in the path.
    dyn.request("post", f"{path}?dryRun=All&fieldValidation=Strict", body=body)  # type: ignore[no-untyped-call]


def accepted(api: client.ApiClient, obj: dict[str, Any], namespace: str, where: str) -> None:
    try:
        dry_run_create(api, obj, namespace)
    except client.ApiException as err:
        pytest.fail(f"{where}: {obj['kind']} {obj['metadata'].get('name')} refused: {err.body}")


@pytest.mark.integration
@pytest.mark.parametrize("path", FILES, ids=ids(FILES))
def test_example_is_accepted_by_the_api_server(path, kube_api, operator_install, namespace):
    for obj in objects(path):
        accepted(kube_api, obj, namespace, str(path.relative_to(ROOT)))


@pytest.mark.integration
def test_a_broken_example_is_refused(kube_api, operator_install, namespace):
    """The dry run above can fail (a misspelt field and a credential in the URL are refused)
    and stores nothing when it passes."""
    stream = next(o for o in objects(EXAMPLES / "rtsp.yaml") if o["kind"] == "OvershootStream")
    dry_run_create(kube_api, stream, namespace)
    stored = client.CustomObjectsApi(kube_api).list_namespaced_custom_object(
        "overshoot.ai", "v1alpha1", namespace, "overshootstreams"
    )
    assert stored["items"] == []
    typo = {**stream, "spec": {**stream["spec"], "keepAliveIntervalSeconds": 60}}
    with pytest.raises(client.ApiException) as refused:
        dry_run_create(kube_api, typo, namespace)
    assert "keepAliveIntervalSeconds" in str(refused.value.body)
    creds = yaml.safe_load(yaml.safe_dump(stream))
    creds["spec"]["source"]["rtsp"]["url"] = "rtsp://admin:secret@192.0.2.10/stream1"
    with pytest.raises(client.ApiException) as refused:
        dry_run_create(kube_api, creds, namespace)
    assert "must not contain credentials" in str(refused.value.body)


@pytest.mark.integration
def test_fleet_renders_with_kustomize_and_is_accepted(kube_api, operator_install, namespace):
    kubectl = binaries.ensure(["kubectl"])["kubectl"]
    rendered = subprocess.run(
        [str(kubectl), "kustomize", str(FLEET)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert rendered.returncode == 0, rendered.stderr
    objs = [o for o in yaml.safe_load_all(rendered.stdout) if o]
    streams = [o for o in objs if o["kind"] == "OvershootStream"]
    assert len(streams) >= 10, "the fleet is meant to show many cameras"
    for obj in objs:
        assert obj["metadata"]["namespace"] == "warehouse-cameras"
        assert obj["metadata"]["labels"]["site"] == "warehouse"
    for stream in streams:
        # The shared patch reached every camera.
        assert stream["spec"]["video"]["maxFps"] == 5
        assert stream["spec"]["publisher"]["resources"]["limits"]
        accepted(kube_api, stream, namespace, f"kubectl kustomize {FLEET.relative_to(ROOT)}")
    for obj in objs:
        if obj["kind"] != "OvershootStream":
            accepted(kube_api, obj, namespace, f"kubectl kustomize {FLEET.relative_to(ROOT)}")


# --- Without a server ---------------------------------------------------------------------


def _secret_values(obj: dict[str, Any]) -> dict[str, str]:
    values = dict(obj.get("stringData") or {})
    for key, encoded in (obj.get("data") or {}).items():
        values[key] = base64.b64decode(encoded).decode()
    return values


def _source_urls(obj: dict[str, Any]) -> list[str]:
    source = (obj.get("spec") or {}).get("source") or {}
    return [s["url"] for kind, s in source.items() if kind in ("rtsp", "url") and "url" in s]


@pytest.mark.unit
@pytest.mark.parametrize("path", FILES, ids=ids(FILES))
def test_credentials_are_obvious_placeholders(path):
    for obj in objects(path):
        if obj["kind"] == "Secret":
            values = _secret_values(obj)
            assert values, f"{path.name}: Secret {obj['metadata']['name']} is empty"
            for key, value in values.items():
                assert PLACEHOLDER in value, (
                    f"{path.name}: Secret {obj['metadata']['name']} key {key!r} must be an "
                    f"obvious placeholder containing {PLACEHOLDER!r}"
                )
        for url in _source_urls(obj):
            host = urlsplit(url).hostname or ""
            try:
                documentation = any(ipaddress.ip_address(host) in n for n in DOC_NETWORKS)
            except ValueError:
                documentation = host == "example.com" or host.endswith(".example.com")
            assert documentation, (
                f"{path.name}: {url} should use a documentation address (192.0.2.0/24) or "
                "example.com, so nobody mistakes it for a real camera"
            )


@pytest.mark.unit
@pytest.mark.parametrize("path", FILES, ids=ids(FILES))
def test_examples_name_no_namespace(path):
    """`kubectl apply -n <ns> -f` (and kustomize's namespace) decide where they go."""
    for obj in objects(path):
        assert "namespace" not in obj["metadata"], f"{path.name}: {obj['metadata']['name']}"


@pytest.mark.unit
def test_one_example_per_source_type_and_delivery():
    """Every source kind has its example, and so has each delivery a camera can take
    (a publisher Pod, or Overshoot pulling it), with no two examples of the same pair."""
    pairs: dict[tuple[str, str], list[str]] = {}
    for path in EXAMPLES.glob("*.yaml"):
        for obj in objects(path):
            if obj["kind"] == "OvershootStream":
                delivery = obj["spec"].get("delivery", "Publisher")
                for kind in obj["spec"]["source"]:
                    pairs.setdefault((kind, delivery), []).append(path.name)
    assert {kind for kind, _ in pairs} == SOURCE_KINDS, pairs
    assert ("rtsp", "ServerPull") in pairs, pairs
    assert all(len(files) == 1 for files in pairs.values()), pairs


@pytest.mark.unit
def test_fleet_kustomization_lists_every_file():
    kustomization = yaml.safe_load((FLEET / KUSTOMIZATION).read_text())
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in FLEET.glob("*.yaml") if p.name != KUSTOMIZATION}
    assert listed == on_disk, f"unlisted: {on_disk - listed}; missing: {listed - on_disk}"
