"""Publish credentials: the `publish` object of create and keepalive answers.

Two minters behind one small protocol: opaque random tokens when no LiveKit server is
configured, real LiveKit access JWTs when one is. The only module that signs anything.
Tokens are returned to the caller and never stored or logged.
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import jwt

from overshoot_emulator.config import LiveKitCredentials

# Guess: Overshoot's token lifetime is undocumented. Ten minutes outlasts the documented
# keepalive cadence (~2 min) several times over, and a connected publisher is not kicked
# when its token expires anyway (ordinary LiveKit behaviour).
LIVEKIT_TOKEN_LIFETIME_SECONDS = 600


def room_name(stream_id: str) -> str:
    # Guess: the room name is undocumented; one room per stream, named after it.
    return f"overshoot-{stream_id}"


def publisher_identity(stream_id: str) -> str:
    # Guess: the participant identity is undocumented.
    return f"publisher-{stream_id}"


@dataclass(frozen=True, slots=True)
class PublishGrant:
    url: str
    token: str

    def as_json(self) -> dict[str, str]:
        return {"type": "livekit", "url": self.url, "token": self.token}


class TokenMinter(Protocol):
    def mint(self, stream_id: str) -> PublishGrant: ...


class OpaqueTokenMinter:
    """Random tokens that mean nothing to anyone: enough for API-level tests."""

    def __init__(self, url: str) -> None:
        self._url = url

    def mint(self, stream_id: str) -> PublishGrant:
        return PublishGrant(self._url, secrets.token_urlsafe(32))


class LiveKitTokenMinter:
    """Real LiveKit access tokens: publish-only grants to the stream's room."""

    def __init__(
        self,
        url: str,
        credentials: LiveKitCredentials,
        *,
        lifetime_seconds: int = LIVEKIT_TOKEN_LIFETIME_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._url = url
        self._credentials = credentials
        self._lifetime = lifetime_seconds
        self._clock = clock

    def mint(self, stream_id: str) -> PublishGrant:
        now = int(self._clock())
        claims = {
            "iss": self._credentials.api_key,
            "sub": publisher_identity(stream_id),
            "nbf": now,
            "exp": now + self._lifetime,
            # Two keepalives within one second must still get distinct tokens.
            "jti": uuid.uuid4().hex,
            "video": {
                "roomJoin": True,
                "room": room_name(stream_id),
                "canPublish": True,
                "canSubscribe": False,
            },
        }
        token = jwt.encode(claims, self._credentials.api_secret, algorithm="HS256")
        return PublishGrant(self._url, token)
