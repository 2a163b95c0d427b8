"""Credentials for the local control plane: kubeconfigs for ServiceAccounts.

Role: mint a token for a ServiceAccount through the TokenRequest API and write a kubeconfig
that authenticates with it, so the operator can be run in tests with exactly the RBAC the
Helm chart grants, never as cluster-admin.

Boundary: the kubernetes client against a control plane started by `cluster.py`; the admin
kubeconfig is used only to ask for the token.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from kubernetes import client, config

from overshoot_localstack.cluster import write_kubeconfig


class Cluster(Protocol):
    """What a kubeconfig needs from a control plane (`cluster.ControlPlane` has it)."""

    @property
    def kubeconfig(self) -> Path: ...

    @property
    def server(self) -> str: ...

    @property
    def ca_file(self) -> Path: ...


def api_client(kubeconfig: Path) -> client.ApiClient:
    """A kubernetes ApiClient for a kubeconfig file, independent of the global config."""
    # The kubernetes package's config loaders carry no annotations.
    api: client.ApiClient = config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=str(kubeconfig)
    )
    return api


def serviceaccount_token(
    cluster: Cluster, namespace: str, name: str, *, expiration_seconds: int = 3600
) -> str:
    """A bound token for ServiceAccount `namespace/name` (which must exist)."""
    with api_client(cluster.kubeconfig) as admin:
        request = client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=expiration_seconds)
        )
        response = client.CoreV1Api(admin).create_namespaced_service_account_token(
            name, namespace, request
        )
    if response.status is None or not response.status.token:
        raise RuntimeError(f"TokenRequest for ServiceAccount {namespace}/{name} returned no token")
    return str(response.status.token)


def serviceaccount_kubeconfig(
    cluster: Cluster,
    namespace: str,
    name: str,
    path: Path,
    *,
    expiration_seconds: int = 3600,
) -> Path:
    """Write a kubeconfig at `path` that acts as ServiceAccount `namespace/name`.

    Its context's default namespace is the ServiceAccount's, as in-cluster config would be.
    """
    token = serviceaccount_token(cluster, namespace, name, expiration_seconds=expiration_seconds)
    return write_kubeconfig(
        path,
        server=cluster.server,
        ca_file=cluster.ca_file,
        user=f"system:serviceaccount:{namespace}:{name}",
        credentials={"token": token},
        namespace=namespace,
    )
