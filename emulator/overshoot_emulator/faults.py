"""Injected misbehaviour and call accounting for the stream endpoints.

A queue of faults, each good for its next N matching calls (status codes, odd bodies,
latency, dropped connections), and counters of every call that reached an endpoint.
Pure state; the HTTP layer (api.py) applies what `FaultQueue.take` hands it.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Endpoint = Literal["create", "get", "keepalive", "delete", "viewer_token"]
ENDPOINTS: tuple[Endpoint, ...] = ("create", "get", "keepalive", "delete", "viewer_token")
# Calls without a usable key are counted under this name.
ANONYMOUS = "anonymous"


class Fault(BaseModel):
    """One queued fault, as posted to `POST /_emulator/faults`."""

    model_config = ConfigDict(extra="forbid")

    count: int = Field(default=1, ge=1)
    endpoints: list[Endpoint] = Field(default_factory=lambda: list(ENDPOINTS), min_length=1)
    # A raw key; only its digest is kept (see `scope`).
    api_key: str | None = Field(default=None, repr=False)
    # Any error status (401/402/403/422/429/500/502/503 are the interesting ones).
    status: int | None = Field(default=None, ge=400, le=599)
    retry_after: float | None = Field(default=None, ge=0)
    # The x-ratelimit-* headers of a 429 (see `rate_limit_headers` for the defaults).
    ratelimit_limit: int | None = Field(default=None, ge=0)
    ratelimit_remaining: int | None = Field(default=None, ge=0)
    ratelimit_reset: int | None = Field(default=None, ge=0)
    latency_ms: float | None = Field(default=None, ge=0)
    drop: bool = False
    body: str | None = None
    content_type: str | None = None

    @model_validator(mode="after")
    def _does_something(self) -> Fault:
        if self.status is None and not self.drop and not self.latency_ms:
            raise ValueError("a fault needs a status, drop or latency_ms")
        if self.body is not None and self.status is None:
            raise ValueError("body needs a status")
        return self

    def headers(self) -> dict[str, str]:
        """Retry-After (when given, and always on a 429) and a 429's x-ratelimit-* headers."""
        headers: dict[str, str] = {}
        if self.status == 429:
            # Documented for v1beta: a 429 carries retry-after (currently 1) and
            # x-ratelimit-limit|remaining|reset. Guess: the limit of a stream endpoint is
            # undocumented; 5 is the older per-key stream cap.
            retry_after = 1.0 if self.retry_after is None else self.retry_after
            headers.update(
                rate_limit_headers(
                    retry_after,
                    limit=5 if self.ratelimit_limit is None else self.ratelimit_limit,
                    remaining=0 if self.ratelimit_remaining is None else self.ratelimit_remaining,
                    reset=self.ratelimit_reset,
                )
            )
        elif self.retry_after is not None:
            headers["Retry-After"] = format_seconds(self.retry_after)
        return headers

    def response_body(self) -> tuple[bytes, str | None]:
        """What an answering fault sends: the given body, or a contract-shaped detail."""
        if self.body is not None:
            content_type = "application/json" if self.content_type is None else self.content_type
            return self.body.encode(), content_type or None
        if self.content_type == "":
            return b"", None
        return (
            b'{"detail": "Injected fault (emulator)"}',
            self.content_type or "application/json",
        )


def format_seconds(seconds: float) -> str:
    """Seconds for a Retry-After header: an integer when whole, as HTTP expects."""
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:g}"


def rate_limit_headers(
    retry_after: float, *, limit: int, remaining: int, reset: int | None = None
) -> dict[str, str]:
    """The headers of a 429: Retry-After and x-ratelimit-limit|remaining|reset.

    Guess: `x-ratelimit-reset` is documented for inference only; here it is whole seconds
    until the limit resets (not an epoch time), by default the retry-after rounded up.
    """
    return {
        "Retry-After": format_seconds(retry_after),
        "x-ratelimit-limit": str(limit),
        "x-ratelimit-remaining": str(remaining),
        "x-ratelimit-reset": str(math.ceil(retry_after) if reset is None else reset),
    }


class _Queued:
    __slots__ = ("endpoints", "fault", "remaining", "scope")

    def __init__(self, fault: Fault, scope: str | None) -> None:
        self.fault = fault
        self.endpoints = frozenset(fault.endpoints)
        self.scope = scope
        self.remaining = fault.count


class FaultQueue:
    def __init__(self) -> None:
        self._queue: list[_Queued] = []

    def add(self, fault: Fault, scope: str | None) -> None:
        """Queue a fault; `scope` is the key digest it is limited to, or None for all."""
        # Keep the digest only: the raw key goes no further than the request that sent it.
        self._queue.append(_Queued(fault.model_copy(update={"api_key": None}), scope))

    def take(self, endpoint: Endpoint, key_digest: str | None) -> Fault | None:
        """The first queued fault matching this call, used up by one; None mostly."""
        if not self._queue:
            return None
        for i, queued in enumerate(self._queue):
            if endpoint in queued.endpoints and queued.scope in (None, key_digest):
                queued.remaining -= 1
                if queued.remaining <= 0:
                    del self._queue[i]
                return queued.fault
        return None

    def pending(self) -> list[dict[str, object]]:
        return [
            {
                "endpoints": sorted(q.endpoints),
                "remaining": q.remaining,
                "scoped": q.scope is not None,
                "status": q.fault.status,
                "drop": q.fault.drop,
                "latency_ms": q.fault.latency_ms,
            }
            for q in self._queue
        ]

    def clear(self) -> None:
        self._queue.clear()


class CallCounter:
    """Calls per endpoint per key fingerprint, faulted and rejected ones included."""

    def __init__(self) -> None:
        self._counts: dict[Endpoint, defaultdict[str, int]] = {
            endpoint: defaultdict(int) for endpoint in ENDPOINTS
        }

    def count(self, endpoint: Endpoint, key_fingerprint: str) -> None:
        self._counts[endpoint][key_fingerprint] += 1

    def by_key(self) -> dict[str, dict[str, int]]:
        return {endpoint: dict(counts) for endpoint, counts in self._counts.items()}

    def for_key(self, key_fingerprint: str) -> dict[str, int]:
        return {
            endpoint: counts.get(key_fingerprint, 0) for endpoint, counts in self._counts.items()
        }

    def total(self) -> int:
        return sum(sum(counts.values()) for counts in self._counts.values())

    def reset(self) -> None:
        for counts in self._counts.values():
            counts.clear()
