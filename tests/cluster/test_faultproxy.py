"""The fault proxy puts real network faults between the kubernetes client and the API
server: refused connections, black holes, resets and latency, on and off at will.

These test the harness (`overshoot_localstack.faultproxy`), not the operator. The client
makes a single attempt per request (urllib3 retries off), so each test sees the fault
itself rather than urllib3's retries of it.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from kubernetes import client, config
from urllib3.exceptions import (
    MaxRetryError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
)

from fixtures.cluster import wait_for
from overshoot_localstack import faultproxy, kube
from overshoot_localstack.cluster import ControlPlane
from overshoot_localstack.faultproxy import FaultProxy, kubeconfig_through

pytestmark = pytest.mark.integration


@pytest.fixture
def fault_proxy(cluster: ControlPlane, tmp_path: Path) -> Iterator[FaultProxy]:
    """A fault proxy in front of the API server, stopped after the test, failed or not."""
    upstream = urllib.parse.urlsplit(cluster.server).netloc
    with FaultProxy(upstream, log_dir=tmp_path) as proxy:
        yield proxy


@pytest.fixture
def proxied_kubeconfig(cluster: ControlPlane, fault_proxy: FaultProxy, tmp_path: Path) -> Path:
    return kubeconfig_through(fault_proxy, cluster.kubeconfig, tmp_path / "kubeconfig-proxied")


@pytest.fixture
def core(proxied_kubeconfig: Path) -> Iterator[client.CoreV1Api]:
    """An admin CoreV1Api through the fault proxy, one attempt per request."""
    configuration = client.Configuration()
    config.load_kube_config(config_file=str(proxied_kubeconfig), client_configuration=configuration)
    configuration.retries = False
    with client.ApiClient(configuration) as api_client:
        yield client.CoreV1Api(api_client)


def _namespaces(core: client.CoreV1Api, **kwargs: object) -> set[str]:
    return {ns.metadata.name for ns in core.list_namespace(**kwargs).items}


def _root_cause(err: BaseException) -> BaseException:
    """The OSError under urllib3's wrappers (ProtocolError carries it as its second arg)."""
    while True:
        nested = err.__cause__ or next(
            (arg for arg in err.args if isinstance(arg, BaseException)), None
        )
        if nested is None:
            return err
        err = nested


def test_kubernetes_client_works_through_the_proxy(
    cluster: ControlPlane,
    fault_proxy: FaultProxy,
    proxied_kubeconfig: Path,
    core: client.CoreV1Api,
    namespace: str,
) -> None:
    original = yaml.safe_load(cluster.kubeconfig.read_text())["clusters"][0]["cluster"]
    proxied = yaml.safe_load(proxied_kubeconfig.read_text())["clusters"][0]["cluster"]
    assert proxied["server"] == fault_proxy.url_for("https") != original["server"]
    assert proxied["certificate-authority-data"] == original["certificate-authority-data"]
    assert fault_proxy.listen.startswith("127.0.0.1:")

    # The CA verifies the API server's certificate at the proxy's port (the SAN 127.0.0.1
    # names no port), so nothing weakens TLS.
    assert core.api_client.configuration.verify_ssl
    assert namespace in _namespaces(core)


def test_disable_refuses_and_closes_connections_and_enable_restores(
    cluster: ControlPlane, fault_proxy: FaultProxy, core: client.CoreV1Api
) -> None:
    assert "default" in _namespaces(core)
    host, port = fault_proxy.listen.rsplit(":", 1)
    tls = ssl.create_default_context(cafile=str(cluster.ca_file))
    # An established connection: the TLS handshake reached the API server through the proxy.
    with (
        socket.create_connection((host, int(port)), timeout=5) as raw,
        tls.wrap_socket(raw, server_hostname=host) as conn,
    ):
        fault_proxy.disable()
        assert conn.recv(1) == b"", "disable() should close open connections"

    with pytest.raises(NewConnectionError) as caught:
        core.list_namespace()
    assert isinstance(_root_cause(caught.value), ConnectionRefusedError)

    fault_proxy.enable()
    assert "default" in _namespaces(core)


def test_timeout_black_holes_requests_until_removed(
    fault_proxy: FaultProxy, core: client.CoreV1Api
) -> None:
    assert "default" in _namespaces(core)
    toxic = fault_proxy.timeout()
    with pytest.raises(ReadTimeoutError):
        core.list_namespace(_request_timeout=2)

    fault_proxy.remove_toxic(toxic)
    assert fault_proxy.toxics() == []
    # Removing a timeout toxic closes the connections it held; a new one works at once.
    assert "default" in _namespaces(core, _request_timeout=10)


def test_reset_peer_resets_connections(fault_proxy: FaultProxy, core: client.CoreV1Api) -> None:
    assert "default" in _namespaces(core)
    with fault_proxy.toxic("reset_peer", timeout=0) as toxic:
        assert [t["name"] for t in fault_proxy.toxics()] == [toxic]
        # The pooled connection predates the toxic: toxiproxy closes it (a plain FIN, as it
        # can no longer set SO_LINGER on it), which the client sees as an aborted request.
        with pytest.raises(ProtocolError):
            core.list_namespace()
        # A connection opened under the toxic is reset (RST).
        with pytest.raises(ProtocolError) as caught:
            core.list_namespace()
        assert isinstance(_root_cause(caught.value), ConnectionResetError)
    assert fault_proxy.toxics() == []
    wait_for(lambda: _namespaces(core), 10, what="requests to succeed without the toxic")


def test_latency_delays_responses(fault_proxy: FaultProxy, core: client.CoreV1Api) -> None:
    assert "default" in _namespaces(core)
    fault_proxy.latency(300)

    started = time.monotonic()
    assert "default" in _namespaces(core)
    # Time passing is the subject here; only the lower bound is the proxy's doing.
    assert time.monotonic() - started >= 0.3

    fault_proxy.reset()
    assert fault_proxy.toxics() == []


def _listening_addresses(pid: int) -> set[str]:
    """Local addresses ("ip:port", hex as in /proc/net/tcp*) of `pid`'s listening sockets."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    addresses = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:  # 0A: LISTEN
                addresses.add(local)
    return addresses


def test_binds_only_loopback(tmp_path: Path) -> None:
    # Nothing needs to answer upstream: toxiproxy dials it only when a client connects.
    with FaultProxy("127.0.0.1:9", log_dir=tmp_path) as proxy:
        assert proxy.pid is not None
        api_port = urllib.parse.urlsplit(proxy.api_url).port
        listen_port = int(proxy.listen.rsplit(":", 1)[1])
        # 0100007F is 127.0.0.1 in /proc's little-endian hex.
        assert _listening_addresses(proxy.pid) == {
            f"0100007F:{api_port:04X}",
            f"0100007F:{listen_port:04X}",
        }


def test_stop_leaves_no_process_even_when_the_body_fails(tmp_path: Path) -> None:
    proxy = FaultProxy("127.0.0.1:9", log_dir=tmp_path).start()
    pid, api_url, listen = proxy.pid, proxy.api_url, proxy.listen
    with pytest.raises(RuntimeError, match="test body failed"), proxy:
        raise RuntimeError("test body failed")

    assert pid is not None
    # Stopped on the way out of `with`, and reaped: no process, not even a zombie.
    assert not Path(f"/proc/{pid}").exists()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    for port in (urllib.parse.urlsplit(api_url).port, int(listen.rsplit(":", 1)[1])):
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port or 0), timeout=5).close()
    assert "Starting Toxiproxy" in proxy.log_path.read_text()


class _ImpostorHandler(http.server.BaseHTTPRequestHandler):
    """Answers like toxiproxy's API (200 and a request id) without being it."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("X-Toxiproxy-Request-Id", "impostor")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_api_port_taken_by_another_server_is_detected_and_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ImpostorHandler) as impostor:
        thread = threading.Thread(target=impostor.serve_forever, daemon=True)
        thread.start()
        try:
            taken = int(impostor.server_address[1])
            ports = iter([taken])
            real_free_port = faultproxy._free_port
            monkeypatch.setattr(
                faultproxy, "_free_port", lambda: next(ports, None) or real_free_port()
            )
            with FaultProxy("127.0.0.1:9", log_dir=tmp_path) as proxy:
                # The impostor answered first; the proxy noticed toxiproxy's failed bind.
                assert urllib.parse.urlsplit(proxy.api_url).port != taken
                assert proxy.toxics() == []
        finally:
            impostor.shutdown()
            thread.join(timeout=10)
    log = proxy.log_path.read_text()
    assert "address already in use" in log
    assert log.count("Starting Toxiproxy HTTP server") == 2


def test_kubeconfig_for_a_named_server_keeps_verifying_that_name(
    cluster: ControlPlane, fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    # The same API server, named as the serving certificate's DNS SAN `localhost`.
    by_name = yaml.safe_load(cluster.kubeconfig.read_text())
    port = urllib.parse.urlsplit(cluster.server).port
    by_name["clusters"][0]["cluster"]["server"] = f"https://localhost:{port}"
    original = tmp_path / "kubeconfig-localhost"
    original.write_text(yaml.safe_dump(by_name))

    path = kubeconfig_through(fault_proxy, original, tmp_path / "kubeconfig-localhost-proxied")
    proxied = yaml.safe_load(path.read_text())["clusters"][0]["cluster"]
    assert proxied["server"] == fault_proxy.url_for("https")
    assert proxied["tls-server-name"] == "localhost"
    assert path.stat().st_mode & 0o777 == 0o600
    with kube.api_client(path) as api_client:
        assert "default" in _namespaces(client.CoreV1Api(api_client))

    # The control: the client really checks that name (the certificate's 127.0.0.1 SAN
    # alone would have passed above).
    by_name = yaml.safe_load(path.read_text())
    by_name["clusters"][0]["cluster"]["tls-server-name"] = "not-in-the-certificate.invalid"
    path.write_text(yaml.safe_dump(by_name))
    with kube.api_client(path) as api_client, pytest.raises(MaxRetryError) as caught:
        client.CoreV1Api(api_client).list_namespace()
    assert "not valid for 'not-in-the-certificate.invalid'" in str(caught.value.reason)
