"""The plugin's errors, and the redactor that keeps secrets out of everything it prints.

Role: one hierarchy for what a user can meet. Each error is one line that names the object,
the field and the fix; `__main__` prints it on stderr and exits with `exit_code`. The
layers below (cluster.py for the API server, snapshot.py for Overshoot, room.py for
LiveKit) translate their libraries' exceptions into these, once.

Secrets: the API key and the viewer token are registered with a `Redactor` as soon as they
are read; every line the plugin prints (errors, logs) goes through it, and anything shaped
like a JWT (LiveKit tokens are JWTs) is blanked too, registered or not.

Boundary: the standard library only.
"""

from __future__ import annotations

import re

__all__ = [
    "ApiKeyProblem",
    "ClusterUnreachable",
    "ConfigError",
    "Forbidden",
    "NoFrameDecoded",
    "NoFrames",
    "NoVideoTrack",
    "NotFound",
    "NotReady",
    "NotServed",
    "OvershootProblem",
    "PluginError",
    "Redactor",
    "RoomProblem",
    "TimedOut",
    "Unauthenticated",
    "WriteFailed",
]


class PluginError(Exception):
    """Anything the plugin reports to its user: one line, and the process's exit code."""

    exit_code: int = 1


class ConfigError(PluginError):
    """No usable kubeconfig or context."""


class ClusterUnreachable(PluginError):
    """the API server could not be reached, or answered something unexpected."""


class Unauthenticated(PluginError):
    """401 from the API server: the kubeconfig's credentials were not accepted."""


class Forbidden(PluginError):
    """403 from the API server: RBAC does not let this user read the object."""


class NotServed(PluginError):
    """the API server does not serve OvershootStreams (the CRD is not installed)."""


class NotFound(PluginError):
    """The OvershootStream does not exist."""


class NotReady(PluginError):
    """The OvershootStream has no remote stream to look at (no `status.streamId`)."""


class NoFrames(PluginError):
    """The stream has no picture: status says so, or none arrived in the room in time."""


class ApiKeyProblem(PluginError):
    """The API-key Secret, or its key, is missing or empty."""


class NoVideoTrack(NoFrames):
    """no video track was published in the room within the time given."""

    def __init__(self, waited: float) -> None:
        super().__init__(f"no video track appeared in the room within {waited:.0f} s")
        self.waited = waited


class NoFrameDecoded(NoFrames):
    """a video track was subscribed, but no frame was decoded within the time given."""

    def __init__(self, waited: float) -> None:
        super().__init__(f"a video track but no decoded frame within {waited:.0f} s")
        self.waited = waited


class OvershootProblem(PluginError):
    """Overshoot refused the viewer token (404: the stream ended; 401: the key) or failed."""


class RoomProblem(PluginError):
    """The stream's LiveKit room could not be joined."""


class TimedOut(PluginError):
    """A step did not finish within `--timeout`."""


class WriteFailed(PluginError):
    """The JPEG could not be written to the output file."""


# base64url of '{"' starts every JWT header; three dot-separated parts.
_JWT_LIKE = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
_MASK = "***"


class Redactor:
    """Blanks the secrets it was told about, and anything JWT-shaped, from text."""

    def __init__(self) -> None:
        self._values: set[str] = set()

    def add(self, value: str) -> None:
        # Very short values would blank ordinary words; no real key or token is that short.
        if len(value) >= 6:
            self._values.add(value)

    def __call__(self, text: str) -> str:
        # Longest first: a token that contains another secret is blanked whole.
        for value in sorted(self._values, key=len, reverse=True):
            text = text.replace(value, _MASK)
        return _JWT_LIKE.sub(_MASK, text)
