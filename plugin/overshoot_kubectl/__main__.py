"""`kubectl-overshoot`: the kubectl plugin's console script (`kubectl overshoot ...`).

    kubectl overshoot get [-n NS | -A]
    kubectl overshoot snapshot NAME [-n NS] [-o FILE.jpg] [--timeout SECONDS]
        [--api-key-secret NAMESPACE/NAME[:KEY]] [--api-url URL]

Common options, before or after the command: --kubeconfig, --context, -n/--namespace,
--timeout (seconds, the budget of all network steps together; default 20), -v/--verbose.
kubectl hands a plugin every argument after its name, so flags go after `overshoot`.

Role: parse arguments, resolve settings once (the API URL: `--api-url`, else
`OVERSHOOT_API_URL`, else Overshoot's v1beta), wire the real dependencies (cluster.py, the
operator's `OvershootClient`, room.py), run the command, and turn its outcome into one
stdout line or table, or one `error: ...` line on stderr and a non-zero exit code.
Everything printed, logs included, passes the redactor: no API key or token ever.

Boundary: `main()` is sync (`asyncio.run`); `Wiring` carries the I/O so tests replace it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import re
import sys
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Protocol

import httpx
from pydantic import SecretStr

from overshoot_kubectl import table
from overshoot_kubectl.cluster import KubeCluster
from overshoot_kubectl.deadline import Deadline
from overshoot_kubectl.errors import PluginError, Redactor
from overshoot_kubectl.snapshot import (
    Cluster,
    FrameGrabber,
    SnapshotRequest,
    ViewerTokens,
    take_snapshot,
)
from overshoot_kubectl.streams import ObservedStream
from overshoot_operator import overshoot as ov
from overshoot_operator import resource as res

__all__ = ["API_URL_ENV", "DEFAULT_API_URL", "Options", "Wiring", "main", "parse_args"]

PROG = "kubectl-overshoot"
DEFAULT_API_URL = "https://api.overshoot.ai/v1beta"
API_URL_ENV = "OVERSHOOT_API_URL"
DEFAULT_TIMEOUT_SECONDS = 20.0
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


# ---- arguments ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    """The command line, resolved against the environment once."""

    command: str
    namespace: str | None
    all_namespaces: bool
    kubeconfig: str | None
    context: str | None
    timeout: float
    verbose: bool
    api_url: str
    name: str | None = None
    output: Path | None = None
    api_key_secret: res.SecretKeySelector | None = None


def _timeout(value: str) -> float:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(s|m)?\s*", value)
    if match is None or float(match[1]) <= 0:
        raise argparse.ArgumentTypeError(f"{value!r} is not a positive number of seconds")
    return float(match[1]) * (60 if match[2] == "m" else 1)


def _secret_selector(value: str) -> res.SecretKeySelector:
    match = re.fullmatch(
        r"([a-z0-9][-a-z0-9]*)/([a-z0-9][-a-z0-9.]*)(?::([-._a-zA-Z0-9]+))?", value
    )
    if match is None:
        raise argparse.ArgumentTypeError(f"{value!r} is not NAMESPACE/NAME[:KEY]")
    return res.SecretKeySelector(namespace=match[1], name=match[2], key=match[3] or "apiKey")


def _common(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """The options every command takes; on a subcommand, given ones override the main's."""

    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    parser.add_argument(
        "--kubeconfig", default=default(None), help="kubeconfig file (default: $KUBECONFIG)"
    )
    parser.add_argument("--context", default=default(None), help="kubeconfig context")
    parser.add_argument(
        "-n",
        "--namespace",
        default=default(None),
        help="namespace (default: the context's, else default)",
    )
    parser.add_argument(
        "--timeout",
        type=_timeout,
        default=default(DEFAULT_TIMEOUT_SECONDS),
        metavar="SECONDS",
        help=f"overall time limit of the network steps (default {DEFAULT_TIMEOUT_SECONDS:g})",
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", default=default(False), help="debug logs"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Look at OvershootStreams: a status table, or one picture of a stream.",
    )
    _common(parser, suppress=False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    get = commands.add_parser("get", help="list OvershootStreams with their media status")
    _common(get, suppress=True)
    get.add_argument(
        "-A", "--all-namespaces", action="store_true", help="list streams in all namespaces"
    )

    snap = commands.add_parser(
        "snapshot", help="write one JPEG of what a stream's room shows right now"
    )
    _common(snap, suppress=True)
    snap.add_argument("name", metavar="NAME", help="the OvershootStream")
    snap.add_argument(
        "-o", "--output", type=Path, metavar="FILE.jpg", help="where to write (default NAME.jpg)"
    )
    snap.add_argument(
        "--api-key-secret",
        type=_secret_selector,
        metavar="NAMESPACE/NAME[:KEY]",
        help="read the API key from this Secret (key default apiKey) instead of the one "
        "the stream uses",
    )
    snap.add_argument(
        "--api-url",
        metavar="URL",
        help=f"Overshoot's API (default ${API_URL_ENV}, else {DEFAULT_API_URL})",
    )
    return parser


def parse_args(argv: Sequence[str], env: Mapping[str, str]) -> Options:
    """Options from the command line and the environment (exits 2 on a usage error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    api_url = getattr(args, "api_url", None) or env.get(API_URL_ENV) or DEFAULT_API_URL
    if not re.match(r"https?://[^/\s]+", api_url):
        parser.error(f"the Overshoot API URL {api_url!r} is not an http(s) URL")
    name: str | None = getattr(args, "name", None)
    output: Path | None = getattr(args, "output", None)
    if name is not None and output is None:
        output = Path(f"{name}.jpg")
    return Options(
        command=args.command,
        namespace=args.namespace,
        all_namespaces=getattr(args, "all_namespaces", False),
        kubeconfig=args.kubeconfig,
        context=args.context,
        timeout=args.timeout,
        verbose=args.verbose,
        api_url=api_url,
        name=name,
        output=output,
        api_key_secret=getattr(args, "api_key_secret", None),
    )


# ---- wiring ------------------------------------------------------------------------------


class ClusterConnection(Cluster, Protocol):
    """What the commands need of the API server (cluster.KubeCluster is the real one)."""

    namespace: str

    async def list_streams(
        self, namespace: str | None, *, limit: float
    ) -> list[dict[str, Any]]: ...

    def close(self) -> None: ...


class OvershootConnection(ViewerTokens, Protocol):
    async def aclose(self) -> None: ...


def _connect(options: Options, env: Mapping[str, str]) -> ClusterConnection:
    return KubeCluster.connect(kubeconfig=options.kubeconfig, context=options.context, env=env)


def _overshoot(api_url: str) -> OvershootConnection:
    # httpx's own transport, which honours HTTPS_PROXY like kubectl does; one call does
    # not need the operator's pooled aiohttp transport. Never follow a redirect with the
    # Authorization header.
    http = httpx.AsyncClient(timeout=ov.DEFAULT_TIMEOUT, follow_redirects=False)
    return _OwnedClient(ov.OvershootClient(api_url, http=http), http)


class _OwnedClient:
    """The Overshoot client together with the HTTP client it was given, closed as one."""

    def __init__(self, client: ov.OvershootClient, http: httpx.AsyncClient) -> None:
        self._client = client
        self._http = http
        self.base_url = client.base_url

    async def viewer_token(
        self, api_key: SecretStr, stream_id: str, *, region: str | None = None
    ) -> ov.ViewerToken:
        return await self._client.viewer_token(api_key, stream_id, region=region)

    async def aclose(self) -> None:
        await self._client.aclose()
        await self._http.aclose()


def _grabber() -> FrameGrabber:
    # Imported here: LiveKit's native library is loaded only by a snapshot.
    from overshoot_kubectl.room import first_frame

    return first_frame


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass
class Wiring:
    """How the commands reach the outside world; tests replace any part."""

    connect: Callable[[Options, Mapping[str, str]], ClusterConnection] = _connect
    overshoot: Callable[[str], OvershootConnection] = _overshoot
    grabber: Callable[[], FrameGrabber] = _grabber
    now: Callable[[], datetime] = _now


# ---- commands ----------------------------------------------------------------------------


async def _run(
    options: Options,
    env: Mapping[str, str],
    wiring: Wiring,
    redact: Redactor,
    out: IO[str],
    err: IO[str],
) -> int:
    deadline = Deadline(options.timeout)
    cluster = await deadline.run(
        asyncio.to_thread(wiring.connect, options, env), what="loading the kubeconfig"
    )
    try:
        namespace = options.namespace or cluster.namespace
        if options.command == "get":
            return await _get(options, cluster, namespace, deadline, wiring, out, err)
        return await _snapshot(options, cluster, namespace, deadline, wiring, redact, out)
    finally:
        cluster.close()


async def _get(
    options: Options,
    cluster: ClusterConnection,
    namespace: str,
    deadline: Deadline,
    wiring: Wiring,
    out: IO[str],
    err: IO[str],
) -> int:
    where = None if options.all_namespaces else namespace
    objects = await deadline.run(
        cluster.list_streams(where, limit=deadline.remaining()),
        what=f"listing OvershootStreams {'in all namespaces' if where is None else f'in {where}'}",
    )
    streams = [ObservedStream.from_object(o) for o in objects]
    if not streams:
        # kubectl's words, on stderr, and success: an empty list is an answer.
        print(
            "No resources found" + (f" in {where} namespace." if where else "."),
            file=err,
        )
        return 0
    rows = table.rows(streams, now=wiring.now(), all_namespaces=options.all_namespaces)
    out.write(table.render(rows))
    return 0


async def _snapshot(
    options: Options,
    cluster: ClusterConnection,
    namespace: str,
    deadline: Deadline,
    wiring: Wiring,
    redact: Redactor,
    out: IO[str],
) -> int:
    assert options.name is not None and options.output is not None
    request = SnapshotRequest(
        namespace=namespace,
        name=options.name,
        output=options.output,
        timeout=options.timeout,
        api_key_secret=options.api_key_secret,
    )
    overshoot = wiring.overshoot(options.api_url)
    try:
        snapshot = await take_snapshot(
            request,
            cluster=cluster,
            overshoot=overshoot,
            grab=wiring.grabber(),
            redact=redact,
            deadline=deadline,
        )
    finally:
        await overshoot.aclose()
    print(snapshot.summary(), file=out)
    return 0


# ---- the console script ------------------------------------------------------------------


class _Redacting(logging.Filter):
    def __init__(self, redact: Redactor) -> None:
        super().__init__()
        self._redact = redact

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self._redact(record.getMessage())
        record.args = None
        return True


@contextlib.contextmanager
def _logging(verbose: bool, redact: Redactor, err: IO[str]) -> Iterator[None]:
    """Log records on `err`, redacted; the root and httpx loggers' previous state comes
    back afterwards."""
    handler = logging.StreamHandler(err)
    handler.addFilter(_Redacting(redact))
    handler.setFormatter(logging.Formatter(f"{PROG}: %(levelname)s %(name)s: %(message)s"))
    # LiveKit's native stack warns about ordinary WebRTC events (ICE, codecs) that say
    # nothing a user of one snapshot acts on; httpx logs each request at INFO.
    levels = {
        "": logging.DEBUG if verbose else logging.WARNING,
        "livekit": logging.DEBUG if verbose else logging.ERROR,
        "httpx": logging.DEBUG if verbose else logging.WARNING,
    }
    loggers = {name: logging.getLogger(name) for name in levels}
    # LiveKit's level stays: its native side may still log while the process exits.
    before = {name: logger.level for name, logger in loggers.items() if name != "livekit"}
    loggers[""].addHandler(handler)
    for name, level in levels.items():
        loggers[name].setLevel(level)
    try:
        yield
    finally:
        loggers[""].removeHandler(handler)
        for name, level in before.items():
            loggers[name].setLevel(level)


def main(
    argv: Sequence[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    wiring: Wiring | None = None,
    stdout: IO[str] | None = None,
    stderr: IO[str] | None = None,
) -> int:
    env = os.environ if env is None else env
    out = sys.stdout if stdout is None else stdout
    err = sys.stderr if stderr is None else stderr
    try:
        options = parse_args(sys.argv[1:] if argv is None else argv, env)
    except SystemExit as exit_:  # argparse: usage errors and --help
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    redact = Redactor()
    try:
        with _logging(options.verbose, redact, err):
            return asyncio.run(_run(options, env, wiring or Wiring(), redact, out, err))
    except PluginError as problem:
        print(f"error: {redact(str(problem))}", file=err)
        return problem.exit_code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as unexpected:
        # A bug, not a user's problem: still one line, and still no secret in it.
        print(
            f"error: internal error: {type(unexpected).__name__}: {redact(str(unexpected))}"
            + ("" if options.verbose else " (run with -v for the traceback)"),
            file=err,
        )
        if options.verbose:
            print(redact(traceback.format_exc()), file=err)
        return 1
    finally:
        with contextlib.suppress(Exception):
            err.flush()


if __name__ == "__main__":
    sys.exit(main())
