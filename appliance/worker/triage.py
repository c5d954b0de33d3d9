"""Priorities and one-line summaries of model results, by the manifests and the triage config.

A positive label takes the priority its manifest gives it unless a `triage.overrides` entry
for that label (and model, and score) says otherwise; an image's priority is the most urgent of
its positive findings, or `triage.negative` when it has none. The study's priority is then the
most urgent of its images' (the store computes that).
"""

from __future__ import annotations

from appliance.config import TriageOverride, TriageSettings
from appliance.domain import PRIORITY_RANK
from appliance.runtime.findings import LabelFinding, MaskFinding, ModelResult

Finding = LabelFinding | MaskFinding


def finding_priority(model: str, finding: Finding, overrides: list[TriageOverride]) -> str:
    """The priority of a positive finding after the site's overrides (first match wins)."""
    for rule in overrides:
        if rule.label != finding.label or (rule.model and rule.model != model):
            continue
        if rule.min_score is not None and not _reaches(finding, rule.min_score):
            continue
        return rule.priority
    return finding.priority


def result_priority(result: ModelResult, triage: TriageSettings) -> tuple[str, str]:
    """(priority, summary) of one model result."""
    model = result.provenance.model
    candidates: list[Finding] = [*result.labels, *result.masks]
    found = [f for f in candidates if f.positive]
    if not found:
        return triage.negative, "no findings above the thresholds"
    ranked = sorted(
        found,
        key=lambda f: (
            PRIORITY_RANK[finding_priority(model, f, triage.overrides)],
            -_strength(f),
        ),
    )
    top = ranked[0]
    summary = describe(top) + (f" (+{len(ranked) - 1} more)" if len(ranked) > 1 else "")
    return finding_priority(model, top, triage.overrides), summary


def describe(finding: Finding) -> str:
    """E.g. "Pleural effusion 0.91 (threshold 0.45)" or "Anechoic fluid 1,234 mm²"."""
    if isinstance(finding, LabelFinding):
        return f"{finding.display} {finding.score:.2f} (threshold {finding.threshold:.2f})"
    if finding.area_mm2 is None:
        return f"{finding.display} {finding.area_px:,} pixels (no physical pixel size)"
    return f"{finding.display} {finding.area_mm2:,.0f} mm²"


def _reaches(finding: Finding, min_score: float) -> bool:
    """Only scores can reach a score: a mask finding never matches a rule with min_score."""
    return isinstance(finding, LabelFinding) and finding.score >= min_score


def most_urgent(priorities: list[str], default: str) -> str:
    return min(priorities, key=PRIORITY_RANK.__getitem__) if priorities else default


def _strength(finding: Finding) -> float:
    if isinstance(finding, LabelFinding):
        return finding.score - finding.threshold
    return float(finding.area_px)
