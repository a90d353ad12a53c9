"""``cmrqc bench qc``: the paper's network against the fast one, in the same run.

Per case, from the arrays in memory to five Dice values: input preparation (validation,
resampling to the 5 × 8 × 224 × 224 grid, and for the fast model its crop and shape features)
plus the network's forward pass. Measured at batch 1 (one case at a time) and batched (N cases
prepared, then one forward pass; per-case = total / N), on the CPU with a fixed number of torch
threads, and on the GPU when ``torch.cuda.is_available()`` (float16 autocast, synchronised).
The cases are synthetic studies from the DEMO seed range. Figures are medians over rounds;
nothing is asserted about them.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cmrqc_qc_predictor.artifact import BUILTIN_FAST, QcModel, load_artifact_file
from cmrqc_qc_predictor.inputs import case_inputs, collate
from cmrqc_qc_predictor.models import FAST_ARCHITECTURE, PAPER_ARCHITECTURE, PaperResNet3d
from cmrqc_qc_predictor.predictor import Case, run_network
from cmrqc_qc_predictor.prepare import check_pair, prepare_input
from cmrqc_shared.datasets.splits import DEMO


def bench_cases(count: int) -> list[Case]:
    """``count`` synthetic ED cases (DEMO seeds) with their true labels as segmentation."""
    from cmrqc_shared.synth import render_study

    cases = []
    for seed in DEMO.seeds(count):
        phase = render_study(seed, phases=("ED",)).phase("ED")
        cases.append(
            Case(phase.image, phase.labels, phase.pixel_spacing_mm, phase.slice_spacing_mm)
        )
    return cases


def _prepare(architecture: str, case: Case) -> dict[str, torch.Tensor]:
    check_pair(case.image, case.labels)
    prepared = prepare_input(case.image, case.labels, case.pixel_spacing_mm, case.slice_spacing_mm)
    return case_inputs(architecture, prepared)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    model: QcModel, cases: list[Case], device: torch.device, batch: int, rounds: int
) -> dict[str, Any]:
    """Per-case prepare / forward / total ms at batch 1 and batched (medians over rounds)."""
    model.network.to(device).eval()
    architecture = model.architecture
    # Warm-up: allocator, kernels, autotuning.
    run_network(model, collate([_prepare(architecture, cases[0])]), device)
    run_network(model, collate([_prepare(architecture, c) for c in cases[:batch]]), device)

    single_prepare, single_forward = [], []
    for _ in range(rounds):
        for case in cases[:batch]:
            _sync(device)
            started = time.perf_counter()
            one = collate([_prepare(architecture, case)])
            prepared_at = time.perf_counter()
            run_network(model, one, device)
            _sync(device)
            single_prepare.append((prepared_at - started) * 1000.0)
            single_forward.append((time.perf_counter() - prepared_at) * 1000.0)
    batched_prepare, batched_forward = [], []
    for _ in range(rounds):
        _sync(device)
        started = time.perf_counter()
        stacked = collate([_prepare(architecture, case) for case in cases[:batch]])
        prepared_at = time.perf_counter()
        run_network(model, stacked, device)
        _sync(device)
        batched_prepare.append((prepared_at - started) * 1000.0 / batch)
        batched_forward.append((time.perf_counter() - prepared_at) * 1000.0 / batch)

    def summary(prepare_ms: list[float], forward_ms: list[float]) -> dict[str, float]:
        prep, fwd = statistics.median(prepare_ms), statistics.median(forward_ms)
        return {
            "prepare_ms": round(prep, 2),
            "forward_ms": round(fwd, 2),
            "total_ms": round(prep + fwd, 2),
        }

    return {
        "batch_1": summary(single_prepare, single_forward),
        f"batch_{batch}": summary(batched_prepare, batched_forward),
    }


def run_bench(
    *,
    batch: int = 8,
    rounds: int = 3,
    threads: int = 2,
    devices: list[str] | None = None,
    fast_artifact: str = "builtin",
) -> dict[str, Any]:
    """Both models, every device; per-case latencies and the paper/fast ratios.

    Raises:
        ArtifactError, OSError: the fast artifact cannot be loaded.
    """
    from cmrqc_qc_predictor.conformal import ConformalCalibration

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    if devices is None:
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    fast = load_artifact_file(BUILTIN_FAST if fast_artifact == "builtin" else Path(fast_artifact))
    paper = QcModel(
        network=PaperResNet3d().eval(),
        architecture=PAPER_ARCHITECTURE,
        calibration=ConformalCalibration(np.zeros((1, 5), np.float32)),
        name="paper-untrained-for-timing",
        version="random-init",
    )
    cases = bench_cases(batch)
    report: dict[str, Any] = {
        "cases": f"{batch} synthetic ED studies (DEMO seeds), true labels as segmentation",
        "threads": threads,
        "batch": batch,
        "rounds": rounds,
        "torch": torch.__version__,
        "devices": {},
    }
    for name in devices:
        device = torch.device(name)
        results = {
            "paper": measure(paper, cases, device, batch, rounds),
            "fast": measure(fast, cases, device, batch, rounds),
        }
        ratios = {
            key: round(results["paper"][key]["total_ms"] / results["fast"][key]["total_ms"], 1)
            for key in results["fast"]
        }
        report["devices"][name] = {
            **results,
            "ratio_paper_over_fast": ratios,
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        }
    report["architectures"] = {"paper": PAPER_ARCHITECTURE, "fast": FAST_ARCHITECTURE}
    return report
