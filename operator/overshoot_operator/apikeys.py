"""Reading the Secrets a resource names: its API key and its source credentials.

Role: one place that reads user Secrets (by name: the operator never lists or watches
Secrets, which would cache every Secret of the cluster). Hundreds of resources usually
share one API-key Secret, so reads are shared while in flight and reused for a few
seconds; a failed read is never reused (a fixed Secret is seen at the next attempt), and
`fresh=True` (a 401, a refresh request) always reads again.

The held-stream path never waits here: a keepalive uses the key its stream was created
with (`Held.api_key`); this module only tells the controller, from a recent read, whether
the Secret is still there.

Boundary: kube.py's Secret reads. Values are returned as `SecretStr` and never logged.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import SecretStr

from overshoot_operator import resource as res
from overshoot_operator.kube import Kube, KubeError, SecretData, SecretProblem

# How long a read is reused (seconds). Far below every retry delay of a user-fixable
# problem, so a fixed or rotated key is seen at the next attempt.
REUSE_SECONDS = 5.0

Clock = Callable[[], float]


@dataclass(frozen=True)
class _Read:
    started: float
    future: asyncio.Future[SecretData | None]


class SecretReader:
    """Reads of user Secrets, shared while in flight and reused for `REUSE_SECONDS`."""

    def __init__(self, kube: Kube, *, clock: Clock) -> None:
        self._kube = kube
        self._clock = clock
        self._reads: dict[tuple[str, str], _Read] = {}

    async def _read(self, namespace: str, name: str, *, fresh: bool) -> SecretData | None:
        where = (namespace, name)
        read = self._reads.get(where)
        now = self._clock()
        reusable = read is not None and (
            not read.future.done() or now - read.started < REUSE_SECONDS
        )
        if read is not None and reusable and not fresh:
            # A failed shared read is read again, so the error names this resource.
            with contextlib.suppress(KubeError):
                return await asyncio.shield(read.future)
        future = asyncio.ensure_future(self._kube.read_secret(namespace, name))
        # Retrieved even if every waiter is cancelled.
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._reads[where] = _Read(now, future)
        try:
            return await asyncio.shield(future)
        except KubeError:
            current = self._reads.get(where)
            if current is not None and current.future is future:
                del self._reads[where]  # failures are never reused
            raise

    async def value(
        self, selector: res.SecretKeySelector, *, field: str, owner: str, fresh: bool = False
    ) -> SecretStr:
        """One key of a Secret, decoded; SecretProblem names `owner`, `field` and the fix."""
        return (await self._value(selector, field=field, owner=owner, fresh=fresh))[0]

    async def _value(
        self, selector: res.SecretKeySelector, *, field: str, owner: str, fresh: bool
    ) -> tuple[SecretStr, str]:
        secret = await self._read(selector.namespace, selector.name, fresh=fresh)
        where = f"Secret {selector.namespace}/{selector.name}"
        data = secret.data if secret is not None else None
        if secret is None or data is None:
            raise SecretProblem(
                f"{owner}: {field} names {where}, which does not exist; "
                f"create it with key {selector.key!r}",
                reason="SecretNotFound",
            )
        if selector.key not in data:
            present = ", ".join(sorted(data)) or "none"
            raise SecretProblem(
                f"{owner}: {field} {where} has no key {selector.key!r} "
                f"(keys present: {present}); add it or point {field} at the right key",
                reason="SecretKeyMissing",
            )
        try:
            value = base64.b64decode(data[selector.key], validate=True).decode("utf-8").strip()
        except (binascii.Error, UnicodeDecodeError):
            value = ""
        if not value:
            raise SecretProblem(
                f"{owner}: {field} {where} key {selector.key!r} is empty or not text; "
                "put the value in it",
                reason="SecretKeyInvalid",
            )
        return SecretStr(value), secret.resource_version

    async def values(
        self,
        namespace: str,
        name: str,
        keys: list[str],
        *,
        field: str,
        owner: str,
        fresh: bool = False,
    ) -> tuple[list[SecretStr], str]:
        """`keys` of one Secret, decoded, and its resourceVersion (SecretProblem as above)."""
        found: list[SecretStr] = []
        version = ""
        for key in keys:
            selector = res.SecretKeySelector(namespace=namespace, name=name, key=key)
            value, version = await self._value(selector, field=field, owner=owner, fresh=fresh)
            fresh = False  # one read serves every key
            found.append(value)
        return found, version

    def forget(self) -> None:
        self._reads.clear()
