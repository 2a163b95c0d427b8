"""What the operator writes down on the resource itself: its finalizer and stream id.

Role: invariant 2's bookkeeping, in metadata, so it survives any crash:
- the finalizer `overshoot.ai/delete-stream`, added before the first create, removed when
  the remote stream is released (deletion cannot be stuck on it forever: controller.py
  lets go after `deleteGiveUpSeconds`);
- the `creating` mark, set just before POST /streams and cleared with the id's record or
  as soon as the create is known to have made nothing (a refusal). Found on a resource
  without a recorded id, it means a create may have leaked a stream (an Event says so);
- the stream id annotation, written right after a create (status gets it in the same
  pass, through the status writer).

Every write names the incarnation (uid); finalizer changes are optimistic updates on the
resourceVersion the watch delivered, because a merge patch replaces the whole list.

Boundary: kube.py's metadata patches.
"""

from __future__ import annotations

from collections.abc import Mapping

from overshoot_operator import resource as res
from overshoot_operator.kube import Kube
from overshoot_operator.registry import Observed


class Records:
    def __init__(self, kube: Kube) -> None:
        self._kube = kube

    async def _patch(
        self,
        observed: Observed,
        *,
        annotations: Mapping[str, str | None] | None = None,
        finalizers: list[str] | None = None,
    ) -> Observed:
        stored = await self._kube.patch_stream_metadata(
            observed.namespace,
            observed.name,
            uid=observed.uid,
            resource_version=observed.resource_version if finalizers is not None else None,
            annotations=annotations,
            finalizers=finalizers,
        )
        return Observed.from_body(stored)

    async def mark_creating(self, observed: Observed, *, now: str) -> Observed:
        """The creating mark, with the finalizer if it is not there yet (one write)."""
        finalizers = None
        if not observed.has_finalizer:
            finalizers = [*observed.finalizers, res.FINALIZER]
        return await self._patch(
            observed, annotations={res.CREATING_ANNOTATION: now}, finalizers=finalizers
        )

    async def clear_creating(self, observed: Observed) -> Observed:
        return await self._patch(observed, annotations={res.CREATING_ANNOTATION: None})

    async def add_finalizer(self, observed: Observed) -> Observed:
        return await self._patch(observed, finalizers=[*observed.finalizers, res.FINALIZER])

    async def remove_finalizer(self, observed: Observed) -> Observed:
        kept = [f for f in observed.finalizers if f != res.FINALIZER]
        return await self._patch(observed, finalizers=kept)

    async def record_stream_id(self, observed: Observed, stream_id: str) -> Observed:
        """Invariant 2: the id on the resource, and the creating mark gone, in one write."""
        return await self._patch(
            observed,
            annotations={res.STREAM_ID_ANNOTATION: stream_id, res.CREATING_ANNOTATION: None},
        )

    async def forget_stream_id(self, observed: Observed) -> Observed:
        return await self._patch(
            observed, annotations={res.STREAM_ID_ANNOTATION: None, res.CREATING_ANNOTATION: None}
        )
