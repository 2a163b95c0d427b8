"""The chart scored by kube-score (its default checks): every finding is either fixed in the
chart or accepted, with its reason, in deploy/helm/kube-score.yaml for the values sets named
there; a new finding fails, and so does an acceptance that no longer finds anything.

No cluster: kube-score reads the rendered manifests only (like tests/helm's render tests).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from linters import KUBE_SCORE_CONFIG, Accepted, KubeScore, accepted_findings

pytestmark = pytest.mark.unit

VALUES_SETS = ["default", "ha", "maximal"]


def _accepted_for(values_set: str) -> list[Accepted]:
    return [a for a in accepted_findings() if values_set in a.values]


def test_config_names_known_values_sets() -> None:
    for entry in accepted_findings():
        assert entry.values, f"{KUBE_SCORE_CONFIG}: {entry.test} names no values set"
        assert set(entry.values) <= set(VALUES_SETS), (
            f"{KUBE_SCORE_CONFIG}: {entry.test}: values sets are {VALUES_SETS}"
        )


@pytest.mark.parametrize("values_set", VALUES_SETS)
def test_no_finding_beyond_the_accepted(
    kube_score: KubeScore, render_text: Callable[[str], Path], values_set: str
) -> None:
    ignore = [a.test for a in _accepted_for(values_set)]
    findings = kube_score.findings(render_text(values_set), ignore=ignore)
    assert not findings, (
        f"kube-score findings on the chart with the {values_set} values; fix the chart, or "
        f"accept one in {KUBE_SCORE_CONFIG.name} with its reason:\n"
        + "\n".join(str(f) for f in findings)
    )


@pytest.mark.parametrize("values_set", VALUES_SETS)
def test_every_acceptance_is_still_needed(
    kube_score: KubeScore, render_text: Callable[[str], Path], values_set: str
) -> None:
    found = {f.test for f in kube_score.findings(render_text(values_set))}
    stale = [a.test for a in _accepted_for(values_set) if a.test not in found]
    assert not stale, (
        f"accepted in {KUBE_SCORE_CONFIG.name} for {values_set}, but kube-score no longer "
        f"finds them there: {stale} (drop {values_set!r} from their values, or the entry)"
    )
