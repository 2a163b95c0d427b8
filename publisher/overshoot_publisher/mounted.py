"""The files Kubernetes mounts into the publisher: the publish Secret and source credentials.

The publish Secret (`url`, `token`, `streamId` under `secret_dir`) changes while the
process runs: keepalives rotate the token, and a recreated remote stream brings a new
stream id and room. The kubelet swaps a Secret volume atomically (a `..data` symlink), late
(up to a minute or more), so the files are simply re-read when needed: `read()` before
every connect, and a polling watcher for the stream id.

Boundary: the filesystem. Token and password values are returned to the caller and never
logged or put in an exception message.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

from overshoot_publisher.config import (
    CREDENTIALS_PASSWORD_FILE,
    CREDENTIALS_USERNAME_FILE,
    PUBLISH_STREAM_ID_KEY,
    PUBLISH_TOKEN_KEY,
    PUBLISH_URL_KEY,
)
from overshoot_publisher.errors import ConfigurationError


@dataclass(frozen=True)
class PublishTarget:
    """Where to publish: a LiveKit URL, a room token and the remote stream id."""

    url: str
    token: str = field(repr=False)
    stream_id: str


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8").strip()


def read_publish_target(secret_dir: str | Path) -> PublishTarget | None:
    """Read url/token/streamId; None in standby (an empty streamId: the operator holds no
    stream for this publisher). ConfigurationError names the missing file, never a value."""
    base = Path(secret_dir)
    values: dict[str, str] = {}
    for key in (PUBLISH_STREAM_ID_KEY, PUBLISH_URL_KEY, PUBLISH_TOKEN_KEY):
        path = base / key
        try:
            values[key] = _read(path)
        except FileNotFoundError:
            raise ConfigurationError(
                f"The publish Secret mounted at {base} has no key {key!r}"
            ) from None
        except OSError as exc:
            raise ConfigurationError(f"Could not read {path}: {exc.strerror}") from None
        if not values[PUBLISH_STREAM_ID_KEY]:
            return None
        if not values[key]:
            raise ConfigurationError(f"The publish Secret key {key!r} in {base} is empty")
    return PublishTarget(
        url=values[PUBLISH_URL_KEY],
        token=values[PUBLISH_TOKEN_KEY],
        stream_id=values[PUBLISH_STREAM_ID_KEY],
    )


def read_credentials(credentials_dir: str | Path | None) -> Credentials | None:
    """The source's username/password, or None when no credentials are mounted."""
    if credentials_dir is None:
        return None
    base = Path(credentials_dir)
    try:
        username = _read(base / CREDENTIALS_USERNAME_FILE)
        password = _read(base / CREDENTIALS_PASSWORD_FILE)
    except FileNotFoundError as exc:
        raise ConfigurationError(
            f"The source credentials mounted at {base} have no file {Path(str(exc.filename)).name!r}"
        ) from None
    except OSError as exc:
        raise ConfigurationError(
            f"Could not read the source credentials in {base}: {exc.strerror}"
        ) from None
    return Credentials(username, password)


async def watch_stream_id(
    secret_dir: str | Path,
    current: str,
    changed: asyncio.Event,
    *,
    interval: float = 1.0,
) -> None:
    """Set `changed` when the mounted stream id differs from `current` (an empty one is
    standby); runs until cancelled.

    Polling, not inotify: the kubelet's symlink swap is invisible to a watch on the file,
    and one small read a second costs nothing.
    """
    path = Path(secret_dir) / PUBLISH_STREAM_ID_KEY
    while True:
        await asyncio.sleep(interval)
        try:
            value = await asyncio.to_thread(_read, path)
        except OSError:
            continue  # mid-swap or briefly missing: look again next tick
        if value != current:
            changed.set()
            return
