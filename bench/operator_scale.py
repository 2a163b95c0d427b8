"""Operator scale: provisioning latency, burst, keepalive lateness, cost per stream.

Starts its own control plane (etcd, kube-apiserver, controller-manager, scheduler, kwok),
the emulator with a steady API latency, and the operator as a process under its
ServiceAccount with deploy/crds and deploy/rbac applied, exactly as the integration tests
run it. Publisher Pods are created for real and run as fake Pods on kwok Nodes (one extra
Node with room for every Pod). Everything listens on 127.0.0.1. Measures and prints:

- apply -> provisioned (status.streamId, Secret, Pod, phase Provisioning) for single
  streams applied one at a time, and apply -> Publishing with frames faked through the
  emulator's admin surface the moment the stream id appears;
- a burst of `--burst` resources: time until every one is provisioned;
- at each of `--sizes`: keepalive lateness (the operator's histogram), operator RSS and
  CPU, Overshoot calls and Kubernetes writes per stream-hour, over `--periods` keepalive
  periods; RSS per stream as the slope between sizes; lease expiries (must be zero).

Time runs at production pace by default: keepalive interval 120 s, lease 300 s. A shorter
`--keepalive-interval` compresses time as a stress test: the lease shrinks with it and
the operator's per-second limit on Overshoot calls is scaled by the same factor, so N
streams at 30 s load the operator like 4N streams at 120 s. Status polls keep their
production cadence (60 s). Per-stream-hour figures are as measured, at that cadence.

    .venv/bin/python bench/operator_scale.py [--sizes 1000,5000] [--burst 1000]
        [--api-latency-ms 50] [--keepalive-interval 120] [--periods 2] [--singles 20]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import ssl
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
from kubernetes import client as kclient
from kubernetes import dynamic
from kubernetes.dynamic.exceptions import ResourceNotFoundError

from overshoot_localstack import binaries, kube
from overshoot_localstack import cluster as localcluster
from overshoot_localstack.emulator import EmulatorProcess
from overshoot_localstack.operator import OperatorProcess
from overshoot_operator.settings import OperatorSettings

ROOT = Path(__file__).resolve().parents[1]
NAMESPACE = "bench"
OPERATOR_NAMESPACE = "overshoot-system"
OPERATOR_SA = "overshoot-operator"
API_KEY = "ovs_bench_key_0c4d1e2f"
GROUP, VERSION, PLURAL = "overshoot.ai", "v1alpha1", "overshootstreams"
STREAMS_PATH = f"/apis/{GROUP}/{VERSION}/namespaces/{NAMESPACE}/{PLURAL}"
BIG_NODE = "kwok-bench-big"
# The production keepalive interval the compression factor is relative to.
PRODUCTION_INTERVAL = 120.0
# The operator's own default, so the bench loads the limiter as production would.
PRODUCTION_MAX_PER_SECOND = OperatorSettings.model_fields["api_max_per_second"].default
WRITE_VERBS = {"POST", "PUT", "PATCH", "DELETE", "DELETECOLLECTION", "APPLY"}
# What the operator writes (resource[/subresource]); pods/status and pods/binding are kwok's
# and the scheduler's.
OPERATOR_RESOURCES = {"overshootstreams", "overshootstreams/status", "secrets", "pods", "events"}
LEASE_SECONDS = 300.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
STARTED = time.monotonic()


def say(message: str) -> None:
    print(f"[{time.monotonic() - STARTED:7.1f}s] {message}", flush=True)


# ---- small readers ---------------------------------------------------------------------


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    # Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


_LABELS = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def scrape(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Samples of one metric family member from Prometheus text (labels, value)."""
    out: list[tuple[dict[str, str], float]] = []
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        rest = line[len(name) :]
        if rest.startswith("{"):
            labels_text, _, value = rest[1:].rpartition("} ")
            labels = dict(_LABELS.findall(labels_text))
        elif rest.startswith(" "):
            labels, value = {}, rest
        else:
            continue
        out.append((labels, float(value.split()[0])))
    return out


@dataclass
class Histogram:
    buckets: dict[float, float]  # upper bound -> cumulative count

    @classmethod
    def read(cls, text: str, name: str) -> Histogram:
        buckets = {float(labels["le"]): value for labels, value in scrape(text, f"{name}_bucket")}
        return cls(buckets)

    def __sub__(self, other: Histogram) -> Histogram:
        return Histogram({le: n - other.buckets.get(le, 0.0) for le, n in self.buckets.items()})

    @property
    def count(self) -> float:
        return self.buckets.get(float("inf"), 0.0)

    def quantile(self, q: float) -> float:
        """Linear interpolation inside the bucket, as PromQL's histogram_quantile."""
        total = self.count
        if total <= 0:
            return float("nan")
        rank = q * total
        lower, below = 0.0, 0.0
        for le in sorted(self.buckets):
            cumulative = self.buckets[le]
            if cumulative >= rank:
                if le == float("inf"):
                    return lower
                inside = cumulative - below
                return lower + (le - lower) * ((rank - below) / inside if inside else 1.0)
            lower, below = le, cumulative
        return lower

    def max_bound(self) -> float:
        """Upper bound of the highest non-empty bucket (a histogram keeps no maximum)."""
        ordered = sorted(self.buckets)
        previous = 0.0
        highest = 0.0
        for le in ordered:
            if self.buckets[le] > previous:
                highest = le
            previous = self.buckets[le]
        return highest


# ---- the Kubernetes API as admin, over plain HTTP ------------------------------------


class Admin:
    """httpx against kube-apiserver with the admin client certificate."""

    def __init__(self, plane: localcluster.ControlPlane) -> None:
        assert plane.pki is not None
        self._context = ssl.create_default_context(cafile=str(plane.ca_file))
        self._context.load_cert_chain(str(plane.pki.admin_cert), str(plane.pki.admin_key))
        self.server = plane.server
        self.http = self.client(timeout=60.0)

    def client(self, timeout: float | None) -> httpx.Client:
        return httpx.Client(
            base_url=self.server,
            verify=self._context,
            timeout=httpx.Timeout(timeout, connect=10.0),
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=64),
        )

    def writes(self, verbs: set[str] = WRITE_VERBS) -> dict[str, float]:
        """apiserver_request_total of `verbs`, summed by resource[/subresource]."""
        text = self.http.get("/metrics").text
        out: dict[str, float] = {}
        for labels, value in scrape(text, "apiserver_request_total"):
            if labels.get("verb") not in verbs:
                continue
            resource = labels.get("resource", "")
            if labels.get("subresource"):
                resource += "/" + labels["subresource"]
            out[resource] = out.get(resource, 0.0) + value
        return out

    def requests_by_verb(self) -> dict[str, float]:
        """Operator-resource requests by "VERB resource" (GETs included: the bench does
        none, so every GET is the operator's)."""
        text = self.http.get("/metrics").text
        out: dict[str, float] = {}
        for labels, value in scrape(text, "apiserver_request_total"):
            verb = labels.get("verb", "")
            if verb not in WRITE_VERBS | {"GET"}:
                continue
            resource = labels.get("resource", "")
            if labels.get("subresource"):
                resource += "/" + labels["subresource"]
            if resource == "events" and labels.get("group"):
                continue  # events.k8s.io: the scheduler's "Scheduled"; ours are core/v1
            if resource in OPERATOR_RESOURCES:
                key = f"{verb} {resource}"
                out[key] = out.get(key, 0.0) + value
        return out


def apply_manifests(api: kclient.ApiClient, path: Path) -> None:
    """Server-side apply every object in a YAML file (as the test fixtures do)."""
    import yaml

    dyn = dynamic.DynamicClient(api)  # type: ignore[no-untyped-call]
    for obj in (d for d in yaml.safe_load_all(path.read_text()) if d):
        deadline = time.monotonic() + 30
        while True:
            try:
                resource = dyn.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
                break
            except ResourceNotFoundError:
                dyn.resources.invalidate_cache()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        dyn.server_side_apply(  # type: ignore[no-untyped-call]
            resource,
            body=obj,
            namespace=obj["metadata"].get("namespace") if resource.namespaced else None,
            field_manager="overshoot-bench",
            force_conflicts=True,
        )


def wait_until(predicate: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = predicate()
        except (httpx.HTTPError, KeyError, ValueError):
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise RuntimeError(f"Timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.2)


def install(plane: localcluster.ControlPlane, admin: Admin) -> None:
    with kube.api_client(plane.kubeconfig) as api:
        for path in sorted((ROOT / "deploy" / "crds").glob("*.yaml")):
            apply_manifests(api, path)
        ext = kclient.ApiextensionsV1Api(api)
        wait_until(
            lambda: any(
                c.type == "Established" and c.status == "True"
                for c in getattr(
                    ext.read_custom_resource_definition(f"{PLURAL}.{GROUP}").status,
                    "conditions",
                    None,
                )
                or []
            ),
            "the CRD to be Established",
        )
        for path in sorted((ROOT / "deploy" / "rbac").glob("*.yaml")):
            apply_manifests(api, path)
    admin.http.post("/api/v1/namespaces", json={"metadata": {"name": NAMESPACE}}).raise_for_status()
    wait_until(
        lambda: (
            admin.http.get(f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts/default").is_success
        ),
        f"ServiceAccount {NAMESPACE}/default",
    )
    secret = {
        "metadata": {"name": "overshoot-api-key", "namespace": NAMESPACE},
        "data": {"apiKey": base64.b64encode(API_KEY.encode()).decode()},
    }
    admin.http.post(f"/api/v1/namespaces/{NAMESPACE}/secrets", json=secret).raise_for_status()
    add_big_node(admin)


def add_big_node(admin: Admin) -> None:
    """One more kwok Node with room for every publisher Pod (the default ones hold 110)."""
    key, value = localcluster.KWOK_NODE_ANNOTATION
    label_key, label_value = localcluster.KWOK_NODE_LABEL
    capacity = {
        "cpu": "100000",
        "memory": "100000Gi",
        "pods": "50000",
        "ephemeral-storage": "100000Gi",
    }
    node = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": BIG_NODE,
            "annotations": {key: value, "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                label_key: label_value,
                "kubernetes.io/hostname": BIG_NODE,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
            },
        },
        "spec": {},
        "status": {"allocatable": capacity, "capacity": capacity},
    }
    admin.http.post("/api/v1/nodes", json=node).raise_for_status()

    def schedulable() -> bool:
        obj = admin.http.get(f"/api/v1/nodes/{BIG_NODE}").json()
        ready = any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in obj.get("status", {}).get("conditions", [])
        )
        tainted = any(
            t["key"].startswith("node.kubernetes.io/") for t in obj["spec"].get("taints", [])
        )
        return ready and not tainted

    wait_until(schedulable, f"Node {BIG_NODE} Ready and untainted", timeout=120)


def stream_manifest(name: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "OvershootStream",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "source": {"testPattern": {"pattern": "smpte", "width": 640, "height": 360, "fps": 10}},
            "apiKeySecretRef": {"name": "overshoot-api-key", "key": "apiKey"},
        },
    }


# ---- progress of every resource, from watches ----------------------------------------


@dataclass
class Seen:
    """When the bench first saw each part of a resource's provisioning."""

    stream_id: float | None = None
    provisioning: float | None = None
    publishing: float | None = None
    secret: float | None = None
    pod: float | None = None
    id: str | None = None

    @property
    def provisioned(self) -> float | None:
        parts = (self.stream_id, self.provisioning, self.secret, self.pod)
        return None if any(p is None for p in parts) else max(p for p in parts if p is not None)


@dataclass
class Progress:
    seen: dict[str, Seen] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    on_stream_id: Callable[[str, str], None] | None = None

    def _get(self, name: str) -> Seen:
        entry = self.seen.get(name)
        if entry is None:
            entry = self.seen[name] = Seen()
        return entry

    def stream_event(self, kind: str, obj: Mapping[str, Any]) -> None:
        if kind == "DELETED":
            return
        now = time.monotonic()
        name = obj["metadata"]["name"]
        status = obj.get("status") or {}
        fire: str | None = None
        with self.lock:
            entry = self._get(name)
            if status.get("streamId") and entry.stream_id is None:
                entry.stream_id, entry.id = now, status["streamId"]
                fire = entry.id
            if status.get("phase") in ("Provisioning", "Publishing") and entry.provisioning is None:
                entry.provisioning = now
            if status.get("phase") == "Publishing" and entry.publishing is None:
                entry.publishing = now
        if fire is not None and self.on_stream_id is not None:
            self.on_stream_id(name, fire)

    def secret_event(self, kind: str, obj: Mapping[str, Any]) -> None:
        name = obj["metadata"]["name"]
        if kind != "DELETED" and name.endswith("-publish"):
            with self.lock:
                entry = self._get(name.removesuffix("-publish"))
                entry.secret = entry.secret or time.monotonic()

    def pod_event(self, kind: str, obj: Mapping[str, Any]) -> None:
        name = obj["metadata"]["name"]
        if kind != "DELETED" and name.endswith("-publisher"):
            with self.lock:
                entry = self._get(name.removesuffix("-publisher"))
                entry.pod = entry.pod or time.monotonic()

    def publishing(self, name: str) -> bool:
        with self.lock:
            return name in self.seen and self.seen[name].publishing is not None

    def provisioned(self, names: Iterable[str]) -> int:
        with self.lock:
            return sum(1 for n in names if n in self.seen and self.seen[n].provisioned)

    def counts(self, names: Iterable[str]) -> str:
        with self.lock:
            entries = [self.seen.get(n) or Seen() for n in names]
        ids = sum(1 for e in entries if e.stream_id)
        secrets = sum(1 for e in entries if e.secret)
        pods = sum(1 for e in entries if e.pod)
        return f"streamId {ids}, Secret {secrets}, Pod {pods}"


class Watch:
    """LIST then WATCH one collection in a thread, feeding every object to `handle`."""

    def __init__(self, admin: Admin, path: str, handle: Callable[[str, Mapping[str, Any]], None]):
        self._admin = admin
        self._path = path
        self._handle = handle
        self._stop = threading.Event()
        self._http = admin.client(timeout=None)
        self._thread = threading.Thread(target=self._run, name=f"watch {path}", daemon=True)
        self._listed = threading.Event()

    def start(self) -> Watch:
        self._thread.start()
        if not self._listed.wait(60):
            raise RuntimeError(f"LIST {self._path} did not finish")
        return self

    def stop(self) -> None:
        """Ask to stop; the watch ends within its server-side timeout (a few seconds)."""
        self._stop.set()

    def join(self) -> None:
        self._thread.join(15)
        self._http.close()

    def _run(self) -> None:
        version = ""
        while not self._stop.is_set():
            try:
                if not version:
                    listed = self._http.get(self._path).json()
                    for item in listed.get("items", []):
                        self._handle("ADDED", item)
                    version = listed["metadata"]["resourceVersion"]
                    self._listed.set()
                params = {
                    "watch": "1",
                    "resourceVersion": version,
                    "allowWatchBookmarks": "true",
                    # Short, so a stopped watch notices within seconds.
                    "timeoutSeconds": "5",
                }
                with self._http.stream("GET", self._path, params=params) as response:
                    for line in response.iter_lines():
                        if self._stop.is_set():
                            return
                        if not line:
                            continue
                        event = json.loads(line)
                        obj = event["object"]
                        if event["type"] == "ERROR":
                            version = ""  # too old: list again
                            break
                        version = obj["metadata"].get("resourceVersion", version)
                        if event["type"] != "BOOKMARK":
                            self._handle(event["type"], obj)
            except (httpx.HTTPError, RuntimeError, ValueError):
                if self._stop.is_set():
                    return
                time.sleep(0.5)


class Watches:
    def __init__(self, admin: Admin, progress: Progress) -> None:
        base = f"/api/v1/namespaces/{NAMESPACE}"
        self._watches = [
            Watch(admin, STREAMS_PATH, progress.stream_event),
            Watch(admin, f"{base}/secrets", progress.secret_event),
            Watch(admin, f"{base}/pods", progress.pod_event),
        ]

    def __enter__(self) -> Watches:
        for watch in self._watches:
            watch.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for watch in self._watches:
            watch.stop()
        for watch in self._watches:
            watch.join()


# ---- phases --------------------------------------------------------------------------


@dataclass
class Singles:
    provisioned: list[float]
    publishing: list[float]


def measure_singles(admin: Admin, emulator: EmulatorProcess, count: int) -> Singles:
    progress = Progress()
    frames_http = httpx.Client(base_url=emulator.url, timeout=10.0)

    def send_frames(name: str, stream_id: str) -> None:
        # Media starts the moment the publisher could have joined: 10 s of frames at 10 fps.
        frames_http.post(
            f"/_emulator/streams/{stream_id}/frames", json={"count": 100, "fps": 10}
        ).raise_for_status()

    progress.on_stream_id = send_frames
    provisioned: list[float] = []
    publishing: list[float] = []
    names = [f"single-{i:03d}" for i in range(count)]
    with Watches(admin, progress):
        for name in names:
            started = time.monotonic()
            admin.http.post(STREAMS_PATH, json=stream_manifest(name)).raise_for_status()
            wait_until(partial(progress.provisioned, [name]), f"{name} provisioned", 60)
            wait_until(partial(progress.publishing, name), f"{name} Publishing", 90)
            entry = progress.seen[name]
            assert entry.provisioned is not None and entry.publishing is not None
            provisioned.append(entry.provisioned - started)
            publishing.append(entry.publishing - started)
    frames_http.close()
    for name in names:
        admin.http.delete(f"{STREAMS_PATH}/{name}").raise_for_status()
    wait_until(
        lambda: (
            not any(
                i["metadata"]["name"].startswith("single-")
                for i in admin.http.get(STREAMS_PATH).json()["items"]
            )
        ),
        "single streams deleted",
        120,
    )
    return Singles(provisioned, publishing)


@dataclass
class Burst:
    count: int
    applied_seconds: float
    provisioned_seconds: float
    per_resource: list[float]
    requests: dict[str, float]  # operator-resource requests during the burst, by verb


def burst(admin: Admin, names: list[str], *, timeout: float, label: str) -> Burst:
    """Apply all `names` at once (16 client threads); wait until every one is provisioned."""
    progress = Progress()
    before = admin.requests_by_verb()
    with Watches(admin, progress), ThreadPoolExecutor(16) as pool:
        started = time.monotonic()
        applied_at: dict[str, float] = {}

        def apply(name: str) -> None:
            t = time.monotonic()
            admin.http.post(STREAMS_PATH, json=stream_manifest(name)).raise_for_status()
            applied_at[name] = t

        futures = [pool.submit(apply, n) for n in names]
        last_report = 0.0
        applied_seconds: float | None = None
        while True:
            done = progress.provisioned(names)
            now = time.monotonic()
            if applied_seconds is None and all(f.done() for f in futures):
                for f in futures:
                    f.result()
                applied_seconds = now - started
            if done == len(names):
                break
            if now - last_report >= 5:
                last_report = now
                say(f"{label}: {done}/{len(names)} provisioned ({progress.counts(names)})")
            if now - started > timeout:
                raise RuntimeError(f"{label}: only {done}/{len(names)} provisioned in {timeout}s")
            time.sleep(0.1)
        ends = {n: progress.seen[n].provisioned for n in names}
    per_resource = [(ends[n] or 0.0) - applied_at[n] for n in names]
    finished = max(e for e in ends.values() if e is not None)
    after = admin.requests_by_verb()
    requests = {k: v - before.get(k, 0.0) for k, v in after.items() if v > before.get(k, 0.0)}
    return Burst(len(names), applied_seconds or 0.0, finished - started, per_resource, requests)


@dataclass
class Window:
    streams: int
    seconds: float
    keepalives: float
    lateness: Histogram
    rss_mib: float
    cpu_percent: float
    machine_percent: float
    calls: dict[str, float]
    writes: dict[str, float]
    expired: int

    def per_stream_hour(self, n: float) -> float:
        return n / (self.streams * self.seconds / 3600)


def keepalives_total(text: str) -> float:
    return sum(v for _, v in scrape(text, "overshoot_keepalives_total"))


def measure_window(
    admin: Admin,
    emulator: EmulatorProcess,
    operator: OperatorProcess,
    *,
    streams: int,
    seconds: float,
) -> Window:
    def snapshot() -> tuple[
        float, str, dict[str, Any], dict[str, float], float, tuple[float, float]
    ]:
        return (
            time.monotonic(),
            operator.metrics(),
            emulator.admin.calls(API_KEY),
            admin.writes(),
            cpu_seconds(operator.pid),
            machine_busy(),
        )

    t0, m0, c0, w0, cpu0, busy0 = snapshot()
    while time.monotonic() - t0 < seconds:
        time.sleep(min(10.0, seconds - (time.monotonic() - t0)))
        done = keepalives_total(operator.metrics()) - keepalives_total(m0)
        say(
            f"{streams} streams: {time.monotonic() - t0:4.0f}/{seconds:.0f}s, "
            f"{done:.0f} keepalives, operator RSS {rss_mib(operator.pid):.0f} MiB"
        )
    t1, m1, c1, w1, cpu1, busy1 = snapshot()
    elapsed = t1 - t0
    ended = emulator.admin.streams(state="ended")
    return Window(
        streams=streams,
        seconds=elapsed,
        keepalives=keepalives_total(m1) - keepalives_total(m0),
        lateness=Histogram.read(m1, "overshoot_keepalive_lateness_seconds")
        - Histogram.read(m0, "overshoot_keepalive_lateness_seconds"),
        rss_mib=rss_mib(operator.pid),
        cpu_percent=100 * (cpu1 - cpu0) / elapsed,
        machine_percent=100 * (busy1[0] - busy0[0]) / max(1.0, busy1[1] - busy0[1]),
        calls={k: float(c1.get(k, 0)) - float(c0.get(k, 0)) for k in c1},
        writes={k: v - w0.get(k, 0.0) for k, v in w1.items() if v - w0.get(k, 0.0) > 0},
        expired=sum(1 for s in ended if s.get("end_reason") == "expired"),
    )


# ---- report ----------------------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


def report(
    args: argparse.Namespace,
    singles: Singles | None,
    bursts: list[Burst],
    windows: list[Window],
    max_per_second: float,
    ttl: float,
) -> None:
    mem_kib = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal:")
    )
    factor = PRODUCTION_INTERVAL / args.keepalive_interval
    compression = (
        f" (x{factor:g} of the default {PRODUCTION_MAX_PER_SECOND:g}/s: time compressed x{factor:g})"
        if factor != 1
        else ""
    )
    lines = [
        "",
        "overshoot-operator scale benchmark",
        f"machine: {os.cpu_count()} CPUs, {mem_kib / 1024 / 1024:.1f} GiB RAM, "
        f"Python {sys.version.split()[0]}; control plane, kwok, emulator, operator and "
        "bench on the same machine",
        f"settings: API latency {args.api_latency_ms:g} ms, keepalive interval "
        f"{args.keepalive_interval:g} s (lease {ttl:g} s), Overshoot calls <= "
        f"{max_per_second:g}/s{compression}, status poll 60 s",
        "",
    ]
    if singles is not None:
        p, q = singles.provisioned, singles.publishing
        lines += [
            f"apply -> provisioned (streamId, Secret, Pod, Provisioning), {len(p)} singles: "
            f"p50 {ms(percentile(p, 0.5))}, p99 {ms(percentile(p, 0.99))}, "
            f"max {ms(max(p))}",
            f"apply -> Publishing (frames faked when the id appears), {len(q)} singles: "
            f"p50 {ms(percentile(q, 0.5))}, p99 {ms(percentile(q, 0.99))}, "
            f"max {ms(max(q))}",
        ]
    for b in bursts:
        lines.append(
            f"burst of {b.count} (applied in {b.applied_seconds:.1f} s): all provisioned in "
            f"{b.provisioned_seconds:.1f} s; per resource p50 {ms(percentile(b.per_resource, 0.5))}"
            f", p99 {ms(percentile(b.per_resource, 0.99))}"
        )
        # The bench's own POSTs of the resources are in "POST overshootstreams".
        mine = dict(b.requests)
        mine["POST overshootstreams"] = mine.get("POST overshootstreams", 0.0) - b.count
        per = sum(v for v in mine.values() if v > 0) / b.count
        detail = ", ".join(
            f"{k} {v / b.count:.2f}"
            for k, v in sorted(mine.items(), key=lambda kv: -kv[1])
            if v > 0
        )
        lines.append(f"  operator's Kubernetes requests per created stream: {per:.1f} ({detail})")
    lines += [
        "",
        f"{'streams':>7} {'window':>7} {'keepalives':>10} {'late p50':>9} {'late p99':>9} "
        f"{'late max':>9} {'RSS MiB':>8} {'op CPU':>7} {'machine':>8} "
        f"{'Overshoot/stream-h':>19} {'K8s writes/stream-h':>20} {'expired':>8}",
    ]
    for w in windows:
        calls = sum(w.calls.values())
        op_writes = sum(v for k, v in w.writes.items() if k in OPERATOR_RESOURCES)
        lines.append(
            f"{w.streams:>7} {w.seconds:>6.0f}s {w.keepalives:>10.0f} "
            f"{ms(w.lateness.quantile(0.5)):>9} {ms(w.lateness.quantile(0.99)):>9} "
            f"{'<= ' + ms(w.lateness.max_bound()):>9} {w.rss_mib:>8.0f} "
            f"{w.cpu_percent:>6.0f}% {w.machine_percent:>7.0f}% "
            f"{w.per_stream_hour(calls):>19.1f} {w.per_stream_hour(op_writes):>20.1f} "
            f"{w.expired:>8}"
        )
    if len(windows) >= 2:
        first, last = windows[0], windows[-1]
        slope = (last.rss_mib - first.rss_mib) * 1024 / (last.streams - first.streams)
        lines.append(f"RSS per stream (slope {first.streams} -> {last.streams}): {slope:.1f} KiB")
    for w in windows:
        by_endpoint = ", ".join(
            f"{k} {w.per_stream_hour(v):.1f}" for k, v in sorted(w.calls.items()) if v
        )
        writes = ", ".join(
            f"{k} {w.per_stream_hour(v):.1f}"
            for k, v in sorted(w.writes.items(), key=lambda kv: -kv[1])
            if k in OPERATOR_RESOURCES
        )
        other = sum(v for k, v in w.writes.items() if k not in OPERATOR_RESOURCES)
        lines.append(f"  {w.streams} streams, per stream-hour: Overshoot {by_endpoint}")
        lines.append(
            f"  {w.streams} streams, per stream-hour: K8s writes {writes} "
            f"(not the operator's: {other / (w.seconds / 3600):.0f}/h of leases and nodes)"
        )
    lines.append(f"lease expiries: {windows[-1].expired if windows else 0} (must be 0)")
    print("\n".join(lines), flush=True)


# ---- main ------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,5000", help="stream counts, ascending")
    parser.add_argument("--burst", type=int, default=1000, help="resources applied at once")
    parser.add_argument("--api-latency-ms", type=float, default=50.0)
    parser.add_argument("--keepalive-interval", type=float, default=PRODUCTION_INTERVAL)
    parser.add_argument("--periods", type=float, default=2.0, help="keepalive periods per size")
    parser.add_argument("--singles", type=int, default=20, help="single-stream samples")
    parser.add_argument(
        "--api-max-per-second",
        type=float,
        default=None,
        help="operator limit on Overshoot calls (default: the operator's default rate scaled by 120/interval)",
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep the operator log")
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(",") if s)
    if args.burst > sizes[0]:
        parser.error("--burst must not exceed the smallest size")
    max_per_second = args.api_max_per_second or (
        PRODUCTION_MAX_PER_SECOND * PRODUCTION_INTERVAL / args.keepalive_interval
    )
    # Long enough that the schedule's 60 s safety margin never shortens the interval.
    # The lease scales with the interval (300 s at 120 s), but never so short that the
    # schedule's 60 s safety margin would shorten the interval.
    ttl = max(
        LEASE_SECONDS * args.keepalive_interval / PRODUCTION_INTERVAL,
        args.keepalive_interval + 90.0,
    )

    workdir = Path(tempfile.mkdtemp(prefix="overshoot-bench-"))
    plane: localcluster.ControlPlane | None = None
    emulator: EmulatorProcess | None = None
    operator: OperatorProcess | None = None
    windows: list[Window] = []
    bursts: list[Burst] = []
    singles: Singles | None = None
    try:
        say("Starting the control plane")
        plane = localcluster.ControlPlane(binary_paths=binaries.ensure(list(localcluster.BINARIES)))
        plane.start()
        admin = Admin(plane)
        install(plane, admin)
        say(f"Control plane up at {plane.server}; starting the emulator")
        emulator = EmulatorProcess(
            ttl_seconds=ttl,
            expire_interval=1.0,
            extra_args=["--latency-ms", str(args.api_latency_ms)],
        ).start()
        kubeconfig = kube.serviceaccount_kubeconfig(
            plane, OPERATOR_NAMESPACE, OPERATOR_SA, workdir / "kubeconfig-operator"
        )
        operator = OperatorProcess(
            kubeconfig=kubeconfig,
            settings={
                "api_url": emulator.api_url,
                "namespaces": NAMESPACE,
                "default_api_key_secret_namespace": NAMESPACE,
                "publisher_image": "overshoot-operator:bench",
                "keepalive_interval_seconds": str(args.keepalive_interval),
                # kwok's Pods send no frame: without this, every stream would be released
                # as a dead camera after 3 minutes.
                "first_frame_timeout_seconds": "0",
                "api_max_per_second": str(max_per_second),
                # As the Helm chart runs it: the Lease is renewed every 2 s.
                "leader_election": "true",
            },
            log_path=workdir / "operator.log",
        ).start()
        say(f"Operator running (pid {operator.pid}, RSS {rss_mib(operator.pid):.0f} MiB)")

        if args.singles:
            say(f"Single streams, one at a time: {args.singles}")
            singles = measure_singles(admin, emulator, args.singles)
            say(
                f"Singles: provisioned p50 {ms(percentile(singles.provisioned, 0.5))}, "
                f"Publishing p50 {ms(percentile(singles.publishing, 0.5))}"
            )

        names: list[str] = []
        for size in sizes:
            new = [f"s-{i:05d}" for i in range(len(names), size)]
            first = not names
            label = f"burst of {len(new)}" if first else f"ramp to {size}"
            say(f"{label}: applying")
            if first and len(new) > args.burst:
                # Only `--burst` at once; the rest of the first size is a ramp.
                bursts.append(
                    burst(admin, new[: args.burst], timeout=900, label=f"burst of {args.burst}")
                )
                names += new[: args.burst]
                new = new[args.burst :]
                label = f"ramp to {size}"
            if new:
                bursts.append(burst(admin, new, timeout=1800, label=label))
                names += new
            say(f"{bursts[-1].count} provisioned in {bursts[-1].provisioned_seconds:.1f} s")
            seconds = args.periods * args.keepalive_interval + 5
            # Let the keepalives of the newest streams come round once before measuring.
            time.sleep(args.keepalive_interval * 0.5)
            say(f"{size} streams: measuring for {seconds:.0f} s")
            windows.append(measure_window(admin, emulator, operator, streams=size, seconds=seconds))
            w = windows[-1]
            say(
                f"{size} streams: lateness p99 {ms(w.lateness.quantile(0.99))}, "
                f"RSS {w.rss_mib:.0f} MiB, CPU {w.cpu_percent:.0f}%, expired {w.expired}"
            )
        report(args, singles, bursts, windows, max_per_second, ttl)
    finally:
        if operator is not None:
            operator.stop()
            errors = [line for line in operator.logs().splitlines() if " ERROR " in line]
            if errors:
                say(f"operator logged {len(errors)} ERROR lines; first: {errors[0][:300]}")
        if emulator is not None:
            emulator.stop()
        if plane is not None:
            plane.stop()
        if args.keep_logs:
            say(f"operator log kept in {workdir / 'operator.log'}")
        else:
            for path in workdir.iterdir():
                path.unlink()
            workdir.rmdir()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
