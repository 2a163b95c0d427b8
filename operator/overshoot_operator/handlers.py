"""kopf handlers: thin adapters from kopf's kwargs to the reconciler.

Each handler turns kwargs into a call on the one `Reconciler` built at startup, writes the
returned status into `patch.status`, and maps "run again in N seconds" to
`kopf.TemporaryError`. Logic lives in reconciler.py and decisions.py.
"""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime
from typing import Any

import kopf

from overshoot_operator import manifests
from overshoot_operator import overshoot as ov
from overshoot_operator import resource as res
from overshoot_operator.kube import Kube, load_api_client
from overshoot_operator.reconciler import Outcome, Reconciler
from overshoot_operator.settings import OperatorSettings

logger = logging.getLogger(__name__)

# Built by `configure()` (from __main__ or a test) before kopf starts.
_state: dict[str, Any] = {}


def configure(settings: OperatorSettings, *, kubeconfig: str | None = None) -> None:
    """Install the settings the handlers use; called once before kopf runs."""
    _state["settings"] = settings
    _state["kubeconfig"] = kubeconfig


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """kopf's watches authenticate as the same identity as our own client.

    kopf's default login goes through the kubernetes library, which fixes its kubeconfig
    path at import time; `--kubeconfig` (exported as KUBECONFIG by __main__) must win.
    """
    if _state.get("kubeconfig") is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        return kopf.login_with_service_account(**kwargs)
    return kopf.login_with_kubeconfig(**kwargs)


def _reconciler() -> Reconciler:
    reconciler: Reconciler = _state["reconciler"]
    return reconciler


@kopf.on.startup()
async def start_operator(settings: kopf.OperatorSettings, **_: Any) -> None:
    ours: OperatorSettings = _state.setdefault("settings", OperatorSettings())
    # kopf's bookkeeping in annotations under a prefix of the project's own, never in
    # status or spec (so `kubectl get -o yaml` and GitOps diffs stay clean).
    prefix = f"kopf.{ours.annotation_prefix}"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=prefix)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=prefix,
        key="last-handled-configuration",
        # The annotations the operator writes itself are not user intent: left in the
        # essence, each of them made kopf see an "update" and write its diff-base once
        # more (two extra writes per created stream; bench/operator_scale.py).
        ignored_fields=[("metadata", "annotations", a) for a in res.OPERATOR_ANNOTATIONS],
    )
    settings.persistence.finalizer = res.FINALIZER
    # The reconciler posts the Events users act on (created, ended, recreated, failed).
    # kopf's own would add two per create ("Handler succeeded", "Creation is processed")
    # and one per scheduled retry ("failed temporarily: Retrying"), none of them news.
    settings.posting.enabled = False
    # Our due-queue does the timing; kopf's own retry backoff only paces handler errors.
    settings.execution.max_workers = 8
    # kopf LISTs the whole collection every time a watch ends, and feeds every object
    # through its change detection again: at 10,000 streams that is ~120 MB of parsed JSON
    # and seconds of CPU. So watches end rarely (the server's 10 min; the client timeout
    # only catches a silently dead connection, whose cost is spec changes seen up to 10 min
    # late: keepalives and status never depend on the watch), and lists come in chunks.
    settings.watching.server_timeout = 600
    settings.watching.client_timeout = 630
    settings.watching.chunk_size = 500
    settings.networking.request_timeout = 30
    # No cap on per-object workers (kopf's default): a worker idles after its last event,
    # so a cap of N admits only about N objects per idle period, and a burst of creates
    # queued behind the status events of running streams (bench/operator_scale.py: 1,000
    # creates took 11 minutes with a cap of 64). Idle workers go after 1 s, not 5 s: at
    # thousands of streams our own status writes wake one every few milliseconds.
    settings.queueing.worker_limit = None
    settings.queueing.idle_timeout = 1.0

    api_client = load_api_client(_state.get("kubeconfig"))
    kube = Kube(api_client)
    client = ov.OvershootClient(ours.api_url, max_connections=ours.api_max_concurrency)
    reconciler = Reconciler(ours, client, kube)
    reconciler.start()
    _state.update(reconciler=reconciler, kube=kube, client=client)
    logger.info("Started overshoot-operator against %s", ours.api_url)


@kopf.on.cleanup()
async def stop_operator(**_: Any) -> None:
    reconciler: Reconciler | None = _state.pop("reconciler", None)
    if reconciler is not None:
        await reconciler.stop()
        await reconciler.client.aclose()
        reconciler.kube.close()


def _apply(outcome: Outcome, patch: kopf.Patch) -> None:
    for key, value in outcome.status.items():
        patch.status[key] = value
    if outcome.retry_in is not None:
        raise kopf.TemporaryError("Retrying", delay=outcome.retry_in)


@kopf.on.resume(res.GROUP, res.VERSION, res.PLURAL, id="resume-stream")
async def resume_stream(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    _apply(await _reconciler().reconcile(body, resumed=True), patch)


@kopf.on.create(res.GROUP, res.VERSION, res.PLURAL, id="create-stream")
async def create_stream(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    _apply(await _reconciler().reconcile(body), patch)


@kopf.on.update(res.GROUP, res.VERSION, res.PLURAL, field="spec", id="update-stream")
async def update_stream(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    _apply(await _reconciler().reconcile(body), patch)


@kopf.on.field(
    res.GROUP,
    res.VERSION,
    res.PLURAL,
    field=["metadata", "annotations", res.REFRESH_ANNOTATION],
    id="refresh-stream",
)
async def refresh_stream(body: kopf.Body, patch: kopf.Patch, new: Any, **_: Any) -> None:
    if new is None:
        return
    _apply(await _reconciler().reconcile(body, refresh=True), patch)


@kopf.on.delete(res.GROUP, res.VERSION, res.PLURAL, id="delete-stream")
async def delete_stream(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    deleted_at = body["metadata"].get("deletionTimestamp")
    started = (
        datetime.fromisoformat(deleted_at.replace("Z", "+00:00"))
        if deleted_at
        else datetime.now(UTC)
    )
    try:
        await _reconciler().finalize(body, started=started)
    except kopf.TemporaryError:
        # Only a deletion that has to wait says so: a status write on an object about to
        # vanish would be wasted.
        patch.status["phase"] = "Deleting"
        raise


@kopf.on.event("", "v1", "pods", labels={manifests.STREAM_LABEL: kopf.PRESENT})
async def publisher_pod_changed(
    event: kopf.RawEvent, namespace: str | None, labels: kopf.Labels, **_: Any
) -> None:
    """Bring back a publisher Pod that was deleted (evicted, node gone) or failed."""
    obj = event.get("object") or {}
    phase = (obj.get("status") or {}).get("phase")
    if event.get("type") != "DELETED" and phase not in ("Failed", "Succeeded"):
        return
    owner = labels.get(manifests.STREAM_LABEL)
    if namespace and owner:
        await _reconciler().on_pod_change(namespace, owner)


@kopf.on.probe(id="streams")
def streams_probe(**_: Any) -> int:
    reconciler: Reconciler | None = _state.get("reconciler")
    return len(reconciler.tracked) if reconciler else 0
