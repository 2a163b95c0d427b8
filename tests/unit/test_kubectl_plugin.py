"""The kubectl plugin (plugin/overshoot_kubectl) without servers.

The table from status dicts; argument parsing; kubeconfig and namespace resolution from
files; every error a user can meet, through `main()` with the API server, Overshoot and
LiveKit replaced (a fake cluster, or the real `KubeCluster` with its API calls answering
canned ApiExceptions; the real `OvershootClient` on an `httpx.MockTransport`; a fake frame
grabber); the JPEG encoder and the SDK's frame conversion on synthetic pictures. No key or
token ever appears in what the plugin prints. tests/node/test_kubectl_snapshot.py runs the
console script against the real stack.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np
import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from livekit import rtc

from overshoot_kubectl import __main__ as cli
from overshoot_kubectl import errors, table
from overshoot_kubectl.cluster import KubeCluster
from overshoot_kubectl.deadline import Deadline
from overshoot_kubectl.errors import NoVideoTrack, Redactor, RoomProblem
from overshoot_kubectl.jpeg import encode_jpeg
from overshoot_kubectl.room import frame_to_rgb
from overshoot_kubectl.streams import ObservedStream
from overshoot_operator import overshoot as ov

pytestmark = pytest.mark.unit

NOW = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)
SID = "2ea5a604-d225-4cd2-82ac-b907cb0b4f63"
API_KEY = "ovs_plugin_unit_key_5e0c1d9a7b"
VIEW_TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJ2aWRlbyI6eyJyb29tIjoieCJ9fQ.c2lnbmF0dXJlLXVuaXQ"
VIEW_URL = "ws://livekit.example:7880"


def ago(seconds: float) -> str:
    return (NOW - timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def ready(status: str, reason: str, message: str = "") -> dict[str, Any]:
    return {"type": "Ready", "status": status, "reason": reason, "message": message}


def stream_object(
    name: str = "lobby",
    namespace: str = "cams",
    *,
    status: dict[str, Any] | None = None,
    api_key_ref: dict[str, Any] | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {"source": {"testPattern": {"pattern": "smpte"}}}
    if api_key_ref is not None:
        spec["apiKeySecretRef"] = api_key_ref
    obj: dict[str, Any] = {
        "apiVersion": "overshoot.ai/v1alpha1",
        "kind": "OvershootStream",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }
    if status is not None:
        obj["status"] = status
    return obj


def publishing(**extra: Any) -> dict[str, Any]:
    return {
        "phase": "Publishing",
        "streamId": SID,
        "delivery": "Publisher",
        "region": "us-west1",
        "stream": {"recentFps": 15.0, "lastFrameAt": ago(3)},
        "conditions": [ready("True", "Publishing", "Frames are reaching Overshoot")],
        **extra,
    }


# ---- the table ---------------------------------------------------------------------------


def test_the_table_shows_every_column_from_status() -> None:
    streams = [
        ObservedStream.from_object(stream_object("lobby", status=publishing())),
        ObservedStream.from_object(
            stream_object(
                "dock",
                status={
                    "phase": "Degraded",
                    "streamId": SID,
                    "delivery": "ServerPull",
                    "region": "us-central1",
                    "stream": {
                        "recentFps": 7.5,
                        "lastFrameAt": ago(3600),
                        "lastPullAt": ago(330),
                    },
                    "conditions": [ready("False", "FramesStopped")],
                },
            )
        ),
    ]
    text = table.render(table.rows(streams, now=NOW, all_namespaces=False))
    assert text == (
        "NAME    PHASE        DELIVERY     FPS   LAST FRAME   REGION        REASON\n"
        "dock    Degraded     ServerPull   7.5   5m30s        us-central1   FramesStopped\n"
        "lobby   Publishing   Publisher    15    3s           us-west1\n"
    )


def test_all_namespaces_adds_the_namespace_column_sorted_like_kubectl() -> None:
    streams = [
        ObservedStream.from_object(stream_object("b", "z-ns", status=publishing())),
        ObservedStream.from_object(stream_object("a", "z-ns", status=publishing())),
        ObservedStream.from_object(stream_object("c", "a-ns", status=publishing())),
    ]
    rows = table.rows(streams, now=NOW, all_namespaces=True)
    assert rows[0][:2] == ("NAMESPACE", "NAME")
    assert [r[:2] for r in rows[1:]] == [("a-ns", "c"), ("z-ns", "a"), ("z-ns", "b")]


@pytest.mark.parametrize(
    "status",
    [
        None,
        {},
        {"phase": "Pending"},
        # Values of types this plugin does not know read as absent, never as a crash.
        {
            "phase": 3,
            "delivery": ["x"],
            "region": {"a": 1},
            "stream": "fast",
            "conditions": "all good",
        },
        {"stream": {"recentFps": "fast", "lastFrameAt": "yesterday", "lastPullAt": 5}},
        {"conditions": [{"type": "Ready"}, "junk", {"type": "Ready", "status": "True"}]},
        {"newField": {"from": "a newer operator"}, "stream": {"unknown": 1}},
    ],
)
def test_missing_or_strange_status_fields_print_as_dashes(status: dict[str, Any] | None) -> None:
    stream = ObservedStream.from_object(stream_object(status=status))
    (_, row) = table.rows([stream], now=NOW, all_namespaces=False)
    name, phase, delivery, fps, last, region, reason = row
    assert name == "lobby"
    assert phase in ("-", "Pending")
    assert (delivery, fps, last, region, reason) == ("-", "-", "-", "-", "")


def test_server_pull_ages_the_last_pull_and_falls_back_to_the_last_frame() -> None:
    def last(status: dict[str, Any]) -> str:
        stream = ObservedStream.from_object(stream_object(status=status))
        return table.rows([stream], now=NOW, all_namespaces=False)[1][4]

    both = {"lastFrameAt": ago(600), "lastPullAt": ago(2)}
    assert last({"delivery": "ServerPull", "stream": both}) == "2s"
    assert last({"delivery": "Publisher", "stream": both}) == "10m"
    assert last({"stream": both}) == "10m"
    assert last({"delivery": "ServerPull", "stream": {"lastFrameAt": ago(90)}}) == "90s"


def test_reason_is_shown_only_while_not_ready() -> None:
    def reason(conditions: list[dict[str, Any]]) -> str:
        stream = ObservedStream.from_object(stream_object(status={"conditions": conditions}))
        return stream.not_ready_reason

    assert reason([ready("True", "Publishing")]) == ""
    assert reason([ready("False", "PublisherFailing")]) == "PublisherFailing"
    assert reason([ready("Unknown", "Creating")]) == "Creating"
    assert reason([{"type": "Publishing", "status": "False", "reason": "NoStream"}]) == ""


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (-5, "<invalid>"),
        (-1, "0s"),
        (0, "0s"),
        (3, "3s"),
        (119, "119s"),
        (120, "2m"),
        (330, "5m30s"),
        (600, "10m"),
        (179 * 60, "179m"),
        (3 * 3600, "3h"),
        (5 * 3600 + 30 * 60, "5h30m"),
        (30 * 3600, "30h"),
        (3 * 86400 + 5 * 3600, "3d5h"),
        (200 * 86400, "200d"),
        (3 * 365 * 86400 + 10 * 86400, "3y10d"),
        (10 * 365 * 86400, "10y"),
    ],
)
def test_ages_read_like_kubectl(seconds: float, text: str) -> None:
    assert table.human_duration(seconds) == text


@pytest.mark.parametrize(
    ("fps", "text"), [(None, "-"), (15.0, "15"), (14.84, "14.8"), (0.0, "0"), (29.97, "30.0")]
)
def test_fps(fps: float | None, text: str) -> None:
    assert table.format_fps(fps) == text


# ---- arguments ---------------------------------------------------------------------------


def test_snapshot_arguments_and_their_defaults() -> None:
    options = cli.parse_args(["snapshot", "lobby"], {})
    assert options.command == "snapshot" and options.name == "lobby"
    assert options.output == Path("lobby.jpg")
    assert options.namespace is None and options.timeout == 20.0
    assert options.api_url == "https://api.overshoot.ai/v1beta"
    assert options.api_key_secret is None and not options.verbose


def test_the_api_url_comes_from_the_flag_then_the_environment() -> None:
    env = {"OVERSHOOT_API_URL": "http://127.0.0.1:8765/v1"}
    assert cli.parse_args(["snapshot", "x"], env).api_url == "http://127.0.0.1:8765/v1"
    flagged = cli.parse_args(["snapshot", "x", "--api-url", "https://o.example/v1beta"], env)
    assert flagged.api_url == "https://o.example/v1beta"


@pytest.mark.parametrize(
    "argv",
    [
        [
            "-n",
            "cams",
            "--context",
            "prod",
            "--kubeconfig",
            "/k",
            "--timeout",
            "30",
            "snapshot",
            "lobby",
        ],
        [
            "snapshot",
            "lobby",
            "-n",
            "cams",
            "--context",
            "prod",
            "--kubeconfig",
            "/k",
            "--timeout",
            "30s",
        ],
        [
            "--context",
            "prod",
            "snapshot",
            "-n",
            "cams",
            "lobby",
            "--timeout=0.5m",
            "--kubeconfig=/k",
        ],
    ],
)
def test_common_options_go_before_or_after_the_command(argv: list[str]) -> None:
    options = cli.parse_args(argv, {})
    assert (options.namespace, options.context, options.kubeconfig) == ("cams", "prod", "/k")
    assert options.timeout == 30.0


def test_get_arguments() -> None:
    assert cli.parse_args(["get", "-A"], {}).all_namespaces
    options = cli.parse_args(["get", "-n", "cams"], {})
    assert options.namespace == "cams" and not options.all_namespaces and options.name is None


def test_api_key_secret_and_output() -> None:
    options = cli.parse_args(
        ["snapshot", "lobby", "--api-key-secret", "team-a/overshoot", "-o", "/tmp/x.jpg"], {}
    )
    assert options.api_key_secret is not None
    assert (options.api_key_secret.namespace, options.api_key_secret.name) == (
        "team-a",
        "overshoot",
    )
    assert options.api_key_secret.key == "apiKey"
    assert options.output == Path("/tmp/x.jpg")
    keyed = cli.parse_args(["snapshot", "l", "--api-key-secret", "a/b:token"], {})
    assert keyed.api_key_secret is not None and keyed.api_key_secret.key == "token"


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["snapshot"],
        ["frobnicate"],
        ["snapshot", "lobby", "--api-key-secret", "no-namespace"],
        ["snapshot", "lobby", "--timeout", "0"],
        ["snapshot", "lobby", "--timeout", "soon"],
        ["snapshot", "lobby", "--api-url", "ftp://x"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(argv, env={}) == 2
    assert "usage: kubectl-overshoot" in capsys.readouterr().err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["snapshot", "--help"], env={}) == 0
    assert "--api-key-secret" in capsys.readouterr().out


# ---- kubeconfig, context and namespace ---------------------------------------------------


def kubeconfig(
    path: Path,
    contexts: Mapping[str, str | None],
    current: str | None,
    server: str = "https://127.0.0.1:6443",
) -> Path:
    config: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": server}}],
        "users": [{"name": "u", "user": {"token": "kube-token-never-printed"}}],
        "contexts": [
            {
                "name": n,
                "context": {"cluster": "c", "user": "u", **({"namespace": ns} if ns else {})},
            }
            for n, ns in contexts.items()
        ],
    }
    if current:
        config["current-context"] = current
    path.write_text(yaml.safe_dump(config))
    return path


def connect(env: Mapping[str, str], **kw: Any) -> KubeCluster:
    cluster = KubeCluster.connect(
        kubeconfig=kw.get("kubeconfig"), context=kw.get("context"), env=env
    )
    cluster.close()
    return cluster


def test_namespace_and_context_come_from_the_kubeconfig(tmp_path: Path) -> None:
    path = kubeconfig(tmp_path / "config", {"prod": "cams", "dev": None}, "prod")
    cluster = connect({}, kubeconfig=str(path))
    assert (cluster.namespace, cluster.context) == ("cams", "prod")
    assert cluster.server == "https://127.0.0.1:6443"
    other = connect({}, kubeconfig=str(path), context="dev")
    assert (other.namespace, other.context) == ("default", "dev")


def test_kubeconfig_list_first_current_context_wins_like_kubectl(tmp_path: Path) -> None:
    first = kubeconfig(tmp_path / "a", {"a": "ns-a"}, "a")
    second = kubeconfig(tmp_path / "b", {"b": "ns-b"}, "b")
    missing = tmp_path / "absent"
    cluster = connect({"KUBECONFIG": f"{missing}:{first}:{second}"})
    assert (cluster.context, cluster.namespace) == ("a", "ns-a")
    # The default file counts only without KUBECONFIG.
    home = tmp_path / "home"
    (home / ".kube").mkdir(parents=True)
    kubeconfig(home / ".kube" / "config", {"h": "ns-h"}, "h")
    assert connect({"HOME": str(home)}).namespace == "ns-h"
    assert connect({"HOME": str(home), "KUBECONFIG": str(second)}).namespace == "ns-b"


@pytest.mark.parametrize(
    ("setup", "kw", "text"),
    [
        ("none", {}, "no kubeconfig: KUBECONFIG is unset"),
        (
            "none",
            {"kubeconfig": "/nonexistent/kubeconfig"},
            "--kubeconfig /nonexistent/kubeconfig: no such file",
        ),
        ("file", {"context": "staging"}, "context 'staging' is not in kubeconfig"),
        ("no-current", {}, "sets no current-context; pass --context NAME"),
    ],
)
def test_kubeconfig_problems_are_one_line(
    tmp_path: Path, setup: str, kw: dict[str, Any], text: str
) -> None:
    env = {"HOME": str(tmp_path)}
    if setup == "file":
        env["KUBECONFIG"] = str(kubeconfig(tmp_path / "k", {"prod": None}, "prod"))
    elif setup == "no-current":
        env["KUBECONFIG"] = str(kubeconfig(tmp_path / "k", {"prod": None}, None))
    with pytest.raises(errors.ConfigError, match=r".") as caught:
        KubeCluster.connect(kubeconfig=kw.get("kubeconfig"), context=kw.get("context"), env=env)
    assert text in str(caught.value)


async def test_an_unreachable_api_server_says_so(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:  # bound, not listening: connections are refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        path = kubeconfig(
            tmp_path / "k", {"prod": "cams"}, "prod", server=f"http://127.0.0.1:{port}"
        )
        cluster = KubeCluster.connect(kubeconfig=str(path), context=None, env={})
        try:
            with pytest.raises(errors.ClusterUnreachable) as caught:
                await cluster.get_stream("cams", "lobby", limit=5)
        finally:
            cluster.close()
    text = str(caught.value)
    assert f"could not reach the API server http://127.0.0.1:{port}" in text
    assert "refused" in text.lower() and "object at 0x" not in text
    assert "context 'prod'" in text


# ---- the API server's answers, translated by cluster.py ----------------------------------


def api_error(status: int, reason: str, body: dict[str, Any] | str) -> ApiException:
    err = ApiException(status=status, reason=reason)
    err.body = body if isinstance(body, str) else json.dumps(body)
    return err


def forbidden(resource: str, group: str, name: str, namespace: str, user: str) -> ApiException:
    kind = f"{resource}.{group}" if group else resource
    return api_error(
        403,
        "Forbidden",
        {
            "kind": "Status",
            "status": "Failure",
            "reason": "Forbidden",
            "code": 403,
            "message": f'{kind} "{name}" is forbidden: User "{user}" cannot get resource '
            f'"{resource}" in API group "{group}" in the namespace "{namespace}"',
            "details": {"name": name, "kind": resource},
        },
    )


def not_found(name: str, kind: str) -> ApiException:
    return api_error(
        404,
        "Not Found",
        {
            "kind": "Status",
            "reason": "NotFound",
            "code": 404,
            "details": {"name": name, "kind": kind},
        },
    )


class CannedKube:
    """The real KubeCluster, its API calls answering from dicts (or raising)."""

    def __init__(
        self,
        streams: Mapping[tuple[str, str], dict[str, Any] | Exception] = {},
        secrets: Mapping[tuple[str, str], dict[str, str] | Exception] = {},
        *,
        namespace: str = "cams",
    ) -> None:
        self.cluster = KubeCluster(
            client.ApiClient(client.Configuration(host="https://k8s.example:6443")),
            namespace=namespace,
            context="alice@prod",
        )
        self.cluster._custom.get_namespaced_custom_object = self._get  # type: ignore[method-assign]
        self.cluster._core.read_namespaced_secret = self._secret  # type: ignore[method-assign]
        self._streams = streams
        self._secrets = secrets

    def _get(self, group: str, version: str, ns: str, plural: str, name: str, **_: Any) -> Any:
        found = self._streams.get((ns, name), not_found(name, plural))
        if isinstance(found, Exception):
            raise found
        return found

    def _secret(self, name: str, ns: str, **_: Any) -> Any:
        found = self._secrets.get((ns, name), not_found(name, "secrets"))
        if isinstance(found, Exception):
            raise found
        encoded = {k: base64.b64encode(v.encode()).decode() for k, v in found.items()}
        return client.V1Secret(data=encoded)


# ---- snapshot through main(), every outcome ----------------------------------------------


class FakeCluster:
    def __init__(
        self,
        streams: list[dict[str, Any]] = [],  # noqa: B006
        secrets: Mapping[tuple[str, str], dict[str, str]] = {},
        *,
        namespace: str = "cams",
        hang: bool = False,
    ) -> None:
        self.namespace = namespace
        self.streams = streams
        self.secrets = {
            where: {k: v.encode() for k, v in data.items()} for where, data in secrets.items()
        }
        self.hang = hang
        self.closed = False
        self.reads: list[tuple[str, str, str]] = []

    async def get_stream(self, namespace: str, name: str, *, limit: float) -> dict[str, Any] | None:
        self.reads.append(("stream", namespace, name))
        if self.hang:
            await asyncio.sleep(3600)
        return next(
            (
                s
                for s in self.streams
                if s["metadata"]["namespace"] == namespace and s["metadata"]["name"] == name
            ),
            None,
        )

    async def list_streams(self, namespace: str | None, *, limit: float) -> list[dict[str, Any]]:
        return [s for s in self.streams if namespace in (None, s["metadata"]["namespace"])]

    async def read_secret(
        self, namespace: str, name: str, *, limit: float
    ) -> dict[str, bytes] | None:
        self.reads.append(("secret", namespace, name))
        return self.secrets.get((namespace, name))

    def close(self) -> None:
        self.closed = True


def the_key(namespace: str = "cams", name: str = "overshoot", key: str = "apiKey") -> Any:
    return {(namespace, name): {key: API_KEY + "\n"}}


async def no_sleep(_: float) -> None:
    return None


def overshoot_answering(
    status: int, body: dict[str, Any] | None = None, seen: list[httpx.Request] | None = None
) -> Callable[[str], ov.OvershootClient]:
    def handler(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        return httpx.Response(
            status, json=body if body is not None else {"detail": "Stream not found"}
        )

    def make(url: str) -> ov.OvershootClient:
        return ov.OvershootClient(url, transport=httpx.MockTransport(handler), sleep=no_sleep)

    return make


VIEW = {"view": {"url": VIEW_URL, "token": VIEW_TOKEN, "expires_in_seconds": 300}}


def picture(width: int = 64, height: int = 36) -> np.ndarray[Any, np.dtype[np.uint8]]:
    rgb = np.zeros((height, width, 3), np.uint8)
    rgb[:, : width // 2] = (255, 255, 0)
    rgb[:, width // 2 :] = (0, 0, 255)
    return rgb


def grabbing(result: Any, seen: list[tuple[str, str, float]] | None = None) -> Callable[[], Any]:
    async def grab(url: str, token: Any, *, limit: float) -> Any:
        if seen is not None:
            seen.append((url, token.get_secret_value(), limit))
        if isinstance(result, Exception):
            raise result
        return result

    return lambda: grab


def run(
    argv: list[str],
    cluster: Any,
    *,
    overshoot: Callable[[str], Any] | None = None,
    grab: Any = None,
    env: Mapping[str, str] | None = None,
) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    wiring = cli.Wiring(
        connect=lambda options, env: cluster,
        overshoot=overshoot or overshoot_answering(200, VIEW),
        grabber=grab or grabbing(picture()),
        now=lambda: NOW,
    )
    code = cli.main(argv, env=env or {}, wiring=wiring, stdout=out, stderr=err)
    stdout, stderr = out.getvalue(), err.getvalue()
    for secret in (API_KEY, VIEW_TOKEN, "kube-token-never-printed"):
        assert secret not in stdout and secret not in stderr
    assert "eyJ" not in stdout + stderr
    return code, stdout, stderr


def one_error_line(stderr: str) -> str:
    assert stderr.count("\n") == 1 and stderr.startswith("error: "), stderr
    assert "Traceback" not in stderr
    return stderr


def test_a_snapshot_is_written_and_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cluster = FakeCluster(
        [stream_object(status=publishing(), api_key_ref={"name": "overshoot"})], the_key()
    )
    requests: list[httpx.Request] = []
    grabbed: list[tuple[str, str, float]] = []
    code, out, err = run(
        ["snapshot", "lobby", "--timeout", "15"],
        cluster,
        overshoot=overshoot_answering(200, VIEW, requests),
        grab=grabbing(picture(), grabbed),
        env={"OVERSHOOT_API_URL": "http://emulator.test/v1"},
    )
    assert (code, err) == (0, "")
    assert out == f"Wrote lobby.jpg (64x36) from stream {SID}\n"
    with av.open(str(tmp_path / "lobby.jpg")) as container:
        frame = next(container.decode(video=0))
    assert (frame.width, frame.height) == (64, 36)
    # The context's namespace, the resource's own Secret, the stream's region.
    assert cluster.reads == [("stream", "cams", "lobby"), ("secret", "cams", "overshoot")]
    (request,) = requests
    assert str(request.url) == f"http://emulator.test/v1/streams/{SID}/viewer-token"
    assert request.headers["authorization"] == f"Bearer {API_KEY}"
    assert request.headers["x-overshoot-region"] == "us-west1"
    (url, token, limit) = grabbed[0]
    assert (url, token) == (VIEW_URL, VIEW_TOKEN) and 10 < limit <= 15
    assert cluster.closed


def test_a_stream_without_region_sends_none_and_the_default_secret_is_used(tmp_path: Path) -> None:
    status = publishing()
    del status["region"]
    cluster = FakeCluster(
        [stream_object(status=status)], the_key("overshoot-system", "overshoot-api-key")
    )
    requests: list[httpx.Request] = []
    code, out, _ = run(
        ["snapshot", "lobby", "-o", str(tmp_path / "x.jpg")],
        cluster,
        overshoot=overshoot_answering(200, VIEW, requests),
    )
    assert code == 0 and out.startswith(f"Wrote {tmp_path / 'x.jpg'} (64x36)")
    assert "x-overshoot-region" not in requests[0].headers
    assert cluster.reads[-1] == ("secret", "overshoot-system", "overshoot-api-key")


def test_api_key_secret_overrides_and_names_another_key(tmp_path: Path) -> None:
    cluster = FakeCluster(
        [stream_object(status=publishing(), api_key_ref={"name": "theirs"})],
        the_key("mine", "keys", "token"),
    )
    code, _, _ = run(
        ["snapshot", "lobby", "--api-key-secret", "mine/keys:token", "-o", str(tmp_path / "x.jpg")],
        cluster,
    )
    assert code == 0 and cluster.reads[-1] == ("secret", "mine", "keys")


@pytest.mark.parametrize(
    ("streams", "secrets", "expected"),
    [
        ([], {}, "OvershootStream cams/lobby not found; `kubectl overshoot get -n cams`"),
        (
            [
                stream_object(
                    status={"phase": "Suspended", "conditions": [ready("False", "Suspended")]}
                )
            ],
            {},
            "OvershootStream cams/lobby has no status.streamId (phase Suspended, Ready reason "
            "Suspended): there is no remote stream to look at; set spec.suspend to false",
        ),
        (
            [
                stream_object(
                    status={"phase": "Pending", "conditions": [ready("False", "Creating")]}
                )
            ],
            {},
            "has no status.streamId (phase Pending, Ready reason Creating): there is no remote "
            "stream to look at; wait until it is Publishing (`kubectl overshoot get -n cams`)",
        ),
        (
            [stream_object()],
            {},
            "has no status.streamId (phase unknown)",
        ),
        (
            [
                stream_object(
                    status=publishing(
                        phase="Degraded",
                        conditions=[
                            ready("False", "FramesStopped", "Frames stopped reaching Overshoot")
                        ],
                    )
                )
            ],
            {},
            "OvershootStream cams/lobby has no frames to show (phase Degraded, Ready reason "
            "FramesStopped: Frames stopped reaching Overshoot); check the publisher: "
            "`kubectl logs -n cams lobby-publisher`",
        ),
        (
            [
                stream_object(
                    status=publishing(
                        phase="Provisioning",
                        delivery="ServerPull",
                        conditions=[ready("False", "WaitingForFrames")],
                    )
                )
            ],
            {},
            "has no frames to show (phase Provisioning, Ready reason WaitingForFrames); check "
            "that Overshoot can reach the camera",
        ),
        (
            [stream_object(status=publishing(), api_key_ref={"name": "lobby-key"})],
            {},
            "Secret cams/lobby-key (spec.apiKeySecretRef of OvershootStream cams/lobby) does not "
            "exist; create it with key 'apiKey', or pass --api-key-secret NAMESPACE/NAME[:KEY]",
        ),
        (
            [stream_object(status=publishing(), api_key_ref={"name": "lobby-key", "key": "k"})],
            {("cams", "lobby-key"): {"apiKey": API_KEY, "other": "x"}},
            "Secret cams/lobby-key (spec.apiKeySecretRef of OvershootStream cams/lobby) has no "
            "key 'k' (keys present: apiKey, other); add it, or pass --api-key-secret",
        ),
        (
            [stream_object(status=publishing())],
            {},
            "Secret overshoot-system/overshoot-api-key (the operator's default, as OvershootStream "
            "cams/lobby has no spec.apiKeySecretRef) does not exist",
        ),
        (
            [stream_object(status=publishing(), api_key_ref={"name": "k"})],
            {("cams", "k"): {"apiKey": "  \n"}},
            "key 'apiKey' is empty or not text; put the API key in it",
        ),
    ],
)
def test_what_stops_a_snapshot_before_overshoot(
    streams: list[dict[str, Any]],
    secrets: dict[tuple[str, str], dict[str, str]],
    expected: str,
    tmp_path: Path,
) -> None:
    requests: list[httpx.Request] = []
    code, out, err = run(
        ["snapshot", "lobby", "-o", str(tmp_path / "x.jpg")],
        FakeCluster(streams, secrets),
        overshoot=overshoot_answering(200, VIEW, requests),
    )
    assert code == 1 and out == "" and requests == []
    assert expected in one_error_line(err)
    assert not (tmp_path / "x.jpg").exists()


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (
            404,
            {"detail": "Stream not found"},
            f"Overshoot has no stream {SID} (404: it ended, expired or was deleted) for "
            "OvershootStream cams/lobby; the operator replaces an ended stream: retry when "
            "status.streamId has changed",
        ),
        (
            401,
            {"detail": "Invalid or missing API key"},
            "Overshoot refused the API key in Secret cams/overshoot key 'apiKey' (401: missing, "
            "invalid or not assigned); put a valid key there, or pass --api-key-secret",
        ),
        (402, {"detail": "Insufficient credits"}, "insufficient credits"),
        (503, {"detail": "draining"}, "Overshoot at http://o.test/v1beta is unavailable"),
    ],
)
def test_overshoot_refusing_the_viewer_token(
    status: int, body: dict[str, Any], expected: str, tmp_path: Path
) -> None:
    cluster = FakeCluster(
        [stream_object(status=publishing(), api_key_ref={"name": "overshoot"})], the_key()
    )
    code, _, err = run(
        ["snapshot", "lobby", "-o", str(tmp_path / "x.jpg"), "--api-url", "http://o.test/v1beta"],
        cluster,
        overshoot=overshoot_answering(status, {**body, "echo": API_KEY}),
    )
    assert code == 1
    assert expected in one_error_line(err)


@pytest.mark.parametrize(
    ("failure", "expected"),
    [
        (
            NoVideoTrack(20),
            f"no video track appeared in the room of stream {SID} within 20 s: nothing "
            "publishes into OvershootStream cams/lobby right now (phase Publishing); check the "
            "publisher: `kubectl logs -n cams lobby-publisher`, or retry with a longer --timeout",
        ),
        (
            errors.NoFrameDecoded(20),
            "has a video track, but no frame was decoded within 20 s",
        ),
        (
            # LiveKit's own words may quote the URL with the token: never printed.
            RoomProblem(
                f"could not join the room at {VIEW_URL}: 401 for ?access_token={VIEW_TOKEN}"
            ),
            f"OvershootStream cams/lobby, stream {SID}: could not join the room at {VIEW_URL}: "
            "401 for ?access_token=***",
        ),
    ],
)
def test_the_room_without_a_picture(failure: Exception, expected: str, tmp_path: Path) -> None:
    cluster = FakeCluster(
        [stream_object(status=publishing(), api_key_ref={"name": "overshoot"})], the_key()
    )
    code, _, err = run(
        ["snapshot", "lobby", "-o", str(tmp_path / "x.jpg")], cluster, grab=grabbing(failure)
    )
    assert code == 1
    assert expected in one_error_line(err)
    assert not (tmp_path / "x.jpg").exists()


def test_a_secret_the_user_may_not_read(tmp_path: Path) -> None:
    user = "system:serviceaccount:cams:viewer"
    kube = CannedKube(
        {("cams", "lobby"): stream_object(status=publishing(), api_key_ref={"name": "overshoot"})},
        {("cams", "overshoot"): forbidden("secrets", "", "overshoot", "cams", user)},
    )
    code, _, err = run(["snapshot", "lobby", "-o", str(tmp_path / "x.jpg")], kube.cluster)
    assert code == 1
    assert one_error_line(err) == (
        "error: you may not read Secret cams/overshoot (get secrets is forbidden for user "
        f"{user}); ask for access or pass --api-key-secret\n"
    )


def test_a_stream_the_user_may_not_read(tmp_path: Path) -> None:
    user = "bob@example.com"
    kube = CannedKube(
        {("cams", "lobby"): forbidden("overshootstreams", "overshoot.ai", "lobby", "cams", user)}
    )
    code, _, err = run(["snapshot", "lobby", "-o", str(tmp_path / "x.jpg")], kube.cluster)
    assert code == 1
    assert one_error_line(err) == (
        "error: you may not read OvershootStream cams/lobby (get overshootstreams.overshoot.ai "
        f"is forbidden for user {user}); ask for `get` on overshootstreams.overshoot.ai in cams\n"
    )


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (not_found("lobby", "overshootstreams"), "OvershootStream cams/lobby not found"),
        (
            api_error(404, "Not Found", "404 page not found"),
            "the API server https://k8s.example:6443 does not serve "
            "overshootstreams.overshoot.ai/v1alpha1; install the operator's CRD",
        ),
        (
            api_error(401, "Unauthorized", {"kind": "Status", "code": 401}),
            "the API server https://k8s.example:6443 did not accept the credentials of context "
            "'alice@prod' (401 Unauthorized); log in again",
        ),
        (
            api_error(500, "Internal Server Error", {"message": "etcdserver: timeout"}),
            "answered 500 Internal Server Error to get OvershootStream cams/lobby: etcdserver",
        ),
    ],
)
def test_the_api_servers_other_answers(answer: ApiException, expected: str, tmp_path: Path) -> None:
    code, _, err = run(
        ["snapshot", "lobby", "-o", str(tmp_path / "x.jpg")],
        CannedKube({("cams", "lobby"): answer}).cluster,
    )
    assert code == 1 and expected in one_error_line(err)


def test_the_real_cluster_layer_reads_the_secret_it_is_told(tmp_path: Path) -> None:
    kube = CannedKube(
        {("cams", "lobby"): stream_object(status=publishing(), api_key_ref={"name": "overshoot"})},
        {("cams", "overshoot"): {"apiKey": API_KEY}},
    )
    code, out, err = run(["snapshot", "lobby", "-o", str(tmp_path / "x.jpg")], kube.cluster)
    assert (code, err) == (0, "") and "(64x36)" in out


def test_the_timeout_names_the_step() -> None:
    code, _, err = run(["snapshot", "lobby", "--timeout", "0.2"], FakeCluster(hang=True))
    assert code == 1
    assert one_error_line(err) == (
        "error: timed out after 0.2 s reading OvershootStream cams/lobby; retry with a longer "
        "--timeout\n"
    )


def test_an_unwritable_output_is_one_line(tmp_path: Path) -> None:
    cluster = FakeCluster(
        [stream_object(status=publishing(), api_key_ref={"name": "overshoot"})], the_key()
    )
    code, _, err = run(["snapshot", "lobby", "-o", str(tmp_path / "no" / "x.jpg")], cluster)
    assert code == 1
    assert f"could not write {tmp_path / 'no' / 'x.jpg'}: No such file" in one_error_line(err)


def test_a_bug_is_one_line_without_secrets(tmp_path: Path) -> None:
    cluster = FakeCluster(
        [stream_object(status=publishing(), api_key_ref={"name": "overshoot"})], the_key()
    )
    code, _, err = run(
        ["snapshot", "lobby", "-o", str(tmp_path / "x.jpg")],
        cluster,
        grab=grabbing(RuntimeError(f"boom with {API_KEY} and {VIEW_TOKEN}")),
    )
    assert code == 1
    assert "internal error: RuntimeError: boom with *** and ***" in one_error_line(err)


# ---- get through main() ------------------------------------------------------------------


def test_get_prints_the_namespace_of_the_context() -> None:
    cluster = FakeCluster(
        [
            stream_object("lobby", "cams", status=publishing()),
            stream_object("other", "elsewhere", status=publishing()),
        ]
    )
    code, out, err = run(["get"], cluster)
    assert (code, err) == (0, "")
    assert out.splitlines()[0].split() == [
        "NAME",
        "PHASE",
        "DELIVERY",
        "FPS",
        "LAST",
        "FRAME",
        "REGION",
        "REASON",
    ]
    assert out.splitlines()[1].split() == [
        "lobby",
        "Publishing",
        "Publisher",
        "15",
        "3s",
        "us-west1",
    ]
    assert len(out.splitlines()) == 2

    code, out, _ = run(["get", "-A"], cluster)
    assert [line.split()[:2] for line in out.splitlines()[1:]] == [
        ["cams", "lobby"],
        ["elsewhere", "other"],
    ]


def test_get_of_an_empty_namespace_is_kubectls_message() -> None:
    code, out, err = run(["get", "-n", "empty"], FakeCluster([]))
    assert (code, out, err) == (0, "", "No resources found in empty namespace.\n")


def test_listing_forbidden_at_cluster_scope() -> None:
    kube = CannedKube()
    user = "system:serviceaccount:cams:viewer"

    def refuse(*_: Any, **__: Any) -> Any:
        raise api_error(
            403,
            "Forbidden",
            {
                "message": f'overshootstreams.overshoot.ai is forbidden: User "{user}" cannot list '
                'resource "overshootstreams" in API group "overshoot.ai" at the cluster scope'
            },
        )

    kube.cluster._custom.list_cluster_custom_object = refuse  # type: ignore[method-assign]
    code, _, err = run(["get", "-A"], kube.cluster)
    assert code == 1
    assert one_error_line(err) == (
        "error: you may not list OvershootStreams in all namespaces (list "
        f"overshootstreams.overshoot.ai is forbidden for user {user}); ask for `list` on "
        "overshootstreams.overshoot.ai at cluster scope, or name a namespace with -n\n"
    )


def test_listing_pages_through_continue_tokens() -> None:
    kube = CannedKube()
    pages = {
        None: {"items": [stream_object("a")], "metadata": {"continue": "next"}},
        "next": {"items": [stream_object("b")], "metadata": {}},
    }
    seen: list[Any] = []

    def page(group: str, version: str, ns: str, plural: str, **kw: Any) -> Any:
        seen.append((kw.get("limit"), kw.get("_continue")))
        return pages[kw.get("_continue")]

    kube.cluster._custom.list_namespaced_custom_object = page  # type: ignore[method-assign]
    code, out, _ = run(["get"], kube.cluster)
    assert code == 0 and [line.split()[0] for line in out.splitlines()[1:]] == ["a", "b"]
    assert seen == [(500, None), (500, "next")]


# ---- pieces ------------------------------------------------------------------------------


def test_the_redactor_blanks_registered_values_and_anything_jwt_shaped() -> None:
    redact = Redactor()
    redact.add(API_KEY)
    redact.add("abc")  # too short to be a secret: left alone
    text = redact(f"key {API_KEY} token {VIEW_TOKEN} abc")
    assert text == "key *** token *** abc"


async def test_the_deadline_is_shared_by_the_steps() -> None:
    clock = [100.0]
    deadline = Deadline(10, clock=lambda: clock[0])
    assert await deadline.run(asyncio.sleep(0, "ok"), what="a") == "ok"
    clock[0] += 9.99
    with pytest.raises(errors.TimedOut, match="timed out after 10 s reading b"):
        await deadline.run(asyncio.sleep(0), what="reading b")


def decode(jpeg: bytes) -> av.VideoFrame:
    with av.open(io.BytesIO(jpeg), format="mjpeg") as container:
        return next(container.decode(video=0))


@pytest.mark.parametrize(("width", "height"), [(640, 360), (63, 35)])
def test_the_jpeg_encoder_keeps_size_and_colour(width: int, height: int) -> None:
    rgb = np.zeros((height, width, 3), np.uint8)
    colours = [(255, 255, 255), (255, 0, 0), (0, 255, 0), (0, 0, 255)]
    h2, w2 = height // 2, width // 2
    quadrants = [(slice(0, h2), slice(0, w2)), (slice(0, h2), slice(w2, None)),
                 (slice(h2, None), slice(0, w2)), (slice(h2, None), slice(w2, None))]  # fmt: skip
    for (rows, cols), colour in zip(quadrants, colours, strict=True):
        rgb[rows, cols] = colour
    jpeg = encode_jpeg(rgb)
    assert jpeg[:2] == b"\xff\xd8" and jpeg[-2:] == b"\xff\xd9"
    frame = decode(jpeg)
    assert (frame.width, frame.height) == (width, height)
    back = frame.to_ndarray(format="rgb24").astype(int)
    for (rows, cols), colour in zip(quadrants, colours, strict=True):
        # The middle of each quadrant, away from 4:2:0's blurred edges.
        r = (rows.start + (rows.stop or height)) // 2
        c = (cols.start + (cols.stop or width)) // 2
        assert np.abs(back[r, c] - np.array(colour)).max() <= 12, (colour, back[r, c])


def test_the_encoder_refuses_what_is_not_rgb() -> None:
    with pytest.raises(ValueError, match="expected an"):
        encode_jpeg(np.zeros((4, 4), np.uint8))


def test_the_sdks_conversion_gives_rgb() -> None:
    width, height = 32, 16
    rgba = np.zeros((height, width, 4), np.uint8)
    rgba[:, :16] = (255, 128, 0, 255)
    rgba[:, 16:] = (0, 64, 255, 255)
    frame = rtc.VideoFrame(width, height, rtc.VideoBufferType.RGBA, rgba.tobytes())
    i420 = frame.convert(rtc.VideoBufferType.I420)  # what a decoder hands over
    rgb = frame_to_rgb(i420)
    assert rgb.shape == (height, width, 3) and rgb.dtype == np.uint8
    assert np.abs(rgb[8, 4].astype(int) - (255, 128, 0)).max() <= 12
    assert np.abs(rgb[8, 28].astype(int) - (0, 64, 255)).max() <= 12
    # No direct conversion from RGBA in the SDK: through I420.
    assert np.abs(frame_to_rgb(frame)[8, 4].astype(int) - (255, 128, 0)).max() <= 12
