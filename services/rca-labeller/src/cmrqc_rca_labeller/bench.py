"""``cmrqc bench rca``: seconds per RCA case, batched torch engine vs one pair at a time.

Both are measured in the same run, interleaved case by case, on the same threads (the
machine is shared, so only figures taken side by side compare): the torch engine labels
``cases`` test segmentations against K references (after one untimed warm-up case), and the
SimpleITK baseline (``baseline.register_pair``) registers ``baseline_pairs`` test/reference
pairs; its mean per pair × K is the extrapolated cost of one case done the classical way.
"""

from __future__ import annotations

import os
import time
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cmrqc_rca_labeller.engine import EngineConfig, ReferenceBank
from cmrqc_rca_labeller.evaluation import evaluation_cases
from cmrqc_rca_labeller.rca import RcaEstimator
from cmrqc_rca_labeller.references import _synthetic_items, synthetic_reference_set

PAPER_SECONDS_PER_CASE = 660.0
"""Robinson et al. 2018: "around 11 minutes" per case with 100 references."""


def run_rca_benchmark(
    *,
    references: int = 100,
    cases: int = 3,
    baseline_pairs: int = 3,
    threads: int = 2,
    max_references: int | None = None,
    cache_dir: Path | None = None,
    log: Any = None,
) -> dict[str, Any]:
    """Measure both ways side by side; returns the figures (seconds are wall-clock).

    Args:
        references: K, the reference set size.
        cases: test cases timed with the torch engine (after a warm-up case).
        baseline_pairs: test/reference pairs timed with SimpleITK (0: skip the baseline).
        threads: torch and SimpleITK threads (the budget is 2 cores).
        max_references: references taken through full registration (engine default if None).
        log: a callable taking one line of progress text, or None.
    """
    torch.set_num_threads(threads)
    say = log or (lambda _line: None)
    load_before = os.getloadavg()
    started = time.perf_counter()
    reference_set = synthetic_reference_set(references, cache_dir=cache_dir)
    prepare_s = time.perf_counter() - started
    config = EngineConfig() if max_references is None else EngineConfig(refine_keep=max_references)
    started = time.perf_counter()
    bank = ReferenceBank.build(reference_set.references, config)
    bank_s = time.perf_counter() - started
    estimator = RcaEstimator(bank, config)
    test_cases = list(islice(evaluation_cases(cases + 1, corruptions_per_scan=1), 0, None, 2))
    warm = test_cases[0]
    warm_result = estimator.estimate(warm.image, warm.segmentation)
    say(f"warm-up case: {warm_result.seconds:.1f} s")

    raw_references = list(islice(_synthetic_items(references), baseline_pairs))
    torch_seconds: list[float] = []
    torch_cpu: list[float] = []
    stages: dict[str, list[float]] = {}
    baseline: list[dict[str, float | str]] = []
    for index in range(max(cases, baseline_pairs)):
        if index < cases:
            case = test_cases[1 + index]
            cpu = time.process_time()
            result = estimator.estimate(case.image, case.segmentation)
            torch_cpu.append(time.process_time() - cpu)
            torch_seconds.append(result.seconds)
            for name, value in result.stage_seconds.items():
                stages.setdefault(name, []).append(value)
            say(
                f"torch case {index + 1}/{cases}: {result.seconds:.1f} s "
                f"(cpu {torch_cpu[-1]:.1f} s, {result.references_registered} registered)"
            )
        if index < baseline_pairs:
            from cmrqc_rca_labeller.baseline import register_pair

            case = test_cases[1 + index % cases] if cases else warm
            reference_id, reference = raw_references[index]
            pair_started = time.perf_counter()
            try:
                pair = register_pair(case.image, case.segmentation, reference, threads=threads)
            except RuntimeError as error:  # ITK gives up (e.g. no overlap): it still cost time
                elapsed = time.perf_counter() - pair_started
                baseline.append(
                    {
                        "reference": reference_id,
                        "seconds": elapsed,
                        "failed": str(error).strip().splitlines()[-1][:200],
                    }
                )
                say(f"baseline pair {index + 1}/{baseline_pairs}: failed after {elapsed:.1f} s")
                continue
            baseline.append(
                {
                    "reference": reference_id,
                    "seconds": pair.seconds,
                    "affine_seconds": pair.affine_seconds,
                    "bspline_seconds": pair.bspline_seconds,
                    "wh_dice": pair.dice.WH,
                }
            )
            say(f"baseline pair {index + 1}/{baseline_pairs}: {pair.seconds:.1f} s")

    torch_mean = float(np.mean(torch_seconds)) if torch_seconds else float("nan")
    report: dict[str, Any] = {
        "references": bank.size,
        "reference_set": reference_set.content_hash,
        "threads": threads,
        "torch_device": str(bank.device),
        "registered_per_case": config.refine_keep,
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "one_off": {
            "reference_set_load_s": round(prepare_s, 2),
            "bank_build_s": round(bank_s, 2),
            "warm_up_case_s": round(warm_result.seconds, 2),
        },
        "torch": {
            "cases": len(torch_seconds),
            "seconds_per_case": round(torch_mean, 2),
            "seconds_each": [round(v, 2) for v in torch_seconds],
            "cpu_seconds_per_case": round(float(np.mean(torch_cpu)), 2) if torch_cpu else None,
            "stage_seconds": {k: round(float(np.mean(v)), 2) for k, v in stages.items()},
        },
        "paper_seconds_per_case": PAPER_SECONDS_PER_CASE,
        "speedup_vs_paper": round(PAPER_SECONDS_PER_CASE / torch_mean, 1),
    }
    if baseline:
        per_pair = float(np.mean([b["seconds"] for b in baseline]))
        report["baseline"] = {
            "pairs": len(baseline),
            "seconds_per_pair": round(per_pair, 2),
            "pairs_each": [
                {k: (round(v, 3) if isinstance(v, float) else v) for k, v in b.items()}
                for b in baseline
            ],
            "extrapolated_seconds_per_case": round(per_pair * bank.size, 1),
        }
        report["speedup_vs_baseline"] = round(per_pair * bank.size / torch_mean, 1)
    return report


def write_bench_png(report: dict[str, Any], path: Path) -> Path:
    """Seconds per case, log scale: this engine, the SimpleITK baseline, the paper."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [f"torch engine\n(K = {report['references']}, {report['threads']} threads)"]
    values = [float(report["torch"]["seconds_per_case"])]
    if "baseline" in report:
        pairs = report["baseline"]["pairs"]
        names.append(f"SimpleITK pair by pair\n({pairs} pairs, × {report['references']})")
        values.append(float(report["baseline"]["extrapolated_seconds_per_case"]))
    names.append('Robinson et al. 2018\n("around 11 minutes")')
    values.append(float(report["paper_seconds_per_case"]))
    fig, axis = plt.subplots(figsize=(7.5, 3.6))
    bars = axis.barh(names, values, color=["#228833", "#cc6677", "#bbbbbb"][: len(values)])
    axis.set_xscale("log")
    axis.set_xlabel("seconds per case (log scale)")
    for bar, value in zip(bars, values, strict=True):
        axis.text(value * 1.1, bar.get_y() + bar.get_height() / 2, f"{value:,.0f} s", va="center")
    axis.set_xlim(1, max(values) * 8)
    axis.invert_yaxis()
    load = report["load_average_before"][0]
    axis.set_title(f"RCA seconds per case, measured side by side (load average {load})")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
