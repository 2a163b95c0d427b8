"""The console scripts of the optional parts, each checking its extra before it starts.

Role: a base `pip install overshoot-operator` installs every console script, but only the
operator's dependencies. Started without its extra, the publisher or the emulator would
die in an import with a traceback naming a module; instead it exits with one line naming
the extra to install. Only the standard library is imported until the check passed.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable

# console script -> (extra, modules it needs beyond the operator's, its main)
_EXTRAS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "overshoot-publisher": ("publisher", ("av", "livekit.rtc", "numpy"), "overshoot_publisher"),
    "overshoot-emulator": ("emulator", ("jwt", "livekit.api", "livekit.rtc"), "overshoot_emulator"),
    "overshoot-localstack": ("dev", ("yaml", "cryptography", "av"), "overshoot_localstack"),
    "kubectl-overshoot": ("preview", ("av", "livekit.rtc", "numpy"), "overshoot_kubectl"),
}


def missing_module(modules: tuple[str, ...]) -> str | None:
    """The first of `modules` that cannot be imported, or None."""
    for name in modules:
        try:
            if importlib.util.find_spec(name) is None:
                return name
        except ModuleNotFoundError:  # its parent package is missing
            return name
    return None


def _run(command: str) -> int:
    extra, modules, package = _EXTRAS[command]
    absent = missing_module(modules)
    if absent is not None:
        print(
            f"{command}: the {extra!r} extra is not installed (no module {absent!r}); "
            f"install it with: pip install 'overshoot-operator[{extra}]'",
            file=sys.stderr,
        )
        return 2
    main: Callable[[], int] = importlib.import_module(f"{package}.__main__").main
    return main()


def publisher() -> int:
    return _run("overshoot-publisher")


def emulator() -> int:
    return _run("overshoot-emulator")


def localstack() -> int:
    return _run("overshoot-localstack")


def kubectl_plugin() -> int:
    return _run("kubectl-overshoot")
