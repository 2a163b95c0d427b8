"""Fixtures for the Helm chart tests: the real helm binary and `helm template`.

Boundary: running helm. Render tests (`unit`) need only the binary; install tests
(`integration`) point it at the session's control plane with KUBECONFIG.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from chartkit import CHART, KUBE_VERSION, RELEASE_NAMESPACE, Helm, Render, set_args

from overshoot_localstack import binaries


@pytest.fixture(scope="session")
def helm_binary() -> Path:
    return binaries.ensure(["helm"])["helm"]


@pytest.fixture(scope="session")
def helm(helm_binary: Path, tmp_path_factory: pytest.TempPathFactory) -> Helm:
    """`helm(*args, kubeconfig=None, check=True)`: run the real helm binary.

    Helm's own caches and config go to a temporary home, never the user's.
    """
    home = tmp_path_factory.mktemp("helm-home")

    def run(
        *args: str, kubeconfig: Path | None = None, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": str(home),
            "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_DATA_HOME": str(home / "data"),
        }
        if kubeconfig is not None:
            env["KUBECONFIG"] = str(kubeconfig)
        result = subprocess.run(
            [str(helm_binary), *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            pytest.fail(
                f"helm {' '.join(args)} exited {result.returncode}:\n"
                f"{result.stdout}\n{result.stderr}"
            )
        return result

    return run


@pytest.fixture(scope="session")
def render(helm: Helm) -> Render:
    """`render(values={...}, release=..., extra=[...])`: `helm template`'s objects."""

    def run(
        values: dict[str, Any] | None = None,
        *,
        release: str = "ovs",
        extra: Sequence[str] = (),
    ) -> list[dict[str, Any]]:
        result = helm(
            "template",
            release,
            str(CHART),
            "--namespace",
            RELEASE_NAMESPACE,
            "--kube-version",
            KUBE_VERSION,
            *set_args(values or {}),
            *extra,
        )
        return [doc for doc in yaml.safe_load_all(result.stdout) if doc]

    return run
