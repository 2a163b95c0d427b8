"""The local Pod runner: makes publisher Pods on kwok Nodes real processes.

Role: kwok marks a publisher Pod Running without a kubelet; this module plays the part of
the kubelet for exactly those Pods. It watches Pods labelled `overshoot.ai/stream` (the
operator's `STREAM_LABEL`) and the Secrets they mount, and for every scheduled Pod starts
the container's command (`overshoot-publisher`) as a local process with the container's
env, after reproducing each mounted Secret volume in a private directory:

- files are written the way the kubelet swaps a volume: a new file, then a rename, so the
  publisher never reads half a token; directories are 0700, files 0600;
- a changed Secret (a rotated token, a recreated stream's new id and room) is written again
  while the process runs, as the kubelet does, so the publisher's own re-reading is what
  gets exercised;
- the publisher's config (`OVERSHOOT_PUBLISHER_CONFIG`) is rewritten to point `secretDir`
  and `credentialsDir` at those directories, and to a health port of its own (many Pods
  share one network namespace here: the host's);
- a process that exits while its Pod exists is restarted with a growing backoff (the
  kubelet's `restartPolicy: Always`); a Pod that is deleted or terminating is stopped with
  SIGTERM, then SIGKILL after its grace period.

Publishers run on the host side of the LiveKit namespace (see `netns.py`), where they reach
the server at the URL the emulator put in the Secret.

Boundary: the Kubernetes API over HTTPS (an `httpx.AsyncClient` the caller builds, see
`admin_client()`), child processes and a working directory. It never writes to the API,
and never logs, prints or passes on the command line any Secret value.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import logging
import os
import shutil
import signal
import socket
import ssl
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from overshoot_operator.manifests import PUBLISHER_COMMAND, STREAM_LABEL
from overshoot_publisher.config import ENV_VAR, PublisherConfig, PublisherConfigError

logger = logging.getLogger(__name__)

# The kubelet's CrashLoopBackOff starts at 10 s and caps at 5 min; a local demo wants a
# publisher back sooner, and a crash loop still must not eat the machine's two cores.
RESTART_BACKOFF_INITIAL = 1.0
RESTART_BACKOFF_MAX = 30.0
# A process that ran this long was healthy: its next crash starts the backoff afresh.
RESTART_BACKOFF_RESET_AFTER = 60.0
# Used when a Pod names no terminationGracePeriodSeconds (the Kubernetes default).
DEFAULT_GRACE_SECONDS = 30.0
# The API server ends a watch after this long; the runner then resumes from its last version.
WATCH_TIMEOUT_SECONDS = 300
WATCH_RETRY_SECONDS = 1.0

_DIR_MODE = 0o700
_FILE_MODE = 0o600

SecretKey = tuple[str, str]  # (namespace, name)


def admin_client(
    server: str, *, ca_file: Path, cert_file: Path, key_file: Path
) -> httpx.AsyncClient:
    """An async client for the API server with a client certificate (the local admin's)."""
    context = ssl.create_default_context(cafile=str(ca_file))
    context.load_cert_chain(str(cert_file), str(key_file))
    # trust_env=False: a proxy from the environment must never see 127.0.0.1 traffic.
    return httpx.AsyncClient(
        base_url=server, verify=context, trust_env=False, timeout=httpx.Timeout(10.0)
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _die_with_parent() -> None:
    # prctl(PR_SET_PDEATHSIG, SIGKILL): a runner killed hard takes its publishers with it,
    # instead of leaving them publishing into a room nobody pays for.
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)


def _publisher_argv(command: Sequence[str]) -> list[str] | None:
    """The local argv for a container command, or None if it is not the publisher's.

    The image's console script is the one installed next to this interpreter (the venv), so
    a publisher built from the working tree is what runs, whatever PATH says.
    """
    if tuple(command) != PUBLISHER_COMMAND:
        return None
    return [sys.executable, "-m", "overshoot_publisher"]


@dataclasses.dataclass(frozen=True)
class SecretMount:
    """A Secret volume mounted into the publisher container, reproduced in `local_dir`."""

    volume: str
    secret: str
    mount_path: str
    # key -> file name; None projects every key under its own name.
    items: tuple[tuple[str, str], ...] | None
    optional: bool
    local_dir: Path

    def files(self, data: Mapping[str, bytes]) -> dict[str, bytes] | None:
        """The files this volume holds given the Secret's data; None if not mountable yet."""
        if self.items is None:
            return dict(data)
        files: dict[str, bytes] = {}
        for key, path in self.items:
            if key not in data:
                return None  # the kubelet refuses to mount it too, and retries
            files[path] = data[key]
        return files


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, _FILE_MODE)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.replace(tmp, path)


class LocalPod:
    """One publisher Pod made real: its volumes on disk and its supervised process."""

    def __init__(self, pod: Mapping[str, Any], workdir: Path, log_dir: Path) -> None:
        meta = pod["metadata"]
        self.namespace: str = meta["namespace"]
        self.name: str = meta["name"]
        self.uid: str = meta["uid"]
        spec = pod["spec"]
        container = spec["containers"][0]
        self.grace = float(spec.get("terminationGracePeriodSeconds", DEFAULT_GRACE_SECONDS))
        self.dir = workdir / f"{self.namespace}_{self.name}_{self.uid[:8]}"
        self.log_path = log_dir / f"publisher-{self.namespace}-{self.name}.log"
        self.argv = _publisher_argv(container.get("command") or ())
        self.env = self._container_env(container)
        self.mounts = self._secret_mounts(spec, container)
        self._written: dict[str, dict[str, bytes]] = {}
        self._volumes_ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._process: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None
        self.restarts = 0

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"

    def _container_env(self, container: Mapping[str, Any]) -> dict[str, str]:
        env: dict[str, str] = {}
        for var in container.get("env") or []:
            if "value" in var:
                env[var["name"]] = var["value"]
            elif "valueFrom" in var:
                # The operator never renders valueFrom; name it so a future one is noticed.
                logger.warning(
                    "Ignored env %s of Pod %s/%s: valueFrom is not supported locally",
                    var["name"],
                    self.namespace,
                    self.name,
                )
        return env

    def _secret_mounts(
        self, spec: Mapping[str, Any], container: Mapping[str, Any]
    ) -> list[SecretMount]:
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        mounts: list[SecretMount] = []
        for mount in container.get("volumeMounts") or []:
            secret = volumes.get(mount["name"], {}).get("secret")
            if secret is None:
                continue  # emptyDir /tmp and media volumes: the host's own files serve
            items = secret.get("items")
            mounts.append(
                SecretMount(
                    volume=mount["name"],
                    secret=secret["secretName"],
                    mount_path=mount["mountPath"],
                    items=None if items is None else tuple((i["key"], i["path"]) for i in items),
                    optional=bool(secret.get("optional", False)),
                    local_dir=self.dir / "volumes" / mount["name"],
                )
            )
        return mounts

    # --- volumes ------------------------------------------------------------------------

    def sync_volumes(self, secrets: Mapping[SecretKey, Mapping[str, bytes]]) -> None:
        """Write each Secret volume's files where they differ from the Secret's data."""
        self._ensure_dir()
        ready = True
        for mount in self.mounts:
            data = secrets.get((self.namespace, mount.secret))
            files: dict[str, bytes] | None = None
            if data is not None:
                files = mount.files(data)
            elif mount.optional:
                files = {}
            if files is None:
                ready = False
                continue
            written = self._written.get(mount.volume)
            if written == files:
                continue
            mount.local_dir.mkdir(parents=True, exist_ok=True, mode=_DIR_MODE)
            mount.local_dir.chmod(_DIR_MODE)
            changed = sorted(n for n in files if (written or {}).get(n) != files[n])
            for name in changed:
                _write_atomically(mount.local_dir / name, files[name])
            removed = sorted(set(written or {}) - set(files))
            for name in removed:
                (mount.local_dir / name).unlink(missing_ok=True)
            if written is not None:
                # File names only: the values are the token and the room.
                logger.info(
                    "Updated Secret volume %s (Secret %s/%s) of Pod %s: %s",
                    mount.volume,
                    self.namespace,
                    mount.secret,
                    self,
                    ", ".join([*changed, *(f"-{name}" for name in removed)]),
                )
            self._written[mount.volume] = files
        if ready:
            self._volumes_ready.set()

    def _ensure_dir(self) -> None:
        # mkdir's mode applies to the last component only: each level is made explicitly.
        for directory in (self.dir, self.dir / "volumes"):
            directory.mkdir(parents=True, exist_ok=True, mode=_DIR_MODE)

    def _config_env(self, health_port: int) -> dict[str, str]:
        """The container env with the config's mount paths and health port made local."""
        env = dict(self.env)
        if ENV_VAR not in env:
            return env
        try:
            config = PublisherConfig.from_env(env)
        except PublisherConfigError:
            # Passed on as it is: the publisher itself says what is wrong, as in a cluster.
            return env
        local = {m.mount_path: str(m.local_dir) for m in self.mounts}
        update: dict[str, Any] = {"health_port": health_port}
        if config.secret_dir in local:
            update["secret_dir"] = local[config.secret_dir]
        if config.credentials_dir is not None and config.credentials_dir in local:
            update["credentials_dir"] = local[config.credentials_dir]
        env.update(config.model_copy(update=update).to_env())
        return env

    # --- the process --------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._supervise(), name=f"pod-{self}")

    async def _supervise(self) -> None:
        if self.argv is None:
            logger.warning("Skipped Pod %s: its command is not %s", self, list(PUBLISHER_COMMAND))
            return
        loop = asyncio.get_running_loop()
        backoff = RESTART_BACKOFF_INITIAL
        if not self._volumes_ready.is_set():
            logger.info("Waiting for the Secrets mounted by Pod %s", self)
        while not self._stop.is_set():
            if not await self._until(self._volumes_ready.wait()):
                return
            started = loop.time()
            try:
                code = await self._run_once()
            except OSError as err:
                logger.error("Starting the publisher of Pod %s failed: %s", self, err)
                code = -1
            if code is None:
                return  # stopped on request
            if loop.time() - started >= RESTART_BACKOFF_RESET_AFTER:
                backoff = RESTART_BACKOFF_INITIAL
            reason = self._termination_message()
            logger.warning(
                "Publisher of Pod %s exited with code %d%s; restarting in %.0f s",
                self,
                code,
                f" ({reason})" if reason else "",
                backoff,
            )
            if not await self._until(asyncio.sleep(backoff)):
                return
            backoff = min(backoff * 2, RESTART_BACKOFF_MAX)
            self.restarts += 1

    async def _until(self, waiter: Awaitable[Any]) -> bool:
        """Await `waiter` unless stop comes first; True if it completed."""
        task = asyncio.ensure_future(waiter)
        stop = asyncio.ensure_future(self._stop.wait())
        done, _ = await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        for pending in (task, stop):
            if pending not in done:
                pending.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pending
        return task in done and not self._stop.is_set()

    @property
    def _termination_log(self) -> Path:
        return self.dir / "termination-log"

    def _termination_message(self) -> str:
        # The publisher's own words (it never writes a secret there), like `kubectl describe`.
        try:
            return self._termination_log.read_text(errors="replace").strip()[:300]
        except OSError:
            return ""

    async def _run_once(self) -> int | None:
        """Run the process until it exits (its code) or stop is asked (None)."""
        assert self.argv is not None
        health_port = free_port()
        env = {
            **os.environ,
            **self._config_env(health_port),
            "OVERSHOOT_TERMINATION_LOG": str(self._termination_log),
            # A Pod has its own network namespace; here every publisher shares the host's.
            "OVERSHOOT_PUBLISHER_HEALTH_HOST": "127.0.0.1",
        }
        self._ensure_dir()
        self._termination_log.unlink(missing_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._process = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                env=env,
                cwd=self.dir,
                # Its own group: a Ctrl-C in the terminal reaches the runner, which stops
                # publishers in order (they leave their rooms) instead of all dying at once.
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        logger.info(
            "Started publisher of Pod %s (pid %d, health 127.0.0.1:%d, log %s)",
            self,
            self._process.pid,
            health_port,
            self.log_path,
        )
        wait = asyncio.ensure_future(self._process.wait())
        if await self._until(wait):
            return wait.result()
        await self._terminate()
        return None

    async def _terminate(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), self.grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
        # Anything the publisher forked goes with it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        logger.info("Stopped publisher of Pod %s (exit code %s)", self, process.returncode)

    async def stop(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL after the grace period); remove the files."""
        self._stop.set()
        if self._task is not None:
            await self._task
        shutil.rmtree(self.dir, ignore_errors=True)

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid


def _decode(secret: Mapping[str, Any]) -> dict[str, bytes]:
    return {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}


def _should_run(pod: Mapping[str, Any]) -> bool:
    """A Pod the kubelet would be running: scheduled, not terminating, not finished."""
    if pod["metadata"].get("deletionTimestamp"):
        return False
    if not (pod.get("spec") or {}).get("nodeName"):
        return False
    return (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed")


class PodRunner:
    """Watches the cluster and keeps one local publisher per scheduled publisher Pod.

    async with admin_client(...) as api:
        await PodRunner(api, workdir=..., log_dir=...).run(stop)
    """

    def __init__(
        self,
        api: httpx.AsyncClient,
        *,
        workdir: Path,
        log_dir: Path,
        namespace: str | None = None,
    ) -> None:
        self._api = api
        self.workdir = workdir
        self.log_dir = log_dir
        self.namespace = namespace
        self.pods: dict[str, LocalPod] = {}  # by Pod uid
        self._pod_objects: dict[str, dict[str, Any]] = {}
        self._secrets: dict[SecretKey, dict[str, bytes]] = {}
        self._changed = asyncio.Event()
        self._stopping: set[asyncio.Task[None]] = set()

    def _path(self, resource: str) -> str:
        if self.namespace is None:
            return f"/api/v1/{resource}"
        return f"/api/v1/namespaces/{self.namespace}/{resource}"

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set; then stop every publisher and remove their files."""
        self.workdir.mkdir(parents=True, exist_ok=True, mode=_DIR_MODE)
        watches = [
            asyncio.create_task(
                self._watch(
                    self._path("pods"),
                    {"labelSelector": STREAM_LABEL},
                    self._on_pod,
                    self._pod_objects.clear,
                ),
                name="watch-pods",
            ),
            asyncio.create_task(
                self._watch(self._path("secrets"), {}, self._on_secret, self._secrets.clear),
                name="watch-secrets",
            ),
        ]
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                changed = asyncio.ensure_future(self._changed.wait())
                await asyncio.wait(
                    {changed, stopping, *watches}, return_when=asyncio.FIRST_COMPLETED
                )
                changed.cancel()
                for task in watches:
                    if task.done():
                        task.result()  # a watch never ends on its own: surface its error
                self._changed.clear()
                self._reconcile()
        finally:
            stopping.cancel()
            for task in watches:
                task.cancel()
            await asyncio.gather(*watches, return_exceptions=True)
            await asyncio.gather(*(pod.stop() for pod in self.pods.values()), *self._stopping)
            self.pods.clear()

    def _on_pod(self, kind: str, obj: dict[str, Any]) -> None:
        uid = obj["metadata"]["uid"]
        if kind == "DELETED":
            self._pod_objects.pop(uid, None)
        else:
            self._pod_objects[uid] = obj

    def _on_secret(self, kind: str, obj: dict[str, Any]) -> None:
        key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
        if kind == "DELETED":
            self._secrets.pop(key, None)
        else:
            self._secrets[key] = _decode(obj)

    def _reconcile(self) -> None:
        for uid, local in list(self.pods.items()):
            obj = self._pod_objects.get(uid)
            if obj is None or not _should_run(obj):
                del self.pods[uid]
                logger.info("Stopping publisher of Pod %s (Pod deleted)", local)
                task = asyncio.create_task(local.stop(), name=f"stop-{local}")
                self._stopping.add(task)
                task.add_done_callback(self._stopping.discard)
        for uid, obj in self._pod_objects.items():
            if uid not in self.pods and _should_run(obj):
                local = LocalPod(obj, self.workdir, self.log_dir)
                self.pods[uid] = local
                local.sync_volumes(self._secrets)
                local.start()
        for local in self.pods.values():
            local.sync_volumes(self._secrets)

    async def _watch(
        self,
        path: str,
        params: Mapping[str, str],
        handle: Callable[[str, dict[str, Any]], None],
        reset: Callable[[], None],
    ) -> None:
        """List, then watch from the list's version; list again when the version is gone."""
        while True:
            try:
                response = await self._api.get(path, params=dict(params))
                response.raise_for_status()
                listing = response.json()
                version: str = listing["metadata"]["resourceVersion"]
                # A fresh list is the whole truth: what is not in it was deleted meanwhile.
                reset()
                for item in listing.get("items") or []:
                    handle("ADDED", item)
                self._changed.set()
                while True:
                    version_or_none = await self._watch_from(path, handle, params, version)
                    if version_or_none is None:
                        break  # 410 Gone: list again
                    version = version_or_none
            except (httpx.HTTPError, ValueError, KeyError) as err:
                logger.warning("Watching %s failed (%s); retrying", path, err)
                await asyncio.sleep(WATCH_RETRY_SECONDS)

    async def _watch_from(
        self,
        path: str,
        handle: Callable[[str, dict[str, Any]], None],
        params: Mapping[str, str],
        version: str,
    ) -> str | None:
        """One watch request; returns the version to resume from, None if it expired."""
        query = {
            **params,
            "watch": "1",
            "resourceVersion": version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(WATCH_TIMEOUT_SECONDS),
        }
        timeout = httpx.Timeout(10.0, read=WATCH_TIMEOUT_SECONDS + 30.0)
        async with self._api.stream("GET", path, params=query, timeout=timeout) as response:
            response.raise_for_status()
            async for line in response.aiter_lines():
                if not line.strip():
                    continue
                event = json.loads(line)
                kind, obj = event["type"], event["object"]
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        return None
                    raise ValueError(f"watch error: {obj.get('message')}")
                version = obj["metadata"]["resourceVersion"]
                if kind != "BOOKMARK":
                    handle(kind, obj)
                    self._changed.set()
        return version
