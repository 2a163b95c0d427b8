"""The emulator's settings: one typed object built once from the command line.

Also the one place that turns an API key into something safe to log or store (a
fingerprint); raw keys never leave this boundary except as set members for auth.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from overshoot_emulator.regions import DEFAULT_REGION

DEFAULT_TTL_SECONDS = 300.0
# Guess: the tombstone window is undocumented ("a short window"); 60 s is our pick.
DEFAULT_TOMBSTONE_SECONDS = 60.0
# Guess: with no LiveKit configured the publish URL is never dialled for real; a reserved
# `.invalid` host makes a publisher that tries it fail fast instead of reaching a stranger.
DEFAULT_PUBLISH_URL = "wss://livekit.emulator.invalid"
# Documented: a source that cannot be opened is refused "after ~15 s of server-side retries".
DEFAULT_SOURCE_CONNECT_TIMEOUT = 15.0


def key_digest(api_key: str) -> str:
    """The full SHA-256 of a key: how streams record their owner."""
    return hashlib.sha256(api_key.encode()).hexdigest()


def fingerprint(digest: str) -> str:
    """A short, loggable name for a key digest, `sha256:<12 hex>`."""
    return f"sha256:{digest[:12]}"


def key_fingerprint(api_key: str) -> str:
    return fingerprint(key_digest(api_key))


@dataclass(frozen=True, slots=True)
class LiveKitCredentials:
    """What it takes to sign LiveKit access tokens; the secret never appears in a repr."""

    api_key: str
    api_secret: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class EmulatorConfig:
    host: str = "127.0.0.1"
    port: int = 8765
    ttl_seconds: float = DEFAULT_TTL_SECONDS
    tombstone_seconds: float = DEFAULT_TOMBSTONE_SECONDS
    # Digests, not raw keys: the process keeps no copy of a key it does not need.
    accepted_key_digests: frozenset[str] = field(default=frozenset(), repr=False)
    accept_any_key: bool = False
    expire_interval: float = 1.0
    publish_url: str = DEFAULT_PUBLISH_URL
    livekit: LiveKitCredentials | None = None
    access_log: bool = False
    # A steady delay before every API answer (not admin), to emulate a remote API's latency.
    latency_ms: float = 0.0
    # The first is the default region (the one a request without a region header reaches).
    regions: tuple[str, ...] = (DEFAULT_REGION,)
    source_connect_timeout: float = DEFAULT_SOURCE_CONNECT_TIMEOUT
    # Tests pull from cameras on loopback, which Overshoot refuses.
    allow_private_sources: bool = False

    def accepts(self, digest: str) -> bool:
        return self.accept_any_key or digest in self.accepted_key_digests
