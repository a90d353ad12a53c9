"""Latency of the segmenter per volume: batch 1 against batched calls, stage by stage.

Figures are printed side by side, never asserted (the machine is shared). The volume is a
synthetic study rendered at exactly ``slices x matrix x matrix`` (default 10 x 224 x 224).
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any

import numpy as np
import torch

from cmrqc_segmenter.checkpoints import load_model
from cmrqc_segmenter.inference import Precision, Segmentation
from cmrqc_shared.datasets.splits import DEMO
from cmrqc_shared.synth import SynthConfig, render_study


def bench_volume(slices: int = 10, matrix: int = 224) -> tuple[np.ndarray, tuple[float, float]]:
    """An ED volume of exactly ``(slices, matrix, matrix)`` and its pixel spacing."""
    config = SynthConfig(n_slices_range=(slices, slices), matrix_range=(matrix, matrix))
    phase = render_study(DEMO.start, config).phase("ED")
    return phase.image, phase.pixel_spacing_mm


def _stage_means(results: list[Segmentation]) -> dict[str, float]:
    return {
        f"{stage}_ms": round(statistics.fmean(r.timings_ms[stage] for r in results), 2)
        for stage in ("preprocess", "inference", "postprocess")
    }


def run_bench(
    *,
    model: str = "builtin",
    slices: int = 10,
    matrix: int = 224,
    batch: int = 4,
    rounds: int = 5,
    threads: int = 2,
    precision: Precision = "auto",
    device: str = "cpu",
) -> dict[str, Any]:
    """Measure per-volume latency at batch 1 and at ``batch`` volumes per call.

    Rounds alternate batch 1 and batched so both see the same machine load. Returns the
    median (and min) per-volume wall time of each, the per-stage means, and the ratio
    batched / batch 1 (below 1: batching helps).
    """
    torch.set_num_threads(threads)
    segmenter = load_model(model, device=device, precision=precision)
    volume, spacing = bench_volume(slices, matrix)
    single: list[float] = []
    batched: list[float] = []
    single_results: list[Segmentation] = []
    batched_results: list[Segmentation] = []
    segmenter.segment_many([(volume, spacing)] * batch)  # warm-up (allocations, oneDNN)
    for _ in range(rounds):
        started = time.perf_counter()
        single_results.append(segmenter.segment(volume, spacing))
        single.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        results = segmenter.segment_many([(volume, spacing)] * batch)
        batched.append((time.perf_counter() - started) * 1000 / batch)
        batched_results.extend(results)
    return {
        "model": f"{segmenter.identity.name} {segmenter.identity.version}",
        "volume_shape": list(volume.shape),
        "device": str(segmenter.device),
        "precision": segmenter.precision,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "rounds": rounds,
        "network_grid": [segmenter.contract.size, segmenter.contract.size],
        "batch_1": {
            "per_volume_ms_median": round(statistics.median(single), 1),
            "per_volume_ms_min": round(min(single), 1),
            **_stage_means(single_results),
        },
        f"batch_{batch}": {
            "per_volume_ms_median": round(statistics.median(batched), 1),
            "per_volume_ms_min": round(min(batched), 1),
            **_stage_means(batched_results),
        },
        "ratio_batched_over_batch_1": round(
            statistics.median(batched) / statistics.median(single), 3
        ),
    }
