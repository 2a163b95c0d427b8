"""Reading the mounted publish Secret and source credentials, and watching the stream id."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from overshoot_publisher.errors import ConfigurationError
from overshoot_publisher.mounted import read_credentials, read_publish_target, watch_stream_id

pytestmark = pytest.mark.unit


def _secret(path: Path, **values: str) -> Path:
    path.mkdir(exist_ok=True)
    for key, value in values.items():
        (path / key).write_text(value + "\n")
    return path


def test_reads_url_token_and_stream_id(tmp_path: Path) -> None:
    target = read_publish_target(_secret(tmp_path, url="wss://lk", token="tok-123", streamId="s-1"))
    assert (target.url, target.token, target.stream_id) == ("wss://lk", "tok-123", "s-1")
    assert "tok-123" not in repr(target)


def test_a_missing_key_is_named_and_no_value_is_shown(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as caught:
        read_publish_target(_secret(tmp_path, url="wss://lk", token="tok-123"))
    assert "'streamId'" in str(caught.value)
    assert "tok-123" not in str(caught.value)


def test_credentials(tmp_path: Path) -> None:
    assert read_credentials(None) is None
    creds = read_credentials(_secret(tmp_path, username="admin", password="pw"))
    assert creds is not None
    assert (creds.username, creds.password) == ("admin", "pw")
    assert "pw" not in repr(creds)


def test_missing_credentials_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="'password'"):
        read_credentials(_secret(tmp_path, username="admin"))


async def test_watch_sets_the_event_when_the_stream_id_changes(tmp_path: Path) -> None:
    secret = _secret(tmp_path, streamId="old")
    changed = asyncio.Event()
    task = asyncio.create_task(watch_stream_id(secret, "old", changed, interval=0.01))
    await asyncio.sleep(0.05)
    assert not changed.is_set()
    (secret / "streamId").write_text("new")
    await asyncio.wait_for(changed.wait(), 1)
    await task


def test_an_empty_stream_id_is_standby(tmp_path: Path) -> None:
    """The operator released the stream (no frame ever reached Overshoot): nothing to
    publish into, and an empty url or token is then no error."""
    assert read_publish_target(_secret(tmp_path, url="", token="", streamId="")) is None


def test_an_empty_token_of_a_named_stream_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"'token'.* is empty"):
        read_publish_target(_secret(tmp_path, url="wss://lk", token="", streamId="s-1"))


@pytest.mark.parametrize(("before", "after"), [("s-1", ""), ("", "s-2")])
async def test_watch_sees_standby_come_and_go(tmp_path: Path, before: str, after: str) -> None:
    secret = _secret(tmp_path, streamId=before)
    changed = asyncio.Event()
    task = asyncio.create_task(watch_stream_id(secret, before, changed, interval=0.01))
    (secret / "streamId").write_text(after)
    await asyncio.wait_for(changed.wait(), 1)
    await task
