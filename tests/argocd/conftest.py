"""The `argocd` fixture: Argo CD's own Lua engine (the `argocd` CLI) on deploy/argocd/, see
argoengine.py. The binary is built from the Go module proxy into the local stack's cache
once, like helm for tests/helm.
"""

from __future__ import annotations

import pytest
from argoengine import ArgoCD

from overshoot_localstack import binaries


@pytest.fixture(scope="session")
def argocd(tmp_path_factory: pytest.TempPathFactory) -> ArgoCD:
    binary = binaries.ensure(["argocd"])["argocd"]
    return ArgoCD(binary, tmp_path_factory.mktemp("argocd-home"))
