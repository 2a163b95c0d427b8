"""The console scripts of the optional parts name their missing extra (launch.py)."""

from __future__ import annotations

import importlib.util

import pytest

from overshoot_operator import launch

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("entry", "extra", "absent"),
    [
        (launch.publisher, "publisher", "av"),
        (launch.emulator, "emulator", "jwt"),
        (launch.localstack, "dev", "cryptography"),
        (launch.kubectl_plugin, "preview", "livekit.rtc"),
    ],
)
def test_a_missing_extra_is_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], entry, extra, absent
) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, *args: object):  # type: ignore[no-untyped-def]
        return None if name == absent else real(name, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    assert entry() == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"pip install 'overshoot-operator[{extra}]'" in err and repr(absent) in err


def test_every_module_of_the_dev_install_is_found() -> None:
    for _, modules, _ in launch._EXTRAS.values():
        assert launch.missing_module(modules) is None
