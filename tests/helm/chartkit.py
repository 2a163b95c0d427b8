"""Helpers shared by the Helm chart tests: paths, `--set` arguments, picking objects.

Fixtures that run helm are in conftest.py; this module runs nothing.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from overshoot_localstack import binaries

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "overshoot-operator"
RELEASE_NAMESPACE = "overshoot-system"
# The version the local control plane runs; `helm template` would otherwise assume v1.20.
KUBE_VERSION = binaries.KUBERNETES_VERSION

Render = Callable[..., list[dict[str, Any]]]
Helm = Callable[..., subprocess.CompletedProcess[str]]


def load_sync_module() -> ModuleType:
    """hack/sync-chart.py, imported by path (hack/ is not a package)."""
    spec = importlib.util.spec_from_file_location("sync_chart", ROOT / "hack" / "sync-chart.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def set_args(values: dict[str, Any]) -> list[str]:
    """Helm arguments for `values`: a string is a `--set` expression (e.g. '{a,b}' for a
    list); anything else goes through `--set-json`, since `--set` turns 2.5 into a string.
    """
    args: list[str] = []
    for key, value in values.items():
        if isinstance(value, str):
            args += ["--set", f"{key}={value}"]
        else:
            args += ["--set-json", f"{key}={json.dumps(value)}"]
    return args


def only(
    objects: list[dict[str, Any]],
    kind: str,
    name: str | None = None,
    *,
    namespace: str | None = None,
) -> dict[str, Any]:
    """The one object of `kind` (and `name`, in `namespace`), failing with what was rendered
    instead."""
    found = [
        o
        for o in objects
        if o["kind"] == kind
        and (name is None or o["metadata"]["name"] == name)
        and (namespace is None or o["metadata"].get("namespace") == namespace)
    ]
    rendered = sorted(
        f"{o['kind']}/{o['metadata'].get('namespace', '')}/{o['metadata']['name']}" for o in objects
    )
    wanted = f"{kind} {namespace or ''}/{name or ''}"
    assert len(found) == 1, f"expected one {wanted}, rendered: {rendered}"
    return found[0]


def in_namespace(objects: list[dict[str, Any]], kind: str, namespace: str) -> list[str]:
    """The names of the objects of `kind` in `namespace`, sorted."""
    return sorted(
        o["metadata"]["name"]
        for o in objects
        if o["kind"] == kind and o["metadata"].get("namespace") == namespace
    )


def kinds(objects: list[dict[str, Any]]) -> list[str]:
    return sorted(o["kind"] for o in objects)


# Every optional object rendered, every list and map filled (a values file, not --set).
MAXIMAL: dict[str, Any] = {
    "replicaCount": 3,
    "image": {"repository": "registry.local/ovs", "tag": "1.2.3", "pullPolicy": "Always"},
    "imagePullSecrets": [{"name": "regcred"}],
    "crds": {"install": True, "keep": True},
    "serviceAccount": {"create": True, "name": "ovs-sa", "annotations": {"iam/role": "x"}},
    "watchNamespaces": ["cameras", "lobby", "cams-eu"],
    "defaultApiKeySecret": {"name": "ovs-key", "key": "token"},
    "verbose": True,
    "resources": {
        "requests": {"cpu": "100m", "memory": "256Mi", "ephemeral-storage": "128Mi"},
        "limits": {"cpu": "2", "memory": "1Gi", "ephemeral-storage": "512Mi"},
    },
    "podSecurityContext": {"fsGroup": 65532},
    "podAnnotations": {"team": "video"},
    "podLabels": {"team": "video"},
    "priorityClassName": "system-cluster-critical",
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "tolerations": [{"key": "video", "operator": "Exists", "effect": "NoSchedule"}],
    "affinity": {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["ops"]}]}
                ]
            }
        }
    },
    "metrics": {
        "scrapeAnnotations": True,
        "serviceMonitor": {"enabled": True, "scrapeTimeout": "10s", "labels": {"r": "p"}},
        "podMonitor": {"enabled": True, "scrapeTimeout": "10s", "labels": {"r": "p"}},
    },
    "networkPolicy": {
        "enabled": True,
        "operator": {
            "apiServer": [
                {"cidr": "10.0.0.10/32", "ports": [{"port": 6443}]},
                {"cidr": "fd00::/64", "except": ["fd00::1/128"], "ports": [{"port": 443}]},
            ]
        },
        "publisher": {
            "namespaces": ["ignored-when-watching"],
            "healthFrom": ["10.1.0.0/16", "fd01::/64"],
            "livekit": [
                {
                    "cidr": "203.0.113.0/24",
                    "ports": [
                        {"port": 443},
                        {"port": 7881, "protocol": "TCP"},
                        {"port": 50000, "endPort": 60000, "protocol": "UDP"},
                    ],
                }
            ],
            "sources": [
                {"cidr": "10.0.0.0/24", "except": ["10.0.0.1/32"], "ports": [{"port": 554}]},
                {"cidr": "198.51.100.7/32"},
            ],
        },
    },
}
