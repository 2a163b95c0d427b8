"""A TCP fault proxy between a client and a server, for fault-injection tests.

Role: run toxiproxy-server (Shopify/toxiproxy, built by `binaries.py`) as a child process
with one proxy in it, and turn faults on and off through its HTTP API: refuse connections
(`disable()`), add latency, reset connections, black-hole traffic, or any other toxic
toxiproxy knows. `kubeconfig_through()` points a kubeconfig at the proxy, so the
kubernetes client (and the operator) talk to the API server through it.

    with FaultProxy("127.0.0.1:6443", log_dir=tmp_path) as proxy:
        path = kubeconfig_through(proxy, cluster.kubeconfig, tmp_path / "kubeconfig")
        with proxy.toxic("latency", latency=300):
            ...  # every response through `path` is 300 ms late

Boundary: the toxiproxy-server process, its log file and its HTTP API, all on 127.0.0.1
(its API and the proxy's listener are only ever bound there; its metrics stay off, it
contacts nothing but the upstream). It relays bytes and knows no protocol: TLS stays
end-to-end between client and upstream, which is why a kubeconfig through it keeps its CA.

What toxiproxy (v2.12) does, read from its source:
- Toxics apply to connections already open as well as new ones, per direction: the
  default `downstream` is upstream -> client, so with a downstream `timeout` requests still
  reach the server and only the answers are lost.
- `disable()` closes the listener and every open connection; `enable()` listens again on
  the same port.
- A `timeout` toxic with 0 ms holds connections open and drops their data until it is
  removed; removing it closes those connections (they never resume).
- `reset_peer` answers data with a TCP RST on connections opened after it was added; on
  connections that were open before, toxiproxy cannot set SO_LINGER any more and the close
  is an ordinary FIN.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import httpx
import yaml

from overshoot_localstack import binaries
from overshoot_localstack.cluster import Component, tail

HOST = "127.0.0.1"
BINARY = "toxiproxy-server"
Stream = Literal["downstream", "upstream"]

# What toxiproxy-server logs when its API cannot bind: it then keeps running without an
# API (it only exits on a signal), so the log is the only sign.
_API_FAILED = "Server finished with error"
_ADDRESS_IN_USE = "address already in use"
# toxiproxy refuses user agents starting with "Mozilla/"; name ourselves instead.
_USER_AGENT = "overshoot-faultproxy"


class FaultProxyError(RuntimeError):
    """toxiproxy did not start, or its API refused a request (`status` is the HTTP status)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class _ApiPortTaken(Exception):
    """The API port picked free was taken before toxiproxy bound it; pick another."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class FaultProxy:
    """One toxiproxy-server with one proxy from `listen` (127.0.0.1, a free port) to
    `upstream` ("host:port"). Use `with`, or `start()` / `stop()`.

    The process leads its own process group, logs to `<log_dir>/toxiproxy-<name>.log` and,
    when started from the main thread, dies with the test process even if that is
    SIGKILLed (see `cluster.Component`).
    """

    def __init__(
        self,
        upstream: str,
        *,
        log_dir: Path,
        name: str = "upstream",
        binary: Path | None = None,
        start_timeout: float = 30.0,
        api_timeout: float = 15.0,
    ) -> None:
        host, _, port = upstream.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"upstream must be host:port, not {upstream!r}")
        self.upstream = upstream
        self.name = name
        self.log_path = log_dir / f"toxiproxy-{name}.log"
        self.start_timeout = start_timeout
        # toxiproxy's own handler timeout is 25 s; removing a toxic waits up to 5 s to flush.
        self.api_timeout = api_timeout
        self._binary = binary
        self._child: Component | None = None
        self._api: httpx.Client | None = None
        self._api_port: int | None = None
        self._listen: str | None = None
        self._names = itertools.count(1)

    # Lifecycle ------------------------------------------------------------------------

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> Self:
        """Start toxiproxy-server, wait for its API and create the proxy."""
        if self._child is not None:
            return self
        binary = self._binary or binaries.ensure([BINARY])[BINARY]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            for attempt in range(3):
                try:
                    self._start_server(binary)
                    break
                except _ApiPortTaken:
                    self.stop()
                    if attempt == 2:
                        raise FaultProxyError(
                            f"toxiproxy's API port was taken three times; log: {self.log_path}"
                        ) from None
            created = self._call(
                "POST",
                "/proxies",
                # Port 0: toxiproxy binds a free port itself and reports it, so no other
                # process can take it in between; enable() later binds that same port.
                json={
                    "name": self.name,
                    "listen": f"{HOST}:0",
                    "upstream": self.upstream,
                    "enabled": True,
                },
            )
            listen = str(created["listen"])
            if not listen.startswith(f"{HOST}:"):
                raise FaultProxyError(f"toxiproxy listens on {listen}, not on {HOST}")
            self._listen = listen
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Kill toxiproxy-server (SIGTERM, then SIGKILL to its group); open connections end."""
        if self._api is not None:
            self._api.close()
            self._api = None
        if self._child is not None:
            self._child.stop()
            self._child = None
        self._listen = None

    def _start_server(self, binary: Path) -> None:
        self._api_port = _free_port()
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._child = Component(
            BINARY,
            [str(binary), "-host", HOST, "-port", str(self._api_port)],
            self.log_path,
            # The readiness check reads toxiproxy's per-request (debug) log lines.
            env={**os.environ, "LOG_LEVEL": "debug"},
        )
        self._child.start(die_with_parent=True)
        self._api = httpx.Client(
            base_url=self.api_url,
            timeout=self.api_timeout,
            # An HTTP(S)_PROXY from the environment must not carry calls to 127.0.0.1.
            trust_env=False,
            headers={"User-Agent": _USER_AGENT},
        )
        self._wait_api(offset)

    def _wait_api(self, log_offset: int) -> None:
        """Wait until the API answers, and answers from *our* process.

        A foreign server on the port would answer too while toxiproxy failed to bind; each
        answer carries a request id, and only our process logs the ids it served.
        """
        assert self._child is not None and self._api is not None
        deadline = time.monotonic() + self.start_timeout
        served: list[str] = []
        while True:
            log = self._log_since(log_offset)
            if _API_FAILED in log:
                if _ADDRESS_IN_USE in log:
                    raise _ApiPortTaken
                raise FaultProxyError(f"toxiproxy's API failed to start:\n{tail(self.log_path)}")
            if any(request_id in log for request_id in served):
                return
            if not self._child.running():
                raise FaultProxyError(f"toxiproxy-server exited at start:\n{tail(self.log_path)}")
            with contextlib.suppress(httpx.TransportError):
                response = self._api.get("/version", timeout=1.0)
                request_id = response.headers.get("X-Toxiproxy-Request-Id")
                if response.is_success and request_id:
                    served.append(request_id)
            if time.monotonic() >= deadline:
                raise FaultProxyError(
                    f"toxiproxy's API did not answer on {self.api_url} within "
                    f"{self.start_timeout:.0f} s:\n{tail(self.log_path)}"
                )
            time.sleep(0.05)

    def _log_since(self, offset: int) -> str:
        try:
            with self.log_path.open("rb") as log:
                log.seek(offset)
                return log.read().decode(errors="replace")
        except OSError:
            return ""

    # Addresses ------------------------------------------------------------------------

    @property
    def listen(self) -> str:
        """Where clients connect: "127.0.0.1:PORT"."""
        if self._listen is None:
            raise FaultProxyError("the fault proxy is not started")
        return self._listen

    def url_for(self, scheme: str) -> str:
        """A base URL through the proxy, e.g. `url_for("https")`."""
        return f"{scheme}://{self.listen}"

    @property
    def api_url(self) -> str:
        """toxiproxy's own HTTP API."""
        if self._api_port is None:
            raise FaultProxyError("the fault proxy is not started")
        return f"http://{HOST}:{self._api_port}"

    @property
    def pid(self) -> int | None:
        return self._child.pid if self._child is not None else None

    # Faults ---------------------------------------------------------------------------

    def disable(self) -> None:
        """Stop listening: new connections are refused, open ones are closed."""
        self._call("PATCH", f"/proxies/{self.name}", json={"enabled": False})

    def enable(self) -> None:
        """Listen again, on the same port."""
        self._call("PATCH", f"/proxies/{self.name}", json={"enabled": True})

    def add_toxic(
        self,
        kind: str,
        *,
        stream: Stream = "downstream",
        toxicity: float = 1.0,
        name: str | None = None,
        **attributes: Any,
    ) -> str:
        """Add a toxic (toxiproxy's `type`: latency, timeout, reset_peer, bandwidth,
        slow_close, slicer, limit_data) with its attributes; returns its name.

        `toxicity` is the share of connections it affects, drawn per connection.
        Attribute names are toxiproxy's (`latency`, `jitter`, `timeout`, `rate`, ...).
        """
        toxic_name = name or f"{kind}_{stream}_{next(self._names)}"
        created = self._call(
            "POST",
            f"/proxies/{self.name}/toxics",
            json={
                "name": toxic_name,
                "type": kind,
                "stream": stream,
                "toxicity": toxicity,
                "attributes": attributes,
            },
        )
        return str(created["name"])

    def remove_toxic(self, name: str) -> None:
        self._call("DELETE", f"/proxies/{self.name}/toxics/{name}")

    def toxics(self) -> list[dict[str, Any]]:
        """The toxics in place, as toxiproxy reports them."""
        listed: list[dict[str, Any]] = self._call("GET", f"/proxies/{self.name}/toxics")
        return listed

    def clear_toxics(self) -> None:
        for toxic in self.toxics():
            self.remove_toxic(str(toxic["name"]))

    def reset(self) -> None:
        """No toxics, enabled: as just started (same ports)."""
        self._call("POST", "/reset")

    def latency(self, ms: int, jitter: int = 0, *, stream: Stream = "downstream") -> str:
        """Delay data by `ms` ± `jitter` milliseconds."""
        return self.add_toxic("latency", stream=stream, latency=ms, jitter=jitter)

    def reset_peer(self, timeout_ms: int = 0, *, stream: Stream = "downstream") -> str:
        """Reset connections `timeout_ms` after data arrives (0: at once)."""
        return self.add_toxic("reset_peer", stream=stream, timeout=timeout_ms)

    def timeout(self, ms: int = 0, *, stream: Stream = "downstream") -> str:
        """Black hole: drop data and hold connections open; close them after `ms`
        (0: until the toxic is removed, which closes them)."""
        return self.add_toxic("timeout", stream=stream, timeout=ms)

    @contextlib.contextmanager
    def toxic(
        self,
        kind: str,
        *,
        stream: Stream = "downstream",
        toxicity: float = 1.0,
        **attributes: Any,
    ) -> Iterator[str]:
        """A toxic for the duration of a `with` block (already gone on exit is fine)."""
        name = self.add_toxic(kind, stream=stream, toxicity=toxicity, **attributes)
        try:
            yield name
        finally:
            try:
                self.remove_toxic(name)
            except FaultProxyError as err:
                if err.status != 404:
                    raise

    # API ------------------------------------------------------------------------------

    def _call(self, method: str, path: str, *, json: dict[str, Any] | None = None) -> Any:
        if self._api is None:
            raise FaultProxyError("the fault proxy is not started")
        response = self._api.request(method, path, json=json)
        if response.is_error:
            raise FaultProxyError(
                f"toxiproxy {method} {path} answered {response.status_code}: "
                f"{response.text.strip()}",
                response.status_code,
            )
        return response.json() if response.content else None


def kubeconfig_through(proxy: FaultProxy, kubeconfig: Path, out: Path) -> Path:
    """Write to `out` a copy of `kubeconfig` whose current cluster is reached through `proxy`.

    Only the server's host and port change: same scheme, same CA, same credentials. TLS
    passes through the proxy untouched, so the client still verifies the API server's own
    certificate; a certificate naming 127.0.0.1 accepts any port (SANs carry none). A
    server named otherwise (e.g. `localhost`) keeps its name as `tls-server-name`.
    """
    config = yaml.safe_load(kubeconfig.read_text())
    current = config["current-context"]
    context = next(c["context"] for c in config["contexts"] if c["name"] == current)
    cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"])
    server = urllib.parse.urlsplit(cluster["server"])
    cluster["server"] = urllib.parse.urlunsplit(server._replace(netloc=proxy.listen))
    if server.scheme == "https" and server.hostname and server.hostname != HOST:
        cluster.setdefault("tls-server-name", server.hostname)
    # It carries the original's credentials: private before anything is written.
    out.touch(mode=0o600, exist_ok=True)
    out.chmod(0o600)
    out.write_text(yaml.safe_dump(config, sort_keys=False))
    return out
