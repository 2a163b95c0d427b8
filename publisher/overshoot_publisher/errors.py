"""The publisher's error hierarchy, and the scrubbing that keeps secrets out of messages.

Two families, translated once at their boundary:
- `SourceError` (sources.py translates PyAV/FFmpeg errors): `SourceUnavailable` is
  transient (camera rebooting, network drop, end of file) and retried with backoff;
  `SourceRejected` is something the user must fix (401/403 from the camera, 404, a codec
  the chosen mode cannot carry) and ends the process with a termination message.
- `SessionError` (session.py translates LiveKit errors): always retried.

Every message is built by us from known-safe parts (never `str()` of an FFmpeg error,
which repeats the URL, credentials included), and `scrub()` is applied on top.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import quote, urlsplit, urlunsplit


class PublisherError(Exception):
    """Base of everything the publisher raises on purpose."""


class SourceError(PublisherError):
    pass


class SourceUnavailable(SourceError):
    """Transient: retry with backoff."""

    def __init__(self, message: str, *, cause: str = "error") -> None:
        super().__init__(message)
        # A short label for metrics: eof, error, stall, timeout, refused.
        self.cause = cause


class SourceRejected(SourceError):
    """The user must fix something; `reason` is a CamelCase word the operator can surface."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class ModeSwitch(PublisherError):
    """Auto mode found passthrough cannot carry this source; run it again transcoded."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


class SessionError(PublisherError):
    """LiveKit connection trouble; always retried."""


class ConfigurationError(PublisherError):
    """Mounted files or config are unusable; the message says which file or field."""


def redact_url(url: str) -> str:
    """The URL without any userinfo (`user:pass@`)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def scrub(text: str, secrets: Iterable[str]) -> str:
    """Replace every secret (raw and URL-quoted forms) with `***`."""
    for secret in secrets:
        if not secret:
            continue
        for form in {secret, quote(secret, safe=""), quote(secret)}:
            text = text.replace(form, "***")
    return text
