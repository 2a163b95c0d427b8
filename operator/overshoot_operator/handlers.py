"""kopf handlers: the watches, feeding the controller.

kopf is the operator's informer here: it lists and watches OvershootStreams and publisher
Pods, and each event goes to the controller, which records what it says and queues the key
(reconciler.py decides what to do from a fresh read, level-triggered). There are no kopf
change handlers: those would be a second writer of status and of the finalizer, run on
kopf's own schedule and retry policy, and store kopf's progress on the resource. The
operator's Events, status and finalizer are all the controller's.

`kopf_settings()` tunes kopf, each setting with its reason.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import Any

import kopf

from overshoot_operator import manifests
from overshoot_operator import resource as res
from overshoot_operator.reconciler import Controller
from overshoot_operator.settings import OperatorSettings

logger = logging.getLogger(__name__)

# Set by `install()` (main, or a test) before kopf starts.
_state: dict[str, Any] = {}


def install(controller: Controller, *, kubeconfig: str | None = None) -> None:
    _state["controller"] = controller
    _state["kubeconfig"] = kubeconfig


def _controller() -> Controller:
    controller: Controller = _state["controller"]
    return controller


class RetryForever:
    """kopf's backoffs between retries of a failed API request, without end: Fibonacci
    up to 21 s, then every 21 s (a new iteration per request, so each starts over)."""

    def __iter__(self) -> Iterator[float]:
        yield from (1, 1, 2, 3, 5, 8, 13)
        while True:
            yield 21


def kopf_settings(ours: OperatorSettings) -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    # kopf posts no Events of its own: the controller posts those users act on.
    settings.posting.enabled = False
    # No namespace or CRD observation. With a list of namespaces, kopf stops watching a
    # namespace the moment it is marked for deletion, so the finalizers of the streams in
    # it would never run and the namespace would never go away. The names are watched as
    # given (main waits for the CRD before kopf starts).
    settings.scanning.disabled = True
    # kopf LISTs the whole collection every time a watch ends, and feeds every object
    # through its processing again: at 10,000 streams that is ~120 MB of parsed JSON
    # and seconds of CPU. So watches end rarely (the server's 10 min; the client timeout
    # only catches a silently dead connection), and lists come in chunks.
    settings.watching.server_timeout = 600
    settings.watching.client_timeout = 630
    settings.watching.connect_timeout = 10
    settings.watching.chunk_size = 500
    settings.networking.request_timeout = 30
    settings.networking.connect_timeout = 10
    # kopf gives a watch up after its eight retries (about 90 s), and the operator with
    # it; an API server outage of any length must find the operator still renewing leases.
    settings.networking.error_backoffs = RetryForever()
    # No cap on per-object workers: an event handler here only records and queues.
    settings.queueing.worker_limit = None
    settings.queueing.idle_timeout = 1.0
    # kopf's bookkeeping, should anything of kopf's ever write it, under our prefix.
    prefix = f"kopf.{ours.annotation_prefix}"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=prefix)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=prefix)
    return settings


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """kopf's watches authenticate as the same identity as our own client.

    kopf's default login goes through the kubernetes library, which fixes its kubeconfig
    path at import time; `--kubeconfig` (exported as KUBECONFIG by main) must win.
    """
    if _state.get("kubeconfig") is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        return kopf.login_with_service_account(**kwargs)
    return kopf.login_with_kubeconfig(**kwargs)


# Async, though they never await: kopf runs sync handlers in a thread pool, and the
# controller's state belongs to the event loop.
@kopf.on.event(res.GROUP, res.VERSION, res.PLURAL)
async def stream_changed(event: kopf.RawEvent, **_: Any) -> None:
    _controller().on_stream_event(event)


@kopf.on.event("", "v1", "pods", labels={manifests.STREAM_LABEL: kopf.PRESENT})
async def publisher_pod_changed(event: kopf.RawEvent, **_: Any) -> None:
    _controller().on_pod_event(event)
