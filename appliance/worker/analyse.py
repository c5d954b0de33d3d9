"""One image through the pipeline: route -> decode -> infer -> plausibility check -> findings.

Nothing here touches the store: `analyse` takes a file and its routing tags and returns a
`Draft`, which the role saves. A model that raises makes the draft `retryable`; an image that
cannot be decoded fails for good. Heatmaps and overlays are made afterwards by a follow-up
job (`pictures.py`): encoding them costs several times the inference, and the findings (and
so the worklist's triage order) should not wait for them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pydicom.uid import UID

from appliance.config import DEFAULT_BODY_PART_KEYWORDS, Settings
from appliance.domain import PRIORITY_RANK, Analysis, AnalysisState, ModelOutcome
from appliance.imaging import DecodedImage, DecodeError, decode
from appliance.imaging.limits import Limits
from appliance.runtime.engine import Model
from appliance.runtime.findings import ModelResult
from appliance.runtime.quality import QualityCheck, check_quality
from appliance.runtime.routing import ImageTags, Keywords, Route, body_part_of, route
from appliance.worker.triage import most_urgent, result_priority

log = logging.getLogger(__name__)

PREVIEW_MAX_SIDE = 1024  # heatmaps and overlays are stored at most this large (a smooth map
# holds no more information at full size, and the touchscreen is smaller still)


@dataclass(frozen=True)
class Draft:
    """An analysis ready to save; `wants_pictures` when a finding is to be explained."""

    analysis: Analysis
    wants_pictures: bool = False
    retryable: bool = False
    timings: dict[str, float] = field(default_factory=dict)


def analyse(
    path: Path,
    tags: ImageTags,
    models: Sequence[Model],
    settings: Settings,
    skip_plausibility: bool = False,
) -> Draft:
    """Analyse one stored image with every model whose rules match its tags.

    `skip_plausibility`: a user looked at an image the check held back and asked for it to be
    analysed anyway; its findings are then marked as outside the model's typical input."""
    keywords = settings.routing.body_part_keywords
    routes = [(model, route(model.manifest.applies_to, tags, keywords)) for model in models]
    applicable = [(model, matched) for model, matched in routes if matched.applies]
    if not applicable:
        reason = no_model_reason(tags, routes, keywords)
        analysis = Analysis(
            AnalysisState.NO_MODEL, reason, settings.triage.no_model, "no applicable model"
        )
        return Draft(analysis)
    started = time.perf_counter()
    try:
        limits = Limits.from_settings(settings.receiver)
        image = decode_for(path, [model for model, _ in applicable], limits)
    except DecodeError as exc:
        reason = f"the image cannot be decoded: {exc}"
        return Draft(Analysis(AnalysisState.FAILED, reason, settings.triage.failed, reason))
    decode_ms = _ms_since(started)
    runs = [
        _run_model(model, matched, image, settings, skip_plausibility)
        for model, matched in applicable
    ]
    return _combine(runs, settings, decode_ms)


def no_model_reason(
    tags: ImageTags,
    routes: Sequence[tuple[Model, Route]],
    keywords: Keywords = DEFAULT_BODY_PART_KEYWORDS,
) -> str:
    """E.g. "CR HAND: no model for this body part (demo-chest-xray: body part 'HAND' is ...)"."""
    body_part = body_part_of(tags, keywords).name
    subject = " ".join(v for v in (tags.modality or "unknown modality", body_part) if v)
    if tags.modality in ("", "OT") and tags.sop_class:
        subject += f" ({_sop_name(tags.sop_class)})"
    if not routes:
        return f"{subject}: no model is installed"
    model, closest = min(routes, key=lambda item: len(item[1].failed_on))
    what = closest.failed_on[0] if closest.failed_on else "image"
    return f"{subject}: no model for this {what} ({model.package.name}: {closest.reasons[0]})"


def _sop_name(uid: str) -> str:
    name = UID(uid).name
    return name if name != uid else f"SOP class {uid}"


def decode_for(path: Path, models: Sequence[Model], limits: Limits) -> DecodedImage:
    """Only the first frame of a cine loop when that is all the models look at; images past
    the receiver's size limits (the site's, so receiver and worker agree) are refused."""
    first_only = all(model.manifest.input.frames == "first" for model in models)
    return decode(path, index=0 if first_only else None, limits=limits)


@dataclass(frozen=True)
class _Run:
    outcome: ModelOutcome
    wants_pictures: bool = False
    error: bool = False


def _run_model(
    model: Model,
    matched: Route,
    image: DecodedImage,
    settings: Settings,
    skip_plausibility: bool = False,
) -> _Run:
    started = time.perf_counter()
    try:
        results = model.infer([image])
        checks = [check_quality(model.manifest, r.prepared, r.position) for r in results]
        usable = [r for r, check in zip(results, checks, strict=True) if check.passed]
        if usable:
            return _findings(model, matched, usable, checks, settings, started)
        if not skip_plausibility:
            return _Run(_held_back(model, checks, settings, _ms_since(started)))
        run = _findings(model, matched, results, checks, settings, started)
        return _outside_typical_input(run, checks)
    except Exception as exc:  # a model failing must not stop the others or the worker
        log.exception("model %s failed", model.manifest.identity)
        reason = f"{model.manifest.identity} failed: {type(exc).__name__}: {exc}"
        return _Run(_failed(model, reason, settings, _ms_since(started)), error=True)


def _findings(
    model: Model,
    matched: Route,
    usable: list[ModelResult],
    checks: list[QualityCheck],
    settings: Settings,
    started: float,
) -> _Run:
    key = max(usable, key=frame_strength)
    priority, summary = result_priority(key, settings.triage)
    result: dict[str, Any] = key.to_dict()
    result["notes"] = [*result["notes"], *matched.reasons, *_quality_notes(checks)]
    result["quality"] = [check.statistics for check in checks]
    if len(usable) > 1 or len(checks) > 1:
        result["frames"] = [_frame_summary(r) for r in usable]
        result["frames_held_back"] = sum(not check.passed for check in checks)
    outcome = _outcome(model, AnalysisState.FINDINGS, "", priority, summary, key.frame)
    outcome = _with(outcome, result=result, duration_ms=_ms_since(started))
    return _Run(outcome, wants_pictures=needs_pictures(key, settings.models.explain))


def _outside_typical_input(run: _Run, checks: list[QualityCheck]) -> _Run:
    """Findings on an image the check held back, scored because a user asked: the result
    says so (`outside_typical_input`), with what the check saw, for the page and the record."""
    run.outcome.result["outside_typical_input"] = True
    run.outcome.result["plausibility_reasons"] = _check_reasons(checks)
    return run


def needs_pictures(result: ModelResult, which: str) -> bool:
    """Whether `pictures.py` will have anything to draw for this result."""
    if any(mask.positive for mask in result.masks):
        return True
    return which == "all" or (which == "positive" and any(f.positive for f in result.labels))


def frame_strength(result: ModelResult) -> float:
    """How strongly a frame shows its findings: the key frame is the strongest one (e.g. the
    largest fluid area of a cine loop, or the highest score above its threshold)."""
    if result.masks:
        return float(result.masks[0].area_px)
    return max((f.score - f.threshold for f in result.labels), default=0.0)


def _frame_summary(result: ModelResult) -> dict[str, Any]:
    return {
        "frame": result.frame,
        "positives": list(result.positives),
        "scores": {f.label: round(f.score, 4) for f in result.labels},
        "areas_mm2": {
            m.label: None if m.area_mm2 is None else round(m.area_mm2, 1) for m in result.masks
        },
    }


def _quality_notes(checks: list[QualityCheck]) -> list[str]:
    notes = sorted({note for check in checks for note in check.notes})
    held = [check for check in checks if not check.passed]
    if held:
        notes.append(f"{len(held)} of {len(checks)} frames failed the plausibility check")
    return notes


def _held_back(
    model: Model, checks: list[QualityCheck], settings: Settings, duration_ms: float
) -> ModelOutcome:
    reason = "; ".join(_check_reasons(checks)) or "the image failed the plausibility check"
    outcome = _outcome(
        model, AnalysisState.HELD_BACK, reason, settings.triage.held_back, f"held back: {reason}"
    )
    result = {**model.provenance.to_dict(), "quality": [c.statistics for c in checks]}
    return _with(outcome, result=result, duration_ms=duration_ms)


def _check_reasons(checks: list[QualityCheck]) -> list[str]:
    """What the plausibility check saw, each reason once, in the order of the frames."""
    return list(dict.fromkeys(reason for check in checks for reason in check.reasons))


def _failed(model: Model, reason: str, settings: Settings, duration_ms: float) -> ModelOutcome:
    outcome = _outcome(model, AnalysisState.FAILED, reason, settings.triage.failed, reason)
    return _with(outcome, result=model.provenance.to_dict(), duration_ms=duration_ms)


def _outcome(
    model: Model, state: AnalysisState, reason: str, priority: str, summary: str, frame: int = 0
) -> ModelOutcome:
    p = model.provenance
    return ModelOutcome(
        model=p.model,
        version=p.version,
        model_sha256=p.model_hash,
        backend=p.backend,
        precision=p.precision,
        state=state,
        reason=reason,
        priority=priority,
        summary=summary,
        key_frame=frame,
        duration_ms=0.0,
        result={},
    )


def _with(outcome: ModelOutcome, **changes: Any) -> ModelOutcome:
    return replace(outcome, **changes)


# --- the whole image ------------------------------------------------------------------------


def _combine(runs: list[_Run], settings: Settings, decode_ms: float) -> Draft:
    outcomes = tuple(run.outcome for run in runs)
    for outcome in outcomes:  # the models shared one decode; each result says what it cost
        if outcome.state is AnalysisState.FINDINGS:
            outcome.result["decode_ms"] = round(decode_ms, 3)
    states = {o.state for o in outcomes}
    if AnalysisState.FINDINGS in states:
        state = AnalysisState.FINDINGS
    elif AnalysisState.FAILED in states:
        state = AnalysisState.FAILED
    else:
        state = AnalysisState.HELD_BACK
    priority = most_urgent([o.priority for o in outcomes], settings.triage.negative)
    worst = min(outcomes, key=lambda o: (o.state is not state, _rank(o.priority)))
    reasons = [o.reason for o in outcomes if o.reason]
    analysis = Analysis(state, "; ".join(reasons), priority, worst.summary, outcomes)
    return Draft(
        analysis,
        wants_pictures=any(run.wants_pictures for run in runs),
        retryable=any(run.error for run in runs),
        timings={"decode_ms": decode_ms},
    )


def _rank(priority: str) -> int:
    return PRIORITY_RANK[priority]


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0
