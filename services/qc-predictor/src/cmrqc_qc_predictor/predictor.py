"""Predicting Dice, intervals and verdicts for image/segmentation pairs (no Kafka here).

``predict_cases`` is the whole per-batch computation the service runs: validate each pair
(rules first), prepare the valid ones, run the network once per chunk of ``max_batch``
(CUDA with float16 autocast when the model sits on a GPU), attach the conformal intervals and
decide the verdicts. A pair that fails validation still gets a result (verdict FAIL, reason,
Dice 0 and no interval), never an exception and never a pass.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from numpy.typing import NDArray

from cmrqc_qc_predictor.artifact import MAX_VIEWS, QcModel
from cmrqc_qc_predictor.classes import OUTPUT_CLASSES
from cmrqc_qc_predictor.conformal import ConformalCalibration
from cmrqc_qc_predictor.inputs import case_inputs, collate
from cmrqc_qc_predictor.prepare import InputError, check_pair, prepare_input
from cmrqc_qc_predictor.verdicts import DEFAULT_THRESHOLDS, Decision, decide, rule_violations


@dataclass(frozen=True)
class Case:
    """One image and its segmentation on the same (slices, rows, cols) grid."""

    image: NDArray[np.number]
    labels: NDArray[np.integer]
    pixel_spacing_mm: tuple[float, float]
    slice_spacing_mm: float = 1.0


@dataclass(frozen=True)
class Prediction:
    """Predicted Dice per class (``OUTPUT_CLASSES``), the interval and the decision.

    ``lower``/``upper`` are None when no prediction could be made (invalid input).
    ``timings_ms``: ``prepare`` (this case) and ``inference`` (its share of the batch).
    """

    dsc: dict[str, float]
    lower: dict[str, float] | None
    upper: dict[str, float] | None
    coverage: float
    decision: Decision
    timings_ms: dict[str, float] = field(default_factory=dict)


def select_device(preference: str = "auto") -> torch.device:
    """``auto``: CUDA when available, else CPU; or exactly ``cpu`` / ``cuda`` / ``cuda:N``."""
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(preference)


def view_of(crop: torch.Tensor, view: int) -> torch.Tensor:
    """View ``view`` (0–7) of crops ``(..., H, W)``: view 0 is the crop itself, 1 its mirror
    image, 2–3 the same turned by 90°, and so on. Dice does not change under any of them."""
    if not 0 <= view < MAX_VIEWS:
        raise ValueError(f"view must lie in [0, {MAX_VIEWS}), not {view}")
    turned = torch.rot90(crop, view // 2, dims=(-2, -1))
    return torch.flip(turned, dims=(-1,)) if view % 2 else turned


def run_network(
    model: QcModel, batch: dict[str, torch.Tensor], device: torch.device, views: int = 1
) -> NDArray[np.float32]:
    """Forward one batch; (N, 5) Dice in [0, 1] as float32 on the CPU.

    On CUDA the forward pass runs under float16 autocast (mixed precision). ``views`` > 1
    (fast model only) averages the prediction over the first ``views`` in-plane views of the
    crop (``view_of``): less error for ``views`` times the forward cost.

    Raises:
        ValueError: ``views`` outside [1, 8], or > 1 for a model without a crop input.
    """
    if not 1 <= views <= MAX_VIEWS:
        raise ValueError(f"views must lie in [1, {MAX_VIEWS}], not {views}")
    if views > 1 and "crop" not in batch:
        raise ValueError(f"{model.architecture} has no in-plane crop to turn: views must be 1")
    moved = {key: value.to(device, non_blocking=True) for key, value in batch.items()}
    with torch.inference_mode():
        total: torch.Tensor | None = None
        for view in range(views):
            inputs = moved if view == 0 else {**moved, "crop": view_of(moved["crop"], view)}
            if device.type == "cuda":
                with torch.autocast("cuda", dtype=torch.float16):
                    output = model.network(inputs).float()
            else:
                output = model.network(inputs).float()
            total = output if total is None else total + output
    assert total is not None
    return (total / views).clamp(0.0, 1.0).cpu().numpy()


def _as_dict(values: NDArray[np.floating]) -> dict[str, float]:
    return {name: float(values[i]) for i, name in enumerate(OUTPUT_CLASSES)}


def predict_cases(
    model: QcModel,
    cases: Sequence[Case],
    *,
    device: torch.device | None = None,
    thresholds: Mapping[str, float] = DEFAULT_THRESHOLDS,
    coverage: float = 0.9,
    max_batch: int = 8,
    views: int = 1,
    calibration: ConformalCalibration | None = None,
) -> list[Prediction]:
    """Predictions for ``cases``, in order (see the module docstring).

    ``views`` > 1 averages the fast model over in-plane views (``run_network``). The
    intervals come from ``calibration`` when given (it must have been fitted with the same
    number of views), else from the artifact's calibration for that many views
    (``QcModel.calibration_for``).

    Raises:
        ValueError: ``max_batch`` < 1, a threshold for an unknown class, bad ``views``, or no
            calibration for ``views`` in the artifact when none is given.
    """
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    unknown = set(thresholds) - set(OUTPUT_CLASSES)
    if unknown:
        raise ValueError(f"thresholds for unknown classes: {sorted(unknown)}")
    if not 1 <= views <= MAX_VIEWS:
        raise ValueError(f"views must lie in [1, {MAX_VIEWS}], not {views}")
    half = (calibration or model.calibration_for(views)).half_widths(coverage)
    device = device or next(model.network.parameters()).device
    results: list[Prediction | None] = [None] * len(cases)
    ready: list[tuple[int, dict[str, torch.Tensor], list[str], float]] = []
    for index, case in enumerate(cases):
        started = time.perf_counter()
        try:
            check_pair(case.image, case.labels)
            reasons = rule_violations(case.labels)
            prepared = prepare_input(
                case.image,
                case.labels,
                case.pixel_spacing_mm,
                case.slice_spacing_mm,
                checked=True,  # just above
            )
        except InputError as error:
            results[index] = invalid_prediction(error.reason, str(error), thresholds, coverage)
            continue
        inputs = case_inputs(model.architecture, prepared)
        ready.append((index, inputs, reasons, (time.perf_counter() - started) * 1000))
    for start in range(0, len(ready), max_batch):
        chunk = ready[start : start + max_batch]
        started = time.perf_counter()
        predicted = run_network(
            model, collate([inputs for _, inputs, _, _ in chunk]), device, views
        )
        inference_ms = (time.perf_counter() - started) * 1000 / len(chunk)
        lower = np.clip(predicted - half, 0.0, 1.0)
        upper = np.clip(predicted + half, 0.0, 1.0)
        for row, (index, _, reasons, prepare_ms) in enumerate(chunk):
            low, high = _as_dict(lower[row]), _as_dict(upper[row])
            results[index] = Prediction(
                dsc=_as_dict(predicted[row]),
                lower=low,
                upper=high,
                coverage=coverage,
                decision=decide(low, high, thresholds, reasons),
                timings_ms={"prepare": prepare_ms, "inference": inference_ms},
            )
    return [r for r in results if r is not None]


def invalid_prediction(
    reason: str, message: str, thresholds: Mapping[str, float], coverage: float
) -> Prediction:
    """The result for a case that cannot be scored: FAIL with ``reason``, Dice 0, no interval."""
    zeros = dict.fromkeys(OUTPUT_CLASSES, 0.0)
    return Prediction(
        dsc=zeros,
        lower=None,
        upper=None,
        coverage=coverage,
        decision=decide(zeros, zeros, thresholds, [f"{reason}: {message}"]),
    )
