"""`overshoot-localstack`: build the binaries and the image, and run the local stack by hand.

Boundary: argument dispatch only; each command lives in its own module (`binaries`,
`image`, `cluster`, `demo`) and is imported lazily so `build` works before anything else is
installed.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

USAGE = """usage: overshoot-localstack COMMAND ...

commands:
  build [COMPONENT ...]    build and cache the Go binaries (etcd, kubernetes, kwok, helm, livekit)
  image [--force]          build (or reuse) the image from the Dockerfile with buildah, no registry;
                           prints its reference and the OCI archive for `ctr images import`
  cluster up [--nodes N]   start a local control plane detached; prints the KUBECONFIG to use
  cluster down             stop it and remove its files
  demo [--timeout SECONDS] run the whole stack and publish a test pattern (make demo)
"""


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help"}:
        print(USAGE, file=sys.stderr)
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "build":
        from overshoot_localstack import binaries

        return binaries.main(rest)
    if command == "image":
        from overshoot_localstack import image

        return image.main(rest)
    if command == "cluster":
        from overshoot_localstack import cluster

        return cluster.main(rest)
    if command == "demo":
        from overshoot_localstack import demo

        return demo.main(rest)
    print(f"overshoot-localstack: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
