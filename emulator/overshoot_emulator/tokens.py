"""Room credentials: the `publish` object of create and keepalive answers, the `view`
object of viewer-token answers, and the token the emulator's own source republisher joins
with.

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
# Documented by the viewer-token example (`expires_in_seconds: 300`).
VIEWER_TOKEN_LIFETIME_SECONDS = 300
# The republisher rejoins with a fresh token whenever it reconnects; a connected
# participant is not kicked when its token expires.
SOURCE_TOKEN_LIFETIME_SECONDS = 6 * 3600
# Guess: the identity Overshoot republishes a pulled camera under is undocumented.
SOURCE_IDENTITY = "overshoot-source"


def room_name(stream_id: str) -> str:
    # Guess: the room name is undocumented; one room per stream, named after it.
    return f"overshoot-{stream_id}"


def publisher_identity(stream_id: str) -> str:
    # Guess: the participant identity is undocumented.
    return f"publisher-{stream_id}"


def viewer_identity() -> str:
    # Guess: undocumented; unique per token so that two viewers never kick each other
    # (LiveKit disconnects an earlier participant that joins with the same identity).
    return f"viewer-{secrets.token_hex(8)}"


@dataclass(frozen=True, slots=True)
class PublishGrant:
    url: str
    token: str

    def as_json(self) -> dict[str, str]:
        return {"type": "livekit", "url": self.url, "token": self.token}


@dataclass(frozen=True, slots=True)
class ViewGrant:
    url: str
    token: str
    expires_in_seconds: int

    def as_json(self) -> dict[str, str | int]:
        return {"url": self.url, "token": self.token, "expires_in_seconds": self.expires_in_seconds}


class TokenMinter(Protocol):
    def mint(self, stream_id: str) -> PublishGrant: ...

    def mint_viewer(self, stream_id: str) -> ViewGrant: ...


class OpaqueTokenMinter:
    """Random tokens that mean nothing to anyone: enough for API-level tests."""

    def __init__(self, url: str) -> None:
        self._url = url

    def mint(self, stream_id: str) -> PublishGrant:
        return PublishGrant(self._url, secrets.token_urlsafe(32))

    def mint_viewer(self, stream_id: str) -> ViewGrant:
        return ViewGrant(self._url, secrets.token_urlsafe(32), VIEWER_TOKEN_LIFETIME_SECONDS)


def livekit_token(
    credentials: LiveKitCredentials,
    *,
    identity: str,
    video: dict[str, object],
    lifetime_seconds: int,
    now: float,
) -> str:
    """A LiveKit access token (HS256 with the API secret) with the given video grant."""
    issued = int(now)
    claims = {
        "iss": credentials.api_key,
        "sub": identity,
        "nbf": issued,
        "exp": issued + lifetime_seconds,
        # Two tokens minted within one second must still differ.
        "jti": uuid.uuid4().hex,
        "video": video,
    }
    return jwt.encode(claims, credentials.api_secret, algorithm="HS256")


def source_token(credentials: LiveKitCredentials, stream_id: str) -> str:
    """The republisher's token: publish video into the stream's room, subscribe to nothing."""
    return livekit_token(
        credentials,
        identity=SOURCE_IDENTITY,
        video={
            "roomJoin": True,
            "room": room_name(stream_id),
            "canPublish": True,
            "canPublishData": False,
            "canSubscribe": False,
        },
        lifetime_seconds=SOURCE_TOKEN_LIFETIME_SECONDS,
        now=time.time(),
    )


class LiveKitTokenMinter:
    """Real LiveKit access tokens: publish-only grants (create, keepalive) and subscribe-only
    ones (viewer tokens) to the stream's room."""

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
        token = livekit_token(
            self._credentials,
            identity=publisher_identity(stream_id),
            video={
                "roomJoin": True,
                "room": room_name(stream_id),
                "canPublish": True,
                "canSubscribe": False,
            },
            lifetime_seconds=self._lifetime,
            now=self._clock(),
        )
        return PublishGrant(self._url, token)

    def mint_viewer(self, stream_id: str) -> ViewGrant:
        # Documented: subscribe-only, it cannot publish media or data.
        # Guess: hidden, so publishers and other viewers do not see viewers come and go.
        token = livekit_token(
            self._credentials,
            identity=viewer_identity(),
            video={
                "roomJoin": True,
                "room": room_name(stream_id),
                "canPublish": False,
                "canPublishData": False,
                "canSubscribe": True,
                "hidden": True,
            },
            lifetime_seconds=VIEWER_TOKEN_LIFETIME_SECONDS,
            now=self._clock(),
        )
        return ViewGrant(self._url, token, VIEWER_TOKEN_LIFETIME_SECONDS)
