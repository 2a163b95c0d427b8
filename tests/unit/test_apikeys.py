"""Reading user Secrets: shared while in flight, reused briefly, never reused when failed."""

from __future__ import annotations

import asyncio
import base64
from typing import cast

import pytest
from pydantic import SecretStr

from overshoot_operator import apikeys
from overshoot_operator.apikeys import SecretReader
from overshoot_operator.kube import Kube, KubeError, KubeUnavailable, SecretData, SecretProblem
from overshoot_operator.resource import SecretKeySelector

pytestmark = pytest.mark.unit

KEY_VALUE = "ovs_live_0123456789abcdef"
OWNER = "OvershootStream cams/lobby"
FIELD = "spec.apiKeySecretRef"
SELECTOR = SecretKeySelector(namespace="cams", name="overshoot-api-key", key="apiKey")


def b64(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw).decode()


class FakeKube:
    def __init__(self, data: dict[str, str] | None) -> None:
        self.data = data
        self.error: Exception | None = None
        self.calls: list[tuple[str, str]] = []
        self.hold: asyncio.Event | None = None
        self.reading = asyncio.Event()  # set while a read is in flight

    async def read_secret(self, namespace: str, name: str) -> SecretData | None:
        self.calls.append((namespace, name))
        self.reading.set()
        if self.hold is not None:
            await self.hold.wait()
        if self.error is not None:
            raise self.error
        if self.data is None:
            return None
        return SecretData(data=dict(self.data), resource_version=str(len(self.calls)))


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def reader(kube: FakeKube, clock: Clock | None = None) -> SecretReader:
    return SecretReader(cast(Kube, kube), clock=clock or Clock())


async def value(r: SecretReader, *, fresh: bool = False) -> SecretStr:
    return await r.value(SELECTOR, field=FIELD, owner=OWNER, fresh=fresh)


async def test_the_value_comes_back_as_a_secret_str() -> None:
    kube = FakeKube({"apiKey": b64(f"  {KEY_VALUE}\n")})
    got = await value(reader(kube))
    assert isinstance(got, SecretStr)
    assert got.get_secret_value() == KEY_VALUE  # whitespace around it is dropped
    assert KEY_VALUE not in repr(got) and KEY_VALUE not in str(got)
    assert kube.calls == [("cams", "overshoot-api-key")]


async def test_concurrent_reads_share_one_call() -> None:
    kube = FakeKube({"apiKey": b64(KEY_VALUE)})
    kube.hold = asyncio.Event()
    r = reader(kube)
    tasks = [asyncio.create_task(value(r)) for _ in range(5)]
    await asyncio.wait_for(kube.reading.wait(), 5)
    for _ in range(10):
        await asyncio.sleep(0)  # every task is waiting on the read by now
    assert len(kube.calls) == 1
    kube.hold.set()
    results = await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert {v.get_secret_value() for v in results} == {KEY_VALUE}
    assert len(kube.calls) == 1


async def test_a_waiter_cancelled_does_not_cancel_the_shared_read() -> None:
    kube = FakeKube({"apiKey": b64(KEY_VALUE)})
    kube.hold = asyncio.Event()
    r = reader(kube)
    first = asyncio.create_task(value(r))
    second = asyncio.create_task(value(r))
    await asyncio.wait_for(kube.reading.wait(), 5)
    await asyncio.sleep(0)
    first.cancel()
    kube.hold.set()
    assert (await asyncio.wait_for(second, 5)).get_secret_value() == KEY_VALUE
    with pytest.raises(asyncio.CancelledError):
        await first
    assert len(kube.calls) == 1


@pytest.mark.parametrize(
    ("elapsed", "calls"),
    [
        pytest.param(0.0, 1, id="at-once"),
        pytest.param(apikeys.REUSE_SECONDS - 0.1, 1, id="within-reuse"),
        pytest.param(apikeys.REUSE_SECONDS, 2, id="at-reuse-seconds"),
        pytest.param(60.0, 2, id="long-after"),
    ],
)
async def test_a_read_is_reused_for_reuse_seconds(elapsed: float, calls: int) -> None:
    kube = FakeKube({"apiKey": b64(KEY_VALUE)})
    clock = Clock()
    r = reader(kube, clock)
    await value(r)
    clock.t += elapsed
    assert (await value(r)).get_secret_value() == KEY_VALUE
    assert len(kube.calls) == calls


async def test_a_reused_read_shows_a_rotated_key_only_after_it_expires() -> None:
    kube = FakeKube({"apiKey": b64("old-key")})
    clock = Clock()
    r = reader(kube, clock)
    assert (await value(r)).get_secret_value() == "old-key"
    kube.data = {"apiKey": b64("new-key")}
    clock.t += 1.0
    assert (await value(r)).get_secret_value() == "old-key"
    clock.t += apikeys.REUSE_SECONDS
    assert (await value(r)).get_secret_value() == "new-key"


async def test_fresh_reads_again() -> None:
    kube = FakeKube({"apiKey": b64("old-key")})
    r = reader(kube)
    await value(r)
    kube.data = {"apiKey": b64("new-key")}
    assert (await value(r, fresh=True)).get_secret_value() == "new-key"
    assert len(kube.calls) == 2
    # The fresh read is the one reused afterwards.
    assert (await value(r)).get_secret_value() == "new-key"
    assert len(kube.calls) == 2


async def test_forget_reads_again() -> None:
    kube = FakeKube({"apiKey": b64(KEY_VALUE)})
    r = reader(kube)
    await value(r)
    r.forget()
    await value(r)
    assert len(kube.calls) == 2


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(
            KubeUnavailable("Get Secret cams/overshoot-api-key failed: timeout"), id="unavailable"
        ),
        pytest.param(KubeError("Get Secret failed: 403 Forbidden", status=403), id="403"),
    ],
)
async def test_a_failed_read_is_not_reused(error: KubeError) -> None:
    kube = FakeKube({"apiKey": b64(KEY_VALUE)})
    kube.error = error
    r = reader(kube)
    with pytest.raises(type(error)) as info:
        await value(r)
    assert info.value is error
    kube.error = None
    assert (await value(r)).get_secret_value() == KEY_VALUE
    assert len(kube.calls) == 2


async def test_waiters_of_a_failed_shared_read_all_get_an_error() -> None:
    kube = FakeKube({"apiKey": b64(KEY_VALUE)})
    kube.hold = asyncio.Event()
    kube.error = KubeUnavailable("Get Secret failed: reset")
    r = reader(kube)
    tasks = [asyncio.create_task(value(r)) for _ in range(3)]
    await asyncio.wait_for(kube.reading.wait(), 5)
    await asyncio.sleep(0)
    kube.hold.set()
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 5)
    assert all(isinstance(res, KubeUnavailable) for res in results)
    kube.error = None
    assert (await value(r)).get_secret_value() == KEY_VALUE


@pytest.mark.parametrize(
    ("data", "reason", "texts"),
    [
        pytest.param(
            None,
            "SecretNotFound",
            ("does not exist", "create it with key 'apiKey'"),
            id="missing-secret",
        ),
        pytest.param(
            {"other": b64("x"), "apikey": b64("y")},
            "SecretKeyMissing",
            ("has no key 'apiKey'", "keys present: apikey, other", "add it or point"),
            id="missing-key",
        ),
        pytest.param(
            {}, "SecretKeyMissing", ("keys present: none",), id="missing-key-empty-secret"
        ),
        pytest.param(
            {"apiKey": ""},
            "SecretKeyInvalid",
            ("is empty or not text", "put the value"),
            id="empty",
        ),
        pytest.param(
            {"apiKey": b64("  \n\t")}, "SecretKeyInvalid", ("is empty",), id="whitespace-only"
        ),
        pytest.param(
            {"apiKey": "%%% not base64 %%%"}, "SecretKeyInvalid", ("not text",), id="not-base64"
        ),
        pytest.param(
            {"apiKey": b64(b"\xff\xfe\x00")}, "SecretKeyInvalid", ("not text",), id="not-utf8"
        ),
    ],
)
async def test_secret_problems(
    data: dict[str, str] | None, reason: str, texts: tuple[str, ...]
) -> None:
    kube = FakeKube(data)
    with pytest.raises(SecretProblem) as info:
        await value(reader(kube))
    problem = info.value
    assert problem.reason == reason
    message = str(problem)
    for text in (OWNER, FIELD, "Secret cams/overshoot-api-key", *texts):
        assert text in message, text
    # A SecretProblem is a KubeError (one hierarchy), but it is no failed call.
    assert isinstance(problem, KubeError) and problem.status is None


async def test_values_of_several_keys_come_from_one_read_with_its_version() -> None:
    kube = FakeKube({"username": b64("admin"), "password": b64("")})
    r = reader(kube)
    (username,), version = await r.values(
        "cams", "cam-creds", ["username"], field="spec.source", owner=OWNER
    )
    assert username.get_secret_value() == "admin" and version == "1"
    with pytest.raises(SecretProblem) as info:
        await r.values(
            "cams", "cam-creds", ["username", "password"], field="spec.source", owner=OWNER
        )
    assert info.value.reason == "SecretKeyInvalid" and "'password'" in str(info.value)
    with pytest.raises(SecretProblem) as info:
        await r.values("cams", "cam-creds", ["token"], field="spec.source", owner=OWNER)
    assert info.value.reason == "SecretKeyMissing"
    assert len(kube.calls) == 1  # one Secret, read once for all its keys


async def test_reads_are_per_secret() -> None:
    kube = FakeKube({"apiKey": b64(KEY_VALUE)})
    r = reader(kube)
    await value(r)
    other = SecretKeySelector(namespace="other-ns", name="overshoot-api-key", key="apiKey")
    await r.value(other, field=FIELD, owner=OWNER)
    assert kube.calls == [("cams", "overshoot-api-key"), ("other-ns", "overshoot-api-key")]
