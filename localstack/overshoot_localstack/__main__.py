"""`overshoot-localstack`: build the binaries and run the local stack by hand."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help"}:
        print("usage: overshoot-localstack {build} ...", file=sys.stderr)
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "build":
        from overshoot_localstack import binaries

        return binaries.main(rest)
    print(f"overshoot-localstack: unknown command {command!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
