"""Contract tests: leases that really run out, tombstones that really go, reaping, and the
process itself (port 0, the `Listening on` line, clean shutdown, bad flags)."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx
import pytest

from fixtures.emulator import EmulatorFactory
from overshoot_localstack.emulator import EmulatorProcess

pytestmark = pytest.mark.contract

KEY = {"Authorization": "Bearer ovs-lifecycle"}


def create(http: httpx.Client) -> str:
    response = http.post("/streams", json={}, headers=KEY)
    assert response.status_code == 201
    stream_id: str = response.json()["id"]
    return stream_id


def wait_for(predicate: object, timeout: float) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_a_lease_runs_out_then_the_tombstone_goes(fresh_emulator: EmulatorFactory) -> None:
    emulator = fresh_emulator(ttl_seconds=1, tombstone_seconds=1)
    with httpx.Client(base_url=emulator.api_url, timeout=10) as http:
        stream_id = create(http)
        time.sleep(1.2)
        body = http.get(f"/streams/{stream_id}", headers=KEY).json()
        assert body["state"] == "ended"
        assert body["end_reason"] == "expired"
        assert body["ended_at_ms"] == body["expires_at_ms"]
        assert http.post(f"/streams/{stream_id}/keepalive", headers=KEY).status_code == 404
        assert http.delete(f"/streams/{stream_id}", headers=KEY).status_code == 404
        wait_for(lambda: http.get(f"/streams/{stream_id}", headers=KEY).status_code == 404, 5)
        assert emulator.admin.streams() == []


def test_the_expirer_works_without_any_reads(fresh_emulator: EmulatorFactory) -> None:
    emulator = fresh_emulator(ttl_seconds=1, tombstone_seconds=0.5)
    with httpx.Client(base_url=emulator.api_url, timeout=10) as http:
        create(http)
    # healthz counts stored streams without settling any, so only sweeps empty it.
    assert emulator.admin.healthz()["streams"] == 1
    wait_for(lambda: emulator.admin.healthz()["streams"] == 0, timeout=5)


def test_keepalives_hold_a_stream_past_its_first_lease(fresh_emulator: EmulatorFactory) -> None:
    emulator = fresh_emulator(ttl_seconds=1.5, tombstone_seconds=5)
    with httpx.Client(base_url=emulator.api_url, timeout=10) as http:
        stream_id = create(http)
        for _ in range(6):
            time.sleep(0.5)
            response = http.post(f"/streams/{stream_id}/keepalive", headers=KEY)
            assert response.status_code == 200
            assert response.json()["ttl_seconds"] == 1.5
        assert http.get(f"/streams/{stream_id}", headers=KEY).json()["state"] == "active"
        [listed] = emulator.admin.streams()
        assert listed["keepalives"] == 6


def test_a_reaped_stream_is_ended_and_final(fresh_emulator: EmulatorFactory) -> None:
    emulator = fresh_emulator(tombstone_seconds=1)
    with httpx.Client(base_url=emulator.api_url, timeout=10) as http:
        stream_id = create(http)
        reaped = emulator.admin.reap(stream_id)
        assert reaped["end_reason"] == "reaped"
        body = http.get(f"/streams/{stream_id}", headers=KEY).json()
        assert (body["state"], body["end_reason"]) == ("ended", "reaped")
        assert http.post(f"/streams/{stream_id}/keepalive", headers=KEY).status_code == 404
        with pytest.raises(httpx.HTTPStatusError) as again:
            emulator.admin.reap(stream_id)
        assert again.value.response.status_code == 409
        wait_for(lambda: http.get(f"/streams/{stream_id}", headers=KEY).status_code == 404, 5)
        with pytest.raises(httpx.HTTPStatusError) as gone:
            emulator.admin.reap(stream_id)
        assert gone.value.response.status_code == 404


def test_the_process_announces_its_port_and_stops_cleanly() -> None:
    emulator = EmulatorProcess().start()
    try:
        host, port = emulator.url.removeprefix("http://").rsplit(":", 1)
        assert host == "127.0.0.1"
        assert int(port) > 0
        assert emulator.admin.healthz()["ok"] is True
    finally:
        assert emulator.stop() == 0


def test_livekit_key_without_secret_is_refused() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "overshoot_emulator", "--livekit-api-key", "devkey"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "--livekit-api-secret" in result.stderr
    assert result.stdout == ""
