"""Runs the Argo CD Lua of deploy/argocd/ the way Argo CD does: a Lua 5.1 interpreter (Argo
CD embeds gopher-lua, a Lua 5.1), the resource as the global `obj`, the script's return
value as the answer.

The sandbox is Argo CD's, or stricter: the base and table libraries only (no string, math,
io or debug library), plus `os.time` for actions.

    def test_x(argocd):
        argocd.health(obj)            # {"status": "Healthy", "message": "..."}
        argocd.action("suspend", obj) # the object the action returns, as a dict
        argocd.discovery(obj)         # {"refresh": {"disabled": False}, ...}
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import lupa.lua51 as lua51
import pytest

ARGOCD = Path(__file__).parents[2] / "deploy" / "argocd"
HEALTH_STATUSES = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}


def _to_lua(runtime: Any, value: Any) -> Any:
    if isinstance(value, dict):
        return runtime.table_from({k: _to_lua(runtime, v) for k, v in value.items()})
    if isinstance(value, list):
        return runtime.table_from([_to_lua(runtime, v) for v in value])
    return value


def _from_lua(value: Any) -> Any:
    if lua51.lua_type(value) != "table":
        return value
    items = dict(value.items())
    # A Lua sequence 1..n is a JSON array; anything else (including {}) an object.
    if (
        items
        and all(isinstance(k, int) for k in items)
        and sorted(items) == list(range(1, len(items) + 1))
    ):
        return [_from_lua(items[i]) for i in range(1, len(items) + 1)]
    return {k: _from_lua(v) for k, v in items.items()}


class ArgoLua:
    """The health check and the resource actions of deploy/argocd/, runnable."""

    def _run(self, script: Path, obj: dict[str, Any], *, os_time: bool) -> Any:
        runtime = lua51.LuaRuntime(unpack_returned_tuples=False)
        lua_globals = runtime.globals()
        safe_os = runtime.eval("{time = os.time}")
        for library in ("string", "math", "io", "os", "debug", "coroutine"):
            lua_globals[library] = None
        if os_time:
            lua_globals.os = safe_os
        # Scripts may change `obj`; the caller's dict stays as it was.
        lua_globals.obj = _to_lua(runtime, copy.deepcopy(obj))
        return _from_lua(runtime.execute(script.read_text()))

    def health(self, obj: dict[str, Any]) -> dict[str, str]:
        result = self._run(ARGOCD / "health.lua", obj, os_time=False)
        assert isinstance(result, dict) and result.get("status") in HEALTH_STATUSES, result
        assert isinstance(result.get("message", ""), str)
        return dict(result)

    def action(self, name: str, obj: dict[str, Any]) -> dict[str, Any]:
        result = self._run(ARGOCD / "actions" / name / "action.lua", obj, os_time=True)
        assert isinstance(result, dict), f"action {name} returned {result!r}, not an object"
        return result

    def discovery(self, obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
        result = self._run(ARGOCD / "actions" / "discovery.lua", obj, os_time=False)
        assert isinstance(result, dict)
        return result


@pytest.fixture
def argocd() -> ArgoLua:
    return ArgoLua()
