"""`overshoot-emulator`: parse the command line into an EmulatorConfig and serve.

The only place that reads argv or installs signal handlers. Prints exactly one line to
stdout, `Listening on http://HOST:PORT`, once the socket is bound; logs go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from overshoot_emulator.config import (
    DEFAULT_PUBLISH_URL,
    DEFAULT_SOURCE_CONNECT_TIMEOUT,
    DEFAULT_TOMBSTONE_SECONDS,
    DEFAULT_TTL_SECONDS,
    EmulatorConfig,
    LiveKitCredentials,
    key_digest,
)
from overshoot_emulator.regions import DEFAULT_REGION, parse_regions
from overshoot_emulator.server import serve

log = logging.getLogger("overshoot_emulator")


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {text}")
    return value


def _regions(text: str) -> tuple[str, ...]:
    try:
        return parse_regions(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_args(argv: Sequence[str] | None) -> EmulatorConfig:
    parser = argparse.ArgumentParser(
        prog="overshoot-emulator", description="A local emulator of the Overshoot Streams API."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    parser.add_argument("--ttl-seconds", type=_positive, default=DEFAULT_TTL_SECONDS)
    parser.add_argument(
        "--tombstone-seconds", type=_non_negative, default=DEFAULT_TOMBSTONE_SECONDS
    )
    keys = parser.add_mutually_exclusive_group()
    keys.add_argument(
        "--api-key", action="append", default=[], metavar="KEY", help="an accepted key"
    )
    keys.add_argument("--accept-any-key", action="store_true")
    parser.add_argument("--expire-interval", type=_positive, default=1.0, metavar="SECONDS")
    parser.add_argument("--livekit-url", help=f"publish.url (default {DEFAULT_PUBLISH_URL})")
    parser.add_argument("--livekit-api-key")
    parser.add_argument("--livekit-api-secret")
    parser.add_argument("--access-log", action="store_true", help="log every request")
    parser.add_argument(
        "--latency-ms",
        type=_non_negative,
        default=0.0,
        help="delay every API answer by this much (benchmarks; faults add to it)",
    )
    parser.add_argument(
        "--regions",
        type=_regions,
        default=(DEFAULT_REGION,),
        metavar="NAME[,NAME...]",
        help=f"the regions served; the first is the default (default {DEFAULT_REGION})",
    )
    parser.add_argument(
        "--source-connect-timeout",
        type=_positive,
        default=DEFAULT_SOURCE_CONNECT_TIMEOUT,
        metavar="SECONDS",
        help="how long a create with a camera source retries before answering 422",
    )
    parser.add_argument(
        "--allow-private-sources",
        action="store_true",
        help="pull from sources on private, loopback or link-local addresses (tests)",
    )
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)

    if (args.livekit_api_key is None) != (args.livekit_api_secret is None):
        parser.error("--livekit-api-key and --livekit-api-secret go together")
    if args.livekit_api_key is not None and args.livekit_url is None:
        parser.error("--livekit-api-key needs --livekit-url")
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    accept_any = args.accept_any_key or not args.api_key
    if not args.accept_any_key and not args.api_key:
        log.warning("No --api-key given: accepting any non-empty key")
    return EmulatorConfig(
        host=args.host,
        port=args.port,
        ttl_seconds=args.ttl_seconds,
        tombstone_seconds=args.tombstone_seconds,
        accepted_key_digests=frozenset(key_digest(key) for key in args.api_key),
        accept_any_key=accept_any,
        expire_interval=args.expire_interval,
        publish_url=args.livekit_url or DEFAULT_PUBLISH_URL,
        livekit=(
            LiveKitCredentials(args.livekit_api_key, args.livekit_api_secret)
            if args.livekit_api_key is not None
            else None
        ),
        access_log=args.access_log,
        latency_ms=args.latency_ms,
        regions=args.regions,
        source_connect_timeout=args.source_connect_timeout,
        allow_private_sources=args.allow_private_sources,
    )


async def run(config: EmulatorConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    def announce(url: str) -> None:
        print(f"Listening on {url}", flush=True)

    await serve(config, stop, announce=announce)


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_args(argv)
    try:
        asyncio.run(run(config))
    except OSError as exc:
        log.error("Could not listen on %s:%s: %s", config.host, config.port, exc)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
