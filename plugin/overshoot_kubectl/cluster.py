"""The API server, as the user running the plugin: the only module of the plugin that uses
the `kubernetes` client.

Role: find the user's kubeconfig and context the way kubectl does (`--kubeconfig`, else
`KUBECONFIG`, a list of files, else ~/.kube/config; `--context`, else the first
`current-context` set in those files; in a Pod with none of them, its ServiceAccount), and
the default namespace (the context's, else `default`). Then read OvershootStreams and the
API-key Secret with those credentials, so RBAC decides who may look.

Translation, once, here: ApiException 401/403/404 and connection failures become the
plugin's errors (errors.py), each one line naming the object and the fix; a Secret or
stream that does not exist is `None`, for the caller to say what referred to it.

Boundary: the sync kubernetes client, called through `asyncio.to_thread` with a request
timeout on every call (`limit`: the seconds left of the caller's budget). Secret values are returned as
bytes and never logged.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import urllib3
import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from overshoot_kubectl.errors import (
    ClusterUnreachable,
    ConfigError,
    Forbidden,
    NotServed,
    Unauthenticated,
)
from overshoot_operator import resource as res

__all__ = ["DEFAULT_NAMESPACE", "KubeCluster", "SecretData", "find_kubeconfig"]

DEFAULT_NAMESPACE = "default"
DEFAULT_KUBECONFIG = "~/.kube/config"
SERVICEACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
# kubectl's own page size for lists.
PAGE_SIZE = 500

# A Secret's data: key -> decoded value.
SecretData = dict[str, bytes]

_RESOURCE = f"{res.PLURAL}.{res.GROUP}"


def find_kubeconfig(explicit: str | None, env: Mapping[str, str]) -> str | None:
    """The kubeconfig path list kubectl would use, or None when there is none at all.

    `--kubeconfig` is one file and must exist; `KUBECONFIG` is a list (missing files are
    skipped, as kubectl does); the default file counts only if it exists.
    """
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise ConfigError(f"--kubeconfig {explicit}: no such file")
        return str(path)
    listed = env.get("KUBECONFIG", "")
    if listed.strip(os.pathsep):
        return listed
    home = env.get("HOME")
    default = Path(home, ".kube", "config") if home else Path(DEFAULT_KUBECONFIG).expanduser()
    return str(default) if default.is_file() else None


def _current_context(paths: str) -> str | None:
    """kubectl's rule: the first file of the list that sets `current-context` wins."""
    for path in paths.split(os.pathsep):
        if not path:
            continue
        try:
            with Path(path).expanduser().open() as file:
                loaded = yaml.safe_load(file)
        except FileNotFoundError:
            continue
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError(f"kubeconfig {path} cannot be read: {err}") from None
        if isinstance(loaded, dict) and loaded.get("current-context"):
            return str(loaded["current-context"])
    return None


@dataclass(frozen=True)
class _Target:
    configuration: client.Configuration
    namespace: str
    context: str


def _from_kubeconfig(paths: str, context: str | None) -> _Target:
    name = context or _current_context(paths)
    if not name:
        raise ConfigError(f"kubeconfig {paths} sets no current-context; pass --context NAME")
    try:
        contexts, _ = config.list_kube_config_contexts(config_file=paths)  # type: ignore[no-untyped-call]
    except config.ConfigException as err:
        raise ConfigError(f"kubeconfig {paths}: {err}") from None
    found = next((c for c in contexts or [] if c.get("name") == name), None)
    if found is None:
        raise ConfigError(
            f"context {name!r} is not in kubeconfig {paths}; "
            "`kubectl config get-contexts` lists the ones there are"
        )
    namespace = (found.get("context") or {}).get("namespace") or DEFAULT_NAMESPACE
    configuration = client.Configuration()
    try:
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=paths,
            context=name,
            client_configuration=configuration,
            # Never rewrite the user's kubeconfig (refreshed auth-provider tokens).
            persist_config=False,
        )
    except config.ConfigException as err:
        raise ConfigError(f"kubeconfig {paths}, context {name!r}: {err}") from None
    return _Target(configuration, namespace, name)


def _in_cluster() -> _Target:
    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    except config.ConfigException as err:
        raise ConfigError(f"no kubeconfig and no usable in-cluster config: {err}") from None
    try:
        namespace = SERVICEACCOUNT_NAMESPACE.read_text().strip() or DEFAULT_NAMESPACE
    except OSError:
        namespace = DEFAULT_NAMESPACE
    return _Target(configuration, namespace, "in-cluster")


class KubeCluster:
    """Reads of OvershootStreams and Secrets as the kubeconfig's user."""

    def __init__(self, api: client.ApiClient, *, namespace: str, context: str) -> None:
        self._api = api
        self._custom = client.CustomObjectsApi(api)
        self._core = client.CoreV1Api(api)
        self.namespace = namespace
        self.context = context
        self.server: str = api.configuration.host

    @classmethod
    def connect(
        cls, *, kubeconfig: str | None, context: str | None, env: Mapping[str, str]
    ) -> KubeCluster:
        """Load the kubeconfig (blocking: it may run an exec credential plugin)."""
        paths = find_kubeconfig(kubeconfig, env)
        if paths is not None:
            target = _from_kubeconfig(paths, context)
        elif env.get("KUBERNETES_SERVICE_HOST") and not context:
            target = _in_cluster()
        else:
            raise ConfigError(
                f"no kubeconfig: KUBECONFIG is unset and {DEFAULT_KUBECONFIG} does not exist; "
                "set KUBECONFIG or pass --kubeconfig"
            )
        # No hidden retries inside urllib3: each would restart the caller's timeout.
        target.configuration.retries = False
        api = client.ApiClient(target.configuration)
        return cls(api, namespace=target.namespace, context=target.context)

    def close(self) -> None:
        self._api.close()  # type: ignore[no-untyped-call]

    # ---- reads ----------------------------------------------------------------------

    async def get_stream(self, namespace: str, name: str, *, limit: float) -> dict[str, Any] | None:
        """The OvershootStream as stored, or None if there is none by that name."""
        what = f"{res.KIND} {namespace}/{name}"
        try:
            obj = await asyncio.to_thread(
                self._custom.get_namespaced_custom_object,
                res.GROUP,
                res.VERSION,
                namespace,
                res.PLURAL,
                name,
                _request_timeout=limit,
            )
        except ApiException as err:
            if err.status == 404 and _status_of(err).get("details", {}).get("name") == name:
                return None
            raise self._translate(
                err, verb="get", what=what, fix=f"ask for `get` on {_RESOURCE} in {namespace}"
            ) from None
        except urllib3.exceptions.HTTPError as err:
            raise self._unreachable(err) from None
        return _mapping(obj)

    async def list_streams(self, namespace: str | None, *, limit: float) -> list[dict[str, Any]]:
        """Every OvershootStream of `namespace`, or of all namespaces (None)."""
        where = f"in namespace {namespace}" if namespace else "in all namespaces"
        fix = (
            f"ask for `list` on {_RESOURCE} in {namespace}"
            if namespace
            else f"ask for `list` on {_RESOURCE} at cluster scope, or name a namespace with -n"
        )
        items: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            page: dict[str, Any] = {"limit": PAGE_SIZE, "_request_timeout": limit}
            if token:
                page["_continue"] = token
            try:
                if namespace:
                    answer = await asyncio.to_thread(
                        self._custom.list_namespaced_custom_object,
                        res.GROUP,
                        res.VERSION,
                        namespace,
                        res.PLURAL,
                        **page,
                    )
                else:
                    answer = await asyncio.to_thread(
                        self._custom.list_cluster_custom_object,
                        res.GROUP,
                        res.VERSION,
                        res.PLURAL,
                        **page,
                    )
            except ApiException as err:
                raise self._translate(
                    err, verb="list", what=f"OvershootStreams {where}", fix=fix
                ) from None
            except urllib3.exceptions.HTTPError as err:
                raise self._unreachable(err) from None
            page_items = _mapping(answer).get("items")
            items.extend(i for i in page_items or [] if isinstance(i, dict))
            token = (_mapping(answer).get("metadata") or {}).get("continue")
            if not token:
                return items

    async def read_secret(self, namespace: str, name: str, *, limit: float) -> SecretData | None:
        """The Secret's data (decoded from base64), or None if there is no such Secret."""
        what = f"Secret {namespace}/{name}"
        try:
            secret = await asyncio.to_thread(
                self._core.read_namespaced_secret, name, namespace, _request_timeout=limit
            )
        except ApiException as err:
            if err.status == 404:
                return None
            raise self._translate(
                err, verb="get", what=what, fix="ask for access or pass --api-key-secret"
            ) from None
        except urllib3.exceptions.HTTPError as err:
            raise self._unreachable(err) from None
        data: SecretData = {}
        for key, value in (secret.data or {}).items():
            try:
                data[key] = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                data[key] = b""  # not base64: reads as empty, which the caller reports
        return data

    # ---- translation ----------------------------------------------------------------

    def _translate(self, err: ApiException, *, verb: str, what: str, fix: str) -> Exception:
        status = _status_of(err)
        message = str(status.get("message") or err.reason or "").strip()
        if err.status == 401:
            return Unauthenticated(
                f"the API server {self.server} did not accept the credentials of context "
                f"{self.context!r} (401 Unauthorized); log in again, or check --kubeconfig "
                "and --context"
            )
        if err.status == 403:
            said = _FORBIDDEN.search(message)
            if said is not None:
                group = said["group"]
                resource = f"{said['resource']}.{group}" if group else said["resource"]
                why = f"{said['verb']} {resource} is forbidden for user {said['user']}"
            else:
                why = message or "forbidden"
            return Forbidden(f"you may not {_READ.get(verb, verb)} {what} ({why}); {fix}")
        if err.status == 404:
            return NotServed(
                f"the API server {self.server} does not serve {_RESOURCE}/{res.VERSION}; "
                "install the operator's CRD (kubectl apply -f deploy/crds/)"
            )
        return ClusterUnreachable(
            f"the API server {self.server} answered {err.status} {err.reason} to {verb} {what}"
            + (f": {message}" if message else "")
        )

    def _unreachable(self, err: urllib3.exceptions.HTTPError) -> ClusterUnreachable:
        reason = _ADDRESS.sub("", str(getattr(err, "reason", None) or err)).strip(" :")
        return ClusterUnreachable(
            f"could not reach the API server {self.server} ({reason or type(err).__name__}); "
            f"check that the cluster of context {self.context!r} is up and reachable"
        )


_READ = {"get": "read", "list": "list"}
# The API server's 403 text: `secrets "x" is forbidden: User "u" cannot get resource
# "secrets" in API group "" in the namespace "ns"`.
_FORBIDDEN = re.compile(
    r'User "(?P<user>[^"]*)" cannot (?P<verb>\S+) resource "(?P<resource>[^"]+)"'
    r'(?: in API group "(?P<group>[^"]*)")?'
)
# urllib3 names the connection object first: `<...HTTPSConnection object at 0x7f..>: `.
_ADDRESS = re.compile(r"<[^>]* object at 0x[0-9a-f]+>:?")


def _mapping(value: object) -> dict[str, Any]:
    """A JSON object the client returned (the custom-objects API is untyped)."""
    return value if isinstance(value, dict) else {}


def _status_of(err: ApiException) -> dict[str, Any]:
    """The Status object of an API error body, or {} if the body is something else."""
    try:
        body = json.loads(err.body or "")
    except (TypeError, ValueError):
        return {}
    return body if isinstance(body, dict) else {}
