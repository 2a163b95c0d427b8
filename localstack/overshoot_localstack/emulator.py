"""The Overshoot emulator as a child process, for tests, the demo and benchmarks.

Starts `python -m overshoot_emulator` on a free port, waits for its `Listening on` line,
and offers the admin surface (`/_emulator/...`) as typed helpers, sync and async. This
module only drives the emulator over HTTP; it never imports its internals.
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import IO, Any, Literal, Self

import httpx

Endpoint = Literal["create", "get", "keepalive", "delete", "viewer_token"]
LISTENING = "Listening on "


class EmulatorStartError(RuntimeError):
    pass


class EmulatorProcess:
    """One emulator process. Use as a context manager, or call start() / stop()."""

    def __init__(
        self,
        *,
        ttl_seconds: float | None = None,
        tombstone_seconds: float | None = None,
        expire_interval: float | None = None,
        api_keys: Sequence[str] = (),
        host: str = "127.0.0.1",
        port: int = 0,
        livekit_url: str | None = None,
        livekit_api_key: str | None = None,
        livekit_api_secret: str | None = None,
        regions: Sequence[str] | None = None,
        source_connect_timeout: float | None = None,
        allow_private_sources: bool = False,
        extra_args: Sequence[str] = (),
        command_prefix: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        stderr: IO[Any] | int | None = None,
        start_timeout: float = 20.0,
    ) -> None:
        """`api_keys` empty means any key is accepted. `regions` are the regions served,
        the first the default. `allow_private_sources` lets camera sources on loopback be
        pulled (tests). `command_prefix` runs the interpreter under a wrapper (e.g.
        `taskset -c 0`). `stderr` defaults to ours."""
        args: list[str] = ["--host", host, "--port", str(port)]
        if ttl_seconds is not None:
            args += ["--ttl-seconds", str(ttl_seconds)]
        if tombstone_seconds is not None:
            args += ["--tombstone-seconds", str(tombstone_seconds)]
        if expire_interval is not None:
            args += ["--expire-interval", str(expire_interval)]
        if api_keys:
            for key in api_keys:
                args += ["--api-key", key]
        else:
            args.append("--accept-any-key")
        if livekit_url is not None:
            args += ["--livekit-url", livekit_url]
        if livekit_api_key is not None and livekit_api_secret is not None:
            args += ["--livekit-api-key", livekit_api_key]
            args += ["--livekit-api-secret", livekit_api_secret]
        if regions is not None:
            args += ["--regions", ",".join(regions)]
        if source_connect_timeout is not None:
            args += ["--source-connect-timeout", str(source_connect_timeout)]
        if allow_private_sources:
            args.append("--allow-private-sources")
        self.argv = [
            *command_prefix,
            sys.executable,
            "-m",
            "overshoot_emulator",
            *args,
            *extra_args,
        ]
        self._env = None if env is None else {**os.environ, **env}
        self._stderr = stderr
        self._start_timeout = start_timeout
        self._process: subprocess.Popen[str] | None = None
        self._url: str | None = None
        self._admin: EmulatorAdmin | None = None
        self._pump: threading.Thread | None = None

    # --- lifecycle ------------------------------------------------------------------

    def start(self) -> Self:
        if self._process is not None:
            raise RuntimeError("emulator already started")
        # The secret is on this child's command line: acceptable for a local test
        # process, and it is never printed by us.
        self._process = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=self._env,
            text=True,
        )
        lines: queue.Queue[str | None] = queue.Queue()
        stdout = self._process.stdout
        assert stdout is not None

        def pump() -> None:
            # Keep draining stdout after the first line so the child can never block on
            # a full pipe.
            for line in stdout:
                lines.put(line)
            lines.put(None)

        self._pump = threading.Thread(target=pump, name="emulator-stdout", daemon=True)
        self._pump.start()
        deadline = time.monotonic() + self._start_timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                line = lines.get(timeout=max(remaining, 0.01))
            except queue.Empty:
                self.stop()
                raise EmulatorStartError(
                    f"emulator printed no {LISTENING!r} line within {self._start_timeout}s"
                ) from None
            if line is None:
                code = self.stop()
                raise EmulatorStartError(f"emulator exited with code {code} before listening")
            if line.startswith(LISTENING):
                self._url = line[len(LISTENING) :].strip()
                return self

    def stop(self, timeout: float = 10.0) -> int | None:
        """Terminate and wait; kill if it does not go. The exit code, None if not started."""
        process, self._process = self._process, None
        if self._admin is not None:
            self._admin.close()
            self._admin = None
        if process is None:
            return None
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        # The pump sees EOF once the child is gone; only then is the pipe ours to close.
        if self._pump is not None:
            self._pump.join(timeout)
            self._pump = None
        if process.stdout is not None:
            process.stdout.close()
        return process.returncode

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        if self._process is None:
            raise RuntimeError("emulator not running")
        return self._process.pid

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def url(self) -> str:
        """The base URL, e.g. `http://127.0.0.1:40811`."""
        if self._url is None:
            raise RuntimeError("emulator not started")
        return self._url

    @property
    def api_url(self) -> str:
        return self.url + "/v1"

    @property
    def admin(self) -> EmulatorAdmin:
        if self._admin is None:
            self._admin = EmulatorAdmin(self.url)
        return self._admin

    def async_admin(self) -> AsyncEmulatorAdmin:
        """A fresh async helper; close it (or use `async with`) when done."""
        return AsyncEmulatorAdmin(self.url)


# --- the admin surface ------------------------------------------------------------------

Request = tuple[str, str, dict[str, Any] | None, dict[str, str] | None]


def _fault_body(
    count: int,
    endpoints: Sequence[Endpoint] | None,
    api_key: str | None,
    status: int | None,
    retry_after: float | None,
    latency_ms: float | None,
    drop: bool,
    body: str | None,
    content_type: str | None,
    ratelimit: tuple[int | None, int | None, int | None] = (None, None, None),
) -> dict[str, Any]:
    payload: dict[str, Any] = {"count": count, "drop": drop}
    optional: dict[str, Any] = {
        "endpoints": list(endpoints) if endpoints is not None else None,
        "api_key": api_key,
        "status": status,
        "retry_after": retry_after,
        "latency_ms": latency_ms,
        "body": body,
        "content_type": content_type,
        "ratelimit_limit": ratelimit[0],
        "ratelimit_remaining": ratelimit[1],
        "ratelimit_reset": ratelimit[2],
    }
    payload.update({k: v for k, v in optional.items() if v is not None})
    return payload


class _Requests:
    """The admin calls as (method, path, json, params), shared by sync and async."""

    @staticmethod
    def reap(stream_id: str) -> Request:
        return "POST", f"/_emulator/streams/{stream_id}/reap", None, None

    @staticmethod
    def frames(stream_id: str, count: int, fps: float) -> Request:
        return "POST", f"/_emulator/streams/{stream_id}/frames", {"count": count, "fps": fps}, None

    @staticmethod
    def set_limit(api_key: str, max_streams: int | None, retry_after: float) -> Request:
        body = {"api_key": api_key, "max_streams": max_streams, "retry_after": retry_after}
        return "PUT", "/_emulator/limits", body, None

    @staticmethod
    def calls(api_key: str | None) -> Request:
        return "GET", "/_emulator/calls", None, None if api_key is None else {"api_key": api_key}

    @staticmethod
    def streams(state: str | None) -> Request:
        return "GET", "/_emulator/streams", None, None if state is None else {"state": state}

    @staticmethod
    def create_stream(api_key: str, region: str | None) -> Request:
        body: dict[str, Any] = {"api_key": api_key}
        if region is not None:
            body["region"] = region
        return "POST", "/_emulator/streams", body, None

    @staticmethod
    def set_region(region: str) -> Request:
        return "PUT", "/_emulator/region", {"region": region}, None


class EmulatorAdmin:
    """Sync helpers for `/_emulator/...`; each returns the decoded JSON answer and raises
    httpx.HTTPStatusError on an error status."""

    def __init__(self, base_url: str) -> None:
        self._client = httpx.Client(base_url=base_url, timeout=10.0)

    def close(self) -> None:
        self._client.close()

    def _call(self, request: Request) -> dict[str, Any]:
        method, path, body, params = request
        response = self._client.request(method, path, json=body, params=params)
        response.raise_for_status()
        answer: dict[str, Any] = response.json()
        return answer

    def reap(self, stream_id: str) -> dict[str, Any]:
        return self._call(_Requests.reap(stream_id))

    def frames(self, stream_id: str, count: int, fps: float = 25.0) -> dict[str, Any]:
        return self._call(_Requests.frames(stream_id, count, fps))

    def set_limit(
        self, api_key: str, max_streams: int | None, retry_after: float = 1.0
    ) -> dict[str, Any]:
        return self._call(_Requests.set_limit(api_key, max_streams, retry_after))

    def fault(
        self,
        *,
        count: int = 1,
        endpoints: Sequence[Endpoint] | None = None,
        api_key: str | None = None,
        status: int | None = None,
        retry_after: float | None = None,
        latency_ms: float | None = None,
        drop: bool = False,
        body: str | None = None,
        content_type: str | None = None,
        ratelimit_limit: int | None = None,
        ratelimit_remaining: int | None = None,
        ratelimit_reset: int | None = None,
    ) -> dict[str, Any]:
        """A 429 fault also sends Retry-After (default 1) and x-ratelimit-limit|remaining|
        reset (defaults 5, 0 and the retry-after rounded up)."""
        payload = _fault_body(
            count,
            endpoints,
            api_key,
            status,
            retry_after,
            latency_ms,
            drop,
            body,
            content_type,
            (ratelimit_limit, ratelimit_remaining, ratelimit_reset),
        )
        return self._call(("POST", "/_emulator/faults", payload, None))

    def clear_faults(self) -> None:
        self._call(("DELETE", "/_emulator/faults", None, None))

    def calls(self, api_key: str | None = None) -> dict[str, Any]:
        calls: dict[str, Any] = self._call(_Requests.calls(api_key))["calls"]
        return calls

    def reset_calls(self) -> None:
        self._call(("DELETE", "/_emulator/calls", None, None))

    def streams(self, state: str | None = None) -> list[dict[str, Any]]:
        streams: list[dict[str, Any]] = self._call(_Requests.streams(state))["streams"]
        return streams

    def stream(self, stream_id: str) -> dict[str, Any] | None:
        return next((s for s in self.streams() if s["id"] == stream_id), None)

    def create_stream(self, api_key: str, region: str | None = None) -> dict[str, Any]:
        """A client-published stream of `api_key` in `region` (default: the default
        region); the admin document, with its `id`."""
        return self._call(_Requests.create_stream(api_key, region))

    def region(self) -> str:
        """The default region (the one a request without a region header reaches)."""
        region: str = self._call(("GET", "/_emulator/region", None, None))["region"]
        return region

    def set_region(self, region: str) -> dict[str, Any]:
        """Move the default region, as geo-routing moves a client; `{"region", "regions"}`."""
        return self._call(_Requests.set_region(region))

    def pulls(self) -> dict[str, Any]:
        """The camera pulls: `{"pulls": [...], "connecting": n, "reader_threads": n}`."""
        return self._call(("GET", "/_emulator/pulls", None, None))

    def expire(self) -> int:
        ended: int = self._call(("POST", "/_emulator/expire", None, None))["ended"]
        return ended

    def reset(self) -> None:
        self._call(("POST", "/_emulator/reset", None, None))

    def healthz(self) -> dict[str, Any]:
        return self._call(("GET", "/_emulator/healthz", None, None))


class AsyncEmulatorAdmin:
    """The same helpers for async tests, on an httpx.AsyncClient."""

    def __init__(self, base_url: str) -> None:
        self._client = httpx.AsyncClient(base_url=base_url, timeout=10.0)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _call(self, request: Request) -> dict[str, Any]:
        method, path, body, params = request
        response = await self._client.request(method, path, json=body, params=params)
        response.raise_for_status()
        answer: dict[str, Any] = response.json()
        return answer

    async def reap(self, stream_id: str) -> dict[str, Any]:
        return await self._call(_Requests.reap(stream_id))

    async def frames(self, stream_id: str, count: int, fps: float = 25.0) -> dict[str, Any]:
        return await self._call(_Requests.frames(stream_id, count, fps))

    async def set_limit(
        self, api_key: str, max_streams: int | None, retry_after: float = 1.0
    ) -> dict[str, Any]:
        return await self._call(_Requests.set_limit(api_key, max_streams, retry_after))

    async def fault(
        self,
        *,
        count: int = 1,
        endpoints: Sequence[Endpoint] | None = None,
        api_key: str | None = None,
        status: int | None = None,
        retry_after: float | None = None,
        latency_ms: float | None = None,
        drop: bool = False,
        body: str | None = None,
        content_type: str | None = None,
        ratelimit_limit: int | None = None,
        ratelimit_remaining: int | None = None,
        ratelimit_reset: int | None = None,
    ) -> dict[str, Any]:
        payload = _fault_body(
            count,
            endpoints,
            api_key,
            status,
            retry_after,
            latency_ms,
            drop,
            body,
            content_type,
            (ratelimit_limit, ratelimit_remaining, ratelimit_reset),
        )
        return await self._call(("POST", "/_emulator/faults", payload, None))

    async def clear_faults(self) -> None:
        await self._call(("DELETE", "/_emulator/faults", None, None))

    async def calls(self, api_key: str | None = None) -> dict[str, Any]:
        calls: dict[str, Any] = (await self._call(_Requests.calls(api_key)))["calls"]
        return calls

    async def reset_calls(self) -> None:
        await self._call(("DELETE", "/_emulator/calls", None, None))

    async def streams(self, state: str | None = None) -> list[dict[str, Any]]:
        streams: list[dict[str, Any]] = (await self._call(_Requests.streams(state)))["streams"]
        return streams

    async def stream(self, stream_id: str) -> dict[str, Any] | None:
        return next((s for s in await self.streams() if s["id"] == stream_id), None)

    async def create_stream(self, api_key: str, region: str | None = None) -> dict[str, Any]:
        return await self._call(_Requests.create_stream(api_key, region))

    async def region(self) -> str:
        region: str = (await self._call(("GET", "/_emulator/region", None, None)))["region"]
        return region

    async def set_region(self, region: str) -> dict[str, Any]:
        return await self._call(_Requests.set_region(region))

    async def pulls(self) -> dict[str, Any]:
        return await self._call(("GET", "/_emulator/pulls", None, None))

    async def expire(self) -> int:
        ended: int = (await self._call(("POST", "/_emulator/expire", None, None)))["ended"]
        return ended

    async def reset(self) -> None:
        await self._call(("POST", "/_emulator/reset", None, None))
